//! The non-sticky session lock: `add lock:<key>` with an expiry, retried with a doubling
//! backoff (10 ms to 500 ms) until `lock_wait` ran out, on the key's lock node (see
//! `Store::lock_nodes`). Time comes from the configured [`Clock`], so tests of the wait
//! do not sleep.
//!
//! **Holder liveness.** While a request holds the lock, a background task renews it
//! every third of `lock_expiry` (only while it still holds this request's token, under
//! its CAS token), so a long request keeps its lock and `lock_expiry` only bounds how
//! long the lock of a holder that died (instance killed) blocks the session.
//!
//! **Fencing** does not rest on the lock: a locked request's write is refused when the
//! stored session's version moved since it was read (see `store` and
//! `engine::WritePolicy::Refuse`), so a holder whose lock expired anyway (a stalled
//! instance) never overwrites a write made under a newer lock.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::clock::Clock;
use super::id::SessionKey;
use super::stats::SessionStats;
use super::store::Store;

/// A lock held by this instance; its renewal stops when it is dropped.
#[derive(Debug)]
pub(crate) struct HeldLock {
    pub(crate) node: String,
    pub(crate) token: String,
    renewal: Option<tokio::task::JoinHandle<()>>,
    /// Set by the renewal when the lock turned out to be no longer this holder's.
    lost: Arc<AtomicBool>,
}

impl HeldLock {
    /// True once the renewal found the lock expired or taken by another request.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Relaxed)
    }

    /// Stops renewing (before the lock is released).
    pub(crate) fn stop_renewal(&mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
    }
}

/// How an attempt to lock ended.
pub(crate) enum LockOutcome {
    Acquired(HeldLock),
    TimedOut(Duration),
    Failed(crate::Error),
}

pub(crate) async fn acquire(
    store: &Store,
    clock: &dyn Clock,
    stats: &SessionStats,
    key: &SessionKey,
    expiry: Duration,
    wait: Duration,
) -> LockOutcome {
    let token = match SessionKey::generate() {
        Ok(t) => t.to_string(),
        Err(_) => format!("{:x}", super::clock::unix_millis(SystemTime::now())),
    };
    let started = clock.now();
    let deadline = started + wait;
    let mut backoff = Duration::from_millis(10);
    let mut waited_once = false;
    let mut last_error = None;
    loop {
        let mut contended = false;
        for node in store.lock_nodes(key) {
            match store.try_lock(&node, key, &token, expiry).await {
                Ok(true) => {
                    let waited = clock.now().duration_since(started).unwrap_or_default();
                    stats.locks_acquired.fetch_add(1, Relaxed);
                    stats.lock_wait_us.record_duration(waited);
                    if waited_once {
                        stats.lock_waits.fetch_add(1, Relaxed);
                    }
                    let lost = Arc::new(AtomicBool::new(false));
                    let renewal = tokio::spawn(store.lock_renewal(
                        &node,
                        key,
                        &token,
                        expiry,
                        Arc::clone(&lost),
                    ));
                    return LockOutcome::Acquired(HeldLock {
                        node,
                        token,
                        renewal: Some(renewal),
                        lost,
                    });
                }
                Ok(false) => {
                    contended = true;
                    break;
                }
                Err(e) if e.is_node_failure() => {
                    tracing::warn!(node = %node, error = %e, "lock node failed; trying the next one");
                    last_error = Some(e);
                }
                Err(e) => return LockOutcome::Failed(e),
            }
        }
        if !contended {
            return LockOutcome::Failed(last_error.unwrap_or(crate::Error::NoNodeAvailable));
        }
        let now = clock.now();
        if now >= deadline {
            let waited = now.duration_since(started).unwrap_or_default();
            stats.lock_wait_us.record_duration(waited);
            return LockOutcome::TimedOut(waited);
        }
        waited_once = true;
        let remaining = deadline.duration_since(now).unwrap_or_default();
        clock.sleep(backoff.min(remaining)).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}
