//! Peer-backend (Loose Cluster) helpers: in-process session services that back each
//! other up through their replication endpoints, no memcached. Included next to
//! `mod kit;` with `#[path = "kit/peers.rs"] mod peers_kit;`.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use memkeep::session::peer::Backups;
use memkeep::session::{BackupSessionService, SessionConfig, SessionConfigBuilder};

/// The shared secret of the test peers.
pub const SECRET: &str = "test-peer-secret-0123456789";

/// A group of peers: routes `web1..webN` on free 127.0.0.1 ports.
#[derive(Clone, Debug)]
pub struct Peers {
    /// `(route, port)` of each peer.
    pub peers: Vec<(String, u16)>,
    /// Backups per session.
    pub backups: Backups,
}

impl Peers {
    /// `n` peers.
    pub fn new(n: usize, backups: Backups) -> Peers {
        let names: Vec<String> = (1..=n).map(|i| format!("web{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Peers::named(&names, backups)
    }

    /// Peers with these routes, each on its own port (a port found free may come back
    /// from the next search, since it was released: such a repeat is searched again).
    pub fn named(routes: &[&str], backups: Backups) -> Peers {
        let mut peers: Vec<(String, u16)> = Vec::new();
        for r in routes {
            let port = loop {
                let p = crate::kit::memcached::free_port();
                if peers.iter().all(|(_, q)| *q != p) {
                    break p;
                }
            };
            peers.push((r.to_string(), port));
        }
        Peers { peers, backups }
    }

    /// `web1:127.0.0.1:p1,...`.
    pub fn spec(&self) -> String {
        self.peers
            .iter()
            .map(|(r, p)| format!("{r}:127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The routes.
    pub fn routes(&self) -> Vec<String> {
        self.peers.iter().map(|(r, _)| r.clone()).collect()
    }

    /// The port of `route`.
    pub fn port(&self, route: &str) -> u16 {
        self.peers
            .iter()
            .find(|(r, _)| r == route)
            .map(|(_, p)| *p)
            .unwrap()
    }

    /// The config builder of the instance `route`.
    pub fn config(&self, route: &str) -> SessionConfigBuilder {
        SessionConfig::builder()
            .peers(self.spec())
            .peer_secret(SECRET)
            .backups(self.backups)
            .route(route)
            .operation_timeout(Duration::from_millis(500))
    }

    /// Starts instance `route` (retrying for a few seconds while its port is still
    /// held by a just-dropped instance).
    pub fn start(&self, route: &str) -> BackupSessionService {
        self.start_with(route, |b| b)
    }

    /// [`Peers::start`] with more settings applied by `tune`.
    pub fn start_with(
        &self,
        route: &str,
        tune: impl Fn(SessionConfigBuilder) -> SessionConfigBuilder,
    ) -> BackupSessionService {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let config = tune(self.config(route)).build().unwrap();
            match BackupSessionService::new(config) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("peer {route} not started yet ({e}); retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("peer {route} could not start: {e}"),
            }
        }
    }

    /// Starts every instance and waits (bounded) until each sees every peer up.
    pub async fn start_all(&self) -> Vec<BackupSessionService> {
        let services: Vec<BackupSessionService> =
            self.routes().iter().map(|r| self.start(r)).collect();
        let refs: Vec<&BackupSessionService> = services.iter().collect();
        assert!(
            crate::session_kit::wait_nodes_up(&refs, Duration::from_secs(10)).await,
            "every peer sees every other up"
        );
        services
    }
}

/// Waits (bounded) until `svc`'s client sees `route` in `state` (up: `true`).
pub async fn wait_peer(svc: &BackupSessionService, route: &str, up: bool) -> bool {
    crate::kit::eventually(Duration::from_secs(10), || {
        let state = svc.client().node_state(route);
        if up {
            state == Some(memkeep::NodeState::Up)
        } else {
            state == Some(memkeep::NodeState::Down)
        }
    })
    .await
}

/// The login block of the peer protocol with `secret`.
pub fn login_block(secret: &str) -> String {
    let user = memkeep::session::peer::PEER_PROTOCOL_USER;
    format!(
        "set auth 0 0 {}\r\n{user} {secret}\r\n",
        user.len() + 1 + secret.len()
    )
}

/// Sends `send` to the endpoint on `port` and reads what it answers until it closes the
/// connection (bounded: 10 s). The write side is shut after `send` (the endpoint
/// sees the end of the stream after it).
pub async fn exchange(port: u16, send: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // The endpoint may close before reading everything: a failed write is an answer too.
    let _ = s.write_all(send).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the endpoint closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}
