//! Settings and results of the benchmarks (`#[path = "common/args.rs"] mod args;`).
#![allow(dead_code)]

/// The environment variable `name` parsed, or `default`.
pub fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// The load settings `CLIENTS` (default 64), `SECONDS` per round (default 2) and `ROUNDS`
/// (default 3), or `None` when not run by `cargo bench` (which passes `--bench`; a test
/// runner building all targets does not, and must not start a load run).
pub fn load_run() -> Option<(usize, u64, usize)> {
    if !std::env::args().any(|a| a == "--bench") {
        return None;
    }
    Some((env("CLIENTS", 64), env("SECONDS", 2), env("ROUNDS", 3)))
}

/// The load generator's runtime: multi-thread, 2 workers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
