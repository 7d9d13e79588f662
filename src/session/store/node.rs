//! One node of the store, as the store's rules see it: a memcached server or a peer
//! reached through the [`Client`], or (peer backend) this instance's own endpoint,
//! whose copies are read and written in process. Both answer the same operations with
//! the same semantics (see `peer::local`), so every rule of the store is written once,
//! against this type.

use std::collections::HashMap;

use crate::session::peer::LocalCopies;
use crate::{Client, Expiry, Item, StoreMode, StoreOptions, StoreOutcome};

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

    /// Reads `key` with its CAS token.
    pub(crate) async fn gets(&self, key: impl AsRef<[u8]>) -> crate::Result<Option<Item>> {
        match self {
            Node::Remote(c) => c.gets(key).await,
            Node::Local(l) => l.get(key.as_ref(), true),
        }
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

    /// The general storage command.
    pub(crate) async fn store(
        &self,
        mode: StoreMode,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        options: StoreOptions,
    ) -> crate::Result<StoreOutcome> {
        match self {
            Node::Remote(c) => c.store(mode, key, value, options).await,
            Node::Local(l) => l.store(mode, key.as_ref(), value.as_ref(), options),
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
