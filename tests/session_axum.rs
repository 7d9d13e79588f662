//! The tower layer and axum extractor, against real memcached: cookies set and honoured
//! (also beside other cookies holding non-ASCII bytes), bounded work for a header full of
//! candidate ids, instance failover through the layer, URL-rewritten ids (opt-in), secure
//! cookie defaults, and a failed save answered with an error instead of a silent success.

mod kit;
#[path = "kit/session_http.rs"]
mod session_http;
#[path = "kit/session.rs"]
mod session_kit;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use kit::memcached::raw;
use kit::Cluster;
use memkeep::session::tower::SessionLayer;
use memkeep::session::{
    BackupSessionService, SessionError, SessionKey, SessionRequest, MAX_SESSION_ID_CANDIDATES,
};
use session_http::{cookie_value, hits};
use tower::Layer;

/// Login: binds the session to `ann` and rotates its id.
async fn login(session: SessionRequest) -> Result<&'static str, SessionError> {
    session.bind_principal("ann").await?;
    session.cycle_id().await?;
    Ok("logged in")
}

/// Log out everywhere: every session of `ann`, this one included.
async fn logout_everywhere(session: SessionRequest) -> Result<String, SessionError> {
    Ok(session.invalidate_principal("ann").await?.to_string())
}

async fn big(session: SessionRequest) -> Result<&'static str, SessionError> {
    let s = session.get_or_create().await?;
    s.insert("blob", &"z".repeat(2 * 1024 * 1024))?;
    Ok("stored?")
}

fn app(
    svc: BackupSessionService,
) -> impl tower::Service<
    Request<Body>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    let router = Router::new()
        .route("/", get(hits))
        .route("/big", get(big))
        .route("/login", get(login))
        .route("/logout-everywhere", get(logout_everywhere));
    SessionLayer::new(svc).layer(router)
}

async fn send(
    svc: &BackupSessionService,
    uri: &str,
    cookie: Option<&str>,
) -> (StatusCode, String, Option<String>) {
    let header = cookie.map(|c| format!("other=1; JSESSIONID={c}").into_bytes());
    send_header(svc, uri, header.as_deref()).await
}

/// `send` with the whole `Cookie` header given as raw bytes.
async fn send_header(
    svc: &BackupSessionService,
    uri: &str,
    cookie_header: Option<&[u8]>,
) -> (StatusCode, String, Option<String>) {
    let cookie = cookie_header.map(|c| HeaderValue::from_bytes(c).unwrap());
    session_http::send(app(svc.clone()), uri, cookie).await
}

/// A first visit without a cookie: the id of the session it creates (hits = 1).
async fn first_visit(svc: &BackupSessionService) -> String {
    let (status, body, set) = send(svc, "/", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));
    cookie_value(&set.expect("a new session sets the cookie"))
}

#[tokio::test]
async fn the_layer_sets_the_cookie_and_another_instance_continues_the_session() {
    let cluster = Cluster::start(2);
    let a = session_kit::sticky(&cluster, "a");
    let (status, body, set) = send(&a, "/", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));
    let set = set.expect("a new session sets the cookie");
    assert!(set.contains("HttpOnly") && set.contains("Path=/"), "{set}");
    let id = cookie_value(&set);
    let (_, body, set) = send(&a, "/", Some(&id)).await;
    assert_eq!(body, "2");
    assert_eq!(set, None, "unchanged id: no Set-Cookie");
    drop(a);

    let b = session_kit::sticky(&cluster, "b");
    let (_, body, set) = send(&b, "/", Some(&id)).await;
    assert_eq!(body, "3", "instance B continued the session");
    let new_id = cookie_value(&set.expect("takeover reissues the cookie"));
    assert!(new_id.ends_with(".b"));
}

#[tokio::test]
async fn a_url_rewritten_id_reaches_the_route_and_the_session_when_opted_in() {
    let cluster = Cluster::start(2);
    let a = session_kit::non_sticky_with(&cluster, "all", |b| b.url_rewriting(true));
    let id = first_visit(&a).await;
    let (status, body, _) = send(&a, &format!("/;jsessionid={id}"), None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "2"));
}

#[tokio::test]
async fn by_default_a_url_id_is_ignored_but_stripped_so_the_route_still_matches() {
    let cluster = Cluster::start(2);
    let a = session_kit::non_sticky(&cluster, "all");
    let id = first_visit(&a).await;
    // A link carrying someone's id (session fixation) does not join that session.
    let (status, body, set) = send(&a, &format!("/;jsessionid={id}"), None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));
    let fresh = cookie_value(&set.expect("a new session sets the cookie"));
    assert_ne!(fresh, id);
    // The session itself is intact for its cookie.
    let (_, body, _) = send(&a, "/", Some(&id)).await;
    assert_eq!(body, "2");
}

#[tokio::test]
async fn the_cookie_is_secure_by_default() {
    let cluster = Cluster::start(2);
    let a = session_kit::non_sticky(&cluster, "none");
    let (_, _, set) = send(&a, "/", None).await;
    let set = set.expect("a new session sets the cookie");
    assert!(set.contains("; Secure"), "{set}");
}

#[tokio::test]
async fn non_ascii_bytes_in_another_cookie_do_not_lose_the_session() {
    let cluster = Cluster::start(2);
    for a in [
        session_kit::sticky(&cluster, "a"),
        session_kit::non_sticky(&cluster, "all"),
    ] {
        let id = first_visit(&a).await;
        let utf8 = format!("lang=français; JSESSIONID={id}; theme=dark").into_bytes();
        let mut latin1 = b"lang=fran\xe7ais; JSESSIONID=".to_vec();
        latin1.extend_from_slice(id.as_bytes());
        for (n, header) in [utf8, latin1].iter().enumerate() {
            let (status, body, set) = send_header(&a, "/", Some(header)).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, (n + 2).to_string(), "the session went on");
            assert_eq!(set, None, "same id: no Set-Cookie");
        }
    }
}

/// A syntactically valid id naming a configured node, for a session that does not exist.
fn unknown_id(cluster: &Cluster) -> String {
    let ids = cluster.ids();
    format!("{}-{}~{}", SessionKey::generate().unwrap(), ids[0], ids[1])
}

/// Memcached `get`s served by every node of `cluster` so far.
fn gets_served(cluster: &Cluster) -> u64 {
    cluster
        .addrs()
        .iter()
        .map(|a| raw::stat(a, "cmd_get"))
        .sum()
}

#[tokio::test]
async fn a_cookie_header_with_thousands_of_ids_costs_bounded_work() {
    let cluster = Cluster::start(2);
    let a = session_kit::non_sticky(&cluster, "none");
    let id = first_visit(&a).await;

    // What looking up one unknown id costs (the header's first candidate).
    let before = gets_served(&cluster);
    let one = format!("JSESSIONID={}", unknown_id(&cluster));
    let (status, body, _) = send_header(&a, "/", Some(one.as_bytes())).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));
    let per_candidate = gets_served(&cluster) - before;
    assert!(per_candidate > 0, "a lookup reaches memcached");

    // 7,000 distinct unknown ids (~330 KB) and then the real one.
    let mut header = String::new();
    for _ in 0..7000 {
        header.push_str(&format!("JSESSIONID={}; ", unknown_id(&cluster)));
    }
    header.push_str(&format!("JSESSIONID={id}"));
    let before = gets_served(&cluster);
    let (status, body, set) = send_header(&a, "/", Some(header.as_bytes())).await;
    let spent = gets_served(&cluster) - before;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body, "1",
        "only the first candidates are looked at: a new session"
    );
    assert!(set.is_some());
    let bound = per_candidate * MAX_SESSION_ID_CANDIDATES as u64;
    assert!(
        spent <= bound,
        "{spent} gets for one request; at most {bound} expected"
    );

    // The real id among the first few (after duplicates of a bogus one) is found.
    let bogus = unknown_id(&cluster);
    let mut header = String::new();
    for _ in 0..7000 {
        header.push_str(&format!("JSESSIONID={bogus}; "));
    }
    header.push_str(&format!("JSESSIONID={id}"));
    let (status, body, _) = send_header(&a, "/", Some(header.as_bytes())).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "2"));
}

#[tokio::test]
async fn a_session_that_cannot_be_saved_turns_the_response_into_an_error() {
    let cluster = Cluster::start(2);
    let a = session_kit::non_sticky(&cluster, "none");
    let (status, _, set) = send(&a, "/big", None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(set, None);
    assert_eq!(a.stats().oversized, 1);
}

#[tokio::test]
async fn login_rotates_the_id_over_http_and_log_out_everywhere_ends_every_session() {
    let cluster = Cluster::start(3);
    let a = session_kit::sticky(&cluster, "a");
    let b = session_kit::sticky(&cluster, "b");
    // Two browsers of ann, one on each instance.
    let mut ann = Vec::new();
    for svc in [&a, &b] {
        let before = first_visit(svc).await;
        let (status, body, set) = send(svc, "/login", Some(&before)).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "logged in"));
        let after = cookie_value(&set.expect("the login reissues the cookie"));
        assert_ne!(
            before.split('-').next(),
            after.split('-').next(),
            "the id's random part changes at login"
        );
        // The data survived the rotation; the old id gets a new, empty session.
        let (_, body, _) = send(svc, "/", Some(&after)).await;
        assert_eq!(body, "2");
        let (_, body, set) = send(svc, "/", Some(&before)).await;
        assert_eq!(body, "1", "the pre-login id must not serve the session");
        assert!(set.is_some());
        ann.push(after);
    }
    let (status, body, set) = send(&b, "/logout-everywhere", Some(&ann[1])).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));
    assert!(
        set.as_deref().is_some_and(|s| s.contains("Max-Age=0")),
        "the caller's own cookie is removed: {set:?}"
    );
    for id in &ann {
        for svc in [&a, &b] {
            let (_, body, _) = send(svc, "/", Some(id)).await;
            assert_eq!(body, "1", "a session of ann survived log-out-everywhere");
        }
    }
}
