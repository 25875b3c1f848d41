//! Signed URLs: issuing download and upload URLs (service token), and the
//! presigned upload endpoint browsers use without the token (docs/downloads.md).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::http::error::ApiError;
use crate::http::extract::{ApiPath, ServiceAuth, UploaderId, disposition_filename, parse_json};
use crate::http::routes::media::{Refused, UploadTarget, ingest_request};
use crate::http::state::HttpState;
use crate::http::views::{MediaView, UploadView};
use crate::media::file_url;
use crate::signing::{SignError, Target};
use crate::timefmt::rfc3339_ms;

/// Path of the presigned upload endpoint.
pub const UPLOAD_PATH: &str = "/upload";

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MediaUrlRequest {
    ttl_secs: Option<u64>,
    variant: Option<String>,
    /// `inline` (default: decided by type) or `attachment` (always download).
    disposition: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SignedUrlView {
    pub url: String,
    /// RFC 3339, like every time in the API.
    pub expires_at: String,
}

/// A JSON body that may be empty (all defaults); errors are JSON 400s.
fn json_or_default<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(body)
}

/// Signs a download URL for media `id`; also used by `media-store sign-url`.
pub fn sign_media_url(
    signer: &crate::signing::Signer,
    public_base_url: &str,
    row: &crate::index::MediaRow,
    ttl_secs: Option<u64>,
    variant: Option<&str>,
    attachment: bool,
    known: &dyn Fn(&str) -> bool,
) -> Result<SignedUrlView, ApiError> {
    let variant = variant.unwrap_or("original");
    if !known(variant) {
        return Err(ApiError::bad_request(
            "unknown_variant",
            format!("unknown variant {variant:?}: not `original` nor a configured preview variant"),
        ));
    }
    let mut options = Vec::new();
    // The default variant stays out of the URL: `file_url?exp&kid&sig`.
    if variant != "original" {
        options.push(("variant", variant));
    }
    if attachment {
        options.push(("dl", "1"));
    }
    let path = format!("/files/{}", row.id);
    let signed = signer.sign(
        Target {
            method: "GET",
            path: &path,
            content: Some(&row.hash),
        },
        &options,
        ttl_secs,
    )?;
    Ok(SignedUrlView {
        url: format!("{}?{}", file_url(public_base_url, row.id), signed.query),
        expires_at: rfc3339_ms(signed.expires_at * 1000),
    })
}

/// `POST /v1/media/{id}/url` `{"ttl_secs", "variant", "disposition"}` -> `{"url", "expires_at"}`
#[utoipa::path(
    post,
    path = "/v1/media/{id}/url",
    tag = "urls",
    params(("id" = i64, Path, description = "Media id")),
    request_body(
        content = Option<MediaUrlRequest>,
        content_type = "application/json",
        description = "All fields optional; an empty body takes the defaults"
    ),
    responses(
        (status = 200, description = "A signed download URL", body = SignedUrlView),
        (status = 400, description = "bad_path, bad_json, bad_ttl, bad_disposition, unknown_variant", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "unauthorized: missing or wrong bearer token", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "media_not_found", body = crate::http::openapi::ErrorBody),
        (status = 410, description = "media_corrupt", body = crate::http::openapi::ErrorBody),
        (status = "5XX", description = "index_unavailable (503), disk_full or quota_exceeded (507), internal (500)", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_media_url(
    _: ServiceAuth,
    State(state): State<HttpState>,
    ApiPath(id): ApiPath<i64>,
    body: Bytes,
) -> Result<Json<SignedUrlView>, ApiError> {
    let req: MediaUrlRequest = json_or_default(&body)?;
    let attachment = match req.disposition.as_deref() {
        None | Some("inline") => false,
        Some("attachment") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "bad_disposition",
                "`disposition` must be \"inline\" or \"attachment\"",
            ));
        }
    };
    let row = state.media().get(id).await?;
    crate::media::ensure_whole(&row)?;
    let view = sign_media_url(
        &state.signer(),
        &state.public_base_url(),
        &row,
        req.ttl_secs,
        req.variant.as_deref(),
        attachment,
        &|v| state.previews().knows(v),
    )?;
    Ok(Json(view))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadUrlRequest {
    uploader_id: UploaderId,
    ttl_secs: Option<u64>,
    max_bytes: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UploadUrlView {
    pub url: String,
    pub expires_at: String,
    /// The limit bound into the URL (the policy's maximum when none was asked).
    pub max_bytes: u64,
}

/// `POST /v1/upload-urls` `{"uploader_id", "ttl_secs", "max_bytes"}` -> `{"url", "expires_at", "max_bytes"}`
#[utoipa::path(
    post,
    path = "/v1/upload-urls",
    tag = "urls",
    request_body(content = UploadUrlRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "A presigned upload URL", body = UploadUrlView),
        (status = 400, description = "bad_json, bad_ttl, bad_max_bytes", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "unauthorized: missing or wrong bearer token", body = crate::http::openapi::ErrorBody),
        (status = "5XX", description = "index_unavailable (503), disk_full or quota_exceeded (507), internal (500)", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_upload_url(
    _: ServiceAuth,
    State(state): State<HttpState>,
    body: Bytes,
) -> Result<Json<UploadUrlView>, ApiError> {
    let req: UploadUrlRequest = parse_json(&body)?;
    let policy_max = state.media().policy().max_bytes();
    let max_bytes = req.max_bytes.unwrap_or(policy_max);
    if max_bytes == 0 || max_bytes > policy_max {
        return Err(ApiError::bad_request(
            "bad_max_bytes",
            format!("max_bytes must be between 1 and {policy_max}"),
        ));
    }
    let (uploader, max) = (req.uploader_id.0.to_string(), max_bytes.to_string());
    // Each URL is distinct (two asked for in the same second would otherwise be
    // equal), so each is used up on its own when uploads are single-use.
    let nonce = crate::signing::generate_nonce();
    let signed = state.signer().sign(
        Target {
            method: "POST",
            path: UPLOAD_PATH,
            content: None,
        },
        &[
            ("uploader_id", &uploader),
            ("max_bytes", &max),
            ("nonce", &nonce),
        ],
        req.ttl_secs,
    )?;
    let base = state.public_base_url();
    Ok(Json(UploadUrlView {
        url: format!(
            "{}{UPLOAD_PATH}?{}",
            base.trim_end_matches('/'),
            signed.query
        ),
        expires_at: rfc3339_ms(signed.expires_at * 1000),
        max_bytes,
    }))
}

/// `POST|PUT /upload?uploader_id=&max_bytes=&exp=&kid=&sig=`: a presigned
/// upload, raw body or multipart (field `file`), answered like `POST /v1/media`.
#[utoipa::path(
    method(post, put),
    path = "/upload",
    tag = "urls",
    params(
        ("exp" = i64, Query, description = "Expiry, Unix seconds (signed)"),
        ("kid" = String, Query, description = "Signing key id"),
        ("uploader_id" = i64, Query, description = "Bound by the signature"),
        ("max_bytes" = u64, Query, description = "Bound by the signature"),
        ("sig" = String, Query, description = "The signature"),
        ("Content-Disposition" = Option<String>, Header, description = "A raw upload's file name: `attachment; filename=\"cat.jpg\"` (or `filename*=UTF-8''…`)"),
    ),
    request_body(
        description = "The file's bytes, raw or as the field `file` of a form",
        content(
            (crate::http::openapi::Binary = "application/octet-stream"),
            (crate::http::openapi::UploadForm = "multipart/form-data"),
        )
    ),
    responses(
        (status = 201, description = "Stored, as for `POST /v1/media`", body = UploadView),
        (status = 400, description = "bad_header, bad_multipart, missing_file_field, bad_body, empty_upload", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "invalid_signature, missing_signature", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "blob_gone", body = crate::http::openapi::ErrorBody),
        (status = 410, description = "url_expired, url_used", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "too_large", body = crate::http::openapi::ErrorBody),
        (status = 415, description = "type_unrecognised, type_not_allowed", body = crate::http::openapi::ErrorBody),
        (status = "5XX", description = "index_unavailable (503), disk_full or quota_exceeded (507), internal (500)", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn upload_presigned(
    State(state): State<HttpState>,
    method: Method,
    request: Request,
) -> Result<(StatusCode, Json<UploadView>), Refused> {
    debug_assert!(method == Method::POST || method == Method::PUT);
    let query = request.uri().query().unwrap_or("").to_owned();
    let verified = state.signer().verify(
        Target {
            method: "POST",
            path: UPLOAD_PATH,
            content: None,
        },
        &query,
    )?;
    // Both are bound by the signature; a URL without them was not issued here.
    let number = |name| {
        verified
            .option(name)
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or(SignError::Invalid)
    };
    let uploader_id = number("uploader_id")?;
    let max_bytes = u64::try_from(number("max_bytes")?).map_err(|_| SignError::Invalid)?;
    // Single use: claimed before the body is read, given back if the upload fails.
    let claim = if state.signer().uploads_are_single_use() {
        let signature = verified.signature.clone();
        if !state
            .media()
            .claim_upload_url(signature.clone(), verified.expires_at)
            .await?
        {
            return Err(SignError::Used.into());
        }
        Some(signature)
    } else {
        None
    };
    // A raw upload names its file in `Content-Disposition`, as a form part does.
    let filename = disposition_filename(request.headers());
    let target = UploadTarget {
        uploader_id,
        filename: filename.as_deref(),
        // The URL's query is covered by its signature; a hash claim is not part of it.
        claimed_hash: None,
    };
    let result = ingest_request(&state, target, request, Some(max_bytes)).await;
    if let (Err(_), Some(signature)) = (&result, claim)
        && let Err(e) = state.media().release_upload_url(signature).await
    {
        tracing::error!(error = %e, "cannot give back a used upload URL");
    }
    let ingested = result?;
    state
        .previews()
        .after_upload(&ingested.row, ingested.deduplicated);
    // No `deduplicated`: whoever holds an upload URL must not learn whether
    // someone else stored the same content. Nor the layout a duplicate gets
    // from its siblings at once (a new upload has none in its answer).
    let mut media = MediaView::new(&ingested.row, &state.public_base_url());
    media.width = None;
    media.height = None;
    media.duration_ms = None;
    media.thumbhash = None;
    let view = UploadView {
        media,
        deduplicated: None,
    };
    Ok((StatusCode::CREATED, Json(view)))
}
