//! Node locators: which server a key lives on.
//!
//! Locators are pure data: built once from the node list, no I/O, no clocks. The client
//! asks [`NodeLocator::primary`] for every keyed operation and, when that node is down
//! and the failure policy redistributes, [`NodeLocator::fallback`] for the next live one.

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
