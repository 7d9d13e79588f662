//! Helpers for the session store adapters' tests (`tests/session_*_store.rs`): which
//! servers hold a session's record. Included with
//! `#[path = "kit/adapters.rs"] mod adapters_kit;` next to `mod kit;`.
#![allow(dead_code, unreachable_pub)]

use crate::kit::memcached::raw;
use crate::kit::Cluster;

/// The indexes of the running servers of `cluster` holding memcached key `key`.
pub fn holders(cluster: &mut Cluster, key: &str) -> Vec<usize> {
    kinds(cluster, key).into_iter().map(|(i, _)| i).collect()
}

/// The record kind byte (0 session, 1 tombstone, see `memkeep::session::format`) each
/// running server of `cluster` holds under `key`.
pub fn kinds(cluster: &mut Cluster, key: &str) -> Vec<(usize, u8)> {
    let running: Vec<usize> = (0..cluster.len())
        .filter(|&i| cluster[i].is_running())
        .collect();
    running
        .into_iter()
        .filter_map(|i| {
            let bytes = raw::get_bytes(&cluster[i].addr(), key)?;
            Some((i, *bytes.get(3)?))
        })
        .collect()
}
