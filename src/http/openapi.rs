//! The OpenAPI 3.1 description of the HTTP API, generated from the handlers'
//! annotations (`utoipa`), so that it cannot drift from the code:
//! `GET /openapi.json` serves it, `media-store openapi` prints it, and
//! `docs/openapi.json` is the checked-in copy (a test fails when it differs).
//!
//! `/openapi.json` needs no token: it describes the same interface as the
//! README, holds no secret and nothing about the deployment (no keys, no
//! paths, no config), like `/healthz`; tools (client generators, contract
//! testers) fetch it before they have a token. It is not proxied by the
//! shipped nginx site, which only exposes the browser-facing routes.

use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{KnownFormat, ObjectBuilder, RefOr, Schema, SchemaFormat, Type};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::http::routes;

/// Every error's body: `{"error": {"code", "message"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// Written for the client: what is wrong and what is expected.
    pub message: String,
}

/// Every error code the API answers with (README, "Status codes and error codes").
#[derive(Serialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MissingUploaderId,
    BadQuery,
    BadPath,
    BadHeader,
    BadJson,
    BadMultipart,
    MissingFileField,
    BadBody,
    BadLimit,
    BadType,
    BadTime,
    BadCursor,
    BadHash,
    HashMismatch,
    BadTtl,
    BadMaxBytes,
    BadDisposition,
    UnknownVariant,
    EmptyUpload,
    Unauthorized,
    InvalidSignature,
    MissingSignature,
    MediaNotFound,
    VariantNotFound,
    NoRoute,
    MethodNotAllowed,
    BlobGone,
    GroupMismatch,
    UrlExpired,
    UrlUsed,
    MediaCorrupt,
    TooLarge,
    TypeUnrecognised,
    TypeNotAllowed,
    RangeNotSatisfiable,
    IndexUnavailable,
    /// The S3 bucket did not answer in time (503, with `Retry-After`).
    StoreUnavailable,
    /// GC is deleting this content's object right now (503; send it again).
    BlobBeingCollected,
    DiskFull,
    QuotaExceeded,
    /// A data root is not the disk this store was created on (5xx).
    WrongRoot,
    /// The MySQL mirror cannot be reached (maintenance commands; 5xx).
    MysqlUnavailable,
    /// `media-store import`: the id is taken by other content.
    IdConflict,
    // Previews (docs/previews.md).
    CorruptImage,
    DecoderPanicked,
    ImageTooLarge,
    InputTooLarge,
    RenditionUnavailable,
    TimedOut,
    TooManyFrames,
    TooManyPixels,
    ToolFailed,
    TypeMismatch,
    UnsupportedType,
    VariantNotAvailable,
    Internal,
}

/// Raw bytes (a request or response body that is the file itself).
pub struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}
impl ToSchema for Binary {}

/// `multipart/form-data` upload: the file in the field `file` (other fields are ignored).
#[derive(ToSchema)]
#[allow(dead_code)] // Describes a body read as a stream, never built.
pub struct UploadForm {
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// `GET /healthz`'s body.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the JSON `routes::health` builds.
pub struct Health {
    /// `ok` or `unavailable`.
    status: String,
    /// `ok` or `failing` for `index`, `data_dir`, with archival `archive`,
    /// and with the S3 backend `s3`.
    #[schema(value_type = Object)]
    checks: serde_json::Value,
    /// `local`, or `s3 <endpoint>/<bucket>/<prefix>`.
    backend: String,
    /// The MySQL mirror's state (detail only; null when off).
    #[schema(value_type = Object)]
    mysql: Option<serde_json::Value>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The service token (`api_token`, or `media-data/api-token`)",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "media-store",
        description = "Self-hosted, content-addressed media store. Errors are always \
            `{\"error\": {\"code\", \"message\"}}`. `/v1` routes need \
            `Authorization: Bearer <token>`; `/files` and `/upload` are reached with \
            signed URLs instead."
    ),
    paths(
        routes::media::create_media,
        routes::media::list_media,
        routes::media::get_media,
        routes::media::delete_media,
        routes::urls::create_media_url,
        routes::urls::create_upload_url,
        routes::messages::attach_media,
        routes::messages::list_message_media,
        routes::messages::delete_message,
        routes::messages::delete_group,
        routes::uploaders::get_usage,
        routes::files::download_file,
        preflight_file,
        routes::urls::upload_presigned,
        preflight_upload,
        routes::health::healthz,
        routes::metrics::metrics,
        openapi_json,
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode, Binary, UploadForm, Health)),
    modifiers(&BearerAuth),
    tags(
        (name = "media", description = "Uploads, metadata, listing, deletion"),
        (name = "urls", description = "Signed download URLs and presigned uploads"),
        (name = "messages", description = "Which message carries which media"),
        (name = "operations", description = "Health, metrics, this description"),
    )
)]
pub struct ApiDoc;

/// The description as pretty JSON with a trailing newline (the checked-in form).
pub fn spec_json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI description serializes");
    text.push('\n');
    text
}

/// `GET /openapi.json`
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This description (OpenAPI 3.1)", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json() -> impl IntoResponse {
    static SPEC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = SPEC.get_or_init(spec_json).clone();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// CORS preflight of `/files/{id}` (answered by `http::cors`; documented here
/// because the route's OPTIONS handler is shared).
#[utoipa::path(
    options,
    path = "/files/{id}",
    tag = "urls",
    params(("id" = i64, Path, description = "Media id")),
    responses((status = 204, description = "CORS preflight answer")),
)]
#[allow(dead_code)]
async fn preflight_file() {}

/// CORS preflight of `/upload`.
#[utoipa::path(
    options,
    path = "/upload",
    tag = "urls",
    responses((status = 204, description = "CORS preflight answer")),
)]
#[allow(dead_code)]
async fn preflight_upload() {}
