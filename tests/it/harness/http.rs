//! Requests to the daemon's service API, the way the chat backend makes them.

use std::time::Duration;

use serde_json::{Value, json};

use super::TOKEN;

pub fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// Sends `req` with the service token; returns (status, JSON body or Null).
pub async fn send_json(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req
        .header("authorization", bearer())
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The Prometheus text of a `/metrics` URL (which must answer).
pub async fn metrics_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

pub async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    send_json(client.get(url)).await
}

pub async fn post_json(client: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    send_json(client.post(url).json(&body)).await
}

pub async fn put_json(client: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    send_json(client.put(url).json(&body)).await
}

pub async fn delete_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    send_json(client.delete(url)).await
}

/// Uploads raw bytes; returns (status, JSON body).
pub async fn upload_raw(
    client: &reqwest::Client,
    base: &str,
    uploader: i64,
    body: Vec<u8>,
) -> (u16, Value) {
    send_json(
        client
            .post(format!("{base}/v1/media?uploader_id={uploader}"))
            .body(body),
    )
    .await
}

/// [`upload_raw`] that must succeed; returns the media JSON.
pub async fn upload_ok(
    client: &reqwest::Client,
    base: &str,
    uploader: i64,
    body: Vec<u8>,
) -> Value {
    let (status, v) = upload_raw(client, base, uploader, body).await;
    assert_eq!(status, 201, "{v}");
    v
}

/// `DELETE /v1/media/{id}` with the service token; returns the status.
pub async fn delete_media(client: &reqwest::Client, base: &str, id: i64) -> u16 {
    delete_json(client, &format!("{base}/v1/media/{id}"))
        .await
        .0
}

/// Attaches media `media` to message `message` of group `group`; returns the status.
pub async fn attach(
    client: &reqwest::Client,
    base: &str,
    message: i64,
    media: i64,
    group: i64,
) -> u16 {
    put_json(
        client,
        &format!("{base}/v1/messages/{message}/media/{media}"),
        json!({"group_id": group}),
    )
    .await
    .0
}

/// A signed download path (`/files/{id}?exp=...`) for media `id`, valid 600 s,
/// asked of the daemon (or the proxy) at `base`.
pub async fn sign(client: &reqwest::Client, base: &str, id: i64) -> String {
    sign_with(client, base, id, json!({"ttl_secs": 600})).await
}

/// [`sign`] with `req` as the request body (TTL, variant, disposition).
pub async fn sign_with(client: &reqwest::Client, base: &str, id: i64, req: Value) -> String {
    let (status, body) = post_json(client, &format!("{base}/v1/media/{id}/url"), req).await;
    assert_eq!(status, 200, "{body}");
    let url = body["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("/files/{id}?exp=")), "{url}");
    assert!(
        body["expires_at"].as_str().unwrap().ends_with('Z'),
        "{body}"
    );
    url.to_owned()
}

/// [`sign_with`], as an absolute URL under `base`.
pub async fn signed_url(client: &reqwest::Client, base: &str, id: i64, req: Value) -> String {
    format!("{base}{}", sign_with(client, base, id, req).await)
}

/// A presigned upload URL (`POST /v1/upload-urls` with `req`), absolute
/// under `base` (the daemon or the proxy).
pub async fn presign_upload(client: &reqwest::Client, base: &str, req: Value) -> String {
    let (status, body) = post_json(client, &format!("{base}/v1/upload-urls"), req).await;
    assert_eq!(status, 200, "{body}");
    format!("{base}{}", body["url"].as_str().unwrap())
}

/// A response header that must be there, as text.
pub fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", resp.headers()))
        .to_str()
        .unwrap()
}

/// A streamed body: `content` in `chunk`-byte pieces (slices, not copies),
/// each sent `gap` after the last (a slow client; `Duration::ZERO`: as fast
/// as the daemon reads).
pub fn paced_body(content: bytes::Bytes, chunk: usize, gap: Duration) -> reqwest::Body {
    use futures_util::StreamExt as _;
    let pieces: Vec<bytes::Bytes> = (0..content.len())
        .step_by(chunk)
        .map(|at| content.slice(at..(at + chunk).min(content.len())))
        .collect();
    let stream = futures_util::stream::iter(pieces).then(move |c| async move {
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        Ok::<_, std::io::Error>(c)
    });
    reqwest::Body::wrap_stream(stream)
}

/// Starts a raw upload of `body` in the background (the test acts while it is in flight).
pub fn spawn_upload(
    client: &reqwest::Client,
    base: &str,
    uploader: i64,
    body: reqwest::Body,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    tokio::spawn(
        client
            .post(format!("{base}/v1/media?uploader_id={uploader}"))
            .header("authorization", bearer())
            .body(body)
            .send(),
    )
}

/// A raw chunked upload (`POST /v1/media`, no `Content-Length`) whose body
/// starts as a PNG and goes on with filler: the request head, and one HTTP
/// chunk of `len` payload bytes.
pub fn chunked_png_upload(len: usize) -> (String, Vec<u8>) {
    let head = format!(
        "POST /v1/media?uploader_id=1 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        bearer()
    );
    let mut payload = super::testdata("png/gray8.png")[..33].to_vec();
    payload.resize(len, 7);
    let mut chunk = format!("{:x}\r\n", payload.len()).into_bytes();
    chunk.extend_from_slice(&payload);
    chunk.extend_from_slice(b"\r\n");
    (head, chunk)
}

/// The whole content of media `id`, through a freshly signed URL.
pub async fn download(client: &reqwest::Client, base: &str, id: i64) -> bytes::Bytes {
    let url = signed_url(client, base, id, json!({})).await;
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "download of media {id}");
    resp.bytes().await.unwrap()
}
