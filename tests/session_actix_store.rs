//! The actix-session store adapter against real memcached: the session key names the
//! two nodes holding the copies (like the native id), a node SIGKILLed between save and
//! load loses nothing and the copy is restored, an update after a node died returns a key
//! naming the live nodes, a deleted session never comes back (not even by a late
//! update), a TTL refresh keeps the state; and actix-web with actix-session's own
//! middleware, a node killed between two requests.

#[path = "kit/adapters.rs"]
mod adapters_kit;
mod kit;
#[path = "kit/session.rs"]
mod session_kit;

use std::collections::HashMap;
use std::time::Duration;

use actix_session::storage::{SessionKey, SessionStore};
use actix_web::cookie::time::Duration as Ttl;
use adapters_kit::{holders, kinds};
use kit::Cluster;
use memkeep::adapters::actix::{ReplicatedStore, DEFAULT_KEY_PREFIX};
use memkeep::session::SessionId;
use session_kit::{fast_client, index_of};

fn store(cluster: &Cluster) -> ReplicatedStore {
    ReplicatedStore::new(fast_client(cluster, Duration::from_millis(300))).unwrap()
}

fn state(cart: &str) -> HashMap<String, String> {
    HashMap::from([
        ("cart".to_owned(), format!("\"{cart}\"")),
        ("user".to_owned(), "\"ann\"".to_owned()),
    ])
}

const HOUR: Ttl = Ttl::hours(1);

/// A copy of an actix key (the type is not `Clone`).
fn copy(key: &SessionKey) -> SessionKey {
    SessionKey::try_from(key.as_ref().to_owned()).unwrap()
}

fn id(key: &SessionKey) -> SessionId {
    SessionId::parse(key.as_ref()).expect("a native-format id")
}

fn data_key(key: &SessionKey) -> String {
    format!("{DEFAULT_KEY_PREFIX}{}", id(key).key())
}

/// The servers the key names, in server order.
fn named(key: &SessionKey) -> Vec<usize> {
    let id = id(key);
    let mut v: Vec<usize> = std::iter::once(id.node())
        .chain(id.backup())
        .map(index_of)
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn the_key_names_the_two_nodes_holding_the_copies() {
    let mut cluster = Cluster::start(3);
    let store = store(&cluster);
    let key = store.save(state("book"), &HOUR).await.unwrap();
    assert_eq!(
        named(&key).len(),
        2,
        "primary and backup named: {}",
        key.as_ref()
    );
    assert_eq!(holders(&mut cluster, &data_key(&key)), named(&key));
    assert_eq!(store.load(&key).await.unwrap(), Some(state("book")));
    let same = store.update(copy(&key), state("pen"), &HOUR).await.unwrap();
    assert_eq!(same.as_ref(), key.as_ref(), "nothing moved: same key");
    assert_eq!(store.load(&key).await.unwrap(), Some(state("pen")));
    store.update_ttl(&key, &HOUR).await.unwrap();
    assert_eq!(
        store.load(&key).await.unwrap(),
        Some(state("pen")),
        "a TTL refresh keeps the state"
    );
    let garbage = SessionKey::try_from("not-ours".to_owned()).unwrap();
    assert_eq!(store.load(&garbage).await.unwrap(), None);
}

async fn survives_a_kill(which: usize) {
    let mut cluster = Cluster::start(4);
    let store = store(&cluster);
    let key = store.save(state("book"), &HOUR).await.unwrap();
    let before = named(&key);
    cluster[before[which]].kill();
    assert_eq!(
        store.load(&key).await.unwrap(),
        Some(state("book")),
        "from the other copy"
    );
    let after = holders(&mut cluster, &data_key(&key));
    assert_eq!(after.len(), 2, "the lost copy was restored: {after:?}");
    // The next update names the nodes that hold the copies now.
    let moved = store.update(key, state("paid"), &HOUR).await.unwrap();
    assert!(
        !named(&moved).contains(&before[which]),
        "{}",
        moved.as_ref()
    );
    assert_eq!(holders(&mut cluster, &data_key(&moved)), named(&moved));
    assert_eq!(store.load(&moved).await.unwrap(), Some(state("paid")));
}

#[tokio::test]
async fn the_first_named_node_killed_between_save_and_load_loses_nothing() {
    survives_a_kill(0).await;
}

#[tokio::test]
async fn the_second_named_node_killed_between_save_and_load_loses_nothing() {
    survives_a_kill(1).await;
}

#[tokio::test]
async fn a_deleted_session_never_comes_back_even_by_a_late_update() {
    let mut cluster = Cluster::start(3);
    let store = store(&cluster);
    let key = store.save(state("book"), &HOUR).await.unwrap();
    store.delete(&key).await.unwrap();
    assert_eq!(store.load(&key).await.unwrap(), None);
    let k = kinds(&mut cluster, &data_key(&key));
    assert!(
        k.len() == 3 && k.iter().all(|(_, kind)| *kind == 1),
        "tombstones: {k:?}"
    );
    let late = store
        .update(copy(&key), state("again"), &HOUR)
        .await
        .unwrap();
    assert_eq!(store.load(&late).await.unwrap(), None);
    store.update_ttl(&key, &HOUR).await.unwrap();
    assert_eq!(store.load(&key).await.unwrap(), None);
}

#[tokio::test]
async fn the_ttl_is_the_expiry() {
    let cluster = Cluster::start(2);
    let store = store(&cluster);
    let key = store
        .save(state("soon"), &Ttl::milliseconds(1500))
        .await
        .unwrap();
    assert!(store.load(&key).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(store.load(&key).await.unwrap(), None, "expired");
}

mod through_actix_web {
    //! actix-session's own `SessionMiddleware` in actix-web, on the replicated store.

    use super::*;
    use actix_session::{Session, SessionMiddleware};
    use actix_web::cookie::{Cookie, Key};
    use actix_web::{test, web, App, HttpResponse};

    async fn count(session: Session) -> actix_web::Result<HttpResponse> {
        let n = session.get::<u64>("n")?.unwrap_or(0) + 1;
        session.insert("n", n)?;
        Ok(HttpResponse::Ok().body(n.to_string()))
    }

    /// One GET / with an optional cookie: the body and the cookie set, if any.
    macro_rules! send {
        ($app:expr, $cookie:expr) => {{
            let mut req = test::TestRequest::get().uri("/");
            if let Some(c) = $cookie {
                let c: &Cookie<'static> = c;
                req = req.cookie(c.clone());
            }
            let resp = test::call_service($app, req.to_request()).await;
            assert!(resp.status().is_success(), "{}", resp.status());
            let set: Option<Cookie<'static>> =
                resp.response().cookies().next().map(|c| c.into_owned());
            let body = test::read_body(resp).await;
            (String::from_utf8(body.to_vec()).unwrap(), set)
        }};
    }

    #[actix_web::test]
    async fn a_counter_survives_a_node_killed_between_two_requests() {
        let mut cluster = Cluster::start(3);
        let store = store(&cluster);
        let app = test::init_service(
            App::new()
                .wrap(
                    SessionMiddleware::builder(store.clone(), Key::from(&[7u8; 64]))
                        .cookie_secure(false)
                        .build(),
                )
                .route("/", web::get().to(count)),
        )
        .await;
        let (body, set) = send!(&app, None::<&Cookie<'static>>);
        assert_eq!(body, "1");
        let mut cookie = set.expect("a new session sets its cookie");
        let (body, _) = send!(&app, Some(&cookie));
        assert_eq!(body, "2");
        // The store's key is signed inside the cookie: find the copies on the servers.
        let held: Vec<usize> = (0..cluster.len())
            .filter(|&i| {
                kit::memcached::raw::exchange(&cluster[i].addr(), b"stats items\r\n", &["END"])
                    .iter()
                    .any(|l| l.contains(":number "))
            })
            .collect();
        assert_eq!(held.len(), 2, "two servers hold the session: {held:?}");
        cluster[held[0]].kill();
        let (body, set) = send!(&app, Some(&cookie));
        assert_eq!(body, "3", "the count went on");
        if let Some(c) = set {
            cookie = c; // the key now names the live nodes
        }
        let (body, _) = send!(&app, Some(&cookie));
        assert_eq!(body, "4");
        assert!(store.stats().repairs + store.stats().write_failures >= 1);
    }
}
