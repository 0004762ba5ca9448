#!/usr/bin/env bash
# The device runs behind the figures of 2026-12-06 on the draft's attention window (docs/performance.md), each
# a call of its own, back to back: a, b1, b2 on one H100 machine (the draft window's default then 256), c, d on
# one H200 machine (the final code):
#   bash docs/perf/2026-12-06-draft-window-device-run.sh a    # the GPU tier in four processes, both shapes
#   bash docs/perf/2026-12-06-draft-window-device-run.sh b1   # then at once b2: the SmolLM2 proxy, the
#   bash docs/perf/2026-12-06-draft-window-device-run.sh b2   # 7B shape with the whole cache, a graphed profile
#   bash docs/perf/2026-12-06-draft-window-device-run.sh c    # the GPU tier in four processes, llama.cpp's build
#   bash docs/perf/2026-12-06-draft-window-device-run.sh d    # the 7B and 13B shapes beside llama.cpp
# The SmolLM2 GGUF travels in two halves (bench/device_step.sh; `split -n 2 -d GGUF out/part`: out/carry1/part00,
# out/carry2/part01, with the gguf 0.19.0 wheel); a carries the pytest-xdist and execnet wheels in out/carry3;
# c those and the gguf wheel in out/carry4, and bench/peers/llama.cpp (bench/peers/fetch_llamacpp.sh).
# Writes into $OUT/results.tgz, refreshed after every step.
set -u
stage=$1
source bench/device_step.sh
start_device_call
case $stage in
a)
    python3 -m pip install -q --no-index --no-deps out/carry3/*.whl > "$OUT/pip.txt" 2>&1
    run gpu-tier-n4 280 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 --durations=20 tests
    run shapes 300 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes"
    ;;
b1)
    smollm2_first_half
    ;;
b2)
    smollm2_convert
    run proxy 300 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy"
    run shape-7b-whole-cache 120 python3 bench/benchmark.py --shapes 7b --skip-hf --draft-window 0 --out "$OUT/whole"
    run profile-7b-graphed 60 python3 bench/profile_step.py --shape 7b --graphed
    ;;
c)
    install_test_wheels
    run gpu-tier-n4 200 python3 -m pytest -q -p no:cacheprovider -m gpu -n 4 --durations=20 tests
    run peers-build 380 bash bench/peers/device_run.sh build "$OUT/peers"
    ;;
d)
    python3 -m zipfile -e out/carry4/gguf-0.19.0-py3-none-any.whl /tmp/pylib
    export PYTHONPATH=/tmp/pylib
    run peers-7b 240 bash bench/peers/device_run.sh 7b "$OUT/peers"
    run peers-13b 340 bash bench/peers/device_run.sh 13b "$OUT/peers"
    ;;
esac
