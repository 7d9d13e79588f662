//! A real twemproxy (Debian package `nutcracker`, 0.5) in front of kit memcached servers:
//! the proxy people put in front of memcached pools. It speaks the text protocol only.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::memcached::{free_port, wait_ready};

/// The nutcracker binary, or a panic naming the Debian package.
fn binary() -> PathBuf {
    [
        "/usr/sbin/nutcracker",
        "/usr/bin/nutcracker",
        "/usr/local/sbin/nutcracker",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .unwrap_or_else(|| {
        panic!(
            "nutcracker (twemproxy) was not found in /usr/sbin, /usr/bin or \
                 /usr/local/sbin: install the Debian package with `apt-get install nutcracker` \
                 (scripts/install-deps.sh does it)"
        )
    })
}

/// One nutcracker process with one pool over `backends`, ketama over MD5 (its fnv1a_64 put
/// every short test key on one server), ejecting a
/// backend after one failure and retrying it after 1 s. Killed on drop.
pub struct Nutcracker {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nutcracker {
    /// Starts nutcracker in front of `backends` (`host:port` each).
    pub fn start(backends: &[String]) -> Nutcracker {
        let port = free_port();
        let stats = free_port();
        let dir =
            std::env::temp_dir().join(format!("memkeep-nutcracker-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the nutcracker directory");
        let servers: String = backends.iter().map(|b| format!("   - {b}:1\n")).collect();
        let conf = format!(
            "pool:\n  listen: 127.0.0.1:{port}\n  hash: md5\n  distribution: ketama\n  \
             timeout: 1000\n  auto_eject_hosts: true\n  server_retry_timeout: 1000\n  \
             server_failure_limit: 1\n  servers:\n{servers}"
        );
        let conf_path = dir.join("nutcracker.yml");
        std::fs::write(&conf_path, conf).expect("write nutcracker.yml");
        let mut child = Command::new(binary())
            .arg("-c")
            .arg(&conf_path)
            .args(["-s", &stats.to_string(), "-a", "127.0.0.1"])
            .arg("-o")
            .arg(dir.join("nutcracker.log"))
            .arg("-p")
            .arg(dir.join("nutcracker.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nutcracker");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let ready = wait_ready(&mut child, &format!("nutcracker on port {port}"), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        if let Err(e) = ready {
            let log = std::fs::read_to_string(dir.join("nutcracker.log")).unwrap_or_default();
            panic!("{e}; its log: {log}");
        }
        Nutcracker { child, port, dir }
    }

    /// `127.0.0.1:PORT`, where clients connect.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Nutcracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
