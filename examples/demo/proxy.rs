//! The built-in route-aware proxy: **for the demo only**, used when neither Apache httpd
//! nor HAProxy is installed. Production deployments use the configurations in `deploy/`.
//!
//! One request per connection (it forces `Connection: close`): the route is read from the
//! `;jsessionid=` URL parameter, else the `JSESSIONID` cookie (what follows the id's
//! `.`); the request goes to the instance with that route if it accepts the connection,
//! else to the next live one. Requests without a route are spread round robin.
//! `/demo-control/` goes to the launcher.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use memkeep::session::{CookieConfig, SessionIdCandidates};

use crate::web::route_of;

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;

struct Proxy {
    backends: Vec<(String, SocketAddr)>,
    control: SocketAddr,
    next: AtomicUsize,
}

/// Serves connections from `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    backends: Vec<(String, SocketAddr)>,
    control: SocketAddr,
) {
    let proxy = Arc::new(Proxy {
        backends,
        control,
        next: AtomicUsize::new(0),
    });
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            let _ = proxy.handle(client, peer).await;
        });
    }
}

/// The request head: the target (text) and the header lines (bytes: a header value may
/// hold any byte, e.g. a cookie `lang=français` in Latin-1).
struct Head {
    target: String,
    lines: Vec<Vec<u8>>,
    request_line: String,
}

fn parse_head(bytes: &[u8]) -> Option<Head> {
    let mut lines = bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = std::str::from_utf8(lines.next()?).ok()?.to_owned();
    let target = request_line.split_whitespace().nth(1)?.to_owned();
    Some(Head {
        target,
        request_line,
        lines: lines
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
    })
}

/// A header line's name (lower case) and value.
fn split_header(line: &[u8]) -> Option<(String, &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = String::from_utf8_lossy(&line[..colon])
        .trim()
        .to_ascii_lowercase();
    Some((name, &line[colon + 1..]))
}

impl Head {
    /// The route named by the request's session id: URL parameter first, then cookie.
    fn route(&self) -> Option<String> {
        let path = self.target.split(['?', '#']).next().unwrap_or("");
        if let (_, Some(id)) = memkeep::session::strip_url_session_id(path) {
            if let Some(r) = route_of(id) {
                return Some(r.to_owned());
            }
        }
        // The crate's own parser: the JSESSIONID values, however many `Cookie` headers
        // and whatever bytes the other cookies hold.
        let cookie = CookieConfig::default();
        let mut ids = SessionIdCandidates::new();
        for line in &self.lines {
            if let Some((name, value)) = split_header(line) {
                if name == "cookie" {
                    cookie.collect_session_ids(value, &mut ids);
                }
            }
        }
        ids.ids()
            .iter()
            .find_map(|id| route_of(id))
            .map(str::to_owned)
    }

    /// The head to send on: `Connection: close`, `X-Forwarded-For`.
    fn rewritten(&self, peer: SocketAddr) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.request_line).into_bytes();
        for l in &self.lines {
            let name = split_header(l).map(|(n, _)| n).unwrap_or_default();
            if matches!(
                name.as_str(),
                "connection" | "keep-alive" | "proxy-connection"
            ) {
                continue;
            }
            out.extend_from_slice(l);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!(
                "Connection: close\r\nX-Forwarded-For: {}\r\n\r\n",
                peer.ip()
            )
            .as_bytes(),
        );
        out
    }
}

impl Proxy {
    /// The backends to try, in order.
    fn candidates(&self, head: &Head) -> Vec<SocketAddr> {
        if head.target.starts_with("/demo-control/") {
            return vec![self.control];
        }
        let n = self.backends.len();
        let start = match head.route() {
            Some(r) => match self.backends.iter().position(|(route, _)| *route == r) {
                Some(i) => i,
                None => self.next.fetch_add(1, Ordering::Relaxed) % n.max(1),
            },
            None => self.next.fetch_add(1, Ordering::Relaxed) % n.max(1),
        };
        (0..n).map(|k| self.backends[(start + k) % n].1).collect()
    }

    async fn handle(&self, mut client: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return Ok(());
            }
            let n = tokio::time::timeout(Duration::from_secs(30), client.read(&mut chunk))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let Some(head) = parse_head(&buf[..head_end]) else {
            client
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                )
                .await?;
            return Ok(());
        };
        let mut backend = None;
        for addr in self.candidates(&head) {
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
            {
                backend = Some(s);
                break;
            }
        }
        let Some(mut backend) = backend else {
            let body = "no instance accepted the connection (built-in demo proxy)\n";
            client
                .write_all(
                    format!(
                        "HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await?;
            return Ok(());
        };
        backend.write_all(&head.rewritten(peer)).await?;
        backend.write_all(&buf[head_end..]).await?;
        let (mut cr, mut cw) = client.into_split();
        let (mut br, mut bw) = backend.into_split();
        let upload = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut cr, &mut bw).await;
        });
        let _ = tokio::io::copy(&mut br, &mut cw).await;
        let _ = cw.shutdown().await;
        upload.abort();
        Ok(())
    }
}
