#!/usr/bin/env bash
# The device call behind the figures of 2026-12-07 on the GEMVs' timeline inside a graphed draft step (H100):
#   bash docs/perf/2026-12-07-timeline-device-run.sh a   # the A/B of the pipelined walk, the timeline of the 7B and
#                                                        # 13B shapes, the GEMV's GPU tests in four processes
# The A/B script is git history: git show 7917865:docs/perf/2026-12-07-pipeline-ab.py. The timeline stopped at a
# module built but never launched (mended); `python3 bench/gemv_timeline.py --shapes 7b 13b --json OUT.json` ran
# again alone on the same machine. a carries the pytest-xdist and execnet wheels in out/carry4. Writes into
# $OUT/results.tgz, refreshed after every step.
set -u
stage=$1
source bench/device_step.sh
start_device_call
case $stage in
a)
    install_test_wheels
    run pipeline-ab 240 python3 docs/perf/2026-12-07-pipeline-ab.py "$OUT/pipeline-ab.json"
    run timeline 150 python3 bench/gemv_timeline.py --shapes 7b 13b --json "$OUT/timeline.json"
    run gpu-int4 150 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 tests/accel/test_int4_cuda.py
    ;;
esac
