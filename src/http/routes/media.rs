//! `/v1/media`: upload, get, list, delete. Parse, call `media::`, serialize.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::Deserialize;

use crate::error::ErrorKind;
use crate::http::error::ApiError;
use crate::http::extract::{
    ApiPath, ApiQuery, QueryParams, ServiceAuth, UPLOADER_ID_IS, UploaderId,
};
use crate::http::multipart::{self, Form, FormError};
use crate::http::state::HttpState;
use crate::http::views::{MediaPage, MediaView, UploadView};
use crate::index::{ListQuery, TypeFilter};
use crate::media::{Ingested, MediaError, UploadMeta};
use crate::policy::{PolicyError, clean_filename};
use crate::timefmt::parse_instant_ms;

/// Multipart framing (boundaries, part headers) allowed on top of the largest file.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    /// Required: who uploads.
    #[param(required = true)]
    uploader_id: Option<UploaderId>,
    /// The original file name of a raw upload (a form's part carries its own).
    filename: Option<String>,
    /// The content's BLAKE3 hash (64 hex digits): content already stored is
    /// then only hashed to check the claim, never written.
    #[param(pattern = "^[0-9a-fA-F]{64}$")]
    blake3: Option<String>,
}

impl QueryParams for UploadParams {
    const PARAMS: &'static [(&'static str, &'static str)] = &[
        ("uploader_id", UPLOADER_ID_IS),
        ("filename", "text"),
        ("blake3", "64 hex digits"),
    ];
}

/// `POST /v1/media?uploader_id=N`: a multipart form (field `file`) or the raw bytes.
#[utoipa::path(
    post,
    path = "/v1/media",
    tag = "media",
    params(
        UploadParams,
        ("Content-Disposition" = Option<String>, Header, description = "A raw upload's file name when `filename` is not given: `attachment; filename=\"cat.jpg\"` (or `filename*=UTF-8''…`)"),
    ),
    request_body(
        description = "The file's bytes, raw or as the field `file` of a form; \
            `Content-Type` and the file name are hints only (the type is sniffed)",
        content(
            (crate::http::openapi::Binary = "application/octet-stream"),
            (crate::http::openapi::UploadForm = "multipart/form-data"),
        )
    ),
    responses(
        (status = 201, description = "Stored (or deduplicated)", body = UploadView),
        (status = 400, description = "missing_uploader_id, bad_query, bad_header, bad_multipart, missing_file_field, bad_body, bad_hash, hash_mismatch, empty_upload", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "unauthorized: missing or wrong bearer token", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "blob_gone", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "too_large", body = crate::http::openapi::ErrorBody),
        (status = 415, description = "type_unrecognised, type_not_allowed", body = crate::http::openapi::ErrorBody),
        (status = "5XX", description = "index_unavailable (503), disk_full or quota_exceeded (507), internal (500)", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_media(
    _: ServiceAuth,
    State(state): State<HttpState>,
    ApiQuery(params): ApiQuery<UploadParams>,
    request: Request,
) -> Result<(StatusCode, Json<UploadView>), Refused> {
    let UploaderId(uploader_id) = params.uploader_id.ok_or_else(|| {
        ApiError::bad_request(
            "missing_uploader_id",
            "query parameter `uploader_id` is required",
        )
    })?;
    let claimed_hash = params
        .blake3
        .as_deref()
        .map(|h| {
            blake3::Hash::from_hex(h)
                .map_err(|_| ApiError::bad_request("bad_hash", "`blake3` must be 64 hex digits"))
        })
        .transpose()?;
    // `?filename=`, else the raw body's own `Content-Disposition`.
    let filename = params
        .filename
        .clone()
        .or_else(|| crate::http::extract::disposition_filename(request.headers()));
    let ingested = ingest_request(
        &state,
        UploadTarget {
            uploader_id,
            filename: filename.as_deref(),
            claimed_hash,
        },
        request,
        None,
    )
    .await?;
    state
        .previews()
        .after_upload(&ingested.row, ingested.deduplicated);
    let view = UploadView {
        media: MediaView::new(&ingested.row, &state.public_base_url()),
        deduplicated: Some(ingested.deduplicated),
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// Ingests a request body, raw or multipart (field `file`), for `uploader_id`.
/// Shared by the service upload and presigned uploads; `cap` is an extra limit
/// (a presigned URL's `max_bytes`) enforced as 413 on top of the policy.
/// Who an upload is for and what the client says about it.
pub(crate) struct UploadTarget<'a> {
    pub uploader_id: i64,
    pub filename: Option<&'a str>,
    /// `?blake3=`: content already stored is then only hashed (see `UploadMeta`).
    pub claimed_hash: Option<blake3::Hash>,
}

/// A refused upload. When the client may still be sending (the refusal came
/// from `Content-Length` or mid-stream), the answer goes out at once with
/// `Connection: close`, and the rest of the body is read and discarded in the
/// background, bounded ([`DRAIN_BYTES`], [`DRAIN_TIME`]): a lingering close,
/// so that neither a direct client nor a streaming proxy (nginx with
/// `proxy_request_buffering off`) gets a reset instead of the answer, and
/// neither has to send the rest first.
#[derive(Debug)]
pub struct Refused {
    pub error: ApiError,
    pub close: bool,
}

impl From<ApiError> for Refused {
    fn from(error: ApiError) -> Self {
        Refused {
            error,
            close: false,
        }
    }
}

impl<E> From<E> for Refused
where
    E: crate::error::Classify + std::error::Error,
{
    fn from(e: E) -> Self {
        ApiError::from(e).into()
    }
}

impl axum::response::IntoResponse for Refused {
    fn into_response(self) -> axum::response::Response {
        let mut response = self.error.into_response();
        if self.close {
            response.headers_mut().insert(
                header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

pub(crate) async fn ingest_request(
    state: &HttpState,
    target: UploadTarget<'_>,
    request: Request,
    cap: Option<u64>,
) -> Result<Ingested, Refused> {
    let UploadTarget {
        uploader_id,
        filename,
        claimed_hash,
    } = target;
    let cap_error = |cap: u64| {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            "too_large",
            format!("the upload exceeds this URL's limit of {cap} bytes"),
        )
    };
    // `[limits]`: held until the body is received and the upload recorded.
    let _admitted = (state.limits()).admit_upload(
        uploader_id,
        &state.settings().limits,
        request.extensions(),
    )?;
    let over_cap = Arc::new(AtomicBool::new(false));
    let media = state.media();
    let declared_len = content_length(request.headers())?;
    // A client waiting for `100 Continue` has sent no body: answer at once
    // rather than invite it (hyper sends the 100 when the body is first read).
    let expects_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let polled = Arc::new(AtomicBool::new(false));
    let (ingested, close) = if is_multipart(request.headers()) {
        // Every byte of the form is counted before it is parsed: the file's
        // limit plus a small allowance for boundaries and part headers.
        let limit = cap.unwrap_or_else(|| media.policy().max_bytes());
        let boundary = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| FormError::Malformed("the Content-Type is not text".into()))
            .and_then(multipart::boundary)
            .map_err(ApiError::from)?;
        let body = request.into_body().into_data_stream();
        let mut form = Form::new(body, &boundary, limit, MULTIPART_OVERHEAD);
        let payload = declared_len.map(|len| len.saturating_sub(MULTIPART_OVERHEAD));
        let result = match payload {
            Some(len) if cap.is_some_and(|cap| len > cap) => Err(cap_error(cap.unwrap_or(len))),
            Some(len) => media.precheck_len(len).map_err(ApiError::from),
            None => Ok(()),
        };
        let result = match result {
            Ok(()) => {
                polled.store(true, Ordering::Relaxed);
                let target = UploadTarget {
                    uploader_id,
                    filename,
                    claimed_hash,
                };
                ingest_form(media, &mut form, target, cap, &over_cap).await
            }
            Err(e) => Err(FormFailure::Api(e)),
        };
        let result = result.map_err(|e| match e {
            FormFailure::Form(FormError::TooLarge { limit }) => match cap {
                Some(cap) => cap_error(cap),
                None => ApiError::from(MediaError::from(PolicyError::TooLarge {
                    limit,
                    mime: None,
                })),
            },
            FormFailure::Form(e) => ApiError::from(e),
            FormFailure::Api(e) => e,
        });
        let mut close = false;
        if result.is_err() && (polled.load(Ordering::Relaxed) || !expects_continue) {
            close = drain_form_in_background(form);
        }
        (result, close)
    } else {
        let mut body = request.into_body().into_data_stream();
        let result = if let Some(cap) = cap.filter(|&cap| declared_len.is_some_and(|len| len > cap))
        {
            Err(cap_error(cap))
        } else {
            let meta = UploadMeta {
                uploader_id,
                original_name: filename.and_then(clean_filename),
                declared_len,
                claimed_hash,
            };
            let polled = polled.clone();
            let capped_body = capped(&mut body, cap, over_cap.clone()).inspect(move |_| {
                polled.store(true, Ordering::Relaxed);
            });
            media
                .ingest(meta, capped_body)
                .await
                .map_err(ApiError::from)
        };
        let mut close = false;
        if result.is_err() && (polled.load(Ordering::Relaxed) || !expects_continue) {
            close = drain_in_background(body);
        }
        (result, close)
    };
    ingested.map_err(|e| Refused {
        error: match cap {
            Some(cap) if over_cap.load(Ordering::Relaxed) => cap_error(cap),
            _ => e,
        },
        close,
    })
}

/// Why a form upload failed: the form itself, or what was done with its file.
enum FormFailure {
    Form(FormError),
    Api(ApiError),
}

impl From<ApiError> for FormFailure {
    fn from(e: ApiError) -> Self {
        FormFailure::Api(e)
    }
}

async fn ingest_form<S, E>(
    media: &crate::media::MediaService,
    form: &mut Form<S>,
    target: UploadTarget<'_>,
    cap: Option<u64>,
    over_cap: &Arc<AtomicBool>,
) -> Result<Ingested, FormFailure>
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let part = form.file_field().await.map_err(FormFailure::Form)?;
    let original_name = part
        .filename
        .as_deref()
        .and_then(clean_filename)
        .or_else(|| target.filename.and_then(clean_filename));
    let meta = UploadMeta {
        uploader_id: target.uploader_id,
        original_name,
        declared_len: None,
        claimed_hash: target.claimed_hash,
    };
    let result = media
        .ingest(meta, capped(form.file_stream(), cap, over_cap.clone()))
        .await;
    // The form's own failure (a second field, broken framing, too many
    // bytes) explains the end of the file's stream.
    if let Some(e) = form.take_error() {
        return Err(FormFailure::Form(e));
    }
    result.map_err(|e| {
        FormFailure::Api(match e {
            // Inside a form, a broken body is a broken multipart framing.
            MediaError::Body(m) => ApiError::bad_request("bad_multipart", m),
            e => e.into(),
        })
    })
}

/// How much of a refused upload is still read (and discarded) after the
/// answer went out. A proxy that streams request bodies (nginx with
/// `proxy_request_buffering off`) fails with 502 when the daemon closes the
/// connection while it is still sending; a client may miss the answer behind
/// a reset. Beyond these bounds the connection is closed anyway.
const DRAIN_BYTES: u64 = 64 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

async fn drain<S, E>(body: &mut S)
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut left = DRAIN_BYTES;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, body.next()).await {
        left = left.saturating_sub(chunk.len() as u64);
        if left == 0 {
            break;
        }
    }
}

/// Starts discarding the rest of `body` in the background, bounded; returns
/// whether any was left (the answer then closes the connection).
fn drain_in_background<S, E>(mut body: S) -> bool
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: Send + 'static,
{
    use futures_util::FutureExt as _;
    if let Some(None | Some(Err(_))) = body.next().now_or_never() {
        return false;
    }
    tokio::spawn(async move { drain(&mut body).await });
    true
}

/// [`drain_in_background`] for a form: the rest of its body, whatever part it is in.
fn drain_form_in_background<S, E>(mut form: Form<S>) -> bool
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display + Send + 'static,
{
    use futures_util::FutureExt as _;
    if let Some(None | Some(Err(_))) = form.body_mut().next().now_or_never() {
        return false;
    }
    tokio::spawn(async move { drain(form.body_mut()).await });
    true
}

/// Ends `body` with an error (and sets `over`) once it passes `cap` bytes.
fn capped<S, E>(
    body: S,
    cap: Option<u64>,
    over: Arc<AtomicBool>,
) -> impl futures_util::Stream<Item = Result<Bytes, String>> + Send + Unpin
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let mut total: u64 = 0;
    body.map(move |chunk| {
        let chunk = chunk.map_err(|e| e.to_string())?;
        total += chunk.len() as u64;
        match cap {
            Some(cap) if total > cap => {
                over.store(true, Ordering::Relaxed);
                Err(format!("the body passed {cap} bytes"))
            }
            _ => Ok(chunk),
        }
    })
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str().ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
                ApiError::bad_request("bad_header", "Content-Length is not a number")
            })
        })
        .transpose()
}

/// `GET /v1/media/{id}`
#[utoipa::path(
    get,
    path = "/v1/media/{id}",
    tag = "media",
    params(("id" = i64, Path, description = "Media id")),
    responses(
        (status = 200, description = "The media's metadata", body = MediaView),
        (status = 400, description = "bad_path", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "unauthorized: missing or wrong bearer token", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "media_not_found", body = crate::http::openapi::ErrorBody),
        (status = "5XX", description = "index_unavailable (503), disk_full or quota_exceeded (507), internal (500)", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get_media(
    _: ServiceAuth,
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<MediaView>, ApiError> {
    let row = state.media().get(id).await?;
    Ok(Json(MediaView::new(&row, &state.public_base_url())))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this uploader's media.
    uploader_id: Option<UploaderId>,
    /// Exact type (`image/png`) or family (`image/*`).
    #[serde(rename = "type")]
    file_type: Option<String>,
    /// Inclusive lower bound of `uploaded_at`: RFC 3339 or Unix seconds.
    since: Option<String>,
    /// Exclusive upper bound of `uploaded_at`: RFC 3339 or Unix seconds.
    until: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
    /// `true`: only media found damaged; `false`: only healthy media.
    corrupt: Option<bool>,
    /// Only media at least this many pixels wide / high (upright; media of
    /// unknown size are left out).
    min_width: Option<u32>,
    min_height: Option<u32>,
}

impl QueryParams for ListParams {
    const PARAMS: &'static [(&'static str, &'static str)] = &[
        ("uploader_id", UPLOADER_ID_IS),
        ("type", "a MIME type (image/png) or a family (image/*)"),
        ("since", "RFC 3339 or Unix seconds"),
        ("until", "RFC 3339 or Unix seconds"),
        ("limit", "a whole number from 1 to 1000"),
        ("cursor", "the `next_cursor` of a previous page"),
        ("corrupt", "`true` or `false`"),
        ("min_width", "a whole number of pixels"),
        ("min_height", "a whole number of pixels"),
    ];
}

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 1000;

/// `GET /v1/media?uploader_id=&type=&since=&until=&limit=&cursor=`, newest first.
#[utoipa::path(
    get,
    path = "/v1/media",
    tag = "media",
    params(ListParams),
    responses(
        (status = 200, description = "A page, newest first", body = MediaPage),
        (status = 400, description = "bad_query, bad_limit, bad_type, bad_time, bad_cursor", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "unauthorized: missing or wrong bearer token", body = crate::http::openapi::ErrorBody),
        (status = "5XX", description = "index_unavailable (503), disk_full or quota_exceeded (507), internal (500)", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list_media(
    _: ServiceAuth,
    State(state): State<HttpState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<MediaPage>, ApiError> {
    let limit = p.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_limit",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let file_type = p.file_type.as_deref().map(parse_type_filter).transpose()?;
    let instant = |name: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| {
                parse_instant_ms(s).ok_or_else(|| {
                    ApiError::bad_request(
                        "bad_time",
                        format!("`{name}` must be RFC 3339 or Unix seconds"),
                    )
                })
            })
            .transpose()
    };
    let query = ListQuery {
        uploader_id: p.uploader_id.map(|UploaderId(id)| id),
        file_type,
        since_ms: instant("since", &p.since)?,
        until_ms: instant("until", &p.until)?,
        before_id: p.cursor.as_deref().map(decode_cursor).transpose()?,
        corrupt: p.corrupt,
        min_width: p.min_width,
        min_height: p.min_height,
        limit,
    };
    let rows = state.media().list(query).await?;
    let next_cursor = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| encode_cursor(r.id)))
        .flatten();
    let base = state.public_base_url();
    Ok(Json(MediaPage {
        items: rows.iter().map(|r| MediaView::new(r, &base)).collect(),
        next_cursor,
    }))
}

fn parse_type_filter(t: &str) -> Result<TypeFilter, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "bad_type",
            "`type` must be a MIME type (image/png) or a family (image/*)",
        )
    };
    let (family, sub) = t.split_once('/').ok_or_else(bad)?;
    if family.is_empty() || sub.is_empty() {
        return Err(bad());
    }
    Ok(if sub == "*" {
        TypeFilter::Family(family.to_ascii_lowercase())
    } else {
        TypeFilter::Exact(t.to_ascii_lowercase())
    })
}

/// Cursors are opaque to clients: the last id seen, versioned and base64url-encoded.
fn encode_cursor(last_id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{last_id}"))
}

fn decode_cursor(cursor: &str) -> Result<i64, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("v1:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| {
            ApiError::bad_request("bad_cursor", "`cursor` is not one this server issued")
        })
}

/// `DELETE /v1/media/{id}`: removes the row and drops the blob reference (204).
#[utoipa::path(
    delete,
    path = "/v1/media/{id}",
    tag = "media",
    params(("id" = i64, Path, description = "Media id")),
    responses(
        (status = 204, description = "Deleted; the blob goes at the next GC"),
        (status = 400, description = "bad_path", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "unauthorized: missing or wrong bearer token", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "media_not_found", body = crate::http::openapi::ErrorBody),
        (status = "5XX", description = "index_unavailable (503), disk_full or quota_exceeded (507), internal (500)", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn delete_media(
    _: ServiceAuth,
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    state.media().delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_forgeries() {
        assert_eq!(decode_cursor(&encode_cursor(42)).unwrap(), 42);
        assert!(decode_cursor("42").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("v2:1")).is_err());
    }

    #[test]
    fn filenames_lose_paths_and_control_characters() {
        assert_eq!(
            clean_filename("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            clean_filename("C:\\x\\photo.jpg").as_deref(),
            Some("photo.jpg")
        );
        assert_eq!(clean_filename("a\u{0}b\n.png").as_deref(), Some("ab.png"));
        assert_eq!(clean_filename(".."), None);
        assert_eq!(clean_filename(&"é".repeat(300)).map(|s| s.len()), Some(254));
    }

    #[test]
    fn type_filter_takes_families_and_exact_types() {
        assert_eq!(
            parse_type_filter("image/*").unwrap(),
            TypeFilter::Family("image".into())
        );
        assert_eq!(
            parse_type_filter("Image/PNG").unwrap(),
            TypeFilter::Exact("image/png".into())
        );
        assert!(parse_type_filter("image").is_err());
        assert!(parse_type_filter("/x").is_err());
    }
}
