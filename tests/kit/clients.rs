//! Building `memkeep::Client`s against the kit's servers.

use std::time::Duration;

use memkeep::{Client, ClientBuilder, NodeConfig, NodeState, Protocol};

use super::memcached::Cluster;

/// Both wire protocols, for tests that run once per protocol.
pub const PROTOCOLS: [Protocol; 2] = [Protocol::Meta, Protocol::Text];

/// A builder with one node per address, ids `n0`, `n1`, ... (as [`Cluster::id`]).
pub fn builder_for(addrs: &[String], protocol: Protocol) -> ClientBuilder {
    let mut b = Client::builder().protocol(protocol);
    for (i, addr) in addrs.iter().enumerate() {
        b = b.node_config(NodeConfig::new(addr.as_str()).id(Cluster::id(i)));
    }
    b
}

/// A builder for every server of `cluster`, ids `n0`, `n1`, ...
pub fn builder(cluster: &Cluster, protocol: Protocol) -> ClientBuilder {
    builder_for(&cluster.addrs(), protocol)
}

/// A client with default settings for every server of `cluster`. Must run inside a
/// tokio runtime.
pub fn client(cluster: &Cluster, protocol: Protocol) -> Client {
    builder(cluster, protocol).build().unwrap_or_else(|e| {
        panic!(
            "building a {protocol:?} client for {:?}: {e}",
            cluster.addrs()
        )
    })
}

/// A client with default settings for these addresses.
pub fn client_for(addrs: &[String], protocol: Protocol) -> Client {
    builder_for(addrs, protocol)
        .build()
        .unwrap_or_else(|e| panic!("building a {protocol:?} client for {addrs:?}: {e}"))
}

/// Waits (bounded) until the client reports every node `Up`; returns whether it did.
pub async fn wait_all_up(client: &Client, limit: Duration) -> bool {
    super::eventually(limit, || {
        client.nodes().iter().all(|n| n.state == NodeState::Up)
    })
    .await
}

/// Waits (bounded) until node `id` is in `state`; returns whether it got there.
pub async fn wait_state(client: &Client, id: &str, state: NodeState, limit: Duration) -> bool {
    super::eventually(limit, || client.node_state(id) == Some(state)).await
}

/// Why no node can take an operation, as the error's text: waits (bounded) until node
/// `n0` is down, runs a `get`, and expects `Error::NodesUnavailable` (which names each
/// node and its last error). For tests of connections that can't be established
/// (refused login, failed TLS handshake, a peer that speaks another protocol).
pub async fn why_unavailable(client: &Client) -> String {
    assert!(
        wait_state(client, "n0", NodeState::Down, Duration::from_secs(10)).await,
        "the node stays down: {:?}",
        client.nodes()
    );
    let limit = Duration::from_secs(60);
    match super::no_hang(
        "get on a node that can't be reached",
        limit,
        client.get("k"),
    )
    .await
    {
        Err(e @ memkeep::Error::NodesUnavailable { .. }) => {
            println!("{e}");
            e.to_string()
        }
        other => panic!("expected NodesUnavailable, got {other:?}"),
    }
}

/// The state the client reports for node `id`.
pub fn state_of(client: &Client, id: &str) -> Option<NodeState> {
    client.node_state(id)
}

/// Samples `client.nodes()` every 5 ms in the background and remembers, per node, the
/// sequence of distinct states it saw, so a short Down window between two polls of a
/// test is not missed. Stops when dropped.
pub struct StateWatcher {
    seen: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<NodeState>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StateWatcher {
    /// Starts watching (inside a tokio runtime).
    pub fn start(client: &Client) -> StateWatcher {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
            String,
            Vec<NodeState>,
        >::new()));
        let (c, s) = (client.clone(), seen.clone());
        let task = tokio::spawn(async move {
            // Bounded: at most 10 minutes of sampling even if never dropped.
            for _ in 0..120_000 {
                for n in c.nodes() {
                    let mut g = s.lock().unwrap();
                    let v = g.entry(n.id.clone()).or_default();
                    if v.last() != Some(&n.state) {
                        v.push(n.state);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        StateWatcher { seen, task }
    }

    /// The distinct states node `id` went through so far.
    pub fn history(&self, id: &str) -> Vec<NodeState> {
        self.seen
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// True once node `id` was seen in `state`.
    pub fn saw(&self, id: &str, state: NodeState) -> bool {
        self.history(id).contains(&state)
    }

    /// Waits (bounded) until node `id` was seen in `state`.
    pub async fn wait_saw(&self, id: &str, state: NodeState, limit: Duration) -> bool {
        super::eventually(limit, || self.saw(id, state)).await
    }

    /// True once node `id` was seen in `first` and later in `then`.
    pub fn saw_sequence(&self, id: &str, first: NodeState, then: NodeState) -> bool {
        let h = self.history(id);
        h.iter()
            .position(|s| *s == first)
            .is_some_and(|i| h[i + 1..].contains(&then))
    }

    /// Waits (bounded) until node `id` was seen in `first` and later in `then`.
    pub async fn wait_saw_sequence(
        &self,
        id: &str,
        first: NodeState,
        then: NodeState,
        limit: Duration,
    ) -> bool {
        super::eventually(limit, || self.saw_sequence(id, first, then)).await
    }
}

impl Drop for StateWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
