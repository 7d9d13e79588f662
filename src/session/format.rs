//! The versioned stored format.
//!
//! A session record (`<key>` and `bak:<key>`):
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `MK` |
//! | 2 | format version (1) |
//! | 3 | kind: 0 session, 1 tombstone (an invalidated session whose backup could not be deleted) |
//! | 4 | codec id ([`CodecKind::id`]) |
//! | 5..21 | the session key (the id's random part): data found under a key it does not name is foreign |
//! | 21..29 | creation time, ms since the Unix epoch, big-endian |
//! | 29..37 | last access, ms |
//! | 37..45 | max inactive interval, ms |
//! | 45.. | body: the codec's encoding of a list of `(name, bytes)` attributes |
//!
//! A validity record (`validity:<key>` and `bak:validity:<key>`), rewritten by requests
//! that only read the session (the data itself is only `touch`ed):
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `MV` |
//! | 2 | format version (1) |
//! | 3..11 | last access, ms |
//! | 11..19 | max inactive interval, ms |
//!
//! A reader refuses (treats the session as absent, counts it and logs it) any record
//! with another magic, an unknown version, a codec it does not have, another key, or a
//! body that does not decode: never a panic, never a half-read session.

use serde::{Deserialize, Serialize};

use super::codec::CodecKind;
use super::id::SessionKey;

/// The format version written by this build.
pub const FORMAT_VERSION: u8 = 1;
const MAGIC: [u8; 2] = *b"MK";
const VALIDITY_MAGIC: [u8; 2] = *b"MV";
const HEADER_LEN: usize = 45;
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
        out.push(FORMAT_VERSION);
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
        if bytes[2] != FORMAT_VERSION {
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

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A live session.
    Session(StoredSession),
    /// An invalidated session: stop, do not look at the backup.
    Tombstone,
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

/// Encodes a tombstone for `key`.
pub fn encode_tombstone(key: &SessionKey) -> Vec<u8> {
    let v = Validity {
        last_access_ms: 0,
        max_inactive_ms: 0,
    };
    header(1, CodecKind::MessagePack, key, 0, &v)
}

/// Decodes a record stored under `expected`'s keys.
pub fn decode(bytes: &[u8], expected: &SessionKey) -> Result<Record, FormatError> {
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::TooShort(bytes.len()));
    }
    if bytes[0..2] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    if bytes[2] != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion(bytes[2]));
    }
    if bytes[5..21] != expected.as_bytes()[..] {
        return Err(FormatError::KeyMismatch);
    }
    match bytes[3] {
        0 => {}
        1 => return Ok(Record::Tombstone),
        k => return Err(FormatError::UnknownKind(k)),
    }
    let codec = CodecKind::from_id(bytes[4]).ok_or(FormatError::UnknownCodec(bytes[4]))?;
    if !codec.is_available() {
        return Err(FormatError::CodecUnavailable(codec.name()));
    }
    let body: BodyOwned = match codec {
        #[cfg(feature = "codec-json")]
        CodecKind::Json => json_body::decode(&bytes[HEADER_LEN..])?,
        _ => codec
            .decode(&bytes[HEADER_LEN..])
            .map_err(|e| FormatError::Body(e.to_string()))?,
    };
    Ok(Record::Session(StoredSession {
        key: *expected,
        codec,
        created_ms: be_u64(&bytes[21..29]),
        validity: Validity {
            last_access_ms: be_u64(&bytes[29..37]),
            max_inactive_ms: be_u64(&bytes[37..45]),
        },
        attributes: body.attrs.into_iter().map(|a| (a.name, a.value)).collect(),
    }))
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
            let Record::Session(s) = decode(&bytes, &key()).unwrap() else {
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
            decode(b"hello", &key()),
            Err(FormatError::TooShort(5))
        ));
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
    fn tombstone_decodes_as_tombstone() {
        assert_eq!(
            decode(&encode_tombstone(&key()), &key()),
            Ok(Record::Tombstone)
        );
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
