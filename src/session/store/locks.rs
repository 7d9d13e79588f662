//! The non-sticky lock's items: `add` on the key's lock node, renewal while the holder
//! lives, and a CAS-guarded release (see `super::super::lock` for the waiting policy).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::{Expiry, StoreOptions, StoreOutcome};

use super::{ttl, Store};
use crate::session::id::SessionKey;

/// A lock's memcached TTL: memcached counts expiry in whole seconds of its own clock, so
/// an item set with a TTL of `n` s lives between `n - 1` and `n` s; one second more makes
/// a lock live at least `expiry`.
fn lock_ttl(expiry: Duration) -> Expiry {
    ttl(expiry.saturating_add(Duration::from_secs(1)))
}

impl Store {
    fn lock_key(&self, key: &SessionKey) -> String {
        format!("{}lock:{key}", self.prefix)
    }

    /// The nodes to try for the key's lock, in order.
    pub(crate) fn lock_nodes(&self, key: &SessionKey) -> Vec<String> {
        self.placement.lock_nodes(key, |n| self.usable(n))
    }

    /// `add`s the lock key; true when acquired.
    pub(crate) async fn try_lock(
        &self,
        node: &str,
        key: &SessionKey,
        token: &str,
        expiry: Duration,
    ) -> Result<bool, crate::Error> {
        self.node(node)?
            .add(self.lock_key(key), token, lock_ttl(expiry))
            .await
    }

    /// The renewal loop of a held lock: every third of `expiry`, the lock's TTL is reset,
    /// under its CAS token, while it still holds `token`. Ends when the lock is no
    /// longer this holder's (or the node fails); the caller aborts it on release.
    pub(crate) fn lock_renewal(
        &self,
        node: &str,
        key: &SessionKey,
        token: &str,
        expiry: Duration,
        lost: Arc<std::sync::atomic::AtomicBool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let client = self.per_node.get(node).cloned();
        let lock_key = self.lock_key(key);
        let token = token.to_owned();
        let period = (expiry / 3).max(Duration::from_millis(100));
        async move {
            let Some(client) = client else { return };
            loop {
                tokio::time::sleep(period).await;
                let renewed = async {
                    match client.gets(&lock_key).await? {
                        Some((item, cas)) if item.value.as_ref() == token.as_bytes() => {
                            let options = StoreOptions {
                                flags: 0,
                                expiry: lock_ttl(expiry),
                                cas: None,
                            };
                            let outcome = client.store_cas(&lock_key, &token, options, cas).await?;
                            Ok::<bool, crate::Error>(outcome == StoreOutcome::Stored)
                        }
                        _ => Ok(false),
                    }
                };
                match renewed.await {
                    Ok(true) => {}
                    Ok(false) => {
                        lost.store(true, Relaxed);
                        tracing::warn!(
                            "session lock lost before its request ended; the request's write will be refused if another request wrote meanwhile"
                        );
                        return;
                    }
                    Err(e) => {
                        lost.store(true, Relaxed);
                        tracing::warn!(error = %e, "session lock renewal failed; the lock may expire before its request ends");
                        return;
                    }
                }
            }
        }
    }

    /// True when the lock on `node` still holds `token` (a failed read counts as lost).
    pub(crate) async fn lock_is_held(&self, node: &str, key: &SessionKey, token: &str) -> bool {
        match self.node(node) {
            Ok(c) => matches!(
                c.get(self.lock_key(key)).await,
                Ok(Some(item)) if item.value.as_ref() == token.as_bytes()
            ),
            Err(_) => false,
        }
    }

    /// Removes the lock key only if it still holds `token`, atomically: the lock is read
    /// with its CAS token and overwritten, under that token, by an item that expires at
    /// once (a CAS-guarded delete both protocols can express).
    pub(crate) async fn unlock(&self, node: &str, key: &SessionKey, token: &str) {
        let Ok(client) = self.node(node) else {
            return;
        };
        let lock_key = self.lock_key(key);
        let released = async {
            match client.gets(&lock_key).await? {
                Some((item, cas)) if item.value.as_ref() == token.as_bytes() => {
                    let options = StoreOptions {
                        flags: 0,
                        expiry: Expiry::In(Duration::ZERO),
                        cas: None,
                    };
                    let outcome = client.store_cas(&lock_key, token, options, cas).await?;
                    Ok::<bool, crate::Error>(outcome == StoreOutcome::Stored)
                }
                _ => Ok(false),
            }
        };
        match released.await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                node,
                "session lock had expired or was taken by another request before release; left as it is"
            ),
            Err(e) => {
                tracing::warn!(node, error = %e, "session lock not released; it expires on its own")
            }
        }
    }
}
