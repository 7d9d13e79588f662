//! The tower-sessions store adapter against real memcached: two copies per session, a
//! node SIGKILLed (or restarted empty) between save and load loses nothing and the
//! missing copy is restored, a reader finds a session whose copies moved while a node
//! was down, `create` refuses an id collision, a deleted session never comes back (not
//! even by a late save), the expiry date is honoured, and the whole thing under
//! tower-sessions' own `SessionManagerLayer` in axum with a node killed between two
//! requests.

#[path = "kit/adapters.rs"]
mod adapters_kit;
mod kit;
#[path = "kit/session_http.rs"]
mod session_http;
#[path = "kit/session.rs"]
mod session_kit;

use std::collections::HashMap;
use std::time::Duration;

use adapters_kit::{holders, kinds};
use kit::Cluster;
use memkeep::adapters::tower_sessions::{ReplicatedStore, DEFAULT_KEY_PREFIX};
use serde_json::json;
use session_kit::fast_client;
use tower_sessions::cookie::time::{self, OffsetDateTime};
use tower_sessions::session::{Id, Record};
use tower_sessions::SessionStore;

fn store(cluster: &Cluster) -> ReplicatedStore {
    ReplicatedStore::new(fast_client(cluster, Duration::from_millis(300))).unwrap()
}

fn record(id: i128, cart: &str, lifetime: time::Duration) -> Record {
    let mut data = HashMap::new();
    data.insert("cart".to_owned(), json!(cart));
    data.insert("n".to_owned(), json!({"a": [1, 2.5, null, true]}));
    Record {
        id: Id(id),
        data,
        expiry_date: OffsetDateTime::now_utc() + lifetime,
    }
}

fn key_of(id: i128) -> String {
    format!("{DEFAULT_KEY_PREFIX}{:032x}", id as u128)
}

fn cart(r: &Record) -> Option<&str> {
    r.data.get("cart").and_then(|v| v.as_str())
}

const HOUR: time::Duration = time::Duration::hours(1);

#[tokio::test]
async fn a_saved_session_has_two_copies_and_loads_back_whole() {
    let (_cluster, store, mut r, _) = saved(3, 7, "book").await;
    let loaded = store.load(&Id(7)).await.unwrap().unwrap();
    assert_eq!(loaded.data, r.data);
    // The expiry date survives to the millisecond.
    let diff = (loaded.expiry_date - r.expiry_date).abs();
    assert!(diff < time::Duration::milliseconds(1), "{diff}");
    r.data.insert("cart".into(), json!("pen"));
    store.save(&r).await.unwrap();
    assert_eq!(
        cart(&store.load(&Id(7)).await.unwrap().unwrap()),
        Some("pen")
    );
    assert_eq!(store.load(&Id(8)).await.unwrap(), None, "unknown id");
}

/// A cluster of `nodes` servers and a store holding session `id` ("cart" = `cart`),
/// and the servers holding its copies.
async fn saved(
    nodes: usize,
    id: i128,
    cart: &str,
) -> (Cluster, ReplicatedStore, Record, Vec<usize>) {
    let mut cluster = Cluster::start(nodes);
    let store = store(&cluster);
    let mut r = record(id, cart, HOUR);
    store.create(&mut r).await.unwrap();
    assert_eq!(r.id, Id(id), "a free id is kept");
    let before = holders(&mut cluster, &key_of(id));
    assert_eq!(before.len(), 2, "primary and backup");
    (cluster, store, r, before)
}

/// [`saved`], then the server holding the `which`-th copy (in server order) SIGKILLed.
async fn saved_then_holder_killed(
    nodes: usize,
    id: i128,
    cart: &str,
    which: usize,
) -> (Cluster, ReplicatedStore, Record, Vec<usize>) {
    let (mut cluster, store, r, before) = saved(nodes, id, cart).await;
    cluster[before[which]].kill();
    (cluster, store, r, before)
}

/// Saves, SIGKILLs the `which`-th server holding a copy, loads: the session is there,
/// and a second copy was restored on a live node.
async fn survives_a_kill_between_save_and_load(which: usize) {
    let id = 0x1234_5678_9abc_def0_1122_3344_5566_7788_i128 + which as i128;
    let (mut cluster, store, mut r, before) =
        saved_then_holder_killed(4, id, "book+pen", which).await;

    let loaded = store.load(&Id(id)).await.unwrap().expect("the other copy");
    assert_eq!(cart(&loaded), Some("book+pen"), "the latest save");
    let after = holders(&mut cluster, &key_of(id));
    assert_eq!(after.len(), 2, "the lost copy was restored: {after:?}");
    assert!(!after.contains(&before[which]));
    assert!(store.stats().repairs >= 1);

    // And the next save goes to live nodes only, and loads back.
    r.data.insert("cart".into(), json!("paid"));
    store.save(&r).await.unwrap();
    assert_eq!(
        cart(&store.load(&Id(id)).await.unwrap().unwrap()),
        Some("paid")
    );
}

#[tokio::test]
async fn the_first_holder_killed_between_save_and_load_loses_nothing() {
    survives_a_kill_between_save_and_load(0).await;
}

#[tokio::test]
async fn the_second_holder_killed_between_save_and_load_loses_nothing() {
    survives_a_kill_between_save_and_load(1).await;
}

#[tokio::test]
async fn a_holder_restarted_empty_gets_its_copy_back_on_the_next_load() {
    let (mut cluster, store, _, before) = saved(3, 42, "book").await;
    cluster[before[0]].restart();
    assert_eq!(
        cart(&store.load(&Id(42)).await.unwrap().unwrap()),
        Some("book")
    );
    // The first load may still see the restarted node as failing (its old connection
    // broke) and restore the copy elsewhere; once the node is seen up, a load puts the
    // copy back on the id's own nodes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(holders(&mut cluster, &key_of(42)).len(), 2);
        if holders(&mut cluster, &key_of(42)) == before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "copy never restored in place"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            cart(&store.load(&Id(42)).await.unwrap().unwrap()),
            Some("book")
        );
    }
    assert!(store.stats().repairs >= 1);
}

async fn session_kit_wait_up(store: &ReplicatedStore) -> bool {
    kit::wait_all_up(store.client(), Duration::from_secs(10)).await
}

/// The placement is a function of the id and the live nodes: a session saved while a
/// node was down has its copies further down the id's order. When the node is back
/// (empty), a reader looks there first, finds nothing and walks down the order until it
/// found two copies: the session is found, never reported absent.
#[tokio::test]
async fn a_session_saved_while_a_node_was_down_is_found_after_it_came_back() {
    let (mut cluster, store, mut r, first) = saved_then_holder_killed(4, 99, "v1", 0).await;
    r.data.insert("cart".into(), json!("v2"));
    store.save(&r).await.unwrap();
    let second = holders(&mut cluster, &key_of(99));
    assert_eq!(second.len(), 2);
    assert!(!second.contains(&first[0]), "moved off the dead node");
    cluster[first[0]].restart();
    assert!(session_kit_wait_up(&store).await);
    // A fresh store (another instance), nothing cached anywhere.
    let other = self::store(&cluster);
    assert!(session_kit_wait_up(&other).await);
    let loaded = other
        .load(&Id(99))
        .await
        .unwrap()
        .expect("found down the order");
    assert_eq!(cart(&loaded), Some("v2"));
    // The copies are back on the id's first two nodes (restored in place), the copy
    // left further down the order removed.
    assert_eq!(holders(&mut cluster, &key_of(99)), first);
}

#[tokio::test]
async fn create_refuses_an_id_collision_and_draws_another_id() {
    let cluster = Cluster::start(2);
    let store = store(&cluster);
    let mut first = record(5, "mine", HOUR);
    store.create(&mut first).await.unwrap();
    let mut second = record(5, "theirs", HOUR);
    store.create(&mut second).await.unwrap();
    assert_ne!(second.id, Id(5), "a new id was drawn");
    assert_eq!(
        cart(&store.load(&Id(5)).await.unwrap().unwrap()),
        Some("mine")
    );
    assert_eq!(
        cart(&store.load(&second.id).await.unwrap().unwrap()),
        Some("theirs")
    );
    // A deleted id is taken too: its tombstone is not overwritten.
    store.delete(&Id(5)).await.unwrap();
    let mut third = record(5, "third", HOUR);
    store.create(&mut third).await.unwrap();
    assert_ne!(third.id, Id(5));
    assert_eq!(store.load(&Id(5)).await.unwrap(), None);
}

#[tokio::test]
async fn a_deleted_session_never_comes_back_even_by_a_late_save() {
    let mut cluster = Cluster::start(3);
    let store = store(&cluster);
    let mut r = record(11, "book", HOUR);
    store.create(&mut r).await.unwrap();
    store.delete(&Id(11)).await.unwrap();
    assert_eq!(store.load(&Id(11)).await.unwrap(), None);
    let k = kinds(&mut cluster, &key_of(11));
    assert_eq!(k.len(), 3, "a tombstone on every node: {k:?}");
    assert!(k.iter().all(|(_, kind)| *kind == 1), "{k:?}");
    // A request that loaded the session before the delete saves it afterwards.
    r.data.insert("cart".into(), json!("resurrected?"));
    store.save(&r).await.unwrap();
    assert_eq!(store.load(&Id(11)).await.unwrap(), None);
    assert!(store.stats().writes_after_invalidation >= 1);
}

#[tokio::test]
async fn a_delete_with_a_holder_killed_still_hides_the_session() {
    let (_cluster, store, _, _) = saved_then_holder_killed(3, 12, "book", 0).await;
    store.delete(&Id(12)).await.unwrap();
    assert_eq!(store.load(&Id(12)).await.unwrap(), None);
}

#[tokio::test]
async fn the_expiry_date_is_honoured() {
    let cluster = Cluster::start(2);
    let store = store(&cluster);
    let mut past = record(21, "old", time::Duration::seconds(-5));
    store.create(&mut past).await.unwrap();
    assert_eq!(store.load(&past.id).await.unwrap(), None, "already expired");
    let mut soon = record(22, "soon", time::Duration::milliseconds(1500));
    store.create(&mut soon).await.unwrap();
    assert!(store.load(&Id(22)).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(store.load(&Id(22)).await.unwrap(), None, "expired");
}

mod through_the_layer {
    //! tower-sessions' own `SessionManagerLayer` in axum, on the replicated store.

    use super::*;
    use axum::routing::get;
    use axum::Router;
    use hyper::header::HeaderValue;
    use tower_sessions::{Session, SessionManagerLayer};

    async fn count(session: Session) -> String {
        let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
        session.insert("n", n).await.unwrap();
        n.to_string()
    }

    fn app(store: ReplicatedStore) -> Router {
        Router::new()
            .route("/", get(count))
            .layer(SessionManagerLayer::new(store).with_secure(false))
    }

    /// The `id=<value>` pair of a `Set-Cookie` header.
    fn cookie_pair(set_cookie: &str) -> HeaderValue {
        HeaderValue::from_str(set_cookie.split(';').next().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_counter_survives_a_node_killed_between_two_requests() {
        let mut cluster = Cluster::start(3);
        let store = store(&cluster);
        let (status, body, set) = session_http::send(app(store.clone()), "/", None).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "1"));
        let cookie = cookie_pair(&set.expect("a new session sets its cookie"));
        let (_, body, _) = session_http::send(app(store.clone()), "/", Some(cookie.clone())).await;
        assert_eq!(body, "2");
        // Kill a node holding a copy of the session, then go on.
        let id: Id = cookie.to_str().unwrap()["id=".len()..].parse().unwrap();
        let before = holders(&mut cluster, &key_of(id.0));
        assert_eq!(before.len(), 2);
        cluster[before[1]].kill();
        let (status, body, _) =
            session_http::send(app(store.clone()), "/", Some(cookie.clone())).await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "3"),
            "the count went on"
        );
        assert_eq!(
            holders(&mut cluster, &key_of(id.0)).len(),
            2,
            "two copies again"
        );
        // Logout-like deletion through the layer's store: the cookie no longer works.
        store.delete(&id).await.unwrap();
        let (_, body, _) = session_http::send(app(store.clone()), "/", Some(cookie)).await;
        assert_eq!(body, "1", "a new session");
    }
}
