//! Cache-stampede protection on top of the meta protocol's recache flags.
//!
//! [`Client::get_or_compute`] reads a key with vivify on miss (`N`) and, optionally, a
//! recache threshold (`R`), and lets memcached pick the one caller that recomputes a
//! missing, stale or soon-expiring value: the caller whose read carries the win flag
//! (`W`). Everyone else sees `Z` (already won) and serves the value there is (a stale
//! one included) or, when there is none (the empty placeholder `N` created), polls
//! with backoff until the winner's value lands. The semantics of each flag, as checked
//! against memcached 1.6.18, are in `docs/design.md` ("Cache-stampede protection").

use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Client, GetOptions, Item, Protocol, StoreOptions, StoreOutcome};
use crate::protocol::{Command, StoreMode};
use crate::{Error, Expiry};

/// Options of [`Client::get_or_compute`].
///
/// ```
/// use memkeep::{ComputeOptions, Expiry};
/// use std::time::Duration;
///
/// let options = ComputeOptions {
///     expiry: Expiry::In(Duration::from_secs(300)),
///     recache_below: Some(Duration::from_secs(30)),
///     ..ComputeOptions::default()
/// };
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComputeOptions {
    /// Expiry of the computed value when it is stored. Default: never.
    pub expiry: Expiry,
    /// Client flags stored with the computed value. Default: 0.
    pub flags: u32,
    /// TTL of the placeholder memcached creates on a miss (meta `N`): how long the
    /// winner has to store its value before another caller may win. A winner that is
    /// dropped or whose computation fails never holds the others up longer than this.
    /// Rounded up to whole seconds, at least 1 s. Default: 10 s.
    pub placeholder_ttl: Duration,
    /// Early recache (meta `R`): a hit whose remaining TTL is below this wins the
    /// right to refresh the value; that caller gets the current value at once and the
    /// value is recomputed in the background. Must be shorter than `expiry`, or every
    /// read right after a store wins. `None` (the default): values are recomputed only
    /// once they expired or were invalidated.
    pub recache_below: Option<Duration>,
    /// Serve a stale value (one marked by [`Client::invalidate`]) while the winner
    /// recomputes it. When false, callers wait for the fresh value as they do when
    /// there is no value at all. Default: true.
    pub serve_stale: bool,
    /// How long a caller waits, polling, for another caller's value when there is
    /// nothing to serve, before failing with [`ComputeError::WaitTimedOut`]. Keep it
    /// above `placeholder_ttl`: a caller polling after the placeholder expired wins
    /// and computes itself. Default: 15 s.
    pub max_wait: Duration,
    /// First pause between polls while waiting; doubles up to `poll_max`, each
    /// jittered down by up to half so waiting callers spread out. Default: 5 ms.
    pub poll_min: Duration,
    /// Longest pause between polls. Default: 200 ms.
    pub poll_max: Duration,
}

impl Default for ComputeOptions {
    fn default() -> Self {
        Self {
            expiry: Expiry::Never,
            flags: 0,
            placeholder_ttl: Duration::from_secs(10),
            recache_below: None,
            serve_stale: true,
            max_wait: Duration::from_secs(15),
            poll_min: Duration::from_millis(5),
            poll_max: Duration::from_millis(200),
        }
    }
}

/// A value returned by [`Client::get_or_compute`], with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computed {
    /// The value.
    pub value: Bytes,
    /// Where it came from.
    pub source: ComputeSource,
}

/// Where a [`Computed`] value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ComputeSource {
    /// A hit: the cached value, served as it was (another caller may be refreshing it
    /// early).
    Hit,
    /// This caller won (`W`) and computed the value (then stored it).
    Computed,
    /// A stale value (`X`, [`Client::invalidate`]) served while another caller
    /// recomputes it.
    Stale,
    /// There was nothing to serve; this caller waited for the winner's value.
    Awaited,
    /// A hit that won the early recache (`W` from the recache threshold): the current
    /// value, while a background task recomputes and stores the next one.
    Refreshing,
}

/// Why [`Client::get_or_compute`] returned no value.
#[derive(Debug)]
#[non_exhaustive]
pub enum ComputeError<E> {
    /// This caller won and its computation failed. The right to recompute was handed
    /// back (the item re-marked stale), so the next reader wins.
    Compute(E),
    /// Reading the cache failed (or the client speaks the text protocol:
    /// [`Error::MetaProtocolRequired`]).
    Cache(Error),
    /// Another caller was computing the value and none appeared within
    /// [`ComputeOptions::max_wait`].
    WaitTimedOut {
        /// How long this caller waited.
        waited: Duration,
    },
}

impl<E: fmt::Display> fmt::Display for ComputeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComputeError::Compute(e) => write!(f, "computing the value failed: {e}"),
            ComputeError::Cache(e) => write!(f, "cache: {e}"),
            ComputeError::WaitTimedOut { waited } => write!(
                f,
                "no value after waiting {waited:?} for another caller to compute it"
            ),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ComputeError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ComputeError::Compute(e) => Some(e),
            ComputeError::Cache(e) => Some(e),
            ComputeError::WaitTimedOut { .. } => None,
        }
    }
}

/// What a read tells this caller to do.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Serve this value (stale or not).
    Serve { value: Bytes, stale: bool },
    /// Compute now and store with this CAS token.
    Win { cas: Option<u64> },
    /// Serve this value and refresh it in the background.
    Refresh { value: Bytes, cas: Option<u64> },
    /// Nothing to serve yet: poll again.
    Wait,
}

/// Reads an item fetched with vivify on miss (and maybe a recache threshold).
///
/// memcached's placeholder is an empty item that carries `W` or `Z` and no `X` unless
/// it was invalidated; an empty value with either flag is read as the placeholder, so a
/// computed value that is itself empty is not served while a recompute is under way
/// (callers wait for the new one instead).
fn decide(item: Option<Item>, serve_stale: bool) -> Decision {
    let Some(item) = item else {
        // A miss despite `N`: a server or proxy that does not vivify. Compute and
        // store unconditionally.
        return Decision::Win { cas: None };
    };
    let flags = item.recache;
    let placeholder = item.value.is_empty() && (flags.win || flags.already_won);
    if flags.win {
        if flags.stale || placeholder {
            Decision::Win { cas: item.cas }
        } else {
            Decision::Refresh {
                value: item.value,
                cas: item.cas,
            }
        }
    } else if placeholder || (flags.stale && !serve_stale) {
        Decision::Wait
    } else {
        Decision::Serve {
            value: item.value,
            stale: flags.stale,
        }
    }
}

/// Hands the win back if the winner goes away without storing: dropped (its future
/// cancelled) or failed. Re-marking the item stale (`md <key> I C<cas>`, only if
/// nobody stored since) gives it a new win flag for the next reader; without it, the
/// others wait until the placeholder's TTL ends. Best effort: spawned on the current
/// runtime from `drop`, silently skipped without one.
struct WinGuard {
    client: Client,
    key: Vec<u8>,
    cas: Option<u64>,
}

impl WinGuard {
    fn disarm(mut self) {
        self.cas = None;
    }
}

impl Drop for WinGuard {
    fn drop(&mut self) {
        let Some(cas) = self.cas.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let key = std::mem::take(&mut self.key);
        runtime.spawn(async move {
            let cmd = Command::Invalidate {
                key: &key,
                exptime: None,
                cas: Some(cas),
            };
            let released = client.keyed(&key, cmd, crate::protocol::outcome::delete);
            if let Err(e) = released.await {
                tracing::debug!(error = %e, "handing back a recache win failed");
            }
        });
    }
}

impl Client {
    /// Reads `key`, computing and storing its value with `compute` when it is missing,
    /// stale or (with [`ComputeOptions::recache_below`]) about to expire, such that
    /// however many callers ask at once, only one of them computes it: protection
    /// against a cache stampede, built on the meta protocol's recache flags (memcached
    /// decides the winner atomically, across every client process).
    ///
    /// - A fresh hit is returned ([`ComputeSource::Hit`]).
    /// - On a miss memcached creates an empty placeholder (meta `N`, living
    ///   [`ComputeOptions::placeholder_ttl`]) and gives exactly one caller the win flag
    ///   (`W`): it runs `compute`, stores the value with the CAS token it won (so a value
    ///   computed before a later [`Client::invalidate`] never overwrites it) and returns
    ///   it ([`ComputeSource::Computed`]).
    /// - Callers that lost (`Z`) serve the stale value if there is one
    ///   ([`ComputeSource::Stale`], after [`Client::invalidate`]) or else poll with backoff until
    ///   the winner's value appears ([`ComputeSource::Awaited`]), for at most
    ///   [`ComputeOptions::max_wait`].
    /// - A hit that wins the early recache returns the current value at once
    ///   ([`ComputeSource::Refreshing`]) and recomputes it in a task spawned on the current
    ///   tokio runtime; that is why `compute` must be `Send + 'static`.
    ///
    /// Cancellation safety: a winner that is dropped, or whose `compute` fails, hands
    /// the win back (re-marks the item stale, so the next reader wins) from a spawned
    /// task; should that fail too (node unreachable, no runtime), waiting callers poll
    /// with vivify on miss and one of them wins once the placeholder's TTL ends. No
    /// caller waits longer than `max_wait`, and none longer than the placeholder's TTL
    /// plus one poll interval for want of a live winner. (A dropped winner of a stale
    /// item whose hand-back fails leaves others serving the stale value until the item
    /// expires: give [`Client::invalidate`] a stale TTL.) Any meta read takes the win of
    /// an invalidated item, a plain [`Client::get`] included: read keys protected this
    /// way only through `get_or_compute`, or a plain read of an invalidated key leaves
    /// it stale, served and never recomputed until it expires.
    ///
    /// Routing, failure policy and timeouts are those of every keyed operation (each
    /// read and store is one). Needs the meta protocol: in text mode the call fails with
    /// [`ComputeError::Cache`]`(`[`Error::MetaProtocolRequired`]`)` and `compute` is not
    /// run. The placeholder is told from a value by being empty, so an empty computed
    /// value is not served while a recompute is under way.
    ///
    /// ```no_run
    /// # async fn demo(client: memkeep::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use memkeep::{ComputeOptions, Expiry};
    /// use std::time::Duration;
    ///
    /// let options = ComputeOptions {
    ///     expiry: Expiry::In(Duration::from_secs(300)),
    ///     recache_below: Some(Duration::from_secs(30)),
    ///     ..ComputeOptions::default()
    /// };
    /// let report = client
    ///     .get_or_compute("report:today", &options, || async {
    ///         // An expensive query, run by one caller at a time.
    ///         Ok::<_, std::io::Error>("42 orders".to_string())
    ///     })
    ///     .await?;
    /// println!("{:?} ({:?})", report.value, report.source);
    /// # Ok(()) }
    /// ```
    pub async fn get_or_compute<F, Fut, V, E>(
        &self,
        key: impl AsRef<[u8]>,
        options: &ComputeOptions,
        compute: F,
    ) -> Result<Computed, ComputeError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        V: Into<Bytes> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let key = key.as_ref();
        if self.inner.protocol != Protocol::Meta {
            return Err(ComputeError::Cache(Error::MetaProtocolRequired(
                "get_or_compute",
            )));
        }
        let read = GetOptions {
            vivify_on_miss: Some(options.placeholder_ttl),
            recache_below: options.recache_below,
            ..GetOptions::default()
        };
        let started = Instant::now();
        let mut pause = options.poll_min;
        let mut waited = false;
        loop {
            let item = self
                .get_with(key, read)
                .await
                .map_err(ComputeError::Cache)?;
            match decide(item, options.serve_stale) {
                Decision::Serve { value, stale } => {
                    let source = match (stale, waited) {
                        (true, _) => ComputeSource::Stale,
                        (false, true) => ComputeSource::Awaited,
                        (false, false) => ComputeSource::Hit,
                    };
                    return Ok(Computed { value, source });
                }
                Decision::Win { cas } => {
                    let guard = WinGuard {
                        client: self.clone(),
                        key: key.to_vec(),
                        cas,
                    };
                    let value: Bytes = match compute().await {
                        Ok(value) => value.into(),
                        // The guard hands the win back as it drops.
                        Err(e) => return Err(ComputeError::Compute(e)),
                    };
                    self.store_won(key, &value, cas, options).await;
                    guard.disarm();
                    return Ok(Computed {
                        value,
                        source: ComputeSource::Computed,
                    });
                }
                Decision::Refresh { value, cas } => {
                    let client = self.clone();
                    let owned_key = key.to_vec();
                    let options = *options;
                    tokio::spawn(async move {
                        match compute().await {
                            Ok(next) => {
                                let next: Bytes = next.into();
                                client.store_won(&owned_key, &next, cas, &options).await;
                            }
                            Err(e) => tracing::warn!(error = %e, "early recache failed"),
                        }
                    });
                    return Ok(Computed {
                        value,
                        source: ComputeSource::Refreshing,
                    });
                }
                Decision::Wait => {
                    let elapsed = started.elapsed();
                    let Some(left) = options
                        .max_wait
                        .checked_sub(elapsed)
                        .filter(|d| !d.is_zero())
                    else {
                        return Err(ComputeError::WaitTimedOut { waited: elapsed });
                    };
                    tokio::time::sleep(jittered(pause).min(left)).await;
                    pause = pause
                        .saturating_mul(2)
                        .min(options.poll_max.max(options.poll_min));
                    waited = true;
                }
            }
        }
    }

    /// Stores a value this caller won the right to recompute: with the CAS token it
    /// won, so a store or an invalidation that came after the win is not overwritten;
    /// when the placeholder expired meanwhile, only if the key is still absent. A
    /// failure is logged, not returned: the caller has its value either way.
    async fn store_won(
        &self,
        key: &[u8],
        value: &[u8],
        cas: Option<u64>,
        options: &ComputeOptions,
    ) {
        let store = |cas| StoreOptions {
            flags: options.flags,
            expiry: options.expiry,
            cas,
        };
        let outcome = match self.store(StoreMode::Set, key, value, store(cas)).await {
            Ok(StoreOutcome::NotFound) => self.store(StoreMode::Add, key, value, store(None)).await,
            other => other,
        };
        match outcome {
            Ok(StoreOutcome::Stored) => {}
            Ok(other) => {
                tracing::debug!(
                    ?other,
                    "recomputed value not stored: the item changed since the win"
                )
            }
            Err(e) => tracing::warn!(error = %e, "storing a recomputed value failed"),
        }
    }
}

/// `pause` less a random part of up to half of it.
fn jittered(pause: Duration) -> Duration {
    let half = pause / 2;
    let random = getrandom::u32().unwrap_or(0);
    let cut = half.mul_f64(f64::from(random) / f64::from(u32::MAX));
    pause.saturating_sub(cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecacheFlags;

    fn item(value: &'static str, win: bool, already_won: bool, stale: bool) -> Option<Item> {
        Some(Item {
            value: Bytes::from_static(value.as_bytes()),
            flags: 0,
            cas: Some(7),
            recache: RecacheFlags {
                win,
                already_won,
                stale,
            },
        })
    }

    #[test]
    fn each_flag_combination_memcached_sends_is_read_as_the_protocol_means() {
        let serve = |v: &'static str, stale| Decision::Serve {
            value: Bytes::from_static(v.as_bytes()),
            stale,
        };
        // Plain hit.
        assert_eq!(
            decide(item("v", false, false, false), true),
            serve("v", false)
        );
        // Placeholder won (N on a miss) / seen by others.
        assert_eq!(
            decide(item("", true, false, false), true),
            Decision::Win { cas: Some(7) }
        );
        assert_eq!(decide(item("", false, true, false), true), Decision::Wait);
        // Invalidated item won / seen by others, served stale or not.
        assert_eq!(
            decide(item("old", true, false, true), true),
            Decision::Win { cas: Some(7) }
        );
        assert_eq!(
            decide(item("old", false, true, true), true),
            serve("old", true)
        );
        assert_eq!(
            decide(item("old", false, true, true), false),
            Decision::Wait
        );
        // An invalidated placeholder: nothing to serve.
        assert_eq!(decide(item("", false, true, true), true), Decision::Wait);
        // Early recache win (R) on a fresh value, and the hits after it.
        assert_eq!(
            decide(item("v", true, false, false), true),
            Decision::Refresh {
                value: Bytes::from_static(b"v"),
                cas: Some(7)
            }
        );
        assert_eq!(
            decide(item("v", false, true, false), true),
            serve("v", false)
        );
        // No placeholder at all.
        assert_eq!(decide(None, true), Decision::Win { cas: None });
    }

    #[test]
    fn jitter_stays_within_half_the_pause() {
        for _ in 0..100 {
            let p = jittered(Duration::from_millis(100));
            assert!(p >= Duration::from_millis(50) && p <= Duration::from_millis(100));
        }
    }
}
