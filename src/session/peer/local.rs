//! In-process access to this instance's own endpoint: the copies the instance keeps for
//! itself, read and written without a socket or the protocol's encoding.
//!
//! Each operation is the one the crate's [`Client`](crate::Client) would send to the
//! endpoint, with the client's checks (key limits, the value size limit) and the
//! endpoint's semantics (the same functions serve both: versions and CAS tokens, `add`,
//! `append`, expiry, the memory bound and its eviction counts). Each counts as one
//! command in the endpoint's statistics, and as one in-process command.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};

use super::endpoint::{Shared, Status};
use crate::protocol::key::{base64_encode_into, validate_key, KeyForm};
use crate::{Error, Item, StoreMode, StoreOptions, StoreOutcome};

/// This instance's own endpoint, reached in process.
#[derive(Clone)]
pub(crate) struct LocalCopies {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LocalCopies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCopies").finish_non_exhaustive()
    }
}

impl LocalCopies {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        LocalCopies { shared }
    }

    /// The key as the endpoint stores it: as sent, or (a key the client sends base64
    /// encoded with the `b` flag) its encoding behind a 0 byte. Refused like the client
    /// refuses it.
    fn cache_key(&self, key: &[u8]) -> Result<Vec<u8>, Error> {
        self.shared.count_command();
        self.shared.count_in_process();
        Ok(match validate_key(key, true)? {
            KeyForm::Plain => key.to_vec(),
            KeyForm::Base64 => {
                let mut encoded = BytesMut::with_capacity(1 + key.len().div_ceil(3) * 4);
                encoded.extend_from_slice(&[0]);
                base64_encode_into(key, &mut encoded);
                encoded.to_vec()
            }
        })
    }

    fn item(item: super::endpoint::Item, cas: bool) -> Item {
        Item {
            value: item.value,
            flags: item.flags,
            cas: cas.then_some(item.cas),
            recache: Default::default(),
        }
    }

    /// [`Client::get`](crate::Client::get) (`cas`: [`Client::gets`](crate::Client::gets)).
    pub(crate) fn get(&self, key: &[u8], cas: bool) -> Result<Option<Item>, Error> {
        let key = self.cache_key(key)?;
        Ok(self.shared.lookup(&key, None).map(|i| Self::item(i, cas)))
    }

    /// [`Client::get_many`](crate::Client::get_many): misses absent.
    pub(crate) fn get_many<I, K>(&self, keys: I) -> Result<HashMap<Vec<u8>, Item>, Error>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        let mut found = HashMap::new();
        for key in keys {
            let key = key.as_ref();
            let cache_key = self.cache_key(key)?;
            if let Some(item) = self.shared.lookup(&cache_key, None) {
                found.insert(key.to_vec(), Self::item(item, false));
            }
        }
        Ok(found)
    }

    /// [`Client::store`](crate::Client::store), the client's value size check included.
    pub(crate) fn store(
        &self,
        mode: StoreMode,
        key: &[u8],
        value: &[u8],
        options: StoreOptions,
    ) -> Result<StoreOutcome, Error> {
        let key = self.cache_key(key)?;
        let max = self.shared.max_value();
        if value.len() > max {
            return Err(Error::ValueTooLarge {
                size: value.len(),
                max,
            });
        }
        let mode = match mode {
            StoreMode::Set => b'S',
            StoreMode::Add => b'E',
            StoreMode::Replace => b'R',
            StoreMode::Append => b'A',
            StoreMode::Prepend => b'P',
        };
        let (status, _) = self.shared.write(
            &key,
            mode,
            Bytes::copy_from_slice(value),
            options.flags,
            options.expiry.to_exptime(SystemTime::now()),
            options.cas,
        );
        Ok(match status {
            Status::Done => StoreOutcome::Stored,
            Status::NotStored => StoreOutcome::NotStored,
            Status::Exists => StoreOutcome::Exists,
            Status::NotFound => StoreOutcome::NotFound,
        })
    }

    /// [`Client::delete`](crate::Client::delete).
    pub(crate) fn delete(&self, key: &[u8]) -> Result<bool, Error> {
        let key = self.cache_key(key)?;
        Ok(self.shared.remove(&key, None) == Status::Done)
    }
}
