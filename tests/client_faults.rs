//! Faults a real memcached can't produce, through the kit's scripted FakeServer:
//! garbage, half replies, silence, half-closed sockets, absurd lengths, slow answers.
//!
//! Operation timeouts are enforced by the connection driver (one timer per connection,
//! from the deadlines of the callers it holds) rather than by a timer per call: the
//! `*_deadline*` tests check that every caller gets `Error::Timeout` at its own deadline
//! wherever its request is (written and awaiting a reply, held by the driver while the
//! window is full or the connection is being made, or waiting for a place in the queue),
//! that each timeout is counted once, and that the connection is dropped after
//! `timeout_threshold` of them as before.
//!
//! The fake behaves like memcached except for the requests a rule picks (by key), so
//! each test injects one fault into an otherwise working connection and then checks
//! that (1) the faulty operation fails with the right error kind, (2) no caller waits
//! past its timeout plus slack, and (3) the client recovers and later operations work.

mod kit;

use std::time::{Duration, Instant};

use kit::{Action, FakeServer, History, Match, Rule, HANG_SLACK};
use memkeep::{Client, ClientBuilder, Error, Expiry, Protocol};

const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// No caller may wait longer than this: its timeout plus generous slack.
const LIMIT: Duration = OP_TIMEOUT.saturating_add(HANG_SLACK);
/// How long the client may take to reconnect and serve again after a fault.
const RECOVERY: Duration = Duration::from_secs(15);

macro_rules! both_protocols {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn meta() {
                crate::kit::no_hang(concat!(stringify!($name), " (meta)"), std::time::Duration::from_secs(90),
                    super::$name(memkeep::Protocol::Meta)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn text() {
                crate::kit::no_hang(concat!(stringify!($name), " (text)"), std::time::Duration::from_secs(90),
                    super::$name(memkeep::Protocol::Text)).await
            }
        }
    )*};
}

both_protocols!(
    garbage_reply_fails_that_operation_with_a_protocol_error_and_later_operations_work,
    reply_of_the_wrong_kind_is_a_protocol_error,
    half_a_reply_then_close_fails_without_hanging_and_the_client_reconnects,
    server_that_never_answers_times_out_and_the_client_recovers,
    server_that_accepts_but_never_answers_fails_without_hanging,
    half_closed_socket_fails_in_flight_operations_and_the_client_reconnects,
    half_closed_socket_at_accept_is_survived,
    reply_claiming_a_huge_value_length_is_a_protocol_error_not_an_allocation,
    error_lines_map_to_their_error_kinds_and_the_connection_goes_on,
    slow_reply_within_the_timeout_succeeds,
    late_reply_to_a_timed_out_request_is_not_delivered_to_the_next_caller,
    each_caller_times_out_at_its_own_deadline_and_the_stalled_connection_is_dropped,
    callers_waiting_for_room_in_the_queue_time_out_at_their_deadline,
    requests_queued_while_the_connection_is_made_time_out_at_their_deadline,
    a_caller_that_gave_up_is_not_counted_as_a_timeout_past_its_deadline,
);

fn builder(fake: &FakeServer, p: Protocol) -> ClientBuilder {
    kit::builder_for(&[fake.addr()], p)
        .operation_timeout(OP_TIMEOUT)
        .connect_timeout(OP_TIMEOUT)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

fn client(fake: &FakeServer, p: Protocol) -> Client {
    builder(fake, p)
        .timeout_threshold(2)
        .build()
        .expect("client for the fake server")
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Retries `get key` (bounded) until it answers; node failures while the client
/// reconnects are expected, other errors are not. Returns the value.
async fn get_after_recovery(c: &Client, key: &str) -> Option<String> {
    let deadline = Instant::now() + RECOVERY;
    loop {
        match kit::no_hang("get during recovery", LIMIT, c.get(key)).await {
            Ok(v) => return v.map(|i| s(&i.value)),
            Err(e) if e.is_node_failure() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("get {key}: the client did not recover within {RECOVERY:?}: {e:?}"),
        }
    }
}

/// How many requests the client sent for `key` (the fake records everything).
fn sent_for(fake: &FakeServer, key: &str) -> usize {
    fake.requests_containing(key).len()
}

async fn garbage_reply_fails_that_operation_with_a_protocol_error_and_later_operations_work(
    p: Protocol,
) {
    let fake = FakeServer::with_rules(vec![Rule::on_key("boom", Action::garbage()).once()]).await;
    let c = client(&fake, p);
    c.set("good", "v", Expiry::Never)
        .await
        .expect("set before the fault");
    let e = kit::no_hang("get boom", LIMIT, c.get("boom"))
        .await
        .expect_err("garbage is no reply");
    assert!(
        matches!(&e, Error::Protocol { node, .. } if node == "n0"),
        "{e:?}"
    );
    assert!(e.is_node_failure());
    assert_eq!(sent_for(&fake, "boom"), 1);
    // The connection was reset: the garbage can't be read as the next reply.
    assert_eq!(get_after_recovery(&c, "good").await.as_deref(), Some("v"));
    assert!(
        fake.connections() >= 2,
        "the client reconnected after the protocol error"
    );
    assert!(c.metrics().protocol_errors >= 1, "{:?}", c.metrics());
    // And now "boom" is served normally.
    c.set("boom", "fine", Expiry::Never).await.unwrap();
    assert_eq!(
        get_after_recovery(&c, "boom").await.as_deref(),
        Some("fine")
    );
}

async fn reply_of_the_wrong_kind_is_a_protocol_error(p: Protocol) {
    // A storage status in answer to a read.
    let fake = FakeServer::with_rules(vec![
        Rule::new(
            Match::Contains(b"wrongkind".to_vec()),
            Action::Reply(b"STORED\r\n".to_vec()),
        )
        .once(),
        Rule::new(
            Match::Contains(b"wrongdel".to_vec()),
            Action::Reply(b"STORED\r\n".to_vec()),
        )
        .once(),
    ])
    .await;
    let c = client(&fake, p);
    c.set("x", "1", Expiry::Never).await.unwrap();
    let e = kit::no_hang("get wrongkind", LIMIT, c.get("wrongkind"))
        .await
        .expect_err("STORED is no get reply");
    assert!(
        matches!(&e, Error::Protocol { node, .. } if node == "n0"),
        "{e:?}"
    );
    assert_eq!(get_after_recovery(&c, "x").await.as_deref(), Some("1"));
    if p == Protocol::Text {
        // A well-formed status line, but not one a delete can get: the error names the
        // node (it used to carry an empty node name).
        let e = kit::no_hang("delete wrongdel", LIMIT, c.delete("wrongdel"))
            .await
            .expect_err("STORED is no delete reply");
        assert!(
            matches!(&e, Error::Protocol { node, reason } if node == "n0" && reason.contains("delete")),
            "{e:?}"
        );
        assert_eq!(get_after_recovery(&c, "x").await.as_deref(), Some("1"));
    }
}

async fn half_a_reply_then_close_fails_without_hanging_and_the_client_reconnects(p: Protocol) {
    let half: &[u8] = match p {
        Protocol::Text => b"VALUE half 0 10\r\nhel",
        _ => b"VA 10 f0\r\nhel",
    };
    let fake = FakeServer::with_rules(vec![Rule::on_key(
        "half",
        Action::ReplyThenClose(half.to_vec()),
    )
    .once()])
    .await;
    fake.preload("half", "helloworld", 0);
    fake.preload("other", "o", 0);
    let c = client(&fake, p);
    assert_eq!(
        c.get("other")
            .await
            .unwrap()
            .map(|i| s(&i.value))
            .as_deref(),
        Some("o")
    );
    let e = kit::no_hang("get half", LIMIT, c.get("half"))
        .await
        .expect_err("half a reply");
    assert!(
        matches!(e, Error::ConnectionLost { .. } | Error::Protocol { .. }),
        "half a reply then close: {e:?}"
    );
    assert_eq!(
        get_after_recovery(&c, "half").await.as_deref(),
        Some("helloworld")
    );
    assert!(fake.connections() >= 2);
}

async fn server_that_never_answers_times_out_and_the_client_recovers(p: Protocol) {
    let fake = FakeServer::with_rules(vec![Rule::on_key("silent", Action::Stall).once()]).await;
    fake.preload("after", "a", 0);
    let c = client(&fake, p);
    c.set("warm", "w", Expiry::Never).await.unwrap();
    let e = kit::no_hang("get silent", LIMIT, c.get("silent"))
        .await
        .expect_err("no answer");
    assert!(
        matches!(&e, Error::Timeout { node, .. } if node == "n0"),
        "{e:?}"
    );
    // The stalled connection answers nothing more; after `timeout_threshold` timeouts
    // the client must drop it and reconnect, and a fresh connection serves.
    assert_eq!(get_after_recovery(&c, "after").await.as_deref(), Some("a"));
    assert!(fake.connections() >= 2, "reconnected after the stall");
    assert!(c.metrics().timeouts >= 1);
}

async fn server_that_accepts_but_never_answers_fails_without_hanging(p: Protocol) {
    let fake = FakeServer::with_rules(vec![Rule::new(Match::Accept, Action::Stall)]).await;
    let c = client(&fake, p);
    for key in ["a", "b", "c", "d"] {
        let e = kit::no_hang("get on a mute server", LIMIT, c.get(key))
            .await
            .expect_err("mute server");
        assert!(e.is_node_failure(), "{key}: {e:?}");
    }
    let e = kit::no_hang(
        "set on a mute server",
        LIMIT,
        c.set("k", "v", Expiry::Never),
    )
    .await
    .expect_err("mute server");
    assert!(e.is_node_failure(), "{e:?}");
    // Now the server behaves: the client serves again.
    fake.clear_rules();
    fake.drop_connections();
    fake.preload("k2", "v2", 0);
    assert_eq!(get_after_recovery(&c, "k2").await.as_deref(), Some("v2"));
}

async fn half_closed_socket_fails_in_flight_operations_and_the_client_reconnects(p: Protocol) {
    let fake = FakeServer::with_rules(vec![Rule::on_key(
        "hc",
        Action::ReplyThenHalfClose(Vec::new()),
    )
    .once()])
    .await;
    fake.preload("after", "a", 0);
    let c = client(&fake, p);
    c.set("warm", "w", Expiry::Never).await.unwrap();
    let e = kit::no_hang("get hc", LIMIT, c.get("hc"))
        .await
        .expect_err("half-closed");
    assert!(
        e.is_node_failure(),
        "a half-closed socket is a node failure: {e:?}"
    );
    assert_eq!(get_after_recovery(&c, "after").await.as_deref(), Some("a"));
    assert!(
        fake.connections() >= 2,
        "the client opened a new connection"
    );
}

async fn half_closed_socket_at_accept_is_survived(p: Protocol) {
    // The first two connections are half-closed by the server as soon as accepted.
    let fake = FakeServer::with_rules(vec![Rule::new(
        Match::Accept,
        Action::ReplyThenHalfClose(Vec::new()),
    )
    .times(2)])
    .await;
    fake.preload("k", "v", 0);
    let c = client(&fake, p);
    assert_eq!(get_after_recovery(&c, "k").await.as_deref(), Some("v"));
    assert!(
        fake.connections() >= 3,
        "the client reconnected past the half-closed sockets"
    );
}

async fn reply_claiming_a_huge_value_length_is_a_protocol_error_not_an_allocation(p: Protocol) {
    // 4 GiB and 2^62 bytes: a client that allocates what the header claims aborts the
    // test process (2^62 can't be allocated) or waits for data that never comes
    // (then this test sees a Timeout instead of the Protocol error it wants).
    let (a, b): (&[u8], &[u8]) = match p {
        Protocol::Text => (
            b"VALUE big1 0 4294967295\r\n",
            b"VALUE big2 0 4611686018427387904\r\n",
        ),
        _ => (b"VA 4294967295 f0\r\n", b"VA 4611686018427387904 f0\r\n"),
    };
    let fake = FakeServer::with_rules(vec![
        Rule::on_key("big1", Action::Reply(a.to_vec())).once(),
        Rule::on_key("big2", Action::Reply(b.to_vec())).once(),
        Rule::on_key(
            "big3",
            Action::Reply(b"VALUE big3 0 99999999999999999999999\r\n".to_vec()),
        )
        .once(),
    ])
    .await;
    fake.preload("ok", "fine", 0);
    let c = client(&fake, p);
    for key in ["big1", "big2", "big3"] {
        let e = kit::no_hang("get of an absurd length", LIMIT, c.get(key))
            .await
            .expect_err("absurd length");
        assert!(matches!(e, Error::Protocol { .. }), "{key}: {e:?}");
        assert_eq!(
            get_after_recovery(&c, "ok").await.as_deref(),
            Some("fine"),
            "after {key}"
        );
    }
}

async fn error_lines_map_to_their_error_kinds_and_the_connection_goes_on(p: Protocol) {
    let fake = FakeServer::with_rules(vec![
        Rule::on_key(
            "srv",
            Action::Reply(b"SERVER_ERROR out of memory storing object\r\n".to_vec()),
        )
        .once(),
        Rule::on_key(
            "cli",
            Action::Reply(b"CLIENT_ERROR bad data chunk\r\n".to_vec()),
        )
        .once(),
        Rule::on_key("unk", Action::Reply(b"ERROR\r\n".to_vec())).once(),
    ])
    .await;
    fake.preload("ok", "fine", 0);
    let c = client(&fake, p);
    let e = c
        .set("srv", "v", Expiry::Never)
        .await
        .expect_err("SERVER_ERROR");
    assert!(
        matches!(&e, Error::Server(m) if m.contains("out of memory")),
        "{e:?}"
    );
    assert!(
        !e.is_node_failure(),
        "a server error is not a node failure: {e:?}"
    );
    assert!(e.is_retryable(), "out of memory is transient: {e:?}");
    assert_eq!(get_after_recovery(&c, "ok").await.as_deref(), Some("fine"));
    let e = c
        .set("cli", "v", Expiry::Never)
        .await
        .expect_err("CLIENT_ERROR");
    assert!(
        matches!(&e, Error::ClientRejected(m) if m.contains("bad data chunk")),
        "{e:?}"
    );
    assert_eq!(get_after_recovery(&c, "ok").await.as_deref(), Some("fine"));
    let e = c.get("unk").await.expect_err("ERROR");
    assert!(matches!(e, Error::UnsupportedCommand), "{e:?}");
    assert_eq!(get_after_recovery(&c, "ok").await.as_deref(), Some("fine"));
}

async fn slow_reply_within_the_timeout_succeeds(p: Protocol) {
    let fake = FakeServer::with_rules(vec![Rule::on_key(
        "slow",
        Action::Delay(Duration::from_millis(200)),
    )
    .times(3)])
    .await;
    fake.preload("slow", "s", 0);
    let c = kit::builder_for(&[fake.addr()], p)
        .operation_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..3 {
        let got = kit::no_hang(
            "slow get",
            Duration::from_secs(5) + HANG_SLACK,
            c.get("slow"),
        )
        .await;
        assert_eq!(
            got.expect("a slow answer within the timeout")
                .map(|i| s(&i.value))
                .as_deref(),
            Some("s")
        );
    }
    assert_eq!(c.metrics().timeouts, 0);
}

async fn late_reply_to_a_timed_out_request_is_not_delivered_to_the_next_caller(p: Protocol) {
    // The reply to "late" comes 1.5 s after the 500 ms timeout. The connection is kept
    // (threshold 2, one timeout), so that reply arrives on it and must be thrown away,
    // not handed to whoever asks next.
    let fake = FakeServer::with_rules(vec![Rule::on_key(
        "late",
        Action::Delay(Duration::from_millis(2000)),
    )
    .once()])
    .await;
    let late_v = History::value("late", 1, 1, 10);
    let next_v = History::value("next", 2, 1, 10);
    fake.preload("late", &late_v, 0);
    fake.preload("next", &next_v, 0);
    let c = client(&fake, p);
    c.set("warm", "w", Expiry::Never).await.unwrap();
    let e = kit::no_hang("get late", LIMIT, c.get("late"))
        .await
        .expect_err("times out");
    assert!(e.is_timeout(), "{e:?}");
    // Let the late reply arrive, then ask for another key.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    for _ in 0..5 {
        let got = get_after_recovery(&c, "next").await;
        assert_eq!(
            got.as_deref().map(str::as_bytes),
            Some(&next_v[..]),
            "next got another request's reply"
        );
        let got = get_after_recovery(&c, "late").await;
        assert_eq!(got.as_deref().map(str::as_bytes), Some(&late_v[..]));
    }
}

/// Runs `get key` on a task of its own; yields how long it took and its result.
type GetResult = Result<Option<memkeep::Item>, Error>;

fn spawn_get(c: &Client, key: String) -> tokio::task::JoinHandle<(Duration, GetResult)> {
    let c = c.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let got = kit::no_hang("get", LIMIT, c.get(&key)).await;
        (started.elapsed(), got)
    })
}

/// Sends `get stall` (which the fake must stall), then `callers - 1` gets queued behind
/// it, `gap` apart, and checks that all of them time out at their own deadline, each
/// counted once.
async fn all_time_out_behind_a_stall(c: &Client, callers: usize, gap: Duration) {
    let mut started = vec![spawn_get(c, "stall".into())];
    for i in 1..callers {
        tokio::time::sleep(gap).await;
        started.push(spawn_get(c, format!("queued-{i}")));
    }
    all_time_out(started).await;
    assert_eq!(
        c.metrics().timeouts,
        callers as u64,
        "each timeout counted once"
    );
}

/// Checks that every caller got this client's timeout, no earlier than its deadline
/// (nor later than `LIMIT`: spawn_get checks that).
async fn all_time_out(callers: Vec<tokio::task::JoinHandle<(Duration, GetResult)>>) {
    for (i, caller) in callers.into_iter().enumerate() {
        let (took, got) = caller.await.unwrap();
        assert_timed_out(&format!("caller {i}"), took, &got);
    }
}

/// Checks that `got` is this client's timeout, reported no earlier than the deadline.
fn assert_timed_out(what: &str, took: Duration, got: &GetResult) {
    match got {
        Err(Error::Timeout { node, after }) => {
            assert_eq!(node, "n0", "{what}");
            assert_eq!(*after, OP_TIMEOUT, "{what}");
        }
        other => panic!("{what}: expected a timeout, got {other:?}"),
    }
    assert!(
        took >= OP_TIMEOUT,
        "{what}: timed out after {took:?}, before its deadline ({OP_TIMEOUT:?})"
    );
}

async fn each_caller_times_out_at_its_own_deadline_and_the_stalled_connection_is_dropped(
    p: Protocol,
) {
    const CALLERS: usize = 4;
    let fake = FakeServer::with_rules(vec![Rule::on_key("stall", Action::Stall).once()]).await;
    fake.preload("after", "a", 0);
    let c = builder(&fake, p)
        .timeout_threshold(CALLERS as u32)
        .build()
        .expect("client");
    c.set("warm", "w", Expiry::Never).await.unwrap();
    // Deadlines 100 ms apart: no caller is released by an earlier caller's deadline,
    // nor kept past its own.
    all_time_out_behind_a_stall(&c, CALLERS, Duration::from_millis(100)).await;
    // `timeout_threshold` consecutive timeouts: the connection is dropped, and a fresh
    // one serves.
    assert_eq!(get_after_recovery(&c, "after").await.as_deref(), Some("a"));
    assert!(fake.connections() >= 2, "reconnected after the stall");
}

async fn callers_waiting_for_room_in_the_queue_time_out_at_their_deadline(p: Protocol) {
    // Two in flight, then two held by the driver (its queue slots), then callers that
    // wait for a slot: all of them must time out at their deadline.
    const CALLERS: usize = 9;
    let fake = FakeServer::with_rules(vec![Rule::on_key("stall", Action::Stall).once()]).await;
    fake.preload("after", "a", 0);
    let c = builder(&fake, p)
        .max_in_flight(2)
        .timeout_threshold(1000)
        .build()
        .expect("client");
    c.set("warm", "w", Expiry::Never).await.unwrap();
    all_time_out_behind_a_stall(&c, CALLERS, Duration::from_millis(10)).await;
    // Below the threshold the connection is kept; once the server drops it, the
    // client reconnects and serves.
    assert_eq!(fake.connections(), 1);
    fake.drop_connections();
    assert_eq!(get_after_recovery(&c, "after").await.as_deref(), Some("a"));
}

async fn requests_queued_while_the_connection_is_made_time_out_at_their_deadline(p: Protocol) {
    // The server accepts but never answers the handshake, and the connect timeout is
    // longer than the operation timeout: requests wait for the connection, held by the
    // driver, and must still time out at their own deadline.
    let fake = FakeServer::with_rules(vec![Rule::new(Match::Accept, Action::Stall).once()]).await;
    fake.preload("after", "a", 0);
    let c = builder(&fake, p)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let callers: Vec<_> = (0..3).map(|i| spawn_get(&c, format!("k{i}"))).collect();
    all_time_out(callers).await;
    assert_eq!(c.metrics().timeouts, 3, "each timeout counted once");
    // The next connection attempt finds a server that answers.
    assert_eq!(get_after_recovery(&c, "after").await.as_deref(), Some("a"));
}

async fn a_caller_that_gave_up_is_not_counted_as_a_timeout_past_its_deadline(p: Protocol) {
    let fake = FakeServer::with_rules(vec![Rule::on_key("stall", Action::Stall).once()]).await;
    let c = builder(&fake, p)
        .timeout_threshold(1000)
        .build()
        .expect("client");
    c.set("warm", "w", Expiry::Never).await.unwrap();
    // Dropped well before its deadline, once in flight and once queued behind it.
    let gave_up = tokio::time::timeout(Duration::from_millis(100), async {
        tokio::join!(c.get("stall"), c.get("behind"))
    })
    .await;
    assert!(gave_up.is_err(), "the stalled server answered: {gave_up:?}");
    // Past the deadline the driver has dropped: nobody is told, nothing is counted.
    tokio::time::sleep(OP_TIMEOUT * 2).await;
    assert_eq!(c.metrics().timeouts, 0);
    // A caller that does wait still gets its timeout, counted once.
    let started = Instant::now();
    let got = kit::no_hang("get", LIMIT, c.get("later")).await;
    assert_timed_out("a later caller", started.elapsed(), &got);
    assert_eq!(c.metrics().timeouts, 1);
}
