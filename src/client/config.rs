//! Client configuration: the builder, node settings, protocol and failure policy.

use std::sync::Arc;
use std::time::Duration;

use crate::connection::{ConnectionConfig, ConnectionHandle, Target};
use crate::locator::{Distribution, LocatorNode};
use crate::node::NodeShared;
use crate::{Error, Result};

use super::{Client, Credentials, Inner, Node};

/// The largest `max_in_flight` accepted.
const MAX_IN_FLIGHT_LIMIT: usize = 65_536;
/// The largest `max_value_size` accepted: memcached's own ceiling for `-I`.
const MAX_VALUE_SIZE_LIMIT: usize = 1 << 30;

/// Which memcached protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// The meta protocol (memcached >= 1.6): every reply is checked against the
    /// request's opaque token, binary keys travel base64-encoded, fire-and-forget uses
    /// quiet mode. The default.
    #[default]
    Meta,
    /// The classic text protocol, for servers and proxies without meta commands.
    /// Replies are matched by position only; keys must be plain ASCII.
    Text,
}

/// What a keyed operation does when its node is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Send it to the next live node in the locator's order (spymemcached's default).
    /// Keys come back to their own node once it is up again; values written to the
    /// stand-in node meanwhile are not moved back, so a read after recovery may miss.
    #[default]
    Redistribute,
    /// Wait, within the operation timeout, for the node to come back.
    Retry,
    /// Fail at once with [`Error::NodeDown`].
    FailFast,
}

/// One memcached server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    address: String,
    id: Option<String>,
    weight: u32,
    credentials: Option<Credentials>,
    tls_server_name: Option<String>,
}

impl NodeConfig {
    /// A server at `address` (`host:port`, or `unix:/path` for a UNIX domain socket), with
    /// weight 1 and its address as id.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            id: None,
            weight: 1,
            credentials: None,
            tls_server_name: None,
        }
    }

    /// With TLS (feature `tls`): the name the node's certificate must carry, also sent as
    /// SNI (default: the host of its address). Needed when connecting by IP address to a
    /// server whose certificate names a host, and for a UNIX socket node.
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls_server_name = Some(name.into());
        self
    }

    /// Login for this node (memcached `-Y`), in place of the client-wide
    /// [`ClientBuilder::credentials`].
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The id other code names the node by (`Client::on_node`, session ids).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Relative weight for weighted ketama layouts (default 1).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
}

/// Builds a [`Client`]; every setting has a validated default.
///
/// ```no_run
/// # async fn demo() -> memkeep::Result<()> {
/// use std::time::Duration;
/// use memkeep::{Client, NodeConfig, Protocol};
///
/// let client = Client::builder()
///     .node("127.0.0.1:11211")
///     .node_config(NodeConfig::new("127.0.0.1:11212").id("b").weight(2))
///     .protocol(Protocol::Meta)
///     .operation_timeout(Duration::from_millis(500))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    nodes: Vec<NodeConfig>,
    protocol: Protocol,
    distribution: Distribution,
    failure_policy: FailurePolicy,
    operation_timeout: Duration,
    connect_timeout: Duration,
    connections_per_node: usize,
    max_in_flight: usize,
    max_value_size: usize,
    timeout_threshold: u32,
    backoff_min: Duration,
    backoff_max: Duration,
    merge_gets: bool,
    max_queued_bytes: usize,
    credentials: Option<Credentials>,
    #[cfg(feature = "tls")]
    tls: Option<super::TlsConfig>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            protocol: Protocol::default(),
            distribution: Distribution::default(),
            failure_policy: FailurePolicy::default(),
            operation_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            connections_per_node: 1,
            max_in_flight: 1024,
            max_value_size: 1024 * 1024,
            timeout_threshold: 8,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            merge_gets: false,
            max_queued_bytes: 32 * 1024 * 1024,
            credentials: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl ClientBuilder {
    /// Adds a server at `address` (`host:port`, or `unix:/path` for a UNIX domain socket)
    /// with weight 1; its id is the address.
    pub fn node(mut self, address: impl Into<String>) -> Self {
        self.nodes.push(NodeConfig::new(address));
        self
    }

    /// Adds a server described by `config`.
    pub fn node_config(mut self, config: NodeConfig) -> Self {
        self.nodes.push(config);
        self
    }

    /// The protocol (default [`Protocol::Meta`]).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// How keys map to nodes (default: see [`Distribution::default`]).
    pub fn distribution(mut self, distribution: Distribution) -> Self {
        self.distribution = distribution;
        self
    }

    /// What keyed operations do when their node is down (default
    /// [`FailurePolicy::Redistribute`]).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Longest wait for one operation, queueing included (default 1 s).
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Longest wait for a connection and its first reply (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connections per node, each pipelined (default 1; 1 to 64).
    pub fn connections_per_node(mut self, n: usize) -> Self {
        self.connections_per_node = n;
        self
    }

    /// Requests in flight per connection before callers wait (default 1024; 1 to 65,536).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Largest value sent or accepted, in bytes (default 1 MiB, memcached's default
    /// item size; raise it with the server's `-I`; at most 1 GiB, memcached's ceiling).
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// Login for every node (memcached `-Y`; default none): memcached's text-protocol
    /// authentication, sent first on every connection and reconnection. A node's own
    /// [`NodeConfig::credentials`] take precedence. A server that refuses them leaves the
    /// node down, its last error saying so.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// TLS for every node (feature `tls`; default none: plain connections).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: super::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Bytes of encoded requests that may wait for a connection's driver (default 32 MiB;
    /// 1 byte to 4 GiB - 1). Together with `max_in_flight`, which bounds their count, it
    /// bounds the memory callers pin when a server stalls: callers beyond it wait (within
    /// their timeout) before their request is even encoded. A single request larger than
    /// the budget waits for all of it.
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes;
        self
    }

    /// Consecutive timeouts on a connection after which it is dropped and the node
    /// marked down until a reconnect succeeds (default 8).
    pub fn timeout_threshold(mut self, n: u32) -> Self {
        self.timeout_threshold = n;
        self
    }

    /// Reconnect backoff: doubles from `min` up to `max`, with jitter (default 100 ms
    /// to 30 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Whether single-key gets queued together on a connection are sent as one
    /// multi-key `get` (spymemcached's "optimize"; default false). It saves server CPU
    /// when memcached is the bottleneck (a merged 64-key `get` is served 2.6x faster than
    /// 64 `mg` lines), but made no measurable difference to the client's throughput on
    /// the benchmark machine (docs/benchmarks.md). Each caller still gets exactly its
    /// own key's reply, checked key by key.
    pub fn merge_gets(mut self, merge: bool) -> Self {
        self.merge_gets = merge;
        self
    }

    /// Validates the configuration and starts one driver task per connection. Must be
    /// called inside a tokio runtime. Connections are opened in the background;
    /// operations issued before they are up wait for them within their timeout.
    pub fn build(self) -> Result<Client> {
        self.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "build",
                "ClientBuilder::build must be called inside a tokio runtime",
            ));
        }
        let mut locator_nodes = Vec::with_capacity(self.nodes.len());
        let mut ids: Vec<String> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let (host, port) = split_address(&node.address)?;
            let id = node.id.clone().unwrap_or_else(|| node.address.clone());
            if ids.contains(&id) {
                return Err(Error::config(
                    "nodes",
                    format!("two nodes have the id {id:?}; give each a distinct NodeConfig::id"),
                ));
            }
            ids.push(id);
            locator_nodes.push(LocatorNode {
                host: host.to_string(),
                port,
                weight: node.weight,
            });
        }
        let locator = self.distribution.build(&locator_nodes)?;
        let connection_configs = self
            .nodes
            .iter()
            .map(|node| self.connection_config(node))
            .collect::<Result<Vec<_>>>()?;
        let nodes = self
            .nodes
            .iter()
            .zip(connection_configs)
            .zip(ids)
            .map(|((config, connection), id)| {
                let shared = Arc::new(NodeShared::new(
                    Arc::from(id.as_str()),
                    config.address.clone(),
                    self.connections_per_node,
                ));
                let connections = (0..self.connections_per_node)
                    .map(|slot| ConnectionHandle::spawn(connection.clone(), shared.clone(), slot))
                    .collect();
                Node::new(shared, connections)
            })
            .collect();
        Ok(Client {
            inner: Arc::new(Inner {
                nodes,
                locator,
                protocol: self.protocol,
                policy: self.failure_policy,
                operation_timeout: self.operation_timeout,
                max_value_size: self.max_value_size,
                merge_gets: self.merge_gets,
            }),
            pinned: None,
        })
    }

    fn connection_config(&self, node: &NodeConfig) -> Result<ConnectionConfig> {
        let address = node.address.as_str();
        #[cfg(feature = "tls")]
        let tls = match &self.tls {
            Some(tls) => {
                let (host, _) = split_address(address)?;
                Some(crate::connection::Tls {
                    connector: tls.connector(),
                    server_name: super::tls::server_name(node.tls_server_name.as_deref(), host)?,
                })
            }
            None => None,
        };
        #[cfg(not(feature = "tls"))]
        let tls = match &node.tls_server_name {
            Some(_) => {
                return Err(Error::config(
                    "tls_server_name",
                    "TLS needs the `tls` feature and ClientBuilder::tls",
                ))
            }
            None => None,
        };
        let target = match address.strip_prefix(UNIX_PREFIX) {
            Some(path) => Target::Unix(path.into()),
            None => Target::Tcp(address.to_string()),
        };
        Ok(ConnectionConfig {
            address: address.to_string(),
            target,
            connect_timeout: self.connect_timeout,
            operation_timeout: self.operation_timeout,
            max_in_flight: self.max_in_flight,
            max_value_size: self.max_value_size,
            timeout_threshold: self.timeout_threshold,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            // validate() keeps it within u32.
            max_queued_bytes: u32::try_from(self.max_queued_bytes).unwrap_or(u32::MAX),
            credentials: node
                .credentials
                .clone()
                .or_else(|| self.credentials.clone()),
            meta: self.protocol == Protocol::Meta,
            tls,
        })
    }

    fn validate(&self) -> Result<()> {
        let positive = |field, d: Duration| {
            if d.is_zero() {
                Err(Error::config(field, "must be greater than zero"))
            } else {
                Ok(())
            }
        };
        if self.nodes.is_empty() {
            return Err(Error::config(
                "nodes",
                "no memcached node configured; add one with ClientBuilder::node(\"host:port\")",
            ));
        }
        for node in &self.nodes {
            split_address(&node.address)?;
            if node.weight == 0 {
                return Err(Error::config(
                    "weight",
                    format!("node {} has weight 0; weights start at 1", node.address),
                ));
            }
            if let Some(problem) = node
                .credentials
                .as_ref()
                .or(self.credentials.as_ref())
                .and_then(Credentials::problem)
            {
                return Err(Error::config(
                    "credentials",
                    format!("node {}: {problem}", node.address),
                ));
            }
            if let Some(id) = &node.id {
                if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(Error::config(
                        "id",
                        format!("node id {id:?} must be non-empty, without whitespace or control characters"),
                    ));
                }
            }
        }
        positive("operation_timeout", self.operation_timeout)?;
        positive("connect_timeout", self.connect_timeout)?;
        positive("reconnect_backoff", self.backoff_min)?;
        if self.backoff_min > self.backoff_max {
            return Err(Error::config(
                "reconnect_backoff",
                format!(
                    "min {:?} is above max {:?}",
                    self.backoff_min, self.backoff_max
                ),
            ));
        }
        if !(1..=64).contains(&self.connections_per_node) {
            return Err(Error::config(
                "connections_per_node",
                format!(
                    "{} is outside 1..=64; one pipelined connection is usually enough",
                    self.connections_per_node
                ),
            ));
        }
        if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&self.max_in_flight) {
            return Err(Error::config(
                "max_in_flight",
                format!(
                    "{} is outside 1..={MAX_IN_FLIGHT_LIMIT}; a few hundred requests in flight \
                     already keep a connection busy",
                    self.max_in_flight
                ),
            ));
        }
        if !(1..=MAX_VALUE_SIZE_LIMIT).contains(&self.max_value_size) {
            return Err(Error::config(
                "max_value_size",
                format!(
                    "{} bytes is outside 1..={MAX_VALUE_SIZE_LIMIT}; memcached's item size \
                     (-I) can't exceed 1 GiB",
                    self.max_value_size
                ),
            ));
        }
        if self.max_queued_bytes == 0 || u32::try_from(self.max_queued_bytes).is_err() {
            return Err(Error::config(
                "max_queued_bytes",
                format!(
                    "{} bytes is outside 1..={}",
                    self.max_queued_bytes,
                    u32::MAX
                ),
            ));
        }
        if self.timeout_threshold == 0 {
            return Err(Error::config("timeout_threshold", "must be at least 1"));
        }
        Ok(())
    }
}

/// The prefix of a UNIX domain socket address: `unix:/path/to.sock`.
const UNIX_PREFIX: &str = "unix:";

/// Splits a node address into what the locators see: `host:port` (IPv6 as
/// `[addr]:port`), or `unix:/path`, which the locators see as host `/path`, port 0.
fn split_address(address: &str) -> Result<(&str, u16)> {
    if let Some(path) = address.strip_prefix(UNIX_PREFIX) {
        if !path.starts_with('/') || path.contains(['\0', '\n', '\r']) {
            return Err(Error::config(
                "nodes",
                format!(
                    "address {address:?}: a UNIX socket address is unix: followed by an \
                     absolute path (e.g. \"unix:/run/memcached/memcached.sock\")"
                ),
            ));
        }
        return Ok((path, 0));
    }
    let bad = || {
        Error::config(
            "nodes",
            format!("address {address:?} is not host:port or unix:/path (e.g. \"127.0.0.1:11211\", \"[::1]:11211\" or \"unix:/run/memcached.sock\")"),
        )
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        assert_eq!(
            split_address("127.0.0.1:11211").unwrap(),
            ("127.0.0.1", 11211)
        );
        assert_eq!(split_address("[::1]:11311").unwrap(), ("::1", 11311));
        assert_eq!(split_address("cache.local:1").unwrap(), ("cache.local", 1));
        assert_eq!(
            split_address("unix:/run/memcached.sock").unwrap(),
            ("/run/memcached.sock", 0)
        );
        for bad in ["unix:", "unix:relative.sock", "unix:/a\nb"] {
            assert!(split_address(bad).is_err(), "{bad}");
        }
        for bad in [
            "127.0.0.1",
            ":11211",
            "host:0",
            "host:port",
            "host:70000",
            "",
        ] {
            assert!(split_address(bad).is_err(), "{bad}");
        }
    }

    fn field_of(builder: ClientBuilder) -> &'static str {
        match builder.validate() {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn bad_settings_are_refused_naming_the_field() {
        let one = || Client::builder().node("127.0.0.1:11211");
        assert_eq!(field_of(Client::builder()), "nodes");
        assert_eq!(field_of(Client::builder().node("nope")), "nodes");
        assert_eq!(
            field_of(Client::builder().node_config(NodeConfig::new("h:1").weight(0))),
            "weight"
        );
        assert_eq!(
            field_of(Client::builder().node_config(NodeConfig::new("h:1").id("a b"))),
            "id"
        );
        assert_eq!(
            field_of(one().operation_timeout(Duration::ZERO)),
            "operation_timeout"
        );
        assert_eq!(
            field_of(one().connect_timeout(Duration::ZERO)),
            "connect_timeout"
        );
        assert_eq!(
            field_of(one().connections_per_node(0)),
            "connections_per_node"
        );
        assert_eq!(field_of(one().max_in_flight(0)), "max_in_flight");
        assert_eq!(field_of(one().max_value_size(0)), "max_value_size");
        // Settings no connection can work with are refused, never a panic at build.
        assert_eq!(field_of(one().max_in_flight(usize::MAX)), "max_in_flight");
        assert_eq!(field_of(one().max_value_size(usize::MAX)), "max_value_size");
        assert_eq!(field_of(one().max_queued_bytes(0)), "max_queued_bytes");
        assert_eq!(
            field_of(one().credentials(Credentials::new("a b", "pw"))),
            "credentials"
        );
        assert_eq!(
            field_of(one().max_queued_bytes(usize::MAX)),
            "max_queued_bytes"
        );
        assert!(one().max_in_flight(65_536).validate().is_ok());
        assert!(one().max_value_size(1 << 30).validate().is_ok());
        assert_eq!(field_of(one().timeout_threshold(0)), "timeout_threshold");
        assert_eq!(
            field_of(one().reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1))),
            "reconnect_backoff"
        );
        assert!(one().validate().is_ok());
    }

    #[test]
    fn build_outside_a_runtime_is_refused() {
        let err = Client::builder().node("127.0.0.1:11211").build().err();
        assert!(
            matches!(err, Some(Error::Config { field: "build", .. })),
            "{err:?}"
        );
    }
}
