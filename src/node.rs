//! What the client knows about each memcached node: its health and its counters.
//!
//! Connection drivers write the state; the client reads it to route requests and
//! exposes it through `Client::nodes` and `Client::metrics`.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Health of a node (or of one of its connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NodeState {
    /// A connection attempt is under way; requests wait for it (within their timeout).
    Connecting,
    /// At least one connection is established and answering.
    Up,
    /// No connection; the client is waiting out a reconnect backoff. Requests for the
    /// node follow the failure policy.
    Down,
}

impl NodeState {
    fn to_u8(self) -> u8 {
        match self {
            NodeState::Connecting => 0,
            NodeState::Up => 1,
            NodeState::Down => 2,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => NodeState::Up,
            2 => NodeState::Down,
            _ => NodeState::Connecting,
        }
    }
}

/// Counters of one node, shared by its connections and the client.
#[derive(Debug, Default)]
pub(crate) struct NodeCounters {
    pub(crate) operations: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) quiet_failures: AtomicU64,
    pub(crate) in_flight: AtomicU64,
}

impl NodeCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Shared state of one node.
#[derive(Debug)]
pub(crate) struct NodeShared {
    pub(crate) id: Arc<str>,
    pub(crate) address: String,
    pub(crate) counters: NodeCounters,
    /// The node's operation latency histogram (feature `metrics`).
    #[cfg(feature = "metrics")]
    pub(crate) latency: metrics::Histogram,
    conn_states: Vec<AtomicU8>,
    /// The node's state for the hot path (read on every routed request).
    current: AtomicU8,
    /// The same state, for callers that wait for a change.
    state: watch::Sender<NodeState>,
    /// Connection attempts finished (successful or not), for callers that wait for the
    /// outcome of one.
    attempts: watch::Sender<u64>,
    /// Why the last connection attempt failed or the last connection ended.
    last_error: Mutex<Option<String>>,
    /// The connection epoch: moves every time one of the node's connections is
    /// established or ends (see [`NodeShared::epoch`]).
    epoch: AtomicU64,
}

impl NodeShared {
    pub(crate) fn new(id: Arc<str>, address: String, connections: usize) -> Self {
        Self {
            #[cfg(feature = "metrics")]
            latency: crate::metrics::node_latency(&id, &address),
            id,
            address,
            counters: NodeCounters::default(),
            conn_states: (0..connections)
                .map(|_| AtomicU8::new(NodeState::Connecting.to_u8()))
                .collect(),
            current: AtomicU8::new(NodeState::Connecting.to_u8()),
            state: watch::Sender::new(NodeState::Connecting),
            attempts: watch::Sender::new(0),
            last_error: Mutex::new(None),
            epoch: AtomicU64::new(0),
        }
    }

    /// The node's connection epoch. It moves before a new connection serves its first
    /// request and when a connection ends, so a request written while the epoch still
    /// equals the one sampled before an earlier read goes to a connection that existed
    /// at that read: the same server process. A memcached restarted empty counts CAS
    /// tokens from 1 again, so a token is only meaningful within the epoch it was read
    /// in (see `Request::epoch`).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Records why a connection attempt failed or a connection ended.
    pub(crate) fn set_last_error(&self, reason: &str) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(reason.to_string());
        }
    }

    /// Why the last connection attempt failed or the last connection ended, if ever.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }

    /// Notes the end of a connection attempt (after its state was recorded).
    pub(crate) fn attempt_finished(&self) {
        self.attempts.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn watch_attempts(&self) -> watch::Receiver<u64> {
        self.attempts.subscribe()
    }

    /// Records the state of connection `slot` and recomputes the node's.
    pub(crate) fn set_connection_state(&self, slot: usize, state: NodeState) {
        if let Some(cell) = self.conn_states.get(slot) {
            let previous = NodeState::from_u8(cell.swap(state.to_u8(), Ordering::AcqRel));
            // A connection established or ended moves the epoch; a failed attempt does
            // not (no token was read over it), so it never refuses a token needlessly.
            if state == NodeState::Up || previous == NodeState::Up {
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
        let states = || {
            self.conn_states
                .iter()
                .map(|c| NodeState::from_u8(c.load(Ordering::Acquire)))
        };
        let node = if states().any(|s| s == NodeState::Up) {
            NodeState::Up
        } else if states().any(|s| s == NodeState::Connecting) {
            NodeState::Connecting
        } else {
            NodeState::Down
        };
        self.state.send_if_modified(|current| {
            if *current == node {
                return false;
            }
            self.current.store(node.to_u8(), Ordering::Release);
            match node {
                NodeState::Up => tracing::info!(node = %self.id, "memcached node is up"),
                NodeState::Down => tracing::warn!(node = %self.id, "memcached node is down"),
                NodeState::Connecting => {}
            }
            *current = node;
            true
        });
    }

    pub(crate) fn state(&self) -> NodeState {
        NodeState::from_u8(self.current.load(Ordering::Acquire))
    }

    /// True when requests may be sent: up, or connecting (they wait for the
    /// connection within their timeout).
    pub(crate) fn is_available(&self) -> bool {
        self.state() != NodeState::Down
    }

    pub(crate) fn watch_state(&self) -> watch::Receiver<NodeState> {
        self.state.subscribe()
    }
}
