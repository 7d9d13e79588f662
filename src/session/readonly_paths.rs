//! The request paths `auto` locking has seen complete without changing their session
//! ("read-only"), so that later requests to them are not locked.
//!
//! Paths come from clients, so the memory is bounded twice: in entries
//! (`auto_readonly_paths`) and in bytes, the sum of the remembered paths' lengths
//! (`auto_readonly_bytes`). Past either bound the least recently noted paths are
//! forgotten first; a single path longer than the byte bound is never remembered (its
//! requests stay locked, the safe side).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Paths seen read-only, bounded in entries and in bytes, least recently noted
/// forgotten first.
#[derive(Debug)]
pub(crate) struct ReadOnlyPaths {
    max_entries: usize,
    max_bytes: usize,
    /// Path -> the stamp of its last note.
    stamps: HashMap<Arc<str>, u64>,
    /// Stamp -> path, oldest first.
    order: BTreeMap<u64, Arc<str>>,
    /// Sum of the lengths of the remembered paths.
    bytes: usize,
    next_stamp: u64,
}

impl ReadOnlyPaths {
    /// Remembers at most `max_entries` paths of at most `max_bytes` bytes in all (either
    /// 0: remembers nothing).
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> Self {
        ReadOnlyPaths {
            max_entries,
            max_bytes,
            stamps: HashMap::new(),
            order: BTreeMap::new(),
            bytes: 0,
            next_stamp: 0,
        }
    }

    /// True when `path` is remembered as read-only.
    pub(crate) fn contains(&self, path: &str) -> bool {
        self.stamps.contains_key(path)
    }

    /// A request to `path` completed: `changed` (it changed its session) forgets the
    /// path; otherwise the path is remembered, or refreshed if it already was, and the
    /// least recently noted paths are forgotten until both bounds hold.
    pub(crate) fn note(&mut self, path: &str, changed: bool) {
        if let Some(stamp) = self.stamps.remove(path) {
            self.order.remove(&stamp);
            self.bytes -= path.len();
        }
        if changed || self.max_entries == 0 || path.len() > self.max_bytes {
            return;
        }
        let path: Arc<str> = Arc::from(path);
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.bytes += path.len();
        self.stamps.insert(Arc::clone(&path), stamp);
        self.order.insert(stamp, path);
        // The path just noted is the newest and fits on its own, so it is never the one
        // forgotten here.
        while self.len() > self.max_entries || self.bytes() > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.stamps.remove(&oldest);
            self.bytes -= oldest.len();
        }
    }

    /// How many paths are remembered.
    pub(crate) fn len(&self) -> usize {
        self.stamps.len()
    }

    /// The sum of the remembered paths' lengths, in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unchanged_paths_are_remembered_and_a_change_forgets_them() {
        let mut ro = ReadOnlyPaths::new(10, 1000);
        assert!(!ro.contains("/a"));
        ro.note("/a", false);
        ro.note("/bb", false);
        assert!(ro.contains("/a") && ro.contains("/bb"));
        assert_eq!((ro.len(), ro.bytes()), (2, 5));
        ro.note("/a", true);
        assert!(!ro.contains("/a") && ro.contains("/bb"));
        assert_eq!((ro.len(), ro.bytes()), (1, 3));
        ro.note("/never-seen", true);
        assert_eq!((ro.len(), ro.bytes()), (1, 3));
    }

    #[test]
    fn the_entry_bound_forgets_the_least_recently_noted() {
        let mut ro = ReadOnlyPaths::new(2, 1000);
        ro.note("/a", false);
        ro.note("/b", false);
        ro.note("/a", false); // refreshed: /b is now the oldest
        ro.note("/c", false);
        assert!(ro.contains("/a") && ro.contains("/c") && !ro.contains("/b"));
        assert_eq!(ro.len(), 2);
    }

    #[test]
    fn the_byte_bound_forgets_the_least_recently_noted_until_it_holds() {
        let mut ro = ReadOnlyPaths::new(100, 10);
        ro.note("/aaa", false); // 4
        ro.note("/bbb", false); // 8
        ro.note("/cccccc", false); // 7: /aaa and /bbb must go
        assert!(ro.contains("/cccccc") && !ro.contains("/aaa") && !ro.contains("/bbb"));
        assert_eq!((ro.len(), ro.bytes()), (1, 7));
        ro.note("/dd", false); // 3: fits exactly
        assert_eq!((ro.len(), ro.bytes()), (2, 10));
    }

    #[test]
    fn a_path_longer_than_the_byte_bound_is_never_remembered_and_evicts_nothing() {
        let mut ro = ReadOnlyPaths::new(100, 16);
        ro.note("/a", false);
        let long = format!("/{}", "x".repeat(16));
        ro.note(&long, false);
        assert!(!ro.contains(&long));
        assert!(ro.contains("/a"));
        assert_eq!((ro.len(), ro.bytes()), (1, 2));
    }

    #[test]
    fn zero_bounds_remember_nothing() {
        for (entries, bytes) in [(0, 1000), (10, 0)] {
            let mut ro = ReadOnlyPaths::new(entries, bytes);
            ro.note("/a", false);
            assert!(!ro.contains("/a"));
            assert_eq!((ro.len(), ro.bytes()), (0, 0));
        }
    }

    /// The reference: a list ordered from least to most recently noted.
    fn model_note(model: &mut Vec<String>, max_entries: usize, max_bytes: usize, op: &Op) {
        model.retain(|p| *p != op.path);
        if op.changed || max_entries == 0 || op.path.len() > max_bytes {
            return;
        }
        model.push(op.path.clone());
        while model.len() > max_entries || model.iter().map(String::len).sum::<usize>() > max_bytes
        {
            model.remove(0);
        }
    }

    #[derive(Clone, Debug)]
    struct Op {
        path: String,
        changed: bool,
    }

    fn op() -> impl Strategy<Value = Op> {
        // A small alphabet of paths of different lengths, so that paths repeat.
        ("/[a-c]{0,12}", proptest::bool::weighted(0.2))
            .prop_map(|(path, changed)| Op { path, changed })
    }

    proptest! {
        #[test]
        fn bounds_are_never_exceeded_and_the_lru_order_is_kept(
            max_entries in 0usize..8,
            max_bytes in 0usize..40,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let mut ro = ReadOnlyPaths::new(max_entries, max_bytes);
            let mut model: Vec<String> = Vec::new();
            for op in &ops {
                ro.note(&op.path, op.changed);
                model_note(&mut model, max_entries, max_bytes, op);
                prop_assert!(ro.len() <= max_entries);
                prop_assert!(ro.bytes() <= max_bytes);
                prop_assert_eq!(ro.len(), model.len());
                prop_assert_eq!(ro.bytes(), model.iter().map(String::len).sum::<usize>());
                for p in &model {
                    prop_assert!(ro.contains(p), "{} should be remembered", p);
                }
                prop_assert_eq!(ro.order.len(), ro.stamps.len());
                if op.changed {
                    prop_assert!(!ro.contains(&op.path));
                }
            }
        }
    }
}
