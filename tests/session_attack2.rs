//! Second round of attacks on the session layer: OTHER instances of the kinds of fault
//! issue 7 lists (I1 invalidated-means-gone, I2 no acknowledged write lost / no refused
//! write visible / a failed load keeps the cookie, I3 fenced locks, I4 bounded work),
//! with real memcached processes and several in-process instances. The passing tests
//! guard paths the other suites do not reach.
//!
//! Public API only (plus raw looks at what the servers hold). Each failing test names
//! the invariant it breaks in its assertion message.

mod kit;
#[path = "kit/session.rs"]
mod session_kit;

use std::time::Duration;

use kit::Cluster;
use memkeep::session::{
    BackupSessionService, Mode, RequestInfo, SessionError, SessionId, SessionKey,
};
use memkeep::{Client, Protocol};
use session_kit::{
    config, drive_down, index_of, logged_in, logout, look, service, wait_nodes_up, Browser,
};

/// A non-sticky instance with locking `none` on a fast-reacting client.
fn unlocked(cluster: &Cluster, interval: Duration) -> BackupSessionService {
    service(
        cluster,
        config(cluster, Mode::NonSticky)
            .locking_str("none")
            .max_inactive_interval(interval),
    )
}

// ---------------------------------------------------------------------------------------
// I2 kind "a request that changed nothing writes the session back": a read-only request
// that loaded the session before another instance raised its max inactive interval
// ("remember me") refreshes it after: its `touch` and validity record carry the OLD
// interval, so the acknowledged interval is undone and memcached drops the session.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_read_only_request_never_undoes_an_acknowledged_longer_interval() {
    let cluster = Cluster::start(2);
    let short = Duration::from_secs(2);
    let a = unlocked(&cluster, short);
    let b = unlocked(&cluster, short);
    let browser = logged_in(&a).await;
    let cookie = browser.cookie.clone().unwrap();
    // A read-only request on b loads the session (interval 2 s) ...
    let stale = b.request(RequestInfo::new("/page").session_id(Some(&cookie)));
    let seen = stale.session().await.unwrap().expect("the session");
    assert_eq!(seen.get::<u64>("user").unwrap(), Some(7));
    drop(seen);
    // ... while "remember me" on a raises it to one hour (acknowledged).
    let mut remember = browser.clone();
    let (_, out) = remember
        .call(&a, "/remember-me", |s| {
            s.set_max_inactive_interval(Duration::from_secs(3600))
        })
        .await
        .unwrap();
    assert!(out.written, "the interval change is acknowledged: {out:?}");
    // The read-only request ends after it (it changed nothing).
    stale.finish().await.unwrap();
    // Past the old interval (and memcached's 1 s TTL resolution), well within the new one.
    tokio::time::sleep(short + Duration::from_millis(2500)).await;
    let got = remember.read_u64(&a, "user").await;
    assert_eq!(
        got.as_ref().ok(),
        Some(&Some(7)),
        "I2: the acknowledged max inactive interval of 3600 s was undone by a read-only \
         request that loaded the session before it and finished after it: {} s later the \
         session is gone ({got:?})",
        (short + Duration::from_millis(2500)).as_secs_f32()
    );
}

// ---------------------------------------------------------------------------------------
// I1 kind "a node that was away during the invalidation returns", through the hint
// lists: a hint list is one memcached item that only grows while its node is away; once
// it reaches memcached's item size limit (about 20,000 logouts at the default 1 MB), the
// hint of every further logout is dropped (logged), the logout is still acknowledged,
// and the returning node keeps its old copy.

/// Hint lines for other sessions, in the format the service writes (one per logout that
/// missed the node while it was away), `max_bytes` in all.
fn earlier_hints(max_bytes: usize) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let mut out = String::new();
    loop {
        let line = format!("{} {now_ms} 2100\n", SessionKey::generate().unwrap());
        if out.len() + line.len() > max_bytes {
            // Up to exactly `max_bytes` with a line the parser skips.
            let pad = max_bytes - out.len();
            if pad > 0 {
                out.push_str(&"-".repeat(pad - 1));
                out.push('\n');
            }
            return out;
        }
        out.push_str(&line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_after_many_others_while_a_node_was_away_stays_gone_after_a_later_fault() {
    let mut cluster = Cluster::start(2);
    let a = unlocked(&cluster, Duration::from_secs(1800));
    let browser = logged_in(&a).await;
    let cookie = browser.cookie.clone().unwrap();
    let id = browser.id().unwrap();
    let away = index_of(id.backup().expect("a backup copy"));
    let holder = index_of(id.node());
    cluster[away].pause();
    assert!(drive_down(&a, &Cluster::id(away), Duration::from_secs(10)).await);
    // The hints of ~20,000 earlier logouts while the node was away (what the service
    // itself appends; written here in one go to keep the test short).
    let list_key = format!("hints:{}", Cluster::id(away));
    let observer = kit::client(&cluster, Protocol::Meta)
        .on_node(&Cluster::id(holder))
        .unwrap();
    // memcached's default item size limit leaves 1,048,509 bytes for this key's value:
    // the list is within one hint line (52 bytes) of it.
    let earlier = earlier_hints(1_048_500);
    observer
        .set(&list_key, &earlier, memkeep::Expiry::Never)
        .await
        .unwrap();
    // The logout is acknowledged; its hint for the away node can't be appended.
    logout(&a, &cookie).await;
    cluster[away].resume();
    assert!(wait_nodes_up(&[&a], Duration::from_secs(15)).await);
    // The hints are delivered: the list is removed once the node is back.
    let delivered = kit::eventually(Duration::from_secs(40), || {
        kit::memcached::raw::get(&cluster[holder].addr(), &list_key).is_none()
    })
    .await;
    assert!(delivered, "the hint list was never delivered");
    // Heal step done (no live session); the next single node fault: the node that
    // held the tombstone restarts empty.
    cluster[holder].restart();
    let c = unlocked(&cluster, Duration::from_secs(1800));
    assert!(wait_nodes_up(&[&a, &c], Duration::from_secs(15)).await);
    let mut found = Vec::new();
    for svc in [&a, &c] {
        let got = look(svc, &cookie, "user").await;
        if !matches!(got, Ok(None)) {
            found.push(format!("{got:?}"));
        }
    }
    assert!(
        found.is_empty(),
        "I1: a logout acknowledged while node {} was away (its hint list full after \
         ~20,000 earlier logouts), then {} restarted empty: the old cookie gets the session \
         back: {found:?}",
        Cluster::id(away),
        Cluster::id(holder)
    );
}

// ---------------------------------------------------------------------------------------
// I2 kind "instances with different views of a node": an instance cut off from the
// session's primary (a partition between it and one node: the node is up for everyone
// else) writes the copies on the other two nodes; an unlocked writer on another instance
// that read the session before writes its primary copy and dies before its backup write
// (SIGKILL; here its finish is dropped). Two copies of the same version, different
// contents: the acknowledged attribute is lost for a reader that looks at the dead
// writer's copy, and for good after the next write.

/// A fast client for `cluster` on which node `cut` is unreachable (a closed port).
fn client_cut_off_from(cluster: &Cluster, cut: usize) -> Client {
    let mut addrs = cluster.addrs();
    addrs[cut] = format!("127.0.0.1:{}", kit::memcached::free_port());
    kit::clients::builder_for(&addrs, Protocol::Meta)
        .operation_timeout(Duration::from_millis(300))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .timeout_threshold(3)
        .build()
        .unwrap()
}

/// Two instances over 3 nodes with `locking`: `b` sees every node, `a` is cut off from
/// the primary node of the session the returned browser is logged in to (on `b`).
async fn split_view(
    cluster: &Cluster,
    locking: &str,
) -> (BackupSessionService, BackupSessionService, Browser) {
    let b = service(
        cluster,
        config(cluster, Mode::NonSticky)
            .locking_str(locking)
            .lock_wait(Duration::from_secs(5)),
    );
    let browser = logged_in(&b).await;
    let id = browser.id().unwrap();
    let builder = config(cluster, Mode::NonSticky)
        .locking_str(locking)
        .lock_wait(Duration::from_secs(5));
    let a = BackupSessionService::with_client(
        builder.build().unwrap(),
        client_cut_off_from(cluster, index_of(id.node())),
    )
    .unwrap();
    assert!(
        kit::clients::wait_state(
            a.client(),
            id.node(),
            memkeep::NodeState::Down,
            Duration::from_secs(10)
        )
        .await
    );
    (a, b, browser)
}

/// The race both split-view tests set up: a request on `b` reads the session and puts
/// `cart=3` in it; meanwhile the user's `paid=1` is written (acknowledged) through `a`.
/// Returns `b`, the user's browser (its cookie as `a` left it), the id the session had,
/// and `b`'s request, not finished yet.
async fn b_reads_then_a_writes(
    cluster: &Cluster,
    locking: &str,
) -> (
    BackupSessionService,
    Browser,
    SessionId,
    memkeep::session::SessionRequest,
) {
    let (a, b, browser) = split_view(cluster, locking).await;
    let cookie = browser.cookie.clone().unwrap();
    let id = browser.id().unwrap();
    let late = b.request(RequestInfo::new("/cart").session_id(Some(&cookie)));
    let s = late.session().await.unwrap().unwrap();
    let mut user = browser.clone();
    let (_, out) = user
        .call(&a, "/pay", |s| s.insert("paid", &1u64).unwrap())
        .await
        .unwrap();
    assert!(
        out.written,
        "a's write (copies on the two nodes it reaches; with locking, the lock on the \
         first node it reaches) is acknowledged: {out:?}"
    );
    s.insert("cart", &3u64).unwrap();
    (b, user, id, late)
}

/// Polls `finish` (a request's end-of-request save, already started) until the copy on
/// `node` holds write version 2, and stops there (the future is left pending). Returns
/// whether it got there.
/// Polls `finish` until b's write (version 2) is on the primary: `Ok(true)`; until it
/// completes without that: `Err(its output)`; `Ok(false)` when neither happened in 2 s.
async fn drive_until_primary_written<F: std::future::Future + Unpin>(
    finish: &mut F,
    cluster: &Cluster,
    id: &SessionId,
) -> Result<bool, F::Output> {
    let observer = kit::client(cluster, Protocol::Meta)
        .on_node(id.node())
        .unwrap();
    let data_key = id.key().to_string();
    for _ in 0..200 {
        if let std::task::Poll::Ready(output) = futures::poll!(&mut *finish) {
            return Err(output);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let flags = observer.get(&data_key).await.unwrap().map(|i| i.flags);
        if flags == Some(2) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The session's id with only the primary `id` names (what a client may send).
fn primary_only(id: &SessionId) -> String {
    SessionId::new(id.key(), id.node().to_owned(), None, None)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_dying_between_its_copies_never_loses_an_acknowledged_attribute() {
    let cluster = Cluster::start(3);
    // b reads, a writes (acknowledged), then b's write reaches the primary copy and b
    // dies.
    let (b, mut user, id, dying) = b_reads_then_a_writes(&cluster, "none").await;
    let cookie = id.to_string();
    let mut finish = Box::pin(dying.finish());
    assert!(
        matches!(
            drive_until_primary_written(&mut finish, &cluster, &id).await,
            Ok(true)
        ),
        "b's write never reached the primary copy"
    );
    drop(finish);
    drop(b);
    // Any instance, with the ids a client can send.
    let c = unlocked(&cluster, Duration::from_secs(1800));
    let mut wrong = Vec::new();
    let forged = primary_only(&id);
    for candidate in [user.cookie.clone().unwrap(), cookie.clone(), forged.clone()] {
        match look(&c, &candidate, "paid").await {
            Ok(Some(Some(1))) => {}
            other => wrong.push(format!("read with {candidate}: paid = {other:?}")),
        }
    }
    // The next write of the session, by a client that presents the id b handed out.
    let mut next = Browser {
        cookie: Some(forged),
    };
    next.call(&c, "/next", |s| s.insert("next", &1u64).unwrap())
        .await
        .unwrap();
    match user.read_u64(&c, "paid").await {
        Ok(Some(1)) => {}
        other => wrong.push(format!("after the next write: paid = {other:?}")),
    }
    assert!(
        wrong.is_empty(),
        "I2: acknowledged paid=1 (written by a, cut off from {}) lost: {wrong:#?}",
        id.node()
    );
}

/// Locking `all` under the same partition: each instance takes the lock on the first
/// node IT can reach, so both hold "the" lock at once; the version check refuses b's
/// write, but until b reaches its backup copy its refused write is on the primary with
/// the same version as a's acknowledged one, and a reader that looks there first gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_locked_write_is_never_visible_even_while_it_is_being_refused() {
    let cluster = Cluster::start(3);
    let (_b, mut user, id, late) = b_reads_then_a_writes(&cluster, "all").await;
    let mut finish = Box::pin(late.finish());
    // Both instances hold "the" lock (split views: each locked on the first node it can
    // reach), so b's write is either refused - then nobody ever sees cart=3 - or, since
    // its own lock is still held, merged onto a's acknowledged write - then it is
    // acknowledged and both changes are there. Never: refused yet visible, or a's
    // acknowledged paid=1 lost.
    let driven = drive_until_primary_written(&mut finish, &cluster, &id).await;
    let reached = matches!(driven, Ok(true));
    let c = unlocked(&cluster, Duration::from_secs(1800));
    let seen = look(&c, &primary_only(&id), "cart").await;
    let outcome = match driven {
        Err(output) => output,
        Ok(_) => finish.await,
    };
    let mut wrong = Vec::new();
    match &outcome {
        Err(SessionError::Conflict) => {
            if matches!(seen, Ok(Some(Some(3)))) {
                wrong.push(format!(
                    "a reader saw b's cart=3 (b's write reached the primary: {reached}), and b was refused"
                ));
            }
        }
        Ok(out) if out.written => match look(&c, &primary_only(&id), "cart").await {
            Ok(Some(Some(3))) => {}
            other => wrong.push(format!("b's acknowledged cart=3 reads {other:?}")),
        },
        other => wrong.push(format!("b's outcome: {other:?}")),
    }
    match user.read_u64(&c, "paid").await {
        Ok(Some(1)) => {}
        other => wrong.push(format!("afterwards: acknowledged paid=1 reads {other:?}")),
    }
    assert!(wrong.is_empty(), "I2/I3: {wrong:#?}");
}

// ---------------------------------------------------------------------------------------
// I4 bounded work, async mode: the write queue is full (capacity 2) while a session node
// is stopped (SIGSTOP, not yet noticed: every write to it waits for its timeout). Every
// finish returns within the client's timeouts, and once the node is back no queued
// write is lost (read through another instance that takes the sessions over).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_finishes_stay_bounded_with_a_full_queue_and_a_stopped_node_and_lose_nothing() {
    let mut cluster = Cluster::start(3);
    let sticky_async = |cluster: &Cluster, route: &str| {
        service(
            cluster,
            config(cluster, Mode::Sticky)
                .route(route)
                .write_mode(memkeep::session::WriteMode::Async)
                .async_queue_capacity(2),
        )
    };
    let a = sticky_async(&cluster, "a");
    let mut browsers = Vec::new();
    for _ in 0..24 {
        let mut b = Browser::new();
        b.increment(&a, "n").await.unwrap();
        browsers.push(b);
    }
    a.flush().await;
    // 24 overlapping requests load their session and change it; then the node stops,
    // and they finish (one queued write each, through a queue of 2).
    let mut requests = Vec::new();
    for b in &browsers {
        let r = a.request(RequestInfo::new("/increment").session_id(b.cookie.as_deref()));
        let s = r.session().await.unwrap().unwrap();
        s.insert("n", &2u64).unwrap();
        requests.push(r);
    }
    cluster[0].pause();
    let results = kit::no_hang(
        "24 async finishes while a node is stopped",
        Duration::from_secs(40),
        futures::future::join_all(requests.iter().map(|r| r.finish())),
    )
    .await;
    kit::no_hang("flush", Duration::from_secs(40), a.flush()).await;
    cluster[0].resume();
    let b = sticky_async(&cluster, "b");
    assert!(wait_nodes_up(&[&b], Duration::from_secs(15)).await);
    let mut wrong = Vec::new();
    for (i, (browser, result)) in browsers.iter_mut().zip(results).enumerate() {
        // A write that was not acknowledged may or may not be there.
        let Ok(out) = result else { continue };
        assert!(out.written, "{out:?}");
        if let memkeep::session::CookieDecision::Set(id) = out.cookie {
            browser.cookie = Some(id);
        }
        match browser.read_u64(&b, "n").await {
            Ok(Some(2)) => {}
            other => wrong.push(format!("session {i}: acknowledged n=2, reads {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "I2 (async): {wrong:#?}");
    let stats = a.stats();
    assert!(
        stats.async_queue_full > 0 && stats.write_failures > 0,
        "the scenario did not happen (queue never full, or no write met the stopped node): \
         {stats:?}"
    );
    assert_eq!(stats.async_failures, 0, "{stats:?}");
}

// ---------------------------------------------------------------------------------------
// I2 kind "a failed request's change becomes visible": a request that changed its
// session and then died without finishing (its handler panicked - the tower layer has
// no `catch_unwind`, the client gets no response - or its future was dropped) saved
// nothing; in sticky mode its change stays in the instance's memory copy, which the
// next request reuses (the stored version did not move) and writes back.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_a_change_of_a_request_that_never_finished_is_never_saved() {
    let cluster = Cluster::start(2);
    let a = service(&cluster, config(&cluster, Mode::Sticky).route("a"));
    let b = service(&cluster, config(&cluster, Mode::Sticky).route("b"));
    let mut browser = logged_in(&a).await;
    let cookie = browser.cookie.clone().unwrap();
    let dead = a.request(RequestInfo::new("/checkout").session_id(Some(&cookie)));
    let s = dead.session().await.unwrap().unwrap();
    s.insert("cart", &99u64).unwrap();
    drop(s);
    drop(dead); // the handler panicked here: no finish, no response
    let mut wrong = Vec::new();
    match browser.read_u64(&a, "cart").await {
        Ok(None) => {}
        other => wrong.push(format!("next request on a: cart = {other:?}")),
    }
    browser.increment(&a, "n").await.unwrap();
    let mut elsewhere = browser.clone();
    match elsewhere.read_u64(&b, "cart").await {
        Ok(None) => {}
        other => wrong.push(format!("after a's next write, b reads cart = {other:?}")),
    }
    assert!(
        wrong.is_empty(),
        "I2: the change of a request that never finished (no response) is visible: \
         {wrong:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// I2 "a failed load keeps the cookie": a session created while only one node was up
// (its id names no backup); that node is stopped and the other comes back (empty)
// before any request healed the session. The session can't be read: requests fail,
// never hand out a new session or remove the cookie, and it is intact once its node
// resumes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_copy_session_whose_node_stops_fails_its_requests_and_keeps_its_cookie() {
    let mut cluster = Cluster::start(2);
    let a = unlocked(&cluster, Duration::from_secs(1800));
    cluster[1].kill();
    assert!(drive_down(&a, "n1", Duration::from_secs(10)).await);
    let mut browser = logged_in(&a).await;
    let cookie = browser.cookie.clone().unwrap();
    assert_eq!(browser.id().unwrap().backup(), None, "one copy: {cookie}");
    cluster[1].restart();
    cluster[0].pause();
    assert!(drive_down(&a, "n0", Duration::from_secs(10)).await);
    assert!(
        kit::clients::wait_state(
            a.client(),
            "n1",
            memkeep::NodeState::Up,
            Duration::from_secs(15)
        )
        .await
    );
    let mut wrong = Vec::new();
    for path in ["/read", "/write"] {
        let r = a.request(RequestInfo::new(path).session_id(Some(&cookie)));
        let got = r.get_or_create().await;
        let out = r.finish().await;
        if got.is_ok()
            || out
                .as_ref()
                .is_ok_and(|o| o.cookie != memkeep::session::CookieDecision::Keep)
        {
            wrong.push(format!("{path}: get_or_create {got:?}, finish {out:?}"));
        }
    }
    cluster[0].resume();
    assert!(wait_nodes_up(&[&a], Duration::from_secs(15)).await);
    match browser.read_u64(&a, "user").await {
        Ok(Some(7)) => {}
        other => wrong.push(format!("after the node resumed: user = {other:?}")),
    }
    assert!(wrong.is_empty(), "I2: {wrong:#?}");
}
