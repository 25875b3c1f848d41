//! The S3 blob backend (issue #13) against a real three-node Garage cluster
//! (`harness::garage`): the blob-store contract, uploads and downloads
//! through the daemon, GC racing uploads, fsck, and faults (a node down, the
//! whole cluster down, objects deleted or truncated behind the daemon's back).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use media_store::lifecycle::fsck::{self, FsckOptions};
use media_store::lifecycle::gc::{self, GcOptions};
use media_store::store::{BlobStore, StoreConfig};
use object_store::ObjectStoreExt as _;
use serde_json::json;

use crate::harness::garage::{Garage, RPC_TIMEOUT, S3Bucket};
use crate::harness::nginx::Nginx;
use crate::harness::slowproxy::SlowProxy;
use crate::harness::*;

/// `[store]` TOML for `bucket`, its keys in files under `keys` (as an
/// operator would pass them: never in the config file).
fn store_toml(bucket: &S3Bucket, keys: &std::path::Path, extra_s3: &str) -> String {
    let id = keys.join("s3-key-id");
    let secret = keys.join("s3-secret");
    std::fs::write(&id, &bucket.access_key_id).unwrap();
    std::fs::write(&secret, &bucket.secret_access_key).unwrap();
    format!(
        "[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = {:?}\nbucket = {:?}\nregion = {:?}\n\
         prefix = \"media/\"\naccess_key_id_file = {:?}\nsecret_access_key_file = {:?}\n\
         part_size = 5242880\n{}connect_timeout = \"1s\"\n{extra_s3}",
        bucket.endpoint,
        bucket.bucket,
        bucket.region,
        id.display().to_string(),
        secret.display().to_string(),
        // A short retry_timeout unless the test sets its own.
        if extra_s3.contains("retry_timeout") {
            ""
        } else {
            "retry_timeout = \"3s\"\n"
        },
    )
}

fn store_config(toml: &str) -> StoreConfig {
    let table: toml::Table = toml.parse().unwrap();
    table["store"].clone().try_into().unwrap()
}

/// The key of a blob's object under the tests' `media/` prefix: the
/// documented on-disk layout's relative path.
fn object_key(hash: &blake3::Hash) -> object_store::path::Path {
    let rel = media_store::store::blob_relative_path(hash);
    object_store::path::Path::from(format!("media/blobs/{}", rel.display()))
}

/// A blob's bytes as a reader finds them, read straight from the disk and
/// the bucket (not through the daemon's code): the local copy under the
/// data folder, else the bucket's object (archival puts the object before
/// it unlinks the local copy).
async fn stored_blob(
    data: &std::path::Path,
    bucket: &S3Bucket,
    hash: &blake3::Hash,
) -> Option<bytes::Bytes> {
    let local = data
        .join("blobs")
        .join(media_store::store::blob_relative_path(hash));
    match std::fs::read(local) {
        Ok(bytes) => Some(bytes.into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => object(bucket, hash).await,
        Err(e) => panic!("reading a blob file: {e}"),
    }
}

/// `[store]` and `[archive]` TOML for an archive bucket below a local
/// primary (`archive.backend = "s3"`), archiving at the next GC.
fn archive_bucket_toml(bucket: &S3Bucket, keys: &std::path::Path) -> String {
    format!(
        "{}\n[archive]\nbackend = \"s3\"\nafter_days = 0\n",
        store_toml(bucket, keys, "").replace("backend = \"s3\"", "backend = \"local\"")
    )
}

/// The object a blob is kept as, read straight from the bucket (not through
/// the daemon's code): `None` when there is none.
async fn object(bucket: &S3Bucket, hash: &blake3::Hash) -> Option<bytes::Bytes> {
    let key = object_key(hash);
    match bucket.store().get(&key).await {
        Ok(got) => Some(got.bytes().await.unwrap()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("reading {key} from the bucket: {e}"),
    }
}

async fn shared_bucket() -> S3Bucket {
    tokio::task::spawn_blocking(|| Garage::shared().create_bucket())
        .await
        .unwrap()
}

/// A cluster of the test's own, for tests that stop or pause its nodes
/// (`rpc_timeout`: as [`Garage::start_with_rpc_timeout`]), and a bucket on it.
async fn own_cluster(rpc_timeout: Option<Duration>) -> (Arc<Garage>, S3Bucket) {
    let garage = tokio::task::spawn_blocking(move || Garage::start_with_rpc_timeout(rpc_timeout))
        .await
        .unwrap();
    let garage = Arc::new(garage);
    let bucket = on_cluster(&garage, |g| g.create_bucket()).await;
    (garage, bucket)
}

/// Runs `f` on the cluster on a blocking thread (the harness waits for its
/// nodes).
async fn on_cluster<T: Send + 'static>(
    garage: &Arc<Garage>,
    f: impl FnOnce(&Garage) -> T + Send + 'static,
) -> T {
    let garage = garage.clone();
    tokio::task::spawn_blocking(move || f(&garage))
        .await
        .unwrap()
}

/// A PNG's signature and header, then `len` bytes of filler that differ by `seed`.
fn big_png(len: usize, seed: u64) -> Vec<u8> {
    let mut body = testdata("png/gray8.png")[..33].to_vec();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    body.extend((0..len).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    body
}

fn gc_now(grace: Duration) -> GcOptions {
    GcOptions {
        grace,
        tmp_max_age: Duration::from_secs(86_400),
        batch: 256,
        dry_run: false,
        now_ms: media_store::clock::Clock::now_ms(&media_store::clock::SystemClock),
        progress: false,
        retention: false,
        pace: false,
        archive_after: Duration::ZERO,
    }
}

#[test]
fn s3_passes_the_blob_store_contract() {
    let bucket = Garage::shared().create_bucket();
    let dir = tempfile::tempdir().unwrap();
    let config = store_config(&store_toml(&bucket, dir.path(), ""));
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let store = BlobStore::open(&data)
        .unwrap()
        .with_backend(&config)
        .unwrap();
    assert!(store.is_remote());
    media_store::store::contract::run(&store);
    // A blob above the part size goes as a parallel multipart upload.
    let big = big_png(12 << 20, 1);
    let hash = media_store::store::contract::put(&store, &big);
    assert_eq!(store.read_whole(&hash, big.len() as u64).unwrap(), big);
    assert_eq!(store.delete(&hash).unwrap(), 1);

    // The bucket is now this store's: another store is refused on it.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let refused = BlobStore::open(&other).unwrap().with_backend(&config);
    let err = refused.expect_err("a second store on the same bucket");
    assert!(
        err.to_string().contains("belongs to another store"),
        "{err}"
    );
}

/// A download of media `id` (of `content`, over 2 MB) through the daemon
/// keeps the behaviours of local blobs: whole (verified as it streams),
/// Range, ETag/304 and HEAD.
async fn assert_download_behaviours(app: &TestApp, id: i64, content: &[u8]) {
    assert_eq!(download(&app.client, &app.base, id).await, content);
    let url = signed_url(&app.client, &app.base, id, json!({})).await;
    let ranged = app
        .client
        .get(&url)
        .header("range", "bytes=1000-1999999")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(
        header(&ranged, "content-range"),
        format!("bytes 1000-1999999/{}", content.len())
    );
    let etag = header(&ranged, "etag").to_owned();
    assert_eq!(ranged.bytes().await.unwrap(), content[1000..2_000_000]);
    let cached = app
        .client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    let head = app.client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-length"), content.len().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_and_downloads_through_s3_keep_every_behaviour() {
    let bucket = shared_bucket().await;
    let keys = tempfile::tempdir().unwrap();
    let app = TestApp::start_with(&store_toml(&bucket, keys.path(), "")).await;

    // /healthz names the backend and checks the bucket.
    let (status, health) = get_json(&app.client, &app.url("/healthz")).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["checks"]["s3"], "ok", "{health}");
    assert!(
        health["backend"].as_str().unwrap().starts_with("s3 "),
        "{health}"
    );

    // A small and a multipart-sized upload land in the bucket, whole.
    let small = unique_png(7);
    let big = big_png(11 << 20, 2);
    let a = upload_ok(&app.client, &app.base, 1, small.clone()).await;
    let b = upload_ok(&app.client, &app.base, 1, big.clone()).await;
    assert_eq!(a["deduplicated"], false);
    assert_eq!(object(&bucket, &blake3::hash(&small)).await.unwrap(), small);
    assert_eq!(object(&bucket, &blake3::hash(&big)).await.unwrap(), big);
    assert!(
        !app.data
            .join("blobs")
            .read_dir()
            .unwrap()
            .any(|e| e.unwrap().path().is_dir()),
        "an S3 store keeps no blob on local disk"
    );
    // The same content again is deduplicated, without a second object.
    let again = upload_ok(&app.client, &app.base, 2, small.clone()).await;
    assert_eq!(again["deduplicated"], true, "{again}");

    // Downloads: whole (verified as it streams), Range, ETag/304, HEAD.
    let id_b = b["id"].as_i64().unwrap();
    assert_download_behaviours(&app, id_b, &big).await;
    let id_a = a["id"].as_i64().unwrap();
    assert_eq!(download(&app.client, &app.base, id_a).await, small);

    // /metrics counts the bucket's requests, by op, and their latency, and
    // the whole downloads streamed (the shipped dashboard's S3 row).
    let page = metrics_text(&app.client, &app.url("/metrics")).await;
    for family in [
        "media_store_s3_requests_total{op=\"put\"}",
        "media_store_s3_requests_total{op=\"put_part\"}",
        "media_store_s3_requests_total{op=\"get\"}",
        "media_store_s3_request_seconds_count{op=\"get\"}",
        "media_store_s3_whole_downloads_total{check=\"hashed\"}",
    ] {
        assert!(
            page.lines().any(|l| l.starts_with(family)),
            "/metrics lacks {family}"
        );
    }

    // Deleting every media of a content lets GC remove its object.
    for v in [&a, &again, &b] {
        assert_eq!(
            delete_media(&app.client, &app.base, v["id"].as_i64().unwrap()).await,
            204
        );
    }
    let config = store_config(&store_toml(&bucket, keys.path(), ""));
    let data = app.data.clone();
    let summary = tokio::task::spawn_blocking(move || {
        let (mut index, store) = gc::open_existing(&data, None).unwrap();
        let store = store.with_backend(&config).unwrap();
        gc::run(
            &mut index,
            &store,
            &Default::default(),
            &gc_now(Duration::ZERO),
            None,
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.blobs_deleted, 2, "{summary:?}");
    assert_eq!(object(&bucket, &blake3::hash(&small)).await, None);
    assert_eq!(object(&bucket, &blake3::hash(&big)).await, None);
}

/// storage-layout.md, "S3": GC claims, deletes, forgets; uploads pin. The
/// upload/GC race of tests/it/gc.rs, against the real cluster: after every
/// 201 the object is in the bucket and hashes right, and at the end every
/// media row's object exists and hashes right (teardown).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_racing_uploads_on_s3_never_loses_an_object() {
    let bucket = shared_bucket().await;
    let keys = tempfile::tempdir().unwrap();
    race_gc_against_uploads(&bucket, &store_toml(&bucket, keys.path(), ""), 2000).await;
}

/// The same race with an archive bucket below a local primary: every GC
/// round also archives what the uploads just stored (archive.after_days =
/// 0), so blobs move to the bucket, are deduplicated against there, and are
/// claimed and deleted from both places while uploads of the same content
/// go on (storage-layout.md, "S3 archive tier").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_and_archival_racing_uploads_with_an_archive_bucket_never_lose_a_blob() {
    let bucket = shared_bucket().await;
    let keys = tempfile::tempdir().unwrap();
    race_gc_against_uploads(&bucket, &archive_bucket_toml(&bucket, keys.path()), 300).await;
}

/// GC rounds (grace 0, archival on) against 4 uploaders of 3 shared contents
/// that delete each upload at once; after every 201 the content is read back
/// as a reader would (the local copy, else the bucket's object) and must
/// hash right; at teardown every media row's blob is checked.
async fn race_gc_against_uploads(bucket: &S3Bucket, toml: &str, gc_rounds: u64) {
    const UPLOADERS: u64 = 4;
    let app = TestApp::start_with(&format!("{toml}\n[preview]\nprobe = false\n")).await;
    let config = config_in(&app.data, toml);
    let contents: Arc<Vec<Vec<u8>>> = Arc::new((0..3).map(|i| unique_png(500 + i)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let uploaded = Arc::new(AtomicU64::new(0));
    let collected = Arc::new(AtomicU64::new(0));
    let archived = Arc::new(AtomicU64::new(0));

    let gc_task = {
        let (done, collected, uploaded, archived) = (
            done.clone(),
            collected.clone(),
            uploaded.clone(),
            archived.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let (mut conn, store) = media_store::app::open_existing_store(&config).unwrap();
            let mut rounds = 0u64;
            for round in 0u64.. {
                rounds = round;
                let raced_enough = uploaded.load(Ordering::Relaxed) >= 500
                    && collected.load(Ordering::Relaxed) >= 50;
                if (round >= gc_rounds && raced_enough)
                    || round >= 5 * gc_rounds
                    || started.elapsed() > Duration::from_secs(300)
                {
                    break;
                }
                let s = gc::run(
                    &mut conn,
                    &store,
                    &Default::default(),
                    &gc_now(Duration::ZERO),
                    None,
                )
                .unwrap();
                assert!(s.errors.is_empty(), "{:?}", s.errors);
                collected.fetch_add(s.blobs_deleted, Ordering::Relaxed);
                archived.fetch_add(s.blobs_archived, Ordering::Relaxed);
            }
            done.store(true, Ordering::Relaxed);
            rounds
        })
    };

    let mut uploaders = Vec::new();
    for u in 0..UPLOADERS {
        let (client, base) = (app.client.clone(), app.base.clone());
        let (contents, done, uploaded, bucket, data) = (
            contents.clone(),
            done.clone(),
            uploaded.clone(),
            bucket.clone(),
            app.data.clone(),
        );
        uploaders.push(tokio::spawn(async move {
            let (mut n, mut dedup) = (0u64, 0u64);
            let mut i = u;
            while !done.load(Ordering::Relaxed) && n < 20_000 {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
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
                let stored = stored_blob(&data, &bucket, &blake3::hash(content))
                    .await
                    .unwrap_or_else(|| panic!("blob lost after a 201 ({v})"));
                assert_eq!(
                    blake3::hash(&stored),
                    blake3::hash(content),
                    "object corrupt after a 201"
                );
                if !keep {
                    assert_eq!(
                        delete_media(&client, &base, v["id"].as_i64().unwrap()).await,
                        204
                    );
                }
            }
            (n, dedup)
        }));
    }
    let rounds = gc_task.await.unwrap();
    let (mut uploads, mut dedups) = (0, 0);
    for u in uploaders {
        let (n, d) = u.await.unwrap();
        uploads += n;
        dedups += d;
    }
    let collected = collected.load(Ordering::Relaxed);
    let archived = archived.load(Ordering::Relaxed);
    eprintln!(
        "{uploads} uploads ({dedups} deduplicated) raced {rounds} GC rounds on S3; {collected} \
         blobs collected, {archived} archived"
    );
    if toml.contains("[archive]") {
        assert!(
            archived >= 20,
            "only {archived} blobs moved to the archive bucket"
        );
    }
    assert!(uploads >= 500, "only {uploads} uploads raced GC");
    assert!(dedups >= 100, "only {dedups} deduplicated uploads");
    assert!(
        collected >= 50,
        "GC collected only {collected} objects: it never really raced"
    );
    // Teardown: every media row's object exists and hashes right; no pin or
    // claim is left.
}

/// Whole downloads from the bucket are hashed as they stream once per object
/// version with `store.s3.verify_downloads = "once"` (the default), every
/// time with `"always"`; an object swapped for other bytes behind the
/// daemon's back is a version never hashed, so it is hashed and caught, and
/// it stays caught (a failed version is not remembered). Read as the daemon
/// reads: `open_verified` on a blocking thread of a multi-threaded runtime,
/// which streams through the direct GET path (`store/s3/direct.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_downloads_hash_each_object_version_once_or_always() {
    for (policy, hashes_again) in [("once", false), ("always", true)] {
        let bucket = shared_bucket().await;
        let keys = tempfile::tempdir().unwrap();
        let toml = store_toml(
            &bucket,
            keys.path(),
            &format!("verify_downloads = \"{policy}\"\n"),
        );
        let mut app = TestApp::start_with(&toml).await;
        let content = big_png(300_000, 41);
        let size = content.len() as u64;
        let hash = blake3::hash(&content);
        upload_ok(&app.client, &app.base, 1, content.clone()).await;
        let config = store_config(&toml);
        let data = app.data.clone();
        let store = tokio::task::spawn_blocking(move || {
            let (_index, store) = gc::open_existing(&data, None).unwrap();
            store.with_backend(&config).unwrap()
        })
        .await
        .unwrap();
        let damage_reported = Arc::new(AtomicBool::new(false));
        // (bytes or the stream's error, bytes hashed)
        let read = || {
            let store = store.clone();
            let reported = damage_reported.clone();
            async move {
                let before = store.download_bytes_hashed();
                let opened = store.clone();
                let mut stream = tokio::task::spawn_blocking(move || {
                    let report = Box::new(move || reported.store(true, Ordering::SeqCst));
                    opened.open_verified(&hash, size, 64 * 1024, report)
                })
                .await
                .unwrap()
                .unwrap();
                let mut got = Vec::new();
                let mut failed = None;
                while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
                    match chunk {
                        Ok(chunk) => got.extend_from_slice(&chunk),
                        Err(e) => failed = Some(e.to_string()),
                    }
                }
                (
                    failed.map_or(Ok(got), Err),
                    store.download_bytes_hashed() - before,
                )
            }
        };
        let (first, hashed) = read().await;
        assert_eq!(first.unwrap(), content, "{policy}");
        assert_eq!(hashed, size, "{policy}: the first download hashes");
        let (second, hashed) = read().await;
        assert_eq!(second.unwrap(), content, "{policy}");
        assert_eq!(
            hashed,
            if hashes_again { size } else { 0 },
            "{policy}: the second download of the same version"
        );
        // Other bytes of the same size under the blob's key.
        let mut swapped = content.clone();
        swapped[size as usize / 2] ^= 0xff;
        bucket
            .store()
            .put(&object_key(&hash), swapped.into())
            .await
            .unwrap();
        for round in 0..2 {
            let (third, hashed) = read().await;
            assert!(
                third.is_err(),
                "{policy}, round {round}: swapped bytes streamed as a clean body"
            );
            assert_eq!(
                hashed, size,
                "{policy}, round {round}: a new version is hashed"
            );
        }
        assert!(damage_reported.load(Ordering::SeqCst), "{policy}");
        app.accept_damage("the test swapped an object's bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsck_and_downloads_see_objects_damaged_behind_the_daemons_back() {
    let bucket = shared_bucket().await;
    let keys = tempfile::tempdir().unwrap();
    let toml = store_toml(&bucket, keys.path(), "");
    let mut app = TestApp::start_with(&toml).await;
    let (gone, cut) = (unique_png(11), big_png(300_000, 12));
    let v_gone = upload_ok(&app.client, &app.base, 1, gone.clone()).await;
    let v_cut = upload_ok(&app.client, &app.base, 1, cut.clone()).await;
    let key = |h: blake3::Hash| object_key(&h);
    let s3 = bucket.store();
    s3.delete(&key(blake3::hash(&gone))).await.unwrap();
    s3.put(
        &key(blake3::hash(&cut)),
        cut[..cut.len() / 2].to_vec().into(),
    )
    .await
    .unwrap();
    // An object the index does not know.
    s3.put(&key(blake3::hash(b"stray")), b"stray".to_vec().into())
        .await
        .unwrap();

    // fsck lists what is wrong (no 500 anywhere, nothing marked yet).
    let config = store_config(&toml);
    let data = app.data.clone();
    let summary = tokio::task::spawn_blocking(move || {
        let (mut index, store) = gc::open_existing(&data, None).unwrap();
        let store = store.with_backend(&config).unwrap();
        let opts = FsckOptions {
            repair: false,
            progress: false,
            now_ms: 0,
        };
        fsck::run(&mut index, &store, &opts).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        summary.missing,
        vec![blake3::hash(&gone).to_hex().to_string()],
        "{summary:?}"
    );
    assert_eq!(
        summary.corrupt,
        vec![blake3::hash(&cut).to_hex().to_string()],
        "{summary:?}"
    );
    assert_eq!(summary.orphan_files.len(), 1, "{summary:?}");

    // A download of the missing object answers 410 media_corrupt (the
    // shipped answer for lost content), never 500.
    let id = v_gone["id"].as_i64().unwrap();
    let url = signed_url(&app.client, &app.base, id, json!({})).await;
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 410);
    // The truncated object fails the transfer, never a clean wrong body.
    let id = v_cut["id"].as_i64().unwrap();
    let url = signed_url(&app.client, &app.base, id, json!({})).await;
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.bytes().await.is_err(),
        "a truncated object streamed as a clean body"
    );
    // An upload of the same content heals both.
    for content in [gone.clone(), cut.clone()] {
        let v = upload_ok(&app.client, &app.base, 1, content.clone()).await;
        assert_eq!(v["deduplicated"], false, "{v}");
        assert_eq!(
            object(&bucket, &blake3::hash(&content)).await.unwrap(),
            content
        );
    }
    assert_eq!(
        download(&app.client, &app.base, v_cut["id"].as_i64().unwrap()).await,
        cut
    );
    app.accept_damage("an object the index does not know stays in the bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_down_is_survived_and_a_cluster_down_answers_503_then_recovers() {
    let (garage, bucket) = own_cluster(Some(RPC_TIMEOUT)).await;
    let keys = tempfile::tempdir().unwrap();
    let app = TestApp::start_with(&store_toml(&bucket, keys.path(), "")).await;
    let before = upload_ok(&app.client, &app.base, 1, unique_png(21)).await;

    // One node of three down (not the one the daemon talks to): writes and
    // reads still reach their quorum of 2.
    on_cluster(&garage, move |g| g.stop_node(2)).await;
    let during = upload_ok(&app.client, &app.base, 1, big_png(6 << 20, 22)).await;
    assert_eq!(during["deduplicated"], false);
    let id = before["id"].as_i64().unwrap();
    assert_eq!(download(&app.client, &app.base, id).await, unique_png(21));
    on_cluster(&garage, move |g| g.start_node(2)).await;

    // The whole cluster down: 503 with Retry-After, nothing half-committed.
    on_cluster(&garage, move |g| g.stop_all()).await;
    let refused = app
        .client
        .post(format!("{}/v1/media?uploader_id=1", app.base))
        .header("authorization", bearer())
        .body(unique_png(23))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    let (status, health) = get_json(&app.client, &app.url("/healthz")).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["checks"]["s3"], "failing", "{health}");
    let (_, listed) = get_json(&app.client, &app.url("/v1/media?uploader_id=1")).await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );

    // Back up: the same daemon (no restart) uploads again.
    on_cluster(&garage, move |g| g.start_all()).await;
    let after = upload_ok(&app.client, &app.base, 1, unique_png(23)).await;
    assert_eq!(after["deduplicated"], false);
    assert_eq!(
        object(&bucket, &blake3::hash(&unique_png(23)))
            .await
            .unwrap(),
        unique_png(23)
    );
    drop(app);
    drop(garage);
}

/// storage-layout.md S8: a daemon killed in the middle of a multipart upload
/// leaves it open in the bucket, holding its parts. `gc` aborts the uploads
/// under the store's prefix begun more than `gc.tmp_max_age` ago, leaves a
/// younger one (an upload that may be in flight) and any outside the prefix
/// alone; fsck lists them; the count is in the gc summary and its JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_aborts_multipart_uploads_a_killed_daemon_left() {
    use object_store::multipart::MultipartStore as _;
    let bucket = shared_bucket().await;
    let keys = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The daemon reaches the cluster through a slow link (64 KiB per 100 ms
    // and connection), so that its multipart upload lasts seconds.
    let proxy = SlowProxy::start(&bucket.endpoint).await;
    let mut slow = bucket.clone();
    slow.endpoint = proxy.endpoint();
    let mut daemon = TestDaemon::start(
        &data,
        &dir.path().join("log"),
        &store_toml(&slow, keys.path(), ""),
    );
    proxy.set_delays(Duration::ZERO, Duration::from_millis(100));
    let body = big_png(16 << 20, 31);
    let hash = blake3::hash(&body);
    let upload = {
        let (client, url) = (daemon.client.clone(), daemon.url("/v1/media?uploader_id=1"));
        tokio::spawn(async move {
            client
                .post(url)
                .header("authorization", bearer())
                .body(body)
                .send()
                .await
        })
    };
    let begun = std::time::Instant::now();
    let killed = loop {
        let open = bucket.incomplete_uploads().await;
        if !open.is_empty() {
            daemon.kill9();
            break open;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(60),
            "no multipart upload began:\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        upload.await.unwrap().is_err(),
        "the upload outlived its daemon"
    );
    let blob_key = object_key(&hash).to_string();
    assert_eq!(killed.len(), 1, "{killed:?}");
    assert_eq!(killed[0].0, blob_key);
    // Killed: the upload stays open in the bucket, the object was never made.
    // The proxy first delivers, at full speed, what the daemon had sent
    // before it died (its requests still in flight), so that none of them
    // reaches the cluster after the GC below.
    proxy.set_delays(Duration::ZERO, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(bucket.incomplete_uploads().await, killed);
    assert!(object(&bucket, &hash).await.is_none());

    // Another old upload, outside the store's prefix: not the store's.
    let s3 = bucket.store();
    let foreign = object_store::path::Path::from("elsewhere/big");
    let foreign_id = s3.create_multipart(&foreign).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cut = media_store::clock::Clock::now_ms(&media_store::clock::SystemClock);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A young upload under the prefix (begun after the cut): in flight.
    let young = object_key(&blake3::hash(b"young"));
    let young_id = s3.create_multipart(&young).await.unwrap();
    s3.put_part(&young, &young_id, 0, vec![7u8; 1 << 20].into())
        .await
        .unwrap();
    assert_eq!(bucket.incomplete_uploads().await.len(), 3);

    // GC as at `cut + tmp_max_age`: only the killed daemon's upload is old
    // enough. A dry run counts it and aborts nothing.
    let config = store_config(&store_toml(&bucket, keys.path(), ""));
    let (summary, dry) = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || {
            let (mut index, store) = gc::open_existing(&data, None).unwrap();
            let store = store.with_backend(&config).unwrap();
            let mut opts = gc_now(Duration::from_secs(3600));
            opts.tmp_max_age = Duration::from_secs(3600);
            opts.now_ms = cut + 3_600_000;
            opts.dry_run = true;
            let dry = gc::run(&mut index, &store, &Default::default(), &opts, None).unwrap();
            opts.dry_run = false;
            let s = gc::run(&mut index, &store, &Default::default(), &opts, None).unwrap();
            (s, dry)
        })
        .await
        .unwrap()
    };
    assert_eq!(dry.multipart_uploads_aborted, 1, "{dry:?}");
    assert!(
        dry.would_delete.iter().any(|w| w.contains(&blob_key)),
        "{dry:?}"
    );
    assert_eq!(summary.multipart_uploads_aborted, 1, "{summary:?}");
    assert!(summary.errors.is_empty(), "{summary:?}");
    assert!(summary.to_text().contains("1 incomplete multipart uploads"));
    let mut left = bucket.incomplete_uploads().await;
    left.sort();
    let mut expected = vec![
        (young.to_string(), young_id.clone()),
        (foreign.to_string(), foreign_id.clone()),
    ];
    expected.sort();
    assert_eq!(
        left, expected,
        "the young upload or the foreign one was aborted"
    );

    // fsck lists the store's open upload; `media-store gc --json` with
    // `gc.tmp_max_age = 0s` aborts it and reports it.
    let cli_toml = format!(
        "{}\n[gc]\ntmp_max_age = \"0s\"\n",
        store_toml(&bucket, keys.path(), "")
    );
    let (code, out, err) = run_cli(&data, &cli_toml, &["fsck", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let fsck = json_of(&out);
    let listed = fsck["incomplete_uploads"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{fsck}");
    assert!(
        listed[0].as_str().unwrap().contains(young.as_ref()),
        "{fsck}"
    );
    let (code, out, err) = run_cli(&data, &cli_toml, &["gc", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let gc_json = json_of(&out);
    assert_eq!(gc_json["multipart_uploads_aborted"], 1, "{gc_json}");
    assert_eq!(
        bucket.incomplete_uploads().await,
        vec![(foreign.to_string(), foreign_id.clone())]
    );
    s3.abort_multipart(&foreign, &foreign_id).await.unwrap();
    assert!(bucket.incomplete_uploads().await.is_empty());
}

/// storage-layout.md S9: one node of three hung (SIGSTOP: its connections
/// stay open, it answers nothing, nobody is told it is gone). A Garage node
/// reads from itself and its lowest-ping peer only, and waits
/// `rpc_timeout_msec` before it asks the third node, so each read of a
/// request that picked the hung node costs one RPC timeout, until the
/// others' pings mark it down (about 1.5 minutes). With the timeout advised
/// in storage-layout.md (a few seconds, here [`HUNG_RPC_TIMEOUT`]) and the
/// daemon's `request_timeout` well above a few of them, uploads (multipart
/// included) and downloads through the daemon succeed while either peer of
/// the daemon's node is hung.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_node_slows_uploads_and_downloads_but_they_succeed() {
    const HUNG_RPC_TIMEOUT: Duration = Duration::from_secs(3);
    let (garage, bucket) = own_cluster(Some(HUNG_RPC_TIMEOUT)).await;
    let keys = tempfile::tempdir().unwrap();
    let app = TestApp::start_with(&store_toml(
        &bucket,
        keys.path(),
        "request_timeout = \"30s\"\nretry_timeout = \"30s\"\n",
    ))
    .await;
    let old = big_png(6 << 20, 60);
    let before = upload_ok(&app.client, &app.base, 1, old.clone()).await;
    let before_id = before["id"].as_i64().unwrap();
    // The daemon talks to node 0; each of its two peers hung in turn (one
    // of them is the one node 0 prefers).
    for hung in [1usize, 2] {
        on_cluster(&garage, move |g| g.pause_node(hung)).await;
        let seed = 60 + 10 * hung as u64;
        let t = std::time::Instant::now();
        let small = upload_ok(&app.client, &app.base, 1, unique_png(seed)).await;
        let small_up = t.elapsed();
        let body = big_png(6 << 20, seed + 1);
        let t = std::time::Instant::now();
        let big = upload_ok(&app.client, &app.base, 1, body.clone()).await;
        let big_up = t.elapsed();
        let t = std::time::Instant::now();
        assert_eq!(download(&app.client, &app.base, before_id).await, old);
        let old_down = t.elapsed();
        let t = std::time::Instant::now();
        let big_id = big["id"].as_i64().unwrap();
        assert_eq!(download(&app.client, &app.base, big_id).await, body);
        let small_id = small["id"].as_i64().unwrap();
        assert_eq!(
            download(&app.client, &app.base, small_id).await,
            unique_png(seed)
        );
        eprintln!(
            "node {hung} hung (rpc_timeout {HUNG_RPC_TIMEOUT:?}): small upload {small_up:?}, \
             6 MiB upload {big_up:?}, 6 MiB download (older) {old_down:?}, \
             both new downloads {:?}",
            t.elapsed()
        );
        on_cluster(&garage, move |g| g.resume_node(hung)).await;
    }
    // Resumed: fast again.
    let t = std::time::Instant::now();
    upload_ok(&app.client, &app.base, 1, big_png(6 << 20, 99)).await;
    eprintln!("all nodes back: 6 MiB upload {:?}", t.elapsed());
    drop(app);
    drop(garage);
}

/// storage-layout.md S10: a slow cluster (here a link adding 150 ms to each
/// connection and 20 ms to each 64 KiB) is waited for: uploads, multipart
/// included, and downloads succeed. One slower than
/// `store.s3.request_timeout` gets `503 store_unavailable` with
/// `Retry-After` (uploads and downloads, never 500), nothing half-committed
/// (no media row, no pin, no object); once it is fast again the same
/// daemon serves without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_cluster_is_waited_for_and_one_slower_than_the_timeout_answers_503() {
    let bucket = shared_bucket().await;
    let keys = tempfile::tempdir().unwrap();
    let proxy = SlowProxy::start(&bucket.endpoint).await;
    let mut slow = bucket.clone();
    slow.endpoint = proxy.endpoint();
    let app = TestApp::start_with(&store_toml(
        &slow,
        keys.path(),
        "request_timeout = \"4s\"\n",
    ))
    .await;

    proxy.set_delays(Duration::from_millis(150), Duration::from_millis(20));
    let t = std::time::Instant::now();
    let small = upload_ok(&app.client, &app.base, 1, unique_png(41)).await;
    let small_up = t.elapsed();
    let big_body = big_png(6 << 20, 42);
    let t = std::time::Instant::now();
    let big = upload_ok(&app.client, &app.base, 1, big_body.clone()).await;
    let big_up = t.elapsed();
    let t = std::time::Instant::now();
    let small_id = small["id"].as_i64().unwrap();
    assert_eq!(
        download(&app.client, &app.base, small_id).await,
        unique_png(41)
    );
    let big_id = big["id"].as_i64().unwrap();
    assert_eq!(download(&app.client, &app.base, big_id).await, big_body);
    eprintln!(
        "slow link: small upload {small_up:?}, 6 MiB upload {big_up:?}, both downloads {:?}",
        t.elapsed()
    );

    // Slower than request_timeout (4 s): every request times out.
    proxy.set_delays(Duration::ZERO, Duration::from_secs(6));
    let body = unique_png(43);
    let hash = blake3::hash(&body);
    let t = std::time::Instant::now();
    let refused = app
        .client
        .post(format!("{}/v1/media?uploader_id=1", app.base))
        .header("authorization", bearer())
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let refused_in = t.elapsed();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let err: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(err["error"]["code"], "store_unavailable", "{err}");
    // (The big blob: small ones may be served from the daemon's memory.)
    let url = signed_url(&app.client, &app.base, big_id, json!({})).await;
    let t = std::time::Instant::now();
    let unserved = app.client.get(url).send().await.unwrap();
    let unserved_in = t.elapsed();
    assert_eq!(unserved.status(), 503);
    assert!(unserved.headers().contains_key("retry-after"));
    let err: serde_json::Value = unserved.json().await.unwrap();
    assert_eq!(err["error"]["code"], "store_unavailable", "{err}");
    eprintln!("too slow: upload refused in {refused_in:?}, download in {unserved_in:?}");
    assert!(refused_in < Duration::from_secs(30) && unserved_in < Duration::from_secs(30));
    // Nothing half-committed.
    {
        let idx = index(&app.data);
        let rows: i64 = idx
            .query_row(
                "SELECT count(*) FROM media WHERE hash = ?1",
                [hash.as_bytes()],
                |r| r.get(0),
            )
            .unwrap();
        let pins: i64 = idx
            .query_row("SELECT count(*) FROM blob_pins", [], |r| r.get(0))
            .unwrap();
        assert_eq!((rows, pins), (0, 0), "a refused upload left a row or a pin");
    }
    assert!(object(&bucket, &hash).await.is_none());

    // Fast again: the same daemon uploads and serves.
    proxy.set_delays(Duration::ZERO, Duration::ZERO);
    let after = upload_ok(&app.client, &app.base, 1, body.clone()).await;
    assert_eq!(after["deduplicated"], false);
    assert_eq!(object(&bucket, &hash).await.unwrap(), body);
    assert_eq!(
        download(&app.client, &app.base, small_id).await,
        unique_png(41)
    );
    drop(app);
}

/// `serve.s3_redirect`: a checked download answers 302 to a presigned GET;
/// the bucket then serves the bytes, Range, and the type and disposition
/// the daemon would have sent. A bad signature never gets a redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn downloads_can_redirect_to_a_presigned_get_of_the_object() {
    let bucket = shared_bucket().await;
    let keys = tempfile::tempdir().unwrap();
    let toml = store_toml(&bucket, keys.path(), "");
    let app = TestApp::start_with(&format!("{toml}\n[serve]\ns3_redirect = true\n")).await;
    let content = big_png(200_000, 31);
    let v = upload_ok(&app.client, &app.base, 1, content.clone()).await;
    let id = v["id"].as_i64().unwrap();
    let url = signed_url(
        &app.client,
        &app.base,
        id,
        json!({"disposition": "attachment"}),
    )
    .await;
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_follow.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let location = header(&resp, "location").to_owned();
    assert!(location.starts_with(&bucket.endpoint), "{location}");
    assert!(location.contains("X-Amz-Signature"), "{location}");
    // Followed: the bytes, with the daemon's headers, and Range from the bucket.
    let got = reqwest::get(&location).await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(header(&got, "content-type"), "image/png");
    assert!(header(&got, "content-disposition").starts_with("attachment"));
    assert_eq!(got.bytes().await.unwrap(), content);
    let ranged = reqwest::Client::new()
        .get(&location)
        .header("range", "bytes=10-99")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.bytes().await.unwrap(), content[10..100]);
    // HEAD stays with the daemon (a presigned GET cannot answer it).
    let head = no_follow.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    // A forged signature is refused before any redirect.
    let forged = no_follow
        .get(url.replace("kid=", "kid=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
}

/// `serve.nginx_accel` with the S3 backend: the daemon checks the signed URL
/// and hands nginx a presigned path (`X-Accel-Redirect: /_s3/…`); the shipped
/// config's `/_s3/` location streams the object from the cluster, with the
/// daemon's type and disposition, Range, HEAD and 304 from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nginx_offloads_downloads_by_proxying_to_the_cluster() {
    let bucket = shared_bucket().await;
    let keys = tempfile::tempdir().unwrap();
    let toml = store_toml(&bucket, keys.path(), "");
    let app = TestApp::start_with(&format!("{toml}\n[serve]\nnginx_accel = true\n")).await;
    let nginx = Nginx::start_with_s3(
        app.base.trim_start_matches("http://"),
        bucket.endpoint.trim_start_matches("http://"),
    );
    let content = big_png(300_000, 41);
    let v = upload_ok(&app.client, &app.base, 1, content.clone()).await;
    let id = v["id"].as_i64().unwrap();
    let path = sign_with(
        &app.client,
        &app.base,
        id,
        json!({"disposition": "attachment"}),
    )
    .await;

    let direct = app.client.get(app.url(&path)).send().await.unwrap();
    let accel = header(&direct, "x-accel-redirect").to_owned();
    assert!(
        accel.starts_with(&format!("/_s3/{}/media/blobs/", bucket.bucket)),
        "{accel}"
    );
    assert!(direct.bytes().await.unwrap().is_empty());

    let resp = app.client.get(nginx.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", nginx.error_log());
    assert!(resp.headers().get("x-accel-redirect").is_none());
    assert_eq!(header(&resp, "content-type"), "image/png");
    assert!(header(&resp, "content-disposition").starts_with("attachment"));
    assert_eq!(header(&resp, "x-content-type-options"), "nosniff");
    let etag = header(&resp, "etag").to_owned();
    assert_eq!(resp.bytes().await.unwrap(), content);
    let ranged = app
        .client
        .get(nginx.url(&path))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206, "{}", nginx.error_log());
    assert_eq!(ranged.bytes().await.unwrap(), content[100..200]);
    let head = app.client.head(nginx.url(&path)).send().await.unwrap();
    assert_eq!(head.status(), 200, "{}", nginx.error_log());
    assert_eq!(header(&head, "content-length"), content.len().to_string());
    let cached = app
        .client
        .get(nginx.url(&path))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304, "{}", nginx.error_log());
    // A tampered URL never reaches the bucket.
    let forged = app
        .client
        .get(nginx.url(&path.replace("kid=", "kid=x")))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
}

fn config_in(data: &std::path::Path, toml: &str) -> media_store::config::Config {
    let overrides = media_store::config::Overrides {
        data_dir: Some(data.to_owned()),
        listen: None,
    };
    media_store::config::Config::from_parts(toml, &Default::default(), &overrides).unwrap()
}

/// One GC run (archival included, grace 0) on a test daemon's data folder,
/// with the tiers its config names.
async fn gc_in(data: &std::path::Path, toml: &str) -> gc::GcSummary {
    let config = config_in(data, toml);
    tokio::task::spawn_blocking(move || {
        let (mut index, store) = media_store::app::open_existing_store(&config).unwrap();
        gc::run(
            &mut index,
            &store,
            &Default::default(),
            &gc_now(Duration::ZERO),
            None,
        )
        .unwrap()
    })
    .await
    .unwrap()
}

/// fsck (no repair) of a test daemon's data folder, with its tiers.
async fn fsck_in(data: &std::path::Path, toml: &str) -> fsck::FsckSummary {
    let config = config_in(data, toml);
    tokio::task::spawn_blocking(move || {
        let (mut index, store) = media_store::app::open_existing_store(&config).unwrap();
        let opts = FsckOptions {
            repair: false,
            progress: false,
            now_ms: 0,
        };
        fsck::run(&mut index, &store, &opts).unwrap()
    })
    .await
    .unwrap()
}

/// Issue #13 point 5: recent media on the local disk, media older than
/// `archive.after_days` moved to the cluster by GC and served transparently
/// (streamed with Range, ETag/304 and HEAD, or redirected to a presigned
/// GET), deduplicated against, collected from the bucket once unreferenced,
/// checked by fsck, and healed by an upload when the object is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_archive_bucket_holds_old_blobs_below_a_local_primary() {
    let bucket = shared_bucket().await;
    let keys = tempfile::tempdir().unwrap();
    let toml = archive_bucket_toml(&bucket, keys.path());
    // A folder of the test's own: the daemon is restarted on it below.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let app = TestApp::start_in(&data, &toml).await;
    let (status, health) = get_json(&app.client, &app.url("/healthz")).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["checks"]["s3"], "ok", "{health}");
    assert!(
        health["backend"]
            .as_str()
            .unwrap()
            .starts_with("local, archive s3 "),
        "{health}"
    );

    let small = unique_png(41);
    let big = big_png(11 << 20, 42);
    let a = upload_ok(&app.client, &app.base, 1, small.clone()).await;
    let b = upload_ok(&app.client, &app.base, 1, big.clone()).await;
    let local = |content: &[u8]| {
        app.data
            .join("blobs")
            .join(media_store::store::blob_relative_path(&blake3::hash(
                content,
            )))
    };
    assert!(local(&small).is_file() && local(&big).is_file());
    assert_eq!(object(&bucket, &blake3::hash(&small)).await, None);

    // GC moves both: objects whole in the bucket, local copies gone.
    let summary = gc_in(&app.data, &toml).await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.blobs_archived, 2, "{summary:?}");
    assert_eq!(summary.archive_blobs, 2, "{summary:?}");
    for content in [&small, &big] {
        assert!(!local(content).exists());
        assert_eq!(
            object(&bucket, &blake3::hash(content)).await.unwrap(),
            content[..]
        );
    }

    // Served from the bucket through the daemon, every behaviour kept.
    let id_b = b["id"].as_i64().unwrap();
    assert_download_behaviours(&app, id_b, &big).await;
    let url = signed_url(&app.client, &app.base, id_b, json!({})).await;
    assert_eq!(
        download(&app.client, &app.base, a["id"].as_i64().unwrap()).await,
        small
    );

    // The same content again is deduplicated against the bucket: no new
    // local copy. New content stays local until archived.
    let again = upload_ok(&app.client, &app.base, 2, small.clone()).await;
    assert_eq!(again["deduplicated"], true, "{again}");
    assert!(!local(&small).exists());
    let fresh = unique_png(43);
    let c = upload_ok(&app.client, &app.base, 2, fresh.clone()).await;

    // fsck sees every blob whole, wherever it is; an unknown object is listed.
    bucket
        .store()
        .put(
            &object_key(&blake3::hash(b"stray")),
            b"stray".to_vec().into(),
        )
        .await
        .unwrap();
    let checked = fsck_in(&app.data, &toml).await;
    assert!(
        checked.missing.is_empty() && checked.corrupt.is_empty(),
        "{checked:?}"
    );
    assert_eq!(checked.blobs_checked, 3, "{checked:?}");
    assert_eq!(checked.blobs_archived, 2, "{checked:?}");
    assert_eq!(checked.orphan_files.len(), 1, "{checked:?}");

    // An archived object lost behind the daemon's back: 410, never 500;
    // the next upload of the content installs a local copy again.
    bucket
        .store()
        .delete(&object_key(&blake3::hash(&big)))
        .await
        .unwrap();
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 410);
    let healed = upload_ok(&app.client, &app.base, 1, big.clone()).await;
    assert_eq!(healed["deduplicated"], false, "{healed}");
    assert!(local(&big).is_file());
    assert_eq!(download(&app.client, &app.base, id_b).await, big);

    // Unreferenced: GC deletes the object and the row (and the stray
    // object, past its grace); the rest stays.
    for v in [&a, &again] {
        assert_eq!(
            delete_media(&app.client, &app.base, v["id"].as_i64().unwrap()).await,
            204
        );
    }
    let summary = gc_in(&app.data, &toml).await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.blobs_deleted, 1, "{summary:?}");
    assert_eq!(summary.unknown_files_deleted, 1, "{summary:?}");
    assert_eq!(object(&bucket, &blake3::hash(&small)).await, None);
    assert_eq!(object(&bucket, &blake3::hash(b"stray")).await, None);
    // The healed and the fresh content were archived by that run.
    assert_eq!(summary.blobs_archived, 2, "{summary:?}");
    assert_eq!(object(&bucket, &blake3::hash(&big)).await.unwrap(), big);
    app.stop().await;

    // serve.s3_redirect: archived blobs redirect to a presigned GET of the
    // object; a blob with a local copy is streamed by the daemon.
    let app = TestApp::start_in(&data, &format!("{toml}\n[serve]\ns3_redirect = true\n")).await;
    let recent = upload_ok(&app.client, &app.base, 3, unique_png(44)).await;
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = signed_url(&app.client, &app.base, c["id"].as_i64().unwrap(), json!({})).await;
    let resp = no_follow.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let got = reqwest::get(header(&resp, "location")).await.unwrap();
    assert_eq!(got.bytes().await.unwrap(), fresh);
    let url = signed_url(
        &app.client,
        &app.base,
        recent["id"].as_i64().unwrap(),
        json!({}),
    )
    .await;
    assert_eq!(no_follow.get(&url).send().await.unwrap().status(), 200);
}

/// An archive bucket whose cluster is down stops neither uploads (new
/// content goes to the local disk, archived content is deduplicated by the
/// index without asking the cluster) nor downloads of local blobs; archived
/// blobs answer `503 store_unavailable` until the cluster is back, with no
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_archive_cluster_down_uploads_go_on_and_archived_blobs_answer_503() {
    let (garage, bucket) = own_cluster(Some(RPC_TIMEOUT)).await;
    let keys = tempfile::tempdir().unwrap();
    let toml = archive_bucket_toml(&bucket, keys.path());
    let app = TestApp::start_with(&toml).await;
    let old = unique_png(61);
    let v_old = upload_ok(&app.client, &app.base, 1, old.clone()).await;
    assert_eq!(gc_in(&app.data, &toml).await.blobs_archived, 1);

    on_cluster(&garage, move |g| g.stop_all()).await;
    let fresh = unique_png(62);
    let v_fresh = upload_ok(&app.client, &app.base, 1, fresh.clone()).await;
    assert_eq!(v_fresh["deduplicated"], false);
    let again = upload_ok(&app.client, &app.base, 2, old.clone()).await;
    assert_eq!(again["deduplicated"], true, "{again}");
    assert_eq!(
        download(&app.client, &app.base, v_fresh["id"].as_i64().unwrap()).await,
        fresh
    );
    let url = signed_url(
        &app.client,
        &app.base,
        v_old["id"].as_i64().unwrap(),
        json!({}),
    )
    .await;
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let (_, health) = get_json(&app.client, &app.url("/healthz")).await;
    assert_eq!(health["checks"]["s3"], "failing", "{health}");

    on_cluster(&garage, move |g| g.start_all()).await;
    // Not marked lost meanwhile: served again as soon as the cluster is.
    let mut served = None;
    for _ in 0..100 {
        let resp = app.client.get(&url).send().await.unwrap();
        if resp.status() == 200 {
            served = Some(resp.bytes().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        served.as_deref(),
        Some(&old[..]),
        "archived blob not served again"
    );
}

/// `serve.nginx_accel` with an archive bucket: nginx serves a blob with a
/// local copy from the data folder (`/_blobs/`), and an archived one from
/// the cluster (`/_s3/`, a presigned path the daemon hands it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nginx_serves_local_blobs_from_disk_and_archived_ones_from_the_cluster() {
    let bucket = shared_bucket().await;
    let keys = tempfile::tempdir().unwrap();
    let toml = archive_bucket_toml(&bucket, keys.path());
    let app = TestApp::start_with(&format!("{toml}\n[serve]\nnginx_accel = true\n")).await;
    let nginx = Nginx::start_with_blobs_and_s3(
        app.base.trim_start_matches("http://"),
        &app.data.join("blobs"),
        bucket.endpoint.trim_start_matches("http://"),
    );
    let old = big_png(300_000, 51);
    let v_old = upload_ok(&app.client, &app.base, 1, old.clone()).await;
    let summary = gc_in(&app.data, &toml).await;
    assert_eq!(summary.blobs_archived, 1, "{summary:?}");
    let recent = big_png(200_000, 52);
    let v_recent = upload_ok(&app.client, &app.base, 1, recent.clone()).await;

    for (v, content, location) in [(&v_old, &old, "/_s3/"), (&v_recent, &recent, "/_blobs/")] {
        let path = sign_with(&app.client, &app.base, v["id"].as_i64().unwrap(), json!({})).await;
        let direct = app.client.get(app.url(&path)).send().await.unwrap();
        assert!(
            header(&direct, "x-accel-redirect").starts_with(location),
            "{}",
            header(&direct, "x-accel-redirect")
        );
        let resp = app.client.get(nginx.url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", nginx.error_log());
        assert_eq!(header(&resp, "content-type"), "image/png");
        assert_eq!(resp.bytes().await.unwrap(), content[..]);
        let ranged = app
            .client
            .get(nginx.url(&path))
            .header("range", "bytes=10-99")
            .send()
            .await
            .unwrap();
        assert_eq!(ranged.status(), 206, "{}", nginx.error_log());
        assert_eq!(ranged.bytes().await.unwrap(), content[10..100]);
    }
}

/// `media-store migrate-store`: every blob copied to the bucket, verified;
/// a daemon configured for S3 is refused until the switch is recorded; a run
/// after a partial copy copies only what is missing; and back to local.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_store_moves_every_blob_to_s3_and_back_resumably() {
    use media_store::store::Backend;
    let bucket = shared_bucket().await;
    let keys = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s3_toml = store_toml(&bucket, keys.path(), "");
    // The local store, with [store.s3] already filled in (backend local).
    let local_toml = s3_toml.replace("backend = \"s3\"", "backend = \"local\"");
    let contents = [unique_png(51), unique_png(52), big_png(6 << 20, 53)];
    let app = TestApp::start_in(&data, &local_toml).await;
    let mut ids = Vec::new();
    for c in &contents {
        ids.push(
            upload_ok(&app.client, &app.base, 1, c.clone()).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    app.stop().await;

    // Switching the config alone is refused: the blobs are not in the bucket.
    let refused = media_store::AppState::open(config_in(&data, &s3_toml));
    let err = refused.err().expect("S3 before migrating");
    assert!(
        format!("{err:#}").contains("migrate-store --to s3"),
        "{err:#}"
    );

    let migrate = |to: Backend, toml: String| {
        let data = data.clone();
        tokio::task::spawn_blocking(move || {
            media_store::app::migrate_store(&config_in(&data, &toml), to, false).unwrap()
        })
    };
    let first = migrate(Backend::S3, local_toml.clone()).await.unwrap();
    assert!(first.switched && first.failed.is_empty(), "{first:?}");
    assert_eq!(first.copied, 3, "{first:?}");
    for c in &contents {
        assert_eq!(
            object(&bucket, &blake3::hash(c)).await.as_deref(),
            Some(&c[..])
        );
    }
    // As after a kill mid-copy: one object missing; a re-run copies just it.
    let key = object_key(&blake3::hash(&contents[1]));
    bucket.store().delete(&key).await.unwrap();
    let again = migrate(Backend::S3, local_toml.clone()).await.unwrap();
    assert_eq!((again.copied, again.already_there), (1, 2), "{again:?}");

    // Served from the bucket now.
    let app = TestApp::start_in(&data, &s3_toml).await;
    for (id, c) in ids.iter().zip(&contents) {
        assert_eq!(download(&app.client, &app.base, *id).await, c[..]);
    }
    let extra = unique_png(54);
    ids.push(
        upload_ok(&app.client, &app.base, 1, extra.clone()).await["id"]
            .as_i64()
            .unwrap(),
    );
    app.stop().await;

    // And back: the blob uploaded on S3 comes home too.
    let back = migrate(Backend::Local, s3_toml.clone()).await.unwrap();
    assert!(back.switched, "{back:?}");
    assert!(back.copied >= 1, "{back:?}");
    let app = TestApp::start_in(&data, &local_toml).await;
    assert_eq!(download(&app.client, &app.base, ids[3]).await, extra[..]);
    app.stop().await;
}
