//! One demo instance: the thesis' Test application as an axum service on memkeep
//! sessions.
//!
//! Page contract (kept from the thesis' application, so its scripts work unchanged):
//! a GET or POST of any page path with `dataName` and `dataValue` sets that attribute;
//! the page lists each attribute as `name = value` on its own line; `?format=json`
//! answers the same content as JSON.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use memkeep::session::tower::SessionLayer;
use memkeep::session::{
    encode_url, strip_url_session_id, BackupSessionService, CodecKind, CookieConfig, Mode,
    SessionConfig, SessionError, SessionId, SessionIdCandidates, SessionRequest,
};
use serde_json::json;
use tower::Layer;

use crate::web::{encode_component, html, parse_form, probe};

/// What an instance is started with (the `instance` subcommand's flags).
#[derive(Clone, Debug)]
pub struct InstanceOptions {
    /// Address to listen on.
    pub listen: String,
    /// The instance's route (its name; written into ids in sticky mode).
    pub route: String,
    /// Memcached nodes `id:host:port,...`.
    pub nodes: String,
    /// Failover node ids.
    pub failover_nodes: Option<String>,
    /// Peer backend instead of memcached: `route:host:port,...` of every instance's
    /// replication endpoint (this one's included), and the shared secret.
    pub replication: Option<(String, String)>,
    /// Sticky or non-sticky.
    pub mode: Mode,
    /// Codec of new sessions.
    pub codec: CodecKind,
    /// Non-sticky locking mode.
    pub locking: String,
    /// Memcached operation timeout.
    pub operation_timeout: Duration,
    /// Simulated application work per page request, with the session loaded.
    pub work: Duration,
    /// Other instances: `(route, host:port)`.
    pub peers: Vec<(String, String)>,
    /// Show the demo's kill / restart buttons (served by the demo launcher).
    pub demo_controls: bool,
    /// What the page says the instance runs behind.
    pub balancer_label: Option<String>,
}

/// Shared state of the handlers.
struct App {
    service: BackupSessionService,
    options: InstanceOptions,
    address: String,
    pid: u32,
}

/// The request's raw URI, before the session layer strips `;jsessionid=`.
#[derive(Clone)]
struct RawUri(Uri);

/// Builds the service and serves until the process ends.
pub async fn run(options: InstanceOptions) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = match &options.replication {
        // The peer backend: the instances keep each other's copies, no memcached.
        Some((peers, secret)) => SessionConfig::builder()
            .peers(peers.clone())
            .peer_secret(secret.clone()),
        None => SessionConfig::builder().nodes(options.nodes.clone()),
    };
    config = config
        .mode(options.mode)
        .codec(options.codec)
        .locking_str(&options.locking)
        .operation_timeout(options.operation_timeout)
        // The demo serves plain HTTP on a local machine: it opts out of the Secure
        // cookie (browsers drop a Secure cookie set over http://, localhost aside in some).
        // Never do this behind HTTPS.
        .cookie(CookieConfig {
            secure: false,
            ..CookieConfig::default()
        })
        // Its cookie-less visitor mode carries the id in links (`;jsessionid=`): opted in
        // here, with the session-fixation risk that brings (docs/session.md). Off by
        // default.
        .url_rewriting(true);
    if options.mode == Mode::Sticky {
        config = config.route(options.route.clone());
    }
    if let (Some(f), None) = (&options.failover_nodes, &options.replication) {
        config = config.failover_nodes(f.clone());
    }
    let service = BackupSessionService::new(config.build()?)?;
    let listener = tokio::net::TcpListener::bind(&options.listen).await?;
    let address = listener.local_addr()?.to_string();
    let app = Arc::new(App {
        service: service.clone(),
        options,
        address: address.clone(),
        pid: std::process::id(),
    });
    let router = Router::new()
        .route("/healthz", get(healthz))
        // Browsers ask for it on their own: it must not create sessions.
        .route("/favicon.ico", get(|| async { StatusCode::NOT_FOUND }))
        .route("/demo-control/{*rest}", any(no_controls))
        .fallback(page)
        .with_state(Arc::clone(&app));
    // The layer wraps the whole router so `;jsessionid=` is stripped before routing; the
    // outer map keeps the raw URI for the page (to tell which id the request presented).
    let sessions = SessionLayer::new(service).layer(router);
    let service = tower::ServiceBuilder::new()
        .map_request(|mut req: Request| {
            let raw = RawUri(req.uri().clone());
            req.extensions_mut().insert(raw);
            req
        })
        .service(sessions);
    println!(
        "memkeep demo instance {} listening on http://{address}/ ({}, codec {}, nodes {})",
        app.options.route,
        mode_name(app.options.mode),
        app.options.codec.name(),
        app.options.nodes
    );
    axum::serve(
        listener,
        axum::ServiceExt::<Request>::into_make_service(service),
    )
    .await?;
    Ok(())
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::NonSticky => "non-sticky",
        _ => "sticky",
    }
}

async fn healthz(State(app): State<Arc<App>>) -> String {
    format!("ok {}\n", app.options.route)
}

async fn no_controls() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "the kill / restart buttons are served by the demo launcher (demo cluster), through its balancer\n",
    )
}

/// What happened to the session id during the request.
fn id_event(presented: Option<&str>, final_id: &SessionId, created: bool) -> String {
    if created {
        return match presented {
            Some(_) => "new session: the id presented names no live session".into(),
            None => "new session created on this instance".into(),
        };
    }
    let Some(old) = presented.and_then(SessionId::parse) else {
        return String::new();
    };
    let mut parts = Vec::new();
    if old.key() != final_id.key() {
        parts.push("new id (random part rotated)".to_owned());
    }
    if old.route() != final_id.route() {
        parts.push(format!(
            "taken over from instance {} (the id now routes here)",
            old.route().unwrap_or("-")
        ));
    }
    if old.node() != final_id.node() {
        parts.push(format!(
            "moved from memcached node {} to {}",
            old.node(),
            final_id.node()
        ));
    }
    if old.backup() != final_id.backup() {
        parts.push(format!(
            "backup moved from {} to {}",
            old.backup().unwrap_or("-"),
            final_id.backup().unwrap_or("-")
        ));
    }
    parts.join("; ")
}

struct NodeView {
    id: String,
    address: String,
    up: bool,
    detail: String,
}

struct PeerView {
    route: String,
    address: String,
    up: bool,
    this: bool,
}

async fn cluster_view(app: &App) -> (Vec<PeerView>, Vec<NodeView>) {
    let client = app.service.client();
    // A version request per node: the client's own view, refreshed on every page.
    let versions: BTreeMap<String, Result<String, String>> = client
        .version()
        .await
        .into_iter()
        .map(|(id, r)| (id, r.map_err(|e| e.to_string())))
        .collect();
    let nodes = client
        .nodes()
        .into_iter()
        .map(|n| {
            let (up, detail) = match versions.get(&n.id) {
                Some(Ok(v)) => (true, format!("memcached {v}")),
                Some(Err(e)) => (false, e.clone()),
                None => (false, format!("{:?}", n.state)),
            };
            NodeView {
                id: n.id,
                address: n.address,
                up,
                detail,
            }
        })
        .collect();
    let mut peers = vec![PeerView {
        route: app.options.route.clone(),
        address: app.address.clone(),
        up: true,
        this: true,
    }];
    let probes = app.options.peers.iter().map(|(route, addr)| async move {
        let up = probe(addr, "/healthz", Duration::from_millis(400)).await == Some(200);
        PeerView {
            route: route.clone(),
            address: addr.clone(),
            up,
            this: false,
        }
    });
    peers.extend(futures::future::join_all(probes).await);
    peers.sort_by(|a, b| a.route.cmp(&b.route));
    (peers, nodes)
}

/// The page: every path that is not `/healthz`.
async fn page(
    State(app): State<Arc<App>>,
    session: SessionRequest,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Option<axum::Extension<RawUri>>,
    body: Bytes,
) -> Response {
    match render(&app, &session, &method, &uri, &headers, raw, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn render(
    app: &App,
    request: &SessionRequest,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    raw: Option<axum::Extension<RawUri>>,
    body: &[u8],
) -> Result<Response, SessionError> {
    let mut params = parse_form(uri.query().unwrap_or(""));
    let is_form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.starts_with("application/x-www-form-urlencoded"));
    if *method == Method::POST && is_form {
        params.extend(parse_form(&String::from_utf8_lossy(body)));
    }
    let param = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let json_format = param("format") == Some("json");
    let post_redirect = *method == Method::POST && param("prg") == Some("1");

    // Which id the request presented: the URL one first (as balancers route), else the
    // cookie.
    let mut candidates = SessionIdCandidates::new();
    for value in headers.get_all(COOKIE) {
        app.service
            .config()
            .cookie()
            .collect_session_ids(value.as_bytes(), &mut candidates);
    }
    let cookie_ids = candidates.into_ids();
    let raw_path = raw.map(|r| r.0 .0.path().to_owned());
    let url_id = raw_path
        .as_deref()
        .and_then(|p| strip_url_session_id(p).1.map(str::to_owned));
    let presented = url_id.clone().or_else(|| cookie_ids.first().cloned());
    let has_cookie = !cookie_ids.is_empty();

    let session = request.get_or_create().await?;
    let created = session.is_new();
    if let Some(name) = param("dataName").filter(|n| !n.is_empty()) {
        session.insert(name, param("dataValue").unwrap_or(""))?;
    }
    // The lifecycle controls: log in (bind to a user, rotate the id, keep the data) and
    // log out everywhere (every session of that user, on every instance).
    let action_event = match param("action") {
        Some("login") => {
            let user = param("user")
                .filter(|u| !u.is_empty())
                .unwrap_or("demo-user")
                .to_owned();
            request.bind_principal(&user).await?;
            session.insert("user", &user)?;
            request.cycle_id().await?;
            format!("logged in as {user}: id rotated (the old id is dead on every instance; the data stays)")
        }
        Some("logoutEverywhere") => match session.principal() {
            Some(user) => {
                let generation = request.invalidate_principal(&user).await?;
                format!("logged out every session of {user}, on every instance (generation {generation})")
            }
            None => "not logged in: nothing to log out".to_owned(),
        },
        _ => String::new(),
    };
    if !app.options.work.is_zero() {
        tokio::time::sleep(app.options.work).await;
    }
    let mut attributes = BTreeMap::new();
    for name in session.attribute_names() {
        let value = match session.get::<String>(&name) {
            Ok(Some(v)) => v,
            _ => "(not a string)".to_owned(),
        };
        attributes.insert(name, value);
    }
    if session.is_invalidated() {
        attributes.clear();
    }
    drop(session);
    // Save before answering: the page shows the id the session is stored under, and a
    // response is only sent once memcached acknowledged the write.
    let outcome = request.finish().await?;
    let id_text = outcome.session_id.clone().unwrap_or_default();
    let id = SessionId::parse(&id_text);
    let set_cookie = app.service.set_cookie_value(&outcome.cookie);
    let id_change = id
        .as_ref()
        .map(|id| id_event(presented.as_deref(), id, created))
        .unwrap_or_default();
    let event = [action_event, id_change]
        .into_iter()
        .filter(|e| !e.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    // Cookie-less clients get the id in every link and form (like encodeURL).
    let page_path = uri.path().to_owned();
    let link = |path: &str| {
        if has_cookie || id_text.is_empty() {
            path.to_owned()
        } else {
            encode_url(path, &id_text)
        }
    };
    let self_link = link(&page_path);

    let mut response = if post_redirect {
        let mut r = StatusCode::SEE_OTHER.into_response();
        if let Ok(v) = HeaderValue::from_str(&self_link) {
            r.headers_mut().insert(LOCATION, v);
        }
        r
    } else {
        let (peers, nodes) = cluster_view(app).await;
        let view = PageView {
            app,
            id_text: &id_text,
            id: id.as_ref(),
            event: &event,
            attributes: &attributes,
            peers: &peers,
            nodes: &nodes,
            self_link: &self_link,
            cookie_less: !has_cookie,
        };
        if json_format {
            (
                [(CONTENT_TYPE, "application/json")],
                view.json().to_string(),
            )
                .into_response()
        } else {
            ([(CONTENT_TYPE, "text/html; charset=utf-8")], view.html()).into_response()
        }
    };
    if let Some(v) = set_cookie.and_then(|v| HeaderValue::from_str(&v).ok()) {
        response.headers_mut().append(SET_COOKIE, v);
    }
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    Ok(response)
}

struct PageView<'a> {
    app: &'a App,
    id_text: &'a str,
    id: Option<&'a SessionId>,
    event: &'a str,
    attributes: &'a BTreeMap<String, String>,
    peers: &'a [PeerView],
    nodes: &'a [NodeView],
    self_link: &'a str,
    cookie_less: bool,
}

impl PageView<'_> {
    fn node_address(&self, id: &str) -> String {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.address.clone())
            .unwrap_or_default()
    }

    /// Where the session's copies live: `"peers"` (the instances' replication endpoints,
    /// no memcached) or `"memcached"`.
    fn backend(&self) -> &'static str {
        if self.app.options.replication.is_some() {
            "peers"
        } else {
            "memcached"
        }
    }

    fn json(&self) -> serde_json::Value {
        let o = &self.app.options;
        let stats = self.app.service.stats();
        json!({
            "instance": {
                "route": o.route,
                "address": self.app.address,
                "pid": self.app.pid,
                "mode": mode_name(o.mode),
                "codec": o.codec.name(),
                "balancer": o.balancer_label,
                "backend": self.backend(),
            },
            "session_id": self.id_text,
            "event": self.event,
            "session": self.id.map(|id| json!({
                "key": id.key().to_string(),
                "node": id.node(),
                "node_address": self.node_address(id.node()),
                "backup": id.backup(),
                "backup_address": id.backup().map(|b| self.node_address(b)),
                "route": id.route(),
                "event": self.event,
            })),
            "attributes": self.attributes,
            "cookie_less": self.cookie_less,
            "instances": self.peers.iter().map(|p| json!({
                "route": p.route, "address": p.address, "up": p.up, "serving": p.this,
            })).collect::<Vec<_>>(),
            "memcached": self.nodes.iter().map(|n| json!({
                "id": n.id, "address": n.address, "up": n.up, "detail": n.detail,
            })).collect::<Vec<_>>(),
            "stats": {
                "sessions_created": stats.sessions_created,
                "writes": stats.writes,
                "skipped_unchanged": stats.skipped_unchanged,
                "validity_refreshes": stats.validity_refreshes,
                "instance_takeovers": stats.instance_takeovers,
                "restores_from_backup": stats.restores_from_backup,
                "relocations": stats.relocations,
                "write_failures": stats.write_failures,
                "load_failures": stats.load_failures,
                "invalid_ids": stats.invalid_ids,
                "local_sessions": self.app.service.local_sessions(),
            },
        })
    }

    fn control_button(&self, action: &str, target: &str, label: &str, class: &str) -> String {
        format!(
            "<form class=\"control\" method=\"post\" action=\"/demo-control/{action}?target={t}&amp;back={back}\">\
             <button type=\"submit\" id=\"{action}-{t}\" class=\"{class}\">{label}</button></form>",
            t = html(target),
            back = html(&encode_component(self.self_link)),
        )
    }

    fn html(&self) -> String {
        let o = &self.app.options;
        let stats = self.app.service.stats();
        let controls = o.demo_controls;
        let mut s = String::with_capacity(16 * 1024);
        s.push_str(&format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>memkeep demo - {route}</title><style>{STYLE}</style></head>\n<body>\n\
             <header><h1>memkeep <span>session failover demo</span></h1>\
             <p class=\"balancer\">{balancer}</p></header>\n<main>\n<div class=\"col\">\n",
            route = html(&o.route),
            balancer = match &o.balancer_label {
                Some(l) => format!("behind {}", html(l)),
                None => "no balancer: this instance is called directly".to_owned(),
            },
        ));

        // Serving instance.
        s.push_str(&format!(
            "<section class=\"card serving\"><h2>Served by</h2>\n\
             <p class=\"big\">instance <b id=\"route\">{route}</b> at <b id=\"address\">{addr}</b></p>\n\
             <p class=\"muted\">pid {pid} &middot; {mode} mode &middot; codec {codec}</p></section>\n",
            route = html(&o.route),
            addr = html(&self.app.address),
            pid = self.app.pid,
            mode = mode_name(o.mode),
            codec = o.codec.name(),
        ));

        // Session id, decoded.
        s.push_str("<section class=\"card session\"><h2>Session</h2>\n");
        s.push_str(&format!(
            "<p class=\"sid\"><code id=\"session-id\">{}</code></p>\n",
            html(self.id_text)
        ));
        if let Some(id) = self.id {
            let node_row = |label: &str, css: &str, node: Option<&str>| {
                match node {
                Some(n) => format!(
                    "<tr><th>{label}</th><td><b id=\"{css}\">{}</b> <span class=\"muted\">{}</span></td></tr>\n",
                    html(n),
                    html(&self.node_address(n))
                ),
                None => format!("<tr><th>{label}</th><td id=\"{css}\">none</td></tr>\n"),
            }
            };
            s.push_str("<table class=\"decoded\">\n");
            s.push_str(&format!(
                "<tr><th>key</th><td><code>{}</code></td></tr>\n",
                id.key()
            ));
            let (node_label, backup_label) = if self.app.options.replication.is_some() {
                ("copy on peer instance", "backup on peer instance")
            } else {
                ("memcached node", "backup node")
            };
            s.push_str(&node_row(node_label, "session-node", Some(id.node())));
            s.push_str(&node_row(backup_label, "session-backup", id.backup()));
            s.push_str(&format!(
                "<tr><th>route</th><td><b id=\"session-route\">{}</b></td></tr>\n</table>\n",
                html(id.route().unwrap_or("(none: non-sticky)"))
            ));
        }
        if !self.event.is_empty() {
            s.push_str(&format!(
                "<p class=\"event\" id=\"event\">{}</p>\n",
                html(self.event)
            ));
        }
        s.push_str(&format!(
            "<form id=\"login\" class=\"control\" method=\"post\" action=\"{action}\">\
             <input type=\"hidden\" name=\"action\" value=\"login\">\
             <label>user <input id=\"user\" name=\"user\" value=\"ann\"></label> \
             <button id=\"login-button\" type=\"submit\">Log in / rotate id</button></form>\
             <form id=\"logout-everywhere\" class=\"control\" method=\"post\" action=\"{action}\">\
             <input type=\"hidden\" name=\"action\" value=\"logoutEverywhere\">\
             <button id=\"logout-everywhere-button\" type=\"submit\" class=\"kill\">Log out everywhere</button></form>\n",
            action = html(self.self_link),
        ));
        if self.cookie_less {
            s.push_str("<p class=\"muted\">no session cookie came with this request: links and the form carry the id (<code>;jsessionid=</code>)</p>\n");
        }
        s.push_str("</section>\n");

        // Attributes and the form.
        s.push_str("<section class=\"card attributes\"><h2>Attributes</h2>\n");
        if self.attributes.is_empty() {
            s.push_str("<p class=\"muted\" id=\"no-attributes\">none yet: add one below</p>\n");
        }
        s.push_str("<pre id=\"attributes\">\n");
        for (name, value) in self.attributes {
            s.push_str(&format!("{} = {}\n", html(name), html(value)));
        }
        s.push_str("</pre>\n");
        s.push_str(&format!(
            "<form id=\"add\" method=\"post\" action=\"{action}\">\
             <input type=\"hidden\" name=\"prg\" value=\"1\">\
             <label>name <input id=\"dataName\" name=\"dataName\" required></label>\
             <label>value <input id=\"dataValue\" name=\"dataValue\"></label>\
             <button id=\"add-button\" type=\"submit\">Add</button></form>\n\
             <p><a id=\"refresh\" href=\"{action}\">Refresh</a> &middot; \
             <a href=\"{json}\">as JSON</a></p>\n</section>\n",
            action = html(self.self_link),
            json = html(&format!("{}?format=json", self.self_link)),
        ));

        // Cluster panel.
        s.push_str("</div>\n<div class=\"col wide\">\n");
        s.push_str("<section class=\"card cluster\"><h2>Cluster</h2>\n<table class=\"grid\">\n<tr><th>instance</th><th>address</th><th>state</th>");
        if controls {
            s.push_str("<th></th>");
        }
        s.push_str("</tr>\n");
        for p in self.peers {
            s.push_str(&format!(
                "<tr class=\"{cls}\" id=\"instance-{r}\"><td><b>{r}</b>{this}</td><td>{a}</td><td><span class=\"state {st}\">{st}</span></td>",
                cls = if p.this { "this" } else { "" },
                r = html(&p.route),
                this = if p.this { " <span class=\"tag\">serving this page</span>" } else { "" },
                a = html(&p.address),
                st = if p.up { "up" } else { "down" },
            ));
            if controls {
                s.push_str(&format!(
                    "<td class=\"buttons\">{}{}</td>",
                    self.control_button("kill", &p.route, "Kill", "kill"),
                    self.control_button("restart", &p.route, "Restart", "restart")
                ));
            }
            s.push_str("</tr>\n");
        }
        s.push_str(&format!(
            "</table>\n<table class=\"grid\">\n<tr><th>{}</th><th>address</th><th>state (this instance's client)</th>",
            if self.app.options.replication.is_some() {
                "peer replication endpoint (no memcached)"
            } else {
                "memcached"
            }
        ));
        if controls {
            s.push_str("<th></th>");
        }
        s.push_str("</tr>\n");
        for n in self.nodes {
            let role = match self.id {
                Some(id) if id.node() == n.id => " <span class=\"tag\">holds this session</span>",
                Some(id) if id.backup() == Some(n.id.as_str()) => {
                    " <span class=\"tag\">holds its backup</span>"
                }
                _ => "",
            };
            s.push_str(&format!(
                "<tr id=\"node-{id}\"><td><b>{id}</b>{role}</td><td>{a}</td><td class=\"st\"><span class=\"state {st}\">{st}</span> <span class=\"muted\">{d}</span></td>",
                id = html(&n.id),
                a = html(&n.address),
                st = if n.up { "up" } else { "down" },
                d = html(&n.detail),
            ));
            if controls {
                s.push_str(&format!(
                    "<td class=\"buttons\">{}{}</td>",
                    self.control_button("kill", &n.id, "Kill", "kill"),
                    self.control_button("restart", &n.id, "Restart", "restart")
                ));
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</table>\n");
        let write = stats.write_us;
        s.push_str(&format!(
            "<h3>Statistics of this instance (memkeep::session::StatsSnapshot)</h3>\n<table class=\"stats\">\n\
             <tr><td>sessions created</td><td>{}</td><td>writes acknowledged</td><td>{}</td></tr>\n\
             <tr><td>takeovers</td><td>{}</td><td>restores from backup</td><td>{}</td></tr>\n\
             <tr><td>relocations</td><td>{}</td><td>failed writes (relocated)</td><td>{}</td></tr>\n\
             <tr><td>unchanged (not rewritten)</td><td>{}</td><td>load failures</td><td>{}</td></tr>\n\
             <tr><td>sessions in memory</td><td>{}</td><td>mean write time</td><td>{} &micro;s</td></tr>\n</table>\n</section>\n",
            stats.sessions_created,
            stats.writes,
            stats.instance_takeovers,
            stats.restores_from_backup,
            stats.relocations,
            stats.write_failures,
            stats.skipped_unchanged,
            stats.load_failures,
            self.app.service.local_sessions(),
            write.mean(),
        ));

        // The thesis' four steps.
        s.push_str("<section class=\"card steps\"><h2>Walk the thesis' steps</h2><ol>\
            <li>Open this page through the balancer: an instance serves it and creates the session.</li>\
            <li>Refresh: the balancer keeps you on the instance named by the id's route (sticky), or alternates (non-sticky).</li>\
            <li>Add <code>a = 1</code>.</li>\
            <li>Kill the instance serving this page, refresh: the other instance takes the session over, <code>a = 1</code> is still there. \
            Then kill the memcached node that holds the session, refresh: still there, rewritten to the surviving node \
            (sticky: from the instance's memory copy; non-sticky: restored from the backup copy named in the id).</li></ol>\
            <p class=\"muted\">Restart brings a process back (a memcached node comes back empty).</p></section>\n");
        s.push_str("</div>\n</main>\n</body></html>\n");
        s
    }
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:0;background:#f3f5f8;color:#1d2330}\
header{background:#1d3557;color:#fff;padding:14px 28px;display:flex;align-items:baseline;gap:24px;flex-wrap:wrap}\
header h1{margin:0;font-size:22px}header h1 span{font-weight:400;opacity:.8}\
.balancer{margin:0;opacity:.85;font-size:14px}\
main{display:flex;flex-wrap:wrap;gap:16px;padding:16px 28px;align-items:flex-start}\
.col{flex:1 1 420px;display:flex;flex-direction:column;gap:16px;min-width:0}.col.wide{flex:1.5 1 560px}\
td.st{white-space:nowrap}\
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:12px 18px}\
.card h2{margin:4px 0 10px;font-size:15px;text-transform:uppercase;letter-spacing:.06em;color:#457b9d}\
.card h3{font-size:13px;color:#555;margin:14px 0 6px}\
.big{font-size:20px;margin:6px 0}.muted{color:#6b7280;font-size:13px}\
.sid code{font-size:14px;background:#eef2f7;padding:4px 6px;border-radius:4px;word-break:break-all}\
table{border-collapse:collapse;font-size:14px}td,th{padding:4px 10px 4px 0;text-align:left;vertical-align:middle}\
.decoded th{color:#6b7280;font-weight:400}\
.grid{width:100%;margin-bottom:8px}.grid th{border-bottom:1px solid #ddd;color:#6b7280;font-weight:400}\
.grid tr.this td{background:#f1f8ff}\
.state{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}\
.state.up{background:#2a9d8f}.state.down{background:#e63946}\
.tag{font-size:11px;background:#e9c46a;border-radius:8px;padding:1px 6px;margin-left:4px;white-space:nowrap}\
td.buttons{white-space:nowrap}\
.event{background:#fff3cd;border-left:4px solid #e9c46a;padding:6px 10px;font-size:14px}\
pre#attributes{background:#1d2330;color:#a8dadc;padding:10px;border-radius:6px;min-height:1.5em;font-size:15px}\
form#add{display:flex;gap:10px;flex-wrap:wrap;align-items:center}\
form#add input{padding:5px;border:1px solid #bbb;border-radius:4px;width:120px}\
button{padding:5px 12px;border-radius:4px;border:1px solid #1d3557;background:#1d3557;color:#fff;cursor:pointer}\
form.control{display:inline;margin-right:4px}button.kill{background:#e63946;border-color:#e63946}\
button.restart{background:#fff;color:#1d3557}\
.stats td:nth-child(odd){color:#6b7280}.stats td:nth-child(even){font-weight:600;padding-right:24px}\
.steps ol{margin:0;padding-left:20px;font-size:14px;line-height:1.5}";
