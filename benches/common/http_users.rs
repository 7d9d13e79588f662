//! Keep-alive HTTP/1.1 users for the service benchmarks
//! (`#[path = "common/http_users.rs"] mod http_users;`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::http::header::{self, COOKIE, SET_COOKIE};
use hyper::http::{HeaderMap, Request};

/// The `name=value` pair of the first `Set-Cookie` starting with `prefix`.
pub fn cookie_of(headers: &HeaderMap, prefix: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
        .find(|pair| pair.starts_with(prefix))
}

/// `clients` users, each on its own keep-alive connection to `addr`, GET `/` in a loop
/// for `seconds`, each keeping the cookie `cookie_name` it was given. Returns requests/s
/// (errors are counted and printed).
pub async fn drive_http(addr: SocketAddr, cookie_name: &str, clients: usize, seconds: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
        let prefix = format!("{cookie_name}=");
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let _ = stream.set_nodelay(true);
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(connection);
            let mut cookie: Option<String> = None;
            while !stop.load(Ordering::Relaxed) {
                let mut req = Request::builder().uri("/").header(header::HOST, "bench");
                if let Some(c) = &cookie {
                    req = req.header(COOKIE, c.as_str());
                }
                let req = req
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .expect("request");
                let ok = match sender.send_request(req).await {
                    Ok(resp) => {
                        if let Some(set) = cookie_of(resp.headers(), &prefix) {
                            cookie = Some(set);
                        }
                        let ok = resp.status().is_success();
                        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                        ok
                    }
                    Err(_) => false,
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let e = errors.load(Ordering::Relaxed);
    if e > 0 {
        eprintln!("  {e} responses were errors");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
