//! Statistics, in the spirit of MSM's JMX counters: plain atomics, read with
//! [`SessionStats::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A distribution: count, sum, min and max of a quantity (microseconds or bytes).
#[derive(Debug)]
pub(crate) struct Distribution {
    count: AtomicU64,
    sum: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
    /// Feature `metrics`: the histogram every sample also goes to, and the factor from
    /// the sample's unit to the histogram's (microseconds to seconds).
    #[cfg(feature = "metrics")]
    histogram: Option<(metrics::Histogram, f64)>,
}

impl Default for Distribution {
    fn default() -> Self {
        Distribution {
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            histogram: None,
        }
    }
}

/// From microseconds to seconds, for [`Distribution::exported`].
const MICROS: f64 = 1e-6;

impl Distribution {
    /// A distribution also exported as the histogram `name` (feature `metrics`; without
    /// it, a plain distribution), each sample multiplied by `scale`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn exported(name: &'static str, scale: f64) -> Self {
        Distribution {
            #[cfg(feature = "metrics")]
            histogram: Some((metrics::histogram!(name), scale)),
            ..Distribution::default()
        }
    }

    pub(crate) fn record(&self, value: u64) {
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
        self.min.fetch_min(value, Relaxed);
        self.max.fetch_max(value, Relaxed);
        #[cfg(feature = "metrics")]
        if let Some((h, scale)) = &self.histogram {
            h.record(value as f64 * scale);
        }
    }

    pub(crate) fn record_duration(&self, d: Duration) {
        self.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    fn snapshot(&self) -> DistributionSnapshot {
        let count = self.count.load(Relaxed);
        DistributionSnapshot {
            count,
            sum: self.sum.load(Relaxed),
            min: if count == 0 {
                0
            } else {
                self.min.load(Relaxed)
            },
            max: self.max.load(Relaxed),
        }
    }
}

/// A distribution of a quantity: count, sum, min and max.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DistributionSnapshot {
    /// Number of samples.
    pub count: u64,
    /// Sum of the samples.
    pub sum: u64,
    /// Smallest sample (0 when none).
    pub min: u64,
    /// Largest sample.
    pub max: u64,
}

impl DistributionSnapshot {
    /// Mean of the samples (0 when none).
    pub fn mean(&self) -> u64 {
        self.sum.checked_div(self.count).unwrap_or(0)
    }
}

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// The live counters of a service (see [`SessionStats::snapshot`]).
        #[derive(Debug)]
        pub struct SessionStats {
            $( pub(crate) $name: AtomicU64, )*
            pub(crate) load_us: Distribution,
            pub(crate) serialization_us: Distribution,
            pub(crate) deserialization_us: Distribution,
            pub(crate) session_size_bytes: Distribution,
            pub(crate) write_us: Distribution,
            pub(crate) lock_wait_us: Distribution,
            pub(crate) async_lag_us: Distribution,
        }

        impl Default for SessionStats {
            fn default() -> Self {
                use crate::session::stats::names::*;
                SessionStats {
                    $( $name: AtomicU64::new(0), )*
                    load_us: Distribution::exported(LOAD_DURATION, MICROS),
                    serialization_us: Distribution::exported(SERIALIZATION_DURATION, MICROS),
                    deserialization_us: Distribution::exported(DESERIALIZATION_DURATION, MICROS),
                    session_size_bytes: Distribution::exported(SESSION_SIZE, 1.0),
                    write_us: Distribution::exported(SAVE_DURATION, MICROS),
                    lock_wait_us: Distribution::exported(LOCK_WAIT_DURATION, MICROS),
                    async_lag_us: Distribution::exported(ASYNC_LAG, MICROS),
                }
            }
        }

        /// A point-in-time copy of the counters.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct StatsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
            /// Time to read a session from memcached (every copy that can matter),
            /// microseconds.
            pub load_us: DistributionSnapshot,
            /// Time to encode a session for a write, microseconds.
            pub serialization_us: DistributionSnapshot,
            /// Time to decode a session loaded from memcached, microseconds.
            pub deserialization_us: DistributionSnapshot,
            /// Size of the encoded sessions written, bytes.
            pub session_size_bytes: DistributionSnapshot,
            /// Time of a write (primary and backup) to memcached, microseconds.
            pub write_us: DistributionSnapshot,
            /// Time spent waiting for session locks, microseconds.
            pub lock_wait_us: DistributionSnapshot,
            /// Async mode: time from queueing a write to memcached's acknowledgement,
            /// microseconds (the measured loss window).
            pub async_lag_us: DistributionSnapshot,
        }

        impl SessionStats {
            /// Copies the counters.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $( $name: self.$name.load(Relaxed), )*
                    load_us: self.load_us.snapshot(),
                    serialization_us: self.serialization_us.snapshot(),
                    deserialization_us: self.deserialization_us.snapshot(),
                    session_size_bytes: self.session_size_bytes.snapshot(),
                    write_us: self.write_us.snapshot(),
                    lock_wait_us: self.lock_wait_us.snapshot(),
                    async_lag_us: self.async_lag_us.snapshot(),
                }
            }
        }

        impl StatsSnapshot {
            /// Every counter with its name (the field's name), in declaration order.
            pub fn counters(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name), )* ]
            }
        }
    };
}

/// The names of the histograms the distributions are exported as (feature `metrics`).
pub(crate) mod names {
    /// [`super::StatsSnapshot::load_us`].
    pub(crate) const LOAD_DURATION: &str = "memkeep_session_load_duration_seconds";
    /// [`super::StatsSnapshot::write_us`].
    pub(crate) const SAVE_DURATION: &str = "memkeep_session_save_duration_seconds";
    /// [`super::StatsSnapshot::serialization_us`].
    pub(crate) const SERIALIZATION_DURATION: &str =
        "memkeep_session_serialization_duration_seconds";
    /// [`super::StatsSnapshot::deserialization_us`].
    pub(crate) const DESERIALIZATION_DURATION: &str =
        "memkeep_session_deserialization_duration_seconds";
    /// [`super::StatsSnapshot::session_size_bytes`].
    pub(crate) const SESSION_SIZE: &str = "memkeep_session_size_bytes";
    /// [`super::StatsSnapshot::lock_wait_us`].
    pub(crate) const LOCK_WAIT_DURATION: &str = "memkeep_session_lock_wait_duration_seconds";
    /// [`super::StatsSnapshot::async_lag_us`].
    pub(crate) const ASYNC_LAG: &str = "memkeep_session_async_write_lag_seconds";
}

counters! {
    /// Requests that used a session.
    requests_with_session,
    /// Requests that ended without a session.
    requests_without_session,
    /// Sessions created.
    sessions_created,
    /// Session writes acknowledged by every copy of the placement (primary and backup).
    writes,
    /// Saves skipped because nothing changed.
    skipped_unchanged,
    /// Copy writes that failed on a node error (the copy was then placed on another
    /// node).
    write_failures,
    /// Copies re-created by a request that found one missing or behind (a node that
    /// restarted empty, or came back with an old copy).
    repairs,
    /// Sessions whose copies the background re-replication rewrote after a node went
    /// away or came back (sticky mode).
    rereplications,
    /// Background re-replication passes completed.
    rereplication_passes,
    /// Sessions a background re-replication pass could not read or write (their next
    /// request repairs them).
    rereplication_failures,
    /// Unlocked writes whose own changes were merged onto a newer stored version.
    merges,
    /// Writes (or refreshes) that found the session invalidated by another request:
    /// nothing was written back.
    writes_after_invalidation,
    /// Sticky mode: in-memory copies dropped to stay within `max_local_sessions` (they
    /// are in memcached; the next request reads them back).
    local_evictions,
    /// Candidate session ids beyond the per-request bound, ignored.
    candidates_ignored,
    /// Tombstone hints that could not be recorded (every hint segment full, or a node
    /// error): such a node, back with an old copy, relies on the other tombstones.
    hint_failures,
    /// Hints delivered to a node that had missed them (tombstones and principal
    /// generations, hinted handoff).
    hints_delivered,
    /// Validity refreshes (touch) of sessions that were only read.
    validity_refreshes,
    /// Sessions loaded from memcached and taken over by this instance (sticky mode).
    instance_takeovers,
    /// Sessions read while the node the id names as primary did not hold the latest
    /// copy (down, restarted empty, or behind): served from another copy.
    restores_from_backup,
    /// Sessions moved to another node (the id changed).
    relocations,
    /// Session ids presented that do not parse or name an unknown node.
    invalid_ids,
    /// Records refused: garbage, foreign, other format version or unavailable codec.
    foreign_records,
    /// Sessions found expired and removed.
    expired,
    /// Sessions invalidated.
    invalidations,
    /// Saves refused because the session is larger than `max_session_size`.
    oversized,
    /// Locks acquired.
    locks_acquired,
    /// Locks acquired after waiting for another holder.
    lock_waits,
    /// Lock waits that ran out.
    lock_timeouts,
    /// Requests that went on without the lock after a timeout (policy `Proceed`).
    lock_proceeded_unlocked,
    /// Lock operations that failed on a node error.
    lock_failures,
    /// `auto` locking: requests not locked because their path was seen read-only.
    auto_readonly_unlocked,
    /// `auto` locking: unlocked requests that changed the session after all.
    auto_readonly_misses,
    /// Writes refused because another request wrote after this one read the session
    /// (an `auto` read-only guess that changed it, or a lock that expired).
    conflicts,
    /// Loads that failed: no node that may hold the session answered.
    load_failures,
    /// Async mode: writes queued.
    async_queued,
    /// Async mode: saves that had to wait because the queue was full.
    async_queue_full,
    /// Async mode: queued writes that failed.
    async_failures,
    /// Async mode: queued writes superseded by a later write of the same session before
    /// they were sent (only the latest state is written).
    async_coalesced,
    /// Session ids rotated (`cycle_id`): the data moved to a new id, the old one died.
    id_rotations,
    /// Rotated ids invalidated by an invalidation that found the session's key retired
    /// by a rotation completed meanwhile (the logout follows the session to its new id).
    successors_invalidated,
    /// Sessions not served because their principal was logged out everywhere since
    /// they were bound (each is invalidated).
    principal_logouts,
    /// Principals logged out everywhere by this instance (`invalidate_principal`).
    principal_invalidations,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_tracks_count_sum_min_max() {
        let d = Distribution::default();
        assert_eq!(d.snapshot(), DistributionSnapshot::default());
        d.record(5);
        d.record(1);
        d.record(9);
        let s = d.snapshot();
        assert_eq!((s.count, s.sum, s.min, s.max, s.mean()), (3, 15, 1, 9, 5));
    }

    #[test]
    fn snapshot_copies_counters() {
        let s = SessionStats::default();
        s.writes.fetch_add(2, Relaxed);
        s.oversized.fetch_add(1, Relaxed);
        let snap = s.snapshot();
        assert_eq!(snap.writes, 2);
        assert_eq!(snap.oversized, 1);
        assert_eq!(snap.relocations, 0);
    }
}
