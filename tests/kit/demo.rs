//! Demo end-to-end helpers, included by `tests/demo_*.rs` with
//! `#[path = "kit/demo.rs"] mod demo_kit;` (next to `mod kit;`).
//!
//! - [`demo_binary`]: the `demo` example, built (once per test binary) with the features
//!   this test binary was built with, in the same target directory.
//! - [`Instance`]: one demo instance process on a free port (SIGKILL, restart).
//! - [`Visitor`]: a blocking HTTP client that keeps its session id in a cookie jar or,
//!   without cookies, in the URL (`;jsessionid=`), and reads the page as JSON.
//! - [`Stack`]: 2 memcached + 2 instances (routes `web1`, `web2`) + a real balancer
//!   started from the `deploy/` configuration ([`balancer`], shared with the demo).
//! - [`DemoCluster`]: the README's `demo cluster` command as a process.
//! - [`FormVisitor`], [`FormLoad`]: browser-like visitors posting the page's form through
//!   the balancer, each checking every write it saw acknowledged ([`FormReport`]).
#![allow(dead_code, unreachable_pub)]

#[path = "../../examples/demo/balancer.rs"]
pub mod balancer;
#[path = "../../examples/demo/procs.rs"]
pub mod procs;
#[path = "../../examples/demo/web.rs"]
pub mod web;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::kit::memcached::free_port;
use crate::kit::Cluster;
use balancer::{Balancer, Kind};

/// How long a demo process may take to answer after its start.
const READY_LIMIT: Duration = Duration::from_secs(20);

/// The target directory and profile directory of this test binary
/// (`<target>/<profile>/deps/<test>-<hash>`).
fn target_dirs() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary in <target>/<profile>/deps")
        .to_owned();
    let target = profile_dir
        .parent()
        .expect("profile directory inside the target directory")
        .to_owned();
    (target, profile_dir)
}

/// Where tests keep their artifacts (screenshots): `$MEMKEEP_ARTIFACTS_DIR`, else
/// `<target>/demo-artifacts`.
pub fn artifacts_dir(test: &str) -> PathBuf {
    let base = std::env::var_os("MEMKEEP_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dirs().0.join("demo-artifacts"));
    let dir = base.join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the artifacts directory");
    dir
}

/// The features this test binary was compiled with: the example is built with the same
/// ones, so the library is not rebuilt for it.
fn features() -> Vec<&'static str> {
    let mut f = Vec::new();
    macro_rules! feature {
        ($($name:literal),*) => {$( if cfg!(feature = $name) { f.push($name); } )*};
    }
    feature!(
        "axum",
        "tower",
        "codec-json",
        "codec-postcard",
        "codec-cbor",
        "codec-bitcode",
        "all-codecs"
    );
    f
}

/// The `demo` example binary, built by cargo on first use (a no-op when it is up to
/// date). Panics with cargo's output when it does not build.
pub fn demo_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let (target, profile_dir) = target_dirs();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--example", "demo", "--message-format=json"])
            .arg("--features")
            .arg(features().join(","))
            .arg("--target-dir")
            .arg(&target);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd
            .stderr(Stdio::piped())
            .output()
            .expect("run cargo to build the demo example");
        assert!(
            out.status.success(),
            "cargo build --example demo failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "demo")
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported the demo executable")
    })
}

/// Waits until `GET /healthz` on `addr` answers 200 (bounded by [`READY_LIMIT`]); on
/// failure the child is killed and the error returned.
fn wait_healthy(addr: SocketAddr, child: &mut Child, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + READY_LIMIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited at start: {status}"));
        }
        if let Ok(r) = http(addr, "GET", "/healthz", &[], None) {
            if r.status == 200 {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{what} did not answer GET /healthz on {addr} within {READY_LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// One demo instance process (`demo instance ...`), SIGKILLed when dropped.
#[derive(Debug)]
pub struct Instance {
    /// Its route (`--route`).
    pub route: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl Instance {
    /// Starts `demo instance --listen 127.0.0.1:<free> --route <route> --nodes <nodes>`
    /// plus `extra` flags; returns once it answers `/healthz`.
    pub fn start(route: &str, nodes: &str, extra: &[&str]) -> Instance {
        Self::start_on(free_port(), route, nodes, extra)
    }

    /// Same as [`Instance::start`] on a given port.
    pub fn start_on(port: u16, route: &str, nodes: &str, extra: &[&str]) -> Instance {
        let mut args: Vec<String> = [
            "instance",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--route",
            route,
            "--nodes",
            nodes,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut i = Instance {
            route: route.to_owned(),
            port,
            args,
            child: None,
        };
        i.spawn();
        i
    }

    fn spawn(&mut self) {
        let mut child = Command::new(demo_binary())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the demo instance");
        if let Err(e) = wait_healthy(self.addr(), &mut child, &format!("instance {}", self.route)) {
            panic!("{e}");
        }
        self.child = Some(child);
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the instance vanishes with the sessions in its memory.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills it (if running) and starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// Body as text.
    pub body: String,
}

impl Response {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The lines of the body that read `name = value` (the page contract).
    pub fn attribute_lines(&self) -> Vec<String> {
        self.body
            .lines()
            .filter(|l| l.contains(" = ") && !l.contains('<'))
            .map(str::to_owned)
            .collect()
    }
}

/// One HTTP/1.1 request with `Connection: close` (10 s limits): the response, or the
/// I/O error (refused, reset, timed out).
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of response head"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut payload = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &payload[..];
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("truncated chunk"))?;
            let size_text = String::from_utf8_lossy(&rest[..line_end]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size + 2 {
                return Err(bad("truncated chunk"));
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        payload = out;
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&payload).into_owned(),
    })
}

/// Percent-encodes a query component: the demo's own encoder.
pub use web::encode_component as enc;

/// `a=b&c=d`, encoded.
pub fn form(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The page's JSON (`?format=json`), decoded.
#[derive(Debug, Clone)]
pub struct Page {
    /// The route of the instance that served it.
    pub route: String,
    /// That instance's `host:port`.
    pub address: String,
    /// The session id.
    pub session_id: String,
    /// Memcached node named in the id.
    pub node: String,
    /// Backup node named in the id.
    pub backup: Option<String>,
    /// Route named in the id.
    pub id_route: Option<String>,
    /// The attributes.
    pub attributes: BTreeMap<String, String>,
    /// What happened to the id.
    pub event: String,
    /// The whole document.
    pub json: serde_json::Value,
}

impl Page {
    /// Decodes the JSON page.
    pub fn parse(body: &str) -> Result<Page, String> {
        let v: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body:.300}"))?;
        let s = |p: &serde_json::Value| p.as_str().map(str::to_owned);
        let attributes = v["attributes"]
            .as_object()
            .ok_or("no attributes object")?
            .iter()
            .map(|(k, val)| (k.clone(), val.as_str().unwrap_or("").to_owned()))
            .collect();
        Ok(Page {
            route: s(&v["instance"]["route"]).ok_or("no instance.route")?,
            address: s(&v["instance"]["address"]).ok_or("no instance.address")?,
            session_id: s(&v["session_id"]).ok_or("no session_id")?,
            node: s(&v["session"]["node"]).unwrap_or_default(),
            backup: s(&v["session"]["backup"]),
            id_route: s(&v["session"]["route"]),
            attributes,
            event: s(&v["session"]["event"]).unwrap_or_default(),
            json: v,
        })
    }
}

/// A client of the page: keeps its session id in a cookie (`cookies`) or in the URL.
#[derive(Debug, Clone)]
pub struct Visitor {
    /// Where requests go (a balancer or an instance).
    pub base: SocketAddr,
    /// Cookie jar (true) or URL rewriting (false).
    pub cookies: bool,
    /// The session id it presents next.
    pub id: Option<String>,
}

impl Visitor {
    /// A new visitor without a session.
    pub fn new(base: SocketAddr, cookies: bool) -> Visitor {
        Visitor {
            base,
            cookies,
            id: None,
        }
    }

    /// The request target for `path` and query `params`, with `;jsessionid=` when
    /// cookie-less, and the cookie header to send.
    fn target(&self, path: &str, params: &str) -> (String, Option<String>) {
        let mut target = path.to_owned();
        let mut cookie = None;
        if let Some(id) = &self.id {
            if self.cookies {
                cookie = Some(format!("JSESSIONID={id}"));
            } else {
                target.push_str(&format!(";jsessionid={id}"));
            }
        }
        if !params.is_empty() {
            target.push('?');
            target.push_str(params);
        }
        (target, cookie)
    }

    /// Sends a request and follows the session id like a browser would (cookie from
    /// `Set-Cookie`; cookie-less: the id in the page's links).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        body: Option<&str>,
    ) -> std::io::Result<Response> {
        let (target, cookie) = self.target(path, query);
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
        let r = http(self.base, method, &target, &headers, body)?;
        if self.cookies {
            for set in r.headers_named("set-cookie") {
                if let Some(v) = set
                    .split(';')
                    .next()
                    .and_then(|p| p.strip_prefix("JSESSIONID="))
                {
                    self.id = (!v.is_empty() && !set.contains("Max-Age=0")).then(|| v.to_owned());
                }
            }
        }
        Ok(r)
    }

    /// `GET /?format=json&<params>`: the page, or why there is none (I/O error, status).
    pub fn get(&mut self, params: &[(&str, &str)]) -> Result<Page, String> {
        let mut all = vec![("format", "json")];
        all.extend_from_slice(params);
        let r = self
            .request("GET", "/", &form(&all), None)
            .map_err(|e| format!("GET: {e}"))?;
        self.page_of(r)
    }

    /// `POST /?format=json` with form `params`: the page, or why there is none.
    pub fn post(&mut self, params: &[(&str, &str)]) -> Result<Page, String> {
        let r = self
            .request("POST", "/", "format=json", Some(&form(params)))
            .map_err(|e| format!("POST: {e}"))?;
        self.page_of(r)
    }

    fn page_of(&mut self, r: Response) -> Result<Page, String> {
        if r.status != 200 {
            return Err(format!("status {}: {:.200}", r.status, r.body));
        }
        let page = Page::parse(&r.body)?;
        if !self.cookies {
            // What a browser does with the page's links.
            self.id = Some(page.session_id.clone());
        }
        Ok(page)
    }
}

/// The route named by a session id (after its `.`).
pub fn route_of(id: &str) -> Option<&str> {
    id.split_once('.').map(|(_, r)| r)
}

static DIR_SEQ: AtomicU64 = AtomicU64::new(0);

/// A directory under the system temp dir, removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new empty directory.
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "memkeep-e2e-{tag}-{}-{}",
            std::process::id(),
            DIR_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create a temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub use crate::kit::nodes_spec;

/// 2 memcached + instances `web1`, `web2` + a real balancer from `deploy/`. Everything
/// is stopped when dropped (balancer first).
#[derive(Debug)]
pub struct Stack {
    /// The balancer.
    pub balancer: Balancer,
    /// `web1`, `web2`.
    pub instances: Vec<Instance>,
    /// Memcached `n0`, `n1`.
    pub memcached: Cluster,
    dir: TempDir,
}

impl Stack {
    /// Starts everything; `extra` flags go to both instances. Panics with the Debian
    /// package to install when the balancer is missing.
    pub fn start(kind: Kind, extra: &[&str]) -> Stack {
        let memcached = Cluster::start(2);
        let nodes = nodes_spec(&memcached);
        let instances: Vec<Instance> = ["web1", "web2"]
            .iter()
            .map(|r| Instance::start(r, &nodes, extra))
            .collect();
        let dir = TempDir::new(kind.name());
        let backends = [
            ("web1".to_owned(), instances[0].addr()),
            ("web2".to_owned(), instances[1].addr()),
        ];
        let balancer = Balancer::start(kind, &dir.0, free_port(), &backends, None)
            .unwrap_or_else(|e| panic!("{e}"));
        Stack {
            balancer,
            instances,
            memcached,
            dir,
        }
    }

    /// The balancer's address.
    pub fn front(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.balancer.port()))
    }

    /// The instance with `route`.
    pub fn instance(&mut self, route: &str) -> &mut Instance {
        self.instances
            .iter_mut()
            .find(|i| i.route == route)
            .unwrap_or_else(|| panic!("no instance {route}"))
    }

    /// The memcached server with node id `id` (`n0`, `n1`).
    pub fn node(&mut self, id: &str) -> &mut crate::kit::Memcached {
        let i: usize = id
            .strip_prefix('n')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a kit node id: {id}"));
        &mut self.memcached[i]
    }
}

/// The README's command as a process: `demo cluster --port 0 ...`. Dropped: SIGTERM
/// (the launcher stops what it started), SIGKILL after 15 s.
#[derive(Debug)]
pub struct DemoCluster {
    child: Option<Child>,
    /// The URL it printed.
    pub url: String,
    /// Its front address.
    pub front: SocketAddr,
    /// What it printed before the URL.
    pub banner: String,
}

impl DemoCluster {
    /// Starts it with `args` after `cluster --port 0`; returns once it printed its URL.
    pub fn start(args: &[&str]) -> DemoCluster {
        let mut child = Command::new(demo_binary())
            .args(["cluster", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn demo cluster");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[demo cluster] {line}");
                if tx.send(line).is_err() {
                    // Keep draining so the launcher never blocks on a full pipe.
                    continue;
                }
            }
        });
        let mut cluster = DemoCluster {
            child: Some(child),
            url: String::new(),
            front: SocketAddr::from(([127, 0, 0, 1], 0)),
            banner: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("MEMKEEP_DEMO_URL=") {
                        cluster.url = url.to_owned();
                        let port: u16 = url
                            .trim_end_matches('/')
                            .rsplit(':')
                            .next()
                            .and_then(|p| p.parse().ok())
                            .expect("port in the demo URL");
                        cluster.front = SocketAddr::from(([127, 0, 0, 1], port));
                        return cluster;
                    }
                    cluster.banner.push_str(&line);
                    cluster.banner.push('\n');
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = cluster.child.as_mut().and_then(|c| c.wait().ok());
                    cluster.child = None;
                    panic!(
                        "demo cluster exited ({status:?}) before printing its URL (its error is on stderr above); it printed:\n{}",
                        cluster.banner
                    );
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
                    "demo cluster did not print MEMKEEP_DEMO_URL within 60 s; it printed:\n{}",
                    cluster.banner
                ),
            }
        }
    }

    /// The launcher's `/demo-control/status`, through the balancer.
    pub fn status(&self) -> serde_json::Value {
        let r = http(self.front, "GET", "/demo-control/status", &[], None)
            .expect("GET /demo-control/status");
        assert_eq!(r.status, 200, "status: {}", r.body);
        serde_json::from_str(&r.body).expect("status JSON")
    }

    /// `(name, pid, running)` of every process the launcher owns.
    pub fn processes(&self) -> Vec<(String, Option<u32>, bool)> {
        self.status()["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("").to_owned(),
                    p["pid"].as_u64().map(|n| n as u32),
                    p["running"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    }

    /// Presses a control button (`kill` / `restart` of `target`), as the page's form does.
    pub fn control(&self, action: &str, target: &str) -> Response {
        http(
            self.front,
            "POST",
            &format!("/demo-control/{action}?target={target}&back=%2F"),
            &[],
            Some(""),
        )
        .expect("POST /demo-control")
    }

    /// The launcher's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the launcher (it gets no chance to stop anything) and reaps it.
    pub fn kill_launcher(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (bounded); returns its exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DemoCluster {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// True while process `pid` exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Polls `cond` every 100 ms until it holds; false after `limit`.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Stack {
    /// Waits until a cookie-less `GET /healthz` through the balancer is answered by the
    /// instance `route` (the balancer routes to it: started, or taken back after a
    /// restart). No session is touched. Bounded by `limit`.
    pub fn wait_routed(&self, route: &str, limit: Duration) -> bool {
        let want = format!("ok {route}");
        eventually(limit, || {
            http(self.front(), "GET", "/healthz", &[], None)
                .is_ok_and(|r| r.status == 200 && r.body.trim() == want)
        })
    }
}

/// The random part of a session id (before the first `-`): it never changes while the
/// session lives (node, backup and route may).
pub fn random_part(id: &str) -> &str {
    id.split_once('-').map_or(id, |(r, _)| r)
}

/// True when one of the response's `Set-Cookie` headers tells the browser to forget
/// `JSESSIONID` (`Max-Age=0`, or an empty value).
pub fn removes_session_cookie(r: &Response) -> bool {
    r.headers_named("set-cookie").iter().any(|c| {
        c.split(';')
            .next()
            .and_then(|p| p.trim().strip_prefix("JSESSIONID="))
            .is_some_and(|v| {
                v.is_empty()
                    || c.split(';')
                        .any(|a| a.trim().eq_ignore_ascii_case("max-age=0"))
            })
    })
}

/// What one [`FormVisitor`] observed.
#[derive(Debug, Default, Clone)]
pub struct FormTally {
    /// Writes acknowledged: a 200 page showing the attribute just posted.
    pub acked: u64,
    /// 200 pages checked against the acknowledged writes.
    pub pages: u64,
    /// Failed requests by kind (`io`, `502`, `503`, `409`, ...): never acknowledged.
    pub failed: BTreeMap<String, u64>,
    /// Failed responses that told the browser to forget the session cookie (the session
    /// was never invalidated: always a defect).
    pub removals_on_failure: u64,
    /// 200 responses that did the same (also a defect: nothing is invalidated).
    pub removals_on_success: u64,
    /// Times the session's random part changed: the session was lost.
    pub lost_sessions: u64,
    /// Of those, how many followed a cookie removal this visitor was sent.
    pub lost_after_removal: u64,
    /// Acknowledged attributes later missing or with another value.
    pub lost_writes: u64,
    /// 200 pages to a write that did not show it.
    pub unshown_writes: u64,
    /// The final check never got a 200 page.
    pub unverified: bool,
    /// What went wrong, with the visitor's last requests.
    pub incidents: Vec<String>,
}

/// Requests remembered per visitor for incident reports.
const TRACE_LEN: usize = 8;

/// A browser-like client submitting the page's form (POST `dataName`/`dataValue`) through
/// the balancer, one new attribute per request, with its session in a cookie. It keeps
/// every write the server acknowledged (a 200 page showing it) and checks, on every later
/// 200 page and at the end, that they are all there and that the session id's random
/// part never changed.
#[derive(Debug)]
pub struct FormVisitor {
    /// Visitor number (in attribute values and reports).
    pub n: usize,
    browser: Visitor,
    /// Bytes of the `pad` attribute set first in each session (0: none).
    pad: usize,
    seq: u64,
    random: Option<String>,
    acked: BTreeMap<String, String>,
    /// A cookie removal arrived since the last 200 page.
    removal_pending: bool,
    trace: std::collections::VecDeque<String>,
    started: Instant,
    /// What it observed so far.
    pub tally: FormTally,
}

/// What one [`FormVisitor::step`] gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A 200 page, checked (and showing the write, if one was sent).
    Page,
    /// No 200 page (I/O error or error status).
    Failed,
}

impl FormVisitor {
    /// A visitor without a session, sending to `front`; `pad` bytes of padding make each
    /// of its sessions that large.
    pub fn new(n: usize, front: SocketAddr, pad: usize) -> FormVisitor {
        FormVisitor {
            n,
            browser: Visitor::new(front, true),
            pad,
            seq: 0,
            random: None,
            acked: BTreeMap::new(),
            removal_pending: false,
            trace: std::collections::VecDeque::new(),
            started: Instant::now(),
            tally: FormTally::default(),
        }
    }

    fn incident(&mut self, what: String) {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        self.tally.incidents.push(format!(
            "visitor {}: {what}\n      last requests:\n        {}",
            self.n,
            trace.join("\n        ")
        ));
    }

    /// One request: with `write`, POSTs the next attribute (`pad` first in a session);
    /// else GETs the page. Checks the answer.
    pub fn step(&mut self, write: bool) -> Step {
        let write = write.then(|| {
            self.seq += 1;
            if self.acked.is_empty() && self.pad > 0 {
                (
                    "pad".to_owned(),
                    format!("{}:{}", self.n, "x".repeat(self.pad)),
                )
            } else {
                (
                    format!("a{}", self.seq),
                    format!("v{}-{}", self.n, self.seq),
                )
            }
        });
        let sent = self.browser.id.clone();
        let result = match &write {
            Some((k, v)) => self.browser.request(
                "POST",
                "/",
                "format=json",
                Some(&form(&[("dataName", k), ("dataValue", v)])),
            ),
            None => self.browser.request("GET", "/", "format=json", None),
        };
        let at = self.started.elapsed().as_millis();
        let what = write
            .as_ref()
            .map_or("GET".to_owned(), |(k, _)| format!("POST {k}"));
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                *self.tally.failed.entry("io".into()).or_default() += 1;
                self.push_trace(format!("{at} ms {what} cookie {sent:?}: I/O error {e}"));
                return Step::Failed;
            }
        };
        let removal = removes_session_cookie(&r);
        let cookies = r.headers_named("set-cookie").join(" | ");
        if r.status != 200 {
            *self.tally.failed.entry(r.status.to_string()).or_default() += 1;
            self.push_trace(format!(
                "{at} ms {what} cookie {sent:?}: status {} set-cookie [{cookies}] body {:?}",
                r.status,
                r.body.chars().take(60).collect::<String>()
            ));
            if removal {
                self.tally.removals_on_failure += 1;
                self.removal_pending = true;
                if self.tally.removals_on_failure <= 3 {
                    self.incident(format!(
                        "a failed request (status {}) told the browser to forget its session, which was never invalidated",
                        r.status
                    ));
                }
            }
            return Step::Failed;
        }
        let page = match Page::parse(&r.body) {
            Ok(p) => p,
            Err(e) => {
                *self
                    .tally
                    .failed
                    .entry("200 without a page".into())
                    .or_default() += 1;
                self.push_trace(format!("{at} ms {what}: 200 but {e}"));
                return Step::Failed;
            }
        };
        self.push_trace(format!(
            "{at} ms {what} cookie {sent:?}: 200 from {} id {} set-cookie [{cookies}] {}",
            page.route, page.session_id, page.event
        ));
        if removal {
            self.tally.removals_on_success += 1;
            self.removal_pending = true;
            self.incident("a 200 page told the browser to forget its session".into());
        }
        self.tally.pages += 1;
        let random = random_part(&page.session_id).to_owned();
        if self.random.as_ref().is_some_and(|r| *r != random) {
            self.tally.lost_sessions += 1;
            let cause = if self.removal_pending {
                self.tally.lost_after_removal += 1;
                "after a cookie removal it was sent"
            } else {
                "without a cookie removal"
            };
            let lost = self.acked.len() as u64;
            self.tally.lost_writes += lost;
            self.incident(format!(
                "session {} lost ({cause}): now {}, {lost} acknowledged attributes gone",
                self.random.clone().unwrap_or_default(),
                page.session_id
            ));
            self.acked.clear();
        } else {
            let missing: Vec<String> = self
                .acked
                .iter()
                .filter(|(k, v)| page.attributes.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .collect();
            if !missing.is_empty() {
                self.tally.lost_writes += missing.len() as u64;
                self.incident(format!(
                    "session {} kept, but acknowledged attributes missing or changed: {missing:?}",
                    page.session_id
                ));
                for k in &missing {
                    self.acked.remove(k);
                }
            }
        }
        self.random = Some(random);
        self.removal_pending = false;
        if let Some((k, v)) = write {
            if page.attributes.get(&k) == Some(&v) {
                self.acked.insert(k, v);
                self.tally.acked += 1;
            } else {
                self.tally.unshown_writes += 1;
                self.incident(format!("a 200 page to POST {k} does not show it"));
            }
        }
        Step::Page
    }

    fn push_trace(&mut self, line: String) {
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    /// The final check: GETs the page until one 200 answer (bounded by `limit`, every
    /// 200 ms) and checks it like every other page.
    pub fn verify(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.step(false) != Step::Page {
            if Instant::now() >= deadline {
                self.tally.unverified = true;
                self.incident(format!("no 200 page within {limit:?} for the final check"));
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// [`FormVisitor`]s posting concurrently until stopped.
#[derive(Debug)]
pub struct FormLoad {
    stop: Arc<AtomicBool>,
    acked: Vec<Arc<AtomicU64>>,
    handles: Vec<std::thread::JoinHandle<FormVisitor>>,
}

impl FormLoad {
    /// Starts `visitors` visitors against `front`, each pausing `think` between
    /// requests (and 100 ms after a failed one).
    pub fn start(front: SocketAddr, visitors: usize, pad: usize, think: Duration) -> FormLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let mut acked = Vec::new();
        let mut handles = Vec::new();
        for n in 0..visitors {
            let count = Arc::new(AtomicU64::new(0));
            acked.push(Arc::clone(&count));
            let stop = Arc::clone(&stop);
            handles.push(std::thread::spawn(move || {
                let mut v = FormVisitor::new(n, front, pad);
                while !stop.load(Ordering::Relaxed) {
                    let pause = match v.step(true) {
                        Step::Page => think,
                        Step::Failed => Duration::from_millis(100),
                    };
                    count.store(v.tally.acked, Ordering::Relaxed);
                    std::thread::sleep(pause);
                }
                v
            }));
        }
        FormLoad {
            stop,
            acked,
            handles,
        }
    }

    /// Acknowledged writes per visitor so far.
    pub fn counts(&self) -> Vec<u64> {
        self.acked
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    /// Waits until every visitor has `n` more acknowledged writes than in `since`;
    /// false after `limit`.
    pub fn wait_progress(&self, since: &[u64], n: u64, limit: Duration) -> bool {
        eventually(limit, || {
            self.counts().iter().zip(since).all(|(a, b)| *a >= b + n)
        })
    }

    /// Stops the visitors, runs each one's final check (up to `verify_limit` each), and
    /// sums what they saw.
    pub fn finish(mut self, verify_limit: Duration) -> FormReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut visitors: Vec<FormVisitor> = self
            .handles
            .drain(..)
            .map(|h| h.join().expect("visitor thread panicked"))
            .collect();
        for v in &mut visitors {
            v.verify(verify_limit);
        }
        FormReport {
            tallies: visitors.into_iter().map(|v| v.tally).collect(),
            notes: Vec::new(),
        }
    }
}

impl Drop for FormLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The sum of a [`FormLoad`]'s tallies.
#[derive(Debug, Clone)]
pub struct FormReport {
    /// One per visitor.
    pub tallies: Vec<FormTally>,
    /// Remarks of the scenario (e.g. visitors that made no progress after a fault).
    pub notes: Vec<String>,
}

impl FormReport {
    fn sum(&self, f: impl Fn(&FormTally) -> u64) -> u64 {
        self.tallies.iter().map(f).sum()
    }

    /// Acknowledged writes.
    pub fn acked(&self) -> u64 {
        self.sum(|t| t.acked)
    }

    /// Lost sessions.
    pub fn lost_sessions(&self) -> u64 {
        self.sum(|t| t.lost_sessions)
    }

    /// Lost acknowledged writes.
    pub fn lost_writes(&self) -> u64 {
        self.sum(|t| t.lost_writes)
    }

    /// Failed responses that removed the session cookie.
    pub fn removals_on_failure(&self) -> u64 {
        self.sum(|t| t.removals_on_failure)
    }

    /// Failed requests by kind.
    pub fn failed(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for t in &self.tallies {
            for (k, n) in &t.failed {
                *all.entry(k.clone()).or_default() += n;
            }
        }
        all
    }

    /// One line: the numbers the scenario is judged on.
    pub fn summary(&self) -> String {
        format!(
            "{} visitors, {} acknowledged writes, {} pages checked; lost sessions {} ({} after a cookie removal); lost acknowledged writes {}; failed requests {:?}; cookie removals on failed requests {}, on 200 pages {}; 200 pages not showing their write {}; visitors without a final page {}",
            self.tallies.len(),
            self.acked(),
            self.sum(|t| t.pages),
            self.lost_sessions(),
            self.sum(|t| t.lost_after_removal),
            self.lost_writes(),
            self.failed(),
            self.removals_on_failure(),
            self.sum(|t| t.removals_on_success),
            self.sum(|t| t.unshown_writes),
            self.tallies.iter().filter(|t| t.unverified).count(),
        )
    }

    /// Panics, with every incident, unless nothing was lost, no response removed the
    /// cookie, every write shown was acknowledged, every visitor passed its final check
    /// and the scenario has no note.
    pub fn assert_clean(&self, scenario: &str) {
        let clean = self.lost_sessions() == 0
            && self.lost_writes() == 0
            && self.removals_on_failure() == 0
            && self.sum(|t| t.removals_on_success) == 0
            && self.sum(|t| t.unshown_writes) == 0
            && self.tallies.iter().all(|t| !t.unverified)
            && self.notes.is_empty();
        if !clean {
            let incidents: Vec<&str> = self
                .tallies
                .iter()
                .flat_map(|t| t.incidents.iter().take(4))
                .map(String::as_str)
                .collect();
            panic!(
                "{scenario}: {}\nnotes: {:?}\nincidents (first 4 per visitor):\n  {}",
                self.summary(),
                self.notes,
                incidents.join("\n  ")
            );
        }
    }
}
