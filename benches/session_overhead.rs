//! Service overhead: requests/s of one axum handler that changes its session (a counter),
//! through memkeep's layer in sticky+sync, sticky+async and non-sticky modes, and in
//! sticky+sync on the peer backend (a second in-process instance's endpoint keeps the other
//! copy, no memcached), against the same handler with tower-sessions on its in-memory
//! store (the floor), in one run.
//!
//! Run: `cargo bench --bench session_overhead --features axum`
//! (needs `/usr/bin/memcached`, or `MEMKEEP_MEMCACHED=/path`). With `--features
//! axum,tower-sessions` it also measures tower-sessions on memkeep's replicated store
//! (`ONLY=tower-sessions` to run just that beside the floor).
//!
//! Two transports, both measured by default (`TRANSPORT=http|inproc|both`):
//! * `http`: a real axum server on 127.0.0.1, each user a keep-alive HTTP/1.1 connection
//!   (what a deployment sees; the load generator shares the machine, like `ab` would);
//! * `inproc`: requests through the tower service in-process, no sockets between client
//!   and handler: the session layers' own cost plus, for memkeep, the memcached round trips.
//!
//! The modes run interleaved, `ROUNDS` times (default 3) for `SECONDS` each (default 2);
//! the median is reported, so a burst of background load hits every mode alike.
//! Environment: `CLIENTS` (default 64 concurrent users), `ONLY` (comma-separated: run
//! only the modes whose name contains one of the parts; the floor always runs).

#[path = "common/args.rs"]
mod args;
#[path = "common/http_users.rs"]
mod http_users;
#[path = "common/memcached.rs"]
mod memcached;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::header::COOKIE;
use http::Request;
use memcached::start_memcached;
use memkeep::session::tower::{SessionLayer, SessionMiddleware};
use memkeep::session::{
    BackupSessionService, Mode, SessionConfig, SessionError, SessionRequest, WriteMode,
};
use tower::{Layer, Service, ServiceExt};

async fn memkeep_counter(session: SessionRequest) -> Result<String, SessionError> {
    let s = session.get_or_create().await?;
    let n = s.get::<u64>("n")?.unwrap_or(0) + 1;
    s.insert("n", &n)?;
    Ok(n.to_string())
}

async fn tower_sessions_counter(session: tower_sessions::Session) -> String {
    let n = session.get::<u64>("n").await.ok().flatten().unwrap_or(0) + 1;
    let _ = session.insert("n", n).await;
    n.to_string()
}

/// The floor's handler followed by `round_trips` awaited memcached operations, one after
/// the other, on a session-sized record (a read, then a write when there are two): the
/// least any synchronous replication to another process adds to the floor. The memcached
/// backend's sticky+sync reads both copies' versions before the handler and writes both
/// after it (two round trips; the peer backend the same, to the other instance).
async fn floor_plus_round_trips(
    session: tower_sessions::Session,
    client: memkeep::Client,
    round_trips: usize,
) -> String {
    let n = tower_sessions_counter(session).await;
    let key = format!("bench:rt:{}", n.len());
    if round_trips >= 2 {
        let _ = client.get(&key).await;
    }
    if round_trips >= 1 {
        let _ = client.set(&key, [b'x'; 96], memkeep::Expiry::Never).await;
    }
    n
}

/// How requests reach the app.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Http,
    InProcess,
}

type App = axum::routing::RouterIntoService<Body>;

/// Runs `clients` users for `seconds` against `app`; returns requests/s.
async fn drive<S>(
    app: S,
    transport: Transport,
    cookie_name: &str,
    clients: usize,
    seconds: u64,
) -> f64
where
    S: Service<
            Request<Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut server = None;
    let mut addr = None;
    if transport == Transport::Http {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        addr = Some(listener.local_addr().expect("addr"));
        let app = app.clone();
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        server = Some(tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                axum::ServiceExt::<Request<Body>>::into_make_service(app),
            )
            .await;
        }));
    }
    let mut tasks = Vec::new();
    let started = Instant::now();
    for _ in 0..clients {
        let app = app.clone();
        let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
        let prefix = format!("{cookie_name}=");
        tasks.push(tokio::spawn(async move {
            let mut cookie: Option<String> = None;
            let mut conn = match addr {
                Some(addr) => {
                    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                    let _ = stream.set_nodelay(true);
                    let (sender, connection) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                            .await
                            .expect("handshake");
                    tokio::spawn(connection);
                    Some(sender)
                }
                None => None,
            };
            while !stop.load(Ordering::Relaxed) {
                let mut req = Request::builder()
                    .uri("/")
                    .header(http::header::HOST, "bench");
                if let Some(c) = &cookie {
                    req = req.header(COOKIE, c.as_str());
                }
                let (ok, set) = match conn.as_mut() {
                    Some(sender) => {
                        let req = req
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                            .expect("request");
                        match sender.send_request(req).await {
                            Ok(resp) => {
                                let ok = resp.status().is_success();
                                let set = http_users::cookie_of(resp.headers(), &prefix);
                                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                                (ok, set)
                            }
                            Err(_) => (false, None),
                        }
                    }
                    None => {
                        let Ok(resp) = app
                            .clone()
                            .oneshot(req.body(Body::empty()).expect("request"))
                            .await;
                        let ok = resp.status().is_success();
                        let set = http_users::cookie_of(resp.headers(), &prefix);
                        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                        (ok, set)
                    }
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                if set.is_some() {
                    cookie = set;
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
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(s) = server {
        s.abort();
    }
    let e = errors.load(Ordering::Relaxed);
    if e > 0 {
        eprintln!("  {e} responses were errors");
    }
    done.load(Ordering::Relaxed) as f64 / elapsed
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

enum Subject {
    Floor(Router),
    Memkeep(BackupSessionService, Router),
}

fn main() {
    let Some((clients, seconds, rounds)) = args::load_run() else {
        return;
    };
    let transports = match std::env::var("TRANSPORT").as_deref() {
        Ok("http") => vec![Transport::Http],
        Ok("inproc") => vec![Transport::InProcess],
        _ => vec![Transport::Http, Transport::InProcess],
    };
    let only_env = std::env::var("ONLY").unwrap_or_default();
    // Comma-separated name parts; a mode runs if its name contains any of them.
    let only = move |name: &str| only_env.split(',').any(|part| name.contains(part));
    let nodes = [start_memcached(2), start_memcached(2)];
    let spec = format!("n0:127.0.0.1:{},n1:127.0.0.1:{}", nodes[0].1, nodes[1].1);
    let first_node = nodes[0].1;
    #[cfg(feature = "tower-sessions")]
    let ports = [nodes[0].1, nodes[1].1];
    let rt = args::runtime();
    rt.block_on(async move {
        let mut subjects: Vec<(String, Subject)> = Vec::new();
        let store = tower_sessions::MemoryStore::default();
        subjects.push((
            "tower-sessions MemoryStore (floor)".into(),
            Subject::Floor(
                Router::new()
                    .route("/", get(tower_sessions_counter))
                    .layer(tower_sessions::SessionManagerLayer::new(store).with_secure(false)),
            ),
        ));
        // Lower bounds: the floor plus one, then two, awaited round trips to a memcached
        // node per request (what synchronous replication can't avoid), same run.
        for round_trips in [1, 2] {
            let name = format!("floor + {round_trips} memcached round trip(s) per request (bound)");
            if only(&name) {
                let client = memcached::client_for(&[first_node]);
                let store = tower_sessions::MemoryStore::default();
                subjects.push((
                    name,
                    Subject::Floor(
                        Router::new()
                            .route(
                                "/",
                                get(move |session: tower_sessions::Session| {
                                    floor_plus_round_trips(session, client.clone(), round_trips)
                                }),
                            )
                            .layer(tower_sessions::SessionManagerLayer::new(store).with_secure(false)),
                    ),
                ));
            }
        }
        // With feature `tower-sessions`: the same tower-sessions layer and handler as the
        // floor, on memkeep's replicated store (two copies on the two nodes).
        #[cfg(feature = "tower-sessions")]
        {
            let name = "tower-sessions on memkeep ReplicatedStore";
            if only(name) {
                let client = memcached::client_for(&ports);
                let store = memkeep::adapters::tower_sessions::ReplicatedStore::new(client)
                    .expect("store");
                subjects.push((
                    name.into(),
                    Subject::Floor(
                        Router::new()
                            .route("/", get(tower_sessions_counter))
                            .layer(tower_sessions::SessionManagerLayer::new(store).with_secure(false)),
                    ),
                ));
            }
        }
        let modes: [(&str, Mode, WriteMode, &str); 4] = [
            ("memkeep sticky+sync", Mode::Sticky, WriteMode::Sync, "none"),
            ("memkeep sticky+async", Mode::Sticky, WriteMode::Async, "none"),
            ("memkeep non-sticky, locking none", Mode::NonSticky, WriteMode::Sync, "none"),
            ("memkeep non-sticky, locking all", Mode::NonSticky, WriteMode::Sync, "all"),
        ];
        for (name, mode, write_mode, locking) in modes {
            if !only(name) {
                continue;
            }
            let svc = BackupSessionService::new(
                SessionConfig::builder()
                    .nodes(spec.clone())
                    .mode(mode)
                    .write_mode(write_mode)
                    .locking_str(locking)
                    .route("bench")
                    .build()
                    .expect("config"),
            )
            .expect("service");
            let router = Router::new().route("/", get(memkeep_counter));
            subjects.push((name.into(), Subject::Memkeep(svc, router)));
        }
        // The peer backend (no memcached): this instance and a second one whose
        // replication endpoint keeps the other copy; sticky + sync.
        let mut peer_services = Vec::new();
        let name = "memkeep peers sticky+sync (2 instances, no memcached)";
        if only(name) {
            let ports = [free_port(), free_port()];
            let peers = format!("bench:127.0.0.1:{},peer2:127.0.0.1:{}", ports[0], ports[1]);
            for route in ["bench", "peer2"] {
                peer_services.push(
                    BackupSessionService::new(
                        SessionConfig::builder()
                            .peers(peers.clone())
                            .peer_secret("bench-peer-secret-0123456789")
                            .route(route)
                            .build()
                            .expect("config"),
                    )
                    .expect("service"),
                );
            }
            let router = Router::new().route("/", get(memkeep_counter));
            subjects.push((name.into(), Subject::Memkeep(peer_services[0].clone(), router)));
        }

        println!(
            "{clients} concurrent users; {rounds} interleaved rounds of {seconds} s per mode, median; \
             the handler increments a session counter"
        );
        for transport in transports {
            let mut samples: Vec<Vec<f64>> = vec![Vec::new(); subjects.len()];
            for _ in 0..rounds {
                for (i, (_, subject)) in subjects.iter().enumerate() {
                    let rps = match subject {
                        Subject::Floor(router) => {
                            drive(router.clone().into_service(), transport, "id", clients, seconds).await
                        }
                        Subject::Memkeep(svc, router) => {
                            let app: SessionMiddleware<App> =
                                SessionLayer::new(svc.clone()).layer(router.clone().into_service());
                            let rps = drive(app, transport, "JSESSIONID", clients, seconds).await;
                            svc.flush().await;
                            rps
                        }
                    };
                    samples[i].push(rps);
                }
            }
            let floor = args::median(&mut samples[0].clone());
            println!("\n{transport:?}:");
            println!("| mode | requests/s (median) | vs floor |");
            println!("|---|---|---|");
            for ((name, _), s) in subjects.iter().zip(samples.iter_mut()) {
                let m = args::median(s);
                println!("| {name} | {m:.0} | {:.2}x |", m / floor);
            }
        }
        for (name, subject) in &subjects {
            if let Subject::Memkeep(svc, _) = subject {
                let st = svc.stats();
                if st.async_queued > 0 {
                    println!(
                        "{name}: async loss window: {} writes queued, {} coalesced, queue->ack lag mean {} us, max {} us; saves that waited for room: {}",
                        st.async_queued,
                        st.async_coalesced,
                        st.async_lag_us.mean(),
                        st.async_lag_us.max,
                        st.async_queue_full
                    );
                }
                println!(
                    "{name}: writes {}, mean write {} us, mean session {} bytes",
                    st.writes,
                    st.write_us.mean(),
                    st.session_size_bytes.mean()
                );
            }
        }
    });
    drop(nodes);
}
