//! Retirement of a session key whose data moved to a new key (id rotation): a tombstone
//! written like a session write (primary first, each copy only if it holds no version
//! newer than the one the rotation copied), so a write of the old key is either copied
//! to the new key or refused, never acknowledged and then lost.

use super::*;

impl Store {
    /// Puts a tombstone naming `successor` (the key the session moved to) on every copy
    /// of the placement of `key`, as a write based on
    /// version `base`: `Conflict` when a copy holds a newer version (another request
    /// wrote the old key since it was copied: copy again, then retry), `Gone` when it
    /// was invalidated meanwhile. The tombstone is then spread to every other node by
    /// [`Store::invalidate`], which the caller runs afterwards.
    pub(crate) async fn retire(
        &self,
        key: &SessionKey,
        successor: &SessionKey,
        base: u64,
        invalidated_ms: u64,
        max_inactive: Duration,
        known: &mut KnownCopies,
    ) -> Result<Replicated, SessionError> {
        if let Some(refused) = self.newer_anywhere(key, base, known).await {
            return Ok(refused);
        }
        let mut tombstone = format::encode_retirement(key, invalidated_ms, successor);
        self.place_record(
            key,
            &mut tombstone,
            base,
            TOMBSTONE_VERSION,
            ttl(max_inactive.saturating_add(TOMBSTONE_MARGIN)),
            known,
            false,
        )
        .await
    }

    /// Puts back, on each node of `nodes` (where a copy of the rotated session `record`
    /// of `key` was just re-created), the retirements of the keys it was rotated from,
    /// so the trail from an old id to this one is everywhere the session is. Decodes the
    /// record; nothing to do for a session never rotated.
    pub(super) async fn restore_retirements_of(
        &self,
        key: &SessionKey,
        record: &[u8],
        nodes: &[String],
    ) {
        let Ok(format::Versioned {
            record: Record::Session(stored),
            ..
        }) = format::decode(record, key)
        else {
            return;
        };
        let retirements = crate::session::lifecycle::retirements_of(&stored);
        if !retirements.is_empty() {
            self.restore_retirements(&retirements, nodes).await;
        }
    }

    /// Puts back, on each node of `nodes`, the retirement tombstone of each `(old, new)`
    /// pair (the key `old` was retired by a rotation to `new`), with `add`: a node that
    /// holds anything under `old` keeps it. Best effort (what fails stays on the nodes
    /// that kept it); returns how many were stored. Their TTL is the repair TTL (the
    /// configured interval plus the margin), their time 0, as read repair's.
    pub(crate) async fn restore_retirements(
        &self,
        retirements: &[(SessionKey, SessionKey)],
        nodes: &[String],
    ) -> usize {
        let options = crate::StoreOptions {
            flags: flags_of(TOMBSTONE_VERSION),
            expiry: ttl(self.repair_ttl),
            cas: None,
        };
        let records: Vec<(String, Vec<u8>)> = retirements
            .iter()
            .map(|(old, new)| (self.data_key(old), format::encode_retirement(old, 0, new)))
            .collect();
        let writes = records.iter().flat_map(|(data_key, record)| {
            nodes.iter().map(move |node| async move {
                let client = self.node(node)?;
                client
                    .store(crate::StoreMode::Add, data_key, record, options)
                    .await
            })
        });
        let restored = futures::future::join_all(writes)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(crate::StoreOutcome::Stored)))
            .count();
        if restored > 0 {
            tracing::info!(
                restored,
                "retirements of a rotated session's former keys put back on nodes that had lost them"
            );
        }
        restored
    }
}
