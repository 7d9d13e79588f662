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
    /// `Secure` (default false; set it behind HTTPS).
    pub secure: bool,
    /// `HttpOnly` (default true).
    pub http_only: bool,
    /// `SameSite` (default Lax).
    pub same_site: SameSite,
    /// `Max-Age` (default none: a browser-session cookie; the server-side expiry is the
    /// max inactive interval either way).
    pub max_age: Option<Duration>,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "JSESSIONID".into(),
            path: "/".into(),
            domain: None,
            secure: false,
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
                "SameSite=None needs secure = true (browsers drop it otherwise)",
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

    /// Every value of this cookie in a `Cookie` request header, in order.
    pub fn values_in<'a>(&self, cookie_header: &'a str) -> Vec<&'a str> {
        cookie_header
            .split(';')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k.trim() == self.name).then(|| v.trim().trim_matches('"'))
            })
            .collect()
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
            ..CookieConfig::default()
        };
        assert!(matches!(
            bad_site.validate(),
            Err(SessionError::Config {
                field: "cookie.same_site",
                ..
            })
        ));
    }
}
