//! Cache-stampede protection against real memcached: the meta protocol's recache flags
//! (vivify on miss, recache threshold, invalidation) as the server sends them, and
//! `Client::get_or_compute` under a thousand concurrent callers, early recache, a
//! cancelled winner and random drops. Every test is bounded in time and asserts counts
//! and values, never durations.

mod kit;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kit::{Cluster, Rng};
use memkeep::{
    Client, ComputeError, ComputeOptions, ComputeSource, Computed, Error, Expiry, GetOptions,
    Protocol,
};

/// Bound of each test's waits: generous (a loaded 2-core machine), never asserted on.
const LIMIT: Duration = Duration::from_secs(45);

/// Counts computations: how many started, finished, and were running at once at most.
#[derive(Debug, Default)]
struct Counter {
    started: AtomicUsize,
    finished: AtomicUsize,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

/// Marks one computation as running until dropped (completed or cancelled).
struct Running(Arc<Counter>);

impl Running {
    fn start(counter: &Arc<Counter>) -> Running {
        counter.started.fetch_add(1, Ordering::SeqCst);
        let now = counter.running.fetch_add(1, Ordering::SeqCst) + 1;
        counter.max_running.fetch_max(now, Ordering::SeqCst);
        Running(counter.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Counter {
    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
    fn finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }
    fn max_running(&self) -> usize {
        self.max_running.load(Ordering::SeqCst)
    }

    /// A computation that takes `work` and returns `v<n>`, `n` its start number.
    fn compute(
        self: &Arc<Self>,
        work: Duration,
    ) -> impl FnOnce() -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Bytes, std::io::Error>> + Send>,
    > + Send
           + 'static {
        let counter = self.clone();
        move || {
            Box::pin(async move {
                let running = Running::start(&counter);
                let n = counter.started();
                tokio::time::sleep(work).await;
                counter.finished.fetch_add(1, Ordering::SeqCst);
                drop(running);
                Ok(Bytes::from(format!("v{n}")))
            })
        }
    }
}

fn options() -> ComputeOptions {
    ComputeOptions {
        expiry: Expiry::In(Duration::from_secs(60)),
        placeholder_ttl: Duration::from_secs(2),
        max_wait: Duration::from_secs(20),
        ..ComputeOptions::default()
    }
}

fn meta_client(cluster: &Cluster) -> Client {
    kit::builder(cluster, Protocol::Meta)
        .operation_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Runs `callers` concurrent `get_or_compute`s of `key`, each computing with `work`.
async fn stampede(
    client: &Client,
    key: &str,
    callers: usize,
    counter: &Arc<Counter>,
    work: Duration,
) -> Vec<Computed> {
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, key, compute) = (client.clone(), key.to_string(), counter.compute(work));
            tokio::spawn(async move { client.get_or_compute(key, &options(), compute).await })
        })
        .collect();
    let mut out = Vec::with_capacity(callers);
    for task in tasks {
        let result = kit::no_hang("a stampede caller", LIMIT, task)
            .await
            .unwrap();
        out.push(result.unwrap_or_else(|e| panic!("caller failed: {e}")));
    }
    out
}

fn count(results: &[Computed], source: ComputeSource) -> usize {
    results.iter().filter(|r| r.source == source).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recache_flags_are_read_as_memcached_sends_them() {
    let cluster = Cluster::start(1);
    let client = meta_client(&cluster);
    let vivify = GetOptions {
        vivify_on_miss: Some(Duration::from_secs(30)),
        ..GetOptions::default()
    };
    // A miss with N: the empty placeholder, won by the first reader only.
    let first = client.get_with("k", vivify).await.unwrap().unwrap();
    assert!(first.value.is_empty() && first.recache.win && !first.recache.already_won);
    let cas = first.cas.expect("a CAS token with the recache flags");
    let second = client.get_with("k", vivify).await.unwrap().unwrap();
    assert!(second.value.is_empty() && !second.recache.win && second.recache.already_won);
    // A plain get sees the placeholder too (empty, already won).
    let plain = client.get("k").await.unwrap().unwrap();
    assert!(plain.value.is_empty() && plain.recache.already_won && plain.cas.is_none());
    // The winner's CAS store replaces it and clears the flags.
    let ttl = Expiry::In(Duration::from_secs(60));
    assert_eq!(
        client.cas("k", "v1", ttl, cas).await.unwrap(),
        memkeep::CasOutcome::Stored
    );
    let stored = client.get_with("k", vivify).await.unwrap().unwrap();
    assert_eq!(stored.value, "v1");
    assert_eq!(stored.recache, memkeep::RecacheFlags::default());
    // Invalidation keeps the value, marks it stale, wins once, bumps the CAS token.
    assert!(client.invalidate("k", Some(ttl)).await.unwrap());
    let won = client.get_with("k", vivify).await.unwrap().unwrap();
    assert!(won.value == "v1" && won.recache.stale && won.recache.win);
    assert_ne!(won.cas, stored.cas);
    let lost = client.get_with("k", vivify).await.unwrap().unwrap();
    assert!(lost.value == "v1" && lost.recache.stale && lost.recache.already_won);
    assert!(!lost.recache.win);
    // A store with a CAS token from before the invalidation is refused.
    assert_eq!(
        client.cas("k", "old", ttl, cas).await.unwrap(),
        memkeep::CasOutcome::Exists
    );
    // Invalidating a missing key says so.
    assert!(!client.invalidate("absent", None).await.unwrap());
    // Any meta read takes the win of an invalidated item, a plain `get` included (the
    // text `get` does not): get_or_compute callers then serve the stale value, and
    // nobody recomputes it, until the item's stale TTL ends (documented caveat).
    client.set("p", "old", ttl).await.unwrap();
    assert!(client.invalidate("p", None).await.unwrap());
    let plain = client.get("p").await.unwrap().unwrap();
    assert!(plain.recache.win && plain.recache.stale, "{plain:?}");
    let counter = Arc::new(Counter::default());
    let served = client
        .get_or_compute("p", &options(), counter.compute(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (served.value.as_ref(), served.source),
        (&b"old"[..], ComputeSource::Stale)
    );
    assert_eq!(counter.started(), 0);
    // The recache threshold: a hit whose remaining TTL is below it wins, once.
    client
        .set("r", "v", Expiry::In(Duration::from_secs(30)))
        .await
        .unwrap();
    let recache = |secs| GetOptions {
        recache_below: Some(Duration::from_secs(secs)),
        ..GetOptions::default()
    };
    let early = client.get_with("r", recache(10)).await.unwrap().unwrap();
    assert!(
        !early.recache.win && !early.recache.already_won,
        "{early:?}"
    );
    let win = client.get_with("r", recache(60)).await.unwrap().unwrap();
    assert!(win.value == "v" && win.recache.win && !win.recache.stale);
    let after = client.get_with("r", recache(60)).await.unwrap().unwrap();
    assert!(after.recache.already_won && !after.recache.win);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_on_an_expired_key_compute_it_once() {
    let cluster = Cluster::start(1);
    let client = meta_client(&cluster);
    client
        .set("hot", "v0", Expiry::In(Duration::from_secs(1)))
        .await
        .unwrap();
    let addr = cluster.addrs()[0].clone();
    assert!(
        kit::eventually(LIMIT, || kit::memcached::raw::get(&addr, "hot").is_none()).await,
        "the key never expired"
    );
    let counter = Arc::new(Counter::default());
    let results = stampede(&client, "hot", 1000, &counter, Duration::from_millis(200)).await;
    assert_eq!(counter.started(), 1, "recomputations");
    assert_eq!(count(&results, ComputeSource::Computed), 1);
    // No stale value exists after an expiry: everyone gets the one computed value.
    assert!(results.iter().all(|r| r.value == "v1"), "{results:?}");
    assert_eq!(count(&results, ComputeSource::Stale), 0);
    println!(
        "awaited {}, hit {}",
        count(&results, ComputeSource::Awaited),
        count(&results, ComputeSource::Hit)
    );
    assert_eq!(client.get("hot").await.unwrap().unwrap().value, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_on_an_invalidated_key_serve_stale_while_one_computes() {
    let cluster = Cluster::start(1);
    let client = meta_client(&cluster);
    client.set("hot", "v0", Expiry::Never).await.unwrap();
    assert!(client
        .invalidate("hot", Some(Expiry::In(Duration::from_secs(60))))
        .await
        .unwrap());
    // The winner's computation ends only once every other caller has returned: they
    // can only have been served the stale value.
    let others_done = Arc::new(tokio::sync::Semaphore::new(0));
    let computations = Arc::new(AtomicUsize::new(0));
    let callers = 1000;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, done, computations) =
                (client.clone(), others_done.clone(), computations.clone());
            tokio::spawn(async move {
                let gate = done.clone();
                let result = client
                    .get_or_compute("hot", &options(), move || async move {
                        computations.fetch_add(1, Ordering::SeqCst);
                        let _all = gate.acquire_many(callers as u32 - 1).await;
                        Ok::<_, std::io::Error>("v1")
                    })
                    .await;
                if matches!(&result, Ok(r) if r.source != ComputeSource::Computed) {
                    done.add_permits(1);
                }
                result
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        let result = kit::no_hang("a stampede caller", LIMIT, task)
            .await
            .unwrap();
        results.push(result.unwrap());
    }
    assert_eq!(computations.load(Ordering::SeqCst), 1, "recomputations");
    assert_eq!(count(&results, ComputeSource::Computed), 1);
    assert_eq!(count(&results, ComputeSource::Stale), callers - 1);
    for r in &results {
        let expected = if r.source == ComputeSource::Stale {
            "v0"
        } else {
            "v1"
        };
        assert_eq!(r.value, expected, "{r:?}");
    }
    let now = client.get("hot").await.unwrap().unwrap();
    assert_eq!(now.value, "v1");
    assert!(
        !now.recache.stale,
        "the winner's store clears the stale mark"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_recache_refreshes_before_expiry_with_one_recomputation() {
    let cluster = Cluster::start(1);
    let client = meta_client(&cluster);
    let options = ComputeOptions {
        expiry: Expiry::In(Duration::from_secs(8)),
        recache_below: Some(Duration::from_secs(6)),
        ..options()
    };
    let counter = Arc::new(Counter::default());
    let first = client
        .get_or_compute("soon", &options, counter.compute(Duration::from_millis(50)))
        .await
        .unwrap();
    assert_eq!(
        (first.value.as_ref(), first.source),
        (&b"v1"[..], ComputeSource::Computed)
    );
    // Read with 20 concurrent callers at a time until the refreshed value shows.
    let mut seen = Vec::new();
    let refreshed = kit::no_hang("waiting for the refresh", LIMIT, async {
        loop {
            let reads: Vec<_> = (0..20)
                .map(|_| {
                    let (client, compute) = (client.clone(), counter.compute(Duration::ZERO));
                    tokio::spawn(
                        async move { client.get_or_compute("soon", &options, compute).await },
                    )
                })
                .collect();
            for read in reads {
                seen.push(read.await.unwrap().unwrap());
            }
            if seen.iter().any(|r| r.value == "v2") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    refreshed.await;
    assert_eq!(
        counter.started(),
        2,
        "the first computation and one refresh"
    );
    assert_eq!(
        count(&seen, ComputeSource::Refreshing),
        1,
        "one early-recache win"
    );
    // Nobody ever missed: every read got the old or the refreshed value, the
    // refresh came before the expiry.
    assert_eq!(count(&seen, ComputeSource::Computed), 0);
    assert!(seen.iter().all(|r| r.value == "v1" || r.value == "v2"));
    let refreshing = seen
        .iter()
        .find(|r| r.source == ComputeSource::Refreshing)
        .unwrap();
    assert_eq!(
        refreshing.value, "v1",
        "the winner gets the current value at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_winner_that_never_stores_holds_others_up_only_for_the_placeholder_ttl() {
    let cluster = Cluster::start(1);
    let client = meta_client(&cluster);
    // Another process wins the placeholder, then dies: it never stores nor hands back.
    let won = client
        .get_with(
            "orphan",
            GetOptions {
                vivify_on_miss: Some(Duration::from_secs(2)),
                ..GetOptions::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(won.recache.win);
    let counter = Arc::new(Counter::default());
    let results = stampede(&client, "orphan", 50, &counter, Duration::from_millis(20)).await;
    assert_eq!(
        counter.started(),
        1,
        "one caller won once the placeholder expired"
    );
    assert_eq!(count(&results, ComputeSource::Computed), 1);
    assert!(results.iter().all(|r| r.value == "v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_winner_cancelled_mid_computation_lets_another_caller_win() {
    let cluster = Cluster::start(1);
    let client = meta_client(&cluster);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let winner = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .get_or_compute("k", &options(), move || async move {
                    let _ = started_tx.send(());
                    std::future::pending::<Result<Bytes, std::io::Error>>().await
                })
                .await
        })
    };
    kit::no_hang("the first winner starting", LIMIT, started_rx)
        .await
        .unwrap();
    let counter = Arc::new(Counter::default());
    let waiters = {
        let (client, counter) = (client.clone(), counter.clone());
        tokio::spawn(async move {
            stampede(&client, "k", 50, &counter, Duration::from_millis(20)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    winner.abort();
    assert!(winner.await.unwrap_err().is_cancelled());
    let results = kit::no_hang("the waiters", LIMIT, waiters).await.unwrap();
    assert_eq!(counter.started(), 1, "exactly one waiter took over");
    assert_eq!(count(&results, ComputeSource::Computed), 1);
    assert!(results.iter().all(|r| r.value == "v1"), "{results:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_drops_never_let_two_callers_compute_at_once() {
    let seed = Rng::seed_from_env();
    println!("MEMKEEP_TEST_SEED={seed}");
    let mut rng = Rng::new(seed);
    let cluster = Cluster::start(1);
    let client = meta_client(&cluster);
    let counter = Arc::new(Counter::default());
    let work = Duration::from_millis(100);
    for (round, key) in ["expired", "invalidated"].into_iter().enumerate() {
        if round == 1 {
            client.set(key, "v0", Expiry::Never).await.unwrap();
            client.invalidate(key, None).await.unwrap();
        }
        let before = counter.finished();
        let mut survivors = Vec::new();
        let mut dropped = Vec::new();
        for i in 0..300 {
            let (client, compute) = (client.clone(), counter.compute(work));
            // Drops come sooner than any computation ends: a dropped winner never stores.
            let drop_after = rng
                .chance(60)
                .then(|| Duration::from_micros(rng.below(90_000)));
            let start_after = Duration::from_micros(rng.below(50_000));
            let task = tokio::spawn(async move {
                tokio::time::sleep(start_after).await;
                let options = options();
                let call = client.get_or_compute(key, &options, compute);
                match drop_after {
                    Some(after) => tokio::time::timeout(after, call).await.ok(),
                    None => Some(call.await),
                }
            });
            if drop_after.is_some() {
                dropped.push(task);
            } else {
                survivors.push((i, task));
            }
        }
        let mut values = std::collections::BTreeSet::new();
        for (i, task) in survivors {
            let result = kit::no_hang("a surviving caller", LIMIT, task)
                .await
                .unwrap();
            match result {
                Some(Ok(r)) => {
                    if round == 0 || r.source != ComputeSource::Stale {
                        values.insert(r.value);
                    } else {
                        assert_eq!(r.value, "v0");
                    }
                }
                other => panic!("caller {i}: {other:?}"),
            }
        }
        for task in dropped {
            if let Some(result) = kit::no_hang("a dropped caller", LIMIT, task).await.unwrap() {
                let r = result.unwrap();
                assert!(r.value != "v0" || r.source == ComputeSource::Stale, "{r:?}");
            }
        }
        // A last reader that won't take a stale value: it gets the computed one, or
        // computes it if every winner so far was dropped.
        let closing = ComputeOptions {
            serve_stale: false,
            ..options()
        };
        let last = kit::no_hang(
            "the closing reader",
            LIMIT,
            client.get_or_compute(key, &closing, counter.compute(work)),
        )
        .await
        .unwrap();
        values.insert(last.value);
        assert_eq!(counter.max_running(), 1, "two computations at once");
        assert_eq!(counter.finished() - before, 1, "one computation completed");
        assert_eq!(
            values.len(),
            1,
            "survivors saw one computed value: {values:?}"
        );
        let stored = client.get(key).await.unwrap().unwrap().value;
        assert!(values.contains(&stored), "{stored:?} vs {values:?}");
        println!("{key}: computations started {}", counter.started());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_across_nodes_are_each_computed_once() {
    let cluster = Cluster::start(3);
    let client = meta_client(&cluster);
    let counters: Vec<Arc<Counter>> = (0..30).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for (k, counter) in counters.iter().enumerate() {
        for _ in 0..30 {
            let (client, compute) = (client.clone(), counter.compute(Duration::from_millis(50)));
            tasks.push(tokio::spawn(async move {
                let key = format!("key:{k}");
                (k, client.get_or_compute(key, &options(), compute).await)
            }));
        }
    }
    for task in tasks {
        let (k, result) = kit::no_hang("a caller", LIMIT, task).await.unwrap();
        assert_eq!(result.unwrap().value, "v1", "key {k}");
    }
    assert!(counters.iter().all(|c| c.started() == 1));
    // The keys are spread over the nodes: each holds some.
    for addr in cluster.addrs() {
        assert!(
            kit::memcached::raw::curr_items(&addr) > 0,
            "{addr} holds no key"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_follows_the_failure_policy() {
    let mut cluster = Cluster::start(3);
    let redistribute = meta_client(&cluster);
    let fail_fast = kit::builder(&cluster, Protocol::Meta)
        .failure_policy(memkeep::FailurePolicy::FailFast)
        .operation_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(kit::wait_all_up(&redistribute, LIMIT).await);
    assert!(kit::wait_all_up(&fail_fast, LIMIT).await);
    cluster.nodes[1].kill();
    for client in [&redistribute, &fail_fast] {
        assert!(
            kit::wait_state(client, "n1", memkeep::NodeState::Down, LIMIT).await,
            "{:?}",
            client.nodes()
        );
    }
    // Redistribute: every key, n1's included, is computed once on a live node.
    let counters: Vec<Arc<Counter>> = (0..30).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for (k, counter) in counters.iter().enumerate() {
        for _ in 0..20 {
            let (client, compute) = (
                redistribute.clone(),
                counter.compute(Duration::from_millis(30)),
            );
            tasks.push(tokio::spawn(async move {
                client
                    .get_or_compute(format!("key:{k}"), &options(), compute)
                    .await
            }));
        }
    }
    for task in tasks {
        let result = kit::no_hang("a caller", LIMIT, task).await.unwrap();
        assert_eq!(result.unwrap().value, "v1");
    }
    assert!(counters.iter().all(|c| c.started() == 1));
    // FailFast: keys of the dead node fail without computing; the others are served.
    let (mut refused, mut served) = (0, 0);
    for k in 0..30 {
        let counter = Arc::new(Counter::default());
        let key = format!("other:{k}");
        match fail_fast
            .get_or_compute(key, &options(), counter.compute(Duration::ZERO))
            .await
        {
            Err(ComputeError::Cache(e)) if e.is_node_failure() => {
                assert_eq!(counter.started(), 0);
                refused += 1;
            }
            Ok(r) => {
                assert_eq!((r.value.as_ref(), counter.started()), (&b"v1"[..], 1));
                served += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        refused > 0 && served > 0,
        "refused {refused}, served {served}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_protocol_mode_is_refused_before_anything_is_sent() {
    let cluster = Cluster::start(1);
    let client = kit::client(&cluster, Protocol::Text);
    let counter = Arc::new(Counter::default());
    let refused = client
        .get_or_compute("k", &options(), counter.compute(Duration::ZERO))
        .await;
    assert!(
        matches!(
            refused,
            Err(ComputeError::Cache(Error::MetaProtocolRequired(_)))
        ),
        "{refused:?}"
    );
    assert_eq!(counter.started(), 0, "compute never ran");
    let vivify = GetOptions {
        vivify_on_miss: Some(Duration::from_secs(5)),
        ..GetOptions::default()
    };
    assert!(matches!(
        client.get_with("k", vivify).await,
        Err(Error::MetaProtocolRequired(_))
    ));
    assert!(matches!(
        client.invalidate("k", None).await,
        Err(Error::MetaProtocolRequired(_))
    ));
    // Nothing reached the server: no placeholder was created.
    assert_eq!(client.get("k").await.unwrap(), None);
    // Plain options still work in text mode.
    client.set("k", "v", Expiry::Never).await.unwrap();
    let gets = GetOptions {
        cas: true,
        ..GetOptions::default()
    };
    let item = client.get_with("k", gets).await.unwrap().unwrap();
    assert!(item.value == "v" && item.cas.is_some());
}
