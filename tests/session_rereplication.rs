//! Background re-replication (sticky mode, both backends): after a node (a memcached
//! node, or a peer) is lost or comes back empty, the owner rewrites its sessions'
//! copies to their placement without any request of theirs.

mod kit;
#[path = "kit/peers.rs"]
mod peers_kit;
#[path = "kit/session.rs"]
mod session_kit;

use std::time::Duration;

use kit::Cluster;
use memkeep::session::peer::Backups;
use memkeep::session::{BackupSessionService, Mode};
use memkeep::Client;
use peers_kit::{wait_peer, Peers};
use session_kit::{config, fast_client, Browser};

/// `n` sessions created on `svc`, each with `a = i`; returns their storage keys.
async fn sessions(svc: &BackupSessionService, n: u64) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..n {
        let mut b = Browser::new();
        b.call(svc, "/login", |s| s.insert("a", &i).unwrap())
            .await
            .unwrap();
        keys.push(b.id().unwrap().key().to_string());
    }
    keys
}

/// How many of `nodes` hold `key` (read through `client`, node by node).
async fn holders(client: &Client, nodes: &[&str], key: &str) -> usize {
    let mut n = 0;
    for node in nodes {
        if let Ok(Some(_)) = client.on_node(node).unwrap().get(key).await {
            n += 1;
        }
    }
    n
}

/// Polls (bounded) until every key has two copies on `nodes`; returns the keys that
/// still lack one.
async fn until_two_copies(client: &Client, nodes: &[&str], keys: &[String]) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut lacking = Vec::new();
        for k in keys {
            if holders(client, nodes, k).await < 2 {
                lacking.push(k.clone());
            }
        }
        if lacking.is_empty() || std::time::Instant::now() > deadline {
            return lacking;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_memcached_nodes_sessions_get_their_second_copy_back_without_requests() {
    let mut cluster = Cluster::start(3);
    let svc = BackupSessionService::with_client(
        config(&cluster, Mode::Sticky)
            .route("web1")
            .build()
            .unwrap(),
        fast_client(&cluster, Duration::from_millis(300)),
    )
    .unwrap();
    let keys = sessions(&svc, 60).await;
    let observer = session_kit::observer(&cluster);
    let all = ["n0", "n1", "n2"];
    assert_eq!(
        until_two_copies(&observer, &all, &keys).await,
        Vec::<String>::new()
    );
    let on_n0: Vec<String> = {
        let mut v = Vec::new();
        for k in &keys {
            if holders(&observer, &["n0"], k).await == 1 {
                v.push(k.clone());
            }
        }
        v
    };
    assert!(!on_n0.is_empty(), "some sessions had a copy on n0");
    cluster[0].kill();
    // No request: the owner notices n0 is gone and re-places those copies.
    let lacking = until_two_copies(&observer, &["n1", "n2"], &on_n0).await;
    let want = on_n0.len() as u64;
    kit::eventually(Duration::from_secs(5), || {
        svc.stats().rereplications >= want
    })
    .await;
    let stats = svc.stats();
    assert!(
        lacking.is_empty(),
        "{} of {} sessions still have one copy; {stats:?}; nodes {:?}",
        lacking.len(),
        on_n0.len(),
        svc.client().nodes()
    );
    assert!(stats.rereplications >= on_n0.len() as u64, "{stats:?}");
    // n0 comes back empty: the sessions placed on it get their copy there again,
    // still without any request.
    cluster[0].restart();
    let before = svc.stats().rereplications;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut back = 0;
    while std::time::Instant::now() < deadline {
        back = 0;
        for k in &on_n0 {
            back += holders(&observer, &["n0"], k).await;
        }
        if back == on_n0.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        back,
        on_n0.len(),
        "the restarted node received its copies again"
    );
    let want = before + on_n0.len() as u64;
    let counted = kit::eventually(Duration::from_secs(5), || {
        svc.stats().rereplications >= want
    })
    .await;
    assert!(counted, "counted: {:?}", svc.stats());
    assert_eq!(
        until_two_copies(&observer, &all, &keys).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peers_sessions_get_their_second_copy_back_without_requests() {
    let peers = Peers::new(3, Backups::One);
    let mut services = peers.start_all().await;
    let web3 = services.pop().unwrap();
    let web2 = services.pop().unwrap();
    let web1 = services.pop().unwrap();
    let keys = sessions(&web1, 40).await;
    let held = |svcs: &[&BackupSessionService], k: &str| {
        svcs.iter()
            .filter(|s| s.peer_endpoint().unwrap().holds(k.as_bytes()))
            .count()
    };
    assert!(keys.iter().all(|k| held(&[&web1, &web2, &web3], k) == 2));
    let on_web2: Vec<String> = keys
        .iter()
        .filter(|k| held(&[&web2], k) == 1)
        .cloned()
        .collect();
    assert!(!on_web2.is_empty());
    drop(web2);
    assert!(wait_peer(&web1, "web2", false).await);
    let ok = kit::eventually(Duration::from_secs(20), || {
        on_web2.iter().all(|k| held(&[&web1, &web3], k) == 2)
    })
    .await;
    let lacking = on_web2
        .iter()
        .filter(|k| held(&[&web1, &web3], k) < 2)
        .count();
    assert!(
        ok,
        "{lacking} of {} sessions still have one copy",
        on_web2.len()
    );
    let want = on_web2.len() as u64;
    let counted = kit::eventually(Duration::from_secs(5), || {
        web1.stats().rereplications >= want
    })
    .await;
    assert!(counted, "{:?}", web1.stats());
    // And they survive the owner's death now.
    drop(web1);
    assert!(wait_peer(&web3, "web1", false).await);
    for (i, k) in keys.iter().enumerate() {
        let id = format!("{k}-web1.web1");
        let seen = session_kit::look(&web3, &id, "a").await.unwrap();
        assert_eq!(seen, Some(Some(i as u64)), "session {i}");
    }
}
