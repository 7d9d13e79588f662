//! The async-mode background writer (sticky mode, `WriteMode::Async`).
//!
//! `finish` queues the encoded session (bounded queue: when full, `finish` waits for
//! room, so memory stays bounded and nothing is dropped). One task takes the queue in
//! batches: within a batch only the latest snapshot of each session is written (the
//! superseded ones are counted in `async_coalesced`), the sessions of a batch are
//! written concurrently, batches one after the other, so each session's writes stay in
//! order. Queued writes are ordinary unlocked writes: versioned, merged onto a newer
//! stored version, and never written over a tombstone, so a write queued before an
//! invalidation (here or on another instance) does not bring the session back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Instant;

use tokio::sync::{mpsc, Notify};

use super::engine::Engine;
use super::id::SessionKey;
use super::local::Slot;
use super::model::{Session, WriteSnapshot};
use super::stats::SessionStats;
use super::store::KnownCopies;
use super::SessionError;

/// Most queued writes one batch takes.
const ASYNC_BATCH: usize = 256;

struct AsyncJob {
    session: Session,
    slot: Arc<Slot>,
    snapshot: WriteSnapshot,
    /// What the request's read found on each node (saves a read before the write when
    /// nobody wrote meanwhile; a stale CAS token only costs a re-read).
    known: KnownCopies,
    queued: Instant,
}

/// The queue's sending side and its counters.
pub(crate) struct AsyncWriter {
    tx: mpsc::Sender<AsyncJob>,
    pending: Arc<AtomicUsize>,
    idle: Arc<Notify>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<AsyncJob>>>,
}

impl AsyncWriter {
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        AsyncWriter {
            tx,
            pending: Arc::new(AtomicUsize::new(0)),
            idle: Arc::new(Notify::new()),
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }

    /// Starts the writer task for `engine` (once).
    pub(crate) fn start(engine: &Arc<Engine>) {
        let Some(writer) = &engine.writer else {
            return;
        };
        let rx = writer.rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rx) = rx {
            tokio::spawn(run(
                Arc::downgrade(engine),
                rx,
                Arc::clone(&writer.pending),
                Arc::clone(&writer.idle),
            ));
        }
    }

    /// Queues a write; waits for room when the queue is full.
    pub(crate) async fn enqueue(
        &self,
        session: Session,
        slot: Arc<Slot>,
        snapshot: WriteSnapshot,
        known: KnownCopies,
        stats: &SessionStats,
    ) -> Result<(), SessionError> {
        self.pending.fetch_add(1, Relaxed);
        stats.async_queued.fetch_add(1, Relaxed);
        let job = AsyncJob {
            session,
            slot,
            snapshot,
            known,
            queued: Instant::now(),
        };
        let job = match self.tx.try_send(job) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => job,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.pending.fetch_sub(1, Relaxed);
                return Err(SessionError::Shutdown);
            }
        };
        stats.async_queue_full.fetch_add(1, Relaxed);
        tracing::debug!("async session write queue full; waiting for room");
        self.tx.send(job).await.map_err(|_| {
            self.pending.fetch_sub(1, Relaxed);
            SessionError::Shutdown
        })
    }

    /// Writes queued and not yet acknowledged (the current loss window).
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Relaxed)
    }

    /// Waits until every queued write was acknowledged (or failed).
    pub(crate) async fn flush(&self) {
        loop {
            let idle = self.idle.notified();
            if self.pending.load(Relaxed) == 0 {
                return;
            }
            idle.await;
        }
    }
}

async fn run(
    engine: Weak<Engine>,
    mut rx: mpsc::Receiver<AsyncJob>,
    pending: Arc<AtomicUsize>,
    idle: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(ASYNC_BATCH);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, ASYNC_BATCH).await == 0 {
            return;
        }
        let Some(me) = engine.upgrade() else {
            return;
        };
        // One write per session per batch: the latest snapshot holds every earlier
        // change of that session.
        let mut latest: HashMap<SessionKey, usize> = HashMap::with_capacity(batch.len());
        for (i, job) in batch.iter().enumerate() {
            latest.insert(job.session.id().key(), i);
        }
        let superseded = (batch.len() - latest.len()) as u64;
        me.stats.async_coalesced.fetch_add(superseded, Relaxed);
        let total = batch.len();
        let mut per_slot: HashMap<SessionKey, (Arc<Slot>, usize)> = HashMap::new();
        let mut queued_at = Vec::with_capacity(total);
        let mut writes = Vec::with_capacity(latest.len());
        for (i, job) in batch.drain(..).enumerate() {
            let key = job.session.id().key();
            queued_at.push(job.queued);
            per_slot
                .entry(key)
                .or_insert_with(|| (Arc::clone(&job.slot), 0))
                .1 += 1;
            if latest.get(&key) == Some(&i) {
                let me = Arc::clone(&me);
                writes.push(async move {
                    let mut known = job.known;
                    let result = me
                        .write_queued(&job.session, job.snapshot, &mut known)
                        .await;
                    (job.session, result)
                });
            }
        }
        for (session, result) in futures::future::join_all(writes).await {
            match result {
                Ok(saved) if saved.gone => {
                    session.lock().invalidate();
                }
                Ok(_) => {}
                Err(e) => {
                    me.stats.async_failures.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "async session write failed; the session lives only in this instance's memory");
                }
            }
        }
        for queued in queued_at {
            me.stats.async_lag_us.record_duration(queued.elapsed());
        }
        for (_, (slot, n)) in per_slot {
            slot.pending_writes.fetch_sub(n, Relaxed);
        }
        if pending.fetch_sub(total, Relaxed) == total {
            idle.notify_waiters();
        }
    }
}
