#!/bin/bash
# Remake runtime/startup.order: the functions a start of wasmgate runs, listed for
# rust-lld to lay side by side in a release build (runtime/build.rs, startup_order).
#
# It builds the release binary, starts it on examples/quickstart under valgrind's
# callgrind with a filled compile cache (a restart, as bench/run.py's idle scenario
# measures), waits until it is ready, stops it, and lists the functions of the binary
# that ran, in the order callgrind first met them. valgrind cannot reserve the address
# space of the default instance pool, so the start under it asks for a small one
# (--plugin-pool-instances); the code a start runs is the same.
#
# Usage: bench/startup-order.sh        (apt-get install valgrind)
# Then rebuild: cargo build --release -p wasmgate
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed: apt-get install valgrind" >&2; exit 1; }

cargo build --release -p wasmgate
bin=target/release/wasmgate
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

# One start under callgrind; its output to $1. The first start fills the compile cache
# (valgrind's CPU has other features than the machine's, so the cache entries of a
# start outside it would not match), the second is the one listed.
start() {
    local admin pid
    admin=$(free_port)
    WASMGATE_LOG=warn valgrind --tool=callgrind --demangle=no --callgrind-out-file="$1" \
        "$bin" run --config examples/quickstart --admin "127.0.0.1:$admin" \
        --listen-address 127.0.0.1 --compile-cache "$work/cache" --plugin-pool-instances 4 \
        >"$work/valgrind.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do
        curl -sf -m 1 "http://127.0.0.1:$admin/healthz/ready" >/dev/null && break
        kill -0 "$pid" 2>/dev/null || { cat "$work/valgrind.log" >&2; exit 1; }
        sleep 0.5
    done
    sleep 2
    kill -INT "$pid"
    wait "$pid" || true
}
start "$work/first.out"
start "$work/restart.out"

python3 - "$work/restart.out" "$bin" >"$work/order" <<'EOF'
import re, subprocess, sys
cg, binary = sys.argv[1], sys.argv[2]
names, ran, seen = {}, [], set()
for line in open(cg, errors="replace"):
    m = re.match(r"(c?)fn=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if not m:
        continue
    callee, i, name = m.groups()
    if name:
        names[i] = name
    if not callee and i not in seen:
        seen.add(i)
        ran.append(i)
nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True)
code = {p[2] for p in (l.split() for l in nm.stdout.splitlines()) if len(p) == 3 and p[1] in "tTwW"}
mine = [names[i] for i in ran if names.get(i) in code]
sys.stderr.write(f"{len(ran)} functions ran, {len(mine)} of them in {binary}\n")
print("# The functions a start of wasmgate runs, in the order rust-lld lays them out in a")
print("# release build (runtime/build.rs, startup_order). Made by bench/startup-order.sh; do")
print("# not edit by hand. Names a build no longer has are skipped.")
print("\n".join(mine))
EOF
mv "$work/order" runtime/startup.order
echo "runtime/startup.order: $(grep -vc '^#' runtime/startup.order) functions; rebuild with cargo build --release -p wasmgate"
