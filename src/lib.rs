//! memkeep: an async, pipelined memcached client and an MSM-style session backup service.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod error;
pub mod locator;
mod client;
mod connection;
mod node;
mod protocol;

pub use client::{
    CasOutcome, Client, ClientBuilder, Expiry, FailurePolicy, Item, Metrics, NodeConfig, NodeStatus,
    Protocol, StoreOptions, StoreOutcome,
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
