//! One node of the store, as the store's rules see it: a memcached server or a peer
//! reached through the [`Client`], or (peer backend) this instance's own endpoint,
//! whose copies are read and written in process. Both answer the same operations with
//! the same semantics (see `peer::local`), so every rule of the store is written once,
//! against this type.

use std::collections::HashMap;

use crate::session::peer::LocalCopies;
use crate::{Client, Expiry, Item, StoreMode, StoreOptions, StoreOutcome};

/// A CAS token and the connection epoch of the node the read that returned it was
/// served in. A memcached (or peer) restarted empty numbers its tokens from 1 again, so a
/// token from before a restart could name an unrelated item written after it: a CAS
/// store with a token is only sent while the node's epoch has not moved
/// ([`Node::store_cas`]), else it is refused as a stale token is. Every conditional
/// overwrite of the store goes through this type, so no rule can use a token across a
/// restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cas {
    /// The token the server gave.
    pub(crate) token: u64,
    /// The node's connection epoch sampled before the read, or after it when no
    /// connection was up then (0 for the local node).
    epoch: u64,
}

/// A node of the store.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    /// Reached over the network.
    Remote(Client),
    /// This instance's own peer endpoint, in process.
    Local(LocalCopies),
}

impl Node {
    /// True for this instance's own endpoint.
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Node::Local(_))
    }

    /// Reads `key`.
    pub(crate) async fn get(&self, key: impl AsRef<[u8]>) -> crate::Result<Option<Item>> {
        match self {
            Node::Remote(c) => c.get(key).await,
            Node::Local(l) => l.get(key.as_ref(), false),
        }
    }

    /// Reads `key` with its CAS token (and the epoch that token belongs to).
    pub(crate) async fn gets(&self, key: impl AsRef<[u8]>) -> crate::Result<Option<(Item, Cas)>> {
        let (item, epoch) = match self {
            Node::Remote(c) => {
                // Sampled before the read: the reply comes from a connection that
                // existed then, or the epoch has moved since. With no connection up, the
                // read waits for a new one: sampled after it.
                let before = c.epoch();
                let item = c.gets(key).await?;
                (item, before.or_else(|| c.epoch()).unwrap_or(0))
            }
            Node::Local(l) => (l.get(key.as_ref(), true)?, 0),
        };
        Ok(item.map(|item| {
            let token = item.cas.unwrap_or(0);
            (item, Cas { token, epoch })
        }))
    }

    /// Reads several keys; misses are absent.
    pub(crate) async fn get_many<I, K>(&self, keys: I) -> crate::Result<HashMap<Vec<u8>, Item>>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        match self {
            Node::Remote(c) => c.get_many(keys).await,
            Node::Local(l) => l.get_many(keys),
        }
    }

    /// The general storage command, without a CAS token (`options.cas` must be `None`:
    /// a token goes through [`Node::store_cas`]).
    pub(crate) async fn store(
        &self,
        mode: StoreMode,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        options: StoreOptions,
    ) -> crate::Result<StoreOutcome> {
        debug_assert!(options.cas.is_none(), "a CAS store goes through store_cas");
        match self {
            Node::Remote(c) => c.store(mode, key, value, options).await,
            Node::Local(l) => l.store(mode, key.as_ref(), value.as_ref(), options),
        }
    }

    /// Sets `key` only if its CAS token is still `cas` and the node's connection epoch
    /// is still the one `cas` was read in ([`Exists`](StoreOutcome::Exists) otherwise).
    /// `options.cas` is ignored.
    pub(crate) async fn store_cas(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        options: StoreOptions,
        cas: Cas,
    ) -> crate::Result<StoreOutcome> {
        let options = StoreOptions {
            cas: Some(cas.token),
            ..options
        };
        let (key, value) = (key.as_ref(), value.as_ref());
        match self {
            Node::Remote(c) => {
                c.store_in_epoch(StoreMode::Set, key, value, options, cas.epoch)
                    .await
            }
            Node::Local(l) => l.store(StoreMode::Set, key, value, options),
        }
    }

    /// The conditional write every rule of the store uses to replace what it read:
    /// `add` where the read found nothing (`over` is `None`), else a CAS set over the
    /// record read ([`Node::store_cas`]).
    pub(crate) async fn store_over(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        options: StoreOptions,
        over: Option<Cas>,
    ) -> crate::Result<StoreOutcome> {
        match over {
            None => self.store(StoreMode::Add, key, value, options).await,
            Some(cas) => self.store_cas(key, value, options, cas).await,
        }
    }

    /// Stores only if `key` is absent.
    pub(crate) async fn add(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        expiry: Expiry,
    ) -> crate::Result<bool> {
        let options = StoreOptions {
            expiry,
            ..StoreOptions::default()
        };
        Ok(self.store(StoreMode::Add, key, value, options).await? == StoreOutcome::Stored)
    }

    /// Appends to the value of `key`; false if it was missing.
    pub(crate) async fn append(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> crate::Result<bool> {
        let options = StoreOptions::default();
        Ok(self.store(StoreMode::Append, key, value, options).await? == StoreOutcome::Stored)
    }

    /// Deletes `key`; false if it was missing.
    pub(crate) async fn delete(&self, key: impl AsRef<[u8]>) -> crate::Result<bool> {
        match self {
            Node::Remote(c) => c.delete(key).await,
            Node::Local(l) => l.delete(key.as_ref()),
        }
    }
}
