//! The request engine: loads a session into its slot, saves it at the end of a request
//! (write, merge, refresh or repair), invalidates it. The rules about copies live in
//! `store`; the rules about which requests may merge live here ([`WritePolicy`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::config::{LockTimeoutPolicy, LockingMode, Mode, SessionConfig};
use super::id::{SessionId, SessionKey};
use super::listeners::SessionEventKind;
use super::local::{LocalSessions, Slot, SlotState};
use super::lock::{self, HeldLock, LockOutcome};
use super::model::{Session, SessionData, WriteSnapshot};
use super::placement::Copies;
use super::readonly_paths::ReadOnlyPaths;
use super::stats::SessionStats;
use super::store::{is_too_large, Fetched, Invalidation, KnownCopies, Latest, Replicated, Store};
use super::writer::AsyncWriter;
use super::SessionError;

/// How many times an unlocked write re-reads and merges before it gives up.
const MERGE_ATTEMPTS: usize = 4;

/// Rotated keys one invalidation follows (each rotation of the session between its
/// load and its invalidation adds one).
pub(crate) const MAX_SUCCESSORS: usize = 16;

/// Whether a write that finds a newer stored version may merge onto it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WritePolicy {
    /// Unlocked writers (`none`, sticky mode, `Proceed` after a lock wait ran out):
    /// their own changes are merged onto the newer version.
    Merge,
    /// `auto` read-only guesses: a newer version means another request wrote after this
    /// one read (the guess was wrong); the write is refused with
    /// [`SessionError::Conflict`].
    Refuse,
    /// Locked requests: a newer version written while this request still holds its lock
    /// (checked on the lock node) came from an unlocked writer (`Proceed`, a path the
    /// locking mode does not lock, an `auto` guess): merged. Written while the lock was
    /// lost (expired, taken by another request): refused - the version is the fence.
    Locked {
        /// The lock's node.
        node: String,
        /// This request's lock token.
        token: String,
    },
}

/// What a save did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Saved {
    /// The session's record was written (or queued, in async mode).
    pub(crate) written: bool,
    /// The session turned out to be invalidated by another request: nothing was
    /// written, the caller forgets it.
    pub(crate) gone: bool,
}

/// The state one service shares between its requests.
pub(crate) struct Engine {
    pub(crate) config: SessionConfig,
    pub(crate) store: Store,
    pub(crate) stats: Arc<SessionStats>,
    pub(crate) local: LocalSessions,
    readonly: Mutex<ReadOnlyPaths>,
    pub(crate) writer: Option<AsyncWriter>,
}

fn lock_std<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    pub(crate) fn new(
        config: SessionConfig,
        store: Store,
        stats: Arc<SessionStats>,
        writer: Option<AsyncWriter>,
    ) -> Self {
        let local = LocalSessions::new(config.mode == Mode::Sticky, config.max_local_sessions);
        let readonly = Mutex::new(ReadOnlyPaths::new(
            config.auto_readonly_paths,
            config.auto_readonly_bytes,
        ));
        Engine {
            config,
            store,
            stats,
            local,
            readonly,
            writer,
        }
    }

    // ----- locking decisions -----------------------------------------------------

    /// Whether a request for `path` locks its session (non-sticky mode).
    pub(crate) fn decide_lock(&self, path: &str) -> bool {
        if self.config.mode != Mode::NonSticky {
            return false;
        }
        match &self.config.locking {
            LockingMode::None => false,
            LockingMode::All => true,
            LockingMode::UriPattern(re) => re.is_match(path),
            LockingMode::Auto => {
                let read_only = lock_std(&self.readonly).contains(path);
                if read_only {
                    self.stats.auto_readonly_unlocked.fetch_add(1, Relaxed);
                }
                !read_only
            }
        }
    }

    /// `auto` locking: remembers whether `path` changed the session.
    pub(crate) fn note_path(&self, path: &str, changed: bool) {
        if self.config.mode != Mode::NonSticky || !matches!(self.config.locking, LockingMode::Auto)
        {
            return;
        }
        lock_std(&self.readonly).note(path, changed);
    }

    async fn take_lock(&self, key: &SessionKey) -> Result<Option<HeldLock>, SessionError> {
        let outcome = lock::acquire(
            &self.store,
            self.config.clock.as_ref(),
            &self.stats,
            key,
            self.config.lock_expiry,
            self.config.lock_wait,
        )
        .await;
        let proceed = self.config.lock_timeout_policy == LockTimeoutPolicy::Proceed;
        match outcome {
            LockOutcome::Acquired(l) => Ok(Some(l)),
            LockOutcome::TimedOut(waited) => {
                self.stats.lock_timeouts.fetch_add(1, Relaxed);
                if proceed {
                    self.stats.lock_proceeded_unlocked.fetch_add(1, Relaxed);
                    tracing::warn!(?waited, "session lock wait ran out; going on WITHOUT the lock (policy Proceed): the request's changes are merged");
                    Ok(None)
                } else {
                    tracing::warn!(
                        ?waited,
                        "session lock wait ran out; request refused (policy Fail)"
                    );
                    Err(SessionError::LockTimeout { waited })
                }
            }
            LockOutcome::Failed(e) => {
                self.stats.lock_failures.fetch_add(1, Relaxed);
                if proceed {
                    self.stats.lock_proceeded_unlocked.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "session lock failed; going on WITHOUT the lock (policy Proceed)");
                    Ok(None)
                } else {
                    tracing::warn!(error = %e, "session lock failed; request refused (policy Fail)");
                    Err(e.into())
                }
            }
        }
    }

    /// Releases the slot's lock, if it holds one.
    pub(crate) async fn release_lock(&self, key: &SessionKey, slot: &Arc<Slot>) {
        let lock = slot.state.lock().await.lock.take();
        if let Some(mut l) = lock {
            l.stop_renewal();
            self.store.unlock(&l.node, key, &l.token).await;
        }
    }

    // ----- load ------------------------------------------------------------------

    /// Loads the session of `id` into `slot` (joined by the caller; other requests of the
    /// session in flight on this instance share it). `Err` when the session could not be
    /// read: the caller must not tell the client to forget it.
    pub(crate) async fn load(
        &self,
        id: &SessionId,
        slot: &Arc<Slot>,
        needs_lock: bool,
    ) -> Result<Option<Session>, SessionError> {
        let mut s = slot.state.lock().await;
        let key = id.key();
        // Every load reads the stored version, also when other requests of the session
        // are in flight here (their view is reused when it is current): a session
        // invalidated or rewritten elsewhere is never served from memory.
        if needs_lock && s.lock.as_ref().is_none_or(HeldLock::is_lost) {
            if let Some(mut old) = s.lock.take() {
                old.stop_renewal();
            }
            s.lock = self.take_lock(&key).await?;
        }
        let hints: Vec<&str> = std::iter::once(id.node()).chain(id.backup()).collect();
        let now_ms = super::clock::unix_millis(self.config.clock.now());
        let started = std::time::Instant::now();
        let fetched = self.store.fetch(&key, &hints, now_ms).await?;
        self.stats.load_us.record_duration(started.elapsed());
        s.unlocked_guess = self.config.mode == Mode::NonSticky
            && matches!(self.config.locking, LockingMode::Auto)
            && !needs_lock;
        // Nodes without a copy of a rotated session (restarted empty): its former keys'
        // retirements are put back there (docs/session.md, "Id rotation").
        let missing = fetched.known.missing();
        let retirements = match &fetched.latest {
            Some(Latest::Session { stored, .. }) if !missing.is_empty() => {
                super::lifecycle::retirements_of(stored)
            }
            _ => Vec::new(),
        };
        let session = self.adopt(id, &mut s, slot.has_pending_writes(), fetched);
        if session.is_some() && !retirements.is_empty() {
            self.store.restore_retirements(&retirements, &missing).await;
        }
        s.loaded = true;
        s.session = session.clone();
        Ok(session)
    }

    /// Turns what a read found into the slot's session, reusing the memory copy when it
    /// is current (sticky) or merging this instance's pending changes onto a newer one.
    fn adopt(
        &self,
        id: &SessionId,
        s: &mut SlotState,
        pending: bool,
        fetched: Fetched,
    ) -> Option<Session> {
        s.known = fetched.known;
        let now = self.config.clock.now();
        let memory = s.session.take().filter(|m| !m.is_invalidated());
        let (version, stored, validity) = match fetched.latest {
            Some(Latest::Session {
                version,
                stored,
                validity,
            }) => (version, stored, validity),
            Some(Latest::Tombstone { .. }) => return None,
            // No copy where one could be. A memory copy with a write still queued (async
            // mode: its first write, or a write after both nodes were replaced) is the
            // session: the queued write stores it. Any other memory copy is not written
            // back: it may be stale, or the session invalidated and its tombstones lost
            // with the nodes that held them (two node faults: out of scope).
            None => return memory.filter(|_| pending),
        };
        let now_ms = super::clock::unix_millis(now);
        if validity.is_expired_at(now_ms) || self.lifetime_over(stored.created_ms, now_ms) {
            self.stats.expired.fetch_add(1, Relaxed);
            self.emit(SessionEventKind::Expired, id, None);
            return None;
        }
        let route = match self.config.mode {
            Mode::Sticky => self.config.route.as_deref(),
            Mode::NonSticky => id.route(),
        };
        if self.config.mode == Mode::Sticky && id.route() != route {
            self.stats.instance_takeovers.fetch_add(1, Relaxed);
            self.emit(SessionEventKind::TakenOver, &id.with_route(route), Some(id));
            tracing::info!(
                from = id.route(),
                to = route,
                "session taken over by this instance"
            );
        }
        if !s.known.holds(id.node(), version) {
            self.stats.restores_from_backup.fetch_add(1, Relaxed);
            self.emit(SessionEventKind::RestoredFromBackup, id, None);
            tracing::warn!(
                node = id.node(),
                "the id's primary node does not hold the latest copy; served from another copy"
            );
        }
        let new_id = id.with_route(route);
        let session = match memory {
            Some(m) if m.lock().base_version() >= version => m,
            Some(m) if pending => {
                let merged = m.lock().rebase(stored.clone(), version);
                match merged {
                    Ok(()) => m,
                    Err(_) => Session::from_data(SessionData::from_stored(
                        new_id.clone(),
                        stored,
                        validity.last_access_ms,
                        version,
                    )),
                }
            }
            _ => Session::from_data(SessionData::from_stored(
                new_id.clone(),
                stored,
                validity.last_access_ms,
                version,
            )),
        };
        {
            let mut d = session.lock();
            d.set_id(new_id);
            d.record_access(now);
            d.mark_not_new();
        }
        Some(session)
    }

    /// A new session, placed on the live nodes.
    pub(crate) fn new_session(&self) -> Result<Session, SessionError> {
        let key = SessionKey::generate()?;
        let copies = self
            .store
            .copies(&key, &[])
            .ok_or(SessionError::NoNodeAvailable)?;
        let id = SessionId::new(
            key,
            copies.primary,
            copies.backup,
            self.config.route.clone(),
        )?;
        let data = SessionData::new_session(
            id,
            self.config.codec,
            self.config.clock.now(),
            self.config.max_inactive_interval,
        );
        self.stats.sessions_created.fetch_add(1, Relaxed);
        self.emit(SessionEventKind::Created, data.id(), None);
        Ok(Session::from_data(data))
    }

    // ----- save ------------------------------------------------------------------

    /// The end-of-request save of a session: write (or queue) it if it changed, else
    /// refresh its validity (repairing a copy found missing or behind).
    pub(crate) async fn save(
        &self,
        session: &Session,
        slot: &Arc<Slot>,
        s: &mut SlotState,
        policy: WritePolicy,
    ) -> Result<Saved, SessionError> {
        let snapshot = session.lock().snapshot()?;
        let size = snapshot.bytes.len();
        self.stats
            .serialization_us
            .record_duration(snapshot.serialize_time);
        // An unchanged session is only refreshed, whatever its size (a session that grew
        // past the limit through another request's merge stays readable).
        if !snapshot.changed {
            return self.refresh(session, s, snapshot).await;
        }
        if size > self.config.max_session_size {
            return Err(self.too_large(size));
        }
        self.stats.session_size_bytes.record(size as u64);
        if let Some(writer) = &self.writer {
            slot.pending_writes.fetch_add(1, Relaxed);
            if let Err(e) = writer
                .enqueue(
                    session.clone(),
                    Arc::clone(slot),
                    snapshot,
                    s.known.clone(),
                    &self.stats,
                )
                .await
            {
                slot.pending_writes.fetch_sub(1, Relaxed);
                return Err(e);
            }
            return Ok(Saved {
                written: true,
                gone: false,
            });
        }
        self.write(session, &mut s.known, snapshot, policy).await
    }

    /// Writes a changed session to its copies; on a newer stored version, merges
    /// (policy `Merge`) or refuses (`Refuse`).
    pub(crate) async fn write(
        &self,
        session: &Session,
        known: &mut KnownCopies,
        mut snapshot: WriteSnapshot,
        mut policy: WritePolicy,
    ) -> Result<Saved, SessionError> {
        let key = session.id().key();
        for _ in 0..MERGE_ATTEMPTS {
            // The version the snapshot's content is based on (not the live session's:
            // in async mode it may have moved on since the snapshot was queued).
            let base = snapshot.base_version;
            let max_inactive = session.lock().max_inactive_interval();
            let started = Instant::now();
            let outcome = match self
                .store
                .replicate(
                    &key,
                    &mut snapshot.bytes,
                    base,
                    max_inactive,
                    known,
                    policy != WritePolicy::Merge,
                )
                .await
            {
                Err(SessionError::Memcached(e)) if is_too_large(&e) => {
                    return Err(self.too_large(snapshot.bytes.len()))
                }
                other => other?,
            };
            match outcome {
                Replicated::Written { copies, version } => {
                    self.stats.write_us.record_duration(started.elapsed());
                    self.stats.writes.fetch_add(1, Relaxed);
                    {
                        let mut d = session.lock();
                        d.mark_written(&snapshot, version);
                        self.place_id(&mut d, &copies);
                    }
                    return Ok(Saved {
                        written: true,
                        gone: false,
                    });
                }
                Replicated::Gone => return Ok(self.gone()),
                Replicated::Conflict => {
                    if policy != WritePolicy::Merge {
                        let still_held = match &policy {
                            WritePolicy::Locked { node, token } => {
                                self.store.lock_is_held(node, &key, token).await
                            }
                            _ => false,
                        };
                        if !still_held {
                            self.stats.conflicts.fetch_add(1, Relaxed);
                            tracing::warn!("session written by another request since this one read it; this request's change is refused (lock lost, or auto read-only guess)");
                            return Err(SessionError::Conflict);
                        }
                        // Written by an unlocked writer while this request held the lock.
                        policy = WritePolicy::Merge;
                    }
                    if let Some(gone) = self.merge_latest(session, &key, known).await? {
                        return Ok(gone);
                    }
                    snapshot = session.lock().snapshot()?;
                    // Nothing left to add: the latest copy read already holds this
                    // request's changes. It may be this request's own record, stored on
                    // one copy while another writer stored the same version elsewhere
                    // (instances that disagreed about the placement, a copy write that
                    // timed out) and the roll forward failed: write the merged session
                    // once more, one version up, so every copy converges on content
                    // that holds this request's change (and the answer says written).
                    snapshot.changed = true;
                    // The merged session must fit too: refused, nothing written.
                    if snapshot.bytes.len() > self.config.max_session_size {
                        return Err(self.too_large(snapshot.bytes.len()));
                    }
                }
            }
        }
        self.stats.conflicts.fetch_add(1, Relaxed);
        Err(SessionError::Conflict)
    }

    /// Re-reads the latest version and re-bases this request's own changes onto it.
    /// `Some` when the session turned out to be invalidated.
    pub(crate) async fn merge_latest(
        &self,
        session: &Session,
        key: &SessionKey,
        known: &mut KnownCopies,
    ) -> Result<Option<Saved>, SessionError> {
        let id = session.id();
        let hints: Vec<&str> = std::iter::once(id.node()).chain(id.backup()).collect();
        let now_ms = super::clock::unix_millis(self.config.clock.now());
        let fetched = self.store.fetch(key, &hints, now_ms).await?;
        *known = fetched.known;
        match fetched.latest {
            Some(Latest::Tombstone { .. }) => return Ok(Some(self.gone())),
            Some(Latest::Session {
                version, stored, ..
            }) => {
                self.stats.merges.fetch_add(1, Relaxed);
                session.lock().rebase(stored, version)?;
            }
            None => {}
        }
        Ok(None)
    }

    fn gone(&self) -> Saved {
        self.stats.writes_after_invalidation.fetch_add(1, Relaxed);
        tracing::info!("session invalidated by another request meanwhile; nothing written back");
        Saved {
            written: false,
            gone: true,
        }
    }

    /// A request that changed nothing: re-create a copy found missing or behind, then
    /// refresh (last access, TTL) the copies that still hold the version read.
    async fn refresh(
        &self,
        session: &Session,
        s: &mut SlotState,
        mut snapshot: WriteSnapshot,
    ) -> Result<Saved, SessionError> {
        let base = snapshot.base_version;
        let (key, max_inactive) = {
            let d = session.lock();
            (d.id().key(), d.max_inactive_interval())
        };
        let copies = self
            .store
            .copies(&key, &[])
            .ok_or(SessionError::NoNodeAvailable)?;
        let copies = if copies.nodes().all(|n| s.known.holds(n, base)) {
            self.store.remove_stale(&key, &copies, base, &s.known).await;
            copies
        } else {
            match self
                .store
                .repair(&key, &mut snapshot.bytes, base, max_inactive, &mut s.known)
                .await?
            {
                Replicated::Written { copies, .. } => {
                    self.stats.repairs.fetch_add(1, Relaxed);
                    copies
                }
                // A newer version was written after this request read the session:
                // this request changed nothing, so there is nothing to do.
                Replicated::Conflict => return Ok(Saved::default()),
                Replicated::Gone => return Ok(self.gone()),
            }
        };
        self.store
            .refresh(
                &key,
                &copies,
                &mut snapshot.bytes,
                base,
                max_inactive,
                &s.known,
            )
            .await;
        self.stats.skipped_unchanged.fetch_add(1, Relaxed);
        self.stats.validity_refreshes.fetch_add(1, Relaxed);
        self.place_id(&mut session.lock(), &copies);
        Ok(Saved::default())
    }

    /// Names the copies in the session's id (counted as a relocation when they moved).
    fn place_id(&self, d: &mut SessionData, copies: &Copies) {
        let id = d.id();
        if id.node() == copies.primary && id.backup() == copies.backup.as_deref() {
            return;
        }
        if id.node() != copies.primary {
            self.stats.relocations.fetch_add(1, Relaxed);
            tracing::info!(
                from = id.node(),
                to = %copies.primary,
                backup = copies.backup.as_deref(),
                "session relocated; its id changes"
            );
        }
        let new_id = id.with_nodes(&copies.primary, copies.backup.as_deref());
        if id.node() != copies.primary {
            self.emit(SessionEventKind::Relocated, &new_id, Some(id));
        }
        d.set_id(new_id);
    }

    fn too_large(&self, size: usize) -> SessionError {
        self.stats.oversized.fetch_add(1, Relaxed);
        tracing::error!(
            size,
            max = self.config.max_session_size,
            "session too large for memcached; not written"
        );
        SessionError::TooLarge {
            size,
            max: self.config.max_session_size,
        }
    }

    // ----- invalidate --------------------------------------------------------------

    /// Invalidates a session everywhere: a tombstone on every node that may hold a copy
    /// (also for a session created in this request: an async write of it may be queued).
    pub(crate) async fn invalidate(
        &self,
        session: &Session,
        known: &KnownCopies,
    ) -> Result<(), SessionError> {
        // The tombstone must outlive every copy it hides: sized by the longer of the
        // session's interval (as this request read it) and the configured one.
        let (id, max_inactive) = {
            let d = session.lock();
            (
                d.id().clone(),
                d.max_inactive_interval()
                    .max(self.config.max_inactive_interval),
            )
        };
        self.stats.invalidations.fetch_add(1, Relaxed);
        self.emit(SessionEventKind::Invalidated, &id, None);
        let now = super::clock::unix_millis(self.config.clock.now());
        let first = self.tombstone_id(&id, known, max_inactive, now, None).await;
        let followed = self
            .invalidate_successors(first.successors, now, max_inactive)
            .await;
        first.result.and(followed)
    }

    /// An invalidation of a session this request loaded found its key retired by an id
    /// rotation that completed meanwhile (elsewhere): the session lives on under the
    /// successor keys, which are invalidated in turn (and theirs, up to
    /// `MAX_SUCCESSORS` keys), so the rotation can't carry a logged-out session on.
    async fn invalidate_successors(
        &self,
        mut pending: Vec<SessionKey>,
        now: u64,
        max_inactive: std::time::Duration,
    ) -> Result<(), SessionError> {
        let mut followed: Vec<SessionKey> = Vec::new();
        let mut outcome = Ok(());
        while let Some(key) = pending.pop() {
            if followed.contains(&key) {
                continue;
            }
            if followed.len() == MAX_SUCCESSORS {
                tracing::error!("an invalidation found more rotated ids than it follows; the rest live on until they expire");
                return Err(SessionError::Conflict);
            }
            followed.push(key);
            self.stats.successors_invalidated.fetch_add(1, Relaxed);
            let next = self
                .store
                .invalidate(&key, &[], now, max_inactive, &KnownCopies::default(), None)
                .await;
            if let Err(e) = next.result {
                outcome = outcome.and(Err(e));
            }
            pending.extend(next.successors);
        }
        outcome
    }

    /// Tombstones `id`'s key (see `Store::invalidate`): the nodes the request's read
    /// found (`known`) and the configured ones the id names are written first, then
    /// every usable node. `successor`: the key a rotation moved the session to.
    pub(crate) async fn tombstone_id(
        &self,
        id: &SessionId,
        known: &KnownCopies,
        max_inactive: std::time::Duration,
        now: u64,
        successor: Option<&SessionKey>,
    ) -> Invalidation {
        let mut nodes: Vec<String> = known.nodes().map(str::to_owned).collect();
        for n in std::iter::once(id.node()).chain(id.backup()) {
            if self.store.knows(n) && !nodes.iter().any(|k| k == n) {
                nodes.push(n.to_owned());
            }
        }
        self.store
            .invalidate(&id.key(), &nodes, now, max_inactive, known, successor)
            .await
    }

    /// Invalidates the key of an id under which no session was found (see
    /// `SessionRequest::invalidate`): tombstones on the id's nodes and every usable node.
    pub(crate) async fn invalidate_id(&self, id: &SessionId) -> Result<(), SessionError> {
        let now = super::clock::unix_millis(self.config.clock.now());
        let interval = self.config.max_inactive_interval;
        self.tombstone_id(id, &KnownCopies::default(), interval, now, None)
            .await
            .result
    }

    /// Sticky mode: drops expired sessions from memory.
    pub(crate) fn purge_expired(&self) -> usize {
        self.local.purge_expired(self.config.clock.now())
    }

    /// The async writer's write of one queued session (unlocked: merges).
    pub(crate) async fn write_queued(
        &self,
        session: &Session,
        snapshot: WriteSnapshot,
        known: &mut KnownCopies,
    ) -> Result<Saved, SessionError> {
        self.write(session, known, snapshot, WritePolicy::Merge)
            .await
    }
}
