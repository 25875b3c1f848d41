//! Signed downloads, presigned uploads and CORS against the in-process server
//! (and the real binary for key rotation and `sign-url`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use media_store::clock::ManualClock;
use serde_json::{Value, json};

use crate::harness::*;

const T0: i64 = 1_900_000_000;

/// Uploads and returns the media JSON.
async fn upload(app_base: &str, client: &reqwest::Client, bytes: Vec<u8>, filename: &str) -> Value {
    let resp = client
        .post(format!(
            "{app_base}/v1/media?uploader_id=1&filename={filename}"
        ))
        .header("authorization", bearer())
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json().await.unwrap()
}

async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn signed_download_serves_the_bytes_with_safe_headers() {
    let app = TestApp::start().await;
    let png = testdata("png/rgb8.png");
    let media = upload(&app.base, &app.client, png.clone(), "Grüße%20photo.png").await;
    let id = media["id"].as_i64().unwrap();
    let url = signed_url(&app.client, &app.base, id, json!({"ttl_secs": 600})).await;

    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "image/png");
    assert_eq!(header(&resp, "content-length"), png.len().to_string());
    assert_eq!(header(&resp, "accept-ranges"), "bytes");
    assert_eq!(
        header(&resp, "etag"),
        format!("\"{}\"", media["blake3"].as_str().unwrap())
    );
    let cache = header(&resp, "cache-control").to_owned();
    let max_age: i64 = cache
        .strip_prefix("private, max-age=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((590..=600).contains(&max_age), "{cache}");
    assert_eq!(header(&resp, "x-content-type-options"), "nosniff");
    assert_eq!(header(&resp, "content-security-policy"), "sandbox");
    assert_eq!(
        header(&resp, "content-disposition"),
        "inline; filename=\"Gr__e photo.png\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe%20photo.png"
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), png.as_slice());

    // HEAD: the same headers, no body.
    let resp = app.client.head(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-length"), png.len().to_string());
    assert!(resp.bytes().await.unwrap().is_empty());

    // Attachment on request, and always for types that are not safe inline.
    let url = signed_url(
        &app.client,
        &app.base,
        id,
        json!({"disposition": "attachment"}),
    )
    .await;
    assert!(url.contains("dl=1"));
    let resp = app.client.get(&url).send().await.unwrap();
    assert!(header(&resp, "content-disposition").starts_with("attachment; "));
    let text = upload(
        &app.base,
        &app.client,
        b"just some words\n".to_vec(),
        "notes.txt",
    )
    .await;
    let url = signed_url(
        &app.client,
        &app.base,
        text["id"].as_i64().unwrap(),
        json!({}),
    )
    .await;
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(
        header(&resp, "content-disposition"),
        "attachment; filename=\"notes.txt\"; filename*=UTF-8''notes.txt"
    );
}

#[tokio::test]
async fn ranges_and_conditional_requests() {
    let app = TestApp::start().await;
    // Larger than the small-body cut-off, so the streamed path is exercised too.
    for len in [5_000usize, 300_000] {
        let bytes = fake_mp4(len, len as u64);
        let media = upload(&app.base, &app.client, bytes.clone(), "v.mp4").await;
        let url = signed_url(
            &app.client,
            &app.base,
            media["id"].as_i64().unwrap(),
            json!({}),
        )
        .await;
        let etag = format!("\"{}\"", media["blake3"].as_str().unwrap());
        let get = |range: &str| {
            app.client
                .get(&url)
                .header("range", range.to_owned())
                .send()
        };

        let resp = get("bytes=100-1099").await.unwrap();
        assert_eq!(resp.status(), 206);
        assert_eq!(
            header(&resp, "content-range"),
            format!("bytes 100-1099/{len}")
        );
        assert_eq!(header(&resp, "content-length"), "1000");
        assert_eq!(resp.bytes().await.unwrap().as_ref(), &bytes[100..1100]);

        let resp = get("bytes=-10").await.unwrap();
        assert_eq!(resp.status(), 206);
        assert_eq!(resp.bytes().await.unwrap().as_ref(), &bytes[len - 10..]);

        let resp = get(&format!("bytes={}-", len - 1)).await.unwrap();
        assert_eq!(resp.status(), 206);
        assert_eq!(resp.bytes().await.unwrap().as_ref(), &bytes[len - 1..]);

        let resp = get(&format!("bytes={len}-")).await.unwrap();
        assert_eq!(resp.status(), 416);
        assert_eq!(header(&resp, "content-range"), format!("bytes */{len}"));
        assert_eq!(error_code(resp).await.1, "range_not_satisfiable");

        // Several ranges: the whole file (RFC 9110 allows ignoring Range).
        let resp = get("bytes=0-1,10-20").await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap().len(), len);

        // If-Range with another validator: the whole file; with ours: the range.
        let resp = app
            .client
            .get(&url)
            .header("range", "bytes=0-9")
            .header("if-range", "\"other\"")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let resp = app
            .client
            .get(&url)
            .header("range", "bytes=0-9")
            .header("if-range", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206);

        // If-None-Match: 304 with the validators and no body.
        let resp = app
            .client
            .get(&url)
            .header("if-none-match", format!("\"x\", {etag}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 304);
        assert_eq!(header(&resp, "etag"), etag);
        assert!(header(&resp, "cache-control").starts_with("private, max-age="));
        assert!(resp.bytes().await.unwrap().is_empty());
        let resp = app
            .client
            .get(&url)
            .header("if-none-match", "\"x\"")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap().as_ref(), bytes.as_slice());
    }
}

#[tokio::test]
async fn any_change_to_a_signed_url_is_refused() {
    let app = TestApp::start().await;
    let a = upload(&app.base, &app.client, unique_png(1), "a.png").await;
    let b = upload(&app.base, &app.client, unique_png(2), "b.png").await;
    let (a_id, b_id) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());
    let url = signed_url(&app.client, &app.base, a_id, json!({})).await;
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 200);

    let (path, query) = url.split_once('?').unwrap();
    let mut tampered = vec![
        // Another media id with the same query.
        format!("{}/files/{b_id}?{query}", app.base),
        format!("{path}?{query}&variant=original"),
        format!("{path}?{query}&dl=1"),
        format!("{path}?{}", query.replace("kid=", "kid=x")),
        format!("{path}?{}", query.split("&sig=").next().unwrap()),
        format!("{path}?"),
        path.to_owned(),
    ];
    // Every single changed character of the query.
    for i in 0..query.len() {
        let mut q = query.as_bytes().to_vec();
        q[i] = if q[i] == b'A' { b'B' } else { b'A' };
        tampered.push(format!("{path}?{}", String::from_utf8(q).unwrap()));
    }
    for bad in tampered {
        let (status, code) = error_code(app.client.get(&bad).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (403, "invalid_signature"), "{bad}");
    }
    // A signed URL cannot be used to upload.
    let resp = app
        .client
        .put(&url)
        .body(unique_png(3))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn expired_urls_are_gone_and_cache_lifetime_follows_the_url() {
    let clock = Arc::new(ManualClock::new(T0));
    let app = TestApp::start_with_clock("", clock.clone()).await;
    let media = upload(&app.base, &app.client, unique_png(4), "p.png").await;
    let url = signed_url(
        &app.client,
        &app.base,
        media["id"].as_i64().unwrap(),
        json!({"ttl_secs": 100}),
    )
    .await;
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(header(&resp, "cache-control"), "private, max-age=100");
    clock.advance(70);
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(header(&resp, "cache-control"), "private, max-age=30");
    clock.advance(30);
    let (status, code) = error_code(app.client.get(&url).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (410, "url_expired"));
}

#[tokio::test]
async fn issuing_urls_validates_its_input() {
    let app = TestApp::start_with("[signing]\nmax_ttl_secs = 1000\ndefault_ttl_secs = 100\n").await;
    let media = upload(&app.base, &app.client, unique_png(5), "p.png").await;
    let id = media["id"].as_i64().unwrap();
    let url = |id: i64| format!("{}/v1/media/{id}/url", app.base);
    let cases = [
        (json!({"ttl_secs": 1001}), 400, "bad_ttl"),
        (json!({"ttl_secs": 0}), 400, "bad_ttl"),
        (json!({"variant": "thumb"}), 400, "unknown_variant"),
        (json!({"disposition": "sideways"}), 400, "bad_disposition"),
        (json!({"ttl": 5}), 400, "bad_json"),
    ];
    for (body, status, code) in cases {
        let (s, b) = post_json(&app.client, &url(id), body.clone()).await;
        assert_eq!(
            (s, b["error"]["code"].as_str().unwrap()),
            (status, code),
            "{body}"
        );
    }
    let (s, b) = post_json(&app.client, &url(id + 100), json!({})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str().unwrap()),
        (404, "media_not_found")
    );
    // No body at all: the defaults.
    let resp = app
        .client
        .post(url(id))
        .header("authorization", bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The service token is required.
    let resp = app
        .client
        .post(url(id))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn deleted_media_is_not_found_at_once_even_with_a_valid_cached_url() {
    let app = TestApp::start().await;
    let media = upload(&app.base, &app.client, unique_png(6), "p.png").await;
    let id = media["id"].as_i64().unwrap();
    let url = signed_url(&app.client, &app.base, id, json!({})).await;
    // Served (and so cached) before the delete...
    for _ in 0..3 {
        assert_eq!(app.client.get(&url).send().await.unwrap().status(), 200);
    }
    assert_eq!(delete_media(&app.client, &app.base, id).await, 204);
    // ...and gone from the very next request.
    let (status, code) = error_code(app.client.get(&url).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (404, "media_not_found"));
}

/// Another process (`media-store gc`, retention) deletes a media row and its
/// blob while the daemon still has the row cached: the download becomes a 404
/// within the cache's bound and is never a 500 (the streamed case used to be),
/// for small (cached body) and large (streamed) blobs alike.
#[tokio::test]
async fn media_deleted_by_another_process_is_not_found_even_while_cached() {
    let app = TestApp::start().await;
    for (seed, content) in [(1u64, unique_png(61)), (2, fake_mp4(300_000, 62))] {
        let media = upload(&app.base, &app.client, content.clone(), "f").await;
        let id = media["id"].as_i64().unwrap();
        let url = signed_url(&app.client, &app.base, id, json!({})).await;
        let resp = app.client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "round {seed}");
        // What GC does in its own process: the row, then (count 0) the file.
        let mut index = media_store::index::Maintenance::open_existing(&app.data).unwrap();
        let hash = blake3::hash(&content);
        index
            .immediate(|tx| {
                tx.delete_media(id, 0)?.expect("row existed");
                std::fs::remove_file(blob_path(&app.data, &content)).unwrap();
                tx.forget_zero_count_blob(&hash)
            })
            .unwrap();
        // Rows (and small bodies) cached from before are trusted for at most 1 s
        // after another process's change (storage-layout.md, "Serving"); never a 5xx.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let (status, code) = error_code(app.client.get(&url).send().await.unwrap()).await;
            assert!(status < 500, "round {seed}: {status} {code}");
            if status == 404 {
                assert_eq!(code, "media_not_found");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {seed}: still {status} after 3 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn generated_key_is_private_and_survives_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start_in(dir.path(), "").await;
    let key = dir.path().join("signing-key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let media = upload(&app.base, &app.client, unique_png(7), "p.png").await;
    let id = media["id"].as_i64().unwrap();
    let query = signed_url(&app.client, &app.base, id, json!({})).await;
    let query = query.split_once('?').unwrap().1.to_owned();
    app.stop().await;
    let app = TestApp::start_in(dir.path(), "").await;
    let resp = app
        .client
        .get(app.url(&format!("/files/{id}?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

fn key_config(keys: &[(&str, u8)], active: &str) -> String {
    use base64::Engine as _;
    let mut toml = format!("[signing]\nactive_kid = \"{active}\"\n[signing.keys]\n");
    for (kid, byte) in keys {
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([*byte; 32]);
        toml.push_str(&format!("{kid} = \"{secret}\"\n"));
    }
    toml
}

#[tokio::test]
async fn keys_rotate_through_a_live_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = (dir.path().join("data"), dir.path().join("run"));
    let d = TestDaemon::start(&data, &run, &key_config(&[("k1", 1)], "k1"));
    let media = upload(&d.base, &d.client, unique_png(8), "p.png").await;
    let id = media["id"].as_i64().unwrap();
    let old = signed_url(&d.client, &d.base, id, json!({})).await;
    assert!(old.contains("kid=k1"));

    // Add k2 and make it active: new URLs use k2, old ones keep working.
    d.replace_config(&key_config(&[("k1", 1), ("k2", 2)], "k2"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let new = loop {
        let url = signed_url(&d.client, &d.base, id, json!({})).await;
        if url.contains("kid=k2") {
            break url;
        }
        assert!(
            Instant::now() < deadline,
            "reload not applied:\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(d.client.get(&old).send().await.unwrap().status(), 200);
    assert_eq!(d.client.get(&new).send().await.unwrap().status(), 200);

    // Retire k1: its URLs are refused, k2's still served.
    d.replace_config(&key_config(&[("k2", 2)], "k2"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = d.client.get(&old).send().await.unwrap().status();
        if status == 403 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            Instant::now() < deadline,
            "reload not applied:\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(d.client.get(&new).send().await.unwrap().status(), 200);

    // A key too short to be safe is refused as a whole config; k2 stays.
    d.replace_config("[signing]\nactive_kid = \"k3\"\n[signing.keys]\nk3 = \"c2hvcnQ\"\n");
    d.wait_for_log("configuration not reloaded", Duration::from_secs(10))
        .await;
    assert_eq!(d.client.get(&new).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn sign_url_cli_prints_a_url_the_daemon_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start_in(dir.path(), "").await;
    let media = upload(&app.base, &app.client, unique_png(9), "p.png").await;
    let id = media["id"].as_i64().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(TestDaemon::binary())
            .arg("--data-dir")
            .arg(dir.path())
            .arg("sign-url")
            .args(args)
            .env("MEDIA_STORE_API_TOKEN", TOKEN)
            .output()
            .unwrap()
    };
    let out = run(&[&id.to_string(), "--ttl", "120"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let url = printed["url"].as_str().unwrap();
    assert!(printed["expires_at"].is_string());
    let resp = app.client.get(app.url(url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let max_age: i64 = header(&resp, "cache-control")
        .strip_prefix("private, max-age=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((100..=120).contains(&max_age), "{max_age}");
    // Unknown media and unknown variants are errors (exit 2).
    assert_eq!(run(&["999"]).status.code(), Some(2));
    assert_eq!(
        run(&[&id.to_string(), "--variant", "thumb"]).status.code(),
        Some(2)
    );
}

#[tokio::test]
async fn presigned_uploads_take_raw_and_multipart_bodies_without_the_token() {
    let app = TestApp::start().await;
    let url = presign_upload(
        &app.client,
        &app.base,
        json!({"uploader_id": 7, "ttl_secs": 300, "max_bytes": 100000}),
    )
    .await;
    assert!(url.contains("uploader_id=7") && url.contains("max_bytes=100000"));

    let png = unique_png(10);
    let resp = app.client.put(&url).body(png.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["uploader_id"], 7);
    assert_eq!(body["size"], png.len());
    // Issue #14: no `deduplicated` in presigned answers (no cross-user oracle).
    assert!(body.get("deduplicated").is_none(), "{body}");

    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(unique_png(11)).file_name("holiday.png"),
    );
    let resp = app.client.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["original_name"], "holiday.png");
    assert_eq!(body["uploader_id"], 7);
}

#[tokio::test]
async fn presigned_uploads_are_bound_by_their_signature_and_limits() {
    let clock = Arc::new(ManualClock::new(T0));
    let app = TestApp::start_with_clock("", clock.clone()).await;
    let url = presign_upload(
        &app.client,
        &app.base,
        json!({"uploader_id": 7, "ttl_secs": 300, "max_bytes": 3000}),
    )
    .await;

    // Altered uploader or limit: refused.
    for bad in [
        url.replace("uploader_id=7", "uploader_id=8"),
        url.replace("max_bytes=3000", "max_bytes=100000"),
    ] {
        let resp = app
            .client
            .put(&bad)
            .body(unique_png(12))
            .send()
            .await
            .unwrap();
        let (status, code) = error_code(resp).await;
        assert_eq!((status, code.as_str()), (403, "invalid_signature"), "{bad}");
    }
    // The upload URL's query on the download path is no download URL.
    let resp = app
        .client
        .get(url.replace("/upload?", "/files/1?"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "no media 1 yet");
    // Over max_bytes: declared length, and a chunked body with no length.
    let big = fake_mp4(5000, 1);
    let resp = app.client.put(&url).body(big.clone()).send().await.unwrap();
    assert_eq!(error_code(resp).await, (413, "too_large".to_owned()));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(700).map(|c| Ok(c.to_vec())).collect();
    let resp = app
        .client
        .put(&url)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (413, "too_large".to_owned()));
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(big).file_name("v.mp4"),
    );
    let resp = app.client.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(error_code(resp).await, (413, "too_large".to_owned()));
    assert_eq!(tmp_files(&app.data), 0);

    // Within the limit it works; after expiry it is gone.
    let small = testdata("png/gray1.png");
    assert!(small.len() < 3000);
    assert_eq!(
        app.client
            .put(&url)
            .body(small.clone())
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    clock.advance(300);
    let resp = app.client.put(&url).body(small).send().await.unwrap();
    assert_eq!(error_code(resp).await, (410, "url_expired".to_owned()));

    // Issuing checks its input.
    for (body, code) in [
        (json!({"ttl_secs": 300}), "bad_json"),
        (json!({"uploader_id": 1, "max_bytes": 0}), "bad_max_bytes"),
        (
            json!({"uploader_id": 1, "max_bytes": 1u64 << 40}),
            "bad_max_bytes",
        ),
        (json!({"uploader_id": 1, "ttl_secs": 1u64 << 40}), "bad_ttl"),
    ] {
        let (status, resp) = post_json(&app.client, &app.url("/v1/upload-urls"), body).await;
        assert_eq!(
            (status, resp["error"]["code"].as_str().unwrap()),
            (400, code)
        );
    }
}

#[tokio::test]
async fn cors_answers_allowed_origins_only_and_never_on_the_service_api() {
    let app = TestApp::start_with("[cors]\nallowed_origins = [\"http://chat.test\"]\n").await;
    let media = upload(&app.base, &app.client, unique_png(13), "p.png").await;
    let url = signed_url(
        &app.client,
        &app.base,
        media["id"].as_i64().unwrap(),
        json!({}),
    )
    .await;
    let preflight =
        |url: String, origin: &'static str, method: &'static str, headers: &'static str| {
            app.client
                .request(reqwest::Method::OPTIONS, url)
                .header("origin", origin)
                .header("access-control-request-method", method)
                .header("access-control-request-headers", headers)
                .send()
        };
    let resp = preflight(
        app.url("/upload?x=1"),
        "http://chat.test",
        "PUT",
        "content-type",
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        header(&resp, "access-control-allow-origin"),
        "http://chat.test"
    );
    assert!(header(&resp, "access-control-allow-methods").contains("PUT"));
    assert!(header(&resp, "access-control-allow-headers").contains("content-type"));
    assert_eq!(header(&resp, "access-control-max-age"), "600");
    let resp = preflight(url.clone(), "http://chat.test", "GET", "range")
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.headers().contains_key("access-control-allow-origin"));

    // Disallowed origin, method or header: no CORS headers.
    for resp in [
        preflight(url.clone(), "http://evil.test", "GET", "")
            .await
            .unwrap(),
        preflight(url.clone(), "http://chat.test", "DELETE", "")
            .await
            .unwrap(),
        preflight(url.clone(), "http://chat.test", "GET", "authorization")
            .await
            .unwrap(),
    ] {
        assert_eq!(resp.status(), 204);
        assert!(!resp.headers().contains_key("access-control-allow-origin"));
    }

    // Actual requests: the origin is echoed and the download headers exposed.
    let resp = app
        .client
        .get(&url)
        .header("origin", "http://chat.test")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&resp, "access-control-allow-origin"),
        "http://chat.test"
    );
    let exposed = header(&resp, "access-control-expose-headers").to_ascii_lowercase();
    for h in ["etag", "content-range", "content-length", "accept-ranges"] {
        assert!(exposed.contains(h), "{exposed}");
    }
    let resp = app
        .client
        .get(&url)
        .header("origin", "http://evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("access-control-allow-origin"));

    // The service API has no CORS at all.
    let resp = preflight(app.url("/v1/media"), "http://chat.test", "POST", "")
        .await
        .unwrap();
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
    // Not a preflight answer (204) but the API's own: OPTIONS is no method of it.
    assert_eq!(resp.status(), 405);
    let resp = app
        .client
        .get(app.url("/v1/media"))
        .header("authorization", bearer())
        .header("origin", "http://chat.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn a_refused_upload_waiting_for_100_continue_is_answered_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start().await;
    let url = presign_upload(
        &app.client,
        &app.base,
        json!({"uploader_id": 7, "max_bytes": 1000}),
    )
    .await;
    let path = url.strip_prefix(&app.base).unwrap();
    let addr = app.base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    // The body is never sent and the connection stays open: the answer must
    // be the 413 itself, not `100 Continue` and not a wait.
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), sock.read(&mut buf))
        .await
        .expect("answered without the body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}
