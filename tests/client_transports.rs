//! Transports and handshakes against real memcached servers the test kit starts:
//! memcached's text-protocol authentication (`-Y`), and the clear errors a client gets
//! when the server and the client don't agree (login, protocol).

mod kit;

use std::path::PathBuf;
use std::time::Duration;

use kit::memcached::raw;
use kit::Memcached;
use memkeep::{Client, Credentials, Expiry, NodeConfig, Protocol};

const CASE_LIMIT: Duration = Duration::from_secs(60);

/// A `-Y` file with one `user:password` line, removed on drop.
struct AuthFile(PathBuf);

impl AuthFile {
    fn new(user: &str, password: &str) -> AuthFile {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("memkeep-auth-{}-{n}", std::process::id()));
        std::fs::write(&path, format!("{user}:{password}\n")).expect("write the -Y file");
        AuthFile(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for AuthFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_to_a_y_server_works_in_both_protocols_and_is_sent_again_after_a_restart() {
    let auth = AuthFile::new("alice", "s3cret");
    let mut m = Memcached::start_with(&["-Y", auth.arg()]);
    // The server really refuses an unauthenticated connection.
    assert_eq!(
        raw::exchange(&m.addr(), b"version\r\n", &[]),
        ["CLIENT_ERROR unauthenticated"]
    );
    for p in kit::PROTOCOLS {
        let c = kit::builder_for(&[m.addr()], p)
            .credentials(Credentials::new("alice", "s3cret"))
            .build()
            .unwrap();
        kit::no_hang("authenticated operations", CASE_LIMIT, async {
            c.set("k", "v", Expiry::Never).await.unwrap();
            assert_eq!(c.get("k").await.unwrap().unwrap().value, "v");
            assert_eq!(c.get_many(["k"]).await.unwrap().len(), 1);
            assert!(c.delete("k").await.unwrap());
        })
        .await;
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret"),
            "the password is never shown: {shown}"
        );
        m.restart();
        let back = kit::no_hang("set after the restart", CASE_LIMIT, async {
            loop {
                match c.set("after", "yes", Expiry::Never).await {
                    Ok(()) => return c.get("after").await.unwrap(),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
        assert_eq!(back.unwrap().value, "yes", "{p:?}: logged in again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_node_credentials_log_in_to_each_node() {
    let (a, b) = (AuthFile::new("alice", "pw-a"), AuthFile::new("bob", "pw-b"));
    let (ma, mb) = (
        Memcached::start_with(&["-Y", a.arg()]),
        Memcached::start_with(&["-Y", b.arg()]),
    );
    let c = Client::builder()
        .node_config(
            NodeConfig::new(ma.addr())
                .id("n0")
                .credentials(Credentials::new("alice", "pw-a")),
        )
        .node_config(
            NodeConfig::new(mb.addr())
                .id("n1")
                .credentials(Credentials::new("bob", "pw-b")),
        )
        // Client-wide credentials are overridden by each node's own.
        .credentials(Credentials::new("mallory", "nope"))
        .build()
        .unwrap();
    assert!(
        kit::wait_all_up(&c, Duration::from_secs(10)).await,
        "{:?}",
        c.nodes()
    );
    for id in ["n0", "n1"] {
        let on = c.on_node(id).unwrap();
        on.set("k", id, Expiry::Never).await.unwrap();
        assert_eq!(on.get("k").await.unwrap().unwrap().value, id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_and_a_missing_one_say_so_plainly() {
    let auth = AuthFile::new("alice", "s3cret");
    let m = Memcached::start_with(&["-Y", auth.arg()]);
    let wrong = kit::builder_for(&[m.addr()], Protocol::Meta)
        .credentials(Credentials::new("alice", "not-the-password"))
        .build()
        .unwrap();
    let why = kit::why_unavailable(&wrong).await;
    assert!(why.contains("authentication refused"), "{why}");
    assert!(!why.contains("not-the-password"), "{why}");
    let missing = kit::client_for(&[m.addr()], Protocol::Text);
    let why = kit::why_unavailable(&missing).await;
    assert!(why.contains("requires authentication"), "{why}");
}
