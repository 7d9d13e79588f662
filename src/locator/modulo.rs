//! Modulo distribution: `hash(key) % n`.
//!
//! The semantics of spymemcached's `ArrayModNodeLocator` (and libmemcached's
//! `MEMCACHED_DISTRIBUTION_MODULA`): the primary is `hash(key) % n` over the nodes in their
//! configured order. Adding or removing a node remaps almost every key, so prefer a ketama
//! layout unless the node list never changes or another client forces modulo.

use super::{HashAlgorithm, LocatorNode, NodeLocator};

/// A [`NodeLocator`] that picks `hash(key) % n`.
///
/// Fallback walks the following indices, wrapping around (`primary + 1`, `primary + 2`, ...
/// modulo `n`), like the sequence spymemcached's `ArrayModNodeLocator` hands its
/// `Redistribute` failure mode, and returns the first one that is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuloLocator {
    hash: HashAlgorithm,
    nodes: usize,
}

impl ModuloLocator {
    /// A modulo locator over `nodes` (only their number matters) hashing keys with `hash`.
    ///
    /// Refuses an empty node list and nodes with a weight other than 1 (modulo cannot honour
    /// weights; silently ignoring them would hide a configuration mistake) with
    /// [`crate::Error::Config`].
    pub fn new(hash: HashAlgorithm, nodes: &[LocatorNode]) -> crate::Result<Self> {
        super::check_nodes(nodes)?;
        if let Some(n) = nodes.iter().find(|n| n.weight != 1) {
            return Err(crate::Error::config(
                "distribution",
                format!(
                    "modulo distribution ignores weights, but node {}:{} has weight {}: \
                     use Distribution::Ketama(KetamaLayout::Spymemcached) (or another ketama \
                     layout) to weight nodes, or give every node weight 1",
                    n.host, n.port, n.weight
                ),
            ));
        }
        Ok(ModuloLocator {
            hash,
            nodes: nodes.len(),
        })
    }

    /// The key hash in use.
    pub fn hash_algorithm(&self) -> HashAlgorithm {
        self.hash
    }
}

impl NodeLocator for ModuloLocator {
    fn primary(&self, key: &[u8]) -> usize {
        // `n` fits in u64 on every platform; the remainder is < n, so it fits in usize.
        (u64::from(self.hash.hash(key)) % self.nodes as u64) as usize
    }

    fn fallback(&self, key: &[u8], is_up: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.nodes;
        let primary = self.primary(key);
        (1..n).map(|step| (primary + step) % n).find(|&i| is_up(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(n: usize) -> Vec<LocatorNode> {
        (0..n)
            .map(|i| LocatorNode {
                host: format!("10.0.0.{i}"),
                port: 11211,
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn primary_is_hash_mod_n() {
        let loc = ModuloLocator::new(HashAlgorithm::Native, &nodes(3)).unwrap();
        // Java "hello".hashCode() = 99162322; 99162322 % 3 = 1.
        assert_eq!(loc.primary(b"hello"), 1);
        assert_eq!(loc.fallback(b"hello", &|_| true), Some(2));
        assert_eq!(loc.fallback(b"hello", &|i| i == 0), Some(0));
        assert_eq!(loc.fallback(b"hello", &|i| i == 1), None);
    }

    #[test]
    fn refuses_weights_and_empty() {
        let mut ns = nodes(2);
        ns[1].weight = 2;
        let err = ModuloLocator::new(HashAlgorithm::Crc, &ns).unwrap_err();
        assert!(err.to_string().contains("weight"), "{err}");
        assert!(ModuloLocator::new(HashAlgorithm::Crc, &[]).is_err());
    }

    proptest! {
        #[test]
        fn fallback_contract(
            n in 1usize..12,
            up in any::<u16>(),
            key in proptest::collection::vec(any::<u8>(), 0..40),
            alg in 0usize..HashAlgorithm::ALL.len(),
        ) {
            let loc = ModuloLocator::new(HashAlgorithm::ALL[alg], &nodes(n)).unwrap();
            let is_up = |i: usize| up & (1 << i) != 0;
            let primary = loc.primary(&key);
            prop_assert!(primary < n);
            let others_up = (0..n).any(|i| i != primary && is_up(i));
            match loc.fallback(&key, &is_up) {
                Some(f) => {
                    prop_assert!(f != primary && f < n && is_up(f));
                    // The first live node after the primary, in index order.
                    for step in 1..n {
                        let i = (primary + step) % n;
                        if i == f { break; }
                        prop_assert!(!is_up(i));
                    }
                }
                None => prop_assert!(!others_up),
            }
        }
    }
}
