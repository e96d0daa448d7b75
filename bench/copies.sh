#!/bin/bash
# memmove/memcpy calls and bytes per request in scenario 1's gateway (router + fault +
# split), counted exactly by a perf uprobe on glibc's copy routines over N sequential
# keep-alive requests (after a warm-up at 32 connections). A count, not a timing: it
# shows what a change to how the request's futures and values move saves, which CPU
# measurements on a noisy machine cannot resolve. Needs root and linux-perf.
#
#   bench/copies.sh target/release/wasmgate [N]
set -euo pipefail
BIN=$(realpath "$1"); N=${2:-3000}
cd "$(dirname "$0")/.."
LIBC=$(ldd "$BIN" | awk '/libc.so/ {print $3}')
# glibc picks one variant per CPU (ifunc); probe every unaligned_erms one it has.
mapfile -t SYMS < <(perf probe -x "$LIBC" --funcs='__memmove_*_unaligned_erms' 2>/dev/null | grep -v _chk_)
for s in "${SYMS[@]}"; do
    perf probe -q -x "$LIBC" --add "$s len=%dx:u64" 2>/dev/null || true
done
OUT=$(mktemp -d)
trap 'kill -INT $SP 2>/dev/null; wait $SP 2>/dev/null; rm -rf "$OUT"' EXIT
python3 bench/run.py --serve --wasmgate "$BIN" > "$OUT/serve" 2>"$OUT/serve.err" &
SP=$!
for _ in $(seq 1 240); do grep -q pid= "$OUT/serve" 2>/dev/null && break; sleep 0.5; done
URL=$(awk '{print $1}' "$OUT/serve"); PID=$(sed 's/.*pid=//' "$OUT/serve" | awk '{print $1}')
wrk -t1 -c32 -d2 "$URL" > /dev/null
perf record -q -e 'probe_libc:__memmove_*' -p "$PID" -o "$OUT/perf.data" > /dev/null 2>&1 &
PP=$!
sleep 1
python3 - "$URL" "$N" <<'PY'
import sys, http.client, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
c = http.client.HTTPConnection(u.hostname, u.port)
for _ in range(int(sys.argv[2])):
    c.request("GET", u.path, headers={"Host": u.netloc})
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
PY
sleep 1
kill -INT $PP; wait $PP || true
perf script -i "$OUT/perf.data" -F trace 2>/dev/null | sed 's/.*len=//' | python3 -c "
import sys
lens = [int(x, 0) for x in sys.stdin.read().split()]
print(f'{len(lens) / $N:.1f} copies and {sum(lens) / $N:.0f} bytes per request ($N requests)')"
