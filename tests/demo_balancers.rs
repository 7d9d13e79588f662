//! The production balancer configurations of `deploy/` (Apache httpd with
//! mod_proxy_balancer and mod_proxy_hcheck, HAProxy, nginx), each run as the real server from its Debian
//! package in front of two real demo instances and two real memcached servers:
//! stickiness on the session id's route (cookie and `;jsessionid=`), failover on instance
//! SIGKILL and memcached SIGKILL with no acknowledged write lost, checked per client.
//! Also the README's `demo cluster` command with its built-in demo proxy.
//!
//! A missing balancer is a failure naming the Debian package (scripts/install-deps.sh
//! installs them), never a skip.

#[path = "kit/demo.rs"]
mod demo_kit;
mod kit;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use demo_kit::balancer::Kind;
use demo_kit::{eventually, process_alive, route_of, DemoCluster, Stack, Visitor};
use kit::{History, Outcome};

/// Requests each visitor makes in the stickiness tests.
const STICKY_REQUESTS: usize = 6;

/// Every visitor (cookie or URL) stays on the instance its id routes to, and that
/// instance is the one the id names.
fn sticky_routing(kind: Kind) {
    let stack = Stack::start(kind, &[]);
    let mut seen_routes = std::collections::BTreeSet::new();
    for v in 0..8 {
        let cookies = v % 2 == 0;
        let mut visitor = Visitor::new(stack.front(), cookies);
        let first = visitor
            .get(&[("dataName", "v"), ("dataValue", &v.to_string())])
            .unwrap_or_else(|e| panic!("{}: first request: {e}", kind.name()));
        assert_eq!(
            route_of(&first.session_id),
            Some(first.route.as_str()),
            "a new session's id routes to the instance that created it"
        );
        seen_routes.insert(first.route.clone());
        for n in 0..STICKY_REQUESTS {
            let sent = visitor.id.clone().expect("the visitor has an id");
            let page = visitor
                .get(&[])
                .unwrap_or_else(|e| panic!("{}: request {n}: {e}", kind.name()));
            assert_eq!(
                Some(page.route.as_str()),
                route_of(&sent),
                "{}: visitor {v} (cookies: {cookies}) presented {sent} and was served by {}",
                kind.name(),
                page.route
            );
            assert_eq!(page.session_id, sent, "the id stays the same");
            assert_eq!(
                page.attributes.get("v").map(String::as_str),
                Some(v.to_string().as_str())
            );
        }
    }
    assert_eq!(
        seen_routes.len(),
        2,
        "{}: new visitors are spread over both instances (saw {seen_routes:?})",
        kind.name()
    );
}

/// A visitor loop: each request adds attribute `w<seq>`; the page it gets back is a read
/// of every attribute this visitor wrote, checked against the history.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Vec<Arc<AtomicU64>>,
    /// Each visitor's session id as of its last acknowledged write.
    ids: Vec<Arc<std::sync::Mutex<String>>>,
    errors: Arc<AtomicU64>,
    handles: Vec<std::thread::JoinHandle<()>>,
    history: History,
}

impl Load {
    fn start(front: std::net::SocketAddr, visitors: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let history = History::new();
        let mut acked = Vec::new();
        let mut ids = Vec::new();
        let mut handles = Vec::new();
        for c in 0..visitors {
            let count = Arc::new(AtomicU64::new(0));
            acked.push(Arc::clone(&count));
            let last_id = Arc::new(std::sync::Mutex::new(String::new()));
            ids.push(Arc::clone(&last_id));
            let (stop, errors, history) = (Arc::clone(&stop), Arc::clone(&errors), history.clone());
            handles.push(std::thread::spawn(move || {
                let mut visitor = Visitor::new(front, c % 2 == 0);
                let mut written: Vec<String> = Vec::new();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("w{seq}");
                    let key = format!("c{c}/{name}");
                    let value = String::from_utf8(History::value(&key, c as u64, seq, 0))
                        .expect("ascii value");
                    history.begin_write(key.as_bytes(), value.as_bytes());
                    let sent = visitor.id.clone();
                    let result = if seq % 2 == 0 {
                        visitor.get(&[("dataName", &name), ("dataValue", &value)])
                    } else {
                        visitor.post(&[("dataName", &name), ("dataValue", &value)])
                    };
                    match result {
                        Ok(page) => {
                            history.end_write(key.as_bytes(), value.as_bytes(), Outcome::Acked);
                            written.push(name);
                            for w in &written {
                                let k = format!("c{c}/{w}");
                                let got = page.attributes.get(w).map(String::as_bytes);
                                if let Err(e) = history.check_read_exact(k.as_bytes(), got) {
                                    eprintln!(
                                        "visitor {c}: {e} (presented {sent:?}, served by {} with id {}: {})",
                                        page.route, page.session_id, page.event
                                    );
                                }
                            }
                            *last_id.lock().unwrap() = page.session_id.clone();
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            // No answer, or an error status: the write may or may not
                            // have been applied.
                            history.end_write(key.as_bytes(), value.as_bytes(), Outcome::Unknown);
                            written.push(name);
                            errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("visitor {c}: request failed (retrying): {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                    seq += 1;
                    std::thread::sleep(Duration::from_millis(15));
                }
            }));
        }
        Load {
            stop,
            acked,
            ids,
            errors,
            handles,
            history,
        }
    }

    fn counts(&self) -> Vec<u64> {
        self.acked
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    /// Waits until every visitor had `n` more acknowledged writes than in `since`:
    /// each one's session works again after the fault. Bounded (60 s).
    fn wait_progress(&self, since: &[u64], n: u64, after: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = self.counts();
            if now.iter().zip(since).all(|(a, b)| *a >= b + n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "after {after}: some visitors made no progress within 60 s (acknowledged writes before {since:?}, now {now:?})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every visitor's session has its backup copy again (its id names a
    /// backup node): after a memcached node came back, a session written while it was
    /// down had a single copy until its next write once the client sees the node up.
    /// Bounded (60 s).
    fn wait_redundant(&self, after: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ids: Vec<String> = self.ids.iter().map(|i| i.lock().unwrap().clone()).collect();
            if ids.iter().all(|id| id.contains('~')) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "after {after}: sessions without a backup copy after 60 s: {ids:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn finish(mut self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            h.join().expect("visitor thread panicked");
        }
        self.history.clone()
    }
}

/// Instance SIGKILL (and restart), then memcached SIGKILL (and restart, empty), under
/// load through the balancer: every visitor's session goes on, and no visitor ever reads
/// its session without a write that was acknowledged.
fn failover_without_loss(kind: Kind, instance_flags: &[&str]) {
    let mut stack = Stack::start(kind, instance_flags);
    let load = Load::start(stack.front(), 6);
    load.wait_progress(&[0; 6], 3, "start");

    let before = load.counts();
    stack.instance("web1").kill();
    load.wait_progress(&before, 3, "SIGKILL of instance web1");
    stack.instance("web1").restart();

    let before = load.counts();
    stack.instance("web2").kill();
    load.wait_progress(&before, 3, "SIGKILL of instance web2");
    stack.instance("web2").restart();

    let before = load.counts();
    stack.node("n0").kill();
    load.wait_progress(&before, 3, "SIGKILL of memcached n0");
    stack.node("n0").restart();
    // Two copies of every session again before the other node dies (else a session
    // written while n0 was down has its only copy on n1: a double failure).
    load.wait_redundant("restart of memcached n0 (empty)");

    let before = load.counts();
    stack.node("n1").kill();
    load.wait_progress(&before, 3, "SIGKILL of memcached n1 (n0 restarted empty)");

    let errors = load.errors.load(Ordering::Relaxed);
    let history = load.finish();
    let (reads, hits) = history.read_counts();
    println!(
        "{}: {} keys written, {reads} reads checked ({hits} hits), {errors} failed requests during failovers",
        kind.name(),
        history.keys()
    );
    println!("{}", stack.balancer.logs());
    assert!(reads > 0, "reads were checked");
    history.assert_clean();
}

/// The balancer's active health check finds a killed instance (its log says so), new
/// visitors all go to the live one, and the restarted instance is taken back.
fn health_checks(kind: Kind, probe_failed: impl Fn(std::net::SocketAddr) -> String) {
    let mut stack = Stack::start(kind, &[]);
    let web1 = stack.instance("web1").addr();
    stack.instance("web1").kill();
    let marker = probe_failed(web1);
    assert!(
        eventually(Duration::from_secs(30), || stack
            .balancer
            .log_contains(&marker)),
        "{}: no health-check failure for {web1} logged within 30 s (looked for {marker:?}):\n{}",
        kind.name(),
        stack.balancer.logs()
    );
    for n in 0..10 {
        let page = Visitor::new(stack.front(), n % 2 == 0)
            .get(&[])
            .unwrap_or_else(|e| panic!("{}: new visitor {n} with web1 down: {e}", kind.name()));
        assert_eq!(page.route, "web2", "web1 is out of rotation");
    }
    stack.instance("web1").restart();
    assert!(
        eventually(Duration::from_secs(30), || {
            Visitor::new(stack.front(), true)
                .get(&[])
                .is_ok_and(|p| p.route == "web1")
        }),
        "{}: the restarted web1 never got a new visitor within 30 s",
        kind.name()
    );
}

#[test]
fn apache_mod_proxy_hcheck_takes_a_killed_instance_out_of_rotation_and_back_after_its_restart() {
    health_checks(Kind::Apache, |addr| {
        format!("attempt to connect to {addr} ({addr}) failed")
    });
}

#[test]
fn haproxy_health_check_takes_a_killed_instance_out_of_rotation_and_back_after_its_restart() {
    health_checks(Kind::Haproxy, |_| {
        "Server memkeep_app/web1 is DOWN".to_owned()
    });
}

#[test]
fn apache_mod_proxy_balancer_keeps_each_visitor_on_the_instance_named_by_its_id_route() {
    sticky_routing(Kind::Apache);
}

#[test]
fn apache_mod_proxy_balancer_fails_over_on_instance_and_memcached_sigkill_without_losing_an_acknowledged_write(
) {
    failover_without_loss(Kind::Apache, &[]);
}

#[test]
fn haproxy_keeps_each_visitor_on_the_instance_named_by_its_id_route() {
    sticky_routing(Kind::Haproxy);
}

#[test]
fn haproxy_fails_over_on_instance_and_memcached_sigkill_without_losing_an_acknowledged_write() {
    failover_without_loss(Kind::Haproxy, &[]);
}

#[test]
fn nginx_keeps_each_visitor_on_the_instance_named_by_its_id_route() {
    sticky_routing(Kind::Nginx);
}

#[test]
fn nginx_fails_over_on_instance_and_memcached_sigkill_without_losing_an_acknowledged_write() {
    failover_without_loss(Kind::Nginx, &[]);
}

/// Non-sticky instances (memcached primary; ids without a route, so the balancer spreads
/// every request): the same faults, the same guarantee.
#[test]
fn apache_in_front_of_non_sticky_instances_loses_no_acknowledged_write_on_instance_and_memcached_sigkill(
) {
    failover_without_loss(Kind::Apache, &["--mode", "non-sticky"]);
}

/// The README's command with the built-in demo proxy: prints the URL, the page works
/// through it, the control endpoints kill and restart, the session survives both kills,
/// and SIGTERM stops every process it started.
#[test]
fn the_demo_cluster_command_serves_the_page_survives_both_kills_and_stops_everything_on_sigterm() {
    let mut cluster = DemoCluster::start(&["--balancer", "builtin"]);
    assert!(
        cluster.banner.contains("DEMO ONLY"),
        "the built-in proxy is labelled as demo only:\n{}",
        cluster.banner
    );
    let mut visitor = Visitor::new(cluster.front, true);
    let first = visitor.get(&[]).expect("the page through the demo proxy");
    assert_eq!(
        first.json["instance"]["backend"].as_str(),
        Some("memcached")
    );
    assert!(
        first.json["instance"]["balancer"]
            .as_str()
            .is_some_and(|b| b.contains("DEMO ONLY")),
        "the page says it runs behind the demo-only proxy"
    );
    let added = visitor
        .post(&[("dataName", "a"), ("dataValue", "1")])
        .expect("add a = 1");
    assert_eq!(added.attributes.get("a").map(String::as_str), Some("1"));
    assert_eq!(added.route, first.route, "sticky");

    let r = cluster.control("kill", &added.route);
    assert_eq!(r.status, 303, "the kill button redirects back: {}", r.body);
    let after_kill = visitor.get(&[]).expect("the page after the instance kill");
    assert_ne!(
        after_kill.route, added.route,
        "served by the other instance"
    );
    assert_eq!(
        after_kill.attributes.get("a").map(String::as_str),
        Some("1")
    );

    let node = after_kill.node.clone();
    assert_eq!(cluster.control("kill", &node).status, 303);
    let after_node_kill = visitor.get(&[]).expect("the page after the memcached kill");
    assert_eq!(
        after_node_kill.attributes.get("a").map(String::as_str),
        Some("1")
    );
    assert_ne!(
        after_node_kill.node, node,
        "the session moved off the dead node"
    );

    assert_eq!(cluster.control("restart", &added.route).status, 303);
    assert_eq!(cluster.control("restart", &node).status, 303);
    let procs = cluster.processes();
    assert!(
        procs.iter().all(|(_, _, running)| *running),
        "everything runs again after the restarts: {procs:?}"
    );
    let pids: Vec<u32> = procs.iter().filter_map(|(_, pid, _)| *pid).collect();
    assert_eq!(pids.len(), 4, "2 memcached + 2 instances: {procs:?}");

    let status = cluster.terminate().expect("the launcher exits on SIGTERM");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let left: Vec<u32> = pids.into_iter().filter(|p| process_alive(*p)).collect();
    assert!(
        left.is_empty(),
        "processes left running after SIGTERM: {left:?}"
    );
}

/// A launcher SIGKILLed (no chance to stop anything) takes its memcached servers,
/// instances and balancer with it; what its balancer started itself (Apache's workers)
/// and its run directory are cleaned up by the next run, which says so.
#[test]
fn a_sigkilled_launcher_leaves_no_server_behind_and_the_next_run_cleans_up_its_leftovers() {
    let mut first = DemoCluster::start(&["--balancer", "apache"]);
    let launcher = first.pid().expect("launcher pid");
    let children: Vec<u32> = first
        .processes()
        .iter()
        .filter_map(|(_, pid, _)| *pid)
        .collect();
    assert_eq!(children.len(), 4, "2 memcached + 2 instances");
    let run_dir = std::env::temp_dir().join(format!("memkeep-demo-{launcher}"));
    assert!(
        run_dir.is_dir(),
        "{} exists while it runs",
        run_dir.display()
    );
    first.kill_launcher();
    assert!(
        eventually(Duration::from_secs(10), || children
            .iter()
            .all(|p| !process_alive(*p))),
        "the launcher's memcached servers and instances die with it: alive {:?}",
        children
            .iter()
            .filter(|p| process_alive(**p))
            .collect::<Vec<_>>()
    );

    let second = DemoCluster::start(&["--balancer", "apache"]);
    let expected = format!("launcher pid {launcher}) was killed without stopping");
    assert!(
        second.banner.contains(&expected) && second.banner.contains("removed"),
        "the next run reports the stale run it cleaned up:\n{}",
        second.banner
    );
    assert!(!run_dir.exists(), "{} removed", run_dir.display());
    let leftovers: Vec<String> = demo_kit::procs::processes_naming(&run_dir)
        .expect("/proc")
        .into_iter()
        .map(|(_, cmd)| cmd)
        .collect();
    assert!(
        leftovers.is_empty(),
        "no process of the killed run is left: {leftovers:?}"
    );
    let mut visitor = Visitor::new(second.front, true);
    visitor.get(&[]).expect("the second run serves the page");
}

/// The same command picks Apache httpd when it is installed and routes the demo
/// buttons through it.
#[test]
fn the_demo_cluster_command_puts_apache_httpd_in_front_when_installed() {
    let cluster = DemoCluster::start(&["--balancer", "apache"]);
    let mut visitor = Visitor::new(cluster.front, false);
    let page = visitor
        .get(&[("dataName", "a"), ("dataValue", "1")])
        .expect("page through Apache");
    assert!(
        page.json["instance"]["balancer"]
            .as_str()
            .is_some_and(|b| b.contains("Apache")),
        "{:?}",
        page.json["instance"]
    );
    let r = cluster.control("kill", &page.route);
    assert_eq!(
        r.status, 303,
        "the buttons go through Apache to the launcher: {}",
        r.body
    );
    let after = visitor.get(&[]).expect("page after the kill, cookie-less");
    assert_ne!(after.route, page.route);
    assert_eq!(after.attributes.get("a").map(String::as_str), Some("1"));
}

/// `demo cluster --peers` (scripts/demo.sh --peers): the thesis' four-step walk with two
/// instances and no memcached, behind HAProxy: the page is served, `a = 1` added on one
/// instance is there after that instance is killed, and the id names the other instance
/// as the backup node.
#[test]
fn the_demo_cluster_with_peers_runs_the_four_step_walk_without_memcached() {
    let mut cluster = DemoCluster::start(&["--balancer", "haproxy", "--peers"]);
    let procs = cluster.processes();
    assert_eq!(procs.len(), 2, "two instances, no memcached: {procs:?}");
    let mut visitor = Visitor::new(cluster.front, true);
    let first = visitor.get(&[]).expect("the page through HAProxy");
    assert_eq!(
        first.json["instance"]["backend"].as_str(),
        Some("peers"),
        "the page says the copies live on the peer instances"
    );
    let again = visitor.get(&[]).expect("refresh");
    assert_eq!(again.route, first.route, "sticky");
    let added = visitor
        .post(&[("dataName", "a"), ("dataValue", "1")])
        .expect("add a = 1");
    assert_eq!(added.attributes.get("a").map(String::as_str), Some("1"));
    let r = cluster.control("kill", &added.route);
    assert_eq!(r.status, 303, "the kill button redirects back: {}", r.body);
    // HAProxy needs its health check to take the killed server out (bounded wait: the
    // balancer's, not the product's, timing).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let after_kill = loop {
        match visitor.get(&[]) {
            Ok(page) => break page,
            Err(e) if std::time::Instant::now() < deadline => {
                println!("test setup: balancer not rerouted yet ({e})");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => panic!("test setup: no page 20 s after the owner's kill: {e}"),
        }
    };
    assert_ne!(
        after_kill.route, added.route,
        "served by the other instance"
    );
    assert_eq!(
        after_kill.attributes.get("a").map(String::as_str),
        Some("1"),
        "the other instance had the backup"
    );
    let status = cluster.terminate().expect("the launcher exits on SIGTERM");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}
