//! The API contract's edges (issue #12): empty uploads, refusals that do not
//! wait for the body, client mistakes answered in our own words, RFC 9110
//! details (Bearer scheme, Range), and labels (types, charset).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn status_and_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Bug 2: an empty file is the client's mistake, the same 400 raw or multipart.
#[tokio::test]
async fn an_empty_upload_is_400_empty_upload_raw_or_multipart() {
    let app = TestApp::start().await;
    let (status, body) = upload_raw(&app.client, &app.base, 1, Vec::new()).await;
    assert_error(status, &body, 400, "empty_upload");
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(Vec::new()).file_name("empty.png"),
    );
    let (status, body) = send_json(
        app.client
            .post(app.url("/v1/media?uploader_id=1"))
            .multipart(form),
    )
    .await;
    assert_error(status, &body, 400, "empty_upload");
    // The same through a presigned URL.
    let url = presign_upload(&app.client, &app.base, json!({"uploader_id": 1})).await;
    let resp = app.client.put(&url).body(Vec::new()).send().await.unwrap();
    let (status, body) = status_and_json(resp).await;
    assert_error(status, &body, 400, "empty_upload");
    assert_eq!(tmp_files(&app.data), 0);
    assert!(blob_files(&app.data).is_empty());
}

/// Sends `head` and then `body_part`, keeps the connection open without
/// sending more, and returns how long the answer took and its text.
async fn answer_before_the_rest(base: &str, head: &str, body_part: &[u8]) -> (Duration, String) {
    let addr = base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(body_part).await.unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while !String::from_utf8_lossy(&buf).contains("}}") {
        match tokio::time::timeout_at(deadline, sock.read(&mut tmp)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&tmp[..n]),
            _ => break,
        }
    }
    let took = started.elapsed();
    // Lingering close: the daemon still reads what the client goes on sending.
    for _ in 0..4 {
        sock.write_all(&[0u8; 16 * 1024]).await.expect("still read");
    }
    (took, String::from_utf8_lossy(&buf).into_owned())
}

/// Bug 3: a body whose Content-Length is over the limit is refused at once
/// (413, `Connection: close`), not after the body was read.
#[tokio::test]
async fn an_upload_over_the_limit_by_content_length_is_refused_at_once() {
    let app = TestApp::start_with("[upload]\nmax_bytes = 1000000\n").await;
    let head = format!(
        "POST /v1/media?uploader_id=1 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 50000000\r\n\r\n",
        bearer()
    );
    let (took, text) = answer_before_the_rest(&app.base, &head, &[1u8; 64 * 1024]).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.to_lowercase().contains("connection: close"), "{text}");
    assert!(text.contains("\"too_large\""), "{text}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    // Multipart too.
    let head = format!(
        "POST /v1/media?uploader_id=1 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: multipart/form-data; boundary=XX\r\nContent-Length: 50000000\r\n\r\n",
        bearer()
    );
    let part = b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n";
    let (took, text) = answer_before_the_rest(&app.base, &head, part).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert_eq!(tmp_files(&app.data), 0);
}

/// Bug 3: a chunked body that passes the limit is refused as it passes it.
#[tokio::test]
async fn a_chunked_upload_passing_the_limit_is_refused_at_once() {
    let app = TestApp::start_with("[upload.family_max_bytes]\nimage = 102400\n").await;
    let (head, chunk) = chunked_png_upload(200 * 1024);
    let (took, text) = answer_before_the_rest(&app.base, &head, &chunk).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.to_lowercase().contains("connection: close"), "{text}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    wait_until(Duration::from_secs(5), "the staging file to go", || {
        tmp_files(&app.data) == 0
    })
    .await;
}

/// RFC 9110, 11.1: the auth scheme is case-insensitive.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = TestApp::start().await;
    for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
        let resp = app
            .client
            .get(app.url("/v1/media"))
            .header("authorization", format!("{scheme} {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{scheme}");
    }
}

/// Unknown, repeated or malformed parameters are refused with a message of
/// ours that names the parameter; a negative uploader id is refused.
#[tokio::test]
async fn client_mistakes_are_explained_in_our_words() {
    let app = TestApp::start().await;
    upload_ok(&app.client, &app.base, 7, unique_png(1)).await;
    for (path, want) in [
        ("/v1/media?uploader=7", "unknown query parameter `uploader`"),
        (
            "/v1/media?uploader_id=abc",
            "`uploader_id` must be a whole number",
        ),
        (
            "/v1/media?uploader_id=-3",
            "`uploader_id` must be a whole number",
        ),
        ("/v1/media?uploader_id=1&uploader_id=2", "more than once"),
        (
            "/v1/media?limit=x",
            "`limit` must be a whole number from 1 to 1000",
        ),
        (
            "/v1/media?corrupt=maybe",
            "`corrupt` must be `true` or `false`",
        ),
    ] {
        let (status, body) = get_json(&app.client, &app.url(path)).await;
        assert_error(status, &body, 400, "bad_query");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{path}: {message}");
        assert!(!message.contains("Failed to deserialize"), "{message}");
    }
    let (status, body) = upload_raw(&app.client, &app.base, -1, unique_png(2)).await;
    assert_error(status, &body, 400, "bad_query");
    let (status, body) = get_json(&app.client, &app.url("/v1/media/abc")).await;
    assert_error(status, &body, 400, "bad_path");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`abc` in the path is not an id"),
        "{message}"
    );
    assert!(!message.contains("Invalid URL"), "{message}");
    let (status, body) = get_json(&app.client, &app.url("/v1/uploaders/-1/usage")).await;
    assert_error(status, &body, 400, "bad_path");
    let (status, body) = post_json(
        &app.client,
        &app.url("/v1/upload-urls"),
        json!({"uploader_id": -5}),
    )
    .await;
    assert_error(status, &body, 400, "bad_json");
    assert_eq!(
        body["error"]["message"],
        "field `uploader_id` must be a whole number from 0 to 9223372036854775807"
    );
    let (status, body) = post_json(
        &app.client,
        &app.url("/v1/upload-urls"),
        json!({"uploader_id": 1, "ttl": 5}),
    )
    .await;
    assert_error(status, &body, 400, "bad_json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("unknown field `ttl`; this route takes `uploader_id`, `ttl_secs`"),
        "{body}"
    );
}

/// RFC 9110, 14.2: a Range header that does not parse is ignored (200, whole
/// body); a well-formed one outside the file is 416.
#[tokio::test]
async fn an_invalid_range_is_ignored_and_an_unsatisfiable_one_is_416() {
    let app = TestApp::start().await;
    let png = unique_png(3);
    let media = upload_ok(&app.client, &app.base, 1, png.clone()).await;
    let url = signed_url(
        &app.client,
        &app.base,
        media["id"].as_i64().unwrap(),
        json!({}),
    )
    .await;
    for range in ["bytes=abc", "items=0-3", "bytes=--1", "bytes="] {
        let resp = app
            .client
            .get(&url)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{range}");
        assert_eq!(
            resp.bytes().await.unwrap().as_ref(),
            png.as_slice(),
            "{range}"
        );
    }
    let resp = app
        .client
        .get(&url)
        .header("range", format!("bytes={}-", png.len()))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(resp).await;
    assert_error(status, &body, 416, "range_not_satisfiable");
}

/// The `file_url` of an upload, used as it is, says the signature is missing
/// and how to get one (still 403); an altered signature stays `invalid_signature`.
#[tokio::test]
async fn an_unsigned_file_url_says_the_signature_is_missing() {
    let app = TestApp::start().await;
    let media = upload_ok(&app.client, &app.base, 1, unique_png(4)).await;
    let file_url = media["file_url"].as_str().unwrap();
    let resp = app.client.get(app.url(file_url)).send().await.unwrap();
    let (status, body) = status_and_json(resp).await;
    assert_error(status, &body, 403, "missing_signature");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("POST /v1/media/{id}/url"),
        "{body}"
    );
    let signed = signed_url(
        &app.client,
        &app.base,
        media["id"].as_i64().unwrap(),
        json!({}),
    )
    .await;
    let resp = app.client.get(format!("{signed}x")).send().await.unwrap();
    assert_eq!(
        status_and_json(resp).await.1["error"]["code"],
        "invalid_signature"
    );
    let resp = app
        .client
        .put(app.url("/upload"))
        .body(unique_png(5))
        .send()
        .await
        .unwrap();
    assert_eq!(
        status_and_json(resp).await.1["error"]["code"],
        "missing_signature"
    );
}

/// M4A is `audio/mp4` (RFC 4337); text is served with its charset.
#[tokio::test]
async fn m4a_is_audio_mp4_and_text_is_served_with_a_charset() {
    let app = TestApp::start().await;
    let m4a = upload_ok(&app.client, &app.base, 1, testdata("audio/tone.m4a")).await;
    assert_eq!(m4a["file_type"], "audio/mp4");
    let text = upload_ok(&app.client, &app.base, 1, testdata("text/utf8.txt")).await;
    assert_eq!(text["file_type"], "text/plain");
    let url = signed_url(
        &app.client,
        &app.base,
        text["id"].as_i64().unwrap(),
        json!({}),
    )
    .await;
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "text/plain; charset=utf-8");
}

/// `docs/openapi.json` is what the code generates (`media-store openapi`).
#[test]
fn the_checked_in_openapi_description_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = media_store::http::openapi::spec_json();
    assert!(
        checked_in == generated,
        "docs/openapi.json differs from the description the code generates; \
         regenerate it with\n    cargo run -q -- openapi > docs/openapi.json\nand commit it"
    );
    let spec: Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
}

/// Every route of the router is described, and every described operation is
/// routed (a request to it never falls through to `no_route` or
/// `method_not_allowed`); `/openapi.json` serves the description without a token.
#[tokio::test]
async fn the_openapi_description_covers_every_route() {
    let app = TestApp::start().await;
    let resp = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "application/json");
    let spec: Value = resp.json().await.unwrap();
    let generated: Value = serde_json::from_str(&media_store::http::openapi::spec_json()).unwrap();
    assert_eq!(spec, generated);
    let paths = spec["paths"].as_object().unwrap();

    // The router's paths, from its source (axum cannot list its routes).
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/mod.rs"),
    )
    .unwrap();
    let mut routed: Vec<String> = source
        .split(".route(")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start();
            if let Some(lit) = rest.strip_prefix('"') {
                lit.split('"').next().map(str::to_owned)
            } else if rest.starts_with("routes::urls::UPLOAD_PATH") {
                Some(media_store::http::routes::urls::UPLOAD_PATH.to_owned())
            } else {
                panic!("a route path that is neither a literal nor UPLOAD_PATH: {rest:.60}")
            }
        })
        .collect();
    routed.sort();
    let mut described: Vec<String> = paths.keys().cloned().collect();
    described.sort();
    assert_eq!(
        routed, described,
        "routes in src/http/mod.rs vs the OpenAPI paths"
    );

    for (path, item) in paths {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "1" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            let Ok(m) = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()) else {
                continue;
            };
            if !["get", "head", "post", "put", "delete", "options"].contains(&method.as_str()) {
                continue;
            }
            let resp = app
                .client
                .request(m, app.url(&concrete))
                .header("authorization", bearer())
                .header("origin", "http://example.test")
                .header("access-control-request-method", "GET")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert!(
                status != 405 && body["error"]["code"] != "no_route",
                "{method} {path}: {status} {body}"
            );
        }
    }
}

/// A presigned upload URL works once by default (a failed upload gives it
/// back); `signing.single_use_uploads = false` restores reuse until expiry.
/// A raw PUT names its file in `Content-Disposition`.
#[tokio::test]
async fn presigned_upload_urls_are_single_use_and_carry_a_filename() {
    let app = TestApp::start().await;
    let url = presign_upload(&app.client, &app.base, json!({"uploader_id": 3})).await;
    // A refused upload does not use the URL up.
    let resp = app
        .client
        .put(&url)
        .body(b"\x00\x01\x02\x03garbage\xff".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = app
        .client
        .put(&url)
        .header(
            "content-disposition",
            "attachment; filename*=UTF-8''Gr%C3%BC%C3%9Fe.png; filename=\"x.png\"",
        )
        .body(unique_png(30))
        .send()
        .await
        .unwrap();
    let (status, media) = status_and_json(resp).await;
    assert_eq!(status, 201, "{media}");
    assert_eq!(media["original_name"], "Grüße.png");
    let resp = app
        .client
        .put(&url)
        .body(unique_png(31))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(resp).await;
    assert_error(status, &body, 410, "url_used");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("POST /v1/upload-urls")
    );
    // The service upload takes the header too.
    let (status, media) = send_json(
        app.client
            .post(app.url("/v1/media?uploader_id=3"))
            .header("content-disposition", "attachment; filename=\"../cat.png\"")
            .body(unique_png(32)),
    )
    .await;
    assert_eq!(status, 201, "{media}");
    assert_eq!(media["original_name"], "cat.png");
    app.stop().await;

    let app = TestApp::start_with("[signing]\nsingle_use_uploads = false\n").await;
    let url = presign_upload(&app.client, &app.base, json!({"uploader_id": 3})).await;
    for seed in 40..43 {
        let resp = app
            .client
            .put(&url)
            .body(unique_png(seed))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
}
