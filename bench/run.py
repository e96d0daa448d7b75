#!/usr/bin/env python3
"""wasmgate side by side with nginx and HAProxy, in one command.

Starts an nginx origin, then puts each peer in front of it in turn (direct, nginx as a
reverse proxy, HAProxy, wasmgate) and drives it with wrk. The proxy runs alone on one
core, wrk and the origin share the other (taskset). Every run is preceded by a warm-up;
each configuration is measured several times and reported as median [min-max].

CPU time per request comes from utime+stime in /proc/<pid>/stat of the proxy's
processes (for nginx: master and worker), read before and after each measured run.
Peak RSS is VmHWM from /proc/<pid>/status (summed over the proxy's processes).

Only 127.0.0.1 is ever contacted. Every process started here is stopped on exit, also
on Ctrl-C or an error. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
ORIGIN_BODY = "hello from origin\n"


# ---------------------------------------------------------------- process handling

class Interrupted(BaseException):
    """SIGINT/SIGTERM: stop everything (not caught as a failed scenario)."""


class Procs:
    """Every process the benchmark starts; all are stopped by close()."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path, cpus: str | None = None,
              env: dict | None = None) -> subprocess.Popen:
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]
        out = open(log, "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env,
                             start_new_session=True)
        out.close()
        self.live.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if p in self.live:
            self.live.remove(p)

    def close(self) -> None:
        for p in list(self.live):
            self.stop(p)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Poll `url` until it answers (any status), or fail with the process's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


def family(pid: int) -> list[int]:
    """pid and all its descendants (nginx: master + worker)."""
    out = [pid]
    i = 0
    while i < len(out):
        p = out[i]
        i += 1
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                out.extend(int(k) for k in kids)
        except OSError:
            pass
    return out


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(user, system) seconds of `pids`."""
    user = system = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        user += int(fields[11])  # utime (field 14)
        system += int(fields[12])  # stime (field 15)
    return user / CLK_TCK, system / CLK_TCK


def status_kib(pids: list[int], key: str) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


# ---------------------------------------------------------------- load generator

@dataclass
class Run:
    rps: float
    p50_us: float
    p99_us: float
    cpu_us_per_req: float
    user_us_per_req: float
    requests: int
    errors: int


UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def parse_latency(text: str, pct: str) -> float:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        raise SystemExit(f"wrk printed no {pct}% latency:\n{text}")
    return float(m.group(1)) * UNITS[m.group(2)]


def wrk(url: str, seconds: float, conns: int, close: bool, cpus: str) -> tuple[str, float]:
    argv = ["taskset", "-c", cpus, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s",
            "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise SystemExit(f"wrk failed: {out.stderr}{out.stdout}")
    return out.stdout, time.monotonic() - started


def measure(url: str, pids: list[int], a: argparse.Namespace, conns: int,
            close: bool) -> Run:
    wrk(url, a.warmup, conns, close, a.client_cpu)
    before = cpu_seconds(pids)
    text, _ = wrk(url, a.duration, conns, close, a.client_cpu)
    after = cpu_seconds(pids)
    m = re.search(r"(\d+) requests in", text)
    requests = int(m.group(1)) if m else 0
    rps_m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    errors = 0
    for pat in (r"Non-2xx or 3xx responses: (\d+)",
                r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"):
        e = re.search(pat, text)
        if e:
            errors += sum(int(g) for g in e.groups())
    if requests == 0 or not rps_m:
        raise SystemExit(f"no requests completed against {url}:\n{text}")
    return Run(
        rps=float(rps_m.group(1)),
        p50_us=parse_latency(text, "50"),
        p99_us=parse_latency(text, "99"),
        cpu_us_per_req=(sum(after) - sum(before)) * 1e6 / requests,
        user_us_per_req=(after[0] - before[0]) * 1e6 / requests,
        requests=requests,
        errors=errors,
    )


@dataclass
class Result:
    peer: str
    runs: list[Run] = field(default_factory=list)
    peak_rss_kib: int = 0

    def med(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)

    def cell(self, attr: str, fmt: str) -> str:
        values = [getattr(r, attr) for r in self.runs]
        return (f"{format(statistics.median(values), fmt)} "
                f"[{format(min(values), fmt)}–{format(max(values), fmt)}]")

    def errors(self) -> int:
        return sum(r.errors for r in self.runs)


# ---------------------------------------------------------------- peers

NGINX_COMMON = """
worker_processes 1;
daemon off;
pid {dir}/{name}.pid;
error_log stderr warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/{name}-body;
    proxy_temp_path {dir}/{name}-proxy;
    fastcgi_temp_path {dir}/{name}-fastcgi;
    uwsgi_temp_path {dir}/{name}-uwsgi;
    scgi_temp_path {dir}/{name}-scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
{body}
}}
"""


def nginx_origin(dir: Path, port: int) -> str:
    body = f"""
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            default_type text/plain;
            return 200 "{ORIGIN_BODY.strip()}\\n";
        }}
    }}"""
    return NGINX_COMMON.format(dir=dir, name="origin", body=body)


def nginx_proxy(dir: Path, port: int, origin: int) -> str:
    body = f"""
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}"""
    return NGINX_COMMON.format(dir=dir, name="nginx-proxy", body=body)


def haproxy_cfg(port: int, origin: int) -> str:
    return f"""
global
    nbthread 1
    maxconn 4000

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend bench
    bind 127.0.0.1:{port}
    default_backend origin

backend origin
    server origin 127.0.0.1:{origin} maxconn 1000
"""


# wasmgate: a Gateway, a ServiceEntry with two labelled endpoints (both the origin),
# a DestinationRule with two subsets, and a VirtualService whose last of ten rules is the
# one the benchmark hits: a weighted split and a 0 % fault, so every request runs the
# router, fault and traffic-split components.

def wasmgate_base(port: int, origin: int) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bench
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: origin
spec:
  hosts: [origin.bench.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {origin}}}
    labels: {{version: v1}}
  - address: 127.0.0.1
    ports: {{http: {origin}}}
    labels: {{version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: origin
spec:
  host: origin.bench.local
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
"""


def realistic_vs() -> str:
    """Ten rules of the kinds real VirtualServices carry; the tenth matches /bench."""
    return "---\n" + (ROOT / "bench/realistic-vs.yaml").read_text()


def scaled_vs(routes: int) -> str:
    """`routes` exact-path rules; the benchmark requests the last one."""
    rules = "".join(
        f"  - name: r{i}\n    match: [{{uri: {{exact: /svc/{i}}}}}]\n"
        f"    route: [{{destination: {{host: origin.bench.local, subset: v{1 + i % 2}}}}}]\n"
        for i in range(routes))
    return f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: scale
spec:
  hosts: ["*"]
  gateways: [bench]
  http:
{rules}"""


EXTRA_PLUGIN = """---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: add-headers
spec:
  url: add-headers.wasm
  phase: STATS
  targetRefs:
  - {group: networking.istio.io, kind: VirtualService, name: shop}
  pluginConfig:
    responseHeaders: {x-powered-by: wasmgate}
"""


@dataclass
class Peer:
    name: str
    port: int
    pids: list[int]
    proc: subprocess.Popen | None


class Bench:
    def __init__(self, a: argparse.Namespace, work: Path) -> None:
        self.a = a
        self.work = work
        self.procs = Procs()
        self.origin_port = free_port()

    # -- starting things

    def start_origin(self) -> None:
        conf = self.work / "origin.conf"
        conf.write_text(nginx_origin(self.work, self.origin_port))
        log = self.work / "origin.log"
        p = self.procs.start(["nginx", "-e", "stderr", "-p", str(self.work), "-c", str(conf)],
                             log, cpus=self.a.client_cpu)
        wait_http(f"http://127.0.0.1:{self.origin_port}/", p, log)

    def start_nginx(self) -> Peer:
        port = free_port()
        conf = self.work / "nginx-proxy.conf"
        conf.write_text(nginx_proxy(self.work, port, self.origin_port))
        log = self.work / "nginx-proxy.log"
        p = self.procs.start(["nginx", "-e", "stderr", "-p", str(self.work), "-c", str(conf)],
                             log, cpus=self.a.proxy_cpu)
        wait_http(f"http://127.0.0.1:{port}/", p, log)
        return Peer("nginx", port, self.pids_of(p), p)

    def start_haproxy(self) -> Peer:
        port = free_port()
        conf = self.work / "haproxy.cfg"
        conf.write_text(haproxy_cfg(port, self.origin_port))
        log = self.work / "haproxy.log"
        p = self.procs.start(["haproxy", "-db", "-f", str(conf)], log, cpus=self.a.proxy_cpu)
        wait_http(f"http://127.0.0.1:{port}/", p, log)
        return Peer("HAProxy", port, self.pids_of(p), p)

    def start_wasmgate(self, name: str, vs: str, plugins: Path | None = None,
                       extra: str = "") -> Peer:
        port = free_port()
        admin = free_port()
        conf = self.work / f"{name}.yaml"
        conf.write_text(wasmgate_base(port, self.origin_port) + vs + extra)
        log = self.work / f"{name}.log"
        argv = [str(self.a.wasmgate), "run", "--config", str(conf),
                "--admin", f"127.0.0.1:{admin}", "--listen-address", "127.0.0.1"]
        if plugins is not None:
            argv += ["--plugins", str(plugins)]
        env = dict(os.environ, WASMGATE_LOG="warn")
        p = self.procs.start(argv, log, cpus=self.a.proxy_cpu, env=env)
        wait_http(f"http://127.0.0.1:{admin}/healthz/ready", p, log)
        return Peer(name, port, self.pids_of(p), p)

    def pids_of(self, p: subprocess.Popen) -> list[int]:
        # Popen ran taskset, which exec'd the proxy: same pid. Wait for nginx's worker.
        for _ in range(100):
            pids = family(p.pid)
            if len(pids) > 1 or not Path(f"/proc/{p.pid}/task").exists():
                break
            if "nginx" not in " ".join(p.args):
                break
            time.sleep(0.02)
        return family(p.pid)

    def stop(self, peer: Peer) -> None:
        if peer.proc is not None:
            self.procs.stop(peer.proc)

    # -- measuring

    def check(self, url: str) -> None:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = r.read().decode()
            if r.status != 200 or body != ORIGIN_BODY:
                raise SystemExit(f"{url} answered {r.status} {body!r}, not the origin's body")

    def measure_peer(self, peer: Peer, path: str, conns: int, close: bool) -> Result:
        url = f"http://127.0.0.1:{peer.port}{path}"
        self.check(url)
        res = Result(peer.name)
        for i in range(self.a.runs):
            run = measure(url, peer.pids, self.a, conns, close)
            res.runs.append(run)
            log(f"  {peer.name:<22} run {i + 1}/{self.a.runs}: {run.rps:>9.0f} rps  "
                f"p50 {run.p50_us:>7.0f} us  p99 {run.p99_us:>7.0f} us  "
                f"cpu {run.cpu_us_per_req:>6.2f} us/req")
        res.peak_rss_kib = status_kib(peer.pids, "VmHWM")
        return res

    def direct(self) -> Peer:
        # The origin's own processes are not "the proxy": CPU/req is not reported.
        return Peer("direct (no proxy)", self.origin_port, [], None)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- reporting

def table(results: list[Result], baseline: dict[str, Result]) -> str:
    lines = ["| peer | requests/s | p50 µs | p99 µs | CPU µs/request | of which user | peak RSS MiB | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        measured = any(x.cpu_us_per_req for x in r.runs)
        cpu = r.cell("cpu_us_per_req", ".1f") if measured else "—"
        user = r.cell("user_us_per_req", ".1f") if measured else "—"
        rss = f"{r.peak_rss_kib / 1024:.1f}" if r.peak_rss_kib else "—"
        lines.append(f"| {r.peer} | {r.cell('rps', '.0f')} | {r.cell('p50_us', '.0f')} | "
                     f"{r.cell('p99_us', '.0f')} | {cpu} | {user} | {rss} | {r.errors()} |")
    wg = next((r for r in results if r.peer.startswith("wasmgate")), None)
    if wg is not None:
        lines.append("")
        for name, peer in baseline.items():
            if peer is None:
                continue
            lines.append(
                f"- wasmgate/{name}: throughput **{wg.med('rps') / peer.med('rps'):.2f}x**, "
                f"CPU per request **{wg.med('cpu_us_per_req') / peer.med('cpu_us_per_req'):.2f}x** "
                f"(user {wg.med('user_us_per_req') / peer.med('user_us_per_req'):.1f}x), "
                f"p99 {wg.med('p99_us') / peer.med('p99_us'):.2f}x, "
                f"peak RSS {wg.peak_rss_kib / max(peer.peak_rss_kib, 1):.2f}x")
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    return (f"{os.cpu_count()} × {cpu}; {platform.system()} {platform.release()}; "
            f"{version(['nginx', '-v'])}; {version(['haproxy', '-v'])}; "
            f"{version(['wrk', '-v'])}; wasmgate {version([str(ROOT / 'target/release/wasmgate'), '--version'])}")


# ---------------------------------------------------------------- scenarios

def scenario_peers(b: Bench, close: bool, conns: int) -> str:
    results: list[Result] = []
    base: dict[str, Result] = {}
    results.append(b.measure_peer(b.direct(), "/bench", conns, close))
    for start in (b.start_nginx, b.start_haproxy):
        peer = start()
        try:
            r = b.measure_peer(peer, "/bench", conns, close)
        finally:
            b.stop(peer)
        results.append(r)
        base[peer.name] = r
    peer = b.start_wasmgate("wasmgate", realistic_vs())
    try:
        results.append(b.measure_peer(peer, "/bench", conns, close))
    finally:
        b.stop(peer)
    results[-1].peer = "wasmgate (router+fault+split)"
    return table(results, base)


def scenario_scale(b: Bench, conns: int) -> str:
    results = []
    for n in (10, 100, 1000):
        peer = b.start_wasmgate(f"wasmgate-{n}", scaled_vs(n))
        try:
            r = b.measure_peer(peer, f"/svc/{n - 1}", conns, False)
        finally:
            b.stop(peer)
        r.peer = f"wasmgate, {n} routes"
        results.append(r)
    text = table(results, {})
    ten = results[0].med("cpu_us_per_req")
    text += "\n\n" + "\n".join(
        f"- CPU per request at {n} routes / at 10 routes: "
        f"**{r.med('cpu_us_per_req') / ten:.2f}x**"
        for n, r in zip((100, 1000), results[1:]))
    return text


def scenario_plugin(b: Bench, plugins: Path) -> str:
    """One connection, so latency is service time, not queueing."""
    results = []
    for name, extra in (("wasmgate", ""), ("wasmgate + add-headers", EXTRA_PLUGIN)):
        peer = b.start_wasmgate(name.replace(" + ", "-"), realistic_vs(), plugins, extra)
        try:
            r = b.measure_peer(peer, "/bench", 1, False)
        finally:
            b.stop(peer)
        r.peer = name
        results.append(r)
    without, with_ = results
    text = table(results, {})
    text += (f"\n\n- added by one plugin: p50 **{with_.med('p50_us') - without.med('p50_us'):+.1f} µs**, "
             f"p99 **{with_.med('p99_us') - without.med('p99_us'):+.1f} µs**, "
             f"CPU **{with_.med('cpu_us_per_req') - without.med('cpu_us_per_req'):+.2f} µs/request**")
    return text


def idle_rss(b: Bench) -> str:
    """wasmgate with the bundled quickstart example, before any traffic: a first start
    (compiles the components into an empty compile cache) and a restart (loads them)."""
    cache = b.work / "compile-cache"
    lines = []
    for label in ("first start (empty compile cache)", "restart (compile cache filled)"):
        admin = free_port()
        log_path = b.work / "quickstart.log"
        env = dict(os.environ, WASMGATE_LOG="warn")
        started = time.monotonic()
        p = b.procs.start([str(b.a.wasmgate), "run", "--config", str(ROOT / "examples/quickstart"),
                           "--admin", f"127.0.0.1:{admin}", "--listen-address", "127.0.0.1",
                           "--compile-cache", str(cache)],
                          log_path, cpus=b.a.proxy_cpu, env=env)
        try:
            wait_http(f"http://127.0.0.1:{admin}/healthz/ready", p, log_path)
            ready = time.monotonic() - started
            time.sleep(2)
            rss = status_kib([p.pid], "VmRSS")
            hwm = status_kib([p.pid], "VmHWM")
        finally:
            b.procs.stop(p)
        lines.append(f"- idle RSS with `examples/quickstart`, {label}: **{rss / 1024:.1f} MiB** "
                     f"(peak {hwm / 1024:.1f} MiB); ready after {ready:.2f} s")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wasmgate", type=Path, default=ROOT / "target/release/wasmgate")
    ap.add_argument("--duration", type=float, default=10, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=3, help="seconds of warm-up per run")
    ap.add_argument("--runs", type=int, default=5, help="measured runs per configuration")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--proxy-cpu", default="0", help="core the proxy runs on")
    ap.add_argument("--client-cpu", default="1", help="core for wrk and the origin")
    ap.add_argument("--scenarios", default="1,2,3,4,idle",
                    help="comma list of 1 (peers), 2 (route scale), 3 (extra plugin), "
                         "4 (new connection per request), idle")
    ap.add_argument("--plugins", type=Path,
                    help="directory holding add-headers.wasm (built if absent)")
    ap.add_argument("--out", type=Path, default=ROOT / "target/bench/report.md")
    ap.add_argument("--serve", action="store_true",
                    help="start the origin and wasmgate with scenario 1's config, print the "
                         "URL and wait (for profiling with perf or valgrind); Ctrl-C stops")
    a = ap.parse_args()

    for tool in ("nginx", "haproxy", "wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: apt-get install nginx-light haproxy wrk util-linux")
    if not a.wasmgate.exists():
        raise SystemExit(f"{a.wasmgate} not found: run `cargo build --release -p wasmgate`")
    wanted = set(a.scenarios.split(","))

    with tempfile.TemporaryDirectory(prefix="wasmgate-bench-") as tmp:
        work = Path(tmp)
        b = Bench(a, work)
        def on_signal(signum, _frame):
            b.procs.close()
            raise Interrupted(signum)
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        sections = []
        try:
            b.start_origin()
            if a.serve:
                peer = b.start_wasmgate("wasmgate", realistic_vs())
                print(f"http://127.0.0.1:{peer.port}/bench pid={peer.pids[0]}", flush=True)
                peer.proc.wait()
                return 0
            def section(title: str, run) -> None:
                # A failing scenario is reported in its section; the others still run.
                try:
                    sections.append((title, run()))
                except (SystemExit, subprocess.SubprocessError, OSError) as e:
                    log(f"{title}: FAILED: {e}")
                    sections.append((title, f"**failed**: `{str(e).strip()[:500]}`"))
                    b.procs.close()
                    b.start_origin()

            if "1" in wanted:
                log("scenario 1: keep-alive, the whole chain")
                section("1. Keep-alive, wasmgate running its whole Wasm chain",
                        lambda: scenario_peers(b, False, a.connections))
            if "2" in wanted:
                log("scenario 2: route-table scale")
                section("2. Route-table scale (request matches the last route)",
                        lambda: scenario_scale(b, a.connections))
            if "3" in wanted:
                def plugin_scenario() -> str:
                    plugins = a.plugins
                    if plugins is None:
                        plugins = work / "plugins"
                        plugins.mkdir(exist_ok=True)
                        log("building plugins/add-headers with `wasmgate build-plugin`")
                        built = subprocess.run(
                            [str(a.wasmgate), "build-plugin", str(ROOT / "plugins/add-headers"),
                             "--out", str(plugins),
                             "--target-dir", str(ROOT / "target/wasm-plugins")],
                            check=True, capture_output=True, text=True)
                        # It prints the file it wrote (named after the package).
                        Path(built.stdout.strip().splitlines()[-1]).rename(
                            plugins / "add-headers.wasm")
                    log("scenario 3: one extra user plugin (1 connection)")
                    return scenario_plugin(b, plugins)
                section("3. One extra user plugin (one connection: latency is service time)",
                        plugin_scenario)
            if "4" in wanted:
                log("scenario 4: a new connection per request")
                section("4. A new connection per request (`Connection: close`)",
                        lambda: scenario_peers(b, True, a.connections))
            if "idle" in wanted:
                section("Memory at rest", lambda: idle_rss(b))
        finally:
            b.procs.close()

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = [f"# wasmgate benchmark, {now}", "",
              f"Machine: {machine()}", "",
              f"Layout: proxy on CPU {a.proxy_cpu}; wrk (1 thread, {a.connections} connections) "
              f"and the nginx origin on CPU {a.client_cpu}. {a.runs} runs of {a.duration:g} s, "
              f"each after {a.warmup:g} s of warm-up; cells are median [min–max].", ""]
    for title, body in sections:
        report += [f"## {title}", "", body, ""]
    text = "\n".join(report)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)
    log(f"report written to {a.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Interrupted as stop:
        log("interrupted; every process started was stopped")
        sys.exit(128 + stop.args[0])
