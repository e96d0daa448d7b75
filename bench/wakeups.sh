#!/bin/bash
# Wake-ups, cross-CPU wake-up interrupts (IPIs) and context switches per request, and how
# idle the other CPU is, under scenario 1's load: wasmgate (bench/run.py --serve) and
# then nginx proxying to the same origin, each alone on CPU 0, wrk (1 thread, 32
# connections) and the origin on CPU 1, as in bench/run.py. Counts every CPU's
# scheduler events (`perf stat -a`), so run it on a quiet machine, as root.
#
#   bench/wakeups.sh [WASMGATE_BINARY]   # default target/release/wasmgate; ~1 minute
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/wasmgate}
work=$(mktemp -d /tmp/wasmgate-wakeups-XXXXXX)
cleanup() {
    pkill -f "$work/proxy.conf" 2>/dev/null || true
    [ -n "${serve:-}" ] && kill -- -"$serve" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

setsid python3 bench/run.py --serve --wasmgate "$bin" > "$work/serve.log" 2>&1 &
serve=$!
for _ in $(seq 60); do grep -q pid= "$work/serve.log" 2>/dev/null && break; sleep 1; done
url=$(awk '{print $1}' "$work/serve.log")
pid=$(sed 's/.*pid=//' "$work/serve.log")
taskset -a -p -c 0 "$pid" > /dev/null
renice -n 0 -p "$pid" > /dev/null
origin_conf=$(pgrep -af origin.conf | grep -o '/tmp/wasmgate-bench-[A-Za-z0-9_]*/origin.conf' | head -1)
for o in $(pgrep -f "$origin_conf"); do taskset -p -c 1 "$o" > /dev/null; done
origin=$(grep -o '127.0.0.1:[0-9]*' "$origin_conf" | head -1)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

mkdir -p "$work/nginx"
cat > "$work/proxy.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $work/nginx/pid;
error_log stderr warn;
events { worker_connections 8192; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    upstream origin { server $origin; keepalive 128; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }
    }
}
EOF

measure() { # label url
    taskset -c 1 wrk -t1 -c32 -d2s "$2" > /dev/null
    taskset -c 1 wrk -t1 -c32 -d9s "$2" > "$work/wrk-$1.txt" &
    local load=$! before after
    sleep 2
    before=$(grep '^cpu1 ' /proc/stat)
    perf stat -a -x, -e sched:sched_wakeup,irq_vectors:call_function_single_entry,sched:sched_switch \
        -- sleep 5 2> "$work/perf-$1.csv"
    after=$(grep '^cpu1 ' /proc/stat)
    wait "$load"
    python3 - "$1" "$work" "$before" "$after" <<'EOF'
import sys
label, work, before, after = sys.argv[1:]
rps = next(float(l.split()[1]) for l in open(f"{work}/wrk-{label}.txt") if l.startswith("Requests/sec"))
d = [b - a for a, b in zip(map(int, before.split()[1:]), map(int, after.split()[1:]))]
ev = {l.split(",")[2]: int(l.split(",")[0]) for l in open(f"{work}/perf-{label}.csv") if l.count(",") > 3}
n = rps * 5
print(f"{label:9s} {rps:8.0f} req/s  wake-ups/request {ev['sched:sched_wakeup'] / n:.3f}  "
      f"IPIs/request {ev['irq_vectors:call_function_single_entry'] / n:.4f}  "
      f"switches/request {ev['sched:sched_switch'] / n:.3f}  CPU 1 idle {100 * d[3] / sum(d):.1f} %")
EOF
}

measure wasmgate "$url"
taskset -c 0 nginx -e stderr -p "$work/nginx" -c "$work/proxy.conf" > "$work/nginx.log" 2>&1 &
sleep 1
measure nginx "http://127.0.0.1:$port/bench"
