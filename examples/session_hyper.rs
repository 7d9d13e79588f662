//! A plain hyper 1 service using the framework-agnostic session API: read the cookie,
//! `request`, use the session, `finish`, write the `Set-Cookie` it decides.
//!
//! ```text
//! memcached -p 11211 &
//! MEMKEEP_NODES=n0:127.0.0.1:11211 cargo run --example session_hyper
//! curl -c jar -b jar localhost:3000/
//! ```
//!
//! The cookie is `Secure` (the default); curl (7.88) keeps it for `localhost`. To serve
//! plain HTTP on another host during development, set
//! `.cookie(CookieConfig { secure: false, ..CookieConfig::default() })`.

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{COOKIE, SET_COOKIE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use memkeep::session::{
    BackupSessionService, RequestInfo, SessionConfig, SessionError, SessionIdCandidates,
};

async fn handle(
    sessions: BackupSessionService,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // 1. The ids the request presents: the session cookie's values in every `Cookie`
    //    header, read as bytes (another cookie may hold non-ASCII bytes), at most a few
    //    distinct ones. (`;jsessionid=` in the path is only taken with url_rewriting on,
    //    by the service.)
    let mut ids = SessionIdCandidates::new();
    for v in req.headers().get_all(COOKIE) {
        sessions
            .config()
            .cookie()
            .collect_session_ids(v.as_bytes(), &mut ids);
    }
    let request = sessions.request(RequestInfo::new(req.uri().path()).session_ids(ids.into_ids()));

    // 2. The handler.
    let body: Result<String, SessionError> = async {
        let s = request.get_or_create().await?;
        let n = s.get::<u64>("hits")?.unwrap_or(0) + 1;
        s.insert("hits", &n)?;
        Ok(format!("{n} hits\n"))
    }
    .await;

    // 3. End of request: save, then the cookie decision.
    let outcome = request.finish().await;
    let (status, text, cookie) = match (body, outcome) {
        (Ok(text), Ok(outcome)) => (
            StatusCode::OK,
            text,
            sessions.set_cookie_value(&outcome.cookie),
        ),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("session error: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "session unavailable\n".into(),
                None,
            )
        }
    };
    let mut response = Response::builder().status(status);
    if let Some(c) = cookie {
        response = response.header(SET_COOKIE, c);
    }
    Ok(response
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nodes = std::env::var("MEMKEEP_NODES").unwrap_or_else(|_| "n0:127.0.0.1:11211".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let sessions = BackupSessionService::new(
        SessionConfig::builder()
            .nodes(nodes)
            .mode(memkeep::session::Mode::NonSticky)
            .locking_str("all")
            .build()?,
    )?;
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://127.0.0.1:{port}");
    loop {
        let (stream, _) = listener.accept().await?;
        let sessions = sessions.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(sessions.clone(), req));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {e}");
            }
        });
    }
}
