//! Session lifecycle against real memcached: expiry and touch (with an injected clock),
//! invalidation, ids that must not be trusted, garbage or foreign data under a session's
//! key, oversized sessions, URL-rewritten ids, cookie decisions.

mod kit;
#[path = "kit/session.rs"]
mod session_kit;

use std::sync::Arc;
use std::time::Duration;

use kit::Cluster;
use memkeep::session::{
    BackupSessionService, CookieDecision, ManualClock, Mode, RequestInfo, SessionConfigBuilder,
    SessionError,
};
use memkeep::Expiry;
use session_kit::{browser_with_counter, config, observer, Browser};

/// A config builder for `cluster` in `mode`, with route `a` when sticky.
fn config_routed_a(cluster: &Cluster, mode: Mode) -> SessionConfigBuilder {
    let b = config(cluster, mode);
    if mode == Mode::Sticky {
        b.route("a")
    } else {
        b
    }
}

/// An instance in `mode` (route `a` when sticky) with a 30 min max inactive interval,
/// whose time is `clock`.
fn with_clock(cluster: &Cluster, mode: Mode, clock: &ManualClock) -> BackupSessionService {
    let b = config_routed_a(cluster, mode)
        .max_inactive_interval(Duration::from_secs(30 * 60))
        .clock(Arc::new(clock.clone()));
    BackupSessionService::new(b.build().unwrap()).unwrap()
}

/// A second sticky instance, route `b`, whose time is `clock` (default max inactive
/// interval).
fn sticky_b_with_clock(cluster: &Cluster, clock: &ManualClock) -> BackupSessionService {
    BackupSessionService::new(
        config(cluster, Mode::Sticky)
            .route("b")
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn an_expired_session_is_never_served_in_either_mode() {
    for mode in [Mode::Sticky, Mode::NonSticky] {
        let cluster = Cluster::start(2);
        let clock = ManualClock::starting_now();
        let svc = with_clock(&cluster, mode, &clock);
        let mut browser = browser_with_counter(&svc).await;
        clock.advance(Duration::from_secs(30 * 60 + 1));
        let (seen, out) = browser.visit(&svc, "/r", |s| s.is_some()).await.unwrap();
        assert!(!seen, "{mode:?}: expired session served");
        assert_eq!(out.cookie, CookieDecision::Remove);
        assert_eq!(svc.stats().expired, 1);
    }
}

#[tokio::test]
async fn an_expired_session_is_not_served_by_another_instance_either() {
    let cluster = Cluster::start(2);
    let clock = ManualClock::starting_now();
    let a = with_clock(&cluster, Mode::Sticky, &clock);
    let mut browser = browser_with_counter(&a).await;
    drop(a);
    clock.advance(Duration::from_secs(31 * 60));
    let b = sticky_b_with_clock(&cluster, &clock);
    assert_eq!(browser.read_u64(&b, "n").await.unwrap(), None);
}

#[tokio::test]
async fn reading_a_session_keeps_it_alive_without_a_new_version() {
    for mode in [Mode::Sticky, Mode::NonSticky] {
        let cluster = Cluster::start(2);
        let clock = ManualClock::starting_now();
        let svc = with_clock(&cluster, mode, &clock);
        let mut browser = browser_with_counter(&svc).await;
        // Read every 20 minutes for an hour: each read is within 30 min of the last.
        for _ in 0..3 {
            clock.advance(Duration::from_secs(20 * 60));
            assert_eq!(
                browser.read_u64(&svc, "n").await.unwrap(),
                Some(1),
                "{mode:?}"
            );
        }
        let stats = svc.stats();
        assert_eq!(stats.writes, 1, "{mode:?}: only the first request wrote");
        assert_eq!(stats.validity_refreshes, 3, "{mode:?}");
    }
}

#[tokio::test]
async fn a_read_keeps_the_session_alive_for_an_instance_that_takes_it_over() {
    let cluster = Cluster::start(2);
    let clock = ManualClock::starting_now();
    let a = with_clock(&cluster, Mode::Sticky, &clock);
    let mut browser = browser_with_counter(&a).await;
    clock.advance(Duration::from_secs(20 * 60));
    browser.read_u64(&a, "n").await.unwrap(); // refreshes the last access
    drop(a);
    clock.advance(Duration::from_secs(20 * 60)); // 40 min after the write, 20 after the read
    let b = sticky_b_with_clock(&cluster, &clock);
    assert_eq!(browser.read_u64(&b, "n").await.unwrap(), Some(1));
}

#[tokio::test]
async fn memcached_ttl_follows_the_max_inactive_interval() {
    let cluster = Cluster::start(2);
    let svc = BackupSessionService::new(
        config(&cluster, Mode::NonSticky)
            .max_inactive_interval(Duration::from_secs(1))
            .build()
            .unwrap(),
    )
    .unwrap();
    let browser = browser_with_counter(&svc).await;
    let id = browser.id().unwrap();
    let obs = observer(&cluster);
    let primary = obs.on_node(id.node()).unwrap();
    assert!(primary.get(id.key().to_string()).await.unwrap().is_some());
    // memcached drops it on its own (1 s TTL; poll, no timed assertion on the exact moment).
    let mut gone = false;
    for _ in 0..100 {
        if primary.get(id.key().to_string()).await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "memcached kept a session past its TTL");
}

#[tokio::test]
async fn invalidation_removes_every_copy_and_the_cookie() {
    for mode in [Mode::Sticky, Mode::NonSticky] {
        let cluster = Cluster::start(2);
        let b = config_routed_a(&cluster, mode);
        let svc = BackupSessionService::new(b.build().unwrap()).unwrap();
        let mut browser = browser_with_counter(&svc).await;
        browser.read_u64(&svc, "n").await.unwrap(); // writes validity records too
        let id = browser.id().unwrap();
        let old_cookie = browser.cookie.clone();
        let (_, out) = browser
            .visit(&svc, "/logout", |s| s.unwrap().invalidate())
            .await
            .unwrap();
        assert_eq!(out.cookie, CookieDecision::Remove);
        assert_eq!(svc.stats().invalidations, 1);
        let obs = observer(&cluster);
        let k = id.key().to_string();
        let p = obs.on_node(id.node()).unwrap();
        let bk = obs.on_node(id.backup().unwrap()).unwrap();
        // Every copy is replaced by a tombstone (it outranks any copy a node that was
        // away could bring back); the validity records are gone.
        for c in [&p, &bk] {
            let record = c.get(&k).await.unwrap().expect("a tombstone");
            let decoded = memkeep::session::format::decode(&record.value, &id.key()).unwrap();
            assert_eq!(
                decoded.record,
                memkeep::session::format::Record::Tombstone { successor: None },
                "{mode:?}"
            );
            assert!(
                c.get(format!("validity:{k}")).await.unwrap().is_none(),
                "{mode:?}: validity survived"
            );
        }
        // The old cookie finds nothing, on this instance or another.
        let mut replay = Browser { cookie: old_cookie };
        assert_eq!(replay.read_u64(&svc, "n").await.unwrap(), None);
        assert_eq!(svc.local_sessions(), 0);
    }
}

#[tokio::test]
async fn create_after_invalidate_in_one_request_gives_a_new_id() {
    let cluster = Cluster::start(2);
    let svc = session_kit::sticky(&cluster, "a");
    let browser = browser_with_counter(&svc).await;
    let old = browser.id().unwrap();
    let req = svc.request(RequestInfo::new("/login").session_id(browser.cookie.as_deref()));
    let fresh = req.create().await.unwrap();
    fresh.insert("user", "ann").unwrap();
    let out = req.finish().await.unwrap();
    let CookieDecision::Set(new_cookie) = out.cookie else {
        panic!("expected a new cookie, got {:?}", out.cookie)
    };
    assert_ne!(new_cookie, old.to_string());
    let mut replay = Browser {
        cookie: Some(old.to_string()),
    };
    assert_eq!(
        replay.read_u64(&svc, "n").await.unwrap(),
        None,
        "old session is gone"
    );
}

#[tokio::test]
async fn ids_that_do_not_parse_or_name_unknown_nodes_are_treated_as_absent() {
    let cluster = Cluster::start(2);
    let svc = session_kit::sticky(&cluster, "a");
    for bad in [
        "garbage",
        "0123456789abcdef0123456789abcdef-n9.a",
        "0123456789abcdef0123456789abcdef-n0~n7.a",
        "0123456789abcdef0123456789abcdef-n0.a;x",
        "",
    ] {
        let mut browser = Browser {
            cookie: Some(bad.to_string()),
        };
        let (seen, out) = browser.visit(&svc, "/", |s| s.is_some()).await.unwrap();
        assert!(!seen, "{bad:?}");
        assert_eq!(out.cookie, CookieDecision::Remove, "{bad:?}");
        // Creating with a bad id gives a fresh, well-formed one.
        browser.cookie = Some(bad.to_string());
        browser.increment(&svc, "n").await.unwrap();
        assert_ne!(browser.cookie.as_deref(), Some(bad));
        assert!(browser.id().is_some());
    }
    assert_eq!(svc.stats().invalid_ids, 10);
}

#[tokio::test]
async fn a_well_formed_id_of_a_session_that_does_not_exist_is_absent() {
    let cluster = Cluster::start(2);
    let svc = session_kit::non_sticky(&cluster, "all");
    let mut browser = Browser {
        cookie: Some("0123456789abcdef0123456789abcdef-n0~n1".into()),
    };
    assert_eq!(browser.read_u64(&svc, "n").await.unwrap(), None);
    assert_eq!(browser.cookie, None);
}

#[tokio::test]
async fn garbage_or_foreign_data_under_a_sessions_key_is_refused_and_counted() {
    for mode in [Mode::Sticky, Mode::NonSticky] {
        let cluster = Cluster::start(2);
        let b = config_routed_a(&cluster, mode);
        let a = BackupSessionService::new(b.clone().build().unwrap()).unwrap();
        let mut browser = browser_with_counter(&a).await;
        let mut other = Browser::new();
        other.increment(&a, "secret").await.unwrap();
        let id = browser.id().unwrap();
        let other_id = other.id().unwrap();
        drop(a);
        let obs = observer(&cluster);
        let k = id.key().to_string();
        let expiry = Expiry::In(Duration::from_secs(600));
        // Primary: plain garbage. Backup: another session's record copied under this key.
        let foreign = obs
            .on_node(other_id.node())
            .unwrap()
            .get(other_id.key().to_string())
            .await
            .unwrap()
            .unwrap();
        obs.on_node(id.node())
            .unwrap()
            .set(&k, b"\x00garbage\xff", expiry)
            .await
            .unwrap();
        obs.on_node(id.backup().unwrap())
            .unwrap()
            .set(k.clone(), &foreign.value, expiry)
            .await
            .unwrap();
        let route_b = if mode == Mode::Sticky {
            b.route("b")
        } else {
            b
        };
        let svc = BackupSessionService::new(route_b.build().unwrap()).unwrap();
        let (seen, _) = browser
            .visit(&svc, "/", |s| s.map(|s| s.attribute_names()))
            .await
            .unwrap();
        assert_eq!(seen, None, "{mode:?}: foreign data was served");
        assert_eq!(svc.stats().foreign_records, 2, "{mode:?}");
    }
}

#[tokio::test]
async fn garbage_on_the_primary_only_is_healed_from_the_backup() {
    let cluster = Cluster::start(2);
    let a = session_kit::non_sticky(&cluster, "none");
    let mut browser = browser_with_counter(&a).await;
    let id = browser.id().unwrap();
    let obs = observer(&cluster);
    obs.on_node(id.node())
        .unwrap()
        .set(
            id.key().to_string(),
            b"not a session",
            Expiry::In(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    assert_eq!(browser.read_u64(&a, "n").await.unwrap(), Some(1));
    assert_eq!(a.stats().foreign_records, 1);
    assert_eq!(a.stats().restores_from_backup, 1);
}

#[tokio::test]
async fn a_session_larger_than_the_item_limit_is_refused_with_a_clear_error_and_counted() {
    let cluster = Cluster::start(2);
    let svc = session_kit::non_sticky(&cluster, "none");
    let mut browser = browser_with_counter(&svc).await;
    let big = "x".repeat(2 * 1024 * 1024);
    let err = browser
        .call(&svc, "/big", |s| s.insert("blob", &big).unwrap())
        .await
        .unwrap_err();
    match &err {
        SessionError::TooLarge { size, max } => assert!(size > max),
        other => panic!("expected TooLarge, got {other}"),
    }
    assert!(err.to_string().contains("exceeds the limit"));
    assert_eq!(svc.stats().oversized, 1);
    // The previous state is intact.
    assert_eq!(browser.read_u64(&svc, "n").await.unwrap(), Some(1));
}

#[tokio::test]
async fn memcached_refusing_an_item_is_reported_as_too_large() {
    // A server with a 64 KiB item limit, and the service's own limit left higher.
    let cluster = Cluster::start_with(2, &["-I", "64k", "-o", "slab_chunk_max=16384"]);
    let svc =
        BackupSessionService::new(config(&cluster, Mode::NonSticky).build().unwrap()).unwrap();
    let mut browser = Browser::new();
    let big = "y".repeat(200 * 1024);
    let err = browser
        .call(&svc, "/big", |s| s.insert("blob", &big).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::TooLarge { .. }), "{err}");
    assert_eq!(svc.stats().oversized, 1);
}

#[tokio::test]
async fn a_url_rewritten_id_finds_the_session_and_is_stripped_from_the_path_when_opted_in() {
    let cluster = Cluster::start(2);
    let svc = BackupSessionService::new(
        config(&cluster, Mode::Sticky)
            .route("a")
            .url_rewriting(true)
            .build()
            .unwrap(),
    )
    .unwrap();
    let browser = browser_with_counter(&svc).await;
    let id = browser.cookie.clone().unwrap();

    // Off by default: a URL id is not taken (session fixation).
    let default = session_kit::sticky(&cluster, "b");
    let req = default.request(RequestInfo::new(format!("/cart;jsessionid={id}")));
    assert!(req.session().await.unwrap().is_none());
    req.finish().await.unwrap();

    let req = svc.request(RequestInfo::new(format!("/cart;jsessionid={id}")));
    assert_eq!(req.path(), "/cart");
    let s = req.session().await.unwrap().unwrap();
    assert_eq!(s.get::<u64>("n").unwrap(), Some(1));
    let out = req.finish().await.unwrap();
    assert_eq!(out.cookie, CookieDecision::Keep);
    assert_eq!(
        memkeep::session::encode_url("/next?x=1", &id),
        format!("/next;jsessionid={id}?x=1")
    );
}

#[tokio::test]
async fn a_request_that_never_touches_its_session_costs_nothing_and_keeps_the_cookie() {
    let cluster = Cluster::start(2);
    let svc = session_kit::non_sticky(&cluster, "all");
    let browser = browser_with_counter(&svc).await;
    let before = svc.stats();
    let req = svc.request(RequestInfo::new("/static").session_id(browser.cookie.as_deref()));
    let out = req.finish().await.unwrap();
    assert_eq!(out.cookie, CookieDecision::Keep);
    let after = svc.stats();
    assert_eq!(after.locks_acquired, before.locks_acquired, "no lock");
    assert_eq!(
        after.validity_refreshes, before.validity_refreshes,
        "no memcached access"
    );
    assert_eq!(
        after.requests_without_session,
        before.requests_without_session + 1
    );
}
