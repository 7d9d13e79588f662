//! Invalidation: tombstones on every usable node, hints for the nodes that missed them
//! (`handoff`), and read repair of a tombstone a read found (see the module's rules).

use std::time::Duration;

use crate::{Expiry, StoreMode, StoreOptions};

use super::*;

impl Store {
    /// Invalidates a session: a tombstone `set` on every node of `nodes` (the nodes the
    /// read found or the id named) and of the current placement; the validity records
    /// are removed. Ok when the placement's nodes (at least one) hold the tombstone.
    pub(crate) async fn invalidate(
        &self,
        key: &SessionKey,
        nodes: &[String],
        invalidated_ms: u64,
        max_inactive: Duration,
    ) -> Result<(), SessionError> {
        let tombstone = format::encode_tombstone(key, TOMBSTONE_VERSION, invalidated_ms);
        let expiry = ttl(max_inactive.saturating_add(TOMBSTONE_MARGIN));
        let mut exclude: Vec<String> = Vec::new();
        let mut done: Vec<String> = Vec::new();
        let options = StoreOptions {
            flags: flags_of(TOMBSTONE_VERSION),
            expiry,
            cas: None,
        };
        let write = |node: String| {
            let tombstone = &tombstone;
            async move {
                let client = self.node(&node)?;
                let (t, _) = futures::join!(
                    client.store(StoreMode::Set, self.data_key(key), tombstone, options),
                    client.delete(self.validity_key(key))
                );
                t.map(|_| node)
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
                    Ok(node) => done.push(node),
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
        let missed: Vec<String> = self
            .client
            .node_ids()
            .into_iter()
            .filter(|n| !done.contains(n))
            .collect();
        if !missed.is_empty() {
            let ttl_secs = max_inactive.saturating_add(TOMBSTONE_MARGIN).as_secs();
            self.record_hints(key, &missed, &done, invalidated_ms, ttl_secs)
                .await;
        }
        outcome.unwrap_or_else(|| {
            Err(last_error.map_or(SessionError::NoNodeAvailable, SessionError::Memcached))
        })
    }

    /// Read repair of an invalidation: a read found the tombstone as the latest copy and
    /// some node it read holds an older copy or nothing; the tombstone is set there too,
    /// so the tombstone does not thin out as nodes are replaced.
    pub(super) async fn spread_tombstone(
        &self,
        key: &SessionKey,
        answered: &[&str],
        known: &KnownCopies,
    ) {
        let behind: Vec<&str> = answered
            .iter()
            .copied()
            .filter(|n| !known.holds(n, TOMBSTONE_VERSION))
            .collect();
        if behind.is_empty() {
            return;
        }
        let tombstone = format::encode_tombstone(key, TOMBSTONE_VERSION, 0);
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
                        let options = StoreOptions {
                            cas: Some(cas),
                            ..options
                        };
                        let _ = client
                            .store(StoreMode::Set, self.data_key(key), &tombstone, options)
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
        let stale: Vec<(&str, u64)> = known
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
                cas: Some(cas),
            };
            client
                .store(StoreMode::Set, self.data_key(key), b"", options)
                .await
        });
        for result in futures::future::join_all(removals).await {
            if let Err(e) = result {
                tracing::debug!(error = %e, "stale session copy not removed; it expires with its TTL");
            }
        }
    }
}
