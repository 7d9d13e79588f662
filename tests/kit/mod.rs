//! The shared integration-test kit. Every test file includes it with `mod kit;`.
//!
//! - [`memcached`]: real `memcached` processes (Debian package `memcached`) on free
//!   127.0.0.1 ports, started and stopped by the tests: kill, restart, pause, resume.
//! - [`fake`]: a scripted TCP server for the faults a real server can't produce (stalls,
//!   garbage, half replies, half-closed sockets, slow answers), recording what it got.
//! - [`history`]: a client-history checker. Writers record what they wrote and whether it
//!   was acknowledged; readers check that every value read was written to that key.
//! - [`nutcracker`]: a real twemproxy (Debian `nutcracker`) in front of kit servers.
//! - [`tls`]: a CA and certificates (rcgen) for memcached's TLS (`-Z`).
//! - [`clients`]: helpers that build a `memkeep::Client` against a cluster or a fake.
//!
//! Every test binary uses a different part of the kit, so unused items are allowed here.
#![allow(dead_code, unused_imports, unreachable_pub)]

pub mod clients;
pub mod fake;
pub mod history;
pub mod memcached;
pub mod nutcracker;
pub mod tls;

pub use clients::*;
pub use fake::{Action, FakeServer, Match, Request, Rule};
pub use history::{History, Outcome};
pub use memcached::{nodes_spec, Cluster, Memcached};

use std::future::Future;
use std::time::Duration;

/// Slack added to a client's own timeout before a caller that has not returned is
/// declared hung. Generous on purpose: a 2-core CI machine running other tests in
/// parallel must never turn this into a flaky timed assertion.
pub const HANG_SLACK: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it is still pending after `limit`: the caller hung.
/// This is not a performance check: `limit` is always the client's own timeout plus
/// [`HANG_SLACK`].
pub async fn no_hang<F: Future>(what: &str, limit: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: still pending after {limit:?}: the caller hung"),
    }
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
/// Used to wait for state changes the client makes in the background (node up/down).
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A small deterministic PRNG (xorshift64*) so load and cancellation tests are
/// reproducible from a printed seed without another dev-dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A seed from the environment variable `MEMKEEP_TEST_SEED`, else from the clock.
    /// Tests print it so a failure can be replayed.
    pub fn seed_from_env() -> u64 {
        std::env::var("MEMKEEP_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(42)
            })
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
