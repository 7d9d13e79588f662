//! Cost of the `metrics` feature on the client's hot path: the load harness's `conc64`
//! cell (64 operations in flight on one `Client` with one connection, 90 % get / 10 % set
//! of 100-byte values on 10,000 random keys, current-thread runtime) against a memcached
//! started here.
//!
//! Run it once without and once with the feature, back to back:
//!
//! ```sh
//! cargo bench --bench metrics_overhead
//! cargo bench --bench metrics_overhead --features metrics
//! ```
//!
//! With the feature a Prometheus recorder (metrics-exporter-prometheus) is installed before
//! the client is built, so every operation records into a real histogram, and a thread
//! renders the scrape text every second (`RECORDER=none`: the feature without a recorder). Environment: `SECONDS` per round
//! (default 5), `ROUNDS` (default 5, the median is printed with every round).

#[path = "common/args.rs"]
mod args;
#[path = "common/memcached.rs"]
mod memcached;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memkeep::{Client, NodeConfig};

const KEYS: u64 = 10_000;
const TASKS: usize = 64;

fn value(i: u64) -> Vec<u8> {
    let mut v = format!("val:{i}:").into_bytes();
    v.resize(100, b'x');
    v
}

/// CPU time of this process so far (user + system, all threads), seconds, from
/// `/proc/self/stat` (clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime
    // the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    (fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)) as f64 / 100.0
}

/// One round: (operations per wall-clock second, operations per CPU-second of this
/// process, errors). Per CPU-second is what the hook costs: it does not move when other
/// processes take the CPU.
async fn round(client: &Client, seconds: u64) -> (f64, f64, u64) {
    let cpu = cpu_seconds();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS as u64)
        .map(|t| {
            let (client, stop, done, errors) =
                (client.clone(), stop.clone(), done.clone(), errors.clone());
            tokio::spawn(async move {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = x % KEYS;
                    let key = format!("key:{i}");
                    let ok = if x % 10 == 0 {
                        client
                            .set(&key, value(i), memkeep::Expiry::Never)
                            .await
                            .is_ok()
                    } else {
                        matches!(client.get(&key).await, Ok(Some(item)) if item.value == value(i))
                    };
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let ops = done.load(Ordering::Relaxed) as f64;
    (
        ops / started.elapsed().as_secs_f64(),
        ops / (cpu_seconds() - cpu).max(0.01),
        errors.load(Ordering::Relaxed),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; a test runner building all targets does not.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds: u64 = args::env("SECONDS", 5);
    let rounds: usize = args::env("ROUNDS", 5);
    #[cfg(feature = "metrics")]
    let handle = if std::env::var("RECORDER").as_deref() == Ok("none") {
        None
    } else {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("recorder");
        // A scrape every second, as a Prometheus server would (less often in practice):
        // the recorder keeps every histogram sample until a scrape summarises them.
        let scraper = handle.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let _ = scraper.render();
        });
        Some(handle)
    };
    #[cfg(feature = "metrics")]
    let setup = if handle.is_some() {
        "feature metrics, Prometheus recorder installed"
    } else {
        "feature metrics, no recorder"
    };
    #[cfg(not(feature = "metrics"))]
    let setup = "without feature metrics";
    let server = memcached::start_memcached(1);
    let port = server.1;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let client = Client::builder()
            .node_config(NodeConfig::new(format!("127.0.0.1:{port}")).id("n0"))
            .connections_per_node(1)
            .build()
            .expect("client");
        for i in 0..KEYS {
            client
                .set(format!("key:{i}"), value(i), memkeep::Expiry::Never)
                .await
                .expect("preload");
        }
        let _ = round(&client, 1).await; // warm-up
        let mut samples = Vec::new();
        let mut per_cpu = Vec::new();
        for _ in 0..rounds {
            let (rps, cpu, errors) = round(&client, seconds).await;
            assert_eq!(errors, 0, "errors or wrong values");
            samples.push(rps);
            per_cpu.push(cpu);
        }
        let shown: Vec<String> = samples.iter().map(|s| format!("{s:.0}")).collect();
        println!(
            "conc64, {setup}: median {:.0} ops/s ({}), median {:.0} ops per CPU-second of the client process",
            args::median(&mut samples),
            shown.join(", "),
            args::median(&mut per_cpu)
        );
    });
    #[cfg(feature = "metrics")]
    if let Some(h) = handle {
        let text = h.render();
        let count = text
            .lines()
            .find(|l| l.starts_with("memkeep_node_operation_duration_seconds_count"))
            .unwrap_or("memkeep_node_operation_duration_seconds_count: none");
        println!("{count}");
    }
}
