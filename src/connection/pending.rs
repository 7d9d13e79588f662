//! The in-flight queue's entries: each assembles the frames of one reply.
//!
//! An entry is one [`State`] per reply shape (a status line, a text retrieval, `STAT`s, one
//! meta reply, a meta batch, a merged `get` line, a quiet barrier), each holding only what
//! its shape needs and accepting frames with its own method.

use tokio::sync::oneshot;
use tokio::time::Instant;

use bytes::Bytes;

use crate::protocol::text::RequestedKeys;
use crate::protocol::{ErrorKind, Expect, Frame, MetaFrame, MetaStatus, Reply};
use crate::Error;

/// Where a finished reply goes: a caller waiting for it, or nobody (fire-and-forget,
/// a quiet barrier, or a caller that gave up).
pub(crate) type ReplySender = oneshot::Sender<Result<Reply, Error>>;

/// Progress of one entry after a frame.
pub(crate) enum Step {
    /// The reply needs more frames.
    More,
    /// The reply is complete.
    Done(Reply),
}

/// The outcome of one frame: `Err` means the frame can't belong to the entry at the
/// head of the queue, so the stream is out of sync.
type Accepted = Result<Step, String>;

/// An error line (or a value too large for the client) recorded for a reply that goes on.
type ErrorLine = (ErrorKind, Bytes);

/// One request whose reply has not been fully read yet.
#[derive(Debug)]
pub(crate) struct Pending {
    reply: Option<ReplySender>,
    /// When the caller of `reply` stops waiting (see [`Pending::expire`]).
    deadline: Option<Instant>,
    state: State,
}

/// What an entry waits for, with what it has gathered so far.
#[derive(Debug)]
enum State {
    /// One text status, number or version line.
    Line,
    /// A text retrieval.
    Values(Values),
    /// `STAT` lines closed by `END`.
    Stats(Vec<(Bytes, Bytes)>),
    /// One meta reply carrying this opaque.
    Meta { opaque: u32 },
    /// Quiet `mg` hits closed by `MN`.
    MetaBatch(MetaBatch),
    /// Several callers' single-key `get`s merged into one line.
    Merged(Merged),
    /// Fire-and-forget quiet commands closed by `MN`; counts their failures.
    QuietBarrier { failures: u64 },
}

/// A text retrieval: `VALUE`s closed by one `END` per `get` line sent.
#[derive(Debug)]
struct Values {
    ends: usize,
    ends_seen: usize,
    values: Vec<Frame>,
    /// The keys asked for, to check each `VALUE` against.
    requested: RequestedKeys,
    error: Option<ErrorLine>,
}

/// Quiet `mg` hits with opaques `first..first+count`, closed by `MN`.
#[derive(Debug)]
struct MetaBatch {
    first: u32,
    count: u32,
    values: Vec<(u32, MetaFrame)>,
    error: Option<ErrorLine>,
}

/// A merged `get k1 k2 …` line: the callers whose keys share it, in key order.
#[derive(Debug)]
struct Merged {
    members: Vec<Member>,
    /// The first member not yet answered.
    next: usize,
}

/// One caller's `get` inside a merged line.
#[derive(Debug)]
struct Member {
    /// The caller's own encoded `get <key>\r\n`.
    request: Bytes,
    reply: Option<ReplySender>,
    deadline: Option<Instant>,
}

impl Member {
    fn key(&self) -> &[u8] {
        merged_key(&self.request)
    }

    fn send(&mut self, result: Result<Reply, Error>) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(result);
        }
    }
}

/// The key of an encoded single-key `get <key>\r\n`.
pub(crate) fn merged_key(request: &[u8]) -> &[u8] {
    request
        .get(4..request.len().saturating_sub(2))
        .unwrap_or_default()
}

impl Pending {
    /// An entry for a request whose encoded bytes are `request`.
    pub(crate) fn new(expect: Expect, reply: Option<ReplySender>, request: &Bytes) -> Self {
        let state = match expect {
            Expect::TextLine => State::Line,
            Expect::TextValues { ends } => State::Values(Values {
                ends,
                ends_seen: 0,
                values: Vec::new(),
                requested: RequestedKeys::new(request.clone()),
                error: None,
            }),
            Expect::TextStats => State::Stats(Vec::new()),
            Expect::Meta { opaque } => State::Meta { opaque },
            Expect::MetaBatch { first, count } => State::MetaBatch(MetaBatch {
                first,
                count,
                values: Vec::new(),
                error: None,
            }),
            Expect::QuietBarrier => State::QuietBarrier { failures: 0 },
            Expect::MergedGets => State::Merged(Merged {
                members: Vec::new(),
                next: 0,
            }),
        };
        Self {
            reply,
            deadline: None,
            state,
        }
    }

    /// This entry, its caller waiting until `deadline` (`None`: as long as it takes).
    pub(crate) fn until(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// A merged `get` line whose first key is the one `request` asks for.
    #[cfg(test)]
    pub(crate) fn merged(request: Bytes, reply: Option<ReplySender>) -> Self {
        Self::merged_until(request, reply, None)
    }

    /// [`Pending::merged`], its first caller waiting until `deadline`.
    pub(crate) fn merged_until(
        request: Bytes,
        reply: Option<ReplySender>,
        deadline: Option<Instant>,
    ) -> Self {
        let mut pending = Self::new(Expect::MergedGets, None, &Bytes::new());
        pending.add_member_until(request, reply, deadline);
        pending
    }

    /// Adds the next caller of a merged `get` line (ignored by any other entry).
    #[cfg(test)]
    pub(crate) fn add_member(&mut self, request: Bytes, reply: Option<ReplySender>) {
        self.add_member_until(request, reply, None);
    }

    /// [`Pending::add_member`], the caller waiting until `deadline`.
    pub(crate) fn add_member_until(
        &mut self,
        request: Bytes,
        reply: Option<ReplySender>,
        deadline: Option<Instant>,
    ) {
        if let State::Merged(merged) = &mut self.state {
            merged.members.push(Member {
                request,
                reply,
                deadline,
            });
        }
    }

    /// Answers `timeout()` to every caller of this entry whose deadline is not after
    /// `now` (calling it only for those still waiting, and counting them in `expired`),
    /// and returns the earliest deadline of the callers left. The entry keeps its place
    /// in the queue: its reply is still read, and thrown away, so the stream stays in
    /// sync.
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        timeout: &dyn Fn() -> Error,
        expired: &mut u64,
    ) -> Option<Instant> {
        let mut next = expire_one(&mut self.reply, self.deadline, now, timeout, expired);
        if let State::Merged(merged) = &mut self.state {
            for member in &mut merged.members[merged.next..] {
                let left = expire_one(&mut member.reply, member.deadline, now, timeout, expired);
                next = earliest(next, left);
            }
        }
        next
    }

    /// Feeds the next frame from the server. `Err` means the frame can't belong to
    /// this request: the stream is out of sync.
    pub(crate) fn accept(&mut self, frame: Frame) -> Accepted {
        match &mut self.state {
            State::Line => accept_line(frame),
            State::Values(values) => values.accept(frame),
            State::Stats(stats) => accept_stat(stats, frame),
            State::Meta { opaque } => accept_meta(*opaque, frame),
            State::MetaBatch(batch) => batch.accept(frame),
            State::Merged(merged) => merged.accept(frame),
            State::QuietBarrier { failures } => accept_quiet(failures, frame),
        }
    }

    /// Failures reported inside a quiet barrier.
    pub(crate) fn quiet_failures(&self) -> u64 {
        match self.state {
            State::QuietBarrier { failures } => failures,
            _ => 0,
        }
    }

    /// Hands the reply to its caller, if one is still waiting.
    pub(crate) fn complete(self, reply: Reply) {
        if let Some(tx) = self.reply {
            // A caller that gave up dropped its receiver; the reply is discarded, which
            // is what keeps the stream in sync after a cancellation.
            let _ = tx.send(Ok(reply));
        }
    }

    /// Hands `error` to the caller and to every member still waiting.
    pub(crate) fn fail(mut self, error: &Error) {
        if let State::Merged(merged) = &mut self.state {
            for member in &mut merged.members[merged.next..] {
                member.send(Err(error.clone()));
            }
        }
        if let Some(tx) = self.reply {
            let _ = tx.send(Err(error.clone()));
        }
    }
}

/// [`Pending::expire`] for one caller: its deadline if it still waits after `now`.
pub(crate) fn expire_one(
    reply: &mut Option<ReplySender>,
    deadline: Option<Instant>,
    now: Instant,
    timeout: &dyn Fn() -> Error,
    expired: &mut u64,
) -> Option<Instant> {
    let deadline = deadline.filter(|_| reply.is_some())?;
    if deadline > now {
        return Some(deadline);
    }
    // A caller that gave up already is not counted as a timeout. `timeout` counts it
    // before the caller can see it.
    if let Some(tx) = reply.take().filter(|tx| !tx.is_closed()) {
        *expired += 1;
        let _ = tx.send(Err(timeout()));
    }
    None
}

/// The earlier of two optional deadlines.
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn accept_line(frame: Frame) -> Accepted {
    match frame {
        Frame::Status(_) | Frame::Number(_) | Frame::Version(_) => {
            Ok(Step::Done(Reply::Line(frame)))
        }
        Frame::Error { kind, message } => Ok(Step::Done(Reply::Error { kind, message })),
        other => Err(unexpected("a status line", &other)),
    }
}

fn accept_stat(stats: &mut Vec<(Bytes, Bytes)>, frame: Frame) -> Accepted {
    match frame {
        Frame::Stat { name, value } => {
            stats.push((name, value));
            Ok(Step::More)
        }
        Frame::End => Ok(Step::Done(Reply::Stats(std::mem::take(stats)))),
        Frame::Error { kind, message } => Ok(Step::Done(Reply::Error { kind, message })),
        other => Err(unexpected("STAT or END", &other)),
    }
}

fn accept_meta(opaque: u32, frame: Frame) -> Accepted {
    let check = |got: Option<u32>| {
        if got == Some(opaque) {
            Ok(())
        } else {
            Err(format!(
                "reply carries opaque {got:?}, the request at the head of the queue sent {opaque}"
            ))
        }
    };
    match frame {
        Frame::Meta(m) if m.status != MetaStatus::Noop => {
            check(m.opaque)?;
            Ok(Step::Done(Reply::Meta(m)))
        }
        Frame::TooLarge {
            opaque: got,
            size,
            max,
            key: None,
        } => {
            check(got)?;
            let (kind, message) = too_large(size, max);
            Ok(Step::Done(Reply::Error { kind, message }))
        }
        Frame::Error { kind, message } => Ok(Step::Done(Reply::Error { kind, message })),
        other => Err(unexpected("a meta reply", &other)),
    }
}

fn accept_quiet(failures: &mut u64, frame: Frame) -> Accepted {
    match frame {
        Frame::Meta(m) if m.status == MetaStatus::Noop => Ok(Step::Done(Reply::Barrier)),
        // Quiet mode still reports some outcomes (HD for a touch hit, NF for a delete
        // miss); only error lines are failures.
        Frame::Meta(_) => Ok(Step::More),
        Frame::Error { kind, message } => {
            *failures += 1;
            tracing::warn!(?kind, message = %String::from_utf8_lossy(&message),
                "fire-and-forget request failed");
            Ok(Step::More)
        }
        other => Err(unexpected("a meta reply or MN", &other)),
    }
}

impl Values {
    fn accept(&mut self, frame: Frame) -> Accepted {
        match frame {
            Frame::Value { ref key, .. } => {
                if !self.requested.advance_past(key) {
                    return Err(not_asked_for(key));
                }
                self.values.push(frame);
                Ok(Step::More)
            }
            // A value too large for the client fails the whole retrieval, but unlike an
            // error line it does not replace an END.
            Frame::TooLarge {
                key: Some(ref key),
                size,
                max,
                ..
            } => {
                if !self.requested.advance_past(key) {
                    return Err(not_asked_for(key));
                }
                self.error.get_or_insert(too_large(size, max));
                Ok(Step::More)
            }
            // An error line replaces the END of one `get` line.
            Frame::End | Frame::Error { .. } => {
                if let Frame::Error { kind, message } = frame {
                    self.error.get_or_insert((kind, message));
                }
                self.ends_seen += 1;
                if self.ends_seen < self.ends {
                    return Ok(Step::More);
                }
                Ok(Step::Done(match self.error.take() {
                    Some((kind, message)) => Reply::Error { kind, message },
                    None => Reply::Values(std::mem::take(&mut self.values)),
                }))
            }
            other => Err(unexpected("VALUE or END", &other)),
        }
    }
}

impl MetaBatch {
    fn accept(&mut self, frame: Frame) -> Accepted {
        let (first, count) = (self.first, self.count);
        let index = |opaque: Option<u32>| {
            opaque
                .map(|o| o.wrapping_sub(first))
                .filter(|i| *i < count)
                .ok_or_else(|| {
                    format!("reply carries opaque {opaque:?}, outside the batch {first}+{count}")
                })
        };
        match frame {
            Frame::Meta(m) if m.status == MetaStatus::Noop => {
                Ok(Step::Done(match self.error.take() {
                    Some((kind, message)) => Reply::Error { kind, message },
                    None => Reply::MetaValues(std::mem::take(&mut self.values)),
                }))
            }
            Frame::Meta(m) => {
                let index = index(m.opaque)?;
                if m.status == MetaStatus::Value {
                    self.values.push((index, m));
                }
                Ok(Step::More)
            }
            Frame::TooLarge {
                opaque,
                size,
                max,
                key: None,
            } => {
                index(opaque)?;
                self.error.get_or_insert(too_large(size, max));
                Ok(Step::More)
            }
            Frame::Error { kind, message } => {
                self.error.get_or_insert((kind, message));
                Ok(Step::More)
            }
            other => Err(unexpected("a meta reply or MN", &other)),
        }
    }
}

impl Merged {
    fn accept(&mut self, frame: Frame) -> Accepted {
        match frame {
            Frame::Value { ref key, .. }
            | Frame::TooLarge {
                key: Some(ref key), ..
            } => {
                // Hits come in key order: every member before the one this value answers
                // missed. Nobody is told anything until the match is found, so a
                // desynchronised stream fails them all instead.
                let rest = &self.members[self.next..];
                let Some(offset) = rest.iter().position(|m| m.key() == key.as_ref()) else {
                    return Err(format!(
                        "VALUE for key {:?}, which the merged get at the head of the queue did \
                         not ask for (or not in this order)",
                        String::from_utf8_lossy(key)
                    ));
                };
                let hit = self.next + offset;
                for member in &mut self.members[self.next..hit] {
                    member.send(Ok(Reply::Values(Vec::new())));
                }
                self.next = hit + 1;
                let reply = match frame {
                    Frame::TooLarge { size, max, .. } => {
                        let (kind, message) = too_large(size, max);
                        Reply::Error { kind, message }
                    }
                    value => Reply::Values(vec![value]),
                };
                self.members[hit].send(Ok(reply));
                Ok(Step::More)
            }
            Frame::End => {
                for member in &mut self.members[self.next..] {
                    member.send(Ok(Reply::Values(Vec::new())));
                }
                self.next = self.members.len();
                Ok(Step::Done(Reply::Barrier))
            }
            Frame::Error { kind, message } => {
                for member in &mut self.members[self.next..] {
                    member.send(Ok(Reply::Error {
                        kind,
                        message: message.clone(),
                    }));
                }
                self.next = self.members.len();
                Ok(Step::Done(Reply::Barrier))
            }
            other => Err(unexpected("VALUE or END", &other)),
        }
    }
}

/// The error a value too large for the client turns into.
fn too_large(size: usize, max: usize) -> ErrorLine {
    (ErrorKind::TooLarge { size, max }, Bytes::new())
}

fn not_asked_for(key: &[u8]) -> String {
    format!(
        "VALUE for key {:?}, which the request at the head of the queue did not ask for \
         (or not in this order)",
        String::from_utf8_lossy(key)
    )
}

fn unexpected(wanted: &str, got: &Frame) -> String {
    let got = match got {
        Frame::Value { .. } => "VALUE",
        Frame::End => "END",
        Frame::Stat { .. } => "STAT",
        Frame::Status(_) => "a status line",
        Frame::Number(_) => "a number",
        Frame::Version(_) => "VERSION",
        Frame::Meta(_) => "a meta reply",
        Frame::Error { .. } => "an error line",
        Frame::TooLarge { .. } => "a value over max_value_size",
    };
    format!("expected {wanted}, got {got}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn meta(status: MetaStatus, opaque: Option<u32>) -> Frame {
        Frame::Meta(MetaFrame {
            status,
            opaque,
            flags: None,
            cas: None,
            data: None,
            recache: Default::default(),
        })
    }

    #[test]
    fn text_multi_get_waits_for_every_end() {
        let mut p = Pending::new(
            Expect::TextValues { ends: 2 },
            None,
            &Bytes::from_static(b"get a\r\nget b\r\n"),
        );
        let value = Frame::Value {
            key: Bytes::from_static(b"a"),
            flags: 0,
            cas: None,
            data: Bytes::new(),
        };
        assert!(matches!(p.accept(value.clone()), Ok(Step::More)));
        assert!(matches!(p.accept(Frame::End), Ok(Step::More)));
        match p.accept(Frame::End) {
            Ok(Step::Done(Reply::Values(v))) => assert_eq!(v, vec![value]),
            _ => panic!("expected values"),
        }
    }

    #[test]
    fn a_text_value_for_a_key_not_requested_is_a_desync() {
        let request = Bytes::from_static(b"get a b\r\n");
        let value = |key: &'static [u8]| Frame::Value {
            key: Bytes::from_static(key),
            flags: 0,
            cas: None,
            data: Bytes::new(),
        };
        let mut p = Pending::new(Expect::TextValues { ends: 1 }, None, &request);
        assert!(p.accept(value(b"c")).is_err());
        let mut p = Pending::new(Expect::TextValues { ends: 1 }, None, &request);
        assert!(matches!(p.accept(value(b"b")), Ok(Step::More)));
        assert!(p.accept(value(b"a")).is_err(), "out of order");
    }

    #[test]
    fn a_meta_reply_with_another_requests_opaque_is_a_desync() {
        let mut p = Pending::new(Expect::Meta { opaque: 5 }, None, &Bytes::new());
        assert!(p.accept(meta(MetaStatus::Ok, Some(6))).is_err());
        let mut p = Pending::new(Expect::Meta { opaque: 5 }, None, &Bytes::new());
        assert!(p.accept(meta(MetaStatus::Ok, None)).is_err());
        let mut p = Pending::new(Expect::Meta { opaque: 5 }, None, &Bytes::new());
        assert!(matches!(
            p.accept(meta(MetaStatus::Ok, Some(5))),
            Ok(Step::Done(_))
        ));
    }

    #[test]
    fn meta_batch_accepts_only_its_own_opaques_and_ends_at_mn() {
        let mut p = Pending::new(
            Expect::MetaBatch {
                first: u32::MAX,
                count: 3,
            },
            None,
            &Bytes::new(),
        );
        assert!(matches!(
            p.accept(meta(MetaStatus::Value, Some(1))),
            Ok(Step::More)
        ));
        assert!(p.accept(meta(MetaStatus::Value, Some(2))).is_err());
        let mut p = Pending::new(
            Expect::MetaBatch {
                first: 10,
                count: 3,
            },
            None,
            &Bytes::new(),
        );
        assert!(matches!(
            p.accept(meta(MetaStatus::Value, Some(12))),
            Ok(Step::More)
        ));
        match p.accept(meta(MetaStatus::Noop, None)) {
            Ok(Step::Done(Reply::MetaValues(v))) => assert_eq!(v[0].0, 2),
            _ => panic!("expected values"),
        }
    }

    fn value(key: &'static [u8]) -> Frame {
        Frame::Value {
            key: Bytes::from_static(key),
            flags: 0,
            cas: None,
            data: Bytes::from_static(key),
        }
    }

    fn member(key: &str) -> (Bytes, oneshot::Receiver<Result<Reply, Error>>, ReplySender) {
        let (tx, rx) = oneshot::channel();
        (Bytes::from(format!("get {key}\r\n")), rx, tx)
    }

    fn got(rx: &mut oneshot::Receiver<Result<Reply, Error>>) -> Vec<Frame> {
        match rx.try_recv() {
            Ok(Ok(Reply::Values(v))) => v,
            other => panic!("expected values, got {other:?}"),
        }
    }

    #[test]
    fn merged_gets_hand_each_caller_its_own_hit_or_miss() {
        let (ra, mut a, ta) = member("a");
        let (rb, mut b, tb) = member("b");
        let (rc, mut c, tc) = member("c");
        let (ra2, mut a2, ta2) = member("a");
        let mut p = Pending::merged(ra, Some(ta));
        p.add_member(rb, Some(tb));
        p.add_member(rc, Some(tc));
        p.add_member(ra2, Some(ta2));
        assert!(matches!(p.accept(value(b"b")), Ok(Step::More)));
        assert_eq!(got(&mut a), vec![], "a missed: b came first");
        assert_eq!(got(&mut b), vec![value(b"b")]);
        assert!(matches!(p.accept(value(b"a")), Ok(Step::More)));
        assert_eq!(got(&mut c), vec![], "c missed");
        assert_eq!(
            got(&mut a2),
            vec![value(b"a")],
            "the second a gets its own hit"
        );
        assert!(matches!(
            p.accept(Frame::End),
            Ok(Step::Done(Reply::Barrier))
        ));
    }

    #[test]
    fn merged_gets_refuse_a_key_not_asked_for_and_fail_everyone_left() {
        let (ra, _a, ta) = member("a");
        let (rb, mut b, tb) = member("b");
        let mut p = Pending::merged(ra, Some(ta));
        p.add_member(rb, Some(tb));
        assert!(p.accept(value(b"zz")).is_err());
        p.fail(&Error::Shutdown);
        assert!(matches!(b.try_recv(), Ok(Err(Error::Shutdown))));
    }

    #[test]
    fn merged_gets_end_with_every_remaining_caller_missing() {
        let (ra, mut a, ta) = member("a");
        let (rb, mut b, tb) = member("b");
        let mut p = Pending::merged(ra, Some(ta));
        p.add_member(rb, Some(tb));
        assert!(matches!(p.accept(Frame::End), Ok(Step::Done(_))));
        assert_eq!(got(&mut a), vec![]);
        assert_eq!(got(&mut b), vec![]);
    }

    #[test]
    fn quiet_barrier_counts_error_lines_and_ends_at_mn() {
        let mut p = Pending::new(Expect::QuietBarrier, None, &Bytes::new());
        let err = Frame::Error {
            kind: ErrorKind::Server,
            message: Bytes::from_static(b"out of memory"),
        };
        assert!(matches!(p.accept(err), Ok(Step::More)));
        assert!(matches!(
            p.accept(meta(MetaStatus::NotFound, Some(3))),
            Ok(Step::More)
        ));
        assert!(matches!(
            p.accept(meta(MetaStatus::Noop, None)),
            Ok(Step::Done(Reply::Barrier))
        ));
        assert_eq!(p.quiet_failures(), 1);
    }

    #[test]
    fn a_text_reply_where_a_meta_one_is_due_is_a_desync() {
        let mut p = Pending::new(Expect::Meta { opaque: 1 }, None, &Bytes::new());
        assert!(p.accept(Frame::End).is_err());
        let mut p = Pending::new(Expect::TextLine, None, &Bytes::new());
        assert!(p.accept(meta(MetaStatus::Ok, Some(1))).is_err());
    }

    fn timeout() -> Error {
        Error::Timeout {
            node: "n0".into(),
            after: std::time::Duration::from_millis(1),
        }
    }

    #[test]
    fn an_expired_caller_gets_a_timeout_and_its_late_reply_is_still_read_and_dropped() {
        let now = Instant::now();
        let deadline = now + std::time::Duration::from_secs(1);
        let (tx, mut rx) = oneshot::channel();
        let mut p =
            Pending::new(Expect::Meta { opaque: 7 }, Some(tx), &Bytes::new()).until(Some(deadline));
        let mut expired = 0;
        // Before its deadline: nothing happens, and the deadline is reported.
        assert_eq!(p.expire(now, &timeout, &mut expired), Some(deadline));
        assert_eq!(expired, 0);
        assert!(rx.try_recv().is_err());
        // At it: a timeout, counted once; nothing left to watch.
        assert_eq!(p.expire(deadline, &timeout, &mut expired), None);
        assert_eq!(expired, 1);
        assert!(matches!(rx.try_recv(), Ok(Err(Error::Timeout { .. }))));
        assert_eq!(p.expire(deadline, &timeout, &mut expired), None);
        assert_eq!(expired, 1);
        // The entry keeps its place: its reply is still accepted as its own, then dropped.
        let done = p.accept(meta(MetaStatus::Ok, Some(7)));
        let Ok(Step::Done(reply)) = done else {
            panic!("reply not accepted after the timeout");
        };
        p.complete(reply);
    }

    #[test]
    fn merged_callers_expire_each_at_its_own_deadline() {
        let now = Instant::now();
        let early = now + std::time::Duration::from_millis(10);
        let late = now + std::time::Duration::from_secs(1);
        let (ra, mut a, ta) = member("a");
        let (rb, mut b, tb) = member("b");
        let mut p = Pending::merged_until(ra, Some(ta), Some(early));
        p.add_member_until(rb, Some(tb), Some(late));
        let mut expired = 0;
        assert_eq!(p.expire(early, &timeout, &mut expired), Some(late));
        assert_eq!(expired, 1);
        assert!(matches!(a.try_recv(), Ok(Err(Error::Timeout { .. }))));
        assert!(b.try_recv().is_err(), "b's deadline has not passed");
        // The line's reply still answers b, and a's hit is read and dropped.
        assert!(matches!(p.accept(value(b"a")), Ok(Step::More)));
        assert!(matches!(p.accept(value(b"b")), Ok(Step::More)));
        assert_eq!(got(&mut b), vec![value(b"b")]);
        assert!(matches!(
            p.accept(Frame::End),
            Ok(Step::Done(Reply::Barrier))
        ));
        // A caller that gave up is not counted.
        let (rc, c, tc) = member("c");
        let mut p = Pending::merged_until(rc, Some(tc), Some(early));
        drop(c);
        let mut expired = 0;
        assert_eq!(p.expire(late, &timeout, &mut expired), None);
        assert_eq!(expired, 0);
    }
}
