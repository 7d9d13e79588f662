//! Cuts the server's byte stream into [`Frame`]s.
//!
//! The decoder follows tokio-util's contract: `Ok(None)` means "not a whole frame yet",
//! bytes are consumed only together with a whole frame, and `Err` means the stream is
//! corrupt (the connection must be dropped: there is no way to find the next frame).
//! A frame split at any byte boundary decodes the same as one that arrives whole.
//!
//! One exception to "whole frames only": a value larger than the decoder's limit (but no
//! larger than any memcached can hold) is reported as [`Frame::TooLarge`] as soon as its
//! header is read, and its data block is then discarded as it arrives, never buffered.
//! The reply's length is known, so the stream stays in sync and only the request that
//! asked for that value fails.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::{ErrorKind, Frame, MetaFrame, MetaStatus, RecacheFlags, TextStatus, MAX_LINE};

/// Why the byte stream can't be decoded. Every variant ends the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("reply claims a value of {size} bytes, more than any memcached holds ({max})")]
    ValueTooLarge { size: usize, max: usize },
    #[error("malformed reply: {0}")]
    Malformed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn malformed(what: &str, line: &[u8]) -> DecodeError {
    let shown = &line[..line.len().min(64)];
    DecodeError::Malformed(format!("{what} in {:?}", String::from_utf8_lossy(shown)))
}

/// The largest item any memcached can hold (its ceiling for `-I`): a reply claiming
/// more is garbage, not a value to skip.
pub(crate) const MAX_ITEM: usize = 1 << 30;

/// Decoder of text and meta reply frames.
#[derive(Debug, Clone)]
pub(crate) struct FrameDecoder {
    max_value: usize,
    /// Bytes of an oversized data block (its CRLF included) still to discard.
    skipping: usize,
}

impl FrameDecoder {
    /// A decoder that reports data blocks larger than `max_value` bytes as
    /// [`Frame::TooLarge`] and discards them.
    pub(crate) fn new(max_value: usize) -> Self {
        Self {
            max_value,
            skipping: 0,
        }
    }

    /// Discards what `src` holds of an oversized block; true once it is all gone.
    fn skip(&mut self, src: &mut BytesMut) -> Result<bool, DecodeError> {
        while self.skipping > 0 && !src.is_empty() {
            if self.skipping > 2 {
                let n = (self.skipping - 2).min(src.len());
                bytes::Buf::advance(src, n);
                self.skipping -= n;
            } else {
                let expected = if self.skipping == 2 { b'\r' } else { b'\n' };
                if src[0] != expected {
                    return Err(DecodeError::Malformed(
                        "oversized data block not ended by CRLF".into(),
                    ));
                }
                bytes::Buf::advance(src, 1);
                self.skipping -= 1;
            }
        }
        Ok(self.skipping == 0)
    }
}

impl Decoder for FrameDecoder {
    type Item = Frame;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if !self.skip(src)? {
            return Ok(None);
        }
        let window = &src[..src.len().min(MAX_LINE + 2)];
        let Some(nl) = window.iter().position(|&b| b == b'\n') else {
            return if src.len() > MAX_LINE {
                Err(DecodeError::LineTooLong)
            } else {
                Ok(None)
            };
        };
        if nl == 0 || src[nl - 1] != b'\r' {
            return Err(malformed("line not ended by CRLF", &src[..nl]));
        }
        let line_len = nl - 1;
        let head_len = nl + 1;
        let line = &src[..line_len];
        let (code, rest) = split_token(line);

        // Replies that carry a data block.
        let is_text_value = code == b"VALUE";
        let block = match code {
            b"VALUE" => Some(block_len(value_size(rest, line)?)?),
            b"VA" => {
                let (size, _) = split_token(rest);
                Some(block_len(parse_num::<usize>(size, "VA size", line)?)?)
            }
            _ => None,
        };
        if let Some(size) = block.filter(|&size| size > self.max_value) {
            let head = src.split_to(head_len).freeze();
            let line = head.slice(..line_len);
            let frame = if is_text_value {
                parse_value(&line, Bytes::new())?
            } else {
                let (_, rest) = split_token(&line);
                let (_, flags) = split_token(rest);
                parse_meta(MetaStatus::Value, flags, None, &line)?
            };
            let (key, opaque) = match frame {
                Frame::Value { key, .. } => (Some(key), None),
                Frame::Meta(m) => (None, m.opaque),
                _ => (None, None),
            };
            self.skipping = size + 2;
            return Ok(Some(Frame::TooLarge {
                key,
                opaque,
                size,
                max: self.max_value,
            }));
        }
        if let Some(size) = block {
            let total = head_len + size + 2;
            if src.len() < total {
                src.reserve(total - src.len());
                return Ok(None);
            }
            if &src[total - 2..total] != b"\r\n" {
                return Err(malformed("data block not ended by CRLF", &src[..line_len]));
            }
            // One split per frame; the line and the data are views into it.
            let whole = src.split_to(total).freeze();
            let data = whole.slice(head_len..head_len + size);
            let line = whole.slice(..line_len);
            return if is_text_value {
                parse_value(&line, data).map(Some)
            } else {
                let (_, rest) = split_token(&line);
                let (_, flags) = split_token(rest);
                parse_meta(MetaStatus::Value, flags, Some(data), &line).map(Some)
            };
        }

        let head = src.split_to(head_len).freeze();
        let line = head.slice(..line_len);
        let (code, rest) = split_token(&line);
        let text = |status| Ok(Some(Frame::Status(status)));
        match code {
            b"END" => Ok(Some(Frame::End)),
            b"STORED" => text(TextStatus::Stored),
            b"NOT_STORED" => text(TextStatus::NotStored),
            b"EXISTS" => text(TextStatus::Exists),
            b"NOT_FOUND" => text(TextStatus::NotFound),
            b"DELETED" => text(TextStatus::Deleted),
            b"TOUCHED" => text(TextStatus::Touched),
            b"OK" => text(TextStatus::Ok),
            b"ERROR" => Ok(Some(error_frame(ErrorKind::Unknown, &line, rest))),
            b"CLIENT_ERROR" => Ok(Some(error_frame(ErrorKind::Client, &line, rest))),
            b"SERVER_ERROR" => Ok(Some(error_frame(ErrorKind::Server, &line, rest))),
            b"VERSION" => Ok(Some(Frame::Version(sub_slice(&line, rest)))),
            b"STAT" => {
                let (name, value) = split_token(rest);
                if name.is_empty() {
                    return Err(malformed("STAT without a name", &line));
                }
                Ok(Some(Frame::Stat {
                    name: sub_slice(&line, name),
                    value: sub_slice(&line, value),
                }))
            }
            b"HD" => parse_meta(MetaStatus::Ok, rest, None, &line).map(Some),
            b"EN" => parse_meta(MetaStatus::Miss, rest, None, &line).map(Some),
            b"NF" => parse_meta(MetaStatus::NotFound, rest, None, &line).map(Some),
            b"NS" => parse_meta(MetaStatus::NotStored, rest, None, &line).map(Some),
            b"EX" => parse_meta(MetaStatus::Exists, rest, None, &line).map(Some),
            b"MN" => parse_meta(MetaStatus::Noop, rest, None, &line).map(Some),
            digits if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
                if rest.iter().any(|&b| b != b' ') {
                    return Err(malformed("trailing bytes after a number", &line));
                }
                Ok(Some(Frame::Number(parse_num(digits, "number", &line)?)))
            }
            _ => Err(malformed("unknown reply", &line)),
        }
    }
}

/// A data block's claimed length, refused when no memcached could hold it.
fn block_len(size: usize) -> Result<usize, DecodeError> {
    if size > MAX_ITEM {
        return Err(DecodeError::ValueTooLarge {
            size,
            max: MAX_ITEM,
        });
    }
    Ok(size)
}

/// Splits off the first space-separated token; the rest has its leading spaces removed.
fn split_token(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    let mut rest = &s[end..];
    while let [b' ', tail @ ..] = rest {
        rest = tail;
    }
    (&s[..end], rest)
}

/// `part` (a sub-slice of `whole`'s bytes) as a zero-copy `Bytes`.
fn sub_slice(whole: &Bytes, part: &[u8]) -> Bytes {
    whole.slice_ref(part)
}

fn parse_num<T: TryFrom<u64>>(s: &[u8], what: &str, line: &[u8]) -> Result<T, DecodeError> {
    // One pass over the digits; an empty field, a non-digit or an overflow of T is malformed.
    let mut n: Option<u64> = (!s.is_empty()).then_some(0);
    for &b in s {
        n = n.and_then(|n| {
            let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
            n.checked_mul(10)?.checked_add(digit)
        });
    }
    n.and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| malformed(&format!("bad {what}"), line))
}

/// The `<bytes>` field of a `VALUE <key> <flags> <bytes> [<cas>]` line.
fn value_size(rest: &[u8], line: &[u8]) -> Result<usize, DecodeError> {
    let (_key, rest) = split_token(rest);
    let (_flags, rest) = split_token(rest);
    let (size, _) = split_token(rest);
    parse_num(size, "VALUE size", line)
}

fn parse_value(line: &Bytes, data: Bytes) -> Result<Frame, DecodeError> {
    let (_, rest) = split_token(line);
    let (key, rest) = split_token(rest);
    let (flags, rest) = split_token(rest);
    let (_size, rest) = split_token(rest);
    let (cas, rest) = split_token(rest);
    if key.is_empty() || !rest.is_empty() {
        return Err(malformed("bad VALUE line", line));
    }
    Ok(Frame::Value {
        key: sub_slice(line, key),
        flags: parse_num(flags, "VALUE flags", line)?,
        cas: if cas.is_empty() {
            None
        } else {
            Some(parse_num(cas, "VALUE cas", line)?)
        },
        data,
    })
}

fn parse_meta(
    status: MetaStatus,
    mut flags: &[u8],
    data: Option<Bytes>,
    line: &[u8],
) -> Result<Frame, DecodeError> {
    let mut frame = MetaFrame {
        status,
        opaque: None,
        flags: None,
        cas: None,
        data,
        recache: RecacheFlags::default(),
    };
    while !flags.is_empty() {
        let (token, rest) = split_token(flags);
        flags = rest;
        let (flag, value) = token.split_at(1);
        match flag {
            b"O" => frame.opaque = Some(parse_num(value, "opaque", line)?),
            b"f" => frame.flags = Some(parse_num(value, "client flags", line)?),
            b"c" => frame.cas = Some(parse_num(value, "cas", line)?),
            b"W" => frame.recache.win = true,
            b"Z" => frame.recache.already_won = true,
            b"X" => frame.recache.stale = true,
            // Other return flags (k, b, s, t, ...) are not requested by this client;
            // tolerate them so a proxy adding its own does not break us.
            _ => {}
        }
    }
    Ok(Frame::Meta(frame))
}

fn error_frame(kind: ErrorKind, line: &Bytes, rest: &[u8]) -> Frame {
    Frame::Error {
        kind,
        message: sub_slice(line, rest),
    }
}

/// Decodes `data` whole and split at every byte, checking that both give the same
/// frames (or both fail). Panics only on a decoder bug: the fuzz target's oracle.
pub(crate) fn check_split_invariance(data: &[u8]) {
    fn run(pieces: &[&[u8]]) -> Result<Vec<Frame>, ()> {
        let mut decoder = FrameDecoder::new(64 * 1024);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            while let Some(frame) = decoder.decode(&mut buf).map_err(|_| ())? {
                frames.push(frame);
            }
        }
        Ok(frames)
    }
    let whole = run(&[data]);
    for at in 0..data.len() {
        let split = run(&[&data[..at], &data[at..]]);
        match (&whole, &split) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "frames differ when split at {at}"),
            (Err(()), Err(())) => {}
            // A prefix that ends in an error can't turn valid by arriving in two parts,
            // and a valid stream can't fail because it arrived in two parts.
            _ => panic!("split at {at} changed the outcome: {whole:?} vs {split:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, String> {
        let mut decoder = FrameDecoder::new(1024 * 1024);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(frame) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            out.push(frame);
        }
        if buf.is_empty() {
            Ok(out)
        } else {
            Err(format!("{} bytes left over", buf.len()))
        }
    }

    /// Feeds `bytes` in two pieces split at `at`, as a socket might deliver them.
    fn decode_split(bytes: &[u8], at: usize) -> Result<Vec<Frame>, String> {
        let mut decoder = FrameDecoder::new(1024 * 1024);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in [&bytes[..at], &bytes[at..]] {
            buf.extend_from_slice(piece);
            while let Some(frame) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
                out.push(frame);
            }
        }
        Ok(out)
    }

    fn meta(status: MetaStatus) -> MetaFrame {
        MetaFrame {
            status,
            opaque: None,
            flags: None,
            cas: None,
            data: None,
            recache: RecacheFlags::default(),
        }
    }

    const MIXED: &[u8] = b"VALUE k1 5 3 99\r\nabc\r\nEND\r\nSTORED\r\nNOT_STORED\r\nEXISTS\r\n\
NOT_FOUND\r\nDELETED\r\nTOUCHED\r\nOK\r\n42\r\nVERSION 1.6.18\r\nSTAT pid 7\r\nEND\r\n\
VA 2 f3 c11 O9\r\nhi\r\nHD O1\r\nEN O2\r\nNF\r\nNS\r\nEX\r\nMN\r\nERROR\r\n\
CLIENT_ERROR bad data chunk\r\nSERVER_ERROR out of memory\r\nVA 0\r\n\r\n";

    fn mixed_frames() -> Vec<Frame> {
        vec![
            Frame::Value {
                key: Bytes::from_static(b"k1"),
                flags: 5,
                cas: Some(99),
                data: Bytes::from_static(b"abc"),
            },
            Frame::End,
            Frame::Status(TextStatus::Stored),
            Frame::Status(TextStatus::NotStored),
            Frame::Status(TextStatus::Exists),
            Frame::Status(TextStatus::NotFound),
            Frame::Status(TextStatus::Deleted),
            Frame::Status(TextStatus::Touched),
            Frame::Status(TextStatus::Ok),
            Frame::Number(42),
            Frame::Version(Bytes::from_static(b"1.6.18")),
            Frame::Stat {
                name: Bytes::from_static(b"pid"),
                value: Bytes::from_static(b"7"),
            },
            Frame::End,
            Frame::Meta(MetaFrame {
                flags: Some(3),
                cas: Some(11),
                opaque: Some(9),
                data: Some(Bytes::from_static(b"hi")),
                ..meta(MetaStatus::Value)
            }),
            Frame::Meta(MetaFrame {
                opaque: Some(1),
                ..meta(MetaStatus::Ok)
            }),
            Frame::Meta(MetaFrame {
                opaque: Some(2),
                ..meta(MetaStatus::Miss)
            }),
            Frame::Meta(meta(MetaStatus::NotFound)),
            Frame::Meta(meta(MetaStatus::NotStored)),
            Frame::Meta(meta(MetaStatus::Exists)),
            Frame::Meta(meta(MetaStatus::Noop)),
            Frame::Error {
                kind: ErrorKind::Unknown,
                message: Bytes::new(),
            },
            Frame::Error {
                kind: ErrorKind::Client,
                message: Bytes::from_static(b"bad data chunk"),
            },
            Frame::Error {
                kind: ErrorKind::Server,
                message: Bytes::from_static(b"out of memory"),
            },
            Frame::Meta(MetaFrame {
                data: Some(Bytes::new()),
                ..meta(MetaStatus::Value)
            }),
        ]
    }

    #[test]
    fn every_reply_kind_decodes() {
        assert_eq!(decode_all(MIXED).unwrap(), mixed_frames());
    }

    #[test]
    fn recache_return_flags_decode() {
        // Replies memcached 1.6.18 sent: a vivified placeholder won, the same seen by
        // another caller, an invalidated item won, then seen again (flags in any order).
        let stream = b"VA 0 c1 t30 W O1\r\n\r\nVA 0 c1 Z O2\r\n\r\n\
VA 3 c3 t29 X W O3\r\nnew\r\nVA 3 c3 Z X O4\r\nnew\r\nHD c5\r\n";
        let frames = decode_all(stream).unwrap();
        let flags: Vec<(bool, bool, bool)> = frames
            .iter()
            .map(|f| match f {
                Frame::Meta(m) => (m.recache.win, m.recache.already_won, m.recache.stale),
                other => panic!("not a meta frame: {other:?}"),
            })
            .collect();
        assert_eq!(
            flags,
            [
                (true, false, false),
                (false, true, false),
                (true, false, true),
                (false, true, true),
                (false, false, false)
            ]
        );
        let Frame::Meta(won) = &frames[2] else {
            unreachable!()
        };
        assert_eq!(
            (won.cas, won.opaque, won.data.as_deref()),
            (Some(3), Some(3), Some(&b"new"[..]))
        );
    }

    #[test]
    fn a_stream_split_at_any_byte_decodes_the_same() {
        let whole = mixed_frames();
        for at in 0..=MIXED.len() {
            assert_eq!(decode_split(MIXED, at).unwrap(), whole, "split at {at}");
        }
    }

    #[test]
    fn one_byte_reads_decode_the_same() {
        let mut decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &b in MIXED {
            buf.extend_from_slice(&[b]);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out, mixed_frames());
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frames_consume_nothing() {
        let mut decoder = FrameDecoder::new(1024);
        for partial in [
            &b"VALUE k 0 5\r\nab"[..],
            b"VALUE k 0 5\r\nabcde\r",
            b"STORE",
            b"VA 3 O1\r\n",
        ] {
            let mut buf = BytesMut::from(partial);
            assert_eq!(decoder.decode(&mut buf).unwrap(), None);
            assert_eq!(&buf[..], partial);
        }
    }

    #[test]
    fn value_data_may_contain_crlf() {
        let frames = decode_all(b"VALUE k 0 4\r\n\r\n\r\n\r\nEND\r\n").unwrap();
        assert_eq!(
            frames[0],
            Frame::Value {
                key: Bytes::from_static(b"k"),
                flags: 0,
                cas: None,
                data: Bytes::from_static(b"\r\n\r\n"),
            }
        );
        assert_eq!(frames[1], Frame::End);
    }

    #[test]
    fn a_value_larger_than_any_server_holds_is_refused_before_buffering_it() {
        let mut decoder = FrameDecoder::new(10);
        let mut buf = BytesMut::from(&b"VALUE k 0 4294967296\r\n"[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(DecodeError::ValueTooLarge { .. })
        ));
    }

    #[test]
    fn a_value_over_the_limit_is_reported_and_skipped_at_every_split() {
        let stream = b"VA 11 O7 f3\r\nhello world\r\nHD O8\r\n\
VALUE big 1 12 5\r\nhello world!\r\nVALUE k 0 2\r\nhi\r\nEND\r\n";
        let expected = vec![
            Frame::TooLarge {
                key: None,
                opaque: Some(7),
                size: 11,
                max: 10,
            },
            Frame::Meta(MetaFrame {
                opaque: Some(8),
                ..meta(MetaStatus::Ok)
            }),
            Frame::TooLarge {
                key: Some(Bytes::from_static(b"big")),
                opaque: None,
                size: 12,
                max: 10,
            },
            Frame::Value {
                key: Bytes::from_static(b"k"),
                flags: 0,
                cas: None,
                data: Bytes::from_static(b"hi"),
            },
            Frame::End,
        ];
        for at in 0..=stream.len() {
            let mut decoder = FrameDecoder::new(10);
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for piece in [&stream[..at], &stream[at..]] {
                buf.extend_from_slice(piece);
                while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(frames, expected, "split at {at}");
        }
        // The skipped block must still end with CRLF.
        let mut decoder = FrameDecoder::new(1);
        let mut buf = BytesMut::from(&b"VA 2 O1\r\nhiXY"[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Ok(Some(Frame::TooLarge { .. }))
        ));
        assert!(decoder.decode(&mut buf).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"HELLO\r\n"[..],
            b"VALUE k x 3\r\nabc\r\n",
            b"VALUE k 0 3\r\nabcXY",
            b"VALUE  \r\n",
            b"VA -1\r\n",
            b"VA 1 Oxyz\r\nA\r\n",
            b"STORED\n",
            b"\n",
            b"12 34\r\n",
            b"99999999999999999999999\r\n",
            b"STAT\r\n",
        ] {
            assert!(
                decode_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut decoder = FrameDecoder::new(10);
        let mut buf = BytesMut::from(&vec![b'a'; MAX_LINE + 1][..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(DecodeError::LineTooLong)
        ));
    }

    /// Renders frames the way memcached writes them (the test's model of the server).
    fn render(frame: &Frame, out: &mut Vec<u8>) {
        match frame {
            Frame::Value {
                key,
                flags,
                cas,
                data,
            } => {
                out.extend_from_slice(b"VALUE ");
                out.extend_from_slice(key);
                out.extend_from_slice(format!(" {flags} {}", data.len()).as_bytes());
                if let Some(cas) = cas {
                    out.extend_from_slice(format!(" {cas}").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Meta(m) => {
                let code: &[u8] = match m.status {
                    MetaStatus::Value => b"VA",
                    MetaStatus::Ok => b"HD",
                    MetaStatus::Miss => b"EN",
                    MetaStatus::NotFound => b"NF",
                    MetaStatus::NotStored => b"NS",
                    MetaStatus::Exists => b"EX",
                    MetaStatus::Noop => b"MN",
                };
                out.extend_from_slice(code);
                if let Some(data) = &m.data {
                    out.extend_from_slice(format!(" {}", data.len()).as_bytes());
                }
                if let Some(f) = m.flags {
                    out.extend_from_slice(format!(" f{f}").as_bytes());
                }
                if let Some(c) = m.cas {
                    out.extend_from_slice(format!(" c{c}").as_bytes());
                }
                if let Some(o) = m.opaque {
                    out.extend_from_slice(format!(" O{o}").as_bytes());
                }
                for (set, flag) in [
                    (m.recache.win, " W"),
                    (m.recache.already_won, " Z"),
                    (m.recache.stale, " X"),
                ] {
                    if set {
                        out.extend_from_slice(flag.as_bytes());
                    }
                }
                out.extend_from_slice(b"\r\n");
                if let Some(data) = &m.data {
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                }
            }
            Frame::Number(n) => out.extend_from_slice(format!("{n}\r\n").as_bytes()),
            Frame::End => out.extend_from_slice(b"END\r\n"),
            other => unreachable!("not generated: {other:?}"),
        }
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let data = proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
        let key = "[!-~]{1,20}".prop_map(|k| Bytes::from(k.into_bytes()));
        prop_oneof![
            (
                key,
                any::<u32>(),
                proptest::option::of(any::<u64>()),
                data.clone()
            )
                .prop_map(|(key, flags, cas, data)| Frame::Value {
                    key,
                    flags,
                    cas,
                    data
                }),
            (
                0usize..7,
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u64>()),
                data,
                any::<[bool; 3]>()
            )
                .prop_map(
                    |(s, opaque, flags, cas, data, [win, already_won, stale])| {
                        let status = [
                            MetaStatus::Value,
                            MetaStatus::Ok,
                            MetaStatus::Miss,
                            MetaStatus::NotFound,
                            MetaStatus::NotStored,
                            MetaStatus::Exists,
                            MetaStatus::Noop,
                        ][s];
                        let data = (status == MetaStatus::Value).then_some(data);
                        Frame::Meta(MetaFrame {
                            status,
                            opaque,
                            flags,
                            cas,
                            data,
                            recache: RecacheFlags {
                                win,
                                already_won,
                                stale,
                            },
                        })
                    }
                ),
            any::<u64>().prop_map(Frame::Number),
            Just(Frame::End),
        ]
    }

    proptest! {
        #[test]
        fn rendered_frames_decode_back_at_any_split(
            frames in proptest::collection::vec(arb_frame(), 1..20),
            split in any::<prop::sample::Index>(),
        ) {
            let mut bytes = Vec::new();
            for f in &frames {
                render(f, &mut bytes);
            }
            let at = split.index(bytes.len() + 1);
            prop_assert_eq!(decode_split(&bytes, at).unwrap(), frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_decode_the_same_at_any_split(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            check_split_invariance(&bytes);
        }
    }
}
