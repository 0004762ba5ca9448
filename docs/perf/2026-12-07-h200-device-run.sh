#!/usr/bin/env bash
# Device calls prepared on 2026-12-07 and not run yet (no GPU was available): the code of that day measured
# again, on an H200 where one comes.
#   bash docs/perf/2026-12-07-h200-device-run.sh a   # the 7B and 13B shapes
#   bash docs/perf/2026-12-07-h200-device-run.sh b   # the SmolLM2 proxy: bench/benchmark.py's default variants (the
#                                                    # INT4 draft with and without the second choices, the lookup
#                                                    # with them, with and without the lookup after the draft);
#                                                    # the GPU tier
#   bash docs/perf/2026-12-07-h200-device-run.sh c   # a round's cost beyond its kernels
#                                                    # (docs/perf/2026-12-07-round-gap.py), graphed profiles
#   bash docs/perf/2026-12-07-h200-device-run.sh d   # one call: the shapes, the GPU tier, the round's cost
# a carries the GGUF's first half and the pytest-xdist and execnet wheels, b the second half (bench/device_step.sh);
# b runs on the machine a warmed. Writes into $OUT/results.tgz, refreshed after every step.
set -u
stage=$1
source bench/device_step.sh
start_device_call
case $stage in
a)
    smollm2_first_half
    install_test_wheels
    run shapes 150 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes"
    ;;
b)
    smollm2_convert
    run proxy 300 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy"
    run gpu-tier 150 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 --durations=5 tests
    ;;
c)
    run round-gap 120 python3 docs/perf/2026-12-07-round-gap.py "$OUT/round-gap.json"
    run profile-7b 40 python3 bench/profile_step.py --shape 7b --graphed
    run profile-13b 50 python3 bench/profile_step.py --shape 13b --graphed
    ;;
d)  # one call where two are not to be had: no proxy
    install_test_wheels
    run shapes 150 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes"
    run gpu-tier 150 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 --durations=5 tests
    run round-gap 120 python3 docs/perf/2026-12-07-round-gap.py "$OUT/round-gap.json"
    ;;
esac
