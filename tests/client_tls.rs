//! TLS (feature `tls`) against real memcached servers started with `-Z -o
//! ssl_chain_cert=...,ssl_key=...` by the test kit, with certificates made by rcgen:
//! verification against the configured roots, the server name per node, client
//! certificates (memcached's `ssl_verify_mode`), and clear errors when one side speaks
//! TLS and the other doesn't.

mod kit;

use std::time::Duration;

use kit::tls::{Ca, Identity, TlsFiles};
use kit::Memcached;
use memkeep::{Client, Error, Expiry, NodeConfig, Protocol, TlsConfig};

const CASE_LIMIT: Duration = Duration::from_secs(60);

/// Every operation kind the test needs, then a restart of the server behind the client.
async fn round_trip(c: &Client, m: &mut Memcached) {
    kit::no_hang("operations over TLS", CASE_LIMIT, async {
        c.set("k", "over tls", Expiry::Never).await.unwrap();
        assert_eq!(c.get("k").await.unwrap().unwrap().value, "over tls");
        let big = vec![b'x'; 300_000];
        c.set("big", &big, Expiry::Never).await.unwrap();
        assert_eq!(c.get("big").await.unwrap().unwrap().value, big);
        let keys: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
        for key in &keys {
            c.set(key, key, Expiry::Never).await.unwrap();
        }
        assert_eq!(c.get_many(&keys).await.unwrap().len(), 100);
        let gets = (0..64).map(|i| c.get(format!("m{i}")));
        for got in futures::future::join_all(gets).await {
            assert!(got.unwrap().is_some());
        }
        m.restart();
        loop {
            match c.set("after", "yes", Expiry::Never).await {
                Ok(()) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        assert_eq!(c.get("after").await.unwrap().unwrap().value, "yes");
    })
    .await;
}

fn tls_client(addr: &str, p: Protocol, tls: TlsConfig) -> Client {
    kit::builder_for(&[addr.to_string()], p)
        .tls(tls)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_run_over_tls_in_both_protocols_and_survive_a_restart() {
    let ca = Ca::new("memkeep test CA");
    let files = TlsFiles::write(&ca.issue(&["localhost", "127.0.0.1"]), None);
    let mut m = files.start();
    for p in kit::PROTOCOLS {
        let c = tls_client(&m.addr(), p, TlsConfig::new(ca.pem().as_bytes()).unwrap());
        round_trip(&c, &mut m).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_name_is_checked_and_can_be_set_per_node() {
    let ca = Ca::new("memkeep test CA");
    // The certificate names a host only: reached by IP address, the node needs its name.
    let files = TlsFiles::write(&ca.issue(&["cache-a.test"]), None);
    let mut m = files.start();
    let tls = TlsConfig::new(ca.pem().as_bytes()).unwrap();
    let by_ip = tls_client(&m.addr(), Protocol::Meta, tls.clone());
    let why = kit::why_unavailable(&by_ip).await;
    assert!(
        why.contains("TLS handshake") && why.contains("certificate"),
        "{why}"
    );
    let named = Client::builder()
        .node_config(
            NodeConfig::new(m.addr())
                .id("n0")
                .tls_server_name("cache-a.test"),
        )
        .tls(tls)
        .build()
        .unwrap();
    round_trip(&named, &mut m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused() {
    let (ca, other) = (Ca::new("the server's CA"), Ca::new("another CA"));
    let files = TlsFiles::write(&ca.issue(&["127.0.0.1"]), None);
    let m = files.start();
    let c = tls_client(
        &m.addr(),
        Protocol::Meta,
        TlsConfig::new(other.pem().as_bytes()).unwrap(),
    );
    let why = kit::why_unavailable(&c).await;
    assert!(
        why.contains("TLS handshake") && why.contains("certificate"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_requires_a_client_certificate_gets_one() {
    let ca = Ca::new("memkeep test CA");
    let clients_ca = Ca::new("memkeep clients CA");
    // ssl_verify_mode=2: memcached requires a certificate signed by clients_ca.
    let files = TlsFiles::write(&ca.issue(&["127.0.0.1"]), Some(&clients_ca));
    let mut m = files.start();
    let without = tls_client(
        &m.addr(),
        Protocol::Meta,
        TlsConfig::new(ca.pem().as_bytes()).unwrap(),
    );
    let why = kit::why_unavailable(&without).await;
    assert!(why.contains("client certificate"), "{why}");
    let presenting = |identity: Identity| {
        TlsConfig::with_client_certificate(
            ca.pem().as_bytes(),
            identity.cert_pem.as_bytes(),
            identity.key_pem.as_bytes(),
        )
        .unwrap()
    };
    let me = clients_ca.issue(&["memkeep-client"]);
    let with = tls_client(&m.addr(), Protocol::Text, presenting(me));
    round_trip(&with, &mut m).await;
    // A certificate from a CA the server does not trust is refused.
    let stranger = Ca::new("not trusted by the server").issue(&["memkeep-client"]);
    let refused = tls_client(&m.addr(), Protocol::Meta, presenting(stranger));
    let why = kit::why_unavailable(&refused).await;
    assert!(why.contains("client certificate"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_meeting_a_tls_server_and_the_reverse_say_so() {
    let ca = Ca::new("memkeep test CA");
    let files = TlsFiles::write(&ca.issue(&["127.0.0.1"]), None);
    let tls_server = files.start();
    let plain = kit::client_for(&[tls_server.addr()], Protocol::Meta);
    let why = kit::why_unavailable(&plain).await;
    assert!(
        why.contains("memcached -Z") && why.contains("ClientBuilder::tls"),
        "{why}"
    );
    let plain_server = Memcached::start();
    let c = tls_client(
        &plain_server.addr(),
        Protocol::Meta,
        TlsConfig::new(ca.pem().as_bytes()).unwrap(),
    );
    let why = kit::why_unavailable(&c).await;
    assert!(why.contains("TLS handshake") && why.contains("-Z"), "{why}");
}

#[test]
fn bad_pem_is_a_config_error() {
    for bad in [&b""[..], b"not a certificate"] {
        assert!(matches!(
            TlsConfig::new(bad),
            Err(Error::Config { field: "tls", .. })
        ));
    }
    let ca = Ca::new("memkeep test CA");
    let e = TlsConfig::with_client_certificate(ca.pem().as_bytes(), ca.pem().as_bytes(), b"no key");
    assert!(
        matches!(e, Err(Error::Config { field: "tls", .. })),
        "{e:?}"
    );
}
