//! CORS for the routes browsers reach directly (signed downloads, presigned
//! uploads); the service-token API never answers cross-origin.
//!
//! Hand-written rather than tower-http's `CorsLayer` because the allowed
//! origins reload live with the config and a preflight must answer 204; the
//! logic is the small part of the Fetch standard we need: echo an allowed
//! origin, answer preflights, expose the download headers.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::state::HttpState;

const ALLOW_METHODS: &str = "GET, HEAD, POST, PUT";
/// Request headers a page may send (lower case, as preflights list them).
const ALLOW_HEADERS: &[&str] = &[
    "content-type",
    "content-disposition",
    "range",
    "if-none-match",
    "if-range",
];
const EXPOSE_HEADERS: &str =
    "ETag, Content-Range, Content-Length, Accept-Ranges, Content-Disposition, Content-Type";

/// The value for `Access-Control-Allow-Origin`, if `origin` may read responses.
fn allowed_origin(allowed: &[String], headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    if allowed.iter().any(|a| a == "*") {
        Some(HeaderValue::from_static("*"))
    } else if allowed.iter().any(|a| a.eq_ignore_ascii_case(text)) {
        Some(origin.clone())
    } else {
        None
    }
}

pub async fn cors(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let settings = state.settings();
    let allow = allowed_origin(&settings.cors.allowed_origins, request.headers());
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let h = response.headers_mut();
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        let method_ok = request
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| ALLOW_METHODS.split(", ").any(|a| a == m));
        let requested: Vec<String> = request
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let headers_ok = requested
            .iter()
            .all(|r| ALLOW_HEADERS.contains(&r.as_str()));
        // A refused preflight carries no CORS headers: the browser then blocks the request.
        if let (Some(origin), true, true) = (allow, method_ok, headers_ok) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            if let Ok(v) = HeaderValue::from_str(&ALLOW_HEADERS.join(", ")) {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(settings.cors.max_age_secs),
            );
        }
        return response;
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = allow {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    response
}

/// `OPTIONS` without a CORS preflight: nothing to say.
pub async fn no_content() -> StatusCode {
    StatusCode::NO_CONTENT
}
