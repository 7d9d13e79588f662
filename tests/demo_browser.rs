//! The thesis' acceptance scenario in a real browser: headless Chromium (Debian
//! `chromium`, driven over WebDriver by `chromedriver` from Debian `chromium-driver`)
//! walks the four steps through Apache httpd in front of the README's demo cluster:
//! open, refresh, add `a = 1`, kill the serving instance with the page's button, reload:
//! `a = 1` is still shown; kill the memcached node named in the id, reload: still shown.
//! Once with cookies, once with cookies disabled (the links and the form carry the id).
//!
//! A screenshot of each step is kept under `<target>/demo-artifacts/<test>/` (or
//! `$MEMKEEP_ARTIFACTS_DIR/<test>/`); the path is printed.

#[path = "kit/demo.rs"]
mod demo_kit;
mod kit;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use demo_kit::{artifacts_dir, process_alive, DemoCluster, TempDir};
use fantoccini::{ClientBuilder, Locator};
use kit::memcached::free_port;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::json;

/// How long a page may take to show what a step expects.
const STEP_LIMIT: Duration = Duration::from_secs(30);

fn find_binary(names: &[&str], package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/lib/chromium"].map(PathBuf::from));
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{} not found: install the Debian package with `apt-get install {package}` \
                 (scripts/install-deps.sh does it when run as root)",
                names[0]
            )
        })
}

/// chromedriver in its own process group (so Chromium goes with it when it is killed).
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        use std::os::unix::process::CommandExt;
        let bin = find_binary(&["chromedriver"], "chromium-driver");
        let port = free_port();
        let mut child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(s)) = child.try_wait() {
                panic!("chromedriver exited at start: {s}");
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

async fn connect(driver: &Driver, profile: &Path, cookies: bool) -> fantoccini::Client {
    let chromium = find_binary(&["chromium", "chromium-browser"], "chromium");
    let mut prefs = serde_json::Map::new();
    if !cookies {
        prefs.insert(
            "profile.default_content_setting_values.cookies".into(),
            json!(2),
        );
    }
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,860",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": prefs,
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .unwrap_or_else(|e| panic!("WebDriver session with Chromium: {e}"))
}

/// The text inside the first element with `id`, from page source (no stale handles).
fn by_id(source: &str, id: &str) -> Option<String> {
    let start = source.find(&format!("id=\"{id}\""))?;
    let open_end = start + source[start..].find('>')? + 1;
    let close = open_end + source[open_end..].find('<')?;
    Some(source[open_end..close].trim().to_owned())
}

/// The `name = value` lines of the attributes block.
fn attributes(source: &str) -> Vec<String> {
    let Some(start) = source.find("<pre id=\"attributes\">") else {
        return Vec::new();
    };
    let rest = &source[start..];
    let body =
        &rest[rest.find('>').map_or(0, |i| i + 1)..rest.find("</pre>").unwrap_or(rest.len())];
    body.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

struct Walk<'a> {
    c: &'a fantoccini::Client,
    cluster: &'a DemoCluster,
    shots: PathBuf,
    cookies: bool,
    log: Vec<String>,
}

impl Walk<'_> {
    /// Polls the page source until `cond` holds (bounded).
    async fn wait(&self, what: &str, cond: impl Fn(&str) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + STEP_LIMIT;
        let mut last = String::new();
        loop {
            if let Ok(src) = self.c.source().await {
                if cond(&src) {
                    return Ok(src);
                }
                last = src;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{what}: not seen within {STEP_LIMIT:?}; last page:\n{:.3000}",
                    last
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn shot(&mut self, name: &str, note: String) -> Result<(), String> {
        let png = self
            .c
            .screenshot()
            .await
            .map_err(|e| format!("screenshot {name}: {e}"))?;
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).map_err(|e| format!("write {}: {e}", path.display()))?;
        self.log.push(format!("{name}: {note}"));
        Ok(())
    }

    async fn click(&self, css: &str) -> Result<(), String> {
        self.c
            .find(Locator::Css(css))
            .await
            .map_err(|e| format!("find {css}: {e}"))?
            .click()
            .await
            .map_err(|e| format!("click {css}: {e}"))
    }

    /// Reload as a user would: F5 with cookies; without cookies the page's own
    /// Refresh link (the bare URL would start a new session).
    async fn reload(&self) -> Result<(), String> {
        if self.cookies {
            self.c.refresh().await.map_err(|e| format!("refresh: {e}"))
        } else {
            self.click("#refresh").await
        }
    }

    fn process_running(&self, name: &str) -> bool {
        self.cluster
            .processes()
            .iter()
            .any(|(n, pid, running)| n == name && *running && pid.is_some_and(process_alive))
    }

    async fn steps(&mut self) -> Result<(), String> {
        let has_a = |src: &str| attributes(src).iter().any(|l| l == "a = 1");

        // 1. Open the page through the balancer.
        self.c
            .goto(&self.cluster.url)
            .await
            .map_err(|e| format!("open {}: {e}", self.cluster.url))?;
        let src = self
            .wait("the page", |s| by_id(s, "session-id").is_some())
            .await?;
        let first_route = by_id(&src, "route").ok_or("no #route")?;
        let first_id = by_id(&src, "session-id").ok_or("no #session-id")?;
        if !src.contains("Apache httpd") {
            return Err("the page does not say it runs behind Apache httpd".into());
        }
        self.shot(
            "1-open",
            format!("served by {first_route}, session {first_id}"),
        )
        .await?;

        // 2. Refresh: the same session (sticky: the same instance).
        self.reload().await?;
        let src = self
            .wait("the refreshed page", |s| {
                by_id(s, "session-id").as_deref() == Some(&first_id)
            })
            .await?;
        let route = by_id(&src, "route").ok_or("no #route")?;
        if route != first_route {
            return Err(format!(
                "sticky balancer: refresh served by {route}, not {first_route}"
            ));
        }
        self.shot("2-refresh", format!("same session {first_id} on {route}"))
            .await?;

        // 3. Add a = 1.
        self.c
            .find(Locator::Id("dataName"))
            .await
            .map_err(|e| format!("#dataName: {e}"))?
            .send_keys("a")
            .await
            .map_err(|e| format!("type the name: {e}"))?;
        self.c
            .find(Locator::Id("dataValue"))
            .await
            .map_err(|e| format!("#dataValue: {e}"))?
            .send_keys("1")
            .await
            .map_err(|e| format!("type the value: {e}"))?;
        self.click("#add-button").await?;
        let src = self.wait("a = 1 after the form", has_a).await?;
        let serving = by_id(&src, "route").ok_or("no #route")?;
        self.shot("3-add-a-1", format!("a = 1 added on {serving}"))
            .await?;

        // 4. Kill the serving instance with its button; the next page comes from the
        // other instance, with a = 1.
        self.click(&format!("#kill-{serving}")).await?;
        let src = self
            .wait("the page from the other instance", |s| {
                by_id(s, "route").is_some_and(|r| r != serving)
            })
            .await?;
        if self.process_running(&serving) {
            return Err(format!(
                "instance {serving} still runs after its Kill button"
            ));
        }
        if !has_a(&src) {
            return Err(format!(
                "a = 1 lost after killing {serving}:\n{:.3000}",
                src
            ));
        }
        let survivor = by_id(&src, "route").ok_or("no #route")?;
        self.shot(
            "4-instance-killed",
            format!("{serving} SIGKILLed; {survivor} took the session over, a = 1 shown"),
        )
        .await?;
        self.reload().await?;
        let src = self
            .wait("a = 1 after reload", |s| {
                has_a(s) && by_id(s, "route").as_deref() == Some(survivor.as_str())
            })
            .await?;
        let node = by_id(&src, "session-node").ok_or("no #session-node")?;
        self.shot(
            "5-reload",
            format!("reloaded: {survivor}, a = 1, session on {node}"),
        )
        .await?;

        // 5. Kill the memcached node named in the id; reload: still there.
        self.click(&format!("#kill-{node}")).await?;
        self.wait("the page showing the killed node down", |s| {
            s.find(&format!("id=\"node-{node}\""))
                .and_then(|i| s[i..].split("</tr>").next())
                .is_some_and(|row| row.contains("state down"))
        })
        .await?;
        if self.process_running(&node) {
            return Err(format!("memcached {node} still runs after its Kill button"));
        }
        self.reload().await?;
        let src = self
            .wait("a = 1 with the session moved off the dead node", |s| {
                has_a(s) && by_id(s, "session-node").is_some_and(|n| n != node)
            })
            .await?;
        let new_node = by_id(&src, "session-node").unwrap_or_default();
        self.shot(
            "6-memcached-killed",
            format!("memcached {node} SIGKILLed; a = 1 shown, session now on {new_node}"),
        )
        .await?;

        if !self.cookies {
            let url = self
                .c
                .current_url()
                .await
                .map_err(|e| format!("current_url: {e}"))?;
            if !url.as_str().contains(";jsessionid=") {
                return Err(format!("cookie-less: the URL does not carry the id: {url}"));
            }
            let cookies = self
                .c
                .get_all_cookies()
                .await
                .map_err(|e| format!("get_all_cookies: {e}"))?;
            if !cookies.is_empty() {
                return Err(format!(
                    "cookies were meant to be disabled, got {cookies:?}"
                ));
            }
            if !src.contains("no session cookie came with this request") {
                return Err("the page does not say the id travels in the URL".into());
            }
        }
        Ok(())
    }
}

async fn walk_the_four_steps(cookies: bool, test: &str) {
    let cluster = DemoCluster::start(&["--balancer", "apache"]);
    let shots = artifacts_dir(test);
    let profile = TempDir::new("chromium");
    let driver = Driver::start();
    let c = connect(&driver, &profile.0, cookies).await;
    let mut walk = Walk {
        c: &c,
        cluster: &cluster,
        shots: shots.clone(),
        cookies,
        log: Vec::new(),
    };
    let result = walk.steps().await;
    let log = std::mem::take(&mut walk.log);
    if result.is_err() {
        let _ = walk
            .shot("failure", "the page when the test failed".into())
            .await;
    }
    let _ = c.close().await;
    drop(driver);
    println!("screenshots in {}:", shots.display());
    for l in &log {
        println!("  {l}");
    }
    if let Err(e) = result {
        panic!("{e}\n(screenshots in {})", shots.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_the_session_survives_an_instance_kill_and_a_memcached_kill_with_cookies() {
    walk_the_four_steps(true, "browser-cookies").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_with_cookies_disabled_the_links_and_form_carry_the_id_and_the_session_survives_both_kills(
) {
    walk_the_four_steps(false, "browser-no-cookies").await;
}
