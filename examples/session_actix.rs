//! An actix-web service whose actix-session sessions are kept by memkeep: two copies of
//! every session on two memcached nodes, so a memcached node can die between two
//! requests without anybody being logged out. A hit counter, a login that renews the
//! session key, a logout that deletes the session.
//!
//! Start two memcached nodes (e.g. `memcached -p 11211 & memcached -p 11212 &`), run two
//! instances, and kill either memcached or either instance while refreshing: the counter
//! goes on.
//!
//! ```text
//! MEMKEEP_NODES=n0:127.0.0.1:11211,n1:127.0.0.1:11212 PORT=3001 \
//!     cargo run --example session_actix --features actix-session
//! curl -c jar -b jar localhost:3001/ ; curl -c jar -b jar localhost:3001/login
//! ```
//!
//! The cookie is signed with a key every instance must share (`SESSION_KEY`, 64 bytes or
//! more; a fixed development key otherwise) and is `Secure` unless `INSECURE_COOKIE=1`.

use actix_session::{Session, SessionMiddleware};
use actix_web::cookie::Key;
use actix_web::{web, App, HttpResponse, HttpServer};
use memkeep::adapters::actix::ReplicatedStore;
use memkeep::{Client, NodeConfig};

async fn hits(session: Session) -> actix_web::Result<HttpResponse> {
    let n = session.get::<u64>("hits")?.unwrap_or(0) + 1;
    session.insert("hits", n)?;
    let user = session
        .get::<String>("user")?
        .unwrap_or_else(|| "anonymous".into());
    Ok(HttpResponse::Ok().body(format!("{user}: {n} hits\n")))
}

async fn login(session: Session) -> actix_web::Result<HttpResponse> {
    // A new key on login (against session fixation), the state kept.
    session.renew();
    session.insert("user", "ann")?;
    Ok(HttpResponse::Ok().body("logged in\n"))
}

async fn logout(session: Session) -> HttpResponse {
    session.purge();
    HttpResponse::Ok().body("logged out\n")
}

/// A client for `n0:host:port,n1:host:port,...`.
fn client(nodes: &str) -> Result<Client, Box<dyn std::error::Error>> {
    let mut builder = Client::builder();
    for node in nodes.split(',') {
        let (id, address) = node
            .split_once(':')
            .ok_or_else(|| format!("{node:?} is not id:host:port"))?;
        builder = builder.node_config(NodeConfig::new(address).id(id));
    }
    Ok(builder.build()?)
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nodes = std::env::var("MEMKEEP_NODES").unwrap_or_else(|_| "n0:127.0.0.1:11211".into());
    let port: u16 = std::env::var("PORT")
        .unwrap_or_else(|_| "3000".into())
        .parse()?;
    let key = match std::env::var("SESSION_KEY") {
        Ok(k) => Key::try_from(k.as_bytes())?,
        Err(_) => Key::from(&[7u8; 64]), // development only
    };
    let secure = std::env::var("INSECURE_COOKIE").as_deref() != Ok("1");
    let store = ReplicatedStore::new(client(&nodes)?)?;
    println!("listening on http://127.0.0.1:{port}");
    HttpServer::new(move || {
        App::new()
            .wrap(
                SessionMiddleware::builder(store.clone(), key.clone())
                    .cookie_secure(secure)
                    .build(),
            )
            .route("/", web::get().to(hits))
            .route("/login", web::get().to(login))
            .route("/logout", web::get().to(logout))
    })
    .bind(("127.0.0.1", port))?
    .run()
    .await?;
    Ok(())
}
