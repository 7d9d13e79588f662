//! The per-request handle: lazy load, create, invalidate, and the end-of-request save
//! with the cookie decision.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::config::Mode;
use super::cookie::CookieDecision;
use super::engine::{Engine, Saved, WritePolicy};
use super::id::{SessionId, SessionKey};
use super::lifecycle::Rotated;
use super::local::{Slot, SlotState};
use super::model::Session;
use super::store::KnownCopies;
use super::SessionError;

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
struct ReqState {
    loaded: bool,
    /// The load failed (memcached unreachable, lock wait ran out): the session may well
    /// exist, so the cookie is kept whatever happens next.
    load_failed: bool,
    presented: Option<String>,
    session: Option<Session>,
    slot: Option<(SessionKey, Arc<Slot>)>,
    locked_request: bool,
    /// Sessions this request replaced with `create`, with what was known of their
    /// copies: invalidated at `finish`.
    replaced: Vec<(Session, KnownCopies)>,
    /// `invalidate()` found no session under the id presented: its key still gets
    /// tombstones at `finish` (a write of it may be queued, or in flight, elsewhere).
    invalidate_presented: Option<SessionId>,
    /// `cycle_id()` was called: the session moves to a new id at `finish`.
    rotate: bool,
    finished: bool,
}

pub(crate) struct RequestInner {
    engine: Arc<Engine>,
    path: String,
    candidates: Vec<String>,
    /// The request presented some id (even one that is not a candidate).
    presented: bool,
    state: tokio::sync::Mutex<ReqState>,
}

impl RequestInner {
    pub(crate) fn new(
        engine: Arc<Engine>,
        path: String,
        candidates: Vec<String>,
        presented: bool,
    ) -> Self {
        RequestInner {
            engine,
            path,
            candidates,
            presented,
            state: tokio::sync::Mutex::new(ReqState::default()),
        }
    }
}

impl Drop for RequestInner {
    fn drop(&mut self) {
        // Dropped without finish (handler panicked, future cancelled), or `finish` itself
        // cancelled before it left the slot: leave it now (synchronously, so the slot's
        // count never leaks), forget the memory copy this request may have changed
        // without saving (sticky memory must never serve or later save a change that
        // was never acknowledged; the stored copies are the truth), and release the lock.
        let st = self.state.get_mut();
        let Some((key, slot)) = st.slot.take() else {
            return;
        };
        // The slot is still held: `finish` did not complete, so nothing of this request
        // was acknowledged.
        let changed = st
            .session
            .as_ref()
            .is_some_and(|s| s.lock().is_changed().unwrap_or(true));
        if !self.engine.local.leave(&key, &slot) {
            if changed {
                slot.discard_on_leave();
            }
            return;
        }
        let discard = changed || slot.must_discard();
        if discard {
            // Synchronously when the state is free (it is: this was the last request),
            // so the next request cannot reuse the changed copy.
            if let Ok(mut s) = slot.state.try_lock() {
                s.session = None;
                s.loaded = false;
            }
            self.engine.local.forget(&key, &slot);
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let engine = Arc::clone(&self.engine);
                handle.spawn(async move {
                    if discard {
                        let mut s = slot.state.lock().await;
                        if s.session.is_some() && slot.must_discard() {
                            s.session = None;
                            s.loaded = false;
                        }
                    }
                    engine.release_lock(&key, &slot).await;
                });
            }
            // No runtime to release it on: dropping the lock stops its renewal, so it
            // expires after `lock_expiry`.
            Err(_) => {
                if let Ok(mut s) = slot.state.try_lock() {
                    s.lock = None;
                }
            }
        }
    }
}

/// How a request's write may treat a newer stored version (see [`WritePolicy`]).
fn write_policy(s: &SlotState, locked_request: bool) -> WritePolicy {
    match &s.lock {
        Some(l) => WritePolicy::Locked {
            node: l.node.clone(),
            token: l.token.clone(),
        },
        None if s.unlocked_guess && !locked_request => WritePolicy::Refuse,
        None => WritePolicy::Merge,
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
    pub(crate) fn new(inner: RequestInner) -> Self {
        SessionRequest {
            inner: Arc::new(inner),
        }
    }

    /// The request path (without a `;jsessionid=` parameter).
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// The request's session, loading it on first use: `None` when the request has no
    /// valid id or the session is gone (expired, invalidated, unknown). An error when it
    /// could not be read (then [`SessionRequest::finish`] keeps the client's cookie).
    pub async fn session(&self) -> Result<Option<Session>, SessionError> {
        let mut st = self.inner.state.lock().await;
        self.load(&mut st).await
    }

    async fn load(&self, st: &mut ReqState) -> Result<Option<Session>, SessionError> {
        if st.load_failed {
            return Err(SessionError::Memcached(crate::Error::NoNodeAvailable));
        }
        if st.loaded {
            return Ok(st.session.clone().filter(|s| !s.is_invalidated()));
        }
        // `loaded` is set only once the load completed: a load cancelled at an await
        // point (the caller dropped the future) is not taken for "no session", so a later
        // call loads again and `finish` keeps the cookie.
        let engine = &self.inner.engine;
        let mut failure = None;
        for candidate in &self.inner.candidates {
            let Some(id) = SessionId::parse(candidate) else {
                engine.stats.invalid_ids.fetch_add(1, Relaxed);
                tracing::debug!("session id does not parse; ignored");
                continue;
            };
            let known =
                engine.store.knows(id.node()) && id.backup().is_none_or(|b| engine.store.knows(b));
            // An id naming a node that is not configured (renamed, removed, or edited by
            // the client) keeps its key: its node fields are only hints, so they are
            // dropped and the key's own nodes are read.
            let id = if known {
                id
            } else {
                engine.stats.invalid_ids.fetch_add(1, Relaxed);
                tracing::debug!(
                    node = id.node(),
                    "session id names an unknown node; reading the key's own nodes"
                );
                match engine.store.without_unknown_hints(&id) {
                    Some(id) => id,
                    None => continue,
                }
            };
            if st.presented.is_none() {
                st.presented = Some(candidate.clone());
            }
            self.leave_slot(st).await;
            let needs_lock = engine.decide_lock(&self.inner.path);
            let key = id.key();
            let slot = engine.local.join(key);
            st.slot = Some((key, Arc::clone(&slot)));
            st.locked_request = needs_lock;
            match engine.load(&id, &slot, needs_lock).await {
                Ok(Some(sess)) => match engine.principal_alive(&sess).await {
                    Ok(true) => {
                        st.presented = Some(candidate.clone());
                        st.session = Some(sess.clone());
                        st.loaded = true;
                        return Ok(Some(sess));
                    }
                    Ok(false) => {
                        // Its principal was logged out everywhere: the session dies now,
                        // on every instance (tombstones, as an invalidation).
                        st.presented = Some(candidate.clone());
                        engine.stats.principal_logouts.fetch_add(1, Relaxed);
                        sess.invalidate();
                        let mut s = slot.state.lock().await;
                        if let Err(e) = engine.invalidate(&sess, &s.known).await {
                            tracing::warn!(error = %e, "session of a logged-out principal: tombstones not written; the principal's generation keeps refusing it");
                        }
                        s.session = None;
                    }
                    Err(e) => failure = Some(e),
                },
                Ok(None) => {}
                // Another candidate may still load (a forged first id naming a node that
                // is down must not hide the real session); the request fails only if none
                // does.
                Err(e) => failure = Some(e),
            }
        }
        self.leave_slot(st).await;
        if let Some(e) = failure {
            st.load_failed = true;
            return Err(e);
        }
        st.loaded = true;
        if st.presented.is_none() {
            st.presented = self.inner.candidates.first().cloned();
        }
        Ok(None)
    }

    /// Leaves the joined slot (releasing the lock when this was its last request), and
    /// drops it when it holds no session.
    async fn leave_slot(&self, st: &mut ReqState) {
        if let Some((key, slot)) = st.slot.take() {
            let engine = &self.inner.engine;
            if engine.local.leave(&key, &slot) {
                engine.release_lock(&key, &slot).await;
                let empty = slot.state.lock().await.session.is_none();
                if empty {
                    engine.local.forget(&key, &slot);
                }
            }
        }
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
        let engine = Arc::clone(&self.inner.engine);
        if let Some(old) = st.session.take() {
            let known = match &st.slot {
                Some((_, slot)) => slot.state.lock().await.known.clone(),
                None => KnownCopies::default(),
            };
            st.replaced.push((old, known));
        }
        self.leave_slot(st).await;
        let session = engine.new_session()?;
        let key = session.lock().id().key();
        let slot = engine.local.join(key);
        {
            let mut s = slot.state.lock().await;
            s.loaded = true;
            s.session = Some(session.clone());
            s.known = KnownCopies::fresh();
        }
        st.slot = Some((key, slot));
        st.locked_request = false;
        st.session = Some(session.clone());
        Ok(session)
    }

    /// Rotates the session's id at the end of the request, keeping its data (the
    /// Servlet API's `changeSessionId`, tower-sessions' `cycle_id`): call it on login
    /// or any privilege change, against session fixation. At [`SessionRequest::finish`]
    /// the session (with this request's changes) is written under a new random key on
    /// every copy, then the old id is invalidated on every instance (tombstones, as
    /// [`SessionRequest::invalidate`] does); `finish` returns the new id in
    /// `SaveOutcome::cookie` (`Set`) and `session_id`. A write of the old id by a
    /// request that overlaps the rotation is either carried over to the new id or
    /// refused (never acknowledged and then lost). Returns the session (`None`: the
    /// request has no session, nothing to rotate).
    #[doc(alias = "change_session_id")]
    #[doc(alias = "renew")]
    pub async fn cycle_id(&self) -> Result<Option<Session>, SessionError> {
        let mut st = self.inner.state.lock().await;
        let session = self.load(&mut st).await?;
        st.rotate = session.is_some();
        Ok(session)
    }

    /// Binds the request's session (created if there is none) to `principal` (the
    /// user's stable name, e.g. an account id) on login: a later
    /// [`BackupSessionService::invalidate_principal`](super::BackupSessionService::invalidate_principal)
    /// of that principal ends the session on its next request, on any instance. Costs
    /// one read of the principal's generation now and on every later load of the
    /// session (see docs/session.md, "Lifecycle"). Combine with
    /// [`SessionRequest::cycle_id`] on login.
    pub async fn bind_principal(&self, principal: &str) -> Result<Session, SessionError> {
        let session = self.get_or_create().await?;
        self.inner
            .engine
            .bind_principal(&session, principal)
            .await?;
        Ok(session)
    }

    /// Logs `principal` out everywhere, from a request handler (the same as
    /// [`BackupSessionService::invalidate_principal`](super::BackupSessionService::invalidate_principal);
    /// here so that a handler that only has the axum extractor can call it). This
    /// request's own session, if bound to `principal`, is invalidated too.
    pub async fn invalidate_principal(&self, principal: &str) -> Result<u64, SessionError> {
        let mut st = self.inner.state.lock().await;
        let own = self.load(&mut st).await?;
        let generation = self.inner.engine.invalidate_principal(principal).await?;
        if let Some(s) = own.filter(|s| s.principal().as_deref() == Some(principal)) {
            s.invalidate();
        }
        Ok(generation)
    }

    /// Invalidates the request's session (if it has one): every copy is replaced by a
    /// tombstone when the request finishes, and the cookie is removed.
    ///
    /// When the request presented an id but no session was found under it, that id's
    /// key is invalidated all the same: a write of it may still be queued on another
    /// instance (async mode) or in flight on a node that was away.
    pub async fn invalidate(&self) -> Result<(), SessionError> {
        let mut st = self.inner.state.lock().await;
        match self.load(&mut st).await? {
            Some(s) => s.invalidate(),
            None => {
                let engine = &self.inner.engine;
                st.invalidate_presented = st
                    .presented
                    .as_deref()
                    .and_then(SessionId::parse)
                    .and_then(|id| engine.store.without_unknown_hints(&id));
            }
        }
        Ok(())
    }

    /// Ends the request: writes the session if it changed (or refreshes its expiry if it
    /// did not), invalidates an invalidated one everywhere, releases the lock, and says
    /// what to do with the cookie. Call it once, after the handler, before sending the
    /// response headers. A request whose session could not be loaded keeps its cookie.
    pub async fn finish(&self) -> Result<SaveOutcome, SessionError> {
        let engine = Arc::clone(&self.inner.engine);
        let mut st = self.inner.state.lock().await;
        if st.finished {
            return Ok(SaveOutcome::default());
        }
        st.finished = true;
        let mut result: Result<(), SessionError> = Ok(());
        for (old, known) in std::mem::take(&mut st.replaced) {
            if let Err(e) = engine.invalidate(&old, &known).await {
                result = Err(e);
            }
        }
        if let Some(id) = st.invalidate_presented.take() {
            if let Err(e) = engine.invalidate_id(&id).await {
                result = Err(e);
            }
        }
        let mut outcome = SaveOutcome::default();
        let mut gone = false;
        let mut rotated = None;
        let session = st.session.clone();
        if let (Some(session), Some((_, slot))) = (&session, &st.slot) {
            let mut s = slot.state.lock().await;
            if session.is_invalidated() {
                if let Err(e) = engine.invalidate(session, &s.known).await {
                    result = result.and(Err(e));
                }
                s.session = None;
                gone = true;
            } else if result.is_ok() && st.rotate {
                // The old key's slot is left below as for a gone session.
                let policy = write_policy(&s, st.locked_request);
                match engine.rotate(session, &mut s.known, policy).await {
                    Ok(Rotated::Done(new, known)) => {
                        outcome.written = true;
                        rotated = Some((new, known));
                    }
                    Ok(Rotated::Gone) => {}
                    Err(e) => result = Err(e),
                }
                s.session = None;
                s.loaded = false;
                gone = true;
            } else if result.is_ok() {
                let policy = write_policy(&s, st.locked_request);
                let changed = session.lock().is_changed().unwrap_or(true);
                if changed && s.unlocked_guess && s.lock.is_none() {
                    engine.stats.auto_readonly_misses.fetch_add(1, Relaxed);
                    tracing::warn!(path = %self.inner.path, "request guessed read-only (auto locking) changed the session; written only if nobody wrote since it was read");
                }
                match engine.save(session, slot, &mut s, policy).await {
                    Ok(Saved { written, gone: g }) => {
                        outcome.written = written;
                        if g {
                            s.session = None;
                            gone = true;
                        }
                    }
                    Err(e) => {
                        // Not kept in memory: the stored copies are the truth.
                        s.session = None;
                        s.loaded = false;
                        result = Err(e);
                    }
                }
                engine.note_path(&self.inner.path, changed);
            }
        }
        if let Some((key, slot)) = st.slot.take() {
            let last = engine.local.leave(&key, &slot);
            let forget = gone
                || result.is_err()
                || engine.config.mode == Mode::NonSticky
                || (last && slot.must_discard());
            if forget {
                engine.local.forget(&key, &slot);
            }
            if last {
                engine.release_lock(&key, &slot).await;
            }
        }
        let session = match rotated {
            Some((new, known)) => {
                // Sticky mode keeps the session in memory under its new key.
                let key = new.lock().id().key();
                let slot = engine.local.join(key);
                {
                    let mut s = slot.state.lock().await;
                    s.loaded = true;
                    s.session = Some(new.clone());
                    s.known = known;
                }
                engine.local.leave(&key, &slot);
                if engine.config.mode == Mode::NonSticky {
                    engine.local.forget(&key, &slot);
                }
                gone = false;
                Some(new)
            }
            None => session,
        };
        let live = session.filter(|s| !gone && !s.is_invalidated());
        match &live {
            Some(s) if result.is_ok() => {
                engine.stats.requests_with_session.fetch_add(1, Relaxed);
                let id = s.id().to_string();
                if st.presented.as_deref() != Some(id.as_str()) {
                    outcome.cookie = CookieDecision::Set(id.clone());
                }
                outcome.session_id = Some(id);
            }
            Some(_) => {}
            None => {
                engine.stats.requests_without_session.fetch_add(1, Relaxed);
                if !st.load_failed && st.loaded && (st.presented.is_some() || self.inner.presented)
                {
                    outcome.cookie = CookieDecision::Remove;
                }
            }
        }
        result.map(|()| outcome)
    }
}
