//! Encoder for memcached's classic text protocol.
//!
//! Replies come back in request order and carry no request identifier, so the
//! connection matches them to callers by position alone.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use super::{put_i64, put_u64, Command, Expect, StoreMode};

/// Keys per `get` line of a multi-get: bounds the request line a server must buffer.
pub(crate) const KEYS_PER_GET: usize = 100;

/// Writes `cmd` (keys already validated as plain) and returns the reply shape.
pub(crate) fn encode(cmd: &Command<'_>, buf: &mut BytesMut) -> Expect {
    match *cmd {
        Command::Get { key, cas, touch } => {
            match (cas, touch) {
                (false, None) => buf.put_slice(b"get "),
                (true, None) => buf.put_slice(b"gets "),
                (false, Some(t)) | (true, Some(t)) => {
                    buf.put_slice(if cas { b"gats " } else { b"gat " });
                    put_i64(buf, t);
                    buf.put_u8(b' ');
                }
            }
            buf.put_slice(key);
            buf.put_slice(b"\r\n");
            Expect::TextValues { ends: 1 }
        }
        Command::GetMany { keys } => {
            let mut ends = 0;
            for chunk in keys.chunks(KEYS_PER_GET) {
                buf.put_slice(b"get");
                for key in chunk {
                    buf.put_u8(b' ');
                    buf.put_slice(key);
                }
                buf.put_slice(b"\r\n");
                ends += 1;
            }
            Expect::TextValues { ends }
        }
        Command::Store {
            mode,
            key,
            value,
            flags,
            exptime,
            cas,
        } => {
            let verb: &[u8] = match (mode, cas) {
                (_, Some(_)) => b"cas ",
                (StoreMode::Set, None) => b"set ",
                (StoreMode::Add, None) => b"add ",
                (StoreMode::Replace, None) => b"replace ",
                (StoreMode::Append, None) => b"append ",
                (StoreMode::Prepend, None) => b"prepend ",
            };
            buf.reserve(key.len() + value.len() + 64);
            buf.put_slice(verb);
            buf.put_slice(key);
            buf.put_u8(b' ');
            put_u64(buf, u64::from(flags));
            buf.put_u8(b' ');
            put_i64(buf, exptime);
            buf.put_u8(b' ');
            put_u64(buf, value.len() as u64);
            if let Some(cas) = cas {
                buf.put_u8(b' ');
                put_u64(buf, cas);
            }
            buf.put_slice(b"\r\n");
            buf.put_slice(value);
            buf.put_slice(b"\r\n");
            Expect::TextLine
        }
        Command::Delete { key } => {
            buf.put_slice(b"delete ");
            buf.put_slice(key);
            buf.put_slice(b"\r\n");
            Expect::TextLine
        }
        Command::Arith { incr, key, delta } => {
            buf.put_slice(if incr { b"incr " } else { b"decr " });
            buf.put_slice(key);
            buf.put_u8(b' ');
            put_u64(buf, delta);
            buf.put_slice(b"\r\n");
            Expect::TextLine
        }
        Command::Touch { key, exptime } => {
            buf.put_slice(b"touch ");
            buf.put_slice(key);
            buf.put_u8(b' ');
            put_i64(buf, exptime);
            buf.put_slice(b"\r\n");
            Expect::TextLine
        }
        // The text protocol has no recache flags and no invalidation; the client refuses
        // these commands in text mode before encoding (`Error::MetaProtocolRequired`).
        // Should one get here anyway, a plain read of the key is written: it changes
        // nothing on the server.
        Command::GetRecache { key, .. } | Command::Invalidate { key, .. } => encode(
            &Command::Get {
                key,
                cas: true,
                touch: None,
            },
            buf,
        ),
        Command::FlushAll => {
            buf.put_slice(b"flush_all\r\n");
            Expect::TextLine
        }
        Command::Version => {
            buf.put_slice(b"version\r\n");
            Expect::TextLine
        }
        Command::Stats => {
            buf.put_slice(b"stats\r\n");
            Expect::TextStats
        }
    }
}

/// The keys of encoded `get`/`gets`/`gat`/`gats` lines, walked in order.
///
/// memcached answers a retrieval with `VALUE` lines for the hits, in the order the keys
/// were asked for. Checking each `VALUE` key against the keys still ahead in the request
/// catches a reply that belongs to another request (a desynchronised stream), which the
/// text protocol has no opaque token to reveal.
#[derive(Debug)]
pub(crate) struct RequestedKeys {
    request: Bytes,
    pos: usize,
    at_line_start: bool,
}

impl RequestedKeys {
    /// Walks the keys of `request`, the bytes [`encode`] wrote for a retrieval.
    pub(crate) fn new(request: Bytes) -> Self {
        Self {
            request,
            pos: 0,
            at_line_start: true,
        }
    }

    /// Moves past `key`; false when `key` does not come later in the request.
    pub(crate) fn advance_past(&mut self, key: &[u8]) -> bool {
        while let Some(range) = self.next_key() {
            if &self.request[range] == key {
                return true;
            }
        }
        false
    }

    fn next_token(&mut self) -> Option<Range<usize>> {
        let rest = self.request.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let len = rest
            .iter()
            .position(|&b| b == b' ' || b == b'\r')
            .unwrap_or(rest.len());
        let range = self.pos..self.pos + len;
        if rest.get(len) == Some(&b'\r') {
            self.pos += len + 2;
            self.at_line_start = true;
        } else {
            self.pos += len + 1;
        }
        Some(range)
    }

    fn next_key(&mut self) -> Option<Range<usize>> {
        while self.at_line_start {
            self.at_line_start = false;
            let verb = self.next_token()?;
            if matches!(&self.request[verb], b"gat" | b"gats") {
                self.next_token()?;
            }
        }
        self.next_token()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(cmd: Command<'_>) -> (String, Expect) {
        let mut buf = BytesMut::new();
        let expect = encode(&cmd, &mut buf);
        (String::from_utf8(buf.to_vec()).unwrap(), expect)
    }

    #[test]
    fn retrievals() {
        let get = |cas, touch| Command::Get {
            key: b"k",
            cas,
            touch,
        };
        assert_eq!(wire(get(false, None)).0, "get k\r\n");
        assert_eq!(wire(get(true, None)).0, "gets k\r\n");
        assert_eq!(wire(get(false, Some(60))).0, "gat 60 k\r\n");
        assert_eq!(wire(get(true, Some(-1))).0, "gats -1 k\r\n");
        assert_eq!(wire(get(false, None)).1, Expect::TextValues { ends: 1 });
    }

    #[test]
    fn multi_get_is_split_into_lines_of_at_most_100_keys() {
        let keys: Vec<Vec<u8>> = (0..250).map(|i| format!("k{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let (bytes, expect) = wire(Command::GetMany { keys: &refs });
        assert_eq!(expect, Expect::TextValues { ends: 3 });
        let lines: Vec<&str> = bytes.split_terminator("\r\n").collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("get k0 k1 "));
        assert_eq!(lines[2].split(' ').count(), 51);
    }

    #[test]
    fn requested_keys_are_walked_in_order_across_lines() {
        let keys: Vec<Vec<u8>> = (0..150).map(|i| format!("k{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let mut buf = BytesMut::new();
        encode(&Command::GetMany { keys: &refs }, &mut buf);
        let mut walk = RequestedKeys::new(buf.freeze());
        assert!(walk.advance_past(b"k3"));
        assert!(walk.advance_past(b"k99"));
        assert!(walk.advance_past(b"k100"), "first key of the second line");
        assert!(!walk.advance_past(b"k50"), "already passed");
    }

    #[test]
    fn requested_keys_skip_verbs_and_the_touch_expiry_but_not_keys_named_like_verbs() {
        let mut buf = BytesMut::new();
        encode(
            &Command::Get {
                key: b"get",
                cas: false,
                touch: Some(60),
            },
            &mut buf,
        );
        let request = buf.freeze();
        assert!(!RequestedKeys::new(request.clone()).advance_past(b"60"));
        assert!(!RequestedKeys::new(request.clone()).advance_past(b"gat"));
        assert!(RequestedKeys::new(request).advance_past(b"get"));
        let mut walk = RequestedKeys::new(Bytes::from_static(b"get a\r\n"));
        assert!(!walk.advance_past(b"b"));
    }

    #[test]
    fn storage_commands() {
        let store = |mode, cas| Command::Store {
            mode,
            key: b"k",
            value: b"v\r\n",
            flags: 7,
            exptime: 100,
            cas,
        };
        assert_eq!(
            wire(store(StoreMode::Set, None)).0,
            "set k 7 100 3\r\nv\r\n\r\n"
        );
        assert_eq!(
            wire(store(StoreMode::Add, None)).0,
            "add k 7 100 3\r\nv\r\n\r\n"
        );
        assert_eq!(
            wire(store(StoreMode::Replace, None)).0,
            "replace k 7 100 3\r\nv\r\n\r\n"
        );
        assert_eq!(
            wire(store(StoreMode::Append, None)).0,
            "append k 7 100 3\r\nv\r\n\r\n"
        );
        assert_eq!(
            wire(store(StoreMode::Prepend, None)).0,
            "prepend k 7 100 3\r\nv\r\n\r\n"
        );
        assert_eq!(
            wire(store(StoreMode::Set, Some(42))).0,
            "cas k 7 100 3 42\r\nv\r\n\r\n"
        );
    }

    #[test]
    fn other_commands() {
        assert_eq!(wire(Command::Delete { key: b"k" }).0, "delete k\r\n");
        let incr = Command::Arith {
            incr: true,
            key: b"k",
            delta: 5,
        };
        assert_eq!(wire(incr).0, "incr k 5\r\n");
        let decr = Command::Arith {
            incr: false,
            key: b"k",
            delta: u64::MAX,
        };
        assert_eq!(wire(decr).0, "decr k 18446744073709551615\r\n");
        assert_eq!(
            wire(Command::Touch {
                key: b"k",
                exptime: 0
            })
            .0,
            "touch k 0\r\n"
        );
        assert_eq!(wire(Command::FlushAll).0, "flush_all\r\n");
        assert_eq!(wire(Command::Version).0, "version\r\n");
        assert_eq!(
            wire(Command::Stats),
            ("stats\r\n".into(), Expect::TextStats)
        );
    }
}
