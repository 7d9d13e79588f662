"""Shared CLI, data set, timing and JSON result line for the Python anchors.

Same contract as loadtest/ (the Rust harness): keys `key:<i>`, value of key i is `val:<i>:` padded
with `x` to --value-size bytes; sets always write that value, so a get must return exactly it.
A controller thread lets --warmup seconds pass, opens a --seconds measurement window, then stops the
workers; only operations completing inside the window count. One JSON line on stdout; exit 1 on any
error or wrong value.
"""
import argparse
import json
import random
import sys
import threading
import time

WARMUP, MEASURE, STOP = 0, 1, 2


def parse_args(client_name):
    p = argparse.ArgumentParser(description=f"{client_name} load cell")
    p.add_argument("--workload", required=True, choices=["seq", "conc64", "multiget100"])
    p.add_argument("--addr", default="127.0.0.1:11211")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--keys", type=int, default=10000)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--no-preload", action="store_true")
    p.add_argument("--seed", type=int, default=0x5EED)
    a = p.parse_args()
    a.client = client_name
    host, port = a.addr.rsplit(":", 1)
    a.host, a.port = host, int(port)
    return a


class Data:
    def __init__(self, n, size):
        self.keys = [f"key:{i}" for i in range(n)]
        self.values = [f"val:{i}:".encode().ljust(size, b"x")[:size] for i in range(n)]


class Run:
    """Phase flag and counters shared by the worker threads."""

    def __init__(self, args):
        self.args = args
        self.phase = WARMUP
        self.lock = threading.Lock()
        self.ops = self.nkeys = self.errors = self.mismatches = 0
        self.first_error = None
        self.window = 0.0

    def controller(self):
        time.sleep(self.args.warmup)
        t0 = time.perf_counter()
        self.phase = MEASURE
        time.sleep(self.args.seconds)
        self.phase = STOP
        self.window = time.perf_counter() - t0

    def add(self, ops, nkeys, errors, mismatches, first_error):
        with self.lock:
            self.ops += ops
            self.nkeys += nkeys
            self.errors += errors
            self.mismatches += mismatches
            if first_error and not self.first_error:
                self.first_error = first_error

    def go(self, worker_fns):
        """worker_fns: callables taking this Run; they loop until phase == STOP."""
        ctl = threading.Thread(target=self.controller)
        threads = [threading.Thread(target=f, args=(self,)) for f in worker_fns]
        for t in threads:
            t.start()
        ctl.start()
        ctl.join()
        for t in threads:
            t.join()

    def report(self, connections, extra=None):
        a = self.args
        ok = self.errors == 0 and self.mismatches == 0 and self.ops > 0
        if a.workload == "multiget100":
            metric, value = "keys_per_sec", self.nkeys / self.window
        else:
            metric, value = "ops_per_sec", self.ops / self.window
        if self.first_error:
            print(f"{a.client}: first error: {self.first_error}", file=sys.stderr)
        out = {
            "client": a.client, "workload": a.workload, "metric": metric, "value": round(value),
            "ops": self.ops, "keys": self.nkeys, "seconds": round(self.window, 3),
            "errors": self.errors, "mismatches": self.mismatches, "connections": connections,
            "runtime": None, "ok": ok,
        }
        if extra:
            out.update(extra)
        print(json.dumps(out, separators=(",", ":")), flush=True)
        sys.exit(0 if ok else 1)


def index_stream(seed, worker, n, length=1 << 16):
    """Pre-drawn random key indices (keeps the RNG out of the Python hot loop), cycled."""
    r = random.Random(seed * 1000003 + worker)
    return [r.randrange(n) for _ in range(length)]


def set_stream(seed, worker, length=1 << 16):
    """Pre-drawn 90/10 get/set choices for conc64: True = set."""
    r = random.Random(seed * 7919 + worker)
    return [r.randrange(10) == 0 for _ in range(length)]


def run_cell(args, make_client, get, set_, get_multi, preload):
    """Generic driver. make_client() -> client; get(c, key) -> bytes|None; set_(c, key, value);
    get_multi(c, keys) -> dict key->bytes; preload(c, data)."""
    data = Data(args.keys, args.value_size)
    keys, values = data.keys, data.values
    n = args.keys
    run = Run(args)
    c0 = make_client()
    if not args.no_preload:
        preload(c0, data)

    def worker_fn(w, client):
        def body(run):
            idx = index_stream(args.seed, w, n)
            sets = set_stream(args.seed, w)
            mask = len(idx) - 1
            ops = nk = errs = mism = 0
            first = None
            step = 0
            wl = args.workload
            batch = args.batch
            r = random.Random(args.seed * 31 + w)
            while True:
                phase = run.phase
                if phase == STOP:
                    break
                try:
                    if wl == "multiget100":
                        sel = r.sample(range(n), batch)
                        ks = [keys[i] for i in sel]
                        got = get_multi(client, ks)
                        for i in sel:
                            if got.get(keys[i]) != values[i]:
                                mism += 1
                                first = first or f"mismatch on {keys[i]}: {got.get(keys[i])!r}"
                        if phase == MEASURE:
                            ops += 1
                            nk += batch
                    else:
                        i = idx[step & mask]
                        is_set = (step & 1) == 1 if wl == "seq" else sets[step & mask]
                        step += 1
                        if is_set:
                            set_(client, keys[i], values[i])
                        else:
                            v = get(client, keys[i])
                            if v != values[i]:
                                mism += 1
                                first = first or f"mismatch on {keys[i]}: {v!r}"
                        if phase == MEASURE:
                            ops += 1
                            nk += 1
                except Exception as e:  # count and go on; the run fails at the end
                    errs += 1
                    first = first or repr(e)
                    if errs > 1000:
                        break
            run.add(ops, nk, errs, mism, first)
        return body

    if args.workload == "conc64":
        clients = [c0] + [make_client() for _ in range(args.concurrency - 1)]
    else:
        clients = [c0]
    run.go([worker_fn(w, c) for w, c in enumerate(clients)])
    run.report(len(clients), {"threads": len(clients)})
