#!/usr/bin/env bash
# The device calls of the tenth session (2026-12-07) that got a machine, H100s: a and b back to back on one, d on
# another. Their scripts under docs/perf and the code they measured are in git history.
#   bash docs/perf/2026-12-07-final-device-run.sh a   # the A/B of the draft attention's blocks of keys
#                                                     # (docs/perf/2026-12-07-draft-blocks-ab.py), the 7B and 13B
#                                                     # shapes, graphed profiles of the 7B steps at positions 200 and 1,100
#   bash docs/perf/2026-12-07-final-device-run.sh b   # the SmolLM2 proxy with the draft's blocks following the
#                                                     # cache's length and without (docs/perf/2026-12-07-draft-blocks-off.py);
#                                                     # the whole GPU tier
#   bash docs/perf/2026-12-07-final-device-run.sh d   # the A/B of the draft's attention unsplit over short caches
#                                                     # (docs/perf/2026-12-07-draft-unsplit-ab.py), the 7B's graphed
#                                                     # profile at position 200
# a and b ran the code of ab9b0ea (the draft's blocks of keys following the cache's length), d that of 21b14d1.
# a and d carry the GGUF's first half, b the second and the pytest-xdist and execnet wheels (bench/device_step.sh).
# Writes into $OUT/results.tgz, refreshed after every step.
set -u
stage=$1
source bench/device_step.sh
start_device_call
case $stage in
a)
    smollm2_first_half
    run draft-blocks-ab 260 python3 docs/perf/2026-12-07-draft-blocks-ab.py "$OUT/draft-blocks-ab.json"
    run shapes 130 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes"
    run profile-7b 40 python3 bench/profile_step.py --shape 7b --graphed
    run profile-7b-200 40 python3 bench/profile_step.py --shape 7b --graphed --pos 200
    ;;
b)
    smollm2_convert
    install_test_wheels
    run proxy 150 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy"
    run proxy-blocks-off 150 python3 docs/perf/2026-12-07-draft-blocks-off.py bench/benchmark.py --proxy /tmp/smollm2 \
        --skip-hf --out "$OUT/proxy-blocks-off"
    run gpu-tier 200 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 --durations=5 tests
    ;;
d)
    smollm2_first_half
    run draft-unsplit-ab 200 python3 docs/perf/2026-12-07-draft-unsplit-ab.py "$OUT/draft-unsplit-ab.json"
    run profile-7b-200 40 python3 bench/profile_step.py --shape 7b --graphed --pos 200
    ;;
esac
