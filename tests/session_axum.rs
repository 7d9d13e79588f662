//! The tower layer and axum extractor, against real memcached: cookies set and honoured,
//! instance failover through the layer, URL-rewritten ids, and a failed save answered
//! with an error instead of a silent success.

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
use kit::Cluster;
use memkeep::session::tower::SessionLayer;
use memkeep::session::{BackupSessionService, SessionError, SessionRequest};
use session_http::{cookie_value, hits};
use tower::Layer;

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
    let router = Router::new().route("/", get(hits)).route("/big", get(big));
    SessionLayer::new(svc).layer(router)
}

async fn send(
    svc: &BackupSessionService,
    uri: &str,
    cookie: Option<&str>,
) -> (StatusCode, String, Option<String>) {
    let cookie =
        cookie.map(|c| HeaderValue::from_str(&format!("other=1; JSESSIONID={c}")).unwrap());
    session_http::send(app(svc.clone()), uri, cookie).await
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
async fn a_url_rewritten_id_reaches_the_route_and_the_session() {
    let cluster = Cluster::start(2);
    let a = session_kit::non_sticky(&cluster, "all");
    let (_, _, set) = send(&a, "/", None).await;
    let id = cookie_value(&set.unwrap());
    let (status, body, _) = send(&a, &format!("/;jsessionid={id}"), None).await;
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
