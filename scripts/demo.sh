#!/usr/bin/env bash
# The README's main command: the thesis' session-failover demo.
#
#   bash scripts/demo.sh                          # http://127.0.0.1:8080/
#   bash scripts/demo.sh --port 9000 --balancer haproxy --mode non-sticky
#
# Starts two memcached servers, two demo instances (examples/demo) and a balancer on
# 127.0.0.1 (Apache httpd with the deploy/apache2 configuration, else HAProxy, else a
# small built-in route-aware proxy labelled DEMO ONLY), prints the URL, and stops
# everything on Ctrl-C. The page's buttons SIGKILL and restart the instances and the
# memcached nodes. Arguments go to `demo cluster` (see `--help`; docs/demo.md).
#
# Needs memcached, and Apache httpd for the real balancer: installed when missing and run
# as root (Debian/Ubuntu), else the script says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

missing=()
have memcached || missing+=(memcached)
if ! have apache2 && ! have haproxy; then
    missing+=(apache2)
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "demo: installing ${missing[*]}"
        # Only our own processes: keep the packages' services from starting (port 80).
        policy=/usr/sbin/policy-rc.d
        own_policy=0
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
        fi
        rc=0
        {
            DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                    "${missing[@]}" </dev/null
        } || rc=$?
        if [ "$own_policy" -eq 1 ]; then rm -f "$policy"; fi
        [ "$rc" -eq 0 ] || echo "demo: apt-get install ${missing[*]} failed (exit $rc)" >&2
    fi
    if ! have memcached; then
        echo "demo: memcached is not installed; run: sudo apt-get install memcached" >&2
        exit 1
    fi
    if ! have apache2 && ! have haproxy; then
        echo "demo: neither Apache httpd nor HAProxy is installed: using the built-in DEMO-ONLY proxy." >&2
        echo "demo: for the real balancer: sudo apt-get install apache2" >&2
    fi
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "demo: cargo is not installed: install Rust from https://rustup.rs" >&2
    exit 1
fi

# The build's own progress is shown (a cold build compiles ~250 crates: minutes on 2
# cores); the run itself is quiet.
echo "demo: building the demo (cargo build --example demo --features axum)"
cargo build --example demo --features axum
exec cargo run --quiet --example demo --features axum -- cluster "$@"
