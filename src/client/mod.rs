//! The client: routing keys to nodes, applying the failure policy, and the operations.

mod config;
mod stampede;
#[cfg(feature = "tls")]
mod tls;
mod types;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::connection::{ConnectionHandle, Request, RequestKind};
use crate::error::UnavailableNode;
use crate::locator::NodeLocator;
use crate::node::{NodeCounters, NodeShared, NodeState};
use crate::protocol::outcome::{self, Interpreted, Refusal, StoreStatus, Value};
use crate::protocol::{self, validate_key, Command, ErrorKind, KeyForm, Reply, StoreMode};
use crate::{Error, Result};

/// Stands in for a deadline that `Instant` can't represent (an operation timeout of
/// `Duration::MAX`).
const FAR_FUTURE: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

pub use crate::protocol::RecacheFlags;
pub use config::{ClientBuilder, FailurePolicy, NodeConfig, Protocol};
pub use stampede::{ComputeError, ComputeOptions, ComputeSource, Computed};
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tls::TlsConfig;
pub use types::{
    CasOutcome, Credentials, Expiry, GetOptions, Item, Metrics, NodeStatus, StoreOptions,
    StoreOutcome,
};

/// An async memcached client over a set of nodes.
///
/// Cheap to clone (the clones share connections) and safe to use from many tasks at
/// once: concurrent operations on one node share its pipelined connection. Every
/// operation is bounded by the operation timeout, and dropping an operation's future
/// at any point is safe: no other caller ever receives its reply.
///
/// ```no_run
/// # async fn demo() -> memkeep::Result<()> {
/// use memkeep::{Client, Expiry};
/// use std::time::Duration;
///
/// let client = Client::builder().node("127.0.0.1:11211").build()?;
/// client.set("greeting", "hello", Expiry::In(Duration::from_secs(60))).await?;
/// let item = client.get("greeting").await?;
/// assert_eq!(item.map(|i| i.value), Some("hello".into()));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Set by [`Client::on_node`]: every keyed operation goes to this node.
    pinned: Option<usize>,
}

#[derive(Debug)]
struct Inner {
    nodes: Vec<Node>,
    locator: Arc<dyn NodeLocator>,
    protocol: Protocol,
    policy: FailurePolicy,
    operation_timeout: Duration,
    max_value_size: usize,
    merge_gets: bool,
}

#[derive(Debug)]
struct Node {
    shared: Arc<NodeShared>,
    connections: Vec<ConnectionHandle>,
    next: AtomicUsize,
}

impl Node {
    fn new(shared: Arc<NodeShared>, connections: Vec<ConnectionHandle>) -> Self {
        Self {
            shared,
            connections,
            next: AtomicUsize::new(0),
        }
    }

    fn connection(&self) -> &ConnectionHandle {
        let n = self.connections.len();
        let i = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        &self.connections[i]
    }

    /// Asks every connection waiting out a backoff to try again soon.
    fn revive(&self) {
        for connection in &self.connections {
            connection.revive();
        }
    }

    /// Asks for a reconnect attempt and waits, until `deadline`, for one to finish; true
    /// when the node can take requests afterwards.
    async fn await_attempt(&self, deadline: Instant) -> bool {
        let mut attempts = self.shared.watch_attempts();
        let seen = *attempts.borrow_and_update();
        self.revive();
        let _ = tokio::time::timeout_at(deadline, attempts.wait_for(|n| *n != seen)).await;
        self.shared.is_available()
    }

    fn metrics(&self) -> Metrics {
        let c = &self.shared.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Metrics {
            operations: get(&c.operations),
            errors: get(&c.errors),
            timeouts: get(&c.timeouts),
            reconnects: get(&c.reconnects),
            protocol_errors: get(&c.protocol_errors),
            quiet_failures: get(&c.quiet_failures),
            in_flight: get(&c.in_flight),
        }
    }
}

impl Client {
    /// A builder with validated defaults.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    // ----- retrieval -------------------------------------------------------------

    /// Reads `key`; `None` on a miss.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Item>> {
        let key = key.as_ref();
        let value = self
            .keyed(
                key,
                Command::Get {
                    key,
                    cas: false,
                    touch: None,
                },
                outcome::item,
            )
            .await?;
        Ok(value.map(item))
    }

    /// Reads `key` with its CAS token (`Item::cas` is set).
    pub async fn gets(&self, key: impl AsRef<[u8]>) -> Result<Option<Item>> {
        let key = key.as_ref();
        let value = self
            .keyed(
                key,
                Command::Get {
                    key,
                    cas: true,
                    touch: None,
                },
                outcome::item,
            )
            .await?;
        Ok(value.map(item))
    }

    /// Reads `key` and resets its expiry.
    pub async fn get_and_touch(
        &self,
        key: impl AsRef<[u8]>,
        expiry: Expiry,
    ) -> Result<Option<Item>> {
        let key = key.as_ref();
        let touch = Some(expiry.to_exptime(SystemTime::now()));
        let value = self
            .keyed(
                key,
                Command::Get {
                    key,
                    cas: false,
                    touch,
                },
                outcome::item,
            )
            .await?;
        Ok(value.map(item))
    }

    /// Reads `key` with the meta protocol's retrieval options: vivify on miss and a
    /// recache threshold (see [`GetOptions`]; they need the meta protocol), the CAS
    /// token, touch. `None` on a miss (never with `vivify_on_miss`: a miss then creates
    /// the placeholder and returns it, empty, with [`RecacheFlags::win`]).
    ///
    /// This is the low-level form of [`Client::get_or_compute`].
    ///
    /// ```no_run
    /// # async fn demo(client: memkeep::Client) -> memkeep::Result<()> {
    /// use memkeep::GetOptions;
    /// use std::time::Duration;
    ///
    /// let options = GetOptions {
    ///     vivify_on_miss: Some(Duration::from_secs(10)),
    ///     ..GetOptions::default()
    /// };
    /// if let Some(item) = client.get_with("report", options).await? {
    ///     if item.recache.win {
    ///         // This caller alone recomputes the value, then stores it.
    ///     } else if item.recache.already_won && item.value.is_empty() {
    ///         // Another caller is computing it and there is no value yet: retry later.
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_with(
        &self,
        key: impl AsRef<[u8]>,
        options: GetOptions,
    ) -> Result<Option<Item>> {
        let key = key.as_ref();
        let now = SystemTime::now();
        let touch = options.touch.map(|e| e.to_exptime(now));
        let cmd = if options.needs_meta() {
            Command::GetRecache {
                key,
                vivify: options
                    .vivify_on_miss
                    .map(|d| Expiry::In(d.max(Duration::from_secs(1))).to_exptime(now)),
                recache: options.recache_below.map(types::ceil_secs),
                touch,
            }
        } else {
            Command::Get {
                key,
                cas: options.cas,
                touch,
            }
        };
        let value = self.keyed(key, cmd, outcome::item).await?;
        Ok(value.map(item))
    }

    /// Reads many keys: split by node, one pipelined batch per node, all nodes at
    /// once. Misses are absent from the map. Fails as a whole if any node's batch fails.
    pub async fn get_many<I, K>(&self, keys: I) -> Result<HashMap<Vec<u8>, Item>>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        let keys: Vec<K> = keys.into_iter().collect();
        let deadline = self.deadline();
        let binary_ok = self.inner.protocol == Protocol::Meta;
        // Per node: its keys, and whether they all travel as is.
        let mut by_node: Vec<(Vec<&[u8]>, bool)> = vec![(Vec::new(), true); self.inner.nodes.len()];
        for key in &keys {
            let key = key.as_ref();
            let plain = validate_key(key, binary_ok)? == KeyForm::Plain;
            let index = match self.route_now(key) {
                Some(index) => index,
                None => self.route(key, deadline).await?,
            };
            let (node_keys, node_plain) = by_node.get_mut(index).ok_or(Error::NoNodeAvailable)?;
            node_keys.push(key);
            *node_plain &= plain;
        }
        let batches = by_node
            .into_iter()
            .enumerate()
            .filter(|(_, (keys, _))| !keys.is_empty());
        let batches = batches.map(|(index, (keys, plain))| async move {
            let cmd = Command::GetMany { keys: &keys };
            let reply = self
                .call_checked(index, &cmd, plain, deadline, None)
                .await?;
            self.interpret(index, reply, |reply| outcome::items(reply, &keys))
        });
        let mut found = HashMap::with_capacity(keys.len());
        for batch in futures::future::join_all(batches).await {
            found.extend(batch?.into_iter().map(|(key, value)| (key, item(value))));
        }
        Ok(found)
    }

    // ----- storage ---------------------------------------------------------------

    /// Stores `value` under `key` unconditionally.
    pub async fn set(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        expiry: Expiry,
    ) -> Result<()> {
        let options = StoreOptions {
            expiry,
            ..StoreOptions::default()
        };
        match self.store(StoreMode::Set, key, value, options).await? {
            StoreOutcome::Stored => Ok(()),
            other => Err(unexpected_outcome(other)),
        }
    }

    /// Stores only if `key` is absent; false if it was present.
    pub async fn add(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        expiry: Expiry,
    ) -> Result<bool> {
        let options = StoreOptions {
            expiry,
            ..StoreOptions::default()
        };
        Ok(self.store(StoreMode::Add, key, value, options).await? == StoreOutcome::Stored)
    }

    /// Stores only if `key` is present; false if it was missing.
    pub async fn replace(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        expiry: Expiry,
    ) -> Result<bool> {
        let options = StoreOptions {
            expiry,
            ..StoreOptions::default()
        };
        Ok(self.store(StoreMode::Replace, key, value, options).await? == StoreOutcome::Stored)
    }

    /// Appends to the value of `key`; false if it was missing.
    pub async fn append(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self
            .store(StoreMode::Append, key, value, StoreOptions::default())
            .await?
            == StoreOutcome::Stored)
    }

    /// Prepends to the value of `key`; false if it was missing.
    pub async fn prepend(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self
            .store(StoreMode::Prepend, key, value, StoreOptions::default())
            .await?
            == StoreOutcome::Stored)
    }

    /// Stores only if the item's CAS token is still `cas` (read it with [`Client::gets`]).
    pub async fn cas(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        expiry: Expiry,
        cas: u64,
    ) -> Result<CasOutcome> {
        let options = StoreOptions {
            expiry,
            cas: Some(cas),
            ..StoreOptions::default()
        };
        Ok(
            match self.store(StoreMode::Set, key, value, options).await? {
                StoreOutcome::Stored => CasOutcome::Stored,
                StoreOutcome::Exists => CasOutcome::Exists,
                StoreOutcome::NotFound | StoreOutcome::NotStored => CasOutcome::NotFound,
            },
        )
    }

    /// The general storage command: any mode, client flags, expiry and CAS token.
    pub async fn store(
        &self,
        mode: StoreMode,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        options: StoreOptions,
    ) -> Result<StoreOutcome> {
        let (key, value) = (key.as_ref(), value.as_ref());
        let cmd = self.store_command(mode, key, value, options);
        Ok(store_outcome(self.keyed(key, cmd, outcome::store).await?))
    }

    /// The connection epoch of the node this client is pinned to ([`Client::on_node`])
    /// while one of its connections is up; `None` when not pinned or while no connection
    /// is up (a read then waits for a new connection: sample after it). Sample it before
    /// a read whose CAS token a later [`Client::store_in_epoch`] will use.
    pub(crate) fn epoch(&self) -> Option<u64> {
        let node = self.inner.nodes.get(self.pinned?)?;
        (node.shared.state() == NodeState::Up).then(|| node.shared.epoch())
    }

    /// [`Client::store`] on a pinned client, written only while the node's connection
    /// epoch is still `epoch` (sampled with [`Client::epoch`] before the read that gave
    /// `options.cas`); else [`StoreOutcome::Exists`], nothing written. A memcached
    /// restarted empty numbers CAS tokens from 1 again, so a token read before the
    /// restart could match an unrelated item written after it.
    pub(crate) async fn store_in_epoch(
        &self,
        mode: StoreMode,
        key: &[u8],
        value: &[u8],
        options: StoreOptions,
        epoch: u64,
    ) -> Result<StoreOutcome> {
        let Some(index) = self.pinned else {
            return self.store(mode, key, value, options).await;
        };
        let cmd = self.store_command(mode, key, value, options);
        let plain = self.check(&cmd)?;
        let deadline = self.deadline();
        let reply = self
            .call_checked(index, &cmd, plain, deadline, Some(epoch))
            .await?;
        Ok(store_outcome(self.interpret(
            index,
            reply,
            outcome::store,
        )?))
    }

    // ----- other keyed commands --------------------------------------------------

    /// Deletes `key`; false if it was missing.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        self.keyed(key, Command::Delete { key }, outcome::delete)
            .await
    }

    /// Invalidates `key` instead of deleting it (meta `md` with `I`): memcached keeps
    /// the value, marks it stale and gives it a new CAS token. The next read with
    /// [`Client::get_with`] (or any `mg`) gets the value with [`RecacheFlags::stale`] and
    /// [`RecacheFlags::win`], and readers after it [`RecacheFlags::stale`] and
    /// [`RecacheFlags::already_won`], until a store replaces the item (a plain store
    /// clears both). `stale_for` sets a new expiry (meta `T`), bounding how long the
    /// stale value may be served; `None` keeps the current one. False if the key was
    /// missing. Needs the meta protocol.
    ///
    /// Any meta read takes that win, a plain [`Client::get`] included, so a key read
    /// both ways can stay stale until it expires: prefer a `stale_for` bound.
    pub async fn invalidate(
        &self,
        key: impl AsRef<[u8]>,
        stale_for: Option<Expiry>,
    ) -> Result<bool> {
        let key = key.as_ref();
        let exptime = stale_for.map(|e| e.to_exptime(SystemTime::now()));
        let cmd = Command::Invalidate {
            key,
            exptime,
            cas: None,
        };
        self.keyed(key, cmd, outcome::delete).await
    }

    /// Adds `delta` to the decimal number stored at `key`; `None` if it is missing.
    pub async fn incr(&self, key: impl AsRef<[u8]>, delta: u64) -> Result<Option<u64>> {
        self.arith(true, key.as_ref(), delta).await
    }

    /// Subtracts `delta` (stopping at 0) from the number at `key`; `None` if missing.
    pub async fn decr(&self, key: impl AsRef<[u8]>, delta: u64) -> Result<Option<u64>> {
        self.arith(false, key.as_ref(), delta).await
    }

    async fn arith(&self, incr: bool, key: &[u8], delta: u64) -> Result<Option<u64>> {
        self.keyed(key, Command::Arith { incr, key, delta }, outcome::counter)
            .await
    }

    /// Resets the expiry of `key`; false if it is missing.
    pub async fn touch(&self, key: impl AsRef<[u8]>, expiry: Expiry) -> Result<bool> {
        let key = key.as_ref();
        let exptime = expiry.to_exptime(SystemTime::now());
        self.keyed(key, Command::Touch { key, exptime }, outcome::touch)
            .await
    }

    // ----- fire-and-forget -------------------------------------------------------

    /// Stores without waiting for the outcome: resolves once the request is queued on
    /// its connection. Failures the server reports are logged and counted in
    /// [`Metrics::quiet_failures`].
    pub async fn set_noreply(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        expiry: Expiry,
    ) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        let options = StoreOptions {
            expiry,
            ..StoreOptions::default()
        };
        let cmd = self.store_command(StoreMode::Set, key, value, options);
        self.keyed_noreply(key, cmd).await
    }

    /// Deletes without waiting for the outcome.
    pub async fn delete_noreply(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let key = key.as_ref();
        self.keyed_noreply(key, Command::Delete { key }).await
    }

    /// Resets an expiry without waiting for the outcome.
    pub async fn touch_noreply(&self, key: impl AsRef<[u8]>, expiry: Expiry) -> Result<()> {
        let key = key.as_ref();
        let exptime = expiry.to_exptime(SystemTime::now());
        self.keyed_noreply(key, Command::Touch { key, exptime })
            .await
    }

    // ----- whole-node commands ---------------------------------------------------

    /// Invalidates every item on every node (or on the pinned node).
    pub async fn flush_all(&self) -> Result<()> {
        for (_, result) in self.each_node(Command::FlushAll, outcome::ok).await {
            result?;
        }
        Ok(())
    }

    /// Each node's server version, by node id.
    pub async fn version(&self) -> Vec<(String, Result<String>)> {
        self.each_node(Command::Version, outcome::version)
            .await
            .into_iter()
            .map(|(id, version)| {
                (
                    id,
                    version.map(|v| String::from_utf8_lossy(&v).into_owned()),
                )
            })
            .collect()
    }

    /// Each node's general statistics (`stats`), by node id.
    pub async fn stats(&self) -> Vec<(String, Result<HashMap<String, String>>)> {
        let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
        self.each_node(Command::Stats, outcome::stats)
            .await
            .into_iter()
            .map(|(id, stats)| {
                let stats =
                    stats.map(|pairs| pairs.iter().map(|(k, v)| (text(k), text(v))).collect());
                (id, stats)
            })
            .collect()
    }

    // ----- nodes -----------------------------------------------------------------

    /// A client whose keyed operations all go to the node with this id, whatever the
    /// key, and fail with [`Error::NodeDown`] while it is down (no redistribution).
    /// This is how a caller that records which node holds a value (the session layer)
    /// reads and writes it.
    pub fn on_node(&self, id: &str) -> Result<Client> {
        let index = self.node_index(id)?;
        Ok(Client {
            inner: self.inner.clone(),
            pinned: Some(index),
        })
    }

    /// The ids of all nodes, in configured order.
    pub fn node_ids(&self) -> Vec<String> {
        self.inner
            .nodes
            .iter()
            .map(|n| n.shared.id.to_string())
            .collect()
    }

    /// Id, address, health and counters of every node, in configured order.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        self.inner
            .nodes
            .iter()
            .map(|n| NodeStatus {
                id: n.shared.id.to_string(),
                address: n.shared.address.clone(),
                state: n.shared.state(),
                metrics: n.metrics(),
            })
            .collect()
    }

    /// Whether the node with this id is up; `None` for an unknown id.
    pub fn is_up(&self, id: &str) -> Option<bool> {
        self.inner
            .nodes
            .iter()
            .find(|n| &*n.shared.id == id)
            .map(|n| n.shared.state() == NodeState::Up)
    }

    /// The health of the node with this id (`Up`, `Connecting` or `Down`); `None` for an
    /// unknown id. A cheap atomic read: callers that place data by node id (the session
    /// layer) ask it before each placement decision.
    pub fn node_state(&self, id: &str) -> Option<NodeState> {
        self.inner
            .nodes
            .iter()
            .find(|n| &*n.shared.id == id)
            .map(|n| n.shared.state())
    }

    /// A receiver of each node's health, in node order (the session layer's hinted
    /// handoff wakes when a node comes back up).
    pub(crate) fn watch_node_states(&self) -> Vec<tokio::sync::watch::Receiver<NodeState>> {
        self.inner
            .nodes
            .iter()
            .map(|n| n.shared.watch_state())
            .collect()
    }

    /// Counters summed over all nodes.
    pub fn metrics(&self) -> Metrics {
        self.inner
            .nodes
            .iter()
            .fold(Metrics::default(), |sum, n| sum + n.metrics())
    }

    /// Makes the connection driver of node `id` panic, to test that the client notices.
    /// Only with the `fault-injection` feature; not part of the API.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub async fn __inject_driver_panic(&self, id: &str) -> Result<()> {
        self.inner.nodes[self.node_index(id)?]
            .connection()
            .send(Request {
                bytes: Bytes::new(),
                kind: RequestKind::Panic,
                reply: None,
                deadline: None,
                permit: None,
                epoch: None,
            })
    }

    /// The index of the node with this id.
    fn node_index(&self, id: &str) -> Result<usize> {
        self.inner
            .nodes
            .iter()
            .position(|n| &*n.shared.id == id)
            .ok_or_else(|| Error::UnknownNode(id.to_string()))
    }

    // ----- plumbing --------------------------------------------------------------

    fn store_command<'a>(
        &self,
        mode: StoreMode,
        key: &'a [u8],
        value: &'a [u8],
        options: StoreOptions,
    ) -> Command<'a> {
        Command::Store {
            mode,
            key,
            value,
            flags: options.flags,
            exptime: options.expiry.to_exptime(SystemTime::now()),
            cas: options.cas,
        }
    }

    /// Refuses what the protocol can't carry, before anything is queued. Says whether
    /// every key travels as is ([`KeyForm::Plain`]), so encoding need not look again.
    fn check(&self, cmd: &Command<'_>) -> Result<bool> {
        let binary_ok = self.inner.protocol == Protocol::Meta;
        if cmd.is_meta_only() && !binary_ok {
            return Err(Error::MetaProtocolRequired(match cmd {
                Command::Invalidate { .. } => "invalidation (md with I)",
                _ => "vivify on miss or a recache threshold (mg with N or R)",
            }));
        }
        let mut plain = true;
        for key in cmd.keys() {
            plain &= validate_key(key, binary_ok)? == KeyForm::Plain;
        }
        if let Command::Store { value, .. } = cmd {
            if value.len() > self.inner.max_value_size {
                return Err(Error::ValueTooLarge {
                    size: value.len(),
                    max: self.inner.max_value_size,
                });
            }
        }
        Ok(plain)
    }

    /// `key`'s primary node.
    fn primary(&self, key: &[u8]) -> usize {
        // With one node there is nothing to hash (libmemcached skips it too).
        if self.inner.nodes.len() == 1 {
            0
        } else {
            self.inner.locator.primary(key)
        }
    }

    /// The node for `key` when that needs no wait and no policy (the pinned node, or a
    /// primary that can take requests): [`Client::route`]'s usual case, without its
    /// future.
    fn route_now(&self, key: &[u8]) -> Option<usize> {
        if self.pinned.is_some() {
            return self.pinned;
        }
        let primary = self.primary(key);
        let node = self.inner.nodes.get(primary)?;
        node.shared.is_available().then_some(primary)
    }

    /// The node for `key` under the failure policy; `Retry` waits until `deadline` at most.
    ///
    /// A node in its reconnect backoff is asked to try again now (at most once per
    /// `backoff_min`, so callers can't cause a connect storm). When no node could take the
    /// operation otherwise, the caller waits for that attempt, within its deadline: the
    /// first operation after a restart finds the server instead of the backoff.
    async fn route(&self, key: &[u8], deadline: Instant) -> Result<usize> {
        if let Some(index) = self.route_now(key) {
            return Ok(index);
        }
        let nodes = &self.inner.nodes;
        let primary = self.primary(key);
        let node = nodes.get(primary).ok_or(Error::NoNodeAvailable)?;
        match self.inner.policy {
            FailurePolicy::Redistribute => {
                if let Ok(next) = self.next_live(key, None) {
                    node.revive();
                    return Ok(next);
                }
                if node.await_attempt(deadline).await {
                    return Ok(primary);
                }
                self.next_live(key, None)
            }
            FailurePolicy::Retry => {
                node.revive();
                let mut state = node.shared.watch_state();
                let back =
                    tokio::time::timeout_at(deadline, state.wait_for(|s| *s == NodeState::Up))
                        .await;
                match back {
                    Ok(Ok(_)) => Ok(primary),
                    _ => Err(Error::NodeDown {
                        node: node.shared.id.to_string(),
                    }),
                }
            }
            FailurePolicy::FailFast => {
                node.revive();
                Err(Error::NodeDown {
                    node: node.shared.id.to_string(),
                })
            }
        }
    }

    /// The first live node after `key`'s primary in the locator's order, other than
    /// `skip`: where `Redistribute` sends a key whose node is down.
    fn next_live(&self, key: &[u8], skip: Option<usize>) -> Result<usize> {
        let nodes = &self.inner.nodes;
        self.inner
            .locator
            .fallback(key, &|i| {
                Some(i) != skip && nodes.get(i).is_some_and(|n| n.shared.is_available())
            })
            .ok_or_else(|| self.unavailable())
    }

    /// [`Error::NodesUnavailable`], naming every node with its state and last error.
    fn unavailable(&self) -> Error {
        let nodes = self
            .inner
            .nodes
            .iter()
            .map(|n| UnavailableNode {
                id: n.shared.id.to_string(),
                address: n.shared.address.clone(),
                state: n.shared.state(),
                last_error: n.shared.last_error(),
            })
            .collect();
        Error::NodesUnavailable { nodes }
    }

    /// Runs a keyed command under the failure policy and reads its reply with
    /// `interpret`, within one deadline.
    async fn keyed<T>(
        &self,
        key: &[u8],
        cmd: Command<'_>,
        interpret: fn(Reply) -> Interpreted<T>,
    ) -> Result<T> {
        let plain = self.check(&cmd)?;
        let deadline = self.deadline();
        loop {
            let index = match self.route_now(key) {
                Some(index) => index,
                None => self.route(key, deadline).await?,
            };
            let reply = match self.call_checked(index, &cmd, plain, deadline, None).await {
                // The node went down between routing and sending (its connection attempt
                // failed while the request waited for it); the request was never written,
                // so sending it again is safe.
                Err(Error::NodeDown { .. }) if self.pinned.is_none() => {
                    match self.inner.policy {
                        FailurePolicy::Redistribute => {
                            let next = self.next_live(key, Some(index))?;
                            let reply =
                                self.call_checked(next, &cmd, plain, deadline, None).await?;
                            return self.interpret(next, reply, interpret);
                        }
                        // Wait for the node again, within the same deadline.
                        FailurePolicy::Retry => continue,
                        FailurePolicy::FailFast => {
                            return Err(Error::NodeDown {
                                node: self.inner.nodes[index].shared.id.to_string(),
                            })
                        }
                    }
                }
                other => other?,
            };
            return self.interpret(index, reply, interpret);
        }
    }

    /// Reads `reply`, from node `index`, with `interpret`; a refusal becomes the error it
    /// stands for, naming the node.
    fn interpret<T>(
        &self,
        index: usize,
        reply: Reply,
        interpret: impl FnOnce(Reply) -> Interpreted<T>,
    ) -> Result<T> {
        interpret(reply).map_err(|refusal| match refusal {
            Refusal::Error { kind, message } => {
                let message = String::from_utf8_lossy(&message).into_owned();
                match kind {
                    ErrorKind::Unknown => Error::UnsupportedCommand,
                    ErrorKind::Client if message.contains("non-numeric") => {
                        Error::NotNumeric(message)
                    }
                    ErrorKind::Client => Error::ClientRejected(message),
                    ErrorKind::Server => Error::Server(message),
                    ErrorKind::TooLarge { size, max } => Error::ValueTooLarge { size, max },
                }
            }
            Refusal::Unexpected(wanted) => Error::Protocol {
                node: self
                    .inner
                    .nodes
                    .get(index)
                    .map(|n| n.shared.id.to_string())
                    .unwrap_or_default(),
                reason: format!("reply is not {wanted}"),
            },
        })
    }

    async fn keyed_noreply(&self, key: &[u8], cmd: Command<'_>) -> Result<()> {
        let plain = self.check(&cmd)?;
        let deadline = self.deadline();
        let index = match self.route_now(key) {
            Some(index) => index,
            None => self.route(key, deadline).await?,
        };
        let node = &self.inner.nodes[index];
        let connection = node.connection();
        let quiet = self.inner.protocol == Protocol::Meta;
        let hint = encoded_size_hint(&cmd);
        let permit = match connection.try_reserve(hint)? {
            Some(permit) => permit,
            None => match tokio::time::timeout_at(deadline, connection.reserve(hint)).await {
                Ok(permit) => permit?,
                Err(_) => {
                    return Err(Error::Timeout {
                        node: node.shared.id.to_string(),
                        after: self.inner.operation_timeout,
                    })
                }
            },
        };
        let (bytes, kind) = self.encode(&cmd, plain, connection, quiet);
        connection.send(Request {
            bytes,
            kind,
            reply: None,
            deadline: None,
            permit: Some(permit),
            epoch: None,
        })
    }

    /// When an operation starting now must be over: one deadline covers routing (the
    /// wait of `FailurePolicy::Retry`), queueing, any re-send and the reply.
    fn deadline(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.inner.operation_timeout)
            .or_else(|| now.checked_add(FAR_FUTURE))
            .unwrap_or(now)
    }

    /// Sends `cmd` to node `index` and waits for its reply, until `deadline`.
    async fn call(&self, index: usize, cmd: &Command<'_>, deadline: Instant) -> Result<Reply> {
        let plain = cmd
            .keys()
            .all(|k| protocol::key::form_of(k) == KeyForm::Plain);
        self.call_checked(index, cmd, plain, deadline, None).await
    }

    /// [`Client::call`] for a command whose keys were validated: `plain` says whether
    /// they all travel as is. `epoch`: written only in this connection epoch of the node
    /// (see [`Client::store_in_epoch`]).
    async fn call_checked(
        &self,
        index: usize,
        cmd: &Command<'_>,
        plain: bool,
        deadline: Instant,
        epoch: Option<u64>,
    ) -> Result<Reply> {
        let node = self.inner.nodes.get(index).ok_or(Error::NoNodeAvailable)?;
        let connection = node.connection();
        let timeout = self.inner.operation_timeout;
        let counters = &node.shared.counters;
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        // A place in the connection's queue first, so callers waiting for one hold no
        // encoded copy of their request. Once queued, the request's deadline is the
        // driver's to enforce (one timer per connection); only a caller that must wait
        // for a place arms a timer of its own, for that wait.
        let hint = encoded_size_hint(cmd);
        let reserved = match connection.try_reserve(hint) {
            Ok(Some(permit)) => Ok(permit),
            Ok(None) => tokio::time::timeout_at(deadline, connection.reserve(hint))
                .await
                .unwrap_or_else(|_| {
                    connection.record_timeout();
                    NodeCounters::add(&counters.timeouts, 1);
                    tracing::debug!(node = %node.shared.id, ?timeout, "operation timed out");
                    Err(Error::Timeout {
                        node: node.shared.id.to_string(),
                        after: timeout,
                    })
                }),
            Err(e) => Err(e),
        };
        let result = match reserved {
            Ok(permit) => {
                let (bytes, kind) = self.encode(cmd, plain, connection, false);
                connection.call(bytes, kind, permit, deadline, epoch).await
            }
            Err(e) => Err(e),
        };
        NodeCounters::add(&counters.operations, 1);
        if result.is_err() {
            NodeCounters::add(&counters.errors, 1);
        }
        #[cfg(feature = "metrics")]
        node.shared.latency.record(started.elapsed());
        result
    }

    /// Encodes `cmd` for `connection` and says what the driver should expect back.
    /// `plain`: every key of `cmd` travels as is (as [`Client::check`] found).
    fn encode(
        &self,
        cmd: &Command<'_>,
        plain: bool,
        connection: &ConnectionHandle,
        quiet: bool,
    ) -> (Bytes, RequestKind) {
        encode_request(encoded_size_hint(cmd), |buf| {
            self.encode_into(cmd, plain, connection, quiet, buf)
        })
    }

    /// [`Client::encode`] into `buf`.
    fn encode_into(
        &self,
        cmd: &Command<'_>,
        plain: bool,
        connection: &ConnectionHandle,
        quiet: bool,
        buf: &mut BytesMut,
    ) -> RequestKind {
        let plain_keys = || plain;
        match (self.inner.protocol, cmd) {
            // With `merge_gets`, the driver merges concurrent single-key gets into one
            // multi-key `get`, cheaper for the server than the same gets one by one.
            (
                _,
                Command::Get {
                    cas: false,
                    touch: None,
                    ..
                },
            ) if self.inner.merge_gets && plain_keys() => {
                protocol::text::encode(cmd, buf);
                RequestKind::MergeableGet
            }
            (Protocol::Text, _) => RequestKind::Reply(protocol::text::encode(cmd, buf)),
            // One multi-key text `get` beats the same keys as separate `mg` lines, and
            // its reply is checked key by key; binary keys still need `mg` with base64.
            (Protocol::Meta, Command::GetMany { .. }) if plain_keys() => {
                RequestKind::Reply(protocol::text::encode(cmd, buf))
            }
            (Protocol::Meta, _) => {
                let opaque = connection.opaques(protocol::meta::opaque_count(cmd));
                let plain_form = |_: &[u8]| KeyForm::Plain;
                let form: &dyn Fn(&[u8]) -> KeyForm = if plain {
                    &plain_form
                } else {
                    &protocol::key::form_of
                };
                match protocol::meta::encode(cmd, form, opaque, quiet, buf) {
                    Some(expect) => RequestKind::Reply(expect),
                    None => RequestKind::Quiet,
                }
            }
        }
    }

    /// Runs a whole-node command on every node (or the pinned one), concurrently, and
    /// reads each reply with `interpret`.
    async fn each_node<T>(
        &self,
        cmd: Command<'static>,
        interpret: fn(Reply) -> Interpreted<T>,
    ) -> Vec<(String, Result<T>)> {
        let indices: Vec<usize> = match self.pinned {
            Some(i) => vec![i],
            None => (0..self.inner.nodes.len()).collect(),
        };
        let deadline = self.deadline();
        let calls = indices.into_iter().map(|i| async move {
            let id = self.inner.nodes[i].shared.id.to_string();
            let result = self.call(i, &cmd, deadline).await;
            (
                id,
                result.and_then(|reply| self.interpret(i, reply, interpret)),
            )
        });
        futures::future::join_all(calls).await
    }
}

/// Requests whose size hint is at most this are encoded into a chunk kept per thread
/// and shared by the requests encoded after one another: one allocation per chunk
/// instead of one per request.
const SMALL_REQUEST: usize = 512;
/// The size of a fresh chunk.
const ENCODE_CHUNK: usize = 16 * 1024;

thread_local! {
    static ENCODE_BUF: std::cell::Cell<BytesMut> = std::cell::Cell::new(BytesMut::new());
}

/// Runs `encode` on a buffer with room for about `hint` bytes and returns what it wrote.
/// A small request is cut from this thread's chunk (each request holds a reference to
/// the chunk, which is freed once the last of them is dropped); a large one gets a
/// buffer of its own.
fn encode_request<T>(hint: usize, encode: impl FnOnce(&mut BytesMut) -> T) -> (Bytes, T) {
    if hint > SMALL_REQUEST {
        let mut buf = BytesMut::with_capacity(hint);
        let out = encode(&mut buf);
        return (buf.freeze(), out);
    }
    let mut chunk = ENCODE_BUF.try_with(|cell| cell.take()).unwrap_or_default();
    if chunk.capacity() < hint {
        // A new chunk, unless every request cut from this one is gone already.
        chunk.reserve(ENCODE_CHUNK);
    }
    let out = encode(&mut chunk);
    let bytes = chunk.split().freeze();
    let _ = ENCODE_BUF.try_with(|cell| cell.set(chunk));
    (bytes, out)
}

fn encoded_size_hint(cmd: &Command<'_>) -> usize {
    match cmd {
        Command::Store { key, value, .. } => key.len() + value.len() + 64,
        Command::GetMany { keys } => keys.iter().map(|k| k.len() + 24).sum::<usize>() + 8,
        _ => 64,
    }
}

/// An item as the API returns it.
fn item(value: Value) -> Item {
    Item {
        value: value.data,
        flags: value.flags,
        cas: value.cas,
        recache: value.recache,
    }
}

fn unexpected_outcome(outcome: StoreOutcome) -> Error {
    Error::Server(format!("set answered {outcome:?}"))
}

/// A storage status as the public outcome.
fn store_outcome(status: StoreStatus) -> StoreOutcome {
    match status {
        StoreStatus::Stored => StoreOutcome::Stored,
        StoreStatus::NotStored => StoreOutcome::NotStored,
        StoreStatus::Exists => StoreOutcome::Exists,
        StoreStatus::NotFound => StoreOutcome::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn requests_cut_from_the_shared_chunk_keep_their_own_bytes() {
        let mut kept = Vec::new();
        // Enough small requests to fill several chunks, each with distinct bytes.
        for i in 0..(3 * ENCODE_CHUNK / 40) {
            let line = format!("mg key-{i} v f t\r\n");
            let (bytes, n) = encode_request(64, |buf| {
                buf.put_slice(line.as_bytes());
                i
            });
            assert_eq!(n, i);
            kept.push((line, bytes));
            // Drop some along the way: the chunk is reused or replaced, never shared
            // with a request still alive.
            if i % 3 == 0 {
                kept.pop();
            }
        }
        for (line, bytes) in &kept {
            assert_eq!(bytes.as_ref(), line.as_bytes());
        }
        // A request that outgrows its hint still comes back whole.
        let long = vec![b'x'; 3 * ENCODE_CHUNK];
        let (bytes, ()) = encode_request(64, |buf| buf.put_slice(&long));
        assert_eq!(bytes.as_ref(), &long[..]);
        // A large one has a buffer of its own.
        let (bytes, ()) = encode_request(SMALL_REQUEST + 1, |buf| buf.put_slice(b"set k"));
        assert_eq!(bytes.as_ref(), b"set k");
        for (line, bytes) in &kept {
            assert_eq!(bytes.as_ref(), line.as_bytes());
        }
    }
}
