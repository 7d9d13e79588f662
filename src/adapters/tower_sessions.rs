//! A [`tower_sessions_core::SessionStore`] (the trait `tower_sessions::SessionStore`
//! re-exports) on memkeep's replicated store: a primary and a backup copy of every
//! session on two memcached nodes, restore on miss, the expiry date as the records'
//! expiry, `create` refusing an id collision, and a deleted session never coming back.
//!
//! tower-sessions' ids are opaque 128-bit numbers, so they can't name the nodes of the
//! copies: the copies go to the first two usable nodes of the id's rendezvous order,
//! and a read walks that order until it found two copies (see `docs/session.md`,
//! "Store adapters", for what that costs against the native service).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use memkeep::adapters::tower_sessions::ReplicatedStore;
//! use memkeep::{Client, NodeConfig};
//!
//! let client = Client::builder()
//!     .node_config(NodeConfig::new("127.0.0.1:11211").id("n1"))
//!     .node_config(NodeConfig::new("127.0.0.1:11212").id("n2"))
//!     .build()?;
//! let store = ReplicatedStore::new(client)?;
//! // let layer = tower_sessions::SessionManagerLayer::new(store);
//! # let _ = store;
//! # Ok(()) }
//! ```

use std::collections::HashMap;

use async_trait::async_trait;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, SessionStore};

use super::{AdapterRecord, Content, Written, CREATE_ATTEMPTS};
use crate::session::{CodecKind, SessionError, SessionKey};

pub use super::{ReplicatedStore, DEFAULT_KEY_PREFIX};

fn key_of(id: &Id) -> SessionKey {
    SessionKey::from_bytes(id.0.to_be_bytes())
}

fn backend_error(e: SessionError) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

fn to_adapter(record: &Record) -> Result<AdapterRecord, session_store::Error> {
    let mut attributes = Vec::with_capacity(record.data.len());
    for (name, value) in &record.data {
        let bytes = CodecKind::MessagePack
            .encode(value)
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        attributes.push((name.clone(), bytes));
    }
    let nanos = record.expiry_date.unix_timestamp_nanos();
    let expires_ms = u64::try_from(nanos / 1_000_000).unwrap_or(0);
    Ok(AdapterRecord {
        attributes,
        expires_ms,
    })
}

fn from_adapter(id: Id, record: AdapterRecord) -> Result<Record, session_store::Error> {
    let mut data = HashMap::with_capacity(record.attributes.len());
    for (name, bytes) in record.attributes {
        let value = CodecKind::MessagePack
            .decode(&bytes)
            .map_err(|e| session_store::Error::Decode(e.to_string()))?;
        data.insert(name, value);
    }
    let expiry_date =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(record.expires_ms) * 1_000_000)
            .map_err(|e| session_store::Error::Decode(e.to_string()))?;
    Ok(Record {
        id,
        data,
        expiry_date,
    })
}

#[async_trait]
impl SessionStore for ReplicatedStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let adapted = to_adapter(record)?;
        for _ in 0..CREATE_ATTEMPTS {
            match self
                .backend
                .write(&key_of(&record.id), &[], Content::Create(&adapted))
                .await
                .map_err(backend_error)?
            {
                Written::Stored(_) => return Ok(()),
                Written::Taken | Written::Deleted => {
                    tracing::warn!("session id collision on create; drawing another id");
                    record.id = Id::default();
                }
            }
        }
        Err(session_store::Error::Backend(
            "no free session id found: is the random source broken?".into(),
        ))
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let adapted = to_adapter(record)?;
        match self
            .backend
            .write(&key_of(&record.id), &[], Content::Replace(&adapted))
            .await
            .map_err(backend_error)?
        {
            // A session deleted by another request stays deleted (its tombstone
            // outranks every write); the next request gets a new session.
            Written::Stored(_) | Written::Deleted | Written::Taken => Ok(()),
        }
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        match self
            .backend
            .load(&key_of(id), &[])
            .await
            .map_err(backend_error)?
        {
            Some(record) => from_adapter(*id, record).map(Some),
            None => Ok(None),
        }
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.backend
            .delete(&key_of(id), &[])
            .await
            .map_err(backend_error)
    }
}
