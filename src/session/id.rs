//! Session ids: `<random>-<nodeId>[~<backupNodeId>][.<route>]`.
//!
//! * `random`: 128 bits from the operating system's CSPRNG, as 32 lower-case hex digits
//!   (hex rather than base64url because base64url's alphabet contains `-`, the field
//!   separator). It is also the session's storage key, so it never changes for the
//!   life of the session.
//! * `nodeId`: the memcached node that held the primary copy at the last save.
//! * `backupNodeId` (an extension of MSM's format): the node that held the second copy.
//!   Both are hints for readers (which also look at the key's own nodes, see
//!   `placement`), never authority: a client can edit them. `~` is an unreserved URL
//!   character and a valid cookie octet.
//! * `route`: the application instance that owns the session (for a sticky balancer, as
//!   Tomcat's `jvmRoute`).
//!
//! Node ids and routes are 1 to 32 characters of `[A-Za-z0-9_]`. Anything else does not
//! parse, and an id that does not parse is treated as no id at all.

use std::fmt;

use super::SessionError;

/// Maximum length of a node id or a route.
pub const MAX_NAME_LEN: usize = 32;

/// True when `name` is a valid node id or route: 1 to 32 of `[A-Za-z0-9_]`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The random part of a session id: 128 bits, shown as 32 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey([u8; 16]);

impl SessionKey {
    /// 128 fresh bits from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, SessionError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| SessionError::Random(e.to_string()))?;
        Ok(SessionKey(bytes))
    }

    /// The raw 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Builds a key from raw bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        SessionKey(bytes)
    }

    /// Parses exactly 32 lower-case hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        let raw = text.as_bytes();
        if raw.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, pair) in raw.chunks_exact(2).enumerate() {
            bytes[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        Some(SessionKey(bytes))
    }

    /// A 64-bit hash of the key, used to spread sessions over nodes deterministically.
    pub(crate) fn spread(&self) -> u64 {
        twox_hash::XxHash3_64::oneshot(&self.0)
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

impl SessionKey {
    /// The 32 hex digits, without allocating.
    fn hex(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
        }
        out
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        // Only ASCII hex digits were written.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a prefix: session ids are credentials and end up in logs.
        write!(f, "SessionKey({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// A parsed session id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId {
    key: SessionKey,
    node: String,
    backup: Option<String>,
    route: Option<String>,
}

impl SessionId {
    /// Assembles an id. Fails when a node id or the route is not a valid name.
    pub fn new(
        key: SessionKey,
        node: impl Into<String>,
        backup: Option<String>,
        route: Option<String>,
    ) -> Result<Self, SessionError> {
        let node = node.into();
        for (field, value) in [
            ("node", Some(&node)),
            ("backup", backup.as_ref()),
            ("route", route.as_ref()),
        ] {
            if let Some(v) = value {
                if !is_valid_name(v) {
                    return Err(SessionError::InvalidId(format!(
                        "{field} {v:?} is not 1-32 characters of [A-Za-z0-9_]"
                    )));
                }
            }
        }
        Ok(SessionId {
            key,
            node,
            backup,
            route,
        })
    }

    /// Parses an id in the format above; `None` for anything else (never trusted).
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() > 32 + 3 * (MAX_NAME_LEN + 1) {
            return None;
        }
        let (key, rest) = text.split_once('-')?;
        let key = SessionKey::parse(key)?;
        let (nodes, route) = match rest.split_once('.') {
            Some((nodes, route)) => (nodes, Some(route)),
            None => (rest, None),
        };
        let (node, backup) = match nodes.split_once('~') {
            Some((node, backup)) => (node, Some(backup)),
            None => (nodes, None),
        };
        let ok = is_valid_name(node)
            && backup.is_none_or(is_valid_name)
            && route.is_none_or(is_valid_name);
        if !ok {
            return None;
        }
        Some(SessionId {
            key,
            node: node.to_owned(),
            backup: backup.map(str::to_owned),
            route: route.map(str::to_owned),
        })
    }

    /// The random part (also the storage key).
    pub fn key(&self) -> SessionKey {
        self.key
    }

    /// The node holding the primary copy.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node holding the backup copy, if any.
    pub fn backup(&self) -> Option<&str> {
        self.backup.as_deref()
    }

    /// The route of the owning application instance, if any.
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// The same id with another placement.
    pub(crate) fn with_nodes(&self, node: &str, backup: Option<&str>) -> Self {
        SessionId {
            key: self.key,
            node: node.to_owned(),
            backup: backup.map(str::to_owned),
            route: self.route.clone(),
        }
    }

    /// The same id with another route.
    pub(crate) fn with_route(&self, route: Option<&str>) -> Self {
        SessionId {
            key: self.key,
            node: self.node.clone(),
            backup: self.backup.clone(),
            route: route.map(str::to_owned),
        }
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.key, self.node)?;
        if let Some(b) = &self.backup {
            write!(f, "~{b}")?;
        }
        if let Some(r) = &self.route {
            write!(f, ".{r}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionId")
            .field("key", &self.key)
            .field("node", &self.node)
            .field("backup", &self.backup)
            .field("route", &self.route)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_round_trip_as_32_hex_digits() {
        let a = SessionKey::generate().unwrap();
        let b = SessionKey::generate().unwrap();
        assert_ne!(a, b);
        let text = a.to_string();
        assert_eq!(text.len(), 32);
        assert!(text.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(SessionKey::parse(&text), Some(a));
    }

    #[test]
    fn full_id_round_trips_through_text() {
        let key = SessionKey::generate().unwrap();
        let id = SessionId::new(key, "n1", Some("n2".into()), Some("web_a".into())).unwrap();
        let text = id.to_string();
        assert_eq!(text, format!("{key}-n1~n2.web_a"));
        assert_eq!(SessionId::parse(&text), Some(id));
    }

    #[test]
    fn msm_style_id_without_backup_parses() {
        let text = "0123456789abcdef0123456789abcdef-n3.r1";
        let id = SessionId::parse(text).unwrap();
        assert_eq!(id.node(), "n3");
        assert_eq!(id.backup(), None);
        assert_eq!(id.route(), Some("r1"));
        let bare = SessionId::parse("0123456789abcdef0123456789abcdef-n3").unwrap();
        assert_eq!(bare.route(), None);
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in [
            "",
            "abc",
            "0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef-",
            "0123456789ABCDEF0123456789abcdef-n1",
            "0123456789abcdef0123456789abcde-n1",
            "0123456789abcdef0123456789abcdef-n1.",
            "0123456789abcdef0123456789abcdef-n1~",
            "0123456789abcdef0123456789abcdef-n-1",
            "0123456789abcdef0123456789abcdef-n1.r.s",
            "0123456789abcdef0123456789abcdef-n1;x",
            "0123456789abcdef0123456789abcdef-n1~n2~n3",
            "../../etc/passwd-n1",
        ] {
            assert!(SessionId::parse(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn invalid_names_are_refused_at_construction() {
        let key = SessionKey::generate().unwrap();
        assert!(SessionId::new(key, "a.b", None, None).is_err());
        assert!(SessionId::new(key, "n1", Some(String::new()), None).is_err());
        assert!(SessionId::new(key, "n1", None, Some("x".repeat(33))).is_err());
    }

    #[test]
    fn debug_output_does_not_leak_the_whole_key() {
        let key = SessionKey::generate().unwrap();
        let dbg = format!("{key:?}");
        assert!(!dbg.contains(&key.to_string()));
    }
}
