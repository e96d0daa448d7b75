#!/usr/bin/env python3
"""Two wasmgate replicas following one etcd prefix: how fast a change reaches both.

Starts etcd (Debian's /usr/bin/etcd) on free loopback ports with a temporary data dir,
an origin (nginx, or a Python http.server when nginx is not installed) and two
`wasmgate run --config etcd://.../bench` replicas, one listening on 127.0.0.1 and one on
127.0.0.2 (the same Gateway port: they share the config). Then measures:

  (a) convergence: --changes writes of one VirtualService, each setting the response
      header `x-change: i`; both replicas are polled every --poll-ms until each answers
      with it. Median, p90 and max per replica and for both;
  (b) the cost of an apply with --hosts VirtualServices (one route each, host
      h{i}.bench): from the write to each replica serving the last host, RSS before and
      after; then --big-changes changes as in (a) with them loaded, and the time to
      remove them again;
  (c) failed requests under load: all through (a), wrk (or a Python client thread)
      sends requests to replica 1; non-200 answers and connection errors are counted
      (target: zero).

Writes go through `etcdctl put` (ETCDCTL_API=3; `etcdctl txn` for several keys). Times
are taken from just before etcdctl is spawned, so they include its process start;
etcdctl's own spawn-to-exit time is reported beside them (and the convergence also from
etcdctl's exit: etcd has committed the write by then, but on a busy machine etcdctl may
exit after the replicas applied it, so that row can go below zero). The replicas are
polled while etcdctl runs. `--writer http` writes through etcd's JSON gateway instead
(/v3/kv/put, /v3/kv/txn on a keep-alive connection): no process start, times from just
before the request.

Only loopback addresses are contacted. Every process started here is stopped on exit,
also on Ctrl-C or an error. Prints a markdown report and writes it to
target/bench/fleet.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import json
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
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# The rig's process helpers (bench/run.py runs nothing when imported).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import family, wait_http  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "bench"
REPLICA_ADDRS = ("127.0.0.1", "127.0.0.2")
CHANGE_HOST = "change.bench"
ORIGIN_BODY = "hello from origin\n"
# etcd's default --max-request-bytes is 1.5 MiB; the limit is per request (a txn is one),
# so a bigger key set is split into keys of at most MAX_VALUE bytes, written in one txn,
# and etcd is started with a limit raised to fit.
MAX_VALUE = 1_400_000
CONVERGENCE_TARGET_S = 1.0


# ---------------------------------------------------------------- process handling

class Interrupted(BaseException):
    """SIGINT/SIGTERM: stop everything."""


class Procs:
    """Every process started here; close() stops them all (their whole sessions)."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        out = open(log, "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env, start_new_session=True)
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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    """A port free on every replica address (they all bind the Gateway's port)."""
    while True:
        with socket.socket() as s:
            s.bind((REPLICA_ADDRS[0], 0))
            port = s.getsockname()[1]
        try:
            for addr in REPLICA_ADDRS[1:]:
                with socket.socket() as s:
                    s.bind((addr, port))
            return port
        except OSError:
            continue


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def status_mib(pid: int, key: str) -> float:
    """VmRSS/VmHWM of `pid` and its children, MiB."""
    total = 0
    for p in family(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ---------------------------------------------------------------- config documents

def base_config(port: int, origin: int) -> str:
    """The Gateway (every host, `port`) and the origin's ServiceEntry."""
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
"""


def change_vs(i: int) -> str:
    """The VirtualService each change rewrites: CHANGE_HOST to the origin, `x-change: i`
    on its responses."""
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: change
spec:
  hosts: [{CHANGE_HOST}]
  gateways: [bench]
  http:
  - route: [{{destination: {{host: origin.bench.local}}}}]
    headers:
      response:
        set: {{x-change: "{i}"}}
"""


def host_name(i: int) -> str:
    return f"h{i}.bench"


def hosts_vs(i: int) -> str:
    """VirtualService h{i} for host h{i}.bench: one route to the origin."""
    return f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: h{i}
spec:
  hosts: [{host_name(i)}]
  gateways: [bench]
  http:
  - name: r0
    match: [{{uri: {{prefix: /}}}}]
    route: [{{destination: {{host: origin.bench.local}}}}]
"""


def split_values(docs: list[str], limit: int = MAX_VALUE) -> list[str]:
    """`docs` (each starting with `---`) joined into as few values as keep each under
    `limit` bytes; no value starts with `---` (etcdctl would read it as a flag)."""
    values, cur = [], ""
    for d in docs:
        if cur and len(cur.encode()) + len(d.encode()) > limit:
            values.append(cur)
            cur = ""
        cur += d
    if cur:
        values.append(cur)
    return [v.removeprefix("---\n") for v in values]


# ---------------------------------------------------------------- origin

NGINX_ORIGIN = """
worker_processes 1;
daemon off;
pid {dir}/origin.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/origin-body;
    proxy_temp_path {dir}/origin-proxy;
    fastcgi_temp_path {dir}/origin-fastcgi;
    uwsgi_temp_path {dir}/origin-uwsgi;
    scgi_temp_path {dir}/origin-scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "{body}\\n";
        }}
    }}
}}
"""


class PyOrigin:
    """200 and ORIGIN_BODY from a ThreadingHTTPServer (when nginx is not installed)."""

    def __init__(self) -> None:
        import http.server
        body = ORIGIN_BODY.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- HTTP probing

class Probe:
    """One keep-alive connection to a replica; get() returns (status, x-change) or
    (None, error) and reconnects after an error."""

    def __init__(self, addr: str, port: int) -> None:
        self.addr, self.port = addr, port
        self.conn: http.client.HTTPConnection | None = None
        self.errors = 0

    def get(self, host: str, path: str = "/") -> tuple[int | None, str | None]:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.addr, self.port, timeout=5)
            self.conn.request("GET", path, headers={"Host": host})
            r = self.conn.getresponse()
            r.read()
            if r.getheader("connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            return r.status, r.getheader("x-change")
        except (OSError, http.client.HTTPException) as e:
            self.errors += 1
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return None, f"{type(e).__name__}: {e}"

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@dataclass
class Load:
    """Requests sent to replica 1 during the changes."""
    tool: str
    requests: int = 0
    non_200: int = 0
    conn_errors: int = 0
    seconds: float = 0.0
    detail: str = ""
    statuses: dict[int, int] = field(default_factory=dict)


class PyLoad:
    """A thread sending requests back to back on one keep-alive connection."""

    def __init__(self, addr: str, port: int) -> None:
        self.probe = Probe(addr, port)
        self.stop_flag = threading.Event()
        self.result = Load("Python client thread (1 keep-alive connection)")
        self.first_errors: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> None:
        self.started = time.perf_counter()
        self.thread.start()

    def run(self) -> None:
        r = self.result
        while not self.stop_flag.is_set():
            status, what = self.probe.get(CHANGE_HOST)
            r.requests += 1
            if status is None:
                r.conn_errors += 1
                if len(self.first_errors) < 5:
                    self.first_errors.append(what or "?")
                time.sleep(0.001)
            else:
                r.statuses[status] = r.statuses.get(status, 0) + 1
                if status != 200:
                    r.non_200 += 1

    def stop(self) -> Load:
        self.stop_flag.set()
        self.thread.join()
        self.probe.close()
        r = self.result
        r.seconds = time.perf_counter() - self.started
        r.detail = ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items()))
        if self.first_errors:
            r.detail += "; first errors: " + "; ".join(self.first_errors)
        return r


class WrkLoad:
    """wrk with a long duration, stopped with SIGINT (it then prints its summary)."""

    def __init__(self, wrk: str, addr: str, port: int, conns: int, work: Path,
                 procs: Procs) -> None:
        self.procs = procs
        self.log = work / "wrk.log"
        self.argv = [wrk, "-t1", f"-c{conns}", "-d3600s", "--timeout", "5s",
                     "-H", f"Host: {CHANGE_HOST}", f"http://{addr}:{port}/"]
        self.conns = conns

    def start(self) -> None:
        self.started = time.perf_counter()
        self.p = self.procs.start(self.argv, self.log)
        time.sleep(0.3)
        if self.p.poll() is not None:
            raise SystemExit(f"wrk exited at once:\n{tail(self.log)}")

    def stop(self) -> Load:
        self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.procs.stop(self.p)
        if self.p in self.procs.live:
            self.procs.live.remove(self.p)
        text = tail(self.log, 20000)
        r = Load(f"wrk -t1 -c{self.conns} (keep-alive)")
        m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", text)
        if not m:
            raise SystemExit(f"wrk printed no summary:\n{text}")
        r.requests = int(m.group(1))
        r.seconds = float(m.group(2)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(3)]
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        r.non_200 = int(m.group(1)) if m else 0
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        if m:
            r.conn_errors = sum(int(g) for g in m.groups())
            r.detail = m.group(0)
        r.detail = (r.detail + "; " if r.detail else "") + \
            "wrk counts status >= 400 as non-2xx (a 3xx would pass unseen; none is configured)"
        return r


# ---------------------------------------------------------------- the fleet

@dataclass
class Replica:
    name: str
    addr: str
    admin: int
    proc: subprocess.Popen
    log: Path
    probe: Probe


@dataclass
class Change:
    """One write: seconds from just before etcdctl was spawned (the HTTP request sent)."""
    i: int
    etcdctl_s: float  # the write alone: etcdctl's spawn to exit (the HTTP request's time)
    seen_s: list[float | None]  # per replica, None: timed out

    def both(self) -> float | None:
        return None if None in self.seen_s else max(self.seen_s)  # type: ignore[type-var]


class Fleet:
    def __init__(self, a: argparse.Namespace, work: Path) -> None:
        self.a = a
        self.work = work
        self.procs = Procs()
        self.replicas: list[Replica] = []
        self.origin: PyOrigin | None = None
        self.port = free_port()  # the Gateway's, on every replica address
        self.poll_errors = 0
        self.etcd_http: http.client.HTTPConnection | None = None
        self.poll_non_200: dict[int, int] = {}

    # -- etcd

    def start_etcd(self, max_request: int = 0) -> None:
        """etcd on free loopback ports; with `max_request`, its --max-request-bytes
        (default 1.5 MiB) raised to that."""
        c, p = free_port(), free_port()
        self.etcd_endpoint = f"127.0.0.1:{c}"
        data = self.work / "etcd-data"
        log_path = self.work / "etcd.log"
        argv = [self.a.etcd, "--name", "b", "--data-dir", str(data),
                "--listen-client-urls", f"http://127.0.0.1:{c}",
                "--advertise-client-urls", f"http://127.0.0.1:{c}",
                "--listen-peer-urls", f"http://127.0.0.1:{p}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
                "--initial-cluster", f"b=http://127.0.0.1:{p}",
                "--log-level", "warn"]
        if max_request:
            argv += ["--max-request-bytes", str(max_request)]
        proc = self.procs.start(argv, log_path)
        wait_http(f"http://127.0.0.1:{c}/health", proc, log_path, timeout=30, ok_only=True)

    def etcdctl(self, *args: str) -> list[str]:
        return [self.a.etcdctl, "--endpoints", self.etcd_endpoint, *args]

    def etcd_env(self) -> dict:
        return dict(os.environ, ETCDCTL_API="3")

    def put(self, key: str, value: str) -> None:
        """A write whose timing does not matter."""
        subprocess.run(self.etcdctl("put", f"/{PREFIX}/{key}"), input=value.encode(),
                       env=self.etcd_env(), check=True, capture_output=True, timeout=30)

    def write_cmd(self, values: dict[str, str | None]) -> tuple[list[str], bytes | None]:
        """The etcdctl command (and its stdin) writing `values` (None: delete) at once:
        `put KEY` with the value on stdin for one key, else one `txn`."""
        if len(values) == 1:
            (key, value), = values.items()
            if value is None:
                return self.etcdctl("del", f"/{PREFIX}/{key}"), None
            return self.etcdctl("put", f"/{PREFIX}/{key}"), value.encode()
        # etcdctl txn reads lines: compares, a blank line, success requests, a blank
        # line, failure requests, a blank line. A double-quoted argument is Go-unquoted:
        # json.dumps writes one (ASCII, \n and \" escaped). A value must not start with
        # "-" (it would be read as a flag): split_values strips a leading "---".
        ops = []
        for key, value in values.items():
            ops.append(f"del /{PREFIX}/{key}" if value is None
                       else f"put /{PREFIX}/{key} {json.dumps(value)}")
        stdin = "\n" + "\n".join(ops) + "\n\n\n"
        return self.etcdctl("txn"), stdin.encode()

    # -- the origin and the replicas

    def start_origin(self) -> None:
        if shutil.which("nginx") and not self.a.python_origin:
            self.origin_port = free_port()
            conf = self.work / "origin.conf"
            conf.write_text(NGINX_ORIGIN.format(dir=self.work, port=self.origin_port,
                                                body=ORIGIN_BODY.strip()))
            log_path = self.work / "origin.log"
            p = self.procs.start(["nginx", "-e", "stderr", "-p", str(self.work), "-c",
                                  str(conf)], log_path)
            wait_http(f"http://127.0.0.1:{self.origin_port}/", p, log_path, timeout=30, ok_only=True)
            self.origin_kind = "nginx (1 worker, return 200)"
        else:
            self.origin = PyOrigin()
            self.origin_port = self.origin.port
            self.origin_kind = "Python http.server (ThreadingHTTPServer)"

    def start_replicas(self) -> None:
        url = f"etcd://{self.etcd_endpoint}/{PREFIX}"
        for n, addr in enumerate(REPLICA_ADDRS, 1):
            admin = free_port()
            log_path = self.work / f"r{n}.log"
            argv = [str(self.a.wasmgate), "run", "--config", url,
                    "--admin", f"127.0.0.1:{admin}", "--listen-address", addr,
                    "--replica-id", f"r{n}", "--access-log", "off"]
            env = dict(os.environ, WASMGATE_LOG="warn")
            started = time.perf_counter()
            p = self.procs.start(argv, log_path, env=env)
            self.replicas.append(Replica(f"r{n}", addr, admin, p, log_path,
                                         Probe(addr, self.port)))
            # One at a time: the first start after a build compiles the Wasm components
            # into the compile cache; the second then loads them from it.
            wait_http(f"http://127.0.0.1:{admin}/healthz/ready", p, log_path,
                      timeout=self.a.ready_timeout, ok_only=True)
            log(f"  replica r{n} on {addr}:{self.port} ready after "
                f"{time.perf_counter() - started:.2f} s")

    def check_alive(self) -> None:
        for r in self.replicas:
            if r.proc.poll() is not None:
                raise SystemExit(f"replica {r.name} exited ({r.proc.returncode}):\n{tail(r.log)}")

    # -- timed writes

    def timed_write(self, values: dict[str, str | None], host: str,
                    done: Callable[[int | None, str | None], bool]) -> tuple[float, list[float | None]]:
        """Spawn etcdctl writing `values` (with --writer http: one request to etcd), poll
        every replica (Host: `host`) until `done(status, x_change)` holds for each.
        Returns etcdctl's spawn-to-exit time (the request's) and each replica's time,
        both from just before the spawn (None: not within --timeout)."""
        pending = set(range(len(self.replicas)))
        seen: list[float | None] = [None] * len(self.replicas)
        poll = self.a.poll_ms / 1000
        if self.a.writer == "http":
            t0 = time.perf_counter()
            self.http_write(values)
            return self.poll_until(t0, time.perf_counter() - t0, None, [], host, done,
                                   pending, seen, poll)
        argv, stdin = self.write_cmd(values)
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.etcd_env())
        if stdin is not None:
            # Large values: written from a thread so polling starts at once.
            def feed() -> None:
                try:
                    p.stdin.write(stdin)
                    p.stdin.close()
                except OSError:
                    pass
            threading.Thread(target=feed, daemon=True).start()
        return self.poll_until(t0, None, p, argv, host, done, pending, seen, poll)

    def poll_until(self, t0: float, exited: float | None, p: subprocess.Popen | None,
                   argv: list[str], host: str, done: Callable[[int | None, str | None], bool],
                   pending: set[int], seen: list[float | None],
                   poll: float) -> tuple[float, list[float | None]]:
        """timed_write's polling, from `t0`; `p`: the etcdctl still running (else
        `exited` is the write's time)."""
        while True:
            now = time.perf_counter()
            if exited is None and p is not None and p.poll() is not None:
                exited = now - t0
                if p.returncode != 0:
                    raise SystemExit(f"{' '.join(argv[:4])} failed: {p.stderr.read().decode()}")
            for n in sorted(pending):
                status, change = self.replicas[n].probe.get(host)
                if status is None:
                    self.poll_errors += 1
                elif status not in (200, 404):
                    self.poll_non_200[status] = self.poll_non_200.get(status, 0) + 1
                if done(status, change):
                    seen[n] = time.perf_counter() - t0
                    pending.discard(n)
            if not pending and exited is not None:
                break
            if now - t0 > self.a.timeout:
                self.check_alive()
                break
            time.sleep(poll)
        if exited is None and p is not None:
            p.wait()
            exited = time.perf_counter() - t0
        if p is not None:
            p.stdout.close()
            p.stderr.close()
        assert exited is not None
        return exited, seen

    def http_write(self, values: dict[str, str | None]) -> None:
        """`values` (None: delete) in one request to etcd's JSON gateway: /v3/kv/put for
        one key, else /v3/kv/txn; on a keep-alive connection kept between writes."""
        def b64(text: str) -> str:
            return base64.b64encode(text.encode()).decode()
        if len(values) == 1 and None not in values.values():
            (key, value), = values.items()
            path = "/v3/kv/put"
            body: dict = {"key": b64(f"/{PREFIX}/{key}"), "value": b64(value or "")}
        else:
            path = "/v3/kv/txn"
            body = {"success": [
                {"requestDeleteRange": {"key": b64(f"/{PREFIX}/{k}")}} if v is None else
                {"requestPut": {"key": b64(f"/{PREFIX}/{k}"), "value": b64(v)}}
                for k, v in values.items()]}
        data = json.dumps(body).encode()
        for attempt in (1, 2):
            try:
                if self.etcd_http is None:
                    host, port = self.etcd_endpoint.rsplit(":", 1)
                    self.etcd_http = http.client.HTTPConnection(host, int(port), timeout=30)
                self.etcd_http.request("POST", path, data,
                                       {"content-type": "application/json"})
                r = self.etcd_http.getresponse()
                answer = r.read()
                if r.status != 200:
                    raise SystemExit(f"etcd {path}: {r.status} {answer[:500]!r}")
                return
            except (OSError, http.client.HTTPException):
                if self.etcd_http is not None:
                    self.etcd_http.close()
                self.etcd_http = None
                if attempt == 2:
                    raise

    def changes(self, first: int, count: int) -> list[Change]:
        """`count` changes of the change VirtualService, x-change first..first+count-1,
        each after the previous one reached both replicas and --pause-ms."""
        out = []
        for i in range(first, first + count):
            want = str(i)
            etcdctl_s, seen = self.timed_write(
                {"change": change_vs(i)}, CHANGE_HOST,
                lambda status, change: status == 200 and change == want)
            out.append(Change(i, etcdctl_s, seen))
            if None in seen:
                log(f"  change {i}: not seen within {self.a.timeout:g} s by "
                    f"{[r.name for r, s in zip(self.replicas, seen) if s is None]}")
            time.sleep(self.a.pause_ms / 1000)
        return out


# ---------------------------------------------------------------- reporting

def ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1000:.1f}"


def p90(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]


def stats_row(label: str, xs: list[float | None]) -> str:
    got = [x for x in xs if x is not None]
    missed = len(xs) - len(got)
    if not got:
        return f"| {label} | — | — | — | — | {missed} |"
    return (f"| {label} | {ms(statistics.median(got))} | {ms(p90(got))} | {ms(max(got))} | "
            f"{ms(min(got))} | {missed} |")


WRITERS = {
    "etcdctl": ("from just before etcdctl is spawned", "etcdctl alone (spawn to exit)",
                "from etcdctl's exit"),
    "http": ("from just before the HTTP request to etcd", "the write alone (request to answer)",
             "from etcd's answer"),
}


def convergence_table(changes: list[Change], replicas: list[Replica], writer: str) -> list[str]:
    since, alone, after = WRITERS[writer]
    lines = [f"| measured (ms, {since}) | median | p90 | max | min "
             "| not seen in time |", "|---|---|---|---|---|---|"]
    for n, r in enumerate(replicas):
        lines.append(stats_row(f"replica {r.name} ({r.addr})", [c.seen_s[n] for c in changes]))
    lines.append(stats_row("**both replicas**", [c.both() for c in changes]))
    lines.append(stats_row(alone, [c.etcdctl_s for c in changes]))
    lines.append(stats_row(f"both replicas, {after} (can be < 0: the exit may come late)"
                           if writer == "etcdctl" else f"both replicas, {after}",
                           [None if c.both() is None else c.both() - c.etcdctl_s
                            for c in changes]))
    return lines


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def both_max(changes: list[Change]) -> float | None:
    b = [c.both() for c in changes]
    return None if not b or None in b else max(b)  # type: ignore[type-var]


# ---------------------------------------------------------------- main

def ensure_binary(a: argparse.Namespace) -> None:
    """Build the release binary when it is missing or older than the sources (unless
    --no-build); then it must know --replica-id."""
    binary: Path = a.wasmgate
    if not a.no_build and binary == ROOT / "target/release/wasmgate":
        newest = 0.0
        for d in ("runtime", "plugin-sdk", "plugins", "wit"):
            for f in (ROOT / d).rglob("*"):
                if f.suffix in (".rs", ".toml", ".wit") and "target" not in f.parts:
                    newest = max(newest, f.stat().st_mtime)
        for f in ("Cargo.toml", "Cargo.lock"):
            newest = max(newest, (ROOT / f).stat().st_mtime)
        if not binary.exists() or binary.stat().st_mtime < newest:
            log("building: cargo build --release -p wasmgate (the binary is missing or "
                "older than the sources; --no-build skips this)")
            subprocess.run(["cargo", "build", "--release", "-p", "wasmgate"], cwd=ROOT,
                           check=True)
    if not binary.exists():
        raise SystemExit(f"{binary} not found: run `cargo build --release -p wasmgate`")
    helptext = subprocess.run([str(binary), "run", "--help"], capture_output=True,
                              text=True, timeout=30).stdout
    if "--replica-id" not in helptext:
        raise SystemExit(f"{binary} has no `run --replica-id`: it predates etcd support "
                         "(issue 14); rebuild it")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Measures (a) the convergence of --changes writes on two replicas, (b) the "
               "apply of --hosts VirtualServices (time, RSS), (c) failed requests to replica "
               "1 under load during (a). Prints a markdown report and writes it to --out. "
               "About a minute with the defaults (plus a release build when the binary is "
               "stale).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--wasmgate", type=Path, default=ROOT / "target/release/wasmgate",
                    help="the wasmgate binary (it must know `run --replica-id`)")
    ap.add_argument("--no-build", action="store_true",
                    help="never run cargo build (by default the release binary is built "
                         "when missing or older than the sources)")
    ap.add_argument("--etcd", default="/usr/bin/etcd", help="etcd server binary (3.4+)")
    ap.add_argument("--etcdctl", default="/usr/bin/etcdctl",
                    help="etcdctl, used for every write with --writer etcdctl")
    ap.add_argument("--writer", choices=("etcdctl", "http"), default="etcdctl",
                    help="how timed writes reach etcd: a spawned `etcdctl put`/`txn` (times "
                         "include its process start) or one request to etcd's JSON gateway")
    ap.add_argument("--changes", type=int, default=100,
                    help="changes measured for convergence, under load")
    ap.add_argument("--hosts", type=int, default=1000,
                    help="VirtualServices (one host, one route each) in the big apply; 0 skips it")
    ap.add_argument("--big-changes", type=int, default=20,
                    help="changes measured again with the --hosts VirtualServices loaded")
    ap.add_argument("--poll-ms", type=float, default=2, help="polling interval per round")
    ap.add_argument("--pause-ms", type=float, default=100,
                    help="pause after a change reached both replicas, before the next")
    ap.add_argument("--timeout", type=float, default=10,
                    help="seconds a change may take to reach both replicas")
    ap.add_argument("--ready-timeout", type=float, default=180,
                    help="seconds a replica may take to be ready (the first start after a "
                         "build compiles the Wasm components)")
    ap.add_argument("--load", choices=("auto", "wrk", "python", "none"), default="auto",
                    help="load on replica 1 during the changes: wrk if /usr/bin/wrk exists "
                         "(auto), a Python client thread, or none")
    ap.add_argument("--load-connections", type=int, default=4, help="wrk's connections")
    ap.add_argument("--python-origin", action="store_true",
                    help="use a Python http.server as the origin even when nginx is installed")
    ap.add_argument("--out", type=Path, default=ROOT / "target/bench/fleet.md",
                    help="where the markdown report is written (it is also printed)")
    a = ap.parse_args()

    for tool in (a.etcd, a.etcdctl):
        if not (os.path.exists(tool) or shutil.which(tool)):
            raise SystemExit(f"{tool} not found: apt-get install etcd-server etcd-client")
    load_kind = a.load
    if load_kind == "auto":
        load_kind = "wrk" if os.path.exists("/usr/bin/wrk") else "python"
    ensure_binary(a)

    env_start = loadavg()
    sections: list[tuple[str, list[str]]] = []
    with tempfile.TemporaryDirectory(prefix="wasmgate-fleet-") as tmp:
        work = Path(tmp)
        f = Fleet(a, work)

        def on_signal(signum, _frame):
            f.procs.close()
            raise Interrupted(signum)
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            # (b)'s key set, made first: etcd's request limit must fit it.
            values = split_values([hosts_vs(i) for i in range(a.hosts)]) if a.hosts > 0 else []
            size = sum(len(v.encode()) for v in values)
            max_request = size + (1 << 20) if size > MAX_VALUE else 0
            log(f"starting etcd, the origin and two replicas (work dir {work})")
            f.start_etcd(max_request)
            f.start_origin()
            f.put("gateway", base_config(f.port, f.origin_port))
            f.put("change", change_vs(0))
            f.start_replicas()
            for r in f.replicas:
                status, change = r.probe.get(CHANGE_HOST)
                if status != 200 or change != "0":
                    raise SystemExit(f"replica {r.name} answered {status} x-change={change} "
                                     f"before any change (expected 200, 0):\n{tail(r.log)}")
            rss_start = [status_mib(r.proc.pid, "VmRSS") for r in f.replicas]

            # (a) and (c): the changes, under load on replica 1.
            load = None
            if load_kind == "wrk":
                load = WrkLoad("/usr/bin/wrk", REPLICA_ADDRS[0], f.port, a.load_connections,
                               work, f.procs)
            elif load_kind == "python":
                # The client thread and the pollers share the GIL: switch often, so a
                # poll is not held back by up to the default 5 ms.
                sys.setswitchinterval(0.0005)
                load = PyLoad(REPLICA_ADDRS[0], f.port)
            if load is not None:
                load.start()
            log(f"(a) {a.changes} changes; (c) {load_kind} load on replica r1 meanwhile")
            changes = f.changes(1, a.changes)
            load_result = load.stop() if load is not None else None
            f.check_alive()
            top = both_max(changes)
            timing = ("Times run from just before `etcdctl put` is spawned, so they include "
                      "its process start (its own spawn-to-exit time is the fourth row)."
                      if a.writer == "etcdctl" else
                      "Writes are single requests to etcd's JSON gateway (`/v3/kv/put`, one "
                      "keep-alive connection); times run from just before the request.")
            lines = [f"{a.changes} writes of the VirtualService `change` (key `/{PREFIX}/change`), "
                     f"each setting `x-change: i` on its responses; both replicas polled every "
                     f"{a.poll_ms:g} ms (`Host: {CHANGE_HOST}`) until each answers with it; "
                     f"{a.pause_ms:g} ms pause between changes. {timing}", "",
                     *convergence_table(changes, f.replicas, a.writer), "",
                     f"- Target, a change on both replicas in under {CONVERGENCE_TARGET_S:g} s "
                     f"at the max: {ms(top)} ms: "
                     f"{verdict(top is not None and top < CONVERGENCE_TARGET_S)}"]
            sections.append((f"Convergence: {a.changes} changes, two replicas", lines))

            if load_result is not None:
                lr = load_result
                failed = lr.non_200 + lr.conn_errors
                lines = ["| client | requests | requests/s | non-200 | connection errors |",
                         "|---|---|---|---|---|",
                         f"| {lr.tool} → r1 ({REPLICA_ADDRS[0]}) | {lr.requests} | "
                         f"{lr.requests / max(lr.seconds, 1e-9):.0f} | {lr.non_200} | "
                         f"{lr.conn_errors} |", "",
                         f"- Detail: {lr.detail or '—'}",
                         f"- The pollers (both replicas, {a.poll_ms:g} ms): "
                         f"{f.poll_errors} connection errors, unexpected statuses "
                         f"{f.poll_non_200 or 'none'}",
                         f"- Target, no failed request during {a.changes} applies: "
                         f"{failed} failed: {verdict(failed == 0)}"]
                sections.append(("Failed requests during the applies, under load", lines))

            # (b) the apply of --hosts VirtualServices.
            if a.hosts > 0:
                log(f"(b) applying {a.hosts} VirtualServices")
                keys = {f"hosts-{k}": v for k, v in enumerate(values)}
                last = host_name(a.hosts - 1)
                for r in f.replicas:
                    status, _ = r.probe.get(last)
                    if status != 404:
                        raise SystemExit(f"{r.name} answered {status} for {last} before the apply")
                time.sleep(1)
                before = [status_mib(r.proc.pid, "VmRSS") for r in f.replicas]
                etcdctl_s, seen = f.timed_write(keys, last, lambda s, _c: s == 200)
                at_serving = [status_mib(r.proc.pid, "VmRSS") for r in f.replicas]
                first_ok = [r.probe.get(host_name(0))[0] for r in f.replicas]
                time.sleep(2)
                settled = [status_mib(r.proc.pid, "VmRSS") for r in f.replicas]
                hwm = [status_mib(r.proc.pid, "VmHWM") for r in f.replicas]
                big: list[Change] = []
                if a.big_changes > 0:
                    log(f"    {a.big_changes} changes with them loaded")
                    big = f.changes(a.changes + 1, a.big_changes)
                log("    removing them")
                removed_etcdctl_s, removed = f.timed_write(
                    {k: None for k in keys}, last, lambda s, _c: s == 404)
                time.sleep(2)
                after_removal = [status_mib(r.proc.pid, "VmRSS") for r in f.replicas]
                f.check_alive()
                tool = ("`etcdctl put` (value on stdin)", "`etcdctl txn`") \
                    if a.writer == "etcdctl" else ("`/v3/kv/put`", "`/v3/kv/txn`")
                how = (f"one key, {tool[0]}" if len(keys) == 1 else
                       f"{len(keys)} keys in one {tool[1]}, etcd started with "
                       f"`--max-request-bytes {max_request}` (the default 1.5 MiB limit is "
                       f"per request)")
                since, alone, _ = WRITERS[a.writer]
                names = [f"{r.name} ({r.addr})" for r in f.replicas]
                lines = [f"{a.hosts:,} VirtualServices `h{{i}}` (host `h{{i}}.bench`, one "
                         f"route to the origin each): {size / 1024:.0f} KiB of YAML, written as "
                         f"{how}; {alone}: {ms(etcdctl_s)} ms. Served = "
                         f"`Host: {last}` answers 200 (404 before); times {since}.", "",
                         "| | " + " | ".join(names) + " |",
                         "|---|" + "---|" * len(names),
                         "| serving them after ms | " + " | ".join(ms(s) for s in seen) + " |",
                         f"| `Host: {host_name(0)}` then | " +
                         " | ".join(str(s) for s in first_ok) + " |",
                         "| RSS at start MiB | " + " | ".join(f"{x:.1f}" for x in rss_start) + " |",
                         "| RSS before the apply MiB | " +
                         " | ".join(f"{x:.1f}" for x in before) + " |",
                         "| RSS when serving them MiB | " +
                         " | ".join(f"{x:.1f}" for x in at_serving) + " |",
                         "| RSS 2 s later MiB | " + " | ".join(f"{x:.1f}" for x in settled) + " |",
                         "| peak RSS (VmHWM) by then MiB | " +
                         " | ".join(f"{x:.1f}" for x in hwm) + " |",
                         "| removed (404) after ms | " + " | ".join(ms(s) for s in removed) + " |",
                         "| RSS 2 s after the removal MiB | " +
                         " | ".join(f"{x:.1f}" for x in after_removal) + " |"]
                if big:
                    bt = both_max(big)
                    lines += ["", f"{a.big_changes} changes of `change` as above, with the "
                              f"{a.hosts:,} VirtualServices loaded (every apply rebuilds the "
                              f"whole config):", "", *convergence_table(big, f.replicas, a.writer), "",
                              f"- Under {CONVERGENCE_TARGET_S:g} s at the max: {ms(bt)} ms: "
                              f"{verdict(bt is not None and bt < CONVERGENCE_TARGET_S)}"]
                ok = [s for s in seen if s is not None]
                lines += ["", f"- Under {CONVERGENCE_TARGET_S:g} s to serve {a.hosts:,} "
                          f"VirtualServices on both: "
                          f"{ms(max(ok)) if len(ok) == len(seen) else '—'} ms: "
                          f"{verdict(len(ok) == len(seen) and max(ok) < CONVERGENCE_TARGET_S)}"]
                sections.append((f"Apply of {a.hosts:,} VirtualServices", lines))

            status_text = subprocess.run(
                [str(a.wasmgate), "status", "--config", f"etcd://{f.etcd_endpoint}/{PREFIX}"],
                capture_output=True, text=True, timeout=30)
            sections.append(("`wasmgate status` at the end", [
                "```", (status_text.stdout + status_text.stderr).strip()[:3000], "```"]))
        finally:
            f.procs.close()
            if f.origin is not None:
                f.origin.close()

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip()
                   for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    report = [f"# wasmgate fleet benchmark, {now}", "",
              f"Machine: {os.cpu_count()} × {cpu}; {platform.system()} {platform.release()}; "
              f"load average {env_start} at the start, {loadavg()} at the end (1/5/15 min: "
              f"the machine may be shared, so read the numbers with it)", "",
              f"Software: {version([str(a.wasmgate), '--version'])} "
              f"(`{a.wasmgate.resolve().relative_to(ROOT) if a.wasmgate.resolve().is_relative_to(ROOT) else a.wasmgate}`); "
              f"{version([a.etcd, '--version'])}; {version([a.etcdctl, 'version'])}; "
              f"origin {f.origin_kind}; writes: {a.writer}; load {load_kind}"
              + (f" ({version(['/usr/bin/wrk', '-v'])})" if load_kind == "wrk" else ""), "",
              f"Layout: one etcd (loopback, temporary data dir), two replicas "
              f"`wasmgate run --config etcd://…/{PREFIX} --access-log off` on "
              f"{' and '.join(REPLICA_ADDRS)} (the same Gateway port), nothing pinned.", ""]
    for title, body in sections:
        report += [f"## {title}", "", *body, ""]
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
