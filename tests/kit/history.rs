//! A client-history checker.
//!
//! Writers record each write before sending it and its [`Outcome`] after. For every key
//! the checker keeps every value that was possibly written (acknowledged or unknown)
//! and the set of values the key may hold *now* if no server lost data. Readers check
//! what they got:
//!
//! - [`History::check_read`] (after failures: servers may have lost data or a failover
//!   node may answer): a hit must be a value somebody wrote to *this* key; a miss is
//!   allowed.
//! - [`History::check_read_exact`] (nothing failed since the writes): the hit or miss
//!   must be one the recorded writes allow right now.
//!
//! Values made by [`History::value`] encode the key, the writer and a sequence number,
//! so a reply delivered to the wrong caller is reported as exactly that.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// How a write ended, as far as the writer can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server acknowledged it (stored / deleted).
    Acked,
    /// The server answered that it did nothing (NOT_STORED, NOT_FOUND, EXISTS): the
    /// value was not written.
    Refused,
    /// No answer (timeout, connection lost, cancelled): it may or may not be applied,
    /// now or later.
    Unknown,
}

#[derive(Default, Debug)]
struct KeyState {
    /// Every value that may have reached this key.
    ever: HashSet<Vec<u8>>,
    /// Values the key may hold now (`None`: absent) if no data was lost.
    now: HashSet<Option<Vec<u8>>>,
    /// Values whose write is in flight.
    pending: HashSet<Vec<u8>>,
}

impl KeyState {
    fn fresh() -> KeyState {
        let mut s = KeyState::default();
        s.now.insert(None);
        s
    }
}

#[derive(Default, Debug)]
struct Inner {
    keys: HashMap<Vec<u8>, KeyState>,
    violations: Vec<String>,
    reads: u64,
    hits: u64,
}

/// Shared between the tasks of a test (cheap to clone).
#[derive(Clone, Default, Debug)]
pub struct History {
    inner: Arc<Mutex<Inner>>,
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() > 80 {
        format!("{:?}...({} bytes)", &s[..80], b.len())
    } else {
        format!("{s:?}")
    }
}

impl History {
    /// An empty history: every key starts absent.
    pub fn new() -> History {
        History::default()
    }

    /// A value that names its key, its writer and a sequence number, padded with
    /// `pad` bytes: `<key>|w<writer>|s<seq>|<padding>`.
    pub fn value(key: &str, writer: u64, seq: u64, pad: usize) -> Vec<u8> {
        let mut v = format!("{key}|w{writer}|s{seq}|").into_bytes();
        v.resize(v.len() + pad, b'x');
        v
    }

    /// The key a value made by [`History::value`] names, if it is one.
    pub fn key_of(value: &[u8]) -> Option<&[u8]> {
        value.iter().position(|&b| b == b'|').map(|i| &value[..i])
    }

    /// Records a write about to be sent (call before the request leaves).
    pub fn begin_write(&self, key: &[u8], value: &[u8]) {
        let mut g = self.inner.lock().unwrap();
        let st = g.keys.entry(key.to_vec()).or_insert_with(KeyState::fresh);
        st.ever.insert(value.to_vec());
        st.pending.insert(value.to_vec());
    }

    /// Records how the write of `value` to `key` ended.
    pub fn end_write(&self, key: &[u8], value: &[u8], outcome: Outcome) {
        let mut g = self.inner.lock().unwrap();
        let st = g.keys.entry(key.to_vec()).or_insert_with(KeyState::fresh);
        st.pending.remove(value);
        match outcome {
            Outcome::Acked => {
                st.now.clear();
                st.now.insert(Some(value.to_vec()));
            }
            Outcome::Refused => {}
            Outcome::Unknown => {
                st.now.insert(Some(value.to_vec()));
            }
        }
    }

    /// Records a write in one call (for writers that don't overlap with readers).
    pub fn write(&self, key: &[u8], value: &[u8], outcome: Outcome) {
        self.begin_write(key, value);
        self.end_write(key, value, outcome);
    }

    /// Records a delete of `key` and how it ended.
    pub fn delete(&self, key: &[u8], outcome: Outcome) {
        let mut g = self.inner.lock().unwrap();
        let st = g.keys.entry(key.to_vec()).or_insert_with(KeyState::fresh);
        match outcome {
            Outcome::Acked => {
                st.now.clear();
                st.now.insert(None);
            }
            Outcome::Refused => {}
            Outcome::Unknown => {
                st.now.insert(None);
            }
        }
    }

    /// Checks a read made while servers may have failed: a hit must be a value written
    /// (or possibly written) to this very key; a miss is allowed. Records a violation
    /// and returns it as `Err`.
    pub fn check_read(&self, key: &[u8], got: Option<&[u8]>) -> Result<(), String> {
        self.check(key, got, false)
    }

    /// Checks a read made when nothing failed since the writes: the result must be one
    /// the recorded writes allow now (the last acknowledged value, a value whose outcome
    /// is unknown or in flight, or absent if that is possible).
    pub fn check_read_exact(&self, key: &[u8], got: Option<&[u8]>) -> Result<(), String> {
        self.check(key, got, true)
    }

    fn check(&self, key: &[u8], got: Option<&[u8]>, exact: bool) -> Result<(), String> {
        let mut g = self.inner.lock().unwrap();
        g.reads += 1;
        if got.is_some() {
            g.hits += 1;
        }
        let verdict = {
            let st = g.keys.get(key);
            match got {
                Some(v) => {
                    let named = History::key_of(v);
                    if named.is_some_and(|k| k != key) && !st.is_some_and(|s| s.ever.contains(v)) {
                        Err(format!(
                            "read of key {} returned the value of key {}: {} (a reply delivered to the wrong caller)",
                            show(key),
                            show(named.unwrap_or_default()),
                            show(v)
                        ))
                    } else if !st.is_some_and(|s| s.ever.contains(v)) {
                        Err(format!(
                            "read of key {} returned {} which nobody wrote to it",
                            show(key),
                            show(v)
                        ))
                    } else if exact
                        && !st.is_some_and(|s| {
                            s.now.contains(&Some(v.to_vec())) || s.pending.contains(v)
                        })
                    {
                        Err(format!(
                            "read of key {} returned {}, an overwritten value (no failure happened)",
                            show(key),
                            show(v)
                        ))
                    } else {
                        Ok(())
                    }
                }
                None => {
                    if exact && st.is_some_and(|s| !s.now.contains(&None) && s.pending.is_empty()) {
                        Err(format!(
                            "read of key {} missed, but its last write was acknowledged and no failure happened",
                            show(key)
                        ))
                    } else {
                        Ok(())
                    }
                }
            }
        };
        if let Err(e) = &verdict {
            g.violations.push(e.clone());
        }
        verdict
    }

    /// Records a violation found elsewhere (e.g. a caller that got another caller's
    /// error kind or hung).
    pub fn violation(&self, what: impl Into<String>) {
        self.inner.lock().unwrap().violations.push(what.into());
    }

    /// Violations so far.
    pub fn violations(&self) -> Vec<String> {
        self.inner.lock().unwrap().violations.clone()
    }

    /// (reads checked, of which hits).
    pub fn read_counts(&self) -> (u64, u64) {
        let g = self.inner.lock().unwrap();
        (g.reads, g.hits)
    }

    /// Number of keys written.
    pub fn keys(&self) -> usize {
        self.inner.lock().unwrap().keys.len()
    }

    /// Panics listing the first violations, if any.
    pub fn assert_clean(&self) {
        let v = self.violations();
        if !v.is_empty() {
            let shown: Vec<&String> = v.iter().take(20).collect();
            panic!(
                "{} history violation(s); first ones:\n  {}",
                v.len(),
                shown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n  ")
            );
        }
    }
}
