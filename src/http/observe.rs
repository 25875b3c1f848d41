//! What every request leaves behind: a request id (taken from `X-Request-Id`
//! or made here, and returned), one access-log line (route template, status,
//! bytes, duration; the path without its query, so never a token or a
//! signature), the HTTP metrics, and the body read timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use tracing::Instrument as _;

use super::error::ApiError;
use super::metric;
use super::state::HttpState;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What a request with a body shares with the layers around its handler.
#[derive(Debug, Default)]
pub struct RequestStats {
    /// Body bytes received so far.
    pub received: AtomicU64,
    /// The body read timeout fired.
    pub timed_out: AtomicBool,
    /// `Retry-After` seconds for a refusal (0: none).
    pub retry_after: AtomicU64,
}

/// The route template of the matched route, copied into the response by
/// [`route_template`] for [`observe`] (which runs outside the router's match).
#[derive(Clone)]
struct Route(MatchedPath);

/// `route_layer`: hands the matched route's template out to [`observe`].
pub async fn route_template(request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(m) = matched {
        response.extensions_mut().insert(Route(m));
    }
    response
}

/// The outermost layer: request id, body timeout, access log and metrics.
pub async fn observe(State(state): State<HttpState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = match request.headers().get(&REQUEST_ID) {
        Some(v) if valid_request_id(v.as_bytes()) => v.clone(),
        _ => {
            let id = HeaderValue::from_str(&format!("{:016x}", rand::random::<u64>()))
                .expect("hex is a valid header value");
            request.headers_mut().insert(REQUEST_ID.clone(), id.clone());
            id
        }
    };
    let method = request.method().clone();
    // The path only: a signed URL's query holds its signature.
    let path = request.uri().path().to_owned();
    // Requests without a body (most downloads) skip the wrapping.
    let stats = if request.body().size_hint().exact() == Some(0) {
        None
    } else {
        let settings = state.settings();
        let stats = Arc::new(RequestStats::default());
        request.extensions_mut().insert(stats.clone());
        let timeout = settings.limits.body_read_timeout;
        let request = &mut request;
        let body = std::mem::take(request.body_mut());
        *request.body_mut() = Body::new(TimedBody {
            inner: body,
            timeout,
            sleep: None,
            stats: stats.clone(),
        });
        Some(stats)
    };
    let span = tracing::info_span!("request", id = %String::from_utf8_lossy(id.as_bytes()));
    let mut response = next.run(request).instrument(span.clone()).await;
    let retry_after = stats
        .as_ref()
        .map_or(0, |s| s.retry_after.load(Ordering::Relaxed));
    if stats
        .as_ref()
        .is_some_and(|s| s.timed_out.load(Ordering::Relaxed))
        && !response.status().is_success()
    {
        response = ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "body_timeout",
            message: "the request body stopped arriving; the connection is closed".into(),
        }
        .into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let status = response.status();
    if retry_after > 0 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    } else if status == StatusCode::SERVICE_UNAVAILABLE
        && !response.headers().contains_key(header::RETRY_AFTER)
    {
        let secs = state.settings().limits.retry_after_secs;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response.headers_mut().insert(REQUEST_ID.clone(), id);
    let route = match response.extensions().get::<Route>() {
        Some(Route(m)) => m.as_str().to_owned(),
        None => "unmatched".to_owned(),
    };
    let received = stats
        .as_ref()
        .map_or(0, |s| s.received.load(Ordering::Relaxed));
    // Declared length: a streamed download counts what it was to send.
    let sent = response.body().size_hint().exact().unwrap_or(0);
    let elapsed = started.elapsed();
    record(&route, status, received, sent, elapsed);
    span.in_scope(|| {
        tracing::info!(
            target: "media_store::access",
            method = %method,
            route = %route,
            path = %path,
            status = status.as_u16(),
            bytes_in = received,
            bytes_out = sent,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    });
    response
}

fn record(route: &str, status: StatusCode, received: u64, sent: u64, elapsed: Duration) {
    let route = route.to_owned();
    metrics::counter!(metric::REQUESTS, "route" => route.clone(), "status" => status.as_str().to_owned())
        .increment(1);
    metrics::histogram!(metric::REQUEST_SECONDS, "route" => route).record(elapsed.as_secs_f64());
    if received > 0 {
        metrics::counter!(metric::BYTES_RECEIVED).increment(received);
    }
    metrics::counter!(metric::BYTES_SENT).increment(sent);
}

/// A client's request id is echoed if it is short and plain.
fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// A request body that fails when no bytes arrive for `timeout`, and counts
/// what it received.
struct TimedBody {
    inner: Body,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    stats: Arc<RequestStats>,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.stats.timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(axum::Error::new("request body read timed out"))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep = None;
                if let Some(Ok(f)) = &frame
                    && let Some(data) = f.data_ref()
                {
                    this.stats
                        .received
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.stats.timed_out.store(true, Ordering::Relaxed);
                    metrics::counter!(metric::REJECTED, "limit" => "body_timeout").increment(1);
                    return Poll::Ready(Some(Err(axum::Error::new("request body read timed out"))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_clients_are_checked() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(b"new\nline"));
        assert!(!valid_request_id(&[b'a'; 129]));
    }
}
