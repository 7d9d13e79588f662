//! Principal generations: the record behind "log out everywhere".
//!
//! Each principal (user) that was ever logged out everywhere has a generation record
//! `<prefix>principal:<32 hex>` (the hex is a 128-bit hash of the principal's name) on
//! EVERY node: `MP`, format version 1, the generation (u64, big-endian). A session bound
//! to a principal stores the generation it was bound under; it is dead once the
//! principal's generation is higher.
//!
//! * [`Store::bump_principal`] reads every usable node, takes the highest generation
//!   plus one and writes it to every usable node, each copy only moving forward (`add`
//!   where none is, `cas` where an older one is). Ok when at least one node holds it and
//!   no node that answered refused it.
//! * [`Store::settle_principal`] (on bind) writes the current generation to every usable
//!   node that lacks it, so the record normally exists on every node.
//! * [`Store::principal_generation`] reads the principal key's preference order until
//!   two nodes answered with a record (normally the first two: one parallel `get`) and
//!   keeps the highest generation; a node found behind or empty is brought forward (read
//!   repair).
//!
//! With at most one node unavailable at a time, the records a read finds include one
//! from a node that was up when the generation was bumped (the bump wrote every usable
//! node, and a node restarted empty since is read past). A node that missed a bump gets
//! the generation from the hints the others keep for it (`handoff`), like a tombstone it
//! missed, so later faults of the nodes that got it don't bring the old one back. Cost: one parallel `get` to two
//! nodes per load of a bound session; a bind and a bump read and write every node.

use std::sync::atomic::Ordering::Relaxed;

use crate::{Expiry, StoreOptions, StoreOutcome};

use super::{Cas, SessionError, SessionKey, Store, COPY_ATTEMPTS};

const MAGIC: [u8; 2] = *b"MP";
const PRINCIPAL_FORMAT_VERSION: u8 = 1;
const RECORD_LEN: usize = 11;

fn encode(generation: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(PRINCIPAL_FORMAT_VERSION);
    out.extend_from_slice(&generation.to_be_bytes());
    out
}

/// The generation in a record; a record that is not ours counts as generation 0.
fn decode(bytes: &[u8]) -> u64 {
    if bytes.len() < RECORD_LEN || bytes[0..2] != MAGIC || bytes[2] != PRINCIPAL_FORMAT_VERSION {
        tracing::warn!("principal generation record refused (garbage or unknown format)");
        return 0;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&bytes[3..11]);
    u64::from_be_bytes(a)
}

/// The 128-bit key of a principal (placement and the record's name).
pub(crate) fn principal_key(principal: &str) -> SessionKey {
    let lo = twox_hash::XxHash3_64::oneshot_with_seed(0x6d6b_7072_696e_6331, principal.as_bytes());
    let hi = twox_hash::XxHash3_64::oneshot_with_seed(0x6d6b_7072_696e_6332, principal.as_bytes());
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_be_bytes());
    bytes[8..].copy_from_slice(&lo.to_be_bytes());
    SessionKey::from_bytes(bytes)
}

/// What one node holds.
#[derive(Clone, Copy)]
pub(super) struct Held {
    generation: u64,
    /// CAS token (`None`: no record).
    cas: Option<Cas>,
}

impl Store {
    pub(super) fn principal_item(&self, key: &SessionKey) -> String {
        format!("{}principal:{key}", self.prefix)
    }

    async fn read_principal(&self, node: &str, item: &str) -> Result<Held, crate::Error> {
        Ok(match self.node(node)?.gets(item).await? {
            None => Held {
                generation: 0,
                cas: None,
            },
            Some((i, cas)) => Held {
                generation: decode(&i.value),
                cas: Some(cas),
            },
        })
    }

    /// Makes `node` hold at least `generation` (only ever forward). True when it does.
    pub(super) async fn raise_principal(
        &self,
        node: &str,
        item: &str,
        generation: u64,
        mut held: Option<Held>,
    ) -> Result<bool, crate::Error> {
        let client = self.node(node)?;
        let record = encode(generation);
        for _ in 0..COPY_ATTEMPTS {
            let h = match held.take() {
                Some(h) => h,
                None => self.read_principal(node, item).await?,
            };
            if h.generation >= generation && h.cas.is_some() {
                return Ok(true);
            }
            let options = StoreOptions {
                flags: 0,
                expiry: Expiry::Never,
                cas: None,
            };
            if client.store_over(item, &record, options, h.cas).await? == StoreOutcome::Stored {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The principal's current generation (0: never logged out everywhere). `Err` when
    /// no node answered.
    pub(crate) async fn principal_generation(&self, principal: &str) -> Result<u64, SessionError> {
        let key = principal_key(principal);
        let item = self.principal_item(&key);
        let order: Vec<String> = self
            .placement
            .order(&key)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut answered: Vec<(String, Held)> = Vec::new();
        let mut last_error = None;
        let mut next = 0;
        // Down the order until two nodes answered WITH a record (as session reads do):
        // a node restarted empty does not hide the nodes further down that kept it.
        let holding = |a: &[(String, Held)]| a.iter().filter(|(_, h)| h.cas.is_some()).count();
        while holding(&answered) < 2 && next < order.len() {
            let want = 2 - holding(&answered);
            let batch: Vec<&String> = order[next..].iter().take(want).collect();
            next += batch.len();
            let reads = batch.iter().map(|n| self.read_principal(n, &item));
            for (node, result) in batch.iter().zip(futures::future::join_all(reads).await) {
                match result {
                    Ok(h) => answered.push(((*node).clone(), h)),
                    Err(e) => {
                        tracing::warn!(node = %node, error = %e, "principal generation not read on a node; reading the next");
                        last_error = Some(e);
                    }
                }
            }
        }
        if answered.is_empty() {
            self.stats.load_failures.fetch_add(1, Relaxed);
            return Err(last_error.map_or(SessionError::NoNodeAvailable, SessionError::Memcached));
        }
        let latest = answered
            .iter()
            .map(|(_, h)| h.generation)
            .max()
            .unwrap_or(0);
        if holding(&answered) > 0 {
            // Read repair: a node behind or without the record (restarted empty, back
            // with old data) is brought forward, so the next node fault does not lose
            // the generation.
            let behind = answered
                .iter()
                .filter(|(_, h)| h.generation < latest || h.cas.is_none());
            let repairs = behind.map(|(n, h)| self.raise_principal(n, &item, latest, Some(*h)));
            for r in futures::future::join_all(repairs).await {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "principal generation read repair failed");
                }
            }
        }
        Ok(latest)
    }

    /// Logs a principal out everywhere: its generation goes one up on every usable node.
    /// Returns the new generation.
    pub(crate) async fn bump_principal(&self, principal: &str) -> Result<u64, SessionError> {
        self.spread_principal(principal, 1).await
    }

    /// On bind: the principal's current generation, written to every usable node that
    /// lacks it (so that later loads find the record on the first two nodes they read).
    pub(crate) async fn settle_principal(&self, principal: &str) -> Result<u64, SessionError> {
        self.spread_principal(principal, 0).await
    }

    /// Reads every usable node, writes the highest generation plus `step` to every one.
    async fn spread_principal(&self, principal: &str, step: u64) -> Result<u64, SessionError> {
        let key = principal_key(principal);
        let item = self.principal_item(&key);
        let nodes: Vec<String> = self
            .client
            .node_ids()
            .into_iter()
            .filter(|n| self.usable(n))
            .collect();
        let reads = nodes.iter().map(|n| self.read_principal(n, &item));
        let mut held: Vec<(String, Held)> = Vec::new();
        let mut last_error = None;
        for (node, result) in nodes.iter().zip(futures::future::join_all(reads).await) {
            match result {
                Ok(h) => held.push((node.clone(), h)),
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "principal generation not read on a node");
                    last_error = Some(e);
                }
            }
        }
        if held.is_empty() {
            return Err(last_error.map_or(SessionError::NoNodeAvailable, SessionError::Memcached));
        }
        let generation = held
            .iter()
            .map(|(_, h)| h.generation)
            .max()
            .unwrap_or(0)
            .saturating_add(step);
        let writes = held
            .iter()
            .map(|(n, h)| self.raise_principal(n, &item, generation, Some(*h)));
        let mut stored: Vec<String> = Vec::new();
        for ((node, _), result) in held.iter().zip(futures::future::join_all(writes).await) {
            match result {
                Ok(true) => stored.push(node.clone()),
                Ok(false) => {
                    return Err(SessionError::Memcached(crate::Error::Server(
                        "principal generation kept changing under a conditional write".into(),
                    )))
                }
                Err(e) if e.is_node_failure() => {
                    tracing::warn!(node = %node, error = %e, "principal generation not written on a node");
                }
                Err(e) => return Err(e.into()),
            }
        }
        // A node that missed the generation (down, stopped, failing) gets it from the
        // hints the others keep (handoff.rs), as it gets the tombstones it missed.
        let missed = self.missed_by(&stored);
        if generation > 0 && !stored.is_empty() && !missed.is_empty() {
            self.record_principal_hints(&key, generation, &missed, &stored)
                .await;
        }
        if stored.is_empty() {
            return Err(SessionError::NoNodeAvailable);
        }
        Ok(generation)
    }
}
