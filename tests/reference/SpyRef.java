// Reference oracle for tests/ketama_compat.rs: runs the real spymemcached (Debian package
// libspymemcached-java, /usr/share/java/spymemcached.jar) and prints what it computes.
//
// Usage: java -cp spymemcached.jar:<dir> SpyRef <command-file>
// Commands, one per line (tokens separated by single spaces):
//   keys <path>                          load keys (UTF-8, one per line)
//   hash                                 "hash <key#> <NATIVE> <CRC> <FNV1_64> <FNV1A_64> <FNV1_32> <FNV1A_32> <KETAMA>"
//   ketama <name> <plain|weighted> host,port,weight ...
//                                        KetamaNodeLocator with KETAMA_HASH and the default
//                                        (SPYMEMCACHED) node key format; "weighted" passes the
//                                        weights map. Prints "<name> <node index per key...>"
//   modulo <name> <ALG> host,port ...    ArrayModNodeLocator; prints "<name> <primary per key...>"
//                                        and "<name>.next <first node of getSequence per key...>"
//   keyfor host,port                     prints "keyfor <getKeyForNode(node, 0)>"
import java.io.BufferedReader;
import java.io.IOException;
import java.io.PrintStream;
import java.lang.reflect.Proxy;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.IdentityHashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;

import net.spy.memcached.ArrayModNodeLocator;
import net.spy.memcached.DefaultHashAlgorithm;
import net.spy.memcached.KetamaNodeKeyFormatter;
import net.spy.memcached.KetamaNodeLocator;
import net.spy.memcached.MemcachedNode;
import net.spy.memcached.NodeLocator;

public class SpyRef {
    static List<String> keys = new ArrayList<>();

    static MemcachedNode node(InetSocketAddress addr) {
        return (MemcachedNode) Proxy.newProxyInstance(
            SpyRef.class.getClassLoader(),
            new Class<?>[] {MemcachedNode.class},
            (proxy, method, args) -> {
                switch (method.getName()) {
                    case "getSocketAddress": return addr;
                    case "toString": return "node(" + addr + ")";
                    case "hashCode": return System.identityHashCode(proxy);
                    case "equals": return proxy == args[0];
                    default: throw new UnsupportedOperationException(method.getName());
                }
            });
    }

    static InetSocketAddress addr(String spec) {
        String[] p = spec.split(",");
        return new InetSocketAddress(p[0], Integer.parseInt(p[1]));
    }

    public static void main(String[] argv) throws IOException {
        PrintStream out = new PrintStream(System.out, false, "UTF-8");
        for (String line : Files.readAllLines(Paths.get(argv[0]), StandardCharsets.UTF_8)) {
            if (line.isEmpty()) continue;
            String[] t = line.split(" ");
            switch (t[0]) {
                case "keys":
                    keys = Files.readAllLines(Paths.get(t[1]), StandardCharsets.UTF_8);
                    break;
                case "hash": {
                    DefaultHashAlgorithm[] algs = {
                        DefaultHashAlgorithm.NATIVE_HASH, DefaultHashAlgorithm.CRC_HASH,
                        DefaultHashAlgorithm.FNV1_64_HASH, DefaultHashAlgorithm.FNV1A_64_HASH,
                        DefaultHashAlgorithm.FNV1_32_HASH, DefaultHashAlgorithm.FNV1A_32_HASH,
                        DefaultHashAlgorithm.KETAMA_HASH};
                    for (int i = 0; i < keys.size(); i++) {
                        StringBuilder sb = new StringBuilder("hash ").append(i);
                        for (DefaultHashAlgorithm a : algs) sb.append(' ').append(a.hash(keys.get(i)));
                        out.println(sb);
                    }
                    break;
                }
                case "ketama": {
                    List<MemcachedNode> nodes = new ArrayList<>();
                    Map<InetSocketAddress, Integer> weights = new HashMap<>();
                    IdentityHashMap<MemcachedNode, Integer> index = new IdentityHashMap<>();
                    for (int i = 3; i < t.length; i++) {
                        InetSocketAddress a = addr(t[i]);
                        MemcachedNode n = node(a);
                        index.put(n, nodes.size());
                        nodes.add(n);
                        weights.put(a, Integer.parseInt(t[i].split(",")[2]));
                    }
                    KetamaNodeLocator loc = t[2].equals("weighted")
                        ? new KetamaNodeLocator(nodes, DefaultHashAlgorithm.KETAMA_HASH,
                            KetamaNodeKeyFormatter.Format.SPYMEMCACHED, weights)
                        : new KetamaNodeLocator(nodes, DefaultHashAlgorithm.KETAMA_HASH);
                    StringBuilder sb = new StringBuilder(t[1]);
                    for (String k : keys) sb.append(' ').append(index.get(loc.getPrimary(k)));
                    out.println(sb);
                    break;
                }
                case "modulo": {
                    List<MemcachedNode> nodes = new ArrayList<>();
                    IdentityHashMap<MemcachedNode, Integer> index = new IdentityHashMap<>();
                    for (int i = 3; i < t.length; i++) {
                        MemcachedNode n = node(addr(t[i]));
                        index.put(n, nodes.size());
                        nodes.add(n);
                    }
                    NodeLocator loc = new ArrayModNodeLocator(nodes, DefaultHashAlgorithm.valueOf(t[2]));
                    StringBuilder prim = new StringBuilder(t[1]);
                    StringBuilder next = new StringBuilder(t[1] + ".next");
                    for (String k : keys) {
                        prim.append(' ').append(index.get(loc.getPrimary(k)));
                        Iterator<MemcachedNode> seq = loc.getSequence(k);
                        next.append(' ').append(seq.hasNext() ? index.get(seq.next()) : -1);
                    }
                    out.println(prim);
                    out.println(next);
                    break;
                }
                case "keyfor": {
                    MemcachedNode n = node(addr(t[1]));
                    out.println("keyfor " + new KetamaNodeKeyFormatter().getKeyForNode(n, 0));
                    break;
                }
                default:
                    throw new IllegalArgumentException("unknown command " + t[0]);
            }
        }
        out.flush();
    }
}
