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
}

#[tokio::test]
async fn sigterm_drains_an_upload_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut d = TestDaemon::start(&data, &dir.path().join("run"), "");
    let video = fake_mp4(8 * 1024 * 1024, 3);
    let hash = blake3::hash(&video).to_hex().to_string();
    // A slow body: 64 chunks of 128 KiB, 20 ms apart.
    let body = paced_body(video.clone().into(), 128 * 1024, Duration::from_millis(20));
    let upload = spawn_upload(&d.client, &d.base, 1, body);
    // SIGTERM once the body is arriving (its first MiB is staged).
    wait_until(
        Duration::from_secs(20),
        "the upload's first MiB in tmp/",
        || staging_bytes(&data) >= 1024 * 1024,
    )
    .await;
    let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(
        !upload.is_finished() && staging_bytes(&data) < video.len() as u64,
        "SIGTERM came after the upload, not during it"
    );
    let resp = upload.await.unwrap().expect("in-flight upload completes");
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["blake3"], hash);
    let status = d.terminate();
    assert!(status.success(), "exit {status}: {}", d.logs());
}

#[tokio::test]
async fn kill_9_during_large_uploads_leaves_no_partial_blob_and_restarts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let video_len = 64 * 1024 * 1024;
    // Kill at several points of receiving a large body (by how much of it is
    // staged), each followed by a clean start.
    for (round, staged) in [256 * 1024u64, 16 << 20, 48 << 20].into_iter().enumerate() {
        let mut d = TestDaemon::start(&data, &dir.path().join(format!("run{round}")), "");
        // One small upload that completes before the crash must survive it.
        let small = unique_png(round as u64);
        let (status, done) = upload_raw(&d.client, &d.base, 1, small.clone()).await;
        assert_eq!(status, 201);
        let video = fake_mp4(video_len, 100 + round as u64);
        let video_hash = blake3::hash(&video).to_hex().to_string();
        let body = paced_body(video.into(), 256 * 1024, Duration::from_millis(5));
        let upload = spawn_upload(&d.client, &d.base, 1, body);
        wait_until(
            Duration::from_secs(30),
            &format!("{staged} bytes of the upload in tmp/"),
            || staging_bytes(&data) >= staged,
        )
        .await;
        d.kill9();
        let on_disk = staging_bytes(&data);
        assert!(
            on_disk < video_len as u64,
            "the kill came after the whole body ({on_disk} bytes staged)"
        );
        let answer = upload.await.unwrap();
        assert!(
            answer.is_err(),
            "a killed daemon answered the upload: {answer:?}"
        );
        assert_eq!(
            tmp_files(&data),
            1,
            "exactly the one interrupted staging file"
        );
        // Whatever is under blobs/ is whole, and the index points only at whole blobs.
        assert_consistent(&data);
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
    }
}
