//! `media-store gc`: what it deletes, what it keeps, and the proof that it is
//! safe while the daemon uploads the very same content.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::harness::*;
use media_store::lifecycle::gc::{self, GcOptions};

fn age(path: &Path, by: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - by).unwrap();
}

#[tokio::test]
async fn gc_keeps_garbage_within_the_grace_period_and_deletes_it_after() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = TestDaemon::start(&data, &dir.path().join("logs"), "");
    let c = &daemon.client;
    let (a, b) = (unique_png(1), unique_png(2));
    let (s, va) = upload_raw(c, &daemon.base, 1, a.clone()).await;
    assert_eq!(s, 201);
    upload_ok(c, &daemon.base, 1, b.clone()).await;
    let id = va["id"].as_i64().unwrap();
    assert_eq!(delete_media(c, &daemon.base, id).await, 204);

    // A blob file the index never knew, old; another, fresh; a stray name; a stale staging file.
    let (old_unknown, fresh_unknown) = (b"old unknown".to_vec(), b"fresh unknown".to_vec());
    for content in [&old_unknown, &fresh_unknown] {
        let p = blob_path(&data, content);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
    }
    age(
        &blob_path(&data, &old_unknown),
        Duration::from_secs(2 * 3600),
    );
    std::fs::write(data.join("blobs/README"), "not a blob").unwrap();
    let stale = data.join("tmp/0123.part");
    std::fs::write(&stale, "half an upload").unwrap();
    age(&stale, Duration::from_secs(2 * 86_400));

    // Default grace (1 h): the zero-count blob and the fresh unknown file stay.
    let (code, out, err) = run_cli(&data, "", &["gc", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v = json_of(&out);
    assert_eq!(v["blobs_deleted"], 0);
    assert_eq!(v["unknown_files_deleted"], 1);
    assert_eq!(v["tmp_files_deleted"], 1);
    assert!(
        v["foreign_files"][0]
            .as_str()
            .unwrap()
            .ends_with("blobs/README")
    );
    assert!(blob_path(&data, &a).exists());
    assert!(!blob_path(&data, &old_unknown).exists());
    assert!(blob_path(&data, &fresh_unknown).exists());
    assert!(!stale.exists());

    // Dry run with no grace: lists both, deletes nothing, exits 1.
    let (code, out, err) = run_cli(&data, "", &["gc", "--json", "--dry-run", "--grace", "0s"]);
    assert_eq!(code, 1, "{out}{err}");
    let v = json_of(&out);
    assert_eq!(
        (
            v["blobs_deleted"].as_u64(),
            v["unknown_files_deleted"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let listed: Vec<&str> = v["would_delete"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        listed
            .iter()
            .any(|p| p.ends_with(&blake3::hash(&a).to_hex().to_string())),
        "{listed:?}"
    );
    assert!(blob_path(&data, &a).exists() && blob_path(&data, &fresh_unknown).exists());

    // For real: the text summary, exit 0, files and rows gone; the kept blob stays.
    let (code, out, err) = run_cli(&data, "", &["gc", "--grace", "0s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("gc deleted:") && out.contains("1 blobs, 1 unknown files"),
        "{out}"
    );
    assert!(!blob_path(&data, &a).exists());
    assert!(!blob_path(&data, &fresh_unknown).exists());
    assert_eq!(refcount(&data, &blake3::hash(&a).to_hex()), None);
    assert!(blob_path(&data, &b).exists());

    // The content comes back with a new upload (installed again, not deduplicated).
    let (s, v) = upload_raw(c, &daemon.base, 1, a.clone()).await;
    assert_eq!((s, v["deduplicated"].as_bool()), (201, Some(false)));
    std::fs::remove_file(data.join("blobs/README")).unwrap();
    let (code, out, _) = run_cli(&data, "", &["gc", "--json", "--grace", "0s"]);
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)["blobs_deleted"], 0);
}

#[test]
fn gc_refuses_a_folder_without_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("not-mounted");
    std::fs::create_dir_all(data.join("blobs/ab/cd")).unwrap();
    std::fs::write(data.join("blobs/ab/cd/x"), "x").unwrap();
    let (code, _, err) = run_cli(&data, "", &["gc"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("has no index"), "{err}");
    assert!(!data.join("index.sqlite3").exists());
    assert!(data.join("blobs/ab/cd/x").exists());
}

#[tokio::test]
async fn gc_applies_orphan_ttl_but_keeps_media_a_message_carries() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = TestDaemon::start(&data, &dir.path().join("logs"), "");
    let c = &daemon.client;
    let (_, orphan) = upload_raw(c, &daemon.base, 1, unique_png(7)).await;
    let (_, kept) = upload_raw(c, &daemon.base, 1, unique_png(8)).await;
    let kept_id = kept["id"].as_i64().unwrap();
    assert_eq!(attach(c, &daemon.base, 1, kept_id, 1).await, 201);
    // Not a synchronisation: the orphan must outlive its 10 ms TTL.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let config = "[retention]\norphan_ttl = \"10ms\"\n";
    let (code, out, err) = run_cli(&data, config, &["gc", "--json", "--grace", "0s"]);
    assert_eq!(code, 0, "{out}{err}");
    let v = json_of(&out);
    assert_eq!(v["retention"]["orphans_expired"], 1);
    assert_eq!(
        v["blobs_deleted"], 1,
        "the orphan's blob goes in the same run"
    );
    let orphan_url = daemon.url(&format!("/v1/media/{}", orphan["id"]));
    let kept_url = daemon.url(&format!("/v1/media/{}", kept["id"]));
    assert_eq!(get_json(c, &orphan_url).await.0, 404);
    assert_eq!(get_json(c, &kept_url).await.0, 200);
    assert!(!blob_path(&data, &unique_png(7)).exists());
}

/// The proof of storage-layout.md's GC protocol: uploads of the same few
/// contents (each deleted right after, so counts keep hitting 0) race GC with
/// no grace period for thousands of rounds. Every 201 must find its blob whole
/// at once, and at the end every invariant must hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_racing_uploads_of_the_same_content_never_loses_a_blob() {
    race_gc_against_uploads(2000, false).await;
}

/// The same race with archival on and `after_days = 0`: every GC round also
/// moves every live blob to the archive root, while uploads deduplicate
/// against (and revive) blobs in either root (storage-layout.md, A1 to A4).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_and_archival_racing_uploads_never_lose_a_blob() {
    race_gc_against_uploads(1000, true).await;
}

async fn race_gc_against_uploads(gc_rounds: u64, with_archive: bool) {
    const UPLOADERS: u64 = 4;
    let archive_dir = tempfile::tempdir().unwrap();
    let archive: Option<Arc<std::path::PathBuf>> =
        with_archive.then(|| Arc::new(archive_dir.path().to_owned()));
    let app = match &archive {
        Some(root) => {
            TestApp::start_with(&format!(
                "[archive]\nroot = {:?}\nafter_days = 0\n",
                root.display().to_string()
            ))
            .await
        }
        None => TestApp::start().await,
    };
    let contents: Arc<Vec<Vec<u8>>> = Arc::new((0..3).map(|i| unique_png(500 + i)).collect());
    let done = Arc::new(AtomicBool::new(false));
    // Uploads answered so far: GC goes on past its rounds until both sides of
    // the race happened enough (on a loaded machine uploads are slower).
    let uploaded = Arc::new(AtomicU64::new(0));
    let deleted_by_gc = Arc::new(AtomicU64::new(0));
    let archived_by_gc = Arc::new(AtomicU64::new(0));

    // GC on its own connection, as `media-store gc` in another process would.
    let gc_task = {
        let (data, done, deleted) = (app.data.clone(), done.clone(), deleted_by_gc.clone());
        let (archive, archived) = (archive.clone(), archived_by_gc.clone());
        let uploaded = uploaded.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let (mut conn, store) =
                gc::open_existing(&data, archive.as_deref().map(|p| p.as_path())).unwrap();
            let retention = Default::default();
            for round in 0u64.. {
                let raced_enough = uploaded.load(Ordering::Relaxed) >= 500
                    && deleted.load(Ordering::Relaxed) >= 50
                    && (archive.is_none() || archived.load(Ordering::Relaxed) >= 50);
                // Bounded: at most 5x the rounds or 5 minutes.
                if (round >= gc_rounds && raced_enough)
                    || round >= 5 * gc_rounds
                    || started.elapsed() > Duration::from_secs(300)
                {
                    break;
                }
                let opts = GcOptions {
                    grace: Duration::ZERO,
                    tmp_max_age: Duration::from_secs(86_400),
                    batch: 256,
                    dry_run: false,
                    now_ms: media_store::clock::Clock::now_ms(&media_store::clock::SystemClock),
                    progress: false,
                    retention: false,
                    pace: false,
                    archive_after: Duration::ZERO,
                };
                let s = gc::run(&mut conn, &store, &retention, &opts, None).unwrap();
                assert!(s.errors.is_empty(), "{:?}", s.errors);
                deleted.fetch_add(s.blobs_deleted + s.unknown_files_deleted, Ordering::Relaxed);
                archived.fetch_add(s.blobs_archived, Ordering::Relaxed);
            }
            done.store(true, Ordering::Relaxed);
        })
    };

    let mut uploaders = Vec::new();
    for u in 0..UPLOADERS {
        let (client, base, data) = (app.client.clone(), app.base.clone(), app.data.clone());
        let (contents, done, archive) = (contents.clone(), done.clone(), archive.clone());
        let uploaded = uploaded.clone();
        uploaders.push(tokio::spawn(async move {
            let (mut n, mut dedup) = (0u64, 0u64);
            let mut i = u;
            while !done.load(Ordering::Relaxed) && n < 20_000 {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Every 64th upload is a unique content that stays; the rest race
                // on the shared few and are deleted at once, so their counts
                // keep hitting 0 while other uploads revive them.
                let keep = n % 64 == 0;
                let unique;
                let content = if keep {
                    unique = unique_png(1_000_000 + u * 100_000 + n);
                    &unique
                } else {
                    &contents[(i >> 33) as usize % contents.len()]
                };
                let (status, v) = upload_raw(&client, &base, u as i64, content.clone()).await;
                assert_eq!(status, 201, "{v}");
                n += 1;
                uploaded.fetch_add(1, Ordering::Relaxed);
                dedup += u64::from(v["deduplicated"] == true);
                // Our row holds a reference: the blob must be there, whole, now.
                let bytes = read_stored_blob(
                    &data,
                    archive.as_deref().map(|p| p.as_path()),
                    &blake3::hash(content),
                )
                .unwrap_or_else(|e| panic!("blob lost after a 201 ({v}): {e}"));
                assert_eq!(
                    blake3::hash(&bytes),
                    blake3::hash(content),
                    "blob corrupt after a 201"
                );
                if !keep {
                    let id = v["id"].as_i64().unwrap();
                    assert_eq!(delete_media(&client, &base, id).await, 204);
                }
            }
            (n, dedup)
        }));
    }
    gc_task.await.unwrap();
    let (mut uploads, mut dedups) = (0, 0);
    for u in uploaders {
        let (n, d) = u.await.unwrap();
        uploads += n;
        dedups += d;
    }
    let deleted = deleted_by_gc.load(Ordering::Relaxed);
    let archived = archived_by_gc.load(Ordering::Relaxed);
    eprintln!(
        "{gc_rounds} gc rounds, {uploads} uploads ({dedups} deduplicated), {deleted} blobs collected, \
         {archived} archived"
    );
    // Both sides of the race really happened many times.
    assert!(uploads >= 500, "only {uploads} uploads raced GC");
    assert!(dedups >= 100, "only {dedups} deduplicated uploads");
    assert!(
        deleted >= 50,
        "GC collected only {deleted} blobs: it never really raced"
    );
    if with_archive {
        assert!(
            archived >= 50,
            "only {archived} blobs archived: the mover never raced"
        );
    }
    // The teardown checks every invariant, in both roots (`app` goes before
    // `archive_dir`).
}

#[tokio::test]
async fn the_daemon_collects_garbage_itself_when_gc_interval_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = "[gc]\ninterval = \"100ms\"\ngrace = \"0s\"\n";
    let daemon = TestDaemon::start(&data, &dir.path().join("logs"), config);
    let content = unique_png(77);
    let (s, v) = upload_raw(&daemon.client, &daemon.base, 1, content.clone()).await;
    assert_eq!(s, 201);
    let id = v["id"].as_i64().unwrap();
    assert_eq!(delete_media(&daemon.client, &daemon.base, id).await, 204);
    // The pass that unlinks the file logs its summary just after: wait for both.
    wait_until(
        Duration::from_secs(5),
        "background GC to collect the blob",
        || !blob_path(&data, &content).exists(),
    )
    .await;
    daemon
        .wait_for_log("background gc finished", Duration::from_secs(5))
        .await;
    assert_eq!(refcount(&data, &blake3::hash(&content).to_hex()), None);
}
