//! Non-sticky mode against real memcached processes: node failover, locking modes under
//! concurrent requests, lock waits, and acknowledged saves under SIGKILL mid-load.

mod kit;
#[path = "kit/session.rs"]
mod session_kit;

use std::sync::Arc;
use std::time::Duration;

use kit::Cluster;
use memkeep::session::{
    BackupSessionService, Clock, LockTimeoutPolicy, ManualClock, Mode, RequestInfo,
    SessionConfigBuilder, SessionError,
};
use session_kit::{browser_with_counter, config, index_of, non_sticky, observer, Browser};

#[tokio::test]
async fn every_request_reads_memcached_so_any_instance_sees_the_last_save() {
    let cluster = Cluster::start(2);
    let a = non_sticky(&cluster, "none");
    let b = non_sticky(&cluster, "none");
    let mut browser = Browser::new();
    for i in 1..=6u64 {
        let svc = if i % 2 == 0 { &a } else { &b };
        assert_eq!(browser.increment(svc, "n").await.unwrap(), i);
    }
    assert_eq!(
        a.local_sessions(),
        0,
        "the local copy is dropped after each request"
    );
}

#[tokio::test]
async fn when_the_primary_node_dies_the_session_is_restored_from_its_backup() {
    let mut cluster = Cluster::start(3);
    let a = non_sticky(&cluster, "all");
    let mut browser = browser_with_counter(&a).await;
    let before = browser.id().unwrap();
    cluster[index_of(before.node())].kill();

    let b = non_sticky(&cluster, "all");
    assert_eq!(browser.increment(&b, "n").await.unwrap(), 2);
    let after = browser.id().unwrap();
    assert_ne!(after.node(), before.node());
    assert_eq!(b.stats().restores_from_backup, 1);
    assert!(b.stats().relocations >= 1);
    // The new placement holds it: read through A.
    assert_eq!(browser.read_u64(&a, "n").await.unwrap(), Some(2));
}

#[tokio::test]
async fn a_node_restarted_empty_is_refilled_from_the_backup_in_non_sticky_mode() {
    let mut cluster = Cluster::start(2);
    let a = non_sticky(&cluster, "none");
    let mut browser = browser_with_counter(&a).await;
    let id = browser.id().unwrap();
    cluster[index_of(id.node())].restart();
    let mut value = None;
    for _ in 0..50 {
        match browser.read_u64(&a, "n").await {
            Ok(v) => {
                value = v;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(value, Some(1));
    assert_eq!(a.stats().restores_from_backup, 1);
    // Rewritten: the primary now has it again, without the backup's help.
    let obs = observer(&cluster);
    let primary = obs.on_node(browser.id().unwrap().node()).unwrap();
    let key = id.key().to_string();
    assert!(primary.get(&key).await.unwrap().is_some());
}

/// `workers` tasks, each incrementing counter `n` of session `cookie` `per_worker`
/// times on instance `worker % instances.len()`: the acknowledged and the failed ones.
async fn hammer(
    instances: &[BackupSessionService],
    cookie: String,
    workers: usize,
    per_worker: u64,
) -> (u64, u64) {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let svc = instances[w % instances.len()].clone();
        let cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = 0;
            let mut failed = 0;
            for _ in 0..per_worker {
                let mut browser = Browser {
                    cookie: Some(cookie.clone()),
                };
                match browser.increment(&svc, "n").await {
                    Ok(_) => acked += 1,
                    Err(_) => failed += 1,
                }
            }
            (acked, failed)
        }));
    }
    let mut acked = 0;
    let mut failed = 0;
    for t in tasks {
        let (a, f) = t.await.unwrap();
        acked += a;
        failed += f;
    }
    (acked, failed)
}

/// Two non-sticky instances with `locking` on `cluster`: a session is created (`n = 1`)
/// through the first, then [`hammer`]ed by `workers` x `per_worker` increments spread
/// over both. Returns the two instances, the acknowledged and the failed increments, and
/// `n` as read through the first instance afterwards.
async fn hammer_a_new_session(
    cluster: &Cluster,
    locking: &str,
    workers: usize,
    per_worker: u64,
) -> (BackupSessionService, BackupSessionService, u64, u64, u64) {
    let a = non_sticky(cluster, locking);
    let b = non_sticky(cluster, locking);
    let mut browser = browser_with_counter(&a).await;
    let cookie = browser.cookie.clone().unwrap();
    let (acked, failed) = hammer(&[a.clone(), b.clone()], cookie, workers, per_worker).await;
    let final_value = browser.read_u64(&a, "n").await.unwrap().unwrap();
    (a, b, acked, failed, final_value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locking_all_loses_no_update_under_concurrent_requests_on_two_instances() {
    let cluster = Cluster::start(2);
    let (a, b, acked, failed, final_value) = hammer_a_new_session(&cluster, "all", 8, 15).await;
    assert_eq!(failed, 0, "no request failed");
    assert_eq!(final_value, 1 + acked, "every increment survived");
    // Requests of one session on one instance share one load and one lock, so there are
    // fewer locks than requests; at least one per instance.
    assert!(a.stats().locks_acquired >= 1 && b.stats().locks_acquired >= 1);
    println!(
        "lock waits: {} + {}",
        a.stats().lock_waits,
        b.stats().lock_waits
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locking_auto_and_uri_pattern_lose_no_update_on_paths_that_change_the_session() {
    for locking in ["auto", "uriPattern:^/incr"] {
        let cluster = Cluster::start(2);
        let (a, b, acked, failed, final_value) =
            hammer_a_new_session(&cluster, locking, 6, 10).await;
        assert_eq!(failed, 0, "{locking}");
        assert_eq!(final_value, 1 + acked, "{locking}: an update was lost");
        assert_eq!(a.stats().conflicts + b.stats().conflicts, 0, "{locking}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locking_none_never_locks_and_never_waits() {
    let cluster = Cluster::start(2);
    let (a, b, acked, failed, final_value) = hammer_a_new_session(&cluster, "none", 8, 10).await;
    assert_eq!(failed, 0);
    assert!(final_value >= 2 && final_value <= 1 + acked);
    assert_eq!(a.stats().locks_acquired + b.stats().locks_acquired, 0);
}

#[tokio::test]
async fn locking_auto_learns_read_only_paths_and_locks_the_others() {
    let cluster = Cluster::start(2);
    let a = non_sticky(&cluster, "auto");
    let mut browser = Browser::new();
    browser.increment(&a, "n").await.unwrap(); // new session: no lock needed
    let locks0 = a.stats().locks_acquired;
    browser.read_u64(&a, "n").await.unwrap(); // /read: unknown yet, locked, then learnt
    assert_eq!(a.stats().locks_acquired, locks0 + 1);
    browser.read_u64(&a, "n").await.unwrap(); // /read: known read-only, not locked
    assert_eq!(a.stats().locks_acquired, locks0 + 1);
    assert_eq!(a.stats().auto_readonly_unlocked, 1);
    browser.increment(&a, "n").await.unwrap(); // /increment: changed last time, locked
    assert_eq!(a.stats().locks_acquired, locks0 + 2);
    assert_eq!(a.stats().writes, 2);
}

#[tokio::test]
async fn locking_auto_writes_a_read_only_guess_that_changed_the_session_with_cas() {
    let cluster = Cluster::start(2);
    let a = non_sticky(&cluster, "auto");
    let mut browser = browser_with_counter(&a).await;
    browser.visit(&a, "/page", |_| ()).await.unwrap(); // /page learnt read-only
    browser
        .visit(&a, "/page", |s| s.unwrap().insert("n", &10u64).unwrap())
        .await
        .unwrap();
    assert_eq!(a.stats().auto_readonly_misses, 1);
    assert_eq!(
        browser.read_u64(&a, "n").await.unwrap(),
        Some(10),
        "the change was not lost"
    );
}

#[tokio::test]
async fn two_read_only_guesses_that_both_change_the_session_keep_the_first_and_report_the_second() {
    let cluster = Cluster::start(2);
    let a = non_sticky(&cluster, "auto");
    let b = non_sticky(&cluster, "auto");
    let mut browser = browser_with_counter(&a).await;
    browser.visit(&a, "/page", |_| ()).await.unwrap(); // learnt read-only on A
    browser.visit(&b, "/page", |_| ()).await.unwrap(); // and on B
    let ra = a.request(RequestInfo::new("/page").session_id(browser.cookie.as_deref()));
    let rb = b.request(RequestInfo::new("/page").session_id(browser.cookie.as_deref()));
    let sa = ra.session().await.unwrap().unwrap();
    let sb = rb.session().await.unwrap().unwrap();
    sa.insert("n", &100u64).unwrap();
    sb.insert("n", &200u64).unwrap();
    ra.finish().await.unwrap();
    let err = rb.finish().await.unwrap_err();
    assert!(matches!(err, SessionError::Conflict), "{err}");
    assert_eq!(b.stats().conflicts, 1);
    assert_eq!(browser.read_u64(&a, "n").await.unwrap(), Some(100));
}

#[tokio::test]
async fn locking_uri_pattern_locks_only_matching_paths() {
    let cluster = Cluster::start(2);
    let a = non_sticky(&cluster, "uriPattern:^/cart");
    let mut browser = browser_with_counter(&a).await;
    let l0 = a.stats().locks_acquired;
    browser.visit(&a, "/home", |_| ()).await.unwrap();
    assert_eq!(a.stats().locks_acquired, l0);
    browser.visit(&a, "/cart/add", |_| ()).await.unwrap();
    assert_eq!(a.stats().locks_acquired, l0 + 1);
}

/// Another instance takes the lock of session `cookie` and never releases it.
async fn hold_lock_of(cluster: &Cluster, a: &BackupSessionService, cookie: &str) {
    // Another instance holds the lock (it never releases it).
    let holder = BackupSessionService::new(
        config(cluster, Mode::NonSticky)
            .locking_str("all")
            .build()
            .unwrap(),
    )
    .unwrap();
    let r = holder.request(RequestInfo::new("/hold").session_id(Some(cookie)));
    assert!(r.session().await.unwrap().is_some());
    std::mem::forget(r); // never finished: the lock stays until it expires
    let _ = a;
}

/// A non-sticky instance with locking `all` whose time is `clock`, with the lock
/// settings `tune` applies.
fn locking_all_on_clock(
    cluster: &Cluster,
    clock: &ManualClock,
    tune: impl FnOnce(SessionConfigBuilder) -> SessionConfigBuilder,
) -> BackupSessionService {
    let builder = config(cluster, Mode::NonSticky).locking_str("all");
    BackupSessionService::new(
        tune(builder)
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap(),
    )
    .unwrap()
}

/// A browser whose session (`n = 1`) was created through `a`, then locked by another
/// instance that never releases the lock ([`hold_lock_of`]).
async fn session_locked_elsewhere(cluster: &Cluster, a: &BackupSessionService) -> Browser {
    let browser = browser_with_counter(a).await;
    let cookie = browser.cookie.clone().unwrap();
    hold_lock_of(cluster, a, &cookie).await;
    browser
}

#[tokio::test]
async fn a_lock_wait_that_runs_out_fails_the_request_and_is_counted() {
    let cluster = Cluster::start(2);
    let clock = ManualClock::starting_now();
    let a = locking_all_on_clock(&cluster, &clock, |b| b.lock_wait(Duration::from_secs(2)));
    let mut browser = session_locked_elsewhere(&cluster, &a).await;
    let before = clock.now();
    let err = browser.increment(&a, "n").await.unwrap_err();
    assert!(matches!(err, SessionError::LockTimeout { .. }), "{err}");
    assert_eq!(a.stats().lock_timeouts, 1);
    assert!(clock.now().duration_since(before).unwrap() >= Duration::from_secs(2));
    assert_eq!(
        a.local_sessions(),
        0,
        "the failed request released its share"
    );
}

#[tokio::test]
async fn a_lock_wait_that_runs_out_proceeds_when_configured_and_is_counted() {
    let cluster = Cluster::start(2);
    let clock = ManualClock::starting_now();
    let a = locking_all_on_clock(&cluster, &clock, |b| {
        b.lock_wait(Duration::from_secs(1))
            .lock_timeout_policy(LockTimeoutPolicy::Proceed)
    });
    let mut browser = session_locked_elsewhere(&cluster, &a).await;
    assert_eq!(browser.increment(&a, "n").await.unwrap(), 2);
    assert_eq!(a.stats().lock_timeouts, 1);
    assert_eq!(a.stats().lock_proceeded_unlocked, 1);
}

#[tokio::test]
async fn concurrent_requests_on_one_instance_share_one_loaded_session() {
    let cluster = Cluster::start(2);
    let a = non_sticky(&cluster, "all");
    let mut browser = browser_with_counter(&a).await;
    let r1 = a.request(RequestInfo::new("/x").session_id(browser.cookie.as_deref()));
    let r2 = a.request(RequestInfo::new("/y").session_id(browser.cookie.as_deref()));
    let s1 = r1.session().await.unwrap().unwrap();
    let s2 = r2.session().await.unwrap().unwrap();
    assert!(s1.ptr_eq(&s2), "one loaded session, not two copies");
    assert_eq!(a.stats().locks_acquired, 1, "one lock for both");
    s1.insert("x", &1u64).unwrap();
    s2.insert("y", &2u64).unwrap();
    r1.finish().await.unwrap();
    assert_eq!(a.local_sessions(), 1, "still in use by the second request");
    r2.finish().await.unwrap();
    assert_eq!(a.local_sessions(), 0);
    let (xy, _) = browser
        .visit(&a, "/r", |s| {
            let s = s.unwrap();
            (s.get::<u64>("x").unwrap(), s.get::<u64>("y").unwrap())
        })
        .await
        .unwrap();
    assert_eq!(xy, (Some(1), Some(2)));
}

/// Non-sticky + `all`: every acknowledged save is found after a memcached node is
/// SIGKILLed in the middle of the load (requests alternate between two instances).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_sticky_all_loses_no_acknowledged_save_when_a_node_is_killed_mid_load() {
    let seed = kit::Rng::seed_from_env();
    println!("seed {seed}");
    let mut rng = kit::Rng::new(seed);
    let mut cluster = Cluster::start(3);
    let a = non_sticky(&cluster, "all");
    let b = non_sticky(&cluster, "all");
    let browsers = 16;
    let rounds = 30u64;
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..browsers {
        let (a, b) = (a.clone(), b.clone());
        let progress = Arc::clone(&progress);
        tasks.push(tokio::spawn(async move {
            let mut browser = Browser::new();
            let mut acked = 0u64;
            let mut attempted = 0u64;
            for r in 0..rounds {
                let svc = if (r + i) % 2 == 0 { &a } else { &b };
                attempted += 1;
                match browser.increment(svc, "n").await {
                    Ok(v) => {
                        assert!(v > acked, "went backwards: {v} after {acked}");
                        acked = v;
                    }
                    Err(e) => println!("request failed (not acknowledged): {e}"),
                }
                progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (browser, acked, attempted)
        }));
    }
    let total = browsers * rounds;
    kit::eventually(Duration::from_secs(60), || {
        progress.load(std::sync::atomic::Ordering::Relaxed) >= total / 3
    })
    .await;
    let victim = rng.below(3) as usize;
    cluster[victim].kill();
    println!("killed n{victim}");
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let relocations = a.stats().relocations + b.stats().relocations;
    println!(
        "relocations {relocations}, restores {}",
        a.stats().restores_from_backup + b.stats().restores_from_backup
    );
    assert!(relocations > 0, "the kill was noticed");
    let c = non_sticky(&cluster, "all");
    for (mut browser, acked, attempted) in results {
        assert!(acked > 0);
        let seen = browser.read_u64(&c, "n").await.unwrap().unwrap_or(0);
        assert!(
            seen >= acked && seen <= attempted,
            "acknowledged {acked} (of {attempted}), found {seen}"
        );
    }
}

#[tokio::test]
async fn locking_auto_remembers_read_only_paths_within_auto_readonly_bytes_only() {
    let cluster = Cluster::start(2);
    let a = session_kit::non_sticky_with(&cluster, "auto", |b| b.auto_readonly_bytes(16));
    let mut browser = browser_with_counter(&a).await;
    let unlocked = || a.stats().auto_readonly_unlocked;

    // A path longer than the byte bound is never remembered: it stays locked.
    let long = format!("/{}", "x".repeat(16));
    for _ in 0..3 {
        browser.visit(&a, &long, |_| ()).await.unwrap();
    }
    assert_eq!(unlocked(), 0);

    // Two 8-byte paths fill the 16 bytes and are both remembered.
    for path in ["/aaaaaaa", "/bbbbbbb", "/aaaaaaa", "/bbbbbbb"] {
        browser.visit(&a, path, |_| ()).await.unwrap();
    }
    assert_eq!(unlocked(), 2);
    // A third pushes out the least recently noted one (/aaaaaaa): locked again.
    browser.visit(&a, "/ccccccc", |_| ()).await.unwrap();
    let locks = a.stats().locks_acquired;
    browser.visit(&a, "/aaaaaaa", |_| ()).await.unwrap();
    assert_eq!(
        a.stats().locks_acquired,
        locks + 1,
        "/aaaaaaa was forgotten"
    );
    assert_eq!(unlocked(), 2);
}
