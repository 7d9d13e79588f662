//! Background re-replication (sticky mode, both backends): when the client sees a node
//! go away (down) or come back (a new connection: it may have restarted empty), this
//! instance rewrites the copies of the sessions it holds in memory to their current
//! placement, without waiting for their next request, rate-limited.
//!
//! A session's copies are re-created from the latest copy found, **at the same write
//! version** (`Store::repair`: conditional writes, so a request writing meanwhile wins,
//! and nothing older ever replaces anything newer), and without touching its last
//! access (a background copy never keeps a session alive).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::*;
use crate::session::engine::Engine;

/// How often node states are looked at.
const POLL: Duration = Duration::from_millis(200);

/// Sessions re-replicated concurrently; a batch every [`BATCH_PAUSE`].
const BATCH: usize = 32;

/// The pause between batches: at most `BATCH / BATCH_PAUSE` = 640 sessions per second.
const BATCH_PAUSE: Duration = Duration::from_millis(50);

/// How long a pass waits for nodes still connecting before it runs anyway.
const SETTLE: Duration = Duration::from_secs(2);

/// What the client said about the nodes at the last look.
#[derive(Default)]
struct NodeView {
    seen: HashMap<String, (NodeState, u64)>,
}

impl NodeView {
    /// True when a node changed state or reconnected since the last look (or, at the
    /// first look, is not up: it may have gone before this task first looked).
    fn changed(&mut self, client: &Client) -> bool {
        let mut changed = false;
        for n in client.nodes() {
            let now = (n.state, n.metrics.reconnects);
            match self.seen.insert(n.id.clone(), now) {
                Some(before) if before != now => changed = true,
                None if n.state != NodeState::Up => changed = true,
                _ => {}
            }
        }
        changed
    }
}

impl Store {
    /// Re-creates the copies of `key` that its current placement lacks (missing or
    /// behind), at the latest version found. True when a copy was written.
    pub(crate) async fn rereplicate(
        &self,
        key: &SessionKey,
        now_ms: u64,
    ) -> Result<bool, SessionError> {
        let fetched = self.fetch(key, &[], now_ms).await?;
        let Some(Latest::Session {
            version, validity, ..
        }) = fetched.latest
        else {
            return Ok(false);
        };
        let mut known = fetched.known;
        let Some(copies) = self.copies(key, &[]) else {
            return Ok(false);
        };
        if copies.nodes().all(|n| known.holds(n, version)) {
            return Ok(false);
        }
        // The latest copy's bytes, as stored.
        let Some(source) = known
            .nodes()
            .find(|n| known.holds(n, version))
            .map(str::to_owned)
        else {
            return Ok(false);
        };
        let Some((bytes, _)) = self.read_node(&source, key).await? else {
            return Ok(false);
        };
        let mut record = bytes.to_vec();
        let max_inactive = Duration::from_millis(validity.max_inactive_ms);
        // A rotated session's former keys get their retirements back where a copy is
        // re-created (`place_record`).
        match self
            .repair(key, &mut record, version, max_inactive, &mut known)
            .await?
        {
            Replicated::Written { .. } => Ok(true),
            Replicated::Conflict | Replicated::Gone => Ok(false),
        }
    }
}

/// The re-replication task of a sticky service (ends with the service).
pub(crate) async fn run(engine: Weak<Engine>) {
    let mut view = NodeView::default();
    let mut pending: Option<Instant> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let Some(me) = engine.upgrade() else { return };
        let client = me.store.client();
        if view.changed(client) && pending.is_none() {
            pending = Some(Instant::now());
        }
        let Some(since) = pending else { continue };
        let connecting = client
            .nodes()
            .iter()
            .any(|n| n.state == NodeState::Connecting);
        if connecting && since.elapsed() < SETTLE {
            continue;
        }
        pending = None;
        let keys = me.local.keys();
        drop(me);
        pass(&engine, keys).await;
    }
}

/// Re-replicates `keys`, a batch at a time.
async fn pass(engine: &Weak<Engine>, keys: Vec<SessionKey>) {
    let mut rewritten = 0u64;
    for batch in keys.chunks(BATCH) {
        let Some(me) = engine.upgrade() else { return };
        let now = crate::session::clock::unix_millis(me.config.clock.now());
        let results =
            futures::future::join_all(batch.iter().map(|k| me.store.rereplicate(k, now))).await;
        for r in results {
            match r {
                Ok(true) => {
                    rewritten += 1;
                    me.stats.rereplications.fetch_add(1, Relaxed);
                }
                Ok(false) => {}
                Err(e) => {
                    me.stats.rereplication_failures.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "background re-replication of a session failed; its next request repairs it");
                }
            }
        }
        drop(me);
        tokio::time::sleep(BATCH_PAUSE).await;
    }
    if let Some(me) = engine.upgrade() {
        me.stats.rereplication_passes.fetch_add(1, Relaxed);
    }
    tracing::info!(
        sessions = keys.len(),
        rewritten,
        "background re-replication pass done"
    );
}
