//! The client against odd-but-real situations: settings no connection can work with,
//! values larger than the client accepts, restarts, a driver that dies, memory bounds,
//! deadlines, and errors that say which node failed and why. Real memcached processes
//! unless the fault is one a real server can't produce.

mod kit;

use std::time::Duration;

use kit::Memcached;
use memkeep::{Client, Error, Expiry};

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
