//! `GET`/`HEAD /files/{id}?exp=&kid=&sig=`: signed downloads (docs/downloads.md).
//!
//! Verifies the signature against the media row's content hash, then either
//! streams the blob (Range, ETag/If-None-Match, safe headers) or, with
//! `serve.nginx_accel`, hands the file to nginx with `X-Accel-Redirect`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::RangeInclusive;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use headers::{ETag, HeaderMapExt, IfNoneMatch, IfRange};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::app::AppState;
use crate::error::ErrorKind;
use crate::http::error::ApiError;
use crate::http::extract::ApiPath;
use crate::index::media::{MediaRow, get_media};
use crate::signing::{SignError, Target};

/// The only variant today; previews add more later (each signed like this one).
pub const VARIANTS: &[&str] = &["original"];

/// Bodies up to this size are read in the same blocking call that looks up the
/// row, so a small download costs one thread hop.
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

enum Body_ {
    Empty,
    Bytes(Vec<u8>),
    File { file: File, start: u64, len: u64 },
}

struct Prepared {
    status: StatusCode,
    headers: HeaderMap,
    body: Body_,
}

/// `GET|HEAD /files/{id}`
pub async fn download_file(
    State(state): State<AppState>,
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
    let query = uri.query().unwrap_or("").to_owned();
    let state2 = state.clone();
    // One blocking call: row lookup, signature check, file open (and a small read).
    let prepared = crate::tasks::blocking(move || prepare(&state2, id, &query, conditions))
        .await
        .map_err(|_| ApiError::new(ErrorKind::Internal, "internal", "internal error"))??;
    let body = match prepared.body {
        Body_::Empty => Body::empty(),
        Body_::Bytes(b) => Body::from(b),
        Body_::File { file, start, len } => {
            let mut file = tokio::fs::File::from_std(file);
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            file.seek(SeekFrom::Start(start))
                .await
                .map_err(|e| internal("cannot seek blob", e))?;
            Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
                file.take(len),
                STREAM_CHUNK,
            ))
        }
    };
    let mut response = (prepared.status, body).into_response();
    *response.headers_mut() = prepared.headers;
    Ok(response)
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "{what}");
    ApiError::new(ErrorKind::Internal, "internal", "internal error")
}

fn prepare(state: &AppState, id: i64, query: &str, c: Conditions) -> Result<Prepared, ApiError> {
    let media = state.media();
    let row = media
        .index()
        .read_blocking(move |conn| get_media(conn, id))
        .map_err(ApiError::from)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                "media_not_found",
                format!("media {id} does not exist"),
            )
        })?;
    let path = format!("/files/{id}");
    let signer = state.signer();
    let verified = signer.verify(
        Target {
            method: "GET",
            path: &path,
            content: Some(&row.hash),
        },
        query,
    )?;
    let variant = verified.option("variant").unwrap_or("original");
    if !VARIANTS.contains(&variant) {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            "variant_not_found",
            format!("no variant {variant:?} of this media"),
        ));
    }
    let attachment = match verified.option("dl") {
        None => false,
        Some("1") => true,
        Some(_) => return Err(SignError::Invalid.into()),
    };
    let remaining = (verified.expires_at - signer.now()).max(0);
    let config = state.config();
    let etag_text = format!("\"{}\"", row.hash.to_hex());
    let etag: ETag = etag_text
        .parse()
        .map_err(|_| internal("bad etag", &etag_text))?;
    let mut headers = HeaderMap::new();
    put(&mut headers, header::ETAG, &etag_text);
    put(
        &mut headers,
        header::CACHE_CONTROL,
        &format!("private, max-age={remaining}"),
    );
    put(&mut headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    put(&mut headers, header::CONTENT_SECURITY_POLICY, "sandbox");
    put(&mut headers, header::ACCEPT_RANGES, "bytes");

    if c.if_none_match
        .as_ref()
        .is_some_and(|m| !m.precondition_passes(&etag))
    {
        return Ok(Prepared {
            status: StatusCode::NOT_MODIFIED,
            headers,
            body: Body_::Empty,
        });
    }
    put(&mut headers, header::CONTENT_TYPE, &row.file_type);
    put(
        &mut headers,
        header::CONTENT_DISPOSITION,
        &content_disposition(&row, attachment),
    );
    if config.serve.nginx_accel {
        // nginx serves the file (and Range, HEAD) from its internal location.
        let hex = row.hash.to_hex();
        let target = format!(
            "{}{}/{}/{hex}",
            config.serve.accel_prefix,
            &hex[0..2],
            &hex[2..4]
        );
        put(
            &mut headers,
            HeaderName::from_static("x-accel-redirect"),
            &target,
        );
        return Ok(Prepared {
            status: StatusCode::OK,
            headers,
            body: Body_::Empty,
        });
    }

    let size = row.size;
    let range = match &c.range {
        // A Range with a stale If-Range validator gets the whole file.
        Some(r)
            if c.if_range
                .as_ref()
                .is_none_or(|ir| !ir.is_modified(Some(&etag), None)) =>
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
                        body: Body_::Bytes(body.to_string().into_bytes()),
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
    put(&mut headers, header::CONTENT_LENGTH, &len.to_string());
    if c.head {
        return Ok(Prepared {
            status,
            headers,
            body: Body_::Empty,
        });
    }
    let mut file = media
        .store()
        .open_blob(&row.hash)
        .map_err(|e| internal("blob file of a live media row cannot be opened", e))?;
    let body = if len <= SMALL_BODY {
        let mut buf = vec![0; len as usize];
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| internal("cannot read blob", e))?;
        Body_::Bytes(buf)
    } else {
        Body_::File { file, start, len }
    };
    Ok(Prepared {
        status,
        headers,
        body,
    })
}

/// One satisfiable range, `None` for "send everything" (several ranges are
/// answered with the whole file, which RFC 9110 allows), `Err` for 416.
fn byte_range(header: &str, size: u64) -> Result<Option<RangeInclusive<u64>>, ()> {
    let ranges = http_range_header::parse_range_header(header)
        .and_then(|r| r.validate(size))
        .map_err(|_| ())?;
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

/// `inline` or `attachment` with the original filename, per RFC 6266: a plain
/// ASCII `filename` for old clients plus the exact UTF-8 name in `filename*`
/// (RFC 5987). Hand-written because no maintained crate formats this header;
/// percent-encoding does the escaping.
fn content_disposition(row: &MediaRow, attachment: bool) -> String {
    let kind = if attachment || !is_safe_inline(&row.file_type) {
        "attachment"
    } else {
        "inline"
    };
    let name = row
        .original_name
        .clone()
        .unwrap_or_else(|| row.id.to_string());
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
        assert!(content_disposition(&row("video/mp4", None), false).contains("filename=\"9\""));
    }

    #[test]
    fn ranges() {
        assert_eq!(byte_range("bytes=0-9", 100), Ok(Some(0..=9)));
        assert_eq!(byte_range("bytes=-10", 100), Ok(Some(90..=99)));
        assert_eq!(byte_range("bytes=90-", 100), Ok(Some(90..=99)));
        assert_eq!(byte_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(byte_range("bytes=100-", 100), Err(()));
        assert_eq!(byte_range("items=0-1", 100), Err(()));
    }
}
