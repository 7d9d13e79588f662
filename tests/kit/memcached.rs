//! Real `memcached` processes for the integration tests.
//!
//! Each [`Memcached`] is started on a free 127.0.0.1 port with
//! `-l 127.0.0.1 -p PORT -U 0 -t 2 -m 64` (plus any extra arguments), waits (bounded)
//! until it accepts connections, and is SIGKILLed when dropped. Tests can kill it,
//! restart it on the same port (empty), or freeze it with SIGSTOP/SIGCONT.
//!
//! A missing binary is a test failure whose message names the Debian package; nothing
//! is ever skipped silently.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a freshly started memcached may take to accept connections.
const READY_LIMIT: Duration = Duration::from_secs(10);
/// How many free ports are tried when a start loses the race for its port.
const START_ATTEMPTS: usize = 5;

/// The memcached binary: `$MEMKEEP_MEMCACHED`, else `memcached` on `$PATH`, else the
/// Debian locations. Panics with the package to install when there is none.
pub fn memcached_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MEMKEEP_MEMCACHED") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "MEMKEEP_MEMCACHED={} is not a file; unset it or point it at a memcached binary \
             (Debian: `apt-get install memcached`)",
            p.display()
        );
        return p;
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("memcached"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push(PathBuf::from("/usr/bin/memcached"));
    candidates.push(PathBuf::from("/usr/sbin/memcached"));
    candidates.push(PathBuf::from("/usr/local/bin/memcached"));
    match candidates.into_iter().find(|p| p.is_file()) {
        Some(p) => p,
        None => panic!(
            "the memcached server binary was not found (looked on $PATH, /usr/bin, /usr/sbin, \
             /usr/local/bin). These integration tests run against real memcached processes: \
             install the Debian package with `apt-get install memcached` \
             (scripts/test.sh does it when run as root), or set MEMKEEP_MEMCACHED=/path/to/memcached"
        ),
    }
}

/// True when this process runs as root (memcached then needs `-u root`).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A free TCP port on 127.0.0.1 (bound, read, released; the caller may lose a race for
/// it, which [`Memcached::start_with`] handles by retrying on another port).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    l.local_addr()
        .expect("local_addr of a bound listener")
        .port()
}

/// One memcached process owned by the test. Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Memcached {
    child: Option<Child>,
    port: u16,
    /// The UNIX domain socket it listens on instead of TCP, if any.
    socket: Option<PathBuf>,
    extra: Vec<String>,
    paused: bool,
}

impl Memcached {
    /// Starts memcached with the standard arguments on a free port.
    pub fn start() -> Memcached {
        Self::start_with(&[])
    }

    /// Starts memcached with the standard arguments plus `extra` (e.g. `["-I", "2m"]`).
    pub fn start_with(extra: &[&str]) -> Memcached {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn_ready(port, None, &extra) {
                Ok(child) => {
                    return Memcached {
                        child: Some(child),
                        port,
                        socket: None,
                        extra,
                        paused: false,
                    }
                }
                Err(e) => last_err = e,
            }
        }
        panic!("memcached did not start after {START_ATTEMPTS} attempts: {last_err}");
    }

    /// Starts memcached listening on a UNIX domain socket (`-s`, no TCP) in a fresh
    /// temporary directory, with the standard arguments plus `extra`.
    pub fn start_unix(extra: &[&str]) -> Memcached {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("memkeep-unix-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the UNIX socket directory");
        let socket = dir.join("memcached.sock");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn_ready(0, Some(&socket), &extra)
            .unwrap_or_else(|e| panic!("memcached on {} did not start: {e}", socket.display()));
        Memcached {
            child: Some(child),
            port: 0,
            socket: Some(socket),
            extra,
            paused: false,
        }
    }

    /// `127.0.0.1:PORT`, or `unix:/path` for a UNIX-socket server.
    pub fn addr(&self) -> String {
        match &self.socket {
            Some(path) => format!("unix:{}", path.display()),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    /// The socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process runs (paused counts as running).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL: the server vanishes mid-flight, its sockets are closed by the kernel.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Kills the process (if running) and starts a fresh, empty one on the same port.
    /// Retries for a few seconds if the port is briefly unavailable.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            match spawn_ready(self.port, self.socket.as_deref(), &self.extra) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("memcached did not restart on port {}: {e}", self.port),
            }
        }
    }

    /// SIGSTOP: the process keeps its sockets open but answers nothing (a stalled server).
    /// Returns once every thread of the process is stopped: `kill` only queues the
    /// signal, and on a busy machine a worker thread could otherwise still answer a
    /// request sent right after this call.
    pub fn pause(&mut self) {
        self.signal(Signal::SIGSTOP);
        self.paused = true;
        self.wait_threads(true);
    }

    /// SIGCONT: a paused server resumes and answers what it had queued.
    pub fn resume(&mut self) {
        self.signal(Signal::SIGCONT);
        self.paused = false;
        self.wait_threads(false);
    }

    /// Waits (bounded) until every thread is stopped (`stopped`) or none is.
    fn wait_threads(&self, stopped: bool) {
        let Some(pid) = self.pid() else { return };
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            let states = thread_states(pid);
            let all_stopped = !states.is_empty() && states.iter().all(|s| *s == 'T' || *s == 't');
            let none_stopped = states.iter().all(|s| *s != 'T' && *s != 't');
            if (stopped && all_stopped) || (!stopped && none_stopped) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "memcached pid {pid}: threads not {} within {READY_LIMIT:?}: {states:?}",
                if stopped { "stopped" } else { "running" }
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// True between [`Memcached::pause`] and [`Memcached::resume`].
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn signal(&self, sig: Signal) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("memcached on port {} is not running", self.port));
        kill(Pid::from_raw(pid as i32), sig)
            .unwrap_or_else(|e| panic!("kill -{sig:?} memcached pid {pid}: {e}"));
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = self.socket.as_ref().and_then(|s| s.parent()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The scheduler state letter (R, S, T, ...) of every thread of process `pid`.
fn thread_states(pid: u32) -> Vec<char> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        // "tid (comm) S ...": the state follows the last ')'.
        .filter_map(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .collect()
}

/// Spawns memcached on `port` (or on the UNIX socket `socket`) and waits until it accepts
/// a connection. On failure the process is reaped and its stderr returned in the error.
fn spawn_ready(
    port: u16,
    socket: Option<&std::path::Path>,
    extra: &[String],
) -> Result<Child, String> {
    let bin = memcached_binary();
    let mut cmd = Command::new(&bin);
    match socket {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            cmd.arg("-s").arg(path);
        }
        None => {
            cmd.args(["-l", "127.0.0.1", "-p", &port.to_string()]);
        }
    }
    cmd.args(["-U", "0", "-t", "2", "-m", "64"]);
    if running_as_root() {
        // memcached refuses to run as root without naming a user.
        cmd.args(["-u", "root"]);
    }
    cmd.args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let what = match socket {
        Some(path) => format!("memcached on {}", path.display()),
        None => format!("memcached on port {port}"),
    };
    wait_ready(&mut child, &what, || match socket {
        Some(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
        None => TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
    })?;
    Ok(child)
}

/// Waits (bounded) until the just-spawned `child` (described by `what`) `accepts`
/// connections. On failure the process is reaped and its stderr returned in the error.
pub fn wait_ready(child: &mut Child, what: &str, accepts: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + READY_LIMIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut err);
            }
            return Err(format!("{what} exited at start ({status}): {}", err.trim()));
        }
        if accepts() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{what} did not accept connections within {READY_LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// N memcached processes, node ids `n0`, `n1`, ... in order.
#[derive(Debug)]
pub struct Cluster {
    /// The servers, in node-id order.
    pub nodes: Vec<Memcached>,
}

impl Cluster {
    /// Starts `n` servers with the standard arguments.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, &[])
    }

    /// Starts `n` servers with extra arguments.
    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        Cluster {
            nodes: (0..n).map(|_| Memcached::start_with(extra)).collect(),
        }
    }

    /// The node id the kit gives server `i`.
    pub fn id(i: usize) -> String {
        format!("n{i}")
    }

    /// All node ids, in order.
    pub fn ids(&self) -> Vec<String> {
        (0..self.nodes.len()).map(Self::id).collect()
    }

    /// All addresses, in order.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(Memcached::addr).collect()
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when there is no server.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// The node list of `cluster` in the form the crate and the demo take:
/// `n0:127.0.0.1:p0,n1:127.0.0.1:p1,...`.
pub fn nodes_spec(cluster: &Cluster) -> String {
    cluster
        .ids()
        .iter()
        .zip(cluster.addrs())
        .map(|(id, addr)| format!("{id}:{addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl std::ops::Index<usize> for Cluster {
    type Output = Memcached;
    fn index(&self, i: usize) -> &Memcached {
        &self.nodes[i]
    }
}

impl std::ops::IndexMut<usize> for Cluster {
    fn index_mut(&mut self, i: usize) -> &mut Memcached {
        &mut self.nodes[i]
    }
}

/// Talks to a memcached directly with the text protocol, bypassing the client under
/// test: the tests' independent view of what a server holds.
pub mod raw {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// A raw connection: TCP (`host:port`) or a UNIX socket (`unix:/path`).
    trait Raw: std::io::Read + Write {}
    impl<T: std::io::Read + Write> Raw for T {}

    fn connect(addr: &str) -> Box<dyn Raw> {
        match addr.strip_prefix("unix:") {
            Some(path) => {
                let s = std::os::unix::net::UnixStream::connect(path)
                    .expect("raw connect to memcached's UNIX socket");
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                Box::new(s)
            }
            None => {
                let s = TcpStream::connect(addr).expect("raw connect to memcached");
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                Box::new(s)
            }
        }
    }

    /// Sends `request` (a full command with its CRLFs) and reads the reply up to and
    /// including a line equal to one of `terminators` (e.g. `END`, `STORED`).
    pub fn exchange(addr: &str, request: &[u8], terminators: &[&str]) -> Vec<String> {
        let mut s = connect(addr);
        s.write_all(request).expect("raw write");
        let mut r = BufReader::new(s);
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = r.read_line(&mut line).expect("raw read (5 s limit)");
            assert!(
                n > 0,
                "memcached closed the raw connection early: {lines:?}"
            );
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let done = terminators.contains(&line.as_str())
                || line.starts_with("ERROR")
                || line.starts_with("CLIENT_ERROR")
                || line.starts_with("SERVER_ERROR");
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// `get key` straight from the server: the raw value bytes, if any (binary safe).
    pub fn get_bytes(addr: &str, key: &str) -> Option<Vec<u8>> {
        let mut s = connect(addr);
        s.write_all(format!("get {key}\r\n").as_bytes())
            .expect("raw write");
        let mut r = BufReader::new(s);
        let mut header = String::new();
        r.read_line(&mut header).expect("raw read (5 s limit)");
        let len: usize = header
            .strip_prefix("VALUE ")?
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()?;
        let mut value = vec![0u8; len + 2];
        std::io::Read::read_exact(&mut r, &mut value).expect("raw read of the value");
        value.truncate(len);
        Some(value)
    }

    /// `get key` straight from the server: the value as a string, if any.
    pub fn get(addr: &str, key: &str) -> Option<String> {
        let lines = exchange(addr, format!("get {key}\r\n").as_bytes(), &["END"]);
        if lines.len() >= 3 && lines[0].starts_with("VALUE ") {
            Some(lines[1].clone())
        } else {
            None
        }
    }

    /// `get key` straight from the server: the flags and value, if any.
    pub fn get_with_flags(addr: &str, key: &str) -> Option<(u32, String)> {
        let lines = exchange(addr, format!("get {key}\r\n").as_bytes(), &["END"]);
        if lines.len() >= 3 && lines[0].starts_with("VALUE ") {
            let flags = lines[0]
                .split_whitespace()
                .nth(2)
                .and_then(|f| f.parse().ok())
                .expect("flags in VALUE line");
            Some((flags, lines[1].clone()))
        } else {
            None
        }
    }

    /// `set key 0 0 len` straight to the server.
    pub fn set(addr: &str, key: &str, value: &str) {
        let req = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
        let lines = exchange(addr, req.as_bytes(), &["STORED"]);
        assert_eq!(lines, vec!["STORED".to_string()], "raw set {key}");
    }

    /// `delete key` straight on the server: true when the key existed.
    pub fn delete(addr: &str, key: &str) -> bool {
        let lines = exchange(
            addr,
            format!("delete {key}\r\n").as_bytes(),
            &["DELETED", "NOT_FOUND"],
        );
        lines == vec!["DELETED".to_string()]
    }

    /// One numeric general statistic (`stats`), e.g. `cmd_get`, `curr_items`.
    pub fn stat(addr: &str, name: &str) -> u64 {
        let prefix = format!("STAT {name} ");
        exchange(addr, b"stats\r\n", &["END"])
            .iter()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("STAT {name} in stats of {addr}"))
    }

    /// Number of items currently stored (`stats` `curr_items`).
    pub fn curr_items(addr: &str) -> u64 {
        stat(addr, "curr_items")
    }
}
