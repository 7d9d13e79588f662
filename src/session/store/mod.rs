//! The replicated, versioned session store on memcached: reads every copy that can
//! matter and keeps the latest, and writes copies that only ever move forward.
//!
//! Keys (with the configured prefix `p`, `k` the id's random part), the same on every
//! node that holds a copy: `p k` (the session record), `p validity:k` (the validity
//! record), `p lock:k` (the non-sticky lock, on the key's lock node).
//!
//! # The rules, each enforced here and only here
//!
//! * **Latest wins** ([`Fetched`]): a read looks at the nodes the id names (hints) and
//!   down the key's preference order until two nodes answered with a copy
//!   ([`Placement::read_targets`]), and keeps the copy with the highest write version; a
//!   tombstone has version `u64::MAX`, so an invalidation outranks every copy.
//! * **Copies only move forward** ([`Store::write_copy`]): a session record with write
//!   version `v + 1`, based on version `v`, is stored on a node only if that node holds
//!   no copy (`add`) or a copy of version `<= v` that did not change since it was read
//!   (`cas`). A copy of a higher version means somebody wrote since this request read
//!   the session: the write stops there ([`Replicated::Conflict`], or
//!   [`Replicated::Gone`] for a tombstone). The primary is written before the backup,
//!   so a write refused on the primary touches no copy.
//! * **A tombstone overwrites anything and is overwritten by nothing**
//!   ([`Store::invalidate`]): it is `set` on every node that may hold a copy.
//! * A save is acknowledged only when every copy of the placement acknowledged it.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::{Client, Expiry, NodeState, StoreMode, StoreOptions, StoreOutcome};

mod handoff;
mod locks;

pub(crate) use handoff::HANDOFF_PERIOD;

use super::format::{self, Record, StoredSession, Validity};
use super::id::SessionKey;
use super::placement::{Copies, Placement};
use super::stats::SessionStats;
use super::SessionError;

/// The write version of a tombstone: above every session record's.
pub(crate) const TOMBSTONE_VERSION: u64 = u64::MAX;

/// How long a tombstone outlives the session's max inactive interval: any copy it
/// hides has expired by then (clock differences between instances included).
const TOMBSTONE_MARGIN: Duration = Duration::from_secs(300);

/// Attempts at one copy when it changes under a write that did not conflict (a
/// concurrent re-replication of the same version, a racing `add`).
const COPY_ATTEMPTS: usize = 4;

/// Placements tried by one replicated write when nodes fail under it.
const PLACEMENT_ATTEMPTS: usize = 4;

/// What one node holds for a session, as last read or written by this request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CopyState {
    /// No record.
    Missing,
    /// A record of this write version, with the CAS token it was read with.
    Present { version: u64, cas: u64 },
}

/// What a request knows of the copies of its session: node -> state. A node that is
/// not in the map is read before it is written (unless `fresh`).
#[derive(Clone, Debug, Default)]
pub(crate) struct KnownCopies {
    states: HashMap<String, CopyState>,
    /// A brand-new key: every node is known to hold nothing.
    fresh: bool,
}

impl KnownCopies {
    /// The copies of a key that was just generated (nothing stored anywhere).
    pub(crate) fn fresh() -> Self {
        KnownCopies {
            states: HashMap::new(),
            fresh: true,
        }
    }

    /// True when `node` is known to hold exactly `version`.
    pub(crate) fn holds(&self, node: &str, version: u64) -> bool {
        matches!(self.states.get(node), Some(CopyState::Present { version: v, .. }) if *v == version)
    }

    /// The nodes known to have answered a read.
    pub(crate) fn nodes(&self) -> impl Iterator<Item = &str> {
        self.states.keys().map(String::as_str)
    }

    fn get(&self, node: &str) -> Option<CopyState> {
        match self.states.get(node) {
            Some(s) => Some(*s),
            None if self.fresh => Some(CopyState::Missing),
            None => None,
        }
    }

    fn forget(&mut self, node: &str) {
        self.states.remove(node);
        self.fresh = false;
    }

    fn set(&mut self, node: &str, state: CopyState) {
        self.states.insert(node.to_owned(), state);
    }
}

/// The latest copy a read found.
#[derive(Debug)]
pub(crate) enum Latest {
    /// A live session.
    Session {
        /// Its write version.
        version: u64,
        /// The record.
        stored: StoredSession,
        /// The newest validity among the copies.
        validity: Validity,
    },
    /// The session was invalidated.
    Tombstone,
}

/// What a read found.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The latest copy (`None`: no copy anywhere it could be).
    pub(crate) latest: Option<Latest>,
    /// What each node that answered holds.
    pub(crate) known: KnownCopies,
}

/// The outcome of a replicated write.
#[derive(Debug)]
pub(crate) enum Replicated {
    /// Every copy of the placement holds the new version.
    Written {
        /// Where the copies are.
        copies: Copies,
        /// The version written.
        version: u64,
    },
    /// A copy holds a version written after the one this write is based on: nothing
    /// of this write was stored on the primary.
    Conflict,
    /// The session was invalidated meanwhile.
    Gone,
}

enum CopyWrite {
    Stored,
    /// The node holds a copy of `version`, newer than the write's base.
    Newer {
        version: u64,
    },
}

/// The replicated store of one service.
pub(crate) struct Store {
    client: Client,
    per_node: HashMap<String, Client>,
    placement: Placement,
    prefix: String,
    stats: Arc<SessionStats>,
    /// The TTL of a tombstone spread by read repair (the configured max inactive
    /// interval plus the margin: the session's own interval is not in the tombstone).
    repair_ttl: Duration,
}

/// memcached's TTL for a duration: 1 s resolution, rounded up so an item never dies
/// before the session it holds.
pub(crate) fn ttl(d: Duration) -> Expiry {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Expiry::In(Duration::from_secs(secs.max(1)))
}

/// The client flags of a record: the low 32 bits of its write version (for tools
/// looking at the servers; readers use the version in the record).
pub(super) fn flags_of(version: u64) -> u32 {
    (version & u64::from(u32::MAX)) as u32
}

impl Store {
    pub(crate) fn new(
        client: Client,
        failover: &[String],
        prefix: String,
        max_inactive: Duration,
        stats: Arc<SessionStats>,
    ) -> Result<Self, SessionError> {
        let nodes = client.node_ids();
        if nodes.is_empty() {
            return Err(SessionError::config("nodes", "the client has no node"));
        }
        let mut per_node = HashMap::new();
        for id in &nodes {
            if !super::id::is_valid_name(id) {
                return Err(SessionError::config(
                    "nodes",
                    format!("client node id {id:?} is not 1-32 characters of [A-Za-z0-9_]; give every node an id"),
                ));
            }
            per_node.insert(id.clone(), client.on_node(id)?);
        }
        for f in failover {
            if !nodes.contains(f) {
                return Err(SessionError::config(
                    "failover_nodes",
                    format!("{f:?} is not a node of the client"),
                ));
            }
        }
        Ok(Store {
            placement: Placement::new(&nodes, failover),
            client,
            per_node,
            prefix,
            stats,
            repair_ttl: max_inactive.saturating_add(TOMBSTONE_MARGIN),
        })
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn knows(&self, node: &str) -> bool {
        self.per_node.contains_key(node)
    }

    /// Anything but `Down` is usable: a node still connecting gets the benefit of the
    /// doubt (an operation that then fails excludes it explicitly).
    fn usable(&self, id: &str) -> bool {
        self.client
            .node_state(id)
            .is_some_and(|s| s != NodeState::Down)
    }

    /// The placement a save would use now.
    pub(crate) fn copies(&self, key: &SessionKey, exclude: &[String]) -> Option<Copies> {
        self.placement
            .copies(key, |n| self.usable(n) && !exclude.iter().any(|e| e == n))
    }

    fn data_key(&self, key: &SessionKey) -> String {
        format!("{}{key}", self.prefix)
    }

    fn validity_key(&self, key: &SessionKey) -> String {
        format!("{}validity:{key}", self.prefix)
    }

    fn node(&self, id: &str) -> Result<&Client, crate::Error> {
        self.per_node
            .get(id)
            .ok_or_else(|| crate::Error::UnknownNode(id.to_owned()))
    }

    // ----- reads -------------------------------------------------------------------

    /// Reads one node: the record (with its CAS token) and the validity record.
    async fn read_node(
        &self,
        node: &str,
        key: &SessionKey,
    ) -> Result<Option<(Bytes, u64, Option<Bytes>)>, crate::Error> {
        let client = self.node(node)?;
        let (data, validity) = futures::join!(
            client.gets(self.data_key(key)),
            client.get(self.validity_key(key))
        );
        let Some(item) = data? else {
            return Ok(None);
        };
        // A failed validity read only costs precision: the record carries validity too.
        let validity = validity.ok().flatten().map(|i| i.value);
        Ok(Some((item.value, item.cas.unwrap_or(0), validity)))
    }

    /// Reads a session: every node the id names (`hints`) and the nodes of the key's
    /// order until two of them answered with a copy; the latest copy wins. `Err` when no node answered,
    /// or when nothing was found while every node the id names failed: a session that
    /// can't be read is not reported absent.
    pub(crate) async fn fetch(
        &self,
        key: &SessionKey,
        hints: &[&str],
    ) -> Result<Fetched, SessionError> {
        let targets = self.placement.read_targets(key, hints);
        let mut read: Vec<&str> = Vec::new();
        let mut answered: Vec<&str> = Vec::new();
        let mut failed: Vec<(&str, crate::Error)> = Vec::new();
        let mut found: Vec<(&str, Bytes, u64, Option<Bytes>)> = Vec::new();
        let mut known = KnownCopies::default();
        let mut batch: Vec<&str> = targets.first.clone();
        while !batch.is_empty() {
            read.extend(batch.iter().copied());
            let results =
                futures::future::join_all(batch.iter().map(|n| self.read_node(n, key))).await;
            for (node, result) in batch.iter().copied().zip(results) {
                match result {
                    Ok(Some((bytes, cas, validity))) => {
                        answered.push(node);
                        found.push((node, bytes, cas, validity));
                    }
                    Ok(None) => {
                        answered.push(node);
                        known.set(node, CopyState::Missing);
                    }
                    Err(e) if e.is_node_failure() => {
                        tracing::warn!(node, error = %e, "session node failed during a read; reading the next node");
                        failed.push((node, e));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let holding: Vec<&str> = found.iter().map(|(n, ..)| *n).collect();
            batch = targets.next(&read, &holding).into_iter().collect();
        }
        let mut latest: Option<(u64, Latest)> = None;
        let mut newest_validity: Option<Validity> = None;
        for (node, bytes, cas, validity_bytes) in &found {
            let Some(decoded) = self.decode(node, key, bytes) else {
                // A refused record is treated as absent and replaced by the next write.
                known.set(
                    node,
                    CopyState::Present {
                        version: 0,
                        cas: *cas,
                    },
                );
                continue;
            };
            known.set(
                node,
                CopyState::Present {
                    version: decoded.version,
                    cas: *cas,
                },
            );
            if let Some(v) = validity_bytes
                .as_ref()
                .and_then(|b| Validity::decode(b).ok())
            {
                if newest_validity.is_none_or(|n| v.last_access_ms > n.last_access_ms) {
                    newest_validity = Some(v);
                }
            }
            if latest.as_ref().is_some_and(|(v, _)| *v >= decoded.version) {
                continue;
            }
            let entry = match decoded.record {
                Record::Tombstone => Latest::Tombstone,
                Record::Session(stored) => Latest::Session {
                    version: decoded.version,
                    validity: stored.validity,
                    stored,
                },
            };
            latest = Some((decoded.version, entry));
        }
        let latest = latest.map(|(_, mut l)| {
            if let (Latest::Session { validity, .. }, Some(v)) = (&mut l, newest_validity) {
                if v.last_access_ms > validity.last_access_ms {
                    *validity = v;
                }
            }
            l
        });
        if matches!(latest, Some(Latest::Tombstone)) {
            self.spread_tombstone(key, &answered, &known).await;
        }
        if latest.is_none() {
            // Every node the id names failed: its copies may be there. (One of them
            // answering "missing" means the session is gone: a copy is lost only when
            // its node fails, and the guarantee covers one node fault at a time.)
            let hints_failed = hints.iter().any(|h| self.placement.knows(h))
                && hints
                    .iter()
                    .filter(|h| self.placement.knows(h))
                    .all(|h| failed.iter().any(|(n, _)| n == h));
            if answered.is_empty() || hints_failed {
                self.stats.load_failures.fetch_add(1, Relaxed);
                let (node, error) = failed
                    .into_iter()
                    .next()
                    .map(|(n, e)| (n.to_owned(), e))
                    .unwrap_or_else(|| (String::new(), crate::Error::NoNodeAvailable));
                tracing::error!(node, error = %error, "session could not be read: no node that may hold it answered");
                return Err(SessionError::Memcached(error));
            }
        }
        Ok(Fetched { latest, known })
    }

    fn decode(&self, node: &str, key: &SessionKey, bytes: &[u8]) -> Option<format::Versioned> {
        let started = std::time::Instant::now();
        match format::decode(bytes, key) {
            Ok(r) => {
                self.stats
                    .deserialization_us
                    .record_duration(started.elapsed());
                Some(r)
            }
            Err(e) => {
                self.stats.foreign_records.fetch_add(1, Relaxed);
                tracing::warn!(node, error = %e, "session record refused (garbage, foreign or unsupported format); treated as absent");
                None
            }
        }
    }

    // ----- writes ------------------------------------------------------------------

    /// Stores `record` (version `new_version`, based on `base`) on one node if the node
    /// holds nothing or a copy of version `<= base`.
    #[allow(clippy::too_many_arguments)]
    async fn write_copy(
        &self,
        node: &str,
        key: &SessionKey,
        record: &[u8],
        base: u64,
        new_version: u64,
        expiry: Expiry,
        known: &mut KnownCopies,
    ) -> Result<CopyWrite, crate::Error> {
        let client = self.node(node)?;
        let data_key = self.data_key(key);
        for _ in 0..COPY_ATTEMPTS {
            let state = match known.get(node) {
                Some(s) => s,
                None => match client.gets(&data_key).await? {
                    None => CopyState::Missing,
                    Some(item) => CopyState::Present {
                        version: format::decode(&item.value, key).map_or(0, |d| d.version),
                        cas: item.cas.unwrap_or(0),
                    },
                },
            };
            let (mode, cas) = match state {
                CopyState::Missing => (StoreMode::Add, None),
                CopyState::Present { version, .. } if version > base => {
                    known.set(node, state);
                    return Ok(CopyWrite::Newer { version });
                }
                CopyState::Present { cas, .. } => (StoreMode::Set, Some(cas)),
            };
            let options = StoreOptions {
                flags: flags_of(new_version),
                expiry,
                cas,
            };
            match client.store(mode, &data_key, record, options).await? {
                StoreOutcome::Stored => {
                    // The new CAS token is unknown: the next write reads it first.
                    known.forget(node);
                    return Ok(CopyWrite::Stored);
                }
                StoreOutcome::NotStored | StoreOutcome::Exists | StoreOutcome::NotFound => {
                    known.forget(node);
                }
            }
        }
        Err(crate::Error::Server(
            "session copy kept changing under a conditional write".into(),
        ))
    }

    /// Writes `record` as version `base + 1` to every copy of the placement, primary
    /// first, relocating away from nodes that fail, then removes the copies a relocation
    /// left behind. See the module's rules. Returns where the copies are now.
    pub(crate) async fn replicate(
        &self,
        key: &SessionKey,
        record: &mut [u8],
        base: u64,
        max_inactive: Duration,
        known: &mut KnownCopies,
    ) -> Result<Replicated, SessionError> {
        let new_version = base.saturating_add(1).min(TOMBSTONE_VERSION - 1);
        format::set_version(record, new_version);
        self.place_record(
            key,
            record,
            base,
            new_version,
            ttl(max_inactive),
            known,
            false,
        )
        .await
    }

    /// Makes every copy of the placement hold at least `version` (the session as it was
    /// read), without changing the version: the re-replication of a read-only request
    /// that found a copy missing or behind.
    pub(crate) async fn repair(
        &self,
        key: &SessionKey,
        record: &mut [u8],
        version: u64,
        max_inactive: Duration,
        known: &mut KnownCopies,
    ) -> Result<Replicated, SessionError> {
        format::set_version(record, version);
        self.place_record(
            key,
            record,
            version.saturating_sub(1),
            version,
            ttl(max_inactive),
            known,
            true,
        )
        .await
    }

    /// `repair`: a node already holding `new_version` counts as written (the same
    /// version is the same content when re-replicating what was read).
    #[allow(clippy::too_many_arguments)]
    async fn place_record(
        &self,
        key: &SessionKey,
        record: &[u8],
        base: u64,
        new_version: u64,
        expiry: Expiry,
        known: &mut KnownCopies,
        repair: bool,
    ) -> Result<Replicated, SessionError> {
        let mut exclude: Vec<String> = Vec::new();
        let mut written: Vec<String> = Vec::new();
        let mut last_error = None;
        'placement: for _ in 0..PLACEMENT_ATTEMPTS {
            let copies = self
                .copies(key, &exclude)
                .ok_or(SessionError::NoNodeAvailable)?;
            for node in copies.nodes() {
                if written.iter().any(|w| w == node) {
                    continue;
                }
                match self
                    .write_copy(node, key, record, base, new_version, expiry, known)
                    .await
                {
                    Ok(CopyWrite::Stored) => written.push(node.to_owned()),
                    Ok(CopyWrite::Newer { version }) if repair && version == new_version => {
                        written.push(node.to_owned())
                    }
                    Ok(CopyWrite::Newer { version }) => {
                        if !written.is_empty() && version != TOMBSTONE_VERSION {
                            // Another writer got to this copy first (instances disagreeing
                            // about which node is the primary): this write is refused, so
                            // its copies already stored must not stay visible.
                            self.roll_forward(key, node, &written, new_version, expiry)
                                .await;
                        }
                        return Ok(if version == TOMBSTONE_VERSION {
                            Replicated::Gone
                        } else {
                            Replicated::Conflict
                        });
                    }
                    Err(e) if e.is_node_failure() => {
                        self.stats.write_failures.fetch_add(1, Relaxed);
                        tracing::warn!(node, error = %e, "session copy write failed; placing the copy on another node");
                        exclude.push(node.to_owned());
                        last_error = Some(e);
                        continue 'placement;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            self.remove_stale(key, &copies, new_version, known).await;
            return Ok(Replicated::Written {
                copies,
                version: new_version,
            });
        }
        Err(last_error.map_or(SessionError::NoNodeAvailable, SessionError::Memcached))
    }

    /// Undoes the copies a refused write already stored on `written`: each is replaced,
    /// under its CAS token and only while it still holds `ours`, by the newer record
    /// found on `newer_node`. Best effort (a failure leaves two copies of one version
    /// until the next write of the session).
    async fn roll_forward(
        &self,
        key: &SessionKey,
        newer_node: &str,
        written: &[String],
        ours: u64,
        expiry: Expiry,
    ) {
        let newer = match self.node(newer_node) {
            Ok(c) => c.gets(self.data_key(key)).await,
            Err(e) => Err(e),
        };
        let Ok(Some(newer)) = newer else { return };
        let Ok(decoded) = format::decode(&newer.value, key) else {
            return;
        };
        for node in written {
            let Ok(client) = self.node(node) else {
                continue;
            };
            let Ok(Some(mine)) = client.gets(self.data_key(key)).await else {
                continue;
            };
            if format::decode(&mine.value, key).map_or(true, |d| d.version != ours) {
                continue;
            }
            let options = StoreOptions {
                flags: flags_of(decoded.version),
                expiry,
                cas: mine.cas,
            };
            let _ = client
                .store(StoreMode::Set, self.data_key(key), &newer.value, options)
                .await;
        }
        tracing::warn!(
            node = newer_node,
            "a refused write's copies were replaced by the newer copy found"
        );
    }

    /// Refreshes the validity of a session that was only read: `touch` of the record
    /// and a new validity record on every copy of the placement.
    pub(crate) async fn refresh(
        &self,
        key: &SessionKey,
        copies: &Copies,
        validity: &Validity,
        max_inactive: Duration,
    ) {
        let expiry = ttl(max_inactive);
        let encoded = validity.encode();
        let refreshes = copies.nodes().map(|node| {
            let encoded = &encoded;
            async move {
                let client = self.node(node)?;
                let (t, v) = futures::join!(
                    client.touch(self.data_key(key), expiry),
                    client.set(self.validity_key(key), encoded, expiry)
                );
                t.and(v).map(|_| ())
            }
        });
        for result in futures::future::join_all(refreshes).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "validity refresh of a session copy failed");
            }
        }
    }

    /// Invalidates a session: a tombstone `set` on every node of `nodes` (the nodes the
    /// read found or the id named) and of the current placement; the validity records
    /// are removed. Ok when the placement's nodes (at least one) hold the tombstone.
    pub(crate) async fn invalidate(
        &self,
        key: &SessionKey,
        nodes: &[String],
        invalidated_ms: u64,
        max_inactive: Duration,
    ) -> Result<(), SessionError> {
        let tombstone = format::encode_tombstone(key, TOMBSTONE_VERSION, invalidated_ms);
        let expiry = ttl(max_inactive.saturating_add(TOMBSTONE_MARGIN));
        let mut exclude: Vec<String> = Vec::new();
        let mut done: Vec<String> = Vec::new();
        let options = StoreOptions {
            flags: flags_of(TOMBSTONE_VERSION),
            expiry,
            cas: None,
        };
        let write = |node: String| {
            let tombstone = &tombstone;
            async move {
                let client = self.node(&node)?;
                let (t, _) = futures::join!(
                    client.store(StoreMode::Set, self.data_key(key), tombstone, options),
                    client.delete(self.validity_key(key))
                );
                t.map(|_| node)
            }
        };
        // Every usable node gets the tombstone, not only the copies' nodes: a copy the
        // session left on a node it moved off must not outlive the tombstones.
        let mut targets: Vec<String> = nodes.to_vec();
        for n in self.client.node_ids() {
            if self.usable(&n) && !targets.contains(&n) {
                targets.push(n);
            }
        }
        let mut last_error = None;
        let mut outcome = None;
        for _ in 0..PLACEMENT_ATTEMPTS {
            let copies = self.copies(key, &exclude);
            if let Some(c) = &copies {
                for n in c.nodes() {
                    if !targets.iter().any(|t| t == n) {
                        targets.push(n.to_owned());
                    }
                }
            }
            let batch: Vec<String> = targets
                .iter()
                .filter(|t| !done.contains(t) && !exclude.contains(t))
                .cloned()
                .collect();
            for result in futures::future::join_all(batch.into_iter().map(write)).await {
                match result {
                    Ok(node) => done.push(node),
                    Err(e) => {
                        tracing::warn!(error = %e, "tombstone not written on a node");
                        last_error = Some(e);
                    }
                }
            }
            for t in &targets {
                if !done.contains(t) && !exclude.contains(t) {
                    exclude.push(t.clone());
                }
            }
            match copies {
                Some(c) if c.nodes().all(|n| done.iter().any(|d| d == n)) => {
                    outcome = Some(Ok(()));
                    break;
                }
                Some(_) => continue,
                None if !done.is_empty() => {
                    outcome = Some(Ok(()));
                    break;
                }
                None => break,
            }
        }
        // A node that missed the tombstone (down, stopped, failing) may come back with
        // a copy: the nodes that hold the tombstone keep a hint for it (handoff.rs).
        let missed: Vec<String> = self
            .client
            .node_ids()
            .into_iter()
            .filter(|n| !done.contains(n))
            .collect();
        if !missed.is_empty() {
            let ttl_secs = max_inactive.saturating_add(TOMBSTONE_MARGIN).as_secs();
            self.record_hints(key, &missed, &done, invalidated_ms, ttl_secs)
                .await;
        }
        outcome.unwrap_or_else(|| {
            Err(last_error.map_or(SessionError::NoNodeAvailable, SessionError::Memcached))
        })
    }

    /// Read repair of an invalidation: a read found the tombstone as the latest copy and
    /// some node it read holds an older copy or nothing; the tombstone is set there too,
    /// so the tombstone does not thin out as nodes are replaced.
    async fn spread_tombstone(&self, key: &SessionKey, answered: &[&str], known: &KnownCopies) {
        let behind: Vec<&str> = answered
            .iter()
            .copied()
            .filter(|n| !known.holds(n, TOMBSTONE_VERSION))
            .collect();
        if behind.is_empty() {
            return;
        }
        let tombstone = format::encode_tombstone(key, TOMBSTONE_VERSION, 0);
        let options = StoreOptions {
            flags: flags_of(TOMBSTONE_VERSION),
            expiry: ttl(self.repair_ttl),
            cas: None,
        };
        let writes = behind.iter().map(|n| {
            let tombstone = &tombstone;
            async move {
                let client = self.node(n)?;
                client
                    .store(StoreMode::Add, self.data_key(key), tombstone, options)
                    .await
            }
        });
        for result in futures::future::join_all(writes).await {
            if let Err(e) = result {
                tracing::debug!(error = %e, "tombstone read repair failed on a node");
            }
        }
        // Nodes holding an older session copy: overwrite it under its CAS token.
        for n in behind {
            if let Some(CopyState::Present { version, cas }) = known.get(n) {
                if version < TOMBSTONE_VERSION {
                    if let Ok(client) = self.node(n) {
                        let options = StoreOptions {
                            cas: Some(cas),
                            ..options
                        };
                        let _ = client
                            .store(StoreMode::Set, self.data_key(key), &tombstone, options)
                            .await;
                    }
                }
            }
        }
    }

    /// Removes the copies a relocation left behind: on each node of `known` outside
    /// `copies` that holds a version up to `version`, the copy is made to expire at once
    /// under the CAS token it was read with (so a copy written meanwhile is left alone).
    /// Best effort: a copy left behind holds an older version and expires with its TTL,
    /// but removing it keeps it from outliving a later invalidation's tombstones.
    pub(crate) async fn remove_stale(
        &self,
        key: &SessionKey,
        copies: &Copies,
        version: u64,
        known: &KnownCopies,
    ) {
        let stale: Vec<(&str, u64)> = known
            .states
            .iter()
            .filter(|(n, _)| !copies.nodes().any(|c| c == n.as_str()))
            .filter_map(|(n, s)| match s {
                CopyState::Present { version: v, cas } if *v <= version => Some((n.as_str(), *cas)),
                _ => None,
            })
            .collect();
        let removals = stale.into_iter().map(|(node, cas)| async move {
            let client = self.node(node)?;
            let options = StoreOptions {
                flags: 0,
                expiry: Expiry::In(Duration::ZERO),
                cas: Some(cas),
            };
            client
                .store(StoreMode::Set, self.data_key(key), b"", options)
                .await
        });
        for result in futures::future::join_all(removals).await {
            if let Err(e) = result {
                tracing::debug!(error = %e, "stale session copy not removed; it expires with its TTL");
            }
        }
    }
}
