//! The service facade: one per application instance; builds the store, the engine and
//! the async writer, and hands out per-request handles.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::{Client, NodeState};

use super::config::{Mode, SessionConfig};
use super::cookie::{strip_url_session_id, CookieDecision, SessionIdCandidates};
use super::engine::Engine;
use super::request::{RequestInner, SessionRequest};
use super::stats::{SessionStats, StatsSnapshot};
use super::store::{Store, HANDOFF_PERIOD};
use super::writer::AsyncWriter;
use super::SessionError;

/// What the service needs to know about a request.
#[derive(Clone, Debug, Default)]
pub struct RequestInfo {
    path: String,
    session_ids: Vec<String>,
}

impl RequestInfo {
    /// A request for `path` (without the query). With URL rewriting on, a
    /// `;jsessionid=` parameter in the path is taken as a session id.
    pub fn new(path: impl Into<String>) -> Self {
        RequestInfo {
            path: path.into(),
            session_ids: Vec::new(),
        }
    }

    /// The session id the request presented (for instance the cookie's value).
    pub fn session_id(mut self, id: Option<&str>) -> Self {
        if let Some(id) = id {
            self.session_ids.push(id.to_owned());
        }
        self
    }

    /// Several candidate ids (a `Cookie` header may carry the cookie more than once);
    /// the first that names a live session is used.
    pub fn session_ids<I, S>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.session_ids.extend(ids.into_iter().map(Into::into));
        self
    }

    /// The path.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// The session service: one per application instance, cheap to clone.
#[derive(Clone)]
pub struct BackupSessionService {
    inner: Arc<Engine>,
    /// The peer backend's replication endpoint (stops when the last clone is dropped).
    peer: Option<Arc<super::peer::PeerEndpoint>>,
}

impl std::fmt::Debug for BackupSessionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupSessionService")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl BackupSessionService {
    /// Builds the service and its memcached client from `config.nodes` (must run inside
    /// a tokio runtime).
    pub fn new(config: SessionConfig) -> Result<Self, SessionError> {
        if let (Some(peers), Some(route)) = (&config.peers, &config.route) {
            let (client, endpoint) = super::peer::start(
                peers,
                route,
                config.operation_timeout,
                config.max_session_size.saturating_add(1024),
            )?;
            let copies = peers.backups.copies(peers.peers.len());
            let local = (route.clone(), endpoint.local());
            let mut service = Self::build(config, client, copies, Some(local))?;
            service.peer = Some(endpoint);
            return Ok(service);
        }
        if config.nodes.is_empty() {
            return Err(SessionError::config(
                "nodes",
                "no node given; set nodes(\"id:host:port,...\") or use with_client",
            ));
        }
        let mut builder = Client::builder().operation_timeout(config.operation_timeout);
        for n in &config.nodes {
            builder =
                builder.node_config(crate::NodeConfig::new(n.address.as_str()).id(n.id.as_str()));
        }
        let client = builder.build()?;
        Self::with_client(config, client)
    }

    /// Builds the service on an existing client (its node ids name the nodes; the
    /// configured node list, if any, must match them).
    pub fn with_client(config: SessionConfig, client: Client) -> Result<Self, SessionError> {
        if config.peers.is_some() {
            return Err(SessionError::config(
                "peers",
                "the peer backend builds its own client; use BackupSessionService::new",
            ));
        }
        Self::build(config, client, 2, None)
    }

    /// `local`: the peer backend's own route and endpoint, reached in process.
    fn build(
        config: SessionConfig,
        client: Client,
        copies: usize,
        local: Option<(String, super::peer::LocalCopies)>,
    ) -> Result<Self, SessionError> {
        if !config.nodes.is_empty() {
            let ids = client.node_ids();
            if config.nodes.iter().any(|n| !ids.contains(&n.id)) {
                return Err(SessionError::config(
                    "nodes",
                    "the configured node ids are not the client's node ids; configure one or the other",
                ));
            }
        }
        if config.mode == Mode::Sticky && config.route.is_none() {
            return Err(SessionError::config(
                "route",
                "sticky mode needs this instance's route (e.g. route(\"web1\")): it tells instances apart when one takes over another's session",
            ));
        }
        let stats = Arc::new(SessionStats::default());
        let mut store = Store::new(
            client,
            &config.failover_nodes,
            config.key_prefix.clone(),
            config.max_inactive_interval,
            Arc::clone(&stats),
        )?
        .with_copies(copies);
        if let Some((route, copies)) = local {
            store = store.with_local(&route, copies);
        }
        let writer = (config.mode == Mode::Sticky
            && config.write_mode == super::config::WriteMode::Async)
            .then(|| AsyncWriter::new(config.async_queue_capacity));
        let inner = Arc::new(Engine::new(config, store, stats, writer));
        AsyncWriter::start(&inner);
        if inner.config.mode == Mode::Sticky {
            tokio::spawn(sweeper(Arc::downgrade(&inner)));
            tokio::spawn(super::store::rereplicate::run(Arc::downgrade(&inner)));
        }
        let states = inner.store.client().watch_node_states();
        tokio::spawn(hint_deliverer(Arc::downgrade(&inner), states));
        Ok(BackupSessionService { inner, peer: None })
    }

    /// The peer backend's replication endpoint (`None` with memcached nodes).
    pub fn peer_endpoint(&self) -> Option<&super::peer::PeerEndpoint> {
        self.peer.as_deref()
    }

    /// Starts handling one request. Call [`SessionRequest::finish`] at its end.
    pub fn request(&self, info: RequestInfo) -> SessionRequest {
        // The URL id is stripped from the path here and only here (the tower layer
        // routes on the request's `path()`).
        let (path, url_id) = strip_url_session_id(&info.path);
        let url_id = url_id.filter(|_| self.inner.config.url_rewriting);
        let mut candidates = SessionIdCandidates::new();
        let mut presented = false;
        for id in info.session_ids.iter().map(String::as_str).chain(url_id) {
            presented = true;
            let seen = candidates.ids().iter().any(|c| c == id);
            if !candidates.push(id) && !seen && !candidates.is_truncated() {
                // Not even a cookie value: cannot be an id.
                self.inner.stats.invalid_ids.fetch_add(1, Relaxed);
            }
        }
        if candidates.is_truncated() {
            self.inner.stats.candidates_ignored.fetch_add(1, Relaxed);
            tracing::warn!(
                kept = candidates.len(),
                "request presented more distinct session ids than are looked at; the rest are ignored"
            );
        }
        let candidates = candidates.into_ids();
        SessionRequest::new(RequestInner::new(
            Arc::clone(&self.inner),
            path,
            candidates,
            presented,
        ))
    }

    /// The candidate ids in a `Cookie` header (the configured cookie name).
    pub fn ids_from_cookie_header<'a>(&self, header: &'a str) -> Vec<&'a str> {
        self.inner.config.cookie.values_in(header)
    }

    /// Logs `principal` out everywhere ("log out everywhere": password change, stolen
    /// device): every session bound to it with
    /// [`SessionRequest::bind_principal`](super::SessionRequest::bind_principal)
    /// before this call is gone on its next request, on any instance (and is
    /// invalidated then). Sessions bound after it live on. Returns the principal's new
    /// generation. Costs a read and a write of the principal's generation record on
    /// every memcached node (see docs/session.md, "Lifecycle").
    pub async fn invalidate_principal(&self, principal: &str) -> Result<u64, SessionError> {
        let generation = self.inner.invalidate_principal(principal).await?;
        Ok(generation)
    }

    /// The `Set-Cookie` value for a decision (`None`: send nothing).
    pub fn set_cookie_value(&self, decision: &CookieDecision) -> Option<String> {
        self.inner.config.cookie.set_cookie_value(decision)
    }

    /// The statistics.
    pub fn stats(&self) -> StatsSnapshot {
        let mut snapshot = self.inner.stats.snapshot();
        snapshot.local_evictions = self.inner.local.evictions();
        snapshot
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    /// The memcached client.
    pub fn client(&self) -> &Client {
        self.inner.store.client()
    }

    /// Sessions held in this instance's memory (sticky: owned sessions; non-sticky:
    /// sessions of requests in flight).
    pub fn local_sessions(&self) -> usize {
        self.inner.local.len()
    }

    /// Async mode: waits until every queued write was acknowledged (or failed). Returns
    /// at once in the other modes. Call it on graceful shutdown.
    pub async fn flush(&self) {
        if let Some(w) = &self.inner.writer {
            w.flush().await;
        }
    }

    /// Async mode: writes queued and not yet acknowledged (the current loss window).
    pub fn pending_writes(&self) -> usize {
        self.inner.writer.as_ref().map_or(0, AsyncWriter::pending)
    }

    /// Sticky mode: drops expired sessions from memory (also done every minute).
    pub fn purge_expired(&self) -> usize {
        self.inner.purge_expired()
    }

    /// Hinted handoff, now: delivers to every node that is up the tombstones and
    /// principal generations it missed while it was away (down, stopped, failing).
    /// Every instance also does this in the background every second; call it after
    /// bringing a node back to close that second's window before the next maintenance
    /// step, or from an operations endpoint. Returns the number of hints delivered
    /// (also counted in `hints_delivered`).
    pub async fn deliver_hints(&self) -> usize {
        let now = super::clock::unix_millis(self.inner.config.clock.now());
        self.inner.store.deliver_hints(now).await
    }
}

async fn sweeper(engine: Weak<Engine>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        match engine.upgrade() {
            Some(me) => {
                me.purge_expired();
            }
            None => return,
        }
    }
}

/// Hinted handoff in the background: every `HANDOFF_PERIOD`, and at once when a node
/// comes back up (so the window in which a node back from an absence serves what it
/// missed is the time to notice it is up, not up to a period).
async fn hint_deliverer(engine: Weak<Engine>, states: Vec<watch::Receiver<NodeState>>) {
    let mut nodes: Vec<NodeWatch> = states
        .into_iter()
        .map(|state| {
            let been_up = *state.borrow() == NodeState::Up;
            NodeWatch { state, been_up }
        })
        .collect();
    loop {
        let _ = tokio::time::timeout(HANDOFF_PERIOD, came_back(&mut nodes)).await;
        match engine.upgrade() {
            Some(me) => {
                let now = super::clock::unix_millis(me.config.clock.now());
                me.store.deliver_hints(now).await;
            }
            None => return,
        }
    }
}

/// One node's health as the hint deliverer follows it.
struct NodeWatch {
    state: watch::Receiver<NodeState>,
    /// The node was up before: its next `Up` is a return (the first connection is not:
    /// nothing was missed, and the periodic round covers it).
    been_up: bool,
}

/// Resolves when some node that was up before turns `Up` again; never when no state can
/// change any more.
async fn came_back(nodes: &mut [NodeWatch]) {
    loop {
        if nodes.is_empty() {
            return std::future::pending().await;
        }
        let changes = nodes.iter_mut().map(|n| Box::pin(n.state.changed()));
        let (changed, i, rest) = futures::future::select_all(changes).await;
        drop(rest);
        if changed.is_err() {
            // The client is gone (the engine with it): periodic delivery only.
            return std::future::pending().await;
        }
        let node = &mut nodes[i];
        if *node.state.borrow_and_update() == NodeState::Up {
            if node.been_up {
                return;
            }
            node.been_up = true;
        }
    }
}
