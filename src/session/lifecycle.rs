//! Session lifecycle: id rotation that keeps the data, the absolute lifetime, principals
//! ("log out everywhere") and the listeners' configuration. See docs/session.md,
//! "Lifecycle".

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::config::SessionConfigBuilder;
use super::engine::{Engine, WritePolicy};
use super::format::StoredSession;
use super::id::{SessionId, SessionKey};
use super::listeners::{Listeners, SessionEventKind, SessionListener};
use super::model::{Session, RESERVED_PREFIX};
use super::store::{KnownCopies, Replicated};
use super::SessionError;

/// How many times a rotation copies the old key's latest version again when writes of
/// the old key keep landing before its retirement.
const ROTATION_ATTEMPTS: usize = 8;

/// The reserved attribute holding a session's principal binding.
fn principal_attr() -> String {
    format!("{RESERVED_PREFIX}principal")
}

/// A principal binding as stored in the session: the principal's name and the
/// principal's generation when the session was bound to it.
type Binding = (String, u64);

/// The reserved attribute holding the keys a session was rotated from, oldest first (at
/// most `MAX_PREDECESSORS`): each one's retirement tombstone names the next (the last
/// names this session's key). A load that finds a node without a copy of the session (a
/// node restarted empty) puts the retirements back there, so a logout that loaded the
/// session under an older key still finds its way here after the nodes that held the
/// retirements were lost (docs/session.md, "Id rotation").
fn predecessors_attr() -> String {
    format!("{RESERVED_PREFIX}predecessors")
}

/// The predecessors a session keeps: as many as an invalidation follows.
const MAX_PREDECESSORS: usize = super::engine::MAX_SUCCESSORS;

/// The lifecycle part of the configuration.
#[derive(Clone, Default)]
pub(crate) struct LifecycleConfig {
    /// The absolute lifetime of a session, counted from its creation (`None`: none).
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) listeners: Listeners,
}

impl std::fmt::Debug for LifecycleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LifecycleConfig")
            .field("max_lifetime", &self.max_lifetime)
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

impl SessionConfigBuilder {
    /// The absolute lifetime of a session, counted from its creation (default: none, only
    /// the idle timeout). Checked on every load on every instance against the creation
    /// time stored in the session's record, so a session restored from a backup copy or
    /// taken over by another instance keeps its deadline; a rotated id keeps it too.
    pub fn max_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifecycle.max_lifetime = Some(lifetime.max(Duration::from_secs(1)));
        self
    }

    /// Registers a lifecycle listener (see [`super::listeners`]): it gets every event of
    /// this instance, on a spawned task; a panic in it is caught and logged.
    pub fn listener(mut self, listener: impl SessionListener) -> Self {
        self.lifecycle.listeners.push(Arc::new(listener));
        self
    }
}

impl Session {
    /// The principal this session is bound to
    /// ([`SessionRequest::bind_principal`](super::SessionRequest::bind_principal)).
    pub fn principal(&self) -> Option<String> {
        self.binding().map(|(p, _)| p)
    }

    fn binding(&self) -> Option<Binding> {
        self.lock()
            .get_any::<Binding>(&principal_attr())
            .ok()
            .flatten()
    }
}

/// The keys `session` was rotated from, oldest first (see [`predecessors_attr`]).
fn predecessors(session: &Session) -> Vec<String> {
    session
        .lock()
        .get_any::<Vec<String>>(&predecessors_attr())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The retirements a stored session's record implies: `(old, new)` for each key it was
/// rotated from, `new` the key that came next (the last: this record's own key). Empty
/// for a session never rotated, or an attribute this reader can't decode.
pub(crate) fn retirements_of(stored: &StoredSession) -> Vec<(SessionKey, SessionKey)> {
    let name = predecessors_attr();
    let Some((_, bytes)) = stored.attributes.iter().find(|(n, _)| *n == name) else {
        return Vec::new();
    };
    let chain: Vec<SessionKey> = match stored.codec.decode::<Vec<String>>(bytes) {
        Ok(keys) => keys.iter().filter_map(|k| SessionKey::parse(k)).collect(),
        Err(_) => return Vec::new(),
    };
    let successors = chain.iter().skip(1).chain(std::iter::once(&stored.key));
    chain.iter().copied().zip(successors.copied()).collect()
}

/// What a rotation did.
pub(crate) enum Rotated {
    /// The data lives under the new id; the old key holds tombstones.
    Done(Session, KnownCopies),
    /// The session was invalidated by another request meanwhile: nothing lives on.
    Gone,
}

impl Engine {
    /// Tells the listeners (nothing to do without listeners).
    pub(crate) fn emit(
        &self,
        kind: SessionEventKind,
        id: &SessionId,
        previous: Option<&SessionId>,
    ) {
        self.config
            .lifecycle
            .listeners
            .emit(kind, id, previous, self.config.route.as_deref());
    }

    /// True when a session created at `created_ms` is past its absolute lifetime.
    pub(crate) fn lifetime_over(&self, created_ms: u64, now_ms: u64) -> bool {
        self.config.lifecycle.max_lifetime.is_some_and(|l| {
            let l = u64::try_from(l.as_millis()).unwrap_or(u64::MAX);
            now_ms >= created_ms.saturating_add(l)
        })
    }

    /// Binds `session` to `principal` under the principal's current generation.
    pub(crate) async fn bind_principal(
        &self,
        session: &Session,
        principal: &str,
    ) -> Result<(), SessionError> {
        let generation = self.store.settle_principal(principal).await?;
        let binding: Binding = (principal.to_owned(), generation);
        session.lock().insert_any(&principal_attr(), &binding)
    }

    /// False when `session` is bound to a principal that was logged out everywhere
    /// since it was bound. Sessions without a principal cost nothing.
    pub(crate) async fn principal_alive(&self, session: &Session) -> Result<bool, SessionError> {
        let Some((principal, bound)) = session.binding() else {
            return Ok(true);
        };
        let current = self.store.principal_generation(&principal).await?;
        Ok(current <= bound)
    }

    /// Logs `principal` out everywhere; returns its new generation.
    pub(crate) async fn invalidate_principal(&self, principal: &str) -> Result<u64, SessionError> {
        let generation = self.store.bump_principal(principal).await?;
        self.stats.principal_invalidations.fetch_add(1, Relaxed);
        Ok(generation)
    }

    /// Tombstones the new key of a rotation that did not complete (nobody was given its
    /// id): no statistics, no event.
    async fn discard_rotated(
        &self,
        session: &Session,
        known: &KnownCopies,
    ) -> Result<(), SessionError> {
        let now = super::clock::unix_millis(self.config.clock.now());
        let interval = session.max_inactive_interval();
        self.tombstone_id(&session.id(), known, interval, now, None)
            .await
            .result
    }

    /// Rotates the id of `old` (loaded or created by this request; `known` what the
    /// request knows of its copies): the session, with this request's changes, is
    /// written under a new random key (every copy acknowledged), THEN the old key is
    /// retired - tombstones placed like a write based on the version copied, so a write
    /// of the old key that landed meanwhile is copied over too (and the tombstones
    /// retried), and one landing later is refused - and finally spread to every node.
    ///
    /// `policy` is the request's own write policy: a locked request whose lock was lost,
    /// or an `auto` read-only guess, that finds the old key written since it read it
    /// does not merge: the rotation is refused (`Conflict`), as its write would be.
    pub(crate) async fn rotate(
        &self,
        old: &Session,
        known: &mut KnownCopies,
        policy: WritePolicy,
    ) -> Result<Rotated, SessionError> {
        let old_id = old.id();
        let old_key = old_id.key();
        let key = SessionKey::generate()?;
        let copies = self
            .store
            .copies(&key, &[])
            .ok_or(SessionError::NoNodeAvailable)?;
        let mut new_id = SessionId::new(
            key,
            copies.primary,
            copies.backup,
            old_id.route().map(str::to_owned),
        )?;
        let mut new_known = KnownCopies::fresh();
        let mut new_version = 0;
        let tombstone_interval = old
            .max_inactive_interval()
            .max(self.config.max_inactive_interval);
        let mut chain = predecessors(old);
        chain.push(old_key.to_string());
        if chain.len() > MAX_PREDECESSORS {
            chain.drain(..chain.len() - MAX_PREDECESSORS);
        }
        for _ in 0..ROTATION_ATTEMPTS {
            let session = Session::from_data(old.lock().rotated(new_id.clone(), new_version)?);
            session.lock().insert_any(&predecessors_attr(), &chain)?;
            let snapshot = session.lock().snapshot()?;
            let saved = self
                .write(&session, &mut new_known, snapshot, WritePolicy::Merge)
                .await?;
            if !saved.written {
                // Nobody else knows the new key: only a collision could get here.
                return Err(SessionError::Conflict);
            }
            new_id = session.id();
            new_version = session.lock().base_version();
            let old_base = old.lock().base_version();
            let now = super::clock::unix_millis(self.config.clock.now());
            match self
                .store
                .retire(
                    &old_key,
                    &new_id.key(),
                    old_base,
                    now,
                    tombstone_interval,
                    known,
                )
                .await
            {
                Ok(Replicated::Written { .. }) => {
                    // The placement's copies hold the tombstone: spread it to every node
                    // (and hints for the nodes that are away), as an invalidation does.
                    let new_key = new_id.key();
                    let spread = self
                        .tombstone_id(&old_id, known, tombstone_interval, now, Some(&new_key))
                        .await;
                    if let Err(e) = spread.result {
                        tracing::warn!(error = %e, "rotated id: tombstones not spread to every node; the placement's copies hold them");
                    }
                    self.stats.id_rotations.fetch_add(1, Relaxed);
                    self.emit(SessionEventKind::IdChanged, &new_id, Some(&old_id));
                    return Ok(Rotated::Done(session, new_known));
                }
                Ok(Replicated::Gone) => {
                    self.discard_rotated(&session, &new_known).await?;
                    return Ok(Rotated::Gone);
                }
                Ok(Replicated::Conflict) => {
                    let may_merge = match &policy {
                        WritePolicy::Merge => true,
                        WritePolicy::Refuse => false,
                        WritePolicy::Locked { node, token } => {
                            self.store.lock_is_held(node, &old_key, token).await
                        }
                    };
                    if !may_merge {
                        self.stats.conflicts.fetch_add(1, Relaxed);
                        let _ = self.discard_rotated(&session, &new_known).await;
                        return Err(SessionError::Conflict);
                    }
                    // Another request wrote the old key since it was copied: merge this
                    // request's own changes onto that version and copy again.
                    if self.merge_latest(old, &old_key, known).await?.is_some() {
                        self.discard_rotated(&session, &new_known).await?;
                        return Ok(Rotated::Gone);
                    }
                }
                Err(e) => {
                    // The old key may still be live: the new one must not stay behind.
                    let _ = self.discard_rotated(&session, &new_known).await;
                    return Err(e);
                }
            }
        }
        let orphan = Session::from_data(old.lock().rotated(new_id, new_version)?);
        let _ = self.discard_rotated(&orphan, &new_known).await;
        self.stats.conflicts.fetch_add(1, Relaxed);
        Err(SessionError::Conflict)
    }
}

impl super::config::SessionConfig {
    /// The absolute lifetime of sessions (`None`: only the idle timeout).
    pub fn max_lifetime(&self) -> Option<Duration> {
        self.lifecycle.max_lifetime
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::codec::CodecKind;

    #[test]
    fn a_principal_binding_round_trips_through_the_record_with_every_codec_and_stays_hidden() {
        for codec in CodecKind::ALL.into_iter().filter(|k| k.is_available()) {
            let s = Session::detached(codec).unwrap();
            s.insert("cart", &vec![1u32, 2]).unwrap();
            let binding: Binding = ("ann".to_owned(), 3);
            s.lock().insert_any(&principal_attr(), &binding).unwrap();
            let bytes = s.lock().encode_record().unwrap();
            let back = Session::from_record(s.id(), &bytes).unwrap();
            assert_eq!(back.binding(), Some(binding.clone()), "{codec}");
            assert_eq!(back.principal().as_deref(), Some("ann"));
            assert_eq!(back.attribute_names(), vec!["cart".to_owned()], "{codec}");
            assert_eq!(back.lock().len(), 1);
            assert!(!back.contains(&principal_attr()));
            assert_eq!(back.get::<Binding>(&principal_attr()).unwrap(), None);
            assert!(
                !back.remove(&principal_attr()),
                "not removable by the application"
            );
            assert!(back.insert(&principal_attr(), &1u8).is_err(), "reserved");
            back.lock().clear();
            assert_eq!(back.principal().as_deref(), Some("ann"), "clear keeps it");
        }
    }

    #[test]
    fn a_record_without_a_binding_has_no_principal() {
        let s = Session::detached(CodecKind::MessagePack).unwrap();
        s.insert("a", &1u8).unwrap();
        let bytes = s.lock().encode_record().unwrap();
        assert_eq!(
            Session::from_record(s.id(), &bytes).unwrap().principal(),
            None
        );
    }
}
