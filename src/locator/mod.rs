//! Node locators: which server a key lives on.
//!
//! Locators are pure data: built once from the node list, then no I/O, no clocks (the one
//! exception, host name resolution for the spymemcached ketama layouts, happens once while
//! building; see [`KetamaLayout::Spymemcached`]). The client asks [`NodeLocator::primary`] for
//! every keyed operation and, when that node is down and the failure policy redistributes,
//! [`NodeLocator::fallback`] for the next live one.
//!
//! A [`Distribution`] names the algorithm:
//!
//! - [`Distribution::Modulo`]: `hash(key) % n` ([`ModuloLocator`]), spymemcached's
//!   `ArrayModNodeLocator`. Adding or removing a node moves almost every key.
//! - [`Distribution::Ketama`]: a consistent-hashing ring ([`KetamaLocator`]) laid out exactly as
//!   spymemcached or libmemcached lay theirs out ([`KetamaLayout`]), so memkeep can share a cache
//!   with Java (spymemcached, memcached-session-manager) or C/PHP/Python (libmemcached, pylibmc)
//!   clients key for key. Adding or removing a node moves only about 1/n of the keys.
//!
//! Key hashes ([`HashAlgorithm`]) reproduce spymemcached's `DefaultHashAlgorithm` set bit for
//! bit, plus libmemcached's default one-at-a-time and XXH64.
//!
//! ```
//! use memkeep::locator::{KetamaLayout, KetamaLocator, LocatorNode, NodeLocator};
//!
//! let nodes: Vec<LocatorNode> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
//!     .iter()
//!     .map(|h| LocatorNode { host: h.to_string(), port: 11211, weight: 1 })
//!     .collect();
//! let ring = KetamaLocator::new(KetamaLayout::Spymemcached, &nodes)?;
//! let owner = ring.primary(b"session:42");
//! let next = ring.fallback(b"session:42", &|i| i != owner);
//! assert!(next.is_some() && next != Some(owner));
//! # Ok::<(), memkeep::Error>(())
//! ```

mod hash;
mod ketama;
mod modulo;

use std::sync::Arc;

pub use hash::HashAlgorithm;
pub use ketama::{KetamaLayout, KetamaLocator};
pub use modulo::ModuloLocator;

/// A server as the locators see it: the address exactly as configured and its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocatorNode {
    /// Host as configured (name or IP literal), without the port.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Relative weight (>= 1); only weighted ketama layouts use it.
    pub weight: u32,
}

/// Maps keys to node indices (positions in the client's node list).
pub trait NodeLocator: Send + Sync + std::fmt::Debug {
    /// The index of the node that owns `key`.
    fn primary(&self, key: &[u8]) -> usize;

    /// The first node after the primary, in this locator's own order, for which `is_up`
    /// holds; `None` when no other node is up.
    fn fallback(&self, key: &[u8], is_up: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// How keys are distributed over the nodes.
///
/// The default is `Ketama(KetamaLayout::Spymemcached)`: consistent hashing (a node joining or
/// leaving moves about 1/n of the keys, instead of nearly all of them with modulo), laid out key
/// for key like spymemcached's `KetamaNodeLocator`, the locator of memcached-session-manager
/// and of most Java deployments memkeep is meant to share caches with (and, for IP-literal
/// nodes on ports other than 11211, also like libmemcached's `KETAMA_WEIGHTED`). It honours node
/// weights. Its one cost: nodes given by host name are resolved once when the client is built,
/// because spymemcached names ring points after the resolved address; configure nodes by IP
/// address, or pick [`KetamaLayout::LibmemcachedWeighted`], to avoid that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Distribution {
    /// `hash(key) % n` with the given hash ([`ModuloLocator`]). spymemcached's default is
    /// `Modulo(HashAlgorithm::Native)`. Refuses weighted nodes.
    Modulo(HashAlgorithm),
    /// A ketama ring in the given layout ([`KetamaLocator`]).
    Ketama(KetamaLayout),
}

impl Default for Distribution {
    fn default() -> Self {
        Distribution::Ketama(KetamaLayout::Spymemcached)
    }
}

impl Distribution {
    /// Builds the locator for `nodes` (node indices are positions in `nodes`).
    ///
    /// Refuses bad input with [`crate::Error::Config`] (`field` `"nodes"` or
    /// `"distribution"`): no nodes, a weight of 0, an empty host, weights with modulo, duplicate
    /// addresses or a node that would get no ring point with ketama, an unresolvable host name
    /// with the spymemcached layouts.
    pub(crate) fn build(&self, nodes: &[LocatorNode]) -> crate::Result<Arc<dyn NodeLocator>> {
        Ok(match *self {
            Distribution::Modulo(hash) => Arc::new(ModuloLocator::new(hash, nodes)?),
            Distribution::Ketama(layout) => Arc::new(KetamaLocator::new(layout, nodes)?),
        })
    }
}

/// Checks what every locator needs: at least one node, weights >= 1, non-empty hosts, and node
/// indices that fit in a `u32`.
fn check_nodes(nodes: &[LocatorNode]) -> crate::Result<()> {
    if nodes.is_empty() {
        return Err(crate::Error::config(
            "nodes",
            "no memcached node configured: add at least one (ClientBuilder::node)",
        ));
    }
    if u32::try_from(nodes.len()).is_err() {
        return Err(crate::Error::config(
            "nodes",
            format!("{} nodes are more than a locator can index", nodes.len()),
        ));
    }
    for n in nodes {
        if n.host.is_empty() {
            return Err(crate::Error::config(
                "nodes",
                format!(
                    "a node has an empty host (port {}): give its host name or IP address",
                    n.port
                ),
            ));
        }
        if n.weight == 0 {
            return Err(crate::Error::config(
                "nodes",
                format!(
                    "node {}:{} has weight 0; weights start at 1 (remove the node to give it no keys)",
                    n.host, n.port
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(weights: &[u32]) -> Vec<LocatorNode> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| LocatorNode {
                host: format!("192.168.7.{}", i + 1),
                port: 11211,
                weight,
            })
            .collect()
    }

    fn config_field(e: crate::Error) -> &'static str {
        match e {
            crate::Error::Config { field, .. } => field,
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    #[test]
    fn build_every_distribution() {
        let ns = nodes(&[1, 1, 1]);
        let mut all = vec![Distribution::default()];
        for h in HashAlgorithm::ALL {
            all.push(Distribution::Modulo(h));
            all.push(Distribution::Ketama(KetamaLayout::Libmemcached(h)));
            all.push(Distribution::Ketama(KetamaLayout::LibmemcachedSpy(h)));
        }
        all.push(Distribution::Ketama(KetamaLayout::SpymemcachedWeighted));
        all.push(Distribution::Ketama(KetamaLayout::LibmemcachedWeighted));
        all.push(Distribution::Ketama(KetamaLayout::LibmemcachedSpyWeighted));
        for d in all {
            let loc = d.build(&ns).unwrap();
            for key in [&b"a"[..], b"session:1", b""] {
                let p = loc.primary(key);
                assert!(p < 3, "{d:?}");
                assert!(matches!(loc.fallback(key, &|_| true), Some(f) if f != p && f < 3));
                assert_eq!(loc.fallback(key, &|i| i == p), None);
            }
        }
    }

    #[test]
    fn default_is_spymemcached_ketama() {
        assert_eq!(
            Distribution::default(),
            Distribution::Ketama(KetamaLayout::Spymemcached)
        );
    }

    #[test]
    fn single_node_has_no_fallback() {
        for d in [
            Distribution::default(),
            Distribution::Modulo(HashAlgorithm::Native),
        ] {
            let loc = d.build(&nodes(&[1])).unwrap();
            assert_eq!(loc.primary(b"k"), 0);
            assert_eq!(loc.fallback(b"k", &|_| true), None);
        }
    }

    #[test]
    fn refuses_bad_input() {
        let d = Distribution::default();
        assert_eq!(config_field(d.build(&[]).unwrap_err()), "nodes");
        assert_eq!(config_field(d.build(&nodes(&[1, 0])).unwrap_err()), "nodes");
        let mut empty_host = nodes(&[1]);
        empty_host[0].host.clear();
        assert_eq!(config_field(d.build(&empty_host).unwrap_err()), "nodes");
        let modulo = Distribution::Modulo(HashAlgorithm::Native);
        assert_eq!(
            config_field(modulo.build(&nodes(&[1, 2])).unwrap_err()),
            "distribution"
        );
    }
}
