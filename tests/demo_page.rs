//! The demo instance's page contract, kept from the thesis' Test application so scripts
//! written for it work unchanged: a GET or POST with `dataName` and `dataValue` sets that
//! attribute; the page lists each attribute as `name = value` on its own line;
//! `?format=json` answers the same content as JSON. Plus the page's decoded session id,
//! its cluster panel, cookie-less use, and the flags `--help` documents. Real instance
//! processes on real memcached, no balancer.

#[path = "kit/demo.rs"]
mod demo_kit;
mod kit;

use std::net::SocketAddr;

use demo_kit::{demo_binary, form, http, nodes_spec, route_of, Instance, Response, Visitor};
use kit::Cluster;

/// A two-node cluster and one sticky instance, `web1`, on it (keep both alive).
fn web1_on_two_nodes() -> (Cluster, Instance) {
    let cluster = Cluster::start(2);
    let web1 = Instance::start("web1", &nodes_spec(&cluster), &[]);
    (cluster, web1)
}

/// `GET path` on `addr` with the header `Cookie: cookie` when one is given.
fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
    http(addr, "GET", path, &headers, None).expect("GET")
}

/// `GET path` on `addr` presenting session `id` in the `JSESSIONID` cookie.
fn get_in_session(addr: SocketAddr, path: &str, id: &str) -> Response {
    get(addr, path, Some(&format!("JSESSIONID={id}")))
}

/// A POST of the form `fields` to `/` on `addr`, without a cookie.
fn post_form(addr: SocketAddr, fields: &[(&str, &str)]) -> Response {
    http(addr, "POST", "/", &[], Some(&form(fields))).expect("POST")
}

/// The session id a response sets in its `JSESSIONID` cookie, if it sets one.
fn set_cookie_id(r: &demo_kit::Response) -> Option<String> {
    r.headers_named("set-cookie").into_iter().find_map(|c| {
        c.split(';')
            .next()?
            .strip_prefix("JSESSIONID=")
            .map(str::to_owned)
    })
}

#[test]
fn a_get_with_dataname_and_datavalue_sets_the_attribute_and_the_page_lists_it_as_name_equals_value()
{
    let (_cluster, web1) = web1_on_two_nodes();
    let r = get(web1.addr(), "/?dataName=a&dataValue=1", None);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        r.headers
    );
    assert_eq!(r.attribute_lines(), vec!["a = 1".to_string()], "{}", r.body);
    let id = set_cookie_id(&r).expect("a new session sets the JSESSIONID cookie");
    let r = get_in_session(web1.addr(), "/?dataName=b&dataValue=two+words", &id);
    assert_eq!(
        r.attribute_lines(),
        vec!["a = 1".to_string(), "b = two words".to_string()],
        "each attribute on its own line:\n{}",
        r.body
    );
}

#[test]
fn a_post_with_dataname_and_datavalue_sets_the_attribute_and_answers_the_page() {
    let (_cluster, web1) = web1_on_two_nodes();
    let r = post_form(
        web1.addr(),
        &[("dataName", "colour"), ("dataValue", "blue & green")],
    );
    assert_eq!(r.status, 200, "a script's POST gets the page itself");
    assert!(
        r.body.lines().any(|l| l == "colour = blue &amp; green"),
        "the attribute line, HTML-escaped:\n{}",
        r.body
    );
}

#[test]
fn any_page_path_of_the_original_application_serves_the_page() {
    let (_cluster, web1) = web1_on_two_nodes();
    let r = get(web1.addr(), "/Test/index.jsp?dataName=a&dataValue=1", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.attribute_lines(), vec!["a = 1".to_string()]);
}

#[test]
fn format_json_answers_the_serving_instance_the_session_id_and_the_attributes() {
    let (_cluster, web1) = web1_on_two_nodes();
    let mut v = Visitor::new(web1.addr(), true);
    let page = v
        .get(&[("dataName", "a"), ("dataValue", "1")])
        .expect("JSON page");
    assert_eq!(page.route, "web1");
    assert_eq!(page.address, web1.addr().to_string());
    assert_eq!(
        Some(page.session_id.clone()),
        v.id,
        "the JSON id is the cookie's"
    );
    assert_eq!(page.attributes.get("a").map(String::as_str), Some("1"));
    assert_eq!(page.json["instance"]["mode"], "sticky");
    assert_eq!(page.json["instance"]["codec"], "msgpack");
    // The same content as the HTML page.
    let html = get_in_session(web1.addr(), "/", &page.session_id);
    assert!(html.body.contains(&page.session_id));
    assert_eq!(html.attribute_lines(), vec!["a = 1".to_string()]);
}

#[test]
fn the_page_decodes_the_session_id_into_its_memcached_node_backup_node_and_route() {
    let (cluster, web1) = web1_on_two_nodes();
    let mut v = Visitor::new(web1.addr(), true);
    let page = v.get(&[]).expect("page");
    let (key, rest) = page.session_id.split_once('-').expect("<key>-<node>...");
    assert_eq!(key.len(), 32);
    assert_eq!(
        rest,
        format!("{}~{}.web1", page.node, page.backup.clone().unwrap())
    );
    assert_eq!(page.id_route.as_deref(), Some("web1"));
    assert_ne!(
        Some(page.node.clone()),
        page.backup,
        "backup on the other node"
    );
    let node_address = page.json["session"]["node_address"].as_str().unwrap();
    let index: usize = page.node[1..].parse().unwrap();
    assert_eq!(node_address, cluster.addrs()[index]);
    assert_eq!(page.json["session"]["key"], key);
    let html = get_in_session(web1.addr(), "/", &page.session_id);
    assert!(html
        .body
        .contains(&format!("id=\"session-node\">{}</b>", page.node)));
    assert!(html.body.contains("id=\"session-route\">web1</b>"));
}

/// The thesis' step 3: `a = 1` added on node 1 is shown by node 2.
#[test]
fn an_attribute_added_on_one_instance_is_shown_by_the_other_which_takes_the_session_over() {
    let cluster = Cluster::start(2);
    let nodes = nodes_spec(&cluster);
    let web1 = Instance::start("web1", &nodes, &[]);
    let web2 = Instance::start("web2", &nodes, &[]);
    let mut v = Visitor::new(web1.addr(), true);
    v.get(&[("dataName", "a"), ("dataValue", "1")])
        .expect("add on web1");
    v.base = web2.addr();
    let page = v.get(&[]).expect("read on web2");
    assert_eq!(page.route, "web2");
    assert_eq!(page.attributes.get("a").map(String::as_str), Some("1"));
    assert_eq!(
        route_of(&page.session_id),
        Some("web2"),
        "the id now routes to web2"
    );
    assert!(
        page.event.contains("taken over from instance web1"),
        "{}",
        page.event
    );
    assert_eq!(
        v.id.as_deref(),
        Some(page.session_id.as_str()),
        "cookie reissued"
    );
}

#[test]
fn a_non_ascii_cookie_beside_the_session_cookie_keeps_the_session_over_http() {
    let (_cluster, web1) = web1_on_two_nodes();
    let r = get(web1.addr(), "/?dataName=a&dataValue=1", None);
    let id = set_cookie_id(&r).expect("id");
    let cookie = format!("lang=français; JSESSIONID={id}; theme=dark");
    let r = get(web1.addr(), "/?dataName=b&dataValue=2", Some(&cookie));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.attribute_lines(),
        vec!["a = 1".to_string(), "b = 2".to_string()],
        "the same session:\n{}",
        r.body
    );
    assert!(
        set_cookie_id(&r).is_none(),
        "the same session: no new cookie"
    );
}

#[test]
fn the_demo_opts_out_of_the_secure_cookie_for_plain_http() {
    let (_cluster, web1) = web1_on_two_nodes();
    let r = get(web1.addr(), "/", None);
    let set = r.headers_named("set-cookie");
    assert!(
        set.iter()
            .any(|c| c.starts_with("JSESSIONID=") && !c.contains("Secure")),
        "{set:?}"
    );
}

#[test]
fn without_a_cookie_the_links_and_the_form_carry_the_session_id_and_continue_the_session() {
    let (_cluster, web1) = web1_on_two_nodes();
    let r = get(web1.addr(), "/?dataName=a&dataValue=1", None);
    let id = set_cookie_id(&r).expect("id");
    let rewritten = format!("/;jsessionid={id}");
    assert!(
        r.body.contains(&format!(
            "<form id=\"add\" method=\"post\" action=\"{rewritten}\">"
        )),
        "the form posts to the rewritten URL:\n{}",
        r.body
    );
    assert!(r
        .body
        .contains(&format!("id=\"refresh\" href=\"{rewritten}\"")));
    // Following the link, still without a cookie, continues the session.
    let next = get(
        web1.addr(),
        &format!("{rewritten}?dataName=b&dataValue=2"),
        None,
    );
    assert_eq!(
        next.attribute_lines(),
        vec!["a = 1".to_string(), "b = 2".to_string()]
    );
    assert!(
        set_cookie_id(&next).is_none(),
        "the same session: no new cookie"
    );
    // With the cookie, links are plain.
    let plain = get_in_session(web1.addr(), "/", &id);
    assert!(plain.body.contains("id=\"refresh\" href=\"/\""));
}

#[test]
fn the_browser_form_redirects_after_the_post_to_the_page_carrying_the_id_when_cookie_less() {
    let (_cluster, web1) = web1_on_two_nodes();
    let r = post_form(
        web1.addr(),
        &[("prg", "1"), ("dataName", "a"), ("dataValue", "1")],
    );
    assert_eq!(r.status, 303, "post/redirect/get for the page's own form");
    let id = set_cookie_id(&r).expect("id");
    assert_eq!(
        r.header("location"),
        Some(format!("/;jsessionid={id}").as_str())
    );
    let page = get(web1.addr(), &format!("/;jsessionid={id}"), None);
    assert_eq!(page.attribute_lines(), vec!["a = 1".to_string()]);
}

#[test]
fn markup_in_attribute_names_and_values_is_escaped() {
    let (_cluster, web1) = web1_on_two_nodes();
    let query = form(&[
        ("dataName", "<b>x"),
        ("dataValue", "<script>alert(1)</script>"),
    ]);
    let r = get(web1.addr(), &format!("/?{query}"), None);
    assert!(!r.body.contains("<script>alert(1)"), "{}", r.body);
    assert!(r
        .body
        .contains("&lt;b&gt;x = &lt;script&gt;alert(1)&lt;/script&gt;"));
}

#[test]
fn non_sticky_instances_serve_the_same_session_alternately_without_taking_it_over() {
    let cluster = Cluster::start(2);
    let nodes = nodes_spec(&cluster);
    let web1 = Instance::start("web1", &nodes, &["--mode", "non-sticky"]);
    let web2 = Instance::start("web2", &nodes, &["--mode", "non-sticky"]);
    let mut v = Visitor::new(web1.addr(), true);
    for i in 0..6 {
        v.base = if i % 2 == 0 { web1.addr() } else { web2.addr() };
        let page = v
            .get(&[
                ("dataName", &format!("k{i}")),
                ("dataValue", &i.to_string()),
            ])
            .expect("page");
        assert_eq!(page.attributes.len(), i + 1, "every earlier write is there");
        assert_eq!(page.json["instance"]["mode"], "non-sticky");
        assert_eq!(page.id_route, None, "non-sticky ids carry no route");
    }
}

#[test]
fn the_cluster_panel_shows_killed_memcached_nodes_and_instances_down_from_the_crate() {
    let mut cluster = Cluster::start(2);
    let nodes = nodes_spec(&cluster);
    let mut web2 = Instance::start("web2", &nodes, &[]);
    let peer = format!("web2={}", web2.addr());
    let web1 = Instance::start("web1", &nodes, &["--peer", &peer]);
    let mut v = Visitor::new(web1.addr(), true);
    let page = v.get(&[]).expect("page");
    let up = |p: &demo_kit::Page, list: &str, key: &str, name: &str| {
        p.json[list]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e[key] == name)
            .map(|e| e["up"].as_bool().unwrap())
            .unwrap_or_else(|| panic!("{name} not in {list}: {}", p.json[list]))
    };
    assert!(up(&page, "memcached", "id", "n0") && up(&page, "memcached", "id", "n1"));
    assert!(up(&page, "instances", "route", "web2"));
    cluster[0].kill();
    web2.kill();
    let page = v.get(&[]).expect("page after the kills");
    assert!(
        !up(&page, "memcached", "id", "n0"),
        "{}",
        page.json["memcached"]
    );
    assert!(up(&page, "memcached", "id", "n1"));
    assert!(!up(&page, "instances", "route", "web2"));
    assert!(up(&page, "instances", "route", "web1"));
    assert!(page.json["stats"]["writes"].as_u64().unwrap() >= 1);
}

#[test]
fn the_help_documents_every_instance_and_cluster_flag() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(demo_binary())
            .args(args)
            .output()
            .expect("run demo --help");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = run(&["--help"]);
    assert!(top.contains("instance") && top.contains("cluster"), "{top}");
    let instance = run(&["instance", "--help"]);
    for flag in [
        "--listen",
        "--route",
        "--nodes",
        "--failover-nodes",
        "--mode",
        "--codec",
        "--locking",
        "--peer",
        "--demo-controls",
        "sticky",
        "non-sticky",
    ] {
        assert!(
            instance.contains(flag),
            "instance --help lacks {flag}:\n{instance}"
        );
    }
    let cluster = run(&["cluster", "--help"]);
    for flag in [
        "--port",
        "--balancer",
        "apache",
        "haproxy",
        "nginx",
        "builtin",
        "--mode",
        "--codec",
    ] {
        assert!(
            cluster.contains(flag),
            "cluster --help lacks {flag}:\n{cluster}"
        );
    }
}

#[test]
fn a_bad_flag_is_refused_with_a_message_naming_it() {
    let out = std::process::Command::new(demo_binary())
        .args(["instance", "--codec", "bincode"])
        .output()
        .expect("run demo");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bincode") && err.contains("msgpack"), "{err}");
}

#[test]
fn the_health_check_and_the_favicon_create_no_session() {
    let (_cluster, web1) = web1_on_two_nodes();
    for path in ["/healthz", "/favicon.ico"] {
        let r = get(web1.addr(), path, None);
        assert!(set_cookie_id(&r).is_none(), "{path} set a session cookie");
    }
    let mut v = Visitor::new(web1.addr(), true);
    let page = v.get(&[]).expect("page");
    assert_eq!(page.json["stats"]["sessions_created"], 1);
}

#[test]
fn the_page_logs_in_with_a_rotated_id_and_logs_out_everywhere() {
    let (cluster, web1) = web1_on_two_nodes();
    let web2 = Instance::start("web2", &nodes_spec(&cluster), &[]);
    let mut first = Visitor::new(web1.addr(), true);
    let before = first
        .post(&[("dataName", "a"), ("dataValue", "1")])
        .unwrap();
    let page = first.post(&[("action", "login"), ("user", "ann")]).unwrap();
    let key = |id: &str| id.split('-').next().unwrap_or_default().to_owned();
    assert_ne!(
        key(&page.session_id),
        key(&before.session_id),
        "the id rotates"
    );
    assert_eq!(
        first.id.as_deref(),
        Some(page.session_id.as_str()),
        "cookie reissued"
    );
    assert!(page.event.contains("id rotated"), "{}", page.event);
    assert_eq!(
        page.attributes.get("a").map(String::as_str),
        Some("1"),
        "data kept"
    );
    assert_eq!(page.attributes.get("user").map(String::as_str), Some("ann"));
    // The pre-login id is dead on the other instance too.
    let mut stale = Visitor::new(web2.addr(), true);
    stale.id = Some(before.session_id.clone());
    let page = stale.get(&[]).unwrap();
    assert!(
        page.attributes.is_empty(),
        "old id served: {:?}",
        page.attributes
    );
    // A second browser of ann on web2; the first logs out everywhere.
    let mut second = Visitor::new(web2.addr(), true);
    second
        .post(&[("action", "login"), ("user", "ann")])
        .unwrap();
    let page = first.post(&[("action", "logoutEverywhere")]).unwrap();
    let event = page.json["event"].as_str().unwrap_or_default();
    assert!(event.contains("logged out every session of ann"), "{event}");
    assert_eq!(first.id, None, "the caller's cookie is removed");
    let mut moved = Visitor::new(web1.addr(), true);
    moved.id = second.id.clone();
    let page = moved.get(&[]).unwrap();
    assert!(
        page.attributes.is_empty(),
        "ann's other session survived: {:?}",
        page.attributes
    );
}
