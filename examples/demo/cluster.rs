//! `demo cluster`: two memcached servers, two instances of this binary and a balancer in
//! front, on 127.0.0.1; prints the URL; serves the page's kill / restart buttons
//! (`/demo-control/`, routed to it by the balancer); stops everything on Ctrl-C, SIGTERM
//! or SIGHUP.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use memkeep::session::{CodecKind, Mode};
use serde_json::json;
use tokio::sync::Mutex;

use crate::balancer::{Balancer, DemoControl, Kind};
use crate::web::parse_form;

/// Which balancer to put in front.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalancerChoice {
    /// Apache httpd if installed, else HAProxy, else the built-in proxy.
    Auto,
    /// That product (fails if it is not installed).
    Real(Kind),
    /// The built-in route-aware proxy (demo only).
    Builtin,
}

/// The `cluster` subcommand's flags.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Balancer port on 127.0.0.1 (0: any free port).
    pub port: u16,
    /// Which balancer.
    pub balancer: BalancerChoice,
    /// Session mode of the instances.
    pub mode: Mode,
    /// Codec of the instances.
    pub codec: CodecKind,
    /// The memcached binary (default: found on `$PATH` or in the Debian location).
    pub memcached: Option<PathBuf>,
}

const BUILTIN_LABEL: &str =
    "the built-in route-aware proxy (DEMO ONLY - install apache2 or haproxy for a real balancer)";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProcKind {
    Memcached,
    Instance,
}

/// A process the launcher owns and can kill and restart.
struct Proc {
    kind: ProcKind,
    program: PathBuf,
    args: Vec<String>,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Proc {
    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn start(&mut self) -> Result<(), String> {
        self.kill();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).stdin(Stdio::null());
        if self.kind == ProcKind::Memcached {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        crate::balancer::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.program.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if !self.is_running() {
                return Err(format!(
                    "{} {} exited at start",
                    self.program.display(),
                    self.args.join(" ")
                ));
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "{} did not listen on {} within 15 s",
                    self.program.display(),
                    self.addr
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Launcher {
    procs: Mutex<BTreeMap<String, Proc>>,
    url: String,
    balancer_label: String,
}

fn free_port() -> Result<u16, String> {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

fn memcached_binary(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("--memcached {}: not a file", p.display()))
        };
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("memcached"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "memcached is not installed: `sudo apt-get install memcached` (scripts/demo.sh does it when run as root)".to_owned()
        })
}

fn mode_flag(mode: Mode) -> &'static str {
    match mode {
        Mode::NonSticky => "non-sticky",
        _ => "sticky",
    }
}

/// Runs the cluster until a signal asks it to stop.
pub async fn run(options: ClusterOptions) -> Result<(), Box<dyn std::error::Error>> {
    let memcached = memcached_binary(options.memcached.clone())?;
    let exe = std::env::current_exe()?;
    let tmp = std::env::temp_dir();
    for line in crate::stale::clean_up_stale_runs(&tmp) {
        println!("{line}");
    }
    let dir = tmp.join(format!(
        "{}{}",
        crate::stale::RUN_DIR_PREFIX,
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(options, memcached, exe, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(
    options: ClusterOptions,
    memcached: PathBuf,
    exe: PathBuf,
    dir: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = crate::balancer::running_as_root();
    let mut procs: BTreeMap<String, Proc> = BTreeMap::new();
    let mut node_specs = Vec::new();
    for id in ["n1", "n2"] {
        let port = free_port()?;
        let mut args = vec![
            "-l".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
            "-U".to_owned(),
            "0".to_owned(),
            "-m".to_owned(),
            "64".to_owned(),
        ];
        if root {
            // memcached refuses to run as root without naming a user.
            args.extend(["-u".to_owned(), "root".to_owned()]);
        }
        node_specs.push(format!("{id}:127.0.0.1:{port}"));
        procs.insert(
            id.to_owned(),
            Proc {
                kind: ProcKind::Memcached,
                program: memcached.clone(),
                args,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child: None,
            },
        );
    }
    let nodes = node_specs.join(",");

    // Control API (the buttons), reached through the balancer.
    let control_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let control_addr = control_listener.local_addr()?;

    // The balancer first (it starts fine with its backends down): its label goes on the page.
    let instance_addrs: Vec<(String, SocketAddr)> = ["web1", "web2"]
        .into_iter()
        .map(|r| {
            Ok((
                r.to_owned(),
                SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            ))
        })
        .collect::<Result<_, String>>()?;
    let port = if options.port == 0 {
        free_port()?
    } else {
        options.port
    };
    if StdListener::bind(("127.0.0.1", port)).is_err() {
        return Err(format!("port {port} is in use on 127.0.0.1: pick another with --port").into());
    }
    let backends: [(String, SocketAddr); 2] =
        [instance_addrs[0].clone(), instance_addrs[1].clone()];
    let wanted: Vec<Kind> = match options.balancer {
        BalancerChoice::Builtin => Vec::new(),
        BalancerChoice::Real(k) => vec![k],
        BalancerChoice::Auto => [Kind::Apache, Kind::Haproxy]
            .into_iter()
            .filter(|k| k.binary().is_some())
            .collect(),
    };
    let mut balancer: Option<Balancer> = None;
    for kind in wanted {
        let sub = dir.join(kind.name());
        std::fs::create_dir_all(&sub)?;
        match Balancer::start(
            kind,
            &sub,
            port,
            &backends,
            Some(DemoControl { addr: control_addr }),
        ) {
            Ok(b) => {
                balancer = Some(b);
                break;
            }
            Err(e) if options.balancer == BalancerChoice::Auto => {
                eprintln!(
                    "demo: {} did not start, trying the next balancer:\n{e}",
                    kind.name()
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    let balancer_label = match &balancer {
        Some(b) => b.kind().label().to_owned(),
        None => {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            tokio::spawn(crate::proxy::serve(
                listener,
                backends.to_vec(),
                control_addr,
            ));
            BUILTIN_LABEL.to_owned()
        }
    };

    for (i, (route, addr)) in instance_addrs.iter().enumerate() {
        let (peer_route, peer_addr) = &instance_addrs[1 - i];
        let mut args = vec![
            "instance".to_owned(),
            "--listen".to_owned(),
            addr.to_string(),
            "--route".to_owned(),
            route.clone(),
            "--nodes".to_owned(),
            nodes.clone(),
            "--mode".to_owned(),
            mode_flag(options.mode).to_owned(),
            "--codec".to_owned(),
            options.codec.name().to_owned(),
            "--peer".to_owned(),
            format!("{peer_route}={peer_addr}"),
            "--demo-controls".to_owned(),
            "--balancer-label".to_owned(),
            balancer_label.clone(),
        ];
        if options.mode == Mode::Sticky {
            // Like MSM's failoverNodes (a sticky-mode setting): each instance's "own
            // machine" memcached is used for new sessions only when the other is down.
            args.extend(["--failover-nodes".to_owned(), format!("n{}", i + 1)]);
        }
        procs.insert(
            route.clone(),
            Proc {
                kind: ProcKind::Instance,
                program: exe.clone(),
                args,
                addr: *addr,
                child: None,
            },
        );
    }
    let url = format!("http://127.0.0.1:{port}/");
    let launcher = Arc::new(Launcher {
        procs: Mutex::new(procs),
        url: url.clone(),
        balancer_label: balancer_label.clone(),
    });
    let started = async {
        let mut procs = launcher.procs.lock().await;
        for p in procs.values_mut() {
            p.start().await?;
        }
        Ok::<(), String>(())
    }
    .await;
    let outcome = match started {
        Ok(()) => serve_until_signal(&launcher, control_listener, &nodes).await,
        Err(e) => Err(e.into()),
    };
    println!("demo: stopping");
    for p in launcher.procs.lock().await.values_mut() {
        p.kill();
    }
    if let Some(mut b) = balancer {
        b.stop();
    }
    outcome
}

async fn serve_until_signal(
    launcher: &Arc<Launcher>,
    control_listener: tokio::net::TcpListener,
    nodes: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let router = Router::new()
        .route("/demo-control/status", get(status))
        .route("/demo-control/{action}", post(control))
        .with_state(Arc::clone(launcher));
    tokio::spawn(async move {
        let _ = axum::serve(control_listener, router).await;
    });
    {
        let procs = launcher.procs.lock().await;
        println!("\nmemkeep demo cluster");
        println!("  balancer   {}", launcher.balancer_label);
        for (name, p) in procs.iter() {
            let what = match p.kind {
                ProcKind::Instance => "instance ",
                ProcKind::Memcached => "memcached",
            };
            println!("  {what}  {name}  {}", p.addr);
        }
        println!("  nodes      {nodes}");
        println!(
            "\nOpen {} in a browser. Ctrl-C stops everything.",
            launcher.url
        );
        // For scripts and tests: one line, easy to find.
        println!("MEMKEEP_DEMO_URL={}", launcher.url);
    }
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
    Ok(())
}

/// Only local paths: never an open redirect.
fn safe_back(back: Option<&str>) -> String {
    match back {
        Some(b)
            if b.starts_with('/') && !b.starts_with("//") && !b.contains(['\r', '\n', '\\']) =>
        {
            b.to_owned()
        }
        _ => "/".to_owned(),
    }
}

async fn control(
    State(launcher): State<Arc<Launcher>>,
    Path(action): Path<String>,
    uri: Uri,
) -> Response {
    let params = parse_form(uri.query().unwrap_or(""));
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let target = param("target").unwrap_or_default();
    let back = param("back");
    let mut procs = launcher.procs.lock().await;
    let Some(p) = procs.get_mut(&target) else {
        return (StatusCode::NOT_FOUND, format!("no process {target:?}\n")).into_response();
    };
    let result = match action.as_str() {
        "kill" => {
            p.kill();
            println!("demo: {target} killed (SIGKILL)");
            Ok(())
        }
        "restart" => {
            let r = p.start().await;
            if r.is_ok() {
                println!("demo: {target} restarted");
            }
            r
        }
        other => {
            return (
                StatusCode::NOT_FOUND,
                format!("no action {other:?}; use kill or restart\n"),
            )
                .into_response()
        }
    };
    match result {
        Ok(()) => (
            StatusCode::SEE_OTHER,
            [(LOCATION, safe_back(back.as_deref()))],
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn status(State(launcher): State<Arc<Launcher>>) -> Response {
    let mut procs = launcher.procs.lock().await;
    let list: Vec<serde_json::Value> = procs
        .iter_mut()
        .map(|(name, p)| {
            let running = p.is_running();
            json!({
                "name": name,
                "kind": match p.kind { ProcKind::Instance => "instance", ProcKind::Memcached => "memcached" },
                "address": p.addr.to_string(),
                "pid": p.child.as_ref().map(Child::id),
                "running": running,
            })
        })
        .collect();
    let body = json!({
        "url": launcher.url,
        "balancer": launcher.balancer_label,
        "processes": list,
    });
    ([(CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
