#!/usr/bin/python3
"""pymemcache anchor (pure Python). seq/multiget100: one client; conc64: 64 threads, each with its
own pymemcache.Client (= its own connection). Pure Python, so conc64 is bound by the GIL."""
from pymemcache.client.base import Client

from _common import parse_args, run_cell


def main():
    args = parse_args("pymemcache")

    def make_client():
        return Client((args.host, args.port), no_delay=True)

    def preload(c, data):
        for j in range(0, len(data.keys), 500):
            failed = c.set_many(dict(zip(data.keys[j:j + 500], data.values[j:j + 500])), noreply=False)
            if failed:
                raise SystemExit(f"preload failed for {len(failed)} keys")

    def set_(c, k, v):
        if not c.set(k, v, noreply=False):
            raise RuntimeError(f"set {k} not stored")

    # get_many returns str keys (pymemcache decodes the key).
    run_cell(args, make_client, lambda c, k: c.get(k), set_, lambda c, ks: c.get_many(ks), preload)


if __name__ == "__main__":
    main()
