//! Real balancers (Apache httpd, HAProxy, nginx) in front of two demo instances, started
//! from the production configurations in `deploy/` with their site-specific values
//! substituted.
//!
//! Shared by the demo launcher (`demo cluster`) and the end-to-end tests
//! (`tests/kit/demo.rs` includes this file), so the tests exercise exactly the files a
//! deployment copies. Self-contained on purpose: no `crate::` paths.

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Makes the process `cmd` starts get SIGKILL when the process that started it dies,
/// even by SIGKILL, so a killed launcher leaves no servers behind (Linux
/// `PR_SET_PDEATHSIG`). The signal follows the starting *thread*: start children from a
/// thread that lives as long as they should (the main thread, a runtime worker, a test's
/// own thread).
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed. It makes two system calls, prctl(2) and
    // getppid(2), both async-signal-safe; it allocates nothing (an io::Error made from a
    // raw errno holds no heap data), takes no lock and touches no shared state.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            // The parent may have died between fork and prctl: nobody would signal then.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// The production configurations, as shipped in `deploy/`.
pub const APACHE_CONF: &str = include_str!("../../deploy/apache2/memkeep.conf");
/// See [`APACHE_CONF`].
pub const HAPROXY_CFG: &str = include_str!("../../deploy/haproxy/memkeep.cfg");
/// See [`APACHE_CONF`].
pub const NGINX_CONF: &str = include_str!("../../deploy/nginx/memkeep.conf");

/// The example backends the `deploy/` files name; a deployment (and the tests) replace
/// them with the real instances. Route `web1` is the first, `web2` the second.
pub const DEPLOY_BACKENDS: [(&str, &str); 2] =
    [("web1", "10.0.0.11:8080"), ("web2", "10.0.0.12:8080")];

/// How long a balancer may take to accept connections after its start.
const READY_LIMIT: Duration = Duration::from_secs(20);

/// A balancer product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Apache httpd with mod_proxy_balancer and mod_proxy_hcheck.
    Apache,
    /// HAProxy.
    Haproxy,
    /// nginx (open source).
    Nginx,
}

impl Kind {
    /// Every kind, in the demo's order of preference.
    pub const ALL: [Kind; 3] = [Kind::Apache, Kind::Haproxy, Kind::Nginx];

    /// Short name (`apache`, `haproxy`, `nginx`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Apache => "apache",
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
        }
    }

    /// What the demo page says it runs behind.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Apache => {
                "Apache httpd (mod_proxy_balancer, stickysession=JSESSIONID|jsessionid)"
            }
            Kind::Haproxy => "HAProxy (use-server on the id's route)",
            Kind::Nginx => "nginx (route map to upstream groups)",
        }
    }

    /// The Debian package that provides it.
    pub fn package(self) -> &'static str {
        match self {
            Kind::Apache => "apache2",
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
        }
    }

    fn binaries(self) -> &'static [&'static str] {
        match self {
            Kind::Apache => &["apache2", "httpd"],
            Kind::Haproxy => &["haproxy"],
            Kind::Nginx => &["nginx"],
        }
    }

    /// The server binary: `$PATH`, then the usual sbin directories.
    pub fn binary(self) -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        for d in ["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"] {
            dirs.push(PathBuf::from(d));
        }
        self.binaries()
            .iter()
            .flat_map(|b| dirs.iter().map(move |d| d.join(b)))
            .find(|p| p.is_file())
    }

    /// The production configuration file of this kind, under `deploy/`.
    pub fn deploy_file(self) -> &'static str {
        match self {
            Kind::Apache => "deploy/apache2/memkeep.conf",
            Kind::Haproxy => "deploy/haproxy/memkeep.cfg",
            Kind::Nginx => "deploy/nginx/memkeep.conf",
        }
    }

    fn template(self) -> &'static str {
        match self {
            Kind::Apache => APACHE_CONF,
            Kind::Haproxy => HAPROXY_CFG,
            Kind::Nginx => NGINX_CONF,
        }
    }

    /// The listen token of the deploy file and its replacement for `port`.
    fn listen_substitution(self, port: u16) -> (&'static str, String) {
        match self {
            Kind::Apache => ("<VirtualHost *:80>", format!("<VirtualHost *:{port}>")),
            Kind::Haproxy => ("    bind :80\n", format!("    bind 127.0.0.1:{port}\n")),
            Kind::Nginx => ("    listen 80;", format!("    listen 127.0.0.1:{port};")),
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "apache" | "apache2" | "httpd" => Ok(Kind::Apache),
            "haproxy" => Ok(Kind::Haproxy),
            "nginx" => Ok(Kind::Nginx),
            _ => Err(format!(
                "{s:?} is not a balancer; use apache, haproxy or nginx"
            )),
        }
    }
}

/// Demo-only routing added to the production configuration: `/demo-control/` goes to the
/// demo launcher (the kill / restart buttons). Never in `deploy/`.
#[derive(Clone, Copy, Debug)]
pub struct DemoControl {
    /// The launcher's control address.
    pub addr: SocketAddr,
}

/// Replaces `from` by `to` in `text`, refusing when `from` is absent (the deploy file
/// changed: the caller must be told, not run a half-substituted configuration).
fn substitute(text: &str, from: &str, to: &str, file: &str) -> Result<String, String> {
    if !text.contains(from) {
        return Err(format!(
            "{file} no longer contains {from:?}; update the substitution in examples/demo/balancer.rs"
        ));
    }
    Ok(text.replace(from, to))
}

/// The deploy configuration of `kind` for a balancer on 127.0.0.1:`port` in front of
/// `backends` (`(route, host:port)`, routes `web1` then `web2`), plus the demo-only
/// control route when `control` is given.
pub fn render(
    kind: Kind,
    port: u16,
    backends: &[(String, SocketAddr); 2],
    control: Option<DemoControl>,
) -> Result<String, String> {
    let file = kind.deploy_file();
    let (listen_from, listen_to) = kind.listen_substitution(port);
    let mut text = substitute(kind.template(), listen_from, &listen_to, file)?;
    for ((route, example), (actual_route, addr)) in DEPLOY_BACKENDS.iter().zip(backends) {
        if route != actual_route {
            return Err(format!(
                "{file} routes on {route:?}; start the instance with --route {route} (got {actual_route:?})"
            ));
        }
        text = substitute(&text, example, &addr.to_string(), file)?;
    }
    if let Some(c) = control {
        let addr = c.addr;
        text = match kind {
            Kind::Apache => substitute(
                &text,
                "    ProxyPass        \"/\"",
                &format!(
                    "    # demo only: the kill / restart buttons\n    ProxyPass        \"/demo-control/\" \"http://{addr}/demo-control/\"\n    ProxyPass        \"/\""
                ),
                file,
            )?,
            Kind::Haproxy => {
                let t = substitute(
                    &text,
                    "    default_backend memkeep_app\n",
                    "    # demo only: the kill / restart buttons\n    use_backend memkeep_demo_control if { path_beg /demo-control/ }\n    default_backend memkeep_app\n",
                    file,
                )?;
                format!("{t}\n# demo only\nbackend memkeep_demo_control\n    server control {addr}\n")
            }
            Kind::Nginx => substitute(
                &text,
                "    location / {",
                &format!(
                    "    # demo only: the kill / restart buttons\n    location /demo-control/ {{\n        proxy_pass http://{addr};\n    }}\n\n    location / {{"
                ),
                file,
            )?,
        };
    }
    Ok(text)
}

/// True when this process runs as root (`/proc/self` belongs to the effective user).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The server's own top-level configuration around the deploy file (what the
/// distribution's main configuration provides in a real deployment): modules, pid and
/// log files in `dir`, foreground.
fn main_config(kind: Kind, dir: &Path, port: u16) -> Result<String, String> {
    let d = dir.display();
    let root = running_as_root();
    match kind {
        Kind::Apache => {
            let moddir = ["/usr/lib/apache2/modules", "/usr/lib64/httpd/modules", "/usr/lib/httpd/modules"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.join("mod_proxy_balancer.so").is_file())
                .ok_or("mod_proxy_balancer.so not found (Debian package apache2)")?;
            let m = moddir.display();
            let mut modules = String::new();
            for (name, file) in [
                ("mpm_event_module", "mod_mpm_event.so"),
                ("authz_core_module", "mod_authz_core.so"),
                ("proxy_module", "mod_proxy.so"),
                ("proxy_http_module", "mod_proxy_http.so"),
                ("proxy_balancer_module", "mod_proxy_balancer.so"),
                ("lbmethod_byrequests_module", "mod_lbmethod_byrequests.so"),
                ("slotmem_shm_module", "mod_slotmem_shm.so"),
                ("proxy_hcheck_module", "mod_proxy_hcheck.so"),
                ("headers_module", "mod_headers.so"),
            ] {
                modules.push_str(&format!("LoadModule {name} {m}/{file}\n"));
            }
            let user = if root { "User nobody\nGroup nogroup\n" } else { "" };
            Ok(format!(
                "# generated by the memkeep demo / tests around {file}\n\
                 ServerRoot \"{d}\"\nServerName 127.0.0.1\nListen 127.0.0.1:{port}\n\
                 PidFile \"{d}/httpd.pid\"\nErrorLog \"{d}/error.log\"\nLogLevel warn\n\
                 DefaultRuntimeDir \"{d}\"\n{modules}{user}\
                 StartServers 1\nServerLimit 1\nThreadLimit 32\nThreadsPerChild 32\n\
                 MaxRequestWorkers 32\nMinSpareThreads 1\nMaxSpareThreads 32\n\
                 Include \"{d}/memkeep.conf\"\n",
                file = kind.deploy_file()
            ))
        }
        Kind::Haproxy => Ok(
            "# generated by the memkeep demo / tests: the global section of a real deployment\nglobal\n    maxconn 1024\n    log stderr format short local0 info\n"
                .to_owned(),
        ),
        Kind::Nginx => {
            let user = if root { "user nobody nogroup;\n" } else { "" };
            Ok(format!(
                "# generated by the memkeep demo / tests around {file}\n\
                 daemon off;\nworker_processes 1;\n{user}pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 512; }}\n\
                 http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
                 \x20   fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
                 \x20   include {d}/memkeep.conf;\n}}\n",
                file = kind.deploy_file()
            ))
        }
    }
}

/// A running balancer process. Stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Balancer {
    kind: Kind,
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl Balancer {
    /// Writes the configuration into `dir` (which must exist) and starts the server in
    /// the foreground on 127.0.0.1:`port`; returns once it accepts connections.
    pub fn start(
        kind: Kind,
        dir: &Path,
        port: u16,
        backends: &[(String, SocketAddr); 2],
        control: Option<DemoControl>,
    ) -> Result<Balancer, String> {
        let bin = kind.binary().ok_or_else(|| {
            format!(
                "{} is not installed: install the Debian package with `apt-get install {}` \
                 (scripts/install-deps.sh does it when run as root)",
                kind.name(),
                kind.package()
            )
        })?;
        let site = render(kind, port, backends, control)?;
        let write = |name: &str, text: &str| {
            fs::write(dir.join(name), text)
                .map_err(|e| format!("writing {}: {e}", dir.join(name).display()))
        };
        write("memkeep.conf", &site)?;
        let main = main_config(kind, dir, port)?;
        let mut cmd = Command::new(&bin);
        match kind {
            Kind::Apache => {
                write("httpd.conf", &main)?;
                cmd.arg("-f")
                    .arg(dir.join("httpd.conf"))
                    .arg("-DFOREGROUND");
            }
            Kind::Haproxy => {
                write("global.cfg", &main)?;
                cmd.arg("-db")
                    .arg("-f")
                    .arg(dir.join("global.cfg"))
                    .arg("-f")
                    .arg(dir.join("memkeep.conf"));
            }
            Kind::Nginx => {
                write("nginx.conf", &main)?;
                cmd.arg("-p")
                    .arg(dir)
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-c")
                    .arg(dir.join("nginx.conf"));
            }
        }
        let out =
            fs::File::create(dir.join("output.log")).map_err(|e| format!("output.log: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("output.log: {e}"))?;
        // In the caller's process group: a test runner that kills a hung test's group
        // stops the balancer too.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut b = Balancer {
            kind,
            child: Some(child),
            dir: dir.to_owned(),
            port,
        };
        b.wait_ready()?;
        Ok(b)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "{} exited at start ({status}):\n{}",
                        self.kind.name(),
                        self.logs()
                    ));
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!(
                    "{} did not accept connections on {addr} within {READY_LIMIT:?}:\n{}",
                    self.kind.name(),
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding its configuration and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read_log(&self, name: &str) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(self.dir.join(name)) {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }

    /// The server's output and error log (the last 4 KiB of each).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["output.log", "error.log"] {
            let text = self.read_log(name);
            let mut start = text.len().saturating_sub(4096);
            while !text.is_char_boundary(start) {
                start += 1;
            }
            let mut tail = &text[start..];
            if start > 0 {
                // Drop the partial first line.
                tail = tail.find('\n').map_or(tail, |i| &tail[i + 1..]);
            }
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                self.dir.join(name).display(),
                tail.trim_end()
            ));
        }
        out
    }

    /// True when the server's output or error log contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        ["output.log", "error.log"]
            .iter()
            .any(|name| self.read_log(name).contains(needle))
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the server: SIGTERM (the master stops its workers), SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop();
    }
}
