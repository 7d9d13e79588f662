//! Hinted handoff of tombstones, kept in memcached itself so that it survives the death
//! of the instance that invalidated the session.
//!
//! When a node misses an invalidation's tombstone (down, stopped, failing), every node
//! that got the tombstone appends a hint line for it to the item `<prefix>hints:<node>`:
//! `<32 hex key> <invalidated ms> <ttl s>\n`; when that item is full (memcached's item
//! size limit, about 20,000 hints), to `<prefix>hints:<node>:1`, then `:2`, ... up to
//! [`HINT_SEGMENTS`] segments. Every instance looks for hints addressed to each node that
//! is up (one multi-key `get` of the segments per pair of nodes, every
//! [`HANDOFF_PERIOD`]); it sets the tombstones on that node and then removes each segment
//! under the CAS token it read (a segment that grew meanwhile is delivered again next
//! time; delivery is idempotent). So
//! a node that comes back with an old copy of an invalidated session gets the tombstone
//! even when nobody presents the old id again and the invalidating instance is gone.
//!
//! A retirement (the tombstone of a key an id rotation retired, naming the key the
//! session moved to) is recorded as `R <32 hex key> <invalidated ms> <ttl s> <32 hex
//! successor>\n` followed by the plain line, which readers that predate `R` lines
//! deliver alone.
//!
//! The same lists carry the principal generations a node missed (a log-out-everywhere
//! while it was away): `P <32 hex principal key> <generation>\n`, delivered by raising
//! the node's generation record (only ever forward). Readers that predate these lines
//! skip them.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::{Expiry, StoreMode, StoreOptions, StoreOutcome};

use super::{ttl, Store, TOMBSTONE_VERSION};
use crate::session::format;
use crate::session::id::SessionKey;

/// How often an instance looks for hints addressed to the nodes that are up.
pub(crate) const HANDOFF_PERIOD: Duration = Duration::from_secs(1);

/// Segments of one node's hint list: past `HINT_SEGMENTS` x ~20,000 hints pending for one
/// node, a hint is not recorded (counted in `hint_failures`, logged as an error).
pub(crate) const HINT_SEGMENTS: usize = 16;

/// A hint list's lifetime: longer than any entry it holds needs (entries carry their own
/// deadline; a delivered list is removed at once).
const HINT_LIST_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// One parsed hint line.
#[derive(Debug, PartialEq, Eq)]
enum Hint {
    /// The tombstone of `key`, set at `invalidated_ms`, to keep `ttl_secs`; a
    /// retirement when it names a `successor`.
    Tombstone {
        key: SessionKey,
        invalidated_ms: u64,
        ttl_secs: u64,
        successor: Option<SessionKey>,
    },
    /// The principal whose record key is `key` is at `generation` at least.
    Principal { key: SessionKey, generation: u64 },
}

fn hint_line(
    key: &SessionKey,
    invalidated_ms: u64,
    ttl_secs: u64,
    successor: Option<&SessionKey>,
) -> String {
    let plain = format!("{key} {invalidated_ms} {ttl_secs}\n");
    match successor {
        Some(next) => format!("R {key} {invalidated_ms} {ttl_secs} {next}\n{plain}"),
        None => plain,
    }
}

fn principal_hint_line(key: &SessionKey, generation: u64) -> String {
    format!("P {key} {generation}\n")
}

/// A tombstone line's key (`key`, already split off) and the invalidation time and TTL
/// that follow it.
fn tombstone_fields<'a>(
    key: &str,
    parts: &mut impl Iterator<Item = &'a str>,
) -> Option<(SessionKey, u64, u64)> {
    let key = SessionKey::parse(key)?;
    let invalidated_ms = parts.next()?.parse().ok()?;
    let ttl_secs = parts.next()?.parse().ok()?;
    Some((key, invalidated_ms, ttl_secs))
}

/// The well-formed lines of a hint list (anything else is skipped).
fn parse_hints(bytes: &[u8]) -> Vec<Hint> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            let first = parts.next()?;
            let hint = match first {
                "P" => {
                    let key = SessionKey::parse(parts.next()?)?;
                    let generation = parts.next()?.parse().ok()?;
                    Hint::Principal { key, generation }
                }
                "R" => {
                    let (key, invalidated_ms, ttl_secs) =
                        tombstone_fields(parts.next()?, &mut parts)?;
                    let successor = Some(SessionKey::parse(parts.next()?)?);
                    Hint::Tombstone {
                        key,
                        invalidated_ms,
                        ttl_secs,
                        successor,
                    }
                }
                _ => {
                    let (key, invalidated_ms, ttl_secs) = tombstone_fields(first, &mut parts)?;
                    Hint::Tombstone {
                        key,
                        invalidated_ms,
                        ttl_secs,
                        successor: None,
                    }
                }
            };
            parts.next().is_none().then_some(hint)
        })
        .collect()
}

impl Store {
    /// The key of segment `n` of the hint list of `node`.
    fn hints_key(&self, node: &str, n: usize) -> String {
        if n == 0 {
            format!("{}hints:{node}", self.prefix)
        } else {
            format!("{}hints:{node}:{n}", self.prefix)
        }
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
        successor: Option<&SessionKey>,
    ) {
        let line = hint_line(key, invalidated_ms, ttl_secs, successor);
        self.record_hint_line(&line, missed, holders).await;
    }

    /// Records, on each node of `holders`, that each node of `missed` lacks generation
    /// `generation` of the principal whose record key is `key`.
    pub(super) async fn record_principal_hints(
        &self,
        key: &SessionKey,
        generation: u64,
        missed: &[String],
        holders: &[String],
    ) {
        let line = principal_hint_line(key, generation);
        self.record_hint_line(&line, missed, holders).await;
    }

    async fn record_hint_line(&self, line: &str, missed: &[String], holders: &[String]) {
        let pairs: Vec<(&String, &String)> = missed
            .iter()
            .flat_map(|m| holders.iter().filter(move |h| *h != m).map(move |h| (m, h)))
            .collect();
        let writes = pairs
            .into_iter()
            .map(|(m, h)| async move { (m, h, self.append_hint(h, m, line).await) });
        for (missed, holder, result) in futures::future::join_all(writes).await {
            if let Err(e) = result {
                self.stats.hint_failures.fetch_add(1, Relaxed);
                tracing::error!(node = %missed, holder = %holder, error = %e, "hint not recorded: if this node comes back with old data, only the other nodes' tombstones or principal generations correct it");
            }
        }
    }

    /// Appends `line` to the first segment of `missed`'s hint list on `holder` that
    /// takes it.
    async fn append_hint(
        &self,
        holder: &str,
        missed: &str,
        line: &str,
    ) -> Result<(), crate::Error> {
        let client = self.node(holder)?;
        let mut last_error = None;
        for segment in 0..HINT_SEGMENTS {
            let list = self.hints_key(missed, segment);
            match append_to(client, &list, line).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) if e.is_node_failure() => return Err(e),
                // Full (memcached's item size limit) or refused: the next segment.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| crate::Error::Server("every tombstone hint segment is full".into())))
    }

    /// Delivers the hints addressed to every node that is up; `now_ms` is the current
    /// time (entries past their deadline are dropped). Returns the tombstones set.
    pub(crate) async fn deliver_hints(&self, now_ms: u64) -> usize {
        let nodes = self.client.node_ids();
        let mut delivered = 0;
        for target in &nodes {
            if !self.is_up(target) {
                continue;
            }
            for holder in nodes.iter().filter(|h| *h != target && self.usable(h)) {
                delivered += self.deliver_from(target, holder, now_ms).await;
            }
        }
        self.stats
            .hints_delivered
            .fetch_add(delivered as u64, Relaxed);
        delivered
    }

    async fn deliver_from(&self, target: &str, holder: &str, now_ms: u64) -> usize {
        let Ok(holder_client) = self.node(holder) else {
            return 0;
        };
        let segments: Vec<String> = (0..HINT_SEGMENTS)
            .map(|n| self.hints_key(target, n))
            .collect();
        // One round trip finds the segments that exist (usually none).
        let Ok(present) = holder_client.get_many(segments.iter()).await else {
            return 0;
        };
        let mut delivered = 0;
        for list in segments
            .iter()
            .filter(|k| present.contains_key(k.as_bytes()))
        {
            delivered += self.deliver_segment(target, holder, list, now_ms).await;
        }
        delivered
    }

    async fn deliver_segment(&self, target: &str, holder: &str, list: &str, now_ms: u64) -> usize {
        let (Ok(holder_client), Ok(_)) = (self.node(holder), self.node(target)) else {
            return 0;
        };
        let Ok(Some((item, cas))) = holder_client.gets(list).await else {
            return 0;
        };
        let mut delivered = 0;
        for hint in parse_hints(&item.value) {
            let result = match hint {
                Hint::Tombstone {
                    key,
                    invalidated_ms,
                    ttl_secs,
                    successor,
                } => {
                    let deadline = invalidated_ms.saturating_add(ttl_secs.saturating_mul(1000));
                    if deadline <= now_ms {
                        continue;
                    }
                    let tombstone = match successor {
                        Some(next) => format::encode_retirement(&key, invalidated_ms, &next),
                        None => format::encode_tombstone(&key, TOMBSTONE_VERSION, invalidated_ms),
                    };
                    let expiry = ttl(Duration::from_millis(deadline - now_ms));
                    // Conditional like every tombstone write: a retirement already
                    // there stays.
                    self.put_tombstone(target, &key, &tombstone, expiry, None)
                        .await
                        .map(|_| true)
                }
                Hint::Principal { key, generation } => {
                    let item = self.principal_item(&key);
                    self.raise_principal(target, &item, generation, None).await
                }
            };
            match result {
                Ok(true) => delivered += 1,
                // The target failed again, or its record kept changing: keep the list
                // for the next round.
                Ok(false) => return delivered,
                Err(e) => {
                    tracing::debug!(node = target, error = %e, "hint not delivered yet");
                    return delivered;
                }
            }
        }
        let remove = StoreOptions {
            flags: 0,
            expiry: Expiry::In(Duration::ZERO),
            cas: None,
        };
        let _ = holder_client.store_cas(list, b"", remove, cas).await;
        if delivered > 0 {
            tracing::info!(
                node = target,
                delivered,
                "tombstones and principal generations a node missed were handed off to it"
            );
        }
        delivered
    }
}

/// `append`, or `add` when the segment does not exist; false when it kept changing.
async fn append_to(client: &super::Node, list: &str, line: &str) -> Result<bool, crate::Error> {
    for _ in 0..3 {
        if client.append(list, line).await? {
            return Ok(true);
        }
        let options = StoreOptions {
            flags: 0,
            expiry: Expiry::In(HINT_LIST_TTL),
            cas: None,
        };
        if client.store(StoreMode::Add, list, line, options).await? == StoreOutcome::Stored {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_lines_round_trip_and_garbage_is_skipped() {
        let k = SessionKey::from_bytes([9; 16]);
        let next = SessionKey::from_bytes([3; 16]);
        let mut list = hint_line(&k, 1_000, 1_800, None).into_bytes();
        list.extend_from_slice(b"not a hint\n\xff\xfe\n");
        list.extend_from_slice(principal_hint_line(&k, 3).as_bytes());
        list.extend_from_slice(hint_line(&k, 2_000, 60, Some(&next)).as_bytes());
        list.extend_from_slice(b"0909 1 2 3\nP 0909 1\nP \n");
        list.extend_from_slice(format!("P {k} 4 5\n").as_bytes());
        assert_eq!(
            parse_hints(&list),
            vec![
                Hint::Tombstone {
                    key: k,
                    invalidated_ms: 1_000,
                    ttl_secs: 1_800,
                    successor: None
                },
                Hint::Principal {
                    key: k,
                    generation: 3
                },
                // A retirement: its R line, then the plain line older readers use.
                Hint::Tombstone {
                    key: k,
                    invalidated_ms: 2_000,
                    ttl_secs: 60,
                    successor: Some(next)
                },
                Hint::Tombstone {
                    key: k,
                    invalidated_ms: 2_000,
                    ttl_secs: 60,
                    successor: None
                },
            ]
        );
    }
}
