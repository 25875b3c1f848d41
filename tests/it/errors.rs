//! Every client mistake gets its documented 4xx with a JSON error body.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn missing_or_wrong_token_is_401() {
    let app = TestApp::start().await;
    let png = testdata("png/gray8.png");
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Basic abc"),
        Some("Bearer "),
    ] {
        let mut req = app
            .client
            .post(app.url("/v1/media?uploader_id=1"))
            .body(png.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        assert_error(status, &resp.json().await.unwrap(), 401, "unauthorized");
    }
    let resp = app.client.get(app.url("/v1/media")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(tmp_files(&app.data), 0);
    assert!(blob_files(&app.data).is_empty());
}

#[tokio::test]
async fn bad_parameters_are_400() {
    let app = TestApp::start().await;
    let png = testdata("png/gray8.png");
    let post = |q: &str| {
        app.client
            .post(app.url(&format!("/v1/media{q}")))
            .header("authorization", bearer())
            .body(png.clone())
            .send()
    };
    for (q, code) in [
        ("", "missing_uploader_id"),
        ("?uploader_id=abc", "bad_query"),
        ("?uploader_id=99999999999999999999", "bad_query"),
    ] {
        let resp = post(q).await.unwrap();
        let status = resp.status().as_u16();
        assert_error(status, &resp.json().await.unwrap(), 400, code);
    }
    for (q, code) in [
        ("?limit=0", "bad_limit"),
        ("?limit=5000", "bad_limit"),
        ("?type=image", "bad_type"),
        ("?since=yesterday", "bad_time"),
        ("?cursor=xyz", "bad_cursor"),
        ("?uploader_id=x", "bad_query"),
    ] {
        let (status, body) = get_json(&app.client, &app.url(&format!("/v1/media{q}"))).await;
        assert_error(status, &body, 400, code);
    }
    let (status, body) = get_json(&app.client, &app.url("/v1/media/notanumber")).await;
    assert_error(status, &body, 400, "bad_path");
    let (status, body) = get_json(&app.client, &app.url("/v1/media/12345")).await;
    assert_error(status, &body, 404, "media_not_found");
}

#[tokio::test]
async fn malformed_multipart_is_400() {
    let app = TestApp::start().await;
    let send = |content_type: &'static str, body: &'static str| {
        app.client
            .post(app.url("/v1/media?uploader_id=1"))
            .header("authorization", bearer())
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let resp = send(
        "multipart/form-data; boundary=XX",
        "--XX\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
    )
    .await
    .unwrap();
    let status = resp.status().as_u16();
    assert_error(status, &resp.json().await.unwrap(), 400, "bad_multipart");
    let resp = send("multipart/form-data", "no boundary").await.unwrap();
    let status = resp.status().as_u16();
    assert_error(status, &resp.json().await.unwrap(), 400, "bad_multipart");
    let resp = send(
        "multipart/form-data; boundary=XX",
        "--XX\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nabc\r\n--XX--\r\n",
    )
    .await
    .unwrap();
    let status = resp.status().as_u16();
    assert_error(
        status,
        &resp.json().await.unwrap(),
        400,
        "missing_file_field",
    );
    assert_eq!(tmp_files(&app.data), 0);
}

#[tokio::test]
async fn unrecognised_or_refused_types_are_415() {
    let app = TestApp::start().await;
    let garbage: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for (body, code) in [
        (garbage, "type_unrecognised"),
        (testdata("svg/benign.svg"), "type_not_allowed"),
        (
            b"<!DOCTYPE html><script>alert(1)</script>".to_vec(),
            "type_not_allowed",
        ),
        (elf(), "type_not_allowed"),
    ] {
        let (status, body) = upload_raw(&app.client, &app.base, 1, body).await;
        assert_error(status, &body, 415, code);
    }
    assert_eq!(tmp_files(&app.data), 0);
    assert!(blob_files(&app.data).is_empty());
}

fn elf() -> Vec<u8> {
    let mut v = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00".to_vec();
    v.resize(256, 0);
    v
}

/// Writes a request by hand so the test controls exactly what is sent, and reads
/// the response the server sends before the body is complete.
async fn raw_request(base: &str, head: &str, body_chunks: usize, chunk: &[u8]) -> (u16, Value) {
    let addr = base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = sock.into_split();
    let chunk = chunk.to_vec();
    let writer = tokio::spawn(async move {
        for _ in 0..body_chunks {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        let mut tmp = [0u8; 4096];
        loop {
            match rd.read(&mut tmp).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
    })
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test]
async fn too_large_by_content_length_is_413_before_the_body_is_read() {
    let app = TestApp::start_with("[upload]\nmax_bytes = 1000000\n").await;
    let head = format!(
        "POST /v1/media?uploader_id=1 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 1000001\r\n\r\n",
        bearer()
    );
    // Send no body at all: the answer must come from the header alone.
    let (status, body) = raw_request(&app.base, &head, 0, b"").await;
    assert_error(status, &body, 413, "too_large");
    assert_eq!(tmp_files(&app.data), 0);
}

#[tokio::test]
async fn too_large_while_streaming_is_413_and_the_staging_file_is_removed() {
    // Images may be at most 100 KiB here; the stream declares no length.
    let app = TestApp::start_with("[upload.family_max_bytes]\nimage = 102400\n").await;
    // A PNG header then endless filler, as HTTP chunks of 16 KiB.
    let (head, chunk) = chunked_png_upload(16 * 1024);
    let (status, body) = raw_request(&app.base, &head, 1000, &chunk).await;
    assert_error(status, &body, 413, "too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image/png")
    );
    // The staging file goes as the refusal is sent, maybe just after it.
    wait_until(Duration::from_secs(5), "the staging file to go", || {
        tmp_files(&app.data) == 0
    })
    .await;
    assert!(blob_files(&app.data).is_empty());
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = TestApp::start().await;
    let resp = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_route");
    let resp = app
        .client
        .put(app.url("/v1/media"))
        .header("authorization", bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}
