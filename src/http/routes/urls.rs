//! Signed URLs: issuing download and upload URLs (service token), and the
//! presigned upload endpoint browsers use without the token (docs/downloads.md).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::http::error::ApiError;
use crate::http::extract::{ApiPath, ServiceAuth};
use crate::http::routes::files::VARIANTS;
use crate::http::routes::media::{UploadTarget, ingest_request};
use crate::http::state::HttpState;
use crate::http::views::{MediaView, UploadView};
use crate::media::file_url;
use crate::signing::{SignError, Target};
use crate::timefmt::rfc3339_ms;

/// Path of the presigned upload endpoint.
pub const UPLOAD_PATH: &str = "/upload";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MediaUrlRequest {
    ttl_secs: Option<u64>,
    variant: Option<String>,
    /// `inline` (default: decided by type) or `attachment` (always download).
    disposition: Option<String>,
}

#[derive(Serialize)]
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
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("bad_json", e.to_string()))
}

/// Signs a download URL for media `id`; also used by `media-store sign-url`.
pub fn sign_media_url(
    signer: &crate::signing::Signer,
    public_base_url: &str,
    row: &crate::index::MediaRow,
    ttl_secs: Option<u64>,
    variant: Option<&str>,
    attachment: bool,
) -> Result<SignedUrlView, ApiError> {
    let variant = variant.unwrap_or("original");
    if !VARIANTS.contains(&variant) {
        return Err(ApiError::bad_request(
            "unknown_variant",
            format!(
                "unknown variant {variant:?}; known: {}",
                VARIANTS.join(", ")
            ),
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
    )?;
    Ok(Json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadUrlRequest {
    uploader_id: i64,
    ttl_secs: Option<u64>,
    max_bytes: Option<u64>,
}

#[derive(Serialize)]
pub struct UploadUrlView {
    pub url: String,
    pub expires_at: String,
    /// The limit bound into the URL (the policy's maximum when none was asked).
    pub max_bytes: u64,
}

/// `POST /v1/upload-urls` `{"uploader_id", "ttl_secs", "max_bytes"}` -> `{"url", "expires_at", "max_bytes"}`
pub async fn create_upload_url(
    _: ServiceAuth,
    State(state): State<HttpState>,
    body: Bytes,
) -> Result<Json<UploadUrlView>, ApiError> {
    let req: UploadUrlRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?;
    let policy_max = state.media().policy().max_bytes();
    let max_bytes = req.max_bytes.unwrap_or(policy_max);
    if max_bytes == 0 || max_bytes > policy_max {
        return Err(ApiError::bad_request(
            "bad_max_bytes",
            format!("max_bytes must be between 1 and {policy_max}"),
        ));
    }
    let (uploader, max) = (req.uploader_id.to_string(), max_bytes.to_string());
    let signed = state.signer().sign(
        Target {
            method: "POST",
            path: UPLOAD_PATH,
            content: None,
        },
        &[("uploader_id", &uploader), ("max_bytes", &max)],
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
pub async fn upload_presigned(
    State(state): State<HttpState>,
    method: Method,
    request: Request,
) -> Result<(StatusCode, Json<UploadView>), ApiError> {
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
    let target = UploadTarget {
        uploader_id,
        filename: None,
        // The URL's query is covered by its signature; a hash claim is not part of it.
        claimed_hash: None,
    };
    let ingested = ingest_request(&state, target, request, Some(max_bytes)).await?;
    // No `deduplicated`: whoever holds an upload URL must not learn whether
    // someone else stored the same content.
    let view = UploadView {
        media: MediaView::new(&ingested.row, &state.public_base_url()),
        deduplicated: None,
    };
    Ok((StatusCode::CREATED, Json(view)))
}
