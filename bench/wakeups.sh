#!/bin/bash
# Wake-ups, wake-up interrupts (IPIs) and context switches per request, and how idle the
# other CPU is, under scenario 1's load: wasmgate (`bench/run.py --serve`), then nginx
# proxying to the same kind of origin (`--serve-nginx`), each alone on CPU 0 with wrk
# (1 thread, 32 connections) and the origin on CPU 1, pinned by bench/run.py as in its
# scenario 1. Counts the scheduler events of every CPU (`perf stat -a`), so run it on a
# quiet machine, as root, on x86 (the `irq_vectors` tracepoints).
#
#   bench/wakeups.sh [WASMGATE_BINARY]   # default target/release/wasmgate; about 1 minute
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/wasmgate}
work=$(mktemp -d /tmp/wasmgate-wakeups-XXXXXX)
serve=
load=
stop() {
    if [ -n "$load" ]; then kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true; fi
    if [ -n "$serve" ]; then kill -- -"$serve" 2>/dev/null || true; wait "$serve" 2>/dev/null || true; fi
    load= serve=
}
trap 'stop; rm -rf "$work"' EXIT

# Start `bench/run.py $1` in a session of its own and set `url` from its first line.
start() {
    setsid python3 bench/run.py "$1" --wasmgate "$bin" > "$work/serve.log" 2>&1 &
    serve=$!
    local line=
    for _ in $(seq 240); do
        line=$(grep -m1 ' pid=' "$work/serve.log" || true)
        [ -n "$line" ] && break
        if ! kill -0 "$serve" 2>/dev/null; then break; fi
        sleep 0.5
    done
    if [ -z "$line" ]; then
        echo "bench/run.py $1 did not start:" >&2
        cat "$work/serve.log" >&2
        exit 1
    fi
    url=${line%% *}
}

measure() { # label
    taskset -c 1 wrk -t1 -c32 -d2s "$url" > /dev/null
    taskset -c 1 wrk -t1 -c32 -d9s "$url" > "$work/wrk.txt" &
    load=$!
    sleep 2
    local before after
    before=$(grep '^cpu1 ' /proc/stat)
    perf stat -a -x, -o "$work/perf.csv" \
        -e sched:sched_wakeup,sched:sched_switch \
        -e irq_vectors:call_function_single_entry,irq_vectors:reschedule_entry \
        -- sleep 5
    after=$(grep '^cpu1 ' /proc/stat)
    wait "$load"
    load=
    python3 - "$1" "$work" "$before" "$after" <<'EOF'
import sys
label, work, before, after = sys.argv[1:]
rps = next(float(l.split()[1]) for l in open(f"{work}/wrk.txt") if l.startswith("Requests/sec"))
if rps <= 0:
    raise SystemExit(f"{label}: no requests answered")
# user nice system idle iowait irq softirq steal (guest time is already in user and nice)
d = [b - a for a, b in zip(map(int, before.split()[1:9]), map(int, after.split()[1:9]))]
counts = {}
for line in open(f"{work}/perf.csv"):
    fields = line.split(",")
    if len(fields) > 3 and fields[0].isdigit():
        counts[fields[2]] = int(fields[0])
n = rps * 5
# Function-call IPIs carry a wake-up queued for a CPU (the kernel queues it when that
# CPU is idle); reschedule IPIs tell a busy CPU to switch to what was woken.
per = lambda event: counts.get(event, 0) / n
print(f"{label:9s} {rps:8.0f} req/s  wake-ups/request {per('sched:sched_wakeup'):.3f}  "
      f"IPIs/request: function-call {per('irq_vectors:call_function_single_entry'):.4f}, "
      f"reschedule {per('irq_vectors:reschedule_entry'):.4f}  "
      f"switches/request {per('sched:sched_switch'):.3f}  CPU 1 idle {100 * d[3] / sum(d):.1f} %")
EOF
}

start --serve
measure wasmgate
stop
start --serve-nginx
measure nginx
