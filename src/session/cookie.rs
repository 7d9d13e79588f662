//! Cookies and URL-rewritten ids: where a request's session id comes from, and what the
//! response must tell the client ([`CookieDecision`]).

use std::time::Duration;

use super::SessionError;

/// The `SameSite` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SameSite {
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=Lax` (default).
    #[default]
    Lax,
    /// `SameSite=None` (browsers require `Secure` with it).
    None,
}

/// Cookie settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieConfig {
    /// Cookie name (default `JSESSIONID`, which balancers configured for Java stacks
    /// already route on).
    pub name: String,
    /// `Path` (default `/`).
    pub path: String,
    /// `Domain` (default none: the host only).
    pub domain: Option<String>,
    /// `Secure` (default true: browsers send the cookie over HTTPS only, so it cannot
    /// leak on a plain-HTTP hop). Set it to false only for plain-HTTP development (the
    /// demo does): browsers drop a `Secure` cookie set over plain HTTP (some make an
    /// exception for `localhost`).
    pub secure: bool,
    /// `HttpOnly` (default true).
    pub http_only: bool,
    /// `SameSite` (default Lax).
    pub same_site: SameSite,
    /// `Max-Age` (default none: a browser-session cookie; the server-side expiry is the
    /// max inactive interval either way). At least 1 s when set (`Max-Age=0` deletes
    /// the cookie).
    pub max_age: Option<Duration>,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "JSESSIONID".into(),
            path: "/".into(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            max_age: None,
        }
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_attr_value(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b';')
}

impl CookieConfig {
    pub(crate) fn validate(&self) -> Result<(), SessionError> {
        if !is_token(&self.name) {
            return Err(SessionError::config(
                "cookie.name",
                format!(
                    "{:?} is not an RFC 6265 token (letters, digits, !#$%&'*+-.^_`|~)",
                    self.name
                ),
            ));
        }
        if !self.path.starts_with('/') || !is_attr_value(&self.path) {
            return Err(SessionError::config(
                "cookie.path",
                "must start with / and hold no ';' or control characters",
            ));
        }
        if let Some(d) = &self.domain {
            if d.is_empty() || !is_attr_value(d) || d.contains(' ') {
                return Err(SessionError::config("cookie.domain", "must be a host name"));
            }
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(SessionError::config(
                "cookie.same_site",
                "SameSite=None needs secure = true (browsers drop it otherwise); set secure = true or use SameSite=Lax",
            ));
        }
        // Browsers drop a prefixed cookie whose attributes break the prefix's rules.
        if self.name.starts_with("__Secure-") && !self.secure {
            return Err(SessionError::config(
                "cookie.secure",
                "a cookie named __Secure-... needs secure = true (browsers drop it otherwise); set secure = true or rename the cookie",
            ));
        }
        if self.name.starts_with("__Host-")
            && (!self.secure || self.path != "/" || self.domain.is_some())
        {
            return Err(SessionError::config(
                "cookie.name",
                "a cookie named __Host-... needs secure = true, path \"/\" and no domain (browsers drop it otherwise); set those or rename the cookie",
            ));
        }
        if self.max_age.is_some_and(|age| age.as_secs() == 0) {
            return Err(SessionError::config(
                "cookie.max_age",
                "must be at least 1 s (Max-Age=0 deletes the cookie at once); use None for a browser-session cookie",
            ));
        }
        Ok(())
    }

    /// The `Set-Cookie` value for a decision, `None` for [`CookieDecision::Keep`].
    pub fn set_cookie_value(&self, decision: &CookieDecision) -> Option<String> {
        let (value, removing) = match decision {
            CookieDecision::Keep => return None,
            CookieDecision::Set(id) => (id.as_str(), false),
            CookieDecision::Remove => ("", true),
        };
        let mut out = format!("{}={}; Path={}", self.name, value, self.path);
        if let Some(d) = &self.domain {
            out.push_str("; Domain=");
            out.push_str(d);
        }
        if removing {
            out.push_str("; Max-Age=0");
        } else if let Some(age) = self.max_age {
            out.push_str(&format!("; Max-Age={}", age.as_secs()));
        }
        if self.secure {
            out.push_str("; Secure");
        }
        if self.http_only {
            out.push_str("; HttpOnly");
        }
        out.push_str(match self.same_site {
            SameSite::Strict => "; SameSite=Strict",
            SameSite::Lax => "; SameSite=Lax",
            SameSite::None => "; SameSite=None",
        });
        Some(out)
    }

    /// The values of this cookie in a `Cookie` request header, in order: at most
    /// [`MAX_SESSION_ID_CANDIDATES`] distinct ones, each well formed (see
    /// [`SessionIdCandidates::push`]); the rest are ignored. Text-only form of
    /// [`CookieConfig::collect_session_ids`], which also takes headers that are not
    /// text.
    pub fn values_in<'a>(&self, cookie_header: &'a str) -> Vec<&'a str> {
        let mut out: Vec<&'a str> = Vec::new();
        self.for_each_value(cookie_header.as_bytes(), |value| {
            // Well-formed values are ASCII, so this always succeeds.
            if let Ok(text) = std::str::from_utf8(value) {
                if !out.contains(&text) {
                    out.push(text);
                }
            }
            out.len() < MAX_SESSION_ID_CANDIDATES
        });
        out
    }

    /// Adds the values of this cookie in one `Cookie` request header, taken as raw
    /// bytes, to `out`, in order. Other cookies may hold any bytes (`lang=français`
    /// sent as UTF-8 or Latin-1 is not text to `http::HeaderValue::to_str`); only
    /// this cookie's values must be well formed. Call it once per `Cookie` header
    /// (HTTP/2 splits the cookies over several). Stops reading as soon as `out` is
    /// truncated, so a header holding thousands of values costs bounded work.
    pub fn collect_session_ids(&self, cookie_header: &[u8], out: &mut SessionIdCandidates) {
        self.for_each_value(cookie_header, |value| {
            if let Ok(text) = std::str::from_utf8(value) {
                out.push(text);
            }
            !out.truncated
        });
    }

    /// The session-id candidates of one `Cookie` request header (raw bytes).
    pub fn session_ids_in(&self, cookie_header: &[u8]) -> SessionIdCandidates {
        let mut out = SessionIdCandidates::new();
        self.collect_session_ids(cookie_header, &mut out);
        out
    }

    /// Calls `f` with each well-formed value of this cookie in a header, in order,
    /// duplicates included, while `f` returns true.
    fn for_each_value<'h>(&self, header: &'h [u8], mut f: impl FnMut(&'h [u8]) -> bool) {
        let name = self.name.as_bytes();
        for pair in header.split(|&b| b == b';') {
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if trim_ows(&pair[..eq]) != name {
                continue;
            }
            let v = trim_ows(&pair[eq + 1..]);
            let v = match v {
                [b'"', inner @ .., b'"'] => inner,
                _ => v,
            };
            if is_cookie_value(v) && !f(v) {
                return;
            }
        }
    }
}

/// Strips optional white space (SP, HTAB) from both ends.
fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// A non-empty run of RFC 6265 `cookie-octet`s: printable ASCII without space, `"`,
/// `,`, `;` and `\`. Every session id is one.
fn is_cookie_value(v: &[u8]) -> bool {
    !v.is_empty()
        && v.iter()
            .all(|&b| (0x21..0x7f).contains(&b) && !matches!(b, b'"' | b',' | b';' | b'\\'))
}

/// How many distinct session-id candidates one request may present: the cookie may
/// legitimately appear more than once (cookies of several paths or domains share the
/// name), but each candidate can cost memcached round trips, so a request carrying
/// thousands of them (a crafted `Cookie` header) is held to the first few. The tower
/// layer and [`CookieConfig::values_in`] (hence
/// `BackupSessionService::ids_from_cookie_header`) apply it.
pub const MAX_SESSION_ID_CANDIDATES: usize = 4;

/// The session-id candidates of one request: distinct, in the order presented, at
/// most [`MAX_SESSION_ID_CANDIDATES`]. Fill it from every `Cookie` header with
/// [`CookieConfig::collect_session_ids`] (and from the URL with
/// [`SessionIdCandidates::push`]), then hand [`SessionIdCandidates::into_ids`] to
/// [`super::RequestInfo::session_ids`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SessionIdCandidates {
    ids: Vec<String>,
    truncated: bool,
}

impl std::fmt::Debug for SessionIdCandidates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Session ids are credentials: counts only.
        f.debug_struct("SessionIdCandidates")
            .field("len", &self.ids.len())
            .field("truncated", &self.truncated)
            .finish()
    }
}

impl SessionIdCandidates {
    /// No candidate yet.
    pub fn new() -> Self {
        SessionIdCandidates::default()
    }

    /// Offers one candidate. It is kept when it is well formed (a non-empty run of
    /// printable ASCII without space, `"`, `,`, `;` or `\`: every session id is), not
    /// already kept, and fewer than [`MAX_SESSION_ID_CANDIDATES`] are kept; a well
    /// formed, new candidate past the bound is dropped and marks the set
    /// [truncated](SessionIdCandidates::is_truncated). Returns whether it was kept.
    pub fn push(&mut self, candidate: &str) -> bool {
        if !is_cookie_value(candidate.as_bytes()) || self.ids.iter().any(|c| c == candidate) {
            return false;
        }
        if self.ids.len() >= MAX_SESSION_ID_CANDIDATES {
            self.truncated = true;
            return false;
        }
        self.ids.push(candidate.to_owned());
        true
    }

    /// The kept candidates, in order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// How many are kept.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when none is kept.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// True when more distinct candidates were presented than were kept (and the
    /// rest of the header was not read).
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// The kept candidates, in order.
    pub fn into_ids(self) -> Vec<String> {
        self.ids
    }
}

/// What the response must do with the session cookie.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum CookieDecision {
    /// Nothing: the client already has the right id.
    #[default]
    Keep,
    /// Send this id (a new session, or the id changed: takeover, relocation, restore).
    Set(String),
    /// Remove the cookie (the session was invalidated).
    Remove,
}

/// The path parameter of URL-rewritten ids.
pub const URL_PARAM: &str = ";jsessionid=";

/// Splits a `;jsessionid=<id>` path parameter off a request path: returns the path
/// without it and the id, if any.
pub fn strip_url_session_id(path: &str) -> (String, Option<&str>) {
    let Some(start) = path.find(URL_PARAM) else {
        return (path.to_owned(), None);
    };
    let value_start = start + URL_PARAM.len();
    let rest = &path[value_start..];
    let end = rest.find([';', '/', '?', '#']).unwrap_or(rest.len());
    let id = &rest[..end];
    let mut clean = String::with_capacity(path.len());
    clean.push_str(&path[..start]);
    clean.push_str(&rest[end..]);
    (clean, (!id.is_empty()).then_some(id))
}

/// Adds `;jsessionid=<id>` to a URL (before its query and fragment), for clients
/// without cookies. An existing `;jsessionid=` parameter is replaced.
pub fn encode_url(url: &str, session_id: &str) -> String {
    let split = url.find(['?', '#']).unwrap_or(url.len());
    let (path, tail) = url.split_at(split);
    let (path, _) = strip_url_session_id(path);
    format!("{path}{URL_PARAM}{session_id}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_cookie_renders_every_configured_attribute() {
        let c = CookieConfig {
            domain: Some("example.com".into()),
            secure: true,
            max_age: Some(Duration::from_secs(3600)),
            same_site: SameSite::Strict,
            ..CookieConfig::default()
        };
        let v = c
            .set_cookie_value(&CookieDecision::Set("abc-n1".into()))
            .unwrap();
        assert_eq!(
            v,
            "JSESSIONID=abc-n1; Path=/; Domain=example.com; Max-Age=3600; Secure; HttpOnly; SameSite=Strict"
        );
    }

    #[test]
    fn remove_expires_the_cookie_and_keep_sends_nothing() {
        let c = CookieConfig::default();
        let v = c.set_cookie_value(&CookieDecision::Remove).unwrap();
        assert!(v.starts_with("JSESSIONID=; Path=/; Max-Age=0"));
        assert_eq!(c.set_cookie_value(&CookieDecision::Keep), None);
    }

    #[test]
    fn cookie_values_are_found_among_others() {
        let c = CookieConfig::default();
        assert_eq!(c.values_in("a=1; JSESSIONID=xyz; b=2"), vec!["xyz"]);
        assert_eq!(c.values_in("JSESSIONID=\"q\";JSESSIONID=r"), vec!["q", "r"]);
        assert!(c.values_in("XJSESSIONID=1").is_empty());
        assert!(c.values_in("JSESSIONID=; JSESSIONID=\"\"").is_empty());
    }

    const ID: &str = "0f9c2d4e8a1b47c6a3e5d7f9b1c3e5a7-n1~n2.web1";

    #[test]
    fn non_ascii_bytes_in_another_cookie_do_not_hide_the_session_cookie() {
        let c = CookieConfig::default();
        let utf8 = format!("lang=français; JSESSIONID={ID}");
        let mut latin1 = b"lang=fran\xe7ais; JSESSIONID=".to_vec();
        latin1.extend_from_slice(ID.as_bytes());
        latin1.extend_from_slice(b"; theme=\xff\x80");
        for header in [utf8.as_bytes(), latin1.as_slice()] {
            let found = c.session_ids_in(header);
            assert_eq!(found.ids(), [ID], "{header:?}");
            assert!(!found.is_truncated());
        }
        // The text form too, when the header is valid UTF-8.
        assert_eq!(c.values_in(&utf8), vec![ID]);
    }

    #[test]
    fn only_well_formed_session_cookie_values_are_candidates() {
        let c = CookieConfig::default();
        let found = c.session_ids_in(
            b"JSESSIONID=caf\xc3\xa9; JSESSIONID=a b; JSESSIONID=x\\y; JSESSIONID=\"; JSESSIONID= \t; JSESSIONID=ok-1",
        );
        assert_eq!(found.ids(), ["ok-1"]);
        // White space around names and values, and a quoted value.
        let found = c.session_ids_in(b" \tJSESSIONID \t= \"q-1\" ;JSESSIONID=r-2\t");
        assert_eq!(found.ids(), ["q-1", "r-2"]);
        // The name is matched exactly (case and all).
        assert!(c
            .session_ids_in(b"jsessionid=a; JSESSIONIDX=b; XJSESSIONID=c")
            .is_empty());
        let mut ids = SessionIdCandidates::new();
        assert!(!ids.push(""));
        assert!(!ids.push("caf\u{e9}"));
        assert!(!ids.push("a;b"));
        assert!(ids.push(ID));
        assert!(!ids.push(ID), "a duplicate is not kept twice");
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn thousands_of_candidates_yield_the_first_distinct_few_in_order() {
        let c = CookieConfig::default();
        let mut header = String::new();
        for i in 0..7000 {
            // Each value twice in a row: duplicates do not use up the bound.
            header.push_str(&format!("JSESSIONID=id{i}; JSESSIONID=id{i}; other{i}=v; "));
        }
        let want: Vec<String> = (0..MAX_SESSION_ID_CANDIDATES)
            .map(|i| format!("id{i}"))
            .collect();
        let found = c.session_ids_in(header.as_bytes());
        assert_eq!(found.ids(), want.as_slice());
        assert!(found.is_truncated());
        assert_eq!(c.values_in(&header), want);

        // Exactly the bound: all kept, not truncated; one more distinct: truncated.
        let exact: String = want.iter().map(|v| format!("JSESSIONID={v};")).collect();
        let found = c.session_ids_in(exact.as_bytes());
        assert_eq!(
            (found.len(), found.is_truncated()),
            (MAX_SESSION_ID_CANDIDATES, false)
        );
        let found =
            c.session_ids_in(format!("{exact}JSESSIONID={};JSESSIONID=new", want[0]).as_bytes());
        assert_eq!(
            (found.len(), found.is_truncated()),
            (MAX_SESSION_ID_CANDIDATES, true)
        );
    }

    #[test]
    fn the_bound_holds_across_several_cookie_headers_and_the_url() {
        let c = CookieConfig::default();
        let mut ids = SessionIdCandidates::new();
        c.collect_session_ids(b"JSESSIONID=a; JSESSIONID=b", &mut ids);
        c.collect_session_ids(b"lang=\xe9; JSESSIONID=b; JSESSIONID=c", &mut ids);
        assert!(ids.push("d"));
        assert!(!ids.is_truncated());
        c.collect_session_ids(b"JSESSIONID=e", &mut ids);
        assert!(!ids.push("f"));
        assert!(ids.is_truncated());
        assert_eq!(ids.into_ids(), ["a", "b", "c", "d"]);
    }

    #[test]
    fn candidates_debug_shows_no_id() {
        let mut ids = SessionIdCandidates::new();
        ids.push(ID);
        assert!(!format!("{ids:?}").contains("0f9c"));
    }

    #[test]
    fn the_cookie_is_secure_by_default_and_can_opt_out_for_plain_http() {
        let c = CookieConfig::default();
        assert!(c.secure);
        assert!(c.validate().is_ok());
        let v = c
            .set_cookie_value(&CookieDecision::Set("i".into()))
            .unwrap();
        assert!(v.contains("; Secure"), "{v}");
        let plain = CookieConfig {
            secure: false,
            ..CookieConfig::default()
        };
        assert!(plain.validate().is_ok());
        let v = plain
            .set_cookie_value(&CookieDecision::Set("i".into()))
            .unwrap();
        assert!(!v.contains("Secure"), "{v}");
    }

    #[test]
    fn url_session_id_is_stripped_from_the_path() {
        assert_eq!(
            strip_url_session_id("/cart;jsessionid=abc-n1.r1"),
            ("/cart".to_string(), Some("abc-n1.r1"))
        );
        assert_eq!(
            strip_url_session_id("/a;jsessionid=x/b"),
            ("/a/b".to_string(), Some("x"))
        );
        assert_eq!(strip_url_session_id("/plain"), ("/plain".to_string(), None));
        assert_eq!(
            strip_url_session_id("/a;jsessionid="),
            ("/a".to_string(), None)
        );
    }

    #[test]
    fn encode_url_inserts_before_the_query_and_replaces_an_old_id() {
        assert_eq!(encode_url("/cart?x=1", "id1"), "/cart;jsessionid=id1?x=1");
        assert_eq!(
            encode_url("/cart;jsessionid=old#f", "new"),
            "/cart;jsessionid=new#f"
        );
    }

    #[test]
    fn invalid_cookie_settings_are_refused_naming_the_field() {
        let bad_name = CookieConfig {
            name: "a b".into(),
            ..CookieConfig::default()
        };
        assert!(matches!(
            bad_name.validate(),
            Err(SessionError::Config {
                field: "cookie.name",
                ..
            })
        ));
        let bad_site = CookieConfig {
            same_site: SameSite::None,
            secure: false,
            ..CookieConfig::default()
        };
        assert!(matches!(
            bad_site.validate(),
            Err(SessionError::Config {
                field: "cookie.same_site",
                ..
            })
        ));
        assert!(CookieConfig {
            same_site: SameSite::None,
            ..CookieConfig::default()
        }
        .validate()
        .is_ok());
    }

    fn refused_field(c: CookieConfig) -> &'static str {
        match c.validate() {
            Err(SessionError::Config { field, reason }) => {
                assert!(
                    reason.contains("set ") || reason.contains("use "),
                    "{reason}"
                );
                field
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn contradictory_cookie_settings_are_refused_with_the_fix() {
        let d = CookieConfig::default;
        assert_eq!(
            refused_field(CookieConfig {
                name: "__Secure-sid".into(),
                secure: false,
                ..d()
            }),
            "cookie.secure"
        );
        for bad in [
            CookieConfig {
                name: "__Host-sid".into(),
                secure: false,
                ..d()
            },
            CookieConfig {
                name: "__Host-sid".into(),
                path: "/app".into(),
                ..d()
            },
            CookieConfig {
                name: "__Host-sid".into(),
                domain: Some("example.com".into()),
                ..d()
            },
        ] {
            assert_eq!(refused_field(bad), "cookie.name");
        }
        assert!(CookieConfig {
            name: "__Host-sid".into(),
            ..d()
        }
        .validate()
        .is_ok());
        assert_eq!(
            refused_field(CookieConfig {
                max_age: Some(Duration::from_millis(999)),
                ..d()
            }),
            "cookie.max_age"
        );
        assert!(CookieConfig {
            max_age: Some(Duration::from_secs(1)),
            ..d()
        }
        .validate()
        .is_ok());
    }
}
