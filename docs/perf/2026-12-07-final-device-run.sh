#!/usr/bin/env bash
# The device calls of the tenth session (2026-12-07), back to back on one machine:
#   bash docs/perf/2026-12-07-final-device-run.sh a   # the A/B of the draft attention's blocks of keys
#                                                     # (docs/perf/2026-12-07-draft-blocks-ab.py), the 7B and 13B
#                                                     # shapes, graphed profiles of the 7B steps at positions 200 and 1,100
#   bash docs/perf/2026-12-07-final-device-run.sh b   # the SmolLM2 proxy with the draft's blocks following the
#                                                     # cache's length and without (docs/perf/2026-12-07-draft-blocks-off.py);
#                                                     # the whole GPU tier
#   bash docs/perf/2026-12-07-final-device-run.sh c   # the GEMVs' timeline, the 13B's graphed profile
# a and b ran the code of ab9b0ea (the draft's blocks of keys following the cache's length; git history).
#   bash docs/perf/2026-12-07-final-device-run.sh d   # the A/B of the draft's attention unsplit over short caches
#                                                     # (docs/perf/2026-12-07-draft-unsplit-ab.py), the 7B's
#                                                     # graphed profile at position 200
#   bash docs/perf/2026-12-07-final-device-run.sh e   # the SmolLM2 proxy with it and without
#                                                     # (docs/perf/2026-12-07-draft-split-only.py); the GPU tier
# d ran the code of 21b14d1. Their scripts under docs/perf are in git history.
#   bash docs/perf/2026-12-07-final-device-run.sh f   # the A/B of the draft's one-token attention in one kernel over
#                                                     # short caches (bench/draft_step_ab.py), the 7B's graphed
#                                                     # profile at position 200
#   bash docs/perf/2026-12-07-final-device-run.sh g   # the SmolLM2 proxy with it and without (bench/with_settings.py);
#                                                     # the GPU tier
#   bash docs/perf/2026-12-07-final-device-run.sh h   # f's A/B (fewer positions and variants) and the attention's and
#                                                     # the fused draft's GPU tests, in one call (f never got a machine)
# a, d and f carry the GGUF's first half, b, e and g the second and the pytest-xdist and execnet wheels
# (bench/device_step.sh).
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
e)
    smollm2_convert
    install_test_wheels
    run proxy 150 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy"
    run proxy-split-only 150 python3 docs/perf/2026-12-07-draft-split-only.py bench/benchmark.py --proxy /tmp/smollm2 \
        --skip-hf --out "$OUT/proxy-split-only"
    run gpu-tier 200 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 --durations=5 tests
    ;;
f)
    smollm2_first_half
    one_kernel=attention.DRAFT_ONE_KERNEL_KEYS=4096
    run draft-one-kernel-ab 200 python3 bench/draft_step_ab.py --positions 200 450 700 1088 \
        --out "$OUT/draft-one-kernel-ab.json" --variant three_kernels attention.DRAFT_ONE_KERNEL_KEYS=0 \
        --variant one_kernel_32_w2 $one_kernel attention.DRAFT_BLOCK_KV=32 attention.DRAFT_WARPS=2 \
        --variant one_kernel_64_w2 $one_kernel attention.DRAFT_BLOCK_KV=64 attention.DRAFT_WARPS=2 \
        --variant one_kernel_128_w4 $one_kernel attention.DRAFT_BLOCK_KV=128 attention.DRAFT_WARPS=4
    run profile-7b-200 40 python3 bench/profile_step.py --shape 7b --graphed --pos 200
    ;;
g)
    smollm2_convert
    install_test_wheels
    run proxy 150 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy"
    run proxy-three-kernels 150 python3 bench/with_settings.py attention.DRAFT_ONE_KERNEL_KEYS=0 -- bench/benchmark.py \
        --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy-three-kernels"
    run gpu-tier 200 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 --durations=5 tests
    ;;
h)
    install_test_wheels
    run draft-one-kernel-ab 100 python3 bench/draft_step_ab.py --positions 200 450 1088 \
        --out "$OUT/draft-one-kernel-ab.json" --variant three_kernels attention.DRAFT_ONE_KERNEL_KEYS=0 \
        --variant one_kernel_32_w2 attention.DRAFT_ONE_KERNEL_KEYS=4096 attention.DRAFT_BLOCK_KV=32 attention.DRAFT_WARPS=2 \
        --variant one_kernel_64_w2 attention.DRAFT_ONE_KERNEL_KEYS=4096 attention.DRAFT_BLOCK_KV=64 attention.DRAFT_WARPS=2
    run gpu-tests 120 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 tests/accel/test_attention.py \
        tests/accel/test_fused_draft.py
    ;;
c)
    run timeline 60 python3 bench/gemv_timeline.py --shapes 7b 13b --json "$OUT/timeline.json"
    run profile-13b 40 python3 bench/profile_step.py --shape 13b --graphed
    ;;
esac
