#!/usr/bin/env bash
# The device calls behind the figures of 2026-12-07 on the INT4 GEMV's weight ring (Tiling.stages):
#   bash docs/perf/2026-12-07-ring-device-run.sh a    # the GEMV's GPU tests in four processes, the loading A/B
#   bash docs/perf/2026-12-07-ring-device-run.sh b1   # then at once b2: the GPU tier in four processes, then the
#   bash docs/perf/2026-12-07-ring-device-run.sh b2   # SmolLM2 proxy, the 7B and 13B shapes, graphed profiles
# Its first call (H100) ran an earlier version of the A/B (h100-2026-12-07-ring-ab-all-early.json): rings of 2-4
# steps that issued all their steps before the wait (early = stages), for every GEMV or for one kind of them.
# The SmolLM2 GGUF travels in two halves (bench/device_step.sh): b1 carries out/carry1, b2 out/carry2.
# a and b1 carry the pytest-xdist and execnet wheels in out/carry4. Writes into $OUT/results.tgz, refreshed after every step.
set -u
stage=$1
source bench/device_step.sh
start_device_call
case $stage in
a)
    python3 -m pip install -q --no-index --no-deps out/carry4/pytest_xdist-*.whl out/carry4/execnet-*.whl > "$OUT/pip.txt" 2>&1
    run gpu-int4 200 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 tests/accel/test_int4_cuda.py
    run ring-ab 380 python3 docs/perf/2026-12-07-ring-ab.py "$OUT/ring-ab.json"
    ;;
b1)
    smollm2_first_half
    python3 -m pip install -q --no-index --no-deps out/carry4/pytest_xdist-*.whl out/carry4/execnet-*.whl > "$OUT/pip.txt" 2>&1
    run gpu-tier-n4 300 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 --durations=20 tests
    ;;
b2)
    smollm2_convert
    run proxy 300 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy"
    run shapes 200 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes"
    run profile-7b-graphed 50 python3 bench/profile_step.py --shape 7b --graphed
    ;;
esac
