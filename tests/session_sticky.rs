//! Sticky mode against real memcached processes: instance failover, node failover, both
//! together, a node restarted empty, in-place mutation, async writes, and acknowledged
//! saves under SIGKILL mid-load.

mod kit;
#[path = "kit/session.rs"]
mod session_kit;

use std::sync::Arc;
use std::time::Duration;

use kit::Cluster;
use memkeep::session::{
    BackupSessionService, CookieDecision, Mode, RequestInfo, SessionConfig, WriteMode,
};
use session_kit::{browser_with_counter, config, index_of, sticky, Browser};

#[tokio::test]
async fn a_session_created_on_instance_a_is_served_by_instance_b_after_a_dies() {
    let cluster = Cluster::start(3);
    let a = sticky(&cluster, "a");
    let mut browser = Browser::new();
    let (_, out) = browser
        .call(&a, "/add", |s| s.insert("a", &1u64).unwrap())
        .await
        .unwrap();
    assert!(
        matches!(out.cookie, CookieDecision::Set(_)),
        "a new session sets the cookie"
    );
    let created = browser.id().unwrap();
    assert_eq!(created.route(), Some("a"));
    assert!(created.backup().is_some(), "the id names a backup node");
    drop(a); // instance A dies: its memory is gone

    let b = sticky(&cluster, "b");
    assert_eq!(browser.read_u64(&b, "a").await.unwrap(), Some(1));
    let taken = browser.id().unwrap();
    assert_eq!(taken.key(), created.key(), "same session");
    assert_eq!(taken.route(), Some("b"), "the cookie now routes to B");
    assert_eq!(b.stats().instance_takeovers, 1);
}

#[tokio::test]
async fn a_stale_local_copy_is_not_served_after_another_instance_took_over() {
    let cluster = Cluster::start(2);
    let a = sticky(&cluster, "a");
    let b = sticky(&cluster, "b");
    let mut browser = browser_with_counter(&a).await;
    // The balancer sends the user to B (A looked down), B takes over and changes it.
    assert_eq!(browser.increment(&b, "n").await.unwrap(), 2);
    // Back on A with B's cookie: A's memory holds n = 1, memcached n = 2.
    assert_eq!(browser.read_u64(&a, "n").await.unwrap(), Some(2));
    assert_eq!(browser.id().unwrap().route(), Some("a"));
}

#[tokio::test]
async fn when_the_primary_node_dies_the_next_save_relocates_the_session_and_reissues_the_cookie() {
    let mut cluster = Cluster::start(3);
    let a = sticky(&cluster, "a");
    let mut browser = browser_with_counter(&a).await;
    let before = browser.id().unwrap();
    cluster[index_of(before.node())].kill();

    let (_, out) = browser
        .call(&a, "/inc", |s| s.insert("n", &2u64).unwrap())
        .await
        .unwrap();
    let after = browser.id().unwrap();
    assert!(matches!(out.cookie, CookieDecision::Set(_)));
    assert_ne!(after.node(), before.node(), "moved off the dead node");
    assert_ne!(after.backup(), Some(before.node()));
    assert!(a.stats().relocations >= 1);

    // And the relocated copies are good: another instance reads them.
    drop(a);
    let b = sticky(&cluster, "b");
    assert_eq!(browser.read_u64(&b, "n").await.unwrap(), Some(2));
}

#[tokio::test]
async fn node_failover_and_instance_failover_together_restore_from_the_backup() {
    let mut cluster = Cluster::start(3);
    let a = sticky(&cluster, "a");
    let mut browser = Browser::new();
    browser
        .call(&a, "/add", |s| s.insert("a", &1u64).unwrap())
        .await
        .unwrap();
    let id = browser.id().unwrap();
    cluster[index_of(id.node())].kill(); // the node that holds it dies...
    drop(a); // ...then the instance that served it

    let b = sticky(&cluster, "b");
    assert_eq!(browser.read_u64(&b, "a").await.unwrap(), Some(1));
    let new_id = browser.id().unwrap();
    assert_ne!(new_id.node(), id.node(), "the id names a live node");
    assert_eq!(b.stats().restores_from_backup, 1);

    // The restored session was written to its new node: a third instance reads it even
    // after the old backup node dies too.
    let old_backup = id.backup().unwrap();
    if new_id.node() != old_backup {
        cluster[index_of(old_backup)].kill();
    }
    drop(b);
    let c = sticky(&cluster, "c");
    assert_eq!(browser.read_u64(&c, "a").await.unwrap(), Some(1));
}

#[tokio::test]
async fn a_node_restarted_empty_is_refilled_from_the_backup() {
    let mut cluster = Cluster::start(2);
    let a = sticky(&cluster, "a");
    let mut browser = Browser::new();
    browser
        .call(&a, "/add", |s| s.insert("a", &7u64).unwrap())
        .await
        .unwrap();
    let id = browser.id().unwrap();
    cluster[index_of(id.node())].restart(); // back, but empty
    drop(a);

    let b = sticky(&cluster, "b");
    // The client may need a moment to reconnect; the read must still succeed because the
    // backup copy answers.
    assert_eq!(browser.read_u64(&b, "a").await.unwrap(), Some(7));
    assert_eq!(b.stats().restores_from_backup, 1);
    assert_eq!(
        b.stats().repairs,
        1,
        "the restored session was written back to the emptied node"
    );
}

#[tokio::test]
async fn an_attribute_mutated_in_place_is_saved_and_an_unchanged_session_is_not_rewritten() {
    let cluster = Cluster::start(2);
    let a = sticky(&cluster, "a");
    let mut browser = Browser::new();
    browser
        .call(&a, "/add", |s| {
            s.insert("cart", &vec!["book".to_string()]).unwrap()
        })
        .await
        .unwrap();
    assert_eq!(a.stats().writes, 1);

    // Read-only request: no write, a validity refresh.
    browser
        .visit(&a, "/look", |s| {
            s.unwrap().get::<Vec<String>>("cart").unwrap()
        })
        .await
        .unwrap();
    assert_eq!(a.stats().writes, 1);
    assert_eq!(a.stats().skipped_unchanged, 1);

    // Mutation through a mutable reference, never re-inserted.
    browser
        .visit(&a, "/mutate", |s| {
            let s = s.unwrap();
            let mut guard = s.lock();
            guard
                .get_mut::<Vec<String>>("cart")
                .unwrap()
                .unwrap()
                .push("pen".into());
        })
        .await
        .unwrap();
    assert_eq!(
        a.stats().writes,
        2,
        "the in-place change was detected and written"
    );

    drop(a);
    let b = sticky(&cluster, "b");
    let (cart, _) = browser
        .visit(&b, "/look", |s| {
            s.unwrap().get::<Vec<String>>("cart").unwrap()
        })
        .await
        .unwrap();
    assert_eq!(cart, Some(vec!["book".to_string(), "pen".to_string()]));
}

#[tokio::test]
async fn new_sessions_avoid_failover_nodes_while_another_node_is_up() {
    let cluster = Cluster::start(3);
    let svc = BackupSessionService::new(
        config(&cluster, Mode::Sticky)
            .route("a")
            .failover_nodes("n0,n1")
            .build()
            .unwrap(),
    )
    .unwrap();
    for _ in 0..20 {
        let browser = browser_with_counter(&svc).await;
        assert_eq!(browser.id().unwrap().node(), "n2");
    }
}

#[tokio::test]
async fn a_session_on_a_failover_node_moves_to_a_primary_node_when_one_is_back() {
    let mut cluster = Cluster::start(2);
    let svc = BackupSessionService::new(
        config(&cluster, Mode::Sticky)
            .route("a")
            .failover_nodes("n0")
            .build()
            .unwrap(),
    )
    .unwrap();
    cluster[1].kill();
    let mut browser = Browser::new();
    // n1 may still look up until the client notices; retry the first request.
    let mut created = false;
    for _ in 0..20 {
        if browser.increment(&svc, "n").await.is_ok() && browser.id().unwrap().node() == "n0" {
            created = true;
            break;
        }
        browser = Browser::new();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        created,
        "with the only primary node down, the failover node is used"
    );
    cluster[1].restart();
    let back = kit::eventually(Duration::from_secs(20), || {
        svc.client().is_up("n1") == Some(true)
    })
    .await;
    assert!(back, "client reconnects to the restarted node");
    browser.increment(&svc, "n").await.unwrap();
    assert_eq!(
        browser.id().unwrap().node(),
        "n1",
        "relocated off the failover node"
    );
}

#[tokio::test]
async fn async_writes_are_acknowledged_after_flush_and_their_lag_is_measured() {
    let cluster = Cluster::start(2);
    let a = BackupSessionService::new(
        config(&cluster, Mode::Sticky)
            .route("a")
            .write_mode(WriteMode::Async)
            .async_queue_capacity(8)
            .build()
            .unwrap(),
    )
    .unwrap();
    let mut browsers = vec![Browser::new(); 50];
    for round in 1..=4u64 {
        for b in browsers.iter_mut() {
            assert_eq!(b.increment(&a, "n").await.unwrap(), round);
        }
    }
    a.flush().await;
    assert_eq!(a.pending_writes(), 0);
    let stats = a.stats();
    assert_eq!(stats.async_queued, 200);
    assert_eq!(
        stats.async_lag_us.count, 200,
        "every queued write was acknowledged"
    );
    assert_eq!(stats.async_failures, 0);
    drop(a);
    let b = sticky(&cluster, "b");
    for br in browsers.iter_mut() {
        assert_eq!(br.read_u64(&b, "n").await.unwrap(), Some(4));
    }
}

/// Sticky + sync: every save acknowledged before the failures is found afterwards, when
/// a memcached node is SIGKILLed in the middle of the load and then the instance dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sync_loses_no_acknowledged_save_when_a_node_is_killed_mid_load() {
    let seed = kit::Rng::seed_from_env();
    println!("seed {seed}");
    let mut rng = kit::Rng::new(seed);
    let mut cluster = Cluster::start(3);
    let a = sticky(&cluster, "a");
    let browsers = 24;
    let rounds = 30u64;
    let mut tasks = Vec::new();
    // Half the browsers pause a third of the way in until the node is dead, so the kill
    // lands mid-load however fast the machine is; the other half run on through it.
    let paused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (killed_tx, killed_rx) = tokio::sync::watch::channel(false);
    for i in 0..browsers {
        let a = a.clone();
        let paused = Arc::clone(&paused);
        let mut killed = killed_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut browser = Browser::new();
            let mut acked = 0u64;
            let mut attempted = 0u64;
            for round in 0..rounds {
                if i % 2 == 0 && round == rounds / 3 {
                    paused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    killed
                        .wait_for(|k| *k)
                        .await
                        .expect("the test keeps the sender");
                }
                attempted += 1;
                // The counter lives in A's memory; a failed save is retried by the next request.
                match browser.increment(&a, "n").await {
                    Ok(v) => acked = v,
                    Err(e) => println!("save failed (not acknowledged): {e}"),
                }
                tokio::task::yield_now().await;
            }
            (browser, acked, attempted)
        }));
    }
    // Kill one node while the load runs.
    let victim = rng.below(3) as usize;
    let pausing = (browsers as u64).div_ceil(2);
    assert!(
        kit::eventually(Duration::from_secs(60), || {
            paused.load(std::sync::atomic::Ordering::Relaxed) >= pausing
        })
        .await,
        "the paused half reached the kill point"
    );
    cluster[victim].kill();
    println!("killed n{victim}");
    killed_tx.send(true).expect("browsers are waiting");
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let a_stats = a.stats();
    println!("A stats: {a_stats:?}");
    // 24 sessions over 3 nodes: some had the killed node as primary or backup and were
    // moved by their next save.
    assert!(a_stats.relocations > 0, "the kill was noticed");
    drop(a); // and then the instance dies
    let b = sticky(&cluster, "b");
    for (mut browser, acked, attempted) in results {
        assert!(acked > 0, "some save was acknowledged");
        let seen = browser.read_u64(&b, "n").await.unwrap().unwrap_or(0);
        assert!(
            seen >= acked && seen <= attempted,
            "acknowledged {acked} (of {attempted} attempts), found {seen}"
        );
    }
    let stats = b.stats();
    println!("B stats: {stats:?}");
}

#[tokio::test]
async fn requests_of_one_session_on_one_instance_share_one_session_object() {
    let cluster = Cluster::start(2);
    let a = sticky(&cluster, "a");
    let browser = browser_with_counter(&a).await;
    let r1 = a.request(RequestInfo::new("/x").session_id(browser.cookie.as_deref()));
    let r2 = a.request(RequestInfo::new("/y").session_id(browser.cookie.as_deref()));
    let (s1, s2) = tokio::join!(r1.session(), r2.session());
    assert!(s1.unwrap().unwrap().ptr_eq(&s2.unwrap().unwrap()));
    r1.finish().await.unwrap();
    r2.finish().await.unwrap();
}

#[tokio::test]
async fn sticky_mode_without_a_route_is_refused_naming_the_field() {
    let cluster = Cluster::start(1);
    let err = BackupSessionService::new(
        SessionConfig::builder()
            .nodes(session_kit::nodes_spec(&cluster))
            .build()
            .unwrap(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            memkeep::session::SessionError::Config { field: "route", .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn memory_stays_within_max_local_sessions_and_dropped_sessions_read_back() {
    let cluster = Cluster::start(2);
    let svc = BackupSessionService::new(
        config(&cluster, Mode::Sticky)
            .route("a")
            .max_local_sessions(10)
            .build()
            .unwrap(),
    )
    .unwrap();
    let mut browsers = Vec::new();
    for i in 0..50u64 {
        let mut b = Browser::new();
        b.call(&svc, "/add", move |s| s.insert("i", &i).unwrap())
            .await
            .unwrap();
        browsers.push(b);
        assert!(
            svc.local_sessions() <= 10,
            "{} sessions in memory after {} created",
            svc.local_sessions(),
            i + 1
        );
    }
    assert!(svc.stats().local_evictions >= 40);
    // Every session, dropped from memory or not, is read back from memcached.
    for (i, b) in browsers.iter_mut().enumerate() {
        assert_eq!(b.read_u64(&svc, "i").await.unwrap(), Some(i as u64));
    }
}
