//! Configuration: [`SessionConfig::builder`], validated by [`SessionConfigBuilder::build`].
//! Every refusal is a [`SessionError::Config`] naming the field and the fix.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use super::clock::{Clock, SystemClock};
use super::codec::CodecKind;
use super::cookie::CookieConfig;
use super::id::is_valid_name;
use super::SessionError;

/// Where the primary copy of a session lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// The instance's in-memory copy is primary; memcached holds copies for failover.
    #[default]
    Sticky,
    /// Memcached is primary; every request loads the session and writes it back.
    NonSticky,
}

impl std::str::FromStr for Mode {
    type Err = SessionError;
    fn from_str(s: &str) -> Result<Self, SessionError> {
        match s {
            "sticky" => Ok(Mode::Sticky),
            "non-sticky" | "nonsticky" | "non_sticky" => Ok(Mode::NonSticky),
            _ => Err(SessionError::config(
                "mode",
                format!("{s:?} is not a mode; use \"sticky\" or \"non-sticky\""),
            )),
        }
    }
}

/// When a sticky-mode save completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// After memcached acknowledged the primary and the backup copy (nothing acknowledged
    /// is lost).
    #[default]
    Sync,
    /// Once the encoded session is queued for a background writer (bounded queue; see the
    /// loss window in the module docs).
    Async,
}

/// Which non-sticky requests take the session lock.
#[derive(Clone, Debug, Default)]
pub enum LockingMode {
    /// No lock: concurrent requests on different instances may overwrite each other.
    #[default]
    None,
    /// Every request that loads the session locks it.
    All,
    /// Requests to paths seen read-only are not locked (and never written unless they
    /// change the session after all); every other request is locked.
    Auto,
    /// Requests whose path matches the pattern are locked.
    UriPattern(Regex),
}

impl LockingMode {
    /// Parses `none`, `all`, `auto` or `uriPattern:<regex>`.
    pub fn parse(s: &str) -> Result<Self, SessionError> {
        match s {
            "none" => Ok(LockingMode::None),
            "all" => Ok(LockingMode::All),
            "auto" => Ok(LockingMode::Auto),
            _ => match s.strip_prefix("uriPattern:") {
                Some(pattern) => Regex::new(pattern)
                    .map(LockingMode::UriPattern)
                    .map_err(|e| {
                        SessionError::config(
                            "locking",
                            format!("uriPattern regex does not compile: {e}"),
                        )
                    }),
                None => Err(SessionError::config(
                    "locking",
                    format!(
                        "{s:?} is not a locking mode; use none, all, auto or uriPattern:<regex>"
                    ),
                )),
            },
        }
    }
}

impl PartialEq for LockingMode {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (LockingMode::UriPattern(a), LockingMode::UriPattern(b)) => a.as_str() == b.as_str(),
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

/// What a request does when it could not get the session lock within `lock_wait`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LockTimeoutPolicy {
    /// Fail the load with [`SessionError::LockTimeout`] (no lost update). Default.
    #[default]
    Fail,
    /// Go on without the lock (MSM's behaviour); counted and logged as a warning.
    Proceed,
}

/// A configured memcached node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node id (the name used in session ids).
    pub id: String,
    /// `host:port`.
    pub address: String,
}

/// The validated configuration of a [`super::BackupSessionService`].
#[derive(Clone)]
pub struct SessionConfig {
    pub(crate) nodes: Vec<NodeSpec>,
    pub(crate) failover_nodes: Vec<String>,
    pub(crate) mode: Mode,
    pub(crate) write_mode: WriteMode,
    pub(crate) async_queue_capacity: usize,
    pub(crate) locking: LockingMode,
    pub(crate) lock_expiry: Duration,
    pub(crate) lock_wait: Duration,
    pub(crate) lock_timeout_policy: LockTimeoutPolicy,
    pub(crate) max_inactive_interval: Duration,
    pub(crate) route: Option<String>,
    pub(crate) codec: CodecKind,
    pub(crate) key_prefix: String,
    pub(crate) max_session_size: usize,
    pub(crate) operation_timeout: Duration,
    pub(crate) cookie: CookieConfig,
    pub(crate) url_rewriting: bool,
    pub(crate) auto_readonly_paths: usize,
    pub(crate) max_local_sessions: usize,
    pub(crate) auto_readonly_bytes: usize,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) lifecycle: super::lifecycle::LifecycleConfig,
    /// The peer backend (`None`: memcached nodes).
    pub(crate) peers: Option<super::peer::PeerConfig>,
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig")
            .field("nodes", &self.nodes)
            .field("failover_nodes", &self.failover_nodes)
            .field("mode", &self.mode)
            .field("write_mode", &self.write_mode)
            .field("locking", &self.locking)
            .field("route", &self.route)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl SessionConfig {
    /// A builder with the defaults of the configuration reference (docs/session.md).
    pub fn builder() -> SessionConfigBuilder {
        SessionConfigBuilder::default()
    }

    /// The configured nodes.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    /// The failover node ids.
    pub fn failover_nodes(&self) -> &[String] {
        &self.failover_nodes
    }

    /// Sticky or non-sticky.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The route of this instance.
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// The codec of new sessions.
    pub fn codec(&self) -> CodecKind {
        self.codec
    }

    /// The cookie settings.
    pub fn cookie(&self) -> &CookieConfig {
        &self.cookie
    }

    /// True when `;jsessionid=` path parameters are accepted (opt-in: off by default).
    pub fn url_rewriting(&self) -> bool {
        self.url_rewriting
    }

    /// The default max inactive interval of new sessions.
    pub fn max_inactive_interval(&self) -> Duration {
        self.max_inactive_interval
    }
}

/// Builds a [`SessionConfig`]. Start from [`SessionConfig::builder`].
#[derive(Clone)]
pub struct SessionConfigBuilder {
    nodes: Option<String>,
    failover_nodes: Option<String>,
    mode: Mode,
    write_mode: WriteMode,
    async_queue_capacity: usize,
    locking: Result<LockingMode, String>,
    lock_expiry: Duration,
    lock_wait: Duration,
    lock_timeout_policy: LockTimeoutPolicy,
    max_inactive_interval: Duration,
    route: Option<String>,
    codec: CodecKind,
    key_prefix: String,
    max_session_size: usize,
    operation_timeout: Duration,
    cookie: CookieConfig,
    url_rewriting: bool,
    auto_readonly_paths: usize,
    max_local_sessions: usize,
    auto_readonly_bytes: usize,
    clock: Arc<dyn Clock>,
    pub(crate) lifecycle: super::lifecycle::LifecycleConfig,
    peers: super::peer::PeerSettings,
}

impl Default for SessionConfigBuilder {
    fn default() -> Self {
        SessionConfigBuilder {
            nodes: None,
            failover_nodes: None,
            mode: Mode::Sticky,
            write_mode: WriteMode::Sync,
            async_queue_capacity: 1024,
            locking: Ok(LockingMode::None),
            lock_expiry: Duration::from_secs(2),
            lock_wait: Duration::from_secs(5),
            lock_timeout_policy: LockTimeoutPolicy::Fail,
            max_inactive_interval: Duration::from_secs(30 * 60),
            route: None,
            codec: CodecKind::MessagePack,
            key_prefix: String::new(),
            max_session_size: 1024 * 1024 - 1024,
            operation_timeout: Duration::from_secs(1),
            cookie: CookieConfig::default(),
            url_rewriting: false,
            auto_readonly_paths: 1000,
            max_local_sessions: 100_000,
            auto_readonly_bytes: 64 * 1024,
            clock: Arc::new(SystemClock),
            lifecycle: Default::default(),
            peers: super::peer::PeerSettings::default(),
        }
    }
}

impl fmt::Debug for SessionConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfigBuilder")
            .field("nodes", &self.nodes)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl SessionConfigBuilder {
    /// The memcached nodes as `id:host:port,id:host:port,...` (ids: 1-32 of
    /// `[A-Za-z0-9_]`). Required unless the service is given a client.
    pub fn nodes(mut self, nodes: impl Into<String>) -> Self {
        self.nodes = Some(nodes.into());
        self
    }

    /// Failover node ids, comma or space separated: used for new sessions only when no
    /// other node is up (list the memcached on this instance's own machine here).
    /// Sticky mode only (as in memcached-session-manager): [`build`](Self::build) refuses
    /// it with [`Mode::NonSticky`].
    pub fn failover_nodes(mut self, ids: impl Into<String>) -> Self {
        self.failover_nodes = Some(ids.into());
        self
    }

    /// Sticky (default) or non-sticky.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sticky mode: sync (default) or async writes.
    pub fn write_mode(mut self, write_mode: WriteMode) -> Self {
        self.write_mode = write_mode;
        self
    }

    /// Capacity of the async write queue (default 1024 sessions).
    pub fn async_queue_capacity(mut self, capacity: usize) -> Self {
        self.async_queue_capacity = capacity;
        self
    }

    /// Non-sticky locking mode.
    pub fn locking(mut self, locking: LockingMode) -> Self {
        self.locking = Ok(locking);
        self
    }

    /// Non-sticky locking mode from text: `none`, `all`, `auto`, `uriPattern:<regex>`.
    pub fn locking_str(mut self, locking: &str) -> Self {
        self.locking = LockingMode::parse(locking).map_err(|e| match e {
            SessionError::Config { reason, .. } => reason,
            other => other.to_string(),
        });
        self
    }

    /// How long the lock of a holder that died (instance killed) blocks its session: at
    /// most this plus 1 s (memcached's expiry resolution) after its last renewal
    /// (default 2 s, >= 1 s). A live holder renews its lock every third of this, so a
    /// request longer than `lock_expiry` keeps its lock.
    pub fn lock_expiry(mut self, expiry: Duration) -> Self {
        self.lock_expiry = expiry;
        self
    }

    /// How long a request waits for the lock (default 5 s: longer than the up to
    /// `lock_expiry` + 1 s a dead holder's lock lives, so a request waits it out instead
    /// of failing).
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// What happens when the lock wait runs out (default: fail the load).
    pub fn lock_timeout_policy(mut self, policy: LockTimeoutPolicy) -> Self {
        self.lock_timeout_policy = policy;
        self
    }

    /// Max inactive interval of new sessions (default 30 min, >= 1 s).
    pub fn max_inactive_interval(mut self, interval: Duration) -> Self {
        self.max_inactive_interval = interval;
        self
    }

    /// This instance's route, written into the ids of the sessions it owns.
    pub fn route(mut self, route: impl Into<String>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// Codec of new sessions (default MessagePack).
    pub fn codec(mut self, codec: CodecKind) -> Self {
        self.codec = codec;
        self
    }

    /// Prefix of every memcached key (default empty), to share memcached with others.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Largest encoded session accepted (default 1 MiB - 1 KiB, memcached's default item
    /// limit less the item overhead).
    pub fn max_session_size(mut self, bytes: usize) -> Self {
        self.max_session_size = bytes;
        self
    }

    /// Memcached operation timeout of the client the service builds (default 1 s).
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Cookie settings.
    pub fn cookie(mut self, cookie: CookieConfig) -> Self {
        self.cookie = cookie;
        self
    }

    /// Accept session ids from `;jsessionid=` path parameters, for clients without
    /// cookies (default **false**). Opt in knowingly: an id in a URL enables session
    /// fixation (a victim who follows a link carrying an attacker's id works in, and
    /// writes into, the attacker's session) and leaks through `Referer`, logs and
    /// shared links. Renew the id on login ([`super::SessionRequest::create`]) when it
    /// is on.
    pub fn url_rewriting(mut self, on: bool) -> Self {
        self.url_rewriting = on;
        self
    }

    /// `auto` locking: how many read-only paths are remembered (default 1000; 0: none,
    /// every request is locked).
    pub fn auto_readonly_paths(mut self, n: usize) -> Self {
        self.auto_readonly_paths = n;
        self
    }

    /// Sticky mode: the most sessions kept in this instance's memory (default 100,000).
    /// Past it, the least recently used copies that no request is using and that have
    /// no write pending are dropped (counted in `local_evictions`); their next request
    /// reads them back from memcached. Must be at least 1.
    pub fn max_local_sessions(mut self, n: usize) -> Self {
        self.max_local_sessions = n;
        self
    }

    /// `auto` locking: how many bytes of read-only paths (the sum of their lengths) are
    /// remembered (default 64 KiB). Past it, the least recently seen paths are
    /// forgotten; a longer path is never remembered. Must be positive unless
    /// `auto_readonly_paths` is 0.
    pub fn auto_readonly_bytes(mut self, bytes: usize) -> Self {
        self.auto_readonly_bytes = bytes;
        self
    }

    /// The clock (default the system clock; tests inject a [`super::ManualClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The peer backend's settings (see [`super::peer::PeerSettings`]): the peers as
    /// `route:host:port,...`, this instance's route among them, instead of `nodes`.
    pub fn peers(mut self, peers: impl Into<String>) -> Self {
        self.peers.peers = Some(peers.into());
        self
    }

    /// The peer backend's shared secret (at least 16 printable ASCII characters, the
    /// same on every peer): a connection to the replication endpoint that does not log
    /// in with it is refused.
    pub fn peer_secret(mut self, secret: impl Into<String>) -> Self {
        self.peers.secret = Some(secret.into());
        self
    }

    /// The memory bound of this instance's replication endpoint in bytes (default
    /// 64 MiB); past it the least recently used copies are evicted (counted).
    pub fn peer_memory(mut self, bytes: u64) -> Self {
        self.peers.memory_bytes = bytes;
        self
    }

    /// The peer backend's backups per session (default one).
    pub fn backups(mut self, backups: super::peer::Backups) -> Self {
        self.peers.backups = backups;
        self
    }

    /// The most connections this instance's replication endpoint keeps open at once
    /// (default [`super::peer::DEFAULT_MAX_CONNECTIONS`]; at least twice the number of
    /// peers). One more is refused at once and counted.
    pub fn peer_max_connections(mut self, n: usize) -> Self {
        self.peers.max_connections = n;
        self
    }

    /// The most connections to the replication endpoint that have not logged in yet, at
    /// once (default [`super::peer::DEFAULT_MAX_PENDING_LOGINS`]; 1 to
    /// `peer_max_connections`). One more is refused at once and counted; each lasts at
    /// most [`super::peer::LOGIN_DEADLINE`].
    pub fn peer_max_pending_logins(mut self, n: usize) -> Self {
        self.peers.max_pending_logins = Some(n);
        self
    }

    /// The address the replication endpoint listens on (default: this instance's
    /// address in `peers`), e.g. `0.0.0.0:7001` behind an address the peers know.
    pub fn peer_bind(mut self, addr: impl Into<String>) -> Self {
        self.peers.bind = Some(addr.into());
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<SessionConfig, SessionError> {
        let nodes = match &self.nodes {
            Some(text) => parse_nodes(text)?,
            None => Vec::new(),
        };
        let peers = self.peers.validate(
            self.route.as_deref(),
            self.mode == Mode::Sticky,
            !nodes.is_empty(),
            self.failover_nodes.is_some(),
        )?;
        let failover_nodes: Vec<String> = self
            .failover_nodes
            .as_deref()
            .unwrap_or("")
            .split([',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if !nodes.is_empty() {
            for f in &failover_nodes {
                if !nodes.iter().any(|n| &n.id == f) {
                    return Err(SessionError::config(
                        "failover_nodes",
                        format!("{f:?} is not one of the configured node ids"),
                    ));
                }
            }
            if nodes.iter().all(|n| failover_nodes.contains(&n.id)) {
                return Err(SessionError::config(
                    "failover_nodes",
                    "every node is a failover node; leave at least one node out of the list",
                ));
            }
        }
        if self.mode == Mode::NonSticky && !failover_nodes.is_empty() {
            return Err(SessionError::config(
                "failover_nodes",
                "failover nodes are a sticky-mode setting (they keep an instance's own machine's \
                 node out of its sessions' placement); in non-sticky mode every instance serves \
                 every session, so there is no own machine to avoid: remove failover_nodes or \
                 use Mode::Sticky",
            ));
        }
        let locking = self
            .locking
            .map_err(|reason| SessionError::config("locking", reason))?;
        if self.async_queue_capacity == 0 {
            return Err(SessionError::config(
                "async_queue_capacity",
                "must be at least 1",
            ));
        }
        if self.lock_expiry < Duration::from_secs(1) {
            return Err(SessionError::config(
                "lock_expiry",
                "must be at least 1 s (memcached expiry has a 1 s resolution)",
            ));
        }
        if self.max_local_sessions == 0 {
            return Err(SessionError::config(
                "max_local_sessions",
                "must be at least 1 (sessions in use by requests are always kept)",
            ));
        }
        if self.lock_wait.is_zero() {
            return Err(SessionError::config(
                "lock_wait",
                "must be positive; use locking none to never wait",
            ));
        }
        if self.max_inactive_interval < Duration::from_secs(1) {
            return Err(SessionError::config(
                "max_inactive_interval",
                "must be at least 1 s",
            ));
        }
        if let Some(r) = &self.route {
            if !is_valid_name(r) {
                return Err(SessionError::config(
                    "route",
                    format!("{r:?} must be 1-32 characters of [A-Za-z0-9_]"),
                ));
            }
        }
        if !self.codec.is_available() {
            return Err(SessionError::config(
                "codec",
                format!(
                    "{} is not compiled in; enable the codec-{} feature",
                    self.codec, self.codec
                ),
            ));
        }
        if self.key_prefix.len() > 64
            || self
                .key_prefix
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(SessionError::config(
                "key_prefix",
                "must be at most 64 bytes without whitespace or control characters",
            ));
        }
        if self.max_session_size < 64 {
            return Err(SessionError::config(
                "max_session_size",
                "must be at least 64 bytes",
            ));
        }
        if self.operation_timeout.is_zero() {
            return Err(SessionError::config(
                "operation_timeout",
                "must be positive",
            ));
        }
        if self.auto_readonly_paths > 0 && self.auto_readonly_bytes == 0 {
            return Err(SessionError::config(
                "auto_readonly_bytes",
                "is 0, so no read-only path could be remembered although auto_readonly_paths is positive; give a positive size (default 64 KiB) or set auto_readonly_paths to 0",
            ));
        }
        self.cookie.validate()?;
        Ok(SessionConfig {
            nodes,
            failover_nodes,
            mode: self.mode,
            write_mode: self.write_mode,
            async_queue_capacity: self.async_queue_capacity,
            locking,
            lock_expiry: self.lock_expiry,
            lock_wait: self.lock_wait,
            lock_timeout_policy: self.lock_timeout_policy,
            max_inactive_interval: self.max_inactive_interval,
            route: self.route,
            codec: self.codec,
            key_prefix: self.key_prefix,
            max_session_size: self.max_session_size,
            operation_timeout: self.operation_timeout,
            cookie: self.cookie,
            url_rewriting: self.url_rewriting,
            auto_readonly_paths: self.auto_readonly_paths,
            max_local_sessions: self.max_local_sessions,
            auto_readonly_bytes: self.auto_readonly_bytes,
            clock: self.clock,
            lifecycle: self.lifecycle,
            peers,
        })
    }
}

/// Parses `id:host:port,...`.
pub fn parse_nodes(text: &str) -> Result<Vec<NodeSpec>, SessionError> {
    parse_named_addresses("nodes", text)
}

/// Parses `id:host:port,...` for the setting `field` (`nodes`, `peers`).
pub(crate) fn parse_named_addresses(
    field: &'static str,
    text: &str,
) -> Result<Vec<NodeSpec>, SessionError> {
    let mut out: Vec<NodeSpec> = Vec::new();
    for entry in text
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let bad = |why: &str| {
            SessionError::config(
                field,
                format!("entry {entry:?} {why}; write id:host:port, e.g. n1:127.0.0.1:11211"),
            )
        };
        let (id, address) = entry.split_once(':').ok_or_else(|| bad("has no id"))?;
        if !is_valid_name(id) {
            return Err(bad("has an id that is not 1-32 characters of [A-Za-z0-9_]"));
        }
        let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad("has an empty host or an invalid port"));
        }
        if out.iter().any(|n| n.id == id) {
            return Err(bad("repeats a node id"));
        }
        out.push(NodeSpec {
            id: id.to_owned(),
            address: address.to_owned(),
        });
    }
    if out.is_empty() {
        return Err(SessionError::config(
            field,
            "no node given; write id:host:port,... e.g. n1:127.0.0.1:11211",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<SessionConfig, SessionError>) -> &'static str {
        match r {
            Err(SessionError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = SessionConfig::builder()
            .nodes("n1:127.0.0.1:11211")
            .build()
            .unwrap();
        assert_eq!(c.mode, Mode::Sticky);
        assert_eq!(c.write_mode, WriteMode::Sync);
        assert_eq!(c.locking, LockingMode::None);
        assert_eq!(c.max_inactive_interval, Duration::from_secs(1800));
        assert_eq!(c.lock_expiry, Duration::from_secs(2));
        assert_eq!(c.lock_wait, Duration::from_secs(5));
        assert_eq!(c.codec, CodecKind::MessagePack);
        assert_eq!(c.cookie.name, "JSESSIONID");
        assert_eq!(c.auto_readonly_paths, 1000);
        assert_eq!(c.auto_readonly_bytes, 64 * 1024);
    }

    #[test]
    fn secure_defaults_no_url_ids_and_a_secure_cookie() {
        let c = SessionConfig::builder().nodes("n1:h:1").build().unwrap();
        assert!(!c.url_rewriting());
        assert!(c.cookie().secure);
        let opted = SessionConfig::builder()
            .nodes("n1:h:1")
            .url_rewriting(true)
            .cookie(CookieConfig {
                secure: false,
                ..CookieConfig::default()
            })
            .build()
            .unwrap();
        assert!(opted.url_rewriting());
        assert!(!opted.cookie().secure);
    }

    #[test]
    fn contradictory_settings_are_refused_at_build_naming_the_field() {
        let b = || SessionConfig::builder().nodes("n1:h:1");
        let r = b()
            .cookie(CookieConfig {
                same_site: super::super::SameSite::None,
                secure: false,
                ..CookieConfig::default()
            })
            .build();
        assert_eq!(field_of(r), "cookie.same_site");
        let r = b().auto_readonly_bytes(0).build();
        assert_eq!(field_of(r), "auto_readonly_bytes");
        assert!(b()
            .auto_readonly_paths(0)
            .auto_readonly_bytes(0)
            .build()
            .is_ok());
    }

    #[test]
    fn nodes_parse_in_order_with_ids() {
        let n = parse_nodes("n1:127.0.0.1:11211, n2:localhost:11212").unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(n[1].id, "n2");
        assert_eq!(n[1].address, "localhost:11212");
    }

    #[test]
    fn bad_node_lists_are_refused_naming_the_field() {
        for bad in [
            "",
            "127.0.0.1:11211",
            "n1:host",
            "n-1:h:1",
            "n1:h:0",
            "n1:h:1,n1:h:2",
        ] {
            let r = SessionConfig::builder().nodes(bad).build();
            assert_eq!(field_of(r), "nodes", "{bad:?}");
        }
    }

    #[test]
    fn failover_nodes_are_refused_in_non_sticky_mode() {
        let r = SessionConfig::builder()
            .nodes("n1:h:1,n2:h:2")
            .mode(Mode::NonSticky)
            .failover_nodes("n1")
            .build();
        let message = r
            .as_ref()
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert_eq!(field_of(r), "failover_nodes");
        assert!(message.contains("sticky"), "{message}");
        let ok = SessionConfig::builder()
            .nodes("n1:h:1,n2:h:2")
            .mode(Mode::NonSticky)
            .build();
        assert!(ok.is_ok());
    }

    #[test]
    fn failover_nodes_must_be_known_and_not_all() {
        let r = SessionConfig::builder()
            .nodes("n1:h:1,n2:h:2")
            .failover_nodes("n3")
            .build();
        assert_eq!(field_of(r), "failover_nodes");
        let r = SessionConfig::builder()
            .nodes("n1:h:1,n2:h:2")
            .failover_nodes("n1,n2")
            .build();
        assert_eq!(field_of(r), "failover_nodes");
        let ok = SessionConfig::builder()
            .nodes("n1:h:1,n2:h:2")
            .failover_nodes("n2")
            .build();
        assert_eq!(ok.unwrap().failover_nodes, vec!["n2".to_string()]);
    }

    #[test]
    fn locking_modes_parse_and_bad_ones_are_refused() {
        assert_eq!(LockingMode::parse("all").unwrap(), LockingMode::All);
        assert_eq!(LockingMode::parse("auto").unwrap(), LockingMode::Auto);
        assert!(matches!(
            LockingMode::parse("uriPattern:^/cart").unwrap(),
            LockingMode::UriPattern(_)
        ));
        let r = SessionConfig::builder()
            .nodes("n1:h:1")
            .locking_str("sometimes")
            .build();
        assert_eq!(field_of(r), "locking");
        let r = SessionConfig::builder()
            .nodes("n1:h:1")
            .locking_str("uriPattern:(")
            .build();
        assert_eq!(field_of(r), "locking");
    }

    #[test]
    fn out_of_range_values_are_refused_naming_the_field() {
        let b = || SessionConfig::builder().nodes("n1:h:1");
        assert_eq!(
            field_of(b().lock_expiry(Duration::from_millis(10)).build()),
            "lock_expiry"
        );
        assert_eq!(field_of(b().lock_wait(Duration::ZERO).build()), "lock_wait");
        assert_eq!(
            field_of(b().max_inactive_interval(Duration::ZERO).build()),
            "max_inactive_interval"
        );
        assert_eq!(field_of(b().route("a.b").build()), "route");
        assert_eq!(
            field_of(b().async_queue_capacity(0).build()),
            "async_queue_capacity"
        );
        assert_eq!(field_of(b().key_prefix("a b").build()), "key_prefix");
        assert_eq!(
            field_of(b().max_session_size(1).build()),
            "max_session_size"
        );
    }

    #[test]
    fn a_codec_not_compiled_in_is_refused() {
        for k in CodecKind::ALL.into_iter().filter(|k| !k.is_available()) {
            let r = SessionConfig::builder().nodes("n1:h:1").codec(k).build();
            assert_eq!(field_of(r), "codec");
        }
    }

    #[test]
    fn mode_parses_from_text() {
        assert_eq!("sticky".parse::<Mode>().unwrap(), Mode::Sticky);
        assert_eq!("non-sticky".parse::<Mode>().unwrap(), Mode::NonSticky);
        assert!("both".parse::<Mode>().is_err());
    }
}
