//! The peer backend (Loose Cluster): application instances back up each other's
//! sessions through their replication endpoints, no memcached. In-process instances;
//! an instance is killed by dropping its service (its endpoint closes every connection)
//! and restarted empty on the same port.

mod kit;
#[path = "kit/peers.rs"]
mod peers_kit;
#[path = "kit/session.rs"]
mod session_kit;

use std::time::Duration;

use memkeep::session::peer::{Backups, PEER_PROTOCOL_USER};
use memkeep::session::{BackupSessionService, CookieDecision, Mode, SessionConfig, SessionError};
use memkeep::{Client, Credentials, NodeConfig, NodeState};
use peers_kit::{exchange, wait_peer, Peers, SECRET};
use session_kit::Browser;

fn key_of(b: &Browser) -> Vec<u8> {
    b.id().unwrap().key().to_string().into_bytes()
}

fn route_of(b: &Browser) -> String {
    b.id().unwrap().route().unwrap().to_owned()
}

/// Sessions on `svc` with `a = i` for session `i`, each save acknowledged.
async fn sessions(svc: &BackupSessionService, n: usize) -> Vec<Browser> {
    let mut out = Vec::new();
    for i in 0..n as u64 {
        let mut b = Browser::new();
        b.call(svc, "/login", |s| s.insert("a", &i).unwrap())
            .await
            .unwrap();
        out.push(b);
    }
    out
}

/// Every browser's session on `svc` still has `a = i`; returns the wrong ones.
async fn check(svc: &BackupSessionService, browsers: &mut [Browser]) -> Vec<String> {
    let mut wrong = Vec::new();
    for (i, b) in browsers.iter_mut().enumerate() {
        match b.read_u64(svc, "a").await {
            Ok(Some(v)) if v == i as u64 => {}
            other => wrong.push(format!("session {i}: {other:?}")),
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_death_leaves_the_session_with_its_backup_which_takes_it_over() {
    let peers = Peers::new(2, Backups::One);
    let mut all = peers.start_all().await;
    let (web2, web1) = (all.pop().unwrap(), all.pop().unwrap());
    let mut b = Browser::new();
    b.call(&web1, "/add", |s| s.insert("a", &1u64).unwrap())
        .await
        .unwrap();
    assert_eq!(route_of(&b), "web1");
    // Replicated before the request was acknowledged: web2's own endpoint holds it.
    let web2_endpoint = web2.peer_endpoint().unwrap();
    assert!(web2_endpoint.holds(&key_of(&b)), "the backup holds a copy");
    drop(web1);
    assert!(wait_peer(&web2, "web1", false).await, "web2 sees web1 down");
    let (seen, outcome) = b
        .visit(&web2, "/", |s| s.and_then(|s| s.get::<u64>("a").unwrap()))
        .await
        .unwrap();
    assert_eq!(seen, Some(1), "the backup serves the session");
    assert!(
        matches!(outcome.cookie, CookieDecision::Set(_)),
        "the cookie is reissued on takeover: {:?}",
        outcome.cookie
    );
    assert_eq!(route_of(&b), "web2", "web2 took the session over");
    assert_eq!(web2.stats().instance_takeovers, 1);
    // The session goes on on web2.
    assert_eq!(b.increment(&web2, "a").await.unwrap(), 2);
    assert_eq!(b.read_u64(&web2, "a").await.unwrap(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_restart_kill_the_other_a_restarted_instance_receives_backups_again() {
    let peers = Peers::new(2, Backups::One);
    let mut all = peers.start_all().await;
    let (web2, web1) = (all.pop().unwrap(), all.pop().unwrap());
    let mut browsers = sessions(&web1, 20).await;
    drop(web1);
    assert!(wait_peer(&web2, "web1", false).await);
    // web2 takes every session over (one copy: web1 is gone).
    assert_eq!(check(&web2, &mut browsers).await, Vec::<String>::new());
    // web1 comes back empty.
    let web1 = peers.start("web1");
    assert_eq!(web1.peer_endpoint().unwrap().stats().entries, 0);
    assert!(wait_peer(&web2, "web1", true).await, "web2 sees web1 again");
    // The next request of each session re-creates its second copy on web1.
    assert_eq!(check(&web2, &mut browsers).await, Vec::<String>::new());
    let web1_endpoint = web1.peer_endpoint().unwrap();
    for b in &browsers {
        assert!(web1_endpoint.holds(&key_of(b)), "web1 received the backup");
    }
    // Now the other dies: web1 serves everything from its own copies.
    drop(web2);
    assert!(wait_peer(&web1, "web2", false).await);
    assert_eq!(check(&web1, &mut browsers).await, Vec::<String>::new());
    assert!(browsers.iter().all(|b| route_of(b) == "web1"));
}

/// Three instances, two killed one after the other: with one backup the sessions
/// survive when each is requested once in between (the heal step of the fault model);
/// with `all` they survive without it.
async fn three_instances_two_killed(backups: Backups, heal: bool) {
    let peers = Peers::new(3, backups);
    let mut services: Vec<Option<BackupSessionService>> =
        peers.start_all().await.into_iter().map(Some).collect();
    let mut browsers = Vec::new();
    for svc in services.iter().flatten() {
        browsers.extend(sessions(svc, 10).await);
    }
    // Values: session i has a = i % 10 (10 per instance).
    let expected: Vec<u64> = (0..browsers.len() as u64).map(|i| i % 10).collect();
    for kill in [0usize, 1] {
        services[kill] = None;
        let route = format!("web{}", kill + 1);
        let survivor = services[2].as_ref().unwrap();
        assert!(wait_peer(survivor, &route, false).await);
        if kill == 1 {
            assert!(wait_peer(survivor, "web1", false).await);
        }
        if heal && kill == 0 {
            // Each session requested once on a survivor: its copies are re-placed.
            let survivors: Vec<&BackupSessionService> = services.iter().flatten().collect();
            assert!(wait_peer(survivors[0], "web1", false).await);
            for (i, b) in browsers.iter_mut().enumerate() {
                let svc = survivors[i % survivors.len()];
                assert_eq!(b.read_u64(svc, "a").await.unwrap(), Some(expected[i]));
            }
        }
    }
    let last = services[2].as_ref().unwrap();
    let mut wrong = Vec::new();
    for (i, b) in browsers.iter_mut().enumerate() {
        match b.read_u64(last, "a").await {
            Ok(Some(v)) if v == expected[i] => {}
            other => wrong.push(format!("session {i}: {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "{}", session_kit::report(&wrong));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_one_backup_two_killed_one_after_the_other_with_a_heal_between() {
    three_instances_two_killed(Backups::One, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_backups_all_two_killed_without_any_request_between() {
    three_instances_two_killed(Backups::All, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_refuses_anyone_without_the_secret() {
    let peers = Peers::new(2, Backups::One);
    let web1 = peers.start("web1");
    let port = peers.port("web1");
    let endpoint = web1.peer_endpoint().unwrap();
    // No login: refused, connection closed.
    let answer = exchange(port, b"mg somekey v\r\n").await;
    assert_eq!(answer, "CLIENT_ERROR unauthenticated\r\n");
    // A wrong secret.
    let login = format!(
        "set auth 0 0 {}\r\n{PEER_PROTOCOL_USER} wrong-secret\r\n",
        PEER_PROTOCOL_USER.len() + 13
    );
    let answer = exchange(port, format!("{login}version\r\n").as_bytes()).await;
    assert_eq!(answer, "CLIENT_ERROR authentication failure\r\n");
    // The right secret but another protocol version.
    let other = format!(
        "set auth 0 0 {}\r\nmemkeep-peer-v9 {SECRET}\r\n",
        16 + SECRET.len()
    );
    let answer = exchange(port, other.as_bytes()).await;
    assert!(
        answer.starts_with("CLIENT_ERROR peer protocol version"),
        "{answer}"
    );
    assert_eq!(endpoint.stats().refused_connections, 3);
    // A memkeep client with a wrong secret: the node stays down, saying why.
    let intruder = Client::builder()
        .node_config(NodeConfig::new(format!("127.0.0.1:{port}")).id("web1"))
        .credentials(Credentials::new(
            PEER_PROTOCOL_USER,
            "not-the-secret-at-all",
        ))
        .build()
        .unwrap();
    assert!(intruder
        .set("k", b"v", memkeep::Expiry::Never)
        .await
        .is_err());
    assert_ne!(intruder.node_state("web1"), Some(NodeState::Up));
    // With the secret: the protocol subset works; anything outside it is refused.
    let login = format!(
        "set auth 0 0 {}\r\n{PEER_PROTOCOL_USER} {SECRET}\r\n",
        PEER_PROTOCOL_USER.len() + 1 + SECRET.len()
    );
    let answer = exchange(
        port,
        format!("{login}version\r\nms k 2 T0 MS O5\r\nhi\r\nmg k v c O6\r\nincr k 1\r\n")
            .as_bytes(),
    )
    .await;
    let lines: Vec<&str> = answer.split("\r\n").collect();
    assert_eq!(lines[0], "STORED");
    assert_eq!(lines[1], "VERSION memkeep-peer/1");
    assert_eq!(lines[2], "HD O5");
    assert!(
        lines[3].starts_with("VA 2 ") && lines[3].ends_with(" O6"),
        "{answer}"
    );
    assert_eq!(lines[4], "hi");
    assert_eq!(lines[5], "CLIENT_ERROR unsupported command");
    assert_eq!(endpoint.stats().protocol_errors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_peers_memory_bound_evicts_and_counts() {
    let peers = Peers::new(2, Backups::One);
    let bound = 64 * 1024;
    let web1 = peers.start("web1");
    let web2 = peers.start_with("web2", |b| b.peer_memory(bound));
    assert!(session_kit::wait_nodes_up(&[&web1, &web2], Duration::from_secs(10)).await);
    let big = "x".repeat(2000);
    for _ in 0..100 {
        let mut b = Browser::new();
        let big = big.clone();
        b.call(&web1, "/login", move |s| s.insert("big", &big).unwrap())
            .await
            .unwrap();
    }
    let stats = web2.peer_endpoint().unwrap().stats();
    assert!(stats.evictions > 0, "the bound evicted: {stats:?}");
    assert!(stats.bytes <= bound, "within the bound: {stats:?}");
    assert!(stats.entries < 100, "{stats:?}");
}

#[test]
fn bad_peer_configurations_are_refused_naming_the_field() {
    let field = |b: memkeep::session::SessionConfigBuilder| match b.build() {
        Err(SessionError::Config { field, .. }) => field,
        other => panic!("expected a configuration error, got {other:?}"),
    };
    let base = || {
        SessionConfig::builder()
            .peers("web1:127.0.0.1:7001,web2:127.0.0.1:7002")
            .peer_secret(SECRET)
            .route("web1")
    };
    assert!(base().build().is_ok());
    assert_eq!(field(base().mode(Mode::NonSticky)), "mode");
    assert_eq!(field(base().route("web3")), "peers");
    assert_eq!(field(base().peer_secret("short")), "peer_secret");
    assert_eq!(field(base().nodes("n1:127.0.0.1:11211")), "peers");
    assert_eq!(field(base().peers("web1:127.0.0.1")), "peers");
    // Two peers hold up to four connections: fewer is refused, naming the field (the
    // pending-login bound follows a smaller connection bound by default).
    assert!(base().peer_max_connections(4).build().is_ok());
    assert_eq!(
        field(base().peer_max_connections(3)),
        "peer_max_connections"
    );
    assert_eq!(
        field(base().peer_max_pending_logins(0)),
        "peer_max_pending_logins"
    );
    assert_eq!(
        field(base().peer_max_connections(8).peer_max_pending_logins(9)),
        "peer_max_pending_logins"
    );
}

/// The store's client pipelines many requests per connection and sends `get_many` as
/// a text multi-get: the endpoint serves all of them (a refused command would drop the
/// connection and fail every request in flight on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_and_multi_gets_all_succeed() {
    let peers = Peers::new(2, Backups::One);
    let web1 = peers.start("web1");
    let port = peers.port("web1");
    let c = Client::builder()
        .node_config(NodeConfig::new(format!("127.0.0.1:{port}")).id("web1"))
        .credentials(Credentials::new(PEER_PROTOCOL_USER, SECRET))
        .build()
        .unwrap();
    let mut errors = Vec::new();
    for round in 0..50 {
        let futs = (0..100).map(|i| {
            let c = c.clone();
            async move {
                let k = format!("k{}", i % 10);
                c.set(&k, format!("v{round}-{i}"), memkeep::Expiry::Never)
                    .await?;
                let g = c.gets(&k).await?;
                let many = c.get_many([k.as_str(), "absent"]).await?;
                Ok::<_, memkeep::Error>(g.is_some() && many.len() == 1)
            }
        });
        for r in futures::future::join_all(futs).await {
            match r {
                Ok(true) => {}
                Ok(false) => errors.push("a stored key not found".to_owned()),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(web1.peer_endpoint().unwrap().stats().protocol_errors, 0);
}

/// The owner's own copies are read and written in process: requests on web1 leave its
/// client's connection to its own endpoint unused (no network), run commands on its
/// endpoint in process, and still store its copy there; web2's copy goes over the
/// network as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_own_copies_are_reached_in_process() {
    let peers = Peers::new(2, Backups::One);
    let mut all = peers.start_all().await;
    let (web2, web1) = (all.pop().unwrap(), all.pop().unwrap());
    let ops = |route: &str| {
        web1.client()
            .nodes()
            .into_iter()
            .find(|n| n.id == route)
            .unwrap()
            .metrics
            .operations
    };
    let (own_before, other_before) = (ops("web1"), ops("web2"));
    let in_process_before = web1.peer_endpoint().unwrap().stats().in_process_commands;
    let mut browsers = sessions(&web1, 10).await;
    assert_eq!(check(&web1, &mut browsers).await, Vec::<String>::new());
    assert_eq!(
        ops("web1"),
        own_before,
        "no operation to web1 over the network"
    );
    assert!(
        ops("web2") > other_before,
        "web2's copies go over the network"
    );
    let stats = web1.peer_endpoint().unwrap().stats();
    // Each of the 20 requests reaches its own copy at least once.
    assert!(
        stats.in_process_commands >= in_process_before + 20,
        "{stats:?}"
    );
    for b in &browsers {
        assert!(web1.peer_endpoint().unwrap().holds(&key_of(b)));
        assert!(web2.peer_endpoint().unwrap().holds(&key_of(b)));
    }
}

/// Reads what `s` answers until it closes (bounded: 10 s).
async fn answer_until_closed(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("closed by the endpoint, not by this test's bound")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Logs `s` in (the peer protocol's login) and checks the answer.
async fn log_in(s: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(peers_kit::login_block(SECRET).as_bytes())
        .await
        .unwrap();
    let mut stored = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut stored))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&stored, b"STORED\r\n");
}

/// The endpoint's connection bounds: past `peer_max_pending_logins` connections that
/// have not logged in, or past `peer_max_connections`, the oldest connection not logged in
/// is answered, closed and counted (so a flood of them can't keep a peer out); when every
/// connection is logged in, a new one is refused. The peers go on serving sessions
/// meanwhile and afterwards, over their connections and over new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_endpoints_limits_are_closed_and_counted() {
    use tokio::net::TcpStream;
    let peers = Peers::new(2, Backups::One);
    let tune = |b: memkeep::session::SessionConfigBuilder| {
        b.peer_max_connections(8).peer_max_pending_logins(3)
    };
    let web1 = peers.start_with("web1", tune);
    let web2 = peers.start_with("web2", tune);
    assert!(session_kit::wait_nodes_up(&[&web1, &web2], Duration::from_secs(10)).await);
    let mut browsers = sessions(&web1, 5).await;
    let endpoint = web1.peer_endpoint().unwrap();
    let port = peers.port("web1");
    let peers_open = endpoint.stats().open_connections;
    assert_eq!(endpoint.stats().pending_logins, 0, "the peers logged in");

    // Five connections that do not log in, one after the other: the first two are
    // closed to make room for the last three.
    let mut conns = Vec::new();
    for _ in 0..5 {
        conns.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    for old in &mut conns[..2] {
        assert_eq!(
            answer_until_closed(old).await,
            "SERVER_ERROR too many connections not logged in\r\n"
        );
    }
    let mut waiting = conns.split_off(2);
    let settled = kit::eventually(Duration::from_secs(10), || {
        endpoint.stats().open_connections == peers_open + 3
    })
    .await;
    let stats = endpoint.stats();
    assert!(settled, "{stats:?}");
    assert_eq!(stats.connections_over_limit, 2, "{stats:?}");
    assert_eq!(stats.pending_logins, 3, "{stats:?}");
    // The peers are served meanwhile: both copies written, every session intact; and a
    // new peer connection gets in (the oldest waiting one makes room).
    assert_eq!(check(&web1, &mut browsers).await, Vec::<String>::new());
    assert_eq!(check(&web2, &mut browsers).await, Vec::<String>::new());
    let mut newcomer = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    log_in(&mut newcomer).await;
    assert_eq!(
        answer_until_closed(&mut waiting[0]).await,
        "SERVER_ERROR too many connections not logged in\r\n"
    );
    assert_eq!(endpoint.stats().connections_over_limit, 3);
    waiting[0] = newcomer;

    // Logged in, they no longer wait; the rest up to the total bound log in too, and
    // one connection more is refused whatever it would send.
    for s in &mut waiting[1..] {
        log_in(s).await;
    }
    while endpoint.stats().open_connections < 8 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        log_in(&mut s).await;
        waiting.push(s);
    }
    assert_eq!(endpoint.stats().pending_logins, 0);
    let mut extra = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(
        answer_until_closed(&mut extra).await,
        "SERVER_ERROR too many connections\r\n"
    );
    assert_eq!(endpoint.stats().connections_over_limit, 4);
    assert_eq!(check(&web1, &mut browsers).await, Vec::<String>::new());

    // Closed, their slots are free again: a new connection logs in.
    drop(waiting);
    assert!(
        kit::eventually(Duration::from_secs(10), || {
            endpoint.stats().open_connections == peers_open
        })
        .await,
        "{:?}",
        endpoint.stats()
    );
    let mut again = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    log_in(&mut again).await;
    assert_eq!(endpoint.stats().connections_over_limit, 4);
    assert_eq!(check(&web2, &mut browsers).await, Vec::<String>::new());
}
