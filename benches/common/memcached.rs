//! A memcached process for the benchmarks (`#[path = "common/memcached.rs"] mod memcached;`).

use std::time::Duration;

#[path = "../../examples/common/local_memcached.rs"]
#[allow(dead_code)] // shared with the quickstart example, which uses other parts
mod local_memcached;

/// A memcached process on 127.0.0.1 (field 1: its port), killed on drop.
pub type Memcached = local_memcached::LocalMemcached;

/// Starts `/usr/bin/memcached` (or `MEMKEEP_MEMCACHED`) on a free port with `threads`
/// worker threads and 256 MB (as root, with `-u root`, which memcached then requires),
/// and waits (10 s at most) until it accepts connections.
pub fn start_memcached(threads: u32) -> Memcached {
    let bin = std::env::var("MEMKEEP_MEMCACHED").unwrap_or_else(|_| "/usr/bin/memcached".into());
    let threads = threads.to_string();
    let mut args = vec!["-m", "256", "-t", &threads];
    if std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    }) {
        args.extend(["-u", "root"]);
    }
    local_memcached::start_local_memcached(&bin, &args, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A memkeep client for servers on 127.0.0.1 `ports`, node ids `n0`, `n1`, ... (must be
/// called inside a tokio runtime).
#[allow(dead_code)]
pub fn client_for(ports: &[u16]) -> memkeep::Client {
    let mut builder = memkeep::Client::builder();
    for (i, port) in ports.iter().enumerate() {
        builder = builder
            .node_config(memkeep::NodeConfig::new(format!("127.0.0.1:{port}")).id(format!("n{i}")));
    }
    builder.build().expect("client")
}
