#!/usr/bin/env bash
# End-to-end load harness: memkeep vs the peer memcached clients ("anchors"), every
# client x workload cell in ONE run against ONE memcached started (and stopped) here.
#
#   scripts/bench.sh [RESULT.md]          SECONDS=8 per cell by default (SECONDS=3 for a quick run)
#
# Environment:
#   SECONDS          measured seconds per cell (default 8); read before bash starts counting it
#   BENCH_WARMUP     unmeasured warm-up seconds per cell (default 1)
#   BENCH_ROUNDS     rounds over all cells (default 1); with more, each cell shows the median
#   BENCH_CLIENTS    space-separated subset of rows (default: all, see ALL_CLIENTS below)
#   BENCH_WORKLOADS  subset of: seq conc64 multiget100 (default: all)
#   CARGO_TARGET_DIR where to build loadtest/ (default: loadtest/target)
#   PYTHON           interpreter with the Debian python3-pylibmc / python3-pymemcache (default /usr/bin/python3)
#   BENCH_NO_INSTALL=1  never apt-get install; stop with a message instead
#
# Output: the markdown table (stdout, and RESULT.md if given) and the raw JSON lines next to it
# (RESULT.md.jsonl, or a temp file). Bounded: every cell runs under `timeout`; memcached and any
# running cell are stopped on exit (trap).

# bash's SECONDS is a built-in counter: take the caller's value before it moves.
CELL_SECONDS="$(printenv SECONDS || true)"
CELL_SECONDS="${CELL_SECONDS:-8}"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-}"
WARMUP="${BENCH_WARMUP:-1}"
ROUNDS="${BENCH_ROUNDS:-1}"
PYTHON="${PYTHON:-/usr/bin/python3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/loadtest/target}"
ALL_CLIENTS="raw raw-tasks memkeep:current-thread memkeep:multi-thread memkeep-text memcache async-memcached spymemcached pylibmc pymemcache memaslap"
CLIENTS="${BENCH_CLIENTS:-$ALL_CLIENTS}"
WORKLOADS="${BENCH_WORKLOADS:-seq conc64 multiget100}"
SPY_JAR=/usr/share/java/spymemcached.jar

die() { echo "bench.sh: $*" >&2; exit 1; }
log() { echo "bench.sh: $*" >&2; }

case "$CELL_SECONDS" in (''|*[!0-9.]*) die "SECONDS must be a number, got '$CELL_SECONDS'";; esac

WORK="$(mktemp -d /tmp/memkeep-bench.XXXXXX)"
MC_PID=""
CELL_PID=""
cleanup() {
    local rc=$?
    if [ -n "$CELL_PID" ] && kill -0 "$CELL_PID" 2>/dev/null; then kill "$CELL_PID" 2>/dev/null || true; fi
    if [ -n "$MC_PID" ] && kill -0 "$MC_PID" 2>/dev/null; then
        kill "$MC_PID" 2>/dev/null || true
        wait "$MC_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# 1. prerequisites (Debian packages)
# ---------------------------------------------------------------------------------------------
missing=()
command -v memcached >/dev/null || missing+=(memcached)
command -v memcaslap >/dev/null || missing+=(libmemcached-tools)
[ -f "$SPY_JAR" ] || missing+=(libspymemcached-java)
command -v javac >/dev/null || missing+=(default-jdk-headless)
[ -x "$PYTHON" ] || missing+=(python3)
if [ -x "$PYTHON" ]; then
    "$PYTHON" -c 'import pylibmc' 2>/dev/null || missing+=(python3-pylibmc)
    "$PYTHON" -c 'import pymemcache' 2>/dev/null || missing+=(python3-pymemcache)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${BENCH_NO_INSTALL:-0}" != 1 ]; then
        log "installing Debian packages: ${missing[*]}"
        timeout 600 apt-get update -qq >&2 || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "${missing[@]}" >&2 \
            || die "apt-get install ${missing[*]} failed"
    else
        die "missing: ${missing[*]} (install them: apt-get install ${missing[*]}; as root this script does it)"
    fi
fi
command -v cargo >/dev/null || die "cargo not found"

# ---------------------------------------------------------------------------------------------
# 2. build (release)
# ---------------------------------------------------------------------------------------------
log "building loadtest/ (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
timeout 1800 cargo build --release --quiet --manifest-path "$ROOT/loadtest/Cargo.toml" >&2 \
    || die "cargo build of loadtest/ failed (memkeep must compile)"
LOADTEST="$CARGO_TARGET_DIR/release/loadtest"
[ -x "$LOADTEST" ] || die "no binary at $LOADTEST"
log "compiling SpyBench.java"
mkdir -p "$WORK/spy"
timeout 300 javac -nowarn -cp "$SPY_JAR" -d "$WORK/spy" "$ROOT/bench/anchors/SpyBench.java" >&2 \
    || die "javac SpyBench.java failed"

# ---------------------------------------------------------------------------------------------
# 3. memcached on a free port
# ---------------------------------------------------------------------------------------------
PORT="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
ADDR="127.0.0.1:$PORT"
MC_USER=()
[ "$(id -u)" = 0 ] && MC_USER=(-u root)
memcached "${MC_USER[@]}" -t 2 -m 256 -U 0 -l 127.0.0.1 -p "$PORT" >"$WORK/memcached.log" 2>&1 &
MC_PID=$!
for _ in $(seq 1 50); do
    if "$PYTHON" -c "import socket,sys; socket.create_connection(('127.0.0.1',$PORT),0.2)" 2>/dev/null; then break; fi
    kill -0 "$MC_PID" 2>/dev/null || die "memcached exited: $(cat "$WORK/memcached.log")"
    sleep 0.1
done
MC_VERSION="$(memcached -V 2>/dev/null | head -1)"
log "memcached ($MC_VERSION) pid $MC_PID on $ADDR"

# ---------------------------------------------------------------------------------------------
# 4. the cells
# ---------------------------------------------------------------------------------------------
JSONL="${OUT:+$OUT.jsonl}"
JSONL="${JSONL:-$WORK/results.jsonl}"
: >"$JSONL"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
OTHERS_BEFORE="$(pgrep -c -x rustc || true)"
START_TS="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
CELL_TIMEOUT="$("$PYTHON" -c "import math; print(math.ceil($CELL_SECONDS + $WARMUP) + 60)")"
COMMON=(--addr "$ADDR" --seconds "$CELL_SECONDS" --warmup "$WARMUP")
ANCHORS="$ROOT/bench/anchors"

run_cell() { # row workload round -> appends one JSON line (a failure line when the cell fails)
    local row="$1" wl="$2" round="$3" line rc=0
    local cmd=()
    case "$row" in
        memkeep:*)       cmd=("$LOADTEST" --client memkeep --runtime "${row#memkeep:}" --workload "$wl" "${COMMON[@]}");;
        raw)             cmd=("$LOADTEST" --client raw --workload "$wl" "${COMMON[@]}");;
        raw-tasks)       cmd=("$LOADTEST" --client raw-tasks --workload "$wl" "${COMMON[@]}");;
        raw-combine)     cmd=("$LOADTEST" --client raw-combine --workload "$wl" "${COMMON[@]}");;
        memkeep-text)    cmd=("$LOADTEST" --client memkeep-text --workload "$wl" "${COMMON[@]}");;
        memcache)        cmd=("$LOADTEST" --client memcache --workload "$wl" "${COMMON[@]}");;
        async-memcached) cmd=("$LOADTEST" --client async-memcached --workload "$wl" "${COMMON[@]}");;
        spymemcached)    cmd=(java -Xms256m -Xmx512m -cp "$WORK/spy:$SPY_JAR" SpyBench --workload "$wl" "${COMMON[@]}");;
        pylibmc)         cmd=("$PYTHON" "$ANCHORS/pylibmc_bench.py" --workload "$wl" "${COMMON[@]}");;
        pymemcache)      cmd=("$PYTHON" "$ANCHORS/pymemcache_bench.py" --workload "$wl" "${COMMON[@]}");;
        memaslap)        cmd=("$PYTHON" "$ANCHORS/memaslap_bench.py" --workload "$wl" "${COMMON[@]}");;
        *) die "unknown client row '$row' (known: $ALL_CLIENTS)";;
    esac
    timeout -k 5 "$CELL_TIMEOUT" "${cmd[@]}" >"$WORK/cell.out" 2>"$WORK/cell.err" &
    CELL_PID=$!
    wait "$CELL_PID" || rc=$?
    CELL_PID=""
    line="$(grep -E '^\{' "$WORK/cell.out" | tail -1 || true)"
    if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
        local err
        err="$(tail -c 300 "$WORK/cell.err" | tr '\n"\\' '   ')"
        [ "$rc" = 124 ] && err="timed out after ${CELL_TIMEOUT}s; $err"
        log "FAILED $row / $wl (exit $rc): $err"
        line="{\"client\":\"$row\",\"workload\":\"$wl\",\"ok\":false,\"exit\":$rc,\"error\":\"$err\"}"
    fi
    # tag with the table row (memkeep's runtime variants share one client name)
    "$PYTHON" -c 'import json,sys; d=json.loads(sys.argv[1]); d["row"]=sys.argv[2]; d["round"]=int(sys.argv[3]); print(json.dumps(d,separators=(",",":")))' \
        "$line" "$row" "$round" >>"$JSONL" || echo "{\"row\":\"$row\",\"workload\":\"$wl\",\"ok\":false,\"error\":\"bad output\"}" >>"$JSONL"
    log "$(tail -1 "$JSONL" | cut -c1-160)"
}

n_cells=0
for wl in $WORKLOADS; do for row in $CLIENTS; do n_cells=$((n_cells + 1)); done; done
log "running $n_cells cells x $ROUNDS round(s), ${CELL_SECONDS}s each (+${WARMUP}s warm-up)"
for round in $(seq 1 "$ROUNDS"); do
    for wl in $WORKLOADS; do
        for row in $CLIENTS; do
            run_cell "$row" "$wl" "$round"
        done
    done
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

kill "$MC_PID" 2>/dev/null || true
wait "$MC_PID" 2>/dev/null || true
MC_PID=""

# ---------------------------------------------------------------------------------------------
# 5. the table
# ---------------------------------------------------------------------------------------------
export BENCH_JSONL="$JSONL" BENCH_ROUNDS="$ROUNDS" BENCH_SECONDS="$CELL_SECONDS" BENCH_WARMUP="$WARMUP" BENCH_MC="$MC_VERSION" \
    BENCH_START="$START_TS" BENCH_LOAD_BEFORE="$LOAD_BEFORE" BENCH_LOAD_AFTER="$LOAD_AFTER" \
    BENCH_OTHERS="$OTHERS_BEFORE" BENCH_CLIENTS_ORDER="$CLIENTS" BENCH_WORKLOADS_ORDER="$WORKLOADS"
TABLE="$("$PYTHON" - <<'PY'
import json, os, platform

rows = [json.loads(l) for l in open(os.environ["BENCH_JSONL"]) if l.strip()]
order = os.environ["BENCH_CLIENTS_ORDER"].split()
wls = os.environ["BENCH_WORKLOADS_ORDER"].split()
import statistics
groups = {}
for r in rows:
    groups.setdefault((r["row"], r["workload"]), []).append(r)
def merge(rs):
    good = [r for r in rs if r.get("ok") and "value" in r]
    if not good:
        return rs[-1]
    def med(field):
        xs = [r[field] for r in good if r.get(field) is not None]
        return statistics.median(xs) if xs else None
    return {"ok": True, "value": med("value"), "cpu_us_per_op": med("cpu_us_per_op"),
            "cpu_us_per_key": med("cpu_us_per_key"), "n": len(good), "failed": len(rs) - len(good)}
cell = {k: merge(v) for k, v in groups.items()}
MEMKEEP = {"memkeep:current-thread", "memkeep:multi-thread", "memkeep-text"}
# memkeep's default runtime per workload (loadtest's default_runtime(); see docs/benchmarks.md)
DEFAULT_RT = {"seq": "memkeep:current-thread", "conc64": "memkeep:current-thread",
              "multiget100": "memkeep:current-thread"}
UNIT = {"seq": "ops/s", "conc64": "ops/s", "multiget100": "keys/s"}
TARGET = {"seq": 1.0, "conc64": 1.5, "multiget100": 1.5}
LABEL = {
    "raw": "raw socket (no client library: 1 tokio socket, meta, multi-thread x2)",
    "raw-combine": "raw socket, callers reading for each other (no socket task; multi-thread x2)",
    "raw-tasks": "raw socket, callers in their own tasks (mpsc + oneshot, nothing else; multi-thread x2)",
    "memkeep:current-thread": "memkeep (meta, 1 conn, tokio current-thread)",
    "memkeep:multi-thread": "memkeep (meta, 1 conn, tokio multi-thread x2)",
    "memkeep-text": "memkeep (text protocol, 1 conn, default runtime)",
    "memcache": "memcache 0.21 crate (ASCII; conc64: 64 threads, pool of 64)",
    "async-memcached": "async-memcached 0.9 (conc64: 64 conns/tasks)",
    "spymemcached": "spymemcached 2.12.3 (1 conn; conc64: 64 async ops)",
    "pylibmc": "pylibmc 1.6.3 (conc64: 64 threads/conns)",
    "pymemcache": "pymemcache 3.5.2 (conc64: 64 threads/conns)",
    "memaslap": "memaslap 1.1.4 (C; conc64: 2 threads x 64 conns)",
}

def fmt(v):
    if v >= 1e6: return f"{v/1e6:.2f}M"
    if v >= 1e3: return f"{v/1e3:.1f}k"
    return f"{v:.0f}"

def val(r):
    return r["value"] if r and r.get("ok") and "value" in r else None

def cpu(r, w):
    """Client CPU per operation (per key for multiget100), in microseconds."""
    if not r or not r.get("ok"):
        return None
    return r.get("cpu_us_per_key" if w == "multiget100" else "cpu_us_per_op")

out = []
rounds = int(os.environ["BENCH_ROUNDS"])
out.append(f"Run {os.environ['BENCH_START']}: {os.environ['BENCH_SECONDS']} s per cell after "
           f"{os.environ['BENCH_WARMUP']} s warm-up; {os.environ['BENCH_MC']} `-t 2 -m 256 -U 0`; "
           f"loadavg before {os.environ['BENCH_LOAD_BEFORE']}, after {os.environ['BENCH_LOAD_AFTER']}; "
           f"other rustc processes at start: {os.environ['BENCH_OTHERS']}"
           + (f"; {rounds} rounds, each cell the median." if rounds > 1 else "."))
out.append("")
out.append("| client | " + " | ".join(f"{w} ({UNIT[w]})" for w in wls) + " |")
out.append("|---|" + "---:|" * len(wls))
for row in order:
    cells = []
    for w in wls:
        r = cell.get((row, w))
        v = val(r)
        if v is None:
            cells.append("FAIL" if r else "-")
        else:
            cells.append(fmt(v) + (f" ({r['failed']} failed)" if r.get("failed") else ""))
    out.append(f"| {LABEL.get(row, row)} | " + " | ".join(cells) + " |")
out.append("")
# Client CPU per operation: getrusage(RUSAGE_SELF) user+sys over the window / operations
# (per key for multiget100). Only the harnesses in loadtest/ report it.
out.append("Client CPU per operation (µs; multiget100: per key), the client process only:")
out.append("")
out.append("| client | " + " | ".join(wls) + " |")
out.append("|---|" + "---:|" * len(wls))
for row in order:
    cs = [cpu(cell.get((row, w)), w) for w in wls]
    if all(c is None for c in cs):
        continue
    out.append(f"| {LABEL.get(row, row)} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cs) + " |")
out.append("")
def against(base):
    """(workload, memkeep row, memkeep / base throughput, CPU per op text, base cell) for every
    workload where both a memkeep row and the `base` row were measured."""
    for w in wls:
        b = cell.get((base, w))
        for row in ("memkeep:multi-thread", "memkeep:current-thread"):
            mk = cell.get((row, w))
            if val(b) is None or val(mk) is None:
                continue
            c1, c2 = cpu(mk, w), cpu(b, w)
            cs = f"{c1:.2f} / {c2:.2f}" if c1 is not None and c2 is not None else "-"
            yield w, row, val(mk) / val(b), cs, b
if any(cell.get(("raw", w)) for w in wls):
    out.append("| workload | memkeep row | memkeep / raw (throughput) | CPU per op memkeep / raw (µs) |")
    out.append("|---|---|---:|---:|")
    for w, row, ratio, cs, _ in against("raw"):
        out.append(f"| {w} | {row} | {ratio:.2f} | {cs} |")
    out.append("")
if any(cell.get(("raw-tasks", w)) for w in wls):
    # raw-tasks: separate caller tasks handing their requests to a socket task, nothing else.
    # memkeep against it shows what memkeep adds to that hand-off; raw-tasks against raw what
    # the hand-off itself costs.
    out.append("| workload | memkeep row | memkeep / raw-tasks (throughput) | raw-tasks / raw | CPU per op memkeep / raw-tasks (µs) |")
    out.append("|---|---|---:|---:|---:|")
    for w, row, ratio, cs, floor in against("raw-tasks"):
        raw = cell.get(("raw", w))
        fr = f"{val(floor) / val(raw):.2f}" if val(raw) is not None else "-"
        out.append(f"| {w} | {row} | {ratio:.2f} | {fr} | {cs} |")
    out.append("")
out.append("| workload | memkeep (default runtime) | best anchor | ratio | target | met |")
out.append("|---|---:|---|---:|---:|:-:|")
for w in wls:
    anchors = [(val(cell.get((row, w))), row) for row in order if row not in MEMKEEP and row not in ("raw", "raw-tasks", "raw-combine")]
    anchors = [(v, r) for v, r in anchors if v is not None]
    mk = val(cell.get((DEFAULT_RT[w], w)))
    if mk is None:  # only one runtime variant was run
        mk = max([v for v in (val(cell.get((r, w))) for r in ("memkeep:current-thread", "memkeep:multi-thread")) if v is not None], default=None)
    if not anchors or mk is None:
        out.append(f"| {w} | {fmt(mk) if mk else '-'} | - | - | {TARGET[w]:.1f}x | - |")
        continue
    best, who = max(anchors)
    ratio = mk / best
    out.append(f"| {w} | {fmt(mk)} | {who} {fmt(best)} | {ratio:.2f}x | >= {TARGET[w]:.1f}x | "
               f"{'yes' if ratio >= TARGET[w] else 'NO'} |")
failed = [r for r in rows if not r.get("ok")]
if failed:
    out.append("")
    out.append("Failed cells: " + "; ".join(f"{r['row']}/{r['workload']}: {r.get('error', 'see JSONL')}"[:200] for r in failed))
print("\n".join(out))
PY
)"
echo "$TABLE"
if [ -n "$OUT" ]; then
    printf '%s\n' "$TABLE" >"$OUT"
    log "table written to $OUT (raw results: $JSONL)"
fi
if grep -q '"ok":false' "$JSONL"; then
    log "some cells failed (see above)"
    exit 1
fi
