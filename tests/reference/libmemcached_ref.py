#!/usr/bin/python3
"""Reference oracle for tests/ketama_compat.rs: runs the real libmemcached (Debian package
libmemcached11, pulled in by python3-pylibmc) through ctypes and prints what it computes.
No memcached server is needed: libmemcached builds its continuum when servers are added
and memcached_generate_hash() only looks it up.

Usage: /usr/bin/python3 libmemcached_ref.py <command-file>
Commands, one per line (tokens separated by single spaces):
  keys <path>                       load keys (raw bytes, one per line)
  hash                              "hash <key#> <h0> ... <h6>": memcached_generate_hash_value
                                    for DEFAULT, MD5, CRC, FNV1_64, FNV1A_64, FNV1_32, FNV1A_32
  ketama <name> <mode> <hash> host,port,weight ...
        mode: ketama (DISTRIBUTION_CONSISTENT_KETAMA), spy (DISTRIBUTION_CONSISTENT_KETAMA_SPY),
              weighted (BEHAVIOR_KETAMA_WEIGHTED), weighted+spy (the former, then the latter)
        hash: '-' to keep the mode's key hash, else one of default md5 crc fnv1_64 fnv1a_64
              fnv1_32 fnv1a_32 (set after the mode, before the servers are added)
        A server whose host starts with '/' and whose port is 0 is a UNIX domain socket
        (memcached_server_add_unix_socket_with_weight).
        Prints "<name> <server index per key...>" (memcached_generate_hash) and
        "<name>.behavior <DISTRIBUTION> <HASH> <KETAMA_WEIGHTED>" as libmemcached reports them
        after the servers were added.
"""
import ctypes
import ctypes.util
import sys

HASHES = {"default": 0, "md5": 1, "crc": 2, "fnv1_64": 3, "fnv1a_64": 4, "fnv1_32": 5, "fnv1a_32": 6}
BEHAVIOR_HASH = 2
BEHAVIOR_DISTRIBUTION = 9
BEHAVIOR_KETAMA_WEIGHTED = 16
DIST_CONSISTENT_KETAMA = 2
DIST_CONSISTENT_KETAMA_SPY = 4
DIST_CONSISTENT_WEIGHTED = 5


def load():
    try:
        lib = ctypes.CDLL("libmemcached.so.11")
    except OSError as e:
        sys.exit("cannot load libmemcached.so.11 (%s): install the Debian package libmemcached11 "
                 "(apt-get install python3-pylibmc pulls it in)" % e)
    lib.memcached_create.restype = ctypes.c_void_p
    lib.memcached_create.argtypes = [ctypes.c_void_p]
    lib.memcached_free.argtypes = [ctypes.c_void_p]
    lib.memcached_behavior_set.restype = ctypes.c_int
    lib.memcached_behavior_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64]
    lib.memcached_behavior_get.restype = ctypes.c_uint64
    lib.memcached_behavior_get.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.memcached_server_add_with_weight.restype = ctypes.c_int
    lib.memcached_server_add_with_weight.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                                     ctypes.c_uint16, ctypes.c_uint32]
    lib.memcached_server_add_unix_socket_with_weight.restype = ctypes.c_int
    lib.memcached_server_add_unix_socket_with_weight.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                                                 ctypes.c_uint32]
    lib.memcached_server_count.restype = ctypes.c_uint32
    lib.memcached_server_count.argtypes = [ctypes.c_void_p]
    lib.memcached_generate_hash.restype = ctypes.c_uint32
    lib.memcached_generate_hash.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.memcached_generate_hash_value.restype = ctypes.c_uint32
    lib.memcached_generate_hash_value.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
    return lib


def check(rc, what):
    if rc != 0:
        sys.exit("libmemcached %s failed with memcached_return_t %d" % (what, rc))


def main():
    lib = load()
    keys = []
    out = []
    with open(sys.argv[1], "rb") as f:
        lines = f.read().decode("utf-8").splitlines()
    for line in lines:
        if not line:
            continue
        t = line.split(" ")
        if t[0] == "keys":
            with open(t[1], "rb") as kf:
                keys = kf.read().split(b"\n")
            if keys and keys[-1] == b"":
                keys.pop()
        elif t[0] == "hash":
            for i, k in enumerate(keys):
                vals = [lib.memcached_generate_hash_value(k, len(k), h) for h in range(7)]
                out.append("hash %d %s" % (i, " ".join(map(str, vals))))
        elif t[0] == "ketama":
            name, mode, hash_name, servers = t[1], t[2], t[3], t[4:]
            memc = lib.memcached_create(None)
            if not memc:
                sys.exit("memcached_create failed")
            if mode.startswith("weighted"):
                check(lib.memcached_behavior_set(memc, BEHAVIOR_KETAMA_WEIGHTED, 1), "KETAMA_WEIGHTED")
                if mode == "weighted+spy":
                    check(lib.memcached_behavior_set(memc, BEHAVIOR_DISTRIBUTION,
                                                     DIST_CONSISTENT_KETAMA_SPY), "DISTRIBUTION")
            elif mode == "ketama":
                check(lib.memcached_behavior_set(memc, BEHAVIOR_DISTRIBUTION, DIST_CONSISTENT_KETAMA),
                      "DISTRIBUTION")
            elif mode == "spy":
                check(lib.memcached_behavior_set(memc, BEHAVIOR_DISTRIBUTION,
                                                 DIST_CONSISTENT_KETAMA_SPY), "DISTRIBUTION")
            else:
                sys.exit("unknown mode " + mode)
            if hash_name != "-":
                check(lib.memcached_behavior_set(memc, BEHAVIOR_HASH, HASHES[hash_name]), "HASH")
            for s in servers:
                host, port, weight = s.split(",")
                if host.startswith("/") and port == "0":
                    check(lib.memcached_server_add_unix_socket_with_weight(memc, host.encode(),
                                                                           int(weight)),
                          "server_add_unix_socket " + s)
                else:
                    check(lib.memcached_server_add_with_weight(memc, host.encode(), int(port),
                                                               int(weight)),
                          "server_add " + s)
            if lib.memcached_server_count(memc) != len(servers):
                sys.exit("server count mismatch")
            idx = [lib.memcached_generate_hash(memc, k, len(k)) for k in keys]
            out.append(name + " " + " ".join(map(str, idx)))
            out.append("%s.behavior %d %d %d" % (
                name, lib.memcached_behavior_get(memc, BEHAVIOR_DISTRIBUTION),
                lib.memcached_behavior_get(memc, BEHAVIOR_HASH),
                lib.memcached_behavior_get(memc, BEHAVIOR_KETAMA_WEIGHTED)))
            lib.memcached_free(memc)
        else:
            sys.exit("unknown command " + t[0])
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
