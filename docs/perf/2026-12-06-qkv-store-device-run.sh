#!/usr/bin/env bash
# The device runs behind the figures of 2026-12-06 on the draft's W_pack storing k and v itself and the one-token
# attention merged by each head's last program (docs/performance.md, "Tried and not kept"; code of a2f3997, taken out
# again by the commit after it), two calls back to back on one machine (an H100):
#   bash docs/perf/2026-12-06-qkv-store-device-run.sh a   # the GPU tier in four processes; both shapes, new and
#                                                         # base; the 7B draft's graphed profile
#   bash docs/perf/2026-12-06-qkv-store-device-run.sh b   # the SmolLM2 proxy, new and base; the 13B profile
# The base is the commit before the change, `git archive d8cb8b2 selfspec bench scripts speculative.py` unpacked into
# out/base. The SmolLM2 GGUF travels in two halves (bench/device_step.sh); a carries the pytest-xdist and execnet
# wheels in out/carry4. Writes into $OUT/results.tgz, refreshed after every step.
set -u
stage=$1
source bench/device_step.sh
start_device_call
case $stage in
a)
    smollm2_first_half
    install_test_wheels
    run gpu-tier-n4 240 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 --durations=20 tests
    run shapes 200 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes"
    (cd out/base && run shapes-base 200 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes-base")
    run profile-7b-graphed 60 python3 bench/profile_step.py --shape 7b --graphed
    ;;
b)
    smollm2_convert
    run proxy 240 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy"
    (cd out/base && run proxy-base 240 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy-base")
    run profile-13b-graphed 60 python3 bench/profile_step.py --shape 13b --graphed
    ;;
esac
