//! One TCP connection to one memcached server, driven by one task.
//!
//! Callers never touch the socket. They take a place in the connection's queue (one of
//! `max_in_flight` slots and a share of the byte budget), encode their request, hand it
//! to the connection's driver through a channel together with a reply channel and their
//! deadline, and wait. The driver owns the socket, a write buffer and the in-flight
//! queue:
//!
//! ```text
//!  callers ──mpsc (bounded by the queue permits)──► driver ──one write per batch──► memcached
//!     ▲                          │ in-flight FIFO (≤ max_in_flight)
//!     └──────oneshot reply───────┴◄──── frames, in request order ────┘
//! ```
//!
//! * **Pipelining**: the driver takes every request already queued, appends them to one
//!   buffer and writes it with as few system calls as the socket allows; replies come
//!   back in request order and are matched to the head of the in-flight queue (checked
//!   against the meta opaque when there is one).
//! * **Backpressure**: the driver writes nothing more while `max_in_flight` replies are
//!   outstanding (or its write buffer is full); it holds the requests that arrive
//!   meanwhile, in order, and callers beyond the queue's slots wait for one.
//! * **Deadlines**: the driver answers [`Error::Timeout`] to every caller it holds,
//!   waiting or in flight, once the caller's deadline passes, from one timer per
//!   connection set to the earliest deadline (requests are mostly in deadline order, so
//!   it rarely moves); a caller arms a timer of its own only while it waits for a place
//!   in the queue.
//! * **Cancellation**: a caller that stops waiting (timeout, dropped future) only drops
//!   its receiver. A request not yet written is skipped; one already written keeps its
//!   place in the queue and its reply is read and thrown away. The byte stream never
//!   loses its alignment with the queue, whatever point the caller was dropped at.
//! * **Failure**: a broken socket or a reply that can't belong to the head of the
//!   queue ends the connection: every in-flight caller gets an error at once, the node
//!   is marked down, and the driver reconnects after an exponential backoff with jitter.

mod pending;
mod transport;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::{Instant, Sleep};
use tokio_util::codec::Decoder;
use tracing::Instrument;

use crate::node::{NodeCounters, NodeShared, NodeState};
use crate::protocol::text::KEYS_PER_GET;
use crate::protocol::{Expect, Frame, FrameDecoder, MetaStatus, Reply, TextStatus};
use crate::Credentials;
use crate::Error;
use pending::{earliest, merged_key, Pending, ReplySender, Step};
use transport::{Stream, PLAIN_TO_TLS};
pub(crate) use transport::{Target, Tls};

/// Bytes of queued requests after which the driver writes before taking more.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Requests taken from the channel in one go before the driver writes.
const BATCH: usize = 512;
/// Free space kept in the read buffer before each read.
const READ_CHUNK: usize = 32 * 1024;

/// Settings of one connection, fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionConfig {
    /// The address as configured, for logs.
    pub(crate) address: String,
    /// Where to connect.
    pub(crate) target: Target,
    pub(crate) connect_timeout: Duration,
    /// The clients' operation timeout: what [`Error::Timeout`] says a caller waited.
    pub(crate) operation_timeout: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) max_value_size: usize,
    pub(crate) timeout_threshold: u32,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    /// Bytes of encoded requests that may wait for the driver (see
    /// [`ConnectionHandle::reserve`]).
    pub(crate) max_queued_bytes: u32,
    /// Login for `-Y` servers, sent first on every connection.
    pub(crate) credentials: Option<Credentials>,
    /// Whether the client speaks the meta protocol (the handshake then checks the peer
    /// does too).
    pub(crate) meta: bool,
    /// TLS settings, when the connection uses TLS.
    pub(crate) tls: Option<Tls>,
}

/// A request on its way to the driver.
#[derive(Debug)]
pub(crate) struct Request {
    /// The encoded command.
    pub(crate) bytes: Bytes,
    /// What the server will answer.
    pub(crate) kind: RequestKind,
    /// Where the reply goes; `None` for fire-and-forget.
    pub(crate) reply: Option<ReplySender>,
    /// When the caller stops waiting for the reply: the driver answers
    /// [`Error::Timeout`] then, wherever the request is (`None`: no deadline).
    pub(crate) deadline: Option<Instant>,
    /// The request's place in the queue (its slot and its share of the byte budget),
    /// given back once the driver has copied (or dropped) the batch the request was
    /// taken in to the socket's write buffer.
    pub(crate) permit: Option<QueuePermit>,
    /// Written only while the node's connection epoch still equals this
    /// ([`NodeShared::epoch`]); otherwise answered `EXISTS` without being written. Set
    /// on CAS stores whose token was read in this epoch: after a reconnect the server may
    /// be a restarted process whose CAS counter started again, where the same token can
    /// name another item.
    pub(crate) epoch: Option<u64>,
}

/// A request's place in a connection's queue: one of its `max_in_flight` slots and its
/// share of the queued-bytes budget.
#[derive(Debug)]
pub(crate) struct QueuePermit {
    slot: OwnedSemaphorePermit,
    bytes: OwnedSemaphorePermit,
}

impl QueuePermit {
    /// Joins `other` (from the same connection) to this permit, to give both back at once.
    fn merge(&mut self, other: QueuePermit) {
        self.slot.merge(other.slot);
        self.bytes.merge(other.bytes);
    }
}

/// What a request expects back, as far as the driver is concerned.
#[derive(Debug)]
pub(crate) enum RequestKind {
    /// A reply of this shape.
    Reply(Expect),
    /// Nothing unless it fails (meta quiet mode); closed by an `mn` barrier.
    Quiet,
    /// A text `get <key>\r\n` the driver may merge with the single-key gets queued
    /// right after it into one `get k1 k2 …` line.
    MergeableGet,
    /// Makes the driver panic (tests of panic recovery only).
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// What the end of the write buffer holds that the next request may extend.
enum OpenRun {
    Nothing,
    /// Quiet requests not yet closed by `mn`.
    Quiet,
    /// A merged `get` line not yet ended, with this many keys.
    MergedGet(usize),
}

/// The callers' side of a connection.
#[derive(Debug)]
pub(crate) struct ConnectionHandle {
    tx: mpsc::UnboundedSender<Request>,
    shared: Arc<ConnectionShared>,
    /// Requests not yet taken by the driver into its in-flight queue: `slots` bounds
    /// their count (`max_in_flight`), `budget` their encoded bytes.
    slots: Arc<Semaphore>,
    budget: Arc<Semaphore>,
    max_queued_bytes: u32,
}

#[derive(Debug)]
struct ConnectionShared {
    next_opaque: AtomicU32,
    consecutive_timeouts: AtomicU32,
    wake: Notify,
    /// Poked by callers that want the node while the driver waits out a backoff.
    revive: Notify,
}

impl ConnectionHandle {
    /// Starts the driver task of connection `slot` of `node`. Must run inside a tokio
    /// runtime.
    pub(crate) fn spawn(config: ConnectionConfig, node: Arc<NodeShared>, slot: usize) -> Self {
        // Unbounded: the queue permits (`reserve`) bound what callers queue, so that
        // the driver can take every queued request, and enforce its deadline, at any
        // time.
        let (tx, rx) = mpsc::unbounded_channel();
        let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        let shared = Arc::new(ConnectionShared {
            next_opaque: AtomicU32::new(1),
            consecutive_timeouts: AtomicU32::new(0),
            wake: Notify::new(),
            revive: Notify::new(),
        });
        let budget = Arc::new(Semaphore::new(config.max_queued_bytes as usize));
        let max_queued_bytes = config.max_queued_bytes;
        let span = tracing::info_span!("memcached_connection", node = %node.id, slot);
        let driver = Driver {
            decoder: FrameDecoder::new(config.max_value_size),
            jitter: jitter_seed(&node.id, slot),
            config,
            node,
            slot,
            rx,
            shared: shared.clone(),
            in_flight: VecDeque::new(),
            waiting: VecDeque::new(),
            deadlines: Deadlines::default(),
            closing: false,
        };
        tokio::spawn(driver.run().instrument(span));
        Self {
            tx,
            shared,
            slots,
            budget,
            max_queued_bytes,
        }
    }

    /// The share of the byte budget a request of about `bytes` encoded bytes takes.
    fn wanted(&self, bytes: usize) -> u32 {
        u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_queued_bytes)
    }

    /// A place in the queue for a request of about `bytes` encoded bytes if there is
    /// room now (the usual case, with no waiter to register); `None` if the caller must
    /// wait for one ([`ConnectionHandle::reserve`]).
    pub(crate) fn try_reserve(&self, bytes: usize) -> Result<Option<QueuePermit>, Error> {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(TryAcquireError::Closed) => return Err(Error::Shutdown),
            Err(TryAcquireError::NoPermits) => return Ok(None),
        };
        match self
            .budget
            .clone()
            .try_acquire_many_owned(self.wanted(bytes))
        {
            Ok(bytes) => Ok(Some(QueuePermit { slot, bytes })),
            Err(TryAcquireError::Closed) => Err(Error::Shutdown),
            Err(TryAcquireError::NoPermits) => Ok(None),
        }
    }

    /// Waits for a place in the queue for a request of about `bytes` encoded bytes: one
    /// of the `max_in_flight` slots and room in the byte budget (a request larger than
    /// the whole budget waits for all of it). Cancel-safe. The caller bounds the wait
    /// with its own deadline: the driver knows nothing of a request before it is sent.
    pub(crate) async fn reserve(&self, bytes: usize) -> Result<QueuePermit, Error> {
        let bytes = self
            .budget
            .clone()
            .acquire_many_owned(self.wanted(bytes))
            .await
            .map_err(|_| Error::Shutdown)?;
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Shutdown)?;
        Ok(QueuePermit { slot, bytes })
    }

    /// Reserves `count` consecutive opaque tokens for a meta request.
    pub(crate) fn opaques(&self, count: u32) -> u32 {
        self.shared.next_opaque.fetch_add(count, Ordering::Relaxed)
    }

    /// Queues `request` (its place reserved by its permit, so this never waits).
    pub(crate) fn send(&self, request: Request) -> Result<(), Error> {
        self.tx.send(request).map_err(|_| Error::Shutdown)
    }

    /// Sends `bytes` and waits for the assembled reply, or for [`Error::Timeout`] once
    /// `deadline` passes: the driver enforces it, wherever the request is by then (not
    /// taken yet, or written and awaiting its reply). Cancel-safe: a dropped future
    /// leaves its request to be skipped, or its reply to be read and thrown away.
    pub(crate) async fn call(
        &self,
        bytes: Bytes,
        kind: RequestKind,
        permit: QueuePermit,
        deadline: Instant,
        epoch: Option<u64>,
    ) -> Result<Reply, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Request {
            bytes,
            kind,
            reply: Some(tx),
            deadline: Some(deadline),
            permit: Some(permit),
            epoch,
        })?;
        rx.await.unwrap_or_else(|_| Err(Error::Shutdown))
    }

    /// Asks a driver waiting out a reconnect backoff to try again as soon as the storm
    /// guard allows (`backoff_min` after its previous attempt).
    pub(crate) fn revive(&self) {
        self.shared.revive.notify_one();
    }

    /// Notes a caller's timeout; enough of them in a row make the driver drop the
    /// connection, which marks the node down until a reconnect proves it answers.
    pub(crate) fn record_timeout(&self) {
        self.shared
            .consecutive_timeouts
            .fetch_add(1, Ordering::AcqRel);
        self.shared.wake.notify_one();
    }
}

/// One exchange of the connection handshake.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// memcached's text-protocol login (`-Y` servers): `STORED` when accepted.
    Login,
    /// `version`: proves the server answers.
    Version,
    /// `mn`: proves the peer speaks the meta protocol (proxies such as twemproxy don't).
    Meta,
}

/// The hint added when a TLS server ends the handshake with an alert after the client's
/// first request (memcached checks the client certificate then).
const TLS_ALERT: &str = "the server refused the TLS session: it may require a client \
     certificate signed by a CA it trusts (TlsConfig::with_client_certificate, memcached's \
     ssl_verify_mode and ssl_ca_cert)";

/// What a peer that refuses the meta protocol is told.
const NOT_META: &str = "it does not speak memcached's meta protocol (a proxy such as \
     twemproxy/nutcracker?): use Protocol::Text (ClientBuilder::protocol) for this node";

impl Probe {
    /// Checks the reply to this exchange.
    fn check(self, frame: Frame) -> Result<(), String> {
        match (self, frame) {
            (Probe::Login, Frame::Status(TextStatus::Stored)) => Ok(()),
            (Probe::Login, Frame::Error { message, .. }) => Err(format!(
                "authentication refused by the server ({}): check the username and password",
                String::from_utf8_lossy(&message)
            )),
            (Probe::Version, Frame::Version(_)) => Ok(()),
            (Probe::Version, Frame::Error { message, .. })
                if message.as_ref() == b"unauthenticated" =>
            {
                Err(
                    "the server requires authentication (memcached -Y): configure \
                     credentials (ClientBuilder::credentials or NodeConfig::credentials)"
                        .into(),
                )
            }
            (Probe::Meta, Frame::Meta(m)) if m.status == MetaStatus::Noop => Ok(()),
            (Probe::Meta, Frame::Error { .. }) => Err(format!(
                "the server refused the meta command mn: {NOT_META}"
            )),
            (probe, other) => Err(format!(
                "probe: unexpected reply to {}: {other:?}",
                probe.name()
            )),
        }
    }

    /// Why the connection failed when the peer closed it during this exchange.
    fn closed(self) -> String {
        match self {
            Probe::Meta => {
                format!("the server closed the connection on the meta command mn: {NOT_META}")
            }
            probe => format!(
                "probe: server closed the connection (during {})",
                probe.name()
            ),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Probe::Login => "the login",
            Probe::Version => "version",
            Probe::Meta => "mn",
        }
    }
}

/// Why a connection ended.
enum Disconnect {
    /// Every handle is gone and the queue is empty.
    Shutdown,
    /// The connection broke or was dropped on purpose.
    Lost(String),
    /// The server sent something that is not a reply to the head of the queue.
    Protocol(String),
}

struct Driver {
    config: ConnectionConfig,
    node: Arc<NodeShared>,
    slot: usize,
    rx: mpsc::UnboundedReceiver<Request>,
    shared: Arc<ConnectionShared>,
    decoder: FrameDecoder,
    in_flight: VecDeque<Pending>,
    /// Requests taken from the channel while the driver could not write them (it was
    /// connecting, or `max_in_flight` replies were outstanding, or the write buffer was
    /// full), in order; they keep their queue permits, so they count against the
    /// callers' limits as if they were still in the channel.
    waiting: VecDeque<Request>,
    deadlines: Deadlines,
    /// Every handle is gone: nothing more will be queued.
    closing: bool,
    jitter: u64,
}

/// The driver's one timer for the deadlines of the callers it holds (waiting or in
/// flight). It is set to the earliest deadline seen since it last fired, and not moved
/// when that caller is answered in time: a connection pays one timer registration per
/// operation timeout, not one per request. When it fires, the driver answers every
/// caller whose deadline has passed and sets it to the earliest deadline left.
#[derive(Default)]
struct Deadlines {
    sleep: Option<Pin<Box<Sleep>>>,
    /// When the timer fires; `None` when it is off.
    next: Option<Instant>,
}

impl Deadlines {
    /// Makes sure the timer fires by `deadline`.
    fn watch(&mut self, deadline: Option<Instant>) {
        let Some(deadline) = deadline else { return };
        if self.next.is_some_and(|next| next <= deadline) {
            return;
        }
        self.next = Some(deadline);
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Sets the timer to `next` (off when `None`).
    fn rearm(&mut self, next: Option<Instant>) {
        self.next = None;
        self.watch(next);
    }

    /// Whether the timer is on and has fired.
    fn due(&self) -> bool {
        self.next.is_some() && self.sleep.as_ref().is_some_and(|s| s.is_elapsed())
    }

    /// Completes when the timer fires (never while it is off).
    async fn fired(&mut self) {
        match (self.next, &mut self.sleep) {
            (Some(_), Some(sleep)) => sleep.as_mut().await,
            _ => std::future::pending().await,
        }
    }
}

/// Answers [`Error::Timeout`] to every caller held by a driver (`waiting` or
/// `in_flight`) whose deadline has passed, counts them as timeouts of the node and of the
/// connection, and sets the timer to the earliest deadline left. A waiting request that
/// timed out is dropped (it was never written); an entry in flight stays, so that its
/// reply is still read and the stream stays in sync.
fn expire(
    waiting: &mut VecDeque<Request>,
    in_flight: &mut VecDeque<Pending>,
    deadlines: &mut Deadlines,
    node: &NodeShared,
    shared: &ConnectionShared,
    after: Duration,
) {
    let now = Instant::now();
    // Counted before the caller is told, so that a caller that sees its timeout sees it
    // counted too.
    let timeout = || {
        NodeCounters::add(&node.counters.timeouts, 1);
        shared.consecutive_timeouts.fetch_add(1, Ordering::AcqRel);
        Error::Timeout {
            node: node.id.to_string(),
            after,
        }
    };
    let mut expired = 0u64;
    let mut next = None;
    waiting.retain_mut(|request| {
        if request.reply.is_none() {
            // Fire-and-forget: nobody waits, it is still to be sent.
            return true;
        }
        let left = pending::expire_one(
            &mut request.reply,
            request.deadline,
            now,
            &timeout,
            &mut expired,
        );
        next = earliest(next, left);
        request.reply.is_some()
    });
    for pending in in_flight.iter_mut() {
        next = earliest(next, pending.expire(now, &timeout, &mut expired));
    }
    if expired > 0 {
        tracing::debug!(node = %node.id, ?after, expired, "operations timed out");
    }
    deadlines.rearm(next);
}

impl Driver {
    async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            self.node
                .set_connection_state(self.slot, NodeState::Connecting);
            let started = Instant::now();
            let connected = self.connect_holding().await;
            match connected {
                Ok((stream, read_buf)) => {
                    attempt = 0;
                    self.shared.consecutive_timeouts.store(0, Ordering::Release);
                    self.node.set_connection_state(self.slot, NodeState::Up);
                    self.node.attempt_finished();
                    tracing::debug!(address = %self.config.address, "connected");
                    // A panic anywhere in the driver's work on a connection ends that
                    // connection like any other failure: callers get an error, the node
                    // goes down, and the driver reconnects.
                    let reason = AssertUnwindSafe(self.serve(stream, read_buf))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|panic| Disconnect::Lost(panicked(&*panic)));
                    let (message, error) = match reason {
                        Disconnect::Shutdown => return,
                        Disconnect::Lost(reason) => {
                            tracing::warn!(%reason, "connection lost; reconnecting");
                            let error = Error::ConnectionLost {
                                node: self.node.id.to_string(),
                                reason: reason.clone(),
                            };
                            (reason, error)
                        }
                        Disconnect::Protocol(reason) => {
                            NodeCounters::add(&self.node.counters.protocol_errors, 1);
                            tracing::error!(%reason, "protocol violation; dropping the connection");
                            let error = Error::Protocol {
                                node: self.node.id.to_string(),
                                reason: reason.clone(),
                            };
                            (reason, error)
                        }
                    };
                    self.node.set_last_error(&message);
                    self.fail_in_flight(&error);
                    NodeCounters::add(&self.node.counters.reconnects, 1);
                    self.node.set_connection_state(self.slot, NodeState::Down);
                }
                Err(reason) => {
                    tracing::warn!(address = %self.config.address, %reason, attempt, "connect failed");
                    self.node.set_last_error(&reason);
                    self.node.set_connection_state(self.slot, NodeState::Down);
                    self.node.attempt_finished();
                }
            }
            let delay = backoff_delay(
                attempt,
                self.config.backoff_min,
                self.config.backoff_max,
                next_random(&mut self.jitter),
            );
            attempt = attempt.saturating_add(1);
            // A caller waiting for the node may bring the next attempt forward, but never
            // closer than `backoff_min` to the previous one: no connect storm.
            let earliest = started
                .checked_add(self.config.backoff_min)
                .unwrap_or(started);
            if !self.wait_out_backoff(delay, earliest).await {
                return;
            }
        }
    }

    /// Opens the socket, logs in when credentials are configured, and proves the server
    /// answers (`version`, plus `mn` for a meta client) within the connect timeout, so a
    /// stopped server is not taken for a live one and a peer that can't serve this client
    /// (no login, no meta protocol) is named as such.
    async fn connect(
        config: &ConnectionConfig,
        decoder: &mut FrameDecoder,
    ) -> Result<(Stream, BytesMut), String> {
        // A fresh stream: nothing of the previous connection's decoding state applies.
        *decoder = FrameDecoder::new(config.max_value_size);
        let attempt = async {
            let mut stream = Stream::connect(&config.target, config.tls.as_ref()).await?;
            let mut steps = Vec::with_capacity(3);
            if config.credentials.is_some() {
                steps.push(Probe::Login);
            }
            steps.push(Probe::Version);
            if config.meta {
                steps.push(Probe::Meta);
            }
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            let plain = !stream.is_tls();
            // A plain client that meets a TLS server hears nothing it can read: the server
            // resets the connection, closes it, or answers with a TLS alert record.
            let hint = |reason: String, answered: bool| {
                if plain && !answered {
                    format!("{reason} ({PLAIN_TO_TLS})")
                } else if !plain && !answered && reason.contains("alert") {
                    format!("{reason} ({TLS_ALERT})")
                } else {
                    reason
                }
            };
            // One exchange at a time: a peer that drops the connection on a command it
            // doesn't know (twemproxy on `mn`) would otherwise take the replies to the
            // earlier ones with it.
            let mut request = BytesMut::new();
            for (i, step) in steps.into_iter().enumerate() {
                let answered = i > 0;
                request.clear();
                match step {
                    Probe::Login => {
                        if let Some(credentials) = &config.credentials {
                            credentials.encode_login(&mut request);
                        }
                    }
                    Probe::Version => request.put_slice(b"version\r\n"),
                    Probe::Meta => request.put_slice(b"mn\r\n"),
                }
                let sent = async {
                    stream.write_all(&request).await?;
                    stream.flush().await
                };
                sent.await
                    .map_err(|e| hint(format!("probe: {e}"), answered))?;
                loop {
                    if plain && !answered && buf.first().is_some_and(|&b| b == 0x15 || b == 0x16) {
                        return Err(format!(
                            "the server answered with a TLS record: it expects TLS ({PLAIN_TO_TLS})"
                        ));
                    }
                    let decoded = decoder.decode(&mut buf).map_err(|e| e.to_string());
                    if let Some(frame) = decoded.map_err(|e| hint(e, answered))? {
                        step.check(frame)?;
                        break;
                    }
                    match stream.read_buf(&mut buf).await {
                        Ok(0) => return Err(hint(step.closed(), answered)),
                        Ok(_) => {}
                        Err(e) if step == Probe::Meta => {
                            return Err(format!("{} ({e})", step.closed()))
                        }
                        Err(e) => return Err(hint(format!("probe: read: {e}"), answered)),
                    }
                }
            }
            Ok((stream, buf))
        };
        tokio::time::timeout(config.connect_timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", config.connect_timeout)))
    }

    /// [`Driver::connect`], meanwhile taking the requests callers queue into `waiting`
    /// and answering those whose deadline passes.
    async fn connect_holding(&mut self) -> Result<(Stream, BytesMut), String> {
        let Driver {
            config,
            node,
            rx,
            shared,
            decoder,
            in_flight,
            waiting,
            deadlines,
            closing,
            ..
        } = self;
        let attempt = AssertUnwindSafe(Self::connect(config, decoder)).catch_unwind();
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                biased;
                connected = &mut attempt => {
                    return connected.unwrap_or_else(|panic| Err(panicked(&*panic)));
                }
                request = rx.recv(), if !*closing => match request {
                    Some(request) => {
                        if request.reply.is_some() {
                            deadlines.watch(request.deadline);
                        }
                        waiting.push_back(request);
                    }
                    None => *closing = true,
                },
                () = deadlines.fired() => expire(
                    waiting,
                    in_flight,
                    deadlines,
                    node,
                    shared,
                    config.operation_timeout,
                ),
            }
        }
    }

    /// Answers the callers whose deadline has passed (see [`expire`]).
    fn expire(&mut self) {
        expire(
            &mut self.waiting,
            &mut self.in_flight,
            &mut self.deadlines,
            &self.node,
            &self.shared,
            self.config.operation_timeout,
        );
    }

    /// Keeps `request`, and every other request already queued, in `waiting` until the
    /// driver can write them.
    fn hold(&mut self, request: Request) {
        let mut next = Some(request);
        while let Some(request) = next {
            if request.reply.is_some() {
                self.deadlines.watch(request.deadline);
            }
            self.waiting.push_back(request);
            next = self.rx.try_recv().ok();
        }
    }

    /// Sleeps `delay`, failing requests that arrive meanwhile. A caller that wants the
    /// node (a request, or a poke from routing) ends the wait early, but not before
    /// `earliest`. False when every handle is gone.
    async fn wait_out_backoff(&mut self, delay: Duration, earliest: Instant) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        let mut wanted = false;
        let mut bring_forward = |sleep: std::pin::Pin<&mut tokio::time::Sleep>| {
            if !wanted && earliest < sleep.deadline() {
                sleep.reset(earliest);
            }
            wanted = true;
        };
        // Requests held while the connection was up or being made were never written.
        if !self.waiting.is_empty() {
            for request in std::mem::take(&mut self.waiting) {
                self.refuse(request);
            }
            bring_forward(sleep.as_mut());
        }
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                _ = self.shared.revive.notified() => bring_forward(sleep.as_mut()),
                request = self.rx.recv() => match request {
                    Some(request) => {
                        self.refuse(request);
                        bring_forward(sleep.as_mut());
                    }
                    None => return false,
                },
            }
        }
    }

    fn refuse(&self, request: Request) {
        if let Some(tx) = request.reply {
            let _ = tx.send(Err(Error::NodeDown {
                node: self.node.id.to_string(),
            }));
        }
    }

    fn fail_in_flight(&mut self, error: &Error) {
        for pending in self.in_flight.drain(..) {
            pending.fail(error);
        }
        self.node.counters.in_flight.store(0, Ordering::Relaxed);
    }

    async fn serve(&mut self, stream: Stream, mut read_buf: BytesMut) -> Disconnect {
        // TLS may keep records it accepted from `write` until flushed; TCP and UNIX
        // sockets keep nothing.
        let buffered = stream.is_tls();
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut write_buf = BytesMut::with_capacity(READ_CHUNK);
        let mut unflushed = false;
        loop {
            // Checked here too, not only in `select!` below, which may keep finding
            // replies to read first.
            if self.deadlines.due() {
                self.expire();
            }
            let threshold = self.config.timeout_threshold;
            if self.shared.consecutive_timeouts.load(Ordering::Acquire) >= threshold {
                self.shared.consecutive_timeouts.store(0, Ordering::Release);
                return Disconnect::Lost(format!("{threshold} consecutive operations timed out"));
            }
            if self.closing
                && self.in_flight.is_empty()
                && self.waiting.is_empty()
                && write_buf.is_empty()
            {
                return Disconnect::Shutdown;
            }
            let room = self.in_flight.len() < self.config.max_in_flight
                && write_buf.len() < WRITE_HIGH_WATER;
            if room {
                if let Some(request) = self.waiting.pop_front() {
                    let taken = self
                        .take(request, &mut write_buf, &mut writer, buffered)
                        .await;
                    match taken {
                        Ok(written) => unflushed |= written,
                        Err(reason) => return Disconnect::Lost(reason),
                    }
                    continue;
                }
            }
            if read_buf.capacity() - read_buf.len() < READ_CHUNK / 4 {
                read_buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                biased;
                read = reader.read_buf(&mut read_buf) => match read {
                    Ok(0) => return Disconnect::Lost("server closed the connection".into()),
                    Ok(_) => {
                        if let Err(reason) = self.dispatch(&mut read_buf) {
                            return Disconnect::Protocol(reason);
                        }
                    }
                    Err(e) => return Disconnect::Lost(format!("read: {e}")),
                },
                // Write what is buffered; once it is all written, flush what TLS kept.
                written = async {
                    if write_buf.is_empty() {
                        writer.flush().await.map(|()| None)
                    } else {
                        writer.write(&write_buf).await.map(Some)
                    }
                }, if !write_buf.is_empty() || unflushed => match written {
                    Ok(Some(0)) => return Disconnect::Lost("write: connection closed".into()),
                    Ok(Some(n)) => {
                        write_buf.advance(n);
                        unflushed = buffered;
                    }
                    Ok(None) => unflushed = false,
                    Err(e) => return Disconnect::Lost(format!("write: {e}")),
                },
                // Taken even without room to write it, so that its deadline is enforced.
                request = self.rx.recv(), if !self.closing => match request {
                    None => self.closing = true,
                    Some(request) if room => {
                        match self.take(request, &mut write_buf, &mut writer, buffered).await {
                            Ok(written) => unflushed |= written,
                            Err(reason) => return Disconnect::Lost(reason),
                        }
                    }
                    Some(request) => self.hold(request),
                },
                () = self.deadlines.fired() => self.expire(),
                _ = self.shared.wake.notified() => {}
            }
        }
    }

    /// Takes `first` and the requests queued behind it (held ones first, then the
    /// channel's) into the write buffer and the in-flight queue, and tries to write
    /// them at once. True when something was written (TLS may then hold it until a
    /// flush); `Err` when the socket failed.
    async fn take(
        &mut self,
        first: Request,
        write_buf: &mut BytesMut,
        writer: &mut (impl AsyncWrite + Unpin),
        buffered: bool,
    ) -> Result<bool, String> {
        // Others in flight: other callers are likely about to queue too.
        let concurrent = !self.in_flight.is_empty();
        let mut open = OpenRun::Nothing;
        // The batch's queue permits, given back together once the batch is in the write
        // buffer: one lock of each semaphore per batch instead of one per request.
        let mut permits = None;
        self.enqueue(first, write_buf, &mut open, &mut permits);
        // Let the callers that are ready queue their requests first. On the multi-thread
        // runtime a caller's send wakes this task into the worker's LIFO slot, ahead of
        // the other woken callers; without this yield the driver would write one request
        // per system call. A lone request (nothing else in flight: one caller at a time)
        // is written at once: the yield would only hand this task to the other worker
        // and cost that worker a wake-up per operation.
        if concurrent {
            tokio::task::yield_now().await;
        }
        let mut taken = 1;
        while taken < BATCH
            && self.in_flight.len() < self.config.max_in_flight
            && write_buf.len() < WRITE_HIGH_WATER
        {
            let Some(request) = self.waiting.pop_front().or_else(|| self.rx.try_recv().ok()) else {
                break;
            };
            self.enqueue(request, write_buf, &mut open, &mut permits);
            taken += 1;
        }
        self.close_run(write_buf, &mut open);
        drop(permits);
        // Write now rather than after another trip through select!: one poll, which
        // writes nothing if the socket is not ready.
        let mut written = false;
        match writer.write(write_buf).now_or_never() {
            Some(Ok(n)) => {
                write_buf.advance(n);
                written = buffered;
            }
            None => {}
            Some(Err(e)) => return Err(format!("write: {e}")),
        }
        self.node
            .counters
            .in_flight
            .store(self.in_flight.len() as u64, Ordering::Relaxed);
        Ok(written)
    }

    /// Appends `request` to the write buffer and its reply slot to the queue.
    fn enqueue(
        &mut self,
        request: Request,
        write_buf: &mut BytesMut,
        open: &mut OpenRun,
        permits: &mut Option<QueuePermit>,
    ) {
        // The request's bytes are copied to the write buffer (bounded by
        // WRITE_HIGH_WATER) or dropped: either way its share of the queue's byte budget
        // joins the batch's, which goes back once the batch is in the write buffer.
        // Every permit of this connection comes from its one budget, so they merge.
        match (permits.as_mut(), request.permit) {
            (Some(batch), Some(permit)) => batch.merge(permit),
            (None, permit) => *permits = permit,
            (Some(_), None) => {}
        }
        // Nobody waits for it and nothing was written yet: skip it.
        if request.reply.as_ref().is_some_and(|tx| tx.is_closed()) {
            return;
        }
        // A CAS token from an earlier connection epoch can't be trusted to name the item
        // it was read with: refused as memcached refuses a stale token.
        if request.epoch.is_some_and(|e| e != self.node.epoch()) {
            if let Some(tx) = request.reply {
                let _ = tx.send(Ok(Reply::Line(Frame::Status(TextStatus::Exists))));
            }
            return;
        }
        let deadline = request.deadline.filter(|_| request.reply.is_some());
        self.deadlines.watch(deadline);
        match request.kind {
            RequestKind::MergeableGet => {
                let key = merged_key(&request.bytes);
                match open {
                    OpenRun::MergedGet(keys) if *keys < KEYS_PER_GET => {
                        write_buf.put_u8(b' ');
                        write_buf.put_slice(key);
                        *keys += 1;
                        if let Some(line) = self.in_flight.back_mut() {
                            line.add_member_until(request.bytes, request.reply, deadline);
                        }
                    }
                    _ => {
                        self.close_run(write_buf, open);
                        write_buf.put_slice(b"get ");
                        write_buf.put_slice(key);
                        self.in_flight.push_back(Pending::merged_until(
                            request.bytes,
                            request.reply,
                            deadline,
                        ));
                        *open = OpenRun::MergedGet(1);
                    }
                }
            }
            RequestKind::Quiet => {
                if !matches!(open, OpenRun::Quiet) {
                    self.close_run(write_buf, open);
                }
                write_buf.put_slice(&request.bytes);
                *open = OpenRun::Quiet;
            }
            #[cfg(feature = "fault-injection")]
            RequestKind::Panic => panic!("fault injection: connection driver panic"),
            RequestKind::Reply(expect) => {
                self.close_run(write_buf, open);
                write_buf.put_slice(&request.bytes);
                self.in_flight
                    .push_back(Pending::new(expect, request.reply, &request.bytes).until(deadline));
            }
        }
    }

    /// Ends what the write buffer left open: a run of quiet requests gets `mn`, so any
    /// failure they report is read as theirs and not as the reply to the request after
    /// them; a merged `get` line gets its line end.
    fn close_run(&mut self, write_buf: &mut BytesMut, open: &mut OpenRun) {
        match std::mem::replace(open, OpenRun::Nothing) {
            OpenRun::Nothing => {}
            OpenRun::Quiet => {
                write_buf.put_slice(b"mn\r\n");
                self.in_flight
                    .push_back(Pending::new(Expect::QuietBarrier, None, &Bytes::new()));
            }
            OpenRun::MergedGet(_) => write_buf.put_slice(b"\r\n"),
        }
    }

    /// Decodes every whole frame in `buf` and completes the requests they finish.
    fn dispatch(&mut self, buf: &mut BytesMut) -> Result<(), String> {
        let mut completed = 0u64;
        while let Some(frame) = self.decoder.decode(buf).map_err(|e| e.to_string())? {
            let head = self
                .in_flight
                .front_mut()
                .ok_or_else(|| "reply received with no request in flight".to_string())?;
            if let Step::Done(reply) = head.accept(frame)? {
                if let Some(pending) = self.in_flight.pop_front() {
                    let failures = pending.quiet_failures();
                    if failures > 0 {
                        NodeCounters::add(&self.node.counters.quiet_failures, failures);
                    }
                    pending.complete(reply);
                    completed += 1;
                }
            }
        }
        if completed > 0 {
            self.shared.consecutive_timeouts.store(0, Ordering::Release);
            self.node
                .counters
                .in_flight
                .store(self.in_flight.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The reason a connection ends with when its driver panicked.
fn panicked(panic: &(dyn std::any::Any + Send)) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    tracing::error!(%message, "connection driver panicked");
    format!("connection driver panicked: {message}")
}

/// Exponential backoff with "equal jitter": half the capped exponential delay, plus a
/// random part up to the other half, so reconnecting clients don't move in lockstep.
pub(crate) fn backoff_delay(attempt: u32, min: Duration, max: Duration, random: u64) -> Duration {
    let exp = min.saturating_mul(2u32.saturating_pow(attempt.min(31)));
    let capped = exp.min(max).max(min);
    let half = capped / 2;
    let span = (capped - half).as_nanos().max(1) as u64;
    half + Duration::from_nanos(random % span)
}

fn jitter_seed(id: &str, slot: usize) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    id.hash(&mut hasher);
    slot.hash(&mut hasher);
    hasher.finish()
}

/// splitmix64: a small, well-mixed generator, enough for jitter.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stays_within_half_to_full() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(30);
        for attempt in 0..40 {
            let full = min
                .saturating_mul(2u32.saturating_pow(attempt.min(31)))
                .min(max);
            for random in [0, 1, u64::MAX / 3, u64::MAX] {
                let d = backoff_delay(attempt, min, max, random);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt}: {d:?} vs {full:?}"
                );
            }
        }
        assert_eq!(backoff_delay(0, min, max, 0), Duration::from_millis(50));
        assert!(backoff_delay(20, min, max, 0) >= Duration::from_secs(15));
    }

    #[test]
    fn jitter_values_differ() {
        let mut state = 1;
        let a = next_random(&mut state);
        let b = next_random(&mut state);
        assert_ne!(a, b);
    }
}
