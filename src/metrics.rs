//! Export through the [`metrics`] facade (feature `metrics`), so any `metrics` exporter
//! (Prometheus, OpenTelemetry, StatsD, ...) publishes memkeep's numbers.
//!
//! Two kinds of metric, every one documented with what to do when it moves in
//! `docs/operations.md`, "Metrics":
//!
//! * **Recorded as they happen** (histograms): each node's operation latency
//!   (`memkeep_node_operation_duration_seconds{node, address}`), recorded by the client on
//!   every request/reply operation, and the session layer's load, save, encode and
//!   decode times, session sizes, lock waits and async write lag
//!   (`memkeep_session_*_seconds`, `memkeep_session_size_bytes`). Their handles are taken
//!   when the client or the session service/store is built: **install the recorder
//!   first** (as with other libraries that cache metric handles).
//! * **Published** (counters and gauges) by a [`Publisher`] from the counters the client
//!   and the session layer keep anyway ([`Client::nodes`], [`StatsSnapshot`]): call
//!   [`Publisher::publish`] before each scrape, or [`Publisher::spawn`] to publish every
//!   period.
//!
//! ```no_run
//! # async fn demo(client: memkeep::Client, service: memkeep::session::BackupSessionService) {
//! use std::time::Duration;
//! use memkeep::metrics::Publisher;
//!
//! // (install a recorder first, e.g. metrics-exporter-prometheus, then build the client)
//! let publisher = Publisher::new()
//!     .client(client)
//!     .session_service("web", service);
//! let task = publisher.spawn(Duration::from_secs(10));
//! # let _ = task;
//! # }
//! ```
//!
//! Without the feature none of this is compiled, and the client's hot path has no hook.

use std::sync::Arc;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

use crate::session::stats::names;
use crate::session::{BackupSessionService, StatsSnapshot};
use crate::{Client, NodeState};

/// Operation latency per node, seconds (histogram; labels `node`, `address`).
pub const NODE_OPERATION_DURATION: &str = "memkeep_node_operation_duration_seconds";
/// Operations completed per node (counter; labels `node`, `address`).
pub const NODE_OPERATIONS: &str = "memkeep_node_operations_total";
/// Operations that ended in an error, timeouts included (counter).
pub const NODE_ERRORS: &str = "memkeep_node_errors_total";
/// Operations that timed out (counter).
pub const NODE_TIMEOUTS: &str = "memkeep_node_timeouts_total";
/// Connections re-established after a failure (counter).
pub const NODE_RECONNECTS: &str = "memkeep_node_reconnects_total";
/// Replies that violated the protocol (counter).
pub const NODE_PROTOCOL_ERRORS: &str = "memkeep_node_protocol_errors_total";
/// Fire-and-forget requests the server reported as failed (counter).
pub const NODE_QUIET_FAILURES: &str = "memkeep_node_quiet_failures_total";
/// Requests sent and not yet answered (gauge).
pub const NODE_IN_FLIGHT: &str = "memkeep_node_in_flight_requests";
/// 1 while the client sees the node up, 0 while connecting or down (gauge).
pub const NODE_UP: &str = "memkeep_node_up";

/// The prefix of the session counters: `memkeep_session_<counter>_total`, one per
/// [`StatsSnapshot::counters`] entry (label `store`).
pub const SESSION_COUNTER_PREFIX: &str = "memkeep_session_";

/// The operation latency histogram of a node (taken when the client is built).
pub(crate) fn node_latency(id: &str, address: &str) -> metrics::Histogram {
    metrics::histogram!(
        NODE_OPERATION_DURATION,
        "node" => id.to_owned(),
        "address" => address.to_owned()
    )
}

type StatsSource = Arc<dyn Fn() -> StatsSnapshot + Send + Sync>;

/// Publishes the counters of clients and session services/stores to the installed
/// `metrics` recorder. Cheap to clone.
#[derive(Clone, Default)]
pub struct Publisher {
    clients: Vec<Client>,
    sessions: Vec<(String, StatsSource)>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("clients", &self.clients.len())
            .field(
                "sessions",
                &self.sessions.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Publisher {
    /// A publisher with nothing to publish yet.
    pub fn new() -> Self {
        Publisher::default()
    }

    /// Publishes `client`'s per-node counters (labels `node`, `address`).
    pub fn client(mut self, client: Client) -> Self {
        self.clients.push(client);
        self
    }

    /// Publishes the session statistics `stats` returns, with label `store = name`
    /// (for instance a store adapter's `stats()`).
    pub fn session_stats(
        mut self,
        name: impl Into<String>,
        stats: impl Fn() -> StatsSnapshot + Send + Sync + 'static,
    ) -> Self {
        self.sessions.push((name.into(), Arc::new(stats)));
        self
    }

    /// Publishes `service`'s session statistics with label `store = name` (its client's
    /// counters: add [`BackupSessionService::client`] with [`Publisher::client`]).
    pub fn session_service(self, name: impl Into<String>, service: BackupSessionService) -> Self {
        self.session_stats(name, move || service.stats())
    }

    /// Describes every metric (name, unit, help) and sets the counters and gauges to
    /// their current values.
    pub fn publish(&self) {
        describe();
        for client in &self.clients {
            for node in client.nodes() {
                let labels = [("node", node.id.clone()), ("address", node.address.clone())];
                let m = &node.metrics;
                for (name, value) in [
                    (NODE_OPERATIONS, m.operations),
                    (NODE_ERRORS, m.errors),
                    (NODE_TIMEOUTS, m.timeouts),
                    (NODE_RECONNECTS, m.reconnects),
                    (NODE_PROTOCOL_ERRORS, m.protocol_errors),
                    (NODE_QUIET_FAILURES, m.quiet_failures),
                ] {
                    metrics::counter!(name, &labels).absolute(value);
                }
                metrics::gauge!(NODE_IN_FLIGHT, &labels).set(m.in_flight as f64);
                let up = if node.state == NodeState::Up {
                    1.0
                } else {
                    0.0
                };
                metrics::gauge!(NODE_UP, &labels).set(up);
            }
        }
        for (store, stats) in &self.sessions {
            let labels = [("store", store.clone())];
            for (counter, value) in stats().counters() {
                metrics::counter!(session_counter_name(counter), &labels).absolute(value);
            }
        }
    }

    /// Publishes now and then every `period`, until the returned task is aborted (must
    /// run inside a tokio runtime).
    pub fn spawn(self, period: Duration) -> tokio::task::JoinHandle<()> {
        let period = period.max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                self.publish();
                tokio::time::sleep(period).await;
            }
        })
    }
}

/// `memkeep_session_<counter>_total`.
pub fn session_counter_name(counter: &str) -> String {
    format!("{SESSION_COUNTER_PREFIX}{counter}_total")
}

/// Describes every metric memkeep exports to the installed recorder (done by
/// [`Publisher::publish`]).
pub fn describe() {
    describe_histogram!(
        NODE_OPERATION_DURATION,
        Unit::Seconds,
        "memcached operation latency per node, from the call to the reply (queueing included)"
    );
    describe_counter!(
        NODE_OPERATIONS,
        Unit::Count,
        "operations completed per node"
    );
    describe_counter!(
        NODE_ERRORS,
        Unit::Count,
        "operations that ended in an error, timeouts included"
    );
    describe_counter!(NODE_TIMEOUTS, Unit::Count, "operations that timed out");
    describe_counter!(
        NODE_RECONNECTS,
        Unit::Count,
        "connections re-established after a failure"
    );
    describe_counter!(
        NODE_PROTOCOL_ERRORS,
        Unit::Count,
        "replies that violated the protocol"
    );
    describe_counter!(
        NODE_QUIET_FAILURES,
        Unit::Count,
        "fire-and-forget requests the server reported as failed"
    );
    describe_gauge!(
        NODE_IN_FLIGHT,
        Unit::Count,
        "requests sent and not yet answered"
    );
    describe_gauge!(NODE_UP, Unit::Count, "1 while the client sees the node up");
    describe_histogram!(
        names::LOAD_DURATION,
        Unit::Seconds,
        "time to read a session from memcached"
    );
    describe_histogram!(
        names::SAVE_DURATION,
        Unit::Seconds,
        "time to write a session's copies to memcached"
    );
    describe_histogram!(
        names::SERIALIZATION_DURATION,
        Unit::Seconds,
        "time to encode a session"
    );
    describe_histogram!(
        names::DESERIALIZATION_DURATION,
        Unit::Seconds,
        "time to decode a session record"
    );
    describe_histogram!(
        names::SESSION_SIZE,
        Unit::Bytes,
        "size of the encoded sessions written"
    );
    describe_histogram!(
        names::LOCK_WAIT_DURATION,
        Unit::Seconds,
        "time spent waiting for session locks"
    );
    describe_histogram!(
        names::ASYNC_LAG,
        Unit::Seconds,
        "async mode: time from queueing a write to its acknowledgement"
    );
    for (counter, _) in StatsSnapshot::default().counters() {
        describe_counter!(
            session_counter_name(counter),
            Unit::Count,
            "session statistic (docs/session.md, Statistics)"
        );
    }
}
