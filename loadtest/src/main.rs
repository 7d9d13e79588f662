//! End-to-end load harness: one client x one workload against a running memcached.
//!
//! Prints ONE JSON line on stdout (the result), diagnostics on stderr. Exits non-zero when any
//! operation failed or any get returned a wrong value (a correctness check runs inside the loop).
//!
//! Data set (shared with bench/anchors/*): keys `key:<i>`, i in 0..keys; value of key i is
//! `val:<i>:` padded with `x` to value-size bytes. Sets always write that same value, so every
//! get of a preloaded key must return exactly it.
//!
//! Timing: the workers run from the start; a controller thread lets `--warmup` seconds pass, then
//! opens the measurement window for `--seconds`, then tells the workers to stop. Only operations
//! that complete inside the window are counted; rate = counted / window length.
//!
//! CPU: the controller reads `getrusage(RUSAGE_SELF)` (user + system time of every thread of
//! this process) when the window opens and when it closes. memcached is another process, so the
//! difference is the client's own CPU; divided by the operations (and keys) counted, it is the
//! client's CPU cost per operation (and per key).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum ClientKind {
    /// memkeep, meta protocol (its default), one connection
    Memkeep,
    /// memkeep, classic text protocol, one connection
    MemkeepText,
    /// the `memcache` crate (sync, r2d2 pool; ASCII protocol unless --memcache-binary)
    Memcache,
    /// the `async-memcached` crate (&mut self: one connection per in-flight request)
    AsyncMemcached,
    /// the bare-socket limit: one tokio TCP socket, meta requests written in batches, replies
    /// parsed and counted by the one task that owns the socket (no client library)
    Raw,
    /// the raw socket behind the least a client whose callers are separate tasks needs: each
    /// caller task hands its request to the socket's task through an mpsc channel and waits on
    /// a oneshot (no timeouts, no limits, no error handling beyond stopping)
    RawTasks,
    /// the raw socket shared by caller tasks with no task of its own: a caller appends its
    /// request and writes the buffer itself, and whichever caller finds nobody reading reads
    /// for everyone, completing the others and handing the reading over when its own reply
    /// is in (flat combining; an experiment, no timeouts or cancellation)
    RawCombine,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// one caller, one op at a time, alternating get and set on random keys -> ops/s
    Seq,
    /// 64 ops in flight, 90% get / 10% set on random keys -> ops/s
    Conc64,
    /// one caller, multi-get of 100 distinct random keys -> keys/s
    Multiget100,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum RuntimeKind {
    CurrentThread,
    MultiThread,
}

#[derive(Parser, Debug)]
#[command(name = "loadtest", about = "memcached client load harness (one cell per run)")]
struct Args {
    #[arg(long, value_enum)]
    client: ClientKind,
    #[arg(long, value_enum)]
    workload: Workload,
    #[arg(long, default_value = "127.0.0.1:11211")]
    addr: String,
    /// measured seconds
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// unmeasured warm-up seconds before the window opens
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// tokio runtime for the async clients (default: the better one measured per workload)
    #[arg(long, value_enum)]
    runtime: Option<RuntimeKind>,
    /// worker threads of the multi-thread runtime
    #[arg(long, default_value_t = 2)]
    worker_threads: usize,
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// operations in flight for conc64
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// keys per multi-get for multiget100
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// skip preloading (the keys must already be there)
    #[arg(long)]
    no_preload: bool,
    /// memcache crate: use its default binary protocol instead of ASCII. Its binary multi-get
    /// sends one getkq per key, each field in its own send(): ~18k keys/s, so ASCII is the default
    /// here (see docs/benchmarks.md)
    #[arg(long)]
    memcache_binary: bool,
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// memkeep: connections per node (1: one pipelined connection, the default)
    #[arg(long, default_value_t = 1)]
    memkeep_connections: usize,
    /// memkeep: requests in flight per connection (1 with --memkeep-connections 64 behaves
    /// like a pool of 64 connections, one request each at a time)
    #[arg(long, default_value_t = 1024)]
    memkeep_max_in_flight: usize,
    /// memkeep: connect with TLS, trusting the CA certificate(s) in this PEM file (for a
    /// memcached started with -Z). Preloads 64 sets at a time instead of 256: memcached
    /// 1.6.18's TLS stalls on a pipelined burst that fills its 16 KiB read buffer (see
    /// docs/operations.md)
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
}

/// Shared, read-only data set.
struct Data {
    keys: Vec<String>,
    values: Vec<Vec<u8>>,
}

impl Data {
    fn new(n: usize, size: usize) -> Self {
        let keys = (0..n).map(|i| format!("key:{i}")).collect();
        let values = (0..n)
            .map(|i| {
                let mut v = format!("val:{i}:").into_bytes();
                v.resize(size, b'x');
                v.truncate(size);
                v
            })
            .collect();
        Data { keys, values }
    }
}

#[allow(dead_code)]
const WARMUP: u8 = 0; // initial phase (Shared::default)
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Phase flag + counters shared by all workers.
#[derive(Default)]
struct Shared {
    phase: AtomicU8,
    /// CPU time (ns) this process used inside the measurement window (set by the controller).
    cpu_ns: AtomicU64,
    ops: AtomicU64,
    keys: AtomicU64,
    errors: AtomicU64,
    mismatches: AtomicU64,
}

/// Per-worker counters, flushed into `Shared` once at the end.
#[derive(Default)]
struct Local {
    ops: u64,
    keys: u64,
    errors: u64,
    mismatches: u64,
    first_error: Option<String>,
}

impl Local {
    #[inline]
    fn done(&mut self, phase: u8, keys: u64) {
        if phase == MEASURE {
            self.ops += 1;
            self.keys += keys;
        }
    }
    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
    fn check(&mut self, got: Option<&[u8]>, want: &[u8]) {
        if got != Some(want) {
            self.mismatches += 1;
            if self.first_error.is_none() {
                self.first_error = Some(format!(
                    "mismatch: got {:?}, want {:?}",
                    got.map(|g| String::from_utf8_lossy(g).into_owned()),
                    String::from_utf8_lossy(want)
                ));
            }
        }
    }
    fn flush(self, s: &Shared) {
        s.ops.fetch_add(self.ops, Ordering::Relaxed);
        s.keys.fetch_add(self.keys, Ordering::Relaxed);
        s.errors.fetch_add(self.errors, Ordering::Relaxed);
        s.mismatches.fetch_add(self.mismatches, Ordering::Relaxed);
        if let Some(e) = self.first_error {
            eprintln!("loadtest: first error: {e}");
        }
    }
}

/// Picks the operation sequence shared by every client.
struct Picker {
    rng: SmallRng,
    n: usize,
    step: u64,
}

enum Op {
    Get(usize),
    Set(usize),
}

impl Picker {
    fn new(seed: u64, worker: u64, n: usize) -> Self {
        Picker { rng: SmallRng::seed_from_u64(seed ^ worker.wrapping_mul(0x9E37_79B9_7F4A_7C15)), n, step: 0 }
    }
    /// seq: strict alternation get, set, get, set ... on random keys.
    fn alternate(&mut self) -> Op {
        let i = self.rng.random_range(0..self.n);
        self.step += 1;
        if self.step % 2 == 1 {
            Op::Get(i)
        } else {
            Op::Set(i)
        }
    }
    /// conc64: 90% get / 10% set.
    fn mixed(&mut self) -> Op {
        let i = self.rng.random_range(0..self.n);
        if self.rng.random_range(0..10u32) == 0 {
            Op::Set(i)
        } else {
            Op::Get(i)
        }
    }
    /// multiget: `k` distinct random indices.
    fn batch(&mut self, k: usize) -> Vec<usize> {
        rand::seq::index::sample(&mut self.rng, self.n, k).into_vec()
    }
}

/// User + system CPU time used so far by every thread of this process.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given; an all-zero rusage is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs the warm-up and measurement window on its own thread; returns the window length and
/// records the CPU time used inside it in `shared.cpu_ns`.
fn controller(shared: Arc<Shared>, warmup: f64, seconds: f64) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(warmup));
        let cpu0 = process_cpu();
        let t0 = Instant::now();
        shared.phase.store(MEASURE, Ordering::Release);
        std::thread::sleep(Duration::from_secs_f64(seconds));
        shared.phase.store(STOP, Ordering::Release);
        let window = t0.elapsed();
        shared.cpu_ns.store(process_cpu().saturating_sub(cpu0).as_nanos() as u64, Ordering::Relaxed);
        window
    })
}

fn build_runtime(kind: RuntimeKind, workers: usize) -> tokio::runtime::Runtime {
    match kind {
        RuntimeKind::CurrentThread => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        RuntimeKind::MultiThread => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build(),
    }
    .expect("tokio runtime")
}

/// Default runtime per client and workload (chosen from measurements; see docs/benchmarks.md).
fn default_runtime(client: ClientKind, workload: Workload) -> RuntimeKind {
    match (client, workload) {
        // The raw socket runs on tokio's default multi-thread runtime (2 workers here), the
        // reference the memkeep / raw ratios are taken against.
        (ClientKind::Raw | ClientKind::RawTasks | ClientKind::RawCombine, _) => RuntimeKind::MultiThread,
        // One caller: a second worker thread only adds cross-thread wake-ups.
        (_, Workload::Seq) | (_, Workload::Multiget100) => RuntimeKind::CurrentThread,
        // memkeep conc64: callers and the connection driver on one thread batch best.
        (ClientKind::Memkeep | ClientKind::MemkeepText, Workload::Conc64) => RuntimeKind::CurrentThread,
        // async-memcached conc64: 64 independent connections, spread them over both cores.
        (_, Workload::Conc64) => RuntimeKind::MultiThread,
    }
}

struct Outcome {
    window: Duration,
    connections: usize,
    runtime: Option<RuntimeKind>,
}

fn main() {
    let args = Args::parse();
    let data = Arc::new(Data::new(args.keys, args.value_size));
    let shared = Arc::new(Shared::default());
    if args.workload == Workload::Multiget100 && args.batch > args.keys {
        eprintln!("loadtest: --batch larger than --keys");
        std::process::exit(2);
    }

    let result = match args.client {
        ClientKind::Memcache => run_memcache(&args, &data, &shared),
        ClientKind::AsyncMemcached => run_async_memcached(&args, &data, &shared),
        ClientKind::Memkeep | ClientKind::MemkeepText => run_memkeep(&args, &data, &shared),
        ClientKind::Raw => run_raw(&args, &data, &shared),
        ClientKind::RawTasks => run_raw_tasks(&args, &data, &shared),
        ClientKind::RawCombine => run_raw_combine(&args, &data, &shared),
    };
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadtest: {e}");
            println!(
                "{{\"client\":\"{}\",\"workload\":\"{}\",\"ok\":false,\"error\":{:?}}}",
                name(args.client),
                wname(args.workload),
                e
            );
            std::process::exit(1);
        }
    };

    let secs = outcome.window.as_secs_f64();
    let ops = shared.ops.load(Ordering::Relaxed);
    let keys = shared.keys.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    let mismatches = shared.mismatches.load(Ordering::Relaxed);
    let ok = errors == 0 && mismatches == 0 && ops > 0;
    let cpu = Duration::from_nanos(shared.cpu_ns.load(Ordering::Relaxed)).as_secs_f64();
    let per = |n: u64| if n > 0 { format!("{:.3}", cpu * 1e6 / n as f64) } else { "null".to_string() };
    let (metric, rate) = match args.workload {
        Workload::Multiget100 => ("keys_per_sec", keys as f64 / secs),
        _ => ("ops_per_sec", ops as f64 / secs),
    };
    let runtime = match outcome.runtime {
        Some(RuntimeKind::CurrentThread) => "\"current-thread\"".to_string(),
        Some(RuntimeKind::MultiThread) => format!("\"multi-thread:{}\"", args.worker_threads),
        None => "null".to_string(),
    };
    println!(
        "{{\"client\":\"{}\",\"workload\":\"{}\",\"metric\":\"{}\",\"value\":{:.0},\"ops\":{},\"keys\":{},\"seconds\":{:.3},\"cpu_seconds\":{:.3},\"cpu_us_per_op\":{},\"cpu_us_per_key\":{},\"errors\":{},\"mismatches\":{},\"connections\":{},\"runtime\":{},\"ok\":{}}}",
        name(args.client),
        wname(args.workload),
        metric,
        rate,
        ops,
        keys,
        secs,
        cpu,
        per(ops),
        per(keys),
        errors,
        mismatches,
        outcome.connections,
        runtime,
        ok
    );
    if !ok {
        std::process::exit(1);
    }
}

fn name(c: ClientKind) -> &'static str {
    match c {
        ClientKind::Memkeep => "memkeep",
        ClientKind::MemkeepText => "memkeep-text",
        ClientKind::Memcache => "memcache",
        ClientKind::AsyncMemcached => "async-memcached",
        ClientKind::Raw => "raw",
        ClientKind::RawTasks => "raw-tasks",
        ClientKind::RawCombine => "raw-combine",
    }
}

fn wname(w: Workload) -> &'static str {
    match w {
        Workload::Seq => "seq",
        Workload::Conc64 => "conc64",
        Workload::Multiget100 => "multiget100",
    }
}

// ---------------------------------------------------------------------------------------------
// memcache crate (sync)
// ---------------------------------------------------------------------------------------------

fn run_memcache(args: &Args, data: &Arc<Data>, shared: &Arc<Shared>) -> Result<Outcome, String> {
    let conns = if args.workload == Workload::Conc64 { args.concurrency } else { 1 };
    let url = format!(
        "memcache://{}?tcp_nodelay=true{}",
        args.addr,
        if args.memcache_binary { "" } else { "&protocol=ascii" }
    );
    let client = memcache::Client::builder()
        .add_server(url.as_str())
        .and_then(|b| b.with_max_pool_size(conns as u32).build())
        .map_err(|e| format!("memcache connect: {e}"))?;
    let client = Arc::new(client);
    if !args.no_preload {
        for (k, v) in data.keys.iter().zip(&data.values) {
            client.set(k, v.as_slice(), 0).map_err(|e| format!("preload: {e}"))?;
        }
    }
    let ctl = controller(shared.clone(), args.warmup, args.seconds);
    let workers = if args.workload == Workload::Conc64 { args.concurrency } else { 1 };
    let mut handles = Vec::new();
    for w in 0..workers {
        let (client, data, shared) = (client.clone(), data.clone(), shared.clone());
        let (workload, seed, batch) = (args.workload, args.seed, args.batch);
        handles.push(std::thread::spawn(move || {
            let mut pick = Picker::new(seed, w as u64, data.keys.len());
            let mut l = Local::default();
            let mut kbuf: Vec<&str> = Vec::with_capacity(batch);
            loop {
                let phase = shared.phase.load(Ordering::Relaxed);
                if phase == STOP {
                    break;
                }
                match workload {
                    Workload::Seq | Workload::Conc64 => {
                        let op = if workload == Workload::Seq { pick.alternate() } else { pick.mixed() };
                        match op {
                            Op::Get(i) => match client.get::<Vec<u8>>(&data.keys[i]) {
                                Ok(v) => {
                                    l.check(v.as_deref(), &data.values[i]);
                                    l.done(phase, 1);
                                }
                                Err(e) => l.error(e),
                            },
                            Op::Set(i) => match client.set(&data.keys[i], data.values[i].as_slice(), 0) {
                                Ok(()) => l.done(phase, 1),
                                Err(e) => l.error(e),
                            },
                        }
                    }
                    Workload::Multiget100 => {
                        let idx = pick.batch(batch);
                        kbuf.clear();
                        kbuf.extend(idx.iter().map(|&i| data.keys[i].as_str()));
                        match client.gets::<Vec<u8>>(&kbuf) {
                            Ok(m) => {
                                for &i in &idx {
                                    l.check(m.get(&data.keys[i]).map(|v| v.as_slice()), &data.values[i]);
                                }
                                l.done(phase, idx.len() as u64);
                            }
                            Err(e) => l.error(e),
                        }
                    }
                }
                if l.errors > 1000 {
                    break;
                }
            }
            l.flush(&shared);
        }));
    }
    for h in handles {
        h.join().map_err(|_| "worker panicked".to_string())?;
    }
    let window = ctl.join().map_err(|_| "controller panicked".to_string())?;
    Ok(Outcome { window, connections: conns, runtime: None })
}

// ---------------------------------------------------------------------------------------------
// async-memcached crate
// ---------------------------------------------------------------------------------------------

fn run_async_memcached(args: &Args, data: &Arc<Data>, shared: &Arc<Shared>) -> Result<Outcome, String> {
    use async_memcached::{AsciiProtocol, Client};
    let rtk = args.runtime.unwrap_or(default_runtime(args.client, args.workload));
    let rt = build_runtime(rtk, args.worker_threads);
    let workers = if args.workload == Workload::Conc64 { args.concurrency } else { 1 };
    let addr = args.addr.clone();
    let res: Result<(), String> = rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..workers {
            clients.push(Client::new(format!("tcp://{addr}")).await.map_err(|e| format!("async-memcached connect: {e}"))?);
        }
        if !args.no_preload {
            let c = &mut clients[0];
            for (k, v) in data.keys.iter().zip(&data.values) {
                c.set(k.as_bytes(), v.as_slice(), None, None).await.map_err(|e| format!("preload: {e}"))?;
            }
        }
        let ctl = controller(shared.clone(), args.warmup, args.seconds);
        let mut tasks = Vec::new();
        for (w, mut client) in clients.into_iter().enumerate() {
            let (data, shared) = (data.clone(), shared.clone());
            let (workload, seed, batch) = (args.workload, args.seed, args.batch);
            tasks.push(tokio::spawn(async move {
                let mut pick = Picker::new(seed, w as u64, data.keys.len());
                let mut l = Local::default();
                loop {
                    let phase = shared.phase.load(Ordering::Relaxed);
                    if phase == STOP {
                        break;
                    }
                    match workload {
                        Workload::Seq | Workload::Conc64 => {
                            let op = if workload == Workload::Seq { pick.alternate() } else { pick.mixed() };
                            match op {
                                Op::Get(i) => match client.get(data.keys[i].as_bytes()).await {
                                    Ok(v) => {
                                        l.check(v.as_ref().and_then(|v| v.data.as_deref()), &data.values[i]);
                                        l.done(phase, 1);
                                    }
                                    Err(e) => l.error(e),
                                },
                                Op::Set(i) => {
                                    match client.set(data.keys[i].as_bytes(), data.values[i].as_slice(), None, None).await {
                                        Ok(()) => l.done(phase, 1),
                                        Err(e) => l.error(e),
                                    }
                                }
                            }
                        }
                        Workload::Multiget100 => {
                            let idx = pick.batch(batch);
                            let kb: Vec<&[u8]> = idx.iter().map(|&i| data.keys[i].as_bytes()).collect();
                            match client.get_multi(&kb).await {
                                Ok(vals) => {
                                    // Replies come back in request order, hits only.
                                    let mut found = std::collections::HashMap::with_capacity(vals.len());
                                    for v in &vals {
                                        found.insert(v.key.as_slice(), v.data.as_deref());
                                    }
                                    for &i in &idx {
                                        l.check(found.get(data.keys[i].as_bytes()).copied().flatten(), &data.values[i]);
                                    }
                                    l.done(phase, idx.len() as u64);
                                }
                                Err(e) => l.error(e),
                            }
                        }
                    }
                    if l.errors > 1000 {
                        break;
                    }
                }
                l.flush(&shared);
            }));
        }
        finish(tasks, ctl).await
    });
    res?;
    Ok(async_outcome(workers, rtk))
}

static WINDOW: AtomicU64 = AtomicU64::new(0);

/// Waits for the async workers and the controller; keeps the window length in `WINDOW`.
async fn finish(tasks: Vec<tokio::task::JoinHandle<()>>, ctl: std::thread::JoinHandle<Duration>) -> Result<(), String> {
    for t in tasks {
        t.await.map_err(|e| format!("task: {e}"))?;
    }
    let window = ctl.join().map_err(|_| "controller panicked".to_string())?;
    WINDOW.store(window.as_nanos() as u64, Ordering::Relaxed);
    Ok(())
}

/// The outcome of an async cell whose window `finish` recorded.
fn async_outcome(connections: usize, runtime: RuntimeKind) -> Outcome {
    Outcome { window: Duration::from_nanos(WINDOW.load(Ordering::Relaxed)), connections, runtime: Some(runtime) }
}

// ---------------------------------------------------------------------------------------------
// memkeep
// ---------------------------------------------------------------------------------------------

#[cfg(not(feature = "memkeep"))]
fn run_memkeep(_: &Args, _: &Arc<Data>, _: &Arc<Shared>) -> Result<Outcome, String> {
    Err("built without the `memkeep` feature".into())
}

#[cfg(feature = "memkeep")]
fn run_memkeep(args: &Args, data: &Arc<Data>, shared: &Arc<Shared>) -> Result<Outcome, String> {
    use memkeep::{Client, Expiry, Protocol};
    let rtk = args.runtime.unwrap_or(default_runtime(args.client, args.workload));
    let rt = build_runtime(rtk, args.worker_threads);
    let protocol = if args.client == ClientKind::MemkeepText { Protocol::Text } else { Protocol::Meta };
    let res: Result<(), String> = rt.block_on(async {
        let mut builder = Client::builder()
            .node(args.addr.as_str())
            .protocol(protocol)
            .connections_per_node(args.memkeep_connections)
            .max_in_flight(args.memkeep_max_in_flight);
        if let Some(ca) = &args.tls_ca {
            let pem = std::fs::read(ca).map_err(|e| format!("read {}: {e}", ca.display()))?;
            let tls = memkeep::TlsConfig::new(&pem).map_err(|e| format!("TLS: {e}"))?;
            builder = builder.tls(tls);
        }
        let client = builder.build().map_err(|e| format!("memkeep build: {e}"))?;
        if !args.no_preload {
            // Preload pipelined in chunks (not timed).
            let chunk = if args.tls_ca.is_some() { 64 } else { 256 };
            for chunk in (0..data.keys.len()).collect::<Vec<_>>().chunks(chunk) {
                let futs = chunk.iter().map(|&i| client.set(&data.keys[i], &data.values[i], Expiry::Never));
                for r in futures::future::join_all(futs).await {
                    r.map_err(|e| format!("preload: {e}"))?;
                }
            }
        }
        let ctl = controller(shared.clone(), args.warmup, args.seconds);
        let workers = if args.workload == Workload::Conc64 { args.concurrency } else { 1 };
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (client, data, shared) = (client.clone(), data.clone(), shared.clone());
            let (workload, seed, batch) = (args.workload, args.seed, args.batch);
            tasks.push(tokio::spawn(async move {
                let mut pick = Picker::new(seed, w as u64, data.keys.len());
                let mut l = Local::default();
                loop {
                    let phase = shared.phase.load(Ordering::Relaxed);
                    if phase == STOP {
                        break;
                    }
                    match workload {
                        Workload::Seq | Workload::Conc64 => {
                            let op = if workload == Workload::Seq { pick.alternate() } else { pick.mixed() };
                            match op {
                                Op::Get(i) => match client.get(&data.keys[i]).await {
                                    Ok(v) => {
                                        l.check(v.as_ref().map(|it| it.value.as_ref()), &data.values[i]);
                                        l.done(phase, 1);
                                    }
                                    Err(e) => l.error(e),
                                },
                                Op::Set(i) => match client.set(&data.keys[i], &data.values[i], Expiry::Never).await {
                                    Ok(()) => l.done(phase, 1),
                                    Err(e) => l.error(e),
                                },
                            }
                        }
                        Workload::Multiget100 => {
                            let idx = pick.batch(batch);
                            match client.get_many(idx.iter().map(|&i| data.keys[i].as_bytes())).await {
                                Ok(m) => {
                                    for &i in &idx {
                                        l.check(
                                            m.get(data.keys[i].as_bytes()).map(|it| it.value.as_ref()),
                                            &data.values[i],
                                        );
                                    }
                                    l.done(phase, idx.len() as u64);
                                }
                                Err(e) => l.error(e),
                            }
                        }
                    }
                    if l.errors > 1000 {
                        break;
                    }
                }
                l.flush(&shared);
            }));
        }
        finish(tasks, ctl).await
    });
    res?;
    Ok(async_outcome(1, rtk))
}

// ---------------------------------------------------------------------------------------------
// raw: one tokio TCP socket, no client library (the bare-socket limit)
// ---------------------------------------------------------------------------------------------

/// One socket speaking the meta protocol: requests appended to a write buffer and written in
/// one go, replies parsed in order from a read buffer and checked against what was asked.
struct RawConn {
    stream: tokio::net::TcpStream,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    /// Start of the unparsed part of `rbuf`.
    rpos: usize,
    /// What each reply not yet parsed answers, in request order.
    expect: std::collections::VecDeque<Op>,
}

impl RawConn {
    async fn connect(addr: &str) -> Result<Self, String> {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("raw connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| format!("raw nodelay: {e}"))?;
        Ok(RawConn {
            stream,
            wbuf: Vec::with_capacity(64 * 1024),
            rbuf: Vec::with_capacity(64 * 1024),
            rpos: 0,
            expect: std::collections::VecDeque::new(),
        })
    }

    /// Connects, and sets every key of the data set unless `--no-preload` (256 at a time).
    async fn connect_preloaded(args: &Args, data: &Data) -> Result<Self, String> {
        let mut conn = RawConn::connect(&args.addr).await?;
        if !args.no_preload {
            let mut l = Local::default();
            for chunk in (0..data.keys.len()).collect::<Vec<_>>().chunks(256) {
                for &i in chunk {
                    conn.push(Op::Set(i), data);
                }
                conn.flush().await?;
                while !conn.expect.is_empty() {
                    conn.read_some().await?;
                    while conn.next_reply(data, &mut l)? {}
                }
            }
        }
        Ok(conn)
    }

    /// Appends `mg <key> v` or `ms <key> <len>` + value.
    fn push(&mut self, op: Op, data: &Data) {
        match op {
            Op::Get(i) => {
                self.wbuf.extend_from_slice(b"mg ");
                self.wbuf.extend_from_slice(data.keys[i].as_bytes());
                self.wbuf.extend_from_slice(b" v\r\n");
            }
            Op::Set(i) => {
                use std::io::Write;
                let value = &data.values[i];
                let _ = write!(self.wbuf, "ms {} {}\r\n", data.keys[i], value.len());
                self.wbuf.extend_from_slice(value);
                self.wbuf.extend_from_slice(b"\r\n");
            }
        }
        self.expect.push_back(op);
    }

    async fn flush(&mut self) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(&self.wbuf).await.map_err(|e| format!("raw write: {e}"))?;
        self.wbuf.clear();
        Ok(())
    }

    /// Reads what the socket has (at least one byte).
    async fn read_some(&mut self) -> Result<(), String> {
        use tokio::io::AsyncReadExt;
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        self.rbuf.reserve(32 * 1024);
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err("raw read: server closed the connection".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("raw read: {e}")),
        }
    }

    /// Parses the next whole reply, if the buffer holds one, and checks it (a miss or a wrong
    /// value is a mismatch in `l`; a reply of the wrong shape is an error).
    fn next_reply(&mut self, data: &Data, l: &mut Local) -> Result<bool, String> {
        let buf = &self.rbuf[self.rpos..];
        let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else { return Ok(false) };
        let line = &buf[..eol];
        let op = self.expect.front().ok_or("raw: reply with nothing in flight")?;
        let used = match (op, line) {
            (Op::Get(i), l2) if l2.starts_with(b"VA ") => {
                let len: usize = std::str::from_utf8(&l2[3..])
                    .ok()
                    .and_then(|s| s.split(' ').next())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("raw: bad VA line {:?}", String::from_utf8_lossy(l2)))?;
                let end = eol + 2 + len + 2;
                if buf.len() < end {
                    return Ok(false);
                }
                l.check(Some(&buf[eol + 2..eol + 2 + len]), &data.values[*i]);
                end
            }
            (Op::Get(i), b"EN") => {
                l.check(None, &data.values[*i]);
                eol + 2
            }
            (Op::Set(_), b"HD") => eol + 2,
            (_, other) => return Err(format!("raw: unexpected reply {:?}", String::from_utf8_lossy(other))),
        };
        self.rpos += used;
        self.expect.pop_front();
        Ok(true)
    }
}

fn run_raw(args: &Args, data: &Arc<Data>, shared: &Arc<Shared>) -> Result<Outcome, String> {
    let rtk = args.runtime.unwrap_or(default_runtime(args.client, args.workload));
    let rt = build_runtime(rtk, args.worker_threads);
    let res: Result<(), String> = rt.block_on(async {
        let mut conn = RawConn::connect_preloaded(args, data).await?;
        let ctl = controller(shared.clone(), args.warmup, args.seconds);
        let (data, shared) = (data.clone(), shared.clone());
        let (workload, seed, batch, concurrency) = (args.workload, args.seed, args.batch, args.concurrency);
        // The loop runs as a spawned task, on a runtime worker, like memkeep's callers.
        let task = tokio::spawn(async move {
            let mut pick = Picker::new(seed, 0, data.keys.len());
            let mut l = Local::default();
            let result = raw_loop(&mut conn, &mut pick, &mut l, &data, &shared, workload, batch, concurrency).await;
            if let Err(e) = result {
                l.error(e);
            }
            l.flush(&shared);
        });
        finish(vec![task], ctl).await
    });
    res?;
    Ok(async_outcome(1, rtk))
}

// ---------------------------------------------------------------------------------------------
// raw-tasks: the raw socket, its callers in tasks of their own
// ---------------------------------------------------------------------------------------------

/// What a caller task asks the socket's task: one operation, or one batch of gets.
enum RawTaskOps {
    One(Op),
    Gets(Vec<usize>),
}

impl RawTaskOps {
    /// A caller's next request in `workload`.
    fn next(workload: Workload, pick: &mut Picker, batch: usize) -> Self {
        match workload {
            Workload::Seq => RawTaskOps::One(pick.alternate()),
            Workload::Conc64 => RawTaskOps::One(pick.mixed()),
            Workload::Multiget100 => RawTaskOps::Gets(pick.batch(batch)),
        }
    }

    /// Keys this request reads or writes.
    fn keys(&self) -> u64 {
        match self {
            RawTaskOps::One(_) => 1,
            RawTaskOps::Gets(idx) => idx.len() as u64,
        }
    }

    /// Appends the request to `conn`'s write buffer; returns the replies it will get.
    fn push(self, conn: &mut RawConn, data: &Data) -> usize {
        match self {
            RawTaskOps::One(op) => {
                conn.push(op, data);
                1
            }
            RawTaskOps::Gets(idx) => {
                for &i in &idx {
                    conn.push(Op::Get(i), data);
                }
                idx.len()
            }
        }
    }
}

/// One caller's request and the channel its completion goes back on.
struct RawTaskRequest {
    ops: RawTaskOps,
    done: tokio::sync::oneshot::Sender<()>,
}

/// The cost of handing requests from separate caller tasks to one socket and back, with
/// nothing else: the socket's task takes every queued request, writes them in one go, reads,
/// checks each reply against the data set itself (as `raw` does) and completes each caller
/// once all its replies are in. Callers are spawned like memkeep's (64 for conc64, 1 else).
fn run_raw_tasks(args: &Args, data: &Arc<Data>, shared: &Arc<Shared>) -> Result<Outcome, String> {
    use tokio::sync::{mpsc, oneshot};
    let rtk = args.runtime.unwrap_or(default_runtime(args.client, args.workload));
    let rt = build_runtime(rtk, args.worker_threads);
    let res: Result<(), String> = rt.block_on(async {
        let mut conn = RawConn::connect_preloaded(args, data).await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<RawTaskRequest>();
        let driver_data = data.clone();
        let driver_shared = shared.clone();
        let driver = tokio::spawn(async move {
            let data = driver_data;
            let mut l = Local::default();
            // Per caller in request order: replies still to come, and its completion.
            let mut waiting: std::collections::VecDeque<(usize, oneshot::Sender<()>)> = Default::default();
            let mut queued = Vec::with_capacity(512);
            let result: Result<(), String> = async {
                loop {
                    if waiting.is_empty() && rx.recv_many(&mut queued, 512).await == 0 {
                        return Ok(());
                    }
                    while rx.try_recv().map(|r| queued.push(r)).is_ok() {}
                    for request in queued.drain(..) {
                        let count = request.ops.push(&mut conn, &data);
                        waiting.push_back((count, request.done));
                    }
                    if !conn.wbuf.is_empty() {
                        conn.flush().await?;
                    }
                    conn.read_some().await?;
                    while conn.next_reply(&data, &mut l)? {
                        let Some(front) = waiting.front_mut() else { return Err("raw-tasks: reply with no caller".into()) };
                        front.0 -= 1;
                        if front.0 == 0 {
                            if let Some((_, done)) = waiting.pop_front() {
                                let _ = done.send(());
                            }
                        }
                    }
                }
            }
            .await;
            if let Err(e) = result {
                l.error(e);
            }
            // Mismatches were counted here; operations are counted by the callers.
            l.flush(&driver_shared);
        });
        let ctl = controller(shared.clone(), args.warmup, args.seconds);
        let workers = if args.workload == Workload::Conc64 { args.concurrency } else { 1 };
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (tx, data, shared) = (tx.clone(), data.clone(), shared.clone());
            let (workload, seed, batch) = (args.workload, args.seed, args.batch);
            tasks.push(tokio::spawn(async move {
                let mut pick = Picker::new(seed, w as u64, data.keys.len());
                let mut l = Local::default();
                loop {
                    let phase = shared.phase.load(Ordering::Relaxed);
                    if phase == STOP {
                        break;
                    }
                    let ops = RawTaskOps::next(workload, &mut pick, batch);
                    let keys = ops.keys();
                    let (done, wait) = oneshot::channel();
                    if tx.send(RawTaskRequest { ops, done }).is_err() || wait.await.is_err() {
                        l.error("raw-tasks: the socket's task stopped");
                        break;
                    }
                    l.done(phase, keys);
                }
                l.flush(&shared);
            }));
        }
        drop(tx);
        let outcome = finish(tasks, ctl).await;
        driver.await.map_err(|e| format!("raw-tasks driver: {e}"))?;
        outcome
    });
    res?;
    Ok(async_outcome(1, rtk))
}

// ---------------------------------------------------------------------------------------------
// raw-combine: the raw socket, callers reading for each other (no socket task)
// ---------------------------------------------------------------------------------------------

/// One caller's completion flag.
#[derive(Default)]
struct CombineSlot {
    done: std::sync::atomic::AtomicBool,
    waker: futures::task::AtomicWaker,
}

/// The connection the callers share.
struct CombineState {
    conn: RawConn,
    /// Per caller in request order: replies still to come, and its slot.
    waiters: std::collections::VecDeque<(usize, Arc<CombineSlot>)>,
    /// The slot of the caller reading for everyone, if any.
    reader: Option<usize>,
    /// Whether the reader is inside its read loop (not parked on readiness).
    reading_now: bool,
    l: Local,
}

fn slot_id(slot: &Arc<CombineSlot>) -> usize {
    Arc::as_ptr(slot) as usize
}

impl CombineState {
    fn try_flush(&mut self) -> Result<(), String> {
        while !self.conn.wbuf.is_empty() {
            match self.conn.stream.try_write(&self.conn.wbuf) {
                Ok(n) => {
                    self.conn.wbuf.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(format!("raw-combine write: {e}")),
            }
        }
        Ok(())
    }
}

fn combine_poll(
    state: &std::sync::Mutex<CombineState>,
    slot: &Arc<CombineSlot>,
    data: &Data,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Result<(), String>> {
    use std::task::Poll;
    if slot.done.load(Ordering::Acquire) {
        return Poll::Ready(Ok(()));
    }
    let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
    let st = &mut *guard;
    if slot.done.load(Ordering::Acquire) {
        return Poll::Ready(Ok(()));
    }
    let me = slot_id(slot);
    if st.reader.is_some_and(|r| r != me) {
        slot.waker.register(cx.waker());
        return Poll::Pending;
    }
    st.reader = Some(me);
    st.reading_now = true;
    loop {
        if let Err(e) = st.try_flush() {
            return Poll::Ready(Err(e));
        }
        if st.conn.rpos > 0 {
            st.conn.rbuf.drain(..st.conn.rpos);
            st.conn.rpos = 0;
        }
        st.conn.rbuf.reserve(32 * 1024);
        match st.conn.stream.try_read_buf(&mut st.conn.rbuf) {
            Ok(0) => return Poll::Ready(Err("raw-combine read: server closed the connection".into())),
            Ok(_) => loop {
                match st.conn.next_reply(data, &mut st.l) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => return Poll::Ready(Err(e)),
                }
                let Some(front) = st.waiters.front_mut() else {
                    return Poll::Ready(Err("raw-combine: reply with no caller".into()));
                };
                front.0 -= 1;
                if front.0 == 0 {
                    if let Some((_, done)) = st.waiters.pop_front() {
                        done.done.store(true, Ordering::Release);
                        if slot_id(&done) != me {
                            done.waker.wake();
                        }
                    }
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if slot.done.load(Ordering::Acquire) {
                    // Hand the reading over to the oldest caller still waiting.
                    st.reader = None;
                    st.reading_now = false;
                    if let Some((_, next)) = st.waiters.front() {
                        next.waker.wake();
                    }
                    return Poll::Ready(Ok(()));
                }
                match st.conn.stream.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("raw-combine ready: {e}"))),
                    Poll::Pending => {
                        st.reading_now = false;
                        return Poll::Pending;
                    }
                }
            }
            Err(e) => return Poll::Ready(Err(format!("raw-combine read: {e}"))),
        }
    }
}

fn run_raw_combine(args: &Args, data: &Arc<Data>, shared: &Arc<Shared>) -> Result<Outcome, String> {
    let rtk = args.runtime.unwrap_or(default_runtime(args.client, args.workload));
    let rt = build_runtime(rtk, args.worker_threads);
    let res: Result<(), String> = rt.block_on(async {
        let conn = RawConn::connect_preloaded(args, data).await?;
        let state = Arc::new(std::sync::Mutex::new(CombineState {
            conn,
            waiters: Default::default(),
            reader: None,
            reading_now: false,
            l: Local::default(),
        }));
        let ctl = controller(shared.clone(), args.warmup, args.seconds);
        let workers = if args.workload == Workload::Conc64 { args.concurrency } else { 1 };
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (state, data, shared) = (state.clone(), data.clone(), shared.clone());
            let (workload, seed, batch) = (args.workload, args.seed, args.batch);
            tasks.push(tokio::spawn(async move {
                let mut pick = Picker::new(seed, w as u64, data.keys.len());
                let mut l = Local::default();
                loop {
                    let phase = shared.phase.load(Ordering::Relaxed);
                    if phase == STOP {
                        break;
                    }
                    let slot = Arc::new(CombineSlot::default());
                    let keys = {
                        let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
                        let st = &mut *guard;
                        let count = RawTaskOps::next(workload, &mut pick, batch).push(&mut st.conn, &data);
                        st.waiters.push_back((count, slot.clone()));
                        count as u64
                    };
                    // Nobody is in the read loop to flush it: let the other callers woken
                    // with this one append theirs, then write them all.
                    tokio::task::yield_now().await;
                    {
                        let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
                        if !guard.reading_now {
                            if let Err(e) = guard.try_flush() {
                                l.error(e);
                                break;
                            }
                        }
                    }
                    if let Err(e) = futures::future::poll_fn(|cx| combine_poll(&state, &slot, &data, cx)).await {
                        l.error(e);
                        break;
                    }
                    l.done(phase, keys);
                }
                l.flush(&shared);
            }));
        }
        let outcome = finish(tasks, ctl).await;
        let st = Arc::try_unwrap(state).map_err(|_| "raw-combine: state still shared")?;
        st.into_inner().unwrap_or_else(|p| p.into_inner()).l.flush(shared);
        outcome
    });
    res?;
    Ok(async_outcome(1, rtk))
}

/// seq: one request at a time. conc64: `concurrency` requests always in flight, each reply
/// replaced by a new request in the next write. multiget100: `batch` gets written at once, the
/// next batch once all their replies are in.
#[allow(clippy::too_many_arguments)]
async fn raw_loop(
    conn: &mut RawConn,
    pick: &mut Picker,
    l: &mut Local,
    data: &Data,
    shared: &Shared,
    workload: Workload,
    batch: usize,
    concurrency: usize,
) -> Result<(), String> {
    loop {
        if shared.phase.load(Ordering::Relaxed) == STOP {
            return Ok(());
        }
        match workload {
            Workload::Seq | Workload::Conc64 => {
                let window = if workload == Workload::Seq { 1 } else { concurrency };
                while conn.expect.len() < window {
                    let op = if workload == Workload::Seq { pick.alternate() } else { pick.mixed() };
                    conn.push(op, data);
                }
                conn.flush().await?;
                conn.read_some().await?;
                let phase = shared.phase.load(Ordering::Relaxed);
                while conn.next_reply(data, l)? {
                    l.done(phase, 1);
                }
            }
            Workload::Multiget100 => {
                for i in pick.batch(batch) {
                    conn.push(Op::Get(i), data);
                }
                conn.flush().await?;
                while !conn.expect.is_empty() {
                    conn.read_some().await?;
                    while conn.next_reply(data, l)? {}
                }
                l.done(shared.phase.load(Ordering::Relaxed), batch as u64);
            }
        }
        if l.errors > 0 || l.mismatches > 1000 {
            return Ok(());
        }
    }
}
