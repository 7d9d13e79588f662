#!/usr/bin/env bash
# memkeep's one test command (README "Testing"; CI runs it through .ci/run):
#
#   bash scripts/test.sh
#
# Steps, each reported in the summary at the end; any failure makes the script fail:
#   deps     Debian packages the tests need (memcached, libspymemcached-java, python3-pylibmc,
#            default-jdk-headless when javac is missing): installed when root, else a message
#   fmt      cargo fmt --check (main crate and fuzz crate)
#   clippy   cargo clippy --all-targets --all-features -- -D warnings
#   tests    cargo nextest run --all-targets --all-features (cargo test without nextest);
#            per-test limits in .config/nextest.toml
#   doc      cargo test --doc --all-features
#   loadtest builds the load harness (loadtest/, its own Cargo.lock; debug build) and runs a
#            short smoke against a memcached it starts: every client x workload cell for
#            MEMKEEP_LOADTEST_SECONDS (default 1) seconds; fails when the harness fails or any
#            cell reports errors or wrong values
#   fuzz     the decode_replies fuzz target for MEMKEEP_FUZZ_SECONDS (default 60) seconds
#
# Environment:
#   MEMKEEP_FUZZ_SECONDS=N   fuzzing time (0 skips the step, and says so in the summary)
#   MEMKEEP_SKIP=a,b         steps to skip (e.g. "fuzz,doc"); skipped steps are listed
#   MEMKEEP_LOADTEST_SECONDS=N  measured seconds per smoke cell of the loadtest step
#   CARGO_TARGET_DIR         honoured by every step (the fuzz build uses <dir>/fuzz, the
#                            loadtest build <dir>/loadtest; default target/)
#
# Needs: the stable toolchain with rustfmt and clippy; cargo-nextest (optional);
# cargo-fuzz (installed with `cargo install cargo-fuzz --locked` when missing). cargo-fuzz
# needs nightly-only rustc flags (-Zsanitizer=address, sancov passes): on the stable
# toolchain the step sets RUSTC_BOOTSTRAP=1 for the fuzz build only.

set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$(pwd)

FUZZ_SECONDS=${MEMKEEP_FUZZ_SECONDS:-60}
SKIP=",${MEMKEEP_SKIP:-},"
LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/memkeep-test.XXXXXX")
SUMMARY=()
FAILED=0
TESTS_LINE=""

banner() { printf '\n==== %s ====\n' "$*"; }

# run_step NAME COMMAND...: runs a step, records PASS/FAIL/SKIP with its duration.
# A step function returns 200 when the environment asked it to do nothing.
run_step() {
    local name=$1
    shift
    if [[ $SKIP == *",$name,"* ]]; then
        SUMMARY+=("SKIP  $name (MEMKEEP_SKIP)")
        return 0
    fi
    banner "$name: $*"
    local start rc
    start=$(date +%s)
    "$@"
    rc=$?
    local secs=$(($(date +%s) - start))
    if [ "$rc" -eq 0 ]; then
        SUMMARY+=("PASS  $name (${secs}s)")
    elif [ "$rc" -eq 200 ]; then
        SUMMARY+=("SKIP  $name (asked for by the environment)")
    else
        SUMMARY+=("FAIL  $name (exit $rc, ${secs}s)")
        FAILED=$((FAILED + 1))
    fi
    return 0
}

# The all-targets build needs about 3 GB (target dir and the fuzz build); a full disk
# shows up later as a linker "Bus error" or "No space left on device": say it first.
check_disk() {
    local dir=${CARGO_TARGET_DIR:-$ROOT/target} need_kb=$((4 * 1024 * 1024)) free_kb
    mkdir -p "$dir" 2>/dev/null
    free_kb=$(df -Pk "$dir" 2>/dev/null | awk 'NR == 2 { print $4 }')
    if [ -n "$free_kb" ] && [ "$free_kb" -lt "$need_kb" ]; then
        echo "test: WARNING: only $((free_kb / 1024)) MB free where the build goes ($dir);" \
            "the build and tests need about 4 GB: free some space, or steps will fail with" \
            "'No space left on device' or a linker 'Bus error'" >&2
    fi
}

step_deps() {
    check_disk
    # shellcheck source=scripts/install-deps.sh
    source "$ROOT/scripts/install-deps.sh"
    memkeep_install_deps
}

step_fmt() {
    cargo fmt --all -- --check || return 1
    if [ -f fuzz/Cargo.toml ]; then
        cargo fmt --manifest-path fuzz/Cargo.toml -- --check || return 1
    fi
}

step_clippy() {
    cargo clippy --all-targets --all-features --locked -- -D warnings
}

step_tests() {
    local log="$LOG_DIR/tests.log" rc
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --all-targets --all-features --locked --no-tests=fail 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
        # nextest's closing line: "Summary [ 12.3s] 85 tests run: 83 passed, 2 failed, 1 skipped"
        local sum run passed
        sum=$(grep -E '^ *Summary \[' "$log" | tail -1)
        run=$(sed -nE 's/.* ([0-9]+) tests? run:.*/\1/p' <<<"$sum")
        passed=$(sed -nE 's/.*run: ([0-9]+) passed.*/\1/p' <<<"$sum")
        if [ -n "$run" ] && [ -n "$passed" ]; then
            TESTS_LINE="tests: $passed passed, $((run - passed)) failed"
        fi
    else
        echo "cargo-nextest not found: falling back to cargo test"
        cargo test --all-targets --all-features --locked 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
        TESTS_LINE=$(awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
            END { printf "tests: %d passed, %d failed", p, f }' "$log")
    fi
    return "$rc"
}

step_doc() {
    cargo test --doc --all-features --locked
}

# A subshell, so its trap stops the memcached it starts however the step ends.
step_loadtest() (
    local target="${CARGO_TARGET_DIR:-$ROOT/target}/loadtest"
    local seconds="${MEMKEEP_LOADTEST_SECONDS:-1}" mc_pid="" port bin out rc failed=0
    cargo build --manifest-path loadtest/Cargo.toml --locked --target-dir "$target" || exit 1
    bin="$target/debug/loadtest"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])') || exit 1
    local user=()
    [ "$(id -u)" = 0 ] && user=(-u root)
    memcached "${user[@]}" -t 2 -m 64 -U 0 -l 127.0.0.1 -p "$port" >"$LOG_DIR/loadtest-memcached.log" 2>&1 &
    mc_pid=$!
    trap 'kill "$mc_pid" 2>/dev/null; wait "$mc_pid" 2>/dev/null' EXIT
    for _ in $(seq 1 50); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null && break
        kill -0 "$mc_pid" 2>/dev/null || { echo "memcached exited"; cat "$LOG_DIR/loadtest-memcached.log"; exit 1; }
        sleep 0.1
    done
    for workload in seq conc64 multiget100; do
        for client in raw raw-tasks raw-combine memkeep memkeep-text memcache async-memcached; do
            rc=0
            out=$(timeout -k 5 60 "$bin" --client "$client" --workload "$workload" \
                --addr "127.0.0.1:$port" --seconds "$seconds" --warmup 0.2 --keys 2000) || rc=$?
            echo "$client / $workload (exit $rc): $out"
            if [ "$rc" -ne 0 ] || ! grep -q '"ok":true' <<<"$out" || ! grep -q '"errors":0,"mismatches":0' <<<"$out"; then
                failed=$((failed + 1))
            fi
        done
    done
    [ "$failed" -eq 0 ] || { echo "$failed loadtest cell(s) failed"; exit 1; }
)

step_fuzz() {
    if [ "$FUZZ_SECONDS" = "0" ]; then
        echo "MEMKEEP_FUZZ_SECONDS=0: not fuzzing"
        return 200
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "cargo-fuzz missing: cargo install cargo-fuzz --locked"
        cargo install cargo-fuzz --locked || return 1
    fi
    local corpus="$LOG_DIR/corpus" target_args=()
    mkdir -p "$corpus"
    if [ -n "${CARGO_TARGET_DIR:-}" ]; then
        target_args=(--target-dir "$CARGO_TARGET_DIR/fuzz")
    fi
    # The first corpus directory collects new inputs (a temp dir, so nothing lands in the
    # work tree); fuzz/seeds is read as seeds only. -timeout: one input may take at most
    # 10 s (a hang is a failure); -rss_limit_mb: a decoder that allocates what a length
    # field claims fails here.
    RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz "${target_args[@]}" decode_replies \
        "$corpus" fuzz/seeds -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
}

run_step deps step_deps
if [[ ${SUMMARY[-1]} == FAIL* ]]; then
    banner "summary"
    printf '%s\n' "${SUMMARY[@]}"
    echo "Needed Debian packages are missing (see above): no further step can pass."
    exit 1
fi
run_step fmt step_fmt
run_step clippy step_clippy
run_step tests step_tests
run_step doc step_doc
run_step loadtest step_loadtest
run_step fuzz step_fuzz

banner "summary"
printf '%s\n' "${SUMMARY[@]}"
echo "logs: $LOG_DIR"
if [ "$FAILED" -ne 0 ]; then
    echo "RESULT: FAILED ($FAILED step(s) failed)"
else
    echo "RESULT: OK (no step failed)"
fi
# The test count last, in the plain "N passed, N failed" form.
[ -n "$TESTS_LINE" ] && echo "$TESTS_LINE"
[ "$FAILED" -eq 0 ]
