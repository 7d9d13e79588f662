//! The replication endpoint of one instance: a TCP listener that keeps the session
//! copies other instances (and this one) give it, in a bounded in-memory cache.
//!
//! # Wire protocol, version 1 (`memkeep-peer/1`)
//!
//! The subset of memcached's protocol that the session store sends through the crate's
//! own [`Client`](crate::Client), and nothing else:
//!
//! * the connection starts with the login of memcached's text protocol (`-Y`): a `set`
//!   whose data is `<user> <secret>`; the user names the protocol version
//!   ([`PEER_PROTOCOL_USER`]) and the secret is the configured `peer_secret`. Anything
//!   else first, a wrong secret, or another protocol version gets a `CLIENT_ERROR` and
//!   the connection is closed;
//! * then `version` (answers `VERSION memkeep-peer/1`), `mn`, and the meta commands
//!   `mg <key> [v] [f] [c] [T<s>] [q] [b] [O<n>]`, `ms <key> <len> [F<n>] [T<s>] [C<n>]
//!   [M<S|E|A|P|R>] [q] [b] [O<n>]`, `md <key> [C<n>] [q] [b] [O<n>]` with memcached's
//!   semantics (CAS tokens, `add`, `append`, expiry `T`: seconds, `0` never, negative
//!   expired at once, over 30 days a unix time), and the text multi-get `get`/`gets
//!   <key>...` (up to 64 keys; the client sends it for `get_many`);
//! * anything else (an unknown command or flag, a line over [`MAX_LINE`] bytes, a key
//!   over 250 bytes, a data block not ended by CRLF) gets a `CLIENT_ERROR` and the
//!   connection is closed; so is a value over the configured item size, answered
//!   `SERVER_ERROR object too large for cache` before its data is read.
//!
//! The cache is moka's: bounded in bytes (key + value + a fixed overhead per entry),
//! every entry expiring with the TTL it was written with; entries pushed out by the
//! bound are counted (`evictions`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::Cache;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The login user that names the peer protocol version.
pub const PEER_PROTOCOL_USER: &str = "memkeep-peer-v1";

/// What `version` answers.
pub const PEER_PROTOCOL_VERSION: &str = "memkeep-peer/1";

/// The longest command line accepted, CRLF included.
pub const MAX_LINE: usize = 2048;

/// How long a connection may take to log in: one that has not by then is answered
/// `CLIENT_ERROR login timed out`, closed and counted as refused (a peer logs in with its
/// first write, so only a client that is not a peer waits that long).
pub const LOGIN_DEADLINE: Duration = Duration::from_secs(10);

/// Limits on an endpoint's connections. Past either, room is made by closing the
/// oldest connection that has not logged in yet (answered `SERVER_ERROR too many
/// connections not logged in`): a peer logs in with its first bytes, so a flood of
/// connections that never log in can't keep a peer out; when every connection is logged
/// in, a new one is answered `SERVER_ERROR too many connections` and closed. Both are
/// counted in [`PeerEndpointStats::connections_over_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections that have not logged in yet, at once (each lasts at most
    /// [`LOGIN_DEADLINE`]).
    pub max_pending_logins: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_logins: DEFAULT_MAX_PENDING_LOGINS,
        }
    }
}

/// The default of [`ConnectionLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// The default of [`ConnectionLimits::max_pending_logins`].
pub const DEFAULT_MAX_PENDING_LOGINS: usize = 32;

/// Lock stripes serializing changes of the cache's items.
const LOCK_STRIPES: usize = 64;

/// The longest key (memcached's limit).
const MAX_KEY: usize = 250;

/// Most keys in one text `get`.
const MAX_MULTI_GET: usize = 64;

/// Bytes counted per entry beyond its key and value (bookkeeping).
const ENTRY_OVERHEAD: usize = 64;

/// memcached's boundary between relative and absolute expiry times.
const RELATIVE_LIMIT: i64 = 30 * 24 * 3600;

/// One stored item.
#[derive(Clone, Debug)]
pub(super) struct Item {
    pub(super) value: Bytes,
    pub(super) flags: u32,
    pub(super) cas: u64,
    ttl: Option<Duration>,
}

/// The outcome of a storage or removal command (the meta protocol's status codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    /// `HD`: stored, or removed.
    Done,
    /// `NS`: the mode's condition failed (`add` of a present key, `append` to a missing one).
    NotStored,
    /// `EX`: the CAS token did not match.
    Exists,
    /// `NF`: no such key (a CAS write or a removal).
    NotFound,
}

impl Status {
    fn code(self) -> &'static str {
        match self {
            Status::Done => "HD",
            Status::NotStored => "NS",
            Status::Exists => "EX",
            Status::NotFound => "NF",
        }
    }
}

struct ItemExpiry;

impl moka::Expiry<Vec<u8>, Item> for ItemExpiry {
    fn expire_after_create(&self, _: &Vec<u8>, v: &Item, _: Instant) -> Option<Duration> {
        v.ttl
    }

    fn expire_after_update(
        &self,
        _: &Vec<u8>,
        v: &Item,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        v.ttl
    }
}

/// Counters of an endpoint.
#[derive(Debug, Default)]
struct Counters {
    evictions: AtomicU64,
    expirations: AtomicU64,
    refused: AtomicU64,
    protocol_errors: AtomicU64,
    commands: AtomicU64,
    in_process: AtomicU64,
    open: AtomicU64,
    pending_logins: AtomicU64,
    over_limit: AtomicU64,
    /// Connections evicted whose task has not closed them yet.
    evicting: AtomicU64,
}

/// A snapshot of an endpoint's state and counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerEndpointStats {
    /// Entries held (after pending maintenance).
    pub entries: u64,
    /// Bytes counted against the memory bound.
    pub bytes: u64,
    /// The memory bound.
    pub capacity_bytes: u64,
    /// Entries pushed out by the memory bound.
    pub evictions: u64,
    /// Entries that expired.
    pub expirations: u64,
    /// Connections refused: no login, wrong secret, other protocol version.
    pub refused_connections: u64,
    /// Connections closed for a command or line outside the protocol.
    pub protocol_errors: u64,
    /// Commands served (over the network and in process).
    pub commands: u64,
    /// Of `commands`, those this instance's own session store ran in process on its own
    /// copies (no socket, no protocol encoding).
    pub in_process_commands: u64,
    /// Connections open now.
    pub open_connections: u64,
    /// Of `open_connections`, those that have not logged in yet.
    pub pending_logins: u64,
    /// Connections closed because a [`ConnectionLimits`] bound was reached (the oldest
    /// not logged in, or a new one when every connection was logged in).
    pub connections_over_limit: u64,
}

pub(super) struct Shared {
    cache: Cache<Vec<u8>, Item>,
    counters: Arc<Counters>,
    secret: String,
    max_value: usize,
    next_cas: AtomicU64,
    capacity: u64,
    /// Serializes the changes of keys with the same stripe (see `Shared::update`).
    stripes: Box<[std::sync::Mutex<()>]>,
}

/// A running replication endpoint. Dropping it stops the listener and closes every
/// connection (what a killed instance's peers see).
pub struct PeerEndpoint {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _shutdown: watch::Sender<()>,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PeerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerEndpoint")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for PeerEndpoint {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl PeerEndpoint {
    /// Binds `addr` and serves the peer protocol (must run inside a tokio runtime), with
    /// the default [`ConnectionLimits`]. `secret`: the shared secret every peer logs in
    /// with; `capacity_bytes`: the memory bound; `max_value`: the largest value accepted.
    pub fn bind(
        addr: &str,
        secret: &str,
        capacity_bytes: u64,
        max_value: usize,
    ) -> std::io::Result<PeerEndpoint> {
        Self::bind_with_limits(
            addr,
            secret,
            capacity_bytes,
            max_value,
            ConnectionLimits::default(),
        )
    }

    /// [`PeerEndpoint::bind`] with the given connection limits (each at least 1).
    pub fn bind_with_limits(
        addr: &str,
        secret: &str,
        capacity_bytes: u64,
        max_value: usize,
        limits: ConnectionLimits,
    ) -> std::io::Result<PeerEndpoint> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let local = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let listener_counters = Arc::clone(&counters);
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|k: &Vec<u8>, v: &Item| {
                u32::try_from(k.len() + v.value.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .expire_after(ItemExpiry)
            .eviction_listener(move |_, _, cause| match cause {
                RemovalCause::Size => {
                    listener_counters.evictions.fetch_add(1, Relaxed);
                }
                RemovalCause::Expired => {
                    listener_counters.expirations.fetch_add(1, Relaxed);
                }
                _ => {}
            })
            .build();
        let shared = Arc::new(Shared {
            cache,
            counters,
            secret: secret.to_owned(),
            max_value,
            next_cas: AtomicU64::new(1),
            capacity: capacity_bytes,
            stripes: (0..LOCK_STRIPES)
                .map(|_| std::sync::Mutex::new(()))
                .collect(),
        });
        let (tx, rx) = watch::channel(());
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared), limits, rx));
        Ok(PeerEndpoint {
            addr: local,
            shared,
            _shutdown: tx,
            accept,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint's state and counters.
    pub fn stats(&self) -> PeerEndpointStats {
        let s = &self.shared;
        s.cache.run_pending_tasks();
        PeerEndpointStats {
            entries: s.cache.entry_count(),
            bytes: s.cache.weighted_size(),
            capacity_bytes: s.capacity,
            evictions: s.counters.evictions.load(Relaxed),
            expirations: s.counters.expirations.load(Relaxed),
            refused_connections: s.counters.refused.load(Relaxed),
            protocol_errors: s.counters.protocol_errors.load(Relaxed),
            commands: s.counters.commands.load(Relaxed),
            in_process_commands: s.counters.in_process.load(Relaxed),
            open_connections: s.counters.open.load(Relaxed),
            pending_logins: s.counters.pending_logins.load(Relaxed),
            connections_over_limit: s.counters.over_limit.load(Relaxed),
        }
    }

    /// This endpoint's copies, for this instance's own session store (in process).
    pub(crate) fn local(&self) -> super::local::LocalCopies {
        super::local::LocalCopies::new(Arc::clone(&self.shared))
    }

    /// True when this endpoint holds an item under `key` (no network; what the local
    /// instance's own copy is).
    pub fn holds(&self, key: &[u8]) -> bool {
        self.shared.cache.contains_key(key)
    }
}

/// A connection's login state, shared with the accept loop (which may evict it while it
/// waits for its login).
#[derive(Default)]
struct Login {
    /// `WAITING`, `DONE` (logged in, or closed) or `EVICTED`.
    state: std::sync::atomic::AtomicU8,
    evict: tokio::sync::Notify,
}

const WAITING: u8 = 0;
const DONE: u8 = 1;
const EVICTED: u8 = 2;

impl Login {
    fn is_waiting(&self) -> bool {
        self.state.load(Relaxed) == WAITING
    }
}

/// One open connection, counted while it lives (and as a pending login until it logs
/// in or is evicted).
struct Slot {
    shared: Arc<Shared>,
    login: Arc<Login>,
}

impl Slot {
    /// Marks the login done; false when the connection was evicted first.
    fn logged_in(&mut self) -> bool {
        match self
            .login
            .state
            .compare_exchange(WAITING, DONE, Relaxed, Relaxed)
        {
            Ok(_) => {
                self.shared.counters.pending_logins.fetch_sub(1, Relaxed);
                true
            }
            Err(state) => state == DONE,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let c = &self.shared.counters;
        match self.login.state.swap(DONE, Relaxed) {
            DONE => {}
            EVICTED => {
                c.pending_logins.fetch_sub(1, Relaxed);
                c.evicting.fetch_sub(1, Relaxed);
            }
            _ => {
                c.pending_logins.fetch_sub(1, Relaxed);
            }
        }
        c.open.fetch_sub(1, Relaxed);
    }
}

/// The connections that may still be waiting for their login, oldest first.
#[derive(Default)]
struct Waiting {
    queue: std::collections::VecDeque<Arc<Login>>,
}

impl Waiting {
    /// Evicts the oldest connection still waiting for its login; false when there is none.
    fn evict_oldest(&mut self, counters: &Counters) -> bool {
        while let Some(login) = self.queue.pop_front() {
            // Counted before the state changes: the slot's drop may follow at once.
            counters.evicting.fetch_add(1, Relaxed);
            if login
                .state
                .compare_exchange(WAITING, EVICTED, Relaxed, Relaxed)
                .is_ok()
            {
                login.evict.notify_one();
                return true;
            }
            counters.evicting.fetch_sub(1, Relaxed);
        }
        false
    }

    fn push(&mut self, login: Arc<Login>, bound: usize) {
        if self.queue.len() >= bound {
            self.queue.retain(|l| l.is_waiting());
        }
        self.queue.push_back(login);
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: ConnectionLimits,
    shutdown: watch::Receiver<()>,
) {
    let mut waiting = Waiting::default();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "peer endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Only this task adds to the counts. A connection evicted here no longer counts
        // (as waiting for its login, or as open) from that moment, though its task may
        // take a moment to close it: each new connection evicts at most one.
        let c = &shared.counters;
        let open = c
            .open
            .load(Relaxed)
            .saturating_sub(c.evicting.load(Relaxed));
        let full = open >= limits.max_connections as u64;
        let waiting_now = waiting.queue.iter().filter(|l| l.is_waiting()).count();
        if full || waiting_now >= limits.max_pending_logins {
            // Room is made by closing the oldest connection still waiting for its login
            // (a peer logs in with its first bytes, so it is never the oldest for long);
            // when every connection is logged in, the new one is refused.
            c.over_limit.fetch_add(1, Relaxed);
            if !waiting.evict_oldest(c) {
                let line = "SERVER_ERROR too many connections\r\n";
                tracing::warn!("peer endpoint: connection refused, every connection is in use");
                // Best effort, without waiting: the connection is closed either way.
                let _ = stream.try_write(line.as_bytes());
                drop(stream);
                continue;
            }
            tracing::warn!(
                "peer endpoint: the oldest connection not logged in was closed to make room"
            );
        }
        c.open.fetch_add(1, Relaxed);
        c.pending_logins.fetch_add(1, Relaxed);
        let login = Arc::new(Login::default());
        waiting.push(Arc::clone(&login), limits.max_connections.saturating_mul(2));
        let mut slot = Slot {
            shared: Arc::clone(&shared),
            login,
        };
        let shared = Arc::clone(&shared);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = serve(stream, &shared, &mut slot) => {}
            }
        });
    }
}

/// Why a connection is closed.
enum Close {
    /// The peer went away or `quit`.
    Done,
    /// Refused: answered with this line, counted.
    Refused(&'static str),
    /// Outside the protocol: answered with this line, counted.
    Protocol(&'static str),
    /// Evicted to make room (counted when evicted): answered with this line.
    OverLimit(&'static str),
}

async fn serve(mut stream: TcpStream, shared: &Shared, slot: &mut Slot) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut authenticated = false;
    let login_deadline = tokio::time::Instant::now() + LOGIN_DEADLINE;
    let close = 'conn: loop {
        // Serve every complete command in the buffer, then write the answers at once.
        loop {
            match next_command(&mut buf, shared.max_value, authenticated) {
                Ok(None) => break,
                Ok(Some(cmd)) => {
                    shared.count_command();
                    match execute(cmd, shared, &mut authenticated, &mut out) {
                        Ok(()) => {}
                        Err(close) => break 'conn close,
                    }
                }
                Err(close) => break 'conn close,
            }
        }
        if authenticated && !slot.logged_in() {
            break Close::OverLimit("SERVER_ERROR too many connections not logged in");
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                break Close::Done;
            }
            out.clear();
        }
        let read = if authenticated {
            stream.read_buf(&mut buf).await
        } else {
            tokio::select! {
                read = tokio::time::timeout_at(login_deadline, stream.read_buf(&mut buf)) => match read {
                    Ok(read) => read,
                    Err(_) => break Close::Refused("CLIENT_ERROR login timed out"),
                },
                _ = slot.login.evict.notified() => {
                    break Close::OverLimit("SERVER_ERROR too many connections not logged in")
                }
            }
        };
        match read {
            Ok(0) | Err(_) => break Close::Done,
            Ok(_) => {}
        }
    };
    let line = match close {
        Close::Done => None,
        Close::Refused(line) => {
            shared.counters.refused.fetch_add(1, Relaxed);
            Some(line)
        }
        Close::Protocol(line) => {
            shared.counters.protocol_errors.fetch_add(1, Relaxed);
            Some(line)
        }
        Close::OverLimit(line) => Some(line),
    };
    // The answers to the commands before the one that ended the connection (a pipelined
    // `quit`, a refused or malformed command) are sent first, as memcached does.
    if let Some(line) = line {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !out.is_empty() {
        let _ = stream.write_all(&out).await;
    }
    let _ = stream.shutdown().await;
}

/// One parsed command.
#[derive(Debug)]
enum Command {
    Login {
        user: Bytes,
        secret: Bytes,
    },
    Version,
    Noop,
    Quit,
    Get(Meta),
    /// Text `get`/`gets` of several keys (the client's multi-get): the keys as sent,
    /// and whether CAS tokens are asked for.
    GetMany(Vec<Bytes>, bool),
    Set(Meta, Bytes),
    Delete(Meta),
}

/// A meta command's key and flags.
#[derive(Debug, Default)]
struct Meta {
    key: Vec<u8>,
    value: bool,
    client_flags: bool,
    cas: bool,
    quiet: bool,
    opaque: Option<Bytes>,
    ttl: Option<i64>,
    set_flags: u32,
    compare: Option<u64>,
    mode: u8,
}

/// Parses the next complete command of `buf`, consuming it. `Ok(None)`: incomplete.
fn next_command(
    buf: &mut BytesMut,
    max_value: usize,
    authenticated: bool,
) -> Result<Option<Command>, Close> {
    let Some(nl) = buf.iter().take(MAX_LINE).position(|&b| b == b'\n') else {
        if buf.len() >= MAX_LINE {
            return Err(Close::Protocol("CLIENT_ERROR line too long"));
        }
        return Ok(None);
    };
    if nl == 0 || buf[nl - 1] != b'\r' {
        return Err(Close::Protocol("CLIENT_ERROR line not ended by CRLF"));
    }
    let line = Bytes::copy_from_slice(&buf[..nl - 1]);
    let mut tokens = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .map(|t| line.slice_ref(t));
    let verb = tokens.next().unwrap_or_default();
    let rest: Vec<Bytes> = tokens.collect();
    if !authenticated {
        // Only the login: `set <key> <flags> <exptime> <len>` and its data.
        if verb.as_ref() != b"set" || rest.len() != 4 {
            return Err(Close::Refused("CLIENT_ERROR unauthenticated"));
        }
        let len = parse::<usize>(&rest[3]).filter(|&l| l <= 512);
        let Some(len) = len else {
            return Err(Close::Refused("CLIENT_ERROR unauthenticated"));
        };
        let Some(data) = take_block(buf, nl + 1, len)? else {
            return Ok(None);
        };
        let Some(space) = data.iter().position(|&b| b == b' ') else {
            return Err(Close::Refused("CLIENT_ERROR authentication failure"));
        };
        return Ok(Some(Command::Login {
            user: data.slice(..space),
            secret: data.slice(space + 1..),
        }));
    }
    let cmd = match verb.as_ref() {
        b"version" if rest.is_empty() => Command::Version,
        b"mn" if rest.is_empty() => Command::Noop,
        b"quit" if rest.is_empty() => Command::Quit,
        b"mg" => Command::Get(meta(&rest, 1, b"vfcqbTOk")?),
        b"get" | b"gets" if !rest.is_empty() && rest.len() <= MAX_MULTI_GET => {
            if rest
                .iter()
                .any(|k| k.len() > MAX_KEY || k.iter().any(|b| b.is_ascii_control()))
            {
                return Err(Close::Protocol("CLIENT_ERROR bad key"));
            }
            Command::GetMany(rest, verb.as_ref() == b"gets")
        }
        b"md" => Command::Delete(meta(&rest, 1, b"qbOC")?),
        b"ms" => {
            let m = meta(&rest, 2, b"qbOFTCM")?;
            let Some(len) = rest.get(1).and_then(|t| parse::<usize>(t)) else {
                return Err(Close::Protocol("CLIENT_ERROR bad data length"));
            };
            if len > max_value {
                // Refused before its data is read, so a peer can't make this endpoint
                // buffer a huge value (the client refuses such values before sending).
                return Err(Close::Protocol("SERVER_ERROR object too large for cache"));
            }
            let Some(data) = take_block(buf, nl + 1, len)? else {
                return Ok(None);
            };
            return Ok(Some(Command::Set(m, data)));
        }
        _ => return Err(Close::Protocol("CLIENT_ERROR unsupported command")),
    };
    buf.advance(nl + 1);
    Ok(Some(cmd))
}

/// The data block of `len` bytes after a line of `head` bytes, consuming both.
fn take_block(buf: &mut BytesMut, head: usize, len: usize) -> Result<Option<Bytes>, Close> {
    if buf.len() < head + len + 2 {
        return Ok(None);
    }
    if &buf[head + len..head + len + 2] != b"\r\n" {
        return Err(Close::Protocol("CLIENT_ERROR bad data chunk"));
    }
    buf.advance(head);
    let data = buf.split_to(len).freeze();
    buf.advance(2);
    Ok(Some(data))
}

fn parse<T: std::str::FromStr>(t: &[u8]) -> Option<T> {
    std::str::from_utf8(t).ok()?.parse().ok()
}

/// Parses a meta command's key and flags (`allowed`: the flag letters accepted;
/// `positional`: tokens before the flags, the key first).
fn meta(tokens: &[Bytes], positional: usize, allowed: &[u8]) -> Result<Meta, Close> {
    let bad = Close::Protocol("CLIENT_ERROR bad command line format");
    let key = tokens.first().ok_or(bad)?;
    if key.len() > MAX_KEY * 2 || key.iter().any(|b| b.is_ascii_control()) {
        return Err(Close::Protocol("CLIENT_ERROR bad key"));
    }
    let mut m = Meta {
        key: key.to_vec(),
        mode: b'S',
        ..Meta::default()
    };
    let mut base64 = false;
    for t in tokens.iter().skip(positional) {
        let (flag, value) = (t[0], t.slice(1..));
        if !allowed.contains(&flag) {
            return Err(Close::Protocol("CLIENT_ERROR unsupported flag"));
        }
        let number = || parse::<u64>(&value);
        match flag {
            b'v' => m.value = true,
            b'f' => m.client_flags = true,
            b'c' => m.cas = true,
            b'q' => m.quiet = true,
            b'k' => {}
            b'b' => base64 = true,
            b'O' if value.len() <= 32 => m.opaque = Some(value),
            b'T' => {
                m.ttl = Some(parse::<i64>(&value).ok_or(Close::Protocol(
                    "CLIENT_ERROR bad token in command line format",
                ))?)
            }
            b'F' => {
                m.set_flags =
                    number()
                        .and_then(|f| u32::try_from(f).ok())
                        .ok_or(Close::Protocol(
                            "CLIENT_ERROR bad token in command line format",
                        ))?
            }
            b'C' => {
                m.compare = Some(number().ok_or(Close::Protocol(
                    "CLIENT_ERROR bad token in command line format",
                ))?)
            }
            b'M' if value.len() == 1 && b"SEAPR".contains(&value[0]) => m.mode = value[0],
            _ => {
                return Err(Close::Protocol(
                    "CLIENT_ERROR bad token in command line format",
                ))
            }
        }
    }
    if !base64 && m.key.len() > MAX_KEY {
        return Err(Close::Protocol("CLIENT_ERROR bad key"));
    }
    if base64 {
        // A base64 key is kept in its encoded form, marked so it never equals a plain one.
        m.key.insert(0, 0);
    }
    Ok(m)
}

/// The TTL of memcached expiry `t` (`None`: never expires; `Some(ZERO)`: expired).
fn ttl_of(t: i64) -> Option<Duration> {
    if t == 0 {
        return None;
    }
    if t < 0 {
        return Some(Duration::ZERO);
    }
    if t <= RELATIVE_LIMIT {
        return Some(Duration::from_secs(t.unsigned_abs()));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Some(Duration::from_secs(t.unsigned_abs().saturating_sub(now)))
}

fn respond(out: &mut BytesMut, status: &str, m: &Meta, extra: &[(u8, u64)]) {
    out.extend_from_slice(status.as_bytes());
    for (flag, v) in extra {
        out.extend_from_slice(&[b' ', *flag]);
        out.extend_from_slice(v.to_string().as_bytes());
    }
    if let Some(o) = &m.opaque {
        out.extend_from_slice(b" O");
        out.extend_from_slice(o);
    }
    out.extend_from_slice(b"\r\n");
}

/// Constant-time comparison of two secrets (no early exit on the first difference).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

fn execute(
    cmd: Command,
    shared: &Shared,
    authenticated: &mut bool,
    out: &mut BytesMut,
) -> Result<(), Close> {
    match cmd {
        Command::Login { user, secret } => {
            if user.as_ref() != PEER_PROTOCOL_USER.as_bytes() {
                return Err(Close::Refused(
                    "CLIENT_ERROR peer protocol version not supported (this endpoint speaks memkeep-peer-v1)",
                ));
            }
            if !same_secret(&secret, shared.secret.as_bytes()) {
                return Err(Close::Refused("CLIENT_ERROR authentication failure"));
            }
            *authenticated = true;
            out.extend_from_slice(b"STORED\r\n");
        }
        Command::Version => {
            out.extend_from_slice(b"VERSION ");
            out.extend_from_slice(PEER_PROTOCOL_VERSION.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Command::Noop => out.extend_from_slice(b"MN\r\n"),
        Command::Quit => return Err(Close::Done),
        Command::Get(m) => get(shared, &m, out),
        Command::GetMany(keys, with_cas) => {
            for key in keys {
                let Some(item) = shared.lookup(&key, None) else {
                    continue;
                };
                let cas = if with_cas {
                    format!(" {}", item.cas)
                } else {
                    String::new()
                };
                let size = item.value.len();
                out.extend_from_slice(b"VALUE ");
                out.extend_from_slice(&key);
                out.extend_from_slice(format!(" {} {size}{cas}\r\n", item.flags).as_bytes());
                out.extend_from_slice(&item.value);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"END\r\n");
        }
        Command::Set(m, data) => set(shared, &m, data, out),
        Command::Delete(m) => {
            let status = shared.remove(&m.key, m.compare);
            if !(m.quiet && status == Status::Done) {
                respond(out, status.code(), &m, &[]);
            }
        }
    }
    Ok(())
}

impl Shared {
    /// Replaces the item under `key` by what `f` makes of it, atomically with respect to
    /// every other change made here (a lock stripe per key hash serializes them: the
    /// cache's own per-key compute costs more than the whole rest of a command).
    fn update(&self, key: &[u8], f: impl FnOnce(Option<Item>) -> Op<Item>) {
        let stripe = twox_hash::XxHash3_64::oneshot(key) as usize % self.stripes.len();
        let _serialized = self.stripes[stripe]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match f(self.cache.get(key)) {
            Op::Nop => {}
            Op::Put(item) => self.cache.insert(key.to_vec(), item),
            Op::Remove => self.cache.invalidate(key),
        }
    }

    /// The item under `key`; with `touch` (a memcached expiry), the same item given a new
    /// TTL (an expiry in the past removes it, as memcached does, but this read still
    /// returns it).
    pub(super) fn lookup(&self, key: &[u8], touch: Option<i64>) -> Option<Item> {
        let Some(t) = touch else {
            return self.cache.get(key);
        };
        let mut found = None;
        self.update(key, |current| match current {
            None => Op::Nop,
            Some(mut item) => {
                item.ttl = ttl_of(t);
                found = Some(item.clone());
                if item.ttl == Some(Duration::ZERO) {
                    Op::Remove
                } else {
                    Op::Put(item)
                }
            }
        });
        found
    }

    /// Stores `data` under `key` with memcached's meta semantics: `mode` is the `M` flag
    /// (`S` set, `E` add, `R` replace, `A` append, `P` prepend), `exptime` memcached's
    /// expiry, `compare` the CAS token the item must still have. Every store gives the
    /// item a new CAS token, returned with [`Status::Done`].
    pub(super) fn write(
        &self,
        key: &[u8],
        mode: u8,
        data: Bytes,
        flags: u32,
        exptime: i64,
        compare: Option<u64>,
    ) -> (Status, u64) {
        let cas = self.next_cas.fetch_add(1, Relaxed);
        let ttl = ttl_of(exptime);
        let mut status = Status::Done;
        self.update(key, |current| {
            match (&current, compare) {
                (None, Some(_)) if mode == b'S' => {
                    status = Status::NotFound;
                    return Op::Nop;
                }
                (Some(c), Some(want)) if c.cas != want => {
                    status = Status::Exists;
                    return Op::Nop;
                }
                _ => {}
            }
            let value = match (mode, current) {
                (b'E', Some(_)) | (b'R' | b'A' | b'P', None) => {
                    status = Status::NotStored;
                    return Op::Nop;
                }
                (b'A', Some(c)) => {
                    let mut v = BytesMut::with_capacity(c.value.len() + data.len());
                    v.extend_from_slice(&c.value);
                    v.extend_from_slice(&data);
                    return Op::Put(Item {
                        value: v.freeze(),
                        cas,
                        ..c
                    });
                }
                (b'P', Some(c)) => {
                    let mut v = BytesMut::with_capacity(c.value.len() + data.len());
                    v.extend_from_slice(&data);
                    v.extend_from_slice(&c.value);
                    return Op::Put(Item {
                        value: v.freeze(),
                        cas,
                        ..c
                    });
                }
                _ => data.clone(),
            };
            if ttl == Some(Duration::ZERO) {
                // Stored and expired at once.
                return Op::Remove;
            }
            Op::Put(Item {
                value,
                flags,
                cas,
                ttl,
            })
        });
        (status, cas)
    }

    /// Removes `key` (only while its CAS token is `compare`, when given).
    pub(super) fn remove(&self, key: &[u8], compare: Option<u64>) -> Status {
        let mut status = Status::NotFound;
        self.update(key, |current| match current {
            None => Op::Nop,
            Some(e) if compare.is_some_and(|c| c != e.cas) => {
                status = Status::Exists;
                Op::Nop
            }
            Some(_) => {
                status = Status::Done;
                Op::Remove
            }
        });
        status
    }

    /// Counts one command served.
    pub(super) fn count_command(&self) {
        self.counters.commands.fetch_add(1, Relaxed);
    }

    /// Counts one command run in process.
    pub(super) fn count_in_process(&self) {
        self.counters.in_process.fetch_add(1, Relaxed);
    }

    /// The largest value accepted.
    pub(super) fn max_value(&self) -> usize {
        self.max_value
    }
}

fn get(shared: &Shared, m: &Meta, out: &mut BytesMut) {
    let Some(item) = shared.lookup(&m.key, m.ttl) else {
        if !m.quiet {
            respond(out, "EN", m, &[]);
        }
        return;
    };
    let mut extra = Vec::with_capacity(2);
    if m.client_flags {
        extra.push((b'f', u64::from(item.flags)));
    }
    if m.cas {
        extra.push((b'c', item.cas));
    }
    if m.value {
        let status = format!("VA {}", item.value.len());
        respond(out, &status, m, &extra);
        out.extend_from_slice(&item.value);
        out.extend_from_slice(b"\r\n");
    } else {
        respond(out, "HD", m, &extra);
    }
}

fn set(shared: &Shared, m: &Meta, data: Bytes, out: &mut BytesMut) {
    let (status, _) = shared.write(
        &m.key,
        m.mode,
        data,
        m.set_flags,
        m.ttl.unwrap_or(0),
        m.compare,
    );
    if !(m.quiet && status == Status::Done) {
        respond(out, status.code(), m, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_follows_memcached() {
        assert_eq!(ttl_of(0), None);
        assert_eq!(ttl_of(-1), Some(Duration::ZERO));
        assert_eq!(ttl_of(30), Some(Duration::from_secs(30)));
        assert_eq!(ttl_of(1), Some(Duration::from_secs(1)));
        // An absolute time in the past is expired.
        assert_eq!(ttl_of(RELATIVE_LIMIT + 1), Some(Duration::ZERO));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abcdef", b"abcdef"));
        assert!(!same_secret(b"abcdef", b"abcdeg"));
        assert!(!same_secret(b"abc", b"abcdef"));
        assert!(!same_secret(b"abcdef", b"abc"));
        assert!(!same_secret(b"", b"a"));
    }

    #[test]
    fn commands_outside_the_subset_are_refused() {
        let cases: [(&[u8], bool); 6] = [
            (b"ms k 99999 T0 MS\r\n", true),
            (b"incr k 1\r\n", true),
            (b"mg k v Zx\r\n", true),
            (b"version\r\n", false),
            (&[b'a'; MAX_LINE + 1], true),
            (b"ms k 3 T0 MS\r\nabcXY", true),
        ];
        for (input, authenticated) in cases {
            let mut buf = BytesMut::from(input);
            let outcome = next_command(&mut buf, 1024, authenticated);
            let refused = if authenticated {
                matches!(outcome, Err(Close::Protocol(_)))
            } else {
                matches!(outcome, Err(Close::Refused(_)))
            };
            assert!(refused, "{:?}", String::from_utf8_lossy(input));
        }
    }
}
