//! CAS tokens across a memcached restart. A memcached restarted empty numbers its CAS
//! tokens from 1 again, so a token a request read before the restart can equal the token
//! of an unrelated record written after it. Every conditional overwrite of the session
//! store carries the connection epoch its token was read in and is refused once the
//! node reconnected (docs/session.md, "Writes: copies only move forward").
//!
//! The collision is made deterministic here: the record written after the restart is
//! given exactly the token the pending request holds, by counting the restarted
//! server's tokens up to it with other keys.

mod kit;
#[path = "kit/session.rs"]
mod session_kit;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use kit::Cluster;
use memkeep::session::{BackupSessionService, CookieDecision, Mode, RequestInfo, SessionId};
use session_kit::{config, id_variants, index_of, look, report, service, wait_nodes_up, Browser};

const UP: Duration = Duration::from_secs(10);

/// The flags of a tombstone record (its write version, `u64::MAX`, cut to 32 bits).
const TOMBSTONE_FLAGS: u32 = u32::MAX;

/// One meta command and its one-line reply.
fn meta(addr: &str, command: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .expect("write");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("read (5 s limit)");
    line.trim_end().to_owned()
}

/// The CAS token of `key` on the server at `addr` (`None`: no item).
fn cas_of(addr: &str, key: &str) -> Option<u64> {
    let reply = meta(addr, &format!("mg {key} c"));
    reply
        .split_whitespace()
        .find_map(|flag| flag.strip_prefix('c'))
        .and_then(|t| t.parse().ok())
}

/// Stores `value` under `key` with `flags`; the item's new CAS token.
fn set_raw(addr: &str, key: &str, flags: u32, value: &[u8]) -> u64 {
    let mut cmd = format!("set {key} {flags} 0 {}\r\n", value.len()).into_bytes();
    cmd.extend_from_slice(value);
    cmd.extend_from_slice(b"\r\n");
    let reply = kit::memcached::raw::exchange(addr, &cmd, &["STORED"]);
    assert_eq!(
        reply.last().map(String::as_str),
        Some("STORED"),
        "{reply:?}"
    );
    cas_of(addr, key).expect("just stored")
}

/// Stores throwaway items on `addr` until the next store gets token `next`.
fn count_tokens_up_to(addr: &str, next: u64) {
    let mut last = set_raw(addr, "padding", 0, b"x");
    assert!(
        last < next,
        "the server's tokens are already past {next} ({last}): the scenario needs more headroom"
    );
    while last + 1 < next {
        last = set_raw(addr, "padding", 0, b"x");
    }
}

/// How many times each service's client reconnected to `node`.
fn reconnects(services: &[&BackupSessionService], node: &str) -> Vec<u64> {
    services
        .iter()
        .map(|svc| {
            svc.client()
                .nodes()
                .into_iter()
                .find(|n| n.id == node)
                .map_or(0, |n| n.metrics.reconnects)
        })
        .collect()
}

/// Waits (bounded) until every service's client has dropped its connection to `node`
/// since `before` (its reconnect counts then) and is connected again.
async fn wait_reconnected(services: &[&BackupSessionService], node: &str, before: &[u64]) {
    let again = kit::eventually(UP, || {
        reconnects(services, node)
            .iter()
            .zip(before)
            .all(|(now, then)| now > then)
    })
    .await;
    assert!(again, "{node}: the restart was not noticed");
    assert!(
        wait_nodes_up(services, UP).await,
        "{node} not seen up again"
    );
}

/// I1 through a CAS collision: a request loads a session, its primary memcached is
/// SIGKILLed and restarted empty, the session is logged out on another instance (the
/// restarted primary gets a tombstone), and the tombstone ends up with exactly the CAS
/// token the pending request read the old copy with. The request's save must not
/// replace the tombstone; after the backup node is lost as well (the next fault, after
/// a heal), the session is still gone everywhere.
#[tokio::test]
async fn a_token_read_before_a_restart_never_overwrites_a_tombstone_written_after_it() {
    let mut cluster = Cluster::start(2);
    let addrs = cluster.addrs();
    // Headroom: the session's copies get large tokens, the restarted server small ones.
    for addr in &addrs {
        count_tokens_up_to(addr, 200);
    }
    let a = service(&cluster, config(&cluster, Mode::Sticky).route("a"));
    let b = service(&cluster, config(&cluster, Mode::Sticky).route("b"));
    let all = [&a, &b];
    let mut browser = Browser::new();
    browser.increment(&a, "n").await.unwrap();
    let cookie = browser.cookie.clone().unwrap();
    let id = SessionId::parse(&cookie).unwrap();
    let key = id.key().to_string();
    let primary = index_of(id.node());
    let backup = 1 - primary;

    // A request on b loads the session (reading the primary's token) and changes it.
    let pending = b.request(RequestInfo::new("/bump").session_id(Some(&cookie)));
    let session = pending.session().await.unwrap().expect("loaded");
    session.insert("n", &2u64).unwrap();
    drop(session);
    let token = cas_of(&addrs[primary], &key).expect("the primary holds a copy");

    let before = reconnects(&all, id.node());
    cluster[primary].restart();
    wait_reconnected(&all, id.node(), &before).await;
    session_kit::logout(&a, &cookie).await;
    // The restarted primary's tombstone, given the very token the request holds.
    let tombstone = kit::memcached::raw::get_bytes(&addrs[primary], &key)
        .expect("the logout put a tombstone on the restarted primary");
    count_tokens_up_to(&addrs[primary], token);
    assert_eq!(
        set_raw(&addrs[primary], &key, TOMBSTONE_FLAGS, &tombstone),
        token
    );

    let out = pending.finish().await.unwrap();
    assert!(!out.written, "a save of a logged-out session: {out:?}");
    assert_eq!(out.cookie, CookieDecision::Remove);
    assert_eq!(
        kit::memcached::raw::get_bytes(&addrs[primary], &key).as_deref(),
        Some(&tombstone[..]),
        "the tombstone was replaced under a token from before the restart"
    );

    // Heal, then the next fault: the backup node restarts empty.
    for svc in all {
        svc.deliver_hints().await;
    }
    let before = reconnects(&all, &Cluster::id(backup));
    cluster[backup].restart();
    wait_reconnected(&all, &Cluster::id(backup), &before).await;
    for svc in all {
        svc.deliver_hints().await;
    }
    let mut forms = vec![cookie.clone()];
    forms.extend(id_variants(id.key(), &cluster.ids(), &["a", "b"]));
    let mut wrong = Vec::new();
    for (i, svc) in all.iter().enumerate() {
        for form in &forms {
            match look(svc, form, "n").await {
                Ok(None) => {}
                other => wrong.push(format!("{form} on instance {i}: {other:?}")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", report(&wrong));
}
