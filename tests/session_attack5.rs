//! Attacks on the session lifecycle (id rotation, absolute lifetime, log out everywhere,
//! listeners) and on the store adapters (tower-sessions, actix-session), against real
//! memcached: rotations racing each other and a logout, a login racing a log-out
//! everywhere, a bound session restored from backup, `max_lifetime` across a takeover
//! with a rotation, forged actix keys, concurrent adapter writes of one session, and a
//! node restarted empty between two saves.

#[path = "kit/adapters.rs"]
mod adapters_kit;
mod kit;
#[path = "kit/session.rs"]
mod session_kit;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kit::Cluster;
use memkeep::session::{
    BackupSessionService, CookieDecision, ManualClock, Mode, RequestInfo, SaveOutcome,
    SessionError, SessionId,
};
use session_kit::{
    browser_with_counter, config, id_variants, index_of, look, non_sticky, service, sticky, Browser,
};

/// Asserts that no form of `old` (the id and every node / backup / route variant of its
/// key) gets a session on any of `services`.
async fn assert_dead(cluster: &Cluster, services: &[&BackupSessionService], old: &str, what: &str) {
    let old = SessionId::parse(old).unwrap();
    let mut forms = vec![old.to_string()];
    forms.extend(id_variants(old.key(), &cluster.ids(), &["a", "b"]));
    for svc in services {
        for id in &forms {
            assert_eq!(
                look(svc, id, "user").await.unwrap(),
                None,
                "{what}: {id} served on {:?}",
                svc.config().route()
            );
        }
    }
}

/// Two instances of one mode: `sticky` (routes a and b) or non-sticky with that locking.
fn two_instances(cluster: &Cluster, mode: &str) -> (BackupSessionService, BackupSessionService) {
    if mode == "sticky" {
        (sticky(cluster, "a"), sticky(cluster, "b"))
    } else {
        (non_sticky(cluster, mode), non_sticky(cluster, mode))
    }
}

/// A login that rotates the browser's existing session (it creates none): the outcome
/// (`None`: the id found no session to rotate), or the error.
async fn rotate(
    svc: &BackupSessionService,
    mut browser: Browser,
) -> (Browser, Result<Option<SaveOutcome>, SessionError>) {
    let req = svc.request(RequestInfo::new("/login").session_id(browser.cookie.as_deref()));
    let rotated = match req.cycle_id().await {
        Ok(Some(s)) => s.insert("user", &7u64).map(|()| true),
        Ok(None) => Ok(false),
        Err(e) => Err(e),
    };
    let finished = req.finish().await;
    let out = match (rotated, finished) {
        (Ok(true), Ok(out)) => {
            if let CookieDecision::Set(id) = &out.cookie {
                browser.cookie = Some(id.clone());
            }
            Ok(Some(out))
        }
        (Ok(false), Ok(_)) => Ok(None),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    (browser, out)
}

#[tokio::test]
async fn two_instances_rotating_one_session_at_once_leave_the_data_under_a_live_id() {
    let cluster = Cluster::start(3);
    for mode in ["sticky", "none", "all"] {
        let (a, b) = two_instances(&cluster, mode);
        for round in 0..5 {
            let mut browser = browser_with_counter(&a).await;
            browser.increment(&b, "n").await.unwrap();
            let old = browser.cookie.clone().unwrap();
            let ((b1, r1), (b2, r2)) =
                tokio::join!(rotate(&a, browser.clone()), rotate(&b, browser.clone()));
            let mut live = 0;
            for (br, r) in [(b1, r1), (b2, r2)] {
                let Ok(Some(out)) = r else { continue };
                if out.written {
                    let CookieDecision::Set(new) = &out.cookie else {
                        panic!("{mode}/{round}: a written rotation sets a cookie: {out:?}");
                    };
                    // An acknowledged rotation: its new id serves the whole session.
                    for svc in [&a, &b] {
                        let mut check = br.clone();
                        assert_eq!(
                            check.read_u64(svc, "n").await.unwrap(),
                            Some(2),
                            "{mode}/{round}: rotated id {new} lost the counter"
                        );
                        assert_eq!(check.read_u64(svc, "user").await.unwrap(), Some(7));
                    }
                    live += 1;
                }
            }
            assert!(live >= 1, "{mode}/{round}: neither rotation took effect");
            assert_dead(&cluster, &[&a, &b], &old, &format!("{mode}/{round} old id")).await;
        }
    }
}

#[tokio::test]
async fn a_rotation_that_loaded_before_a_logout_elsewhere_never_resurrects_the_session() {
    let cluster = Cluster::start(3);
    for mode in ["sticky", "none"] {
        let (a, b) = two_instances(&cluster, mode);
        let browser = browser_with_counter(&a).await;
        let old = browser.cookie.clone().unwrap();
        // The rotation loads the session and is about to finish ...
        let req = a.request(RequestInfo::new("/login").session_id(Some(&old)));
        let s = req.cycle_id().await.unwrap().expect("the session");
        s.insert("user", &7u64).unwrap();
        drop(s);
        // ... when the user logs out on the other instance.
        session_kit::logout(&b, &old).await;
        let out = req.finish().await;
        if let Ok(out) = &out {
            if let CookieDecision::Set(new) = &out.cookie {
                assert_dead(&cluster, &[&a, &b], new, &format!("{mode}: rotated id")).await;
            }
        }
        assert_dead(&cluster, &[&a, &b], &old, &format!("{mode}: old id")).await;
    }
}

/// The opposite order of the test above (the I1 gap of the first lifecycle round): a
/// logout that loaded the session before a rotation of it completed on the other
/// instance, and finishes after, kills the rotated id too (it follows the retirement
/// tombstone to the key the session moved to). Locking `all` and `auto` serialize the
/// two requests (the logout holds the session's lock), so they can't interleave so.
#[tokio::test]
async fn a_logout_that_loaded_before_a_rotation_elsewhere_kills_the_rotated_id_too() {
    let cluster = Cluster::start(3);
    for mode in ["sticky", "none"] {
        let (a, b) = two_instances(&cluster, mode);
        for rotations in 1..=3 {
            let browser = browser_with_counter(&a).await;
            let old = browser.cookie.clone().unwrap();
            // The logout loads the session on b and is about to finish ...
            let logout = b.request(RequestInfo::new("/logout").session_id(Some(&old)));
            let loaded = logout.session().await.unwrap().expect("the session");
            drop(loaded);
            // ... when the login rotates the id on a (once or several times in a row).
            let mut current = browser.clone();
            let mut ids = Vec::new();
            for _ in 0..rotations {
                let (next, out) = rotate(&a, current.clone()).await;
                let out = out.unwrap().expect("the session to rotate");
                assert!(out.written, "{mode}: the rotation was acknowledged");
                current = next;
                ids.push(current.cookie.clone().unwrap());
            }
            let followed = b.stats().successors_invalidated;
            logout.invalidate().await.unwrap();
            let out = logout.finish().await.unwrap();
            assert_eq!(
                out.cookie,
                CookieDecision::Remove,
                "{mode}: logout acknowledged"
            );
            assert_eq!(
                b.stats().successors_invalidated - followed,
                rotations,
                "{mode}: the logout followed each rotation"
            );
            let what = format!("{mode}, {rotations} rotation(s)");
            assert_dead(&cluster, &[&a, &b], &old, &format!("{what}: old id")).await;
            for id in &ids {
                assert_dead(&cluster, &[&a, &b], id, &format!("{what}: rotated id {id}")).await;
            }
        }
    }
}

#[tokio::test]
async fn a_cookie_header_with_the_old_and_the_new_id_gets_the_rotated_session_only() {
    let cluster = Cluster::start(3);
    let (a, b) = (sticky(&cluster, "a"), sticky(&cluster, "b"));
    let browser = browser_with_counter(&a).await;
    let old = browser.cookie.clone().unwrap();
    let (rotated, out) = rotate(&a, browser.clone()).await;
    assert!(out.unwrap().unwrap().written);
    let new = rotated.cookie.unwrap();
    for ids in [[old.as_str(), new.as_str()], [new.as_str(), old.as_str()]] {
        for svc in [&a, &b] {
            let req = svc.request(RequestInfo::new("/r").session_ids(ids));
            let s = req.session().await.unwrap().expect("the rotated session");
            assert_eq!(s.get::<u64>("n").unwrap(), Some(1));
            assert_eq!(s.get::<u64>("user").unwrap(), Some(7));
            drop(s);
            let out = req.finish().await.unwrap();
            let kept = match &out.cookie {
                CookieDecision::Set(id) => SessionId::parse(id).unwrap(),
                _ => SessionId::parse(&new).unwrap(),
            };
            assert_eq!(
                kept.key(),
                SessionId::parse(&new).unwrap().key(),
                "{ids:?}: {out:?}"
            );
        }
    }
    assert_dead(&cluster, &[&a, &b], &old, "old id alone").await;
}

#[tokio::test]
async fn a_rotation_while_the_old_ids_primary_was_stopped_keeps_the_old_id_dead_after_it_resumes() {
    let mut cluster = Cluster::start(3);
    for mode in ["sticky", "none"] {
        let build = |route: &str| {
            let c = config(
                &cluster,
                if mode == "sticky" {
                    Mode::Sticky
                } else {
                    Mode::NonSticky
                },
            );
            let c = if mode == "sticky" {
                c.route(route)
            } else {
                c.locking_str(mode)
            };
            service(&cluster, c)
        };
        let (a, b) = (build("a"), build("b"));
        let mut browser = browser_with_counter(&a).await;
        browser.increment(&b, "n").await.unwrap();
        let old = browser.cookie.clone().unwrap();
        let stopped = index_of(SessionId::parse(&old).unwrap().node());
        cluster[stopped].pause();
        for svc in [&a, &b] {
            assert!(
                session_kit::drive_down(svc, &Cluster::id(stopped), Duration::from_secs(10)).await
            );
        }
        let (rotated, out) = rotate(&a, browser.clone()).await;
        let out = out.unwrap().expect("a session to rotate");
        assert!(out.written, "{mode}: {out:?}");
        cluster[stopped].resume();
        assert!(session_kit::wait_nodes_up(&[&a, &b], Duration::from_secs(10)).await);
        assert_dead(
            &cluster,
            &[&b, &a],
            &old,
            &format!("{mode}: old id after resume"),
        )
        .await;
        let mut r = rotated.clone();
        assert_eq!(r.read_u64(&b, "n").await.unwrap(), Some(2), "{mode}");
        assert_eq!(r.read_u64(&a, "user").await.unwrap(), Some(7), "{mode}");
    }
}

#[tokio::test]
async fn a_login_whose_bind_read_the_old_generation_is_logged_out_by_a_concurrent_log_out_everywhere(
) {
    let mut cluster = Cluster::start(3);
    let a = service(&cluster, config(&cluster, Mode::Sticky).route("a"));
    let b = service(&cluster, config(&cluster, Mode::Sticky).route("b"));
    let mut earlier = Browser::new();
    earlier.login(&a, Some("ann")).await.unwrap();
    // The login reads ann's generation, then ann is logged out everywhere, then the
    // login finishes with the binding it read.
    let req = a.request(RequestInfo::new("/login"));
    let s = req.bind_principal("ann").await.unwrap();
    s.insert("user", &7u64).unwrap();
    drop(s);
    let generation = b.invalidate_principal("ann").await.unwrap();
    assert!(generation >= 1);
    let out = req.finish().await.unwrap();
    let CookieDecision::Set(racing) = out.cookie else {
        panic!("a new session sets its cookie: {out:?}");
    };
    // Both sessions bound before the log-out finished are gone, also once the primary
    // of each has died and the backup copy is read.
    for id in [earlier.cookie.clone().unwrap(), racing.clone()] {
        for svc in [&a, &b] {
            assert_eq!(look(svc, &id, "user").await.unwrap(), None, "{id} served");
        }
    }
    let primary = index_of(SessionId::parse(&racing).unwrap().node());
    cluster[primary].kill();
    for id in [earlier.cookie.clone().unwrap(), racing] {
        for svc in [&b, &a] {
            assert_eq!(look(svc, &id, "user").await.unwrap(), None, "{id} restored");
        }
    }
    // A login after the log-out lives.
    let mut after = Browser::new();
    after.login(&b, Some("ann")).await.unwrap();
    assert_eq!(after.read_u64(&a, "user").await.unwrap(), Some(7));
}

#[tokio::test]
async fn a_bound_session_whose_primary_died_after_the_log_out_is_not_restored_from_backup() {
    let mut cluster = Cluster::start(3);
    let a = service(&cluster, config(&cluster, Mode::Sticky).route("a"));
    let b = service(&cluster, config(&cluster, Mode::Sticky).route("b"));
    let mut ann = Browser::new();
    ann.login(&a, Some("ann")).await.unwrap();
    ann.increment(&a, "n").await.unwrap();
    a.invalidate_principal("ann").await.unwrap();
    // Nobody requested the session since: its copies are live sessions, not tombstones.
    let primary = index_of(ann.id().unwrap().node());
    cluster[primary].kill();
    let id = ann.cookie.clone().unwrap();
    for svc in [&b, &a] {
        assert_eq!(look(svc, &id, "user").await.unwrap(), None);
    }
    cluster[primary].restart();
    assert!(session_kit::wait_nodes_up(&[&a, &b], Duration::from_secs(10)).await);
    assert_dead(
        &cluster,
        &[&a, &b],
        &id,
        "bound session after its primary came back",
    )
    .await;
}

#[tokio::test]
async fn max_lifetime_is_not_extended_by_a_takeover_with_a_rotation_or_a_backup_restore() {
    let mut cluster = Cluster::start(3);
    let clock = ManualClock::starting_now();
    let build = |route: &str| {
        service(
            &cluster,
            config(&cluster, Mode::Sticky)
                .route(route)
                .max_inactive_interval(Duration::from_secs(30 * 60))
                .max_lifetime(Duration::from_secs(60 * 60))
                .clock(Arc::new(clock.clone())),
        )
    };
    let (a, b) = (build("a"), build("b"));
    let mut browser = browser_with_counter(&a).await;
    // Every 25 minutes: a takeover by the other instance and a rotation there.
    clock.advance(Duration::from_secs(25 * 60));
    browser.login(&b, None).await.unwrap();
    clock.advance(Duration::from_secs(25 * 60));
    browser.login(&a, None).await.unwrap();
    assert_eq!(
        browser.increment(&b, "n").await.unwrap(),
        2,
        "50 min: alive"
    );
    let primary = index_of(browser.id().unwrap().node());
    cluster[primary].kill();
    clock.advance(Duration::from_secs(11 * 60));
    let id = browser.cookie.clone().unwrap();
    for svc in [&a, &b] {
        assert_eq!(
            look(svc, &id, "n").await.unwrap(),
            None,
            "61 min after creation, on {:?}",
            svc.config().route()
        );
    }
    // Nor does a rotation of the expired session bring it back.
    let out = browser.login(&a, None).await.unwrap();
    assert_eq!(browser.read_u64(&b, "n").await.unwrap(), None, "{out:?}");
}

/// Waits (bounded) until an adapter's client sees every node up.
async fn all_up(client: &memkeep::Client) -> bool {
    kit::eventually(Duration::from_secs(10), || {
        client
            .node_ids()
            .iter()
            .all(|n| client.is_up(n) == Some(true))
    })
    .await
}

mod actix_store {
    use super::*;
    use actix_session::storage::{SessionKey as ActixKey, SessionStore};
    use actix_web::cookie::time::Duration as Ttl;
    use memkeep::adapters::actix::ReplicatedStore;

    const HOUR: Ttl = Ttl::hours(1);

    fn store(cluster: &Cluster) -> ReplicatedStore {
        ReplicatedStore::new(session_kit::fast_client(
            cluster,
            Duration::from_millis(300),
        ))
        .unwrap()
    }

    fn state(cart: &str) -> HashMap<String, String> {
        HashMap::from([("cart".to_owned(), format!("\"{cart}\""))])
    }

    fn key(s: &str) -> Option<ActixKey> {
        ActixKey::try_from(s.to_owned()).ok()
    }

    /// Keys a client could send instead of `real`: garbage, huge, and the real random
    /// part with edited, unknown, repeated or odd node names.
    fn forged(real: &str, nodes: &[String]) -> (Vec<String>, Vec<String>) {
        let id = SessionId::parse(real).unwrap();
        let hex = id.key().to_string();
        let same_key = id_variants(id.key(), nodes, &[]);
        let garbage = vec![
            String::new(),
            "-".into(),
            "~".into(),
            format!("{hex}-"),
            format!("{hex}-~"),
            format!("{hex}-n0~"),
            format!("{hex}-n9~n8"),
            format!("{hex}-n0~n0~n0"),
            format!("{hex}-n0.{}", "r".repeat(3000)),
            format!("{hex}-{}", "n".repeat(3000)),
            format!("{}-n0~n1", hex.to_uppercase()),
            format!("{}-n0~n1", &hex[..31]),
            format!("{hex}0-n0~n1"),
            format!("{hex}-n0\u{0}~n1"),
            format!("{hex}-n\u{e9}~n1"),
            "x".repeat(4000),
            format!("{hex}-n0~n1").repeat(100),
        ];
        (same_key, garbage)
    }

    #[tokio::test]
    async fn forged_keys_never_panic_never_error_and_never_serve_another_state() {
        let cluster = Cluster::start(3);
        let store = store(&cluster);
        let real = store.save(state("book"), &HOUR).await.unwrap();
        let (same_key, garbage) = forged(real.as_ref(), &cluster.ids());
        for s in &same_key {
            let Some(k) = key(s) else { continue };
            assert_eq!(
                store.load(&k).await.unwrap(),
                Some(state("book")),
                "edited node names of the real key: {s}"
            );
        }
        for s in &garbage {
            let Some(k) = key(s) else { continue };
            let seen = store.load(&k).await;
            assert!(
                matches!(seen, Ok(None)) || matches!(&seen, Ok(Some(st)) if *st == state("book")),
                "{s:.80}: {seen:?}"
            );
            // An update or TTL refresh with a forged key never errors and never touches
            // another session.
            let moved = store.update(k, state("forged"), &HOUR).await;
            assert!(moved.is_ok(), "{s:.80}: {moved:?}");
            let k = key(s).unwrap();
            assert!(store.update_ttl(&k, &HOUR).await.is_ok(), "{s:.80}");
        }
        // A forged key that parses to the real random part is the real session: its
        // update may have landed there, nothing else did.
        let now = store.load(&real).await.unwrap();
        assert!(
            now == Some(state("book")) || now == Some(state("forged")),
            "{now:?}"
        );
        // Updates through edited variants of the real key land on the one session.
        for (i, s) in same_key.iter().enumerate() {
            let Some(k) = key(s) else { continue };
            let cart = format!("v{i}");
            let back = store.update(k, state(&cart), &HOUR).await.unwrap();
            assert_eq!(store.load(&real).await.unwrap(), Some(state(&cart)), "{s}");
            assert_eq!(store.load(&back).await.unwrap(), Some(state(&cart)), "{s}");
        }
        // A delete through one variant kills every variant.
        let k = key(&same_key[same_key.len() - 1]).unwrap();
        store.delete(&k).await.unwrap();
        for s in same_key.iter().chain([real.as_ref().to_owned()].iter()) {
            let k = key(s).unwrap();
            assert_eq!(store.load(&k).await.unwrap(), None, "{s} after delete");
            let late = store.update(k, state("late"), &HOUR).await.unwrap();
            assert_eq!(store.load(&late).await.unwrap(), None, "{s}: late update");
        }
    }

    #[tokio::test]
    async fn concurrent_updates_and_a_delete_from_two_stores_never_resurrect() {
        let cluster = Cluster::start(3);
        let (s1, s2) = (store(&cluster), store(&cluster));
        for round in 0..10 {
            let real = s1.save(state("start"), &HOUR).await.unwrap();
            let k = || key(real.as_ref()).unwrap();
            let (u1, u2) = tokio::join!(
                s1.update(k(), state("one"), &HOUR),
                s2.update(k(), state("two"), &HOUR)
            );
            let (u1, u2) = (u1.unwrap(), u2.unwrap());
            let seen = s2.load(&u1).await.unwrap();
            assert!(
                seen == Some(state("one")) || seen == Some(state("two")),
                "{round}: {seen:?}"
            );
            assert_eq!(s1.load(&u2).await.unwrap(), seen, "{round}: one state");
            let dead = k();
            let (d, u3) = tokio::join!(s1.delete(&dead), s2.update(k(), state("three"), &HOUR));
            d.unwrap();
            let u3 = u3.unwrap();
            for kk in [&u1, &u2, &u3, &real] {
                assert_eq!(s1.load(kk).await.unwrap(), None, "{round}: after delete");
                assert_eq!(s2.load(kk).await.unwrap(), None, "{round}: after delete");
            }
        }
    }
    #[tokio::test]
    async fn a_ttl_refresh_after_a_holder_restarted_empty_keeps_the_state_and_both_copies() {
        let mut cluster = Cluster::start(3);
        let store = store(&cluster);
        let real = store.save(state("book"), &HOUR).await.unwrap();
        let id = SessionId::parse(real.as_ref()).unwrap();
        let data_key = format!(
            "{}{}",
            memkeep::adapters::actix::DEFAULT_KEY_PREFIX,
            id.key()
        );
        let first = index_of(id.node());
        cluster[first].kill();
        cluster[first].restart();
        assert!(all_up(store.client()).await);
        store.update_ttl(&real, &HOUR).await.unwrap();
        assert_eq!(store.load(&real).await.unwrap(), Some(state("book")));
        let held = adapters_kit::holders(&mut cluster, &data_key);
        assert_eq!(held.len(), 2, "{held:?}");
        let backup = index_of(id.backup().unwrap());
        cluster[backup].kill();
        let other = self::store(&cluster);
        assert_eq!(other.load(&real).await.unwrap(), Some(state("book")));
    }
}

mod tower_store {
    use super::*;
    use adapters_kit::holders;
    use memkeep::adapters::tower_sessions::{ReplicatedStore, DEFAULT_KEY_PREFIX};
    use serde_json::json;
    use tower_sessions::cookie::time::{self, OffsetDateTime};
    use tower_sessions::session::{Id, Record};
    use tower_sessions::SessionStore;

    fn store(cluster: &Cluster) -> ReplicatedStore {
        ReplicatedStore::new(session_kit::fast_client(
            cluster,
            Duration::from_millis(300),
        ))
        .unwrap()
    }

    fn record(id: i128, cart: &str) -> Record {
        Record {
            id: Id(id),
            data: HashMap::from([("cart".to_owned(), json!(cart))]),
            expiry_date: OffsetDateTime::now_utc() + time::Duration::hours(1),
        }
    }

    fn cart(r: &Option<Record>) -> Option<String> {
        r.as_ref()
            .and_then(|r| r.data.get("cart"))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    }

    #[tokio::test]
    async fn a_client_chosen_expiry_date_a_year_away_is_cut_to_max_lifetime() {
        let cluster = Cluster::start(2);
        let store = store(&cluster);
        let mut r = record(300, "long");
        r.expiry_date = OffsetDateTime::now_utc() + time::Duration::days(365);
        store.create(&mut r).await.unwrap();
        let loaded = store.load(&Id(300)).await.unwrap().unwrap();
        assert!(
            loaded.expiry_date <= OffsetDateTime::now_utc() + time::Duration::days(15),
            "expiry {} not cut to the two-week max_lifetime",
            loaded.expiry_date
        );
        store.save(&r).await.unwrap();
        let saved = store.load(&Id(300)).await.unwrap().unwrap();
        assert!(saved.expiry_date <= OffsetDateTime::now_utc() + time::Duration::days(15));
    }

    #[tokio::test]
    async fn concurrent_creates_of_one_id_on_two_stores_keep_both_sessions_apart() {
        let cluster = Cluster::start(3);
        let (s1, s2) = (store(&cluster), store(&cluster));
        for id in 100..120 {
            let (mut r1, mut r2) = (record(id, "first"), record(id, "second"));
            let (c1, c2) = tokio::join!(s1.create(&mut r1), s2.create(&mut r2));
            c1.unwrap();
            c2.unwrap();
            assert_ne!(r1.id, r2.id, "{id}: two sessions share one id");
            assert_eq!(
                cart(&s2.load(&r1.id).await.unwrap()).as_deref(),
                Some("first")
            );
            assert_eq!(
                cart(&s1.load(&r2.id).await.unwrap()).as_deref(),
                Some("second")
            );
        }
    }

    #[tokio::test]
    async fn concurrent_saves_of_one_id_leave_one_of_them_and_a_delete_wins_over_both() {
        let cluster = Cluster::start(3);
        let (s1, s2) = (store(&cluster), store(&cluster));
        for id in 200..210 {
            let mut r = record(id, "start");
            s1.create(&mut r).await.unwrap();
            let (a, b) = (record(id, "one"), record(id, "two"));
            let (x, y) = tokio::join!(s1.save(&a), s2.save(&b));
            x.unwrap();
            y.unwrap();
            let seen = cart(&s1.load(&Id(id)).await.unwrap());
            assert!(
                matches!(seen.as_deref(), Some("one" | "two")),
                "{id}: {seen:?}"
            );
            assert_eq!(cart(&s2.load(&Id(id)).await.unwrap()), seen);
            let (gone, late) = (Id(id), record(id, "late"));
            let (d, late) = tokio::join!(s2.delete(&gone), s1.save(&late));
            d.unwrap();
            late.unwrap();
            assert_eq!(s1.load(&Id(id)).await.unwrap(), None, "{id}");
            assert_eq!(s2.load(&Id(id)).await.unwrap(), None, "{id}");
        }
    }

    #[tokio::test]
    async fn a_holder_restarted_empty_then_the_other_killed_keeps_the_last_acknowledged_save() {
        let mut cluster = Cluster::start(3);
        let first_store = store(&cluster);
        let mut r = record(77, "v1");
        first_store.create(&mut r).await.unwrap();
        let key = format!("{DEFAULT_KEY_PREFIX}{:032x}", 77u128);
        let first = holders(&mut cluster, &key);
        assert_eq!(first.len(), 2, "{first:?}");
        cluster[first[0]].kill();
        cluster[first[0]].restart();
        assert!(all_up(first_store.client()).await);
        // The heal step: the next load restores the lost copy; then a new save.
        assert_eq!(
            cart(&first_store.load(&Id(77)).await.unwrap()).as_deref(),
            Some("v1")
        );
        first_store.save(&record(77, "v2")).await.unwrap();
        let now = holders(&mut cluster, &key);
        assert_eq!(now.len(), 2, "{now:?}");
        cluster[first[1]].kill();
        let other = store(&cluster);
        for s in [&first_store, &other] {
            assert_eq!(cart(&s.load(&Id(77)).await.unwrap()).as_deref(), Some("v2"));
        }
    }
}

/// A listener is synchronous code that may block (an audit sink, a lock): it runs on the
/// blocking pool, so the requests that follow (here on a current-thread runtime, as
/// `tokio::test` and each actix-web worker use) are not held up.
#[tokio::test]
async fn a_listener_that_blocks_does_not_hold_up_requests() {
    let cluster = Cluster::start(2);
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let returned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = Arc::clone(&returned);
    let svc = service(
        &cluster,
        config(&cluster, Mode::Sticky).route("a").listener(
            move |_e: &memkeep::session::SessionEvent| {
                // A slow audit sink: blocks until released (or 20 s pass).
                let _ = release_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(20));
                r.store(true, std::sync::atomic::Ordering::SeqCst);
            },
        ),
    );
    let mut browser = Browser::new();
    browser.increment(&svc, "n").await.unwrap(); // Created: the listener blocks
    for i in 2..=4 {
        assert_eq!(browser.increment(&svc, "n").await.unwrap(), i);
    }
    let blocked_meanwhile = !returned.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..4 {
        let _ = release_tx.send(());
    }
    assert!(
        blocked_meanwhile,
        "the requests only completed after the blocking listener gave up: they waited for it"
    );
}
