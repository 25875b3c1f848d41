//! The shipped nginx config in front of the daemon with `serve.nginx_accel`:
//! a real nginx, started by the harness on a random loopback port.

use serde_json::{Value, json};

use crate::harness::nginx::Nginx;
use crate::harness::*;

const ACCEL: &str =
    "[serve]\nnginx_accel = true\n[cors]\nallowed_origins = [\"http://chat.test\"]\n";

/// `POST /v1/media?{query}` through nginx with the service token; expects 201.
async fn upload_through(
    client: &reqwest::Client,
    nginx: &Nginx,
    query: &str,
    body: &[u8],
) -> Value {
    let resp = client
        .post(nginx.url(&format!("/v1/media?{query}")))
        .header("authorization", bearer())
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", nginx.error_log());
    resp.json().await.unwrap()
}

#[tokio::test]
async fn nginx_serves_verified_downloads_with_x_accel_redirect() {
    let app = TestApp::start_with(ACCEL).await;
    let nginx = Nginx::start(
        app.base.trim_start_matches("http://"),
        &app.data.join("blobs"),
    );
    let client = &app.client;

    // Upload through nginx (service API).
    let video = testdata("video/h264_aac_faststart.mp4");
    let media = upload_through(client, &nginx, "uploader_id=3&filename=clip.mp4", &video).await;
    let id = media["id"].as_i64().unwrap();
    let etag = format!("\"{}\"", media["blake3"].as_str().unwrap());
    let path = sign(client, &nginx.base, id).await;

    // The daemon alone answers with the redirect and no body...
    let direct = client.get(app.url(&path)).send().await.unwrap();
    let accel = header(&direct, "x-accel-redirect").to_owned();
    let hex = media["blake3"].as_str().unwrap();
    assert_eq!(accel, format!("/_blobs/{}/{}/{hex}", &hex[..2], &hex[2..4]));
    assert!(direct.bytes().await.unwrap().is_empty());

    // ...so the bytes a client gets through nginx were sent by nginx.
    let resp = client
        .get(nginx.url(&path))
        .header("origin", "http://chat.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", nginx.error_log());
    assert!(resp.headers().get("x-accel-redirect").is_none());
    assert_eq!(header(&resp, "content-type"), "video/mp4");
    assert_eq!(header(&resp, "content-length"), video.len().to_string());
    assert_eq!(header(&resp, "etag"), etag);
    assert_eq!(header(&resp, "x-content-type-options"), "nosniff");
    assert_eq!(header(&resp, "content-security-policy"), "sandbox");
    assert_eq!(header(&resp, "accept-ranges"), "bytes");
    assert_eq!(resp.headers().get_all("accept-ranges").iter().count(), 1);
    assert!(header(&resp, "cache-control").starts_with("private, max-age="));
    assert!(header(&resp, "content-disposition").starts_with("inline; filename=\"clip.mp4\""));
    assert_eq!(
        header(&resp, "access-control-allow-origin"),
        "http://chat.test"
    );
    assert!(header(&resp, "access-control-expose-headers").contains("Content-Range"));
    assert_eq!(resp.bytes().await.unwrap().as_ref(), video.as_slice());

    // Range: nginx answers it from the file.
    let resp = client
        .get(nginx.url(&path))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        header(&resp, "content-range"),
        format!("bytes 1000-1999/{}", video.len())
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &video[1000..2000]);
    let resp = client
        .get(nginx.url(&path))
        .header("range", format!("bytes={}-", video.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);

    // HEAD and If-None-Match.
    let resp = client.head(nginx.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-length"), video.len().to_string());
    let resp = client
        .get(nginx.url(&path))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    assert_eq!(header(&resp, "etag"), etag);

    // Tampered: refused by the daemon, and the internal location is not reachable.
    let tampered = path.replace("exp=", "exp=1");
    let resp = client.get(nginx.url(&tampered)).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_signature");
    let resp = client.get(nginx.url(&accel)).send().await.unwrap();
    assert_eq!(
        resp.status(),
        404,
        "the internal location must not be public"
    );

    // Signatures stay out of nginx's access log.
    assert!(
        !nginx.access_log().contains("sig="),
        "{}",
        nginx.access_log()
    );
    // Downloads are logged as requested, not as the internal redirect (#12).
    let log = nginx.access_log();
    assert!(
        log.contains(&format!("\"GET /files/{id} HTTP/1.1\" 200")),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("/_blobs/") && l.contains("\" 200 ")),
        "{log}"
    );
}

#[tokio::test]
async fn presigned_uploads_stream_through_nginx() {
    let app = TestApp::start_with(ACCEL).await;
    let nginx = Nginx::start(
        app.base.trim_start_matches("http://"),
        &app.data.join("blobs"),
    );
    let url = presign_upload(
        &app.client,
        &nginx.base,
        json!({"uploader_id": 7, "ttl_secs": 300, "max_bytes": 8_000_000}),
    )
    .await;
    // Larger than nginx's default 1 MiB body limit: the upload locations raise it.
    let big = fake_mp4(3_000_000, 42);
    let resp = app.client.put(&url).body(big.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 201, "{}", nginx.error_log());
    let media: Value = resp.json().await.unwrap();
    assert_eq!(media["uploader_id"], 7);
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(unique_png(1)).file_name("p.png"),
    );
    // Upload URLs are single-use: a new one for each upload.
    let presign = || {
        presign_upload(
            &app.client,
            &nginx.base,
            json!({"uploader_id": 7, "ttl_secs": 300, "max_bytes": 8_000_000}),
        )
    };
    let url = presign().await;
    let resp = app.client.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    // The URL's own limit still holds behind nginx (answered at once).
    let url = presign().await;
    let resp = app
        .client
        .put(&url)
        .body(fake_mp4(9_000_000, 43))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413, "{}", nginx.error_log());
    // And what was uploaded downloads through nginx.
    let path = sign(&app.client, &nginx.base, media["id"].as_i64().unwrap()).await;
    let resp = app.client.get(nginx.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), big.as_slice());
}

#[tokio::test]
async fn nginx_reaches_the_daemon_over_its_unix_socket() {
    let app = TestApp::start_with_socket(ACCEL).await;
    let socket = app.socket.clone().expect("the harness bound a socket");
    // nginx knows only the socket: every answer below came through it.
    let nginx = Nginx::start(
        &format!("unix:{}", socket.display()),
        &app.data.join("blobs"),
    );
    let client = &app.client;

    let png = unique_png(11);
    let media = upload_through(client, &nginx, "uploader_id=5&filename=p.png", &png).await;
    let id = media["id"].as_i64().unwrap();
    let path = sign(client, &nginx.base, id).await;

    let resp = client.get(nginx.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", nginx.error_log());
    assert_eq!(header(&resp, "content-type"), "image/png");
    assert_eq!(
        header(&resp, "etag"),
        format!("\"{}\"", media["blake3"].as_str().unwrap())
    );
    assert_eq!(header(&resp, "content-security-policy"), "sandbox");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), png.as_slice());
    let resp = client
        .get(nginx.url(&path))
        .header("range", "bytes=0-7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &png[..8]);

    // A delete is seen by the next download: nothing answers for the daemon.
    assert_eq!(delete_media(client, &nginx.base, id).await, 204);
    let resp = client.get(nginx.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "media_not_found");

    // The TCP listener serves the same router meanwhile.
    let resp = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        nginx.error_log().lines().all(|l| !l.contains("[error]")),
        "{}",
        nginx.error_log()
    );
}
