//! The wire protocols, with no I/O: commands in, bytes out; bytes in, frames out.
//!
//! Two encoders share one decoder. [`text`] writes memcached's classic text commands,
//! [`meta`] its meta commands (`mg`, `ms`, `md`, `ma`, `mn`). Replies of both families
//! are told apart by their first token, so [`decode::FrameDecoder`] needs no context:
//! it cuts the byte stream into [`Frame`]s, and the connection assembles frames into
//! the reply each request expects (a multi-get is many `Value` frames then `End`), and
//! [`outcome`] reads each reply as what it means (stored, deleted, a counter, items, ...),
//! the same for both families.
//!
//! The binary protocol is not supported: memcached deprecated it in 1.6.0, and the meta
//! protocol gives what it had over text (opaque tokens, quiet mode, binary-safe keys)
//! in a text framing every current server and proxy speaks.

pub(crate) mod decode;
pub(crate) mod key;
pub(crate) mod meta;
pub(crate) mod outcome;
pub(crate) mod text;

use bytes::Bytes;

pub(crate) use decode::FrameDecoder;
pub(crate) use key::{validate_key, KeyForm};

/// The longest reply line the decoder buffers before declaring the stream corrupt.
/// memcached's longest lines (a `VALUE` header with a 250-byte key, a `STAT` line) are
/// far shorter.
pub(crate) const MAX_LINE: usize = 8 * 1024;

/// memcached reads an expiry above this many seconds as an absolute Unix time.
pub(crate) const RELATIVE_EXPIRY_LIMIT: u64 = 60 * 60 * 24 * 30;

/// One reply unit as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Text `VALUE <key> <flags> <bytes> [<cas>]` and its data block.
    Value {
        key: Bytes,
        flags: u32,
        cas: Option<u64>,
        data: Bytes,
    },
    /// Text `END`: the close of a retrieval or `stats` reply.
    End,
    /// Text `STAT <name> <value>`.
    Stat { name: Bytes, value: Bytes },
    /// A one-line text status.
    Status(TextStatus),
    /// The decimal result of text `incr`/`decr`.
    Number(u64),
    /// `VERSION <version>`.
    Version(Bytes),
    /// A meta reply: `VA <size> <flags>*` with its data, or a status code with flags.
    Meta(MetaFrame),
    /// `ERROR`, `CLIENT_ERROR <msg>` or `SERVER_ERROR <msg>`.
    Error { kind: ErrorKind, message: Bytes },
    /// A text `VALUE` (with its key) or meta `VA` (with its opaque) whose data block is
    /// larger than the client accepts; the block is discarded, the stream stays in sync.
    TooLarge {
        key: Option<Bytes>,
        opaque: Option<u32>,
        size: usize,
        max: usize,
    },
}

/// One-line text replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextStatus {
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    Ok,
}

/// Which error line the server sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// `ERROR`: unknown command.
    Unknown,
    /// `CLIENT_ERROR`: the request was malformed.
    Client,
    /// `SERVER_ERROR`: the server could not do it.
    Server,
    /// Not from the server: the value it sent (`size` bytes) is larger than the client
    /// accepts (`max`); it was skipped.
    TooLarge { size: usize, max: usize },
}

/// Meta reply codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaStatus {
    /// `VA`: value follows.
    Value,
    /// `HD`: success, no value.
    Ok,
    /// `EN`: miss.
    Miss,
    /// `NF`: not found.
    NotFound,
    /// `NS`: not stored.
    NotStored,
    /// `EX`: exists (CAS mismatch).
    Exists,
    /// `MN`: the no-op marker; every request before it has been answered.
    Noop,
}

/// A decoded meta reply with the return flags this client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetaFrame {
    pub(crate) status: MetaStatus,
    pub(crate) opaque: Option<u32>,
    pub(crate) flags: Option<u32>,
    pub(crate) cas: Option<u64>,
    pub(crate) data: Option<Bytes>,
    /// The `W`, `Z` and `X` return flags.
    pub(crate) recache: RecacheFlags,
}

/// The recache indications memcached's meta protocol adds to a retrieved item: the
/// return flags `W`, `Z` and `X` of `mg`. They tell callers which one of them should
/// recompute the value, so that a hot key that expires or is invalidated is recomputed
/// once instead of by every caller at once (a cache stampede).
///
/// memcached sends them on any `mg` of an item in that state, plain reads included
/// (a plain `get` of a placeholder someone won returns it empty with `already_won`).
/// They are always false in text-protocol mode (the text protocol has no such flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct RecacheFlags {
    /// `W`, "won": this caller has won the right to recache the item and should
    /// compute and store it. memcached hands it to exactly one caller: on a miss with
    /// vivify-on-miss (`N`, the item then is an empty placeholder), on a hit whose
    /// remaining TTL is below the recache threshold (`R`), or on the first read of an
    /// item marked stale.
    pub win: bool,
    /// `Z`, "already won": the win flag was already sent to another caller, who is
    /// recomputing the item. The value (if it is not the empty placeholder) may be
    /// used meanwhile.
    pub already_won: bool,
    /// `X`, "stale": the item was invalidated (`md` with `I`, see
    /// `Client::invalidate`); its value is outdated but may be served while the winner
    /// recomputes it.
    pub stale: bool,
}

/// How a storage command stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreMode {
    /// Store unconditionally.
    Set,
    /// Store only if the key is absent.
    Add,
    /// Store only if the key is present.
    Replace,
    /// Append to an existing value.
    Append,
    /// Prepend to an existing value.
    Prepend,
}

/// A command, borrowed from the caller for as long as it takes to encode it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Command<'a> {
    /// get / gets / gat / gats. `touch` is an encoded expiry.
    Get {
        key: &'a [u8],
        cas: bool,
        touch: Option<i64>,
    },
    /// Retrieval of many keys on one server.
    GetMany {
        keys: &'a [&'a [u8]],
    },
    /// Storage command; `cas` turns a `Set` into a compare-and-swap.
    Store {
        mode: StoreMode,
        key: &'a [u8],
        value: &'a [u8],
        flags: u32,
        exptime: i64,
        cas: Option<u64>,
    },
    Delete {
        key: &'a [u8],
    },
    Arith {
        incr: bool,
        key: &'a [u8],
        delta: u64,
    },
    Touch {
        key: &'a [u8],
        exptime: i64,
    },
    /// Meta-only `mg` with the value, client flags and CAS token, and the recache
    /// flags: `vivify` (`N`, an encoded expiry), `recache` (`R`, seconds of remaining
    /// TTL below which a hit wins), `touch` (`T`, an encoded expiry).
    GetRecache {
        key: &'a [u8],
        vivify: Option<i64>,
        recache: Option<u64>,
        touch: Option<i64>,
    },
    /// Meta-only `md` with `I`: marks the item stale instead of deleting it, with a new
    /// TTL (`T`, an encoded expiry) if given, only if its CAS token is `cas` if given.
    Invalidate {
        key: &'a [u8],
        exptime: Option<i64>,
        cas: Option<u64>,
    },
    FlushAll,
    Version,
    Stats,
}

impl Command<'_> {
    /// The keys this command carries (for validation).
    pub(crate) fn keys(&self) -> impl Iterator<Item = &[u8]> {
        let (one, many): (Option<&[u8]>, &[&[u8]]) = match *self {
            Command::Get { key, .. }
            | Command::Store { key, .. }
            | Command::Delete { key }
            | Command::Arith { key, .. }
            | Command::Touch { key, .. }
            | Command::GetRecache { key, .. }
            | Command::Invalidate { key, .. } => (Some(key), &[]),
            Command::GetMany { keys } => (None, keys),
            Command::FlushAll | Command::Version | Command::Stats => (None, &[]),
        };
        one.into_iter().chain(many.iter().copied())
    }

    /// True for commands only the meta protocol can carry.
    pub(crate) fn is_meta_only(&self) -> bool {
        matches!(
            self,
            Command::GetRecache { .. } | Command::Invalidate { .. }
        )
    }
}

/// The reply shape a request waits for; the connection assembles frames by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expect {
    /// One text status, number or version line.
    TextLine,
    /// `VALUE` frames closed by `ends` `END` frames (one per `get` line sent).
    TextValues { ends: usize },
    /// `STAT` frames closed by `END`.
    TextStats,
    /// One meta reply carrying this opaque.
    Meta { opaque: u32 },
    /// Quiet `mg` hits with opaques `first..first+count`, closed by `MN`.
    MetaBatch { first: u32, count: u32 },
    /// Replies to fire-and-forget quiet commands (only failures speak) closed by `MN`.
    QuietBarrier,
    /// Single-key `get`s of several callers merged into one `get k1 k2 …` line:
    /// `VALUE`s for the hits, in key order, then `END`.
    MergedGets,
}

/// The reply a request gets once its frames are assembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Line(Frame),
    Values(Vec<Frame>),
    Stats(Vec<(Bytes, Bytes)>),
    Meta(MetaFrame),
    /// Hits of a meta batch: (index in the batch, frame).
    MetaValues(Vec<(u32, MetaFrame)>),
    /// The server's error line for this request; the connection is still in sync.
    Error {
        kind: ErrorKind,
        message: Bytes,
    },
    /// A quiet barrier closed.
    Barrier,
}

/// Appends the decimal form of `n`.
pub(crate) fn put_u64(buf: &mut bytes::BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    bytes::BufMut::put_slice(buf, &digits[i..]);
}

/// Appends the decimal form of `n`, with a minus sign when negative.
pub(crate) fn put_i64(buf: &mut bytes::BytesMut, n: i64) {
    if n < 0 {
        bytes::BufMut::put_u8(buf, b'-');
    }
    put_u64(buf, n.unsigned_abs());
}
