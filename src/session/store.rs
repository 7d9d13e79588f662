//! Storage on memcached: keys, placement of the primary and backup copies, writes,
//! reads with restore from the backup, validity refreshes, deletes.
//!
//! Keys (with the configured prefix `p`, `k` the id's random part):
//! `p k` (session record, primary node), `p validity:k` (validity record, primary node),
//! `p bak:k` and `p bak:validity:k` (the same on the backup node), `p lock:k` (the
//! non-sticky lock, on the key's lock node).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::{CasOutcome, Client, Expiry, NodeState};

use super::format::{self, Record, StoredSession, Validity};
use super::id::{SessionId, SessionKey};
use super::stats::SessionStats;
use super::SessionError;

/// Which copy of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Copy_ {
    Primary,
    Backup,
}

pub(crate) struct Keys {
    pub(crate) data: String,
    pub(crate) validity: String,
}

/// What a fetch found.
pub(crate) enum Fetched {
    Found {
        stored: StoredSession,
        /// Effective validity (the newer of the record's and the validity record's).
        validity: Validity,
        from_backup: bool,
        /// Cas token of the primary copy (only when read from the primary).
        cas: Option<u64>,
    },
    Tombstone,
    Missing,
}

/// The outcome of writing both copies.
pub(crate) struct WriteResult {
    pub(crate) primary: Result<(), crate::Error>,
    pub(crate) backup: Option<Result<(), crate::Error>>,
}

pub(crate) struct Store {
    client: Client,
    /// Node ids in configured order.
    nodes: Vec<String>,
    per_node: HashMap<String, Client>,
    failover: Vec<String>,
    prefix: String,
    stats: Arc<SessionStats>,
}

/// Node liveness as the client sees it.
struct Live<'a>(&'a Client);

impl Live<'_> {
    fn is(&self, id: &str) -> bool {
        match self.0.is_up(id) {
            Some(true) => true,
            // Not up: connecting (alive) or down?
            Some(false) => self
                .0
                .nodes()
                .iter()
                .any(|n| n.id == id && n.state != NodeState::Down),
            None => false,
        }
    }
}

pub(crate) fn ttl(d: Duration) -> Expiry {
    // memcached has a 1 s resolution; round up so the item never dies before the session.
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Expiry::In(Duration::from_secs(secs.max(1)))
}

impl Store {
    pub(crate) fn new(
        client: Client,
        failover: Vec<String>,
        prefix: String,
        stats: Arc<SessionStats>,
    ) -> Result<Self, SessionError> {
        let nodes = client.node_ids();
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
        for f in &failover {
            if !nodes.contains(f) {
                return Err(SessionError::config(
                    "failover_nodes",
                    format!("{f:?} is not a node of the client"),
                ));
            }
        }
        if nodes.is_empty() {
            return Err(SessionError::config("nodes", "the client has no node"));
        }
        Ok(Store {
            client,
            nodes,
            per_node,
            failover,
            prefix,
            stats,
        })
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn knows(&self, node: &str) -> bool {
        self.per_node.contains_key(node)
    }

    fn node(&self, id: &str) -> Result<&Client, SessionError> {
        self.per_node
            .get(id)
            .ok_or_else(|| SessionError::Memcached(crate::Error::UnknownNode(id.to_owned())))
    }

    pub(crate) fn is_failover(&self, id: &str) -> bool {
        self.failover.iter().any(|f| f == id)
    }

    /// Liveness of the nodes: anything but `Down` counts as alive (a node still
    /// connecting is given the benefit of the doubt; an operation that then fails
    /// excludes it explicitly).
    fn live(&self) -> Live<'_> {
        Live(&self.client)
    }

    pub(crate) fn alive(&self, id: &str) -> bool {
        self.live().is(id)
    }

    pub(crate) fn keys(&self, key: &SessionKey, copy: Copy_) -> Keys {
        let v = match copy {
            Copy_::Primary => "validity:",
            Copy_::Backup => "bak:validity:",
        };
        Keys {
            data: self.data_key(key, copy),
            validity: format!("{}{v}{key}", self.prefix),
        }
    }

    /// The key of the session record alone.
    pub(crate) fn data_key(&self, key: &SessionKey, copy: Copy_) -> String {
        let d = match copy {
            Copy_::Primary => "",
            Copy_::Backup => "bak:",
        };
        let mut out = String::with_capacity(self.prefix.len() + d.len() + 32);
        out.push_str(&self.prefix);
        out.push_str(d);
        use std::fmt::Write as _;
        let _ = write!(out, "{key}");
        out
    }

    pub(crate) fn lock_key(&self, key: &SessionKey) -> String {
        format!("{}lock:{key}", self.prefix)
    }

    /// Nodes in ring order starting at the key's spread position.
    fn ring_from(&self, start: usize) -> impl Iterator<Item = &String> {
        let n = self.nodes.len();
        (0..n).map(move |i| &self.nodes[(start + i) % n])
    }

    fn spread_start(&self, key: &SessionKey) -> usize {
        (key.spread() % self.nodes.len() as u64) as usize
    }

    /// The lock node of a key: the first live node on the ring from the key's position,
    /// independent of where the session is placed, so every instance locks on the same
    /// node even while the session moves.
    pub(crate) fn lock_nodes(&self, key: &SessionKey) -> Vec<String> {
        let start = self.spread_start(key);
        let up = self.live();
        let live: Vec<String> = self
            .ring_from(start)
            .filter(|n| up.is(n))
            .cloned()
            .collect();
        if live.is_empty() {
            self.ring_from(start).cloned().collect()
        } else {
            live
        }
    }

    /// The node after `primary` in configured order (the backup of ids that name none).
    pub(crate) fn next_node(&self, primary: &str) -> Option<String> {
        let i = self.nodes.iter().position(|n| n == primary)?;
        let next = &self.nodes[(i + 1) % self.nodes.len()];
        (next != primary).then(|| next.clone())
    }

    /// The primary node a new or relocated session gets: live, not a failover node unless
    /// no other node is up, preferably not `avoid` (the backup it keeps); spread by key.
    fn choose_primary(
        &self,
        live: &Live,
        key: &SessionKey,
        exclude: &[String],
        avoid: Option<&str>,
    ) -> Option<String> {
        let start = self.spread_start(key);
        let usable = |n: &&String| live.is(n) && !exclude.contains(n);
        let pick = |failover: bool, avoid: Option<&str>| {
            self.ring_from(start)
                .filter(usable)
                .filter(|n| self.is_failover(n) == failover)
                .find(|n| Some(n.as_str()) != avoid)
                .cloned()
        };
        pick(false, avoid)
            .or_else(|| pick(false, None))
            .or_else(|| pick(true, avoid))
            .or_else(|| pick(true, None))
    }

    /// The backup node for `primary`: the next live node after it in configured order.
    fn choose_backup(&self, live: &Live, primary: &str, exclude: &[String]) -> Option<String> {
        let i = self.nodes.iter().position(|n| n == primary).unwrap_or(0);
        self.ring_from(i + 1)
            .find(|n| n.as_str() != primary && live.is(n) && !exclude.contains(n))
            .cloned()
    }

    /// Placement of a new session.
    pub(crate) fn place_new(
        &self,
        key: SessionKey,
        route: Option<&str>,
    ) -> Result<SessionId, SessionError> {
        let live = self.live();
        let primary = self
            .choose_primary(&live, &key, &[], None)
            .ok_or(SessionError::NoNodeAvailable)?;
        let backup = self.choose_backup(&live, &primary, &[]);
        SessionId::new(key, primary, backup, route.map(str::to_owned))
    }

    /// The placement `id` should have now: `None` when it is fine as it is.
    pub(crate) fn replan(
        &self,
        id: &SessionId,
        exclude: &[String],
    ) -> Result<Option<SessionId>, SessionError> {
        let live = self.live();
        let usable = |n: &str| self.knows(n) && live.is(n) && !exclude.iter().any(|e| e == n);
        let any_primary_up = self.nodes.iter().any(|n| !self.is_failover(n) && usable(n));
        let primary_ok = usable(id.node()) && (!self.is_failover(id.node()) || !any_primary_up);
        let primary = if primary_ok {
            id.node().to_owned()
        } else {
            self.choose_primary(&live, &id.key(), exclude, id.backup())
                .ok_or(SessionError::NoNodeAvailable)?
        };
        let backup = match id.backup() {
            Some(b) if b != primary && usable(b) => Some(b.to_owned()),
            _ => self.choose_backup(&live, &primary, exclude),
        };
        if primary == id.node() && backup.as_deref() == id.backup() {
            Ok(None)
        } else {
            Ok(Some(id.with_nodes(&primary, backup.as_deref())))
        }
    }

    /// Reads one copy: the record (with its cas) and the validity record.
    async fn fetch_copy(
        &self,
        node: &str,
        key: &SessionKey,
        copy: Copy_,
    ) -> Result<Option<(bytes::Bytes, Option<u64>, Option<bytes::Bytes>)>, crate::Error> {
        let Some(client) = self.per_node.get(node) else {
            return Ok(None);
        };
        let keys = self.keys(key, copy);
        let (data, validity) = futures::join!(client.gets(&keys.data), client.get(&keys.validity));
        let Some(item) = data? else {
            return Ok(None);
        };
        // A failed validity read only costs precision: the record carries validity too.
        let validity = validity.ok().flatten().map(|i| i.value);
        Ok(Some((item.value, item.cas, validity)))
    }

    fn decode_copy(
        &self,
        key: &SessionKey,
        node: &str,
        raw: &(bytes::Bytes, Option<u64>, Option<bytes::Bytes>),
    ) -> Option<Result<(Record, Option<Validity>), ()>> {
        let started = std::time::Instant::now();
        let record = match format::decode(&raw.0, key) {
            Ok(r) => r,
            Err(e) => {
                self.stats.foreign_records.fetch_add(1, Relaxed);
                tracing::warn!(node, error = %e, "session record refused (garbage, foreign or unsupported format); treated as absent");
                return Some(Err(()));
            }
        };
        self.stats
            .deserialization_us
            .record_duration(started.elapsed());
        let validity = raw.2.as_ref().and_then(|v| Validity::decode(v).ok());
        Some(Ok((record, validity)))
    }

    /// Reads a session: the primary copy, else (node down, miss, refused record) the
    /// backup copy.
    pub(crate) async fn fetch(&self, id: &SessionId) -> Result<Fetched, SessionError> {
        let key = id.key();
        let mut primary_error = None;
        match self.fetch_copy(id.node(), &key, Copy_::Primary).await {
            Ok(Some(raw)) => {
                if let Some(Ok((record, validity))) = self.decode_copy(&key, id.node(), &raw) {
                    return Ok(found(record, validity, false, raw.1));
                }
            }
            Ok(None) => {}
            Err(e) if e.is_node_failure() => {
                tracing::warn!(node = id.node(), error = %e, "primary session node failed; reading the backup copy");
                primary_error = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
        let backup = match id.backup() {
            Some(b) => Some(b.to_owned()),
            None => self.next_node(id.node()),
        };
        let Some(backup) = backup else {
            return match primary_error {
                Some(e) => Err(e.into()),
                None => Ok(Fetched::Missing),
            };
        };
        match self.fetch_copy(&backup, &key, Copy_::Backup).await {
            Ok(Some(raw)) => match self.decode_copy(&key, &backup, &raw) {
                Some(Ok((record, validity))) => Ok(found(record, validity, true, None)),
                _ => Ok(Fetched::Missing),
            },
            Ok(None) => Ok(Fetched::Missing),
            Err(e) if e.is_node_failure() => match primary_error {
                Some(pe) => {
                    tracing::error!(primary = id.node(), backup = %backup, "both copies of a session are unreachable");
                    Err(pe.into())
                }
                None => Ok(Fetched::Missing),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Writes both copies concurrently. `cas`: write the primary only if unchanged since
    /// it was read.
    pub(crate) async fn write(
        &self,
        id: &SessionId,
        bytes: &[u8],
        max_inactive: Duration,
        cas: Option<u64>,
    ) -> Result<WriteResult, SessionError> {
        let key = id.key();
        let expiry = ttl(max_inactive);
        let p_key = self.data_key(&key, Copy_::Primary);
        let primary_client = self.node(id.node())?;
        let primary = async {
            match cas {
                Some(token) => match primary_client.cas(&p_key, bytes, expiry, token).await? {
                    CasOutcome::Stored => Ok(Ok(())),
                    _ => Ok(Err(SessionError::Conflict)),
                },
                None => primary_client.set(&p_key, bytes, expiry).await.map(Ok),
            }
        };
        let backup = async {
            match id.backup().and_then(|b| self.per_node.get(b)) {
                Some(c) => Some(
                    c.set(self.data_key(&key, Copy_::Backup), bytes, expiry)
                        .await,
                ),
                None => None,
            }
        };
        let (p, b) = futures::join!(primary, backup);
        let primary = match p {
            Ok(Ok(())) => Ok(()),
            Ok(Err(conflict)) => return Err(conflict),
            Err(e) => Err(e),
        };
        Ok(WriteResult { primary, backup: b })
    }

    /// Refreshes a session that was only read: `touch` of both records (TTL), and a new
    /// validity record on both nodes. Returns whether the primary record still exists
    /// (`Err` on a node failure of the primary).
    pub(crate) async fn refresh(
        &self,
        id: &SessionId,
        validity: &Validity,
        max_inactive: Duration,
    ) -> Result<bool, crate::Error> {
        let key = id.key();
        let expiry = ttl(max_inactive);
        let encoded = validity.encode();
        let primary = async {
            let keys = self.keys(&key, Copy_::Primary);
            let Some(c) = self.per_node.get(id.node()) else {
                return Ok(false);
            };
            let (t, v) = futures::join!(
                c.touch(&keys.data, expiry),
                c.set(&keys.validity, &encoded, expiry)
            );
            v?;
            t
        };
        let backup = async {
            if let Some(c) = id.backup().and_then(|b| self.per_node.get(b)) {
                let keys = self.keys(&key, Copy_::Backup);
                let (t, v) = futures::join!(
                    c.touch(&keys.data, expiry),
                    c.set(&keys.validity, &encoded, expiry)
                );
                if let Err(e) = t.and(v) {
                    tracing::warn!(node = id.backup(), error = %e, "validity refresh of the backup copy failed");
                }
            }
        };
        let (p, ()) = futures::join!(primary, backup);
        p
    }

    /// Removes every copy of a session. If the backup copy could not be removed, a
    /// tombstone on the primary stops any instance from restoring it.
    pub(crate) async fn delete_all(&self, id: &SessionId) {
        let key = id.key();
        let backup_ok = match id.backup().and_then(|b| self.per_node.get(b)) {
            Some(c) => {
                let keys = self.keys(&key, Copy_::Backup);
                let (a, b) = futures::join!(c.delete(&keys.data), c.delete(&keys.validity));
                a.and(b).is_ok()
            }
            None => true,
        };
        if let Some(c) = self.per_node.get(id.node()) {
            let keys = self.keys(&key, Copy_::Primary);
            let data = if backup_ok {
                c.delete(&keys.data).await.map(|_| ())
            } else {
                tracing::warn!(
                    backup = id.backup(),
                    "backup copy of an invalidated session not removed; writing a tombstone"
                );
                c.set(
                    &keys.data,
                    format::encode_tombstone(&key),
                    ttl(Duration::from_secs(24 * 3600)),
                )
                .await
            };
            let validity = c.delete(&keys.validity).await;
            if let Err(e) = data.and(validity.map(|_| ())) {
                tracing::warn!(node = id.node(), error = %e, "primary copy of an invalidated session not removed");
            }
        }
    }

    /// Best-effort removal of copies a relocation left behind (nodes not in `new`).
    pub(crate) async fn delete_stale(&self, old: &SessionId, new: &SessionId) {
        let key = old.key();
        let in_new = |n: &str| n == new.node() || Some(n) == new.backup();
        if !in_new(old.node()) && self.alive(old.node()) {
            if let Some(c) = self.per_node.get(old.node()) {
                let keys = self.keys(&key, Copy_::Primary);
                let _ = futures::join!(c.delete(&keys.data), c.delete(&keys.validity));
            }
        }
        if let Some(b) = old.backup() {
            if !in_new(b) && self.alive(b) {
                if let Some(c) = self.per_node.get(b) {
                    let keys = self.keys(&key, Copy_::Backup);
                    let _ = futures::join!(c.delete(&keys.data), c.delete(&keys.validity));
                }
            }
        }
        // A relocated primary that became the backup node keeps a stale primary record
        // under the primary key; it is harmless (ids name the node and copy to read), but
        // remove it when that node is the new backup.
        if new.backup() == Some(old.node()) {
            if let Some(c) = self.per_node.get(old.node()) {
                let keys = self.keys(&key, Copy_::Primary);
                let _ = futures::join!(c.delete(&keys.data), c.delete(&keys.validity));
            }
        }
    }

    /// `add`s the lock key; true when acquired.
    pub(crate) async fn try_lock(
        &self,
        node: &str,
        key: &SessionKey,
        token: &str,
        expiry: Duration,
    ) -> Result<bool, crate::Error> {
        match self.per_node.get(node) {
            Some(c) => c.add(self.lock_key(key), token, ttl(expiry)).await,
            None => Err(crate::Error::UnknownNode(node.to_owned())),
        }
    }

    /// Deletes the lock key if it still holds `token`.
    pub(crate) async fn unlock(&self, node: &str, key: &SessionKey, token: &str) {
        let Some(c) = self.per_node.get(node) else {
            return;
        };
        let lock_key = self.lock_key(key);
        match c.get(&lock_key).await {
            Ok(Some(item)) if item.value.as_ref() == token.as_bytes() => {
                if let Err(e) = c.delete(&lock_key).await {
                    tracing::warn!(node, error = %e, "session lock not released; it expires on its own");
                }
            }
            Ok(_) => {
                tracing::warn!(
                    node,
                    "session lock had expired or was taken over before release"
                );
            }
            Err(e) => {
                tracing::warn!(node, error = %e, "session lock not released; it expires on its own")
            }
        }
    }
}

fn found(
    record: Record,
    validity: Option<Validity>,
    from_backup: bool,
    cas: Option<u64>,
) -> Fetched {
    match record {
        Record::Tombstone => Fetched::Tombstone,
        Record::Session(stored) => {
            let mut effective = stored.validity;
            if let Some(v) = validity {
                if v.last_access_ms > effective.last_access_ms {
                    effective = v;
                }
            }
            Fetched::Found {
                stored,
                validity: effective,
                from_backup,
                cas: if from_backup { None } else { cas },
            }
        }
    }
}
