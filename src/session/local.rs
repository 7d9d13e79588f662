//! Sessions in this instance's memory, one slot per session key.
//!
//! The requests of one session that run at the same time on this instance share one slot
//! (and so one [`Session`] object, one lock, one view of the stored copies): they count
//! as references. Non-sticky mode drops a slot when its last request leaves; sticky mode
//! keeps it (the memory copy, which saves decoding when the stored version has not
//! moved), within `max_local_sessions`: past the bound, the least recently used slots
//! that no request uses and that have no write pending are dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::id::SessionKey;
use super::lock::HeldLock;
use super::model::Session;
use super::store::KnownCopies;

/// What a slot holds.
#[derive(Default)]
pub(crate) struct SlotState {
    /// The session as this instance knows it (`None`: not loaded, absent or gone).
    pub(crate) session: Option<Session>,
    /// True once a request loaded (or created) the session into this slot.
    pub(crate) loaded: bool,
    /// What the copies held at the last read or write.
    pub(crate) known: KnownCopies,
    /// The non-sticky lock held for the requests in flight.
    pub(crate) lock: Option<HeldLock>,
    /// `auto` locking: the session was loaded without the lock on a path guessed
    /// read-only; a write must not merge (it is refused on a newer version).
    pub(crate) unlocked_guess: bool,
}

/// One session's slot.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) state: tokio::sync::Mutex<SlotState>,
    /// Async mode: writes queued and not acknowledged yet (outside the state's mutex:
    /// the writer updates it while a request may hold the state waiting for queue room).
    pub(crate) pending_writes: AtomicUsize,
    /// A request that shared the slot was dropped with unsaved changes: the memory copy
    /// is dropped when the last request leaves.
    discard: AtomicBool,
}

impl Slot {
    pub(crate) fn discard_on_leave(&self) {
        self.discard.store(true, Relaxed);
    }

    pub(crate) fn must_discard(&self) -> bool {
        self.discard.load(Relaxed)
    }

    pub(crate) fn has_pending_writes(&self) -> bool {
        self.pending_writes.load(Relaxed) > 0
    }
}

struct Entry {
    slot: Arc<Slot>,
    refs: usize,
    last_used: u64,
}

/// The slots of one service.
pub(crate) struct LocalSessions {
    map: Mutex<HashMap<SessionKey, Entry>>,
    tick: AtomicU64,
    /// Sticky: slots outlive their requests.
    keep: bool,
    max: usize,
    evictions: AtomicU64,
}

fn lock_std<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalSessions {
    pub(crate) fn new(keep: bool, max: usize) -> Self {
        LocalSessions {
            map: Mutex::new(HashMap::new()),
            tick: AtomicU64::new(0),
            keep,
            max: max.max(1),
            evictions: AtomicU64::new(0),
        }
    }

    /// Joins the slot of `key` (made if missing).
    pub(crate) fn join(&self, key: SessionKey) -> Arc<Slot> {
        let tick = self.tick.fetch_add(1, Relaxed);
        let mut map = lock_std(&self.map);
        let entry = map.entry(key).or_insert_with(|| Entry {
            slot: Arc::new(Slot::default()),
            refs: 0,
            last_used: tick,
        });
        entry.refs += 1;
        entry.last_used = tick;
        Arc::clone(&entry.slot)
    }

    /// Leaves the slot; true when this was its last request. Non-sticky: the slot is
    /// dropped then. Sticky: it stays, and the bound is enforced.
    pub(crate) fn leave(&self, key: &SessionKey, slot: &Arc<Slot>) -> bool {
        let last = {
            let mut map = lock_std(&self.map);
            match map.get_mut(key) {
                Some(e) if Arc::ptr_eq(&e.slot, slot) => {
                    e.refs = e.refs.saturating_sub(1);
                    let last = e.refs == 0;
                    if last && !self.keep {
                        map.remove(key);
                    }
                    last
                }
                _ => true,
            }
        };
        if self.keep && last {
            self.enforce_bound();
        }
        last
    }

    /// Drops the slot of `key` if it is still `slot` and no other request uses it.
    pub(crate) fn forget(&self, key: &SessionKey, slot: &Arc<Slot>) {
        let mut map = lock_std(&self.map);
        if map
            .get(key)
            .is_some_and(|e| Arc::ptr_eq(&e.slot, slot) && e.refs == 0)
        {
            map.remove(key);
        }
    }

    /// The keys of the sessions in memory.
    pub(crate) fn keys(&self) -> Vec<SessionKey> {
        lock_std(&self.map).keys().copied().collect()
    }

    /// Sessions in memory.
    pub(crate) fn len(&self) -> usize {
        lock_std(&self.map).len()
    }

    /// Slots dropped by the bound so far.
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Relaxed)
    }

    /// Drops unused slots whose session expired at `now` (or that hold nothing).
    pub(crate) fn purge_expired(&self, now: SystemTime) -> usize {
        let mut map = lock_std(&self.map);
        let before = map.len();
        map.retain(|_, e| {
            if e.refs > 0 {
                return true;
            }
            match e.slot.state.try_lock() {
                Ok(s) => {
                    e.slot.has_pending_writes()
                        || s.session
                            .as_ref()
                            .is_some_and(|sess| !sess.lock().is_expired_at(now))
                }
                Err(_) => true,
            }
        });
        before - map.len()
    }

    /// Past `max` slots, drops the least recently used eighth of the droppable ones
    /// (no request in flight, no write pending): amortised O(1) per request.
    fn enforce_bound(&self) {
        let mut map = lock_std(&self.map);
        if map.len() <= self.max {
            return;
        }
        let mut droppable: Vec<(u64, SessionKey)> = map
            .iter()
            .filter(|(_, e)| {
                e.refs == 0 && !e.slot.has_pending_writes() && e.slot.state.try_lock().is_ok()
            })
            .map(|(k, e)| (e.last_used, *k))
            .collect();
        let target = map.len() - self.max + self.max / 8;
        let n = target.min(droppable.len());
        if n == 0 {
            return;
        }
        droppable.select_nth_unstable(n - 1);
        for (_, key) in &droppable[..n] {
            map.remove(key);
        }
        self.evictions.fetch_add(n as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> SessionKey {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&i.to_be_bytes());
        SessionKey::from_bytes(b)
    }

    #[test]
    fn non_sticky_slots_live_while_requests_use_them() {
        let local = LocalSessions::new(false, 10);
        let a = local.join(key(1));
        let b = local.join(key(1));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!local.leave(&key(1), &a));
        assert!(local.leave(&key(1), &b));
        assert_eq!(local.len(), 0);
    }

    #[test]
    fn sticky_slots_stay_within_the_bound_least_recently_used_first() {
        let local = LocalSessions::new(true, 8);
        for i in 0..8 {
            let s = local.join(key(i));
            local.leave(&key(i), &s);
        }
        // Key 0 is used again: the oldest is now key 1.
        let s0 = local.join(key(0));
        local.leave(&key(0), &s0);
        let held = local.join(key(100));
        let s9 = local.join(key(9));
        local.leave(&key(9), &s9);
        assert!(local.len() <= 8 + 1, "{}", local.len());
        assert!(local.evictions() >= 1);
        // The slot in use is never dropped, nor the most recently used ones.
        let map = lock_std(&local.map);
        assert!(map.contains_key(&key(100)) && map.contains_key(&key(0)));
        assert!(!map.contains_key(&key(1)));
        drop(map);
        local.leave(&key(100), &held);
    }
}
