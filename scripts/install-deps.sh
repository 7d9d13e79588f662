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
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get install -y -qq --no-install-recommends $missing </dev/null ||
        { echo "install-deps: apt-get install $missing failed" >&2; return 1; }
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
