//! Restarts, SIGTERM drain and kill -9 with the real binary.

use std::time::Duration;

use crate::harness::*;

#[tokio::test]
async fn data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut d = TestDaemon::start(&data, &dir.path().join("run1"), "");
    let png = testdata("png/rgb16.png");
    let (status, body) = upload_raw(&d.client, &d.base, 5, png.clone()).await;
    assert_eq!(status, 201);
    assert!(d.terminate().success(), "{}", d.logs());
    let d2 = TestDaemon::start(&data, &dir.path().join("run2"), "");
    let (status, got) = get_json(&d2.client, &d2.url(&format!("/v1/media/{}", body["id"]))).await;
    assert_eq!(status, 200);
    assert_eq!(got["blake3"], body["blake3"]);
    let (_, again) = upload_raw(&d2.client, &d2.base, 5, png).await;
    assert_eq!(again["deduplicated"], true);
    assert!(again["id"].as_i64() > body["id"].as_i64());
    drop(d2);
    assert_consistent(&data);
}

#[tokio::test]
async fn sigterm_drains_an_upload_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut d = TestDaemon::start(&data, &dir.path().join("run"), "");
    let video = fake_mp4(8 * 1024 * 1024, 3);
    let hash = blake3::hash(&video).to_hex().to_string();
    // A slow body: 64 chunks of 128 KiB, 20 ms apart.
    let chunks: Vec<bytes::Bytes> = video
        .chunks(128 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let stream = futures_util::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, std::io::Error>(c)
    });
    let req = d
        .client
        .post(d.url("/v1/media?uploader_id=1"))
        .header("authorization", bearer())
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let upload = tokio::spawn(req);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let resp = upload.await.unwrap().expect("in-flight upload completes");
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["blake3"], hash);
    let status = d.terminate();
    assert!(status.success(), "exit {status}: {}", d.logs());
    assert_consistent(&data);
}

use futures_util::StreamExt as _;

#[tokio::test]
async fn kill_9_during_large_uploads_leaves_no_partial_blob_and_restarts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Kill at several points of a large upload, each followed by a clean start.
    for (round, kill_after_ms) in [50u64, 250, 600].into_iter().enumerate() {
        let mut d = TestDaemon::start(&data, &dir.path().join(format!("run{round}")), "");
        // One small upload that completes before the crash must survive it.
        let small = unique_png(round as u64);
        let (status, done) = upload_raw(&d.client, &d.base, 1, small.clone()).await;
        assert_eq!(status, 201);
        let video = fake_mp4(64 * 1024 * 1024, 100 + round as u64);
        let chunks: Vec<bytes::Bytes> = video
            .chunks(256 * 1024)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        let stream = futures_util::stream::iter(chunks).then(|c| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, std::io::Error>(c)
        });
        let req = d
            .client
            .post(d.url("/v1/media?uploader_id=1"))
            .header("authorization", bearer())
            .body(reqwest::Body::wrap_stream(stream))
            .send();
        let upload = tokio::spawn(req);
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        d.kill9();
        let _ = upload.await;
        assert!(
            tmp_files(&data) <= 1,
            "at most the one interrupted staging file"
        );
        // Whatever is under blobs/ is whole, and the index points only at whole blobs.
        assert_consistent(&data);
        let video_hash = blake3::hash(&video).to_hex().to_string();
        assert_eq!(
            refcount(&data, &video_hash),
            None,
            "the interrupted upload left no row"
        );
        let d2 = TestDaemon::start(&data, &dir.path().join(format!("run{round}b")), "");
        assert_eq!(tmp_files(&data), 0, "start-up removes staging debris");
        let (status, got) =
            get_json(&d2.client, &d2.url(&format!("/v1/media/{}", done["id"]))).await;
        assert_eq!(status, 200);
        assert_eq!(got["blake3"], blake3::hash(&small).to_hex().as_str());
        drop(d2);
    }
    assert_consistent(&data);
}
