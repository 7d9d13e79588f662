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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::peer::{PeerEndpoint, PEER_PROTOCOL_USER};
    use crate::{Client, Credentials, Expiry, NodeConfig};

    const SECRET: &str = "unit-test-secret-0123456789";

    /// The in-process path and the protocol see the same items: keys sent as is or
    /// base64-encoded, CAS tokens, `add`, `append`, removal, the value size limit.
    #[tokio::test]
    async fn in_process_and_protocol_agree() {
        let endpoint = PeerEndpoint::bind("127.0.0.1:0", SECRET, 1 << 20, 100).unwrap();
        let local = endpoint.local();
        let client = Client::builder()
            .node_config(NodeConfig::new(endpoint.local_addr().to_string()).id("me"))
            .credentials(Credentials::new(PEER_PROTOCOL_USER, SECRET))
            .max_value_size(100)
            .build()
            .unwrap();
        let set = StoreOptions {
            flags: 7,
            expiry: Expiry::In(std::time::Duration::from_secs(60)),
            cas: None,
        };
        for key in [&b"plain-key"[..], b"binary key\x01"] {
            // Written in process, read over the protocol, and back.
            assert_eq!(
                local.store(StoreMode::Set, key, b"v1", set).unwrap(),
                StoreOutcome::Stored
            );
            let remote = client.gets(key).await.unwrap().unwrap();
            assert_eq!((&remote.value[..], remote.flags), (&b"v1"[..], 7));
            let mine = local.get(key, true).unwrap().unwrap();
            assert_eq!(mine.cas, remote.cas);
            assert_eq!(local.get(key, false).unwrap().unwrap().cas, None);
            // A CAS write with the token read over the protocol succeeds in process once.
            let cas = StoreOptions {
                cas: remote.cas,
                ..set
            };
            assert_eq!(
                local.store(StoreMode::Set, key, b"v2", cas).unwrap(),
                StoreOutcome::Stored
            );
            assert_eq!(
                local.store(StoreMode::Set, key, b"v3", cas).unwrap(),
                StoreOutcome::Exists
            );
            assert!(!client.add(key, b"x", Expiry::Never).await.unwrap());
            assert_eq!(
                local.store(StoreMode::Add, key, b"x", set).unwrap(),
                StoreOutcome::NotStored
            );
            assert!(client.append(key, b"+").await.unwrap());
            let got = local.get_many([key, b"absent"]).unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(&got[key].value[..], b"v2+");
            assert!(local.delete(key).unwrap());
            assert!(client.get(key).await.unwrap().is_none());
            assert!(!local.delete(key).unwrap());
            assert_eq!(
                local.store(StoreMode::Append, key, b"+", set).unwrap(),
                StoreOutcome::NotStored
            );
            let missing_cas = StoreOptions {
                cas: Some(1),
                ..set
            };
            assert_eq!(
                local.store(StoreMode::Set, key, b"v", missing_cas).unwrap(),
                StoreOutcome::NotFound
            );
        }
        // The client's limits, refused alike.
        let big = [0u8; 101];
        assert!(matches!(
            local.store(StoreMode::Set, b"k", &big, set),
            Err(Error::ValueTooLarge {
                size: 101,
                max: 100
            })
        ));
        assert!(matches!(
            client.set(b"k", &big[..], Expiry::Never).await,
            Err(Error::ValueTooLarge { .. })
        ));
        assert!(matches!(local.get(b"", false), Err(Error::InvalidKey(_))));
        assert!(matches!(
            local.get(&[b'k'; 251], false),
            Err(Error::InvalidKey(_))
        ));
        // Expired at once: stored and gone, on both paths.
        let gone = StoreOptions {
            expiry: Expiry::In(std::time::Duration::ZERO),
            ..set
        };
        assert_eq!(
            local.store(StoreMode::Set, b"k", b"v", gone).unwrap(),
            StoreOutcome::Stored
        );
        assert!(client.get(b"k").await.unwrap().is_none());
        let stats = endpoint.stats();
        assert!(stats.in_process_commands > 0 && stats.commands > stats.in_process_commands);
    }
}
