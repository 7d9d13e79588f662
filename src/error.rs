//! The one error type every fallible operation of the crate returns.

use std::time::Duration;

/// Everything that can go wrong talking to memcached.
///
/// The enum is `#[non_exhaustive]`: match the variants you care about and keep a
/// catch-all arm. The predicates ([`Error::is_timeout`], [`Error::is_node_failure`],
/// [`Error::is_retryable`]) are the stable way to decide between retrying, failing over
/// to another node and giving up.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server did not answer within the operation timeout. The request may or may
    /// not have been applied.
    #[error("operation on node {node} timed out after {after:?}")]
    Timeout {
        /// Id of the node the operation was sent to.
        node: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The node is marked down (connection refused, lost, or too many timeouts) and the
    /// failure policy did not send the operation elsewhere.
    #[error("node {node} is down")]
    NodeDown {
        /// Id of the node.
        node: String,
    },
    /// The client has no node to route to. When nodes exist but none can take the
    /// operation, the client reports [`Error::NodesUnavailable`] instead, which names each
    /// node and why; this variant is kept for code that builds or matches it.
    #[error("no memcached node is available")]
    NoNodeAvailable,
    /// No node could take the operation: each is named with its address, state and the
    /// last connection error.
    #[error("no memcached node is available: {}", describe(nodes))]
    NodesUnavailable {
        /// Every node of the client, with why it is unusable.
        nodes: Vec<UnavailableNode>,
    },
    /// The connection broke while the operation was in flight; it may or may not have
    /// been applied.
    #[error("connection to node {node} lost: {reason}")]
    ConnectionLost {
        /// Id of the node.
        node: String,
        /// What broke it.
        reason: String,
    },
    /// The server answered `SERVER_ERROR <message>` (out of memory, object too large
    /// for the server's item size, ...).
    #[error("server error: {0}")]
    Server(String),
    /// The server answered `CLIENT_ERROR <message>`: it rejected the request as
    /// malformed.
    #[error("server rejected the request: {0}")]
    ClientRejected(String),
    /// The server answered `ERROR`: it does not know the command (for instance a
    /// proxy without the meta protocol).
    #[error("server does not support the command")]
    UnsupportedCommand,
    /// The server sent bytes that are not a valid reply. The connection is reset.
    #[error("protocol violation from node {node}: {reason}")]
    Protocol {
        /// Id of the node.
        node: String,
        /// What was wrong with the reply.
        reason: String,
    },
    /// The key is refused before sending (empty, too long, or has bytes the chosen
    /// protocol cannot carry).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A value exceeds the configured maximum item size (`ClientBuilder::max_value_size`):
    /// either a value to store (nothing was sent) or a value the server returned (its
    /// bytes were skipped; the connection and every other request on it go on).
    #[error("value of {size} bytes exceeds the maximum of {max} bytes")]
    ValueTooLarge {
        /// Size of the refused value.
        size: usize,
        /// The configured limit (`ClientBuilder::max_value_size`).
        max: usize,
    },
    /// An `incr`/`decr` on a value that is not a decimal number.
    #[error("value is not a number: {0}")]
    NotNumeric(String),
    /// The configuration is refused; the message names the field and the fix.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The field (builder method) at fault.
        field: &'static str,
        /// Why, and what to do instead.
        reason: String,
    },
    /// No node has the id given to `Client::on_node`.
    #[error("no node with id {0:?}")]
    UnknownNode(String),
    /// The client was shut down.
    #[error("client is shut down")]
    Shutdown,
    /// The operation needs memcached's meta protocol (vivify on miss, recache
    /// threshold, invalidation, [`Client::get_or_compute`](crate::Client::get_or_compute)),
    /// and the client speaks the text protocol (`ClientBuilder::protocol`), which has
    /// no such flags. Nothing was sent.
    #[error("{0} needs the meta protocol; this client speaks the text protocol")]
    MetaProtocolRequired(&'static str),
}

impl Error {
    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// True when the node (not the request) is at fault: timeout, node down, connection
    /// lost, protocol violation, or no node at all. A caller that keeps a copy on another
    /// node (the session layer does) fails over on these.
    pub fn is_node_failure(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. }
                | Error::NodeDown { .. }
                | Error::NoNodeAvailable
                | Error::NodesUnavailable { .. }
                | Error::ConnectionLost { .. }
                | Error::Protocol { .. }
        )
    }

    /// True when sending the same request again later may succeed: node failures (see
    /// [`Error::is_node_failure`]) and transient server errors (`SERVER_ERROR out of
    /// memory`, busy). Requests refused for their content are not retryable: a bad key, a
    /// value above `max_value_size` or above the server's item size (`SERVER_ERROR object
    /// too large for cache`), a malformed request (`CLIENT_ERROR`), an unknown command, a
    /// non-numeric counter, a bad configuration, an unknown node, a shut-down client.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Server(message) => !is_content_refusal(message),
            other => other.is_node_failure(),
        }
    }

    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Config {
            field,
            reason: reason.into(),
        }
    }
}

/// A node named by [`Error::NodesUnavailable`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnavailableNode {
    /// The node's id.
    pub id: String,
    /// Its address.
    pub address: String,
    /// Its state when the operation gave up on it.
    pub state: crate::NodeState,
    /// Why its last connection attempt failed or its last connection ended, if ever.
    pub last_error: Option<String>,
}

impl std::fmt::Display for UnavailableNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            crate::NodeState::Up => "up",
            crate::NodeState::Connecting => "connecting",
            crate::NodeState::Down => "down",
        };
        write!(f, "{} ({}) {state}", self.id, self.address)?;
        match &self.last_error {
            Some(error) => write!(f, ", last error: {error}"),
            None => Ok(()),
        }
    }
}

fn describe(nodes: &[UnavailableNode]) -> String {
    let named: Vec<String> = nodes.iter().map(ToString::to_string).collect();
    named.join("; ")
}

/// True for the `SERVER_ERROR` messages memcached sends when it refuses a request for
/// what it carries rather than for its own state: the item is larger than the server's
/// item size (`object too large for cache`, also sent by proxies as `too large`).
fn is_content_refusal(message: &str) -> bool {
    message.contains("too large")
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant, with what a caller should do with it: (error, node failure, retryable).
    #[test]
    fn every_variant_is_classified() {
        let node = || "n0".to_string();
        let cases = [
            (
                Error::Timeout {
                    node: node(),
                    after: Duration::from_secs(1),
                },
                true,
                true,
            ),
            (Error::NodeDown { node: node() }, true, true),
            (Error::NoNodeAvailable, true, true),
            (Error::NodesUnavailable { nodes: Vec::new() }, true, true),
            (
                Error::ConnectionLost {
                    node: node(),
                    reason: "reset".into(),
                },
                true,
                true,
            ),
            (
                Error::Protocol {
                    node: node(),
                    reason: "garbage".into(),
                },
                true,
                true,
            ),
            (
                Error::Server("out of memory storing object".into()),
                false,
                true,
            ),
            (
                Error::Server("object too large for cache".into()),
                false,
                false,
            ),
            (Error::ClientRejected("bad data chunk".into()), false, false),
            (Error::UnsupportedCommand, false, false),
            (Error::InvalidKey("empty".into()), false, false),
            (Error::ValueTooLarge { size: 2, max: 1 }, false, false),
            (Error::NotNumeric("x".into()), false, false),
            (Error::config("max_in_flight", "too many"), false, false),
            (Error::UnknownNode("zz".into()), false, false),
            (Error::Shutdown, false, false),
        ];
        for (error, node_failure, retryable) in cases {
            assert_eq!(error.is_node_failure(), node_failure, "{error:?}");
            assert_eq!(error.is_retryable(), retryable, "{error:?}");
            assert_eq!(error.is_timeout(), matches!(error, Error::Timeout { .. }));
        }
    }
}
