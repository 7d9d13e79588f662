//! Session lifecycle listeners: the Rust counterpart of the Servlet session listeners
//! (created / destroyed, id changed, activation after a move to another node).
//!
//! A listener is registered on the config builder
//! ([`SessionConfigBuilder::listener`](super::SessionConfigBuilder::listener)) and gets
//! every [`SessionEvent`] of the instance it is registered on. Listeners run on a tokio
//! task spawned per event, off the request's path (the request does not wait for them);
//! a listener that panics is caught and logged, the request and the other listeners go
//! on. Events of one session may reach a listener out of order.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::id::SessionId;

/// What happened to a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionEventKind {
    /// A new session was created by a request on this instance.
    Created,
    /// The session was invalidated by a request on this instance (`invalidate()`, a
    /// session replaced by `create()`), or found bound to a principal that was logged
    /// out everywhere.
    Invalidated,
    /// A request on this instance found the session expired (idle timeout or absolute
    /// lifetime) and did not serve it.
    Expired,
    /// Sticky mode: this instance served a session whose id named another route.
    TakenOver,
    /// The id's primary node did not hold the latest copy: the session was read from
    /// another copy (the backup, a node it moved to).
    RestoredFromBackup,
    /// The session's primary copy moved to another node (the id changes).
    Relocated,
    /// The session's id was rotated ([`SessionRequest::cycle_id`](super::SessionRequest::cycle_id)):
    /// `previous_id` is the id that is now dead.
    IdChanged,
}

/// One lifecycle event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEvent {
    /// What happened.
    pub kind: SessionEventKind,
    /// The session's id (after the event: the new id of a rotation or a relocation).
    pub session_id: String,
    /// The route in the session's id.
    pub route: Option<String>,
    /// The id before a rotation (`IdChanged`), a relocation (`Relocated`) or a takeover
    /// (`TakenOver`).
    pub previous_id: Option<String>,
    /// The route of the instance the event happened on (its configured route; `None`
    /// for a non-sticky instance without one).
    pub instance: Option<String>,
}

/// A lifecycle listener. Closures `Fn(&SessionEvent)` are listeners.
pub trait SessionListener: Send + Sync + 'static {
    /// Called once per event, on a tokio task of its own.
    fn on_event(&self, event: &SessionEvent);
}

impl<F: Fn(&SessionEvent) + Send + Sync + 'static> SessionListener for F {
    fn on_event(&self, event: &SessionEvent) {
        self(event)
    }
}

/// The listeners of one service.
#[derive(Clone, Default)]
pub(crate) struct Listeners {
    list: Vec<Arc<dyn SessionListener>>,
}

impl Listeners {
    pub(crate) fn push(&mut self, l: Arc<dyn SessionListener>) {
        self.list.push(l);
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    /// Hands the event to every listener on the runtime's blocking pool (called inline
    /// when there is no runtime). Costs nothing without listeners.
    pub(crate) fn emit(
        &self,
        kind: SessionEventKind,
        id: &SessionId,
        previous: Option<&SessionId>,
        instance: Option<&str>,
    ) {
        if self.list.is_empty() {
            return;
        }
        let event = SessionEvent {
            kind,
            session_id: id.to_string(),
            route: id.route().map(str::to_owned),
            previous_id: previous.map(SessionId::to_string),
            instance: instance.map(str::to_owned),
        };
        let list = self.list.clone();
        let run = move || {
            for l in &list {
                if catch_unwind(AssertUnwindSafe(|| l.on_event(&event))).is_err() {
                    tracing::error!(kind = ?event.kind, "a session listener panicked; ignored");
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            // On the blocking pool, not as an async task: a listener is plain synchronous
            // code and may block (I/O, a lock), which on a runtime worker would stall
            // every request on that worker (all of them on a current-thread runtime).
            Ok(handle) => {
                handle.spawn_blocking(run);
            }
            Err(_) => run(),
        }
    }
}
