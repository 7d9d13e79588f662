//! Reads: every node that may hold a copy, the latest copy wins (see the module's rules).

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;

use super::*;

impl Store {
    /// Reads one node's record, with its CAS token.
    pub(super) async fn read_node(
        &self,
        node: &str,
        key: &SessionKey,
    ) -> Result<Option<(Bytes, Cas)>, crate::Error> {
        let item = self.node(node)?.gets(self.data_key(key)).await?;
        Ok(item.map(|(i, cas)| (i.value, cas)))
    }

    /// The newest validity record among `nodes` (only read when the record's own
    /// validity says the session expired: a session that was only read for longer than
    /// its interval lives on in its validity records). A failed read only costs
    /// precision.
    async fn newest_validity(&self, key: &SessionKey, nodes: &[&str]) -> Option<Validity> {
        let reads = nodes.iter().map(|n| async move {
            let client = self.node(n).ok()?;
            let item = client.get(self.validity_key(key)).await.ok()??;
            Validity::decode(&item.value).ok()
        });
        futures::future::join_all(reads)
            .await
            .into_iter()
            .flatten()
            .max_by_key(|v| v.last_access_ms)
    }

    /// Reads a session: every node the id names (`hints`) and the nodes of the key's
    /// order until two of them answered with a copy; the latest copy wins. `Err` when no node answered,
    /// or when nothing was found while every node the id names failed: a session that
    /// can't be read is not reported absent.
    pub(crate) async fn fetch(
        &self,
        key: &SessionKey,
        hints: &[&str],
        now_ms: u64,
    ) -> Result<Fetched, SessionError> {
        let targets = self.placement.read_targets(key, hints);
        let mut read: Vec<&str> = Vec::new();
        let mut answered: Vec<&str> = Vec::new();
        let mut failed: Vec<(&str, crate::Error)> = Vec::new();
        let mut found: Vec<(&str, Bytes, Cas)> = Vec::new();
        let mut known = KnownCopies::default();
        let mut batch: Vec<&str> = targets.first.clone();
        while !batch.is_empty() {
            read.extend(batch.iter().copied());
            let results =
                futures::future::join_all(batch.iter().map(|n| self.read_node(n, key))).await;
            for (node, result) in batch.iter().copied().zip(results) {
                match result {
                    Ok(Some((bytes, cas))) => {
                        answered.push(node);
                        found.push((node, bytes, cas));
                    }
                    Ok(None) => {
                        answered.push(node);
                        known.set(node, CopyState::Missing);
                    }
                    Err(e) if e.is_node_failure() => {
                        tracing::warn!(node, error = %e, "session node failed during a read; reading the next node");
                        failed.push((node, e));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let holding: Vec<&str> = found.iter().map(|(n, ..)| *n).collect();
            batch = targets.next(&read, &holding).into_iter().collect();
        }
        let mut latest: Option<(u64, Latest)> = None;
        for (node, bytes, cas) in &found {
            let Some(decoded) = self.decode(node, key, bytes) else {
                // A refused record is treated as absent and replaced by the next write.
                known.set(
                    node,
                    CopyState::Present {
                        version: 0,
                        cas: *cas,
                    },
                );
                continue;
            };
            known.set(
                node,
                CopyState::Present {
                    version: decoded.version,
                    cas: *cas,
                },
            );
            // Ties: a retirement (it names where the session went) over a plain tombstone.
            let names_successor =
                matches!(decoded.record, Record::Tombstone { successor: Some(_) });
            let supersedes = |(v, l): &(u64, Latest)| {
                *v < decoded.version
                    || (*v == decoded.version
                        && names_successor
                        && matches!(l, Latest::Tombstone { successor: None }))
            };
            if latest.as_ref().is_some_and(|l| !supersedes(l)) {
                continue;
            }
            let entry = match decoded.record {
                Record::Tombstone { successor } => Latest::Tombstone { successor },
                Record::Session(stored) => Latest::Session {
                    version: decoded.version,
                    validity: stored.validity,
                    stored,
                },
            };
            latest = Some((decoded.version, entry));
        }
        let mut latest = latest.map(|(_, l)| l);
        if let Some(Latest::Session { validity, .. }) = &mut latest {
            if validity.is_expired_at(now_ms) {
                if let Some(v) = self.newest_validity(key, &answered).await {
                    if v.last_access_ms > validity.last_access_ms {
                        *validity = v;
                    }
                }
            }
        }
        if let Some(Latest::Tombstone { successor }) = &latest {
            self.spread_tombstone(key, &answered, &known, successor.as_ref())
                .await;
        }
        if latest.is_none() {
            // Every node the id names failed: its copies may be there. (One of them
            // answering "missing" means the session is gone: a copy is lost only when
            // its node fails, and the guarantee covers one node fault at a time.)
            let hints_failed = hints.iter().any(|h| self.placement.knows(h))
                && hints
                    .iter()
                    .filter(|h| self.placement.knows(h))
                    .all(|h| failed.iter().any(|(n, _)| n == h));
            if answered.is_empty() || hints_failed {
                self.stats.load_failures.fetch_add(1, Relaxed);
                let (node, error) = failed
                    .into_iter()
                    .next()
                    .map(|(n, e)| (n.to_owned(), e))
                    .unwrap_or_else(|| (String::new(), crate::Error::NoNodeAvailable));
                tracing::error!(node, error = %error, "session could not be read: no node that may hold it answered");
                return Err(SessionError::Memcached(error));
            }
        }
        Ok(Fetched { latest, known })
    }

    fn decode(&self, node: &str, key: &SessionKey, bytes: &[u8]) -> Option<format::Versioned> {
        let started = std::time::Instant::now();
        match format::decode(bytes, key) {
            Ok(r) => {
                self.stats
                    .deserialization_us
                    .record_duration(started.elapsed());
                Some(r)
            }
            Err(e) => {
                self.stats.foreign_records.fetch_add(1, Relaxed);
                tracing::warn!(node, error = %e, "session record refused (garbage, foreign or unsupported format); treated as absent");
                None
            }
        }
    }

    // ----- writes ------------------------------------------------------------------
}
