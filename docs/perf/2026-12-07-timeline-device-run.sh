#!/usr/bin/env bash
# The device call behind the figures of 2026-12-07 on the GEMVs' timeline inside a graphed draft step:
#   bash docs/perf/2026-12-07-timeline-device-run.sh a   # the A/B of the pipelined walk (7917865), the timeline of
#                                                        # the 7B and 13B shapes, the GEMV's GPU tests in four processes
#   bash docs/perf/2026-12-07-timeline-device-run.sh b   # the A/B of the keys and the norm weight loaded before the
#                                                        # wait (docs/perf/2026-12-07-draft-step-ab.py), the GPU
#                                                        # tier, the timeline without and with the norm weight early
#   bash docs/perf/2026-12-07-timeline-device-run.sh c   # with the norm weight early by default: the A/B of the
#                                                        # attention's blocks of keys and down's and o_proj's
#                                                        # tilings, the 7B and 13B shapes
#   bash docs/perf/2026-12-07-timeline-device-run.sh d1  # then at once d2: the SmolLM2 proxy
# Call a's timeline stopped at a module built but never launched (mended); it ran again alone on the same machine.
# The A/B scripts of a and b are git history: git show 7917865:docs/perf/2026-12-07-pipeline-ab.py and
# git show 731f480:docs/perf/2026-12-07-draft-step-ab.py. a and b carry the pytest-xdist and execnet wheels in
# out/carry4, as c does; d1 and d2 the SmolLM2 GGUF's halves (bench/device_step.sh). Writes into $OUT/results.tgz, refreshed
# after every step.
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
c)
    run draft-step-ab 110 python3 docs/perf/2026-12-07-draft-step-ab.py "$OUT/draft-step-ab.json" down_rows1 \
        down_unroll8 o_proj_rows1 attention_block_kv64
    run shapes 120 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes"
    ;;
d1)
    smollm2_first_half
    ;;
d2)
    smollm2_convert
    run proxy 420 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy"
    ;;
esac
