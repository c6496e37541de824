#!/usr/bin/env bash
# Installs what some tests need beyond the Rust toolchain, if it is missing:
# `ip` (iproute2) and `iptables` for the tests that run inside network
# namespaces (io/tests/original_dst_netns.rs, proxy-bin/tests/e2e_pods.rs),
# and `curl`, `python3` and `setpriv` (util-linux), which the two-pod test
# runs inside its pods. Idempotent: does nothing when all are present.
# Needs root and apt-get (Debian/Ubuntu); elsewhere it says what is missing
# and leaves it to you (the tests then print why they skipped).
set -euo pipefail

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-test-deps: ip, iptables, curl, python3 and setpriv present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: missing ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
    exit 0
fi
echo "install-test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
