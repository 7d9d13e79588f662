//! An [`actix_session::storage::SessionStore`] on memkeep's replicated store: a primary
//! and a backup copy of every session on two memcached nodes, restore on miss, the
//! state TTL as the records' expiry, and a deleted session never coming back.
//!
//! actix-session lets the store choose the session key, so the key names the copies'
//! nodes like the native id: `<32 hex digits>-<primary>~<backup>`. A load reads those
//! two nodes first (and down the key's order until two copies answered); a save that
//! moves a copy (a node failed) returns a key naming the new nodes, which actix-session
//! sends as the new cookie.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use memkeep::adapters::actix::ReplicatedStore;
//! use memkeep::{Client, NodeConfig};
//!
//! let client = Client::builder()
//!     .node_config(NodeConfig::new("127.0.0.1:11211").id("n1"))
//!     .node_config(NodeConfig::new("127.0.0.1:11212").id("n2"))
//!     .build()?;
//! let store = ReplicatedStore::new(client)?;
//! // App::new().wrap(actix_session::SessionMiddleware::new(store, key))
//! # let _ = store;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::time::SystemTime;

use actix_session::storage::{
    LoadError, SaveError, SessionKey as ActixKey, SessionStore, UpdateError,
};
use actix_web::cookie::time::Duration as TtlDuration;

use super::{AdapterRecord, Content, Placed, Written, CREATE_ATTEMPTS};
use crate::session::clock::unix_millis;
use crate::session::{SessionId, SessionKey};

pub use super::{ReplicatedStore, DEFAULT_KEY_PREFIX};

/// The actix key naming `placed`.
fn key_naming(key: SessionKey, placed: Placed) -> anyhow::Result<ActixKey> {
    let id = SessionId::new(key, placed.primary, placed.backup, None)?;
    ActixKey::try_from(id.to_string()).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The parsed id of an actix key (`None`: not one of ours; no session).
fn parse(key: &ActixKey) -> Option<SessionId> {
    SessionId::parse(key.as_ref())
}

fn hints(id: &SessionId) -> Vec<&str> {
    std::iter::once(id.node()).chain(id.backup()).collect()
}

fn record(state: HashMap<String, String>, ttl: &TtlDuration) -> AdapterRecord {
    AdapterRecord {
        attributes: state
            .into_iter()
            .map(|(name, value)| (name, value.into_bytes()))
            .collect(),
        expires_ms: expiry(ttl),
    }
}

fn expiry(ttl: &TtlDuration) -> u64 {
    let ttl_ms = u64::try_from(ttl.whole_milliseconds()).unwrap_or(0);
    unix_millis(SystemTime::now()).saturating_add(ttl_ms)
}

impl ReplicatedStore {
    async fn create_new(&self, record: &AdapterRecord) -> anyhow::Result<ActixKey> {
        for _ in 0..CREATE_ATTEMPTS {
            let key = SessionKey::generate()?;
            match self
                .backend
                .write(&key, &[], Content::Create(record))
                .await?
            {
                Written::Stored(placed) => return key_naming(key, placed),
                Written::Taken | Written::Deleted => {
                    tracing::warn!("session key collision on create; drawing another key");
                }
            }
        }
        Err(anyhow::anyhow!(
            "no free session key found: is the random source broken?"
        ))
    }
}

impl SessionStore for ReplicatedStore {
    async fn load(&self, key: &ActixKey) -> Result<Option<HashMap<String, String>>, LoadError> {
        let Some(id) = parse(key) else {
            return Ok(None);
        };
        let Some(found) = self
            .backend
            .load(&id.key(), &hints(&id))
            .await
            .map_err(|e| LoadError::Other(e.into()))?
        else {
            return Ok(None);
        };
        let mut state = HashMap::with_capacity(found.attributes.len());
        for (name, bytes) in found.attributes {
            let value =
                String::from_utf8(bytes).map_err(|e| LoadError::Deserialization(e.into()))?;
            state.insert(name, value);
        }
        Ok(Some(state))
    }

    async fn save(
        &self,
        state: HashMap<String, String>,
        ttl: &TtlDuration,
    ) -> Result<ActixKey, SaveError> {
        self.create_new(&record(state, ttl))
            .await
            .map_err(SaveError::Other)
    }

    async fn update(
        &self,
        key: ActixKey,
        state: HashMap<String, String>,
        ttl: &TtlDuration,
    ) -> Result<ActixKey, UpdateError> {
        let record = record(state, ttl);
        let Some(id) = parse(&key) else {
            // Not a key of ours: a new session.
            return self.create_new(&record).await.map_err(UpdateError::Other);
        };
        match self
            .backend
            .write(&id.key(), &hints(&id), Content::Replace(&record))
            .await
            .map_err(|e| UpdateError::Other(e.into()))?
        {
            Written::Stored(placed) => key_naming(id.key(), placed).map_err(UpdateError::Other),
            // Deleted by another request: it stays deleted, the key now loads nothing.
            Written::Deleted | Written::Taken => Ok(key),
        }
    }

    async fn update_ttl(&self, key: &ActixKey, ttl: &TtlDuration) -> anyhow::Result<()> {
        let Some(id) = parse(key) else {
            return Ok(());
        };
        self.backend
            .write(&id.key(), &hints(&id), Content::Touch(expiry(ttl)))
            .await?;
        Ok(())
    }

    async fn delete(&self, key: &ActixKey) -> anyhow::Result<()> {
        let Some(id) = parse(key) else {
            return Ok(());
        };
        self.backend.delete(&id.key(), &hints(&id)).await?;
        Ok(())
    }
}
