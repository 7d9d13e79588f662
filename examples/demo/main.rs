//! The thesis' demo: a session-failover cluster you can watch and break.
//!
//! ```text
//! bash scripts/demo.sh                       # = cargo run --example demo --features axum -- cluster
//! cargo run --example demo --features axum -- cluster --balancer haproxy --port 8080
//! cargo run --example demo --features axum -- instance --listen 127.0.0.1:8081 --route web1 \
//!     --nodes n1:127.0.0.1:11211,n2:127.0.0.1:11212 --failover-nodes n1
//! cargo run --example demo --features axum -- --help
//! ```
//!
//! `instance` runs one instance of the thesis' Test application (axum + memkeep
//! sessions): the serving instance, the session id decoded, the attributes with a form to
//! add one, a cluster panel. `cluster` starts two memcached servers, two instances and a
//! balancer (Apache httpd or HAProxy when installed, else a built-in demo-only proxy),
//! prints the URL, and serves the page's kill / restart buttons. See docs/demo.md.

#[allow(dead_code)] // shared with the tests (tests/kit/demo.rs), which use other parts
mod balancer;
mod cluster;
mod instance;
mod procs;
mod proxy;
mod stale;
mod web;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use memkeep::session::{CodecKind, Mode};

/// memkeep demo: the thesis' session-failover test application and a cluster to break.
#[derive(Parser, Debug)]
#[command(name = "demo", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one instance of the test application (deploy several behind a balancer).
    Instance(Box<InstanceArgs>),
    /// Start 2 memcached, 2 instances and a balancer on 127.0.0.1, print the URL; Ctrl-C
    /// stops everything.
    Cluster(ClusterArgs),
}

/// Session mode.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    /// The instance's memory copy is primary; memcached holds the copies for failover.
    Sticky,
    /// Memcached is primary: every request loads and writes back the session.
    NonSticky,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Sticky => Mode::Sticky,
            ModeArg::NonSticky => Mode::NonSticky,
        }
    }
}

/// Balancer of the demo cluster.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum BalancerArg {
    /// Apache httpd if installed, else HAProxy, else the built-in proxy.
    Auto,
    /// Apache httpd, mod_proxy_balancer (deploy/apache2/memkeep.conf).
    Apache,
    /// HAProxy (deploy/haproxy/memkeep.cfg).
    Haproxy,
    /// nginx (deploy/nginx/memkeep.conf).
    Nginx,
    /// The built-in route-aware proxy: for the demo only.
    Builtin,
}

fn parse_codec(s: &str) -> Result<CodecKind, String> {
    let names: Vec<&str> = CodecKind::ALL.iter().map(|k| k.name()).collect();
    let k = CodecKind::from_name(s)
        .ok_or_else(|| format!("unknown codec {s:?}; one of {}", names.join(", ")))?;
    if k.is_available() {
        Ok(k)
    } else {
        Err(format!(
            "codec {s} is not compiled in: rebuild with --features codec-{s} (or all-codecs)"
        ))
    }
}

fn parse_peer(s: &str) -> Result<(String, String), String> {
    let (route, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write ROUTE=HOST:PORT, e.g. web2=127.0.0.1:8082"))?;
    if route.is_empty() || !addr.contains(':') {
        return Err(format!(
            "{s:?}: write ROUTE=HOST:PORT, e.g. web2=127.0.0.1:8082"
        ));
    }
    Ok((route.to_owned(), addr.to_owned()))
}

#[derive(Args, Debug)]
struct InstanceArgs {
    /// Address to listen on (host:port).
    #[arg(long, default_value = "127.0.0.1:8081", value_name = "HOST:PORT")]
    listen: String,
    /// This instance's route: its name, written into session ids in sticky mode (the
    /// balancer routes on it, like Tomcat's jvmRoute). 1-32 of [A-Za-z0-9_].
    #[arg(long, default_value = "web1")]
    route: String,
    /// Memcached nodes, id:host:port comma-separated (the ids appear in session ids).
    #[arg(
        long,
        default_value = "n1:127.0.0.1:11211,n2:127.0.0.1:11212",
        value_name = "ID:HOST:PORT,..."
    )]
    nodes: String,
    /// Failover node ids (MSM's failoverNodes): used for new sessions only when no other
    /// node is up; list the memcached on this instance's own machine.
    #[arg(long, value_name = "ID,...")]
    failover_nodes: Option<String>,
    /// Peer backend instead of memcached (`--nodes` is then ignored): every instance's
    /// replication endpoint as route:host:port comma-separated, this one's included.
    #[arg(long, value_name = "ROUTE:HOST:PORT,...", requires = "peer_secret")]
    replication_peers: Option<String>,
    /// The peer backend's shared secret (16+ printable ASCII, the same on every peer).
    #[arg(long, value_name = "SECRET")]
    peer_secret: Option<String>,
    /// Sticky (memory primary, memcached backup) or non-sticky (memcached primary).
    #[arg(long, value_enum, default_value = "sticky")]
    mode: ModeArg,
    /// Codec of new sessions: msgpack (default), json, postcard, cbor, bitcode (the last
    /// four need their codec-* feature).
    #[arg(long, default_value = "msgpack", value_parser = parse_codec)]
    codec: CodecKind,
    /// Non-sticky locking: none, all, auto or uriPattern:<regex>.
    #[arg(long, default_value = "none")]
    locking: String,
    /// Memcached operation timeout, milliseconds.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    operation_timeout_ms: u64,
    /// Simulated application work per page request, milliseconds: the page waits this
    /// long with the session loaded (and, with locking, its lock held) before saving it.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    work_ms: u64,
    /// Another instance, shown (up or down) in the cluster panel; repeatable.
    #[arg(long = "peer", value_name = "ROUTE=HOST:PORT", value_parser = parse_peer)]
    peers: Vec<(String, String)>,
    /// Show the kill / restart buttons (demo only: served by `demo cluster` through the
    /// balancer under /demo-control/).
    #[arg(long)]
    demo_controls: bool,
    /// What the page says the instance runs behind.
    #[arg(long, value_name = "TEXT")]
    balancer_label: Option<String>,
}

#[derive(Args, Debug)]
struct ClusterArgs {
    /// Balancer port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The balancer in front of the instances.
    #[arg(long, value_enum, default_value = "auto")]
    balancer: BalancerArg,
    /// Session mode of the instances.
    #[arg(long, value_enum, default_value = "sticky")]
    mode: ModeArg,
    /// Codec of the instances (see `instance --help`).
    #[arg(long, default_value = "msgpack", value_parser = parse_codec)]
    codec: CodecKind,
    /// The memcached binary (default: `memcached` on $PATH or /usr/bin).
    #[arg(long, value_name = "PATH")]
    memcached: Option<PathBuf>,
    /// The peer backend (Loose Cluster): the two instances keep each other's session
    /// copies; no memcached is started. Sticky mode only.
    #[arg(long)]
    peers: bool,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Instance(a) => {
            let a = *a;
            instance::run(instance::InstanceOptions {
                listen: a.listen,
                route: a.route,
                nodes: a.nodes,
                failover_nodes: a.failover_nodes,
                replication: a.replication_peers.zip(a.peer_secret),
                mode: a.mode.into(),
                codec: a.codec,
                locking: a.locking,
                operation_timeout: Duration::from_millis(a.operation_timeout_ms.max(1)),
                work: Duration::from_millis(a.work_ms),
                peers: a.peers,
                demo_controls: a.demo_controls,
                balancer_label: a.balancer_label,
            })
            .await
        }
        Cmd::Cluster(a) => {
            cluster::run(cluster::ClusterOptions {
                port: a.port,
                balancer: match a.balancer {
                    BalancerArg::Auto => cluster::BalancerChoice::Auto,
                    BalancerArg::Apache => cluster::BalancerChoice::Real(balancer::Kind::Apache),
                    BalancerArg::Haproxy => cluster::BalancerChoice::Real(balancer::Kind::Haproxy),
                    BalancerArg::Nginx => cluster::BalancerChoice::Real(balancer::Kind::Nginx),
                    BalancerArg::Builtin => cluster::BalancerChoice::Builtin,
                },
                mode: a.mode.into(),
                codec: a.codec,
                memcached: a.memcached,
                peers: a.peers,
            })
            .await
        }
    };
    if let Err(e) = result {
        eprintln!("demo: {e}");
        std::process::exit(1);
    }
}
