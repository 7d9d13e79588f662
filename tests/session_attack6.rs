//! Attack round 6: id rotation's retirement trail (successor tombstones, conditional
//! tombstone writes, invalidations that follow successors) and log-out-everywhere's
//! hinted handoff, against real memcached and several in-process instances: logouts
//! and `create()` racing rotations and rotation chains, rotations racing a log-out
//! everywhere, nodes stopped or killed (each in turn) around the race, a node stopped
//! mid-rotation, an attacker holding the pre-rotation id, many mixed hints delivered
//! to a returning node before the nodes that kept them are lost, and old keys holding
//! garbage or a foreign record.

mod kit;
#[path = "kit/session.rs"]
mod session_kit;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kit::Cluster;
use memkeep::session::{
    BackupSessionService, CookieDecision, Mode, RequestInfo, SaveOutcome, SessionError, SessionId,
    SessionRequest,
};
use session_kit::{
    config, drive_down, id_variants, index_of, look, report, service, wait_nodes_up, Browser,
};

const UP: Duration = Duration::from_secs(10);

/// `n` instances on fast clients: sticky (routes a, b, c) or non-sticky with `locking`.
fn instances(cluster: &Cluster, mode: &str, n: usize) -> Vec<BackupSessionService> {
    ["a", "b", "c"][..n]
        .iter()
        .map(|route| {
            let builder = if mode == "sticky" {
                config(cluster, Mode::Sticky).route(*route)
            } else {
                config(cluster, Mode::NonSticky)
                    .locking_str(mode)
                    .lock_wait(Duration::from_secs(10))
            };
            service(cluster, builder)
        })
        .collect()
}

fn refs(services: &[BackupSessionService]) -> Vec<&BackupSessionService> {
    services.iter().collect()
}

/// The wrong outcomes of looking at every form of `id` (the id, and every node /
/// backup / route variant of its key) on every instance: each form that got a session.
async fn served(cluster: &Cluster, services: &[&BackupSessionService], id: &str) -> Vec<String> {
    let parsed = SessionId::parse(id).unwrap();
    let mut forms = vec![id.to_owned()];
    forms.extend(id_variants(parsed.key(), &cluster.ids(), &["a", "b", "c"]));
    let mut wrong = Vec::new();
    for (i, svc) in services.iter().enumerate() {
        for form in &forms {
            match look(svc, form, "n").await {
                Ok(None) => {}
                Ok(Some(n)) => wrong.push(format!("{form} served on instance {i} (n = {n:?})")),
                Err(e) => wrong.push(format!("{form} on instance {i}: load failed: {e}")),
            }
        }
    }
    wrong
}

/// Asserts that no id of `ids` (in any form) gets a session on any of `services`.
async fn assert_all_dead(
    cluster: &Cluster,
    services: &[&BackupSessionService],
    ids: &[String],
    what: &str,
) {
    let mut wrong = Vec::new();
    for id in ids {
        wrong.extend(served(cluster, services, id).await);
    }
    assert!(wrong.is_empty(), "{what}: {}", report(&wrong));
}

/// A rotation request on `svc` that has loaded the session of `old` (and set
/// `user = 7`), not finished yet.
async fn pending_rotation(svc: &BackupSessionService, old: &str) -> SessionRequest {
    let rot = svc.request(RequestInfo::new("/login").session_id(Some(old)));
    let s = rot
        .cycle_id()
        .await
        .unwrap()
        .expect("the session to rotate");
    s.insert("user", &7u64).unwrap();
    rot
}

/// A login on `svc` that rotates the existing session of `cookie` (sets `user = 7`):
/// the new id when the rotation was acknowledged with a new cookie.
async fn rotate_once(
    svc: &BackupSessionService,
    cookie: &str,
) -> Result<Option<String>, SessionError> {
    let req = svc.request(RequestInfo::new("/login").session_id(Some(cookie)));
    let rotated = match req.cycle_id().await {
        Ok(Some(s)) => s.insert("user", &7u64).map(|()| true),
        Ok(None) => Ok(false),
        Err(e) => Err(e),
    };
    let out = req.finish().await;
    match (rotated, out) {
        (Err(e), _) | (_, Err(e)) => Err(e),
        (Ok(true), Ok(out)) => match out.cookie {
            CookieDecision::Set(new) if out.written => Ok(Some(new)),
            _ => Ok(None),
        },
        (Ok(false), Ok(_)) => Ok(None),
    }
}

/// Increments `n` of the EXISTING session of `cookie` (creates none): true when the
/// write was acknowledged.
async fn bump_existing(svc: &BackupSessionService, cookie: &str) -> bool {
    let req = svc.request(RequestInfo::new("/bump").session_id(Some(cookie)));
    let Ok(Some(s)) = req.session().await else {
        let _ = req.finish().await;
        return false;
    };
    let n = s.get::<u64>("n").unwrap().unwrap_or(0);
    s.insert("n", &(n + 1)).unwrap();
    drop(s);
    matches!(req.finish().await, Ok(out) if out.written)
}

/// A session (`n = 1`, created on `a`) whose logout on `b` has LOADED it, and then its
/// rotation on `a`, acknowledged: (the pending logout, the old id, the rotated id).
async fn logout_loaded_then_rotated(
    a: &BackupSessionService,
    b: &BackupSessionService,
) -> (SessionRequest, String, String) {
    let mut browser = Browser::new();
    browser.increment(a, "n").await.unwrap();
    let old = browser.cookie.clone().unwrap();
    let logout = b.request(RequestInfo::new("/logout").session_id(Some(&old)));
    assert!(
        logout.session().await.unwrap().is_some(),
        "the logout loads"
    );
    let new = rotate_once(a, &old)
        .await
        .unwrap()
        .expect("the rotation is acknowledged");
    (logout, old, new)
}

/// Finishes a logout request (its session invalidated) and checks the acknowledgement.
async fn finish_logout(logout: &SessionRequest, what: &str) {
    logout.invalidate().await.unwrap();
    let out = logout.finish().await.unwrap();
    assert_eq!(
        out.cookie,
        CookieDecision::Remove,
        "{what}: logout acknowledged"
    );
}

/// The heal step of the fault model: every instance sees every node up, every live
/// session (`live`) is requested once on every instance, and hints are delivered.
async fn heal(services: &[&BackupSessionService], live: &[String]) {
    assert!(wait_nodes_up(services, UP).await, "nodes not seen up");
    for svc in services {
        for id in live {
            look(svc, id, "n").await.unwrap();
        }
    }
    for svc in services {
        svc.deliver_hints().await;
    }
}

/// How a node is made unavailable.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGSTOP, and every instance drives its connection down.
    Stop,
    /// SIGKILL (restarted empty on recovery).
    Kill,
}

async fn inject(cluster: &mut Cluster, i: usize, fault: Fault, services: &[&BackupSessionService]) {
    match fault {
        Fault::Stop => {
            cluster[i].pause();
            for svc in services {
                assert!(
                    drive_down(svc, &Cluster::id(i), UP).await,
                    "n{i} not seen down"
                );
            }
        }
        Fault::Kill => cluster[i].kill(),
    }
}

fn recover(cluster: &mut Cluster, i: usize, fault: Fault) {
    match fault {
        Fault::Stop => cluster[i].resume(),
        Fault::Kill => cluster[i].restart(),
    }
}

/// I1 across a rotation: a logout that LOADED the session before a rotation elsewhere
/// completed, and finishes after, kills the rotated id too (docs/session.md, "Id
/// rotation", step 3). Here every memcached node is restarted empty in turn between the
/// rotation and the logout's finish, each fault healed as the fault model asks (every
/// live session requested on every instance, hints delivered) before the next.
#[tokio::test]
async fn a_logout_that_loaded_before_a_rotation_kills_it_even_after_each_node_restarted_in_turn() {
    let mut cluster = Cluster::start(3);
    for mode in ["sticky", "none"] {
        let svcs = instances(&cluster, mode, 2);
        let all = refs(&svcs);
        let (logout, old, new) = logout_loaded_then_rotated(&svcs[0], &svcs[1]).await;
        for i in 0..cluster.len() {
            cluster[i].restart();
            heal(&all, std::slice::from_ref(&new)).await;
        }
        // The rotated session lived through the faults (one at a time, healed).
        assert_eq!(
            look(&svcs[0], &new, "n").await.unwrap(),
            Some(Some(1)),
            "{mode}"
        );
        finish_logout(&logout, mode).await;
        let mut wrong = served(&cluster, &all, &old).await;
        wrong.extend(served(&cluster, &all, &new).await);
        assert!(wrong.is_empty(), "{mode}: {}", report(&wrong));
    }
}

/// `create()` (a new, empty session on login, replacing the current one) racing a
/// rotation of the current one on another instance, in both orders: the replaced
/// session is gone under every id, the rotated one included; the new session lives
/// and holds none of the old data.
#[tokio::test]
async fn create_racing_a_rotation_kills_the_replaced_session_under_every_id() {
    let cluster = Cluster::start(3);
    for mode in ["sticky", "none"] {
        let svcs = instances(&cluster, mode, 2);
        let all = refs(&svcs);
        let (a, b) = (&svcs[0], &svcs[1]);
        for rotation_first in [true, false] {
            let what = format!("{mode}, rotation first: {rotation_first}");
            let mut browser = Browser::new();
            browser.increment(a, "n").await.unwrap();
            let old = browser.cookie.clone().unwrap();
            let login = b.request(RequestInfo::new("/login").session_id(Some(&old)));
            let fresh = login.create().await.unwrap();
            fresh.insert("fresh", &1u64).unwrap();
            drop(fresh);
            let mut rotated = None;
            let created = if rotation_first {
                rotated = rotate_once(a, &old).await.unwrap();
                assert!(rotated.is_some(), "{what}: the rotation is acknowledged");
                login.finish().await.unwrap()
            } else {
                // The rotation loads first, the create finishes, then the rotation.
                let rot = pending_rotation(a, &old).await;
                let created = login.finish().await.unwrap();
                if let Ok(out) = rot.finish().await {
                    if let CookieDecision::Set(new) = out.cookie {
                        rotated = Some(new);
                    }
                }
                created
            };
            let CookieDecision::Set(fresh_id) = created.cookie else {
                panic!("{what}: create sets the new session's cookie: {created:?}");
            };
            let mut wrong = served(&cluster, &all, &old).await;
            if let Some(new) = &rotated {
                wrong.extend(served(&cluster, &all, new).await);
            }
            assert!(wrong.is_empty(), "{what}: {}", report(&wrong));
            for svc in &all {
                let mut fresh = Browser {
                    cookie: Some(fresh_id.clone()),
                };
                assert_eq!(
                    fresh.read_u64(svc, "fresh").await.unwrap(),
                    Some(1),
                    "{what}"
                );
                assert_eq!(fresh.read_u64(svc, "n").await.unwrap(), None, "{what}");
            }
        }
    }
}

/// An attacker holding the pre-rotation id (every node / backup / route variant of it)
/// on every instance: reads, `invalidate()`, `create()`, `cycle_id()` and a write.
/// None of it reads the rotated session or logs the user out of it ("Only a request
/// that loaded the live session follows successors"). Also after the old id's primary
/// was stopped during the rotation and resumed (no hint delivery asked for), and after
/// it was restarted empty.
#[tokio::test]
async fn an_attacker_with_the_pre_rotation_id_neither_reads_nor_logs_out_the_rotated_session() {
    let mut cluster = Cluster::start(3);
    for mode in ["sticky", "none", "all"] {
        for case in [
            "plain",
            "primary stopped during the rotation",
            "primary restarted",
        ] {
            let what = format!("{mode}, {case}");
            let svcs = instances(&cluster, mode, 2);
            let all = refs(&svcs);
            let (a, b) = (&svcs[0], &svcs[1]);
            let mut user = Browser::new();
            user.increment(a, "n").await.unwrap();
            user.increment(b, "n").await.unwrap();
            let old = user.cookie.clone().unwrap();
            let primary = index_of(SessionId::parse(&old).unwrap().node());
            if case.contains("stopped") {
                inject(&mut cluster, primary, Fault::Stop, &all).await;
            }
            let new = rotate_once(a, &old)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{what}: rotation acknowledged"));
            if case.contains("stopped") {
                recover(&mut cluster, primary, Fault::Stop);
            } else if case.contains("restarted") {
                cluster[primary].restart();
            }
            assert!(wait_nodes_up(&all, UP).await);
            let mut forms = vec![old.clone()];
            forms.extend(id_variants(
                SessionId::parse(&old).unwrap().key(),
                &cluster.ids(),
                &["a", "b"],
            ));
            for svc in &all {
                for form in &forms {
                    assert_eq!(
                        look(svc, form, "n").await.unwrap(),
                        None,
                        "{what}: {form} read"
                    );
                    let r = svc.request(RequestInfo::new("/logout").session_id(Some(form)));
                    r.invalidate().await.unwrap();
                    let _ = r.finish().await;
                }
                let r = svc.request(RequestInfo::new("/login").session_id(Some(&old)));
                let s = r.create().await.unwrap();
                s.insert("n", &1000u64).unwrap();
                drop(s);
                let _ = r.finish().await;
                let r = svc.request(RequestInfo::new("/login").session_id(Some(&old)));
                assert!(
                    r.cycle_id().await.unwrap().is_none(),
                    "{what}: old id rotated"
                );
                let _ = r.finish().await;
                let mut attacker = Browser {
                    cookie: Some(old.clone()),
                };
                attacker.increment(svc, "n").await.unwrap();
                assert_ne!(
                    attacker.id().unwrap().key(),
                    SessionId::parse(&old).unwrap().key()
                );
            }
            let mut victim = Browser {
                cookie: Some(new.clone()),
            };
            for svc in &all {
                assert_eq!(
                    victim.read_u64(svc, "n").await.unwrap(),
                    Some(2),
                    "{what}: logged out"
                );
                assert_eq!(
                    victim.read_u64(svc, "user").await.unwrap(),
                    Some(7),
                    "{what}"
                );
            }
        }
    }
}

/// Chains of rotations (on random instances, with writes between) racing logouts of
/// whatever id the browser held at a random moment, on three instances, in every
/// locking mode. If a logout that loaded the live session was acknowledged, every id
/// of the chain is dead; otherwise the chain's last id holds every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_chains_racing_logouts_on_three_instances() {
    let cluster = Cluster::start(3);
    let seed = kit::Rng::seed_from_env();
    let mut rng = kit::Rng::new(seed);
    for mode in ["sticky", "none", "all", "auto"] {
        let svcs = instances(&cluster, mode, 3);
        let all = refs(&svcs);
        for round in 0..4 {
            let what = format!("seed {seed}, {mode}, round {round}");
            let mut browser = Browser::new();
            browser.increment(&svcs[0], "n").await.unwrap();
            let first = browser.cookie.clone().unwrap();
            let ids = Arc::new(Mutex::new(vec![first.clone()]));
            let current = Arc::new(Mutex::new(Some(first)));
            let picks: Vec<u64> = (0..12).map(|_| rng.below(3)).collect();
            let delays: Vec<u64> = (0..4).map(|_| rng.below(25)).collect();
            let rotator = {
                let (ids, current) = (Arc::clone(&ids), Arc::clone(&current));
                let svcs = &svcs;
                async move {
                    let mut acked = 1u64;
                    for step in 0..4 {
                        let Some(cookie) = current.lock().unwrap().clone() else {
                            break;
                        };
                        let svc = &svcs[picks[step * 2] as usize];
                        if !bump_existing(svc, &cookie).await {
                            *current.lock().unwrap() = None;
                            break;
                        }
                        acked += 1;
                        let svc = &svcs[picks[step * 2 + 1] as usize];
                        match rotate_once(svc, &cookie).await {
                            Ok(Some(new)) => {
                                ids.lock().unwrap().push(new.clone());
                                *current.lock().unwrap() = Some(new);
                            }
                            _ => {
                                *current.lock().unwrap() = None;
                                break;
                            }
                        }
                    }
                    acked
                }
            };
            let logout = |k: usize| {
                let current = Arc::clone(&current);
                let svc = &svcs[1 + k];
                let (before, between) = (delays[k * 2], delays[k * 2 + 1]);
                async move {
                    tokio::time::sleep(Duration::from_millis(before)).await;
                    let Some(cookie) = current.lock().unwrap().clone() else {
                        return false;
                    };
                    let r = svc.request(RequestInfo::new("/logout").session_id(Some(&cookie)));
                    let loaded = matches!(r.session().await, Ok(Some(_)));
                    tokio::time::sleep(Duration::from_millis(between)).await;
                    let acked = r.invalidate().await.is_ok() && r.finish().await.is_ok();
                    loaded && acked
                }
            };
            let (acked, l1, l2) = tokio::join!(rotator, logout(0), logout(1));
            let ids = ids.lock().unwrap().clone();
            if l1 || l2 {
                assert_all_dead(&cluster, &all, &ids, &format!("{what}: logged out")).await;
            } else {
                let last = current.lock().unwrap().clone();
                let last =
                    last.unwrap_or_else(|| panic!("{what}: the chain ended without a logout"));
                for svc in &all {
                    assert_eq!(
                        look(svc, &last, "n").await.unwrap(),
                        Some(Some(acked)),
                        "{what}"
                    );
                }
            }
        }
    }
}

/// A logout racing a rotation (both orders: the logout finishing before or after the
/// rotation, both having loaded the session first) while one node is stopped or killed,
/// each node in turn; then the node comes back, the fault is healed, and ANOTHER node
/// is restarted empty. Old and rotated ids stay dead.
async fn logout_racing_rotation_with_a_node_away(mode: &str, fault: Fault) {
    let mut cluster = Cluster::start(3);
    for down in 0..3 {
        let what = format!("{mode}, n{down} {fault:?}");
        let svcs = instances(&cluster, mode, 2);
        let all = refs(&svcs);
        let (a, b) = (&svcs[0], &svcs[1]);
        let mut sessions = Vec::new();
        for _ in 0..2 {
            let mut br = Browser::new();
            br.increment(a, "n").await.unwrap();
            br.increment(b, "n").await.unwrap();
            sessions.push(br.cookie.unwrap());
        }
        inject(&mut cluster, down, fault, &all).await;
        let mut dead = Vec::new();
        for (k, old) in sessions.iter().enumerate() {
            let logout = b.request(RequestInfo::new("/logout").session_id(Some(old)));
            let loaded = logout.session().await.unwrap();
            assert!(loaded.is_some(), "{what}: the logout loads the session");
            drop(loaded);
            let rot = pending_rotation(a, old).await;
            logout.invalidate().await.unwrap();
            let (logout_out, rot_out) = if k == 0 {
                let l = logout.finish().await;
                (l, rot.finish().await)
            } else {
                let r = rot.finish().await;
                (logout.finish().await, r)
            };
            let logout_out = logout_out.unwrap();
            assert_eq!(logout_out.cookie, CookieDecision::Remove, "{what}: logout");
            dead.push(old.clone());
            match rot_out {
                Ok(SaveOutcome {
                    cookie: CookieDecision::Set(new),
                    ..
                }) => dead.push(new),
                // Finished first, nothing had invalidated the session yet: the
                // rotation is acknowledged (the logout then has a trail to follow).
                other => assert!(k == 0, "{what}: the rotation finished first: {other:?}"),
            }
        }
        recover(&mut cluster, down, fault);
        heal(&all, &[]).await;
        assert_all_dead(&cluster, &all, &dead, &format!("{what}: after recovery")).await;
        let next = (down + 1) % 3;
        cluster[next].restart();
        assert!(wait_nodes_up(&all, UP).await);
        let after = format!("{what}: after n{next} restarted");
        assert_all_dead(&cluster, &all, &dead, &after).await;
    }
}

#[tokio::test]
async fn sticky_a_logout_racing_a_rotation_with_each_node_stopped_in_turn() {
    logout_racing_rotation_with_a_node_away("sticky", Fault::Stop).await;
}

#[tokio::test]
async fn non_sticky_a_logout_racing_a_rotation_with_each_node_stopped_in_turn() {
    logout_racing_rotation_with_a_node_away("none", Fault::Stop).await;
}

#[tokio::test]
async fn a_logout_racing_a_rotation_with_each_node_killed_in_turn() {
    for mode in ["sticky", "none"] {
        logout_racing_rotation_with_a_node_away(mode, Fault::Kill).await;
    }
}

/// A node (the old id's primary or backup, alternately) is stopped WHILE the rotation
/// finishes, without any instance driving it down (writes wait in its socket and run
/// when it resumes), and a logout that loaded the session before finishes meanwhile on
/// the other instance. After the resume and a heal: old id dead; the rotated id dead if
/// the rotation was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_retirement_reaches_some_copies_only_racing_a_logout() {
    let mut cluster = Cluster::start(3);
    let seed = kit::Rng::seed_from_env();
    let mut rng = kit::Rng::new(seed);
    for mode in ["sticky", "none"] {
        let svcs = instances(&cluster, mode, 2);
        let all = refs(&svcs);
        let (a, b) = (&svcs[0], &svcs[1]);
        for round in 0..6 {
            let what = format!("seed {seed}, {mode}, round {round}");
            let mut br = Browser::new();
            br.increment(a, "n").await.unwrap();
            br.increment(b, "n").await.unwrap();
            let old = br.cookie.clone().unwrap();
            let id = SessionId::parse(&old).unwrap();
            let victim = if round % 2 == 0 {
                index_of(id.node())
            } else {
                id.backup()
                    .map(index_of)
                    .unwrap_or((index_of(id.node()) + 1) % 3)
            };
            let logout = b.request(RequestInfo::new("/logout").session_id(Some(&old)));
            assert!(logout.session().await.unwrap().is_some(), "{what}");
            let rot = pending_rotation(a, &old).await;
            let pause_after = Duration::from_micros(rng.below(4_000));
            let logout_after = Duration::from_micros(rng.below(4_000));
            let node = &mut cluster[victim];
            let (rot_out, logout_out, ()) = tokio::join!(
                rot.finish(),
                async {
                    tokio::time::sleep(logout_after).await;
                    logout.invalidate().await.unwrap();
                    logout.finish().await
                },
                async {
                    tokio::time::sleep(pause_after).await;
                    node.pause();
                }
            );
            tokio::time::sleep(Duration::from_millis(400)).await;
            cluster[victim].resume();
            heal(&all, &[]).await;
            let Ok(logout_out) = logout_out else {
                continue; // not acknowledged: no claim
            };
            assert_eq!(logout_out.cookie, CookieDecision::Remove, "{what}");
            let mut wrong = served(&cluster, &all, &old).await;
            if let Ok(out) = rot_out {
                if let CookieDecision::Set(new) = out.cookie {
                    wrong.extend(served(&cluster, &all, &new).await);
                }
            }
            assert!(
                wrong.is_empty(),
                "{what}: n{victim} stopped: {}",
                report(&wrong)
            );
        }
    }
}

/// A rotation of a bound session racing a log-out-everywhere of its principal while one
/// node is stopped (each node in turn); the node resumes, hints are delivered, then the
/// two nodes that got the log-out are restarted empty at once. Neither the old nor the
/// rotated id serves the session.
#[tokio::test]
async fn a_rotation_racing_a_log_out_everywhere_with_a_node_stopped_then_the_others_lost() {
    let mut cluster = Cluster::start(3);
    for mode in ["sticky", "none"] {
        for down in 0..3 {
            let what = format!("{mode}, n{down} stopped");
            let principal = format!("ann-{mode}-{down}");
            let svcs = instances(&cluster, mode, 2);
            let all = refs(&svcs);
            let (a, b) = (&svcs[0], &svcs[1]);
            let mut ann = Browser::new();
            ann.login(a, Some(&principal)).await.unwrap();
            ann.increment(b, "n").await.unwrap();
            let old = ann.cookie.clone().unwrap();
            inject(&mut cluster, down, Fault::Stop, &all).await;
            let (rotated, bumped) =
                tokio::join!(rotate_once(a, &old), b.invalidate_principal(&principal));
            assert!(bumped.unwrap() >= 1, "{what}");
            recover(&mut cluster, down, Fault::Stop);
            assert!(wait_nodes_up(&all, UP).await);
            for svc in &all {
                svc.deliver_hints().await;
            }
            for i in (0..3).filter(|i| *i != down) {
                cluster[i].restart();
            }
            assert!(wait_nodes_up(&all, UP).await);
            let mut wrong = served(&cluster, &all, &old).await;
            if let Ok(Some(new)) = rotated {
                wrong.extend(served(&cluster, &all, &new).await);
            }
            assert!(wrong.is_empty(), "{what}: {}", report(&wrong));
        }
    }
}

/// Many hints for one node (tombstones of logouts, retirements of rotations, principal
/// generations, plus garbage lines and a garbage copy on the node) recorded while it was
/// stopped, delivered after it resumes; then the two nodes that kept the hints are
/// restarted empty one after the other, each healed (live sessions requested, hints
/// delivered). Everything logged out stays dead (logged-out sessions are NOT requested
/// in the heals); every live session keeps its value.
#[tokio::test]
async fn many_mixed_hints_delivered_after_a_node_returns_then_the_holders_lost() {
    let mut cluster = Cluster::start(3);
    let svcs = instances(&cluster, "sticky", 2);
    let all = refs(&svcs);
    let (a, b) = (&svcs[0], &svcs[1]);
    let mut live: Vec<(String, u64)> = Vec::new();
    let mut plain = Vec::new();
    let mut bound = Vec::new();
    for i in 0..60 {
        let mut br = Browser::new();
        let principal = format!("p{}", i % 10);
        if i % 2 == 0 {
            br.login(a, Some(&principal)).await.unwrap();
        }
        br.increment(a, "n").await.unwrap();
        if i % 2 == 0 {
            bound.push((principal, br.cookie.clone().unwrap()));
        } else {
            plain.push(br.cookie.clone().unwrap());
        }
    }
    inject(&mut cluster, 0, Fault::Stop, &all).await;
    let mut dead = Vec::new();
    // Half the unbound sessions logged out, a third of the rest rotated.
    for (k, id) in plain.iter().enumerate() {
        match k % 3 {
            0 => {
                session_kit::logout(if k % 2 == 0 { a } else { b }, id).await;
                dead.push(id.clone());
            }
            1 => {
                let new = rotate_once(b, id).await.unwrap().expect("rotated");
                dead.push(id.clone());
                live.push((new, 1));
            }
            _ => {
                let mut br = Browser {
                    cookie: Some(id.clone()),
                };
                br.increment(b, "n").await.unwrap();
                live.push((br.cookie.unwrap(), 2));
            }
        }
    }
    // Principals p0..p4 logged out everywhere; p5..p9 live.
    for p in 0..5 {
        a.invalidate_principal(&format!("p{p}")).await.unwrap();
    }
    for (p, id) in &bound {
        if p.as_str() < "p5" {
            dead.push(id.clone());
        } else {
            live.push((id.clone(), 1));
        }
    }
    // Garbage on the hint lists the others keep for n0, and a garbage copy on n0.
    let addrs = cluster.addrs();
    for addr in &addrs[1..] {
        let junk = "zz 1 2\nP nothex 3\n\u{1}\n";
        let cmd = format!("append hints:n0 0 0 {}\r\n{junk}\r\n", junk.len());
        kit::memcached::raw::exchange(addr, cmd.as_bytes(), &["STORED", "NOT_STORED"]);
    }
    recover(&mut cluster, 0, Fault::Stop);
    assert!(wait_nodes_up(&all, UP).await);
    let key = SessionId::parse(&dead[0]).unwrap().key().to_string();
    kit::memcached::raw::set(&addrs[0], &key, "garbage");
    let delivered = a.deliver_hints().await + b.deliver_hints().await;
    let total = a.stats().hints_delivered + b.stats().hints_delivered;
    assert!(delivered > 0 || total > 0, "no hint delivered to n0");
    let live_ids: Vec<String> = live.iter().map(|(id, _)| id.clone()).collect();
    for i in [1, 2] {
        cluster[i].restart();
        heal(&all, &live_ids).await;
    }
    let mut wrong = Vec::new();
    for id in &dead {
        wrong.extend(served(&cluster, &all, id).await);
    }
    for (id, n) in &live {
        for svc in &all {
            match look(svc, id, "n").await {
                Ok(Some(Some(v))) if v == *n => {}
                other => wrong.push(format!("live {id}: {other:?}, wanted n = {n}")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", report(&wrong));
}

/// Invalidations of sessions whose key holds garbage or another session's record on one
/// node (the retirement of a rotated key overwritten so on one node, a live session's
/// third node holding a foreign record): a logout that loaded before the rotation still
/// follows it through the other nodes, the foreign record's owner is untouched, and
/// nothing logged out is served.
#[tokio::test]
async fn invalidations_of_keys_holding_garbage_or_a_foreign_record() {
    let cluster = Cluster::start(3);
    let addrs = cluster.addrs();
    for mode in ["sticky", "none"] {
        let svcs = instances(&cluster, mode, 2);
        let all = refs(&svcs);
        let (a, b) = (&svcs[0], &svcs[1]);
        // A retirement trail with garbage on the old id's primary.
        let (logout, old, new) = logout_loaded_then_rotated(a, b).await;
        let old_id = SessionId::parse(&old).unwrap();
        kit::memcached::raw::set(
            &addrs[index_of(old_id.node())],
            &old_id.key().to_string(),
            "garbage",
        );
        finish_logout(&logout, mode).await;
        let mut wrong = served(&cluster, &all, &old).await;
        wrong.extend(served(&cluster, &all, &new).await);
        // A foreign record (another live session's bytes) under a live session's key on
        // every node that holds no copy of it, then that session logged out.
        let mut owner = Browser::new();
        owner.increment(a, "n").await.unwrap();
        let owner_key = owner.id().unwrap().key().to_string();
        let mut victim = Browser::new();
        victim.increment(b, "n").await.unwrap();
        victim.increment(a, "n").await.unwrap();
        let vid = victim.id().unwrap();
        for (i, addr) in addrs.iter().enumerate() {
            let holds =
                Cluster::id(i) == vid.node() || Some(Cluster::id(i).as_str()) == vid.backup();
            if !holds {
                if let Some(bytes) = kit::memcached::raw::get_bytes(addr, &owner_key) {
                    let mut cmd = format!("set {} 0 0 {}\r\n", vid.key(), bytes.len()).into_bytes();
                    cmd.extend_from_slice(&bytes);
                    cmd.extend_from_slice(b"\r\n");
                    kit::memcached::raw::exchange(addr, &cmd, &["STORED"]);
                }
            }
        }
        let victim_id = victim.cookie.clone().unwrap();
        assert_eq!(
            look(b, &victim_id, "n").await.unwrap(),
            Some(Some(2)),
            "{mode}"
        );
        session_kit::logout(b, &victim_id).await;
        wrong.extend(served(&cluster, &all, &victim_id).await);
        for svc in &all {
            let mut o = owner.clone();
            if o.read_u64(svc, "n").await.unwrap() != Some(1) {
                wrong.push(format!("{mode}: the foreign record's owner lost its data"));
            }
        }
        assert!(wrong.is_empty(), "{mode}: {}", report(&wrong));
    }
}

/// Two rotations of one session at once (instances a and b) racing a logout that loaded
/// the session before both (instance c); the winner's id is rotated once more before
/// the logout finishes. Every id of the session is dead afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rotations_at_once_and_a_third_racing_a_logout_that_loaded_before_all() {
    let cluster = Cluster::start(3);
    for mode in ["sticky", "none"] {
        for round in 0..4 {
            let what = format!("{mode}, round {round}");
            let svcs = instances(&cluster, mode, 3);
            let all = refs(&svcs);
            let mut browser = Browser::new();
            browser.increment(&svcs[0], "n").await.unwrap();
            let old = browser.cookie.clone().unwrap();
            let logout = svcs[2].request(RequestInfo::new("/logout").session_id(Some(&old)));
            assert!(logout.session().await.unwrap().is_some(), "{what}");
            let (r1, r2) = tokio::join!(rotate_once(&svcs[0], &old), rotate_once(&svcs[1], &old));
            let mut ids = vec![old.clone()];
            ids.extend([r1, r2].into_iter().filter_map(|r| r.ok().flatten()));
            assert!(ids.len() >= 2, "{what}: neither rotation was acknowledged");
            let again = rotate_once(&svcs[round % 2], &ids[1]).await.unwrap();
            ids.extend(again);
            finish_logout(&logout, &what).await;
            assert_all_dead(&cluster, &all, &ids, &what).await;
        }
    }
}

/// Locking `all`: the logout holds the session's lock, which is lost (it expired, as
/// when its holder stalls), so a rotation on the other instance runs meanwhile. The
/// logout that loaded before the rotation then finishes: refused, or acknowledged and
/// then every id - the rotated one included - is dead.
#[tokio::test]
async fn locking_all_a_logout_whose_lock_was_lost_to_a_rotation_still_kills_the_rotated_id() {
    let cluster = Cluster::start(3);
    let (a, b) = session_kit::locked_pair(&cluster);
    for round in 0..3 {
        let mut browser = Browser::new();
        browser.increment(&a, "n").await.unwrap();
        let old = browser.cookie.clone().unwrap();
        let logout = b.request(RequestInfo::new("/logout").session_id(Some(&old)));
        assert!(logout.session().await.unwrap().is_some());
        session_kit::lose_lock(&cluster, &format!("lock:{}", browser.id().unwrap().key()));
        let new = rotate_once(&a, &old)
            .await
            .unwrap()
            .expect("the rotation takes the lost lock and is acknowledged");
        logout.invalidate().await.unwrap();
        let finished = logout.finish().await;
        eprintln!("round {round}: the logout whose lock was lost: {finished:?}");
        if let Ok(out) = finished {
            assert_eq!(out.cookie, CookieDecision::Remove, "round {round}");
            let mut wrong = served(&cluster, &[&a, &b], &old).await;
            wrong.extend(served(&cluster, &[&a, &b], &new).await);
            assert!(wrong.is_empty(), "round {round}: {}", report(&wrong));
        }
    }
}

/// Sticky async write mode on both instances: the session's writes are queued, a
/// logout loads it on b, the id is rotated on a, the logout finishes; after both queues
/// are flushed no id of the session is served.
#[tokio::test]
async fn sticky_async_a_logout_that_loaded_before_a_rotation_kills_the_rotated_id() {
    let cluster = Cluster::start(3);
    let make = |route: &str| {
        service(
            &cluster,
            config(&cluster, Mode::Sticky)
                .route(route)
                .write_mode(memkeep::session::WriteMode::Async),
        )
    };
    let (a, b) = (make("a"), make("b"));
    for round in 0..4 {
        let mut browser = Browser::new();
        browser.increment(&a, "n").await.unwrap();
        a.flush().await;
        browser.increment(&a, "n").await.unwrap();
        let old = browser.cookie.clone().unwrap();
        let logout = b.request(RequestInfo::new("/logout").session_id(Some(&old)));
        let loaded = logout.session().await.unwrap();
        let Some(loaded) = loaded else {
            panic!("round {round}: the logout loads the session");
        };
        drop(loaded);
        let new = rotate_once(&a, &old).await.unwrap();
        finish_logout(&logout, &format!("round {round}")).await;
        a.flush().await;
        b.flush().await;
        let mut wrong = served(&cluster, &[&a, &b], &old).await;
        if let Some(new) = &new {
            wrong.extend(served(&cluster, &[&a, &b], new).await);
        }
        assert!(wrong.is_empty(), "round {round}: {}", report(&wrong));
    }
}

/// More rotations between a logout's load and its finish than an invalidation follows
/// (16, docs/session.md "Invalidation"): with 16 the logout is acknowledged and kills
/// every id; with 17 it is either refused or, if acknowledged, kills every id too.
#[tokio::test]
async fn a_logout_after_sixteen_and_seventeen_rotations_never_acknowledges_a_survivor() {
    let cluster = Cluster::start(3);
    for mode in ["sticky", "none"] {
        let svcs = instances(&cluster, mode, 2);
        let all = refs(&svcs);
        for rotations in [16, 17] {
            let what = format!("{mode}, {rotations} rotations");
            let mut browser = Browser::new();
            browser.increment(&svcs[0], "n").await.unwrap();
            let mut ids = vec![browser.cookie.clone().unwrap()];
            let logout = svcs[1].request(RequestInfo::new("/logout").session_id(Some(&ids[0])));
            assert!(logout.session().await.unwrap().is_some(), "{what}");
            for _ in 0..rotations {
                let last = ids.last().unwrap().clone();
                ids.push(
                    rotate_once(&svcs[0], &last)
                        .await
                        .unwrap()
                        .expect("rotated"),
                );
            }
            logout.invalidate().await.unwrap();
            let finished = logout.finish().await;
            eprintln!("{what}: the logout: {finished:?}");
            match finished {
                Ok(out) => assert_eq!(out.cookie, CookieDecision::Remove, "{what}"),
                Err(e) => {
                    assert!(rotations > 16, "{what}: logout refused: {e}");
                    continue;
                }
            }
            assert_all_dead(&cluster, &all, &ids, &what).await;
        }
    }
}

/// The logout and the rotation on the SAME instance (they share one in-memory session
/// object), in both orders of finishing, both having loaded the session first: no id
/// of the session is served afterwards, on either instance.
#[tokio::test]
async fn a_logout_and_a_rotation_on_the_same_instance_in_both_orders() {
    let cluster = Cluster::start(3);
    for mode in ["sticky", "none"] {
        let svcs = instances(&cluster, mode, 2);
        let all = refs(&svcs);
        let a = &svcs[0];
        for logout_first in [true, false] {
            let what = format!("{mode}, logout first: {logout_first}");
            let mut browser = Browser::new();
            browser.increment(a, "n").await.unwrap();
            let old = browser.cookie.clone().unwrap();
            let logout = a.request(RequestInfo::new("/logout").session_id(Some(&old)));
            assert!(logout.session().await.unwrap().is_some(), "{what}");
            let rot = pending_rotation(a, &old).await;
            // invalidate() marks the shared session object: called after the rotation
            // finished when the rotation goes first.
            let (logout_out, rot_out) = if logout_first {
                logout.invalidate().await.unwrap();
                let l = logout.finish().await;
                (l, rot.finish().await)
            } else {
                let r = rot.finish().await;
                logout.invalidate().await.unwrap();
                (logout.finish().await, r)
            };
            eprintln!("{what}: logout {logout_out:?}, rotation {rot_out:?}");
            let Ok(logout_out) = logout_out else {
                continue; // not acknowledged: no claim
            };
            assert_eq!(logout_out.cookie, CookieDecision::Remove, "{what}");
            let mut wrong = served(&cluster, &all, &old).await;
            if let Ok(SaveOutcome {
                cookie: CookieDecision::Set(new),
                ..
            }) = rot_out
            {
                wrong.extend(served(&cluster, &all, &new).await);
            }
            assert!(wrong.is_empty(), "{what}: {}", report(&wrong));
        }
    }
}

/// Log out everywhere while a node is stopped, by an instance that then dies (dropped)
/// before the node resumes: a fresh instance delivers the principal hints the others
/// kept, and after that the two nodes that got the log-out are restarted empty. The
/// sessions of the principal (bound, rotated at login) stay logged out.
#[tokio::test]
async fn log_out_everywhere_handed_off_by_a_fresh_instance_after_the_invalidating_one_died() {
    let mut cluster = Cluster::start(3);
    for down in 0..3 {
        let what = format!("n{down} stopped");
        let principal = format!("bob-{down}");
        let a = service(&cluster, config(&cluster, Mode::Sticky).route("a"));
        let mut sessions = Vec::new();
        for _ in 0..6 {
            let mut br = Browser::new();
            br.login(&a, Some(&principal)).await.unwrap();
            br.increment(&a, "n").await.unwrap();
            sessions.push(br.cookie.unwrap());
        }
        inject(&mut cluster, down, Fault::Stop, &[&a]).await;
        assert!(
            a.invalidate_principal(&principal).await.unwrap() >= 1,
            "{what}"
        );
        drop(a);
        recover(&mut cluster, down, Fault::Stop);
        let c = service(&cluster, config(&cluster, Mode::Sticky).route("c"));
        assert!(wait_nodes_up(&[&c], UP).await);
        c.deliver_hints().await;
        assert!(
            c.stats().hints_delivered > 0,
            "{what}: no hint delivered by c"
        );
        for i in (0..3).filter(|i| *i != down) {
            cluster[i].restart();
        }
        let d = service(&cluster, config(&cluster, Mode::Sticky).route("b"));
        assert!(wait_nodes_up(&[&c, &d], UP).await);
        assert_all_dead(&cluster, &[&c, &d], &sessions, &what).await;
    }
}

/// The same gap as
/// `a_logout_that_loaded_before_a_rotation_kills_it_even_after_each_node_restarted_in_turn`
/// with one restart fewer: the rotation runs while one node is stopped (it gets the
/// retirement by hint), the node resumes and gets the hint, then the two nodes holding
/// the retirement are restarted empty in turn (each healed). The logout that loaded
/// before the rotation finishes last.
#[tokio::test]
async fn a_logout_that_loaded_before_a_rotation_during_a_stop_kills_it_after_two_restarts() {
    let mut cluster = Cluster::start(3);
    for mode in ["sticky", "none"] {
        for down in 0..3 {
            let what = format!("{mode}, n{down} stopped during the rotation");
            let svcs = instances(&cluster, mode, 2);
            let all = refs(&svcs);
            let mut browser = Browser::new();
            browser.increment(&svcs[0], "n").await.unwrap();
            let old = browser.cookie.clone().unwrap();
            let logout = svcs[1].request(RequestInfo::new("/logout").session_id(Some(&old)));
            assert!(logout.session().await.unwrap().is_some(), "{what}");
            inject(&mut cluster, down, Fault::Stop, &all).await;
            let new = rotate_once(&svcs[0], &old)
                .await
                .unwrap()
                .expect("the rotation is acknowledged");
            recover(&mut cluster, down, Fault::Stop);
            heal(&all, std::slice::from_ref(&new)).await;
            for i in (0..3).filter(|i| *i != down) {
                cluster[i].restart();
                heal(&all, std::slice::from_ref(&new)).await;
            }
            finish_logout(&logout, &what).await;
            assert_all_dead(&cluster, &all, &[old, new], &what).await;
        }
    }
}
