//! Invalidation: tombstones on every usable node, hints for the nodes that missed them
//! (`handoff`), and read repair of a tombstone a read found (see the module's rules).
//!
//! A tombstone never replaces another one ([`Store::put_tombstone`]): a key retired by
//! an id rotation holds a tombstone naming the key the session moved to (its
//! successor), and an invalidation that loaded the session before the rotation finds
//! that name there and invalidates the successor too, instead of erasing the trail.

use std::time::Duration;

use crate::{Expiry, StoreMode, StoreOptions, StoreOutcome};

use super::*;

/// What one invalidation did.
#[derive(Debug)]
pub(crate) struct Invalidation {
    /// Ok when the placement's nodes (at least one) hold a tombstone.
    pub(crate) result: Result<(), SessionError>,
    /// The successors named by tombstones the nodes already held (the key was retired
    /// by an id rotation: the session lives on under these keys).
    pub(crate) successors: Vec<SessionKey>,
}

/// What a tombstone write found on one node.
pub(super) enum Put {
    /// The tombstone is stored.
    Stored,
    /// The node already held a tombstone (kept as it is), naming this successor.
    Kept(Option<SessionKey>),
}

impl Store {
    /// Invalidates a session: a tombstone on every node of `nodes` (the nodes the read
    /// found or the id named) and of the current placement, and on every other usable
    /// node; the validity records are removed. A tombstone a node already holds is kept
    /// and its successor reported. `known`: what the invalidating request read (its
    /// CAS tokens spare a read per copy). `successor`: the key the session moved to
    /// (an id rotation spreading its retirement), written into the tombstones.
    pub(crate) async fn invalidate(
        &self,
        key: &SessionKey,
        nodes: &[String],
        invalidated_ms: u64,
        max_inactive: Duration,
        known: &KnownCopies,
        successor: Option<&SessionKey>,
    ) -> Invalidation {
        let tombstone = match successor {
            Some(next) => format::encode_retirement(key, invalidated_ms, next),
            None => format::encode_tombstone(key, TOMBSTONE_VERSION, invalidated_ms),
        };
        let expiry = ttl(max_inactive.saturating_add(TOMBSTONE_MARGIN));
        let mut exclude: Vec<String> = Vec::new();
        let mut done: Vec<String> = Vec::new();
        let mut successors: Vec<SessionKey> = Vec::new();
        let write = |node: String| {
            let tombstone = &tombstone;
            async move {
                let client = self.node(&node)?;
                let (put, _) = futures::join!(
                    self.put_tombstone(&node, key, tombstone, expiry, known.get(&node)),
                    client.delete(self.validity_key(key))
                );
                put.map(|p| (node, p))
            }
        };
        // Every usable node gets the tombstone, not only the copies' nodes: a copy the
        // session left on a node it moved off must not outlive the tombstones.
        let mut targets: Vec<String> = nodes.to_vec();
        for n in self.client.node_ids() {
            if self.usable(&n) && !targets.contains(&n) {
                targets.push(n);
            }
        }
        let mut last_error = None;
        let mut outcome = None;
        for _ in 0..PLACEMENT_ATTEMPTS {
            let copies = self.copies(key, &exclude);
            if let Some(c) = &copies {
                for n in c.nodes() {
                    if !targets.iter().any(|t| t == n) {
                        targets.push(n.to_owned());
                    }
                }
            }
            let batch: Vec<String> = targets
                .iter()
                .filter(|t| !done.contains(t) && !exclude.contains(t))
                .cloned()
                .collect();
            for result in futures::future::join_all(batch.into_iter().map(write)).await {
                match result {
                    Ok((node, put)) => {
                        if let Put::Kept(Some(next)) = put {
                            if !successors.contains(&next) {
                                successors.push(next);
                            }
                        }
                        done.push(node);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "tombstone not written on a node");
                        last_error = Some(e);
                    }
                }
            }
            for t in &targets {
                if !done.contains(t) && !exclude.contains(t) {
                    exclude.push(t.clone());
                }
            }
            match copies {
                Some(c) if c.nodes().all(|n| done.iter().any(|d| d == n)) => {
                    outcome = Some(Ok(()));
                    break;
                }
                Some(_) => continue,
                None if !done.is_empty() => {
                    outcome = Some(Ok(()));
                    break;
                }
                None => break,
            }
        }
        // A node that missed the tombstone (down, stopped, failing) may come back with
        // a copy: the nodes that hold the tombstone keep a hint for it (handoff.rs).
        let missed = self.missed_by(&done);
        if !missed.is_empty() {
            let ttl_secs = max_inactive.saturating_add(TOMBSTONE_MARGIN).as_secs();
            self.record_hints(key, &missed, &done, invalidated_ms, ttl_secs, successor)
                .await;
        }
        let result = outcome.unwrap_or_else(|| {
            Err(last_error.map_or(SessionError::NoNodeAvailable, SessionError::Memcached))
        });
        Invalidation { result, successors }
    }

    /// Stores `tombstone` under `key` on `node` unless the node already holds a
    /// tombstone, which is kept (a retirement's successor must not be erased by a plain
    /// invalidation racing it). Conditional like a session write: `add` where the node
    /// is believed to hold nothing, `cas` over the copy it holds; a record that changed
    /// meanwhile is read again. `known`: the node's state as last read (`None`: assumed
    /// empty, the common case off the copies' nodes, and checked by the `add`).
    pub(super) async fn put_tombstone(
        &self,
        node: &str,
        key: &SessionKey,
        tombstone: &[u8],
        expiry: Expiry,
        known: Option<CopyState>,
    ) -> Result<Put, crate::Error> {
        let client = self.node(node)?;
        let data_key = self.data_key(key);
        // A tombstone known to be there is read again for its successor.
        let mut state = match known {
            Some(CopyState::Present { version, .. }) if version == TOMBSTONE_VERSION => None,
            Some(s) => Some(s),
            None => Some(CopyState::Missing),
        };
        for _ in 0..COPY_ATTEMPTS {
            let current = match state.take() {
                Some(s) => s,
                None => match client.gets(&data_key).await? {
                    None => CopyState::Missing,
                    Some((item, cas)) => match format::decode(&item.value, key) {
                        Ok(format::Versioned {
                            record: Record::Tombstone { successor },
                            ..
                        }) => return Ok(Put::Kept(successor)),
                        // A session copy (or a record this reader refuses): replaced.
                        _ => CopyState::Present { version: 0, cas },
                    },
                },
            };
            let options = StoreOptions {
                flags: flags_of(TOMBSTONE_VERSION),
                expiry,
                cas: None,
            };
            let stored = client
                .store_over(&data_key, tombstone, options, current.token())
                .await?;
            if stored == StoreOutcome::Stored {
                return Ok(Put::Stored);
            }
        }
        Err(crate::Error::Server(
            "session record kept changing under a tombstone write".into(),
        ))
    }

    /// Read repair of an invalidation: a read found the tombstone as the latest copy and
    /// some node it read holds an older copy or nothing; the tombstone is set there too,
    /// so the tombstone does not thin out as nodes are replaced.
    pub(super) async fn spread_tombstone(
        &self,
        key: &SessionKey,
        answered: &[&str],
        known: &KnownCopies,
        successor: Option<&SessionKey>,
    ) {
        let behind: Vec<&str> = answered
            .iter()
            .copied()
            .filter(|n| !known.holds(n, TOMBSTONE_VERSION))
            .collect();
        if behind.is_empty() {
            return;
        }
        // The tombstone found, successor included (a retirement stays one).
        let tombstone = match successor {
            Some(next) => format::encode_retirement(key, 0, next),
            None => format::encode_tombstone(key, TOMBSTONE_VERSION, 0),
        };
        let options = StoreOptions {
            flags: flags_of(TOMBSTONE_VERSION),
            expiry: ttl(self.repair_ttl),
            cas: None,
        };
        let writes = behind.iter().map(|n| {
            let tombstone = &tombstone;
            async move {
                let client = self.node(n)?;
                client
                    .store(StoreMode::Add, self.data_key(key), tombstone, options)
                    .await
            }
        });
        for result in futures::future::join_all(writes).await {
            if let Err(e) = result {
                tracing::debug!(error = %e, "tombstone read repair failed on a node");
            }
        }
        // Nodes holding an older session copy: overwrite it under its CAS token.
        for n in behind {
            if let Some(CopyState::Present { version, cas }) = known.get(n) {
                if version < TOMBSTONE_VERSION {
                    if let Ok(client) = self.node(n) {
                        let _ = client
                            .store_cas(self.data_key(key), &tombstone, options, cas)
                            .await;
                    }
                }
            }
        }
    }

    /// Removes the copies a relocation left behind: on each node of `known` outside
    /// `copies` that holds a version up to `version`, the copy is made to expire at once
    /// under the CAS token it was read with (so a copy written meanwhile is left alone).
    /// Best effort: a copy left behind holds an older version and expires with its TTL,
    /// but removing it keeps it from outliving a later invalidation's tombstones.
    pub(crate) async fn remove_stale(
        &self,
        key: &SessionKey,
        copies: &Copies,
        version: u64,
        known: &KnownCopies,
    ) {
        let stale: Vec<(&str, Cas)> = known
            .states
            .iter()
            .filter(|(n, _)| !copies.nodes().any(|c| c == n.as_str()))
            .filter_map(|(n, s)| match s {
                CopyState::Present { version: v, cas } if *v <= version => Some((n.as_str(), *cas)),
                _ => None,
            })
            .collect();
        let removals = stale.into_iter().map(|(node, cas)| async move {
            let client = self.node(node)?;
            let options = StoreOptions {
                flags: 0,
                expiry: Expiry::In(Duration::ZERO),
                cas: None,
            };
            client
                .store_cas(self.data_key(key), b"", options, cas)
                .await
        });
        for result in futures::future::join_all(removals).await {
            if let Err(e) = result {
                tracing::debug!(error = %e, "stale session copy not removed; it expires with its TTL");
            }
        }
    }
}
