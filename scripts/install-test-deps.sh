#!/usr/bin/env bash
# Installs what some tests need beyond the Rust toolchain, if it is missing:
# `ip` (iproute2) and `iptables`, for the transparent-redirect test that runs
# inside a network namespace (io/tests/original_dst_netns.rs). Idempotent:
# does nothing when both are present. Needs root and apt-get (Debian/Ubuntu);
# elsewhere it says what is missing and leaves it to you (the test then
# prints why it skipped).
set -euo pipefail

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-test-deps: ip and iptables present"
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
