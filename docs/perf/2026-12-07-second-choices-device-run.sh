#!/usr/bin/env bash
# The device calls of the eleventh session (2026-12-07): the draft's second choices verified as leaves.
#   bash docs/perf/2026-12-07-second-choices-device-run.sh a   # (the GGUF's first half only)
#   bash docs/perf/2026-12-07-second-choices-device-run.sh b   # the SmolLM2 proxy: the INT4 draft and the lookup
#                                                              # with and without the second choices; the GPU tier
# a carries the GGUF's first half, b the second and the pytest-xdist and execnet wheels (bench/device_step.sh); b
# runs on the machine a warmed (else the GPU tier alone). Writes into $OUT/results.tgz, refreshed after every step.
set -u
stage=$1
source bench/device_step.sh
start_device_call
case $stage in
a)
    smollm2_first_half
    ;;
b)
    if [ -f /tmp/smollm2.gguf.part00 ]; then  # else a machine that a did not warm: the GPU tier only
        smollm2_convert
        run proxy 300 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy" \
            --draft int4 int4+second lookup+int4 lookup+int4+second
    fi
    install_test_wheels
    run gpu-tier 150 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 --durations=5 tests
    ;;
esac
