//! A full data disk: a clear 507, no debris, and recovery once space is back.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

/// A small tmpfs mounted for one test (needs root, as CI has); unmounted on drop.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs for the disk-full test (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path, _dir: dir }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test]
async fn full_disk_answers_507_and_leaves_nothing_behind() {
    let disk = SmallDisk::mount(8);
    let app = TestApp::start_in(disk.path(), "").await;
    let (status, body) = upload_raw(&app.client, &app.base, 1, fake_mp4(16 * 1024 * 1024, 5)).await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "disk_full");
    assert_eq!(
        tmp_files(disk.path()),
        0,
        "the partial staging file is removed"
    );
    assert!(blob_files(disk.path()).is_empty());
    // Space is back as soon as the staging file is gone: smaller uploads work.
    let png = testdata("png/rgb8.png");
    let (status, body) = upload_raw(&app.client, &app.base, 1, png).await;
    assert_eq!(status, 201, "{body}");
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    app.stop().await;
}
