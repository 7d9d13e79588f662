//! Session stores for other frameworks' session layers, backed by the replicated,
//! versioned store of [`crate::session`]: two copies on two memcached nodes, the latest
//! copy wins, a lost copy is restored on the next read, a deleted session never comes
//! back.
//!
//! * [`tower_sessions`] (feature `tower-sessions`): a `tower_sessions::SessionStore`.
//!   Its ids are opaque numbers, so the copies are placed from the id alone (rendezvous
//!   order of the id over the nodes); see `docs/session.md`, "Store adapters".
//! * [`actix`] (feature `actix-session`): an `actix_session::storage::SessionStore`. It
//!   chooses the session key, so the key names the copies' nodes like the native id.
//!
//! Both use the same store and the same record format as the native service
//! ([`BackupSessionService`](crate::session::BackupSessionService)); give each its own
//! key prefix when they share memcached nodes.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::session::clock::unix_millis;
use crate::session::format::{self, StoredSession, Validity};
use crate::session::stats::{SessionStats, StatsSnapshot};
use crate::session::store::{KnownCopies, Latest, Replicated, Store, HANDOFF_PERIOD};
use crate::session::{CodecKind, SessionError, SessionKey};
use crate::Client;

#[cfg(feature = "actix-session")]
#[cfg_attr(docsrs, doc(cfg(feature = "actix-session")))]
pub mod actix;
#[cfg(feature = "tower-sessions")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower-sessions")))]
pub mod tower_sessions;

/// The default key prefix of the adapters' records.
pub const DEFAULT_KEY_PREFIX: &str = "memkeep-sessions:";

/// Ids tried by a create before giving up (a collision of random 128-bit ids means a
/// broken random source).
const CREATE_ATTEMPTS: usize = 4;

/// A session store for other frameworks' session layers (it implements
/// `tower_sessions::SessionStore` with feature `tower-sessions` and
/// `actix_session::storage::SessionStore` with feature `actix-session`), keeping two
/// copies of each session on two memcached nodes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ReplicatedStore {
    backend: Arc<Backend>,
}

impl ReplicatedStore {
    /// A store on `client` (every node needs an id, see
    /// [`NodeConfig::id`](crate::NodeConfig::id)) with the default configuration and
    /// key prefix [`DEFAULT_KEY_PREFIX`]. Must run inside a tokio runtime (actix-rt's
    /// is one).
    pub fn new(client: Client) -> Result<Self, SessionError> {
        Self::with_config(client, AdapterConfig::new(DEFAULT_KEY_PREFIX))
    }

    /// A store on `client` with `config`.
    pub fn with_config(client: Client, config: AdapterConfig) -> Result<Self, SessionError> {
        Ok(ReplicatedStore {
            backend: Backend::new(client, config)?,
        })
    }

    /// The store's statistics (writes, repairs, conflicts, invalidations, sizes, times).
    pub fn stats(&self) -> StatsSnapshot {
        self.backend.stats()
    }

    /// The memcached client.
    pub fn client(&self) -> &Client {
        self.backend.client()
    }
}

/// The default longest lifetime of a session record (two weeks, tower-sessions' and
/// actix-session's default session length).
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(14 * 24 * 3600);

/// Saves retried when another request wrote the same session between this save's read
/// and its write (the last writer wins, as with the frameworks' other stores).
const SAVE_ATTEMPTS: usize = 4;

/// Configuration shared by the store adapters.
#[derive(Clone, Debug)]
pub struct AdapterConfig {
    key_prefix: String,
    failover_nodes: Vec<String>,
    max_lifetime: Duration,
}

impl AdapterConfig {
    /// The defaults: key prefix `prefix`, no failover node, [`DEFAULT_MAX_LIFETIME`].
    pub fn new(prefix: impl Into<String>) -> Self {
        AdapterConfig {
            key_prefix: prefix.into(),
            failover_nodes: Vec::new(),
            max_lifetime: DEFAULT_MAX_LIFETIME,
        }
    }

    /// The prefix of every memcached key the store writes.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Nodes (client node ids) used only when the others are not usable (see
    /// `failover_nodes` in docs/configuration.md).
    pub fn failover_nodes<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.failover_nodes = nodes.into_iter().map(Into::into).collect();
        self
    }

    /// The longest a record is kept, whatever its expiry date says (default two
    /// weeks); also how long a deleted session's tombstone may be kept.
    pub fn max_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_lifetime = lifetime.max(Duration::from_secs(1));
        self
    }
}

/// A session as an adapter reads and writes it: attribute names and encoded values
/// (MessagePack), and the expiry date.
#[derive(Debug)]
pub(crate) struct AdapterRecord {
    pub(crate) attributes: Vec<(String, Vec<u8>)>,
    /// Expiry, ms since the Unix epoch.
    pub(crate) expires_ms: u64,
}

/// Where the copies of a written session are (named in actix-session's keys).
#[derive(Debug)]
#[cfg_attr(not(feature = "actix-session"), allow(dead_code))]
pub(crate) struct Placed {
    pub(crate) primary: String,
    pub(crate) backup: Option<String>,
}

/// What an adapter's write stores.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Content<'a> {
    /// A new session: only where the key holds nothing anywhere.
    Create(&'a AdapterRecord),
    /// This content, over the latest copy (the last writer wins).
    Replace(&'a AdapterRecord),
    /// The latest copy's attributes with a new expiry, ms (a session found nowhere is
    /// left alone: [`Written::Deleted`]).
    #[cfg_attr(not(feature = "actix-session"), allow(dead_code))]
    Touch(u64),
}

/// The outcome of an adapter's write.
#[derive(Debug)]
#[cfg_attr(not(feature = "actix-session"), allow(dead_code))]
pub(crate) enum Written {
    /// Every copy of the placement holds it.
    Stored(Placed),
    /// `create`: the key is taken (a session or a tombstone).
    Taken,
    /// The session was deleted meanwhile (or, for a touch, is not there); nothing was
    /// written (a deleted session is never brought back).
    Deleted,
}

/// The replicated store as the adapters use it: whole-record reads and writes.
pub(crate) struct Backend {
    store: Store,
    stats: Arc<SessionStats>,
    max_lifetime: Duration,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("nodes", &self.store.client().node_ids())
            .field("max_lifetime", &self.max_lifetime)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    unix_millis(SystemTime::now())
}

impl Backend {
    /// Builds the store on `client` (every node needs an id) and starts the delivery of
    /// tombstone hints (must run inside a tokio runtime).
    pub(crate) fn new(client: Client, config: AdapterConfig) -> Result<Arc<Self>, SessionError> {
        let stats = Arc::new(SessionStats::default());
        let store = Store::new(
            client,
            &config.failover_nodes,
            config.key_prefix,
            config.max_lifetime,
            Arc::clone(&stats),
        )?;
        let me = Arc::new(Backend {
            store,
            stats,
            max_lifetime: config.max_lifetime,
        });
        tokio::spawn(deliver_hints(Arc::downgrade(&me)));
        Ok(me)
    }

    pub(crate) fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    pub(crate) fn client(&self) -> &Client {
        self.store.client()
    }

    /// How long a record expiring at `expires_ms` is kept from `now` (at most the
    /// configured max lifetime).
    fn lifetime(&self, expires_ms: u64, now: u64) -> Duration {
        Duration::from_millis(expires_ms.saturating_sub(now)).min(self.max_lifetime)
    }

    fn encode(
        &self,
        key: &SessionKey,
        created_ms: u64,
        validity: &Validity,
        attributes: &[(String, Vec<u8>)],
    ) -> Result<Vec<u8>, SessionError> {
        let started = Instant::now();
        let bytes = format::encode_session(
            key,
            CodecKind::MessagePack,
            created_ms,
            validity,
            attributes.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
        )?;
        self.stats
            .serialization_us
            .record_duration(started.elapsed());
        self.stats.session_size_bytes.record(bytes.len() as u64);
        Ok(bytes)
    }

    /// Loads a session: the nodes `hints` name, then down the key's order until two
    /// copies are found; the latest copy wins. A copy found missing or behind on the
    /// current placement is restored from the latest one. `None`: no session, deleted
    /// or expired.
    pub(crate) async fn load(
        &self,
        key: &SessionKey,
        hints: &[&str],
    ) -> Result<Option<AdapterRecord>, SessionError> {
        let now = now_ms();
        let started = Instant::now();
        let fetched = self.store.fetch(key, hints, now).await?;
        self.stats.load_us.record_duration(started.elapsed());
        let Some(Latest::Session {
            version,
            stored,
            validity,
        }) = fetched.latest
        else {
            return Ok(None);
        };
        if validity.is_expired_at(now) {
            self.stats.expired.fetch_add(1, Relaxed);
            return Ok(None);
        }
        let expires_ms = validity
            .last_access_ms
            .saturating_add(validity.max_inactive_ms);
        let mut known = fetched.known;
        let behind = self
            .store
            .copies(key, &[])
            .is_some_and(|c| !c.nodes().all(|n| known.holds(n, version)));
        if behind {
            // Restore on miss: a node of the placement lost its copy (killed, restarted
            // empty) or holds an older one. Best effort: the load succeeds anyway.
            let restored = match self.encode(key, stored.created_ms, &validity, &stored.attributes)
            {
                Ok(mut bytes) => {
                    self.store
                        .repair(
                            key,
                            &mut bytes,
                            version,
                            self.lifetime(expires_ms, now),
                            &mut known,
                        )
                        .await
                }
                Err(e) => Err(e),
            };
            match restored {
                Ok(Replicated::Written { .. }) => {
                    self.stats.repairs.fetch_add(1, Relaxed);
                    self.stats.restores_from_backup.fetch_add(1, Relaxed);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "restoring a session copy failed"),
            }
        }
        let StoredSession { attributes, .. } = stored;
        Ok(Some(AdapterRecord {
            attributes,
            expires_ms,
        }))
    }

    /// Writes a session (see [`Content`]). A create finding anything under the key is
    /// [`Written::Taken`]; other writes are based on the latest copy found, retried when
    /// another request wrote in between; a deleted session stays deleted.
    pub(crate) async fn write(
        &self,
        key: &SessionKey,
        hints: &[&str],
        content: Content<'_>,
    ) -> Result<Written, SessionError> {
        let started = Instant::now();
        let create = matches!(content, Content::Create(_));
        for _ in 0..SAVE_ATTEMPTS {
            let now = now_ms();
            let fetched = self.store.fetch(key, hints, now).await?;
            let (base, created_ms, stored) = match &fetched.latest {
                None if matches!(content, Content::Touch(_)) => return Ok(Written::Deleted),
                None => (0, now, None),
                Some(_) if create => return Ok(Written::Taken),
                Some(Latest::Tombstone { .. }) => {
                    self.stats.writes_after_invalidation.fetch_add(1, Relaxed);
                    return Ok(Written::Deleted);
                }
                Some(Latest::Session {
                    version, stored, ..
                }) => (*version, stored.created_ms, Some(stored)),
            };
            let (attributes, expires_ms) = match (content, stored) {
                (Content::Create(r) | Content::Replace(r), _) => (&r.attributes, r.expires_ms),
                (Content::Touch(expires_ms), Some(stored)) => (&stored.attributes, expires_ms),
                (Content::Touch(_), None) => return Ok(Written::Deleted),
            };
            let lifetime = self.lifetime(expires_ms, now);
            let validity = Validity {
                last_access_ms: now,
                max_inactive_ms: u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX),
            };
            let mut bytes = self.encode(key, created_ms, &validity, attributes)?;
            let mut known = fetched.known;
            match self
                .store
                .replicate(key, &mut bytes, base, lifetime, &mut known, false)
                .await?
            {
                Replicated::Written { copies, .. } => {
                    self.stats.writes.fetch_add(1, Relaxed);
                    if create {
                        self.stats.sessions_created.fetch_add(1, Relaxed);
                    }
                    self.stats.write_us.record_duration(started.elapsed());
                    return Ok(Written::Stored(Placed {
                        primary: copies.primary,
                        backup: copies.backup,
                    }));
                }
                Replicated::Conflict | Replicated::Gone if create => return Ok(Written::Taken),
                Replicated::Conflict => {
                    self.stats.conflicts.fetch_add(1, Relaxed);
                }
                Replicated::Gone => {
                    self.stats.writes_after_invalidation.fetch_add(1, Relaxed);
                    return Ok(Written::Deleted);
                }
            }
        }
        Err(SessionError::Memcached(crate::Error::Server(
            "session kept changing under the save; gave up".into(),
        )))
    }

    /// Deletes a session: a tombstone on every usable node (it outranks every copy, so
    /// the session never comes back), kept as long as the latest copy found would have
    /// lived.
    pub(crate) async fn delete(
        &self,
        key: &SessionKey,
        hints: &[&str],
    ) -> Result<(), SessionError> {
        let now = now_ms();
        let (nodes, lifetime) = match self.store.fetch(key, hints, now).await {
            Ok(fetched) => {
                let lifetime = match &fetched.latest {
                    Some(Latest::Session { validity, .. }) => self.lifetime(
                        validity
                            .last_access_ms
                            .saturating_add(validity.max_inactive_ms),
                        now,
                    ),
                    _ => Duration::ZERO,
                };
                (fetched.known.nodes().map(str::to_owned).collect(), lifetime)
            }
            // Nothing could be read: the tombstone must outlive any copy there may be.
            Err(_) => (
                hints.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
                self.max_lifetime,
            ),
        };
        self.store
            .invalidate(key, &nodes, now, lifetime, &KnownCopies::default(), None)
            .await
            .result?;
        self.stats.invalidations.fetch_add(1, Relaxed);
        Ok(())
    }
}

/// Delivers the tombstone hints of nodes that missed a delete, while the backend lives.
async fn deliver_hints(backend: Weak<Backend>) {
    loop {
        tokio::time::sleep(HANDOFF_PERIOD).await;
        match backend.upgrade() {
            Some(me) => {
                me.store.deliver_hints(now_ms()).await;
            }
            None => return,
        }
    }
}
