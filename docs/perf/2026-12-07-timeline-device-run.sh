#!/usr/bin/env bash
# The device calls behind the figures of 2026-12-07 on the GEMVs' timeline inside a graphed draft step (H100s):
#   bash docs/perf/2026-12-07-timeline-device-run.sh a   # the A/B of the pipelined walk (7917865), the timeline of
#                                                        # the 7B and 13B shapes, the GEMV's GPU tests in four processes
#   bash docs/perf/2026-12-07-timeline-device-run.sh b   # the A/B of the keys and the norm weight loaded before the
#                                                        # wait, the GPU tier, the timeline without and with the
#                                                        # norm weight early
# Call a's timeline stopped at a module built but never launched (mended); it ran again alone on the same machine.
# Call b ran the code of 731f480, whose Tiling.norm_weight_early and attention.KV_BEFORE_WAIT are gone since: the
# norm's weight is always copied early now (the same cubins, byte for byte), the keys never.
# The A/B scripts of a and b are git history: git show 7917865:docs/perf/2026-12-07-pipeline-ab.py and
# git show 731f480:docs/perf/2026-12-07-draft-step-ab.py. a and b carry the pytest-xdist and execnet wheels in
# out/carry4. Writes into $OUT/results.tgz, refreshed after every step.
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
b)
    install_test_wheels
    run draft-step-ab 100 python3 docs/perf/2026-12-07-draft-step-ab.py "$OUT/draft-step-ab.json" norm_weight_early \
        attention_kv_early attention_kv_early_norm_weight_early
    run gpu-tier 240 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 tests
    run timeline 60 python3 bench/gemv_timeline.py --shapes 7b 13b --json "$OUT/timeline.json"
    run timeline-norm-early 40 python3 bench/gemv_timeline.py --tiling norm_weight_early=1 --json "$OUT/timeline-norm-early.json"
    ;;
esac
