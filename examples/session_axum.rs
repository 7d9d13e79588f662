//! An axum service with memkeep sessions: a hit counter, a login that rotates the id
//! (keeping the data) and binds the session to its user, a logout that invalidates, and
//! a "log out everywhere" that ends every session of the user on every instance.
//!
//! Run two instances against two memcached nodes (start them first, e.g.
//! `memcached -p 11211 & memcached -p 11212 &`), then kill either instance or either
//! memcached and keep refreshing: the counter goes on.
//!
//! ```text
//! MEMKEEP_NODES=n0:127.0.0.1:11211,n1:127.0.0.1:11212 MEMKEEP_ROUTE=web1 PORT=3001 \
//!     cargo run --example session_axum --features axum
//! MEMKEEP_NODES=n0:127.0.0.1:11211,n1:127.0.0.1:11212 MEMKEEP_ROUTE=web2 PORT=3002 \
//!     cargo run --example session_axum --features axum
//! curl -c jar -b jar localhost:3001/ ; curl -c jar -b jar localhost:3002/
//! ```
//!
//! The cookie is `Secure` (the default); curl (7.88) keeps it for `localhost`. To serve
//! plain HTTP on another host during development, set
//! `.cookie(CookieConfig { secure: false, ..CookieConfig::default() })`.

use axum::routing::get;
use axum::Router;
use memkeep::session::tower::SessionLayer;
use memkeep::session::{BackupSessionService, SessionConfig, SessionError, SessionRequest};
use tower::Layer;

async fn hits(session: SessionRequest) -> Result<String, SessionError> {
    let s = session.get_or_create().await?;
    let n = s.get::<u64>("hits")?.unwrap_or(0) + 1;
    s.insert("hits", &n)?;
    let user = s
        .get::<String>("user")?
        .unwrap_or_else(|| "anonymous".into());
    Ok(format!("{user}: {n} hits (session {})\n", s.id()))
}

async fn login(session: SessionRequest) -> Result<String, SessionError> {
    // Bound to its user, so "log out everywhere" can end it on any instance.
    let s = session.bind_principal("ann").await?;
    s.insert("user", "ann")?;
    // A new id on login (against session fixation); the hits counted before stay.
    session.cycle_id().await?;
    Ok("logged in\n".into())
}

async fn logout_everywhere(session: SessionRequest) -> Result<&'static str, SessionError> {
    session.invalidate_principal("ann").await?;
    Ok("every session of ann is logged out\n")
}

async fn logout(session: SessionRequest) -> Result<&'static str, SessionError> {
    session.invalidate().await?;
    Ok("logged out\n")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nodes = std::env::var("MEMKEEP_NODES").unwrap_or_else(|_| "n0:127.0.0.1:11211".into());
    let route = std::env::var("MEMKEEP_ROUTE").unwrap_or_else(|_| "web1".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());

    let sessions =
        BackupSessionService::new(SessionConfig::builder().nodes(nodes).route(route).build()?)?;
    let router = Router::new()
        .route("/", get(hits))
        .route("/login", get(login))
        .route("/logout", get(logout))
        .route("/logout-everywhere", get(logout_everywhere));
    // Wrapping the router (not Router::layer) lets the layer strip `;jsessionid=` before routing.
    let app = SessionLayer::new(sessions).layer(router);

    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://127.0.0.1:{port}");
    axum::serve(
        listener,
        axum::ServiceExt::<axum::extract::Request>::into_make_service(app),
    )
    .await?;
    Ok(())
}
