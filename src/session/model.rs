//! The session: id, times, attributes, invalidation, and change detection.
//!
//! # Attribute storage
//!
//! Each attribute is kept as the bytes its own Rust type serializes to with the
//! session's codec, plus the xxh3 hash of the bytes last loaded or written. Typed reads
//! ([`Session::get`]) decode those bytes into the type asked for; typed writes
//! ([`Session::insert`]) encode at once (so an unserializable value fails at the call,
//! not at the end of the request). Because every value is encoded and decoded with a
//! concrete type, the codecs that are not self-describing (postcard, bitcode) work like
//! the others; no codec ever has to round-trip a dynamic value.
//!
//! An attribute can also be mutated in place through [`SessionData::get_mut`] (via [`Session::lock`]): the
//! decoded value is then kept "live" in the session and re-encoded when the session is
//! saved; comparing the hash of the new bytes with the stored one decides whether the
//! attribute (and so the session) changed. An unchanged session is not written, and an
//! attribute changed in place is not lost. Attributes are kept in name order, so the
//! encoding (and its hash) does not depend on a map's iteration order.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::clock::{from_unix_millis, unix_millis};
use super::codec::CodecKind;
use super::format::{self, StoredSession, Validity};
use super::id::SessionId;
use super::SessionError;

/// Attribute names starting with this are the lifecycle's own (the principal binding):
/// stored and merged like attributes, hidden from the application's attribute API.
pub const RESERVED_PREFIX: &str = "\u{1}memkeep.";

fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// The bounds of a value that can be kept in a session.
pub trait AttributeValue: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> AttributeValue for T {}

trait Live: Send + Sync {
    fn encode(&self, codec: CodecKind) -> Result<Vec<u8>, SessionError>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Serialize + Send + Sync + 'static> Live for T {
    fn encode(&self, codec: CodecKind) -> Result<Vec<u8>, SessionError> {
        codec.encode(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(bytes)
}

struct Attr {
    /// The encoded value (stale while `live` is set).
    bytes: Vec<u8>,
    /// Hash of the bytes as last loaded or written; `None`: never stored.
    stored_hash: Option<u64>,
    /// A decoded value handed out mutably; re-encoded at save.
    live: Option<Box<dyn Live>>,
}

impl Attr {
    fn current_bytes(&self, codec: CodecKind) -> Result<Vec<u8>, SessionError> {
        match &self.live {
            Some(live) => live.encode(codec),
            None => Ok(self.bytes.clone()),
        }
    }
}

/// Attributes as stored: clean (their hash recorded), none handed out mutably.
fn stored_attrs(attributes: Vec<(String, Vec<u8>)>) -> BTreeMap<String, Attr> {
    attributes
        .into_iter()
        .map(|(name, bytes)| {
            let stored_hash = Some(hash_bytes(&bytes));
            (
                name,
                Attr {
                    bytes,
                    stored_hash,
                    live: None,
                },
            )
        })
        .collect()
}

/// The state of one session. Reached through [`Session::lock`] (as a [`SessionGuard`])
/// or through the convenience methods of [`Session`].
pub struct SessionData {
    id: SessionId,
    codec: CodecKind,
    created_ms: u64,
    last_access_ms: u64,
    max_inactive: Duration,
    is_new: bool,
    attrs: BTreeMap<String, Attr>,
    /// Bumped by every structural change (attribute added or removed, interval changed).
    change_gen: u64,
    /// `change_gen` as of the last successful write; `None`: never written.
    written_gen: Option<u64>,
    invalidated: bool,
    /// The write version of the stored session this state is based on (as loaded, or
    /// as last written by this instance): the next write is `base_version + 1`, and is
    /// stored only where no newer version is (see `store`).
    base_version: u64,
    /// Attributes that were stored and that this instance removed since, with the
    /// `change_gen` of the removal: the removals a merge re-applies.
    removed: BTreeMap<String, u64>,
    /// `change_gen` when the max inactive interval was last changed here.
    interval_changed_gen: Option<u64>,
}

/// A snapshot taken for a write: the encoded record and what to mark as written once
/// memcached acknowledged it.
pub(crate) struct WriteSnapshot {
    pub(crate) bytes: Vec<u8>,
    /// The write version the snapshot's content is based on.
    pub(crate) base_version: u64,
    pub(crate) changed: bool,
    pub(crate) gen: u64,
    pub(crate) hashes: Vec<(String, u64)>,
    pub(crate) serialize_time: Duration,
}

impl SessionData {
    pub(crate) fn new_session(
        id: SessionId,
        codec: CodecKind,
        now: SystemTime,
        max_inactive: Duration,
    ) -> Self {
        let now_ms = unix_millis(now);
        SessionData {
            id,
            codec,
            created_ms: now_ms,
            last_access_ms: now_ms,
            max_inactive,
            is_new: true,
            attrs: BTreeMap::new(),
            change_gen: 0,
            written_gen: None,
            invalidated: false,
            base_version: 0,
            removed: BTreeMap::new(),
            interval_changed_gen: None,
        }
    }

    pub(crate) fn from_stored(
        id: SessionId,
        stored: StoredSession,
        last_access_ms: u64,
        version: u64,
    ) -> Self {
        let attrs = stored_attrs(stored.attributes);
        SessionData {
            id,
            codec: stored.codec,
            created_ms: stored.created_ms,
            last_access_ms: last_access_ms.max(stored.validity.last_access_ms),
            max_inactive: Duration::from_millis(stored.validity.max_inactive_ms),
            is_new: false,
            attrs,
            change_gen: 0,
            written_gen: Some(0),
            invalidated: false,
            base_version: version,
            removed: BTreeMap::new(),
            interval_changed_gen: None,
        }
    }

    /// The session's id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// The codec of this session's attributes.
    pub fn codec(&self) -> CodecKind {
        self.codec
    }

    /// When the session was created.
    pub fn created(&self) -> SystemTime {
        from_unix_millis(self.created_ms)
    }

    /// When a request last accessed the session (before the current one).
    pub fn last_accessed(&self) -> SystemTime {
        from_unix_millis(self.last_access_ms)
    }

    /// The max inactive interval.
    pub fn max_inactive_interval(&self) -> Duration {
        self.max_inactive
    }

    /// Changes the max inactive interval (a zero interval is raised to 1 s).
    pub fn set_max_inactive_interval(&mut self, interval: Duration) {
        let interval = interval.max(Duration::from_secs(1));
        if interval != self.max_inactive {
            self.max_inactive = interval;
            self.change_gen += 1;
            self.interval_changed_gen = Some(self.change_gen);
        }
    }

    /// True until a request presents the session's id back.
    pub fn is_new(&self) -> bool {
        self.is_new
    }

    /// True once [`SessionData::invalidate`] was called.
    pub fn is_invalidated(&self) -> bool {
        self.invalidated
    }

    /// Ends the session: every stored copy is removed when the request ends.
    pub fn invalidate(&mut self) {
        self.invalidated = true;
    }

    /// The attribute names, in order.
    pub fn attribute_names(&self) -> Vec<String> {
        self.user_attrs().cloned().collect()
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.user_attrs().count()
    }

    /// True when there is no attribute.
    pub fn is_empty(&self) -> bool {
        self.user_attrs().next().is_none()
    }

    /// True when the attribute exists.
    pub fn contains(&self, name: &str) -> bool {
        !is_reserved(name) && self.attrs.contains_key(name)
    }

    /// The application's attribute names (the lifecycle's reserved ones left out).
    fn user_attrs(&self) -> impl Iterator<Item = &String> {
        self.attrs.keys().filter(|n| !is_reserved(n))
    }

    /// Decodes the attribute `name` as a `T`. `Ok(None)` when absent; an error when the
    /// stored value is not a `T`.
    pub fn get<T: AttributeValue + Clone>(&self, name: &str) -> Result<Option<T>, SessionError> {
        if is_reserved(name) {
            return Ok(None);
        }
        self.get_any(name)
    }

    /// `get` without the reserved-name check (the lifecycle's own attributes).
    pub(crate) fn get_any<T: AttributeValue + Clone>(
        &self,
        name: &str,
    ) -> Result<Option<T>, SessionError> {
        let Some(attr) = self.attrs.get(name) else {
            return Ok(None);
        };
        if let Some(live) = &attr.live {
            if let Some(v) = live.as_any().downcast_ref::<T>() {
                return Ok(Some(v.clone()));
            }
            let bytes = live.encode(self.codec)?;
            return self.codec.decode(&bytes).map(Some);
        }
        self.codec.decode(&attr.bytes).map(Some)
    }

    /// The attribute `name` as a mutable `T`: changes made through the reference are
    /// detected when the session is saved (by comparing hashes of the encoded form).
    pub fn get_mut<T: AttributeValue>(
        &mut self,
        name: &str,
    ) -> Result<Option<&mut T>, SessionError> {
        let codec = self.codec;
        if is_reserved(name) {
            return Ok(None);
        }
        let Some(attr) = self.attrs.get_mut(name) else {
            return Ok(None);
        };
        let is_t = attr
            .live
            .as_ref()
            .is_some_and(|l| l.as_any().downcast_ref::<T>().is_some());
        if !is_t {
            let bytes = attr.current_bytes(codec)?;
            let value: T = codec.decode(&bytes)?;
            attr.bytes = bytes;
            attr.live = Some(Box::new(value));
        }
        Ok(attr
            .live
            .as_mut()
            .and_then(|l| l.as_any_mut().downcast_mut::<T>()))
    }

    /// Sets the attribute `name` (encoded at once).
    pub fn insert<T: Serialize + ?Sized>(
        &mut self,
        name: &str,
        value: &T,
    ) -> Result<(), SessionError> {
        if is_reserved(name) {
            return Err(SessionError::Codec {
                codec: self.codec.name(),
                reason: format!("attribute names starting with {RESERVED_PREFIX:?} are reserved for the session's lifecycle"),
            });
        }
        self.insert_any(name, value)
    }

    /// `insert` without the reserved-name check (the lifecycle's own attributes).
    pub(crate) fn insert_any<T: Serialize + ?Sized>(
        &mut self,
        name: &str,
        value: &T,
    ) -> Result<(), SessionError> {
        let bytes = self.codec.encode(value)?;
        self.removed.remove(name);
        match self.attrs.get_mut(name) {
            Some(attr) => {
                attr.bytes = bytes;
                attr.live = None;
            }
            None => {
                self.attrs.insert(
                    name.to_owned(),
                    Attr {
                        bytes,
                        stored_hash: None,
                        live: None,
                    },
                );
                self.change_gen += 1;
            }
        }
        Ok(())
    }

    /// Removes the attribute `name`; true when it existed.
    pub fn remove(&mut self, name: &str) -> bool {
        if is_reserved(name) {
            return false;
        }
        let Some(attr) = self.attrs.remove(name) else {
            return false;
        };
        self.change_gen += 1;
        if attr.stored_hash.is_some() {
            self.removed.insert(name.to_owned(), self.change_gen);
        }
        true
    }

    /// Removes the attribute `name` and returns it as a `T`.
    pub fn take<T: AttributeValue + Clone>(
        &mut self,
        name: &str,
    ) -> Result<Option<T>, SessionError> {
        let value = self.get::<T>(name)?;
        self.remove(name);
        Ok(value)
    }

    /// Removes every attribute.
    pub fn clear(&mut self) {
        if !self.is_empty() {
            self.change_gen += 1;
            let gen = self.change_gen;
            let (reserved, user): (BTreeMap<_, _>, BTreeMap<_, _>) =
                std::mem::take(&mut self.attrs)
                    .into_iter()
                    .partition(|(name, _)| is_reserved(name));
            self.attrs = reserved;
            for (name, attr) in user {
                if attr.stored_hash.is_some() {
                    self.removed.insert(name, gen);
                }
            }
        }
    }

    // ---- crate-internal ----

    pub(crate) fn set_id(&mut self, id: SessionId) {
        self.id = id;
    }

    /// The same session under a new id (rotation): every attribute, the creation time,
    /// the last access and the interval, as a brand-new record (nothing stored yet under
    /// the new key yet, or `base_version` of an earlier copy: everything needs a write).
    pub(crate) fn rotated(
        &self,
        id: SessionId,
        base_version: u64,
    ) -> Result<SessionData, SessionError> {
        let codec = self.codec;
        let mut attrs = BTreeMap::new();
        for (name, attr) in &self.attrs {
            attrs.insert(
                name.clone(),
                Attr {
                    bytes: attr.current_bytes(codec)?,
                    stored_hash: None,
                    live: None,
                },
            );
        }
        Ok(SessionData {
            id,
            codec,
            created_ms: self.created_ms,
            last_access_ms: self.last_access_ms,
            max_inactive: self.max_inactive,
            is_new: false,
            attrs,
            change_gen: 1,
            written_gen: None,
            invalidated: false,
            base_version,
            removed: BTreeMap::new(),
            interval_changed_gen: None,
        })
    }

    pub(crate) fn mark_not_new(&mut self) {
        self.is_new = false;
    }

    pub(crate) fn record_access(&mut self, now: SystemTime) {
        self.last_access_ms = self.last_access_ms.max(unix_millis(now));
    }

    pub(crate) fn validity(&self) -> Validity {
        Validity {
            last_access_ms: self.last_access_ms,
            max_inactive_ms: u64::try_from(self.max_inactive.as_millis()).unwrap_or(u64::MAX),
        }
    }

    pub(crate) fn is_expired_at(&self, now: SystemTime) -> bool {
        self.validity().is_expired_at(unix_millis(now))
    }

    /// The dirty check alone: true when a write is needed.
    pub fn is_changed(&self) -> Result<bool, SessionError> {
        if self.written_gen != Some(self.change_gen) {
            return Ok(true);
        }
        for attr in self.attrs.values() {
            let current = match &attr.live {
                Some(live) => hash_bytes(&live.encode(self.codec)?),
                None => hash_bytes(&attr.bytes),
            };
            if attr.stored_hash != Some(current) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Encodes the session for a write and says whether it changed since the last one.
    pub(crate) fn snapshot(&mut self) -> Result<WriteSnapshot, SessionError> {
        let started = std::time::Instant::now();
        let codec = self.codec;
        let mut changed = self.written_gen != Some(self.change_gen);
        let mut hashes = Vec::with_capacity(self.attrs.len());
        for (name, attr) in self.attrs.iter_mut() {
            if let Some(live) = &attr.live {
                attr.bytes = live.encode(codec)?;
            }
            let h = hash_bytes(&attr.bytes);
            if attr.stored_hash != Some(h) {
                changed = true;
            }
            hashes.push((name.clone(), h));
        }
        let bytes = format::encode_session(
            &self.id.key(),
            codec,
            self.created_ms,
            &self.validity(),
            self.attrs
                .iter()
                .map(|(n, a)| (n.as_str(), a.bytes.as_slice())),
        )?;
        Ok(WriteSnapshot {
            bytes,
            base_version: self.base_version,
            changed,
            gen: self.change_gen,
            hashes,
            serialize_time: started.elapsed(),
        })
    }

    /// Marks what `snapshot` captured as stored, as write `version`.
    pub(crate) fn mark_written(&mut self, snapshot: &WriteSnapshot, version: u64) {
        self.written_gen = Some(snapshot.gen);
        self.base_version = self.base_version.max(version);
        for (name, h) in &snapshot.hashes {
            if let Some(attr) = self.attrs.get_mut(name) {
                attr.stored_hash = Some(*h);
            }
        }
        self.removed.retain(|_, gen| *gen > snapshot.gen);
        if self.interval_changed_gen.is_some_and(|g| g <= snapshot.gen) {
            self.interval_changed_gen = None;
        }
    }

    /// The write version this state is based on.
    pub(crate) fn base_version(&self) -> u64 {
        self.base_version
    }

    /// Re-bases this state on a newer stored version (`stored`, write `version`): the
    /// result is the stored session with this instance's own changes applied on top,
    /// attribute by attribute (attributes changed or added here override, attributes
    /// removed here are removed, an interval changed here is kept). What was not changed
    /// here takes the stored value. Used by unlocked writers that find a newer version
    /// (the merge of the `none` locking mode and of sticky mode).
    pub(crate) fn rebase(
        &mut self,
        stored: StoredSession,
        version: u64,
    ) -> Result<(), SessionError> {
        let codec = self.codec;
        let mut merged = stored_attrs(stored.attributes);
        for (name, mut attr) in std::mem::take(&mut self.attrs) {
            let bytes = attr.current_bytes(codec)?;
            let own_change = attr.stored_hash != Some(hash_bytes(&bytes));
            if own_change {
                attr.stored_hash = merged.get(&name).and_then(|m| m.stored_hash);
                attr.bytes = bytes;
                merged.insert(name, attr);
            }
        }
        for name in self.removed.keys() {
            merged.remove(name);
        }
        self.attrs = merged;
        if self.interval_changed_gen.is_none() {
            self.max_inactive = Duration::from_millis(stored.validity.max_inactive_ms);
        }
        self.created_ms = stored.created_ms;
        self.last_access_ms = self.last_access_ms.max(stored.validity.last_access_ms);
        self.base_version = version;
        // Anything still different from the stored version is this instance's change.
        self.change_gen += 1;
        if self.removed.is_empty() && self.interval_changed_gen.is_none() {
            self.written_gen = Some(self.change_gen);
        } else {
            self.written_gen = None;
        }
        Ok(())
    }

    /// Encodes the session as it is stored (the record format of [`super::format`]) and
    /// marks it as stored: afterwards [`SessionData::is_changed`] is false until the next
    /// change. The service does this itself; this is for tools and benchmarks.
    pub fn encode_record(&mut self) -> Result<Vec<u8>, SessionError> {
        let snapshot = self.snapshot()?;
        let version = self.base_version;
        self.mark_written(&snapshot, version);
        Ok(snapshot.bytes)
    }
}

impl std::fmt::Debug for SessionData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionData")
            .field("id", &self.id)
            .field("codec", &self.codec)
            .field("attributes", &self.attrs.keys().collect::<Vec<_>>())
            .field("invalidated", &self.invalidated)
            .finish()
    }
}

/// The guard returned by [`Session::lock`]: the session's data, exclusively. Do not
/// hold it across an `.await` (it is not `Send`, so the compiler refuses it).
pub type SessionGuard<'a> = MutexGuard<'a, SessionData>;

/// A session handle: cheap to clone, shared by the requests of one session that run at
/// the same time on this instance.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Mutex<SessionData>>,
}

impl Session {
    pub(crate) fn from_data(data: SessionData) -> Self {
        Session {
            inner: Arc::new(Mutex::new(data)),
        }
    }

    /// Exclusive access to the session's data (for in-place mutation through
    /// [`SessionData::get_mut`]).
    pub fn lock(&self) -> SessionGuard<'_> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current id (it changes when the session moves to another node or instance).
    pub fn id(&self) -> SessionId {
        self.lock().id().clone()
    }

    /// When the session was created.
    pub fn created(&self) -> SystemTime {
        self.lock().created()
    }

    /// When a request last accessed the session.
    pub fn last_accessed(&self) -> SystemTime {
        self.lock().last_accessed()
    }

    /// The max inactive interval.
    pub fn max_inactive_interval(&self) -> Duration {
        self.lock().max_inactive_interval()
    }

    /// Changes the max inactive interval.
    pub fn set_max_inactive_interval(&self, interval: Duration) {
        self.lock().set_max_inactive_interval(interval)
    }

    /// True until a request presents the session's id back.
    pub fn is_new(&self) -> bool {
        self.lock().is_new()
    }

    /// Decodes the attribute `name` as a `T`.
    pub fn get<T: AttributeValue + Clone>(&self, name: &str) -> Result<Option<T>, SessionError> {
        self.lock().get(name)
    }

    /// Sets the attribute `name`.
    pub fn insert<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<(), SessionError> {
        self.lock().insert(name, value)
    }

    /// Removes the attribute `name`; true when it existed.
    pub fn remove(&self, name: &str) -> bool {
        self.lock().remove(name)
    }

    /// Removes the attribute `name` and returns it as a `T`.
    pub fn take<T: AttributeValue + Clone>(&self, name: &str) -> Result<Option<T>, SessionError> {
        self.lock().take(name)
    }

    /// Changes the attribute `name` in place with `f`; `Ok(None)` when absent.
    pub fn update<T: AttributeValue, R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<Option<R>, SessionError> {
        let mut guard = self.lock();
        Ok(guard.get_mut::<T>(name)?.map(f))
    }

    /// The attribute names, in order.
    pub fn attribute_names(&self) -> Vec<String> {
        self.lock().attribute_names()
    }

    /// True when the attribute exists.
    pub fn contains(&self, name: &str) -> bool {
        self.lock().contains(name)
    }

    /// Ends the session: every stored copy is removed when the request ends.
    pub fn invalidate(&self) {
        self.lock().invalidate()
    }

    /// True once invalidated.
    pub fn is_invalidated(&self) -> bool {
        self.lock().is_invalidated()
    }

    /// A session attached to no service (for tests, tools and benchmarks): a fresh
    /// random key, node `local`, the given codec, a 30 min interval.
    pub fn detached(codec: CodecKind) -> Result<Session, SessionError> {
        let id = SessionId::new(super::id::SessionKey::generate()?, "local", None, None)?;
        Ok(Session::from_data(SessionData::new_session(
            id,
            codec,
            SystemTime::now(),
            Duration::from_secs(30 * 60),
        )))
    }

    /// Decodes a stored session record (as written under the session's key) into a
    /// detached session with the id `id`.
    pub fn from_record(id: SessionId, bytes: &[u8]) -> Result<Session, SessionError> {
        let decoded = format::decode(bytes, &id.key())?;
        match decoded.record {
            format::Record::Session(stored) => {
                let last = stored.validity.last_access_ms;
                Ok(Session::from_data(SessionData::from_stored(
                    id,
                    stored,
                    last,
                    decoded.version,
                )))
            }
            format::Record::Tombstone { .. } => Err(SessionError::Format(
                format::FormatError::Body("the record is a tombstone".into()),
            )),
        }
    }

    /// True when two handles are the same session object.
    pub fn ptr_eq(&self, other: &Session) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Session").field(&*self.lock()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::id::SessionKey;
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    struct Cart {
        items: Vec<String>,
    }

    fn fresh() -> SessionData {
        let id = SessionId::new(
            SessionKey::from_bytes([1; 16]),
            "n1",
            Some("n2".into()),
            None,
        )
        .unwrap();
        SessionData::new_session(
            id,
            CodecKind::MessagePack,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
            Duration::from_secs(1800),
        )
    }

    fn written(mut s: SessionData) -> SessionData {
        let snap = s.snapshot().unwrap();
        s.mark_written(&snap, 1);
        s
    }

    #[test]
    fn typed_insert_get_remove_round_trip() {
        let mut s = fresh();
        s.insert("user", "ann").unwrap();
        s.insert(
            "cart",
            &Cart {
                items: vec!["a".into()],
            },
        )
        .unwrap();
        assert_eq!(s.get::<String>("user").unwrap().as_deref(), Some("ann"));
        assert_eq!(
            s.get::<Cart>("cart").unwrap(),
            Some(Cart {
                items: vec!["a".into()]
            })
        );
        assert_eq!(s.get::<u32>("missing").unwrap(), None);
        assert!(s.get::<u32>("user").is_err(), "a string is not a u32");
        assert!(s.remove("user"));
        assert!(!s.remove("user"));
        assert_eq!(s.attribute_names(), vec!["cart".to_string()]);
    }

    #[test]
    fn a_new_session_needs_a_write() {
        let mut s = fresh();
        assert!(s.snapshot().unwrap().changed);
    }

    #[test]
    fn an_unchanged_session_is_not_dirty_after_a_write() {
        let mut s = fresh();
        s.insert("a", &1u32).unwrap();
        let mut s = written(s);
        assert!(!s.is_changed().unwrap());
        assert!(!s.snapshot().unwrap().changed);
        // Reading through get_mut without changing anything is not a change.
        let _ = s.get_mut::<u32>("a").unwrap();
        assert!(!s.snapshot().unwrap().changed);
    }

    #[test]
    fn insert_of_the_same_value_is_not_a_change_but_a_new_value_is() {
        let mut s = fresh();
        s.insert("a", &1u32).unwrap();
        let mut s = written(s);
        s.insert("a", &1u32).unwrap();
        assert!(!s.is_changed().unwrap());
        s.insert("a", &2u32).unwrap();
        assert!(s.is_changed().unwrap());
    }

    #[test]
    fn in_place_mutation_is_detected_by_the_hash() {
        let mut s = fresh();
        s.insert("cart", &Cart { items: vec![] }).unwrap();
        let mut s = written(s);
        s.get_mut::<Cart>("cart")
            .unwrap()
            .unwrap()
            .items
            .push("x".into());
        let snap = s.snapshot().unwrap();
        assert!(snap.changed);
        s.mark_written(&snap, 1);
        assert!(!s.is_changed().unwrap());
        assert_eq!(
            s.get::<Cart>("cart").unwrap().unwrap().items,
            vec!["x".to_string()]
        );
    }

    #[test]
    fn removal_and_interval_change_are_changes() {
        let mut s = fresh();
        s.insert("a", &1u32).unwrap();
        let mut s = written(s);
        s.remove("a");
        assert!(s.is_changed().unwrap());
        let mut s = written(s);
        s.set_max_inactive_interval(Duration::from_secs(60));
        assert!(s.is_changed().unwrap());
    }

    #[test]
    fn changes_made_after_a_snapshot_stay_dirty() {
        let mut s = fresh();
        s.insert("a", &1u32).unwrap();
        let snap = s.snapshot().unwrap();
        s.insert("a", &2u32).unwrap();
        s.insert("b", &3u32).unwrap();
        s.mark_written(&snap, 1);
        assert!(s.is_changed().unwrap());
    }

    #[test]
    fn stored_session_loads_with_its_attributes_and_is_clean() {
        let mut s = fresh();
        s.insert("x", &vec![1u8, 2, 3]).unwrap();
        let snap = s.snapshot().unwrap();
        let key = s.id().key();
        let format::Record::Session(stored) = format::decode(&snap.bytes, &key).unwrap().record
        else {
            panic!()
        };
        let loaded = SessionData::from_stored(s.id().clone(), stored, 0, 0);
        assert_eq!(loaded.get::<Vec<u8>>("x").unwrap(), Some(vec![1, 2, 3]));
        assert!(!loaded.is_new());
        assert!(!loaded.is_changed().unwrap());
    }

    #[test]
    fn expiry_follows_last_access_and_interval() {
        let mut s = fresh();
        let t0 = s.last_accessed();
        assert!(!s.is_expired_at(t0 + Duration::from_secs(1799)));
        assert!(s.is_expired_at(t0 + Duration::from_secs(1800)));
        s.record_access(t0 + Duration::from_secs(1000));
        assert!(!s.is_expired_at(t0 + Duration::from_secs(2700)));
    }

    #[test]
    fn session_handle_update_mutates_in_place() {
        let mut data = fresh();
        data.insert("n", &1u32).unwrap();
        let session = Session::from_data(written(data));
        let r = session.update::<u32, _>("n", |n| {
            *n += 1;
            *n
        });
        assert_eq!(r.unwrap(), Some(2));
        assert!(session.lock().is_changed().unwrap());
        assert_eq!(session.get::<u32>("n").unwrap(), Some(2));
    }

    fn stored_of(s: &mut SessionData) -> StoredSession {
        let snap = s.snapshot().unwrap();
        let key = s.id().key();
        let format::Record::Session(stored) = format::decode(&snap.bytes, &key).unwrap().record
        else {
            panic!()
        };
        stored
    }

    #[test]
    fn rebase_keeps_own_changes_and_takes_the_rest_from_the_newer_version() {
        // Version 1: a=1, b=2, c=3, loaded by two requests.
        let mut base = fresh();
        base.insert("a", &1u32).unwrap();
        base.insert("b", &2u32).unwrap();
        base.insert("c", &3u32).unwrap();
        let v1 = stored_of(&mut base);
        let id = base.id().clone();
        let mut mine = SessionData::from_stored(id.clone(), v1.clone(), 0, 1);
        let mut theirs = SessionData::from_stored(id, v1, 0, 1);
        // Theirs (written first as version 2): a=10, adds d=4.
        theirs.insert("a", &10u32).unwrap();
        theirs.insert("d", &4u32).unwrap();
        let v2 = stored_of(&mut theirs);
        // Mine: b=20, removes c, leaves a alone.
        mine.insert("b", &20u32).unwrap();
        assert!(mine.remove("c"));
        mine.rebase(v2, 2).unwrap();
        assert_eq!(mine.get::<u32>("a").unwrap(), Some(10));
        assert_eq!(mine.get::<u32>("b").unwrap(), Some(20));
        assert_eq!(mine.get::<u32>("c").unwrap(), None);
        assert_eq!(mine.get::<u32>("d").unwrap(), Some(4));
        assert_eq!(mine.base_version(), 2);
        assert!(mine.is_changed().unwrap(), "own changes still need a write");
    }

    #[test]
    fn rebase_of_an_unchanged_state_is_clean() {
        let mut base = fresh();
        base.insert("a", &1u32).unwrap();
        let v1 = stored_of(&mut base);
        let mut mine = SessionData::from_stored(base.id().clone(), v1.clone(), 0, 1);
        let mut theirs = SessionData::from_stored(base.id().clone(), v1, 0, 1);
        theirs.insert("a", &2u32).unwrap();
        let v2 = stored_of(&mut theirs);
        mine.rebase(v2, 2).unwrap();
        assert_eq!(mine.get::<u32>("a").unwrap(), Some(2));
        assert!(!mine.is_changed().unwrap());
    }
}
