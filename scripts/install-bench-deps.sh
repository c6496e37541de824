#!/usr/bin/env bash
# Installs what the end-to-end benchmark (bench/e2e.py) runs beside Needle,
# if missing: wrk (HTTP/1.1 at fixed concurrency), h2load from nghttp2-client
# (HTTP/2), nginx with its stream module and haproxy (the proxies Needle is
# compared with), openssl (the mesh certificates) and util-linux's taskset
# (CPU pinning). Idempotent. Needs root and apt-get (Debian/Ubuntu);
# elsewhere it says what is missing.
set -euo pipefail

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-bench-deps: wrk, h2load, nginx (+stream), haproxy, openssl and taskset present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-bench-deps: missing ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
    exit 1
fi
echo "install-bench-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Debian starts nginx and haproxy as services on install; the benchmark runs
# its own instances, so keep the packaged ones from taking ports.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq "${missing[@]}" >/dev/null
