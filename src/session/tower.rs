//! A `tower` layer that gives each request its [`SessionRequest`] and finishes it after
//! the inner service answered (feature `tower`), and an axum extractor for it (feature
//! `axum`).
//!
//! The layer reads the session id candidates from the configured cookie in every
//! `Cookie` header, read as bytes (another cookie holding non-ASCII bytes does not hide
//! the session cookie), and, with `url_rewriting` on (off by default), from a
//! `;jsessionid=` path parameter; at most
//! [`MAX_SESSION_ID_CANDIDATES`](super::cookie::MAX_SESSION_ID_CANDIDATES) distinct
//! candidates, in that order. A `;jsessionid=` parameter is always stripped from the URI
//! so routing sees the plain path (with `url_rewriting` off its id is ignored). To have
//! that stripping happen before routing, wrap the whole router
//! (`SessionLayer::new(service).layer(router)`) rather than adding the layer with
//! `Router::layer`.
//!
//! When finishing fails (the session could not be written: memcached down, too large,
//! a lost lock), the response is replaced by a `500` (`503` for a lock timeout) and the
//! error is logged: the caller must not believe a change was saved when it was not.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{HeaderValue, COOKIE, SET_COOKIE};
use http::{Request, Response, StatusCode, Uri};

use super::cookie::SessionIdCandidates;
use super::{BackupSessionService, RequestInfo, SessionError, SessionRequest};

/// The layer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SessionLayer {
    service: BackupSessionService,
}

impl SessionLayer {
    /// A layer over `service`.
    pub fn new(service: BackupSessionService) -> Self {
        SessionLayer { service }
    }
}

impl<S> tower_layer::Layer<S> for SessionLayer {
    type Service = SessionMiddleware<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionMiddleware {
            inner,
            service: self.service.clone(),
        }
    }
}

/// The service the layer produces.
#[derive(Clone, Debug)]
pub struct SessionMiddleware<S> {
    inner: S,
    service: BackupSessionService,
}

fn status_for(e: &SessionError) -> StatusCode {
    match e {
        SessionError::LockTimeout { .. } | SessionError::NoNodeAvailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        SessionError::Conflict => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for SessionMiddleware<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let config = self.service.config();
        let mut ids = SessionIdCandidates::new();
        for value in req.headers().get_all(COOKIE) {
            config
                .cookie()
                .collect_session_ids(value.as_bytes(), &mut ids);
        }
        if ids.is_truncated() {
            tracing::debug!(
                kept = ids.len(),
                "more session id candidates than the bound; the rest were ignored"
            );
        }
        // The service strips a `;jsessionid=` parameter (and takes it as a candidate when
        // `url_rewriting` is on); the router sees the path without it either way.
        let session_request = self
            .service
            .request(RequestInfo::new(req.uri().path()).session_ids(ids.into_ids()));
        if session_request.path() != req.uri().path() {
            if let Some(uri) = rewrite_path(req.uri(), session_request.path()) {
                *req.uri_mut() = uri;
            }
        }
        req.extensions_mut().insert(session_request.clone());
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let service = self.service.clone();
        Box::pin(async move {
            let mut response = inner.call(req).await?;
            match session_request.finish().await {
                Ok(outcome) => {
                    if let Some(v) = service.set_cookie_value(&outcome.cookie) {
                        if let Ok(v) = HeaderValue::from_str(&v) {
                            response.headers_mut().append(SET_COOKIE, v);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "session not saved at the end of the request; answering with an error");
                    let mut failed = Response::new(ResBody::default());
                    *failed.status_mut() = status_for(&e);
                    return Ok(failed);
                }
            }
            Ok(response)
        })
    }
}

fn rewrite_path(uri: &Uri, path: &str) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(feature = "axum")]
mod axum_support {
    use super::*;
    use axum_core::extract::FromRequestParts;
    use axum_core::response::{IntoResponse, Response as AxumResponse};
    use http::request::Parts;

    /// Extracts the request's [`SessionRequest`]; `500` when the [`SessionLayer`] is
    /// missing.
    impl<St: Send + Sync> FromRequestParts<St> for SessionRequest {
        type Rejection = (StatusCode, &'static str);

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &St,
        ) -> Result<Self, Self::Rejection> {
            parts.extensions.get::<SessionRequest>().cloned().ok_or((
                StatusCode::INTERNAL_SERVER_ERROR,
                "SessionLayer is not installed in front of this handler",
            ))
        }
    }

    /// A session error as a response: `503` for a lock timeout or no node, `409` for a
    /// conflict, `500` otherwise (the detail is logged, not sent).
    impl IntoResponse for SessionError {
        fn into_response(self) -> AxumResponse {
            tracing::warn!(error = %self, "session error in a handler");
            (status_for(&self), "session unavailable").into_response()
        }
    }
}
