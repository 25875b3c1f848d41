//! Uploads: raw and multipart, content addressing and deduplication.

use std::time::Duration;

use crate::harness::*;

#[tokio::test]
async fn raw_upload_is_stored_under_its_hash_and_described() {
    let app = TestApp::start().await;
    let jpeg = testdata("jpeg/progressive.jpg");
    let (status, body) = upload_raw(&app.client, &app.base, 7, jpeg.clone()).await;
    assert_eq!(status, 201, "{body}");
    let hash = blake3::hash(&jpeg).to_hex().to_string();
    assert_eq!(body["blake3"], hash);
    assert_eq!(body["file_type"], "image/jpeg");
    assert_eq!(body["size"], jpeg.len() as u64);
    assert_eq!(body["uploader_id"], 7);
    assert_eq!(body["deduplicated"], false);
    let id = body["id"].as_i64().unwrap();
    assert_eq!(body["file_url"], format!("/files/{id}"));
    assert!(body["uploaded_at"].as_str().unwrap().ends_with('Z'));

    let path = app
        .data
        .join("blobs")
        .join(&hash[0..2])
        .join(&hash[2..4])
        .join(&hash);
    assert_eq!(std::fs::read(path).unwrap(), jpeg);
    assert_eq!(tmp_files(&app.data), 0);

    let (status, got) = get_json(&app.client, &app.url(&format!("/v1/media/{id}"))).await;
    assert_eq!(status, 200);
    assert_eq!(got["blake3"], hash);
    assert_eq!(got["uploaded_at"], body["uploaded_at"]);
}

#[tokio::test]
async fn multipart_upload_keeps_the_original_filename_but_sniffs_the_type() {
    let app = TestApp::start().await;
    let pdf = testdata("document/sample.pdf");
    // The client claims a PNG; the bytes say PDF.
    let part = reqwest::multipart::Part::bytes(pdf.clone())
        .file_name("../Quarterly report.pdf")
        .mime_str("image/png")
        .unwrap();
    // The form's only field (issue #14: other fields are refused, see security::).
    let form = reqwest::multipart::Form::new().part("file", part);
    let resp = app
        .client
        .post(app.url("/v1/media?uploader_id=3"))
        .header("authorization", bearer())
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["file_type"], "application/pdf");
    assert_eq!(body["original_name"], "Quarterly report.pdf");
    assert_eq!(body["blake3"], blake3::hash(&pdf).to_hex().as_str());
}

#[tokio::test]
async fn every_kind_of_real_media_is_accepted_with_its_true_type() {
    let app = TestApp::start().await;
    for (file, mime) in [
        ("png/rgba8.png", "image/png"),
        ("gif/animated.gif", "image/gif"),
        ("webp/lossy.webp", "image/webp"),
        ("avif/alpha.avif", "image/avif"),
        ("audio/tone_id3_cover.mp3", "audio/mpeg"),
        ("audio/voice_note.opus", "audio/opus"),
        ("video/h264_aac_faststart.mp4", "video/mp4"),
        ("video/vp9_opus.webm", "video/webm"),
        (
            "document/sample.docx",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        ("text/utf8.txt", "text/plain"),
    ] {
        let (status, body) = upload_raw(&app.client, &app.base, 1, testdata(file)).await;
        assert_eq!(status, 201, "{file}: {body}");
        assert_eq!(body["file_type"], mime, "{file}");
    }
}

#[tokio::test]
async fn sequential_duplicates_share_one_blob() {
    let app = TestApp::start().await;
    let png = testdata("png/rgb8.png");
    let (_, first) = upload_raw(&app.client, &app.base, 1, png.clone()).await;
    let (status, second) = upload_raw(&app.client, &app.base, 2, png.clone()).await;
    assert_eq!(status, 201);
    assert_eq!(first["deduplicated"], false);
    assert_eq!(second["deduplicated"], true);
    assert_ne!(first["id"], second["id"]);
    assert_eq!(first["blake3"], second["blake3"]);
    assert_eq!(blob_files(&app.data).len(), 1);
    assert_eq!(
        refcount(&app.data, first["blake3"].as_str().unwrap()),
        Some(2)
    );
    assert_eq!(tmp_files(&app.data), 0);
}

#[tokio::test]
async fn hundred_identical_concurrent_uploads_store_one_blob_with_refcount_100() {
    let app = TestApp::start().await;
    let png = testdata("png/rgba16.png");
    let uploads = (0..100).map(|i| {
        let client = app.client.clone();
        let base = app.base.clone();
        let png = png.clone();
        tokio::spawn(async move { upload_raw(&client, &base, i, png).await })
    });
    let mut ids = std::collections::BTreeSet::new();
    let mut fresh = 0;
    for handle in uploads.collect::<Vec<_>>() {
        let (status, body) = handle.await.unwrap();
        assert_eq!(status, 201, "{body}");
        ids.insert(body["id"].as_i64().unwrap());
        if body["deduplicated"] == false {
            fresh += 1;
        }
    }
    assert_eq!(ids.len(), 100, "every upload gets its own media row");
    assert_eq!(fresh, 1, "exactly one upload wrote the blob");
    assert_eq!(blob_files(&app.data).len(), 1);
    let hash = blake3::hash(&png).to_hex().to_string();
    assert_eq!(refcount(&app.data, &hash), Some(100));
    assert_eq!(tmp_files(&app.data), 0);
}

#[tokio::test]
async fn delete_drops_the_reference_but_leaves_the_file_for_gc() {
    let app = TestApp::start().await;
    let png = testdata("png/palette8.png");
    let (_, a) = upload_raw(&app.client, &app.base, 1, png.clone()).await;
    let (_, b) = upload_raw(&app.client, &app.base, 1, png.clone()).await;
    let hash = a["blake3"].as_str().unwrap().to_owned();
    let del = |id: i64| delete_media(&app.client, &app.base, id);
    assert_eq!(del(a["id"].as_i64().unwrap()).await, 204);
    assert_eq!(refcount(&app.data, &hash), Some(1));
    let before = media_store::clock::Clock::now_ms(&media_store::clock::SystemClock);
    assert_eq!(del(b["id"].as_i64().unwrap()).await, 204);
    let after = media_store::clock::Clock::now_ms(&media_store::clock::SystemClock);
    assert_eq!(refcount(&app.data, &hash), Some(0));
    let zero_since: Option<i64> = index(&app.data)
        .query_row("SELECT zero_since FROM blobs", [], |r| r.get(0))
        .unwrap();
    assert!(
        zero_since.is_some_and(|t| (before..=after).contains(&t)),
        "a zero count starts the GC grace period, stamped when it happens: \
         {zero_since:?} not in {before}..={after}"
    );
    assert_eq!(blob_files(&app.data).len(), 1, "the file is left for GC");
    let (status, body) = get_json(&app.client, &app.url(&format!("/v1/media/{}", a["id"]))).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "media_not_found");
    assert_eq!(del(a["id"].as_i64().unwrap()).await, 404);
    // Uploading the content again revives the blob.
    let (_, c) = upload_raw(&app.client, &app.base, 1, png).await;
    assert_eq!(c["deduplicated"], true);
    assert_eq!(refcount(&app.data, &hash), Some(1));
}

#[tokio::test]
async fn healthz_reports_ok() {
    let app = TestApp::start().await;
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}

/// The real binary's resident memory stays flat while a body many times the
/// bound streams through it: nothing buffers the whole upload.
#[tokio::test]
async fn large_upload_streams_without_buffering_and_hashes_right() {
    const BOUND_KIB: u64 = 32 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(&dir.path().join("data"), &dir.path().join("run"), "");
    let video = fake_mp4(160 * 1024 * 1024 + 123, 9);
    let hash = blake3::hash(&video).to_hex().to_string();
    // Warm up (first request, index writer, allocator arenas) before the baseline.
    upload_ok(&d.client, &d.base, 1, unique_png(1)).await;
    let (_, peak_before) = d.memory_kib();
    let upload = spawn_upload(
        &d.client,
        &d.base,
        1,
        paced_body(video.into(), 1024 * 1024, Duration::ZERO),
    );
    let mut samples = Vec::new();
    while !upload.is_finished() {
        samples.push(d.memory_kib().0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, peak_after) = d.memory_kib();
    let resp = upload.await.unwrap().unwrap();
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["file_type"], "video/mp4");
    assert_eq!(body["blake3"], hash);
    let most = samples.iter().max().copied().unwrap_or(0);
    eprintln!(
        "daemon RSS: peak {peak_before} KiB before, {peak_after} KiB after a 160 MiB upload; \
         largest of {} samples during it {most} KiB",
        samples.len()
    );
    assert!(
        samples.len() >= 3,
        "the upload ended before it was measured"
    );
    assert!(
        peak_after - peak_before < BOUND_KIB,
        "peak RSS grew by {} KiB during a 160 MiB upload (bound {BOUND_KIB} KiB)",
        peak_after - peak_before
    );
}

#[tokio::test]
async fn second_daemon_on_the_same_data_folder_is_refused() {
    let app = TestApp::start().await;
    let env =
        std::collections::BTreeMap::from([("MEDIA_STORE_API_TOKEN".to_string(), "x".repeat(16))]);
    let overrides = media_store::config::Overrides {
        data_dir: Some(app.data.clone()),
        listen: None,
    };
    let config = media_store::Config::from_parts("", &env, &overrides).unwrap();
    let err = media_store::AppState::open(config)
        .err()
        .expect("second open must fail");
    assert!(
        err.to_string().contains("another media-store daemon"),
        "{err}"
    );
}

#[tokio::test]
async fn content_declared_as_already_stored_is_hashed_but_never_written() {
    let app = TestApp::start().await;
    let video = fake_mp4(3 * 1024 * 1024, 77);
    let hash = blake3::hash(&video).to_hex().to_string();
    let (status, first) = upload_raw(&app.client, &app.base, 1, video.clone()).await;
    assert_eq!(status, 201);
    // With tmp/ replaced by a plain file, any attempt to stage would fail: a
    // 201 proves the duplicate was never written anywhere.
    let tmp = app.data.join("tmp");
    std::fs::remove_dir(&tmp).unwrap();
    std::fs::write(&tmp, b"not a folder").unwrap();
    let post = |q: String, body: Vec<u8>| {
        app.client
            .post(app.url(&format!("/v1/media?uploader_id=2{q}")))
            .header("authorization", bearer())
            .body(body)
            .send()
    };
    let resp = post(format!("&blake3={hash}"), video.clone())
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["deduplicated"], true);
    assert_eq!(body["blake3"], hash);
    assert_ne!(body["id"], first["id"]);
    // A false claim about stored content is refused and records nothing.
    let mut other = video.clone();
    other[5000] ^= 1;
    let resp = post(format!("&blake3={hash}"), other).await.unwrap();
    assert_eq!(resp.status(), 400);
    let err: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "hash_mismatch");
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    assert_eq!(refcount(&app.data, &hash), Some(2));
    // A claim for content not stored yet takes the normal path, and is checked too.
    let fresh = fake_mp4(100_000, 78);
    let fresh_hash = blake3::hash(&fresh).to_hex().to_string();
    let resp = post(format!("&blake3={hash}"), fresh.clone())
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "claimed hash of other content");
    let resp = post(format!("&blake3={fresh_hash}"), fresh).await.unwrap();
    assert_eq!(resp.status(), 201);
    let resp = post("&blake3=xyz".into(), video).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(tmp_files(&app.data), 0);
}
