# Sourced by the device-run scripts under docs/perf: one step of a device call.
#
#     source bench/device_step.sh
#     run NAME SECONDS CMD...
#
# runs CMD with a time limit, its output to $OUT/NAME.txt, and prints its exit status, duration and last
# lines; then, where $RESULTS names a file, packs $OUT into it, so that a call cut short still returns what ran.
run() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "== $name: rc $? in $((SECONDS - t0)) s"
    tail -n 12 "$OUT/$name.txt"
    if [ -n "${RESULTS:-}" ]; then tar czf "$RESULTS" -C "$OUT" .; fi
}
