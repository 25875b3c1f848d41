//! The Garage harness (tests/it/harness/garage.rs) against a real three-node
//! cluster, and what Garage 2.5 does over S3, which the S3 blob backend of
//! issue 13 is designed on. Each fact is checked by the test named after it
//! (through object_store's `AmazonS3`, path-style over http, region `garage`;
//! raw SigV4-signed requests where object_store cannot send the header):
//!
//! - Conditional PUT is NOT supported: `If-None-Match: *` on PutObject is
//!   ignored (200, the object is overwritten), and so is `If-Match` with a
//!   stale ETag. object_store's `PutMode::Create` and `PutMode::Update`
//!   therefore return Ok and overwrite: "create only if absent" cannot be
//!   left to the store. `If-None-Match: *` on CopyObject is ignored as
//!   well: object_store's `copy_if_not_exists` is NotSupported by default,
//!   and configured to send that header (`S3CopyIfNotExists::Header`) it
//!   overwrites (`conditional_put_is_ignored`). Plain CopyObject works
//!   (`etag_copy_list_presign_range`).
//! - SHA-256 checksums: a PUT with `x-amz-checksum-sha256` is verified: a
//!   wrong one is refused (400 InvalidDigest) and nothing is stored; a right
//!   one is stored and answered on the PUT, and on GET/HEAD with
//!   `x-amz-checksum-mode: ENABLED` (with `x-amz-checksum-type: FULL_OBJECT`).
//!   Without a checksum sent, none is computed. object_store's
//!   `with_checksum_algorithm(Checksum::SHA256)` sends it on PutObject and
//!   on each part; a multipart object's checksum is then COMPOSITE:
//!   `base64(SHA-256(part SHA-256s))-<parts>`, not the content's SHA-256
//!   (`sha256_checksums`, `multipart_uploads`).
//! - ETag of a single PUT: `"<MD5 hex of the content>"`; of a multipart
//!   upload: `"<hex>-<parts>"` (`etag_copy_list_presign_range`,
//!   `multipart_uploads`).
//! - Multipart uploads (`put_multipart`) work, also with SHA-256 checksums,
//!   and parts smaller than S3's 5 MiB minimum are accepted
//!   (`multipart_uploads`).
//! - ListMultipartUploads (`GET /<bucket>?uploads&prefix=`, SigV4-signed;
//!   object_store has no call for it) lists an upload begun and not
//!   completed, with its key, id and `Initiated` time, until
//!   AbortMultipartUpload drops it
//!   (`s3::gc_aborts_multipart_uploads_a_killed_daemon_left`).
//! - ListObjectsV2 with a prefix, presigned GET URLs (`Signer::signed_url`)
//!   and Range GETs (bounded and suffix) work
//!   (`etag_copy_list_presign_range`).
//! - Reads after writes are consistent across nodes (`consistency_mode =
//!   "consistent"`), writes and reads need 2 of the 3 nodes: with one node
//!   killed everything works at normal speed, through either of the other
//!   two; with two killed the third answers 503 ServiceUnavailable ("Could
//!   not reach quorum") after about 2 s, which object_store retries; with all
//!   down connections are refused at once (`one_node_of_three_down_…`,
//!   `without_a_quorum_…`). A restarted node serves what was written while it
//!   was down.
//! - A node that is alive but does not answer (SIGSTOP; a hung disk) is
//!   worse than a dead one: a node sends a read to itself and the peer with
//!   the lowest ping only, and waits `rpc_timeout_msec` for it before asking
//!   the third; so each request through a node that prefers the stalled one
//!   takes 1× (PUT) to 2× (GET) `rpc_timeout_msec` longer, until pings mark
//!   it down (every 15 s, down after 4 failures: about 1.5 minutes). Garage's
//!   default `rpc_timeout_msec` is 300 s: one PUT took exactly 300 s; the
//!   harness sets 10 s (`a_paused_node_costs_rpc_timeouts_until_marked_down`).

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::TryStreamExt as _;
use object_store::aws::{AwsAuthorizer, AwsCredential, Checksum};
use object_store::client::{HttpRequest, HttpRequestBody};
use object_store::path::Path;
use object_store::signer::Signer as _;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, PutMode, UpdateVersion, WriteMultipart,
};
use sha2::Digest as _;

use crate::harness::garage::{Garage, RPC_TIMEOUT, S3Bucket};

/// Its MD5 is well known.
const FOX: &[u8] = b"The quick brown fox jumps over the lazy dog";
const FOX_MD5: &str = "9e107d9d372bb6826bd81d3542a419d6";

fn sha256_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data))
}

/// A request signed with SigV4 for the bucket's key (object_store's own
/// signer), for headers object_store does not send: Garage refuses unsigned
/// `x-amz-*` headers, so a plain client cannot add them.
async fn signed(
    b: &S3Bucket,
    method: http::Method,
    key: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> reqwest::Response {
    let url = format!("{}/{}/{key}", b.endpoint, b.bucket);
    let mut builder = http::Request::builder().method(method.clone()).uri(&url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut request: HttpRequest = builder.body(HttpRequestBody::from(body.to_vec())).unwrap();
    let credential = AwsCredential {
        key_id: b.access_key_id.clone(),
        secret_key: b.secret_access_key.clone(),
        token: None,
    };
    AwsAuthorizer::new(&credential, "s3", &b.region)
        .try_authorize(&mut request, None)
        .unwrap();
    reqwest::Client::new()
        .request(method, &url)
        .headers(request.headers().clone())
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn get_bytes(store: &impl ObjectStore, path: &Path) -> object_store::Result<Vec<u8>> {
    Ok(store.get(path).await?.bytes().await?.to_vec())
}

async fn list_keys(store: &impl ObjectStore, prefix: Option<&Path>) -> Vec<String> {
    let mut keys: Vec<String> = store
        .list(prefix)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::fill(&mut v[..]);
    v
}

/// Several of Garage's 1 MiB blocks, so block reads and writes are exercised.
const BLOCKS: usize = 3_000_000;

#[tokio::test]
async fn put_get_list_delete_on_a_fresh_bucket() {
    let b = Garage::shared().create_bucket();
    let store = b.store();
    assert!(
        list_keys(&store, None).await.is_empty(),
        "a new bucket is empty"
    );
    let path = Path::from("blobs/ab/cd/abcd");
    let data = random_bytes(BLOCKS);
    store.put(&path, data.clone().into()).await.unwrap();
    assert_eq!(get_bytes(&store, &path).await.unwrap(), data);
    assert_eq!(store.head(&path).await.unwrap().size, BLOCKS as u64);
    assert_eq!(list_keys(&store, None).await, ["blobs/ab/cd/abcd"]);
    // Any node answers for any object, at once.
    for i in 1..3 {
        assert_eq!(get_bytes(&b.store_at(i), &path).await.unwrap(), data);
    }
    store.delete(&path).await.unwrap();
    assert!(matches!(
        store.get(&path).await,
        Err(object_store::Error::NotFound { .. })
    ));
    assert!(list_keys(&b.store_at(2), None).await.is_empty());
}

#[tokio::test]
async fn each_bucket_has_its_own_key() {
    let garage = Garage::shared();
    let (a, b) = (garage.create_bucket(), garage.create_bucket());
    assert_ne!(a.bucket, b.bucket);
    let path = Path::from("x");
    a.store().put(&path, FOX.into()).await.unwrap();
    let mut foreign = a.clone();
    foreign.access_key_id = b.access_key_id.clone();
    foreign.secret_access_key = b.secret_access_key.clone();
    let err = foreign.store().get(&path).await.unwrap_err();
    assert!(
        matches!(err, object_store::Error::PermissionDenied { .. }),
        "b's key read a's bucket: {err:?}"
    );
    assert!(list_keys(&b.store(), None).await.is_empty());
}

#[tokio::test]
async fn one_node_of_three_down_reads_and_writes_go_on() {
    let garage = Garage::start();
    let b = garage.create_bucket();
    let before = Path::from("before");
    let old = random_bytes(BLOCKS);
    b.store().put(&before, old.clone().into()).await.unwrap();
    // Each node in turn: the other two are a quorum.
    for down in 0..3 {
        garage.stop_node(down);
        let store = b.store_at((down + 1) % 3);
        let path = Path::from(format!("while-{down}-down"));
        let data = random_bytes(BLOCKS);
        let t = Instant::now();
        store.put(&path, data.clone().into()).await.unwrap();
        assert_eq!(get_bytes(&store, &path).await.unwrap(), data);
        assert_eq!(get_bytes(&store, &before).await.unwrap(), old);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "with node {down} down: {:?}",
            t.elapsed()
        );
        let t = Instant::now();
        garage.start_node(down);
        eprintln!("node {down} restarted and rejoined in {:?}", t.elapsed());
        // The restarted node serves what was written while it was down.
        assert_eq!(get_bytes(&b.store_at(down), &path).await.unwrap(), data);
    }
    assert_eq!(list_keys(&b.store(), None).await.len(), 4);
}

/// A node that is alive but stalled holds each request whose RPC went to it
/// for `rpc_timeout_msec` (a GET makes two such calls in a row), until the
/// others' pings mark it down (about 1.5 minutes); then all is fast again.
#[tokio::test]
async fn a_paused_node_costs_rpc_timeouts_until_marked_down() {
    let garage = Garage::start();
    let b = garage.create_bucket();
    let before = Path::from("before");
    let data = random_bytes(BLOCKS);
    b.store().put(&before, data.clone().into()).await.unwrap();
    garage.pause_node(2);
    // Each node of the two asks the paused one or not, by its ping.
    let stall_bound = 2 * RPC_TIMEOUT + Duration::from_secs(5);
    for i in 0..2 {
        let store = b.store_at(i);
        let t = Instant::now();
        store
            .put(&Path::from(format!("during-{i}")), FOX.into())
            .await
            .unwrap();
        let put = t.elapsed();
        let t = Instant::now();
        assert_eq!(get_bytes(&store, &before).await.unwrap(), data);
        let get = t.elapsed();
        eprintln!("node 2 paused, through node {i}: PUT {put:?}, GET {get:?}");
        assert!(put < stall_bound && get < stall_bound, "{put:?} {get:?}");
    }
    let t = Instant::now();
    garage.wait_seen_down(2);
    eprintln!("node 2 seen down after {:?} more", t.elapsed());
    for i in 0..2 {
        let store = b.store_at(i);
        let t = Instant::now();
        store
            .put(&Path::from(format!("after-{i}")), data.clone().into())
            .await
            .unwrap();
        assert_eq!(get_bytes(&store, &before).await.unwrap(), data);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    garage.resume_node(2);
    garage.start_all();
    assert_eq!(
        get_bytes(&b.store_at(2), &Path::from("after-0"))
            .await
            .unwrap(),
        data
    );
}

#[tokio::test]
async fn without_a_quorum_puts_fail_and_recover_with_it() {
    let garage = Garage::start();
    let b = garage.create_bucket();
    let store = b.store();
    let old = Path::from("old");
    store.put(&old, FOX.into()).await.unwrap();
    // One node of three: it answers, but cannot reach a write quorum.
    garage.stop_node(1);
    garage.stop_node(2);
    let t = Instant::now();
    let err = store.put(&Path::from("new"), FOX.into()).await.unwrap_err();
    eprintln!("PUT without a quorum failed in {:?}: {err}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(40),
        "{:?}: {err}",
        t.elapsed()
    );
    // None: refused connections, a few short retries (S3Bucket::store's settings).
    garage.stop_all();
    let t = Instant::now();
    let err = store.put(&Path::from("new"), FOX.into()).await.unwrap_err();
    eprintln!(
        "PUT with every node down failed in {:?}: {err}",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "{:?}: {err}",
        t.elapsed()
    );
    garage.start_all();
    store.put(&Path::from("new"), FOX.into()).await.unwrap();
    assert_eq!(get_bytes(&store, &old).await.unwrap(), FOX);
    // Node 2 was stopped right after the bucket's key was allowed: it may
    // answer 403 until its key table has caught up with the others' (seen
    // once in CI), which Garage's table sync does within seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let from_node_2 = loop {
        match get_bytes(&b.store_at(2), &Path::from("new")).await {
            Err(object_store::Error::PermissionDenied { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            got => break got.unwrap(),
        }
    };
    assert_eq!(from_node_2, FOX);
}

#[tokio::test]
async fn conditional_put_is_ignored() {
    let b = Garage::shared().create_bucket();
    let store = b.store();
    let path = Path::from("k");
    store
        .put_opts(&path, FOX.into(), PutMode::Create.into())
        .await
        .unwrap();
    // A second "create" succeeds and replaces the object.
    store
        .put_opts(&path, b"second".as_slice().into(), PutMode::Create.into())
        .await
        .expect("Garage ignores If-None-Match: * on PutObject");
    assert_eq!(get_bytes(&store, &path).await.unwrap(), b"second");
    let raw = signed(
        &b,
        http::Method::PUT,
        "k",
        &[("if-none-match", "*")],
        b"third",
    )
    .await;
    assert_eq!(raw.status(), 200);
    assert_eq!(get_bytes(&store, &path).await.unwrap(), b"third");
    // If-Match with an ETag the object no longer has: replaced all the same.
    let stale = UpdateVersion {
        e_tag: Some(format!("\"{FOX_MD5}\"")),
        version: None,
    };
    store
        .put_opts(
            &path,
            b"fourth".as_slice().into(),
            PutMode::Update(stale).into(),
        )
        .await
        .expect("Garage ignores If-Match on PutObject");
    assert_eq!(get_bytes(&store, &path).await.unwrap(), b"fourth");
    let copying = b
        .builder()
        .with_copy_if_not_exists(object_store::aws::S3CopyIfNotExists::Header(
            "If-None-Match".into(),
            "*".into(),
        ))
        .build()
        .unwrap();
    store.put(&Path::from("src"), FOX.into()).await.unwrap();
    // CopyObject ignores it too: copy_if_not_exists, told to send it, overwrites.
    copying
        .copy_if_not_exists(&Path::from("src"), &path)
        .await
        .expect("Garage ignores If-None-Match: * on CopyObject");
    assert_eq!(get_bytes(&store, &path).await.unwrap(), FOX);
}

#[tokio::test]
async fn sha256_checksums() {
    let b = Garage::shared().create_bucket();
    let checked = b
        .builder()
        .with_checksum_algorithm(Checksum::SHA256)
        .build()
        .unwrap();
    let fox_sha = sha256_b64(FOX);
    checked.put(&Path::from("with"), FOX.into()).await.unwrap();
    for method in [http::Method::GET, http::Method::HEAD] {
        let r = signed(
            &b,
            method,
            "with",
            &[("x-amz-checksum-mode", "ENABLED")],
            b"",
        )
        .await;
        assert_eq!(header(&r, "x-amz-checksum-sha256"), Some(fox_sha.clone()));
        assert_eq!(
            header(&r, "x-amz-checksum-type").as_deref(),
            Some("FULL_OBJECT")
        );
    }
    // Only on request.
    let r = signed(&b, http::Method::GET, "with", &[], b"").await;
    assert_eq!(header(&r, "x-amz-checksum-sha256"), None);
    // Not computed when the PUT sent none.
    b.store()
        .put(&Path::from("without"), FOX.into())
        .await
        .unwrap();
    let r = signed(
        &b,
        http::Method::GET,
        "without",
        &[("x-amz-checksum-mode", "ENABLED")],
        b"",
    )
    .await;
    assert_eq!(header(&r, "x-amz-checksum-sha256"), None);
    // Verified on PUT: a wrong one is refused and nothing is stored.
    let bad = signed(
        &b,
        http::Method::PUT,
        "bad",
        &[("x-amz-checksum-sha256", &sha256_b64(b"not the body"))],
        FOX,
    )
    .await;
    assert_eq!(bad.status(), 400);
    assert!(
        bad.text()
            .await
            .unwrap()
            .contains("<Code>InvalidDigest</Code>")
    );
    assert!(matches!(
        b.store().head(&Path::from("bad")).await,
        Err(object_store::Error::NotFound { .. })
    ));
    let good = signed(
        &b,
        http::Method::PUT,
        "good",
        &[("x-amz-checksum-sha256", &fox_sha)],
        FOX,
    )
    .await;
    assert_eq!(good.status(), 200);
    assert_eq!(header(&good, "x-amz-checksum-sha256"), Some(fox_sha));
}

#[tokio::test]
async fn multipart_uploads() {
    let b = Garage::shared().create_bucket();
    let store = b.store();
    let data = random_bytes(11 * 1024 * 1024);
    // 5 + 5 + 1 MiB parts; then 1 MiB parts, under S3's 5 MiB minimum.
    for (name, part) in [("five", 5), ("one", 1)] {
        let path = Path::from(name);
        let mut upload = WriteMultipart::new_with_chunk_size(
            store.put_multipart(&path).await.unwrap(),
            part * 1024 * 1024,
        );
        upload.write(&data);
        let done = upload.finish().await.unwrap();
        let parts = data.len().div_ceil(part * 1024 * 1024);
        let e_tag = done.e_tag.unwrap();
        assert!(e_tag.ends_with(&format!("-{parts}\"")), "{e_tag}");
        assert_eq!(get_bytes(&store, &path).await.unwrap(), data);
        assert_eq!(get_bytes(&b.store_at(2), &path).await.unwrap(), data);
    }
    // With SHA-256 checksums on every part.
    let checked = b
        .builder()
        .with_checksum_algorithm(Checksum::SHA256)
        .build()
        .unwrap();
    let path = Path::from("checked");
    let mut upload = WriteMultipart::new_with_chunk_size(
        checked.put_multipart(&path).await.unwrap(),
        5 * 1024 * 1024,
    );
    upload.write(&data);
    upload.finish().await.unwrap();
    assert_eq!(get_bytes(&store, &path).await.unwrap(), data);
    // Not the whole object's SHA-256: that of the parts' SHA-256s, "-parts".
    let part_digests: Vec<u8> = data
        .chunks(5 * 1024 * 1024)
        .flat_map(|part| sha2::Sha256::digest(part).to_vec())
        .collect();
    let r = signed(
        &b,
        http::Method::HEAD,
        "checked",
        &[("x-amz-checksum-mode", "ENABLED")],
        b"",
    )
    .await;
    assert_eq!(
        header(&r, "x-amz-checksum-sha256"),
        Some(format!("{}-3", sha256_b64(&part_digests)))
    );
    assert_eq!(
        header(&r, "x-amz-checksum-type").as_deref(),
        Some("COMPOSITE")
    );
}

#[tokio::test]
async fn etag_copy_list_presign_range() {
    let b = Garage::shared().create_bucket();
    let store = b.store();
    let fox = Path::from("fox");
    let put = store.put(&fox, FOX.into()).await.unwrap();
    let md5 = format!("\"{FOX_MD5}\"");
    assert_eq!(put.e_tag.as_ref(), Some(&md5));
    assert_eq!(store.head(&fox).await.unwrap().e_tag, Some(md5.clone()));

    let copy = Path::from("dir/fox-copy");
    store.copy(&fox, &copy).await.unwrap();
    assert_eq!(get_bytes(&store, &copy).await.unwrap(), FOX);
    assert_eq!(store.head(&copy).await.unwrap().e_tag, Some(md5));
    assert!(matches!(
        store.copy_if_not_exists(&fox, &copy).await,
        Err(object_store::Error::NotSupported { .. })
    ));

    store.put(&Path::from("dir/a"), FOX.into()).await.unwrap();
    store.put(&Path::from("dirt"), FOX.into()).await.unwrap();
    assert_eq!(
        list_keys(&store, Some(&Path::from("dir"))).await,
        ["dir/a", "dir/fox-copy"]
    );

    let url = store
        .signed_url(http::Method::GET, &fox, Duration::from_secs(60))
        .await
        .unwrap();
    let r = reqwest::get(url.as_str()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), FOX);
    // The signature covers the key: another key with it is refused.
    let other = url.as_str().replace("/fox?", "/dirt?");
    assert_eq!(reqwest::get(other).await.unwrap().status(), 403);

    assert_eq!(store.get_range(&fox, 4..9).await.unwrap(), "quick");
    let suffix = store
        .get_opts(
            &fox,
            GetOptions {
                range: Some(GetRange::Suffix(3)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(suffix.bytes().await.unwrap(), "dog");
}
