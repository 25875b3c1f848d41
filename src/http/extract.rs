//! Extractors whose rejections are `ApiError`s, so every failure is JSON and a
//! 4xx whose message says, in our own words, what is wrong and what is expected.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::http::state::HttpState;

/// Proof that the request carried the service token.
pub struct ServiceAuth;

impl FromRequestParts<HttpState> for ServiceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, ApiError> {
        if has_service_token(&parts.headers, state) {
            Ok(ServiceAuth)
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

/// Whether `headers` carry the service token (for routes that answer
/// everyone but tell the backend more, such as `/healthz`).
pub fn has_service_token(headers: &axum::http::HeaderMap, state: &HttpState) -> bool {
    let Some(presented) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_credentials)
    else {
        return false;
    };
    let expected = state.api_token();
    // Constant time, so the token cannot be guessed byte by byte from timing.
    !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// The credentials of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 9110, 11.1): `bearer`, `BEARER` and `Bearer` are one.
pub fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// The file name a raw upload carries in `Content-Disposition` (as a form part
/// would): `filename*=UTF-8''…` (RFC 5987) when present, else `filename=`.
/// Cleaning (path components, control characters) is the upload's business.
pub fn disposition_filename(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(axum::http::header::CONTENT_DISPOSITION)?;
    let text = String::from_utf8_lossy(value.as_bytes());
    let mut plain = None;
    for param in text.split(';').skip(1) {
        let Some((name, v)) = param.split_once('=') else {
            continue;
        };
        let (name, v) = (name.trim().to_ascii_lowercase(), v.trim());
        if name == "filename*" {
            let (charset, rest) = v.split_once('\'')?;
            let encoded = rest.split_once('\'').map_or(rest, |(_, e)| e);
            if charset.eq_ignore_ascii_case("utf-8") {
                let decoded = percent_encoding::percent_decode_str(encoded)
                    .decode_utf8()
                    .ok()?;
                return Some(decoded.into_owned());
            }
        } else if name == "filename" {
            let unquoted = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .map_or_else(
                    || v.to_owned(),
                    |v| v.replace("\\\"", "\"").replace("\\\\", "\\"),
                );
            plain = Some(unquoted);
        }
    }
    plain
}

/// A query string's parameters: their names and, for the message when a value
/// does not parse, what each must be.
pub trait QueryParams: DeserializeOwned {
    /// `(name, what it must be)` for every parameter the route takes.
    const PARAMS: &'static [(&'static str, &'static str)];
}

/// The query string parsed into `T`, with a JSON 400 `bad_query` naming the
/// parameter on an unknown, repeated or malformed one (a typo such as
/// `uploader=7` must not silently widen a listing to every uploader).
pub struct ApiQuery<T>(pub T);

impl<T: QueryParams + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_query::<T>(parts.uri.query().unwrap_or("")).map(ApiQuery)
    }
}

pub fn parse_query<T: QueryParams>(query: &str) -> Result<T, ApiError> {
    let bad = |m: String| ApiError::bad_request("bad_query", m);
    let names = || {
        T::PARAMS
            .iter()
            .map(|(n, _)| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut seen: Vec<String> = Vec::new();
    for (key, _) in form_urlencoded::parse(query.as_bytes()) {
        if !T::PARAMS.iter().any(|(n, _)| *n == key) {
            return Err(bad(format!(
                "unknown query parameter `{}`; this route takes {}",
                printable(&key),
                names()
            )));
        }
        if seen.iter().any(|s| *s == key) {
            return Err(bad(format!(
                "query parameter `{key}` is given more than once"
            )));
        }
        seen.push(key.into_owned());
    }
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        match T::PARAMS.iter().find(|(n, _)| *n == field) {
            Some((name, what)) => bad(format!("query parameter `{name}` must be {what}")),
            None => bad(format!(
                "the query string is not valid; this route takes {}",
                names()
            )),
        }
    })
}

/// At most 64 characters of client text, without control characters, for messages.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// `Path<T>` with a JSON 400 `bad_path` on a malformed segment (e.g. a non-numeric id).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        use axum::extract::path::ErrorKind as K;
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| {
                let value = match &e {
                    PathRejection::FailedToDeserializePathParams(f) => match f.kind() {
                        K::ParseErrorAtKey { value, .. }
                        | K::ParseErrorAtIndex { value, .. }
                        | K::ParseError { value, .. } => Some(value.clone()),
                        _ => None,
                    },
                    _ => None,
                };
                let message = match value {
                    Some(v) => format!(
                        "`{}` in the path is not an id: ids are whole numbers from 0 to {}",
                        printable(&v),
                        i64::MAX
                    ),
                    None => "the path is not valid for this route".to_owned(),
                };
                ApiError::bad_request("bad_path", message)
            })
    }
}

/// An uploader id: a whole number from 0 to 2^63-1 (a negative one is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploaderId(pub i64);

impl<'de> Deserialize<'de> for UploaderId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if v < 0 {
            return Err(serde::de::Error::custom("uploader_id must not be negative"));
        }
        Ok(UploaderId(v))
    }
}

impl utoipa::PartialSchema for UploaderId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::Integer)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Int64,
            )))
            .minimum(Some(0))
            .description(Some("The chat backend's user id"))
            .into()
    }
}
impl utoipa::ToSchema for UploaderId {}

/// What an uploader id must be, for messages.
pub const UPLOADER_ID_IS: &str = "a whole number from 0 to 9223372036854775807";

/// A JSON body parsed into `T`, with a 400 `bad_json` message in our own words
/// that names the field at fault.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    parse_json_as("bad_json", body)
}

/// [`parse_json`] with another error code (`bad_body` where that is the contract).
pub fn parse_json_as<T: DeserializeOwned>(code: &'static str, body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        json_error(code, &path, e.into_inner())
    })?;
    de.end().map_err(|e| json_error(code, "", e))?;
    Ok(value)
}

fn json_error(code: &'static str, path: &str, inner: serde_json::Error) -> ApiError {
    let text = inner.to_string();
    let message = match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => format!(
            "the body is not valid JSON (line {}, column {})",
            inner.line(),
            inner.column()
        ),
        _ if text.starts_with("missing field") => {
            let name = text.split('`').nth(1).unwrap_or("?");
            format!("field `{name}` is required")
        }
        _ if text.starts_with("unknown field") => {
            let name = text.split('`').nth(1).unwrap_or("?");
            let known: Vec<String> = text
                .split('`')
                .skip(3)
                .step_by(2)
                .map(|k| format!("`{k}`"))
                .collect();
            format!(
                "unknown field `{}`; this route takes {}",
                printable(name),
                known.join(", ")
            )
        }
        _ if path == "uploader_id" => format!("field `uploader_id` must be {UPLOADER_ID_IS}"),
        _ if path.is_empty() || path == "." => {
            "the body must be a JSON object with the fields this route takes".to_owned()
        }
        _ => format!("field `{path}` has the wrong type or an invalid value"),
    };
    ApiError::bad_request(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct P {
        uploader_id: Option<UploaderId>,
        limit: Option<u32>,
    }
    impl QueryParams for P {
        const PARAMS: &'static [(&'static str, &'static str)] = &[
            ("uploader_id", UPLOADER_ID_IS),
            ("limit", "a whole number from 1 to 1000"),
        ];
    }

    #[test]
    fn disposition_filenames() {
        let name = |v: &'static str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(
                axum::http::header::CONTENT_DISPOSITION,
                axum::http::HeaderValue::from_static(v),
            );
            disposition_filename(&h)
        };
        assert_eq!(
            name("attachment; filename=\"a b.png\"").as_deref(),
            Some("a b.png")
        );
        assert_eq!(name("inline; filename=c.jpg").as_deref(), Some("c.jpg"));
        assert_eq!(
            name("attachment; filename=\"x\"; filename*=UTF-8''%C3%A9t%C3%A9.png").as_deref(),
            Some("été.png")
        );
        assert_eq!(name("attachment").as_deref(), None);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_credentials("Bearer abc"), Some("abc"));
        assert_eq!(bearer_credentials("bearer abc"), Some("abc"));
        assert_eq!(bearer_credentials("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_credentials("Basic abc"), None);
        assert_eq!(bearer_credentials("Bearer "), None);
        assert_eq!(bearer_credentials("Bearerabc"), None);
    }

    #[test]
    fn queries_are_refused_in_our_words() {
        let p: P = parse_query("uploader_id=7&limit=3").unwrap();
        assert_eq!((p.uploader_id, p.limit), (Some(UploaderId(7)), Some(3)));
        let e = parse_query::<P>("uploader=7").unwrap_err();
        assert_eq!(e.code, "bad_query");
        assert!(
            e.message.contains("unknown query parameter `uploader`"),
            "{}",
            e.message
        );
        let e = parse_query::<P>("uploader_id=-1").unwrap_err();
        assert!(
            e.message.contains("`uploader_id` must be a whole number"),
            "{}",
            e.message
        );
        let e = parse_query::<P>("uploader_id=abc").unwrap_err();
        assert!(
            e.message.contains("`uploader_id` must be a whole number"),
            "{}",
            e.message
        );
        let e = parse_query::<P>("limit=1&limit=2").unwrap_err();
        assert!(e.message.contains("more than once"), "{}", e.message);
    }

    #[test]
    fn json_errors_name_the_field() {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct B {
            uploader_id: UploaderId,
            ttl_secs: Option<u64>,
        }
        let m = |s: &str| parse_json::<B>(s.as_bytes()).unwrap_err().message;
        assert_eq!(
            m(r#"{"uploader_id": -1}"#),
            format!("field `uploader_id` must be {UPLOADER_ID_IS}")
        );
        assert_eq!(
            m(r#"{"uploader_id": "x"}"#),
            format!("field `uploader_id` must be {UPLOADER_ID_IS}")
        );
        assert_eq!(m(r#"{}"#), "field `uploader_id` is required");
        assert!(
            m(r#"{"uploader_id": 1, "tll": 3}"#)
                .starts_with("unknown field `tll`; this route takes `uploader_id`, `ttl_secs`")
        );
        assert_eq!(
            m(r#"{"uploader_id": 1, "ttl_secs": "x"}"#),
            "field `ttl_secs` has the wrong type or an invalid value"
        );
        assert!(m("{").starts_with("the body is not valid JSON"));
        assert!(m("[]").starts_with("the body must be a JSON object"));
    }
}
