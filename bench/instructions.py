#!/usr/bin/env python3
"""User-space instructions per proxied request, counted by callgrind.

    python3 bench/instructions.py [--tests http1,h2] [--configs needle,nginx,haproxy]

Wall-clock CPU figures move with whatever else the machine runs; callgrind
counts the instructions a process executes, the same for the same binary and
inputs whatever the machine is doing. Each proxy runs under
`valgrind --tool=callgrind` twice, serving N and 3N requests (h2load, 4
connections; HTTP/2 with 8 streams each); the difference over 2N is the
instructions per request, with start-up and shutdown cancelled out.

It counts user space only (no kernel time), and counts a `rep movsb` copy
byte by byte, so large memcpys weigh more than they cost. Use it to compare
builds and proxies, next to the wall-clock CPU figures of bench/e2e.py.
Needs valgrind (installed if missing, like e2e.py's tools).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402  (the proxies' configurations and helpers)


def counted(config, test, d, requests):
    """Instructions callgrind counted for a proxy that served `requests`."""
    out = os.path.join(d, f"callgrind.{config}.{test}.{requests}")
    procs = e2e.Procs()
    # Run the proxy under valgrind: wrap the starter's command.
    real_start = procs.start

    def start(cmd, cpu, **kw):
        return real_start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + cmd,
                          cpu, **kw)

    procs.start = start
    try:
        e2e.STARTERS[config](procs, d, test)
        e2e.wait_http(e2e.FRONT, timeout=60)
        port = e2e.FRONT_H2 if test == "h2" and config in ("nginx", "haproxy") else e2e.FRONT
        args = ["h2load", "-n", str(requests), "-c", "4"]
        args += ["-m", "8"] if test == "h2" else ["--h1"]
        res = subprocess.run(["taskset", "-c", e2e.LOAD_CPU] + args + [f"http://127.0.0.1:{port}/"],
                             text=True, capture_output=True, check=True).stdout
        if f"{requests} succeeded" not in res:
            raise RuntimeError(f"{config} {test}: not every request succeeded:\n{res}")
        time.sleep(0.5)
    finally:
        procs.stop(timeout=30)  # valgrind writes its counts on the way out
    total = 0
    for name in os.listdir(d):
        if name.startswith(os.path.basename(out)):
            with open(os.path.join(d, name)) as f:
                for line in f:
                    if line.startswith("summary:") or line.startswith("totals:"):
                        total += int(line.split()[1])
                        break
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tests", default="http1,h2")
    ap.add_argument("--configs", default="needle,nginx,haproxy")
    ap.add_argument("--requests", type=int, default=1000, help="N (the runs serve N and 3N)")
    opts = ap.parse_args()
    if subprocess.run(["which", "valgrind"], capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True)
    d = tempfile.mkdtemp(prefix="needle-instr-")
    e2e.make_certs(d)
    backend = subprocess.Popen(["taskset", "-c", e2e.LOAD_CPU, os.path.join(e2e.RELEASE, "bench-backend"),
                                f"127.0.0.1:{e2e.BACKEND}"], stdout=subprocess.DEVNULL)
    rows = []
    try:
        e2e.wait_http(e2e.BACKEND)
        for test in opts.tests.split(","):
            for config in opts.configs.split(","):
                n = opts.requests
                small, large = counted(config, test, d, n), counted(config, test, d, 3 * n)
                per = (large - small) / (2 * n)
                rows.append((test, config, per))
                print(f"{test} {config}: {per:,.0f} instructions per request", file=sys.stderr)
    finally:
        backend.terminate()
        backend.wait()
    print("| test | proxy | instructions per request |\n|---|---|---|")
    for test, config, per in rows:
        print(f"| {test} | {config} | {per:,.0f} |")


if __name__ == "__main__":
    main()
