//! Session-layer test helpers, included by `tests/session_*.rs` with
//! `#[path = "kit/session.rs"] mod session_kit;` (next to `mod kit;`).
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use memkeep::session::{
    BackupSessionService, CookieDecision, Mode, RequestInfo, SaveOutcome, Session, SessionConfig,
    SessionConfigBuilder, SessionError, SessionId, SessionKey,
};
use memkeep::{Client, NodeState, Protocol};

use crate::kit::Cluster;

pub use crate::kit::nodes_spec;

/// A config builder for `cluster` in `mode` (sticky instances need a route).
pub fn config(cluster: &Cluster, mode: Mode) -> SessionConfigBuilder {
    SessionConfig::builder()
        .nodes(nodes_spec(cluster))
        .mode(mode)
        .operation_timeout(Duration::from_millis(500))
}

/// A sticky instance with `route`.
pub fn sticky(cluster: &Cluster, route: &str) -> BackupSessionService {
    BackupSessionService::new(config(cluster, Mode::Sticky).route(route).build().unwrap()).unwrap()
}

/// A non-sticky instance with a locking mode (`none`, `all`, `auto`, `uriPattern:...`).
pub fn non_sticky(cluster: &Cluster, locking: &str) -> BackupSessionService {
    non_sticky_with(cluster, locking, |b| b)
}

/// [`non_sticky`] with more settings applied by `tune`.
pub fn non_sticky_with(
    cluster: &Cluster,
    locking: &str,
    tune: impl FnOnce(SessionConfigBuilder) -> SessionConfigBuilder,
) -> BackupSessionService {
    let builder = config(cluster, Mode::NonSticky)
        .locking_str(locking)
        .lock_wait(Duration::from_secs(10));
    BackupSessionService::new(tune(builder).build().unwrap()).unwrap()
}

/// A client of its own for looking at what the servers hold.
pub fn observer(cluster: &Cluster) -> Client {
    crate::kit::client(cluster, memkeep::Protocol::Meta)
}

/// A browser: keeps the session cookie the service hands out.
#[derive(Clone, Debug, Default)]
pub struct Browser {
    /// The cookie's value.
    pub cookie: Option<String>,
}

impl Browser {
    /// A browser without a cookie.
    pub fn new() -> Self {
        Browser::default()
    }

    /// The parsed id of the cookie.
    pub fn id(&self) -> Option<SessionId> {
        self.cookie.as_deref().and_then(SessionId::parse)
    }

    fn apply(&mut self, outcome: &SaveOutcome) {
        match &outcome.cookie {
            CookieDecision::Set(id) => self.cookie = Some(id.clone()),
            CookieDecision::Remove => self.cookie = None,
            CookieDecision::Keep => {}
        }
    }

    /// A request that uses (creating if needed) its session.
    pub async fn call<R>(
        &mut self,
        svc: &BackupSessionService,
        path: &str,
        f: impl FnOnce(&Session) -> R,
    ) -> Result<(R, SaveOutcome), SessionError> {
        let req = svc.request(RequestInfo::new(path).session_id(self.cookie.as_deref()));
        let session = match req.get_or_create().await {
            Ok(s) => s,
            Err(e) => {
                let _ = req.finish().await;
                return Err(e);
            }
        };
        let r = f(&session);
        drop(session);
        let outcome = req.finish().await?;
        self.apply(&outcome);
        Ok((r, outcome))
    }

    /// A request that looks at its session without creating one.
    pub async fn visit<R>(
        &mut self,
        svc: &BackupSessionService,
        path: &str,
        f: impl FnOnce(Option<&Session>) -> R,
    ) -> Result<(R, SaveOutcome), SessionError> {
        let req = svc.request(RequestInfo::new(path).session_id(self.cookie.as_deref()));
        let session = match req.session().await {
            Ok(s) => s,
            Err(e) => {
                let _ = req.finish().await;
                return Err(e);
            }
        };
        let r = f(session.as_ref());
        drop(session);
        let outcome = req.finish().await?;
        self.apply(&outcome);
        Ok((r, outcome))
    }

    /// A login: the session (created if needed) gets `user = 7`, is bound to
    /// `principal` when one is given, and its id is rotated. Keeps the new cookie.
    pub async fn login(
        &mut self,
        svc: &BackupSessionService,
        principal: Option<&str>,
    ) -> Result<SaveOutcome, SessionError> {
        let req = svc.request(RequestInfo::new("/login").session_id(self.cookie.as_deref()));
        let prepared = async {
            let session = match principal {
                Some(p) => req.bind_principal(p).await?,
                None => req.get_or_create().await?,
            };
            session.insert("user", &7u64)?;
            req.cycle_id().await
        };
        if let Err(e) = prepared.await {
            let _ = req.finish().await;
            return Err(e);
        }
        let outcome = req.finish().await?;
        self.apply(&outcome);
        Ok(outcome)
    }

    /// Reads attribute `name` as a u64 (None: no session or no attribute).
    pub async fn read_u64(
        &mut self,
        svc: &BackupSessionService,
        name: &str,
    ) -> Result<Option<u64>, SessionError> {
        let name = name.to_owned();
        let (v, _) = self
            .visit(svc, "/read", move |s| {
                s.and_then(|s| s.get::<u64>(&name).unwrap())
            })
            .await?;
        Ok(v)
    }

    /// Increments counter `name`; returns the new value when the save was acknowledged.
    pub async fn increment(
        &mut self,
        svc: &BackupSessionService,
        name: &str,
    ) -> Result<u64, SessionError> {
        let name = name.to_owned();
        let (v, _) = self
            .call(svc, "/increment", move |s| {
                let v = s.get::<u64>(&name).unwrap().unwrap_or(0) + 1;
                s.insert(&name, &v).unwrap();
                v
            })
            .await?;
        Ok(v)
    }
}

/// Node index of a kit node id (`n2` -> 2).
pub fn index_of(node: &str) -> usize {
    node.trim_start_matches('n').parse().unwrap()
}

/// A client for a session service under fault tests: `op_timeout`, quick reconnects
/// (50 ms to 500 ms) and a low timeout threshold (3), so a stopped or restarted node is
/// noticed, and seen up again, within about a second.
pub fn fast_client(cluster: &Cluster, op_timeout: Duration) -> Client {
    crate::kit::builder(cluster, Protocol::Meta)
        .operation_timeout(op_timeout)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .timeout_threshold(3)
        .build()
        .unwrap()
}

/// A service built from `builder` on a [`fast_client`] with a 300 ms operation timeout.
pub fn service(cluster: &Cluster, builder: SessionConfigBuilder) -> BackupSessionService {
    let config = builder.build().unwrap();
    BackupSessionService::with_client(config, fast_client(cluster, Duration::from_millis(300)))
        .unwrap()
}

/// Every id a client could forge for session `key`: each configured node as the
/// primary, each node (or none) as the backup, each route (or none).
pub fn id_variants(key: SessionKey, nodes: &[String], routes: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for node in nodes {
        for backup in std::iter::once(None).chain(nodes.iter().map(Some)) {
            for route in std::iter::once(None).chain(routes.iter().copied().map(Some)) {
                let id =
                    SessionId::new(key, node.clone(), backup.cloned(), route.map(str::to_owned))
                        .unwrap();
                out.push(id.to_string());
            }
        }
    }
    out
}

/// Waits (bounded) until every service's client sees every node up.
pub async fn wait_nodes_up(services: &[&BackupSessionService], limit: Duration) -> bool {
    crate::kit::eventually(limit, || {
        services.iter().all(|svc| {
            svc.client()
                .node_ids()
                .iter()
                .all(|id| svc.client().is_up(id) == Some(true))
        })
    })
    .await
}

/// Sends requests to the stopped node `node` through `svc`'s client until the client
/// drops its connection (each times out; the client's timeout threshold then drops the
/// connection and marks the node down; a caller may then make it try to reconnect, so it
/// can be `Connecting`), so that later operations are not queued in the stopped server's
/// socket (to run when it resumes). Returns whether it got there.
pub async fn drive_down(svc: &BackupSessionService, node: &str, limit: Duration) -> bool {
    let client = svc.client().on_node(node).unwrap();
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        let state = svc.client().node_state(node);
        if matches!(state, Some(NodeState::Down | NodeState::Connecting)) {
            return true;
        }
        let _ = client.get("memkeep-test-probe").await;
    }
    false
}

/// What a request presenting `id` sees of attribute `name`: `None` when it gets no
/// session, `Some(value)` when it does.
pub async fn look(
    svc: &BackupSessionService,
    id: &str,
    name: &str,
) -> Result<Option<Option<u64>>, SessionError> {
    let mut b = Browser {
        cookie: Some(id.to_owned()),
    };
    let name = name.to_owned();
    let (v, _) = b
        .visit(svc, "/look", move |s| {
            s.map(|s| s.get::<u64>(&name).unwrap())
        })
        .await?;
    Ok(v)
}

/// The first dozen of a list of wrong outcomes, with their number.
pub fn report(wrong: &[String]) -> String {
    let shown: Vec<&String> = wrong.iter().take(12).collect();
    format!("{} wrong outcome(s), first ones: {shown:#?}", wrong.len())
}

/// A browser logged in on `svc`: a session with `user = 7`.
pub async fn logged_in(svc: &BackupSessionService) -> Browser {
    let mut browser = Browser::new();
    browser
        .call(svc, "/login", |s| s.insert("user", &7u64).unwrap())
        .await
        .unwrap();
    browser
}

/// Invalidates the browser's session on `svc` and checks the acknowledgement.
pub async fn logout(svc: &BackupSessionService, cookie: &str) {
    let r = svc.request(RequestInfo::new("/logout").session_id(Some(cookie)));
    r.invalidate().await.unwrap();
    let out = r.finish().await.expect("the logout is acknowledged");
    assert_eq!(
        out.cookie,
        CookieDecision::Remove,
        "the logout removes the cookie"
    );
}

/// Makes a non-sticky lock vanish as it does when it expires (a stalled holder stops
/// renewing it): the lock item `lock_key` is deleted from the one node that holds it.
pub fn lose_lock(cluster: &Cluster, lock_key: &str) {
    let removed = cluster
        .addrs()
        .iter()
        .filter(|addr| crate::kit::memcached::raw::delete(addr, lock_key))
        .count();
    assert_eq!(removed, 1, "the lock was held on one node");
}

/// Two non-sticky instances with locking `all`, a 1 s lock expiry and a 5 s lock wait.
pub fn locked_pair(cluster: &Cluster) -> (BackupSessionService, BackupSessionService) {
    let make = || {
        service(
            cluster,
            config(cluster, Mode::NonSticky)
                .locking_str("all")
                .lock_expiry(Duration::from_secs(1))
                .lock_wait(Duration::from_secs(5)),
        )
    };
    (make(), make())
}

/// A new browser whose first request on `svc` created its session, with the counter
/// `n = 1` (through [`Browser::increment`]).
pub async fn browser_with_counter(svc: &BackupSessionService) -> Browser {
    let mut browser = Browser::new();
    browser.increment(svc, "n").await.unwrap();
    browser
}

/// Every `(instance, id)` pair that still finds session `key`, or whose request fails:
/// after an acknowledged invalidation the list must be empty. The ids are the ones the
/// client really held (`known`), tried first on every instance so that a forged id
/// cannot clear an instance's stale memory copy before they are tried, then every id a
/// client can forge for `key` ([`id_variants`] over the cluster's nodes and `routes`).
/// A failed request is tried again up to `retries` times, 100 ms apart (a node that
/// just resumed can be briefly reported down); one that keeps failing is listed as
/// `request failed`.
pub async fn still_found(
    instances: &[(&str, &BackupSessionService)],
    known: &[String],
    key: SessionKey,
    cluster: &Cluster,
    routes: &[&str],
    retries: usize,
) -> Vec<String> {
    let mut found = Vec::new();
    let ids = known
        .iter()
        .cloned()
        .chain(id_variants(key, &cluster.ids(), routes));
    for id in ids {
        for (name, svc) in instances {
            let mut outcome = look(svc, &id, "user").await;
            for _ in 0..retries {
                if outcome.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                outcome = look(svc, &id, "user").await;
            }
            match outcome {
                Ok(None) => {}
                Ok(Some(v)) => {
                    found.push(format!("{name} with id {id}: session found, user={v:?}"))
                }
                Err(e) => found.push(format!("{name} with id {id}: request failed: {e}")),
            }
        }
    }
    found
}

/// The first node of `cluster` that is neither `id`'s primary nor its backup: the
/// node holding no copy of the session.
pub fn node_without_a_copy(cluster: &Cluster, id: &SessionId) -> String {
    cluster
        .ids()
        .into_iter()
        .find(|n| n != id.node() && Some(n.as_str()) != id.backup())
        .unwrap()
}
