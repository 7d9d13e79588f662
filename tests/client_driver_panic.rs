//! A connection driver that panics is noticed: its in-flight callers get a clear error at
//! once (not a timeout, not `Shutdown`), the node goes down, and the connection is
//! re-established. The panic is injected (feature `fault-injection`): no server input
//! can cause one.

mod kit;

use std::time::Duration;

use kit::Memcached;
use memkeep::{Error, Expiry, NodeState, Protocol};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_panic_fails_its_callers_marks_the_node_down_and_reconnects() {
    let mut m = Memcached::start();
    let c = kit::builder_for(&[m.addr()], Protocol::Meta)
        // Long enough that a caller the panic left behind would show up as a Timeout.
        .operation_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    c.set("k", "v", Expiry::Never).await.unwrap();
    let watcher = kit::StateWatcher::start(&c);
    // Requests in flight when the driver dies: written to a stopped server.
    m.pause();
    let in_flight: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get("k").await })
        })
        .collect();
    assert!(
        kit::eventually(Duration::from_secs(10), || c.metrics().in_flight == 20).await,
        "the gets are in flight: {:?}",
        c.metrics()
    );
    c.__inject_driver_panic("n0").await.unwrap();
    for caller in in_flight {
        let result = kit::no_hang(
            "a caller of the panicked driver",
            Duration::from_secs(20),
            caller,
        )
        .await
        .unwrap();
        match result {
            Err(Error::ConnectionLost { node, reason }) => {
                assert_eq!(node, "n0");
                assert!(reason.contains("panicked"), "{reason}");
            }
            other => panic!("expected ConnectionLost naming the panic, got {other:?}"),
        }
    }
    assert!(
        kit::eventually(Duration::from_secs(10), || watcher
            .history("n0")
            .contains(&NodeState::Down))
        .await,
        "the node went down: {:?}",
        watcher.history("n0")
    );
    m.resume();
    assert!(
        kit::wait_state(&c, "n0", NodeState::Up, Duration::from_secs(20)).await,
        "the connection is re-established"
    );
    let item = kit::no_hang("get after the panic", Duration::from_secs(40), c.get("k"))
        .await
        .unwrap();
    assert_eq!(item.unwrap().value, "v");
    assert!(c.metrics().reconnects >= 1, "{:?}", c.metrics());
}
