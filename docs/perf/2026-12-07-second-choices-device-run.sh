#!/usr/bin/env bash
# The device calls of the eleventh session (2026-12-07): the draft's second choices verified as leaves.
#   bash docs/perf/2026-12-07-second-choices-device-run.sh a   # the whole GPU tier; the 7B and 13B shapes
#   bash docs/perf/2026-12-07-second-choices-device-run.sh b   # the SmolLM2 proxy: the INT4 draft and the lookup
#                                                              # with and without the second choices
# a carries the GGUF's first half and the pytest-xdist and execnet wheels, b the second half (bench/device_step.sh);
# b must run on the machine a warmed. Writes into $OUT/results.tgz, refreshed after every step.
set -u
stage=$1
source bench/device_step.sh
start_device_call
case $stage in
a)
    smollm2_first_half
    install_test_wheels
    run gpu-tier 240 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 --durations=5 tests
    run shapes 150 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes"
    ;;
b)
    smollm2_convert
    run proxy 400 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy" \
        --draft int4 int4+second lookup+int4 lookup+int4+second
    ;;
esac
