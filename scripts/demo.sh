#!/usr/bin/env bash
# The README's main command: starts a local memcached, stores and reads through the
# client, prints what it did. Installs memcached (as root) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v memcached >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "demo: installing memcached"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends memcached </dev/null
    else
        echo "demo: memcached is not installed; run: sudo apt-get install memcached" >&2
        exit 1
    fi
fi
exec cargo run --release --example quickstart
