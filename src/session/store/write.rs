//! Conditional writes: copies only move forward, primary first, relocation away from
//! failing nodes, roll forward of a refused write, removal of copies left behind,
//! validity refreshes (see the module's rules).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::{Expiry, StoreOptions, StoreOutcome};

use super::*;

impl Store {
    /// Stores `record` (version `new_version`, based on `base`) on one node if the node
    /// holds nothing or a copy of version `<= base`.
    #[allow(clippy::too_many_arguments)]
    async fn write_copy(
        &self,
        node: &str,
        key: &SessionKey,
        record: &[u8],
        base: u64,
        new_version: u64,
        expiry: Expiry,
        known: &mut KnownCopies,
    ) -> Result<CopyWrite, crate::Error> {
        let client = self.node(node)?;
        let data_key = self.data_key(key);
        for _ in 0..COPY_ATTEMPTS {
            let state = match known.get(node) {
                Some(s) => s,
                None => match client.gets(&data_key).await? {
                    None => CopyState::Missing,
                    Some((item, cas)) => CopyState::Present {
                        version: format::decode(&item.value, key).map_or(0, |d| d.version),
                        cas,
                    },
                },
            };
            let options = StoreOptions {
                flags: flags_of(new_version),
                expiry,
                cas: None,
            };
            if let CopyState::Present { version, .. } = state {
                if version > base {
                    known.set(node, state);
                    return Ok(CopyWrite::Newer { version });
                }
            }
            let created = state == CopyState::Missing;
            match client
                .store_over(&data_key, record, options, state.token())
                .await?
            {
                StoreOutcome::Stored => {
                    // The new CAS token is unknown: the next write reads it first.
                    known.forget(node);
                    return Ok(CopyWrite::Stored { created });
                }
                StoreOutcome::NotStored | StoreOutcome::Exists | StoreOutcome::NotFound => {
                    known.forget(node);
                }
            }
        }
        Err(crate::Error::Server(
            "session copy kept changing under a conditional write".into(),
        ))
    }

    /// Writes `record` as version `base + 1` to every copy of the placement, primary
    /// first, relocating away from nodes that fail, then removes the copies a relocation
    /// left behind. See the module's rules. Returns where the copies are now.
    ///
    /// `verify_first` (writes that must never be visible when refused: locked requests,
    /// `auto` read-only guesses): every copy of the placement is read again before the
    /// primary is written, so a write made since this request's read - also by an
    /// instance that placed the primary elsewhere - refuses it before anything is stored.
    pub(crate) async fn replicate(
        &self,
        key: &SessionKey,
        record: &mut [u8],
        base: u64,
        max_inactive: Duration,
        known: &mut KnownCopies,
        verify_first: bool,
    ) -> Result<Replicated, SessionError> {
        let new_version = base.saturating_add(1).min(TOMBSTONE_VERSION - 1);
        format::set_version(record, new_version);
        if verify_first {
            if let Some(refused) = self.newer_anywhere(key, base, known).await {
                return Ok(refused);
            }
        }
        self.place_record(
            key,
            record,
            base,
            new_version,
            ttl(max_inactive),
            known,
            false,
        )
        .await
    }

    /// Reads every copy of the current placement again: `Some(Conflict)` or `Some(Gone)`
    /// when one holds a version written after `base`. The fresh states replace what
    /// `known` said (their CAS tokens serve the write that follows).
    pub(super) async fn newer_anywhere(
        &self,
        key: &SessionKey,
        base: u64,
        known: &mut KnownCopies,
    ) -> Option<Replicated> {
        let copies = self.copies(key, &[])?;
        let reads = copies.nodes().map(|n| async move {
            let item = self.node(n).ok()?.gets(self.data_key(key)).await.ok()?;
            Some((n, item))
        });
        let mut refused = None;
        for (node, item) in futures::future::join_all(reads).await.into_iter().flatten() {
            match item {
                None => known.set(node, CopyState::Missing),
                Some((item, cas)) => {
                    let version = format::decode(&item.value, key).map_or(0, |d| d.version);
                    known.set(node, CopyState::Present { version, cas });
                    if version == TOMBSTONE_VERSION {
                        refused = Some(Replicated::Gone);
                    } else if version > base && refused.is_none() {
                        refused = Some(Replicated::Conflict);
                    }
                }
            }
        }
        refused
    }

    /// Makes every copy of the placement hold at least `version` (the session as it was
    /// read), without changing the version: the re-replication of a read-only request
    /// that found a copy missing or behind.
    pub(crate) async fn repair(
        &self,
        key: &SessionKey,
        record: &mut [u8],
        version: u64,
        max_inactive: Duration,
        known: &mut KnownCopies,
    ) -> Result<Replicated, SessionError> {
        format::set_version(record, version);
        self.place_record(
            key,
            record,
            version.saturating_sub(1),
            version,
            ttl(max_inactive),
            known,
            true,
        )
        .await
    }

    /// `repair`: a node already holding `new_version` counts as written (the same
    /// version is the same content when re-replicating what was read).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn place_record(
        &self,
        key: &SessionKey,
        record: &mut [u8],
        base: u64,
        mut new_version: u64,
        expiry: Expiry,
        known: &mut KnownCopies,
        repair: bool,
    ) -> Result<Replicated, SessionError> {
        let mut exclude: Vec<String> = Vec::new();
        let mut written: Vec<String> = Vec::new();
        // Nodes that held nothing of a key that existed before this write: restarted
        // empty, or new to the placement.
        let mut recreated: Vec<String> = Vec::new();
        let new_key = known.is_fresh();
        let mut last_error = None;
        'placement: for _ in 0..PLACEMENT_ATTEMPTS {
            let copies = self
                .copies(key, &exclude)
                .ok_or(SessionError::NoNodeAvailable)?;
            for node in copies.nodes() {
                if written.iter().any(|w| w == node) {
                    continue;
                }
                match self
                    .write_copy(node, key, record, base, new_version, expiry, known)
                    .await
                {
                    Ok(CopyWrite::Stored { created }) => {
                        if created && !new_key {
                            recreated.push(node.to_owned());
                        }
                        written.push(node.to_owned())
                    }
                    Ok(CopyWrite::Newer { version }) if repair && version == new_version => {
                        written.push(node.to_owned())
                    }
                    // This very record already there: a concurrent re-replication (or
                    // the roll forward of a write it refused) copied it from the
                    // primary this write just stored. Counts as written, not as a
                    // conflict with itself.
                    Ok(CopyWrite::Newer { version })
                        if version == new_version
                            && !written.is_empty()
                            && self.holds_record(node, key, record).await =>
                    {
                        written.push(node.to_owned())
                    }
                    Ok(CopyWrite::Newer { version }) => {
                        if !written.is_empty() && version != TOMBSTONE_VERSION {
                            // Another writer got to this copy first (instances disagreeing
                            // about which node is the primary): this write is refused, so
                            // its copies already stored must not stay visible.
                            self.roll_forward(key, node, &written, new_version, expiry)
                                .await;
                        }
                        return Ok(if version == TOMBSTONE_VERSION {
                            Replicated::Gone
                        } else {
                            Replicated::Conflict
                        });
                    }
                    // A node whose item limit is smaller than the primary's (`-I`)
                    // can't hold this copy: the copy goes to another node (or the
                    // session keeps one copy), rather than failing a save whose
                    // primary copy is already stored.
                    Err(e) if !written.is_empty() && is_too_large(&e) => {
                        self.stats.write_failures.fetch_add(1, Relaxed);
                        tracing::warn!(node, error = %e, "session copy too large for this node's item limit; placing the copy on another node");
                        exclude.push(node.to_owned());
                        continue 'placement;
                    }
                    Err(e) if e.is_node_failure() => {
                        self.stats.write_failures.fetch_add(1, Relaxed);
                        tracing::warn!(node, error = %e, "session copy write failed; placing the copy on another node");
                        exclude.push(node.to_owned());
                        last_error = Some(e);
                        // The failed write's outcome is unknown: it may still land (a
                        // stopped node runs what waits in its socket when it resumes).
                        // Nothing of this save is stored yet, so it goes on one version
                        // higher: a late landing of the failed write, or of another
                        // writer's attempt at `base + 1`, is then older.
                        if written.is_empty() && !repair && new_version == base + 1 {
                            new_version += 1;
                            format::set_version(record, new_version);
                        }
                        continue 'placement;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            self.remove_stale(key, &copies, new_version, known).await;
            if !recreated.is_empty() {
                self.restore_retirements_of(key, record, &recreated).await;
            }
            return Ok(Replicated::Written {
                copies,
                version: new_version,
            });
        }
        Err(last_error.map_or(SessionError::NoNodeAvailable, SessionError::Memcached))
    }

    /// True when `node` holds exactly `record` for `key`.
    async fn holds_record(&self, node: &str, key: &SessionKey, record: &[u8]) -> bool {
        matches!(self.read_node(node, key).await, Ok(Some((bytes, _))) if bytes.as_ref() == record)
    }

    /// Undoes the copies a refused write already stored on `written`: each is replaced,
    /// under its CAS token and only while it still holds `ours`, by the newer record
    /// found on `newer_node`. Best effort (a failure leaves two copies of one version
    /// until the next write of the session).
    async fn roll_forward(
        &self,
        key: &SessionKey,
        newer_node: &str,
        written: &[String],
        ours: u64,
        expiry: Expiry,
    ) {
        let newer = match self.node(newer_node) {
            Ok(c) => c.gets(self.data_key(key)).await,
            Err(e) => Err(e),
        };
        let Ok(Some((newer, _))) = newer else { return };
        let Ok(decoded) = format::decode(&newer.value, key) else {
            return;
        };
        for node in written {
            let Ok(client) = self.node(node) else {
                continue;
            };
            let Ok(Some((mine, cas))) = client.gets(self.data_key(key)).await else {
                continue;
            };
            if format::decode(&mine.value, key).map_or(true, |d| d.version != ours) {
                continue;
            }
            let options = StoreOptions {
                flags: flags_of(decoded.version),
                expiry,
                cas: None,
            };
            let _ = client
                .store_cas(self.data_key(key), &newer.value, options, cas)
                .await;
        }
        tracing::warn!(
            node = newer_node,
            "a refused write's copies were replaced by the newer copy found"
        );
    }

    /// Refreshes a session that was only read: on every copy of the placement that
    /// still holds the version the request read, with the CAS token it was read with,
    /// the record is rewritten with the new last access (same version) and a full TTL.
    /// A copy that changed since (a newer write, an interval raised by another request,
    /// a tombstone) is left alone: a stale read-only request never shortens or undoes
    /// anything. Returns how many copies were refreshed.
    pub(crate) async fn refresh(
        &self,
        key: &SessionKey,
        copies: &Copies,
        record: &mut [u8],
        version: u64,
        max_inactive: Duration,
        known: &KnownCopies,
    ) -> usize {
        format::set_version(record, version);
        let record = &*record;
        let options = StoreOptions {
            flags: flags_of(version),
            expiry: ttl(max_inactive),
            cas: None,
        };
        let refreshes = copies.nodes().filter_map(|node| match known.get(node) {
            Some(CopyState::Present { version: v, cas }) if v == version => Some(async move {
                let client = self.node(node)?;
                client
                    .store_cas(self.data_key(key), record, options, cas)
                    .await
            }),
            _ => None,
        });
        let mut refreshed = 0;
        for result in futures::future::join_all(refreshes).await {
            match result {
                Ok(StoreOutcome::Stored) => refreshed += 1,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "refresh of a session copy failed"),
            }
        }
        refreshed
    }
}
