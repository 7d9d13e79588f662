//! MSM-style session backup and failover on memcached.
//!
//! A [`BackupSessionService`] keeps HTTP sessions for a service that runs as several
//! instances, on top of the crate's memcached [`Client`](crate::Client): each session has
//! two copies on two memcached nodes named in its id, with a write version, so the next
//! request, served by any live instance with any id, finds the session as the last
//! acknowledged request left it, and an invalidated session never comes back (with at
//! most one memcached node unavailable at a time, and any number of instances dying).
//!
//! See `docs/session.md` for the guarantee and its invariants first, then the design (id
//! format, placement, the versioned store, modes, locking, the loss window of async
//! writes), the configuration reference and the statistics.
//!
//! ```no_run
//! # async fn demo() -> Result<(), memkeep::session::SessionError> {
//! use memkeep::session::{BackupSessionService, Mode, RequestInfo, SessionConfig};
//!
//! let service = BackupSessionService::new(
//!     SessionConfig::builder()
//!         .nodes("n1:127.0.0.1:11211,n2:127.0.0.1:11212")
//!         .mode(Mode::Sticky)
//!         .route("web1")
//!         .build()?,
//! )?;
//! // One request:
//! let cookie_value: Option<&str> = None; // from the request's Cookie header
//! let request = service.request(RequestInfo::new("/cart").session_id(cookie_value));
//! let session = request.get_or_create().await?;
//! session.insert("items", &vec!["book"])?;
//! let outcome = request.finish().await?;
//! if let Some(set_cookie) = service.set_cookie_value(&outcome.cookie) {
//!     // add a `Set-Cookie: {set_cookie}` header to the response
//!     # let _ = set_cookie;
//! }
//! # Ok(()) }
//! ```

pub mod clock;
pub mod codec;
pub mod config;
pub mod cookie;
mod engine;
mod error;
pub mod format;
pub mod id;
mod lifecycle;
pub mod listeners;
mod local;
mod lock;
pub mod model;
pub mod peer;
mod placement;
mod readonly_paths;
mod request;
mod service;
pub mod stats;
pub(crate) mod store;
mod writer;

pub use clock::{Clock, ManualClock, SystemClock};
pub use codec::{Codec, CodecKind, MessagePack};
pub use config::{
    LockTimeoutPolicy, LockingMode, Mode, NodeSpec, SessionConfig, SessionConfigBuilder, WriteMode,
};
pub use cookie::{
    encode_url, strip_url_session_id, CookieConfig, CookieDecision, SameSite, SessionIdCandidates,
    MAX_SESSION_ID_CANDIDATES,
};
pub use error::SessionError;
pub use id::{SessionId, SessionKey};
pub use listeners::{SessionEvent, SessionEventKind, SessionListener};
pub use model::{AttributeValue, Session, SessionData, SessionGuard};
pub use request::{SaveOutcome, SessionRequest};
pub use service::{BackupSessionService, RequestInfo};
pub use stats::{DistributionSnapshot, SessionStats, StatsSnapshot};

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;
