#!/usr/bin/env bash
# The device calls behind the figures of 2026-12-07 on the norms' sums of squares from the GEMV before and the
# tilings of down, on H100s: a and b on one machine, c on another, e on a third (d1 and d2 never got a machine):
#   bash docs/perf/2026-12-07-squares-device-run.sh a   # the A/B of the draft step's settings
#                                                       # (docs/perf/2026-12-07-draft-step-ab.py), the GEMV's and the
#                                                       # fused draft's GPU tests, the 7B and 13B shapes
#   bash docs/perf/2026-12-07-squares-device-run.sh b   # the SmolLM2 proxy with and without the sums of squares from
#                                                       # the GEMV before; the 7B draft's graphed profile with them
#   bash docs/perf/2026-12-07-squares-device-run.sh c   # one row a warp where those tiles fit in one wave: the A/B,
#                                                       # the GPU tier, the 7B and 13B shapes, graphed profiles
#   bash docs/perf/2026-12-07-squares-device-run.sh d1  # then at once d2: the 7B and 13B shapes, the GEMV's GPU
#                                                       # tests, the GEMVs' timeline, the SmolLM2 proxy
#   bash docs/perf/2026-12-07-squares-device-run.sh e   # d1 without the GGUF (no proxy)
# a and b ran the code of 5bc4ce2 (with docs/perf/2026-12-07-with-squares.py, which turned the sums of squares on;
# git history): the sums of squares are gone since, the norm's rounding in f16x2 stayed. a and c carry the
# pytest-xdist and execnet wheels in out/carry4 (d1 too), a and d1 the GGUF's first half (bench/device_step.sh).
# Writes into $OUT/results.tgz, refreshed after every step.
set -u
stage=$1
source bench/device_step.sh
start_device_call
squares="python3 docs/perf/2026-12-07-with-squares.py"
case $stage in
a)
    smollm2_first_half
    install_test_wheels
    run draft-step-ab 270 python3 docs/perf/2026-12-07-draft-step-ab.py "$OUT/draft-step-ab.json"
    run gpu-tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 tests/accel/test_int4_cuda.py \
        tests/accel/test_fused_draft.py
    run shapes 150 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes"
    ;;
b)
    smollm2_convert
    run proxy-squares 220 $squares bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --draft int4 lookup+int4 \
        --out "$OUT/proxy-squares"
    run proxy 220 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --draft int4 lookup+int4 --out "$OUT/proxy"
    run profile-7b-squares 60 $squares bench/profile_step.py --shape 7b --graphed
    ;;
c)
    install_test_wheels
    run draft-step-ab 150 python3 docs/perf/2026-12-07-draft-step-ab.py "$OUT/draft-step-ab.json"
    run gpu-tier 240 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 tests
    run shapes 120 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes"
    run profile-7b 40 python3 bench/profile_step.py --shape 7b --graphed
    run profile-13b 40 python3 bench/profile_step.py --shape 13b --graphed
    ;;
d1|e)
    if [ "$stage" = d1 ]; then smollm2_first_half; fi
    install_test_wheels
    run shapes 120 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes"
    run gpu-int4 90 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 tests/accel/test_int4_cuda.py
    run timeline 60 python3 bench/gemv_timeline.py --shapes 7b 13b --json "$OUT/timeline.json"
    ;;
d2)
    smollm2_convert
    run proxy 220 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy"
    ;;
esac
