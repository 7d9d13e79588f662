//! Serialization codecs for session attributes and the session body.
//!
//! [`Codec`] is the trait; [`MessagePack`] (rmp-serde) is always compiled and is the
//! default. JSON, postcard, CBOR (cbor4ii) and bitcode are behind the `codec-json`,
//! `codec-postcard`, `codec-cbor` and `codec-bitcode` features. [`CodecKind`] names a
//! codec at run time: it is what the configuration selects and what the stored format
//! records (one byte), so a session written with one codec is read back with the same
//! one, or cleanly refused when that codec is not compiled in.
//!
//! Every codec only ever serializes *concrete* types: each attribute value is encoded
//! on its own with its own Rust type (see [`super::model`]), and the session body is a
//! list of `(name, bytes)` pairs. That is why the codecs that are not self-describing
//! (postcard, bitcode) work as well as the self-describing ones.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::SessionError;

/// A serialization format.
pub trait Codec {
    /// The codec's identity in the stored format.
    const KIND: CodecKind;

    /// Encodes `value`.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, SessionError>;

    /// Decodes a `T` from `bytes`.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SessionError>;
}

fn codec_err(kind: CodecKind, e: impl std::fmt::Display) -> SessionError {
    SessionError::Codec {
        codec: kind.name(),
        reason: e.to_string(),
    }
}

/// MessagePack via rmp-serde, structs as maps (field names kept, so fields can be
/// added to an attribute type without breaking stored sessions). The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct MessagePack;

impl Codec for MessagePack {
    const KIND: CodecKind = CodecKind::MessagePack;

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, SessionError> {
        rmp_serde::to_vec_named(value).map_err(|e| codec_err(Self::KIND, e))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SessionError> {
        rmp_serde::from_slice(bytes).map_err(|e| codec_err(Self::KIND, e))
    }
}

/// JSON via serde_json (feature `codec-json`).
#[cfg(feature = "codec-json")]
#[cfg_attr(docsrs, doc(cfg(feature = "codec-json")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Json;

#[cfg(feature = "codec-json")]
#[cfg_attr(docsrs, doc(cfg(feature = "codec-json")))]
impl Codec for Json {
    const KIND: CodecKind = CodecKind::Json;

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, SessionError> {
        serde_json::to_vec(value).map_err(|e| codec_err(Self::KIND, e))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SessionError> {
        serde_json::from_slice(bytes).map_err(|e| codec_err(Self::KIND, e))
    }
}

/// postcard (feature `codec-postcard`): compact, not self-describing.
#[cfg(feature = "codec-postcard")]
#[cfg_attr(docsrs, doc(cfg(feature = "codec-postcard")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Postcard;

#[cfg(feature = "codec-postcard")]
#[cfg_attr(docsrs, doc(cfg(feature = "codec-postcard")))]
impl Codec for Postcard {
    const KIND: CodecKind = CodecKind::Postcard;

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, SessionError> {
        postcard::to_allocvec(value).map_err(|e| codec_err(Self::KIND, e))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SessionError> {
        postcard::from_bytes(bytes).map_err(|e| codec_err(Self::KIND, e))
    }
}

/// CBOR via cbor4ii (feature `codec-cbor`).
#[cfg(feature = "codec-cbor")]
#[cfg_attr(docsrs, doc(cfg(feature = "codec-cbor")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Cbor;

#[cfg(feature = "codec-cbor")]
#[cfg_attr(docsrs, doc(cfg(feature = "codec-cbor")))]
impl Codec for Cbor {
    const KIND: CodecKind = CodecKind::Cbor;

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, SessionError> {
        cbor4ii::serde::to_vec(Vec::new(), &value).map_err(|e| codec_err(Self::KIND, e))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SessionError> {
        cbor4ii::serde::from_slice(bytes).map_err(|e| codec_err(Self::KIND, e))
    }
}

/// bitcode (feature `codec-bitcode`): fastest, not self-describing.
#[cfg(feature = "codec-bitcode")]
#[cfg_attr(docsrs, doc(cfg(feature = "codec-bitcode")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Bitcode;

#[cfg(feature = "codec-bitcode")]
#[cfg_attr(docsrs, doc(cfg(feature = "codec-bitcode")))]
impl Codec for Bitcode {
    const KIND: CodecKind = CodecKind::Bitcode;

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, SessionError> {
        bitcode::serialize(value).map_err(|e| codec_err(Self::KIND, e))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SessionError> {
        bitcode::deserialize(bytes).map_err(|e| codec_err(Self::KIND, e))
    }
}

/// A codec chosen at run time. The discriminant is the byte stored in every record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum CodecKind {
    /// [`MessagePack`] (default).
    #[default]
    MessagePack = 1,
    /// JSON (feature `codec-json`).
    Json = 2,
    /// postcard (feature `codec-postcard`).
    Postcard = 3,
    /// CBOR (feature `codec-cbor`).
    Cbor = 4,
    /// bitcode (feature `codec-bitcode`).
    Bitcode = 5,
}

impl CodecKind {
    /// Every codec the format knows, compiled in or not.
    pub const ALL: [CodecKind; 5] = [
        CodecKind::MessagePack,
        CodecKind::Json,
        CodecKind::Postcard,
        CodecKind::Cbor,
        CodecKind::Bitcode,
    ];

    /// The byte that names this codec in the stored format.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// The codec named by a stored byte.
    pub fn from_id(id: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.id() == id)
    }

    /// Lower-case name, as used in configuration (`msgpack`, `json`, `postcard`, `cbor`,
    /// `bitcode`).
    pub fn name(self) -> &'static str {
        match self {
            CodecKind::MessagePack => "msgpack",
            CodecKind::Json => "json",
            CodecKind::Postcard => "postcard",
            CodecKind::Cbor => "cbor",
            CodecKind::Bitcode => "bitcode",
        }
    }

    /// Parses a configuration name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// True when this build can encode and decode with the codec.
    pub fn is_available(self) -> bool {
        match self {
            CodecKind::MessagePack => true,
            CodecKind::Json => cfg!(feature = "codec-json"),
            CodecKind::Postcard => cfg!(feature = "codec-postcard"),
            CodecKind::Cbor => cfg!(feature = "codec-cbor"),
            CodecKind::Bitcode => cfg!(feature = "codec-bitcode"),
        }
    }

    fn unavailable(self) -> SessionError {
        SessionError::CodecUnavailable(self.name())
    }

    /// Encodes `value` with this codec.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, SessionError> {
        match self {
            CodecKind::MessagePack => MessagePack::encode(value),
            #[cfg(feature = "codec-json")]
            CodecKind::Json => Json::encode(value),
            #[cfg(feature = "codec-postcard")]
            CodecKind::Postcard => Postcard::encode(value),
            #[cfg(feature = "codec-cbor")]
            CodecKind::Cbor => Cbor::encode(value),
            #[cfg(feature = "codec-bitcode")]
            CodecKind::Bitcode => Bitcode::encode(value),
            #[allow(unreachable_patterns)]
            other => Err(other.unavailable()),
        }
    }

    /// Decodes a `T` with this codec.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, SessionError> {
        match self {
            CodecKind::MessagePack => MessagePack::decode(bytes),
            #[cfg(feature = "codec-json")]
            CodecKind::Json => Json::decode(bytes),
            #[cfg(feature = "codec-postcard")]
            CodecKind::Postcard => Postcard::decode(bytes),
            #[cfg(feature = "codec-cbor")]
            CodecKind::Cbor => Cbor::decode(bytes),
            #[cfg(feature = "codec-bitcode")]
            CodecKind::Bitcode => Bitcode::decode(bytes),
            #[allow(unreachable_patterns)]
            other => Err(other.unavailable()),
        }
    }
}

impl std::fmt::Display for CodecKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
    struct Cart {
        user: String,
        items: Vec<(u32, String, f64)>,
        coupon: Option<String>,
    }

    fn sample() -> Cart {
        Cart {
            user: "ann".into(),
            items: vec![(1, "book".into(), 12.5), (7, "pen".into(), 1.25)],
            coupon: None,
        }
    }

    #[test]
    fn every_compiled_codec_round_trips_a_typed_value() {
        for kind in CodecKind::ALL.into_iter().filter(|k| k.is_available()) {
            let bytes = kind.encode(&sample()).unwrap();
            let back: Cart = kind.decode(&bytes).unwrap();
            assert_eq!(back, sample(), "{kind}");
        }
    }

    #[test]
    fn codec_ids_and_names_are_stable_and_unique() {
        let ids: Vec<u8> = CodecKind::ALL.iter().map(|k| k.id()).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        for k in CodecKind::ALL {
            assert_eq!(CodecKind::from_id(k.id()), Some(k));
            assert_eq!(CodecKind::from_name(k.name()), Some(k));
        }
        assert_eq!(CodecKind::from_id(0), None);
        assert_eq!(CodecKind::from_name("bincode"), None);
    }

    #[test]
    fn decoding_garbage_is_an_error_not_a_panic() {
        for kind in CodecKind::ALL.into_iter().filter(|k| k.is_available()) {
            let r: Result<Cart, _> = kind.decode(&[0xff, 0x00, 0x13, 0x37]);
            assert!(r.is_err(), "{kind}");
        }
    }

    #[test]
    fn a_codec_not_compiled_in_is_refused_cleanly() {
        for kind in CodecKind::ALL.into_iter().filter(|k| !k.is_available()) {
            assert!(matches!(
                kind.encode(&1u32),
                Err(SessionError::CodecUnavailable(_))
            ));
        }
    }
}
