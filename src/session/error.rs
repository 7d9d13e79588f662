//! The session layer's error type.

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
    /// A memcached operation failed on every node it could use: the session could not
    /// be read (it is NOT reported absent: the client keeps its cookie) or written.
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
    Format(#[from] super::format::FormatError),
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
    /// The write was refused because another request wrote the session after this
    /// one read it, and this request may not merge (its `auto` read-only guess was
    /// wrong, or it held a lock that expired meanwhile): the other write was kept and
    /// nothing of this one is visible on any copy.
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
