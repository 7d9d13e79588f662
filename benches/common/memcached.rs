//! A memcached process for the benchmarks (`#[path = "common/memcached.rs"] mod memcached;`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A memcached process on 127.0.0.1 (field 1: its port), killed on drop.
pub struct Memcached(Child, pub u16);

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `/usr/bin/memcached` (or `MEMKEEP_MEMCACHED`) on a free port with `threads`
/// worker threads and 256 MB, and waits until it accepts connections.
pub fn start_memcached(threads: u32) -> Memcached {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let bin = std::env::var("MEMKEEP_MEMCACHED").unwrap_or_else(|_| "/usr/bin/memcached".into());
    let mut cmd = Command::new(bin);
    cmd.args([
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-m",
        "256",
        "-t",
        &threads.to_string(),
    ]);
    if std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    }) {
        cmd.args(["-u", "root"]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start memcached");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "memcached did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Memcached(child, port)
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
