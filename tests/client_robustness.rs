//! The client against odd-but-real situations: settings no connection can work with,
//! values larger than the client accepts, restarts, a driver that dies, memory bounds,
//! deadlines, and errors that say which node failed and why. Real memcached processes
//! unless the fault is one a real server can't produce.

mod kit;

use std::time::{Duration, Instant};

use kit::{Action, Cluster, FakeServer, Match, Memcached, Rule};
use memkeep::{Client, Error, Expiry, FailurePolicy, NodeState, Protocol};

/// Upper bound for one whole test case: a hung client fails the test instead of
/// hanging the run.
const CASE_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_refuses_settings_no_connection_can_work_with() {
    let m = Memcached::start();
    let base = || Client::builder().node(m.addr());
    for (builder, field) in [
        (base().max_in_flight(usize::MAX), "max_in_flight"),
        (base().max_value_size(usize::MAX), "max_value_size"),
    ] {
        match builder.build() {
            Err(Error::Config { field: f, reason }) => {
                assert_eq!(f, field);
                assert!(!reason.is_empty());
            }
            other => panic!("{field} of usize::MAX: expected a config error, got {other:?}"),
        }
    }
    // Extreme but workable durations build and work (no overflow computing a deadline).
    let c = base()
        .operation_timeout(Duration::MAX)
        .connect_timeout(Duration::MAX)
        .reconnect_backoff(Duration::MAX, Duration::MAX)
        .timeout_threshold(u32::MAX)
        .build()
        .expect("extreme durations are valid");
    kit::no_hang("set with Duration::MAX timeouts", CASE_LIMIT, async {
        c.set("k", "v", Expiry::Never).await.unwrap();
        assert_eq!(c.get("k").await.unwrap().unwrap().value, "v");
    })
    .await;
}

/// One node, default policy: the server dies, stays away long enough for the client's
/// reconnect backoff to grow (3 s), and comes back. The first operation after it accepts
/// connections again must reach it instead of failing because the client is still in
/// its backoff. Prints the time from "accepting again" to the first success (the number
/// docs/operations.md quotes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_operation_after_a_restart_reaches_the_server_despite_the_backoff() {
    kit::no_hang("restart", CASE_LIMIT, async {
        for protocol in kit::PROTOCOLS {
            let mut m = Memcached::start();
            let c = kit::client_for(&[m.addr()], protocol);
            c.set("before", "v", Expiry::Never).await.unwrap();
            m.kill();
            assert!(
                kit::wait_state(&c, "n0", NodeState::Down, Duration::from_secs(10)).await,
                "the client noticed the kill"
            );
            // No operation during the outage: the backoff grows undisturbed
            // (100 ms doubling: several attempts, the next one seconds away).
            tokio::time::sleep(Duration::from_secs(3)).await;
            m.restart();
            let back = Instant::now();
            let first = c.get("before").await;
            let took = back.elapsed();
            assert!(
                matches!(first, Ok(None)),
                "{protocol:?}: the first get after the restart: {first:?} (the restarted \
                 server is empty, so a miss)"
            );
            println!("{protocol:?}: first operation after the restart succeeded in {took:?}");
            c.set("after", "v", Expiry::Never).await.unwrap();
        }
    })
    .await;
}

/// Callers that keep asking for a dead node bring reconnect attempts forward, but never
/// closer than `backoff_min` apart: 200 callers hammering for a second cause a handful of
/// connection attempts, not hundreds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_during_a_backoff_do_not_cause_a_connect_storm() {
    // Every connection is closed before it can answer the `version` probe: each attempt
    // fails, and the fake counts them.
    let fake = FakeServer::with_rules(vec![Rule::new(Match::Accept, Action::Close)]).await;
    let min = Duration::from_millis(100);
    let c = kit::builder_for(&[fake.addr()], Protocol::Meta)
        .reconnect_backoff(min, Duration::from_secs(30))
        .build()
        .unwrap();
    assert!(kit::wait_state(&c, "n0", NodeState::Down, Duration::from_secs(10)).await);
    let before = fake.connections();
    let window = Duration::from_secs(1);
    let started = Instant::now();
    let callers = (0..200).map(|i| {
        let c = c.clone();
        tokio::spawn(async move {
            let mut errors = 0u32;
            while started.elapsed() < window {
                let e = c.get(format!("k{i}")).await.unwrap_err();
                assert!(e.is_node_failure(), "{e:?}");
                errors += 1;
                tokio::task::yield_now().await;
            }
            errors
        })
    });
    let calls: u32 = kit::no_hang("hammering callers", CASE_LIMIT, async {
        let mut sum = 0;
        for caller in futures::future::join_all(callers).await {
            sum += caller.unwrap();
        }
        sum
    })
    .await;
    let elapsed = started.elapsed();
    let attempts = fake.connections() - before;
    // Attempts start at least `min` apart, whatever the load: at most one per `min` of
    // the time the callers ran, plus the one under way when they started.
    let bound = (elapsed.as_millis() / min.as_millis()) as usize + 2;
    println!("{calls} failed calls over {elapsed:?} caused {attempts} connection attempts");
    assert!(
        attempts >= 1,
        "the callers' demand brought an attempt forward"
    );
    assert!(
        attempts <= bound,
        "{attempts} connection attempts in {elapsed:?}: more than one per {min:?}"
    );
}

/// Every node down: the error names each node, its address, its state and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_node_available_names_each_node_and_why() {
    let mut cluster = Cluster::start(2);
    let c = kit::client(&cluster, Protocol::Meta);
    assert!(kit::wait_all_up(&c, Duration::from_secs(10)).await);
    let addrs = cluster.addrs();
    cluster[0].kill();
    cluster[1].kill();
    for id in cluster.ids() {
        assert!(kit::wait_state(&c, &id, NodeState::Down, Duration::from_secs(10)).await);
    }
    let e = kit::no_hang("get with every node down", CASE_LIMIT, c.get("k"))
        .await
        .unwrap_err();
    let Error::NodesUnavailable { nodes } = &e else {
        panic!("expected NodesUnavailable, got {e:?}");
    };
    assert!(e.is_node_failure() && e.is_retryable());
    assert_eq!(nodes.len(), 2, "{e}");
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node.id, Cluster::id(i));
        assert_eq!(node.address, addrs[i]);
        assert_eq!(node.state, NodeState::Down);
        let why = node.last_error.as_deref().unwrap_or_default();
        assert!(!why.is_empty(), "{node:?} says why");
    }
    let shown = e.to_string();
    for (i, addr) in addrs.iter().enumerate() {
        assert!(
            shown.contains(&Cluster::id(i)) && shown.contains(addr.as_str()),
            "{shown}"
        );
    }
    assert!(shown.contains("down"), "{shown}");
    println!("{shown}");
}

/// `FailurePolicy::Retry` waits for a down node within the operation timeout; the wait
/// and the request share one deadline. The node comes back 1 to 1.5 s into a 3 s
/// operation and answers the request 2.5 s after receiving it: past the deadline, so the
/// operation times out (with a fresh timeout after the wait it would wrongly succeed,
/// having waited up to 4 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policy_waits_and_sends_within_one_deadline() {
    let fake = FakeServer::with_rules(vec![
        // The first connection fails: the node is down, its next attempt 0.5 to 1 s away.
        Rule::new(Match::Accept, Action::Close).once(),
        Rule::new(
            Match::Command("version".into()),
            Action::Delay(Duration::from_millis(500)),
        ),
        Rule::on_key("slow", Action::Delay(Duration::from_millis(2500))),
    ])
    .await;
    fake.preload("slow", "v", 0);
    let timeout = Duration::from_secs(3);
    let c = kit::builder_for(&[fake.addr()], Protocol::Meta)
        .failure_policy(FailurePolicy::Retry)
        .operation_timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .reconnect_backoff(Duration::from_secs(1), Duration::from_secs(1))
        .build()
        .unwrap();
    assert!(kit::wait_state(&c, "n0", NodeState::Down, Duration::from_secs(10)).await);
    let result = kit::no_hang("get under Retry", timeout + kit::HANG_SLACK, c.get("slow")).await;
    assert!(
        matches!(result, Err(Error::Timeout { after, .. }) if after == timeout),
        "the reply came after the operation's one deadline: {result:?}"
    );
    assert!(
        !fake.requests_containing("slow").is_empty(),
        "the request was sent once the node was back"
    );
}

/// A `/proc/self/status` field in KiB (VmRSS, VmHWM).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("read /proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// 3,000 concurrent sets of 512 KiB to a stopped server: the requests queued for its
/// connection are bounded in bytes (`max_queued_bytes`, 32 MiB by default) as well as in
/// count, so the client's peak memory grows by tens of MiB, not by the 512 MiB a
/// 1,024-request queue of such values would pin (722 MiB was measured before the bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_are_bounded_in_bytes_when_the_server_stalls() {
    let mut m = Memcached::start_with(&["-I", "1m"]);
    let c = kit::builder_for(&[m.addr()], Protocol::Meta)
        .operation_timeout(Duration::from_secs(3))
        .timeout_threshold(u32::MAX)
        .build()
        .unwrap();
    c.set("warm", "up", Expiry::Never).await.unwrap();
    // One shared value: the callers' own data is not what is measured, the client's
    // encoded copies are.
    let value = bytes::Bytes::from(vec![b'x'; 512 * 1024]);
    let baseline = status_kib("VmHWM").max(status_kib("VmRSS"));
    m.pause();
    let sets = (0..3000).map(|i| {
        let (c, value) = (c.clone(), value.clone());
        tokio::spawn(async move { c.set(format!("big{i}"), value, Expiry::Never).await })
    });
    let results = kit::no_hang("3000 sets to a stopped server", CASE_LIMIT, async {
        futures::future::join_all(sets).await
    })
    .await;
    let peak = status_kib("VmHWM");
    m.resume();
    let timeouts = results
        .into_iter()
        .map(|r| r.unwrap())
        .filter(|r| matches!(r, Err(Error::Timeout { .. })))
        .count();
    let grew_mib = peak.saturating_sub(baseline) / 1024;
    println!("peak memory grew by {grew_mib} MiB; {timeouts} of 3000 sets timed out");
    assert!(
        timeouts > 0,
        "the server was stopped: sets must have timed out"
    );
    assert!(
        grew_mib < 160,
        "peak memory grew by {grew_mib} MiB while the server was stopped: the queue is not \
         bounded in bytes"
    );
    // The connection recovers once the server answers again.
    let ok = kit::no_hang("set after resume", CASE_LIMIT, async {
        loop {
            if c.set("after", "v", Expiry::Never).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ok);
}
