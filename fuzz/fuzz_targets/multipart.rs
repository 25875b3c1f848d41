//! The multipart upload path, end to end through the real router: any form
//! body gets an answer that is no 5xx, and a refusal is the JSON envelope.
#![no_main]

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use media_store_fuzz::{TOKEN, app, check_answer};

fuzz_target!(|data: &[u8]| {
    let app = app();
    // The first byte picks the framing the rest is wrapped in.
    let (mode, body) = data.split_first().unwrap_or((&0, &[]));
    let body = match mode % 3 {
        // The body as it is: framing, part headers and content all fuzzed.
        0 => body.to_vec(),
        // A well-framed `file` part with fuzzed content.
        1 => {
            let mut b = b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n".to_vec();
            b.extend_from_slice(body);
            b.extend_from_slice(b"\r\n--XX--\r\n");
            b
        }
        // Fuzzed part headers before a small PNG.
        _ => {
            let mut b = b"--XX\r\n".to_vec();
            b.extend_from_slice(body);
            b.extend_from_slice(b"\r\n\r\n\x89PNG\r\n\x1a\n\r\n--XX--\r\n");
            b
        }
    };
    let request = Request::post("/v1/media?uploader_id=1")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "multipart/form-data; boundary=XX")
        .body(Body::from(body))
        .expect("request");
    let (response, bytes) = app.send(request);
    check_answer(&response, &bytes);
});
