#!/usr/bin/env python3
"""Needle's memory footprint: idle RSS, and RSS with 1,000 concurrent
connections through the outbound proxy (opaque and HTTP/1.1 keep-alive).

    cargo build --release -p needle
    python3 bench/footprint.py [--needle target/release/needle] [--connections 1000]

Starts the release binary with the embedded defaults (ports moved to free
ones), an echo/HTTP backend in this process, opens the connections, and
reads VmRSS / VmHWM from /proc. Prints a Markdown table. Loopback only;
everything it starts, it stops.
"""

import argparse
import os
import resource
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e import rss_kib  # noqa: E402  (VmRSS and VmHWM, KiB)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def backend():
    """Echoes opaque bytes; answers HTTP/1.1 requests with a short body."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(4096)

    def serve(conn):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                if data.startswith(b"GET "):
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                else:
                    conn.sendall(data)

    def accept():
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()


def wait_ready(admin):
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", admin), timeout=1) as s:
                s.sendall(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("needle did not become ready")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--needle", default="target/release/needle")
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    host, port = backend()
    outbound, inbound, admin = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [
            args.needle,
            "--set", f"outbound.listen=127.0.0.1:{outbound}",
            "--set", f"inbound.listen=127.0.0.1:{inbound}",
            "--set", f"admin.listen=127.0.0.1:{admin}",
            "--set", f"outbound.target={host}:{port}",
            "--set", "log.filter=warn",
        ],
        stdout=subprocess.DEVNULL,
    )
    rows = []
    try:
        wait_ready(admin)
        time.sleep(0.5)
        rows.append(("idle", *rss_kib(proc.pid)))

        opaque = []
        for _ in range(args.connections):
            s = socket.create_connection(("127.0.0.1", outbound))
            s.sendall(b"\x00opaque hello")
            opaque.append(s)
        for s in opaque:
            s.recv(64)
        time.sleep(0.5)
        rows.append((f"{args.connections} opaque connections open", *rss_kib(proc.pid)))
        for s in opaque:
            s.close()
        time.sleep(1.0)

        http = []
        for _ in range(args.connections):
            s = socket.create_connection(("127.0.0.1", outbound))
            s.sendall(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
            http.append(s)
        for s in http:
            s.recv(256)
        time.sleep(0.5)
        rows.append((f"{args.connections} HTTP/1.1 keep-alive connections open", *rss_kib(proc.pid)))
        for s in http:
            s.close()
        time.sleep(1.0)
        rows.append(("after they closed", *rss_kib(proc.pid)))
    finally:
        proc.terminate()
        proc.wait(timeout=40)

    print("| state | RSS (MiB) | peak RSS (MiB) |")
    print("|---|---|---|")
    for name, rss, hwm in rows:
        print(f"| {name} | {rss / 1024:.1f} | {hwm / 1024:.1f} |")


if __name__ == "__main__":
    main()
