//! Issue #10: "exists" is not "whole" (dedup checks the stored size and heals
//! a damaged copy), reads are verified, and damaged media have a clear state
//! (`corrupt` in the JSON, `410 media_corrupt`, `?corrupt=` in lists) until an
//! upload of the same content repairs them.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

/// Overwrites the stored copy of `content` with `damaged`.
fn damage(data: &std::path::Path, content: &[u8], damaged: &[u8]) {
    std::fs::write(blob_path(data, content), damaged).unwrap();
}

fn quarantined(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("quarantine"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn media_json(app: &TestApp, id: i64) -> serde_json::Value {
    let (status, body) = get_json(&app.client, &app.url(&format!("/v1/media/{id}"))).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn an_upload_heals_a_stored_copy_of_the_wrong_size() {
    let app = TestApp::start().await;
    let content = fake_mp4(200_000, 1);
    upload_ok(&app.client, &app.base, 1, content.clone()).await;
    damage(&app.data, &content, &content[..1000]);
    let second = upload_ok(&app.client, &app.base, 2, content.clone()).await;
    assert_eq!(
        second["deduplicated"], false,
        "a damaged copy is not the content"
    );
    assert_eq!(
        std::fs::read(blob_path(&app.data, &content)).unwrap(),
        content,
        "the new bytes took the damaged copy's place"
    );
    assert_eq!(quarantined(&app.data), 1, "the damaged copy is kept aside");
    app.stop().await;
}

/// `?blake3=` names stored content, so its bytes would only be hashed; over a
/// damaged copy they are stored instead, and heal it.
#[tokio::test]
async fn a_hash_claimed_upload_over_a_damaged_copy_stores_its_bytes() {
    let app = TestApp::start().await;
    let content = fake_mp4(50_000, 2);
    let first = upload_ok(&app.client, &app.base, 1, content.clone()).await;
    damage(&app.data, &content, b"short");
    let hex = first["blake3"].as_str().unwrap();
    let (status, body) = send_json(
        app.client
            .post(app.url(&format!("/v1/media?uploader_id=3&blake3={hex}")))
            .body(content.clone()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["deduplicated"], false, "{body}");
    assert_eq!(
        std::fs::read(blob_path(&app.data, &content)).unwrap(),
        content
    );
    assert_eq!(quarantined(&app.data), 1);
    app.stop().await;
}

/// A large blob (streamed) damaged in place, same size: the download fails
/// rather than delivering wrong bytes, and the media becomes `corrupt`.
#[tokio::test]
async fn a_streamed_download_of_damaged_bytes_fails_and_marks_the_media() {
    let app = TestApp::start().await;
    let content = fake_mp4(700_000, 3);
    let media = upload_ok(&app.client, &app.base, 1, content.clone()).await;
    let id = media["id"].as_i64().unwrap();
    assert_eq!(media["corrupt"], false);
    let url = signed_url(&app.client, &app.base, id, json!({})).await;
    let mut damaged = content.clone();
    damaged[650_000] ^= 0xff;
    damage(&app.data, &content, &damaged);

    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "headers go out before the bytes are known"
    );
    let body = resp.bytes().await;
    match body {
        Err(_) => {}
        Ok(got) => {
            assert_ne!(
                got.len(),
                content.len(),
                "a damaged body must never arrive whole"
            );
        }
    }
    // Recorded off the request path.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let marked = loop {
        let m = media_json(&app, id).await;
        if m["corrupt"] == true {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "never marked: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(marked["corrupt_since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(quarantined(&app.data), 1);
    assert_corrupt_everywhere(&app, id, &url).await;

    // The same content uploaded again repairs it.
    upload_ok(&app.client, &app.base, 2, content.clone()).await;
    assert_eq!(media_json(&app, id).await["corrupt"], false);
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), content);
    app.stop().await;
}

/// What a damaged media answers: 410 on download, 410 on signing, and the
/// `corrupt` filter of the listing.
async fn assert_corrupt_everywhere(app: &TestApp, id: i64, url: &str) {
    let (status, body) = send_json(app.client.get(url)).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["code"], "media_corrupt");
    let (status, body) = post_json(
        &app.client,
        &app.url(&format!("/v1/media/{id}/url")),
        json!({}),
    )
    .await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["code"], "media_corrupt");
    let (_, list) = get_json(&app.client, &app.url("/v1/media?corrupt=true")).await;
    let ids: Vec<i64> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![id]);
    let (_, list) = get_json(&app.client, &app.url("/v1/media?corrupt=false")).await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["id"] != id),
        "{list}"
    );
}

/// A small blob (read whole, cached) damaged in place: never served, 410.
#[tokio::test]
async fn a_small_download_of_damaged_bytes_answers_410() {
    let mut app = TestApp::start().await;
    let content = unique_png(4);
    let media = upload_ok(&app.client, &app.base, 1, content.clone()).await;
    let id = media["id"].as_i64().unwrap();
    let url = signed_url(&app.client, &app.base, id, json!({})).await;
    let mut damaged = content.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x01;
    damage(&app.data, &content, &damaged);
    let (status, body) = send_json(app.client.get(&url)).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["code"], "media_corrupt");
    assert_eq!(media_json(&app, id).await["corrupt"], true);
    assert_corrupt_everywhere(&app, id, &url).await;
    app.accept_damage("the damaged blob is quarantined and its media marked, on purpose");
    app.stop().await;
}

/// After `fsck --repair` quarantines a blob, its media answer a clear 410,
/// not `500 internal`.
#[tokio::test]
async fn media_quarantined_by_fsck_answer_410_not_500() {
    let mut app = TestApp::start().await;
    let content = fake_mp4(100_000, 5);
    let media = upload_ok(&app.client, &app.base, 1, content.clone()).await;
    let id = media["id"].as_i64().unwrap();
    let url = signed_url(&app.client, &app.base, id, json!({})).await;
    let mut damaged = content.clone();
    damaged[10] ^= 0xff;
    damage(&app.data, &content, &damaged);
    let (code, out, err) = run_cli(&app.data, "", &["fsck", "--repair", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(json_of(&out)["media_marked"], 1);
    // The row cache trusts a row changed by another process for at most a
    // second: poll until the download sees the mark.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = send_json(app.client.get(&url)).await;
        assert_ne!(status, 500, "{body}");
        if status == 410 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_corrupt_everywhere(&app, id, &url).await;
    app.accept_damage("fsck quarantined the blob on purpose");
    app.stop().await;
}
