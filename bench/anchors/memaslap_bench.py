#!/usr/bin/python3
"""memaslap (Debian libmemcached-tools: /usr/bin/memcaslap) as the C reference, same CLI and JSON
line as the other anchors.

  seq         : memcaslap -T 1 -c 1, set:get = 1:1 (random mix, not strict alternation)
  conc64      : memcaslap -T 2 -c 64 (64 connections, one op in flight on each), set:get = 1:9
  multiget100 : memcaslap -T 1 -c 1 -d 100 (get-only; one `get k1 .. k100` at a time) -> keys/s

Differences it cannot avoid: its keys are its own random 16-byte keys (its minimum key length is
16) over its own preloaded window (10k objects per concurrency by default), not `key:<i>`; values
are 100 bytes (-X 100 / config). The rate is taken from its per-second "Total Statistics / Period"
lines (-S 1s): the first --warmup seconds are dropped and the remaining periods averaged, so its
own preload and warm-up are not counted. It verifies nothing by default; get_misses must be 0.
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

BIN = shutil.which("memcaslap") or shutil.which("memaslap")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workload", required=True, choices=["seq", "conc64", "multiget100"])
    p.add_argument("--addr", default="127.0.0.1:11211")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="memaslap threads for conc64")
    p.add_argument("--batch", type=int, default=100)
    a = p.parse_args()
    if not BIN:
        print(json.dumps({"client": "memaslap", "workload": a.workload, "ok": False,
                          "error": "memcaslap not found (apt-get install libmemcached-tools)"}))
        sys.exit(1)

    if a.workload == "seq":
        sets, gets, threads, conc, div = 0.5, 0.5, 1, 1, 1
    elif a.workload == "conc64":
        sets, gets, threads, conc, div = 0.1, 0.9, min(a.threads, a.concurrency), a.concurrency, 1
    else:
        sets, gets, threads, conc, div = 0.0, 1.0, 1, 1, a.batch
    warm = max(1, math.ceil(a.warmup))
    meas = max(1, round(a.seconds))
    tmp = tempfile.mkdtemp(prefix="memaslap-")
    cfg = os.path.join(tmp, "cfg")
    with open(cfg, "w") as f:
        f.write(f"key\n16 16 1\nvalue\n{a.value_size} {a.value_size} 1\ncmd\n0 {sets}\n1 {gets}\n")
    cmd = [BIN, "-s", a.addr, "-F", cfg, "-T", str(threads), "-c", str(conc),
           "-t", f"{warm + meas}s", "-S", "1s", "-X", str(a.value_size)]
    if div > 1:
        cmd += ["-d", str(div)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=warm + meas + 60).stdout
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Per-second blocks; "Total Statistics" is followed by its Period and Global lines.
    periods = []
    for m in re.finditer(r"Total Statistics\s*\n[^\n]*\n\s*Period\s+\d+\s+(\d+)", out):
        periods.append(int(m.group(1)))
    misses = sum(int(x) for x in re.findall(r"^get_misses:\s*(\d+)", out, re.M))
    used = periods[warm:warm + meas]
    ok = len(used) > 0 and misses == 0
    rate = (sum(used) / len(used)) if used else 0.0
    ops = sum(used)
    if a.workload == "multiget100":
        metric, value, keys = "keys_per_sec", rate * div, ops * div
    else:
        metric, value, keys = "ops_per_sec", rate, ops
    print(json.dumps({
        "client": "memaslap", "workload": a.workload, "metric": metric, "value": round(value),
        "ops": ops, "keys": keys, "seconds": float(len(used)), "errors": 0 if used else 1,
        "mismatches": misses, "connections": conc, "runtime": None, "ok": ok,
        "threads": threads, "command": " ".join(cmd[:2] + ["<addr>"] + cmd[3:4] + ["<cfg>"] + cmd[5:]),
    }, separators=(",", ":")), flush=True)
    if not ok:
        sys.stderr.write(out[-2000:])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
