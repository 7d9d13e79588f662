//! Key validation against the protocol's limits, before anything is sent.

use crate::Error;

/// memcached's longest key, in bytes, as it appears on the wire.
pub(crate) const MAX_KEY_LEN: usize = 250;

/// How a valid key travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyForm {
    /// As is: no whitespace or control bytes.
    Plain,
    /// Base64 with the meta `b` flag (binary keys, meta protocol only).
    Base64,
}

/// Checks `key` and says how to send it. `binary_ok` is true for the meta protocol,
/// which can carry any bytes base64-encoded.
pub(crate) fn validate_key(key: &[u8], binary_ok: bool) -> Result<KeyForm, Error> {
    if key.is_empty() {
        return Err(Error::InvalidKey("key is empty".into()));
    }
    if form_of(key) == KeyForm::Plain {
        if key.len() > MAX_KEY_LEN {
            return Err(Error::InvalidKey(format!(
                "key is {} bytes; memcached allows at most {MAX_KEY_LEN}",
                key.len()
            )));
        }
        return Ok(KeyForm::Plain);
    }
    if !binary_ok {
        return Err(Error::InvalidKey(
            "key contains whitespace or control bytes, which the text protocol cannot carry \
             (use Protocol::Meta, which sends such keys base64-encoded)"
                .into(),
        ));
    }
    let encoded = base64_len(key.len());
    if encoded > MAX_KEY_LEN {
        return Err(Error::InvalidKey(format!(
            "binary key is {} bytes, {encoded} in base64; memcached allows at most \
             {MAX_KEY_LEN} on the wire (at most 186 raw bytes)",
            key.len()
        )));
    }
    Ok(KeyForm::Base64)
}

/// How `key` travels in the meta protocol: as is if every byte is printable ASCII.
pub(crate) fn form_of(key: &[u8]) -> KeyForm {
    if key.iter().all(|&b| b > b' ' && b != 0x7f) {
        KeyForm::Plain
    } else {
        KeyForm::Base64
    }
}

/// Length of the padded standard base64 encoding of `n` bytes.
pub(crate) fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Appends the padded standard base64 encoding of `input` (what memcached decodes for
/// keys sent with the `b` flag).
pub(crate) fn base64_encode_into(input: &[u8], out: &mut bytes::BytesMut) {
    out.reserve(base64_len(input.len()));
    let mut chunks = input.chunks_exact(3);
    for c in &mut chunks {
        let n = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
        out.extend_from_slice(&[
            ALPHABET[(n >> 18) as usize & 63],
            ALPHABET[(n >> 12) as usize & 63],
            ALPHABET[(n >> 6) as usize & 63],
            ALPHABET[n as usize & 63],
        ]);
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.extend_from_slice(&[
                ALPHABET[(n >> 18) as usize & 63],
                ALPHABET[(n >> 12) as usize & 63],
                b'=',
                b'=',
            ]);
        }
        [a, b] => {
            let n = u32::from(a) << 16 | u32::from(b) << 8;
            out.extend_from_slice(&[
                ALPHABET[(n >> 18) as usize & 63],
                ALPHABET[(n >> 12) as usize & 63],
                ALPHABET[(n >> 6) as usize & 63],
                b'=',
            ]);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn b64(input: &[u8]) -> String {
        let mut out = BytesMut::new();
        base64_encode_into(input, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"foob"), "Zm9vYg==");
        assert_eq!(b64(b"fooba"), "Zm9vYmE=");
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn plain_keys_up_to_250_bytes_are_accepted() {
        assert_eq!(validate_key(b"user:42", false).unwrap(), KeyForm::Plain);
        assert_eq!(validate_key(&[b'k'; 250], false).unwrap(), KeyForm::Plain);
        assert!(validate_key(&[b'k'; 251], true).is_err());
    }

    #[test]
    fn empty_key_is_refused() {
        assert!(matches!(validate_key(b"", true), Err(Error::InvalidKey(_))));
    }

    #[test]
    fn keys_with_whitespace_or_control_bytes_need_the_meta_protocol() {
        for key in [&b"a b"[..], b"a\r\nb", b"\x00", b"tab\t", b"del\x7f"] {
            assert!(matches!(
                validate_key(key, false),
                Err(Error::InvalidKey(_))
            ));
            assert_eq!(validate_key(key, true).unwrap(), KeyForm::Base64);
        }
    }

    #[test]
    fn binary_keys_are_limited_by_their_base64_length() {
        assert_eq!(validate_key(&[0u8; 186], true).unwrap(), KeyForm::Base64);
        assert!(validate_key(&[0u8; 187], true).is_err());
    }
}
