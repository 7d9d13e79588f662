//! A scripted memcached stand-in for fault injection.
//!
//! [`FakeServer`] listens on a free 127.0.0.1 port. By default it behaves like a tiny
//! memcached (text `get`/`gets`/`set`/`delete`/`version`/..., meta `mg`/`ms`/`md`/`mn`/`ma`)
//! so a client's connection handshake and ordinary operations work. [`Rule`]s replace
//! that behaviour for chosen requests: reply with given bytes, stall forever, send
//! half a reply then close, half-close the socket, answer slowly. Every request it
//! reads is recorded, with the connection it came on.
//!
//! Use it only for what a real server can't do; everything else runs against real
//! memcached (see [`super::memcached`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// Longest request line the fake accepts before treating the stream as garbage.
const MAX_LINE: usize = 64 * 1024;
/// Largest data block the fake accepts.
const MAX_DATA: usize = 64 * 1024 * 1024;

/// One request as read from a client: the command line (without CRLF) and, for
/// storage commands, the data block (without its CRLF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Connection number (0 for the first accepted connection).
    pub conn: usize,
    /// The command line, without the trailing CRLF.
    pub line: Vec<u8>,
    /// The data block of `set`/`add`/.../`ms`, without its CRLF.
    pub data: Option<Vec<u8>>,
}

impl Request {
    /// The line as (lossy) UTF-8.
    pub fn line_str(&self) -> String {
        String::from_utf8_lossy(&self.line).into_owned()
    }

    /// The command word (`get`, `mg`, ...).
    pub fn command(&self) -> String {
        self.tokens().into_iter().next().unwrap_or_default()
    }

    /// Whitespace-separated tokens of the line.
    pub fn tokens(&self) -> Vec<String> {
        self.line_str()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// True when the line contains `needle`.
    pub fn contains(&self, needle: &[u8]) -> bool {
        contains(&self.line, needle)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// What the fake does with a request (or, for [`Match::Accept`], a new connection).
#[derive(Clone, Debug)]
pub enum Action {
    /// Answer like memcached would (the built-in emulator).
    Behave,
    /// Answer with exactly these bytes (garbage, a huge length, any canned reply).
    Reply(Vec<u8>),
    /// Never answer this request nor any later one on this connection; keep reading so
    /// the client's writes don't block.
    Stall,
    /// Write these bytes (e.g. half a reply), then close the connection.
    ReplyThenClose(Vec<u8>),
    /// Write these bytes, then shut down the write side (FIN) and keep reading without
    /// ever answering again: a half-closed socket.
    ReplyThenHalfClose(Vec<u8>),
    /// Close the connection without answering.
    Close,
    /// Answer like memcached, but only after this delay.
    Delay(Duration),
    /// Answer with these bytes after this delay.
    DelayReply(Duration, Vec<u8>),
}

impl Action {
    /// Bytes that are no memcached reply in either protocol.
    pub fn garbage() -> Action {
        Action::Reply(b"\x00\xffTHIS IS NOT A MEMCACHED REPLY\x07\r\n".to_vec())
    }
}

/// Which requests a [`Rule`] applies to.
#[derive(Clone, Debug)]
pub enum Match {
    /// Every request.
    Any,
    /// Requests whose line contains these bytes (e.g. a key).
    Contains(Vec<u8>),
    /// Requests whose command word is this (`get`, `mg`, `set`, `ms`, ...).
    Command(String),
    /// Every request on connection number `n`.
    Connection(usize),
    /// A newly accepted connection, before it sends anything (actions: `Close`,
    /// `Reply` as an unsolicited greeting, `ReplyThenClose`, `ReplyThenHalfClose`,
    /// `Stall`).
    Accept,
}

impl Match {
    fn matches(&self, req: &Request) -> bool {
        match self {
            Match::Any => true,
            Match::Contains(n) => req.contains(n),
            Match::Command(c) => req.command() == *c,
            Match::Connection(n) => req.conn == *n,
            Match::Accept => false,
        }
    }
}

/// "Do `action` to requests matching `matches`", optionally only `times` times.
/// Rules are tried in order; the first live match wins; no match means [`Action::Behave`].
#[derive(Clone, Debug)]
pub struct Rule {
    /// Which requests.
    pub matches: Match,
    /// What to do.
    pub action: Action,
    /// How many more times the rule fires (`None`: forever).
    pub remaining: Option<usize>,
}

impl Rule {
    /// A rule that fires forever.
    pub fn new(matches: Match, action: Action) -> Rule {
        Rule {
            matches,
            action,
            remaining: None,
        }
    }

    /// Requests whose line contains `needle` (typically a key).
    pub fn on_key(needle: impl AsRef<[u8]>, action: Action) -> Rule {
        Rule::new(Match::Contains(needle.as_ref().to_vec()), action)
    }

    /// Every request.
    pub fn always(action: Action) -> Rule {
        Rule::new(Match::Any, action)
    }

    /// Limits the rule to `n` firings.
    pub fn times(mut self, n: usize) -> Rule {
        self.remaining = Some(n);
        self
    }

    /// Limits the rule to one firing.
    pub fn once(self) -> Rule {
        self.times(1)
    }
}

#[derive(Clone, Debug)]
struct StoredItem {
    value: Vec<u8>,
    flags: u32,
    cas: u64,
}

impl StoredItem {
    /// An item holding `value` with client `flags` and CAS token `cas`.
    fn new(value: Vec<u8>, flags: u32, cas: u64) -> StoredItem {
        StoredItem { value, flags, cas }
    }

    /// This item with `data` added after its value (`append`) or before it, under the
    /// new CAS token `cas`.
    fn with_data_added(mut self, data: &[u8], append: bool, cas: u64) -> StoredItem {
        if append {
            self.value.extend_from_slice(data);
        } else {
            let mut v = data.to_vec();
            v.extend_from_slice(&self.value);
            self.value = v;
        }
        self.cas = cas;
        self
    }
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    requests: Mutex<Vec<Request>>,
    conns: AtomicUsize,
    store: Mutex<HashMap<Vec<u8>, StoredItem>>,
    next_cas: AtomicU64,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Shared {
    fn action_for(&self, req: &Request) -> Action {
        self.pick(|m| m.matches(req))
    }

    fn accept_action(&self) -> Option<Action> {
        let mut rules = self.rules.lock().unwrap();
        for r in rules.iter_mut() {
            if matches!(r.matches, Match::Accept) && r.remaining != Some(0) {
                if let Some(n) = r.remaining.as_mut() {
                    *n -= 1;
                }
                return Some(r.action.clone());
            }
        }
        None
    }

    fn pick(&self, pred: impl Fn(&Match) -> bool) -> Action {
        let mut rules = self.rules.lock().unwrap();
        for r in rules.iter_mut() {
            if r.remaining != Some(0) && pred(&r.matches) {
                if let Some(n) = r.remaining.as_mut() {
                    *n -= 1;
                }
                return r.action.clone();
            }
        }
        Action::Behave
    }
}

/// A scripted server. Aborts its listener and every connection when dropped.
pub struct FakeServer {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl FakeServer {
    /// A fake that behaves like memcached until rules say otherwise.
    pub async fn start() -> FakeServer {
        Self::with_rules(Vec::new()).await
    }

    /// A fake with these rules from the first connection on.
    pub async fn with_rules(rules: Vec<Rule>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake server on 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake server local addr");
        let shared = Arc::new(Shared {
            rules: Mutex::new(rules),
            next_cas: AtomicU64::new(1),
            ..Shared::default()
        });
        let s = shared.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let conn = s.conns.fetch_add(1, Ordering::SeqCst);
                let s2 = s.clone();
                let h = tokio::spawn(async move { serve(sock, conn, s2).await });
                s.tasks.lock().unwrap().push(h.abort_handle());
            }
        });
        FakeServer {
            addr,
            shared,
            accept_task,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Adds a rule after the existing ones.
    pub fn push_rule(&self, rule: Rule) {
        self.shared.rules.lock().unwrap().push(rule);
    }

    /// Adds a rule before the existing ones.
    pub fn push_rule_first(&self, rule: Rule) {
        self.shared.rules.lock().unwrap().insert(0, rule);
    }

    /// Removes every rule: from now on the fake behaves.
    pub fn clear_rules(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// Every request read so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Requests whose line contains `needle`.
    pub fn requests_containing(&self, needle: impl AsRef<[u8]>) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.contains(needle.as_ref()))
            .collect()
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.conns.load(Ordering::SeqCst)
    }

    /// Closes every open connection (the listener stays).
    pub fn drop_connections(&self) {
        for h in self.shared.tasks.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Stores an item directly in the emulator.
    pub fn preload(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, flags: u32) {
        let cas = self.shared.next_cas.fetch_add(1, Ordering::SeqCst);
        self.shared.store.lock().unwrap().insert(
            key.as_ref().to_vec(),
            StoredItem::new(value.as_ref().to_vec(), flags, cas),
        );
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.drop_connections();
    }
}

/// Where a connection stands after handling a request.
enum Next {
    Continue,
    /// Read and record, never answer.
    Mute,
    Close,
}

async fn serve(mut sock: TcpStream, conn: usize, shared: Arc<Shared>) {
    let mut muted = false;
    if let Some(action) = shared.accept_action() {
        match apply(&mut sock, &shared, None, action).await {
            Next::Continue => {}
            Next::Mute => muted = true,
            Next::Close => return,
        }
    }
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Handle every whole request already buffered.
        loop {
            match parse_request(&buf, conn) {
                Parsed::Incomplete => break,
                Parsed::Garbage => {
                    // The client sent something the fake can't frame: record and drop it.
                    shared.requests.lock().unwrap().push(Request {
                        conn,
                        line: std::mem::take(&mut buf),
                        data: None,
                    });
                    break;
                }
                Parsed::Request(req, used) => {
                    buf.drain(..used);
                    shared.requests.lock().unwrap().push(req.clone());
                    if muted {
                        continue;
                    }
                    let action = shared.action_for(&req);
                    match apply(&mut sock, &shared, Some(&req), action).await {
                        Next::Continue => {}
                        Next::Mute => muted = true,
                        Next::Close => return,
                    }
                }
            }
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn apply(
    sock: &mut TcpStream,
    shared: &Shared,
    req: Option<&Request>,
    action: Action,
) -> Next {
    match action {
        Action::Behave => {
            if let Some(req) = req {
                if req.command() == "quit" {
                    return Next::Close;
                }
                let reply = emulate(shared, req);
                if sock.write_all(&reply).await.is_err() {
                    return Next::Close;
                }
            }
            Next::Continue
        }
        Action::Reply(bytes) => {
            if sock.write_all(&bytes).await.is_err() {
                return Next::Close;
            }
            Next::Continue
        }
        Action::Stall => Next::Mute,
        Action::ReplyThenClose(bytes) => {
            let _ = sock.write_all(&bytes).await;
            let _ = sock.flush().await;
            Next::Close
        }
        Action::ReplyThenHalfClose(bytes) => {
            let _ = sock.write_all(&bytes).await;
            let _ = sock.shutdown().await;
            Next::Mute
        }
        Action::Close => Next::Close,
        Action::Delay(d) => {
            tokio::time::sleep(d).await;
            Box::pin(apply(sock, shared, req, Action::Behave)).await
        }
        Action::DelayReply(d, bytes) => {
            tokio::time::sleep(d).await;
            Box::pin(apply(sock, shared, req, Action::Reply(bytes))).await
        }
    }
}

enum Parsed {
    Incomplete,
    Garbage,
    Request(Request, usize),
}

fn parse_request(buf: &[u8], conn: usize) -> Parsed {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_LINE {
            Parsed::Garbage
        } else {
            Parsed::Incomplete
        };
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let line = buf[..line_end].to_vec();
    let text = String::from_utf8_lossy(&line).into_owned();
    let toks: Vec<&str> = text.split_whitespace().collect();
    let data_len: Option<usize> = match toks.first().copied() {
        Some("set" | "add" | "replace" | "append" | "prepend" | "cas") => {
            toks.get(4).and_then(|t| t.parse().ok())
        }
        Some("ms") => toks.get(2).and_then(|t| t.parse().ok()),
        _ => None,
    };
    let after_line = nl + 1;
    match data_len {
        None => Parsed::Request(
            Request {
                conn,
                line,
                data: None,
            },
            after_line,
        ),
        Some(n) if n > MAX_DATA => Parsed::Garbage,
        Some(n) => {
            if buf.len() < after_line + n + 2 {
                return Parsed::Incomplete;
            }
            let data = buf[after_line..after_line + n].to_vec();
            Parsed::Request(
                Request {
                    conn,
                    line,
                    data: Some(data),
                },
                after_line + n + 2,
            )
        }
    }
}

/// The built-in memcached emulator: enough of both protocols for handshakes and
/// plain operations around the injected faults.
fn emulate(shared: &Shared, req: &Request) -> Vec<u8> {
    let toks: Vec<Vec<u8>> = req
        .line
        .split(|b| *b == b' ')
        .filter(|t| !t.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let Some(cmd) = toks.first() else {
        return b"ERROR\r\n".to_vec();
    };
    let num = |i: usize| -> Option<u64> {
        toks.get(i)
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| t.parse().ok())
    };
    let noreply = toks.last().map(|t| t == b"noreply").unwrap_or(false);
    let mut store = shared.store.lock().unwrap();
    let mut out = Vec::new();
    match cmd.as_slice() {
        b"version" => out.extend_from_slice(b"VERSION 1.6.18-fake\r\n"),
        b"verbosity" | b"flush_all" => {
            if cmd == b"flush_all" {
                store.clear();
            }
            if !noreply {
                out.extend_from_slice(b"OK\r\n");
            }
        }
        b"stats" => out.extend_from_slice(b"STAT pid 1\r\nSTAT version 1.6.18-fake\r\nEND\r\n"),
        b"get" | b"gets" | b"gat" | b"gats" => {
            let with_cas = cmd == b"gets" || cmd == b"gats";
            let first_key = if cmd.starts_with(b"ga") { 2 } else { 1 };
            for k in toks.iter().skip(first_key) {
                if let Some(it) = store.get(k) {
                    out.extend_from_slice(b"VALUE ");
                    out.extend_from_slice(k);
                    out.extend_from_slice(format!(" {} {}", it.flags, it.value.len()).as_bytes());
                    if with_cas {
                        out.extend_from_slice(format!(" {}", it.cas).as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&it.value);
                    out.extend_from_slice(b"\r\n");
                }
            }
            out.extend_from_slice(b"END\r\n");
        }
        b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" => {
            let (Some(key), Some(flags), Some(data)) = (toks.get(1), num(2), req.data.as_ref())
            else {
                return b"CLIENT_ERROR bad command line format\r\n".to_vec();
            };
            let cas_in = if cmd == b"cas" { num(5) } else { None };
            let exists = store.get(key).cloned();
            let cas = shared.next_cas.fetch_add(1, Ordering::SeqCst);
            let reply: &[u8] = match (cmd.as_slice(), exists) {
                (b"append" | b"prepend", Some(it)) => {
                    store.insert(key.clone(), it.with_data_added(data, cmd == b"append", cas));
                    b"STORED\r\n"
                }
                (b"cas", None) => b"NOT_FOUND\r\n",
                (b"cas", Some(it)) if Some(it.cas) != cas_in => b"EXISTS\r\n",
                // A `cas` here names the item's current token.
                (b"set" | b"cas", _) | (b"add", None) | (b"replace", Some(_)) => {
                    store.insert(
                        key.clone(),
                        StoredItem::new(data.clone(), flags as u32, cas),
                    );
                    b"STORED\r\n"
                }
                _ => b"NOT_STORED\r\n",
            };
            if !noreply {
                out.extend_from_slice(reply);
            }
        }
        b"delete" => {
            let found = toks
                .get(1)
                .map(|k| store.remove(k).is_some())
                .unwrap_or(false);
            if !noreply {
                out.extend_from_slice(if found {
                    b"DELETED\r\n"
                } else {
                    b"NOT_FOUND\r\n"
                });
            }
        }
        b"touch" => {
            let found = toks.get(1).map(|k| store.contains_key(k)).unwrap_or(false);
            if !noreply {
                out.extend_from_slice(if found {
                    b"TOUCHED\r\n"
                } else {
                    b"NOT_FOUND\r\n"
                });
            }
        }
        b"incr" | b"decr" => {
            let delta = num(2).unwrap_or(0);
            let r = match toks.get(1).and_then(|k| store.get_mut(k)) {
                None => b"NOT_FOUND\r\n".to_vec(),
                Some(it) => match std::str::from_utf8(&it.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    None => {
                        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n".to_vec()
                    }
                    Some(v) => {
                        let n = if cmd == b"incr" {
                            v.wrapping_add(delta)
                        } else {
                            v.saturating_sub(delta)
                        };
                        it.value = n.to_string().into_bytes();
                        format!("{n}\r\n").into_bytes()
                    }
                },
            };
            if !noreply {
                out.extend_from_slice(&r);
            }
        }
        b"mn" => out.extend_from_slice(b"MN\r\n"),
        b"mg" => meta_get(&mut out, &mut store, &toks),
        b"ms" => meta_set(
            &mut out,
            &mut store,
            &toks,
            req.data.as_deref(),
            &shared.next_cas,
        ),
        b"md" => {
            let flags = &toks[toks.len().min(2)..];
            let found = toks
                .get(1)
                .map(|k| store.remove(k).is_some())
                .unwrap_or(false);
            let quiet = flags.iter().any(|f| f == b"q");
            // A quiet delete answers only a miss.
            if !found || !quiet {
                out.extend_from_slice(if found { b"HD" } else { b"NF" });
                echo_flags(
                    &mut out,
                    toks.get(1).map(Vec::as_slice).unwrap_or_default(),
                    flags,
                );
                out.extend_from_slice(b"\r\n");
            }
        }
        _ => out.extend_from_slice(b"ERROR\r\n"),
    }
    out
}

/// Appends the `O`/`k`/`b` flags of a meta request, as memcached echoes them
/// (`k` comes back with the key).
fn echo_flags(out: &mut Vec<u8>, key: &[u8], flags: &[Vec<u8>]) {
    for f in flags {
        if f.first() == Some(&b'O') || f == b"b" {
            out.push(b' ');
            out.extend_from_slice(f);
        } else if f == b"k" {
            out.extend_from_slice(b" k");
            out.extend_from_slice(key);
        }
    }
}

fn meta_get(out: &mut Vec<u8>, store: &mut HashMap<Vec<u8>, StoredItem>, toks: &[Vec<u8>]) {
    let Some(key) = toks.get(1) else {
        out.extend_from_slice(b"CLIENT_ERROR bad command line format\r\n");
        return;
    };
    let flags = &toks[2..];
    let quiet = flags.iter().any(|f| f == b"q");
    match store.get(key) {
        None => {
            if !quiet {
                out.extend_from_slice(b"EN\r\n");
            }
        }
        Some(it) => {
            let want_value = flags.iter().any(|f| f == b"v");
            if want_value {
                out.extend_from_slice(format!("VA {}", it.value.len()).as_bytes());
            } else {
                out.extend_from_slice(b"HD");
            }
            for f in flags {
                match f.first() {
                    Some(b'f') => out.extend_from_slice(format!(" f{}", it.flags).as_bytes()),
                    Some(b'c') => out.extend_from_slice(format!(" c{}", it.cas).as_bytes()),
                    Some(b's') => out.extend_from_slice(format!(" s{}", it.value.len()).as_bytes()),
                    Some(b't') => out.extend_from_slice(b" t-1"),
                    Some(b'k') => {
                        out.extend_from_slice(b" k");
                        out.extend_from_slice(key);
                    }
                    Some(b'O') | Some(b'b') => {
                        out.push(b' ');
                        out.extend_from_slice(f);
                    }
                    _ => {}
                }
            }
            out.extend_from_slice(b"\r\n");
            if want_value {
                out.extend_from_slice(&it.value);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

fn meta_set(
    out: &mut Vec<u8>,
    store: &mut HashMap<Vec<u8>, StoredItem>,
    toks: &[Vec<u8>],
    data: Option<&[u8]>,
    next_cas: &AtomicU64,
) {
    let (Some(key), Some(data)) = (toks.get(1), data) else {
        out.extend_from_slice(b"CLIENT_ERROR bad command line format\r\n");
        return;
    };
    let flags = &toks[toks.len().min(3)..];
    let arg = |c: u8| -> Option<&[u8]> {
        flags
            .iter()
            .find(|f| f.first() == Some(&c))
            .map(|f| &f[1..])
    };
    let parse = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
    };
    let client_flags = arg(b'F').and_then(parse).unwrap_or(0) as u32;
    let cas_in = arg(b'C').and_then(parse);
    let mode = arg(b'M').and_then(|m| m.first().copied()).unwrap_or(b'S');
    let quiet = flags.iter().any(|f| f == b"q");
    let existing = store.get(key).cloned();
    let cas = next_cas.fetch_add(1, Ordering::SeqCst);
    let code: &[u8] = match (mode.to_ascii_uppercase(), existing) {
        (_, Some(it)) if cas_in.is_some() && cas_in != Some(it.cas) => b"EX",
        (_, None) if cas_in.is_some() => b"NF",
        (b'S', _) | (b'E', None) | (b'R', Some(_)) => {
            store.insert(
                key.clone(),
                StoredItem::new(data.to_vec(), client_flags, cas),
            );
            b"HD"
        }
        (mode @ (b'A' | b'P'), Some(it)) => {
            store.insert(key.clone(), it.with_data_added(data, mode == b'A', cas));
            b"HD"
        }
        _ => b"NS",
    };
    if quiet && code == b"HD" {
        return;
    }
    out.extend_from_slice(code);
    echo_flags(out, key, flags);
    out.extend_from_slice(b"\r\n");
}
