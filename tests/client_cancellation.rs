//! The cancellation contract, against real memcached: dropping an operation at any
//! point (a timeout, a `select!`, or a future dropped after a random number of polls)
//! never hands its reply to another caller and never breaks the connection.
//!
//! Many tasks hammer their own keys with values that name the key and the writer; each
//! operation is cancelled at random. Afterwards, without cancellation, every read must
//! return a value written to that very key, and every operation must succeed. The run
//! is bounded in iterations and time and prints its seed (`MEMKEEP_TEST_SEED` replays it).

mod kit;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use kit::{Cluster, History, Outcome, Rng, HANG_SLACK};
use memkeep::{Client, Expiry, Protocol};

const TASKS: u64 = 48;
const ITERATIONS: u64 = 600;
const KEYS_PER_TASK: u64 = 4;
const OP_TIMEOUT: Duration = Duration::from_secs(2);
const LOAD_LIMIT: Duration = Duration::from_secs(90);

/// Polls the inner future at most `polls` times, then gives up and drops it: the
/// cancellation point is wherever the operation happened to be after that many polls
/// (before sending, sent and waiting, half-way through a multi-get...).
struct PollThenDrop<F: Future> {
    fut: Option<Pin<Box<F>>>,
    polls_left: u32,
}

impl<F: Future> PollThenDrop<F> {
    fn new(fut: F, polls: u32) -> Self {
        PollThenDrop {
            fut: Some(Box::pin(fut)),
            polls_left: polls,
        }
    }
}

impl<F: Future> Future for PollThenDrop<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls_left == 0 {
            self.fut = None; // dropped here, mid-flight
            return Poll::Ready(None);
        }
        self.polls_left -= 1;
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(None);
        };
        match fut.as_mut().poll(cx) {
            Poll::Ready(v) => {
                self.fut = None;
                Poll::Ready(Some(v))
            }
            Poll::Pending => {
                // Come back soon, whether or not the operation woke us.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

/// Runs `fut` under a randomly chosen cancellation: none, a timeout of 0-1000 us, a
/// `select!` against a short sleep, or dropped after 0-4 polls. `None` = cancelled.
async fn maybe_cancel<F: Future>(rng: &mut Rng, fut: F) -> Option<F::Output> {
    let limit = OP_TIMEOUT + HANG_SLACK;
    match rng.below(4) {
        0 => Some(kit::no_hang("uncancelled op", limit, fut).await),
        1 => tokio::time::timeout(Duration::from_micros(rng.below(1000)), fut)
            .await
            .ok(),
        2 => {
            let sleep = tokio::time::sleep(Duration::from_micros(rng.below(1500)));
            tokio::select! {
                v = fut => Some(v),
                _ = sleep => None,
            }
        }
        _ => PollThenDrop::new(fut, rng.below(5) as u32).await,
    }
}

#[derive(Default)]
struct Counts {
    completed: AtomicU64,
    cancelled: AtomicU64,
}

fn key(task: u64, k: u64) -> String {
    format!("cx-t{task}-k{k}")
}

async fn hammer(
    c: Client,
    task: u64,
    seed: u64,
    hist: History,
    counts: Arc<Counts>,
    deadline: Instant,
) {
    let mut rng = Rng::new(seed ^ (task + 1).wrapping_mul(0x9E37_79B9));
    for i in 0..ITERATIONS {
        if Instant::now() >= deadline {
            hist.violation(format!(
                "task {task}: load deadline reached at iteration {i}"
            ));
            return;
        }
        let k = key(task, rng.below(KEYS_PER_TASK));
        match rng.below(3) {
            0 => {
                let value = History::value(&k, task, i, rng.below(300) as usize);
                hist.begin_write(k.as_bytes(), &value);
                match maybe_cancel(&mut rng, c.set(&k, &value, Expiry::Never)).await {
                    Some(Ok(())) => {
                        hist.end_write(k.as_bytes(), &value, Outcome::Acked);
                        counts.completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Err(e)) => {
                        hist.end_write(k.as_bytes(), &value, Outcome::Unknown);
                        hist.violation(format!("set {k} failed with no fault injected: {e:?}"));
                    }
                    None => {
                        hist.end_write(k.as_bytes(), &value, Outcome::Unknown);
                        counts.cancelled.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            1 => match maybe_cancel(&mut rng, c.get(&k)).await {
                Some(Ok(item)) => {
                    let _ = hist.check_read(k.as_bytes(), item.as_ref().map(|i| i.value.as_ref()));
                    counts.completed.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(e)) => {
                    hist.violation(format!("get {k} failed with no fault injected: {e:?}"))
                }
                None => {
                    counts.cancelled.fetch_add(1, Ordering::Relaxed);
                }
            },
            _ => {
                let keys: Vec<String> = (0..KEYS_PER_TASK).map(|n| key(task, n)).collect();
                match maybe_cancel(&mut rng, c.get_many(&keys)).await {
                    Some(Ok(map)) => {
                        for (got_key, item) in &map {
                            if !keys.iter().any(|k| k.as_bytes() == got_key.as_slice()) {
                                hist.violation(format!(
                                    "get_many of task {task} returned a key it did not ask for: {:?}",
                                    String::from_utf8_lossy(got_key)
                                ));
                            }
                            let _ = hist.check_read(got_key, Some(item.value.as_ref()));
                        }
                        counts.completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Err(e)) => {
                        hist.violation(format!("get_many failed with no fault injected: {e:?}"))
                    }
                    None => {
                        counts.cancelled.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

async fn cancelled_operations_never_deliver_replies_to_other_callers(
    p: Protocol,
    merge_gets: bool,
) {
    let seed = Rng::seed_from_env();
    println!("seed {seed} (MEMKEEP_TEST_SEED={seed} replays the choices)");
    let cl = Cluster::start(2);
    let c = kit::builder(&cl, p)
        .operation_timeout(OP_TIMEOUT)
        .merge_gets(merge_gets)
        .build()
        .expect("client");
    let hist = History::new();
    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + LOAD_LIMIT;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            tokio::spawn(hammer(
                c.clone(),
                t,
                seed,
                hist.clone(),
                counts.clone(),
                deadline,
            ))
        })
        .collect();
    for t in tasks {
        kit::no_hang("cancellation task", LOAD_LIMIT + HANG_SLACK, t)
            .await
            .expect("task panicked");
    }
    let (completed, cancelled) = (
        counts.completed.load(Ordering::Relaxed),
        counts.cancelled.load(Ordering::Relaxed),
    );
    println!("{completed} operations completed, {cancelled} cancelled");
    hist.assert_clean();
    assert!(
        cancelled >= 500,
        "the test must actually cancel operations: {cancelled} cancelled"
    );
    assert!(completed >= 500, "and complete some: {completed} completed");

    // Every cancelled request's reply is eventually read and thrown away.
    let drained = kit::eventually(Duration::from_secs(10), || c.metrics().in_flight == 0).await;
    assert!(
        drained,
        "requests still in flight long after the load: {:?} / {:?}",
        c.metrics(),
        c.nodes()
    );

    // Without cancellation: every key holds one of its own values, and the connections
    // still work: a full round of writes and exact reads succeeds.
    for t in 0..TASKS {
        for k in 0..KEYS_PER_TASK {
            let key = key(t, k);
            let got = c
                .get(&key)
                .await
                .unwrap_or_else(|e| panic!("final get {key}: {e}"));
            let _ = hist.check_read(key.as_bytes(), got.as_ref().map(|i| i.value.as_ref()));
            let value = History::value(&key, t, u64::MAX, 7);
            c.set(&key, &value, Expiry::Never)
                .await
                .unwrap_or_else(|e| panic!("final set {key}: {e}"));
            hist.write(key.as_bytes(), &value, Outcome::Acked);
        }
    }
    let all: Vec<String> = (0..TASKS)
        .flat_map(|t| (0..KEYS_PER_TASK).map(move |k| key(t, k)))
        .collect();
    let many = c.get_many(&all).await.expect("final get_many");
    assert_eq!(
        many.len(),
        all.len(),
        "every key written in the final round is there"
    );
    for key in &all {
        let _ = hist.check_read_exact(
            key.as_bytes(),
            many.get(key.as_bytes()).map(|i| i.value.as_ref()),
        );
    }
    hist.assert_clean();
    let m = c.metrics();
    assert_eq!(
        m.protocol_errors, 0,
        "no protocol error after cancellations: {m:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_operations_never_deliver_replies_to_other_callers_meta() {
    cancelled_operations_never_deliver_replies_to_other_callers(Protocol::Meta, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_merged_gets_never_deliver_replies_to_other_callers_meta() {
    cancelled_operations_never_deliver_replies_to_other_callers(Protocol::Meta, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_operations_never_deliver_replies_to_other_callers_text() {
    cancelled_operations_never_deliver_replies_to_other_callers(Protocol::Text, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_merged_gets_never_deliver_replies_to_other_callers_text() {
    cancelled_operations_never_deliver_replies_to_other_callers(Protocol::Text, true).await
}

/// The checker the load tests rely on must be able to fail: a value of another key, a
/// value nobody wrote, an overwritten value or a lost acknowledged write are caught.
#[test]
fn history_checker_detects_misdelivered_unwritten_and_stale_values() {
    let h = History::new();
    let a1 = History::value("a", 1, 1, 4);
    let b1 = History::value("b", 2, 1, 4);
    h.write(b"a", &a1, Outcome::Acked);
    h.write(b"b", &b1, Outcome::Acked);
    assert!(h.check_read_exact(b"a", Some(&a1)).is_ok());
    assert!(
        h.check_read(b"a", None).is_ok(),
        "after failures a miss is allowed"
    );
    let e = h.check_read(b"a", Some(&b1)).unwrap_err();
    assert!(e.contains("wrong caller"), "{e}");
    assert!(
        h.check_read(b"a", Some(b"a|w9|s9|")).is_err(),
        "nobody wrote it"
    );
    let a2 = History::value("a", 1, 2, 4);
    h.write(b"a", &a2, Outcome::Acked);
    assert!(
        h.check_read(b"a", Some(&a1)).is_ok(),
        "after failures an older value is possible"
    );
    assert!(
        h.check_read_exact(b"a", Some(&a1)).is_err(),
        "without failure it is stale"
    );
    assert!(
        h.check_read_exact(b"a", None).is_err(),
        "without failure a miss loses a write"
    );
    let a3 = History::value("a", 1, 3, 4);
    h.write(b"a", &a3, Outcome::Unknown);
    assert!(
        h.check_read_exact(b"a", Some(&a3)).is_ok(),
        "an unknown write may be there"
    );
    assert!(h.check_read_exact(b"a", Some(&a2)).is_ok(), "or not");
    assert_eq!(h.violations().len(), 4);
    let caught = std::panic::catch_unwind(|| h.assert_clean());
    assert!(caught.is_err(), "assert_clean fails on violations");
}
