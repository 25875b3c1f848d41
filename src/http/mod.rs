//! The HTTP layer: every route in one place, plus the layers around them.
//! Handlers parse, call a domain service and serialize; nothing below this
//! module knows about axum.

pub mod config;
pub mod cors;
pub mod error;
pub mod extract;
pub mod head;
pub mod limits;
pub mod multipart;
pub mod observe;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod state;
pub mod views;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{delete, get, post, put};
use tower_http::trace::TraceLayer;

use error::ApiError;
pub use state::{HttpSettings, HttpState};

/// Metric names of the HTTP layer (Prometheus text on `GET /metrics`).
pub mod metric {
    /// Requests answered, by `route` (template, e.g. `/files/{id}`; `unmatched`
    /// for no route) and `status` (counter).
    pub const REQUESTS: &str = "media_store_http_requests_total";
    /// Time from a request's arrival to its response headers, by `route` (histogram).
    pub const REQUEST_SECONDS: &str = "media_store_http_request_duration_seconds";
    /// Request body bytes received (counter).
    pub const BYTES_RECEIVED: &str = "media_store_http_received_bytes_total";
    /// Response body bytes sent, as declared by each response (counter).
    pub const BYTES_SENT: &str = "media_store_http_sent_bytes_total";
    /// Client connections open now, TCP and Unix socket (gauge).
    pub const OPEN_CONNECTIONS: &str = "media_store_http_open_connections";
    /// Uploads being received now (gauge).
    pub const UPLOADS_IN_PROGRESS: &str = "media_store_http_uploads_in_progress";
    /// Requests and connections refused or cut by a `[limits]` key, by `limit`
    /// (`connections`, `uploads`, `upload_rate`, `body_timeout`) (counter).
    pub const REJECTED: &str = "media_store_http_limited_total";
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route(
            "/v1/media",
            // Uploads are streamed and limited by the policy, not buffered.
            post(routes::media::create_media)
                .layer(DefaultBodyLimit::disable())
                .get(routes::media::list_media),
        )
        .route(
            "/v1/media/{id}",
            get(routes::media::get_media).delete(routes::media::delete_media),
        )
        .route(
            "/v1/messages/{message_id}/media/{media_id}",
            put(routes::messages::attach_media),
        )
        .route(
            "/v1/messages/{message_id}/media",
            get(routes::messages::list_message_media),
        )
        .route(
            "/v1/messages/{message_id}",
            delete(routes::messages::delete_message),
        )
        .route(
            "/v1/groups/{group_id}",
            delete(routes::messages::delete_group),
        )
        .route(
            "/v1/uploaders/{uploader_id}/usage",
            get(routes::uploaders::get_usage),
        )
        .route("/v1/media/{id}/url", post(routes::urls::create_media_url))
        .route("/v1/upload-urls", post(routes::urls::create_upload_url))
        // Reached by browsers with signed URLs: the only routes with CORS.
        .merge(
            Router::new()
                // OPTIONS: preflights are answered by the CORS layer, which
                // only sees methods that have a handler.
                .route(
                    "/files/{id}",
                    get(routes::files::download_file).options(cors::no_content),
                )
                .route(
                    routes::urls::UPLOAD_PATH,
                    post(routes::urls::upload_presigned)
                        .put(routes::urls::upload_presigned)
                        .options(cors::no_content)
                        .layer(DefaultBodyLimit::disable()),
                )
                .layer(middleware::from_fn_with_state(state.clone(), cors::cors)),
        )
        .route("/healthz", get(routes::health::healthz))
        .route("/metrics", get(routes::metrics::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(|| async {
            ApiError::new(
                crate::error::ErrorKind::NotFound,
                "no_route",
                "no such route",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
                code: "method_not_allowed",
                message: "method not allowed on this route".into(),
            }
        })
        .route_layer(middleware::from_fn(observe::route_template))
        // The span names the path only: a signed URL's query is a credential
        // until it expires, and must not reach the logs (issue #14).
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
                tracing::debug_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    version = ?request.version(),
                )
            }),
        )
        // Inside `observe`, so that a refused request head is logged and
        // counted like any request.
        .layer(middleware::from_fn(head::answer_bad_head))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .with_state(state)
}
