#!/usr/bin/python3
"""pylibmc (libmemcached) anchor. seq/multiget100: one client; conc64: 64 threads, each with its
own pylibmc.Client (= its own connection); pylibmc releases the GIL while libmemcached waits."""
import pylibmc

from _common import parse_args, run_cell


def main():
    args = parse_args("pylibmc")

    def make_client():
        # Text protocol (its default), TCP_NODELAY as every other client here uses.
        return pylibmc.Client([f"{args.host}:{args.port}"], binary=False, behaviors={"tcp_nodelay": True})

    def preload(c, data):
        for j in range(0, len(data.keys), 500):
            failed = c.set_multi(dict(zip(data.keys[j:j + 500], data.values[j:j + 500])))
            if failed:
                raise SystemExit(f"preload failed for {len(failed)} keys")

    run_cell(args, make_client, lambda c, k: c.get(k), lambda c, k, v: c.set(k, v),
             lambda c, ks: c.get_multi(ks), preload)


if __name__ == "__main__":
    main()
