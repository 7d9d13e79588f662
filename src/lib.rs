//! memkeep: an async, pipelined memcached client, and on top of it an MSM-style session
//! backup service whose sessions survive the death of the instance that served them and
//! of the memcached node that held them.
//!
//! # The client
//!
//! [`Client`] talks to a set of memcached nodes. Each node has one connection (by default)
//! driven by one task; any number of callers share it, their requests coalesced into few
//! writes and their replies matched in order and checked (meta opaque tokens, or the keys of
//! a retrieval). Keys map to nodes through a [`locator`]: ketama key-for-key compatible with
//! spymemcached or libmemcached, or modulo. Timeouts, node failure detection, reconnect with
//! backoff and a [`FailurePolicy`] keep a dead node from taking callers down with it.
//!
//! ```no_run
//! # async fn demo() -> memkeep::Result<()> {
//! use memkeep::{Client, Expiry};
//! use std::time::Duration;
//!
//! let client = Client::builder()
//!     .node("127.0.0.1:11211")
//!     .node("127.0.0.1:11212")
//!     .build()?;
//! client.set("user:42", "alice", Expiry::In(Duration::from_secs(3600))).await?;
//! let hit = client.get("user:42").await?;
//! let many = client.get_many(["user:42", "user:43"]).await?;
//! # let _ = (hit, many);
//! # Ok(()) }
//! ```
//!
//! # The session layer
//!
//! [`session::BackupSessionService`] keeps HTTP sessions on memcached: each session on the
//! node named in its id, a backup copy on a second node, restored from the backup on a
//! miss, sticky or non-sticky, with locking; framework-agnostic, with a tower layer and an
//! axum extractor behind features.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | `protocol` (private) | text and meta encoders, the reply decoder, what each reply means: no I/O |
//! | `connection` (private) | one socket, its driver task and in-flight queue |
//! | [`locator`] | key → node: ketama layouts, modulo, hash functions |
//! | `client` (re-exported at the root) | routing, failure policy, operations, configuration |
//! | [`session`] | the session backup service |
//! | [`error`] | the client's error type |
//!
//! The design, with its trade-offs, is in `docs/design.md`.
#![forbid(unsafe_code)]
// docs.rs builds with `--cfg docsrs` (Cargo.toml's [package.metadata.docs.rs]): items behind a
// feature carry the feature's label there.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, unreachable_pub)]

#[cfg(any(feature = "tower-sessions", feature = "actix-session"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "tower-sessions", feature = "actix-session")))
)]
pub mod adapters;
mod client;
mod connection;
pub mod error;
pub mod locator;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod node;
mod protocol;
pub mod session;

#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use client::TlsConfig;
pub use client::{
    CasOutcome, Client, ClientBuilder, ComputeError, ComputeOptions, ComputeSource, Computed,
    Credentials, Expiry, FailurePolicy, GetOptions, Item, Metrics, NodeConfig, NodeStatus,
    Protocol, RecacheFlags, StoreOptions, StoreOutcome,
};
pub use error::{Error, Result, UnavailableNode};
pub use node::NodeState;
pub use protocol::StoreMode;

/// Entry points for the fuzz targets in `fuzz/`; not part of the API.
#[doc(hidden)]
pub mod __fuzz {
    /// Decodes `data` as a stream of reply frames, whole and split at every byte;
    /// panics only if the decoder is wrong (a split changes the outcome).
    pub fn decode_replies(data: &[u8]) {
        crate::protocol::decode::check_split_invariance(data);
    }
}

/// Entry points for the criterion benchmarks in `benches/`; not part of the API.
#[doc(hidden)]
pub mod __bench {
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    use crate::protocol::{self, Command};

    /// Encodes a meta `mg` for `key` into `buf`.
    pub fn encode_meta_get(key: &[u8], buf: &mut BytesMut) {
        protocol::meta::encode(
            &Command::Get {
                key,
                cas: false,
                touch: None,
            },
            &protocol::key::form_of,
            1,
            false,
            buf,
        );
    }

    /// Encodes a meta `ms` of `value` under `key` into `buf`.
    pub fn encode_meta_set(key: &[u8], value: &[u8], buf: &mut BytesMut) {
        let cmd = Command::Store {
            mode: protocol::StoreMode::Set,
            key,
            value,
            flags: 0,
            exptime: 0,
            cas: None,
        };
        protocol::meta::encode(&cmd, &protocol::key::form_of, 1, false, buf);
    }

    /// Encodes a text multi-get of `keys` into `buf`.
    pub fn encode_text_get_many(keys: &[&[u8]], buf: &mut BytesMut) {
        protocol::text::encode(&Command::GetMany { keys }, buf);
    }

    /// Decodes every whole frame in `buf`; returns how many.
    pub fn decode_frames(buf: &mut BytesMut) -> usize {
        let mut decoder = protocol::FrameDecoder::new(1024 * 1024);
        let mut frames = 0;
        while let Ok(Some(_)) = decoder.decode(buf) {
            frames += 1;
        }
        frames
    }
}

// The README's code blocks are compiled as doc tests, so a pasted example always builds.
// They need the `axum` feature (the session example); `scripts/test.sh` runs the doc tests
// with every feature.
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
