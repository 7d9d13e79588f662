//! MSM-style session backup and failover on memcached.
//!
//! A [`BackupSessionService`] keeps HTTP sessions for a service that runs as several
//! instances, on top of the crate's memcached [`Client`](crate::Client): each session is
//! written to the memcached node named in its id and backed up (`bak:` copy) to a second
//! node named in the id too, so the next request, served by any live instance, finds the
//! session as it was after the last acknowledged request, even when the instance that
//! served it died, the node that held it died, or both.
//!
//! See `docs/session.md` for the design (id format, storage keys, attribute storage,
//! modes, locking, the loss window of async writes), the configuration reference and the
//! statistics.
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
pub mod format;
pub mod id;
mod lock;
pub mod model;
mod readonly_paths;
mod service;
pub mod stats;
mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use codec::{Codec, CodecKind, MessagePack};
pub use config::{
    LockTimeoutPolicy, LockingMode, Mode, NodeSpec, SessionConfig, SessionConfigBuilder, WriteMode,
};
pub use cookie::{
    encode_url, strip_url_session_id, CookieConfig, CookieDecision, SameSite, SessionIdCandidates,
    MAX_SESSION_ID_CANDIDATES,
};
pub use id::{SessionId, SessionKey};
pub use model::{AttributeValue, Session, SessionData, SessionGuard};
pub use service::{BackupSessionService, RequestInfo, SaveOutcome, SessionRequest};
pub use stats::{DistributionSnapshot, SessionStats, StatsSnapshot};

#[cfg(feature = "tower")]
pub mod tower;

/// Everything the session layer can fail with: one type to match on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The configuration is refused; the message names the field and the fix.
    #[error("invalid session configuration: {field}: {reason}")]
    Config {
        /// The field (builder method) at fault.
        field: &'static str,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A memcached operation failed on every copy it could use.
    #[error("memcached: {0}")]
    Memcached(#[from] crate::Error),
    /// A value did not encode or decode with the session's codec (for instance an
    /// attribute read as a type it was not written as).
    #[error("codec {codec}: {reason}")]
    Codec {
        /// The codec's name.
        codec: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The codec is not compiled into this build.
    #[error("codec {0} is not compiled in (enable its feature)")]
    CodecUnavailable(&'static str),
    /// A stored record was refused.
    #[error("stored session refused: {0}")]
    Format(#[from] format::FormatError),
    /// The encoded session exceeds `max_session_size` (memcached's item limit): it was
    /// not written. Remove data from the session or raise memcached's `-I` and the limit.
    #[error("session of {size} bytes exceeds the limit of {max} bytes; nothing was written")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The session lock was not acquired within `lock_wait`.
    #[error("session lock not acquired within {waited:?}")]
    LockTimeout {
        /// How long the request waited.
        waited: std::time::Duration,
    },
    /// An unlocked write lost against another instance's write (`auto` locking); the
    /// other write was kept.
    #[error("the session was changed concurrently by another request; this change was not saved")]
    Conflict,
    /// No memcached node is available for the session.
    #[error("no memcached node is available to store the session")]
    NoNodeAvailable,
    /// An id could not be built.
    #[error("invalid session id: {0}")]
    InvalidId(String),
    /// The operating system's random generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
    /// The service was shut down.
    #[error("session service is shut down")]
    Shutdown,
}

impl SessionError {
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        SessionError::Config {
            field,
            reason: reason.into(),
        }
    }
}
