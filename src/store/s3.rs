//! The S3 backend of the blob store: blobs as objects in a bucket (a Garage
//! cluster on premises), named like the files on disk (`<prefix>blobs/ab/cd/<hash>`).
//!
//! Client crate: `object_store` (the `aws` feature). It is what pict-rs uses
//! for the same job; it signs (SigV4), retries with backoff, streams bodies,
//! uploads multipart parts in parallel and presigns URLs, and is maintained
//! by the Apache Arrow project. `rusty-s3` would have left request sending,
//! retries and multipart bookkeeping to us; `aws-sdk-s3` is several times
//! larger and its defaults (virtual-host addressing, checksums Garage does not
//! all know) fight a self-hosted endpoint; `opendal` adds a layer we do not
//! need over the same requests.
//!
//! What the store reports is checked: every request body is signed with
//! its SHA-256 (SigV4 `x-amz-content-sha256`, on by default), which Garage
//! verifies before storing it, and after a put a HEAD must report the size.
//!
//! Requests run on a small runtime of their own: the store's API is blocking
//! (it is called from blocking threads, like the disk backend's), and the
//! daemon's executor is never held up by S3 I/O.
//! Downloads the daemon streams are the exception: their connection is
//! driven by the response body, on the daemon's runtime (`s3/direct.rs`).
//!
//! What S3 does not give, and how the store copes (storage-layout.md, "S3"):
//! Garage answers a `PutObject` with `If-None-Match: *` by overwriting, and a
//! `DeleteObject` ignores `If-Match`, so there is no put-if-absent and no
//! guarded delete. Since a key is its content's hash, re-writing an object
//! writes the same bytes; GC safety comes from the index (pins and claims).

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, MultipartUpload, ObjectStore,
    ObjectStoreExt, PutPayload, RetryConfig,
};

use super::{BlobEntry, BlobStream, Result, StoreError, Verdict, layout};

mod direct;
mod uploads;
pub(super) use direct::ObjectVersion;
pub use uploads::IncompleteUpload;

/// `[store]`: where blobs live.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `local`: the data folder's `blobs/` (and the archive root); `s3`: a
    /// bucket (`[store.s3]`), the data folder keeping the index and staging.
    pub backend: Backend,
    pub s3: S3Config,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::Local,
            s3: S3Config::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Local,
    S3,
}

/// `[store.s3]`. Credentials are never config values: they come from
/// `MEDIA_STORE_S3_ACCESS_KEY_ID` / `MEDIA_STORE_S3_SECRET_ACCESS_KEY`, or
/// from the files named here (e.g. systemd credentials).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// e.g. `http://127.0.0.1:3900` (Garage's S3 API).
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// Key prefix inside the bucket (several stores may share one bucket).
    pub prefix: String,
    /// Path-style requests (`endpoint/bucket/key`), as Garage expects
    /// without a `root_domain`; false: virtual-hosted (`bucket.endpoint`).
    pub path_style: bool,
    pub access_key_id_file: PathBuf,
    pub secret_access_key_file: PathBuf,
    /// Blobs above this size are sent as a multipart upload of parts this big.
    pub part_size: u64,
    /// Parts of one upload in flight at once (one more is read meanwhile).
    pub parallel_parts: usize,
    /// Part buffers shared by all uploads: the memory of multipart uploads,
    /// however many run at once, is at most `part_size * part_buffers`.
    pub part_buffers: usize,
    /// A request whose answer has not begun in this time (for a put: its
    /// body sent and the answer begun), or whose answer's body stalls this
    /// long, is retried (with backoff) until `retry_timeout`, then fails:
    /// uploads and downloads answer 503. A download that keeps flowing is
    /// never cut, however long it takes.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_timeout: Duration,
    /// Whole downloads streamed by the daemon are hashed (BLAKE3) against
    /// their name: `once` per object version (ETag and Last-Modified; after
    /// that the bucket's own block checksums stand guard, see
    /// storage-layout.md, "Serving S3 blobs"), or `always`.
    pub verify_downloads: VerifyDownloads,
}

/// `store.s3.verify_downloads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyDownloads {
    Once,
    Always,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: String::new(),
            bucket: String::new(),
            region: "garage".into(),
            prefix: String::new(),
            path_style: true,
            access_key_id_file: PathBuf::new(),
            secret_access_key_file: PathBuf::new(),
            part_size: 8 * 1024 * 1024,
            parallel_parts: 2,
            part_buffers: 4,
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(3),
            retry_timeout: Duration::from_secs(10),
            verify_downloads: VerifyDownloads::Once,
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.backend != Backend::S3 {
            return Ok(());
        }
        self.s3.validate()
    }
}

impl S3Config {
    /// Checks the bucket settings (when a bucket is used: `store.backend`
    /// or `archive.backend` is `s3`).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let s3 = self;
        if s3.endpoint.is_empty() || s3.bucket.is_empty() {
            return Err(
                "a bucket (store.backend or archive.backend = \"s3\") needs store.s3.endpoint \
                 and store.s3.bucket"
                    .into(),
            );
        }
        if !(s3.endpoint.starts_with("http://") || s3.endpoint.starts_with("https://")) {
            return Err(format!(
                "store.s3.endpoint {:?} must start with http:// or https://",
                s3.endpoint
            ));
        }
        // S3's own minimum part size (except the last part) is 5 MiB.
        if s3.part_size < 5 * 1024 * 1024 || s3.parallel_parts == 0 || s3.part_buffers == 0 {
            return Err(
                "store.s3.part_size must be at least 5 MiB, store.s3.parallel_parts and \
                 store.s3.part_buffers positive"
                    .into(),
            );
        }
        if !s3.prefix.is_empty() && !s3.prefix.ends_with('/') {
            return Err(format!("store.s3.prefix {:?} must end with `/`", s3.prefix));
        }
        Ok(())
    }
}

/// Metric names of the S3 client (Prometheus text on `GET /metrics`).
pub mod metric {
    /// Requests made, by `op` (counter).
    pub const REQUESTS: &str = "media_store_s3_requests_total";
    /// Requests that failed after retries, by `op` (counter). A missing
    /// object asked for is not an error.
    pub const ERRORS: &str = "media_store_s3_errors_total";
    /// Time per request, retries included, by `op` (histogram, seconds).
    pub const SECONDS: &str = "media_store_s3_request_seconds";
    /// Whole downloads of objects streamed by the daemon, by `check`:
    /// `hashed` (BLAKE3 as they streamed) or `version` (the object version
    /// was hashed right before; `verify_downloads = "once"`) (counter).
    pub const WHOLE_DOWNLOADS: &str = "media_store_s3_whole_downloads_total";
}

/// An S3 request outcome that is not a failure of the store: the object is
/// not there.
fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

/// Runs the S3 runtime down without blocking when the last store handle
/// goes (a runtime dropped inside async code would panic).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("s3-runtime")
    }
}

/// The bucket (and key prefix) holding a store's blobs.
#[derive(Debug)]
pub(super) struct S3Blobs {
    client: Arc<AmazonS3>,
    prefix: String,
    part_size: usize,
    parallel_parts: usize,
    parts: Arc<PartBuffers>,
    rt: Runtime,
    /// Lists incomplete multipart uploads (`s3/uploads.rs`).
    uploads: uploads::UploadLister,
    /// Streamed downloads go through `s3/direct.rs` (plain http endpoints).
    direct_reads: bool,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// Object versions a whole download has hashed right (`verify_downloads
    /// = "once"`; `None` with `always`). In memory: a restart hashes again.
    verified: Option<moka::sync::Cache<blake3::Hash, ObjectVersion>>,
    /// `endpoint/bucket`, for reports.
    pub(super) location: String,
}

fn read_secret(path: &std::path::Path, env: &str) -> Result<String> {
    if !path.as_os_str().is_empty() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StoreError::io(format!("read {}", path.display()), e))?;
        return Ok(text.trim().to_owned());
    }
    std::env::var(env).map_err(|_| {
        StoreError::Config(format!(
            "S3 credentials missing: set {env} or store.s3.{}",
            if env.ends_with("KEY_ID") {
                "access_key_id_file"
            } else {
                "secret_access_key_file"
            }
        ))
    })
}

impl S3Blobs {
    pub(super) fn open(config: &S3Config) -> Result<S3Blobs> {
        let key_id = read_secret(&config.access_key_id_file, "MEDIA_STORE_S3_ACCESS_KEY_ID")?;
        let secret = read_secret(
            &config.secret_access_key_file,
            "MEDIA_STORE_S3_SECRET_ACCESS_KEY",
        )?;
        // `request_timeout` is reqwest's *read* timeout, not its total one:
        // the answer must begin within it (for a put: the body sent and the
        // answer begun), and then no read of the body may wait longer. A
        // total timeout would also bound a whole download's transfer, so a
        // large blob from a slow cluster (1 GiB at less than 18 MB/s with
        // 60 s) would fail mid-body however steadily it flowed
        // (`s3::a_slow_cluster_is_waited_for_…`).
        let options = ClientOptions::new()
            .with_allow_http(true)
            .with_timeout_disabled()
            .with_read_timeout(config.request_timeout)
            .with_connect_timeout(config.connect_timeout);
        let uploads = uploads::UploadLister::new(config, &options)?;
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 5,
            retry_timeout: config.retry_timeout,
        };
        let client = AmazonS3Builder::new()
            .with_endpoint(config.endpoint.trim_end_matches('/'))
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(key_id)
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(!config.path_style)
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .map_err(|e| StoreError::Config(format!("store.s3: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-io")
            .enable_all()
            .build()
            .map_err(|e| StoreError::io("start the S3 client runtime", e))?;
        Ok(S3Blobs {
            client: Arc::new(client),
            prefix: config.prefix.clone(),
            part_size: config.part_size as usize,
            parallel_parts: config.parallel_parts,
            parts: PartBuffers::new(config.part_size as usize, config.part_buffers),
            rt: Runtime(Some(rt)),
            uploads,
            direct_reads: config.endpoint.starts_with("http://"),
            connect_timeout: config.connect_timeout,
            read_timeout: config.request_timeout,
            // 100 000 versions: a few MiB, the working set of a busy store.
            verified: (config.verify_downloads == VerifyDownloads::Once)
                .then(|| moka::sync::Cache::new(100_000)),
            location: format!(
                "{}/{}/{}",
                config.endpoint.trim_end_matches('/'),
                config.bucket,
                config.prefix
            ),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .0
            .as_ref()
            .expect("runtime lives as long as the store")
    }

    /// Drives `fut` to completion on the S3 runtime, blocking the caller.
    /// From inside async code (start-up, a handle dropped in a test) the
    /// blocking happens on a scoped helper thread, since a runtime cannot be
    /// entered from a thread that drives another.
    fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| self.rt().block_on(fut))
                    .join()
                    .expect("S3 request thread panicked")
            })
        } else {
            self.rt().block_on(fut)
        }
    }

    /// Runs one request to completion on the S3 runtime, counting it.
    fn run<T: Send>(
        &self,
        op: &'static str,
        fut: impl Future<Output = object_store::Result<T>> + Send,
    ) -> object_store::Result<T> {
        let started = Instant::now();
        let out = self.block_on(fut);
        observe(op, started, &out);
        out
    }

    pub(super) fn key(&self, hash: &blake3::Hash) -> ObjectPath {
        let rel = layout::blob_relative_path(hash);
        ObjectPath::from(format!("{}blobs/{}", self.prefix, rel.display()))
    }

    fn marker_key(&self) -> ObjectPath {
        ObjectPath::from(format!("{}{}", self.prefix, super::MARKER))
    }

    /// The store id recorded in the bucket, if any.
    pub(super) fn read_marker(&self) -> Result<Option<String>> {
        let key = self.marker_key();
        match self.run("get", async { self.client.get(&key).await?.bytes().await }) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).trim().to_owned())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(unavailable("read the store marker", e)),
        }
    }

    pub(super) fn write_marker(&self, id: &str) -> Result<()> {
        let key = self.marker_key();
        let body = PutPayload::from(format!("{id}\n"));
        self.run("put", self.client.put(&key, body))
            .map(|_| ())
            .map_err(|e| unavailable("write the store marker", e))
    }

    /// Whether the bucket (under the prefix) holds any blob object.
    pub(super) fn has_blobs(&self) -> Result<bool> {
        let prefix = ObjectPath::from(format!("{}blobs", self.prefix));
        let first = self.run("list", async {
            self.client.list(Some(&prefix)).next().await.transpose()
        });
        first
            .map(|o| o.is_some())
            .map_err(|e| unavailable("list the bucket", e))
    }

    /// Size and last modification (Unix ms) of the blob's object.
    pub(super) fn head(&self, hash: &blake3::Hash) -> Result<Option<(u64, i64)>> {
        let key = self.key(hash);
        match self.run("head", self.client.head(&key)) {
            Ok(meta) => Ok(Some((meta.size, meta.last_modified.timestamp_millis()))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(unavailable("look up a blob", e)),
        }
    }

    /// Uploads a staged file as the blob of `hash` and checks that the
    /// bucket reports the expected size. Small files go in one request;
    /// larger ones as a multipart upload whose parts are sent in parallel,
    /// read from the staging file as they go (memory bounded by the parts in
    /// flight, whatever the size). Garage acknowledges a put (and a completed
    /// multipart upload) only after its write quorum has it.
    pub(super) fn put_file(
        &self,
        path: &std::path::Path,
        size: u64,
        hash: &blake3::Hash,
    ) -> Result<()> {
        let key = self.key(hash);
        let mut file =
            File::open(path).map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
        if size <= self.part_size as u64 {
            let mut buf = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buf)
                .map_err(|e| StoreError::io("read staging file", e))?;
            self.run("put", self.client.put(&key, PutPayload::from(buf)))
                .map_err(|e| unavailable("upload a blob", e))?;
        } else {
            self.put_multipart(&key, &mut file)?;
        }
        match self.head(hash)? {
            Some((stored, _)) if stored == size => Ok(()),
            other => Err(StoreError::Unavailable(format!(
                "the bucket reports {} for blob {} just uploaded ({size} bytes expected)",
                other.map_or("no object".to_owned(), |(s, _)| format!("{s} bytes")),
                hash.to_hex()
            ))),
        }
    }

    /// Sends the file as a multipart upload: each part is read into a buffer
    /// lent by the store's [`PartBuffers`] and sent as it is (no copy), up to
    /// `parallel_parts` of them in flight while the next one is read.
    fn put_multipart(&self, key: &ObjectPath, file: &mut File) -> Result<()> {
        let started = Instant::now();
        let mut upload = self
            .run("create_multipart", self.client.put_multipart(key))
            .map_err(|e| unavailable("start a multipart upload", e))?;
        let mut in_flight = tokio::task::JoinSet::new();
        let rt = self.rt().handle();
        // The next part to finish, its failure as a store error.
        let settle_one = |in_flight: &mut tokio::task::JoinSet<object_store::Result<()>>| match self
            .block_on(in_flight.join_next())
        {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(unavailable("upload a part", e)),
            Some(Err(e)) => Err(StoreError::Unavailable(format!(
                "a part upload task failed: {e}"
            ))),
        };
        let result = (|| -> Result<()> {
            loop {
                let mut part = self.parts.take();
                let n = read_full(file, &mut part.buf)
                    .map_err(|e| StoreError::io("read staging file", e))?;
                if n == 0 {
                    break;
                }
                part.len = n;
                while in_flight.len() >= self.parallel_parts {
                    settle_one(&mut in_flight)?;
                }
                let body = PutPayload::from(Bytes::from_owner(part));
                in_flight.spawn_on(upload.put_part(body), rt);
                metrics::counter!(metric::REQUESTS, "op" => "put_part").increment(1);
            }
            while !in_flight.is_empty() {
                settle_one(&mut in_flight)?;
            }
            Ok(())
        })();
        let out = result.and_then(|()| {
            self.block_on(upload.complete())
                .map(|_| ())
                .map_err(|e| unavailable("complete a multipart upload", e))
        });
        if out.is_err() {
            // Leaves no parts behind in the bucket (best effort; a crash
            // leaves them to the bucket's incomplete-upload cleanup).
            let _ = self.block_on(async {
                in_flight.shutdown().await;
                upload.abort().await
            });
        }
        let result: object_store::Result<()> =
            out.as_ref()
                .map(|_| ())
                .map_err(|e| object_store::Error::Generic {
                    store: "S3",
                    source: e.to_string().into(),
                });
        observe("complete_multipart", started, &result);
        out
    }

    /// A stream of the object's bytes (`range`, or all of them) and the
    /// version of the object they come from, when the bucket says. The
    /// request is made here, so a missing object is `NotFound` before any
    /// byte is promised.
    /// Streamed through `s3/direct.rs` when the endpoint is plain http and
    /// the caller runs inside a multi-threaded runtime (the daemon: the
    /// socket is served by that runtime while this thread waits for the
    /// answer's head); otherwise, or when that fails short of a timeout,
    /// through object_store's GET, whose body is polled inside the S3
    /// runtime's context whoever polls it.
    pub(super) fn open_stream(
        &self,
        hash: &blake3::Hash,
        range: Option<Range<u64>>,
    ) -> io::Result<(BlobStream, Option<ObjectVersion>)> {
        if self.direct_reads
            && let Ok(caller) = tokio::runtime::Handle::try_current()
            && caller.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            && let Some(opened) = self.open_direct(&caller, hash, range.clone())?
        {
            return Ok(opened);
        }
        let key = self.key(hash);
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let got = self
            .run("get", self.client.get_opts(&key, options))
            .map_err(to_io)?;
        let version = got.meta.e_tag.clone().map(|etag| ObjectVersion {
            etag,
            last_modified: got.meta.last_modified.into(),
        });
        let stream = Box::pin(InClientRuntime {
            inner: Box::pin(got.into_stream().map(|chunk| chunk.map_err(to_io))),
            runtime: self.rt().handle().clone(),
        });
        Ok((stream, version))
    }

    /// `Ok(None)`: not served this way (see `s3/direct.rs`), ask
    /// object_store. Counted as a `get` request.
    fn open_direct(
        &self,
        caller: &tokio::runtime::Handle,
        hash: &blake3::Hash,
        range: Option<Range<u64>>,
    ) -> io::Result<Option<(BlobStream, Option<ObjectVersion>)>> {
        use object_store::signer::Signer as _;
        let started = Instant::now();
        // Signed for a minute: the GET is sent at once.
        let url = self
            .block_on(self.client.signed_url(
                http::Method::GET,
                &self.key(hash),
                Duration::from_secs(60),
            ))
            .map_err(to_io)?;
        let request = {
            let _caller = caller.enter();
            direct::Request::connect(url.as_str(), range, self.connect_timeout, self.read_timeout)
        };
        let outcome = match request {
            Ok(request) => self.block_on(request.send()),
            Err(why) => Ok(direct::Outcome::Fallback(why)),
        };
        count_request("get", started, outcome.is_err());
        match outcome? {
            direct::Outcome::Opened(body, version) => Ok(Some((Box::pin(body), version))),
            direct::Outcome::Fallback(why) => {
                tracing::debug!(%why, "streamed GET through object_store instead");
                Ok(None)
            }
        }
    }

    /// Whether a whole download of `version` may skip hashing: one hashed
    /// it right before (and `verify_downloads` is `once`).
    pub(super) fn verified_before(&self, hash: &blake3::Hash, version: &ObjectVersion) -> bool {
        self.verified
            .as_ref()
            .is_some_and(|seen| seen.get(hash).is_some_and(|v| v == *version))
    }

    /// What a whole download that hashed right runs: records the version.
    pub(super) fn on_verified(
        &self,
        hash: &blake3::Hash,
        version: ObjectVersion,
    ) -> Option<Box<dyn FnOnce() + Send>> {
        let seen = self.verified.clone()?;
        let hash = *hash;
        Some(Box::new(move || seen.insert(hash, version)))
    }

    /// The blob's first `len` bytes, in memory (small blobs).
    pub(super) fn read_whole(&self, hash: &blake3::Hash, len: u64) -> io::Result<Vec<u8>> {
        let key = self.key(hash);
        let options = GetOptions {
            range: (len > 0).then_some(GetRange::Bounded(0..len)),
            ..Default::default()
        };
        let bytes = self
            .run("get", async {
                self.client.get_opts(&key, options).await?.bytes().await
            })
            .map_err(to_io)?;
        if (bytes.len() as u64) < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the object is shorter than its recorded size",
            ));
        }
        Ok(bytes[..len as usize].to_vec())
    }

    /// Downloads the whole blob into `sink` (a local staging file), hashing
    /// as it goes; returns the bytes written.
    pub(super) fn download(
        &self,
        hash: &blake3::Hash,
        sink: &mut super::StagingFile,
    ) -> io::Result<u64> {
        let key = self.key(hash);
        let started = Instant::now();
        let result = self.block_on(async {
            let mut body = self.client.get(&key).await?.into_stream();
            let mut n = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                n += chunk.len() as u64;
                sink.write_chunk(&chunk)
                    .map_err(|e| object_store::Error::Generic {
                        store: "S3",
                        source: Box::new(e),
                    })?;
            }
            Ok(n)
        });
        observe("get", started, &result);
        result.map_err(to_io)
    }

    /// Streams the object and checks its size and BLAKE3 hash.
    pub(super) fn verify(&self, hash: &blake3::Hash, size: u64) -> Verdict {
        let key = self.key(hash);
        let started = Instant::now();
        let result = self.block_on(async {
            let mut body = self.client.get(&key).await?.into_stream();
            let mut hasher = blake3::Hasher::new();
            let mut n = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                n += chunk.len() as u64;
                hasher.update(&chunk);
            }
            Ok((n, hasher.finalize()))
        });
        observe("get", started, &result);
        match result {
            Ok((n, h)) if n == size && h == *hash => Verdict::Ok,
            Ok(_) => Verdict::Corrupt,
            Err(e) if is_not_found(&e) => Verdict::Missing,
            // Unreachable is not damage: fsck reports it as an error instead.
            Err(_) => Verdict::Unreachable,
        }
    }

    pub(super) fn delete(&self, hash: &blake3::Hash) -> Result<super::Unlinked> {
        let key = self.key(hash);
        if let Some(seen) = &self.verified {
            seen.invalidate(hash);
        }
        // S3 answers a delete of a missing key with success, so ask first
        // only to report what happened; the delete itself is idempotent.
        let existed = self.head(hash)?.is_some();
        match self.run("delete", self.client.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(if existed {
                super::Unlinked::Removed
            } else {
                super::Unlinked::Absent
            }),
            Err(e) => Err(unavailable("delete a blob", e)),
        }
    }

    /// Moves a damaged object aside to `<prefix>quarantine/<hash>.<now_ms>`
    /// (a server-side copy, then the delete), never deleting it outright.
    pub(super) fn quarantine(&self, hash: &blake3::Hash, now_ms: i64) -> Result<Option<String>> {
        let key = self.key(hash);
        let aside = ObjectPath::from(format!(
            "{}quarantine/{}.{now_ms}",
            self.prefix,
            hash.to_hex()
        ));
        match self.run("copy", self.client.copy(&key, &aside)) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(unavailable("quarantine a blob", e)),
        }
        self.run("delete", self.client.delete(&key))
            .map_err(|e| unavailable("quarantine a blob", e))?;
        Ok(Some(format!("s3 {aside}")))
    }

    /// Every object under `<prefix>blobs/`, in key order, `page` at a time,
    /// with its size and last modification (Unix ms).
    pub(super) fn list<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(Vec<(BlobEntry, u64, i64)>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        const PAGE: usize = 1000;
        let prefix = ObjectPath::from(format!("{}blobs", self.prefix));
        let (tx, mut rx) = tokio::sync::mpsc::channel(PAGE);
        let client = self.client.clone();
        self.rt().spawn(async move {
            let mut listing = client.list(Some(&prefix));
            while let Some(item) = listing.next().await {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        let started = Instant::now();
        let mut page = Vec::with_capacity(PAGE);
        loop {
            match rx.blocking_recv() {
                None => break,
                Some(Err(e)) => {
                    let message = e.to_string();
                    observe::<()>("list", started, &Err(e));
                    return Err(StoreError::Unavailable(format!(
                        "could not list the S3 bucket: {message}"
                    ))
                    .into());
                }
                Some(Ok(meta)) => {
                    let key = meta.location.as_ref();
                    let rel = key
                        .strip_prefix(&self.prefix)
                        .and_then(|k| k.strip_prefix("blobs/"))
                        .unwrap_or(key);
                    let entry = match layout::parse_blob_relative(rel) {
                        Some(hash) => BlobEntry::Blob(hash),
                        None => BlobEntry::Foreign(key.to_owned()),
                    };
                    page.push((entry, meta.size, meta.last_modified.timestamp_millis()));
                    if page.len() == PAGE {
                        f(std::mem::take(&mut page))?;
                    }
                }
            }
        }
        observe::<()>("list", started, &Ok(()));
        if !page.is_empty() {
            f(page)?;
        }
        Ok(())
    }

    /// A presigned GET of the blob, valid for `ttl`, whose answer carries
    /// the `response_headers` given (S3's `response-content-type` and
    /// friends, covered by the signature). Computed locally: no request.
    pub(super) fn presign(
        &self,
        hash: &blake3::Hash,
        ttl: Duration,
        response_headers: &[(&str, String)],
    ) -> Result<String> {
        use object_store::signer::{SignedUrlOptions, Signer as _};
        let key = self.key(hash);
        let options = SignedUrlOptions::new().with_query(
            response_headers
                .iter()
                .map(|(k, v)| (format!("response-{k}"), v.clone())),
        );
        self.run(
            "presign",
            self.client
                .signed_url_opts(http::Method::GET, &key, ttl, &options),
        )
        .map(|u| u.to_string())
        .map_err(|e| unavailable("presign a download", e))
    }

    /// Whether the bucket answers (for `/healthz`).
    pub(super) fn reachable(&self) -> bool {
        self.read_marker().is_ok()
    }
}

fn observe<T>(op: &'static str, started: Instant, out: &object_store::Result<T>) {
    count_request(op, started, out.as_ref().is_err_and(|e| !is_not_found(e)));
}

/// One request to the bucket in the metrics: its time, and whether it failed.
fn count_request(op: &'static str, started: Instant, failed: bool) {
    metrics::counter!(metric::REQUESTS, "op" => op).increment(1);
    metrics::histogram!(metric::SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
    if failed {
        metrics::counter!(metric::ERRORS, "op" => op).increment(1);
    }
}

fn unavailable(what: &str, e: object_store::Error) -> StoreError {
    StoreError::Unavailable(format!("could not {what} in the S3 bucket: {e}"))
}

fn to_io(e: object_store::Error) -> io::Error {
    if is_not_found(&e) {
        io::Error::new(io::ErrorKind::NotFound, e.to_string())
    } else {
        io::Error::other(e.to_string())
    }
}

/// The part buffers of every multipart upload of a store: at most
/// `capacity` buffers of `part_size` bytes exist at once, whatever the number
/// of uploads (memory for uploads is bounded by `part_size * capacity`). A
/// buffer is lent to one part, read into from the staging file, sent as the
/// part's body without a copy, and comes back when the part's request (and
/// any retry of it) lets go of the bytes. The free buffers are kept for the
/// next part while uploads run, and released when none does.
#[derive(Debug)]
struct PartBuffers {
    part_size: usize,
    capacity: usize,
    state: Mutex<Lent>,
    returned: Condvar,
}

#[derive(Debug, Default)]
struct Lent {
    free: Vec<Vec<u8>>,
    out: usize,
}

impl PartBuffers {
    fn new(part_size: usize, capacity: usize) -> Arc<PartBuffers> {
        Arc::new(PartBuffers {
            part_size,
            capacity: capacity.max(1),
            state: Mutex::new(Lent::default()),
            returned: Condvar::new(),
        })
    }

    /// A buffer of `part_size` bytes, waiting (blocking) until one is free.
    fn take(self: &Arc<Self>) -> PartBuf {
        let mut lent = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(buf) = lent.free.pop() {
                lent.out += 1;
                return PartBuf::new(buf, self);
            }
            if lent.out < self.capacity {
                lent.out += 1;
                drop(lent);
                return PartBuf::new(vec![0; self.part_size], self);
            }
            lent = self.returned.wait(lent).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut lent = self.state.lock().unwrap_or_else(|e| e.into_inner());
        lent.out -= 1;
        if lent.out == 0 {
            // No upload is sending: the memory goes back to the allocator.
            lent.free = Vec::new();
            drop(buf);
        } else {
            lent.free.push(buf);
        }
        drop(lent);
        self.returned.notify_one();
    }
}

/// One lent buffer, `len` bytes of it filled; its bytes become a part's body
/// with [`bytes::Bytes::from_owner`], and dropping the last reference gives
/// it back.
struct PartBuf {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<PartBuffers>,
}

impl PartBuf {
    fn new(buf: Vec<u8>, pool: &Arc<PartBuffers>) -> PartBuf {
        PartBuf {
            buf,
            len: 0,
            pool: pool.clone(),
        }
    }
}

impl AsRef<[u8]> for PartBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for PartBuf {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A download's body, polled inside the S3 client's runtime context whoever
/// polls it: the client's read timeout needs that runtime's timers (the
/// caller's runtime may have none), and its connection lives there.
struct InClientRuntime {
    inner: BlobStream,
    runtime: tokio::runtime::Handle,
}

impl futures_util::Stream for InClientRuntime {
    type Item = io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = &mut *self;
        let _context = this.runtime.enter();
        this.inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_buffers_are_capped_and_come_back_when_the_last_bytes_go() {
        let pool = PartBuffers::new(16, 2);
        let first = pool.take();
        let mut second = pool.take();
        second.len = 3;
        let body = Bytes::from_owner(second);
        assert_eq!(body.len(), 3);
        // A retry keeps its own reference: the buffer is lent until both go.
        let retry = body.clone();
        drop(body);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || tx.send(pool.take().buf.len()).unwrap())
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a third buffer waits while two are lent"
        );
        drop(retry);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 16);
        waiter.join().unwrap();
        drop(first);
        let lent = pool.state.lock().unwrap();
        assert_eq!(lent.out, 0);
        assert!(lent.free.is_empty(), "idle buffers are released");
    }
}
