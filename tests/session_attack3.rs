//! Third round of attacks on the session layer: other instances of the kinds of fault
//! issue 7 lists (I1 invalidated-means-gone, I2 no acknowledged write lost / no refused
//! write visible, I3 fenced locks) and new kinds: nodes with different item size
//! limits, the `Proceed` lock policy against a live lock holder, a node renamed in the
//! configuration, login rotation (`create`) racing a request on the old id.
//!
//! Public API only (plus raw looks at what the servers hold). Each failing test names
//! the invariant it breaks in its assertion message.

mod kit;
#[path = "kit/session.rs"]
mod session_kit;

use std::time::Duration;

use kit::memcached::Memcached;
use kit::Cluster;
use memkeep::session::{
    BackupSessionService, CookieDecision, LockTimeoutPolicy, Mode, RequestInfo, SessionConfig,
    SessionError,
};
use memkeep::Protocol;
use session_kit::{config, logged_in, look, non_sticky, non_sticky_with, service, Browser};

// ---------------------------------------------------------------------------------------
// I2 kind "a refused write is never visible": the primary accepts a record its backup
// node refuses (memcached's `-I` item size limit differs between the nodes). The save
// fails (`TooLarge`), so the client was told it was not saved, yet the next request,
// on any instance, reads the refused content from the primary.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_the_backup_nodes_item_limit_refused_is_never_visible() {
    // n0 takes items up to 2 MB, n1 up to memcached's default 1 MB.
    let cluster = Cluster {
        nodes: vec![Memcached::start_with(&["-I", "2m"]), Memcached::start()],
    };
    let build = || {
        let config = config(&cluster, Mode::NonSticky)
            .locking_str("none")
            .max_session_size(2 * 1024 * 1024 - 4096)
            .build()
            .unwrap();
        let client = kit::builder(&cluster, Protocol::Meta)
            .max_value_size(2 * 1024 * 1024)
            .build()
            .unwrap();
        BackupSessionService::with_client(config, client).unwrap()
    };
    let a = build();
    let b = build();
    // A session whose primary is the node with the larger limit.
    let mut browser = None;
    for _ in 0..64 {
        let candidate = logged_in(&a).await;
        if candidate.id().unwrap().node() == "n0" {
            browser = Some(candidate);
            break;
        }
    }
    let mut browser = browser.expect("a session placed with its primary on n0");
    assert_eq!(browser.id().unwrap().backup(), Some("n1"));
    // A 1.5 MB attribute: fits n0, not n1.
    let blob = "x".repeat(1_500_000);
    let saved = browser
        .call(&a, "/upload", |s| {
            s.insert("blob", &blob).unwrap();
            s.insert("user", &8u64).unwrap();
        })
        .await;
    // Either the save fails and nothing of it is ever visible, or (the choice made: a
    // node whose item limit can't hold the copy is skipped like a failed node, and the
    // session keeps its copies on the nodes that can) it is acknowledged and visible. In
    // both cases the session stays usable on every instance.
    let expected = if saved.is_ok() { 8 } else { 7 };
    for (name, svc) in [("a", &a), ("b", &b)] {
        let req = svc.request(RequestInfo::new("/page").session_id(browser.cookie.as_deref()));
        let user = req
            .session()
            .await
            .map(|s| s.map(|s| s.get::<u64>("user").unwrap()));
        let finished = req.finish().await;
        assert!(
            matches!(user, Ok(Some(Some(u))) if u == expected) && finished.is_ok(),
            "I2: the save's outcome was {saved:?}, yet instance {name} reads user = \
             {user:?} (expected {expected}), finish = {finished:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Semantics "locked requests serialize; Conflict only for a lost lock or an auto
// guess": with the `Proceed` policy, a request whose lock wait ran out goes on unlocked
// and merges. It must not make the request that HOLDS the (live, renewed) lock fail:
// that one's change is refused with `Conflict` although its lock never expired.

/// A locked request on `holder_svc` (path `holder_path`) sets `held = 1` and waits; an
/// unlocked request of the same session on `other_svc` (`other_path`) sets `other = 2`
/// and finishes (acknowledged); then the locked request finishes. Checks that the holder
/// of the live lock is not refused and that both changes survive.
async fn live_lock_holder_then_unlocked_writer(
    holder_svc: &BackupSessionService,
    holder_path: &str,
    other_svc: &BackupSessionService,
    other_path: &str,
    what: &str,
) {
    let browser = logged_in(holder_svc).await;
    let cookie = browser.cookie.clone().unwrap();
    let locked = holder_svc.request(RequestInfo::new(holder_path).session_id(Some(&cookie)));
    let s = locked.get_or_create().await.unwrap();
    s.insert("held", &1u64).unwrap();
    drop(s);
    assert_eq!(
        holder_svc.stats().locks_acquired,
        1,
        "this request holds the lock"
    );
    let mut other = browser.clone();
    let (_, out) = other
        .call(other_svc, other_path, |s| s.insert("other", &2u64).unwrap())
        .await
        .unwrap();
    assert!(out.written, "the unlocked request's write: {out:?}");
    // The lock holder finishes: its lock is alive (renewed).
    let finished = locked.finish().await;
    assert!(
        finished.as_ref().is_ok_and(|o| o.written),
        "a request holding a live lock was refused because an unlocked request ({what}) \
         wrote meanwhile: {finished:?}"
    );
    for (attr, value) in [("held", 1), ("other", 2)] {
        let seen = look(holder_svc, &cookie, attr).await.unwrap();
        assert_eq!(
            seen,
            Some(Some(value)),
            "both requests' changes survive (the unlocked writer merges): {attr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proceed_request_never_gets_a_live_lock_holders_write_refused() {
    let cluster = Cluster::start(2);
    let holder = non_sticky(&cluster, "all");
    let proceeder = non_sticky_with(&cluster, "all", |b| {
        b.lock_wait(Duration::from_millis(300))
            .lock_timeout_policy(LockTimeoutPolicy::Proceed)
    });
    live_lock_holder_then_unlocked_writer(&holder, "/y", &proceeder, "/x", "policy Proceed").await;
    assert_eq!(proceeder.stats().lock_proceeded_unlocked, 1);
}

// The same kind with `uriPattern`: a request whose path does not match is an unlocked
// writer (it merges); a matching request holding the live lock must not be refused
// because of it.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlocked_uri_pattern_request_never_gets_a_live_lock_holders_write_refused() {
    let cluster = Cluster::start(2);
    let a = non_sticky(&cluster, "uriPattern:^/(login|checkout)");
    let b = non_sticky(&cluster, "uriPattern:^/(login|checkout)");
    live_lock_holder_then_unlocked_writer(&a, "/checkout", &b, "/prefs", "uriPattern").await;
}

// The same kind with `auto`: a request on a path remembered read-only is unlocked; when
// it changes the session after all and nobody wrote since it loaded, it is written.
// The request holding the live lock, finishing after it, must not be refused.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_read_only_guess_that_wrote_first_never_gets_a_live_lock_holder_refused() {
    let cluster = Cluster::start(2);
    let a = non_sticky(&cluster, "auto");
    let b = non_sticky(&cluster, "auto");
    // b learns /prefs as read-only (a request there that changed nothing).
    let mut learner = logged_in(&b).await;
    learner.visit(&b, "/prefs", |_| ()).await.unwrap();
    let unlocked_before = b.stats().auto_readonly_unlocked;
    live_lock_holder_then_unlocked_writer(&a, "/checkout", &b, "/prefs", "auto guess").await;
    assert_eq!(b.stats().auto_readonly_unlocked, unlocked_before + 1);
}

// ---------------------------------------------------------------------------------------
// I2 kind "an acknowledged write is never lost", operator side: a node renamed in the
// configuration (same server, same data; every instance restarted with the new name).
// The ids' node fields are hints, not authority: the session's copies are still on the
// same servers under the same key, yet every session whose id names the old node name
// is dropped as an "invalid id" and the user gets an empty session.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_a_node_renamed_in_the_configuration() {
    let cluster = Cluster::start(2);
    let before = non_sticky(&cluster, "none");
    let browser = logged_in(&before).await;
    let cookie = browser.cookie.clone().unwrap();
    let id = browser.id().unwrap();
    let named = [Some(id.node()), id.backup()];
    assert!(named.contains(&Some("n1")), "the id names n1: {cookie}");
    // Same servers; n1 is now called "cache_b".
    let addrs = cluster.addrs();
    let renamed = BackupSessionService::new(
        SessionConfig::builder()
            .nodes(format!("n0:{},cache_b:{}", addrs[0], addrs[1]))
            .mode(Mode::NonSticky)
            .locking_str("none")
            .operation_timeout(Duration::from_millis(500))
            .build()
            .unwrap(),
    )
    .unwrap();
    let seen = look(&renamed, &cookie, "user").await;
    assert_eq!(
        seen.as_ref().ok(),
        Some(&Some(Some(7))),
        "I2: after node n1 was renamed cache_b (same server, same data), the session \
         acknowledged before is lost: {seen:?} (invalid_ids = {})",
        renamed.stats().invalid_ids
    );
}

// ---------------------------------------------------------------------------------------
// I1 and I2 around login rotation: `create()` replaces the session in a locked request
// (and releases the old session's lock before `finish`); a request on another instance
// carrying the OLD id runs in between. After the rotating request's `finish`, the old
// session is gone everywhere, the new one holds what was written, and the other
// request's outcome is either acknowledged (before the invalidation) or not written.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_rotation_racing_a_request_on_the_old_id_leaves_only_the_new_session() {
    for locking in ["all", "none", "auto", "uriPattern:^/"] {
        let cluster = Cluster::start(2);
        let a = non_sticky(&cluster, locking);
        let b = non_sticky(&cluster, locking);
        let mut browser = Browser::new();
        assert_eq!(browser.increment(&a, "cart").await.unwrap(), 1);
        let old = browser.cookie.clone().unwrap();
        // The login request loads the old session, rotates it, writes the user.
        let login = a.request(RequestInfo::new("/login").session_id(Some(&old)));
        assert!(login.session().await.unwrap().is_some());
        let fresh = login.create().await.unwrap();
        fresh.insert("user", &7u64).unwrap();
        drop(fresh);
        // Meanwhile a request on b with the old id changes the old session.
        let mut stale = Browser {
            cookie: Some(old.clone()),
        };
        let other = stale
            .visit(&b, "/cart", |s| {
                if let Some(s) = s {
                    s.insert("cart", &4u64).unwrap()
                }
            })
            .await;
        let out = login.finish().await.unwrap();
        let CookieDecision::Set(new_id) = out.cookie.clone() else {
            panic!("{locking}: the rotation sets the new id: {out:?}");
        };
        for (name, svc) in [("a", &a), ("b", &b)] {
            let seen_old = look(svc, &old, "cart").await.unwrap();
            assert_eq!(
                seen_old, None,
                "I1 ({locking}): the session replaced by create() is seen again on {name} \
                 (the concurrent request on the old id: {other:?})"
            );
            let seen_new = look(svc, &new_id, "user").await.unwrap();
            assert_eq!(
                seen_new,
                Some(Some(7)),
                "I2 ({locking}): the rotated session's acknowledged user is lost on {name}"
            );
        }
        if let Err(e) = &other {
            assert!(
                matches!(e, SessionError::LockTimeout { .. }),
                "{locking}: the old-id request failed unexpectedly: {e:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// I1 with invalidate + create in ONE request, in every locking mode and in sticky mode:
// the old session is gone under every id variant, the new one holds only what this
// request wrote after `create`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_then_create_in_one_request_leaves_only_the_new_session() {
    let cluster = Cluster::start(3);
    let pair = |locking: &str| (non_sticky(&cluster, locking), non_sticky(&cluster, locking));
    let modes: Vec<(&str, (BackupSessionService, BackupSessionService))> = vec![
        ("none", pair("none")),
        ("all", pair("all")),
        ("auto", pair("auto")),
        ("uriPattern", pair("uriPattern:^/log")),
        (
            "sticky",
            (
                session_kit::sticky(&cluster, "a"),
                session_kit::sticky(&cluster, "b"),
            ),
        ),
    ];
    for (mode, (a, b)) in &modes {
        let browser = logged_in(a).await;
        let old = browser.cookie.clone().unwrap();
        let req = a.request(RequestInfo::new("/login").session_id(Some(&old)));
        req.invalidate().await.unwrap();
        let fresh = req.create().await.unwrap();
        assert_eq!(
            fresh.get::<u64>("user").unwrap(),
            None,
            "{mode}: a new session"
        );
        fresh.insert("user", &8u64).unwrap();
        drop(fresh);
        let out = req.finish().await.unwrap();
        let CookieDecision::Set(new_id) = out.cookie.clone() else {
            panic!("{mode}: the new id is set: {out:?}");
        };
        let key = browser.id().unwrap().key();
        let variants = session_kit::id_variants(key, &cluster.ids(), &["a", "b"]);
        for svc in [a, b] {
            for v in &variants {
                let seen = look(svc, v, "user").await.unwrap();
                assert_eq!(seen, None, "I1 ({mode}): the invalidated session via {v}");
            }
            let seen = look(svc, &new_id, "user").await.unwrap();
            assert_eq!(seen, Some(Some(8)), "{mode}: the new session");
        }
    }
}

// ---------------------------------------------------------------------------------------
// I2 and I4 with the smallest memory bound: sticky, `max_local_sessions` = 1, three
// sessions, each with two overlapping requests per round that set different
// attributes. Evicting memory copies while other sessions' requests are in flight must
// lose no acknowledged attribute and mix no sessions.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_memory_slot_with_overlapping_requests_loses_no_acknowledged_attribute() {
    let cluster = Cluster::start(2);
    let svc = service(
        &cluster,
        config(&cluster, Mode::Sticky)
            .route("a")
            .max_local_sessions(1),
    );
    let mut browsers = Vec::new();
    for _ in 0..3 {
        browsers.push(logged_in(&svc).await);
    }
    let rounds = 8u64;
    let mut acknowledged: Vec<Vec<String>> = vec![Vec::new(); browsers.len()];
    for round in 0..rounds {
        let mut calls = Vec::new();
        for (i, b) in browsers.iter().enumerate() {
            for side in ["x", "y"] {
                let mut b = b.clone();
                let svc = &svc;
                calls.push(async move {
                    let name = format!("{side}{round}");
                    let value = (i as u64) * 1000 + round;
                    let n = name.clone();
                    let out = b
                        .call(svc, "/r", move |s| s.insert(&n, &value).unwrap())
                        .await;
                    (i, name, out)
                });
            }
        }
        for (i, name, out) in futures::future::join_all(calls).await {
            if out.as_ref().is_ok_and(|(_, o)| o.written) {
                acknowledged[i].push(name);
            }
        }
    }
    let mut wrong = Vec::new();
    for (i, b) in browsers.iter().enumerate() {
        let cookie = b.cookie.clone().unwrap();
        for name in &acknowledged[i] {
            let value: u64 = name[1..].parse::<u64>().unwrap() + (i as u64) * 1000;
            let seen = look(&svc, &cookie, name).await;
            if seen.as_ref().ok() != Some(&Some(Some(value))) {
                wrong.push(format!(
                    "session {i}: {name} = {seen:?}, acknowledged {value}"
                ));
            }
        }
    }
    let total: usize = acknowledged.iter().map(Vec::len).sum();
    assert!(total > 0, "some writes were acknowledged");
    assert!(
        wrong.is_empty(),
        "I2 (max_local_sessions = 1, {total} acknowledged): {}",
        session_kit::report(&wrong)
    );
    assert!(svc.stats().local_evictions > 0, "the bound was exercised");
}
