//! What a reply means, whichever protocol family carried it: the one place that reads
//! text status lines and meta codes as outcomes (stored, not stored, exists, deleted,
//! touched, a counter, items, a server error). Client operations only map these neutral
//! outcomes to their own return types.

use bytes::Bytes;

use super::{ErrorKind, Frame, MetaFrame, MetaStatus, RecacheFlags, Reply, TextStatus};

/// Why a reply is not the outcome a command waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server's error line (or a value too large for the client); the connection is
    /// still in sync.
    Error { kind: ErrorKind, message: Bytes },
    /// A well-formed reply that does not answer this kind of command (what was wanted).
    Unexpected(&'static str),
}

/// A reply read as an outcome, or why it can't be.
pub(crate) type Interpreted<T> = Result<T, Refusal>;

/// What a storage command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreStatus {
    Stored,
    NotStored,
    Exists,
    NotFound,
}

/// A value with its client flags and, when asked for, its CAS token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Value {
    pub(crate) data: Bytes,
    pub(crate) flags: u32,
    pub(crate) cas: Option<u64>,
    /// The meta `W`/`Z`/`X` flags (all false from the text protocol).
    pub(crate) recache: RecacheFlags,
}

/// The server's error line as a refusal; anything else as not what was `wanted`.
fn refuse(reply: Reply, wanted: &'static str) -> Refusal {
    match reply {
        Reply::Error { kind, message } => Refusal::Error { kind, message },
        _ => Refusal::Unexpected(wanted),
    }
}

fn meta_value(m: MetaFrame) -> Value {
    Value {
        data: m.data.unwrap_or_default(),
        flags: m.flags.unwrap_or(0),
        cas: m.cas,
        recache: m.recache,
    }
}

/// A storage command's reply (`set`/`add`/.../`cas`, `ms`).
pub(crate) fn store(reply: Reply) -> Interpreted<StoreStatus> {
    const WANTED: &str = "a storage status";
    match reply {
        Reply::Line(Frame::Status(status)) => match status {
            TextStatus::Stored => Ok(StoreStatus::Stored),
            TextStatus::NotStored => Ok(StoreStatus::NotStored),
            TextStatus::Exists => Ok(StoreStatus::Exists),
            TextStatus::NotFound => Ok(StoreStatus::NotFound),
            _ => Err(Refusal::Unexpected(WANTED)),
        },
        Reply::Meta(m) => match m.status {
            MetaStatus::Ok => Ok(StoreStatus::Stored),
            MetaStatus::NotStored => Ok(StoreStatus::NotStored),
            MetaStatus::Exists => Ok(StoreStatus::Exists),
            MetaStatus::NotFound => Ok(StoreStatus::NotFound),
            _ => Err(Refusal::Unexpected(WANTED)),
        },
        other => Err(refuse(other, WANTED)),
    }
}

/// A delete's reply: true when deleted, false when the key was missing.
pub(crate) fn delete(reply: Reply) -> Interpreted<bool> {
    done_or_missing(
        reply,
        TextStatus::Deleted,
        MetaStatus::NotFound,
        "a delete status",
    )
}

/// A touch's reply: true when touched, false when the key was missing.
pub(crate) fn touch(reply: Reply) -> Interpreted<bool> {
    done_or_missing(
        reply,
        TextStatus::Touched,
        MetaStatus::Miss,
        "a touch status",
    )
}

/// True for `done` (text) or `HD` (meta); false for `NOT_FOUND` (text) or `missing`
/// (meta).
fn done_or_missing(
    reply: Reply,
    done: TextStatus,
    missing: MetaStatus,
    wanted: &'static str,
) -> Interpreted<bool> {
    match reply {
        Reply::Line(Frame::Status(status)) if status == done => Ok(true),
        Reply::Line(Frame::Status(TextStatus::NotFound)) => Ok(false),
        Reply::Meta(m) if m.status == MetaStatus::Ok => Ok(true),
        Reply::Meta(m) if m.status == missing => Ok(false),
        other => Err(refuse(other, wanted)),
    }
}

/// An `incr`/`decr` (`ma`) reply: the new value, or `None` when the key was missing.
pub(crate) fn counter(reply: Reply) -> Interpreted<Option<u64>> {
    const WANTED: &str = "a decimal counter";
    match reply {
        Reply::Line(Frame::Number(n)) => Ok(Some(n)),
        Reply::Line(Frame::Status(TextStatus::NotFound)) => Ok(None),
        Reply::Meta(m) if m.status == MetaStatus::NotFound => Ok(None),
        Reply::Meta(MetaFrame {
            status: MetaStatus::Value,
            data: Some(data),
            ..
        }) => std::str::from_utf8(&data)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or(Refusal::Unexpected(WANTED)),
        other => Err(refuse(other, WANTED)),
    }
}

/// A single-key retrieval's reply: the item, or `None` on a miss.
pub(crate) fn item(reply: Reply) -> Interpreted<Option<Value>> {
    match reply {
        Reply::Values(values) => Ok(values.into_iter().find_map(|frame| match frame {
            Frame::Value {
                flags, cas, data, ..
            } => Some(Value {
                data,
                flags,
                cas,
                recache: RecacheFlags::default(),
            }),
            _ => None,
        })),
        Reply::Meta(m) if m.status == MetaStatus::Value => Ok(Some(meta_value(m))),
        Reply::Meta(m) if m.status == MetaStatus::Miss => Ok(None),
        other => Err(refuse(other, "a value or a miss")),
    }
}

/// A multi-key retrieval's reply: the hits, by key (`keys` are the keys asked for, in
/// order: meta batch replies name their key by index).
pub(crate) fn items(reply: Reply, keys: &[&[u8]]) -> Interpreted<Vec<(Vec<u8>, Value)>> {
    match reply {
        Reply::Values(values) => Ok(values
            .into_iter()
            .filter_map(|frame| match frame {
                Frame::Value {
                    key,
                    flags,
                    cas,
                    data,
                } => Some((
                    key.to_vec(),
                    Value {
                        data,
                        flags,
                        cas,
                        recache: RecacheFlags::default(),
                    },
                )),
                _ => None,
            })
            .collect()),
        Reply::MetaValues(values) => Ok(values
            .into_iter()
            .filter_map(|(index, m)| {
                let key = keys.get(index as usize)?;
                Some((key.to_vec(), meta_value(m)))
            })
            .collect()),
        other => Err(refuse(other, "values")),
    }
}

/// A reply that must be `OK` (`flush_all`).
pub(crate) fn ok(reply: Reply) -> Interpreted<()> {
    match reply {
        Reply::Line(Frame::Status(TextStatus::Ok)) => Ok(()),
        other => Err(refuse(other, "OK")),
    }
}

/// A `version` reply.
pub(crate) fn version(reply: Reply) -> Interpreted<Bytes> {
    match reply {
        Reply::Line(Frame::Version(v)) => Ok(v),
        other => Err(refuse(other, "VERSION")),
    }
}

/// A `stats` reply: the (name, value) pairs.
pub(crate) fn stats(reply: Reply) -> Interpreted<Vec<(Bytes, Bytes)>> {
    match reply {
        Reply::Stats(pairs) => Ok(pairs),
        other => Err(refuse(other, "STAT lines")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(status: MetaStatus) -> Reply {
        Reply::Meta(MetaFrame {
            status,
            opaque: Some(1),
            flags: None,
            cas: None,
            data: None,
            recache: Default::default(),
        })
    }

    fn line(status: TextStatus) -> Reply {
        Reply::Line(Frame::Status(status))
    }

    #[test]
    fn both_families_mean_the_same_outcomes() {
        assert_eq!(store(line(TextStatus::Stored)), Ok(StoreStatus::Stored));
        assert_eq!(store(meta(MetaStatus::Ok)), Ok(StoreStatus::Stored));
        assert_eq!(store(line(TextStatus::Exists)), Ok(StoreStatus::Exists));
        assert_eq!(store(meta(MetaStatus::Exists)), Ok(StoreStatus::Exists));
        assert_eq!(
            store(meta(MetaStatus::NotStored)),
            Ok(StoreStatus::NotStored)
        );
        assert_eq!(delete(line(TextStatus::Deleted)), Ok(true));
        assert_eq!(delete(meta(MetaStatus::Ok)), Ok(true));
        assert_eq!(delete(meta(MetaStatus::NotFound)), Ok(false));
        assert_eq!(touch(line(TextStatus::Touched)), Ok(true));
        assert_eq!(touch(meta(MetaStatus::Miss)), Ok(false));
        assert_eq!(counter(Reply::Line(Frame::Number(7))), Ok(Some(7)));
        assert_eq!(counter(meta(MetaStatus::NotFound)), Ok(None));
        assert_eq!(item(meta(MetaStatus::Miss)), Ok(None));
        assert_eq!(item(Reply::Values(Vec::new())), Ok(None));
    }

    #[test]
    fn error_lines_are_refusals_and_other_replies_unexpected() {
        let error = Reply::Error {
            kind: ErrorKind::Server,
            message: Bytes::from_static(b"out of memory"),
        };
        assert!(matches!(
            store(error),
            Err(Refusal::Error {
                kind: ErrorKind::Server,
                ..
            })
        ));
        // HD answers a store, a delete or a touch, never a retrieval; STORED never a delete.
        assert_eq!(
            item(meta(MetaStatus::Ok)),
            Err(Refusal::Unexpected("a value or a miss"))
        );
        assert_eq!(
            delete(line(TextStatus::Stored)),
            Err(Refusal::Unexpected("a delete status"))
        );
        assert_eq!(ok(line(TextStatus::Stored)), Err(Refusal::Unexpected("OK")));
    }
}
