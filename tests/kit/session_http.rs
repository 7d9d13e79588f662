//! Session tests over HTTP in-process (feature `axum`): a counter handler, one request
//! through a service stack, the cookie of a `Set-Cookie`. Included by `tests/session_*.rs`
//! with `#[path = "kit/session_http.rs"] mod session_http;`.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;

use axum::body::Body;
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::header::{HeaderValue, COOKIE, SET_COOKIE};
use hyper::{Request, StatusCode};
use memkeep::session::{SessionError, SessionRequest};
use tower::ServiceExt;

/// A handler counting its requests in the session attribute `hits` (created if needed).
pub async fn hits(session: SessionRequest) -> Result<String, SessionError> {
    let s = session.get_or_create().await?;
    let n = s.get::<u64>("hits")?.unwrap_or(0) + 1;
    s.insert("hits", &n)?;
    Ok(n.to_string())
}

/// One GET of `uri` through `app` with an optional raw `Cookie` header: the status, the
/// body and the `Set-Cookie` header.
pub async fn send<S>(
    app: S,
    uri: &str,
    cookie: Option<HeaderValue>,
) -> (StatusCode, String, Option<String>)
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>,
{
    let mut req = Request::builder().uri(uri);
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let set = resp
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap(), set)
}

/// The session id in a `Set-Cookie: JSESSIONID=<id>; ...` value.
pub fn cookie_value(set_cookie: &str) -> String {
    let first = set_cookie.split(';').next().unwrap();
    first.strip_prefix("JSESSIONID=").unwrap().to_owned()
}
