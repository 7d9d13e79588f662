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
}
