#!/bin/bash
# Remake runtime/startup.order: the functions a start of wasmgate runs, listed for
# rust-lld to lay side by side in a release build (runtime/build.rs, startup_order).
#
# It builds the release binary, starts it on examples/quickstart (its ports moved to
# free ones) under valgrind's callgrind with a filled compile cache (a restart, as
# bench/run.py's idle scenario measures), has callgrind dump what ran once the gateway
# is ready (so the shutdown that follows is not listed), stops it, and lists the
# binary's functions that ran, as callgrind lists them (grouped by object file).
# valgrind cannot reserve the address space of the default instance pool, so the
# starts under it ask for a small one (--plugin-pool-instances); the code a start runs
# is the same.
#
# Usage: bench/startup-order.sh        (apt-get install valgrind curl)
# Then rebuild: cargo build --release -p wasmgate
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in valgrind callgrind_control curl nm python3; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed (apt-get install valgrind curl binutils python3)" >&2; exit 1; }
done

cargo build --release -p wasmgate
bin="${CARGO_TARGET_DIR:-target}/release/wasmgate"
work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

# The quickstart with its ports (8080, 8081, 8082) moved to free ones.
mkdir "$work/config"
moved="s/\b8080\b/$(free_port)/g; s/\b8081\b/$(free_port)/g; s/\b8082\b/$(free_port)/g"
for file in examples/quickstart/*.yaml; do
    sed -e "$moved" "$file" >"$work/config/$(basename "$file")"
done

# One start under callgrind; what it ran until ready is dumped to $1.1. The first
# start fills the compile cache (valgrind's CPU has other features than the machine's,
# so the entries of a start outside it would not match), the second is the one listed.
start() {
    local admin ready=
    admin=$(free_port)
    rm -f "$1" "$1".*
    WASMGATE_LOG=warn valgrind --tool=callgrind --demangle=no --separate-threads=no \
        --combine-dumps=no --callgrind-out-file="$1" \
        "$bin" run --config "$work/config" --admin "127.0.0.1:$admin" \
        --listen-address 127.0.0.1 --compile-cache "$work/cache" --plugin-pool-instances 4 \
        >"$work/valgrind.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do
        if curl -sf -m 1 "http://127.0.0.1:$admin/healthz/ready" >/dev/null; then ready=1; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if [ -z "$ready" ]; then
        echo "wasmgate under valgrind did not become ready:" >&2
        cat "$work/valgrind.log" >&2
        exit 1
    fi
    sleep 2
    callgrind_control -d "$pid" >/dev/null
    for _ in $(seq 1 60); do [ -s "$1.1" ] && break; sleep 0.5; done
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" || true
    pid=
    [ -s "$1.1" ] || { echo "callgrind wrote no dump at $1.1" >&2; exit 1; }
}
start "$work/first.out"
start "$work/restart.out"

python3 - "$work/restart.out.1" "$bin" >"$work/order" <<'EOF'
import os, re, subprocess, sys
cg, binary = sys.argv[1], sys.argv[2]
objects, names, ran, seen = {}, {}, [], set()
current = None  # the object the following fn= lines belong to
for line in open(cg, errors="replace"):
    line = line.rstrip("\n")
    m = re.match(r"(c?)ob=\((\d+)\)(?: (.*))?$", line)
    if m:
        callee, i, path = m.groups()
        if path:
            objects[i] = os.path.realpath(path)
        if not callee:
            current = objects.get(i)
        continue
    m = re.match(r"(c?)fn=\((\d+)\)(?: (.*))?$", line)
    if not m:
        continue
    callee, i, name = m.groups()
    if name:
        names[i] = name
    if not callee and current == os.path.realpath(binary) and i not in seen:
        seen.add(i)
        ran.append(i)
nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True)
code = {p[2] for p in (l.split() for l in nm.stdout.splitlines()) if len(p) == 3 and p[1] in "tTwW"}
mine = [names[i] for i in ran if names.get(i) in code]
sys.stderr.write(f"{len(ran)} functions of {binary} ran, {len(mine)} of them named in its symbols\n")
if len(mine) < 100:
    sys.exit(f"only {len(mine)} functions found: is {cg} a callgrind dump of {binary}?")
print("# The functions a start of wasmgate runs, in the order rust-lld lays them out in a")
print("# release build (runtime/build.rs, startup_order). Made by bench/startup-order.sh; do")
print("# not edit by hand. Names a build no longer has are skipped.")
print("\n".join(mine))
EOF
mv "$work/order" runtime/startup.order
echo "runtime/startup.order: $(grep -vc '^#' runtime/startup.order) functions; rebuild with cargo build --release -p wasmgate"
