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

/// Issue #12, bug 1: reading the config file (an operator's `cat`, the gc
/// timer's `--config`, the reload itself) must not start a reload, and a
/// reload must not read its way into the next one.
#[tokio::test]
async fn reading_or_rewriting_the_same_config_does_not_reload() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = dir.path().join("run");
    let toml = "[upload]\nmax_bytes = 10000000\n";
    let d = TestDaemon::start(&data, &run, toml);
    let reloads = |d: &TestDaemon| d.logs().matches("configuration reloaded").count();
    let read_for = |d: &TestDaemon, period: Duration| {
        let until = Instant::now() + period;
        while Instant::now() < until {
            std::fs::read(d.config_path()).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    read_for(&d, Duration::from_secs(1));
    // Same content written again: touched, not changed.
    std::fs::write(d.config_path(), toml).unwrap();
    read_for(&d, Duration::from_secs(1));
    assert_eq!(reloads(&d), 0, "reads reloaded the config:\n{}", d.logs());
    // The watcher does work: a real change reloads once, and the reload's
    // own read of the file does not start another.
    d.replace_config("[upload]\nmax_bytes = 1000\n");
    d.wait_for_log("configuration reloaded", Duration::from_secs(10))
        .await;
    read_for(&d, Duration::from_secs(2));
    assert_eq!(reloads(&d), 1, "reloaded more than once:\n{}", d.logs());
}
