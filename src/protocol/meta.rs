//! Encoder for memcached's meta protocol (`mg`, `ms`, `md`, `ma`, `mn`).
//!
//! Every request carries an opaque token (`O<n>`) that the server echoes, so the
//! connection verifies that each reply belongs to the request at the head of its queue
//! and drops the connection the moment they disagree. Keys that are not plain ASCII
//! travel base64-encoded with the `b` flag. Fire-and-forget requests use quiet mode
//! (`q`): the server answers only failures, and the connection closes each run of quiet
//! requests with `mn` so a failure is attributed to that run, never to the next caller.

use bytes::{BufMut, BytesMut};

use super::key::base64_encode_into;
use super::{put_i64, put_u64, text, Command, Expect, KeyForm, StoreMode};

/// Writes `cmd`. Opaques `opaque..opaque + opaque_count(cmd)` belong to it. Returns the
/// reply shape, or `None` for a quiet request (the connection adds the `mn` barrier).
pub(crate) fn encode(
    cmd: &Command<'_>,
    form: &dyn Fn(&[u8]) -> KeyForm,
    opaque: u32,
    quiet: bool,
    buf: &mut BytesMut,
) -> Option<Expect> {
    let single = Expect::Meta { opaque };
    match *cmd {
        Command::Get { key, cas, touch } => {
            put_key(buf, b"mg ", key, form(key));
            buf.put_slice(b" v f");
            if cas {
                buf.put_slice(b" c");
            }
            if let Some(t) = touch {
                buf.put_slice(b" T");
                put_i64(buf, t);
            }
            end(buf, opaque, quiet);
            (!quiet).then_some(single)
        }
        Command::GetMany { keys } => {
            for (i, key) in keys.iter().enumerate() {
                put_key(buf, b"mg ", key, form(key));
                buf.put_slice(b" v f q");
                end(buf, opaque.wrapping_add(i as u32), false);
            }
            buf.put_slice(b"mn\r\n");
            Some(Expect::MetaBatch {
                first: opaque,
                count: keys.len() as u32,
            })
        }
        Command::Store {
            mode,
            key,
            value,
            flags,
            exptime,
            cas,
        } => {
            buf.reserve(key.len() + value.len() + 64);
            // `ms` takes the data length right after the key, before any flag.
            let key_form = form(key);
            put_key_only(buf, b"ms ", key, key_form);
            buf.put_u8(b' ');
            put_u64(buf, value.len() as u64);
            if key_form == KeyForm::Base64 {
                buf.put_slice(b" b");
            }
            buf.put_slice(b" F");
            put_u64(buf, u64::from(flags));
            buf.put_slice(b" T");
            put_i64(buf, exptime);
            if let Some(cas) = cas {
                buf.put_slice(b" C");
                put_u64(buf, cas);
            }
            buf.put_slice(match mode {
                StoreMode::Set => b" MS",
                StoreMode::Add => b" ME",
                StoreMode::Replace => b" MR",
                StoreMode::Append => b" MA",
                StoreMode::Prepend => b" MP",
            });
            end(buf, opaque, quiet);
            buf.put_slice(value);
            buf.put_slice(b"\r\n");
            (!quiet).then_some(single)
        }
        Command::Delete { key } => {
            put_key(buf, b"md ", key, form(key));
            end(buf, opaque, quiet);
            (!quiet).then_some(single)
        }
        Command::Arith { incr, key, delta } => {
            put_key(buf, b"ma ", key, form(key));
            if !incr {
                buf.put_slice(b" MD");
            }
            buf.put_slice(b" D");
            put_u64(buf, delta);
            buf.put_slice(b" v");
            end(buf, opaque, quiet);
            (!quiet).then_some(single)
        }
        Command::Touch { key, exptime } => {
            put_key(buf, b"mg ", key, form(key));
            buf.put_slice(b" T");
            put_i64(buf, exptime);
            end(buf, opaque, quiet);
            (!quiet).then_some(single)
        }
        Command::GetRecache {
            key,
            vivify,
            recache,
            touch,
        } => {
            put_key(buf, b"mg ", key, form(key));
            buf.put_slice(b" v f c");
            if let Some(ttl) = vivify {
                buf.put_slice(b" N");
                put_i64(buf, ttl);
            }
            if let Some(secs) = recache {
                buf.put_slice(b" R");
                put_u64(buf, secs);
            }
            if let Some(t) = touch {
                buf.put_slice(b" T");
                put_i64(buf, t);
            }
            end(buf, opaque, quiet);
            (!quiet).then_some(single)
        }
        Command::Invalidate { key, exptime, cas } => {
            put_key(buf, b"md ", key, form(key));
            buf.put_slice(b" I");
            if let Some(t) = exptime {
                buf.put_slice(b" T");
                put_i64(buf, t);
            }
            if let Some(cas) = cas {
                buf.put_slice(b" C");
                put_u64(buf, cas);
            }
            end(buf, opaque, quiet);
            (!quiet).then_some(single)
        }
        // No meta forms exist for these; memcached takes text commands on the same
        // connection.
        Command::FlushAll | Command::Version | Command::Stats => Some(text::encode(cmd, buf)),
    }
}

/// How many opaques `cmd` uses.
pub(crate) fn opaque_count(cmd: &Command<'_>) -> u32 {
    match cmd {
        Command::GetMany { keys } => keys.len() as u32,
        _ => 1,
    }
}

/// Writes the verb and key, and the `b` flag for a base64 key.
fn put_key(buf: &mut BytesMut, verb: &[u8], key: &[u8], form: KeyForm) {
    put_key_only(buf, verb, key, form);
    if form == KeyForm::Base64 {
        buf.put_slice(b" b");
    }
}

fn put_key_only(buf: &mut BytesMut, verb: &[u8], key: &[u8], form: KeyForm) {
    buf.put_slice(verb);
    match form {
        KeyForm::Plain => buf.put_slice(key),
        KeyForm::Base64 => base64_encode_into(key, buf),
    }
}

fn end(buf: &mut BytesMut, opaque: u32, quiet: bool) {
    if quiet {
        buf.put_slice(b" q");
    }
    buf.put_slice(b" O");
    put_u64(buf, u64::from(opaque));
    buf.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(_: &[u8]) -> KeyForm {
        KeyForm::Plain
    }

    fn wire(cmd: Command<'_>, quiet: bool) -> (String, Option<Expect>) {
        let mut buf = BytesMut::new();
        let expect = encode(&cmd, &plain, 7, quiet, &mut buf);
        (String::from_utf8(buf.to_vec()).unwrap(), expect)
    }

    #[test]
    fn retrievals_ask_for_value_and_flags_and_echo_the_opaque() {
        let get = |cas, touch| Command::Get {
            key: b"k",
            cas,
            touch,
        };
        assert_eq!(
            wire(get(false, None), false),
            ("mg k v f O7\r\n".into(), Some(Expect::Meta { opaque: 7 }))
        );
        assert_eq!(wire(get(true, None), false).0, "mg k v f c O7\r\n");
        assert_eq!(wire(get(false, Some(30)), false).0, "mg k v f T30 O7\r\n");
    }

    #[test]
    fn multi_get_is_quiet_with_consecutive_opaques_and_a_noop() {
        let keys: [&[u8]; 3] = [b"a", b"b", b"c"];
        let (bytes, expect) = wire(Command::GetMany { keys: &keys }, false);
        assert_eq!(
            bytes,
            "mg a v f q O7\r\nmg b v f q O8\r\nmg c v f q O9\r\nmn\r\n"
        );
        assert_eq!(expect, Some(Expect::MetaBatch { first: 7, count: 3 }));
    }

    #[test]
    fn storage_modes() {
        let store = |mode, cas| Command::Store {
            mode,
            key: b"k",
            value: b"xy",
            flags: 3,
            exptime: -1,
            cas,
        };
        assert_eq!(
            wire(store(StoreMode::Set, None), false).0,
            "ms k 2 F3 T-1 MS O7\r\nxy\r\n"
        );
        assert_eq!(
            wire(store(StoreMode::Add, None), false).0,
            "ms k 2 F3 T-1 ME O7\r\nxy\r\n"
        );
        assert_eq!(
            wire(store(StoreMode::Replace, None), false).0,
            "ms k 2 F3 T-1 MR O7\r\nxy\r\n"
        );
        assert_eq!(
            wire(store(StoreMode::Append, None), false).0,
            "ms k 2 F3 T-1 MA O7\r\nxy\r\n"
        );
        assert_eq!(
            wire(store(StoreMode::Prepend, None), false).0,
            "ms k 2 F3 T-1 MP O7\r\nxy\r\n"
        );
        assert_eq!(
            wire(store(StoreMode::Set, Some(9)), false).0,
            "ms k 2 F3 T-1 C9 MS O7\r\nxy\r\n"
        );
        assert_eq!(
            wire(store(StoreMode::Set, None), true),
            ("ms k 2 F3 T-1 MS q O7\r\nxy\r\n".into(), None)
        );
    }

    #[test]
    fn delete_arith_touch() {
        assert_eq!(wire(Command::Delete { key: b"k" }, false).0, "md k O7\r\n");
        assert_eq!(wire(Command::Delete { key: b"k" }, true).0, "md k q O7\r\n");
        assert_eq!(
            wire(
                Command::Arith {
                    incr: true,
                    key: b"k",
                    delta: 2
                },
                false
            )
            .0,
            "ma k D2 v O7\r\n"
        );
        assert_eq!(
            wire(
                Command::Arith {
                    incr: false,
                    key: b"k",
                    delta: 2
                },
                false
            )
            .0,
            "ma k MD D2 v O7\r\n"
        );
        assert_eq!(
            wire(
                Command::Touch {
                    key: b"k",
                    exptime: 5
                },
                false
            )
            .0,
            "mg k T5 O7\r\n"
        );
    }

    #[test]
    fn recache_get_and_invalidate() {
        let get = |vivify, recache, touch| Command::GetRecache {
            key: b"k",
            vivify,
            recache,
            touch,
        };
        assert_eq!(
            wire(get(Some(30), None, None), false),
            (
                "mg k v f c N30 O7\r\n".into(),
                Some(Expect::Meta { opaque: 7 })
            )
        );
        assert_eq!(
            wire(get(Some(5), Some(10), Some(60)), false).0,
            "mg k v f c N5 R10 T60 O7\r\n"
        );
        assert_eq!(wire(get(None, None, None), false).0, "mg k v f c O7\r\n");
        let invalidate = |exptime, cas| Command::Invalidate {
            key: b"k",
            exptime,
            cas,
        };
        assert_eq!(
            wire(invalidate(None, None), false),
            ("md k I O7\r\n".into(), Some(Expect::Meta { opaque: 7 }))
        );
        assert_eq!(
            wire(invalidate(Some(30), Some(12)), false).0,
            "md k I T30 C12 O7\r\n"
        );
        let mut buf = BytesMut::new();
        let form = |_: &[u8]| KeyForm::Base64;
        let binary = Command::GetRecache {
            key: b"a b",
            vivify: Some(1),
            recache: None,
            touch: None,
        };
        encode(&binary, &form, 1, false, &mut buf);
        assert_eq!(&buf[..], b"mg YSBi b v f c N1 O1\r\n");
    }

    #[test]
    fn binary_keys_are_sent_base64_with_the_b_flag() {
        let mut buf = BytesMut::new();
        let form = |_: &[u8]| KeyForm::Base64;
        encode(&Command::Delete { key: b"a b" }, &form, 1, false, &mut buf);
        assert_eq!(&buf[..], b"md YSBi b O1\r\n");
        buf.clear();
        let store = Command::Store {
            mode: StoreMode::Set,
            key: b"a b",
            value: b"v",
            flags: 0,
            exptime: 0,
            cas: None,
        };
        encode(&store, &form, 1, false, &mut buf);
        assert_eq!(&buf[..], b"ms YSBi 1 b F0 T0 MS O1\r\nv\r\n");
    }

    #[test]
    fn admin_commands_fall_back_to_text() {
        assert_eq!(
            wire(Command::Version, false),
            ("version\r\n".into(), Some(Expect::TextLine))
        );
        assert_eq!(wire(Command::Stats, false).1, Some(Expect::TextStats));
    }
}
