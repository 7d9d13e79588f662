//! memkeep: an async, pipelined memcached client and an MSM-style session backup service.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod error;
pub mod locator;

pub use error::{Error, Result};
