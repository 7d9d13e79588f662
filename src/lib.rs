//! memkeep: an async, pipelined memcached client and an MSM-style session backup service.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod client;
mod connection;
pub mod error;
pub mod locator;
mod node;
mod protocol;
pub mod session;

pub use client::{
    CasOutcome, Client, ClientBuilder, Expiry, FailurePolicy, Item, Metrics, NodeConfig,
    NodeStatus, Protocol, StoreOptions, StoreOutcome,
};
pub use error::{Error, Result};
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
