#!/usr/bin/env bash
# Installs the Debian packages memkeep's tests (and its demo) need, when they are missing.
#
#   bash scripts/install-deps.sh          # install what is missing (root), or explain (not root)
#   bash scripts/install-deps.sh --check  # only list what is missing; exit 1 if anything is
#
# Packages:
#   memcached              the real servers every integration test starts and stops
#   libspymemcached-java   spymemcached 2.12.3, the reference for ketama conformance checks
#   python3-pylibmc        libmemcached's Python binding, the other ketama reference
#   default-jdk-headless   javac, to compile the spymemcached probe (only if javac is missing)
#   apache2                Apache httpd + mod_proxy_balancer/hcheck: the demo's balancer and the
#                          deploy/apache2 end-to-end test (tests/demo_balancers.rs)
#   haproxy                the deploy/haproxy end-to-end test
#   nginx                  the deploy/nginx end-to-end test
#   chromium               headless browser of the demo's browser test (tests/demo_browser.rs)
#   chromium-driver        chromedriver: the WebDriver server that test drives Chromium with
#   nutcracker             twemproxy 0.5, the proxy the client's text protocol is tested through
#                          (tests/client_proxy.rs)
#
# Can be sourced: defines memkeep_missing_packages and memkeep_install_deps.

memkeep_is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# Prints the missing packages, one per line.
memkeep_missing_packages() {
    if ! command -v memcached >/dev/null 2>&1 && [ ! -x /usr/bin/memcached ]; then
        echo memcached
    fi
    if ! memkeep_is_installed libspymemcached-java && [ ! -f /usr/share/java/spymemcached.jar ]; then
        echo libspymemcached-java
    fi
    if ! memkeep_is_installed python3-pylibmc; then
        echo python3-pylibmc
    fi
    if ! command -v javac >/dev/null 2>&1; then
        echo default-jdk-headless
    fi
    # The demo's end-to-end tests: real balancers and a real browser.
    if [ ! -x /usr/sbin/apache2 ] && ! command -v apache2 >/dev/null 2>&1; then
        echo apache2
    fi
    if [ ! -x /usr/sbin/haproxy ] && ! command -v haproxy >/dev/null 2>&1; then
        echo haproxy
    fi
    if [ ! -x /usr/sbin/nginx ] && ! command -v nginx >/dev/null 2>&1; then
        echo nginx
    fi
    if [ ! -x /usr/bin/chromium ] && ! command -v chromium >/dev/null 2>&1; then
        echo chromium
    fi
    if [ ! -x /usr/bin/chromedriver ] && ! command -v chromedriver >/dev/null 2>&1; then
        echo chromium-driver
    fi
    if [ ! -x /usr/sbin/nutcracker ] && ! command -v nutcracker >/dev/null 2>&1; then
        echo nutcracker
    fi
}

# Installs the missing packages (apt-get update once first). Returns non-zero, with a
# message naming the packages, when they are missing and this is not root.
memkeep_install_deps() {
    local missing
    missing=$(memkeep_missing_packages | tr '\n' ' ')
    missing=${missing% }
    if [ -z "$missing" ]; then
        echo "install-deps: all needed Debian packages are present"
        return 0
    fi
    if [ "${1:-}" = "--check" ]; then
        echo "install-deps: missing Debian packages: $missing"
        return 1
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: missing Debian packages: $missing" >&2
        echo "install-deps: run as root, or install them first:  sudo apt-get install $missing" >&2
        return 1
    fi
    echo "install-deps: installing: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || { echo "install-deps: apt-get update failed" >&2; return 1; }
    # The tests start their own servers on free ports: keep the packages' services
    # (apache2 and nginx both want port 80, and one of them failing to start would fail
    # the install) from starting, with the standard policy-rc.d switch, unless the
    # machine already has one.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# memkeep install-deps: no service starts during the install\nexit 101\n' >"$policy" &&
            chmod 755 "$policy" && own_policy=1
    fi
    local rc=0
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get install -y -qq --no-install-recommends $missing </dev/null || rc=$?
    if [ "$own_policy" -eq 1 ]; then
        rm -f "$policy"
    fi
    if [ "$rc" -ne 0 ]; then
        echo "install-deps: apt-get install $missing failed" >&2
        return 1
    fi
    local still
    still=$(memkeep_missing_packages | tr '\n' ' ')
    if [ -n "${still// /}" ]; then
        echo "install-deps: still missing after install: $still" >&2
        return 1
    fi
    echo "install-deps: installed: $missing"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -uo pipefail
    memkeep_install_deps "$@"
fi
