//! Feature `metrics`: what a Prometheus exporter (a real `metrics` recorder) shows after
//! session traffic against real memcached, with a node SIGKILLed: per-node operation
//! counters and latency histograms that agree with the client's own counters, the node
//! seen down, the session counters and the session load/save histograms agreeing with the
//! service's statistics, and the tower-sessions store's statistics under its own label.

mod kit;
#[path = "kit/session.rs"]
mod session_kit;

use std::time::Duration;

use kit::Cluster;
use memkeep::metrics::{Publisher, NODE_OPERATIONS, NODE_OPERATION_DURATION, NODE_UP};
use memkeep::session::{BackupSessionService, Mode};
use memkeep::NodeState;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use session_kit::{config, fast_client, Browser};

/// The value of the sample line of `name` whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let metric = l.split(['{', ' ']).next().unwrap_or("");
            metric == name
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new().build_recorder()
}

#[tokio::test]
async fn a_prometheus_scrape_shows_node_and_session_metrics_that_agree_with_the_counters() {
    let mut cluster = Cluster::start(3);
    let recorder = recorder();
    let handle = recorder.handle();
    // The histograms' handles are taken when the client and the service are built.
    let svc = metrics::with_local_recorder(&recorder, || {
        BackupSessionService::with_client(
            config(&cluster, Mode::NonSticky).build().unwrap(),
            fast_client(&cluster, Duration::from_millis(300)),
        )
        .unwrap()
    });
    let publisher = Publisher::new()
        .client(svc.client().clone())
        .session_service("web", svc.clone());
    let mut browser = Browser::new();
    for _ in 0..5 {
        browser.increment(&svc, "n").await.unwrap();
    }
    // A node holding a copy dies between two requests; the session goes on.
    let holder = session_kit::index_of(browser.id().unwrap().node());
    cluster[holder].kill();
    assert_eq!(browser.increment(&svc, "n").await.unwrap(), 6);
    assert!(
        session_kit::drive_down(&svc, &Cluster::id(holder), Duration::from_secs(10)).await,
        "the client sees the killed node down"
    );

    metrics::with_local_recorder(&recorder, || publisher.publish());
    let text = handle.render();
    for node in svc.client().nodes() {
        let labels = [
            ("node", node.id.as_str()),
            ("address", node.address.as_str()),
        ];
        let ops = sample(&text, NODE_OPERATIONS, &labels).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(ops, node.metrics.operations as f64, "{}", node.id);
        let count = sample(&text, &format!("{NODE_OPERATION_DURATION}_count"), &labels)
            .unwrap_or_else(|| panic!("no latency histogram for {}: {text}", node.id));
        assert!(ops > 0.0, "{} took part", node.id);
        assert_eq!(
            count, ops,
            "one latency sample per operation on {}",
            node.id
        );
        let up = sample(&text, NODE_UP, &labels).unwrap();
        let expected = if node.state == NodeState::Up {
            1.0
        } else {
            0.0
        };
        assert_eq!(up, expected, "{}", node.id);
    }
    let killed = [("node", Cluster::id(holder))];
    let killed: Vec<(&str, &str)> = killed.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(sample(&text, NODE_UP, &killed), Some(0.0));
    assert!(sample(&text, "memkeep_node_errors_total", &killed).unwrap() >= 1.0);

    let stats = svc.stats();
    let web = [("store", "web")];
    assert_eq!(
        sample(&text, "memkeep_session_writes_total", &web),
        Some(stats.writes as f64)
    );
    assert!(stats.writes >= 6);
    assert_eq!(
        sample(&text, "memkeep_session_sessions_created_total", &web),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "memkeep_session_load_duration_seconds_count", &[]),
        Some(stats.load_us.count as f64)
    );
    assert!(stats.load_us.count >= 5);
    assert_eq!(
        sample(&text, "memkeep_session_save_duration_seconds_count", &[]),
        Some(stats.write_us.count as f64)
    );
    assert!(text.contains("# HELP memkeep_node_operation_duration_seconds"));
}

#[cfg(feature = "tower-sessions")]
#[tokio::test]
async fn the_tower_sessions_store_publishes_under_its_own_label() {
    use memkeep::adapters::tower_sessions::ReplicatedStore;
    use tower_sessions::session::{Id, Record};
    use tower_sessions::SessionStore;

    let cluster = Cluster::start(2);
    let recorder = recorder();
    let handle = recorder.handle();
    let store = metrics::with_local_recorder(&recorder, || {
        ReplicatedStore::new(fast_client(&cluster, Duration::from_millis(300))).unwrap()
    });
    let mut record = Record {
        id: Id(3),
        data: Default::default(),
        expiry_date: tower_sessions::cookie::time::OffsetDateTime::now_utc()
            + tower_sessions::cookie::time::Duration::hours(1),
    };
    store.create(&mut record).await.unwrap();
    store.save(&record).await.unwrap();
    assert!(store.load(&Id(3)).await.unwrap().is_some());
    let s = store.clone();
    let publisher = Publisher::new().session_stats("tower", move || s.stats());
    metrics::with_local_recorder(&recorder, || publisher.publish());
    let text = handle.render();
    assert_eq!(
        sample(&text, "memkeep_session_writes_total", &[("store", "tower")]),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "memkeep_session_load_duration_seconds_count", &[]),
        Some(store.stats().load_us.count as f64)
    );
}
