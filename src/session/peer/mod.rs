//! The peer backend ("Loose Cluster"): the application instances keep each other's
//! session copies, no memcached.
//!
//! Each instance runs a replication endpoint ([`PeerEndpoint`]) on its own address; the
//! configured peers (`route:host:port`, this instance's route among them) become the
//! session store's nodes, reached through the crate's own [`Client`] over the
//! endpoint's protocol (see [`endpoint`]). Everything above the store (id format,
//! placement, versions, tombstones, the tower layer, statistics) is the memcached
//! backend's, unchanged: a peer is a node whose id is the instance's route.
//!
//! A minimal configuration (the README's):
//!
//! ```rust,no_run
//! # fn main() -> Result<(), memkeep::session::SessionError> {
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! # let _guard = rt.enter();
//! use memkeep::session::{BackupSessionService, SessionConfig};
//!
//! let sessions = BackupSessionService::new(
//!     SessionConfig::builder()
//!         .peers("web1:10.0.0.1:7001,web2:10.0.0.2:7001") // route:host:port, this instance among them
//!         .route("web1")                                  // this instance
//!         .peer_secret("change-me-to-a-long-random-secret") // the same on every peer
//!         .build()?,
//! )?;
//! # drop(sessions); Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::{Client, Credentials};

use super::config::NodeSpec;
use super::SessionError;

pub mod endpoint;
mod local;

pub(crate) use local::LocalCopies;

pub use endpoint::{
    ConnectionLimits, PeerEndpoint, PeerEndpointStats, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PENDING_LOGINS, LOGIN_DEADLINE, PEER_PROTOCOL_USER, PEER_PROTOCOL_VERSION,
};

/// How many peers keep a copy of each session besides the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backups {
    /// One backup: two copies on two peers (the Loose Cluster). Default.
    #[default]
    One,
    /// Every peer keeps a copy (all-to-all).
    All,
    /// `k` backups: `k + 1` copies on `k + 1` peers (at least 1).
    Count(usize),
}

impl Backups {
    /// Parses `1`, `all` or a number.
    pub fn parse(s: &str) -> Result<Self, SessionError> {
        match s.trim() {
            "all" => Ok(Backups::All),
            "1" => Ok(Backups::One),
            n => match n.parse::<usize>() {
                Ok(k) if k >= 1 => Ok(Backups::Count(k)),
                _ => Err(SessionError::config(
                    "backups",
                    format!(
                        "{s:?} is not a number of backups; use 1 (default), all, or a number >= 1"
                    ),
                )),
            },
        }
    }

    /// The number of copies of a session among `peers` peers.
    pub(crate) fn copies(self, peers: usize) -> usize {
        let n = match self {
            Backups::One => 2,
            Backups::All => peers,
            Backups::Count(k) => k.saturating_add(1),
        };
        n.max(2).min(peers.max(1))
    }
}

/// The validated peer configuration.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub(crate) peers: Vec<NodeSpec>,
    pub(crate) secret: String,
    pub(crate) memory_bytes: u64,
    pub(crate) backups: Backups,
    pub(crate) bind: Option<String>,
    pub(crate) limits: ConnectionLimits,
}

impl PeerConfig {
    /// The configured peers (`id` is the peer's route).
    pub fn peers(&self) -> &[NodeSpec] {
        &self.peers
    }

    /// The number of backups.
    pub fn backups(&self) -> Backups {
        self.backups
    }

    /// The endpoint's memory bound in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// The endpoint's connection limits.
    pub fn connection_limits(&self) -> ConnectionLimits {
        self.limits
    }
}

/// The shortest shared secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// The peer settings as given to the config builder, validated by `build`.
#[derive(Clone, Debug)]
pub(crate) struct PeerSettings {
    pub(crate) peers: Option<String>,
    pub(crate) secret: Option<String>,
    pub(crate) memory_bytes: u64,
    pub(crate) backups: Backups,
    pub(crate) bind: Option<String>,
    pub(crate) max_connections: usize,
    /// `None`: the default, or `max_connections` when that is smaller.
    pub(crate) max_pending_logins: Option<usize>,
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            peers: None,
            secret: None,
            memory_bytes: 64 * 1024 * 1024,
            backups: Backups::One,
            bind: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_logins: None,
        }
    }
}

impl PeerSettings {
    /// Checks the peer settings against the rest of the configuration. `None`: no
    /// peers configured (the memcached backend).
    pub(crate) fn validate(
        self,
        route: Option<&str>,
        sticky: bool,
        memcached_nodes: bool,
        failover_nodes: bool,
    ) -> Result<Option<PeerConfig>, SessionError> {
        let Some(text) = self.peers else {
            return Ok(None);
        };
        let peers = super::config::parse_named_addresses("peers", &text)?;
        if memcached_nodes {
            return Err(SessionError::config(
                "peers",
                "nodes (memcached) and peers are two different backends; configure one of them",
            ));
        }
        if failover_nodes {
            return Err(SessionError::config(
                "failover_nodes",
                "failover nodes are memcached nodes; the peer backend places copies by backups",
            ));
        }
        if !sticky {
            return Err(SessionError::config(
                "mode",
                "the peer backend is sticky only (the owner's memory is primary, the peers keep backups); \
                 set mode(Mode::Sticky), or use memcached nodes for non-sticky sessions",
            ));
        }
        let Some(route) = route else {
            return Err(SessionError::config(
                "route",
                "the peer backend needs this instance's route, one of the peers (e.g. route(\"web1\"))",
            ));
        };
        if !peers.iter().any(|p| p.id == route) {
            return Err(SessionError::config(
                "peers",
                format!("this instance's route {route:?} is not among the peers; list every instance, this one included"),
            ));
        }
        let secret = self.secret.unwrap_or_default();
        if secret.len() < MIN_SECRET_LEN || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SessionError::config(
                "peer_secret",
                format!("the peer backend needs a shared secret of at least {MIN_SECRET_LEN} printable ASCII characters without spaces, the same on every peer"),
            ));
        }
        if self.memory_bytes < 64 * 1024 {
            return Err(SessionError::config(
                "peer_memory",
                "must be at least 64 KiB",
            ));
        }
        if let Backups::Count(0) = self.backups {
            return Err(SessionError::config("backups", "must be at least 1"));
        }
        // Each peer holds one connection, and a reconnecting one may briefly hold two.
        let min_connections = 2 * peers.len();
        let max_connections = self.max_connections;
        let max_pending_logins = self
            .max_pending_logins
            .unwrap_or(DEFAULT_MAX_PENDING_LOGINS.min(max_connections));
        if max_connections < min_connections {
            return Err(SessionError::config(
                "peer_max_connections",
                format!("{max_connections} is too few for {} peers (each holds a connection, two while it reconnects); set at least {min_connections}", peers.len()),
            ));
        }
        if max_pending_logins == 0 || max_pending_logins > max_connections {
            return Err(SessionError::config(
                "peer_max_pending_logins",
                format!("must be at least 1 and at most peer_max_connections ({max_connections}); {max_pending_logins} given"),
            ));
        }
        Ok(Some(PeerConfig {
            peers,
            secret,
            memory_bytes: self.memory_bytes,
            backups: self.backups,
            bind: self.bind,
            limits: ConnectionLimits {
                max_connections,
                max_pending_logins,
            },
        }))
    }
}

/// Starts this instance's endpoint and builds the client whose nodes are the peers.
pub(crate) fn start(
    peers: &PeerConfig,
    route: &str,
    operation_timeout: Duration,
    max_value: usize,
) -> Result<(Client, Arc<PeerEndpoint>), SessionError> {
    let own = peers
        .peers
        .iter()
        .find(|p| p.id == route)
        .ok_or_else(|| SessionError::config("peers", "this instance's route is not a peer"))?;
    let bind = peers.bind.as_deref().unwrap_or(own.address.as_str());
    let endpoint = PeerEndpoint::bind_with_limits(
        bind,
        &peers.secret,
        peers.memory_bytes,
        max_value,
        peers.limits,
    )
    .map_err(|e| {
        SessionError::config(
            "peers",
            format!("the replication endpoint could not listen on {bind}: {e}"),
        )
    })?;
    let mut builder = Client::builder()
        .operation_timeout(operation_timeout)
        .max_value_size(max_value)
        // Peers restart: a restarted one is seen again within about 2 s (the default
        // backoff grows to 30 s), and a stalled one is dropped after 3 timeouts.
        .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(2))
        .timeout_threshold(3)
        .credentials(Credentials::new(PEER_PROTOCOL_USER, peers.secret.as_str()));
    for p in &peers.peers {
        builder = builder.node_config(crate::NodeConfig::new(p.address.as_str()).id(p.id.as_str()));
    }
    let client = builder.build()?;
    Ok((client, Arc::new(endpoint)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_per_backups_setting() {
        assert_eq!(Backups::One.copies(3), 2);
        assert_eq!(Backups::One.copies(1), 1);
        assert_eq!(Backups::All.copies(3), 3);
        assert_eq!(Backups::All.copies(2), 2);
        assert_eq!(Backups::Count(2).copies(5), 3);
        assert_eq!(Backups::Count(9).copies(3), 3);
        assert_eq!(Backups::parse("all").unwrap(), Backups::All);
        assert_eq!(Backups::parse("3").unwrap(), Backups::Count(3));
        assert!(Backups::parse("0").is_err());
        assert!(Backups::parse("x").is_err());
    }
}
