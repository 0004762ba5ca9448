#!/usr/bin/env bash
# The device calls behind the figures of 2026-12-07 on the draft step's one-kernel attention (attend_draft_step),
# back to back on one machine:
#   bash docs/perf/2026-12-07-draft-attention-device-run.sh a   # the A/B (docs/perf/2026-12-07-draft-attention-ab.py),
#                                                               # the attention's, fused draft's and graphs' GPU tests,
#                                                               # the 7B and 13B shapes, the 7B draft's graphed profile
#   bash docs/perf/2026-12-07-draft-attention-device-run.sh b   # the SmolLM2 proxy
# a ran the code of 24df15a (the A/B script and attend_draft_step are in git history), b that of 76080a0 (the code
# before, this page's). a carries the pytest-xdist and execnet wheels (out/carry4) and the GGUF's first half
# (bench/device_step.sh).
# Writes into $OUT/results.tgz, refreshed after every step.
set -u
source bench/device_step.sh
start_device_call
case $1 in
a)
    smollm2_first_half
    install_test_wheels
    run draft-attention-ab 240 python3 docs/perf/2026-12-07-draft-attention-ab.py "$OUT/draft-attention-ab.json"
    run gpu-tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 tests/accel/test_attention.py \
        tests/accel/test_fused_draft.py tests/accel/test_cuda_graphs.py
    run shapes 120 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes"
    run profile-7b 40 python3 bench/profile_step.py --shape 7b --graphed
    ;;
b)
    smollm2_convert
    run proxy 220 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy"
    ;;
esac
