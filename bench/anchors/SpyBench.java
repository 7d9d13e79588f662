// spymemcached 2.12.3 anchor (Debian libspymemcached-java). Same contract as loadtest/ and the
// Python anchors: keys "key:<i>", value of key i is "val:<i>:" padded with 'x' to --value-size bytes;
// sets write that value, so every get must return exactly it. One MemcachedClient = one pipelined
// connection (one NIO selector thread) for every workload.
//   seq         : one caller, get/set alternating, synchronous.
//   conc64      : --mode async (default): a Semaphore(64) of outstanding async ops completed by
//                 listeners; --mode threads: 64 threads sharing the client, synchronous calls.
//   multiget100 : one caller, getBulk of 100 distinct random keys.
// Build/run: javac -cp /usr/share/java/spymemcached.jar -d DIR SpyBench.java
//            java -cp DIR:/usr/share/java/spymemcached.jar SpyBench --workload seq --addr H:P ...
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

import net.spy.memcached.CachedData;
import net.spy.memcached.ConnectionFactoryBuilder;
import net.spy.memcached.MemcachedClient;
import net.spy.memcached.internal.GetFuture;
import net.spy.memcached.internal.OperationFuture;
import net.spy.memcached.transcoders.Transcoder;

public final class SpyBench {
    static final int WARMUP = 0, MEASURE = 1, STOP = 2;
    static volatile int phase = WARMUP;

    static final AtomicLong OPS = new AtomicLong(), KEYS = new AtomicLong(), ERRORS = new AtomicLong(),
            MISMATCHES = new AtomicLong();
    static volatile String firstError;

    static void error(String e) {
        ERRORS.incrementAndGet();
        if (firstError == null) firstError = e;
    }

    static void mismatch(String key, byte[] got) {
        MISMATCHES.incrementAndGet();
        if (firstError == null)
            firstError = "mismatch on " + key + ": " + (got == null ? "null" : new String(got, StandardCharsets.UTF_8));
    }

    /** Raw bytes in and out, flags 0 (same wire data as the other clients). */
    static final class Raw implements Transcoder<byte[]> {
        public boolean asyncDecode(CachedData d) { return false; }
        public CachedData encode(byte[] o) { return new CachedData(0, o, getMaxSize()); }
        public byte[] decode(CachedData d) { return d.getData(); }
        public int getMaxSize() { return CachedData.MAX_SIZE; }
    }

    static String workload = null, addr = "127.0.0.1:11211", mode = "async";
    static double seconds = 8, warmup = 1;
    static int nkeys = 10000, valueSize = 100, concurrency = 64, batch = 100;
    static boolean preload = true;
    static long seed = 0x5EED;

    public static void main(String[] argv) throws Exception {
        for (int i = 0; i < argv.length; i++) {
            String a = argv[i];
            switch (a) {
                case "--workload": workload = argv[++i]; break;
                case "--addr": addr = argv[++i]; break;
                case "--seconds": seconds = Double.parseDouble(argv[++i]); break;
                case "--warmup": warmup = Double.parseDouble(argv[++i]); break;
                case "--keys": nkeys = Integer.parseInt(argv[++i]); break;
                case "--value-size": valueSize = Integer.parseInt(argv[++i]); break;
                case "--concurrency": concurrency = Integer.parseInt(argv[++i]); break;
                case "--batch": batch = Integer.parseInt(argv[++i]); break;
                case "--no-preload": preload = false; break;
                case "--mode": mode = argv[++i]; break;
                case "--seed": seed = Long.parseLong(argv[++i]); break;
                default: System.err.println("unknown argument " + a); System.exit(2);
            }
        }
        if (workload == null || !Arrays.asList("seq", "conc64", "multiget100").contains(workload)) {
            System.err.println("usage: SpyBench --workload seq|conc64|multiget100 [--addr H:P] [--seconds N] [--warmup N] [--mode async|threads]");
            System.exit(2);
        }
        final String[] keys = new String[nkeys];
        final byte[][] values = new byte[nkeys][];
        for (int i = 0; i < nkeys; i++) {
            keys[i] = "key:" + i;
            byte[] v = new byte[valueSize];
            Arrays.fill(v, (byte) 'x');
            byte[] p = ("val:" + i + ":").getBytes(StandardCharsets.US_ASCII);
            System.arraycopy(p, 0, v, 0, Math.min(p.length, valueSize));
            values[i] = v;
        }
        int colon = addr.lastIndexOf(':');
        InetSocketAddress sa = new InetSocketAddress(addr.substring(0, colon), Integer.parseInt(addr.substring(colon + 1)));
        final MemcachedClient client = new MemcachedClient(new ConnectionFactoryBuilder()
                .setProtocol(ConnectionFactoryBuilder.Protocol.TEXT)
                .setOpTimeout(5000)
                .setDaemon(true)
                .build(), List.of(sa));
        final Raw tc = new Raw();
        if (preload) {
            List<OperationFuture<Boolean>> fs = new ArrayList<>();
            for (int i = 0; i < nkeys; i++) {
                fs.add(client.set(keys[i], 0, values[i], tc));
                if (fs.size() == 500 || i == nkeys - 1) {
                    for (OperationFuture<Boolean> f : fs)
                        if (!f.get(10, TimeUnit.SECONDS)) throw new IllegalStateException("preload set failed");
                    fs.clear();
                }
            }
        }

        List<Thread> workers = new ArrayList<>();
        int connections = 1;
        String extra = "";
        if (workload.equals("seq")) {
            workers.add(new Thread(() -> {
                SplittableRandom r = new SplittableRandom(seed);
                long ops = 0, step = 0;
                while (true) {
                    int ph = phase;
                    if (ph == STOP) break;
                    int i = r.nextInt(nkeys);
                    try {
                        if ((step++ & 1) == 0) {
                            byte[] v = client.get(keys[i], tc);
                            if (!Arrays.equals(v, values[i])) mismatch(keys[i], v);
                        } else {
                            if (!client.set(keys[i], 0, values[i], tc).get()) error("set not stored");
                        }
                        if (ph == MEASURE) ops++;
                    } catch (Exception e) {
                        error(e.toString());
                        if (ERRORS.get() > 1000) break;
                    }
                }
                OPS.addAndGet(ops);
                KEYS.addAndGet(ops);
            }));
        } else if (workload.equals("multiget100")) {
            workers.add(new Thread(() -> {
                SplittableRandom r = new SplittableRandom(seed);
                long ops = 0;
                int[] sel = new int[batch];
                List<String> ks = new ArrayList<>(batch);
                while (true) {
                    int ph = phase;
                    if (ph == STOP) break;
                    sample(r, sel);
                    ks.clear();
                    for (int i : sel) ks.add(keys[i]);
                    try {
                        Map<String, byte[]> m = client.getBulk(ks, tc);
                        for (int i : sel) {
                            byte[] v = m.get(keys[i]);
                            if (!Arrays.equals(v, values[i])) mismatch(keys[i], v);
                        }
                        if (ph == MEASURE) ops++;
                    } catch (Exception e) {
                        error(e.toString());
                        if (ERRORS.get() > 1000) break;
                    }
                }
                OPS.addAndGet(ops);
                KEYS.addAndGet(ops * batch);
            }));
        } else if (mode.equals("threads")) {
            extra = ",\"mode\":\"threads\",\"threads\":" + concurrency;
            for (int w = 0; w < concurrency; w++) {
                final long wseed = seed * 1000003 + w;
                workers.add(new Thread(() -> {
                    SplittableRandom r = new SplittableRandom(wseed);
                    long ops = 0;
                    while (true) {
                        int ph = phase;
                        if (ph == STOP) break;
                        int i = r.nextInt(nkeys);
                        try {
                            if (r.nextInt(10) != 0) {
                                byte[] v = client.get(keys[i], tc);
                                if (!Arrays.equals(v, values[i])) mismatch(keys[i], v);
                            } else {
                                if (!client.set(keys[i], 0, values[i], tc).get()) error("set not stored");
                            }
                            if (ph == MEASURE) ops++;
                        } catch (Exception e) {
                            error(e.toString());
                            if (ERRORS.get() > 1000) break;
                        }
                    }
                    OPS.addAndGet(ops);
                    KEYS.addAndGet(ops);
                }));
            }
        } else {
            // async: one submitting thread keeps `concurrency` operations outstanding; completion
            // listeners (run by spymemcached's listener executor) check the value and release a permit.
            extra = ",\"mode\":\"async\",\"in_flight\":" + concurrency;
            final Semaphore permits = new Semaphore(concurrency);
            workers.add(new Thread(() -> {
                SplittableRandom r = new SplittableRandom(seed);
                while (phase != STOP) {
                    try {
                        permits.acquire();
                    } catch (InterruptedException e) {
                        break;
                    }
                    final int i = r.nextInt(nkeys);
                    try {
                        if (r.nextInt(10) != 0) {
                            final GetFuture<byte[]> f = client.asyncGet(keys[i], tc);
                            f.addListener(fut -> {
                                try {
                                    byte[] v = f.get();
                                    if (!Arrays.equals(v, values[i])) mismatch(keys[i], v);
                                    if (phase == MEASURE) OPS.incrementAndGet();
                                } catch (Exception e) {
                                    error(e.toString());
                                } finally {
                                    permits.release();
                                }
                            });
                        } else {
                            final OperationFuture<Boolean> f = client.set(keys[i], 0, values[i], tc);
                            f.addListener(fut -> {
                                try {
                                    if (!f.get()) error("set not stored");
                                    if (phase == MEASURE) OPS.incrementAndGet();
                                } catch (Exception e) {
                                    error(e.toString());
                                } finally {
                                    permits.release();
                                }
                            });
                        }
                    } catch (Exception e) {
                        permits.release();
                        error(e.toString());
                        if (ERRORS.get() > 1000) break;
                    }
                }
                // drain: wait for every outstanding op before reporting
                try {
                    permits.acquire(concurrency);
                } catch (InterruptedException e) {
                    // ignore
                }
                KEYS.set(OPS.get());
            }));
        }

        for (Thread t : workers) t.start();
        Thread.sleep((long) (warmup * 1000));
        long t0 = System.nanoTime();
        phase = MEASURE;
        Thread.sleep((long) (seconds * 1000));
        phase = STOP;
        double window = (System.nanoTime() - t0) / 1e9;
        for (Thread t : workers) t.join();
        client.shutdown(2, TimeUnit.SECONDS);

        long ops = OPS.get(), nk = KEYS.get(), errs = ERRORS.get(), mism = MISMATCHES.get();
        boolean ok = errs == 0 && mism == 0 && ops > 0;
        boolean mg = workload.equals("multiget100");
        if (firstError != null) System.err.println("spymemcached: first error: " + firstError);
        System.out.printf("{\"client\":\"spymemcached\",\"workload\":\"%s\",\"metric\":\"%s\",\"value\":%d,\"ops\":%d,\"keys\":%d,"
                        + "\"seconds\":%.3f,\"errors\":%d,\"mismatches\":%d,\"connections\":%d,\"runtime\":null,\"ok\":%s%s}%n",
                workload, mg ? "keys_per_sec" : "ops_per_sec", Math.round((mg ? nk : ops) / window), ops, nk, window,
                errs, mism, connections, ok, extra);
        System.out.flush();
        System.exit(ok ? 0 : 1);
    }

    /** `sel.length` distinct indices in [0, nkeys) (Floyd's algorithm). */
    static void sample(SplittableRandom r, int[] sel) {
        java.util.HashSet<Integer> seen = new java.util.HashSet<>(sel.length * 2);
        int k = 0;
        for (int j = nkeys - sel.length; j < nkeys; j++) {
            int t = r.nextInt(j + 1);
            if (!seen.add(t)) {
                seen.add(j);
                t = j;
            }
            sel[k++] = t;
        }
    }
}
