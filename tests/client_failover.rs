//! Node failures under load, against real memcached processes: SIGKILL and restart,
//! SIGSTOP/SIGCONT stalls, and the failure policies.
//!
//! Every load here is bounded in time and count and stops by itself. No assertion is
//! on speed: the only time checks are "no caller waits past its operation timeout plus
//! generous slack" (a hang) and bounded waits for the client's node states. Every value
//! names its key and writer, and every read is checked against the client history
//! (kit::history), so a reply delivered to the wrong caller is caught.

mod kit;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kit::memcached::raw;
use kit::{Cluster, History, Outcome, Rng, HANG_SLACK};
use memkeep::{Client, Error, Expiry, FailurePolicy, NodeState, Protocol};

const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the client may take to notice a change of a node (down, back up).
const STATE_LIMIT: Duration = Duration::from_secs(20);
/// Hard bound on any load phase, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(60);

macro_rules! both_protocols {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn meta() {
                crate::kit::no_hang(concat!(stringify!($name), " (meta)"), std::time::Duration::from_secs(150),
                    super::$name(memkeep::Protocol::Meta)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn text() {
                crate::kit::no_hang(concat!(stringify!($name), " (text)"), std::time::Duration::from_secs(150),
                    super::$name(memkeep::Protocol::Text)).await
            }
        }
    )*};
}

both_protocols!(
    sigkill_of_one_node_under_pipelined_load_recovers_without_misdelivered_replies,
    redistribute_sends_a_down_nodes_keys_to_another_node,
    fail_fast_returns_node_down_for_a_down_nodes_keys_only,
    retry_waits_for_a_down_node_to_come_back_within_the_timeout,
    stalled_node_times_out_only_its_own_operations_and_serves_again_after_sigcont,
    consecutive_timeouts_mark_a_stalled_node_down_and_it_comes_back,
);

/// SIGKILLs server `n1` and waits (bounded) until the client reports it Down. The client
/// learns of the death by itself (its connection is closed by the kernel) or on the next
/// operation; both are fine, so it is nudged with a get of `key_on_n1`.
async fn kill_n1_and_see_it_down(cl: &mut Cluster, c: &Client, key_on_n1: &str) {
    cl[1].kill();
    let _ = c.get(key_on_n1).await;
    assert!(
        kit::wait_state(c, "n1", NodeState::Down, STATE_LIMIT).await,
        "n1 reported Down: {:?}",
        c.nodes()
    );
}

/// Asserts that `watch` sees (within `STATE_LIMIT`) node `n1` Down and later Up.
async fn assert_saw_n1_down_then_up(watch: &kit::StateWatcher) {
    assert!(
        watch
            .wait_saw_sequence("n1", NodeState::Down, NodeState::Up, STATE_LIMIT)
            .await,
        "{:?}",
        watch.history("n1")
    );
}

/// A client of `cl` with failure policy `policy`, `OP_TIMEOUT` for operations and
/// connects, `threshold` timeouts before a node is marked down, quick reconnects.
fn client_with(cl: &Cluster, p: Protocol, policy: FailurePolicy, threshold: u32) -> Client {
    kit::builder(cl, p)
        .failure_policy(policy)
        .operation_timeout(OP_TIMEOUT)
        .connect_timeout(OP_TIMEOUT)
        .timeout_threshold(threshold)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .expect("client")
}

/// Sets `prefix-N` keys through the client until `count` of them live on server
/// `node` (found with a raw read of every server, not by asking the client).
async fn keys_on_node(
    cl: &Cluster,
    c: &Client,
    prefix: &str,
    node: usize,
    count: usize,
) -> Vec<String> {
    let mut found = Vec::new();
    for n in 0..(count * 40) {
        let key = format!("{prefix}-{n}");
        c.set(&key, "probe", Expiry::Never)
            .await
            .expect("probe set");
        let on: Vec<usize> = (0..cl.len())
            .filter(|&i| raw::get(&cl[i].addr(), &key).is_some())
            .collect();
        assert_eq!(on.len(), 1, "{key} is on exactly one server: {on:?}");
        if on[0] == node {
            found.push(key);
            if found.len() == count {
                return found;
            }
        }
    }
    panic!(
        "fewer than {count} of {} keys landed on n{node}",
        count * 40
    );
}

/// Counters of a load run.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    node_failures: AtomicU64,
    hung: AtomicU64,
}

/// One caller of the load: owns `keys`, alternates writes of fresh values and reads,
/// records every write's outcome and checks every read. Stops when `stop` is set, after
/// `max_ops`, or at `deadline`.
#[allow(clippy::too_many_arguments)]
async fn caller(
    c: Client,
    writer: u64,
    keys: Vec<String>,
    hist: History,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    max_ops: u64,
    deadline: Instant,
) {
    let limit = OP_TIMEOUT + HANG_SLACK;
    let mut rng = Rng::new(writer ^ 0x5eed);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) && seq < max_ops && Instant::now() < deadline {
        seq += 1;
        let key = &keys[rng.below(keys.len() as u64) as usize];
        if rng.chance(50) {
            let value = History::value(key, writer, seq, rng.below(200) as usize);
            hist.begin_write(key.as_bytes(), &value);
            match tokio::time::timeout(limit, c.set(key, &value, Expiry::Never)).await {
                Ok(Ok(())) => {
                    hist.end_write(key.as_bytes(), &value, Outcome::Acked);
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) if e.is_node_failure() => {
                    hist.end_write(key.as_bytes(), &value, Outcome::Unknown);
                    tally.node_failures.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    hist.end_write(key.as_bytes(), &value, Outcome::Unknown);
                    hist.violation(format!("set {key}: unexpected error kind {e:?}"));
                }
                Err(_) => {
                    hist.end_write(key.as_bytes(), &value, Outcome::Unknown);
                    tally.hung.fetch_add(1, Ordering::Relaxed);
                    hist.violation(format!("set {key}: caller still waiting after {limit:?}"));
                }
            }
        } else {
            match tokio::time::timeout(limit, c.get(key)).await {
                Ok(Ok(item)) => {
                    let _ =
                        hist.check_read(key.as_bytes(), item.as_ref().map(|i| i.value.as_ref()));
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) if e.is_node_failure() => {
                    tally.node_failures.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => hist.violation(format!("get {key}: unexpected error kind {e:?}")),
                Err(_) => {
                    tally.hung.fetch_add(1, Ordering::Relaxed);
                    hist.violation(format!("get {key}: caller still waiting after {limit:?}"));
                }
            }
        }
    }
}

async fn sigkill_of_one_node_under_pipelined_load_recovers_without_misdelivered_replies(
    p: Protocol,
) {
    let mut cl = Cluster::start(3);
    let c = client_with(&cl, p, FailurePolicy::Redistribute, 8);
    c.get("warmup").await.expect("first operation");
    assert!(
        kit::wait_all_up(&c, STATE_LIMIT).await,
        "all nodes up at start: {:?}",
        c.nodes()
    );

    let hist = History::new();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + LOAD_LIMIT;
    const CALLERS: u64 = 32;
    let tasks: Vec<_> = (0..CALLERS)
        .map(|w| {
            let keys = (0..6).map(|k| format!("fo-w{w}-k{k}")).collect();
            tokio::spawn(caller(
                c.clone(),
                w,
                keys,
                hist.clone(),
                tally.clone(),
                stop.clone(),
                50_000,
                deadline,
            ))
        })
        .collect();

    // Let the load run, then kill n1 in the middle of it.
    let watch = kit::StateWatcher::start(&c);
    let ok_before = wait_for_ops(&tally, 5_000).await;
    cl[1].kill();
    let down = watch.wait_saw("n1", NodeState::Down, STATE_LIMIT).await;
    let n1_up_while_down = c.is_up("n1");
    // The other nodes keep serving meanwhile.
    let ok_at_kill = tally.ok.load(Ordering::Relaxed);
    let served_while_down = wait_for_ops(&tally, ok_at_kill + 5_000).await > ok_at_kill;

    cl[1].restart();
    let up = kit::wait_state(&c, "n1", NodeState::Up, STATE_LIMIT).await;
    let ok_at_up = tally.ok.load(Ordering::Relaxed);
    wait_for_ops(&tally, ok_at_up + 5_000).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        kit::no_hang("load caller", LOAD_LIMIT, t)
            .await
            .expect("caller task panicked");
    }

    assert!(ok_before >= 5_000, "load ran before the kill");
    assert!(
        down,
        "n1 was never reported Down after SIGKILL: {:?}",
        c.nodes()
    );
    assert_eq!(n1_up_while_down, Some(false), "is_up(n1) while down");
    assert!(
        served_while_down,
        "other nodes kept serving while n1 was down"
    );
    assert!(
        up,
        "n1 was never reported Up after restart: {:?}",
        c.nodes()
    );
    assert_eq!(c.is_up("n1"), Some(true));
    assert_saw_n1_down_then_up(&watch).await;
    assert_eq!(
        tally.hung.load(Ordering::Relaxed),
        0,
        "callers hung: {:?}",
        hist.violations()
    );
    hist.assert_clean();

    // Recovered: every key can be written and read back exactly, on every node.
    final_round(&c, &hist, CALLERS, 6, "fo").await;
    hist.assert_clean();
    let (reads, hits) = hist.read_counts();
    assert!(
        reads > 1_000 && hits > 0,
        "the load read something: {reads} reads, {hits} hits"
    );
    let m = c.metrics();
    println!(
        "{} ok, {} node failures, {reads} reads ({hits} hits), metrics {m:?}",
        tally.ok.load(Ordering::Relaxed),
        tally.node_failures.load(Ordering::Relaxed)
    );
    assert!(m.reconnects >= 1, "the client reconnected to n1: {m:?}");
}

/// Waits (bounded) until the load has `target` successful operations; returns the count.
async fn wait_for_ops(tally: &Tally, target: u64) -> u64 {
    kit::eventually(Duration::from_secs(20), || {
        tally.ok.load(Ordering::Relaxed) >= target
    })
    .await;
    tally.ok.load(Ordering::Relaxed)
}

/// After recovery: every caller's keys are written with a fresh value and read back;
/// everything must succeed and return exactly what was written.
async fn final_round(c: &Client, hist: &History, callers: u64, keys: u64, prefix: &str) {
    for w in 0..callers {
        for k in 0..keys {
            let key = format!("{prefix}-w{w}-k{k}");
            // Before the new write: whatever is there must be a value of this key.
            let before = c
                .get(&key)
                .await
                .unwrap_or_else(|e| panic!("get {key} after recovery: {e}"));
            let _ = hist.check_read(key.as_bytes(), before.as_ref().map(|i| i.value.as_ref()));
            let value = History::value(&key, w, u64::MAX - k, 3);
            hist.begin_write(key.as_bytes(), &value);
            c.set(&key, &value, Expiry::Never)
                .await
                .unwrap_or_else(|e| panic!("set {key} after recovery: {e}"));
            hist.end_write(key.as_bytes(), &value, Outcome::Acked);
            let got = c
                .get(&key)
                .await
                .unwrap_or_else(|e| panic!("get {key} after recovery: {e}"));
            let _ = hist.check_read_exact(key.as_bytes(), got.as_ref().map(|i| i.value.as_ref()));
        }
    }
}

async fn redistribute_sends_a_down_nodes_keys_to_another_node(p: Protocol) {
    let mut cl = Cluster::start(3);
    let c = client_with(&cl, p, FailurePolicy::Redistribute, 8);
    let keys = keys_on_node(&cl, &c, "redis", 1, 10).await;
    let stay = keys_on_node(&cl, &c, "stay", 2, 3).await;
    kill_n1_and_see_it_down(&mut cl, &c, &keys[0]).await;
    for key in &keys {
        let v = format!("moved-{key}");
        c.set(key, &v, Expiry::Never)
            .await
            .unwrap_or_else(|e| panic!("set {key} with n1 down (Redistribute): {e}"));
        let got = c
            .get(key)
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        assert_eq!(
            got.map(|i| String::from_utf8_lossy(&i.value).into_owned()),
            Some(v.clone())
        );
        let on: Vec<usize> = [0, 2]
            .into_iter()
            .filter(|&i| raw::get(&cl[i].addr(), key).as_deref() == Some(&v))
            .collect();
        assert_eq!(
            on.len(),
            1,
            "{key} was written to exactly one live node: {on:?}"
        );
    }
    // Keys of the live nodes still go to their own node.
    for key in &stay {
        c.set(key, "still-n2", Expiry::Never).await.unwrap();
        assert_eq!(
            raw::get(&cl[2].addr(), key).as_deref(),
            Some("still-n2"),
            "{key} stays on n2"
        );
        assert!(raw::get(&cl[0].addr(), key).is_none(), "{key} not on n0");
    }
}

async fn fail_fast_returns_node_down_for_a_down_nodes_keys_only(p: Protocol) {
    let mut cl = Cluster::start(3);
    let c = client_with(&cl, p, FailurePolicy::FailFast, 8);
    let on1 = keys_on_node(&cl, &c, "ff1", 1, 5).await;
    let on0 = keys_on_node(&cl, &c, "ff0", 0, 5).await;
    kill_n1_and_see_it_down(&mut cl, &c, &on1[0]).await;
    let limit = OP_TIMEOUT + HANG_SLACK;
    for key in &on1 {
        let e = kit::no_hang("set on a down node", limit, c.set(key, "x", Expiry::Never))
            .await
            .expect_err("FailFast: a down node's key fails");
        assert!(
            matches!(&e, Error::NodeDown { node } if node == "n1"),
            "FailFast returns NodeDown{{n1}} (not a timeout): {e:?}"
        );
        let e = kit::no_hang("get on a down node", limit, c.get(key))
            .await
            .expect_err("get fails");
        assert!(
            matches!(&e, Error::NodeDown { node } if node == "n1"),
            "{e:?}"
        );
        assert!(
            raw::get(&cl[0].addr(), key).is_none() && raw::get(&cl[2].addr(), key).is_none(),
            "not redistributed"
        );
    }
    for key in &on0 {
        c.set(key, "fine", Expiry::Never)
            .await
            .expect("n0 still serves");
        assert!(c.get(key).await.unwrap().is_some());
    }
    // Back up: the same keys work again, on n1.
    cl[1].restart();
    assert!(
        kit::wait_state(&c, "n1", NodeState::Up, STATE_LIMIT).await,
        "n1 back Up: {:?}",
        c.nodes()
    );
    for key in &on1 {
        c.set(key, "back", Expiry::Never)
            .await
            .expect("n1 serves again");
        assert_eq!(raw::get(&cl[1].addr(), key).as_deref(), Some("back"));
    }
}

async fn retry_waits_for_a_down_node_to_come_back_within_the_timeout(p: Protocol) {
    let mut cl = Cluster::start(3);
    let c = kit::builder(&cl, p)
        .failure_policy(FailurePolicy::Retry)
        .operation_timeout(Duration::from_secs(5))
        .connect_timeout(OP_TIMEOUT)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .expect("client");
    let keys = keys_on_node(&cl, &c, "retry", 1, 3).await;
    kill_n1_and_see_it_down(&mut cl, &c, &keys[0]).await;
    // Operations on n1's keys wait for it rather than failing or moving elsewhere.
    let waiting: Vec<_> = keys
        .iter()
        .map(|key| {
            let (c, key) = (c.clone(), key.clone());
            tokio::spawn(async move {
                let r = c.set(&key, "after-retry", Expiry::Never).await;
                (key, r)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cl[1].restart();
    for t in waiting {
        let (key, r) = kit::no_hang("set waiting for n1", Duration::from_secs(5) + HANG_SLACK, t)
            .await
            .unwrap();
        r.unwrap_or_else(|e| panic!("{key}: Retry waits for n1 to come back (within 5 s): {e:?}"));
        assert_eq!(
            raw::get(&cl[1].addr(), &key).as_deref(),
            Some("after-retry"),
            "{key} on n1"
        );
        assert!(raw::get(&cl[0].addr(), &key).is_none() && raw::get(&cl[2].addr(), &key).is_none());
    }
    // A node that stays down: the wait ends with the operation timeout, not a hang.
    cl[1].kill();
    let short = kit::builder(&cl, p)
        .failure_policy(FailurePolicy::Retry)
        .operation_timeout(OP_TIMEOUT)
        .build()
        .expect("client");
    let e = kit::no_hang(
        "set on a dead node (Retry)",
        OP_TIMEOUT + HANG_SLACK,
        short.set(&keys[0], "x", Expiry::Never),
    )
    .await
    .expect_err("n1 never comes back");
    assert!(e.is_node_failure(), "{e:?}");
}

async fn stalled_node_times_out_only_its_own_operations_and_serves_again_after_sigcont(
    p: Protocol,
) {
    let mut cl = Cluster::start(3);
    // A threshold high enough that this test's few timeouts don't mark n1 down.
    let c = client_with(&cl, p, FailurePolicy::Redistribute, 1_000);
    let hist = History::new();
    let stalled_keys = keys_on_node(&cl, &c, "st1", 1, 8).await;
    let mut live_keys_on = keys_on_node(&cl, &c, "live0", 0, 4).await;
    live_keys_on.extend(keys_on_node(&cl, &c, "live2", 2, 4).await);
    for key in stalled_keys.iter().chain(&live_keys_on) {
        let v = History::value(key, 0, 1, 5);
        c.set(key, &v, Expiry::Never).await.unwrap();
        hist.write(key.as_bytes(), &v, Outcome::Acked);
    }

    cl[1].pause();
    let limit = OP_TIMEOUT + HANG_SLACK;
    // Concurrently: reads of the stalled node's keys and reads/writes on the live nodes.
    let mut stalled = Vec::new();
    for key in &stalled_keys {
        let c = c.clone();
        let key = key.clone();
        stalled.push(tokio::spawn(async move {
            let r = kit::no_hang("get on a stalled node", limit, c.get(&key)).await;
            (key, r)
        }));
    }
    for round in 0..20u64 {
        for key in &live_keys_on {
            let v = History::value(key, 0, 2 + round, 5);
            hist.begin_write(key.as_bytes(), &v);
            kit::no_hang("set on a live node", limit, c.set(key, &v, Expiry::Never))
                .await
                .unwrap_or_else(|e| panic!("{key} on a live node failed while n1 stalls: {e}"));
            hist.end_write(key.as_bytes(), &v, Outcome::Acked);
            let got = kit::no_hang("get on a live node", limit, c.get(key))
                .await
                .unwrap();
            let _ = hist.check_read_exact(key.as_bytes(), got.as_ref().map(|i| i.value.as_ref()));
        }
    }
    for t in stalled {
        let (key, r) = t.await.unwrap();
        let e = r.expect_err("a read from a stalled server can't succeed");
        assert!(
            matches!(&e, Error::Timeout { node, .. } if node == "n1"),
            "{key}: the stalled node's operation times out: {e:?}"
        );
    }
    // Writes to the stalled node time out too (their outcome is unknown).
    let pending_value = History::value(&stalled_keys[0], 9, 9, 5);
    hist.begin_write(stalled_keys[0].as_bytes(), &pending_value);
    let e = kit::no_hang(
        "set on a stalled node",
        limit,
        c.set(&stalled_keys[0], &pending_value, Expiry::Never),
    )
    .await
    .expect_err("a write to a stalled server can't be acknowledged");
    assert!(e.is_timeout(), "{e:?}");
    hist.end_write(stalled_keys[0].as_bytes(), &pending_value, Outcome::Unknown);

    cl[1].resume();
    // The replies to the timed-out requests now arrive; none may reach a later caller.
    let mut served = false;
    let deadline = Instant::now() + STATE_LIMIT;
    while Instant::now() < deadline && !served {
        served = matches!(c.get(&stalled_keys[1]).await, Ok(Some(_)));
        if !served {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(served, "n1 serves again after SIGCONT: {:?}", c.nodes());
    for (i, key) in stalled_keys.iter().enumerate() {
        let got = c
            .get(key)
            .await
            .unwrap_or_else(|e| panic!("{key} after SIGCONT: {e}"));
        let _ = hist.check_read_exact(key.as_bytes(), got.as_ref().map(|i| i.value.as_ref()));
        let v = History::value(key, 1, 100 + i as u64, 5);
        hist.begin_write(key.as_bytes(), &v);
        c.set(key, &v, Expiry::Never).await.unwrap();
        hist.end_write(key.as_bytes(), &v, Outcome::Acked);
        let got = c.get(key).await.unwrap();
        let _ = hist.check_read_exact(key.as_bytes(), got.as_ref().map(|i| i.value.as_ref()));
    }
    hist.assert_clean();
}

async fn consecutive_timeouts_mark_a_stalled_node_down_and_it_comes_back(p: Protocol) {
    let mut cl = Cluster::start(3);
    let c = client_with(&cl, p, FailurePolicy::FailFast, 3);
    let keys = keys_on_node(&cl, &c, "thr", 1, 6).await;
    let watch = kit::StateWatcher::start(&c);
    cl[1].pause();
    let limit = OP_TIMEOUT + HANG_SLACK;
    let mut kinds = Vec::new();
    for key in &keys {
        match kit::no_hang("get on a stalled node", limit, c.get(key)).await {
            Ok(v) => panic!("{key}: a stalled server answered {v:?}"),
            Err(e) => kinds.push(e),
        }
    }
    assert!(
        kinds[0].is_timeout(),
        "first failure is a timeout: {kinds:?}"
    );
    // A reconnect to a stopped process can succeed (the kernel accepts it), so the Down
    // window may be short: the watcher samples the state every 5 ms.
    assert!(
        watch.wait_saw("n1", NodeState::Down, STATE_LIMIT).await,
        "after {} timeouts (threshold 3) n1 is Down; states seen: {:?}; errors: {kinds:?}",
        keys.len(),
        watch.history("n1")
    );
    cl[1].resume();
    assert!(
        kit::wait_state(&c, "n1", NodeState::Up, STATE_LIMIT).await,
        "n1 Up again after SIGCONT: {:?}",
        c.nodes()
    );
    assert_saw_n1_down_then_up(&watch).await;
    for key in &keys {
        c.set(key, "again", Expiry::Never)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(raw::get(&cl[1].addr(), key).as_deref(), Some("again"));
    }
    let m = c.metrics();
    assert!(m.timeouts >= 3, "timeouts counted: {m:?}");
}
