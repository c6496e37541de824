#!/usr/bin/env python3
"""Needle against a direct connection, nginx and haproxy, on loopback.

    python3 bench/e2e.py                 # installs, builds, 3 rounds (~15 min)
    python3 bench/e2e.py --rounds 1 --quick   # a smoke run (~2 min)

What it does (docs/benchmarks.md has the why):
- installs wrk, h2load, nginx, haproxy, openssl (scripts/install-bench-deps.sh)
  and builds `needle`, `bench-backend` and `bench-load` in release;
- starts one backend (hyper, HTTP/1.1 + h2c, 2-byte answers);
- for every test, runs every configuration in turn (direct, Needle, nginx,
  haproxy), and repeats the whole sequence for each round (A B C D A B C D),
  so the machine's drift falls on all of them alike;
- tests: HTTP/1.1 at a fixed rate (bench-load, latency percentiles) and at
  fixed concurrency (wrk, throughput); HTTP/2 at a fixed rate and multiplexed
  (h2load); opaque TCP (HTTP/1.1 bytes through each proxy's TCP mode); the
  mesh path (client -> proxy -> mTLS -> proxy -> server, each proxy with its
  peer's certificate verified);
- pins the proxies to CPU 1, and the backend and load generators to CPU 0;
- reads each proxy's CPU time (utime + stime, /proc/PID/stat) around the
  load, its RSS before the load (idle) and its VmHWM after (peak), and the
  CPU every other process on the machine took meanwhile (noise);
- writes bench/results/e2e.json (every round), e2e.md (medians over rounds)
  and SVG plots (latency percentile curves, CPU per 10,000 requests).
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
RESULTS = os.path.join(ROOT, "bench", "results")
BACKEND = 18080
FRONT = 18100  # HTTP/1.1 (and, for Needle, HTTP/2 too: it detects)
FRONT_H2 = 18102  # HTTP/2 with prior knowledge, for nginx and haproxy
MESH_IN = 18200  # the server-side proxy of the mesh pair
PROXY_CPU = "1"
LOAD_CPU = "0"
CONFIGS = ["direct", "needle", "nginx", "haproxy"]
# Not run by default: Needle on tokio's multi-thread runtime (2 workers), for
# the runtime comparison in docs/benchmarks.md (`--configs direct,needle,needle-mt`).
EXTRA_CONFIGS = ["needle-mt"]
TESTS = ["http1", "h2", "opaque", "mesh"]
TRUST_DOMAIN = "bench.local"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/client"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/server"
SERVER_NAME = "server.bench.local"
HZ = os.sysconf("SC_CLK_TCK")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def wait_http(port, timeout=10.0):
    """Waits until a GET through `port` gets a 200 (the whole path is up)."""
    wait_port(port, timeout)
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
                last = s.recv(64)
                if last.startswith(b"HTTP/1.1 200"):
                    return
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"no 200 through port {port}: {last!r}")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def rss_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out["VmRSS"], out["VmHWM"]


def machine_busy_ticks():
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts[:8]) - idle


def tree_ticks(pids):
    """CPU ticks of the processes and all their threads (threads are counted
    in the process's own stat)."""
    total = 0
    for pid in pids:
        try:
            total += cpu_ticks(pid)
        except OSError:
            pass
    return total


def children_cpu():
    """CPU seconds of the finished child processes (the load generators)."""
    t = os.times()
    return t.children_user + t.children_system


# The backend's pid, set once it runs: its CPU is ours, not noise.
BACKEND_PID = None


class Procs:
    """Processes started for one measurement; stopped together."""

    def __init__(self):
        self.procs = []

    def start(self, cmd, cpu, **kw):
        p = subprocess.Popen(
            ["taskset", "-c", cpu] + cmd,
            stdout=subprocess.DEVNULL,
            stderr=kw.pop("stderr", subprocess.DEVNULL),
            **kw,
        )
        self.procs.append(p)
        return p

    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self, timeout=5):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


# --- certificates -----------------------------------------------------------


def make_certs(d):
    """A CA and two leaves (EC P-256): a SPIFFE URI for Needle, a DNS name
    for nginx and haproxy, which verify host names."""
    def run(*args):
        sh(["openssl", *args], cwd=d)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", "/CN=bench-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    for name, spiffe in (("client", CLIENT_ID), ("server", SERVER_ID)):
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key")
        run("req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(
                f"subjectAltName=URI:{spiffe},DNS:{name}.bench.local\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                "keyUsage=critical,digitalSignature\n"
                "basicConstraints=critical,CA:FALSE\n"
            )
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "30", "-extfile", f"{name}.ext")
        with open(os.path.join(d, f"{name}.bundle.pem"), "w") as f:  # haproxy: cert + key
            f.write(open(os.path.join(d, f"{name}.pem")).read())
            f.write(open(os.path.join(d, f"{name}.key")).read())


# --- the proxies ------------------------------------------------------------


def needle(procs, d, name, settings, extra=()):
    args = [os.path.join(RELEASE, "needle"), "run", "--set", "log.filter=warn"]
    for s in list(settings) + list(extra):
        args += ["--set", s]
    return procs.start(args, PROXY_CPU, stderr=open(os.path.join(d, f"{name}.log"), "w"))


def start_needle(procs, d, test, extra=()):
    ports = lambda n: [f"inbound.listen=127.0.0.1:{18190 + n}", f"admin.listen=127.0.0.1:{18290 + n}"]
    if test in ("http1", "h2"):
        needle(procs, d, "needle", [f"outbound.listen=127.0.0.1:{FRONT}",
                                    f"outbound.target=127.0.0.1:{BACKEND}"] + ports(0), extra)
    elif test == "opaque":
        path = os.path.join(d, "opaque.toml")
        with open(path, "w") as f:
            f.write(f'[[service]]\ndst = "127.0.0.1:{BACKEND}"\nprotocol = "opaque"\n'
                    f'[[service.backend]]\nname = "backend"\n'
                    f'endpoint = [{{ addr = "127.0.0.1:{BACKEND}" }}]\n')
        needle(procs, d, "needle", [f"outbound.listen=127.0.0.1:{FRONT}",
                                    f"outbound.target=127.0.0.1:{BACKEND}",
                                    f"discovery.file={path}"] + ports(0), extra)
    else:  # mesh
        ident = lambda who: [f"identity.cert={d}/{who}.pem", f"identity.key={d}/{who}.key",
                             f"identity.trust_bundle={d}/ca.pem"]
        needle(procs, d, "needle-server",
               [f"inbound.listen=127.0.0.1:{MESH_IN}", "inbound.app_ip=127.0.0.1",
                "outbound.listen=127.0.0.1:18201", f"admin.listen=127.0.0.1:{18291}"]
               + ident("server"), extra)
        path = os.path.join(d, "mesh.toml")
        with open(path, "w") as f:
            f.write(f'[[service]]\ndst = "127.0.0.1:{BACKEND}"\n'
                    f'[[service.backend]]\nname = "backend"\n'
                    f'endpoint = [{{ addr = "127.0.0.1:{BACKEND}", identity = "{SERVER_ID}", '
                    f'proxy = "127.0.0.1:{MESH_IN}" }}]\n')
        needle(procs, d, "needle-client",
               [f"outbound.listen=127.0.0.1:{FRONT}", f"outbound.target=127.0.0.1:{BACKEND}",
                f"discovery.file={path}", "inbound.listen=127.0.0.1:18190",
                "admin.listen=127.0.0.1:18290"] + ident("client"), extra)
        wait_port(MESH_IN)


NGINX_HEAD = """worker_processes 1;
daemon off;
master_process off;
error_log {d}/{name}.error.log warn;
pid {d}/{name}.pid;
{modules}
events {{ worker_connections 8192; }}
"""

NGINX_HTTP = """http {{
    access_log off;
    client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
    # nginx closes a connection after 1,000 requests by default (client and
    # upstream); the others do not, so neither does it here.
    keepalive_requests 100000000;
    upstream up {{ server {upstream}; keepalive 64; keepalive_requests 100000000; }}
    server {{
        {listen}
        location / {{
            proxy_pass {scheme}://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            {client_tls}
        }}
    }}
}}
"""


def nginx(procs, d, name, body, stream=False):
    conf = os.path.join(d, f"{name}.conf")
    modules = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;" if stream else ""
    with open(conf, "w") as f:
        f.write(NGINX_HEAD.format(d=d, name=name, modules=modules) + body)
    procs.start(["nginx", "-c", conf, "-p", d], PROXY_CPU,
                stderr=open(os.path.join(d, f"{name}.log"), "w"))


def start_nginx(procs, d, test):
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    plain = dict(d=d, upstream=f"127.0.0.1:{BACKEND}", scheme="http", client_tls="")
    if test in ("http1", "h2"):
        listen = f"listen 127.0.0.1:{FRONT}; listen 127.0.0.1:{FRONT_H2} http2;"
        nginx(procs, d, "nginx", NGINX_HTTP.format(listen=listen, **plain))
    elif test == "opaque":
        nginx(procs, d, "nginx", f"stream {{ server {{ listen 127.0.0.1:{FRONT}; "
                                 f"proxy_pass 127.0.0.1:{BACKEND}; }} }}\n", stream=True)
    else:
        server_listen = (f"listen 127.0.0.1:{MESH_IN} ssl; ssl_protocols TLSv1.3; "
                         f"ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key; "
                         f"ssl_client_certificate {d}/ca.pem; ssl_verify_client on;")
        nginx(procs, d, "nginx-server", NGINX_HTTP.format(listen=server_listen, **plain))
        client_tls = (f"proxy_ssl_certificate {d}/client.pem; proxy_ssl_certificate_key {d}/client.key; "
                      f"proxy_ssl_trusted_certificate {d}/ca.pem; proxy_ssl_verify on; "
                      f"proxy_ssl_name {SERVER_NAME}; proxy_ssl_server_name on; "
                      f"proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;")
        nginx(procs, d, "nginx-client", NGINX_HTTP.format(
            d=d, upstream=f"127.0.0.1:{MESH_IN}", scheme="https", client_tls=client_tls,
            listen=f"listen 127.0.0.1:{FRONT};"))
        wait_port(MESH_IN)


HAPROXY_HEAD = """global
    nbthread 1
    maxconn 4000
defaults
    mode {mode}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
"""


def haproxy(procs, d, name, mode, body):
    conf = os.path.join(d, f"{name}.cfg")
    with open(conf, "w") as f:
        f.write(HAPROXY_HEAD.format(mode=mode) + body)
    procs.start(["haproxy", "-db", "-f", conf], PROXY_CPU,
                stderr=open(os.path.join(d, f"{name}.log"), "w"))


def start_haproxy(procs, d, test):
    backend = f"backend b\n    http-reuse always\n    server s 127.0.0.1:{BACKEND}\n"
    if test in ("http1", "h2"):
        haproxy(procs, d, "haproxy", "http",
                f"frontend f\n    bind 127.0.0.1:{FRONT}\n    bind 127.0.0.1:{FRONT_H2} proto h2\n"
                f"    default_backend b\n" + backend)
    elif test == "opaque":
        haproxy(procs, d, "haproxy", "tcp",
                f"frontend f\n    bind 127.0.0.1:{FRONT}\n    default_backend b\n"
                f"backend b\n    server s 127.0.0.1:{BACKEND}\n")
    else:
        haproxy(procs, d, "haproxy-server", "http",
                f"frontend f\n    bind 127.0.0.1:{MESH_IN} ssl crt {d}/server.bundle.pem "
                f"ca-file {d}/ca.pem verify required ssl-min-ver TLSv1.3\n    default_backend b\n" + backend)
        haproxy(procs, d, "haproxy-client", "http",
                f"frontend f\n    bind 127.0.0.1:{FRONT}\n    default_backend b\n"
                f"backend b\n    http-reuse always\n    server s 127.0.0.1:{MESH_IN} ssl "
                f"crt {d}/client.bundle.pem ca-file {d}/ca.pem verify required "
                f"verifyhost {SERVER_NAME} sni str({SERVER_NAME}) ssl-min-ver TLSv1.3\n")
        wait_port(MESH_IN)


STARTERS = {
    "needle": start_needle,
    "needle-mt": lambda procs, d, test: start_needle(procs, d, test, ["runtime.threads=2"]),
    "nginx": start_nginx,
    "haproxy": start_haproxy,
}


# --- the load ---------------------------------------------------------------

WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d, "p999_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


def last_json(out):
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON in output:\n{out}")


def load(kind, port, opts, d):
    """Runs one load and returns its figures; `requests` is what the proxy
    served during the measured window."""
    taskset = ["taskset", "-c", LOAD_CPU]
    if kind in ("h1-rate", "h2-rate"):
        out = sh(taskset + [os.path.join(RELEASE, "bench-load"), f"127.0.0.1:{port}",
                            "--proto", kind[:2], "--rate", str(opts.rate),
                            "--seconds", str(opts.seconds), "--warmup", "1"])
        r = last_json(out)
        r["requests"] = r["ok"]
        return r
    if kind == "h1-conc":
        lua = os.path.join(d, "report.lua")
        with open(lua, "w") as f:
            f.write(WRK_LUA)
        out = sh(taskset + ["wrk", "-t1", f"-c{opts.connections}", f"-d{opts.throughput_seconds}s",
                            "-s", lua, f"http://127.0.0.1:{port}/"])
        r = last_json(out)
        r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
        return r
    if kind == "h2-conc":
        out = sh(taskset + ["h2load", "-c", "4", "-m", "32", "-D", str(opts.throughput_seconds),
                            "--warm-up-time=1", f"http://127.0.0.1:{port}/"])
        r = {}
        for line in out.splitlines():
            if line.startswith("finished in"):
                r["rps"] = float(line.split(",")[1].split()[0])
            if line.startswith("requests:"):
                nums = [int(w) for w in line.replace(",", " ").split() if w.isdigit()]
                r["requests"], r["errors"] = nums[3], nums[4] + nums[5]
        if "rps" not in r:
            raise RuntimeError(f"h2load said:\n{out}")
        return r
    raise ValueError(kind)


def checked(kind, config, r):
    if not r.get("requests"):
        raise RuntimeError(f"{kind} via {config}: no request succeeded ({r})")
    return r


LOADS = {
    "http1": ["h1-rate", "h1-conc"],
    "h2": ["h2-rate", "h2-conc"],
    "opaque": ["h1-rate", "h1-conc"],
    "mesh": ["h1-rate", "h1-conc"],
}


def measure(test, config, d, opts):
    procs = Procs()
    results = {}
    try:
        if config != "direct":
            STARTERS[config](procs, d, test)
            wait_http(FRONT)
            time.sleep(0.3)
        pids = procs.pids()
        idle = sum(rss_kib(p)[0] for p in pids) if pids else 0
        for kind in LOADS[test]:
            port = BACKEND if config == "direct" else (
                FRONT_H2 if kind.startswith("h2") and config in ("nginx", "haproxy") else FRONT)
            before_cpu, before_busy = tree_ticks(pids), machine_busy_ticks()
            before_ours = tree_ticks([BACKEND_PID]) / HZ + children_cpu()
            t0 = time.time()
            r = checked(kind, config, load(kind, port, opts, d))
            wall = time.time() - t0
            cpu = (tree_ticks(pids) - before_cpu) / HZ
            busy = (machine_busy_ticks() - before_busy) / HZ
            ours = tree_ticks([BACKEND_PID]) / HZ + children_cpu() - before_ours
            r["proxy_cpu_s"] = cpu
            # Every CPU second the machine spent, minus the proxies', the
            # backend's and the load generator's: what else ran meanwhile,
            # as a share of one core.
            r["other_cpu_pct"] = max(0.0, (busy - cpu - ours) / wall * 100)
            r["cpu_s_per_10k"] = cpu / r["requests"] * 1e4 if r["requests"] and pids else 0.0
            results[kind] = r
        results["idle_rss_kib"] = idle
        results["peak_rss_kib"] = sum(rss_kib(p)[1] for p in pids) if pids else 0
        for p in procs.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{config} exited with {p.returncode} during {test}")
    finally:
        procs.stop()
    return results


# --- reporting --------------------------------------------------------------


def median(xs):
    return statistics.median(xs) if xs else 0.0


def summarize(rounds):
    """Medians over rounds, per test, config and load kind."""
    out = {}
    for test in TESTS:
        for config in CONFIGS + EXTRA_CONFIGS:
            runs = [r[test][config] for r in rounds if test in r and config in r[test]]
            if not runs:
                continue
            s = {"idle_rss_kib": median([r["idle_rss_kib"] for r in runs]),
                 "peak_rss_kib": median([r["peak_rss_kib"] for r in runs])}
            for kind in LOADS[test]:
                ks = [r[kind] for r in runs]
                for field in ("p50_us", "p99_us", "p999_us", "rps", "cpu_s_per_10k", "other_cpu_pct"):
                    vals = [k[field] for k in ks if field in k]
                    if vals:
                        s[f"{kind}.{field}"] = median(vals)
                if "curve" in ks[0]:
                    n = len(ks[0]["curve"])
                    s[f"{kind}.curve"] = [[ks[0]["curve"][i][0], median([k["curve"][i][1] for k in ks])]
                                          for i in range(n)]
            out.setdefault(test, {})[config] = s
    return out


def markdown(summary, meta, opts):
    lines = [f"# End-to-end benchmark, {meta['date']}", "",
             f"Machine: {meta['cpu']}, {meta['cores']} cores, kernel {meta['kernel']}. "
             f"Versions: {meta['versions']}.", "",
             f"{meta['rounds']} interleaved rounds; medians over rounds. Proxies pinned to CPU "
             f"{PROXY_CPU}, backend and load generators to CPU {LOAD_CPU}. Fixed rate: "
             f"{opts.rate} req/s for {opts.seconds} s after 1 s of warm-up (bench-load); fixed "
             f"concurrency: wrk, 1 thread, {opts.connections} connections, "
             f"{opts.throughput_seconds} s; HTTP/2: h2load, 4 connections x 32 streams.", ""]
    for test in TESTS:
        if test not in summary:
            continue
        rate_kind, conc_kind = LOADS[test]
        lines += [f"## {test}", "",
                  "| config | p50 µs | p99 µs | p99.9 µs | added p50 | added p99 | added p99.9 "
                  "| throughput (ratio of direct) | CPU s / 10k req | idle RSS MiB | peak RSS MiB | other CPU % |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        direct = summary[test].get("direct", {})
        for config in CONFIGS + EXTRA_CONFIGS:
            s = summary[test].get(config)
            if s is None:
                continue

            def added(field):
                a, b = s.get(f"{rate_kind}.{field}"), direct.get(f"{rate_kind}.{field}")
                if a is None or b is None or config == "direct":
                    return "—"
                return f"+{a - b:.0f} µs (×{a / b:.2f})" if b else f"+{a - b:.0f} µs"

            rps, drps = s.get(f"{conc_kind}.rps", 0), direct.get(f"{conc_kind}.rps", 0)
            name = {"needle": "Needle", "needle-mt": "Needle (multi-thread)"}.get(config, config)
            if test == "mesh" and config != "direct":
                name += " pair"
            lines.append(
                f"| {name} | {s.get(rate_kind + '.p50_us', 0):.0f} | {s.get(rate_kind + '.p99_us', 0):.0f} "
                f"| {s.get(rate_kind + '.p999_us', 0):.0f} | {added('p50_us')} | {added('p99_us')} "
                f"| {added('p999_us')} | {rps:,.0f} req/s ({rps / drps if drps else 0:.2f}) "
                f"| {s.get(conc_kind + '.cpu_s_per_10k', 0):.3f} "
                f"| {s['idle_rss_kib'] / 1024:.1f} | {s['peak_rss_kib'] / 1024:.1f} "
                f"| {max(s.get(rate_kind + '.other_cpu_pct', 0), s.get(conc_kind + '.other_cpu_pct', 0)):.1f} |")
        lines.append("")
    lines += ["Plots: " + ", ".join(f"[{t}](latency-{t}.svg)" for t in TESTS if t in summary)
              + ", [CPU per 10k requests](cpu.svg).", ""]
    return "\n".join(lines)


COLORS = {"direct": "#555555", "needle": "#d62728", "needle-mt": "#ff7f0e", "nginx": "#2ca02c",
          "haproxy": "#1f77b4"}


def svg_latency(test, summary, kind):
    """Latency against percentile, the x axis in nines (50, 90, 99, 99.9...)."""
    import math
    w, h, left, bottom, top, right = 640, 400, 70, 50, 30, 130
    series = {c: s[f"{kind}.curve"] for c, s in summary[test].items() if f"{kind}.curve" in s}
    if not series:
        return None
    xs = lambda p: -math.log10(max(1 - p / 100, 1e-5))
    xmax = xs(99.99)
    ymax = max(v for c in series.values() for p, v in c if p <= 99.99) * 1.1
    X = lambda p: left + (w - left - right) * xs(p) / xmax
    Y = lambda v: h - bottom - (h - top - bottom) * v / ymax
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">{test}: latency by percentile at a fixed rate ({kind})</text>',
           f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>']
    for p in (50, 90, 99, 99.9, 99.99):
        out.append(f'<text x="{X(p)}" y="{h - bottom + 16}" text-anchor="middle">p{p:g}</text>')
        out.append(f'<line x1="{X(p)}" y1="{top}" x2="{X(p)}" y2="{h - bottom}" stroke="#ddd"/>')
    for i in range(6):
        v = ymax * i / 5
        out.append(f'<text x="{left - 6}" y="{Y(v) + 4}" text-anchor="end">{v:.0f}</text>')
    out.append(f'<text x="16" y="{(h) / 2}" transform="rotate(-90 16 {h / 2})" text-anchor="middle">µs</text>')
    for i, (config, curve) in enumerate(series.items()):
        pts = " ".join(f"{X(p):.1f},{Y(v):.1f}" for p, v in curve if p <= 99.99)
        color = COLORS.get(config, "black")
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        out.append(f'<rect x="{w - right + 15}" y="{top + 20 * i}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{w - right + 32}" y="{top + 20 * i + 11}">{config}</text>')
    out.append("</svg>")
    return "\n".join(out)


def svg_cpu(summary):
    w, h, left, bottom, top = 640, 360, 70, 50, 40
    groups = [(t, LOADS[t][1]) for t in TESTS if t in summary]
    configs = [c for c in CONFIGS + EXTRA_CONFIGS if c != "direct" and any(c in summary[t] for t, _ in groups)]
    vmax = max([summary[t].get(c, {}).get(f"{k}.cpu_s_per_10k", 0) for t, k in groups for c in configs] + [1e-9]) * 1.15
    gw = (w - left - 20) / max(len(groups), 1)
    bw = gw / (len(configs) + 1)
    Y = lambda v: h - bottom - (h - top - bottom) * v / vmax
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           '<text x="70" y="18" font-size="14">CPU seconds per 10,000 requests (fixed concurrency; mesh: both proxies)</text>',
           f'<line x1="{left}" y1="{h - bottom}" x2="{w - 20}" y2="{h - bottom}" stroke="black"/>']
    for i in range(6):
        v = vmax * i / 5
        out.append(f'<text x="{left - 6}" y="{Y(v) + 4}" text-anchor="end">{v:.2f}</text>')
    for gi, (t, k) in enumerate(groups):
        x0 = left + gi * gw + bw / 2
        out.append(f'<text x="{x0 + bw * len(configs) / 2}" y="{h - bottom + 16}" text-anchor="middle">{t}</text>')
        for ci, c in enumerate(configs):
            v = summary[t].get(c, {}).get(f"{k}.cpu_s_per_10k", 0)
            out.append(f'<rect x="{x0 + ci * bw:.1f}" y="{Y(v):.1f}" width="{bw * 0.9:.1f}" '
                       f'height="{h - bottom - Y(v):.1f}" fill="{COLORS[c]}"/>')
    for ci, c in enumerate(configs):
        out.append(f'<rect x="{left + 150 * ci}" y="{h - 22}" width="12" height="12" fill="{COLORS[c]}"/>')
        out.append(f'<text x="{left + 150 * ci + 17}" y="{h - 12}">{c}</text>')
    out.append("</svg>")
    return "\n".join(out)


def versions():
    def first(cmd):
        try:
            r = subprocess.run(cmd, text=True, capture_output=True)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    rev = first(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    return (f"needle {rev}; {first(['nginx', '-v'])}; {first(['haproxy', '-v'])}; "
            f"{first(['wrk', '-v'])}; {first(['h2load', '--version'])}; {first(['rustc', '-V'])}")


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=1000, help="fixed-rate requests per second")
    ap.add_argument("--seconds", type=float, default=8, help="fixed-rate measured seconds")
    ap.add_argument("--throughput-seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32, help="wrk connections")
    ap.add_argument("--tests", default=",".join(TESTS))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--quick", action="store_true", help="short loads, for a smoke run")
    ap.add_argument("--no-setup", action="store_true", help="skip installing and building")
    ap.add_argument("--out", default=RESULTS)
    opts = ap.parse_args()
    if opts.quick:
        opts.seconds, opts.throughput_seconds = 2, 2
    tests = [t for t in opts.tests.split(",") if t]
    configs = [c for c in opts.configs.split(",") if c]
    if not opts.no_setup:
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "install-bench-deps.sh")], check=True)
        subprocess.run(["cargo", "build", "--release", "-p", "needle", "-p", "needle-bench", "--bins"],
                       check=True, cwd=ROOT)
    d = tempfile.mkdtemp(prefix="needle-bench-")
    make_certs(d)
    backend = subprocess.Popen(["taskset", "-c", LOAD_CPU, os.path.join(RELEASE, "bench-backend"),
                                f"127.0.0.1:{BACKEND}"], stdout=subprocess.DEVNULL)
    global BACKEND_PID
    BACKEND_PID = backend.pid  # taskset execs the backend in place: same pid
    rounds = []
    try:
        wait_http(BACKEND)
        for n in range(opts.rounds):
            rnd = {}
            for test in tests:
                for config in configs:
                    print(f"round {n + 1}/{opts.rounds}: {test} via {config}", file=sys.stderr, flush=True)
                    rnd.setdefault(test, {})[config] = measure(test, config, d, opts)
            rounds.append(rnd)
    finally:
        backend.terminate()
        backend.wait()
    summary = summarize(rounds)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu_model(), "cores": os.cpu_count(), "kernel": platform.release(),
            "versions": versions(), "rounds": opts.rounds, "options": vars(opts)}
    os.makedirs(opts.out, exist_ok=True)
    with open(os.path.join(opts.out, "e2e.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "rounds": rounds}, f, indent=1)
    md = markdown(summary, meta, opts)
    with open(os.path.join(opts.out, "e2e.md"), "w") as f:
        f.write(md)
    for test in summary:
        svg = svg_latency(test, summary, LOADS[test][0])
        if svg:
            with open(os.path.join(opts.out, f"latency-{test}.svg"), "w") as f:
                f.write(svg)
    with open(os.path.join(opts.out, "cpu.svg"), "w") as f:
        f.write(svg_cpu(summary))
    print(md)
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
