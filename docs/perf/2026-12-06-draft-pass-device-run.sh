#!/usr/bin/env bash
# The device call behind the figures of 2026-12-07 (an H100): the GPU tier after the attention kernels' shared block test, and
# the shapes benchmark with the draft's multi-token passes timed (benchmark.step_costs' draft_pass_K_ms), which
# price the `guided` policy of bench/simulate_lookup.py:
#   bash docs/perf/2026-12-06-draft-pass-device-run.sh a   # GPU tier in four processes; the 7B shape
# a carries the pytest-xdist and execnet wheels in out/carry4. Writes into $OUT/results.tgz, refreshed after every step.
set -u
stage=$1
source bench/device_step.sh
start_device_call
case $stage in
a)
    install_test_wheels
    run gpu-tier-n4 240 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 --durations=20 tests
    run shapes 150 python3 bench/benchmark.py --shapes 7b --skip-hf --out "$OUT/shapes"
    ;;
esac
