//! Range and conditional requests on a signed download, through the real
//! router: any `Range`, `If-Range` and `If-None-Match` get no 5xx; a 206 has
//! a `Content-Range` that matches its body and the stored bytes.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use media_store_fuzz::{App, TOKEN, app, check_answer};

const CONTENT: &[u8] = include_bytes!("../../tests/data/png/gray8.png");

/// Uploads the content once; returns its signed download path.
fn signed_path(app: &App) -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let (response, body) = app.send(
            Request::post("/v1/media?uploader_id=1")
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::from(CONTENT))
                .unwrap(),
        );
        assert_eq!(response.status(), 201);
        let media: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let id = media["id"].as_i64().unwrap();
        let (response, body) = app.send(
            Request::post(format!("/v1/media/{id}/url"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .unwrap(),
        );
        assert_eq!(response.status(), 200);
        let url: serde_json::Value = serde_json::from_slice(&body).unwrap();
        url["url"].as_str().unwrap().to_owned()
    })
}

fuzz_target!(|data: &[u8]| {
    let app = app();
    let path = signed_path(app);
    let etag = format!("\"{}\"", blake3::hash(CONTENT).to_hex());
    let mut fields = data.splitn(3, |&b| b == b'\n');
    let range = fields.next().unwrap_or(&[]);
    let if_range = fields.next();
    let if_none_match = fields.next();
    let mut request = Request::get(path);
    if let Ok(v) = HeaderValue::from_bytes(range) {
        request = request.header("range", v);
    }
    if let Some(v) = if_range {
        // `E` stands for the current ETag, so matching validators are reached.
        let v = if v == b"E" { etag.as_bytes() } else { v };
        if let Ok(v) = HeaderValue::from_bytes(v) {
            request = request.header("if-range", v);
        }
    }
    if let Some(v) = if_none_match {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            request = request.header("if-none-match", v);
        }
    }
    let (response, body) = app.send(request.body(Body::empty()).unwrap());
    check_answer(&response, &body);
    match response.status().as_u16() {
        200 => assert_eq!(&body[..], CONTENT),
        206 => {
            let cr = response.headers()["content-range"].to_str().unwrap();
            let (range, total) = cr
                .strip_prefix("bytes ")
                .and_then(|r| r.split_once('/'))
                .unwrap_or_else(|| panic!("{cr}"));
            assert_eq!(total, CONTENT.len().to_string());
            let (start, end) = range.split_once('-').unwrap();
            let (start, end): (usize, usize) = (start.parse().unwrap(), end.parse().unwrap());
            assert!(start <= end && end < CONTENT.len(), "{cr}");
            assert_eq!(&body[..], &CONTENT[start..=end], "{cr}");
        }
        304 | 416 => {}
        other => panic!("unexpected {other} for a valid signed URL"),
    }
});
