//! Where a session's copies and lock live: a pure function of the session key, the
//! configured nodes and a liveness predicate the caller passes in (no I/O, no clock).
//!
//! Every node gets a rendezvous ("highest random weight") score for the key:
//! `xxh3_64(node id, seed = xxh3_64(key))`. The key's **preference order** is the normal
//! nodes by descending score, then the failover nodes by descending score. From it:
//!
//! * the **copies**: the first two usable nodes of the order (primary, then backup);
//!   so a failover node holds a primary only when no normal node is usable, and a backup
//!   only when fewer than two normal nodes are;
//! * the **lock node**: the first usable node of the order;
//! * the **read set** (see `Store::fetch`): the nodes the id names plus the first two
//!   nodes of the order that answer.
//!
//! Rendezvous scores spread the sessions of a node that goes down evenly over the
//! others (a ring would pile them onto its successor), and every instance with the same
//! configuration and the same view of which nodes are usable computes the same
//! placement. The id's node fields are hints only: the order does not depend on them,
//! so a client editing its id cannot choose where the authoritative copies are looked
//! for.

use super::id::SessionKey;

/// The configured nodes, in the form placement decisions need.
#[derive(Clone, Debug)]
pub(crate) struct Placement {
    nodes: Vec<PlacedNode>,
    /// How many copies a session has (2 unless the peer backend's `backups` says more).
    copies: usize,
}

#[derive(Clone, Debug)]
struct PlacedNode {
    id: String,
    failover: bool,
}

/// Where a session's two copies go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Copies {
    /// The node of the primary copy.
    pub(crate) primary: String,
    /// The node of the backup copy (`None`: no second usable node).
    pub(crate) backup: Option<String>,
    /// Further backups (the peer backend's `backups` above 1), in order.
    pub(crate) more: Vec<String>,
}

impl Copies {
    /// The nodes in write order: primary first.
    pub(crate) fn nodes(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.primary.as_str())
            .chain(self.backup.as_deref())
            .chain(self.more.iter().map(String::as_str))
    }
}

impl Placement {
    /// `nodes` in configured order; `failover` names the nodes used only when the
    /// others are not usable.
    pub(crate) fn new(nodes: &[String], failover: &[String]) -> Self {
        Placement {
            nodes: nodes
                .iter()
                .map(|id| PlacedNode {
                    id: id.clone(),
                    failover: failover.contains(id),
                })
                .collect(),
            copies: 2,
        }
    }

    /// The same nodes with `n` copies per session (at least 2).
    pub(crate) fn with_copies(mut self, n: usize) -> Self {
        self.copies = n.max(2);
        self
    }

    /// True when `id` is a configured node.
    pub(crate) fn knows(&self, id: &str) -> bool {
        self.nodes.iter().any(|n| n.id == id)
    }

    /// The key's preference order: normal nodes by descending score, then failover
    /// nodes by descending score (ties, which need a 64-bit collision, by id).
    pub(crate) fn order(&self, key: &SessionKey) -> Vec<&str> {
        let seed = key.spread();
        let mut scored: Vec<(bool, u64, &str)> = self
            .nodes
            .iter()
            .map(|n| {
                let score = twox_hash::XxHash3_64::oneshot_with_seed(seed, n.id.as_bytes());
                (n.failover, score, n.id.as_str())
            })
            .collect();
        scored.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(b.2)));
        scored.into_iter().map(|(_, _, id)| id).collect()
    }

    /// The copies of `key` given which nodes are usable: the first two usable nodes of
    /// the order. `None` when no node is usable.
    pub(crate) fn copies(&self, key: &SessionKey, usable: impl Fn(&str) -> bool) -> Option<Copies> {
        let mut chosen = self.order(key).into_iter().filter(|n| usable(n));
        let primary = chosen.next()?.to_owned();
        let backup = chosen.next().map(str::to_owned);
        let more = chosen
            .take(self.copies.saturating_sub(2))
            .map(str::to_owned)
            .collect();
        Some(Copies {
            primary,
            backup,
            more,
        })
    }

    /// The nodes to try for the key's lock, in order: the usable nodes of the order
    /// (all of the order when none is usable, so the caller gets the nodes' errors).
    pub(crate) fn lock_nodes(
        &self,
        key: &SessionKey,
        usable: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let order = self.order(key);
        let live: Vec<String> = order
            .iter()
            .filter(|n| usable(n))
            .map(|n| (*n).to_owned())
            .collect();
        if live.is_empty() {
            order.into_iter().map(str::to_owned).collect()
        } else {
            live
        }
    }

    /// The nodes a read of `key` looks at first: the id's hints (configured ones only,
    /// deduplicated) and the first two nodes of the order. The store reads further down
    /// the order while fewer than two nodes of the order answered with a copy.
    pub(crate) fn read_targets<'a>(
        &'a self,
        key: &SessionKey,
        hints: &[&'a str],
    ) -> ReadTargets<'a> {
        let order = self.order(key);
        let mut first: Vec<&str> = Vec::with_capacity(4);
        for n in hints.iter().copied().chain(order.iter().take(2).copied()) {
            if self.knows(n) && !first.contains(&n) {
                first.push(n);
            }
        }
        ReadTargets { order, first }
    }
}

/// The plan of one read (see [`Placement::read_targets`]).
#[derive(Debug)]
pub(crate) struct ReadTargets<'a> {
    /// The key's preference order.
    pub(crate) order: Vec<&'a str>,
    /// The nodes to read at once.
    pub(crate) first: Vec<&'a str>,
}

impl<'a> ReadTargets<'a> {
    /// The next node to read: walking the order, the first node not read yet that comes
    /// before two nodes that answered **with a copy** (a record or a tombstone). `None`
    /// when those two are known, or the order is exhausted. A node that answers "no
    /// copy" may have lost it (restarted empty), so the read goes on down the order: a
    /// tombstone or a newer copy further down is never missed because a node in front
    /// forgot it. (A session that exists nowhere costs one read per node.)
    pub(crate) fn next(&self, read: &[&str], holding: &[&str]) -> Option<&'a str> {
        let mut holders = 0;
        for n in self.order.iter().copied() {
            if holding.contains(&n) {
                holders += 1;
                if holders == 2 {
                    return None;
                }
            } else if !read.contains(&n) {
                return Some(n);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    fn key(seed: u8) -> SessionKey {
        SessionKey::from_bytes([seed; 16])
    }

    #[test]
    fn copies_are_the_first_two_usable_nodes_of_the_order() {
        let p = Placement::new(&names(4), &[]);
        let k = key(1);
        let order: Vec<String> = p.order(&k).into_iter().map(str::to_owned).collect();
        let all = p.copies(&k, |_| true).unwrap();
        assert_eq!(all.primary, order[0]);
        assert_eq!(all.backup.as_deref(), Some(order[1].as_str()));
        let without_first = p.copies(&k, |n| n != order[0]).unwrap();
        assert_eq!(without_first.primary, order[1]);
        assert_eq!(without_first.backup.as_deref(), Some(order[2].as_str()));
    }

    #[test]
    fn one_usable_node_gives_no_backup_and_none_gives_no_placement() {
        let p = Placement::new(&names(3), &[]);
        let only = p.copies(&key(2), |n| n == "n1").unwrap();
        assert_eq!(only.primary, "n1");
        assert_eq!(only.backup, None);
        assert_eq!(p.copies(&key(2), |_| false), None);
    }

    #[test]
    fn more_copies_are_the_next_usable_nodes_of_the_order() {
        let p = Placement::new(&names(4), &[]).with_copies(3);
        let k = key(5);
        let order = p.order(&k);
        let c = p.copies(&k, |n| n != order[1]).unwrap();
        assert_eq!(
            c.nodes().collect::<Vec<_>>(),
            vec![order[0], order[2], order[3]]
        );
        let all = Placement::new(&names(3), &[]).with_copies(3);
        assert_eq!(all.copies(&k, |_| true).unwrap().nodes().count(), 3);
    }

    #[test]
    fn failover_nodes_come_last() {
        let p = Placement::new(&names(3), &["n0".to_owned()]);
        for seed in 0..50 {
            assert_eq!(p.order(&key(seed))[2], "n0");
        }
        let only_failover = p.copies(&key(3), |n| n == "n0").unwrap();
        assert_eq!(only_failover.primary, "n0");
    }

    #[test]
    fn read_targets_put_hints_first_and_skip_unknown_nodes() {
        let p = Placement::new(&names(4), &[]);
        let k = key(4);
        let order = p.order(&k);
        let t = p.read_targets(&k, &[order[3], "nope", order[3]]);
        assert_eq!(t.first, vec![order[3], order[0], order[1]]);
        // Both of the order's first two hold a copy: complete.
        assert_eq!(t.next(&t.first, &[order[0], order[1]]), None);
        // The first did not answer or holds nothing: read the next node of the order not
        // read yet, even though a hint further down the order holds a copy.
        assert_eq!(t.next(&t.first, &[order[1], order[3]]), Some(order[2]));
        let read = [order[3], order[0], order[1], order[2]];
        assert_eq!(t.next(&read, &[order[1], order[2], order[3]]), None);
        // Nobody holds a copy: every node is read, then the read is complete.
        assert_eq!(t.next(&read, &[]), None);
    }

    #[test]
    fn sessions_of_a_lost_node_spread_over_the_others() {
        let p = Placement::new(&names(4), &[]);
        let mut moved_to = std::collections::HashMap::new();
        for i in 0..4000u32 {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&i.to_be_bytes());
            let k = SessionKey::from_bytes(b);
            if p.copies(&k, |_| true).unwrap().primary == "n0" {
                let c = p.copies(&k, |n| n != "n0").unwrap();
                *moved_to.entry(c.primary).or_insert(0u32) += 1;
            }
        }
        assert_eq!(
            moved_to.len(),
            3,
            "every other node takes a share: {moved_to:?}"
        );
        assert!(moved_to.values().all(|&c| c > 200), "{moved_to:?}");
    }

    proptest! {
        /// Same key + same usable set = same placement, whatever the order in which an
        /// instance was given the failover list, and the placement only uses usable nodes.
        #[test]
        fn same_key_and_live_set_give_the_same_placement(
            bytes in proptest::array::uniform16(any::<u8>()),
            n in 1usize..7,
            down_mask in any::<u8>(),
            failover_mask in any::<u8>(),
        ) {
            let nodes = names(n);
            let failover: Vec<String> = nodes.iter().enumerate()
                .filter(|(i, _)| failover_mask & (1 << i) != 0).map(|(_, s)| s.clone()).collect();
            let mut failover_rev = failover.clone();
            failover_rev.reverse();
            let usable = |id: &str| {
                let i: usize = id[1..].parse().unwrap();
                down_mask & (1 << i) == 0
            };
            let k = SessionKey::from_bytes(bytes);
            let a = Placement::new(&nodes, &failover).copies(&k, usable);
            let b = Placement::new(&nodes, &failover_rev).copies(&k, usable);
            prop_assert_eq!(&a, &b);
            if let Some(c) = &a {
                prop_assert!(c.nodes().all(usable));
                prop_assert!(c.backup.as_deref() != Some(c.primary.as_str()));
            } else {
                prop_assert!(!nodes.iter().any(|id| usable(id)));
            }
        }

        /// Never a failover node as primary while a normal node is usable, nor as backup
        /// while two normal nodes are.
        #[test]
        fn never_a_failover_node_while_a_normal_one_is_up(
            bytes in proptest::array::uniform16(any::<u8>()),
            n in 1usize..7,
            down_mask in any::<u8>(),
            failover_mask in any::<u8>(),
        ) {
            let nodes = names(n);
            let is_failover = |id: &str| {
                let i: usize = id[1..].parse().unwrap();
                failover_mask & (1 << i) != 0
            };
            let failover: Vec<String> = nodes.iter().filter(|id| is_failover(id)).cloned().collect();
            let usable = |id: &str| {
                let i: usize = id[1..].parse().unwrap();
                down_mask & (1 << i) == 0
            };
            let normal_up = nodes.iter().filter(|id| usable(id) && !is_failover(id)).count();
            let k = SessionKey::from_bytes(bytes);
            if let Some(c) = Placement::new(&nodes, &failover).copies(&k, usable) {
                if normal_up >= 1 {
                    prop_assert!(!is_failover(&c.primary));
                }
                if normal_up >= 2 {
                    prop_assert!(!c.backup.as_deref().is_some_and(is_failover));
                }
            }
        }

        /// The lock node is the primary's node whenever the placement has one.
        #[test]
        fn the_lock_node_is_the_first_usable_node_of_the_order(
            bytes in proptest::array::uniform16(any::<u8>()),
            n in 1usize..7,
            down_mask in any::<u8>(),
        ) {
            let nodes = names(n);
            let usable = |id: &str| {
                let i: usize = id[1..].parse().unwrap();
                down_mask & (1 << i) == 0
            };
            let k = SessionKey::from_bytes(bytes);
            let p = Placement::new(&nodes, &[]);
            let locks = p.lock_nodes(&k, usable);
            match p.copies(&k, usable) {
                Some(c) => prop_assert_eq!(locks.first(), Some(&c.primary)),
                None => prop_assert_eq!(locks.len(), n),
            }
        }
    }
}
