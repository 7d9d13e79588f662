//! Hinted handoff of tombstones, kept in memcached itself so that it survives the death
//! of the instance that invalidated the session.
//!
//! When a node misses an invalidation's tombstone (down, stopped, failing), every node
//! that got the tombstone appends a hint line for it to the item `<prefix>hints:<node>`:
//! `<32 hex key> <invalidated ms> <ttl s>\n`. Every instance looks for hints addressed to
//! each node that is up (one `gets` per pair of nodes, every [`HANDOFF_PERIOD`]); it sets
//! the tombstones on that node and then removes the hint list under the CAS token it read
//! (a list that grew meanwhile is delivered again next time; delivery is idempotent). So
//! a node that comes back with an old copy of an invalidated session gets the tombstone
//! even when nobody presents the old id again and the invalidating instance is gone.

use std::time::Duration;

use crate::{Expiry, NodeState, StoreMode, StoreOptions, StoreOutcome};

use super::{flags_of, ttl, Store, TOMBSTONE_VERSION};
use crate::session::format;
use crate::session::id::SessionKey;

/// How often an instance looks for hints addressed to the nodes that are up.
pub(crate) const HANDOFF_PERIOD: Duration = Duration::from_secs(1);

/// A hint list's lifetime: longer than any entry it holds needs (entries carry their own
/// deadline; a delivered list is removed at once).
const HINT_LIST_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// One parsed hint line.
#[derive(Debug, PartialEq, Eq)]
struct Hint {
    key: SessionKey,
    invalidated_ms: u64,
    ttl_secs: u64,
}

fn hint_line(key: &SessionKey, invalidated_ms: u64, ttl_secs: u64) -> String {
    format!("{key} {invalidated_ms} {ttl_secs}\n")
}

/// The well-formed lines of a hint list (anything else is skipped).
fn parse_hints(bytes: &[u8]) -> Vec<Hint> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            let key = SessionKey::parse(parts.next()?)?;
            let invalidated_ms = parts.next()?.parse().ok()?;
            let ttl_secs = parts.next()?.parse().ok()?;
            parts.next().is_none().then_some(Hint {
                key,
                invalidated_ms,
                ttl_secs,
            })
        })
        .collect()
}

impl Store {
    fn hints_key(&self, node: &str) -> String {
        format!("{}hints:{node}", self.prefix)
    }

    /// Records, on each node of `holders`, that each node of `missed` lacks the tombstone
    /// of `key`. Best effort: a hint that can't be written leaves the tombstones on the
    /// holders and read repair.
    pub(super) async fn record_hints(
        &self,
        key: &SessionKey,
        missed: &[String],
        holders: &[String],
        invalidated_ms: u64,
        ttl_secs: u64,
    ) {
        let line = hint_line(key, invalidated_ms, ttl_secs);
        let line = line.as_str();
        let pairs: Vec<(&String, &String)> = missed
            .iter()
            .flat_map(|m| holders.iter().filter(move |h| *h != m).map(move |h| (m, h)))
            .collect();
        let writes = pairs.into_iter().map(|(m, h)| async move {
            (m, h, self.append_hint(h, &self.hints_key(m), line).await)
        });
        for (missed, holder, result) in futures::future::join_all(writes).await {
            if let Err(e) = result {
                tracing::warn!(node = %missed, holder = %holder, error = %e, "tombstone hint not recorded");
            }
        }
    }

    async fn append_hint(&self, holder: &str, list: &str, line: &str) -> Result<(), crate::Error> {
        let client = self.node(holder)?;
        for _ in 0..3 {
            if client.append(list, line).await? {
                return Ok(());
            }
            let options = StoreOptions {
                flags: 0,
                expiry: Expiry::In(HINT_LIST_TTL),
                cas: None,
            };
            if client.store(StoreMode::Add, list, line, options).await? == StoreOutcome::Stored {
                return Ok(());
            }
        }
        Err(crate::Error::Server(
            "tombstone hint list kept changing".into(),
        ))
    }

    /// Delivers the hints addressed to every node that is up; `now_ms` is the current
    /// time (entries past their deadline are dropped). Returns the tombstones set.
    pub(crate) async fn deliver_hints(&self, now_ms: u64) -> usize {
        let nodes = self.client.node_ids();
        let mut delivered = 0;
        for target in &nodes {
            if self.client.node_state(target) != Some(NodeState::Up) {
                continue;
            }
            for holder in nodes.iter().filter(|h| *h != target && self.usable(h)) {
                delivered += self.deliver_from(target, holder, now_ms).await;
            }
        }
        delivered
    }

    async fn deliver_from(&self, target: &str, holder: &str, now_ms: u64) -> usize {
        let list = self.hints_key(target);
        let (Ok(holder_client), Ok(target_client)) = (self.node(holder), self.node(target)) else {
            return 0;
        };
        let Ok(Some(item)) = holder_client.gets(&list).await else {
            return 0;
        };
        let mut delivered = 0;
        for hint in parse_hints(&item.value) {
            let deadline = hint
                .invalidated_ms
                .saturating_add(hint.ttl_secs.saturating_mul(1000));
            if deadline <= now_ms {
                continue;
            }
            let tombstone =
                format::encode_tombstone(&hint.key, TOMBSTONE_VERSION, hint.invalidated_ms);
            let options = StoreOptions {
                flags: flags_of(TOMBSTONE_VERSION),
                expiry: ttl(Duration::from_millis(deadline - now_ms)),
                cas: None,
            };
            match target_client
                .store(
                    StoreMode::Set,
                    self.data_key(&hint.key),
                    &tombstone,
                    options,
                )
                .await
            {
                Ok(_) => delivered += 1,
                // The target failed again: keep the list for the next round.
                Err(e) => {
                    tracing::debug!(node = target, error = %e, "tombstone hint not delivered yet");
                    return delivered;
                }
            }
        }
        let remove = StoreOptions {
            flags: 0,
            expiry: Expiry::In(Duration::ZERO),
            cas: item.cas,
        };
        let _ = holder_client
            .store(StoreMode::Set, &list, b"", remove)
            .await;
        if delivered > 0 {
            tracing::info!(
                node = target,
                delivered,
                "tombstones a node missed were handed off to it"
            );
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_lines_round_trip_and_garbage_is_skipped() {
        let k = SessionKey::from_bytes([9; 16]);
        let mut list = hint_line(&k, 1_000, 1_800).into_bytes();
        list.extend_from_slice(b"not a hint\n\xff\xfe\n");
        list.extend_from_slice(hint_line(&k, 2_000, 60).as_bytes());
        list.extend_from_slice(b"0909 1 2 3\n");
        assert_eq!(
            parse_hints(&list),
            vec![
                Hint {
                    key: k,
                    invalidated_ms: 1_000,
                    ttl_secs: 1_800
                },
                Hint {
                    key: k,
                    invalidated_ms: 2_000,
                    ttl_secs: 60
                },
            ]
        );
    }
}
