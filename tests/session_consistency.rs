//! Issue 7 regression tests: one named test per instance listed in the issue, reproduced
//! in-process with real memcached processes and several `BackupSessionService`
//! instances, asserting the behaviour of the consistency model (invariants I1-I4 of
//! docs/session.md): an invalidated session stays gone for every id and instance, an
//! acknowledged write is never lost and a refused one never seen, locks are fenced, a
//! failed load never tells the client to forget its session, work per request is bounded.
//!
//! Written against the public API only. Several of these fail on the session layer that
//! predates the issue-7 rewrite: that is what they are for.

mod kit;
#[path = "kit/session_http.rs"]
mod session_http;
#[path = "kit/session.rs"]
mod session_kit;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use hyper::header::HeaderValue;
use hyper::StatusCode;
use kit::memcached::raw;
use kit::Cluster;
use memkeep::session::tower::SessionLayer;
use memkeep::session::{
    BackupSessionService, CookieDecision, Mode, RequestInfo, SessionError, SessionId, SessionKey,
    SessionRequest,
};
use session_http::{cookie_value, hits};
use session_kit::{
    browser_with_counter, config, drive_down, index_of, locked_pair, logged_in, logout, look,
    lose_lock, non_sticky, report, service, sticky, still_found, wait_nodes_up, Browser,
};
use tower::Layer;

// ---------------------------------------------------------------------------------------
// I1: a request that loaded the session before a logout and finishes after it.

/// Request A (instance a) loads the session and changes nothing; request B (instance b)
/// invalidates it and finishes; then A finishes. A must not write, and the session must
/// stay gone for every instance.
async fn unchanged_request_finishing_after_logout(locking: &str, nodes: usize) {
    let cluster = Cluster::start(nodes);
    let a = non_sticky(&cluster, locking);
    let b = non_sticky(&cluster, locking);
    let browser = logged_in(&a).await;
    let cookie = browser.cookie.clone().unwrap();
    // `auto`: make /page a path known read-only on A, so A's request runs unlocked (the
    // issue's case); with `none` these are plain reads.
    for _ in 0..2 {
        assert_eq!(look(&a, &cookie, "user").await.unwrap(), Some(Some(7)));
        let mut br = browser.clone();
        br.visit(&a, "/page", |_| ()).await.unwrap();
    }
    let ra = a.request(RequestInfo::new("/page").session_id(Some(&cookie)));
    assert!(ra.session().await.unwrap().is_some());
    logout(&b, &cookie).await;
    let out_a = ra.finish().await;
    let mut wrong = Vec::new();
    match &out_a {
        Ok(out) if out.written => wrong.push(format!(
            "A changed nothing but wrote the session back: {out:?}"
        )),
        Ok(_) => {}
        Err(e) => wrong.push(format!("A changed nothing but its finish failed: {e:?}")),
    }
    let c = non_sticky(&cluster, locking);
    for (name, svc) in [("a", &a), ("b", &b), ("c (new)", &c)] {
        match look(svc, &cookie, "user").await {
            Ok(None) => {}
            other => wrong.push(format!("{name} with the old id after logout: {other:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "locking {locking}, {nodes} node(s): {}",
        report(&wrong)
    );
}

#[tokio::test]
async fn none_one_node_an_unchanged_request_finishing_after_logout_writes_nothing() {
    unchanged_request_finishing_after_logout("none", 1).await;
}

#[tokio::test]
async fn none_two_nodes_an_unchanged_request_finishing_after_logout_writes_nothing() {
    unchanged_request_finishing_after_logout("none", 2).await;
}

#[tokio::test]
async fn auto_an_unchanged_read_only_request_finishing_after_logout_is_neither_refused_nor_resurrects(
) {
    unchanged_request_finishing_after_logout("auto", 2).await;
}

// ---------------------------------------------------------------------------------------
// I1: sticky takeover, then logout on the new owner.

async fn sticky_takeover_then_logout(nodes: usize) {
    let cluster = Cluster::start(nodes);
    let a = sticky(&cluster, "a");
    let b = sticky(&cluster, "b");
    let mut browser = logged_in(&a).await;
    let old = browser.cookie.clone().unwrap();
    assert_eq!(browser.read_u64(&b, "user").await.unwrap(), Some(7));
    let taken = browser.cookie.clone().unwrap();
    assert_eq!(browser.id().unwrap().route(), Some("b"), "b took it over");
    logout(&b, &taken).await;
    let mut wrong = Vec::new();
    // A request still carrying the old id (route a) reaches a ...
    match look(&a, &old, "user").await {
        Ok(None) => {}
        other => wrong.push(format!("a with the old id (route a): {other:?}")),
    }
    // ... and afterwards nobody serves it.
    for (name, svc) in [("a", &a), ("b", &b)] {
        for id in [&old, &taken] {
            match look(svc, id, "user").await {
                Ok(None) => {}
                other => wrong.push(format!("{name} with {id} afterwards: {other:?}")),
            }
        }
    }
    assert!(wrong.is_empty(), "{nodes} node(s): {}", report(&wrong));
}

#[tokio::test]
async fn sticky_one_node_a_former_owner_never_serves_a_session_invalidated_after_takeover() {
    sticky_takeover_then_logout(1).await;
}

#[tokio::test]
async fn sticky_two_nodes_a_former_owner_never_serves_a_session_invalidated_after_takeover() {
    sticky_takeover_then_logout(2).await;
}

// ---------------------------------------------------------------------------------------
// I1: edited ids and ids from before a relocation.

/// An instance in `mode` (sticky: with `route`) on a fast-reacting client.
fn instance(cluster: &Cluster, mode: Mode, route: &str) -> BackupSessionService {
    let b = config(cluster, mode);
    service(
        cluster,
        if mode == Mode::Sticky {
            b.route(route)
        } else {
            b.lock_wait(Duration::from_secs(5))
        },
    )
}

/// The session is moved off its primary node while that node is SIGSTOPped (the write
/// times out there, the session is relocated; the node keeps its old copy when it is
/// resumed), then invalidated. No id a client can forge finds it on any instance.
async fn edited_ids_after_relocation_and_logout(mode: Mode) {
    let mut cluster = Cluster::start(3);
    let routes = ["a", "b"];
    let a = instance(&cluster, mode, "a");
    let b = instance(&cluster, mode, "b");
    let mut browser = logged_in(&a).await;
    let before = browser.id().unwrap();
    let mut known = vec![browser.cookie.clone().unwrap()];
    let primary = index_of(before.node());
    cluster[primary].pause();
    // A write while the primary is stopped: relocated (possibly after a timeout).
    let mut moved = false;
    for _ in 0..10 {
        if browser
            .call(&a, "/edit", |s| s.insert("user", &8u64).unwrap())
            .await
            .is_ok()
            && browser.id().unwrap().node() != before.node()
        {
            moved = true;
            break;
        }
    }
    known.push(browser.cookie.clone().unwrap());
    cluster[primary].resume();
    assert!(moved, "the session was relocated off the stopped node");
    assert!(wait_nodes_up(&[&a, &b], Duration::from_secs(15)).await);
    // Sticky: b takes it over too (one more former owner).
    if mode == Mode::Sticky {
        assert_eq!(browser.read_u64(&b, "user").await.unwrap(), Some(8));
    }
    let cookie = browser.cookie.clone().unwrap();
    known.push(cookie.clone());
    logout(&b, &cookie).await;
    let c = instance(&cluster, mode, "c");
    let found = still_found(
        &[("a", &a), ("b", &b), ("c (new)", &c)],
        &known,
        before.key(),
        &cluster,
        &routes,
        30,
    )
    .await;
    assert!(found.is_empty(), "{mode:?}: {}", report(&found));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_sticky_no_edited_or_pre_relocation_id_finds_an_invalidated_session() {
    edited_ids_after_relocation_and_logout(Mode::NonSticky).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_no_edited_or_pre_relocation_id_finds_an_invalidated_session() {
    edited_ids_after_relocation_and_logout(Mode::Sticky).await;
}

// ---------------------------------------------------------------------------------------
// I1: a node stopped during the invalidation comes back with the old copy.

#[derive(Clone, Copy, Debug)]
enum Role {
    Primary,
    Backup,
}

/// What [`logout_with_a_node_stopped`] leaves, in order: the cluster, the two instances,
/// the logged-out session's id and cookie, and the stopped node's id and index.
type LoggedOutWithANodeStopped = (
    Cluster,
    BackupSessionService,
    BackupSessionService,
    SessionId,
    String,
    String,
    usize,
);

/// A three-node cluster and two instances `a`, `b` in `mode`; a login on `a`; the node
/// holding the session's copy `role` is stopped, long enough for `a`'s client to mark
/// it down (the deletes of the logout never reach it: they would otherwise wait in its
/// socket and run on resume); then the session is logged out through `a`. The node is
/// left stopped.
async fn logout_with_a_node_stopped(mode: Mode, role: Role) -> LoggedOutWithANodeStopped {
    let mut cluster = Cluster::start(3);
    let a = instance(&cluster, mode, "a");
    let b = instance(&cluster, mode, "b");
    let browser = logged_in(&a).await;
    let id = browser.id().unwrap();
    let cookie = browser.cookie.clone().unwrap();
    let node = match role {
        Role::Primary => id.node().to_owned(),
        Role::Backup => id.backup().expect("a backup node").to_owned(),
    };
    let stopped = index_of(&node);
    cluster[stopped].pause();
    assert!(drive_down(&a, &node, Duration::from_secs(10)).await);
    logout(&a, &cookie).await;
    (cluster, a, b, id, cookie, node, stopped)
}

/// [`still_found`] for session `id` of instances routed `a` and `b`, whose client held
/// only `cookie`; a failed request is tried again for 3 s.
async fn still_found_after_logout(
    instances: &[(&str, &BackupSessionService)],
    cookie: String,
    id: &SessionId,
    cluster: &Cluster,
) -> Vec<String> {
    still_found(instances, &[cookie], id.key(), cluster, &["a", "b"], 30).await
}

async fn node_stopped_during_logout(mode: Mode, role: Role) {
    let (mut cluster, a, b, id, cookie, node, stopped) =
        logout_with_a_node_stopped(mode, role).await;
    cluster[stopped].resume();
    assert!(wait_nodes_up(&[&a, &b], Duration::from_secs(15)).await);
    let c = instance(&cluster, mode, "c");
    let found = still_found_after_logout(
        &[("a", &a), ("b", &b), ("c (new)", &c)],
        cookie,
        &id,
        &cluster,
    )
    .await;
    assert!(
        found.is_empty(),
        "{mode:?}, {role:?} node {node} stopped during the logout: {}",
        report(&found)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_sticky_a_primary_node_stopped_during_logout_never_brings_the_session_back() {
    node_stopped_during_logout(Mode::NonSticky, Role::Primary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_sticky_a_backup_node_stopped_during_logout_never_brings_the_session_back() {
    node_stopped_during_logout(Mode::NonSticky, Role::Backup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_a_primary_node_stopped_during_logout_never_brings_the_session_back() {
    node_stopped_during_logout(Mode::Sticky, Role::Primary).await;
}

/// The node that missed the tombstone gets it from another instance (hinted handoff in
/// memcached), even though the invalidating instance is gone; after that the two nodes
/// that held the tombstone can be lost, one after the other, and the old copy on the
/// returning node still never comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_missed_by_a_stopped_node_is_handed_off_after_the_invalidating_instance_died() {
    let (mut cluster, a, b, id, cookie, node, stopped) =
        logout_with_a_node_stopped(Mode::NonSticky, Role::Primary).await;
    drop(a); // the invalidating instance dies before the node comes back
    cluster[stopped].resume();
    assert!(wait_nodes_up(&[&b], Duration::from_secs(15)).await);
    let key = id.key().to_string();
    let on_node = session_kit::observer(&cluster).on_node(&node).unwrap();
    // A tombstone's client flags are the low 32 bits of its write version, u64::MAX.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut handed_off = false;
    while !handed_off && Instant::now() < deadline {
        handed_off = matches!(on_node.get(&key).await, Ok(Some(item)) if item.flags == u32::MAX);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(handed_off, "the stopped node {node} got the tombstone");
    for other in (0..cluster.len()).filter(|i| *i != stopped) {
        cluster[other].restart(); // loses its tombstone
        assert!(wait_nodes_up(&[&b], Duration::from_secs(15)).await);
    }
    let c = instance(&cluster, Mode::NonSticky, "c");
    let found =
        still_found_after_logout(&[("b", &b), ("c (new)", &c)], cookie, &id, &cluster).await;
    assert!(found.is_empty(), "{}", report(&found));
}

// ---------------------------------------------------------------------------------------
// I2: a refused write never reaches a copy.

#[tokio::test]
async fn auto_a_refused_write_never_reaches_the_backup_copy() {
    let mut cluster = Cluster::start(3);
    let a = non_sticky(&cluster, "auto");
    let b = non_sticky(&cluster, "auto");
    let mut browser = browser_with_counter(&a).await;
    browser.visit(&a, "/page", |_| ()).await.unwrap(); // /page learnt read-only on A
    browser.visit(&b, "/page", |_| ()).await.unwrap(); // and on B
    let cookie = browser.cookie.clone().unwrap();
    let ra = a.request(RequestInfo::new("/page").session_id(Some(&cookie)));
    let rb = b.request(RequestInfo::new("/page").session_id(Some(&cookie)));
    let sa = ra.session().await.unwrap().unwrap();
    let sb = rb.session().await.unwrap().unwrap();
    sa.insert("n", &100u64).unwrap();
    sb.insert("n", &200u64).unwrap();
    let out_a = ra.finish().await.unwrap();
    assert!(out_a.written, "A's write is acknowledged");
    let err = rb.finish().await.unwrap_err();
    assert!(matches!(err, SessionError::Conflict), "{err}");
    browser = Browser {
        cookie: out_a.session_id.clone().or(Some(cookie)),
    };
    cluster[index_of(browser.id().unwrap().node())].kill();
    let c = non_sticky(&cluster, "auto");
    assert_eq!(
        browser.read_u64(&c, "n").await.unwrap(),
        Some(100),
        "after the primary died, the acknowledged 100 must be read, not the refused 200"
    );
}

// ---------------------------------------------------------------------------------------
// I2: a failed load never tells the client to forget its session.

/// Non-sticky, locking `all`, a 300 ms lock wait.
fn short_lock_wait(cluster: &Cluster) -> BackupSessionService {
    service(
        cluster,
        config(cluster, Mode::NonSticky)
            .locking_str("all")
            .lock_wait(Duration::from_millis(300)),
    )
}

/// Puts the lock item of session `id` (`lock:<random part>`, docs/session.md) on every
/// node, as another holder would; returns its key.
fn hold_lock_by_hand(cluster: &Cluster, id: &str) -> String {
    let key = memkeep::session::SessionId::parse(id).unwrap().key();
    let lock_key = format!("lock:{key}");
    for addr in cluster.addrs() {
        raw::set(&addr, &lock_key, "held-by-someone-else");
    }
    lock_key
}

fn release_by_hand(cluster: &Cluster, lock_key: &str) {
    for addr in cluster.addrs() {
        raw::delete(&addr, lock_key);
    }
}

#[tokio::test]
async fn a_lock_wait_that_runs_out_keeps_the_cookie_and_the_session() {
    let cluster = Cluster::start(2);
    let a = short_lock_wait(&cluster);
    let mut browser = browser_with_counter(&a).await;
    let cookie = browser.cookie.clone().unwrap();
    let lock_key = hold_lock_by_hand(&cluster, &cookie);
    let r = a.request(RequestInfo::new("/increment").session_id(Some(&cookie)));
    let err = r.session().await.unwrap_err();
    assert!(matches!(err, SessionError::LockTimeout { .. }), "{err}");
    let out = r.finish().await;
    release_by_hand(&cluster, &lock_key);
    let after = browser.read_u64(&a, "n").await;
    assert!(
        matches!(&out, Ok(o) if o.cookie == CookieDecision::Keep),
        "a failed load must keep the cookie: finish gave {out:?}"
    );
    assert_eq!(after.unwrap(), Some(1), "the session is intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_unreachable_at_load_keeps_the_cookie_and_the_session() {
    let mut cluster = Cluster::start(2);
    let a = service(
        &cluster,
        config(&cluster, Mode::NonSticky).locking_str("none"),
    );
    let mut browser = browser_with_counter(&a).await;
    let cookie = browser.cookie.clone().unwrap();
    cluster[0].pause();
    cluster[1].pause();
    let r = a.request(RequestInfo::new("/increment").session_id(Some(&cookie)));
    let loaded = r.session().await;
    let out = r.finish().await;
    cluster[0].resume();
    cluster[1].resume();
    assert!(wait_nodes_up(&[&a], Duration::from_secs(15)).await);
    let after = browser.read_u64(&a, "n").await;
    assert!(loaded.is_err(), "both nodes stopped: the load fails");
    assert!(
        matches!(&out, Ok(o) if o.cookie == CookieDecision::Keep),
        "a failed load must keep the cookie: finish gave {out:?}"
    );
    assert_eq!(after.unwrap(), Some(1), "the session is intact");
}

// ---------------------------------------------------------------------------------------
// I3: fenced locks.

/// A [`locked_pair`] and a browser whose session (`n = 1`) was created through the first
/// instance: the two instances, the browser and its cookie.
async fn locked_pair_with_a_session(
    cluster: &Cluster,
) -> (BackupSessionService, BackupSessionService, Browser, String) {
    let (a, b) = locked_pair(cluster);
    let browser = browser_with_counter(&a).await;
    let cookie = browser.cookie.clone().unwrap();
    (a, b, browser, cookie)
}

#[tokio::test]
async fn a_request_whose_lock_expired_never_overwrites_a_write_made_under_a_newer_lock() {
    let cluster = Cluster::start(2);
    let (a, b, browser, cookie) = locked_pair_with_a_session(&cluster).await;
    let lock_key = format!("lock:{}", browser.id().unwrap().key());
    let ra = a.request(RequestInfo::new("/slow").session_id(Some(&cookie)));
    let sa = ra.session().await.unwrap().unwrap(); // A holds the lock ...
                                                   // ... and loses it: A's instance stalls past lock_expiry (a live holder renews its
                                                   // lock, so the stall is simulated by the lock item vanishing, as it does when it
                                                   // expires). B locks, writes, acks.
    lose_lock(&cluster, &lock_key);
    let mut other = browser.clone();
    assert_eq!(other.increment(&b, "n").await.unwrap(), 2);
    sa.insert("n", &99u64).unwrap();
    let out_a = ra.finish().await;
    let mut wrong = Vec::new();
    if !matches!(out_a, Err(SessionError::Conflict)) {
        wrong.push(format!(
            "A's write under an expired lock gave {out_a:?}, not Conflict"
        ));
    }
    let c = non_sticky(&cluster, "all");
    for (name, svc) in [("a", &a), ("b", &b), ("c (new)", &c)] {
        let v = browser.clone().read_u64(svc, "n").await.unwrap();
        if v != Some(2) {
            wrong.push(format!("{name} reads n={v:?}, not B's acknowledged 2"));
        }
    }
    assert!(wrong.is_empty(), "{}", report(&wrong));
}

#[tokio::test]
async fn releasing_an_expired_lock_leaves_the_new_holders_lock() {
    let cluster = Cluster::start(2);
    let (a, b, browser, cookie) = locked_pair_with_a_session(&cluster).await;
    let lock_key = format!("lock:{}", browser.id().unwrap().key());
    let ra = a.request(RequestInfo::new("/slow").session_id(Some(&cookie)));
    assert!(ra.session().await.unwrap().is_some());
    lose_lock(&cluster, &lock_key); // A's lock expires while A is stalled
    let rb = b.request(RequestInfo::new("/next").session_id(Some(&cookie)));
    assert!(
        rb.session().await.unwrap().is_some(),
        "B got the lock after it expired"
    );
    let holder = |addrs: &[String]| {
        addrs
            .iter()
            .filter_map(|addr| raw::get(addr, &lock_key))
            .collect::<Vec<_>>()
    };
    let b_token = holder(&cluster.addrs());
    assert_eq!(b_token.len(), 1, "one lock item: B's");
    let _ = ra.finish().await; // A releases (it changed nothing)
    assert_eq!(
        holder(&cluster.addrs()),
        b_token,
        "A's release removed only its own lock"
    );
    rb.finish().await.unwrap();
}

/// Many 250 ms requests, one every 100 ms, alternating between two instances (so the
/// requests of one instance overlap and hold the lock past `lock_expiry`). Each increments
/// `n` if it gets the session; with `logout_at`, that request invalidates instead.
/// Returns (acknowledged increments, started, the instant the logout was acknowledged,
/// requests that saw the session although they loaded after that instant).
async fn overlapping_requests(
    a: &BackupSessionService,
    b: &BackupSessionService,
    cookie: &str,
    count: u64,
    logout_at: Option<u64>,
) -> (u64, u64, Option<Instant>, Vec<String>) {
    let acked = Arc::new(AtomicU64::new(0));
    let logout_done: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..count {
        let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
        let cookie = cookie.to_owned();
        let acked = Arc::clone(&acked);
        let logout_done = Arc::clone(&logout_done);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100 * i)).await;
            let r = svc.request(RequestInfo::new("/work").session_id(Some(&cookie)));
            let loaded = r.session().await;
            let loaded_at = Instant::now();
            let mut note = None;
            if let Ok(Some(s)) = &loaded {
                if let Some(done) = *logout_done.lock().unwrap() {
                    if done < loaded_at {
                        note = Some(format!("request {i} loaded the session after the logout"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                if Some(i) == logout_at {
                    s.invalidate();
                } else {
                    let mut g = s.lock();
                    let n = g.get::<u64>("n").unwrap().unwrap_or(0);
                    g.insert("n", &(n + 1)).unwrap();
                }
            }
            let out = r.finish().await;
            if loaded.as_ref().is_ok_and(|s| s.is_some()) {
                match (&out, Some(i) == logout_at) {
                    (Ok(o), true) => {
                        assert_eq!(o.cookie, CookieDecision::Remove);
                        *logout_done.lock().unwrap() = Some(Instant::now());
                    }
                    // Ok: acknowledged (on one instance, overlapping requests share
                    // the session object: the first to finish writes every change made
                    // so far, and the others may then have nothing left to write).
                    (Ok(_), false) => {
                        acked.fetch_add(1, Relaxed);
                    }
                    _ => {}
                }
            }
            if Some(i) == logout_at {
                assert!(out.is_ok(), "the logout is acknowledged: {out:?}");
            }
            note
        }));
    }
    let mut late = Vec::new();
    for t in tasks {
        late.extend(t.await.unwrap());
    }
    let done = *logout_done.lock().unwrap();
    (acked.load(Relaxed), count, done, late)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_locked_increments_on_two_instances_lose_no_acknowledged_increment() {
    let cluster = Cluster::start(2);
    let (a, b) = locked_pair(&cluster);
    let mut browser = Browser::new();
    browser
        .call(&a, "/start", |s| s.insert("n", &0u64).unwrap())
        .await
        .unwrap();
    let cookie = browser.cookie.clone().unwrap();
    let (acked, started, _, _) = overlapping_requests(&a, &b, &cookie, 40, None).await;
    let n = browser.read_u64(&a, "n").await.unwrap();
    assert_eq!(
        n,
        Some(acked),
        "final counter vs acknowledged increments ({started} requests)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_among_overlapping_locked_requests_is_never_undone() {
    let cluster = Cluster::start(2);
    let (a, b) = locked_pair(&cluster);
    let browser = logged_in(&a).await;
    let cookie = browser.cookie.clone().unwrap();
    let (_, _, done, late) = overlapping_requests(&a, &b, &cookie, 40, Some(17)).await;
    assert!(
        done.is_some(),
        "the logout request got the session and was acknowledged"
    );
    let mut wrong = late;
    let c = non_sticky(&cluster, "all");
    for (name, svc) in [("a", &a), ("b", &b), ("c (new)", &c)] {
        match look(svc, &cookie, "user").await {
            Ok(None) => {}
            other => wrong.push(format!("{name} after the logout: {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "{}", report(&wrong));
}

// ---------------------------------------------------------------------------------------
// I4: bounded work and memory; the Cookie header (through the tower layer, as in
// tests/session_axum.rs).

async fn peek(session: SessionRequest) -> Result<&'static str, SessionError> {
    Ok(match session.session().await? {
        Some(_) => "found",
        None => "none",
    })
}

/// One request through the layer (routes `/`: [`hits`], `/peek`) with a raw `Cookie`
/// header: status, body, Set-Cookie.
async fn send(
    svc: &BackupSessionService,
    uri: &str,
    cookie: Option<HeaderValue>,
) -> (StatusCode, String, Option<String>) {
    let router = Router::new()
        .route("/", get(hits))
        .route("/peek", get(peek));
    session_http::send(SessionLayer::new(svc.clone()).layer(router), uri, cookie).await
}

/// A new session through the layer; its id.
async fn new_session_over_http(svc: &BackupSessionService) -> String {
    let (status, body, set) = send(svc, "/", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));
    cookie_value(&set.expect("a new session sets the cookie"))
}

fn memcached_gets(cluster: &Cluster) -> u64 {
    cluster
        .addrs()
        .iter()
        .map(|a| raw::stat(a, "cmd_get") + raw::stat(a, "cmd_touch"))
        .sum()
}

#[tokio::test]
async fn a_cookie_header_with_7000_candidate_ids_costs_bounded_work() {
    let cluster = Cluster::start(2);
    let a = non_sticky(&cluster, "none");
    new_session_over_http(&a).await;
    let mut header = String::from("lang=en");
    for i in 0..7000 {
        let key = SessionKey::generate().unwrap();
        let (p, b) = if i % 2 == 0 {
            ("n0", "n1")
        } else {
            ("n1", "n0")
        };
        header.push_str(&format!("; JSESSIONID={key}-{p}~{b}"));
    }
    let ops_before = a.client().metrics().operations;
    let gets_before = memcached_gets(&cluster);
    let (status, body, _) = send(&a, "/peek", Some(HeaderValue::from_str(&header).unwrap())).await;
    let ops = a.client().metrics().operations - ops_before;
    let gets = memcached_gets(&cluster) - gets_before;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "none"));
    assert!(
        ops <= 20 && gets <= 20,
        "one request with 7,000 candidate ids cost {ops} client operations and {gets} \
         memcached gets/touches (bound: 20)"
    );
}

#[tokio::test]
async fn a_non_ascii_byte_in_another_cookie_does_not_hide_the_session_cookie() {
    let cluster = Cluster::start(2);
    let a = non_sticky(&cluster, "none");
    let id = new_session_over_http(&a).await;
    let header = format!("lang=français; JSESSIONID={id}");
    let value = HeaderValue::from_bytes(header.as_bytes()).unwrap();
    let (status, body, set) = send(&a, "/", Some(value)).await;
    assert_eq!(
        (status, body.as_str(), set),
        (StatusCode::OK, "2", None),
        "the session was found (hits 2) and kept its cookie"
    );
}

#[tokio::test]
async fn a_lock_timeout_over_http_answers_503_without_removing_the_cookie() {
    let cluster = Cluster::start(2);
    let a = short_lock_wait(&cluster);
    let id = new_session_over_http(&a).await;
    let lock_key = hold_lock_by_hand(&cluster, &id);
    let cookie = HeaderValue::from_str(&format!("JSESSIONID={id}")).unwrap();
    let (status, _, set) = send(&a, "/", Some(cookie.clone())).await;
    release_by_hand(&cluster, &lock_key);
    let (status2, body2, _) = send(&a, "/", Some(cookie)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        set.is_none(),
        "a failed load must not touch the cookie; got Set-Cookie: {set:?}"
    );
    assert_eq!(
        (status2, body2.as_str()),
        (StatusCode::OK, "2"),
        "the session is intact"
    );
}

#[tokio::test]
async fn sticky_sessions_whose_save_failed_are_not_kept_in_memory() {
    let cluster = Cluster::start(2);
    let a = service(
        &cluster,
        config(&cluster, Mode::Sticky)
            .route("a")
            .max_session_size(64 * 1024),
    );
    let blob = "x".repeat(100 * 1024);
    for _ in 0..60 {
        let r = a.request(RequestInfo::new("/upload"));
        let s = r.get_or_create().await.unwrap();
        s.insert("blob", &blob).unwrap();
        drop(s);
        let out = r.finish().await;
        assert!(matches!(out, Err(SessionError::TooLarge { .. })), "{out:?}");
    }
    assert_eq!(
        a.local_sessions(),
        0,
        "60 sessions whose save failed are held in memory"
    );
}

/// Holder liveness: a live holder renews its lock, so a request longer than
/// `lock_expiry` keeps it; the other instance's request waits and then sees its write.
#[tokio::test]
async fn a_request_longer_than_lock_expiry_keeps_its_lock() {
    let cluster = Cluster::start(2);
    let (a, b, browser, cookie) = locked_pair_with_a_session(&cluster).await;
    let ra = a.request(RequestInfo::new("/slow").session_id(Some(&cookie)));
    let sa = ra.session().await.unwrap().unwrap();
    let waiter = {
        let b = b.clone();
        let mut other = browser.clone();
        tokio::spawn(async move { other.increment(&b, "n").await })
    };
    // Three times lock_expiry (1 s): the lock would have expired twice without renewal.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !waiter.is_finished(),
        "B got the session while A held the lock"
    );
    sa.insert("n", &10u64).unwrap();
    assert!(ra.finish().await.unwrap().written);
    assert_eq!(waiter.await.unwrap().unwrap(), 11, "B read A's write");
}
