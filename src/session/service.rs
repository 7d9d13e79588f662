//! The service: per-request load / create / save / invalidate for both modes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

use crate::Client;

use super::config::{LockTimeoutPolicy, LockingMode, Mode, SessionConfig, WriteMode};
use super::cookie::{strip_url_session_id, CookieDecision};
use super::id::{SessionId, SessionKey};
use super::lock::{self, HeldLock, LockOutcome};
use super::model::{Session, SessionData, WriteSnapshot};
use super::readonly_paths::ReadOnlyPaths;
use super::stats::{SessionStats, StatsSnapshot};
use super::store::{Fetched, Store};
use super::SessionError;

fn lock_std<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the service needs to know about a request.
#[derive(Clone, Debug, Default)]
pub struct RequestInfo {
    path: String,
    session_ids: Vec<String>,
}

impl RequestInfo {
    /// A request for `path` (without the query). With URL rewriting on, a
    /// `;jsessionid=` parameter in the path is taken as a session id.
    pub fn new(path: impl Into<String>) -> Self {
        RequestInfo {
            path: path.into(),
            session_ids: Vec::new(),
        }
    }

    /// The session id the request presented (for instance the cookie's value).
    pub fn session_id(mut self, id: Option<&str>) -> Self {
        if let Some(id) = id {
            self.session_ids.push(id.to_owned());
        }
        self
    }

    /// Several candidate ids (a `Cookie` header may carry the cookie more than once);
    /// the first that names a live session is used.
    pub fn session_ids<I, S>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.session_ids.extend(ids.into_iter().map(Into::into));
        self
    }

    /// The path.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// What [`SessionRequest::finish`] tells the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SaveOutcome {
    /// What to do with the session cookie.
    pub cookie: CookieDecision,
    /// The session's id at the end of the request (`None`: no session).
    pub session_id: Option<String>,
    /// True when the session was written to memcached (or queued, in async mode).
    pub written: bool,
}

#[derive(Default)]
struct SlotState {
    loaded: bool,
    session: Option<Session>,
    lock: Option<HeldLock>,
    cas: Option<u64>,
    unlocked: bool,
}

#[derive(Default)]
struct Slot {
    state: tokio::sync::Mutex<SlotState>,
}

struct SlotRef {
    slot: Arc<Slot>,
    refs: usize,
}

struct AsyncJob {
    session: Session,
    snapshot: WriteSnapshot,
    queued: Instant,
}

struct Inner {
    config: SessionConfig,
    store: Store,
    stats: Arc<SessionStats>,
    slots: Mutex<HashMap<SessionKey, SlotRef>>,
    readonly: Mutex<ReadOnlyPaths>,
    async_tx: Option<mpsc::Sender<AsyncJob>>,
    async_pending: AtomicUsize,
    async_idle: Notify,
}

/// The session service: one per application instance, cheap to clone.
#[derive(Clone)]
pub struct BackupSessionService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BackupSessionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupSessionService")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl BackupSessionService {
    /// Builds the service and its memcached client from `config.nodes` (must run inside
    /// a tokio runtime).
    pub fn new(config: SessionConfig) -> Result<Self, SessionError> {
        if config.nodes.is_empty() {
            return Err(SessionError::config(
                "nodes",
                "no node given; set nodes(\"id:host:port,...\") or use with_client",
            ));
        }
        let mut builder = Client::builder().operation_timeout(config.operation_timeout);
        for n in &config.nodes {
            builder =
                builder.node_config(crate::NodeConfig::new(n.address.as_str()).id(n.id.as_str()));
        }
        let client = builder.build()?;
        Self::with_client(config, client)
    }

    /// Builds the service on an existing client (its node ids name the nodes; the
    /// configured node list, if any, must match them).
    pub fn with_client(config: SessionConfig, client: Client) -> Result<Self, SessionError> {
        if !config.nodes.is_empty() {
            let ids = client.node_ids();
            if config.nodes.iter().any(|n| !ids.contains(&n.id)) {
                return Err(SessionError::config(
                    "nodes",
                    "the configured node ids are not the client's node ids; configure one or the other",
                ));
            }
        }
        if config.mode == Mode::Sticky && config.route.is_none() {
            return Err(SessionError::config(
                "route",
                "sticky mode needs this instance's route (e.g. route(\"web1\")): it tells instances apart when one takes over another's session",
            ));
        }
        let stats = Arc::new(SessionStats::default());
        let store = Store::new(
            client,
            config.failover_nodes.clone(),
            config.key_prefix.clone(),
            Arc::clone(&stats),
        )?;
        let async_mode = config.mode == Mode::Sticky && config.write_mode == WriteMode::Async;
        let (tx, rx) = if async_mode {
            let (tx, rx) = mpsc::channel(config.async_queue_capacity);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let readonly = Mutex::new(ReadOnlyPaths::new(
            config.auto_readonly_paths,
            config.auto_readonly_bytes,
        ));
        let inner = Arc::new(Inner {
            config,
            store,
            stats,
            slots: Mutex::new(HashMap::new()),
            readonly,
            async_tx: tx,
            async_pending: AtomicUsize::new(0),
            async_idle: Notify::new(),
        });
        if let Some(rx) = rx {
            tokio::spawn(async_writer(Arc::downgrade(&inner), rx));
        }
        if inner.config.mode == Mode::Sticky {
            tokio::spawn(sweeper(Arc::downgrade(&inner)));
        }
        Ok(BackupSessionService { inner })
    }

    /// Starts handling one request. Call [`SessionRequest::finish`] at its end.
    pub fn request(&self, info: RequestInfo) -> SessionRequest {
        let mut path = info.path;
        let mut ids = info.session_ids;
        if self.inner.config.url_rewriting {
            let (clean, id) = strip_url_session_id(&path);
            if let Some(id) = id {
                ids.push(id.to_owned());
            }
            path = clean;
        }
        SessionRequest {
            inner: Arc::new(RequestInner {
                svc: Arc::clone(&self.inner),
                path,
                candidates: ids,
                state: tokio::sync::Mutex::new(ReqState::default()),
            }),
        }
    }

    /// The candidate ids in a `Cookie` header (the configured cookie name).
    pub fn ids_from_cookie_header<'a>(&self, header: &'a str) -> Vec<&'a str> {
        self.inner.config.cookie.values_in(header)
    }

    /// The `Set-Cookie` value for a decision (`None`: send nothing).
    pub fn set_cookie_value(&self, decision: &CookieDecision) -> Option<String> {
        self.inner.config.cookie.set_cookie_value(decision)
    }

    /// The statistics.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    /// The memcached client.
    pub fn client(&self) -> &Client {
        self.inner.store.client()
    }

    /// Sessions held in this instance's memory (sticky: owned sessions; non-sticky:
    /// sessions of requests in flight).
    pub fn local_sessions(&self) -> usize {
        lock_std(&self.inner.slots).len()
    }

    /// Async mode: waits until every queued write was acknowledged (or failed). Returns
    /// at once in the other modes. Call it on graceful shutdown.
    pub async fn flush(&self) {
        loop {
            let idle = self.inner.async_idle.notified();
            if self.inner.async_pending.load(Relaxed) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Async mode: writes queued and not yet acknowledged (the current loss window).
    pub fn pending_writes(&self) -> usize {
        self.inner.async_pending.load(Relaxed)
    }

    /// Sticky mode: drops expired sessions from memory (also done every minute).
    pub fn purge_expired(&self) -> usize {
        self.inner.purge_expired()
    }
}

impl Inner {
    fn purge_expired(&self) -> usize {
        let now = self.config.clock.now();
        let mut slots = lock_std(&self.slots);
        let before = slots.len();
        slots.retain(|_, r| match r.slot.state.try_lock() {
            Ok(s) => match &s.session {
                Some(sess) => !sess.lock().is_expired_at(now),
                None => !s.loaded || r.refs > 0,
            },
            Err(_) => true,
        });
        before - slots.len()
    }

    fn decide_lock(&self, path: &str) -> bool {
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

    fn note_path(&self, path: &str, changed: bool) {
        if !matches!(self.config.locking, LockingMode::Auto) {
            return;
        }
        lock_std(&self.readonly).note(path, changed);
    }

    /// Gets or makes the slot of `key`; `join`: count a reference (non-sticky).
    fn slot(&self, key: SessionKey, join: bool) -> Arc<Slot> {
        let mut slots = lock_std(&self.slots);
        let r = slots.entry(key).or_insert_with(|| SlotRef {
            slot: Arc::new(Slot::default()),
            refs: 0,
        });
        if join {
            r.refs += 1;
        }
        Arc::clone(&r.slot)
    }

    /// Removes the slot of `key` if it is still `slot` (sticky).
    fn forget(&self, key: &SessionKey, slot: &Arc<Slot>) {
        let mut slots = lock_std(&self.slots);
        if slots.get(key).is_some_and(|r| Arc::ptr_eq(&r.slot, slot)) {
            slots.remove(key);
        }
    }

    /// Drops one reference (non-sticky); true when it was the last.
    fn leave(&self, key: &SessionKey, slot: &Arc<Slot>) -> bool {
        let mut slots = lock_std(&self.slots);
        match slots.get_mut(key) {
            Some(r) if Arc::ptr_eq(&r.slot, slot) => {
                r.refs = r.refs.saturating_sub(1);
                if r.refs == 0 {
                    slots.remove(key);
                    true
                } else {
                    false
                }
            }
            _ => true,
        }
    }

    fn max_inactive(&self, session: &Session) -> Duration {
        session.lock().max_inactive_interval()
    }

    fn spawn_delete_all(self: &Arc<Self>, id: SessionId) {
        let me = Arc::clone(self);
        tokio::spawn(async move { me.store.delete_all(&id).await });
    }

    /// Loads from memcached into a session, or `None` (absent, expired, tombstone).
    async fn fetch_session(
        self: &Arc<Self>,
        id: &SessionId,
        new_route: Option<&str>,
    ) -> Result<Option<(SessionData, Option<u64>)>, SessionError> {
        let fetched = match self.store.fetch(id).await {
            Ok(f) => f,
            Err(e) => {
                self.stats.load_failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "session could not be loaded from any copy");
                return Err(e);
            }
        };
        let now = self.config.clock.now();
        match fetched {
            Fetched::Missing | Fetched::Tombstone => Ok(None),
            Fetched::Found {
                stored,
                validity,
                from_backup,
                cas,
            } => {
                if validity.is_expired_at(super::clock::unix_millis(now)) {
                    self.stats.expired.fetch_add(1, Relaxed);
                    tracing::debug!("stored session expired; removing its copies");
                    self.spawn_delete_all(id.clone());
                    return Ok(None);
                }
                let new_id = match new_route {
                    Some(r) => id.with_route(Some(r)),
                    None => id.clone(),
                };
                let mut data = SessionData::from_stored(new_id, stored, validity.last_access_ms);
                data.record_access(now);
                if from_backup {
                    self.stats.restores_from_backup.fetch_add(1, Relaxed);
                    tracing::warn!(node = id.node(), backup = id.backup(), "session restored from its backup copy; it will be rewritten to a live node");
                    data.force_dirty();
                }
                Ok(Some((data, cas)))
            }
        }
    }

    /// Sticky load.
    async fn load_sticky(
        self: &Arc<Self>,
        id: &SessionId,
    ) -> Result<Option<(Session, Arc<Slot>)>, SessionError> {
        let route = self.config.route.as_deref();
        let key = id.key();
        let slot = self.slot(key, false);
        let mut s = slot.state.lock().await;
        let now = self.config.clock.now();
        if let Some(sess) = s.session.clone() {
            let mut d = sess.lock();
            let ours = d.id().route() == id.route();
            if !d.is_invalidated() && ours {
                if d.is_expired_at(now) {
                    self.stats.expired.fetch_add(1, Relaxed);
                    let id = d.id().clone();
                    drop(d);
                    s.session = None;
                    s.loaded = false;
                    drop(s);
                    self.forget(&key, &slot);
                    self.spawn_delete_all(id);
                    return Ok(None);
                }
                d.record_access(now);
                d.mark_not_new();
                drop(d);
                return Ok(Some((sess, Arc::clone(&slot))));
            }
            // Another instance took the session over since (or it was invalidated):
            // this copy is stale; read the current one from memcached.
            tracing::debug!("local session copy is stale; reloading from memcached");
            drop(d);
            s.session = None;
        }
        match self.fetch_session(id, route).await {
            Ok(Some((data, _))) => {
                if id.route() != route {
                    self.stats.instance_takeovers.fetch_add(1, Relaxed);
                    tracing::info!(
                        from = id.route(),
                        to = route,
                        "session taken over by this instance"
                    );
                }
                let sess = Session::from_data(data);
                s.session = Some(sess.clone());
                s.loaded = true;
                Ok(Some((sess, Arc::clone(&slot))))
            }
            Ok(None) => {
                drop(s);
                self.forget(&key, &slot);
                Ok(None)
            }
            Err(e) => {
                drop(s);
                self.forget(&key, &slot);
                Err(e)
            }
        }
    }

    async fn take_lock(
        self: &Arc<Self>,
        key: &SessionKey,
    ) -> Result<Option<HeldLock>, SessionError> {
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
                    tracing::warn!(?waited, "session lock wait ran out; going on WITHOUT the lock (policy Proceed): concurrent updates may be lost");
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

    /// Non-sticky load into an already joined slot.
    async fn load_non_sticky(
        self: &Arc<Self>,
        id: &SessionId,
        slot: &Arc<Slot>,
        needs_lock: bool,
    ) -> Result<Option<Session>, SessionError> {
        let mut s = slot.state.lock().await;
        let upgrade = s.loaded && needs_lock && s.lock.is_none() && s.session.is_some();
        if s.loaded && !upgrade {
            if let Some(sess) = &s.session {
                let mut d = sess.lock();
                d.record_access(self.config.clock.now());
                d.mark_not_new();
            }
            return Ok(s.session.clone());
        }
        if needs_lock {
            s.lock = self.take_lock(&id.key()).await?;
        }
        let fetched = self.fetch_session(id, None).await?;
        s.unlocked = s.lock.is_none();
        match (fetched, s.session.clone()) {
            (Some((data, cas)), Some(existing)) => {
                // Lock upgrade: refresh the shared session in place.
                *existing.lock() = data;
                s.cas = cas;
            }
            (Some((data, cas)), None) => {
                s.session = Some(Session::from_data(data));
                s.cas = cas;
            }
            (None, _) => s.session = None,
        }
        s.loaded = true;
        Ok(s.session.clone())
    }

    /// The end-of-request write of a session: skip, refresh or write.
    async fn save(
        self: &Arc<Self>,
        session: &Session,
        cas: Option<u64>,
    ) -> Result<bool, SessionError> {
        let original = session.id();
        let mut force = false;
        if let Some(new_id) = self.store.replan(&original, &[])? {
            self.note_relocation(&original, &new_id);
            session.lock().set_id(new_id);
            force = true;
        }
        let snapshot = session.lock().snapshot()?;
        let mut exclude = Vec::new();
        if !snapshot.changed && !force {
            let id = session.id();
            let validity = session.lock().validity();
            match self
                .store
                .refresh(&id, &validity, self.max_inactive(session))
                .await
            {
                Ok(true) => {
                    self.stats.skipped_unchanged.fetch_add(1, Relaxed);
                    self.stats.validity_refreshes.fetch_add(1, Relaxed);
                    return Ok(false);
                }
                Ok(false) => {
                    tracing::warn!(
                        node = id.node(),
                        "primary copy missing (node restarted empty?); rewriting the session"
                    );
                }
                Err(e) if e.is_node_failure() => {
                    tracing::warn!(node = id.node(), error = %e, "primary node failed during refresh; relocating the session");
                    exclude.push(id.node().to_owned());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let size = snapshot.bytes.len();
        if size > self.config.max_session_size {
            return Err(self.too_large(size));
        }
        self.stats
            .serialization_us
            .record_duration(snapshot.serialize_time);
        self.stats.session_size_bytes.record(size as u64);
        if let Some(tx) = &self.async_tx {
            self.async_pending.fetch_add(1, Relaxed);
            self.stats.async_queued.fetch_add(1, Relaxed);
            let job = AsyncJob {
                session: session.clone(),
                snapshot,
                queued: Instant::now(),
            };
            let job = match tx.try_send(job) {
                Ok(()) => return Ok(true),
                Err(mpsc::error::TrySendError::Full(job)) => job,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.async_pending.fetch_sub(1, Relaxed);
                    return Err(SessionError::Shutdown);
                }
            };
            self.stats.async_queue_full.fetch_add(1, Relaxed);
            tracing::debug!("async session write queue full; waiting for room");
            return match tx.send(job).await {
                Ok(()) => Ok(true),
                Err(_) => {
                    self.async_pending.fetch_sub(1, Relaxed);
                    Err(SessionError::Shutdown)
                }
            };
        }
        self.persist(session, &snapshot, cas, exclude).await?;
        Ok(true)
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

    fn note_relocation(self: &Arc<Self>, old: &SessionId, new: &SessionId) {
        self.stats.relocations.fetch_add(1, Relaxed);
        tracing::info!(
            from = old.node(),
            to = new.node(),
            backup = new.backup(),
            "session relocated; its id changes"
        );
    }

    /// Writes both copies, relocating away from nodes that fail.
    async fn persist(
        self: &Arc<Self>,
        session: &Session,
        snapshot: &WriteSnapshot,
        mut cas: Option<u64>,
        mut exclude: Vec<String>,
    ) -> Result<(), SessionError> {
        let first_id = session.id();
        let max_inactive = self.max_inactive(session);
        let mut last_error = None;
        for _ in 0..4 {
            let id = session.id();
            if !exclude.is_empty() {
                if let Some(new_id) = self.store.replan(&id, &exclude)? {
                    self.note_relocation(&id, &new_id);
                    session.lock().set_id(new_id);
                }
            }
            let id = session.id();
            let started = Instant::now();
            let result = match self
                .store
                .write(&id, &snapshot.bytes, max_inactive, cas.take())
                .await
            {
                Ok(r) => r,
                Err(SessionError::Conflict) => {
                    self.stats.conflicts.fetch_add(1, Relaxed);
                    tracing::warn!("unlocked session write lost against a concurrent write (auto locking); change not saved");
                    return Err(SessionError::Conflict);
                }
                Err(e) => return Err(e),
            };
            self.stats.write_us.record_duration(started.elapsed());
            match result.primary {
                Ok(()) => {}
                Err(e) if e.is_node_failure() => {
                    self.stats.backup_failures.fetch_add(1, Relaxed);
                    tracing::warn!(node = id.node(), error = %e, "session write to its node failed; relocating");
                    exclude.push(id.node().to_owned());
                    last_error = Some(SessionError::Memcached(e));
                    continue;
                }
                Err(crate::Error::ValueTooLarge { size, .. }) => return Err(self.too_large(size)),
                Err(crate::Error::Server(msg)) if msg.contains("too large") => {
                    return Err(self.too_large(snapshot.bytes.len()))
                }
                Err(e) => {
                    self.stats.backup_failures.fetch_add(1, Relaxed);
                    return Err(e.into());
                }
            }
            match result.backup {
                Some(Err(e)) if e.is_node_failure() => {
                    self.stats.backup_failures.fetch_add(1, Relaxed);
                    tracing::warn!(node = id.backup(), error = %e, "backup copy write failed; choosing another backup node");
                    if let Some(b) = id.backup() {
                        exclude.push(b.to_owned());
                    }
                    last_error = Some(SessionError::Memcached(e));
                    continue;
                }
                Some(Err(e)) => {
                    self.stats.backup_failures.fetch_add(1, Relaxed);
                    tracing::warn!(node = id.backup(), error = %e, "backup copy write refused");
                }
                None => {
                    tracing::warn!(
                        node = id.node(),
                        "no second live node: session written without a backup copy"
                    );
                }
                Some(Ok(())) => {}
            }
            self.stats.backups.fetch_add(1, Relaxed);
            session.lock().mark_written(snapshot);
            if id != first_id {
                let me = Arc::clone(self);
                tokio::spawn(async move { me.store.delete_stale(&first_id, &id).await });
            }
            return Ok(());
        }
        Err(last_error.unwrap_or(SessionError::NoNodeAvailable))
    }

    fn new_session(self: &Arc<Self>) -> Result<Session, SessionError> {
        let key = SessionKey::generate()?;
        let id = self.store.place_new(key, self.config.route.as_deref())?;
        let data = SessionData::new_session(
            id,
            self.config.codec,
            self.config.clock.now(),
            self.config.max_inactive_interval,
        );
        self.stats.sessions_created.fetch_add(1, Relaxed);
        Ok(Session::from_data(data))
    }
}

async fn async_writer(inner: Weak<Inner>, mut rx: mpsc::Receiver<AsyncJob>) {
    let mut batch = Vec::with_capacity(ASYNC_BATCH);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, ASYNC_BATCH).await == 0 {
            return;
        }
        let Some(me) = inner.upgrade() else {
            return;
        };
        // One write per session per batch: the latest snapshot holds every earlier change
        // of that session. Batches run one after the other, so a session's writes stay in
        // order; the sessions of a batch are written concurrently (pipelined).
        let mut latest: HashMap<SessionKey, usize> = HashMap::with_capacity(batch.len());
        for (i, job) in batch.iter().enumerate() {
            latest.insert(job.session.lock().id().key(), i);
        }
        let superseded = (batch.len() - latest.len()) as u64;
        me.stats.async_coalesced.fetch_add(superseded, Relaxed);
        let writes = latest.values().map(|&i| {
            let job = &batch[i];
            me.persist(&job.session, &job.snapshot, None, Vec::new())
        });
        for result in futures::future::join_all(writes).await {
            if let Err(e) = result {
                me.stats.async_failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "async session write failed; the session lives only in this instance's memory");
            }
        }
        for job in &batch {
            me.stats.async_lag_us.record_duration(job.queued.elapsed());
        }
        if me.async_pending.fetch_sub(batch.len(), Relaxed) == batch.len() {
            me.async_idle.notify_waiters();
        }
    }
}

/// Most queued writes one batch of the async writer takes.
const ASYNC_BATCH: usize = 256;

async fn sweeper(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        match inner.upgrade() {
            Some(me) => {
                me.purge_expired();
            }
            None => return,
        }
    }
}

#[derive(Default)]
struct ReqState {
    loaded: bool,
    presented: Option<String>,
    session: Option<Session>,
    slot: Option<(SessionKey, Arc<Slot>)>,
    joined: bool,
    locked_request: bool,
    invalidated: Vec<Session>,
    finished: bool,
}

struct RequestInner {
    svc: Arc<Inner>,
    path: String,
    candidates: Vec<String>,
    state: tokio::sync::Mutex<ReqState>,
}

impl Drop for RequestInner {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        if st.finished || !st.joined {
            return;
        }
        // A request dropped without finish (handler panicked, future cancelled): release
        // its share of the slot and the lock, without saving.
        if let (Some((key, slot)), Ok(handle)) =
            (st.slot.take(), tokio::runtime::Handle::try_current())
        {
            let svc = Arc::clone(&self.svc);
            handle.spawn(async move {
                let mut s = slot.state.lock().await;
                if svc.leave(&key, &slot) {
                    if let Some(l) = s.lock.take() {
                        svc.store.unlock(&l.node, &key, &l.token).await;
                    }
                }
            });
        }
    }
}

/// One request's view of its session. Cheap to clone (the tower layer puts a clone in
/// the request's extensions). Loads lazily: a request that never asks for its session
/// costs no memcached round trip.
#[derive(Clone)]
pub struct SessionRequest {
    inner: Arc<RequestInner>,
}

impl std::fmt::Debug for SessionRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRequest")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SessionRequest {
    /// The request path (without a `;jsessionid=` parameter).
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// The request's session, loading it on first use: `None` when the request has no
    /// valid id or the session is gone (expired, invalidated, unknown).
    pub async fn session(&self) -> Result<Option<Session>, SessionError> {
        let mut st = self.inner.state.lock().await;
        self.load(&mut st).await
    }

    async fn load(&self, st: &mut ReqState) -> Result<Option<Session>, SessionError> {
        if st.loaded {
            return Ok(st.session.clone().filter(|s| !s.is_invalidated()));
        }
        st.loaded = true;
        let svc = &self.inner.svc;
        for candidate in &self.inner.candidates {
            let Some(id) = SessionId::parse(candidate) else {
                svc.stats.invalid_ids.fetch_add(1, Relaxed);
                tracing::debug!("session id does not parse; ignored");
                continue;
            };
            let known =
                svc.store.knows(id.node()) && id.backup().is_none_or(|b| svc.store.knows(b));
            if !known {
                svc.stats.invalid_ids.fetch_add(1, Relaxed);
                tracing::debug!(
                    node = id.node(),
                    "session id names an unknown node; ignored"
                );
                continue;
            }
            st.presented = Some(candidate.clone());
            match svc.config.mode {
                Mode::Sticky => {
                    if let Some((sess, slot)) = svc.load_sticky(&id).await? {
                        st.session = Some(sess.clone());
                        st.slot = Some((id.key(), slot));
                        return Ok(Some(sess));
                    }
                }
                Mode::NonSticky => {
                    let needs_lock = svc.decide_lock(&self.inner.path);
                    if let Some((key, slot)) = st.slot.take() {
                        // A previous candidate joined a slot and found nothing.
                        if st.joined && svc.leave(&key, &slot) {
                            release_lock(svc, &key, &slot).await;
                        }
                        st.joined = false;
                    }
                    let slot = svc.slot(id.key(), true);
                    st.slot = Some((id.key(), Arc::clone(&slot)));
                    st.joined = true;
                    st.locked_request = needs_lock;
                    if let Some(sess) = svc.load_non_sticky(&id, &slot, needs_lock).await? {
                        st.session = Some(sess.clone());
                        return Ok(Some(sess));
                    }
                }
            }
        }
        if st.presented.is_none() {
            st.presented = self.inner.candidates.first().cloned();
        }
        Ok(None)
    }

    /// The request's session, created if there is none (or it was invalidated).
    pub async fn get_or_create(&self) -> Result<Session, SessionError> {
        let mut st = self.inner.state.lock().await;
        if let Some(s) = self.load(&mut st).await? {
            return Ok(s);
        }
        self.create_locked(&mut st).await
    }

    /// A new session for this request, replacing (and invalidating) the current one, if
    /// any: use it on login, against session fixation.
    pub async fn create(&self) -> Result<Session, SessionError> {
        let mut st = self.inner.state.lock().await;
        if let Some(old) = self.load(&mut st).await? {
            old.invalidate();
        }
        self.create_locked(&mut st).await
    }

    async fn create_locked(&self, st: &mut ReqState) -> Result<Session, SessionError> {
        let svc = &self.inner.svc;
        if let Some(old) = st.session.take() {
            st.invalidated.push(old);
        }
        if let Some((key, slot)) = st.slot.take() {
            if st.joined && svc.leave(&key, &slot) {
                release_lock(svc, &key, &slot).await;
            }
            st.joined = false;
        }
        let session = svc.new_session()?;
        let key = session.lock().id().key();
        let joined = svc.config.mode == Mode::NonSticky;
        let slot = svc.slot(key, joined);
        {
            let mut s = slot.state.lock().await;
            s.loaded = true;
            s.session = Some(session.clone());
        }
        st.slot = Some((key, slot));
        st.joined = joined;
        st.session = Some(session.clone());
        Ok(session)
    }

    /// Invalidates the request's session (if it has one): every copy is removed when the
    /// request finishes, and the cookie is removed.
    pub async fn invalidate(&self) -> Result<(), SessionError> {
        if let Some(s) = self.session().await? {
            s.invalidate();
        }
        Ok(())
    }

    /// Ends the request: writes the session if it changed (or refreshes its expiry if it
    /// did not), removes an invalidated one, releases the lock, and says what to do with
    /// the cookie. Call it once, after the handler, before sending the response headers.
    pub async fn finish(&self) -> Result<SaveOutcome, SessionError> {
        let svc = Arc::clone(&self.inner.svc);
        let mut st = self.inner.state.lock().await;
        if st.finished {
            return Ok(SaveOutcome::default());
        }
        st.finished = true;
        for old in std::mem::take(&mut st.invalidated) {
            self.remove_invalidated(&svc, &old, None).await;
        }
        let session = st.session.clone();
        let slot = st.slot.clone();
        let mut outcome = SaveOutcome::default();
        let result: Result<(), SessionError> = async {
            let Some(session) = session else {
                return Ok(());
            };
            if session.is_invalidated() {
                self.remove_invalidated(&svc, &session, slot.as_ref()).await;
                return Ok(());
            }
            let Some((_, slot)) = &slot else {
                return Ok(());
            };
            let mut s = slot.state.lock().await;
            let unlocked_auto = matches!(svc.config.locking, LockingMode::Auto)
                && svc.config.mode == Mode::NonSticky
                && s.unlocked
                && !st.locked_request;
            let cas = if unlocked_auto { s.cas } else { None };
            let changed = session.lock().is_changed().unwrap_or(true);
            if unlocked_auto && changed {
                svc.stats.auto_readonly_misses.fetch_add(1, Relaxed);
                tracing::warn!(path = %self.inner.path, "request guessed read-only (auto locking) changed the session; writing it with cas");
            }
            let written = svc.save(&session, cas).await;
            if svc.config.mode == Mode::NonSticky {
                svc.note_path(&self.inner.path, changed);
            }
            if matches!(written, Ok(true)) {
                s.cas = None;
            }
            outcome.written = written?;
            Ok(())
        }
        .await;
        // Release (non-sticky): the last request of the session drops it and its lock.
        if svc.config.mode == Mode::NonSticky && st.joined {
            if let Some((key, slot)) = &st.slot {
                if svc.leave(key, slot) {
                    release_lock(&svc, key, slot).await;
                }
            }
            st.joined = false;
        }
        let live = st.session.clone().filter(|s| !s.is_invalidated());
        match &live {
            Some(s) => {
                svc.stats.requests_with_session.fetch_add(1, Relaxed);
                let id = s.id().to_string();
                if st.presented.as_deref() != Some(id.as_str()) {
                    outcome.cookie = CookieDecision::Set(id.clone());
                }
                outcome.session_id = Some(id);
            }
            None => {
                svc.stats.requests_without_session.fetch_add(1, Relaxed);
                if st.loaded && (st.presented.is_some() || !self.inner.candidates.is_empty()) {
                    outcome.cookie = CookieDecision::Remove;
                }
            }
        }
        result.map(|()| outcome)
    }

    async fn remove_invalidated(
        &self,
        svc: &Arc<Inner>,
        session: &Session,
        slot: Option<&(SessionKey, Arc<Slot>)>,
    ) {
        let id = session.id();
        svc.stats.invalidations.fetch_add(1, Relaxed);
        svc.store.delete_all(&id).await;
        if svc.config.mode == Mode::Sticky {
            let key = id.key();
            let mut slots = lock_std(&svc.slots);
            let same = slots.get(&key).is_some_and(|r| match slot {
                Some((_, s)) => Arc::ptr_eq(&r.slot, s),
                None => true,
            });
            if same {
                slots.remove(&key);
            }
        }
    }
}

async fn release_lock(svc: &Arc<Inner>, key: &SessionKey, slot: &Arc<Slot>) {
    let lock = slot.state.lock().await.lock.take();
    if let Some(l) = lock {
        svc.store.unlock(&l.node, key, &l.token).await;
    }
}
