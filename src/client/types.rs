//! Values that go in and out of client operations.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::node::NodeState;
use crate::protocol::{RecacheFlags, RELATIVE_EXPIRY_LIMIT};

/// A username and password for memcached's text-protocol login (servers started with
/// `-Y <file of user:password lines>`). Sent first on every connection, reconnects
/// included. Its `Debug` shows the username only: the password never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
}

impl Credentials {
    /// Credentials for `username` with `password` (neither may be empty or hold
    /// whitespace or control characters: the login line separates them by a space;
    /// `ClientBuilder::build` checks).
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The username.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Why memcached could not read these credentials, if it could not.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        let bad = |s: &str| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control());
        if bad(&self.username) {
            Some("the username must be non-empty, without whitespace or control characters")
        } else if bad(&self.password) {
            Some("the password must be non-empty, without whitespace or control characters")
        } else {
            None
        }
    }

    /// Appends memcached's login: a `set` whose data is `<username> <password>`.
    pub(crate) fn encode_login(&self, buf: &mut bytes::BytesMut) {
        use bytes::BufMut;
        let len = self.username.len() + 1 + self.password.len();
        buf.put_slice(b"set auth 0 0 ");
        crate::protocol::put_u64(buf, len as u64);
        buf.put_slice(b"\r\n");
        buf.put_slice(self.username.as_bytes());
        buf.put_u8(b' ');
        buf.put_slice(self.password.as_bytes());
        buf.put_slice(b"\r\n");
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A value read from memcached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The stored bytes.
    pub value: Bytes,
    /// The client flags stored with the value.
    pub flags: u32,
    /// The CAS token, when the operation asked for it (`gets`, and every read with
    /// vivify on miss or a recache threshold).
    pub cas: Option<u64>,
    /// The meta protocol's recache indications (`W` won, `Z` already won, `X` stale),
    /// on every read in meta mode. A plain read sees `Z` (and an empty value) on a
    /// placeholder someone won, `Z`/`X` on a value being recomputed; all false in text
    /// mode.
    pub recache: RecacheFlags,
}

/// Options of [`Client::get_with`](crate::Client::get_with): the meta protocol's
/// retrieval flags that protect a hot key against a cache stampede, beside the CAS
/// token and touch of `gets` and `gat`.
///
/// `vivify_on_miss` and `recache_below` need the meta protocol (in text mode the read
/// fails with [`Error::MetaProtocolRequired`](crate::Error::MetaProtocolRequired)).
/// With either, the returned item carries its CAS token and its
/// [`Item::recache`] flags.
///
/// ```
/// use memkeep::GetOptions;
/// use std::time::Duration;
///
/// let options = GetOptions {
///     vivify_on_miss: Some(Duration::from_secs(10)),
///     recache_below: Some(Duration::from_secs(30)),
///     ..GetOptions::default()
/// };
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GetOptions {
    /// Return the CAS token (as `gets` does).
    pub cas: bool,
    /// Reset the item's expiry on a hit (as `gat` does; meta `T`).
    pub touch: Option<Expiry>,
    /// Meta `N<ttl>`, vivify on miss: on a miss memcached creates an empty placeholder
    /// item living this long (rounded up to whole seconds, at least 1 s) and answers
    /// it with the win flag ([`RecacheFlags::win`]) to this caller only; callers that
    /// read it before it is replaced see [`RecacheFlags::already_won`] and an empty
    /// value. If the winner never stores, the placeholder expires after this TTL and the
    /// next reader wins.
    pub vivify_on_miss: Option<Duration>,
    /// Meta `R<ttl>`, recache threshold: a hit whose remaining TTL is below this
    /// (rounded up to whole seconds) wins the right to recache it
    /// ([`RecacheFlags::win`] to one caller, [`RecacheFlags::already_won`] to the others
    /// afterwards), so a hot item is refreshed before it expires. Items that never
    /// expire never win this way.
    pub recache_below: Option<Duration>,
}

impl GetOptions {
    /// Whether these options need the meta protocol's recache flags.
    pub(crate) fn needs_meta(&self) -> bool {
        self.vivify_on_miss.is_some() || self.recache_below.is_some()
    }
}

/// Whole seconds in `d`, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// When an item expires.
///
/// memcached reads an expiry of more than 30 days as an absolute Unix time and 0 as
/// "never"; this type hides both traps: `In` of more than 30 days is sent as an
/// absolute time, and `In(Duration::ZERO)` (or an `At` in the past) expires the item
/// at once instead of keeping it forever.
///
/// memcached keeps `exptime` in a signed 32-bit number, so the latest instant it can
/// express is 2038-01-19 03:14:07 UTC ([`Expiry::LATEST`]); a larger number would wrap
/// negative on the server and delete the item at once. An expiry later than that (an
/// `At` in 2040, `In(12 years)`, `In(Duration::MAX)`) is clamped to that instant at call
/// time: the item lives as long as memcached can keep any expiring item. Clamping rather
/// than refusing keeps long-lived callers (a session layer with a long inactivity
/// interval) working, and no server can honour a later expiry anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Expiry {
    /// Never expires (it may still be evicted).
    #[default]
    Never,
    /// Expires after this long (rounded up to whole seconds).
    In(Duration),
    /// Expires at this wall-clock time.
    At(SystemTime),
}

impl Expiry {
    /// The latest expiry memcached can store, as a Unix time: `i32::MAX` seconds
    /// (2038-01-19 03:14:07 UTC). Later expiries are clamped to it.
    pub const LATEST: u64 = i32::MAX as u64;

    /// The `exptime` memcached expects, given the current wall-clock time.
    pub(crate) fn to_exptime(self, now: SystemTime) -> i64 {
        let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        match self {
            Expiry::Never => 0,
            Expiry::In(d) => {
                let secs = ceil_secs(d);
                if secs == 0 {
                    -1
                } else if secs <= RELATIVE_EXPIRY_LIMIT {
                    secs as i64
                } else {
                    clamp_i64(unix(now).saturating_add(secs))
                }
            }
            Expiry::At(t) => {
                if t <= now {
                    -1
                } else {
                    clamp_i64(unix(t).max(RELATIVE_EXPIRY_LIMIT + 1))
                }
            }
        }
    }
}

/// An absolute Unix time, clamped to the latest one memcached can store.
fn clamp_i64(n: u64) -> i64 {
    n.min(Expiry::LATEST) as i64
}

/// Options of a storage command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreOptions {
    /// Client flags stored with the value (opaque to memcached).
    pub flags: u32,
    /// When the item expires.
    pub expiry: Expiry,
    /// Store only if the item's CAS token still equals this one.
    pub cas: Option<u64>,
}

/// What a storage command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreOutcome {
    /// Stored.
    Stored,
    /// Not stored: the mode's condition failed (`add` of a present key, `replace` or
    /// `append` of a missing one).
    NotStored,
    /// Not stored: the CAS token is stale.
    Exists,
    /// Not stored: a CAS store on a missing key.
    NotFound,
}

/// What a compare-and-swap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CasOutcome {
    /// Stored: nobody changed the item since the token was read.
    Stored,
    /// Not stored: the item changed since.
    Exists,
    /// Not stored: the item is gone.
    NotFound,
}

/// Counters of a node, or summed over all nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Metrics {
    /// Operations completed (successfully or not).
    pub operations: u64,
    /// Operations that ended in an error (timeouts included).
    pub errors: u64,
    /// Operations that timed out.
    pub timeouts: u64,
    /// Connections re-established after a failure.
    pub reconnects: u64,
    /// Replies that violated the protocol (each drops its connection).
    pub protocol_errors: u64,
    /// Fire-and-forget requests the server reported as failed.
    pub quiet_failures: u64,
    /// Requests sent and not yet answered, right now.
    pub in_flight: u64,
}

impl std::ops::Add for Metrics {
    type Output = Metrics;

    fn add(self, o: Metrics) -> Metrics {
        Metrics {
            operations: self.operations + o.operations,
            errors: self.errors + o.errors,
            timeouts: self.timeouts + o.timeouts,
            reconnects: self.reconnects + o.reconnects,
            protocol_errors: self.protocol_errors + o.protocol_errors,
            quiet_failures: self.quiet_failures + o.quiet_failures,
            in_flight: self.in_flight + o.in_flight,
        }
    }
}

/// A node's identity, health and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStatus {
    /// The node's id.
    pub id: String,
    /// Its `host:port`.
    pub address: String,
    /// Its health.
    pub state: NodeState,
    /// Its counters.
    pub metrics: Metrics,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_the_password() {
        let c = Credentials::new("alice", "s3cret-pw");
        let shown = format!("{c:?} {:?}", Some(c.clone()));
        assert!(
            shown.contains("alice") && !shown.contains("s3cret-pw"),
            "{shown}"
        );
        let mut buf = bytes::BytesMut::new();
        c.encode_login(&mut buf);
        assert_eq!(&buf[..], b"set auth 0 0 15\r\nalice s3cret-pw\r\n");
        assert!(c.problem().is_none());
        assert!(Credentials::new("a b", "x").problem().is_some());
        assert!(Credentials::new("a", "").problem().is_some());
    }

    #[test]
    fn expiry_follows_memcached_rules() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(Expiry::Never.to_exptime(now), 0);
        assert_eq!(Expiry::In(Duration::ZERO).to_exptime(now), -1);
        assert_eq!(Expiry::In(Duration::from_millis(1)).to_exptime(now), 1);
        assert_eq!(Expiry::In(Duration::from_millis(1500)).to_exptime(now), 2);
        assert_eq!(Expiry::In(Duration::from_secs(60)).to_exptime(now), 60);
        let thirty_days = Duration::from_secs(RELATIVE_EXPIRY_LIMIT);
        assert_eq!(Expiry::In(thirty_days).to_exptime(now), 2_592_000);
        let longer = thirty_days + Duration::from_secs(1);
        assert_eq!(
            Expiry::In(longer).to_exptime(now),
            1_800_000_000 + 2_592_001
        );
        assert_eq!(
            Expiry::At(now + Duration::from_secs(5)).to_exptime(now),
            1_800_000_005
        );
        assert_eq!(Expiry::At(now).to_exptime(now), -1);
        assert_eq!(Expiry::At(UNIX_EPOCH).to_exptime(now), -1);
        let latest = i64::from(i32::MAX);
        assert_eq!(Expiry::In(Duration::MAX).to_exptime(now), latest);
        let twelve_years = Duration::from_secs(12 * 365 * 86_400);
        assert_eq!(Expiry::In(twelve_years).to_exptime(now), latest);
        let in_2040 = UNIX_EPOCH + Duration::from_secs(2_208_988_800);
        assert_eq!(Expiry::At(in_2040).to_exptime(now), latest);
        let just_before = UNIX_EPOCH + Duration::from_secs(Expiry::LATEST - 1);
        assert_eq!(Expiry::At(just_before).to_exptime(now), latest - 1);
    }
}
