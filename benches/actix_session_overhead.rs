//! actix-session on memkeep's replicated store against actix-session's own
//! `CookieSessionStore` (the state in the encrypted cookie, no server-side storage:
//! actix-session has no in-memory store, so this is the framework's floor), one actix-web
//! handler that increments a session counter, over HTTP, in one run.
//!
//! Run: `cargo bench --bench actix_session_overhead --features actix-session`
//! (needs `/usr/bin/memcached`, or `MEMKEEP_MEMCACHED=/path`). The server has 2 workers;
//! the load generator (64 keep-alive users, `CLIENTS`) shares the machine. The stores run
//! interleaved, `ROUNDS` times (default 3) for `SECONDS` each (default 2); the median is
//! reported.

#[path = "common/args.rs"]
mod args;
#[path = "common/http_users.rs"]
mod http_users;
#[path = "common/memcached.rs"]
mod memcached;

use std::net::SocketAddr;

use actix_session::storage::{CookieSessionStore, SessionStore};
use actix_session::{Session, SessionMiddleware};
use actix_web::cookie::Key;
use actix_web::{web, App, HttpResponse, HttpServer};
use memkeep::adapters::actix::ReplicatedStore;

async fn counter(session: Session) -> HttpResponse {
    let n = session.get::<u64>("n").ok().flatten().unwrap_or(0) + 1;
    let _ = session.insert("n", n);
    HttpResponse::Ok().body(n.to_string())
}

/// Serves the counter on a free port in a thread of its own; `setup` runs in the
/// server's runtime and returns the per-worker store factory. Returns the address.
fn serve<S, G, F>(setup: F) -> SocketAddr
where
    S: SessionStore + 'static,
    G: Fn() -> S + Clone + Send + 'static,
    F: FnOnce() -> G + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let store = setup();
            let key = Key::from(&[7u8; 64]);
            let server = HttpServer::new(move || {
                App::new()
                    .wrap(
                        SessionMiddleware::builder(store(), key.clone())
                            .cookie_secure(false)
                            .build(),
                    )
                    .route("/", web::get().to(counter))
            })
            .workers(2)
            .listen(listener)
            .expect("listen")
            .run();
            let _ = server.await;
        });
    });
    addr
}

fn main() {
    let Some((clients, seconds, rounds)) = args::load_run() else {
        return;
    };
    let nodes = [memcached::start_memcached(2), memcached::start_memcached(2)];
    let ports = [nodes[0].1, nodes[1].1];
    let subjects: Vec<(&str, SocketAddr)> = vec![
        (
            "actix-session CookieSessionStore (floor)",
            serve(|| CookieSessionStore::default),
        ),
        (
            "actix-session on memkeep ReplicatedStore",
            serve(move || {
                let client = memcached::client_for(&ports);
                let store = ReplicatedStore::new(client).expect("store");
                move || store.clone()
            }),
        ),
    ];
    let rt = args::runtime();
    rt.block_on(async move {
        // Both servers accept before the first round.
        for (_, addr) in &subjects {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        println!(
            "{clients} concurrent users over HTTP; {rounds} interleaved rounds of {seconds} s, median; \
             the handler increments a session counter"
        );
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); subjects.len()];
        for _ in 0..rounds {
            for (i, (_, addr)) in subjects.iter().enumerate() {
                samples[i].push(http_users::drive_http(*addr, "id", clients, seconds).await);
            }
        }
        let floor = args::median(&mut samples[0].clone());
        println!("| store | requests/s (median) | vs floor |");
        println!("|---|---|---|");
        for ((name, _), s) in subjects.iter().zip(samples.iter_mut()) {
            let m = args::median(s);
            println!("| {name} | {m:.0} | {:.2}x |", m / floor);
        }
    });
    drop(nodes);
}
