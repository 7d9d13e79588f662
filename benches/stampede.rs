//! A cache stampede, with and without protection, against a real memcached (started
//! here on a free port: `/usr/bin/memcached` or `$MEMKEEP_MEMCACHED`).
//!
//! `cargo bench --bench stampede` (knobs: `STAMPEDE_CALLERS`, default 1000;
//! `STAMPEDE_ROUNDS`, default 5; `STAMPEDE_WORK_MS`, default 20; `STAMPEDE_SLOTS`,
//! default 8).
//!
//! Each round, `STAMPEDE_CALLERS` tasks ask for one hot key at once, right after it
//! went away. The value comes from a simulated backend: `STAMPEDE_WORK_MS` of work per
//! computation, at most `STAMPEDE_SLOTS` at a time (a database with a small pool).
//! Three scenarios:
//!
//! - `cache-aside, deleted`: `get`; on a miss compute and `set` (no protection), after
//!   a `delete` (a plain client has no stale value to serve);
//! - `get_or_compute, deleted`: [`Client::get_or_compute`] after a `delete`;
//! - `get_or_compute, invalidated`: after [`Client::invalidate`]: callers serve the
//!   stale value while one recomputes.
//!
//! It prints, per scenario, the recomputations per round and the callers' latency
//! (p50, p99, max over all rounds), as a markdown table.

#[path = "common/args.rs"]
mod args;
#[path = "../tests/kit/memcached.rs"]
#[allow(dead_code, unreachable_pub)]
mod memcached;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memkeep::{Client, ComputeOptions, Expiry, Protocol};
use tokio::sync::Semaphore;

/// The simulated backend: counts computations, runs at most `slots` at once.
#[derive(Clone)]
struct Backend {
    slots: Arc<Semaphore>,
    work: Duration,
    computations: Arc<AtomicUsize>,
}

impl Backend {
    async fn compute(self) -> Result<Vec<u8>, std::io::Error> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| std::io::Error::other("backend closed"))?;
        self.computations.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.work).await;
        Ok(b"a value computed the expensive way".to_vec())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    CacheAside,
    Protected,
}

async fn one_caller(client: Client, backend: Backend, scenario: Scenario) -> Duration {
    let started = Instant::now();
    let options = ComputeOptions {
        expiry: Expiry::In(Duration::from_secs(300)),
        ..ComputeOptions::default()
    };
    match scenario {
        Scenario::CacheAside => match client.get("hot").await {
            Ok(Some(_)) => {}
            _ => {
                let value = backend.compute().await.expect("backend");
                client.set("hot", value, options.expiry).await.expect("set");
            }
        },
        Scenario::Protected => {
            client
                .get_or_compute("hot", &options, move || backend.compute())
                .await
                .expect("get_or_compute");
        }
    }
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // A test runner building all targets runs this binary too (without `--bench`, or with
    // `--list`): it must not start a stampede then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let callers = args::env("STAMPEDE_CALLERS", 1000usize);
    let rounds = args::env("STAMPEDE_ROUNDS", 5usize);
    let work = Duration::from_millis(args::env("STAMPEDE_WORK_MS", 20u64));
    let slots = args::env("STAMPEDE_SLOTS", 8usize);
    let server = memcached::Memcached::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{callers} callers per round, {rounds} rounds, backend: {} ms per computation, {slots} at a time",
        work.as_millis()
    );
    println!();
    println!("| scenario | recomputations per round | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    runtime.block_on(async {
        let client = Client::builder()
            .node(server.addr())
            .protocol(Protocol::Meta)
            .build()
            .expect("client");
        let scenarios = [
            ("cache-aside, deleted", Scenario::CacheAside, false),
            ("get_or_compute, deleted", Scenario::Protected, false),
            ("get_or_compute, invalidated", Scenario::Protected, true),
        ];
        for (name, scenario, invalidated) in scenarios {
            let backend = Backend {
                slots: Arc::new(Semaphore::new(slots)),
                work,
                computations: Arc::new(AtomicUsize::new(0)),
            };
            let mut latencies = Vec::with_capacity(callers * rounds);
            let mut per_round = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                client
                    .set("hot", "old value", Expiry::In(Duration::from_secs(300)))
                    .await
                    .expect("seed");
                if invalidated {
                    client.invalidate("hot", None).await.expect("invalidate");
                } else {
                    client.delete("hot").await.expect("delete");
                }
                let before = backend.computations.load(Ordering::Relaxed);
                let tasks: Vec<_> = (0..callers)
                    .map(|_| tokio::spawn(one_caller(client.clone(), backend.clone(), scenario)))
                    .collect();
                for task in tasks {
                    latencies.push(task.await.expect("caller"));
                }
                per_round.push(backend.computations.load(Ordering::Relaxed) - before);
            }
            latencies.sort();
            let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
            println!(
                "| {name} | {} | {} | {} | {} |",
                per_round
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                ms(percentile(&latencies, 0.5)),
                ms(percentile(&latencies, 0.99)),
                ms(*latencies.last().unwrap_or(&Duration::ZERO)),
            );
        }
    });
}
