//! Session lifecycle operations against real memcached, several service instances in
//! process: id rotation (`cycle_id`) in every mode, under concurrent requests and across
//! a takeover; the absolute lifetime (`max_lifetime`) with the injected clock across a
//! restore from backup; "log out everywhere" (`bind_principal` / `invalidate_principal`)
//! with a node killed or stopped between bind and invalidate; every listener event, on
//! the instance it happened on.

mod kit;
#[path = "kit/session.rs"]
mod session_kit;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kit::Cluster;
use memkeep::session::{
    BackupSessionService, CookieDecision, ManualClock, Mode, RequestInfo, SessionEvent,
    SessionEventKind, SessionId,
};
use session_kit::{
    browser_with_counter, config, id_variants, look, non_sticky, service, sticky, Browser,
};

/// Every way a client could present the old id: the id itself and every node / backup /
/// route variant of its key.
fn old_variants(cluster: &Cluster, old: &SessionId) -> Vec<String> {
    let mut v = vec![old.to_string()];
    v.extend(id_variants(old.key(), &cluster.ids(), &["a", "b"]));
    v
}

/// Asserts that no variant of `old` gets a session on any of `services`.
async fn assert_dead(cluster: &Cluster, services: &[&BackupSessionService], old: &SessionId) {
    for svc in services {
        for id in old_variants(cluster, old) {
            let seen = look(svc, &id, "user").await.unwrap();
            assert_eq!(
                seen,
                None,
                "old id {id} served again on {:?}",
                svc.config().route()
            );
        }
    }
}

/// Instances of one cluster in one mode (sticky: routes `a` and `b`).
fn pair(cluster: &Cluster, mode: Mode, locking: &str) -> [BackupSessionService; 2] {
    match mode {
        Mode::Sticky => [sticky(cluster, "a"), sticky(cluster, "b")],
        _ => [non_sticky(cluster, locking), non_sticky(cluster, locking)],
    }
}

#[tokio::test]
async fn rotation_keeps_the_data_and_kills_the_old_id_on_every_instance_in_every_mode() {
    let cluster = Cluster::start(3);
    for (mode, locking) in [
        (Mode::Sticky, ""),
        (Mode::NonSticky, "none"),
        (Mode::NonSticky, "all"),
        (Mode::NonSticky, "auto"),
    ] {
        let [a, b] = pair(&cluster, mode, locking);
        let mut browser = browser_with_counter(&a).await;
        browser.increment(&a, "n").await.unwrap();
        // Both instances have seen (and, sticky, hold in memory) the session.
        assert_eq!(browser.read_u64(&b, "n").await.unwrap(), Some(2));
        assert_eq!(browser.read_u64(&a, "n").await.unwrap(), Some(2));
        let old = browser.id().unwrap();
        let out = browser.login(&a, None).await.unwrap();
        let CookieDecision::Set(new) = &out.cookie else {
            panic!("{mode:?}/{locking}: rotation must reissue the cookie, got {out:?}");
        };
        assert!(out.written);
        let new = SessionId::parse(new).unwrap();
        assert_ne!(
            new.key(),
            old.key(),
            "{mode:?}/{locking}: the random part changes"
        );
        assert_eq!(out.session_id.as_deref(), Some(new.to_string().as_str()));
        for svc in [&a, &b] {
            assert_eq!(
                browser.read_u64(svc, "n").await.unwrap(),
                Some(2),
                "{mode:?}/{locking}"
            );
            assert_eq!(browser.read_u64(svc, "user").await.unwrap(), Some(7));
        }
        assert_dead(&cluster, &[&a, &b], &old).await;
        // The old id presented to get_or_create gives a new, empty session.
        let mut stale = Browser {
            cookie: Some(old.to_string()),
        };
        let (empty, _) = stale
            .call(&b, "/x", |s| s.attribute_names().is_empty())
            .await
            .unwrap();
        assert!(
            empty,
            "{mode:?}/{locking}: a session created for the old id is empty"
        );
        assert_ne!(stale.id().unwrap().key(), old.key());
        assert_eq!(a.stats().id_rotations, 1, "{mode:?}/{locking}");
    }
}

#[tokio::test]
async fn rotation_works_across_a_sticky_takeover() {
    let cluster = Cluster::start(3);
    let [a, b] = pair(&cluster, Mode::Sticky, "");
    let mut browser = browser_with_counter(&a).await;
    let old = browser.id().unwrap();
    assert_eq!(old.route(), Some("a"));
    // Instance b takes the session over and rotates it in the same request.
    let out = browser.login(&b, None).await.unwrap();
    let new = browser.id().unwrap();
    assert!(matches!(out.cookie, CookieDecision::Set(_)));
    assert_eq!(
        new.route(),
        Some("b"),
        "the new id names the instance that owns it"
    );
    assert_ne!(new.key(), old.key());
    assert_eq!(b.stats().instance_takeovers, 1);
    // a still holds the old session in memory: it must not serve it.
    assert_dead(&cluster, &[&a, &b], &old).await;
    assert_eq!(browser.read_u64(&a, "n").await.unwrap(), Some(1));
}

/// Requests of one session run on two instances while a third request rotates it. Each
/// request sets an attribute of its own. Every request whose save was acknowledged
/// (`written`) must find its attribute in the rotated session, and no request after
/// the rotation may get the session through the old id.
#[tokio::test]
async fn rotation_under_concurrent_requests_loses_no_acknowledged_attribute() {
    const WRITERS: u64 = 24;
    let cluster = Cluster::start(3);
    for (mode, locking) in [
        (Mode::NonSticky, "none"),
        (Mode::NonSticky, "all"),
        (Mode::Sticky, ""),
    ] {
        let [a, b] = pair(&cluster, mode, locking);
        let mut browser = Browser::new();
        browser.increment(&a, "base").await.unwrap();
        let old = browser.id().unwrap().to_string();
        let mut tasks = Vec::new();
        for i in 0..WRITERS {
            let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
            let id = old.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 3)).await;
                let req = svc.request(RequestInfo::new("/w").session_id(Some(&id)));
                let Ok(Some(s)) = req.session().await else {
                    let _ = req.finish().await;
                    return None;
                };
                s.insert(&format!("w{i}"), &i).unwrap();
                drop(s);
                match req.finish().await {
                    Ok(out) if out.written => Some(i),
                    _ => None,
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(WRITERS * 3 / 2)).await;
        // Under this contention a rotation may be refused (`Conflict`: the old key kept
        // being written; the old id stays live with every write): the browser retries.
        let mut refused = 0;
        let out = loop {
            match browser.login(&a, None).await {
                Err(memkeep::session::SessionError::Conflict) if refused < 5 => refused += 1,
                other => break other.unwrap(),
            }
        };
        assert!(
            matches!(out.cookie, CookieDecision::Set(_)),
            "{mode:?}/{locking}: {out:?}"
        );
        let mut acknowledged = Vec::new();
        for t in tasks {
            if let Some(i) = t.await.unwrap() {
                acknowledged.push(i);
            }
        }
        let names = {
            let (names, _) = browser
                .visit(&b, "/r", |s| s.map(|s| s.attribute_names()))
                .await
                .unwrap();
            names.expect("the rotated session is served")
        };
        let lost: Vec<u64> = acknowledged
            .iter()
            .copied()
            .filter(|i| !names.contains(&format!("w{i}")))
            .collect();
        assert!(
            lost.is_empty(),
            "{mode:?}/{locking}: acknowledged writes lost by the rotation: {lost:?} (acknowledged {acknowledged:?}, session has {names:?})"
        );
        assert!(names.contains(&"base".to_string()) && names.contains(&"user".to_string()));
        assert_dead(&cluster, &[&a, &b], &SessionId::parse(&old).unwrap()).await;
        println!(
            "{mode:?}/{locking}: {} of {WRITERS} overlapping writes acknowledged, all in the rotated session ({refused} rotation(s) refused first)",
            acknowledged.len()
        );
    }
}

fn clocked(
    cluster: &Cluster,
    route: &str,
    clock: &ManualClock,
    tune: impl FnOnce(memkeep::session::SessionConfigBuilder) -> memkeep::session::SessionConfigBuilder,
) -> BackupSessionService {
    service(
        cluster,
        tune(
            config(cluster, Mode::Sticky)
                .route(route)
                .max_inactive_interval(Duration::from_secs(30 * 60))
                .max_lifetime(Duration::from_secs(60 * 60))
                .clock(Arc::new(clock.clone())),
        ),
    )
}

#[tokio::test]
async fn max_lifetime_holds_across_a_restore_from_backup_and_a_rotation() {
    let mut cluster = Cluster::start(3);
    let clock = ManualClock::starting_now();
    let a = clocked(&cluster, "a", &clock, |b| b);
    let b = clocked(&cluster, "b", &clock, |b| b);
    assert_eq!(a.config().max_lifetime(), Some(Duration::from_secs(3600)));
    let mut browser = browser_with_counter(&a).await;
    // Kept active (never idle for 30 min) and rotated at 20 min: the deadline stays
    // 60 min after creation.
    clock.advance(Duration::from_secs(20 * 60));
    browser.login(&a, None).await.unwrap();
    clock.advance(Duration::from_secs(20 * 60));
    assert_eq!(browser.increment(&a, "n").await.unwrap(), 2);
    // The primary node dies: instance b restores the session from the backup copy.
    let primary = session_kit::index_of(browser.id().unwrap().node());
    cluster[primary].kill();
    clock.advance(Duration::from_secs(19 * 60));
    assert_eq!(
        browser.read_u64(&b, "n").await.unwrap(),
        Some(2),
        "59 min: still alive"
    );
    assert!(
        b.stats().restores_from_backup >= 1,
        "served from the backup copy"
    );
    clock.advance(Duration::from_secs(61));
    let kept = browser.id().unwrap().to_string();
    for svc in [&b, &a] {
        assert_eq!(
            look(svc, &kept, "n").await.unwrap(),
            None,
            "past the absolute lifetime, on {:?}",
            svc.config().route()
        );
    }
    assert!(b.stats().expired >= 1);
}

#[tokio::test]
async fn an_instance_without_max_lifetime_config_is_not_affected_by_default() {
    let cluster = Cluster::start(2);
    let clock = ManualClock::starting_now();
    let a = service(
        &cluster,
        config(&cluster, Mode::Sticky)
            .route("a")
            .clock(Arc::new(clock.clone())),
    );
    assert_eq!(a.config().max_lifetime(), None);
    let mut browser = Browser::new();
    for _ in 0..5 {
        browser.increment(&a, "n").await.unwrap();
        clock.advance(Duration::from_secs(25 * 60));
    }
    assert_eq!(
        browser.read_u64(&a, "n").await.unwrap(),
        Some(5),
        "idle timeout only"
    );
}

/// How a node misses the invalidation.
#[derive(Clone, Copy, Debug)]
enum NodeFault {
    /// Killed between bind and invalidate, restarted empty afterwards.
    KilledRestartedEmpty,
    /// Stopped (SIGSTOP) between bind and invalidate, resumed with its old data.
    StoppedResumed,
}

#[tokio::test]
async fn log_out_everywhere_holds_with_a_node_lost_between_bind_and_invalidate() {
    for fault in [NodeFault::KilledRestartedEmpty, NodeFault::StoppedResumed] {
        for down in 0..3 {
            log_out_everywhere_case(fault, down).await;
        }
    }
}

async fn log_out_everywhere_case(fault: NodeFault, down: usize) {
    let mut cluster = Cluster::start(3);
    let build = |cluster: &Cluster, route: &str| {
        service(cluster, config(cluster, Mode::Sticky).route(route))
    };
    let a = build(&cluster, "a");
    let b = build(&cluster, "b");
    // Six sessions of ann (spread over the nodes), one of bob.
    let mut ann = Vec::new();
    for i in 0..6 {
        let mut br = Browser::new();
        br.login(if i % 2 == 0 { &a } else { &b }, Some("ann"))
            .await
            .unwrap();
        ann.push(br);
    }
    let mut bob = Browser::new();
    bob.login(&a, Some("bob")).await.unwrap();
    let nodes: std::collections::BTreeSet<String> = ann
        .iter()
        .map(|br| br.id().unwrap().node().to_owned())
        .collect();
    match fault {
        NodeFault::KilledRestartedEmpty => cluster[down].kill(),
        NodeFault::StoppedResumed => {
            cluster[down].pause();
            for svc in [&a, &b] {
                assert!(
                    session_kit::drive_down(svc, &Cluster::id(down), Duration::from_secs(10)).await
                );
            }
        }
    }
    let generation = b.invalidate_principal("ann").await.unwrap();
    assert_eq!(generation, 1);
    match fault {
        NodeFault::KilledRestartedEmpty => cluster[down].restart(),
        NodeFault::StoppedResumed => cluster[down].resume(),
    }
    assert!(session_kit::wait_nodes_up(&[&a, &b], Duration::from_secs(10)).await);
    for (i, br) in ann.iter().enumerate() {
        for svc in [&a, &b] {
            let id = br.cookie.clone().unwrap();
            assert_eq!(
                look(svc, &id, "user").await.unwrap(),
                None,
                "{fault:?} n{down}: ann's session {i} ({id}, nodes {nodes:?}) served after log-out-everywhere on {:?}",
                svc.config().route()
            );
        }
    }
    assert_eq!(
        bob.read_u64(&a, "user").await.unwrap(),
        Some(7),
        "bob is not logged out"
    );
    // A login after the log-out lives, on both instances.
    let mut again = Browser::new();
    again.login(&b, Some("ann")).await.unwrap();
    assert_eq!(again.read_u64(&a, "user").await.unwrap(), Some(7));
    assert!(a.stats().principal_logouts + b.stats().principal_logouts >= 6);
}

/// Log-out-everywhere while a node is stopped: the node resumes with the old generation,
/// gets the new one from the hints the others kept (hinted handoff, as for tombstones),
/// and then the two nodes that got the log-out are restarted empty. A session of the
/// principal whose copy survives on the resumed node stays logged out.
#[tokio::test]
async fn log_out_everywhere_missed_by_a_stopped_node_survives_the_loss_of_the_nodes_that_got_it() {
    let mut cluster = Cluster::start(3);
    let a = service(&cluster, config(&cluster, Mode::Sticky).route("a"));
    let n0 = Cluster::id(0);
    // A session of ann with a copy on n0 (the node that will miss the log-out).
    let mut ann = None;
    for _ in 0..50 {
        let mut br = Browser::new();
        br.login(&a, Some("ann")).await.unwrap();
        let id = br.id().unwrap();
        if id.node() == n0 || id.backup() == Some(n0.as_str()) {
            ann = Some(br);
            break;
        }
    }
    let ann = ann.expect("a session with a copy on n0 among 50");
    cluster[0].pause();
    assert!(session_kit::drive_down(&a, &n0, Duration::from_secs(10)).await);
    assert_eq!(a.invalidate_principal("ann").await.unwrap(), 1);
    let delivered = a.stats().hints_delivered;
    cluster[0].resume();
    assert!(session_kit::wait_nodes_up(&[&a], Duration::from_secs(10)).await);
    // The background handoff (every second) delivers the generation to n0.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while a.stats().hints_delivered == delivered {
        assert!(
            std::time::Instant::now() < deadline,
            "no hint delivered to n0 in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in [1, 2] {
        cluster[i].kill();
        cluster[i].restart();
    }
    assert!(session_kit::wait_nodes_up(&[&a], Duration::from_secs(10)).await);
    let id = ann.cookie.clone().unwrap();
    assert_eq!(
        look(&a, &id, "user").await.unwrap(),
        None,
        "ann's session {id} served after log-out-everywhere: n0 kept the old generation"
    );
}

type Seen = Arc<Mutex<Vec<SessionEvent>>>;

fn recorder() -> (Seen, impl Fn(&SessionEvent) + Send + Sync + 'static) {
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    (seen, move |e: &SessionEvent| {
        s.lock().unwrap().push(e.clone())
    })
}

async fn wait_for(seen: &Seen, kind: SessionEventKind) -> SessionEvent {
    let found = kit::eventually(Duration::from_secs(5), || {
        seen.lock().unwrap().iter().any(|e| e.kind == kind)
    })
    .await;
    assert!(found, "no {kind:?} event; got {:?}", seen.lock().unwrap());
    seen.lock()
        .unwrap()
        .iter()
        .find(|e| e.kind == kind)
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn every_listener_event_fires_on_its_instance_and_a_panicking_listener_breaks_nothing() {
    let mut cluster = Cluster::start(3);
    let clock = ManualClock::starting_now();
    let (seen_a, rec_a) = recorder();
    let (seen_b, rec_b) = recorder();
    let a = clocked(&cluster, "a", &clock, |c| {
        c.listener(|_: &SessionEvent| panic!("a listener that panics"))
            .listener(rec_a)
    });
    let b = clocked(&cluster, "b", &clock, |c| c.listener(rec_b));
    let mut browser = browser_with_counter(&a).await;
    let created = wait_for(&seen_a, SessionEventKind::Created).await;
    assert_eq!(created.instance.as_deref(), Some("a"));
    assert_eq!(created.route.as_deref(), Some("a"));
    // Rotation on a: IdChanged with the old id.
    let old = browser.id().unwrap().to_string();
    browser.login(&a, None).await.unwrap();
    let changed = wait_for(&seen_a, SessionEventKind::IdChanged).await;
    assert_eq!(changed.previous_id.as_deref(), Some(old.as_str()));
    assert_eq!(Some(changed.session_id.clone()), browser.cookie);
    // Taken over by b.
    assert_eq!(browser.read_u64(&b, "n").await.unwrap(), Some(1));
    let taken = wait_for(&seen_b, SessionEventKind::TakenOver).await;
    assert_eq!(taken.instance.as_deref(), Some("b"));
    assert_eq!(taken.route.as_deref(), Some("b"));
    // The primary node dies: b restores from the backup, and the next write relocates.
    let primary = session_kit::index_of(browser.id().unwrap().node());
    cluster[primary].kill();
    assert_eq!(browser.increment(&b, "n").await.unwrap(), 2);
    let restored = wait_for(&seen_b, SessionEventKind::RestoredFromBackup).await;
    assert_eq!(restored.instance.as_deref(), Some("b"));
    let relocated = wait_for(&seen_b, SessionEventKind::Relocated).await;
    assert_ne!(relocated.previous_id, Some(relocated.session_id.clone()));
    assert_eq!(Some(relocated.session_id.clone()), browser.cookie);
    // Expired (idle) on a.
    clock.advance(Duration::from_secs(31 * 60));
    assert_eq!(browser.read_u64(&a, "n").await.unwrap(), None);
    let expired = wait_for(&seen_a, SessionEventKind::Expired).await;
    assert_eq!(expired.instance.as_deref(), Some("a"));
    // Invalidated on a (the panicking listener ran for every event of a).
    let other = browser_with_counter(&a).await;
    session_kit::logout(&a, &other.cookie.clone().unwrap()).await;
    let inv = wait_for(&seen_a, SessionEventKind::Invalidated).await;
    assert_eq!(Some(inv.session_id), other.cookie);
    assert!(
        !seen_b
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.kind == SessionEventKind::Invalidated
                || e.kind == SessionEventKind::IdChanged),
        "b saw events of a: {:?}",
        seen_b.lock().unwrap()
    );
}

/// I3 holds for a rotation: a request whose lock expired, and whose session was written
/// meanwhile under a newer lock, does not rotate (its change would overwrite that write):
/// `Conflict`, the old id keeps the newer write, the new id never serves.
#[tokio::test]
async fn a_rotation_under_an_expired_lock_is_refused_when_the_session_was_written_since() {
    let cluster = Cluster::start(2);
    let (a, b) = session_kit::locked_pair(&cluster);
    let browser = browser_with_counter(&a).await;
    let cookie = browser.cookie.clone().unwrap();
    let lock_key = format!("lock:{}", browser.id().unwrap().key());
    let ra = a.request(RequestInfo::new("/login").session_id(Some(&cookie)));
    let sa = ra.cycle_id().await.unwrap().unwrap();
    session_kit::lose_lock(&cluster, &lock_key);
    assert_eq!(browser.clone().increment(&b, "n").await.unwrap(), 2);
    sa.insert("n", &99u64).unwrap();
    drop(sa);
    let out = ra.finish().await;
    assert!(
        matches!(out, Err(memkeep::session::SessionError::Conflict)),
        "a rotation under a lost lock gave {out:?}"
    );
    for svc in [&a, &b] {
        assert_eq!(browser.clone().read_u64(svc, "n").await.unwrap(), Some(2));
    }
    assert_eq!(a.stats().id_rotations, 0);
}
