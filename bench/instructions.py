#!/usr/bin/env python3
"""Instructions per keep-alive request, counted by valgrind's callgrind: scenario 1's
wasmgate (router + fault + split, bench/run.py's config) and nginx proxying to the same
origin. A count, not a time: exact and the same from run to run, so it shows what a
change to the request path saves where CPU per request on a noisy machine cannot. It
counts user-space instructions only (the kernel's half of a request is not in it).

With --atomics it also counts the locked instructions per request (atomic
read-modify-writes: `lock`-prefixed, and `xchg` with memory, which locks without the
prefix), by function. A count cannot weigh them: each is one instruction here but, as a
full barrier, may cost more CPU than one (docs/benchmarks.md, "2026-12-05, 12:40–13:40
UTC: locked instructions per request"). Code with no object file (the plugins' code,
compiled by wasmtime) is not counted: it has no locked instructions.

With --wasm it also names the plugins' compiled code (which callgrind cannot: it has no
object file) from the perf map wasmtime writes with WASMGATE_PERF_MAP=1, and prints the
instructions per request by plugin function. The plugins built into a release gateway
are stripped, so their functions read `wasm[0]::function[N]`; built with their names
(`WASMGATE_PLUGIN_NAMES=1 cargo build --release -p wasmgate`: same code, same function
indices) they read as Rust paths.

Usage: python3 bench/instructions.py [--wasmgate target/release/wasmgate] [--requests 2000]
                                    [--keep DIR] [--atomics] [--wasm]
Needs valgrind (apt-get install valgrind) and nginx (nginx-light).
"""
import argparse
import bisect
import collections
import glob
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402  (bench/run.py: the configs and free_port)


def requests(port: int, n: int) -> None:
    """`n` sequential GET /bench on one keep-alive connection, each answered 200."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(n):
        c.request("GET", "/bench", headers={"Host": "bench.local"})
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            raise SystemExit(f"GET /bench on :{port} answered {r.status}: {body[:200]!r}")
    c.close()


def count(work: Path, name: str, argv: list[str], port: int, n: int,
          atomics: bool = False, env: dict[str, str] | None = None) -> tuple[float, Path, int]:
    """Start `argv` under callgrind, warm it, count `n` requests; instructions per request,
    the dump (per instruction with `atomics`) and the process id (valgrind runs the
    program in its own process)."""
    out = work / f"{name}.callgrind"
    log = work / f"{name}.valgrind.log"
    per_instr = ["--dump-instr=yes"] if atomics else []
    p = subprocess.Popen(["valgrind", "--tool=callgrind", "--separate-threads=no",
                          "--combine-dumps=no", f"--callgrind-out-file={out}"] + per_instr + argv,
                         stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                         env=dict(os.environ, WASMGATE_LOG="warn", **(env or {})))
    try:
        for _ in range(600):
            if p.poll() is not None:
                raise SystemExit(f"{name} exited under valgrind:\n{log.read_text()}")
            try:
                requests(port, 1)
                break
            except OSError:
                time.sleep(0.5)
        requests(port, 300)
        subprocess.run(["callgrind_control", "-z", str(p.pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
        requests(port, n)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
        dump = Path(f"{out}.1")
        for _ in range(60):
            if dump.exists() and dump.stat().st_size > 0:
                break
            time.sleep(0.5)
        time.sleep(1)
    finally:
        p.terminate()
        p.wait()
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1]) / n, dump, p.pid
    raise SystemExit(f"no totals in {dump}")


def jit_functions(dump: Path, perf_map: Path, n: int) -> tuple[float, list[tuple[float, str]]]:
    """Instructions per request in code with no object file (the plugins' code compiled by
    wasmtime), named by wasmtime's perf map: the total and the heaviest functions. The
    same function of several instances (a plugin's allocator, wit-bindgen's glue) counts
    under one name."""
    # wasmtime may list one function twice: by its symbol name, and as
    # `wasm[0]::function[N]::` with the name cut short. The symbol's name is kept.
    best: dict[int, tuple[int, str]] = {}
    for line in perf_map.read_text(errors="replace").splitlines():
        if line.count(" ") < 2:
            continue
        a, size, name = line.split(" ", 2)
        at = int(a, 16)
        kept = best.get(at)
        if kept is None or (kept[1].startswith("wasm[") and not name.startswith("wasm[")):
            best[at] = (int(size, 16), name)
    syms = sorted((at, size, name) for at, (size, name) in best.items())
    starts = [s[0] for s in syms]

    def named(addr: int) -> str:
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < syms[i][0] + syms[i][1]:
            return syms[i][2]
        return f"?? {addr:#x}"

    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", str(dump)],
                         capture_output=True, text=True, check=True).stdout
    by_fn: collections.Counter = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(.*?\)\s+\?\?\?:0x([0-9a-f]+)", line)
        if m:
            by_fn[named(int(m.group(2), 16))] += int(m.group(1).replace(",", ""))
    total = sum(by_fn.values()) / n
    top = by_fn.most_common(25)
    # Rust's symbol names as paths (binutils' c++filt reads them), without crate hashes.
    try:
        names = subprocess.run(["c++filt"], input="\n".join(f for f, _ in top),
                               capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        names = [f for f, _ in top]
    names = [re.sub(r"\[[0-9a-f]{16}\]", "", f) for f in names]
    return total, [(c / n, f) for (_, c), f in zip(top, names)]


def locked_addresses(obj: str) -> dict[int, str]:
    """The locked instructions of an object file: address -> function. objdump's text is
    read as it comes (a release binary's is gigabytes)."""
    found, fn = {}, "?"
    p = subprocess.Popen(["objdump", "-d", "-C", "--no-show-raw-insn", obj],
                         stdout=subprocess.PIPE, text=True, errors="replace")
    assert p.stdout is not None
    for line in p.stdout:
        if line[:1] not in " 0123456789abcdef":
            continue
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line.rstrip("\n"))
        if m:
            fn = m.group(1)
            continue
        # `lock` starts the mnemonic; `xchg` with memory (in parentheses, or a segment
        # operand like `%fs:0x1c`) locks without it.
        m = re.match(r"^\s*([0-9a-f]+):\t(?:lock |xchg\s+\S*(?:\(|%[a-z]s:))", line)
        if m:
            found[int(m.group(1), 16)] = fn
    p.wait()
    return found


def locked(dump: Path, n: int) -> tuple[float, list[tuple[float, str]]]:
    """Locked instructions per request in a `--dump-instr=yes` callgrind dump, and the
    functions that run them (callgrind names an object's code by its own addresses)."""
    names: dict[str, str] = {}
    tables: dict[str, dict[int, str]] = {}
    by_fn: collections.Counter = collections.Counter()
    obj, addr, after_call = "", 0, False
    instr_col, positions, ir_col = 0, 1, 1  # from `positions:` and `events:` below
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("positions:"):
            instr_col = line.split()[1:].index("instr")
            positions = len(line.split()) - 1
            continue
        if line.startswith("events:"):
            ir_col = positions + line.split()[1:].index("Ir")
            continue
        m = re.match(r"(c?)ob=\((\d+)\)(?: (.*))?$", line)
        if m:
            if m.group(3):
                names[m.group(2)] = m.group(3)
            if not m.group(1):
                obj = names.get(m.group(2), "")
                if obj not in tables:
                    tables[obj] = locked_addresses(obj) if os.path.isfile(obj) else {}
            continue
        if line.startswith("calls="):
            after_call = True
            continue
        if not line or line[0] not in "+-*0123456789":
            continue
        parts = line.split()
        pos = parts[instr_col]
        if pos.startswith("0x"):
            at = int(pos, 16)
        elif pos[0] in "+-":
            at = addr + int(pos)
        elif pos == "*":
            at = addr
        else:
            continue
        if after_call:
            # A call's inclusive cost, not the instruction's own; callgrind writes its
            # position without making it the next line's base.
            after_call = False
            continue
        addr = at
        fn = tables.get(obj, {}).get(addr)
        if fn is not None and len(parts) > ir_col:
            by_fn[fn] += int(parts[ir_col])
    total = sum(by_fn.values()) / n
    return total, [(c / n, f) for f, c in by_fn.most_common(15)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasmgate", default="target/release/wasmgate")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--keep", metavar="DIR",
                    help="keep the callgrind dumps in DIR (for callgrind_annotate)")
    ap.add_argument("--atomics", action="store_true",
                    help="also count locked instructions (atomic read-modify-writes) per request")
    ap.add_argument("--wasm", action="store_true",
                    help="also count the plugins' compiled code by function (wasmtime's perf map)")
    a = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            raise SystemExit(f"{tool} is not installed (apt-get install valgrind nginx-light)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.keep) if a.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        origin_port = R.free_port()
        (work / "origin.conf").write_text(R.nginx_origin(work, origin_port))
        origin = subprocess.Popen(["nginx", "-e", "stderr", "-p", str(work), "-c",
                                   str(work / "origin.conf")], stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            port, admin = R.free_port(), R.free_port()
            (work / "wasmgate.yaml").write_text(R.wasmgate_base(port, origin_port) + R.realistic_vs())
            # valgrind cannot reserve the default instance pool's address space.
            wg, wg_dump, wg_pid = count(work, "wasmgate", [a.wasmgate, "run", "--config", str(work / "wasmgate.yaml"),
                                          "--admin", f"127.0.0.1:{admin}", "--listen-address",
                                          "127.0.0.1", "--plugin-pool-instances", "8",
                                          "--compile-cache", str(work / "cache")], port, a.requests,
                                    a.atomics, {"WASMGATE_PERF_MAP": "1"} if a.wasm else None)
            nport = R.free_port()
            conf = R.nginx_proxy(work, nport, origin_port).replace(
                "worker_processes 1;", "worker_processes 1;\nmaster_process off;")
            (work / "nginx-proxy.conf").write_text(conf)
            ng, ng_dump, _ = count(work, "nginx", ["nginx", "-e", "stderr", "-p", str(work), "-c",
                                                str(work / "nginx-proxy.conf")], nport, a.requests,
                                a.atomics)
            if a.wasm:
                perf_map = Path(f"/tmp/perf-{wg_pid}.map")
                if not perf_map.exists():
                    raise SystemExit(f"{perf_map}: wasmtime wrote no perf map")
                jit, jit_top = jit_functions(wg_dump, perf_map, a.requests)
                if a.keep:
                    shutil.copy(perf_map, work / "perf.map")
                perf_map.unlink()
            if a.atomics:
                wg_locked, wg_top = locked(wg_dump, a.requests)
                ng_locked, _ = locked(ng_dump, a.requests)
        finally:
            origin.terminate()
            origin.wait()
    print(f"instructions per keep-alive request ({a.requests} counted, user space):")
    print(f"  wasmgate (router + fault + split): {wg:,.0f}")
    print(f"  nginx (proxy_pass):                {ng:,.0f}")
    print(f"  wasmgate/nginx:                    {wg / ng:.2f}x")
    if a.wasm:
        print(f"  of wasmgate's, the plugins' compiled code: {jit:,.0f}, by function:")
        for c, f in jit_top:
            print(f"    {c:7,.0f}  {f[:110]}")
    if a.atomics:
        print("locked instructions per request (atomic read-modify-writes):")
        print(f"  wasmgate: {wg_locked:.1f}")
        print(f"  nginx:    {ng_locked:.1f}")
        print("  wasmgate's, by function:")
        for c, f in wg_top:
            print(f"    {c:6.1f}  {f[:110]}")


if __name__ == "__main__":
    main()
