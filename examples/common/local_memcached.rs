//! A local memcached process, started and stopped by a program that needs one: the
//! quickstart example and the benchmarks (`benches/common/memcached.rs`) include this one
//! file with `#[path]` (they are separate targets and cannot share the test kit), so the
//! command line they start memcached with is written once.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A memcached child process listening on 127.0.0.1 (field 1: its port), killed and
/// reaped on drop.
pub struct LocalMemcached(Child, pub u16);

impl LocalMemcached {
    /// `127.0.0.1:<port>`, the address to give the client.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.1)
    }
}

impl Drop for LocalMemcached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the memcached `binary` on a free port of 127.0.0.1, TCP only
/// (`-l 127.0.0.1 -p <port> -U 0`) plus the `extra` arguments, its output discarded, and
/// waits up to `ready_limit` until it accepts connections. The error says what failed.
pub fn start_local_memcached(
    binary: &str,
    extra: &[&str],
    ready_limit: Duration,
) -> Result<LocalMemcached, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let child = Command::new(binary)
        .args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("cannot start {binary} ({e}); install it with `apt-get install memcached`")
        })?;
    let server = LocalMemcached(child, port);
    let deadline = Instant::now() + ready_limit;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "memcached did not start listening within {ready_limit:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}
