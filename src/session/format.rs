//! The versioned stored format.
//!
//! A session record (`<key>`, the same key on every node that holds a copy):
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `MK` |
//! | 2 | format version (2; version 1 records, without the write version, are still read as write version 0) |
//! | 3 | kind: 0 session, 1 tombstone (an invalidated session) |
//! | 4 | codec id ([`CodecKind::id`]) |
//! | 5..21 | the session key (the id's random part): data found under a key it does not name is foreign |
//! | 21..29 | write version: the session's write counter, big-endian (every copy only moves forward) |
//! | 29..37 | creation time, ms since the Unix epoch, big-endian |
//! | 37..45 | last access, ms (a tombstone: the invalidation time) |
//! | 45..53 | max inactive interval, ms |
//! | 53.. | body: the codec's encoding of a list of `(name, bytes)` attributes; in a tombstone, empty or (a key retired by an id rotation) the 16 bytes of the key the session moved to, its *successor* |
//!
//! A validity record (`validity:<key>`), written by the 0.1 layer for requests that only
//! read the session; still read (when a record alone says the session expired), no
//! longer written:
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `MV` |
//! | 2 | validity format version (1) |
//! | 3..11 | last access, ms |
//! | 11..19 | max inactive interval, ms |
//!
//! A reader refuses (treats the session as absent, counts it and logs it) any record
//! with another magic, an unknown version, a codec it does not have, another key, or a
//! body that does not decode: never a panic, never a half-read session.

use serde::{Deserialize, Serialize};

use super::codec::CodecKind;
use super::id::SessionKey;

/// The record format version written by this build.
pub const FORMAT_VERSION: u8 = 2;
/// The oldest record format version this build reads (version 1 had no write version).
const OLDEST_READ_VERSION: u8 = 1;
/// The validity record's own format version.
const VALIDITY_FORMAT_VERSION: u8 = 1;
const MAGIC: [u8; 2] = *b"MK";
const VALIDITY_MAGIC: [u8; 2] = *b"MV";
const HEADER_LEN: usize = 53;
const HEADER_LEN_V1: usize = 45;
/// Where the write version sits in a format-2 record.
const VERSION_AT: std::ops::Range<usize> = 21..29;
const VALIDITY_LEN: usize = 19;

/// Why a stored record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than a header.
    #[error("record too short ({0} bytes)")]
    TooShort(usize),
    /// Not a memkeep record.
    #[error("not a memkeep session record (bad magic)")]
    BadMagic,
    /// Written by a format version this build does not read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// Written with a codec id this build does not know.
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    /// Written with a codec this build was compiled without.
    #[error("codec {0} is not compiled in (enable its feature)")]
    CodecUnavailable(&'static str),
    /// Unknown record kind.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// The record belongs to another session.
    #[error("record belongs to another session")]
    KeyMismatch,
    /// The body did not decode.
    #[error("body does not decode: {0}")]
    Body(String),
}

/// Validity information: what decides expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Last access, ms since the Unix epoch.
    pub last_access_ms: u64,
    /// Max inactive interval, ms.
    pub max_inactive_ms: u64,
}

impl Validity {
    /// True when the session has expired at `now_ms`.
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        now_ms >= self.last_access_ms.saturating_add(self.max_inactive_ms)
    }

    /// Encodes a validity record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(VALIDITY_LEN);
        out.extend_from_slice(&VALIDITY_MAGIC);
        out.push(VALIDITY_FORMAT_VERSION);
        out.extend_from_slice(&self.last_access_ms.to_be_bytes());
        out.extend_from_slice(&self.max_inactive_ms.to_be_bytes());
        out
    }

    /// Decodes a validity record.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < VALIDITY_LEN {
            return Err(FormatError::TooShort(bytes.len()));
        }
        if bytes[0..2] != VALIDITY_MAGIC {
            return Err(FormatError::BadMagic);
        }
        if bytes[2] != VALIDITY_FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(bytes[2]));
        }
        Ok(Validity {
            last_access_ms: be_u64(&bytes[3..11]),
            max_inactive_ms: be_u64(&bytes[11..19]),
        })
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// What a session record holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    /// The session key.
    pub key: SessionKey,
    /// The codec of the body and of every attribute value.
    pub codec: CodecKind,
    /// Creation time, ms.
    pub created_ms: u64,
    /// Validity at the time of the write.
    pub validity: Validity,
    /// Attribute names and their encoded values, sorted by name.
    pub attributes: Vec<(String, Vec<u8>)>,
}

/// What a stored record holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A live session.
    Session(StoredSession),
    /// An invalidated session: terminal, outranks every session record.
    Tombstone {
        /// The key the session moved to when this one was retired by an id rotation
        /// (`None`: invalidated). An invalidation that read the session before the
        /// rotation follows it, so the rotation can't carry a logged-out session on.
        successor: Option<SessionKey>,
    },
}

/// A decoded record with its write version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The write version (0 for format-1 records; `u64::MAX` for a tombstone).
    pub version: u64,
    /// The record.
    pub record: Record,
}

impl Versioned {
    /// The order in which copies supersede each other: a higher write version wins; at
    /// the same version a tombstone wins (an invalidation is never undone).
    pub fn rank(&self) -> (u64, bool) {
        (
            self.version,
            matches!(self.record, Record::Tombstone { .. }),
        )
    }
}

/// Writes the write version into an encoded (format 2) record.
pub fn set_version(record: &mut [u8], version: u64) {
    if record.len() >= HEADER_LEN {
        record[VERSION_AT].copy_from_slice(&version.to_be_bytes());
    }
}

#[derive(Serialize)]
struct BodyRef<'a> {
    attrs: Vec<AttrRef<'a>>,
}

#[derive(Serialize)]
struct AttrRef<'a> {
    name: &'a str,
    #[serde(with = "serde_bytes")]
    value: &'a [u8],
}

#[derive(Deserialize)]
struct BodyOwned {
    attrs: Vec<AttrOwned>,
}

#[derive(Deserialize)]
struct AttrOwned {
    name: String,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
}

fn header(kind: u8, codec: CodecKind, key: &SessionKey, created: u64, v: &Validity) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 64);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(kind);
    out.push(codec.id());
    out.extend_from_slice(key.as_bytes());
    // The write version is set by the store just before each write (`set_version`).
    out.extend_from_slice(&0u64.to_be_bytes());
    out.extend_from_slice(&created.to_be_bytes());
    out.extend_from_slice(&v.last_access_ms.to_be_bytes());
    out.extend_from_slice(&v.max_inactive_ms.to_be_bytes());
    out
}

/// Encodes a session record from borrowed attributes.
pub fn encode_session<'a>(
    key: &SessionKey,
    codec: CodecKind,
    created_ms: u64,
    validity: &Validity,
    attributes: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Result<Vec<u8>, super::SessionError> {
    let encoded = match codec {
        #[cfg(feature = "codec-json")]
        CodecKind::Json => json_body::encode(attributes)?,
        _ => {
            let body = BodyRef {
                attrs: attributes
                    .map(|(name, value)| AttrRef { name, value })
                    .collect(),
            };
            codec.encode(&body)?
        }
    };
    let mut out = header(0, codec, key, created_ms, validity);
    out.extend_from_slice(&encoded);
    Ok(out)
}

/// A tombstone record for `key` with write `version`, written at `invalidated_ms`.
pub fn encode_tombstone(key: &SessionKey, version: u64, invalidated_ms: u64) -> Vec<u8> {
    let v = Validity {
        last_access_ms: invalidated_ms,
        max_inactive_ms: 0,
    };
    let mut out = header(1, CodecKind::MessagePack, key, 0, &v);
    set_version(&mut out, version);
    out
}

/// The tombstone of `key` retired by an id rotation to `successor` (see
/// [`Record::Tombstone`]): a tombstone of version `u64::MAX` whose body is the
/// successor's 16 bytes. Readers older than the successor field ignore the body.
pub fn encode_retirement(key: &SessionKey, invalidated_ms: u64, successor: &SessionKey) -> Vec<u8> {
    let mut out = encode_tombstone(key, u64::MAX, invalidated_ms);
    out.extend_from_slice(successor.as_bytes());
    out
}

/// Decodes a record stored under `expected`'s keys.
pub fn decode(bytes: &[u8], expected: &SessionKey) -> Result<Versioned, FormatError> {
    if bytes.len() < 3 {
        return Err(FormatError::TooShort(bytes.len()));
    }
    if bytes[0..2] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let format = bytes[2];
    if !(OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&format) {
        return Err(FormatError::UnsupportedVersion(format));
    }
    let header_len = if format == 1 {
        HEADER_LEN_V1
    } else {
        HEADER_LEN
    };
    if bytes.len() < header_len {
        return Err(FormatError::TooShort(bytes.len()));
    }
    if bytes[5..21] != expected.as_bytes()[..] {
        return Err(FormatError::KeyMismatch);
    }
    // Format 1 had no write version: its fields start where format 2's version is.
    let (version, fields) = if format == 1 {
        (0, &bytes[21..HEADER_LEN_V1])
    } else {
        (be_u64(&bytes[VERSION_AT]), &bytes[29..HEADER_LEN])
    };
    let record = match bytes[3] {
        0 => Record::Session(decode_session(bytes, expected, fields, header_len)?),
        1 => Record::Tombstone {
            successor: bytes
                .get(header_len..)
                .and_then(|body| <[u8; 16]>::try_from(body).ok())
                .map(SessionKey::from_bytes),
        },
        k => return Err(FormatError::UnknownKind(k)),
    };
    Ok(Versioned { version, record })
}

fn decode_session(
    bytes: &[u8],
    expected: &SessionKey,
    fields: &[u8],
    header_len: usize,
) -> Result<StoredSession, FormatError> {
    let codec = CodecKind::from_id(bytes[4]).ok_or(FormatError::UnknownCodec(bytes[4]))?;
    if !codec.is_available() {
        return Err(FormatError::CodecUnavailable(codec.name()));
    }
    let body: BodyOwned = match codec {
        #[cfg(feature = "codec-json")]
        CodecKind::Json => json_body::decode(&bytes[header_len..])?,
        _ => codec
            .decode(&bytes[header_len..])
            .map_err(|e| FormatError::Body(e.to_string()))?,
    };
    Ok(StoredSession {
        key: *expected,
        codec,
        created_ms: be_u64(&fields[0..8]),
        validity: Validity {
            last_access_ms: be_u64(&fields[8..16]),
            max_inactive_ms: be_u64(&fields[16..24]),
        },
        attributes: body.attrs.into_iter().map(|a| (a.name, a.value)).collect(),
    })
}

/// JSON bodies embed each attribute's JSON text as is (a byte string would become an
/// array of numbers, several times larger).
#[cfg(feature = "codec-json")]
mod json_body {
    use serde::{Deserialize, Serialize};
    use serde_json::value::RawValue;

    use super::{AttrOwned, BodyOwned, FormatError};
    use crate::session::SessionError;

    #[derive(Serialize)]
    struct Body<'a> {
        attrs: Vec<Attr<'a>>,
    }

    #[derive(Serialize)]
    struct Attr<'a> {
        name: &'a str,
        value: Box<RawValue>,
    }

    #[derive(Deserialize)]
    struct BodyIn {
        attrs: Vec<AttrIn>,
    }

    #[derive(Deserialize)]
    struct AttrIn {
        name: String,
        value: Box<RawValue>,
    }

    fn err(e: impl std::fmt::Display) -> SessionError {
        SessionError::Codec {
            codec: "json",
            reason: e.to_string(),
        }
    }

    pub(super) fn encode<'a>(
        attributes: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Vec<u8>, SessionError> {
        let mut attrs = Vec::new();
        for (name, value) in attributes {
            let text = std::str::from_utf8(value).map_err(err)?;
            attrs.push(Attr {
                name,
                value: RawValue::from_string(text.to_owned()).map_err(err)?,
            });
        }
        serde_json::to_vec(&Body { attrs }).map_err(err)
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<BodyOwned, FormatError> {
        let body: BodyIn =
            serde_json::from_slice(bytes).map_err(|e| FormatError::Body(e.to_string()))?;
        Ok(BodyOwned {
            attrs: body
                .attrs
                .into_iter()
                .map(|a| AttrOwned {
                    name: a.name,
                    value: a.value.get().as_bytes().to_vec(),
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SessionKey {
        SessionKey::from_bytes([7; 16])
    }

    fn validity() -> Validity {
        Validity {
            last_access_ms: 1_000,
            max_inactive_ms: 1_800_000,
        }
    }

    fn encode_with(codec: CodecKind) -> Vec<u8> {
        let a = codec.encode(&42u32).unwrap();
        let b = codec.encode("x").unwrap();
        encode_session(
            &key(),
            codec,
            500,
            &validity(),
            [("a", a.as_slice()), ("b", b.as_slice())].into_iter(),
        )
        .unwrap()
    }

    #[test]
    fn session_record_round_trips_with_every_compiled_codec() {
        for codec in CodecKind::ALL.into_iter().filter(|c| c.is_available()) {
            let bytes = encode_with(codec);
            let Record::Session(s) = decode(&bytes, &key()).unwrap().record else {
                panic!("not a session")
            };
            assert_eq!(s.codec, codec);
            assert_eq!(s.created_ms, 500);
            assert_eq!(s.validity, validity());
            assert_eq!(s.attributes.len(), 2);
            let a: u32 = codec.decode(&s.attributes[0].1).unwrap();
            assert_eq!(a, 42);
        }
    }

    #[test]
    fn record_under_another_sessions_key_is_foreign() {
        let bytes = encode_with(CodecKind::MessagePack);
        let other = SessionKey::from_bytes([8; 16]);
        assert_eq!(decode(&bytes, &other), Err(FormatError::KeyMismatch));
    }

    #[test]
    fn garbage_and_truncated_records_are_refused() {
        assert!(matches!(
            decode(b"MK", &key()),
            Err(FormatError::TooShort(2))
        ));
        assert!(matches!(
            decode(b"MK\x02hello", &key()),
            Err(FormatError::TooShort(8))
        ));
        assert_eq!(decode(b"hello", &key()), Err(FormatError::BadMagic));
        assert_eq!(decode(&[b'X'; 60], &key()), Err(FormatError::BadMagic));
        let mut bytes = encode_with(CodecKind::MessagePack);
        bytes.truncate(bytes.len() - 3);
        assert!(matches!(decode(&bytes, &key()), Err(FormatError::Body(_))));
    }

    #[test]
    fn a_future_format_version_is_refused() {
        let mut bytes = encode_with(CodecKind::MessagePack);
        bytes[2] = 9;
        assert_eq!(
            decode(&bytes, &key()),
            Err(FormatError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn a_retirement_tombstone_names_its_successor_and_a_plain_one_none() {
        let successor = SessionKey::from_bytes([7; 16]);
        let retired = decode(&encode_retirement(&key(), 1_000, &successor), &key()).unwrap();
        assert_eq!(retired.version, u64::MAX);
        assert_eq!(
            retired.record,
            Record::Tombstone {
                successor: Some(successor)
            }
        );
        // A body that is not exactly one key names no successor (still a tombstone).
        let mut odd = encode_retirement(&key(), 1_000, &successor);
        odd.push(0);
        assert_eq!(
            decode(&odd, &key()).unwrap().record,
            Record::Tombstone { successor: None }
        );
    }

    #[test]
    fn an_unknown_codec_id_is_refused() {
        let mut bytes = encode_with(CodecKind::MessagePack);
        bytes[4] = 200;
        assert_eq!(decode(&bytes, &key()), Err(FormatError::UnknownCodec(200)));
    }

    #[test]
    fn a_record_from_a_codec_not_compiled_in_is_refused_by_name() {
        for codec in CodecKind::ALL.into_iter().filter(|c| !c.is_available()) {
            let mut bytes = encode_with(CodecKind::MessagePack);
            bytes[4] = codec.id();
            assert_eq!(
                decode(&bytes, &key()),
                Err(FormatError::CodecUnavailable(codec.name()))
            );
        }
    }

    #[test]
    fn tombstone_decodes_as_tombstone_with_its_version() {
        let decoded = decode(&encode_tombstone(&key(), 7, 1_000), &key()).unwrap();
        assert_eq!(decoded.record, Record::Tombstone { successor: None });
        assert_eq!(decoded.version, 7);
    }

    #[test]
    fn the_write_version_is_set_in_place_and_read_back() {
        let mut bytes = encode_with(CodecKind::MessagePack);
        assert_eq!(decode(&bytes, &key()).unwrap().version, 0);
        set_version(&mut bytes, 41);
        let decoded = decode(&bytes, &key()).unwrap();
        assert_eq!(decoded.version, 41);
        assert!(matches!(decoded.record, Record::Session(_)));
    }

    #[test]
    fn a_tombstone_outranks_a_session_of_the_same_version() {
        let session = Versioned {
            version: 3,
            record: Record::Tombstone { successor: None },
        };
        let mut bytes = encode_with(CodecKind::MessagePack);
        set_version(&mut bytes, 3);
        let live = decode(&bytes, &key()).unwrap();
        assert!(session.rank() > live.rank());
        set_version(&mut bytes, 4);
        assert!(decode(&bytes, &key()).unwrap().rank() > session.rank());
    }

    #[test]
    fn a_format_1_record_is_read_as_write_version_0() {
        let v2 = encode_with(CodecKind::MessagePack);
        let mut v1 = Vec::new();
        v1.extend_from_slice(&v2[..21]);
        v1.extend_from_slice(&v2[29..]);
        v1[2] = 1;
        let decoded = decode(&v1, &key()).unwrap();
        assert_eq!(decoded.version, 0);
        let Record::Session(s) = decoded.record else {
            panic!("not a session")
        };
        assert_eq!(s.created_ms, 500);
        assert_eq!(s.validity, validity());
        assert_eq!(s.attributes.len(), 2);
    }

    #[test]
    fn validity_round_trips_and_decides_expiry() {
        let v = validity();
        assert_eq!(Validity::decode(&v.encode()), Ok(v));
        assert!(!v.is_expired_at(1_000 + 1_799_999));
        assert!(v.is_expired_at(1_000 + 1_800_000));
        assert_eq!(Validity::decode(b"MV"), Err(FormatError::TooShort(2)));
    }
}
