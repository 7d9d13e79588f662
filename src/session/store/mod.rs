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
//! * **A tombstone replaces any session copy and is replaced by nothing**
//!   ([`Store::put_tombstone`]): it is stored on every node that may hold a copy,
//!   conditionally (`add`, or `cas` over the copy read), so a tombstone already there -
//!   possibly a retirement naming the key a rotated session moved to - stays, and an
//!   invalidation that finds a successor invalidates it too (the engine follows it).
//! * A save is acknowledged only when every copy of the placement acknowledged it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::{Client, Expiry, NodeState};

mod handoff;
mod locks;
mod node;
mod principal;
mod read;
pub(crate) mod rereplicate;
mod retire;
mod tombstone;

pub(crate) use tombstone::Invalidation;
mod write;

pub(crate) use handoff::HANDOFF_PERIOD;
pub(crate) use node::{Cas, Node};

use super::format::{self, Record, StoredSession, Validity};
use super::id::{SessionId, SessionKey};
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
    Present { version: u64, cas: Cas },
}

impl CopyState {
    /// The token to write over this state with ([`Node::store_over`]).
    fn token(self) -> Option<Cas> {
        match self {
            CopyState::Missing => None,
            CopyState::Present { cas, .. } => Some(cas),
        }
    }
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

    /// The nodes known to hold no record (they answered a read with nothing).
    pub(crate) fn missing(&self) -> Vec<String> {
        self.states
            .iter()
            .filter(|(_, s)| **s == CopyState::Missing)
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn get(&self, node: &str) -> Option<CopyState> {
        match self.states.get(node) {
            Some(s) => Some(*s),
            None if self.fresh => Some(CopyState::Missing),
            None => None,
        }
    }

    /// True for a brand-new key ([`KnownCopies::fresh`]) not written yet.
    fn is_fresh(&self) -> bool {
        self.fresh
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
    /// The session was invalidated (or its key retired by an id rotation to
    /// `successor`).
    Tombstone {
        /// See [`Record::Tombstone`].
        successor: Option<SessionKey>,
    },
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
    /// Stored; `created`: on a node that held no record of the key (`add`).
    Stored { created: bool },
    /// The node holds a copy of `version`, newer than the write's base.
    Newer { version: u64 },
}

/// The replicated store of one service.
pub(crate) struct Store {
    client: Client,
    /// Every node by id (the client's nodes; with the peer backend, this instance's own
    /// endpoint is reached in process: [`Store::with_local`]).
    per_node: HashMap<String, Node>,
    placement: Placement,
    prefix: String,
    stats: Arc<SessionStats>,
    /// The TTL of a tombstone spread by read repair (the configured max inactive
    /// interval plus the margin: the session's own interval is not in the tombstone).
    repair_ttl: Duration,
}

/// True for a value a node refuses as larger than its item size limit (ours or the
/// server's `-I`).
pub(crate) fn is_too_large(e: &crate::Error) -> bool {
    match e {
        crate::Error::ValueTooLarge { .. } => true,
        crate::Error::Server(msg) => msg.contains("too large"),
        _ => false,
    }
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
            per_node.insert(id.clone(), Node::Remote(client.on_node(id)?));
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

    /// The same store with `n` copies per session (the peer backend's `backups`).
    pub(crate) fn with_copies(mut self, n: usize) -> Self {
        self.placement = self.placement.with_copies(n);
        self
    }

    /// The same store reaching node `id` (this instance's own peer endpoint) in process
    /// instead of through the client: the owner's own copies cost no network.
    pub(crate) fn with_local(mut self, id: &str, local: crate::session::peer::LocalCopies) -> Self {
        if let Some(node) = self.per_node.get_mut(id) {
            *node = Node::Local(local);
        }
        self
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn knows(&self, node: &str) -> bool {
        self.per_node.contains_key(node)
    }

    /// `id` with its unknown node fields dropped: the configured one it names, else the
    /// first node of the key's order, as the primary hint; the route kept.
    pub(crate) fn without_unknown_hints(&self, id: &SessionId) -> Option<SessionId> {
        let key = id.key();
        let primary = [Some(id.node()), id.backup()]
            .into_iter()
            .flatten()
            .find(|n| self.knows(n))
            .map(str::to_owned)
            .or_else(|| self.placement.order(&key).first().map(|n| (*n).to_owned()))?;
        SessionId::new(key, primary, None, id.route().map(str::to_owned)).ok()
    }

    /// Anything but `Down` is usable: a node still connecting gets the benefit of the
    /// doubt (an operation that then fails excludes it explicitly). This instance's own
    /// endpoint, reached in process, always is.
    fn usable(&self, id: &str) -> bool {
        self.is_local(id)
            || self
                .client
                .node_state(id)
                .is_some_and(|s| s != NodeState::Down)
    }

    /// True when node `id` is up (the in-process node always is).
    pub(super) fn is_up(&self, id: &str) -> bool {
        self.is_local(id) || self.client.node_state(id) == Some(NodeState::Up)
    }

    fn is_local(&self, id: &str) -> bool {
        self.per_node.get(id).is_some_and(Node::is_local)
    }

    /// The configured nodes outside `reached`: those that missed a write meant for every
    /// node (a tombstone, a principal generation), to get it by hint.
    fn missed_by(&self, reached: &[String]) -> Vec<String> {
        self.client
            .node_ids()
            .into_iter()
            .filter(|n| !reached.contains(n))
            .collect()
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

    fn node(&self, id: &str) -> Result<&Node, crate::Error> {
        self.per_node
            .get(id)
            .ok_or_else(|| crate::Error::UnknownNode(id.to_owned()))
    }

    // ----- reads -------------------------------------------------------------------
}
