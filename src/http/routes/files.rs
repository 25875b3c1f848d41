//! `GET`/`HEAD /files/{id}?exp=&kid=&sig=`: signed downloads (docs/downloads.md).
//!
//! Verifies the signature against the media row's content hash, then either
//! streams the blob (Range, ETag/If-None-Match, safe headers) or, with
//! `serve.nginx_accel`, hands the file to nginx with `X-Accel-Redirect`.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use headers::{ETag, HeaderMapExt, IfNoneMatch, IfRange};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::error::ErrorKind;
use crate::http::error::ApiError;
use crate::http::extract::ApiPath;
use crate::http::state::HttpState;
use crate::index::MediaRow;
use crate::index::renditions::RenditionBlob;
use crate::preview::Resolved;
use crate::signing::{SignError, Target};

/// Blobs up to this size are read whole and kept in the [`DownloadCache`].
const SMALL_BODY: u64 = 64 * 1024;
/// Read size for streamed bodies: large enough that per-chunk overhead does not
/// show against sendfile, small enough to bound memory per download.
const STREAM_CHUNK: usize = 256 * 1024;

/// What the request asked for, besides the URL.
struct Conditions {
    if_none_match: Option<IfNoneMatch>,
    if_range: Option<IfRange>,
    range: Option<String>,
    head: bool,
}

/// What to send after the headers.
enum Plan {
    Empty,
    Json(String),
    Bytes { start: u64, len: u64 },
}

struct Prepared {
    status: StatusCode,
    headers: HeaderMap,
    plan: Plan,
}

/// Keeps hot downloads off SQLite and the disk: media rows by id, and the
/// bytes of small blobs by hash, in bounded caches (`moka`: size-aware
/// eviction instead of starting over when full).
///
/// Rows are valid only while [`Index::generation`](crate::index::Index::generation)
/// is the one read before the row was, so a deletion (or any other write) is
/// seen by the very next download; entries also expire after [`ROW_TTL`] to
/// bound how long a change made by another process (a CLI tool) can go
/// unseen. Blob bytes never change under their hash, and are only used for a
/// row that is current.
pub struct DownloadCache {
    rows: moka::sync::Cache<i64, CachedRow>,
    bodies: moka::sync::Cache<blake3::Hash, Bytes>,
}

/// A media row with the response headers derived from it, built once per
/// cache fill rather than per request.
pub struct Media {
    row: MediaRow,
    path: String,
    etag: ETag,
    etag_value: HeaderValue,
    content_type: Option<HeaderValue>,
    inline: Option<HeaderValue>,
    attachment: Option<HeaderValue>,
    /// A rendition (a variant other than `original`): damage to its blob is
    /// not damage to the media, which can be rendered again.
    rendition: bool,
}

impl Media {
    /// What a rendition of `source` is served as: its own type, size and
    /// ETag (its hash), and a file name telling the variant.
    fn rendition(
        source: &MediaRow,
        variant: &str,
        blob: &RenditionBlob,
    ) -> Result<Media, ApiError> {
        let ext = match blob.mime.as_str() {
            "image/jpeg" => "jpg",
            _ => "webp",
        };
        let stem = source
            .original_name
            .as_deref()
            .map(|n| n.rsplit_once('.').map_or(n, |(stem, _)| stem).to_owned())
            .unwrap_or_else(|| source.id.to_string());
        let mut media = Media::new(MediaRow {
            file_type: blob.mime.clone(),
            hash: blob.hash,
            size: blob.size,
            original_name: Some(format!("{stem}.{variant}.{ext}")),
            corrupt_since_ms: None,
            layout: crate::index::Layout {
                width: Some(blob.width),
                height: Some(blob.height),
                ..Default::default()
            },
            ..source.clone()
        })?;
        media.rendition = true;
        Ok(media)
    }

    fn new(row: MediaRow) -> Result<Media, ApiError> {
        let etag_text = format!("\"{}\"", row.hash.to_hex());
        let etag = etag_text
            .parse()
            .map_err(|_| internal("bad etag", &etag_text))?;
        // Values that are not valid header text are left out rather than sent raw.
        let value = |s: &str| HeaderValue::from_str(s).ok();
        Ok(Media {
            path: format!("/files/{}", row.id),
            etag,
            etag_value: HeaderValue::from_str(&etag_text)
                .map_err(|_| internal("bad etag", &etag_text))?,
            content_type: value(&served_type(&row.file_type)),
            inline: value(&content_disposition(&row, false)),
            attachment: value(&content_disposition(&row, true)),
            rendition: false,
            row,
        })
    }
}

impl std::ops::Deref for Media {
    type Target = MediaRow;
    fn deref(&self) -> &MediaRow {
        &self.row
    }
}

#[derive(Clone)]
struct CachedRow {
    row: Arc<Media>,
    generation: u64,
}

pub const ROW_TTL: Duration = Duration::from_secs(1);
const MAX_ROWS: u64 = 100_000;
const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;

impl Default for DownloadCache {
    fn default() -> Self {
        DownloadCache {
            rows: moka::sync::Cache::builder()
                .max_capacity(MAX_ROWS)
                .time_to_live(ROW_TTL)
                .build(),
            bodies: moka::sync::Cache::builder()
                .max_capacity(MAX_BODY_BYTES)
                .weigher(|_, bytes: &Bytes| bytes.len().try_into().unwrap_or(u32::MAX))
                .build(),
        }
    }
}

impl DownloadCache {
    fn row(&self, id: i64, generation: u64) -> Option<Arc<Media>> {
        self.rows
            .get(&id)
            .filter(|c| c.generation == generation)
            .map(|c| c.row)
    }

    fn put_row(&self, row: Arc<Media>, generation: u64) {
        self.rows.insert(row.id, CachedRow { row, generation });
    }

    fn body(&self, hash: &blake3::Hash) -> Option<Bytes> {
        self.bodies.get(hash)
    }

    fn put_body(&self, hash: blake3::Hash, bytes: Bytes) {
        self.bodies.insert(hash, bytes);
    }
}

/// `GET|HEAD /files/{id}`
#[utoipa::path(
    method(get, head),
    path = "/files/{id}",
    tag = "urls",
    params(
        ("id" = i64, Path, description = "Media id"),
        ("exp" = i64, Query, description = "Expiry, Unix seconds (signed)"),
        ("kid" = String, Query, description = "Signing key id"),
        ("sig" = String, Query, description = "The signature"),
        ("variant" = Option<String>, Query, description = "Signed option: `original` (the default)"),
        ("dl" = Option<String>, Query, description = "Signed option: `1` for `Content-Disposition: attachment`"),
        ("Range" = Option<String>, Header, description = "One byte range (`bytes=0-99`); an invalid header is ignored"),
        ("If-None-Match" = Option<String>, Header, description = "ETag (the BLAKE3 hash, quoted)"),
        ("If-Range" = Option<String>, Header, description = "ETag the Range applies to"),
    ),
    responses(
        (status = 200, description = "The file, with its stored type", content_type = "application/octet-stream", body = crate::http::openapi::Binary),
        (status = 206, description = "One range of the file", content_type = "application/octet-stream", body = crate::http::openapi::Binary),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 400, description = "bad_path", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "invalid_signature, missing_signature", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "media_not_found, variant_not_found", body = crate::http::openapi::ErrorBody),
        (status = 410, description = "url_expired, media_corrupt", body = crate::http::openapi::ErrorBody),
        (status = 416, description = "range_not_satisfiable", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "a preview of a hostile, broken or unsupported file: too_many_pixels, image_too_large, input_too_large, too_many_frames, corrupt_image, type_mismatch, decoder_panicked, tool_failed, unsupported_type", body = crate::http::openapi::ErrorBody),
        (status = "5XX", description = "index_unavailable (503), disk_full or quota_exceeded (507), internal (500)", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn download_file(
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<i64>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let conditions = Conditions {
        if_none_match: headers.typed_get(),
        if_range: headers.typed_get(),
        range: headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        head: method == Method::HEAD,
    };
    let source = lookup(&state, id).await?;
    // Pure work (HMAC, headers) stays on the executor: about a microsecond.
    let grant = verify(&state, &source, uri.query().unwrap_or(""))?;
    let row = if grant.variant == "original" {
        source
    } else {
        match rendition(&state, &source, &grant.variant).await {
            Ok(row) => row,
            Err(response) => return Ok(response),
        }
    };
    let head = conditions.head;
    let prepared = prepare(&state, &row, &grant, conditions)?;
    if !head
        && matches!(
            prepared.status,
            StatusCode::OK | StatusCode::PARTIAL_CONTENT
        )
        && state.settings().serve.s3_redirect
        && served_from_bucket(&state, row.hash).await
    {
        return redirect_to_bucket(&state, &row, &grant, &prepared.headers).await;
    }
    let mut prepared = prepared;
    if prepared.headers.contains_key(X_ACCEL_REDIRECT) && served_from_bucket(&state, row.hash).await
    {
        let target = bucket_accel_target(&state, &row, &prepared.headers).await?;
        put(&mut prepared.headers, X_ACCEL_REDIRECT.clone(), &target);
    }
    let body = match prepared.plan {
        Plan::Empty => Body::empty(),
        Plan::Json(text) => Body::from(text),
        Plan::Bytes { start, len } if row.size <= SMALL_BODY => {
            let bytes = small_body(&state, &row).await?;
            Body::from(bytes.slice(start as usize..(start + len) as usize))
        }
        Plan::Bytes { start, len } => {
            let store = state.media().store().clone();
            let hash = row.hash;
            let whole = start == 0 && len == row.size;
            let media = state.media().clone();
            let stream = match crate::tasks::blocking(move || {
                if whole {
                    // Verified as it streams (storage-layout.md, "Serving").
                    let report = Box::new(move || {
                        tokio::spawn(async move {
                            if let Err(e) = media.report_damaged(hash).await {
                                tracing::error!(error = %e, "cannot record a damaged blob");
                            }
                        });
                    });
                    store.open_verified(&hash, len, STREAM_CHUNK, report)
                } else {
                    store.open_range(&hash, start, len, STREAM_CHUNK)
                }
            })
            .await
            .map_err(|e| internal("blob open task failed", e))?
            {
                Ok(stream) => stream,
                Err(_) if row.rendition => return Err(rendition_unavailable(&state, &row).await),
                Err(e) => return Err(unreadable_blob(&state, row.id, e).await),
            };
            Body::from_stream(stream)
        }
    };
    let mut response = (prepared.status, body).into_response();
    *response.headers_mut() = prepared.headers;
    Ok(response)
}

const X_ACCEL_REDIRECT: HeaderName = HeaderName::from_static("x-accel-redirect");

/// Whether the row's blob is read from a bucket (an S3 store, or an archive
/// bucket holding it without a local copy): then a redirect or nginx goes
/// to the bucket, not to a file.
async fn served_from_bucket(state: &HttpState, hash: blake3::Hash) -> bool {
    let store = state.media().store().clone();
    if store.is_remote() || !store.has_archive_bucket() {
        return store.is_remote();
    }
    crate::tasks::blocking(move || store.served_from_bucket(&hash))
        .await
        .unwrap_or(false)
}

/// Where nginx fetches an S3 blob (`serve.nginx_accel` with the S3 backend):
/// `/_s3/` then a presigned GET's path and query (valid 60 s, with the type
/// and disposition as response overrides); the shipped config's `/_s3/`
/// location proxies it to the cluster.
async fn bucket_accel_target(
    state: &HttpState,
    row: &Media,
    prepared: &HeaderMap,
) -> Result<String, ApiError> {
    let url = presigned_get(state, row, 60, prepared).await?;
    let after_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let path_and_query = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    Ok(format!("/_s3{path_and_query}"))
}

/// A presigned GET of the row's blob, valid `ttl_secs`, answered with the
/// type, disposition and cache headers of `prepared`.
async fn presigned_get(
    state: &HttpState,
    row: &Media,
    ttl_secs: u64,
    prepared: &HeaderMap,
) -> Result<String, ApiError> {
    let mut overrides = Vec::new();
    for (name, key) in [
        (header::CONTENT_TYPE, "content-type"),
        (header::CONTENT_DISPOSITION, "content-disposition"),
        (header::CACHE_CONTROL, "cache-control"),
    ] {
        if let Some(v) = prepared.get(&name).and_then(|v| v.to_str().ok()) {
            overrides.push((key, v.to_owned()));
        }
    }
    let store = state.media().store().clone();
    let hash = row.hash;
    crate::tasks::blocking(move || {
        store.presign(&hash, std::time::Duration::from_secs(ttl_secs), &overrides)
    })
    .await
    .map_err(|e| internal("presign task failed", e))?
    .map_err(|e| ApiError::from(crate::media::MediaError::from(e)))
}

/// `302` to a presigned GET of the blob's object (`serve.s3_redirect`): the
/// signature, expiry and media state were checked here; the bucket answers
/// Range itself, with the type and disposition this answer would have had.
/// The presigned URL lives no longer than the signed one, nor than
/// `serve.s3_redirect_ttl_secs`.
async fn redirect_to_bucket(
    state: &HttpState,
    row: &Media,
    grant: &Grant,
    prepared: &HeaderMap,
) -> Result<Response, ApiError> {
    let ttl = (grant.remaining.max(1) as u64).min(state.settings().serve.s3_redirect_ttl_secs);
    let location = presigned_get(state, row, ttl, prepared).await?;
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    put(headers, header::LOCATION, &location);
    put(headers, header::CACHE_CONTROL, "no-store");
    if let Some(etag) = prepared.get(header::ETAG) {
        headers.insert(header::ETAG, etag.clone());
    }
    Ok(response)
}

/// What serves `variant` of the media: a rendition blob (rendered on first
/// request), or the original itself when it is already small enough. A
/// failure is the whole answer (422 for a hostile or unsupported file, 404
/// `variant_not_available`, 503 with `Retry-After` for a timeout).
async fn rendition(
    state: &HttpState,
    source: &Arc<Media>,
    variant: &str,
) -> Result<Arc<Media>, Response> {
    match state.previews().resolve(&source.row, variant).await {
        Ok(Resolved::Original) => Ok(source.clone()),
        Ok(Resolved::Blob(blob)) => Media::rendition(&source.row, variant, &blob)
            .map(Arc::new)
            .map_err(IntoResponse::into_response),
        Err(e) => {
            let retry = e.retry_after();
            let mut response = ApiError::from(e).into_response();
            if let Some(secs) = retry {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Err(response)
        }
    }
}

/// A rendition whose blob turned out missing or damaged: it is reported
/// (quarantined if damaged), and the next request renders it again.
async fn rendition_unavailable(state: &HttpState, row: &Media) -> ApiError {
    if let Err(e) = state.media().report_damaged(row.hash).await {
        tracing::error!(error = %e, "cannot record a damaged rendition");
    }
    ApiError::new(
        ErrorKind::Unavailable,
        "rendition_unavailable",
        "the rendition's stored copy was damaged; retry to have it rendered again",
    )
}

/// The media row, from the cache or the index (off the executor).
async fn lookup(state: &HttpState, id: i64) -> Result<Arc<Media>, ApiError> {
    let cache = state.download_cache();
    // Read before the query: a write that lands meanwhile invalidates the entry.
    let generation = state.media().index().generation();
    if let Some(row) = cache.row(id, generation) {
        return Ok(row);
    }
    let slot = state
        .download_slots()
        .acquire()
        .await
        .map_err(|e| internal("download slots closed", e))?;
    let index = state.media().index().clone();
    let row = crate::tasks::blocking(move || index.read_blocking(|r| r.get_media(id)))
        .await
        .map_err(|e| internal("index read task failed", e))?
        .map_err(ApiError::from)?;
    drop(slot);
    let row = Arc::new(Media::new(row.ok_or_else(|| {
        ApiError::new(
            ErrorKind::NotFound,
            "media_not_found",
            format!("media {id} does not exist"),
        )
    })?)?);
    cache.put_row(row.clone(), generation);
    Ok(row)
}

/// The whole content of a small blob, from the cache or the disk.
async fn small_body(state: &HttpState, row: &Media) -> Result<Bytes, ApiError> {
    let cache = state.download_cache();
    if let Some(bytes) = cache.body(&row.hash) {
        return Ok(bytes);
    }
    let store = state.media().store().clone();
    let (hash, size) = (row.hash, row.size);
    let bytes = crate::tasks::blocking(move || store.read_whole(&hash, size))
        .await
        .map_err(|e| internal("blob read task failed", e))?;
    let bytes = match bytes {
        Ok(bytes) => Bytes::from(bytes),
        Err(_) if row.rendition => return Err(rendition_unavailable(state, row).await),
        Err(e) => return Err(unreadable_blob(state, row.id, e).await),
    };
    // Only verified bytes are served and cached (storage-layout.md, "Serving").
    if blake3::hash(&bytes) != row.hash {
        if row.rendition {
            return Err(rendition_unavailable(state, row).await);
        }
        return Err(damaged_blob(state, row).await);
    }
    cache.put_body(row.hash, bytes.clone());
    Ok(bytes)
}

/// A blob that cannot be read: if its media row is gone meanwhile (deleted by
/// another process within the row cache's 1 s), the answer is the 404 a fresh
/// lookup gives; a live row whose file is gone has lost its data (I2 broken
/// from outside): its media are marked corrupt and the answer is
/// `410 media_corrupt`, as for damaged bytes.
async fn unreadable_blob(state: &HttpState, id: i64, e: std::io::Error) -> ApiError {
    match state.media().get(id).await {
        Err(gone) => ApiError::from(gone),
        Ok(row) if e.kind() == std::io::ErrorKind::NotFound => damaged_blob(state, &row).await,
        // A bucket that does not answer (down, or slower than
        // `store.s3.request_timeout`) is not damage and not a bug: 503 with
        // Retry-After, as uploads answer then.
        Ok(row) if served_from_bucket(state, row.hash).await => {
            tracing::warn!(error = %e, media = id, "the S3 bucket did not serve a blob");
            ApiError::new(
                ErrorKind::Unavailable,
                "store_unavailable",
                "the blob store did not answer in time; retry later",
            )
        }
        Ok(_) => internal("blob file of a live media row cannot be read", e),
    }
}

/// Records a damaged or missing blob and answers `410 media_corrupt`.
async fn damaged_blob(state: &HttpState, row: &MediaRow) -> ApiError {
    if let Err(e) = state.media().report_damaged(row.hash).await {
        tracing::error!(error = %e, "cannot record a damaged blob");
    }
    ApiError::from(crate::media::MediaError::corrupt(
        row.id,
        state.media().now_ms(),
    ))
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "{what}");
    ApiError::new(ErrorKind::Internal, "internal", "internal error")
}

/// What a valid signed URL grants.
struct Grant {
    /// `original` or a preview variant (bound by the signature).
    variant: String,
    attachment: bool,
    /// Seconds the URL still lives.
    remaining: i64,
}

/// Checks the URL's signature against the media (its path and content hash)
/// and that the media is whole.
fn verify(state: &HttpState, row: &Media, query: &str) -> Result<Grant, ApiError> {
    let signer = state.signer();
    let verified = signer.verify(
        Target {
            method: "GET",
            path: &row.path,
            content: Some(&row.hash),
        },
        query,
    )?;
    // After the signature: only a holder of a valid URL learns of the damage.
    crate::media::ensure_whole(row)?;
    let variant = verified.option("variant").unwrap_or("original").to_owned();
    let attachment = match verified.option("dl") {
        None => false,
        Some("1") => true,
        Some(_) => return Err(SignError::Invalid.into()),
    };
    Ok(Grant {
        variant,
        attachment,
        remaining: (verified.expires_at - signer.now()).max(0),
    })
}

fn prepare(
    state: &HttpState,
    row: &Media,
    grant: &Grant,
    c: Conditions,
) -> Result<Prepared, ApiError> {
    let (attachment, remaining) = (grant.attachment, grant.remaining);
    let settings = state.settings();
    let etag = &row.etag;
    let mut headers = HeaderMap::with_capacity(12);
    headers.insert(header::ETAG, row.etag_value.clone());
    put(
        &mut headers,
        header::CACHE_CONTROL,
        &format!("private, max-age={remaining}"),
    );
    let not_modified = c
        .if_none_match
        .as_ref()
        .is_some_and(|m| !m.precondition_passes(etag));
    // A file handed to nginx gets these from nginx: it sends its own
    // Accept-Ranges (ours would be doubled) and drops the other two after the
    // internal redirect (the shipped config adds them back).
    if !settings.serve.nginx_accel || not_modified {
        let fixed = |v| HeaderValue::from_static(v);
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, fixed("nosniff"));
        headers.insert(header::CONTENT_SECURITY_POLICY, fixed("sandbox"));
        headers.insert(header::ACCEPT_RANGES, fixed("bytes"));
    }

    if not_modified {
        return Ok(Prepared {
            status: StatusCode::NOT_MODIFIED,
            headers,
            plan: Plan::Empty,
        });
    }
    if let Some(v) = &row.content_type {
        headers.insert(header::CONTENT_TYPE, v.clone());
    }
    let disposition = if attachment {
        &row.attachment
    } else {
        &row.inline
    };
    if let Some(v) = disposition {
        headers.insert(header::CONTENT_DISPOSITION, v.clone());
    }
    if settings.serve.nginx_accel {
        // nginx serves the file (and Range, HEAD) from its internal location.
        let target = format!(
            "{}{}",
            settings.serve.accel_prefix,
            state.media().store().accel_path(&row.hash)
        );
        put(&mut headers, X_ACCEL_REDIRECT, &target);
        return Ok(Prepared {
            status: StatusCode::OK,
            headers,
            plan: Plan::Empty,
        });
    }

    let size = row.size;
    let range = match &c.range {
        // A Range with a stale If-Range validator gets the whole file.
        Some(r)
            if c.if_range
                .as_ref()
                .is_none_or(|ir| !ir.is_modified(Some(etag), None)) =>
        {
            match byte_range(r, size) {
                Ok(range) => range,
                Err(()) => {
                    put(
                        &mut headers,
                        header::CONTENT_RANGE,
                        &format!("bytes */{size}"),
                    );
                    put(&mut headers, header::CONTENT_TYPE, "application/json");
                    headers.remove(header::CONTENT_DISPOSITION);
                    let body = serde_json::json!({"error": {
                        "code": "range_not_satisfiable",
                        "message": format!("the file has {size} bytes"),
                    }});
                    return Ok(Prepared {
                        status: StatusCode::RANGE_NOT_SATISFIABLE,
                        headers,
                        plan: Plan::Json(body.to_string()),
                    });
                }
            }
        }
        _ => None,
    };
    let (status, start, len) = match range {
        Some(r) => {
            put(
                &mut headers,
                header::CONTENT_RANGE,
                &format!("bytes {}-{}/{size}", r.start(), r.end()),
            );
            (
                StatusCode::PARTIAL_CONTENT,
                *r.start(),
                r.end() - r.start() + 1,
            )
        }
        None => (StatusCode::OK, 0, size),
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let plan = if c.head || len == 0 {
        Plan::Empty
    } else {
        Plan::Bytes { start, len }
    };
    Ok(Prepared {
        status,
        headers,
        plan,
    })
}

/// One satisfiable range, `None` for "send everything" (several ranges are
/// answered with the whole file, which RFC 9110 allows; so is a header that
/// does not parse or has another unit, which RFC 9110, 14.2, says to ignore),
/// `Err` for 416 (well-formed, but no range overlaps the file).
fn byte_range(header: &str, size: u64) -> Result<Option<RangeInclusive<u64>>, ()> {
    let Ok(parsed) = http_range_header::parse_range_header(header) else {
        return Ok(None);
    };
    let ranges = parsed.validate(size).map_err(|_| ())?;
    Ok(match ranges.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    })
}

fn put(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    // Every value here is built from ASCII we control or from stored MIME types
    // (checked at upload); a value that still fails is dropped rather than sent raw.
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// The Content-Type a download is served with: the stored type, with the
/// charset for text (the sniffer only admits UTF-8 as `text/plain`).
fn served_type(stored: &str) -> std::borrow::Cow<'_, str> {
    if stored.eq_ignore_ascii_case("text/plain") {
        "text/plain; charset=utf-8".into()
    } else {
        stored.into()
    }
}

/// Types a browser may render inline without running active content.
fn is_safe_inline(mime: &str) -> bool {
    let mime = mime.to_ascii_lowercase();
    (mime.starts_with("image/") && !mime.contains("svg"))
        || mime.starts_with("audio/")
        || mime.starts_with("video/")
        || mime == "application/pdf"
}

/// RFC 5987 `attr-char`: everything else is percent-encoded in `filename*`.
const ATTR_CHAR_COMPLEMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `inline` or `attachment` with the original filename (made safe by
/// [`crate::policy::download_name`]), per RFC 6266: a plain
/// ASCII `filename` for old clients plus the exact UTF-8 name in `filename*`
/// (RFC 5987). Hand-written because no maintained crate formats this header;
/// percent-encoding does the escaping.
fn content_disposition(row: &MediaRow, attachment: bool) -> String {
    let kind = if attachment || !is_safe_inline(&row.file_type) {
        "attachment"
    } else {
        "inline"
    };
    // The extension agrees with the stored type whatever the uploader named
    // the file, and format characters are gone (issue #14).
    let name = crate::policy::download_name(
        row.original_name.as_deref(),
        &row.file_type,
        &row.id.to_string(),
    );
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = utf8_percent_encode(&name, ATTR_CHAR_COMPLEMENT);
    format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mime: &str, name: Option<&str>) -> MediaRow {
        MediaRow {
            id: 9,
            uploader_id: 1,
            file_type: mime.into(),
            hash: blake3::hash(b""),
            size: 0,
            original_name: name.map(str::to_owned),
            uploaded_at_ms: 0,
            corrupt_since_ms: None,
            layout: Default::default(),
        }
    }

    #[test]
    fn disposition_is_inline_only_for_safe_media_and_encodes_names() {
        assert_eq!(
            content_disposition(&row("image/png", Some("a b.png")), false),
            "inline; filename=\"a b.png\"; filename*=UTF-8''a%20b.png"
        );
        assert_eq!(
            content_disposition(&row("image/png", Some("Grüße \"x\".png")), false),
            "inline; filename=\"Gr__e _x_.png\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe%20%22x%22.png"
        );
        assert!(content_disposition(&row("image/png", None), true).starts_with("attachment"));
        for unsafe_type in [
            "image/svg+xml",
            "text/html",
            "application/zip",
            "text/plain",
        ] {
            assert!(
                content_disposition(&row(unsafe_type, None), false).starts_with("attachment;"),
                "{unsafe_type}"
            );
        }
        assert!(content_disposition(&row("application/pdf", None), false).starts_with("inline"));
        assert!(content_disposition(&row("video/mp4", None), false).contains("filename=\"9.mp4\""));
        // The name cannot choose what the file becomes on disk.
        assert_eq!(
            content_disposition(&row("text/plain", Some("evil.hta")), false),
            "attachment; filename=\"evil.hta.txt\"; filename*=UTF-8''evil.hta.txt"
        );
        assert_eq!(
            content_disposition(&row("image/gif", Some("gifar.jar")), false),
            "inline; filename=\"gifar.jar.gif\"; filename*=UTF-8''gifar.jar.gif"
        );
        assert_eq!(
            content_disposition(
                &row("application/pdf", Some("invoice\u{202E}fdp.exe")),
                false
            ),
            "inline; filename=\"invoicefdp.exe.pdf\"; filename*=UTF-8''invoicefdp.exe.pdf"
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(byte_range("bytes=0-9", 100), Ok(Some(0..=9)));
        assert_eq!(byte_range("bytes=-10", 100), Ok(Some(90..=99)));
        assert_eq!(byte_range("bytes=90-", 100), Ok(Some(90..=99)));
        assert_eq!(byte_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(byte_range("bytes=100-", 100), Err(()));
        // Invalid or foreign headers are ignored: the whole file.
        assert_eq!(byte_range("items=0-1", 100), Ok(None));
        assert_eq!(byte_range("bytes=abc", 100), Ok(None));
    }
}
