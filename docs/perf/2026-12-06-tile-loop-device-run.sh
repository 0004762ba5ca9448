#!/usr/bin/env bash
# The device runs behind the figures of 2026-12-06 on the INT4 GEMV's tile loop (docs/performance.md), each
# a call of its own, in this order (c, b, a on H100 machines; d1, d2 and b + a on one H200; e twice on H100):
#   bash docs/perf/2026-12-06-tile-loop-device-run.sh c    # the GEMV's GPU tests, the A/B of its grid
#   bash docs/perf/2026-12-06-tile-loop-device-run.sh b    # the GEMV's GPU tests, 7B and 13B shapes, graphed profiles
#   bash docs/perf/2026-12-06-tile-loop-device-run.sh a    # the GPU tier, one process
#   bash docs/perf/2026-12-06-tile-loop-device-run.sh d1   # then at once d2: the SmolLM2 proxy
#   bash docs/perf/2026-12-06-tile-loop-device-run.sh e    # the GPU tier in four processes
# The SmolLM2 GGUF travels in two halves (bench/device_step.sh; `split -n 2 -d GGUF out/part`: out/carry1/part00,
# out/carry2/part01, with the gguf 0.19.0 wheel) over two calls back to back; e carries the pytest-xdist and
# execnet wheels in out/carry3. Writes into $OUT/results.tgz, refreshed after every step.
set -u
stage=$1
source bench/device_step.sh
start_device_call
case $stage in
a)
    run gpu-tier 560 python3 -m pytest -q -p no:cacheprovider -m gpu --durations=40 tests
    ;;
b)
    run gpu-int4 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/accel/test_int4_cuda.py
    run shapes 330 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes"
    run profile-7b-graphed 60 python3 bench/profile_step.py --shape 7b --graphed
    run profile-13b-graphed 60 python3 bench/profile_step.py --shape 13b --graphed
    ;;
c)
    run gpu-int4 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/accel/test_int4_cuda.py
    run tile-loop-ab 420 python3 docs/perf/h100-2026-12-06-tile-loop-ab.py "$OUT/tile-loop-ab.json"
    ;;
d1)
    smollm2_first_half
    ;;
d2)
    smollm2_convert
    run proxy 420 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy"
    ;;
e)
    python3 -m pip install -q --no-index --no-deps out/carry3/*.whl > "$OUT/pip.txt" 2>&1
    run gpu-tier-n4 560 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 --durations=20 tests
    ;;
esac
