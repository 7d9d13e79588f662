//! The client through a real twemproxy (Debian `nutcracker` 0.5) with two memcached behind
//! it: the text protocol works (single and multi-key gets the proxy fans out, stores,
//! deletes, counters, a backend killed behind it), and a meta client is told plainly that
//! the peer does not speak the meta protocol.

mod kit;

use std::time::Duration;

use kit::memcached::raw;
use kit::nutcracker::Nutcracker;
use kit::Cluster;
use memkeep::{CasOutcome, Client, Error, Expiry, Protocol};

const CASE_LIMIT: Duration = Duration::from_secs(60);

fn through(proxy: &Nutcracker, merge_gets: bool) -> Client {
    kit::builder_for(&[proxy.addr()], Protocol::Text)
        .merge_gets(merge_gets)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_protocol_works_through_nutcracker() {
    let cluster = Cluster::start(2);
    let proxy = Nutcracker::start(&cluster.addrs());
    for merge in [false, true] {
        let c = through(&proxy, merge);
        kit::no_hang("operations through nutcracker", CASE_LIMIT, async {
            let keys: Vec<String> = (0..200).map(|i| format!("m{merge}-{i}")).collect();
            for key in &keys {
                c.set(key, key, Expiry::Never).await.unwrap();
            }
            // The proxy spread the keys over both servers.
            for addr in cluster.addrs() {
                assert!(raw::curr_items(&addr) > 20, "{addr} holds some keys");
            }
            for key in &keys[..20] {
                assert_eq!(c.get(key).await.unwrap().unwrap().value, key.as_str());
            }
            // One multi-key get, fanned out by the proxy to both servers.
            let mut asked: Vec<String> = keys.clone();
            asked.push("missing".into());
            let found = c.get_many(&asked).await.unwrap();
            assert_eq!(found.len(), keys.len());
            // 64 concurrent single gets on one pipelined connection (merged when `merge`).
            let gets = keys[..64].iter().map(|k| c.get(k));
            for (key, got) in keys.iter().zip(futures::future::join_all(gets).await) {
                assert_eq!(got.unwrap().unwrap().value, key.as_str());
            }
            assert!(c.delete(&keys[0]).await.unwrap());
            assert!(!c.delete(&keys[0]).await.unwrap());
            assert!(c.add(&keys[0], "again", Expiry::Never).await.unwrap());
            assert!(!c.add(&keys[0], "again", Expiry::Never).await.unwrap());
            assert!(c
                .replace(&keys[0], "replaced", Expiry::Never)
                .await
                .unwrap());
            let counter = format!("counter-{merge}");
            c.set(&counter, "10", Expiry::Never).await.unwrap();
            assert_eq!(c.incr(&counter, 5).await.unwrap(), Some(15));
            assert_eq!(c.decr(&counter, 20).await.unwrap(), Some(0));
            assert!(c
                .touch(&keys[1], Expiry::In(Duration::from_secs(60)))
                .await
                .unwrap());
            let item = c.gets(&keys[2]).await.unwrap().unwrap();
            let cas = item
                .cas
                .expect("gets returns a cas token through the proxy");
            assert_eq!(
                c.cas(&keys[2], "swapped", Expiry::Never, cas)
                    .await
                    .unwrap(),
                CasOutcome::Stored
            );
            assert_eq!(
                c.cas(&keys[2], "stale", Expiry::Never, cas).await.unwrap(),
                CasOutcome::Exists
            );
            let m = c.metrics();
            assert_eq!((m.protocol_errors, m.reconnects), (0, 0), "{m:?}");
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_behind_nutcracker_loses_only_its_keys_and_the_proxy_recovers() {
    let mut cluster = Cluster::start(2);
    let proxy = Nutcracker::start(&cluster.addrs());
    let c = through(&proxy, false);
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    for key in &keys {
        c.set(key, "v", Expiry::Never).await.unwrap();
    }
    cluster[1].kill();
    kit::no_hang("operations while a backend is down", CASE_LIMIT, async {
        let (mut hits, mut misses, mut failures) = (0, 0, 0);
        for key in &keys {
            match c.get(key).await {
                Ok(Some(_)) => hits += 1,
                // Once the proxy has ejected the dead backend, its keys hash to the other.
                Ok(None) => misses += 1,
                // Until then the proxy answers for the dead backend with an error line;
                // the connection to the proxy stays in sync.
                Err(e @ Error::Server(_)) => {
                    println!("{key}: {e}");
                    failures += 1;
                }
                Err(e) => panic!("{key}: expected a hit, a miss or the proxy's error line: {e:?}"),
            }
        }
        println!("with a backend dead: {hits} hits, {misses} misses, {failures} proxy errors");
        assert!(
            hits > 0 && hits < keys.len(),
            "the live backend's keys still hit"
        );
        assert_eq!(hits + misses + failures, keys.len());
        match c.get_many(&keys).await {
            Ok(found) => assert!(found.len() < keys.len(), "the dead backend's keys are gone"),
            Err(Error::Server(message)) => println!("multi-get: the proxy said {message}"),
            Err(e) => panic!("multi-get through the proxy: {e:?}"),
        }
        // The proxy ejects the dead backend: writes succeed again, spread over the other.
        let mut streak = 0;
        let mut i = 0;
        while streak < 50 {
            i += 1;
            match c.set(format!("after{i}"), "v", Expiry::Never).await {
                Ok(()) => streak += 1,
                Err(Error::Server(_)) => {
                    streak = 0;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("set through the proxy: {e:?}"),
            }
        }
    })
    .await;
    let m = c.metrics();
    assert_eq!(m.protocol_errors, 0, "{m:?}");
    assert!(
        c.is_up("n0").unwrap(),
        "the connection to the proxy stayed up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_client_is_told_that_nutcracker_does_not_speak_meta() {
    let cluster = Cluster::start(1);
    let proxy = Nutcracker::start(&cluster.addrs());
    let c = kit::client_for(&[proxy.addr()], Protocol::Meta);
    let why = kit::why_unavailable(&c).await;
    assert!(
        why.contains("does not speak memcached's meta protocol") && why.contains("Protocol::Text"),
        "{why}"
    );
}
