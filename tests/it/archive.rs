//! Archival to a second data root (storage-layout.md, "Archive"): blobs move
//! there in `gc`, and stay downloadable (daemon and nginx), deduplicated
//! against, collected and checked as before.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::harness::nginx::Nginx;
use crate::harness::*;
use media_store::lifecycle::gc::{self, GcOptions};

/// A daemon with an archive root beside its data folder (`after_days = 0`:
/// every live blob moves at the next GC).
struct Archived {
    app: TestApp,
    root: PathBuf,
    config: String,
    _dir: tempfile::TempDir,
}

async fn start(extra: &str) -> Archived {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    std::fs::create_dir(&root).unwrap();
    let config = format!(
        "{extra}[archive]\nroot = {:?}\nafter_days = 0\n",
        root.display().to_string()
    );
    let app = TestApp::start_with(&config).await;
    Archived {
        app,
        root,
        config,
        _dir: dir,
    }
}

impl Archived {
    fn primary(&self, hex: &str) -> PathBuf {
        shard(&self.app.data.join("blobs"), hex)
    }
    fn archived(&self, hex: &str) -> PathBuf {
        shard(&self.root.join("blobs"), hex)
    }
    /// `media-store gc --json` in its own process, beside the running daemon.
    fn gc(&self, args: &[&str]) -> Value {
        let mut all = vec!["gc", "--json", "--grace", "0s"];
        all.extend_from_slice(args);
        let (code, out, err) = run_cli(&self.app.data, &self.config, &all);
        let summary: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        // 1 only for a dry run that found garbage (src/lifecycle/cli.rs).
        let found = [
            "blobs_deleted",
            "unknown_files_deleted",
            "tmp_files_deleted",
        ]
        .iter()
        .map(|k| summary[k].as_u64().unwrap())
        .chain(
            ["orphans_expired", "aged_expired"]
                .iter()
                .map(|k| summary["retention"][k].as_u64().unwrap_or(0)),
        )
        .sum::<u64>()
            > 0;
        let want = i32::from(args.contains(&"--dry-run") && found);
        assert_eq!(code, want, "gc exit code: {out}{err}");
        summary
    }
    fn fsck(&self) -> (i32, Value) {
        let (code, out, err) = run_cli(&self.app.data, &self.config, &["fsck", "--json"]);
        (
            code,
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}")),
        )
    }
}

fn shard(blobs: &Path, hex: &str) -> PathBuf {
    blobs.join(&hex[..2]).join(&hex[2..4]).join(hex)
}

/// Uploads a real attached media (a message references it, so retention keeps it).
async fn upload_attached(app: &TestApp, content: Vec<u8>, message: i64) -> Value {
    let v = upload_ok(&app.client, &app.base, 5, content).await;
    let status = attach(
        &app.client,
        &app.base,
        message,
        v["id"].as_i64().unwrap(),
        1,
    )
    .await;
    assert_eq!(status, 201, "a new reference");
    v
}

#[tokio::test]
async fn archived_blobs_are_served_deduplicated_and_checked() {
    let a = start("").await;
    let app = &a.app;
    let image = testdata("exif-orientation/small/Landscape_6.jpg");
    let v = upload_attached(app, image.clone(), 1).await;
    let (id, hex) = (v["id"].as_i64().unwrap(), v["blake3"].as_str().unwrap());

    let (status, health) = get_json(&app.client, &app.url("/healthz")).await;
    assert_eq!(status, 200);
    assert_eq!(health["checks"]["archive"], "ok", "{health}");

    // A dry run lists the move and moves nothing.
    let summary = a.gc(&["--dry-run"]);
    assert_eq!(summary["blobs_archived"], 1, "{summary}");
    assert_eq!(
        summary["would_archive"],
        json!([a.primary(hex).display().to_string()])
    );
    assert!(a.primary(hex).exists() && !a.archived(hex).exists());

    let summary = a.gc(&[]);
    assert_eq!(summary["blobs_archived"], 1, "{summary}");
    assert_eq!(summary["bytes_archived"], image.len() as u64);
    assert!(!a.primary(hex).exists(), "the primary copy must go");
    assert_eq!(std::fs::read(a.archived(hex)).unwrap(), image);

    // Served transparently, whole and by range.
    let url = app.url(&sign(&app.client, &app.base, id).await);
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), image);
    let resp = app
        .client
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap(), image[10..20]);

    // The same content again is deduplicated against the archived copy:
    // nothing new lands on the primary disk.
    let (status, again) = upload_raw(&app.client, &app.base, 6, image.clone()).await;
    assert_eq!(status, 201);
    assert_eq!(again["deduplicated"], true, "{again}");
    assert!(!a.primary(hex).exists());
    // And so is a hash-only upload.
    let resp = app
        .client
        .post(app.url(&format!("/v1/media?uploader_id=7&blake3={hex}")))
        .header("authorization", bearer())
        .body(image.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // A second run has nothing left to move; fsck finds everything whole.
    assert_eq!(a.gc(&[])["blobs_archived"], 0);
    let (code, fsck) = a.fsck();
    assert_eq!(code, 0, "{fsck}");
    assert_eq!(fsck["blobs_archived"], 1, "{fsck}");
    assert_eq!(fsck["orphan_files"], json!([]), "{fsck}");
    assert_consistent_with_archive(&app.data, Some(&a.root));

    // Released everywhere: GC deletes the archived copy and the row.
    let hash_only_id: i64 = index(&app.data)
        .query_row("SELECT max(id) FROM media", [], |r| r.get(0))
        .unwrap();
    for media in [id, again["id"].as_i64().unwrap(), hash_only_id] {
        assert_eq!(delete_media(&app.client, &app.base, media).await, 204);
    }
    let summary = a.gc(&[]);
    assert_eq!(summary["blobs_deleted"], 1, "{summary}");
    assert!(!a.archived(hex).exists(), "archived garbage must be freed");
    assert_eq!(refcount(&app.data, hex), None);
}

/// A move interrupted after the archive copy was made (kill -9 of `gc`
/// between its steps) leaves both copies: harmless, and the next GC deletes
/// the primary one.
#[tokio::test]
async fn an_interrupted_move_leaves_two_whole_copies_and_gc_finishes_it() {
    let a = start("").await;
    let app = &a.app;
    let content = unique_png(4242);
    let v = upload_attached(app, content.clone(), 2).await;
    let (id, hex) = (v["id"].as_i64().unwrap(), v["blake3"].as_str().unwrap());

    // The state right after step 1: a whole archive copy, the primary kept.
    let copy = a.archived(hex);
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(a.primary(hex), &copy).unwrap();
    // And debris of another move killed mid-copy.
    let tmp = a.root.join("tmp").join("0123.part");
    std::fs::write(&tmp, &content[..100]).unwrap();
    let old = SystemTime::now() - Duration::from_secs(3 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(old)
        .unwrap();

    let (code, fsck) = a.fsck();
    assert_eq!(code, 0, "two copies are not a problem: {fsck}");
    assert_eq!(fsck["orphan_files"], json!([]), "{fsck}");

    // Served meanwhile.
    let url = app.url(&sign(&app.client, &app.base, id).await);
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap(), content);

    let summary = a.gc(&["--no-retention"]);
    assert_eq!(summary["redundant_copies_deleted"], 1, "{summary}");
    assert_eq!(summary["tmp_files_deleted"], 1, "{summary}");
    assert!(!a.primary(hex).exists());
    assert!(!tmp.exists());
    assert_eq!(std::fs::read(&copy).unwrap(), content);
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap(), content);
}

/// An archive copy of the right size but damaged bytes (left by an
/// interrupted move on a failing disk) must never replace the good primary
/// copy: neither GC's redundant-copy sweep nor the archive move trusts it
/// before its hash is verified; fsck checks both copies and repair moves the
/// damaged one aside (issue #10, point 4).
#[tokio::test]
async fn a_damaged_archive_copy_of_the_right_size_never_replaces_the_primary() {
    let a = start("").await;
    let app = &a.app;
    let content = unique_png(4343);
    let v = upload_attached(app, content.clone(), 3).await;
    let (id, hex) = (v["id"].as_i64().unwrap(), v["blake3"].as_str().unwrap());
    let copy = a.archived(hex);
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    let mut damaged = content.clone();
    damaged[40] ^= 0x55;
    std::fs::write(&copy, &damaged).unwrap();

    for args in [
        // The sweep of primary copies whose archive copy "is whole".
        vec!["gc", "--json", "--grace", "0s", "--no-retention"],
        // Run twice: the first run's move finds the copy already there.
        vec!["gc", "--json", "--grace", "0s", "--no-retention"],
    ] {
        let (code, out, err) = run_cli(&app.data, &a.config, &args);
        assert_eq!(
            code, 2,
            "the damaged copy is an error to report: {out}{err}"
        );
        let summary = json_of(&out);
        assert_eq!(summary["redundant_copies_deleted"], 0, "{summary}");
        assert_eq!(summary["blobs_archived"], 0, "{summary}");
        assert!(
            summary["errors"][0]
                .as_str()
                .unwrap()
                .contains("archived copy"),
            "{summary}"
        );
        assert_eq!(std::fs::read(a.primary(hex)).unwrap(), content);
    }

    let (code, fsck) = a.fsck();
    assert_eq!(code, 1, "{fsck}");
    assert_eq!(fsck["corrupt"], json!([]), "the media are fine: {fsck}");
    assert_eq!(
        fsck["corrupt_copies"].as_array().unwrap().len(),
        1,
        "{fsck}"
    );
    let (code, out, err) = run_cli(&app.data, &a.config, &["fsck", "--repair", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let repaired = json_of(&out);
    assert_eq!(repaired["media_marked"], 0, "{repaired}");
    assert_eq!(repaired["quarantined"].as_array().unwrap().len(), 1);
    assert!(!copy.exists());
    let (code, fsck) = a.fsck();
    assert_eq!(code, 0, "{fsck}");

    // Now the move goes through, with a copy it made and verified itself.
    let summary = a.gc(&["--no-retention"]);
    assert_eq!(summary["blobs_archived"], 1, "{summary}");
    assert_eq!(std::fs::read(&copy).unwrap(), content);
    let url = app.url(&sign(&app.client, &app.base, id).await);
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap(), content);
}

/// Files in the archive root that the index does not know (a move that lost
/// the race with GC deleting the blob) are swept after the grace period; a
/// corrupt archived blob is quarantined on the archive disk, never deleted.
#[tokio::test]
async fn gc_sweeps_unknown_archive_files_and_fsck_quarantines_corrupt_ones() {
    let mut a = start("").await;
    a.app
        .accept_damage("the corrupt archived blob is quarantined: a known loss");
    let app = &a.app;
    let stray = unique_png(99);
    let stray_hex = blake3::hash(&stray).to_hex().to_string();
    let stray_path = a.archived(&stray_hex);
    std::fs::create_dir_all(stray_path.parent().unwrap()).unwrap();
    std::fs::write(&stray_path, &stray).unwrap();

    let content = unique_png(100);
    let v = upload_attached(app, content.clone(), 3).await;
    let hex = v["blake3"].as_str().unwrap();
    // Grace 1 h: the fresh stray file stays; the live blob moves.
    let (code, out, err) = run_cli(&app.data, &a.config, &["gc", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["unknown_files_deleted"], 0, "{summary}");
    assert!(stray_path.exists());
    assert_eq!(summary["blobs_archived"], 1, "{summary}");
    let (_, fsck) = a.fsck();
    assert_eq!(
        fsck["orphan_files"],
        json!([stray_path.display().to_string()])
    );
    // Past the grace period it goes.
    let summary = a.gc(&[]);
    assert_eq!(summary["unknown_files_deleted"], 1, "{summary}");
    assert!(!stray_path.exists());

    // Damage the archived copy: fsck finds it, --repair quarantines it next
    // to the archive's blobs/ and marks the media.
    let archived = a.archived(hex);
    let mut bytes = std::fs::read(&archived).unwrap();
    bytes[200] ^= 0xff;
    std::fs::write(&archived, &bytes).unwrap();
    let (code, fsck) = a.fsck();
    assert_eq!(code, 1, "{fsck}");
    assert_eq!(fsck["corrupt"], json!([hex]), "{fsck}");
    let (code, out, err) = run_cli(&app.data, &a.config, &["fsck", "--repair", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let repaired: Value = serde_json::from_str(&out).unwrap();
    let quarantined = repaired["quarantined"][0].as_str().unwrap();
    assert!(
        quarantined.starts_with(&a.root.join("quarantine").display().to_string()),
        "{repaired}"
    );
    assert_eq!(std::fs::read(quarantined).unwrap(), bytes);
    assert_eq!(repaired["media_marked"], 1);
}

/// Only blobs whose newest upload is older than `after_days` move.
#[tokio::test]
async fn only_blobs_older_than_after_days_move() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    std::fs::create_dir(&root).unwrap();
    // The daemon knows the root GC moves into (it serves from it, and the
    // teardown checks it).
    let app = TestApp::start_with(&format!(
        "[archive]\nroot = {:?}\nafter_days = 30\n",
        root.display().to_string()
    ))
    .await;
    let old = upload_attached(&app, unique_png(1), 1).await;
    let hex = old["blake3"].as_str().unwrap().to_owned();
    let (mut conn, store) = gc::open_existing(&app.data, Some(&root)).unwrap();
    let now = media_store::clock::Clock::now_ms(&media_store::clock::SystemClock);
    let run = |conn: &mut media_store::index::Maintenance, now_ms: i64| {
        let opts = GcOptions {
            grace: Duration::from_secs(3600),
            tmp_max_age: Duration::from_secs(86_400),
            batch: 64,
            dry_run: false,
            now_ms,
            progress: false,
            retention: false,
            pace: false,
            archive_after: Duration::from_secs(30 * 86_400),
        };
        gc::run(conn, &store, &Default::default(), &opts, None).unwrap()
    };
    let day = 86_400_000;
    assert_eq!(run(&mut conn, now + 29 * day).blobs_archived, 0);
    assert!(shard(&app.data.join("blobs"), &hex).exists());
    assert_eq!(run(&mut conn, now + 31 * day).blobs_archived, 1);
    assert!(shard(&root.join("blobs"), &hex).exists());

    // A fresh upload of other content that shares nothing stays; a new
    // upload of archived content does not bring it back (it is deduplicated
    // against the archive), and a blob with a recent upload is not moved.
    let fresh = upload_attached(&app, unique_png(2), 2).await;
    assert_eq!(run(&mut conn, now + 1000).blobs_archived, 0);
    assert!(shard(&app.data.join("blobs"), fresh["blake3"].as_str().unwrap()).exists());
}

#[tokio::test]
async fn nginx_serves_archived_blobs_through_its_fallback_location() {
    let a = start("[serve]\nnginx_accel = true\n").await;
    let app = &a.app;
    std::fs::create_dir_all(a.root.join("blobs")).unwrap();
    let nginx = Nginx::start_with_archive(
        app.base.trim_start_matches("http://"),
        &app.data.join("blobs"),
        &a.root.join("blobs"),
    );
    let video = testdata("video/h264_aac_faststart.mp4");
    let small = upload_attached(app, unique_png(7), 4).await;
    let moved = upload_attached(app, video.clone(), 5).await;
    let summary = a.gc(&[]);
    assert_eq!(summary["blobs_archived"], 2, "{summary}");
    assert!(!a.primary(moved["blake3"].as_str().unwrap()).exists());
    // A blob uploaded after the move stays on the primary disk.
    let fresh = upload_attached(app, unique_png(8), 6).await;

    for (media, body) in [
        (&moved, video.clone()),
        (&fresh, unique_png(8)),
        (&small, unique_png(7)),
    ] {
        let path = sign(&app.client, &app.base, media["id"].as_i64().unwrap()).await;
        let resp = app.client.get(nginx.url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", nginx.error_log());
        assert_eq!(
            resp.headers()["etag"].to_str().unwrap(),
            format!("\"{}\"", media["blake3"].as_str().unwrap())
        );
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        assert_eq!(resp.bytes().await.unwrap(), body);
    }
    // Range on an archived video through nginx (seeking).
    let path = sign(&app.client, &app.base, moved["id"].as_i64().unwrap()).await;
    let resp = app
        .client
        .get(nginx.url(&path))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206, "{}", nginx.error_log());
    assert_eq!(resp.bytes().await.unwrap(), video[1000..2000]);
    // A deleted media is a 404 at once, archived or not.
    let moved_id = moved["id"].as_i64().unwrap();
    assert_eq!(delete_media(&app.client, &app.base, moved_id).await, 204);
    let resp = app.client.get(nginx.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

/// kill -9 of `media-store gc` at several points of moving 150 blobs (once a
/// run has put 1 to 20 more into the archive: inside batches of 16 and at
/// their ends):
/// after each kill every referenced blob is whole in one root or the other,
/// fsck finds no problem, and a final run finishes the job.
#[tokio::test]
async fn kill_9_of_gc_while_it_archives_loses_nothing() {
    // Small batches: kills land between batches as well as inside one.
    let a = start("[gc]\nbatch = 16\n").await;
    let app = &a.app;
    for seed in 0..150u64 {
        let (status, v) = upload_raw(
            &app.client,
            &app.base,
            9,
            fake_mp4(512 * 1024, 7_000 + seed),
        )
        .await;
        assert_eq!(status, 201, "{v}");
    }
    let config = a.app.data.with_extension("kill.toml");
    std::fs::write(&config, &a.config).unwrap();
    let mut killed_mid_move = 0;
    for more in [1usize, 3, 8, 12, 16, 20] {
        // At most half of what is left, so that the run is still going.
        let before = blob_files(&a.root).len();
        let archived = before + more.min((150 - before) / 2).max(1);
        let mut gc = std::process::Command::new(TestDaemon::binary())
            .args([
                "gc",
                "--json",
                "--no-retention",
                "--grace",
                "0s",
                "--data-dir",
            ])
            .arg(&app.data)
            .arg("--config")
            .arg(&config)
            .env("MEDIA_STORE_API_TOKEN", TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_until(
            Duration::from_secs(60),
            &format!("{archived} blobs in the archive"),
            || blob_files(&a.root).len() >= archived,
        )
        .await;
        if gc.try_wait().unwrap().is_none() {
            killed_mid_move += 1;
        }
        gc.kill().unwrap(); // SIGKILL
        gc.wait().unwrap();
        eprintln!(
            "killed at {archived}+ archived: {} primary, {} archived, {} in the archive's tmp/",
            blob_files(&app.data).len(),
            blob_files(&a.root).len(),
            std::fs::read_dir(a.root.join("tmp")).unwrap().count()
        );
        assert_consistent_with_archive(&app.data, Some(&a.root));
        let (code, fsck) = a.fsck();
        assert_eq!(code, 0, "after a kill at {archived}+ archived: {fsck}");
    }
    assert_eq!(killed_mid_move, 6, "a gc run ended before its kill");
    let summary = a.gc(&["--no-retention"]);
    assert!(
        summary["errors"].as_array().unwrap().is_empty(),
        "{summary}"
    );
    assert!(
        blob_files(&app.data).is_empty(),
        "primary copies left after the final run"
    );
    assert_eq!(blob_files(&a.root).len(), 150);
}

/// Issue #10, point 5: the daemon, `gc` and `fsck` refuse an archive root
/// that is not this store's (an unmounted disk's empty mount point), so GC
/// never archives blobs onto the root file system; `init-archive` makes a
/// new, empty root the store's on purpose.
#[tokio::test]
async fn an_archive_root_without_this_stores_marker_is_refused_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mount_point = dir.path().join("archive");
    std::fs::create_dir(&mount_point).unwrap();
    let config = format!(
        "[archive]\nroot = {:?}\nafter_days = 0\n",
        mount_point.display().to_string()
    );
    // A store that has been running without archival.
    let app = TestApp::start_in(&data, "").await;
    upload_attached(&app, unique_png(77), 1).await;
    app.stop().await;

    for args in [&["gc", "--json"][..], &["fsck", "--json"][..]] {
        let (code, out, err) = run_cli(&data, &config, args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains("media-store init-archive"), "{err}");
    }
    let config_file = dir.path().join("config.toml");
    std::fs::write(&config_file, &config).unwrap();
    let mut serve = std::process::Command::new(TestDaemon::binary())
        .args(["serve", "--listen=127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&config_file)
        .env("MEDIA_STORE_API_TOKEN", TOKEN)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    let exited = poll_blocking(Duration::from_secs(20), || {
        status = serve.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        let _ = serve.kill();
        panic!("the daemon started on a foreign archive root");
    }
    assert_eq!(
        status.unwrap().code(),
        Some(2),
        "the daemon must refuse to start"
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("init-archive"), "{err}");
    assert!(
        std::fs::read_dir(&mount_point).unwrap().next().is_none(),
        "nothing was written to the mount point"
    );

    let (code, out, err) = run_cli(&data, &config, &["init-archive"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is now the archive root"), "{out}");
    let (code, out, err) = run_cli(&data, &config, &["gc", "--json", "--grace", "0s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json_of(&out)["blobs_archived"], 1, "{out}");

    // Another store cannot take this disk over.
    let other = dir.path().join("other");
    let (code, _, err) = run_cli(&other, &config, &["init-archive", "--adopt-existing"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("another store"), "{err}");
}
