//! The byte streams a connection runs over: TCP or a UNIX domain socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Where a node listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `host:port`, resolved at each connection attempt.
    Tcp(String),
    /// A UNIX domain socket path (configured as `unix:/path`).
    Unix(std::path::PathBuf),
}

/// TLS on top of a node's stream (feature `tls`).
#[cfg(feature = "tls")]
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    /// Checked against the server's certificate, and sent as SNI.
    pub(crate) server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
}

#[cfg(feature = "tls")]
impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// TLS settings of a connection: `None` when the `tls` feature is off.
#[cfg(not(feature = "tls"))]
pub(crate) type Tls = std::convert::Infallible;

/// An open connection to a node.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<Stream>>),
}

/// The hint added to a plain connection's failure that looks like a TLS server's doing.
pub(crate) const PLAIN_TO_TLS: &str = "a TLS server (memcached -Z) drops plain connections \
     like this: if the server uses TLS, configure ClientBuilder::tls (feature `tls`)";

impl Stream {
    /// Opens a connection to `target`, with TLS when `tls` is set.
    pub(crate) async fn connect(target: &Target, tls: Option<&Tls>) -> Result<Stream, String> {
        let stream = Self::open(target).await?;
        match tls {
            None => Ok(stream),
            #[cfg(feature = "tls")]
            Some(tls) => tls
                .connector
                .connect(tls.server_name.clone(), stream)
                .await
                .map(|s| Stream::Tls(Box::new(s)))
                .map_err(|e| handshake_error(&e, &tls.server_name.to_str())),
            #[cfg(not(feature = "tls"))]
            Some(never) => match *never {},
        }
    }

    /// True for a TLS stream.
    pub(crate) fn is_tls(&self) -> bool {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => false,
            #[cfg(feature = "tls")]
            Stream::Tls(_) => true,
        }
    }

    async fn open(target: &Target) -> Result<Stream, String> {
        match target {
            Target::Tcp(address) => {
                let stream = TcpStream::connect(address)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                Ok(Stream::Tcp(stream))
            }
            Target::Unix(path) => UnixStream::connect(path)
                .await
                .map(Stream::Unix)
                .map_err(|e| format!("connect to UNIX socket {}: {e}", path.display())),
        }
    }
}

/// Why a TLS handshake failed, with what to check.
#[cfg(feature = "tls")]
fn handshake_error(e: &io::Error, server_name: &str) -> String {
    use tokio_rustls::rustls::Error as TlsError;
    let hint = match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
    {
        Some(TlsError::InvalidCertificate(_)) => {
            "check the CA roots (TlsConfig) and the name the certificate carries \
             (NodeConfig::tls_server_name)"
        }
        Some(TlsError::InvalidMessage(_)) => {
            "the server answered in plain text: a server without TLS can't take a TLS \
             client; is it started with -Z?"
        }
        _ => "is the server started with -Z?",
    };
    format!("TLS handshake with {server_name} failed: {e} ({hint})")
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
