//! Live reload of the config file, with the real binary and a real file watcher.

use std::time::{Duration, Instant};

use crate::harness::*;

#[tokio::test]
async fn policy_change_in_the_config_file_applies_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = dir.path().join("run");
    let d = TestDaemon::start(&data, &run, "[upload]\nmax_bytes = 10000000\n");
    let png = testdata("png/rgb8.png");
    let (status, _) = upload_raw(&d.client, &d.base, 1, png.clone()).await;
    assert_eq!(status, 201);
    // Replace the file the way editors do: write a new one and rename it over.
    d.replace_config("[upload]\nmax_bytes = 1000\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = upload_raw(&d.client, &d.base, 1, png.clone()).await;
        if status == 413 {
            assert_eq!(body["error"]["code"], "too_large");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reload not applied within 10 s:\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken file changes nothing.
    std::fs::write(d.config_path(), "[upload\nmax_bytes = ").unwrap();
    d.wait_for_log("configuration not reloaded", Duration::from_secs(10))
        .await;
    let (status, _) = upload_raw(&d.client, &d.base, 1, png).await;
    assert_eq!(status, 413, "the last good config stays in force");
}
