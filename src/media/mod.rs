//! The media service: ingest, query and delete uploads.
//!
//! This is the one module that combines the blob store and the index, and so the
//! one that owns the order of operations (storage-layout.md, "Write protocol"):
//! on upload the blob file is made durable and installed *before* the row that
//! points at it commits; on delete the row goes first and the file is left for
//! garbage collection.

pub mod exif;
pub mod quota;

use std::fmt::Display;
use std::sync::Arc;

use arc_swap::ArcSwap;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::clock::SharedClock;
use crate::error::{Classify, ErrorKind};
use crate::index::{AdoptConflict, Index, IndexError, ListQuery, MediaRow, NewMedia};
use crate::policy::{self, Policy, PolicyError, SNIFF_LEN};
use crate::store::{BlobStore, StagingFile, StoreError};
use quota::Quota;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("could not read the upload body: {0}")]
    Body(String),
    #[error("media {0} does not exist")]
    NotFound(i64),
    #[error("the content does not match the `blake3` hash given with it")]
    HashMismatch,
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("media {id} was found damaged at {since}; upload the same content again to repair it")]
    Corrupt { id: i64, since: String },
    #[error("the stored content was removed while uploading; send it again without `blake3`")]
    BlobGone,
    #[error("the upload is empty: send the file's bytes (an empty file is not stored)")]
    Empty,
    #[error("background task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("media {id} cannot be recorded under its own id: {conflict}")]
    Adopt {
        id: i64,
        #[source]
        conflict: AdoptConflict,
    },
}

impl Classify for MediaError {
    fn kind(&self) -> ErrorKind {
        match self {
            MediaError::Policy(e) => e.kind(),
            MediaError::Store(e) => e.kind(),
            MediaError::Index(e) => e.kind(),
            MediaError::Body(_) | MediaError::HashMismatch | MediaError::Empty => {
                ErrorKind::BadRequest
            }
            MediaError::NotFound(_) => ErrorKind::NotFound,
            MediaError::QuotaExceeded(_) => ErrorKind::InsufficientStorage,
            MediaError::Corrupt { .. } => ErrorKind::Gone,
            MediaError::BlobGone | MediaError::Adopt { .. } => ErrorKind::Conflict,
            MediaError::Task(_) => ErrorKind::Internal,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            MediaError::Policy(e) => e.code(),
            MediaError::Store(e) => e.code(),
            MediaError::Index(e) => e.code(),
            MediaError::Body(_) => "bad_body",
            MediaError::NotFound(_) => "media_not_found",
            MediaError::HashMismatch => "hash_mismatch",
            MediaError::QuotaExceeded(_) => "quota_exceeded",
            MediaError::Corrupt { .. } => "media_corrupt",
            MediaError::BlobGone => "blob_gone",
            MediaError::Empty => "empty_upload",
            MediaError::Adopt { .. } => "id_conflict",
            MediaError::Task(_) => "internal",
        }
    }
}

/// The URL a media's downloads live at (signed URLs add their query; the
/// MySQL mirror stores it as `file_url`).
pub fn file_url(public_base_url: &str, id: i64) -> String {
    format!("{}/files/{id}", public_base_url.trim_end_matches('/'))
}

/// Refuses media whose bytes were found damaged or missing: nothing may be
/// served or signed for them until an upload of the same content repairs them.
pub fn ensure_whole(row: &MediaRow) -> std::result::Result<(), MediaError> {
    match row.corrupt_since_ms {
        None => Ok(()),
        Some(ms) => Err(MediaError::corrupt(row.id, ms)),
    }
}

impl MediaError {
    /// Media `id`, found damaged at `since_ms` (Unix ms).
    pub fn corrupt(id: i64, since_ms: i64) -> MediaError {
        MediaError::Corrupt {
            id,
            since: crate::timefmt::rfc3339_ms(since_ms),
        }
    }
}

/// Metric names (Prometheus text on `GET /metrics`).
pub mod metric {
    /// Stored copies found damaged by an upload of the same content and
    /// replaced by it (counter).
    pub const BLOBS_HEALED: &str = "media_store_blobs_healed_total";
    /// Downloads whose bytes did not hash to the media's content (counter).
    pub const CORRUPT_READS: &str = "media_store_corrupt_reads_total";
    /// Uploads recorded, by `result`: `stored` (new content written) or
    /// `deduplicated` (content already held) (counter).
    pub const UPLOADS: &str = "media_store_uploads_total";
    /// Bytes not written because the content was already stored (counter).
    pub const DEDUP_SAVED_BYTES: &str = "media_store_dedup_saved_bytes_total";
    /// Blob rows in the index, by `root` (`primary`, `archive` when
    /// archival is on) (gauge, read at scrape).
    pub const BLOBS: &str = "media_store_blobs";
    /// Bytes of those blobs, by `root` (gauge, read at scrape).
    pub const BLOB_BYTES: &str = "media_store_blob_bytes";
}

fn count_upload(deduplicated: bool, size: u64) {
    if deduplicated {
        metrics::counter!(metric::UPLOADS, "result" => "deduplicated").increment(1);
        metrics::counter!(metric::DEDUP_SAVED_BYTES).increment(size);
    } else {
        metrics::counter!(metric::UPLOADS, "result" => "stored").increment(1);
    }
}

type Result<T, E = MediaError> = std::result::Result<T, E>;

/// Before any blob step of an upload's commit: the uploader's quota, or for
/// an adoption (`media-store import`) that its id and time are free.
fn admit_upload(
    ctx: &crate::index::WriteCtx<'_>,
    adoption: Option<Adoption>,
    quota: &Quota,
    new: &NewMedia,
) -> Result<()> {
    match adoption {
        None => quota::check(ctx, quota, new.uploader_id, new.size),
        Some(a) => match ctx.adoption_conflict(a.id, a.uploaded_at_ms)? {
            Some(conflict) => Err(MediaError::Adopt { id: a.id, conflict }),
            None => Ok(()),
        },
    }
}

/// Inserts the upload's media row: the next id, or the adopted one.
fn record(
    ctx: &crate::index::WriteCtx<'_>,
    adoption: Option<Adoption>,
    new: &NewMedia,
    now_ms: i64,
) -> Result<MediaRow> {
    match adoption {
        None => Ok(ctx.insert_media(new, now_ms)?),
        Some(a) => ctx
            .insert_media_as(new, a.id, a.uploaded_at_ms)?
            .map_err(|conflict| MediaError::Adopt { id: a.id, conflict }),
    }
}

/// Media whose copy was lost or damaged are whole again once an upload
/// has written the content anew.
fn heal(ctx: &crate::index::WriteCtx<'_>, hash: &blake3::Hash) -> Result<()> {
    let healed = ctx.unmark_corrupt(hash)?;
    if healed > 0 {
        tracing::info!(blob.hash = %hash.to_hex(), media = healed, "upload repaired damaged media");
    }
    Ok(())
}

/// What holds a blob's content, as seen under the index's write lock
/// without asking the network: a local file (whole or of the wrong size),
/// or the archive bucket, whose objects the index records (migration 0008).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Whole,
    /// A local file of the wrong size (where, and its size).
    Damaged(crate::store::Tier, u64),
    Absent,
}

/// See [`Held`]. Only for a local primary (an S3 store pins and puts instead).
pub fn held(
    ctx: &crate::index::Tx<'_>,
    store: &BlobStore,
    hash: &blake3::Hash,
    size: u64,
) -> std::result::Result<Held, IndexError> {
    Ok(match store.stat_local(hash) {
        Some((_, stored)) if stored == size => Held::Whole,
        Some((tier, stored)) => Held::Damaged(tier, stored),
        None if store.has_archive_bucket() && ctx.blob_archived(hash)? => Held::Whole,
        None => Held::Absent,
    })
}

/// After a local install: the new primary copy stands for the blob, and
/// archival puts it to the archive bucket again in time.
pub fn installed_locally(
    ctx: &crate::index::Tx<'_>,
    store: &BlobStore,
    hash: &blake3::Hash,
) -> std::result::Result<(), IndexError> {
    if store.has_archive_bucket() {
        ctx.clear_archived(hash)?;
    }
    Ok(())
}

/// Logs and counts a recorded upload.
fn stored(row: MediaRow, mime: &str, deduplicated: bool) -> Ingested {
    tracing::info!(
        media.id = row.id,
        blob.hash = %row.hash.to_hex(),
        size_bytes = row.size,
        file_type = mime,
        deduplicated,
        "stored upload"
    );
    count_upload(deduplicated, row.size);
    Ingested { row, deduplicated }
}

/// How long an upload waits for GC to finish deleting the object of the
/// content it brings (network store) before answering 503.
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A staged blob's object in a network store, held by a pin until the
/// reference that needs it commits (which must unpin it).
#[derive(Debug, Clone, Copy)]
pub struct PinnedBlob {
    /// The pin to drop in the committing transaction ([`crate::index::Tx::unpin_blob`]).
    pub pin: i64,
    /// True when this call put the object (new or healed content); false
    /// when a whole object was already there (deduplicated).
    pub written: bool,
}

/// Pins a hash against GC, waiting while GC is deleting its object.
/// Returns the pin and the size the index records for the hash, if any.
async fn pin_hash(
    index: &Index,
    clock: &SharedClock,
    hash: blake3::Hash,
) -> Result<(i64, Option<u64>)> {
    use crate::index::remote::Pin;
    let deadline = std::time::Instant::now() + CLAIM_WAIT;
    loop {
        let now = clock.now_ms();
        let pin = index
            .write(move |ctx| -> Result<Pin> { Ok(ctx.pin_blob(&hash, now)?) })
            .await?;
        match pin {
            Pin::Pinned { id, recorded } => return Ok((id, recorded)),
            Pin::Claimed if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Pin::Claimed => return Err(IndexError::BlobClaimed.into()),
        }
    }
}

/// Drops a pin whose reference did not commit (best effort: a pin left
/// behind only delays GC of that content until pins expire).
async fn unpin(index: &Index, pin: i64) {
    let dropped = index
        .write(move |ctx| -> Result<()> { Ok(ctx.unpin_blob(pin)?) })
        .await;
    if let Err(e) = dropped {
        tracing::warn!(pin, error = %e, "could not drop a blob pin; it expires with gc.pin_max_age");
    }
}

/// Step 1 of storing a blob in a network store (storage-layout.md, "S3"):
/// pins the hash, then puts the object unless a whole one (recorded in the
/// index, and of the right size in the bucket) is there. The caller's commit
/// adds the reference and unpins in one transaction; on failure before that,
/// the pin is dropped here.
pub async fn pin_and_put(
    index: &Index,
    store: &BlobStore,
    clock: &SharedClock,
    staged: StagingFile,
) -> Result<PinnedBlob> {
    let (hash, size) = (staged.hash(), staged.len());
    let (pin, recorded) = pin_hash(index, clock, hash).await?;
    let store = store.clone();
    let put = crate::tasks::blocking(move || -> Result<bool> {
        if recorded.is_some() {
            match store.stat(&hash) {
                Some((_, stored)) if Some(stored) == recorded && stored == size => {
                    return Ok(false);
                }
                found => {
                    // "Exists" is not "whole": the new, verified bytes replace it.
                    tracing::error!(
                        blob.hash = %hash.to_hex(), stored = ?found.map(|f| f.1), expected = size,
                        "stored object is missing or has the wrong size; replaced by this upload"
                    );
                    metrics::counter!(metric::BLOBS_HEALED).increment(1);
                }
            }
        }
        store.put(&staged)?;
        Ok(true)
    })
    .await
    .map_err(MediaError::from)
    .and_then(|r| r);
    match put {
        Ok(written) => Ok(PinnedBlob { pin, written }),
        Err(e) => {
            unpin(index, pin).await;
            Err(e)
        }
    }
}

/// What the client told us about an upload besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct UploadMeta {
    pub uploader_id: i64,
    pub original_name: Option<String>,
    /// The body's length when the request declared it (raw uploads only).
    pub declared_len: Option<u64>,
    /// The content's BLAKE3 hash as the client states it (`?blake3=`): content
    /// already stored is then only hashed to check the claim, never written.
    pub claimed_hash: Option<blake3::Hash>,
}

impl UploadMeta {
    /// The media row this upload becomes once its content is known.
    fn into_row(self, hash: blake3::Hash, size: u64, mime: &str) -> NewMedia {
        NewMedia {
            uploader_id: self.uploader_id,
            file_type: mime.to_owned(),
            hash,
            size,
            original_name: self.original_name,
        }
    }
}

/// An upload that takes over an existing media id and time instead of the
/// next ones: a file the chat backend stored before media-store
/// (`media-store import`). The quota does not apply (the file already exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adoption {
    pub id: i64,
    pub uploaded_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Ingested {
    pub row: MediaRow,
    /// True when the content was already stored and no new blob was written.
    pub deduplicated: bool,
}

/// How many body bytes may wait for the disk writer, per upload. Counted in
/// bytes, not chunks: hyper's chunks range from a few KiB to hundreds, and each
/// queued one pins its read buffer. Bounds memory per upload while the network
/// and the disk overlap.
const WRITE_QUEUE_BYTES: usize = 1024 * 1024;

/// A body chunk on its way to the writer, holding its share of the byte budget
/// until written.
type Queued = (Bytes, OwnedSemaphorePermit);

#[derive(Clone)]
pub struct MediaService {
    store: BlobStore,
    index: Index,
    /// Swapped whole on config reload; an upload keeps the policy it started with.
    policy: Arc<ArcSwap<Policy>>,
    /// Per-uploader quota, swapped whole on config reload (issue #4).
    quota: Arc<ArcSwap<Quota>>,
    clock: SharedClock,
}

impl MediaService {
    pub fn new(store: BlobStore, index: Index, policy: Policy, clock: SharedClock) -> Self {
        MediaService {
            store,
            index,
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            quota: Default::default(),
            clock,
        }
    }

    pub fn set_quota(&self, quota: Quota) {
        self.quota.store(Arc::new(quota));
    }

    /// The clock uploads and damage reports are stamped with.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Claims a single-use upload URL (by its MAC) until `expires_at` (Unix
    /// seconds); false when it was already used.
    pub async fn claim_upload_url(&self, signature: Vec<u8>, expires_at: i64) -> Result<bool> {
        let now = self.clock.now_ms().div_euclid(1000);
        self.index
            .write(move |ctx| -> Result<bool> {
                Ok(ctx.claim_upload_url(&signature, expires_at, now)?)
            })
            .await
    }

    /// Gives a claimed upload URL back (its upload failed).
    pub async fn release_upload_url(&self, signature: Vec<u8>) -> Result<()> {
        self.index
            .write(move |ctx| -> Result<()> { Ok(ctx.release_upload_url(&signature)?) })
            .await
    }

    pub fn quota(&self) -> Quota {
        **self.quota.load()
    }

    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Checks a declared length before reading any of the body.
    pub fn precheck_len(&self, declared: u64) -> Result<()> {
        let limit = self.policy.load().max_bytes();
        if declared > limit {
            return Err(PolicyError::TooLarge { limit, mime: None }.into());
        }
        Ok(())
    }

    /// Streams an upload to disk, checks it against the policy, and records it.
    pub async fn ingest<S, E>(&self, meta: UploadMeta, body: S) -> Result<Ingested>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: Display,
    {
        self.ingest_as(meta, body, None).await
    }

    /// [`MediaService::ingest`] under a given id and upload time: the same
    /// streaming, type sniffing, policy and write protocol, then the row is
    /// recorded with `adoption`'s id and time (checked before any file step:
    /// the id must be free and the time must keep I6).
    pub async fn adopt<S, E>(
        &self,
        adoption: Adoption,
        meta: UploadMeta,
        body: S,
    ) -> Result<Ingested>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: Display,
    {
        let meta = UploadMeta {
            claimed_hash: None,
            ..meta
        };
        self.ingest_as(meta, body, Some(adoption)).await
    }

    async fn ingest_as<S, E>(
        &self,
        meta: UploadMeta,
        body: S,
        adoption: Option<Adoption>,
    ) -> Result<Ingested>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: Display,
    {
        if let Some(len) = meta.declared_len {
            self.precheck_len(len)?;
        }
        // Content the client says we already hold is only hashed, never written.
        let sink = match meta.claimed_hash {
            Some(claimed) if self.holds(claimed).await? => Sink::HashOnly(blake3::Hasher::new(), 0),
            _ => {
                let store = self.store.clone();
                Sink::Staged(crate::tasks::blocking(move || store.stage()).await??)
            }
        };
        let (chunks, rx) = mpsc::unbounded_channel::<Queued>();
        let writer = crate::tasks::blocking(move || write_chunks(sink, rx));

        let policy = self.policy.load_full();
        let received = receive(&policy, body, chunks).await;
        // The writer ends once `chunks` is dropped (inside `receive`); on error its
        // staging file is dropped with it, which removes it. A writer failure (disk
        // full) explains an early stop better than what the receiver saw after it.
        let sink = writer.await??;
        let (mime, limit) = received?;
        if sink.len() > limit {
            return Err(PolicyError::TooLarge {
                limit,
                mime: Some(mime.into()),
            }
            .into());
        }
        if let Some(claimed) = meta.claimed_hash
            && claimed != sink.hash()
        {
            return Err(MediaError::HashMismatch);
        }
        let sink = match sink {
            Sink::Staged(staged) if mime == "image/jpeg" && policy.strip_exif() => {
                let store = self.store.clone();
                Sink::Staged(crate::tasks::blocking(move || strip_metadata(&store, staged)).await??)
            }
            sink => sink,
        };
        match sink {
            Sink::Staged(staged) => self.commit(staged, mime, meta, adoption).await,
            Sink::HashOnly(hasher, size) => {
                self.commit_known(hasher.finalize(), size, mime, meta).await
            }
        }
    }

    /// Whether the index has the blob and a file of its recorded size exists.
    async fn holds(&self, hash: blake3::Hash) -> Result<bool> {
        let Some(size) = self.index.read(move |r| r.blob_size(&hash)).await? else {
            return Ok(false);
        };
        let store = self.store.clone();
        let stored = crate::tasks::blocking(move || store.stat(&hash)).await?;
        Ok(stored.is_some_and(|(_, s)| s == size))
    }

    /// Records an upload whose content was already stored when it began (only
    /// hashed, never staged). If garbage collection removed the blob meanwhile,
    /// the bytes are gone and the client must send them again.
    async fn commit_known(
        &self,
        hash: blake3::Hash,
        size: u64,
        mime: &'static str,
        meta: UploadMeta,
    ) -> Result<Ingested> {
        if self.store.is_remote() {
            return self.commit_known_remote(hash, size, mime, meta).await;
        }
        let pin = self.pin_below_archive_bucket(hash).await?;
        let store = self.store.clone();
        let new = meta.into_row(hash, size, mime);
        let clock = self.clock.clone();
        let committed = self
            .index
            .write(move |ctx| -> Result<MediaRow> {
                let now = clock.now_ms();
                // Only hashed, never staged: a damaged or vanished copy cannot
                // be healed from this upload, so the client sends the bytes.
                if ctx.blob_size(&hash)? != Some(size)
                    || held(ctx, &store, &hash, size)? != Held::Whole
                {
                    return Err(MediaError::BlobGone);
                }
                if ctx.blob_refcount(&hash)? == Some(0) {
                    // As in `commit`: no live row vouched for this file (a
                    // batch that failed may have installed it), so its folder
                    // entry is made durable before this row commits.
                    ctx.require_durable(store.entry(&hash));
                }
                ctx.add_blob_ref(&hash, size, now)?;
                let row = ctx.insert_media(&new, now)?;
                if let Some(pin) = pin {
                    ctx.unpin_blob(pin)?;
                }
                Ok(row)
            })
            .await;
        let row = self.unpin_on_error(pin, committed).await?;
        tracing::info!(media.id = row.id, blob.hash = %hash.to_hex(), size_bytes = size, "stored upload of known content");
        count_upload(true, size);
        Ok(Ingested {
            row,
            deduplicated: true,
        })
    }

    /// With an archive bucket, GC deletes zero-count blobs (object and local
    /// copy) outside the write lock once it has claimed them: a local commit
    /// pins its hash first (waiting while a claim runs), so that no claim
    /// lands between its checks and its commit, which drops the pin.
    async fn pin_below_archive_bucket(&self, hash: blake3::Hash) -> Result<Option<i64>> {
        if !self.store.has_archive_bucket() {
            return Ok(None);
        }
        Ok(Some(pin_hash(&self.index, &self.clock, hash).await?.0))
    }

    /// Drops the pin of a commit that failed (a committed one dropped it).
    async fn unpin_on_error<T>(&self, pin: Option<i64>, committed: Result<T>) -> Result<T> {
        if let (Err(_), Some(pin)) = (&committed, pin) {
            unpin(&self.index, pin).await;
        }
        committed
    }

    /// [`MediaService::commit_known`] for a network store: the hash is
    /// pinned (so GC cannot claim it), the object checked, then the
    /// reference commits.
    async fn commit_known_remote(
        &self,
        hash: blake3::Hash,
        size: u64,
        mime: &'static str,
        meta: UploadMeta,
    ) -> Result<Ingested> {
        let (pin, recorded) = pin_hash(&self.index, &self.clock, hash).await?;
        let store = self.store.clone();
        let whole = recorded == Some(size)
            && crate::tasks::blocking(move || store.stat(&hash))
                .await
                .map(|s| s.is_some_and(|(_, stored)| stored == size))
                .unwrap_or(false);
        if !whole {
            unpin(&self.index, pin).await;
            return Err(MediaError::BlobGone);
        }
        let new = meta.into_row(hash, size, mime);
        let clock = self.clock.clone();
        let committed = self
            .index
            .write(move |ctx| -> Result<MediaRow> {
                let now = clock.now_ms();
                ctx.add_blob_ref(&hash, size, now)?;
                let row = ctx.insert_media(&new, now)?;
                ctx.unpin_blob(pin)?;
                Ok(row)
            })
            .await;
        let row = self.unpin_on_error(Some(pin), committed).await?;
        count_upload(true, size);
        Ok(Ingested {
            row,
            deduplicated: true,
        })
    }

    /// Installs the staged blob (unless the content is already stored) and
    /// records the media row, in one index transaction.
    async fn commit(
        &self,
        staged: StagingFile,
        mime: &'static str,
        meta: UploadMeta,
        adoption: Option<Adoption>,
    ) -> Result<Ingested> {
        if self.store.is_remote() {
            return self.commit_remote(staged, mime, meta, adoption).await;
        }
        let hash = staged.hash();
        let size = staged.len();
        let pin = self.pin_below_archive_bucket(hash).await?;
        // A duplicate needs no fsync: its staged copy is about to be dropped.
        // Checked again under the index writer, which alone decides.
        let store = self.store.clone();
        let staged = crate::tasks::blocking(move || -> Result<StagingFile> {
            let mut staged = staged;
            // Local files only: asking an archive bucket would cost a request.
            if store.stat_local(&hash).is_none() {
                staged.sync()?;
            }
            Ok(staged)
        })
        .await??;

        let store = self.store.clone();
        let new = meta.into_row(hash, size, mime);
        let quota = self.quota.load_full();
        let clock = self.clock.clone();
        let committed = self
            .index
            .write(move |ctx| -> Result<(MediaRow, bool)> {
                let now = clock.now_ms();
                // Before any file step: a refused upload leaves nothing behind.
                admit_upload(ctx, adoption, &quota, &new)?;
                // Under the writer (and SQLite's write lock, which `gc` also takes),
                // "row and file exist" cannot change before this transaction ends.
                let count = ctx.blob_refcount(&hash)?;
                let deduplicated = match (count, held(ctx, &store, &hash, size)?) {
                    (Some(_), Held::Whole) => true,
                    (Some(_), Held::Damaged(tier, stored)) => {
                        // "Exists" is not "whole": keep the new, verified bytes
                        // in place of the damaged copy, which is kept aside.
                        tracing::error!(
                            blob.hash = %hash.to_hex(), ?tier, stored, expected = size,
                            "stored blob has the wrong size; quarantined and replaced by this upload"
                        );
                        metrics::counter!(metric::BLOBS_HEALED).increment(1);
                        store.quarantine(&hash, now)?;
                        false
                    }
                    _ => false,
                };
                if deduplicated {
                    if count == Some(0) {
                        // No live row vouched for this file: make sure its
                        // folder entry is durable before one does.
                        ctx.require_durable(store.entry(&hash));
                    }
                    drop(staged);
                } else {
                    let mut staged = staged;
                    staged.sync()?;
                    let pending = store.install(staged, &hash)?;
                    ctx.require_durable(pending);
                    installed_locally(ctx, &store, &hash)?;
                }
                ctx.add_blob_ref(&hash, size, now)?;
                let row = record(ctx, adoption, &new, now)?;
                if !deduplicated {
                    heal(ctx, &hash)?;
                }
                if let Some(pin) = pin {
                    ctx.unpin_blob(pin)?;
                }
                Ok((row, deduplicated))
            })
            .await;
        let (row, deduplicated) = self.unpin_on_error(pin, committed).await?;
        Ok(stored(row, mime, deduplicated))
    }

    /// [`MediaService::commit`] for a network store (storage-layout.md,
    /// "S3"): the object is put outside the write lock, under a pin that
    /// keeps GC off the hash, and the reference commits after it.
    async fn commit_remote(
        &self,
        staged: StagingFile,
        mime: &'static str,
        meta: UploadMeta,
        adoption: Option<Adoption>,
    ) -> Result<Ingested> {
        let (hash, size) = (staged.hash(), staged.len());
        let new = meta.into_row(hash, size, mime);
        let quota = self.quota.load_full();
        // Refused uploads are refused before any byte goes to the bucket
        // (checked again at commit, which alone decides).
        let uploader = new.uploader_id;
        let quota_check = quota.clone();
        if adoption.is_none() {
            self.index
                .read(move |r| quota::check(r, &quota_check, uploader, size))
                .await?;
        }
        let pinned = pin_and_put(&self.index, &self.store, &self.clock, staged).await?;
        let clock = self.clock.clone();
        let pin = pinned.pin;
        let committed = self
            .index
            .write(move |ctx| -> Result<MediaRow> {
                let now = clock.now_ms();
                admit_upload(ctx, adoption, &quota, &new)?;
                ctx.add_blob_ref(&hash, size, now)?;
                let row = record(ctx, adoption, &new, now)?;
                if pinned.written {
                    heal(ctx, &hash)?;
                }
                ctx.unpin_blob(pin)?;
                Ok(row)
            })
            .await;
        let row = self.unpin_on_error(Some(pin), committed).await?;
        let deduplicated = !pinned.written;
        Ok(stored(row, mime, deduplicated))
    }

    pub async fn get(&self, id: i64) -> Result<MediaRow> {
        self.index
            .read(move |r| r.get_media(id))
            .await?
            .ok_or(MediaError::NotFound(id))
    }

    /// Sets the stored-blob gauges from the index (for a metrics scrape), by
    /// `root`. The archive root's figures are those of the last GC run (only
    /// GC moves blobs there or deletes them there); the primary root's are
    /// the index's totals less those.
    pub async fn observe_stored(&self) -> Result<()> {
        let ((blobs, bytes), archived) = self
            .index
            .read(|r| Ok::<_, IndexError>((r.blob_totals()?, r.archive_stored()?)))
            .await?;
        let (archived_blobs, archived_bytes) = match self.store.has_archive() {
            true => archived.unwrap_or((0, 0)),
            false => (0, 0),
        };
        let primary = [("root", "primary")];
        metrics::gauge!(metric::BLOBS, &primary).set(blobs.saturating_sub(archived_blobs) as f64);
        metrics::gauge!(metric::BLOB_BYTES, &primary)
            .set(bytes.saturating_sub(archived_bytes) as f64);
        if self.store.has_archive() {
            let archive = [("root", "archive")];
            metrics::gauge!(metric::BLOBS, &archive).set(archived_blobs as f64);
            metrics::gauge!(metric::BLOB_BYTES, &archive).set(archived_bytes as f64);
        }
        Ok(())
    }

    pub async fn list(&self, query: ListQuery) -> Result<Vec<MediaRow>> {
        Ok(self.index.read(move |r| r.list_media(&query)).await?)
    }

    /// A download found the blob's bytes not hashing to its content, or no
    /// file at all. Checks the stored copy again (off the request path); if
    /// it is damaged it moves to quarantine, and if damaged or missing the
    /// media using it are marked corrupt, so that they answer
    /// `410 media_corrupt` until an upload of the same content repairs them.
    /// A copy replaced meanwhile (by such an upload) is left alone.
    pub async fn report_damaged(&self, hash: blake3::Hash) -> Result<()> {
        metrics::counter!(metric::CORRUPT_READS).increment(1);
        let Some(size) = self.index.read(move |r| r.blob_size(&hash)).await? else {
            return Ok(());
        };
        let store = self.store.clone();
        let (seen, verdict) = crate::tasks::blocking(move || {
            let seen = store.fingerprint(&hash);
            (seen, store.verify(&hash, size).0)
        })
        .await?;
        if verdict == crate::store::Verdict::Ok {
            return Ok(());
        }
        let (store, clock) = (self.store.clone(), self.clock.clone());
        let marked = self
            .index
            .write(move |ctx| -> Result<u64> {
                if store.fingerprint(&hash) != seen {
                    return Ok(0);
                }
                let now = clock.now_ms();
                if verdict == crate::store::Verdict::Corrupt {
                    store.quarantine(&hash, now)?;
                }
                Ok(ctx.mark_corrupt(&hash, now)?)
            })
            .await?;
        tracing::error!(blob.hash = %hash.to_hex(), media_marked = marked, ?verdict, "a download found a damaged or missing blob; its media are marked corrupt");
        Ok(())
    }

    /// Deletes the media row and drops its blob reference. The blob file stays
    /// until garbage collection finds its count at zero past the grace period.
    pub async fn delete(&self, id: i64) -> Result<MediaRow> {
        let now = self.clock.now_ms();
        let row = self
            .index
            .write(move |ctx| ctx.delete_media(id, now))
            .await?
            .ok_or(MediaError::NotFound(id))?;
        tracing::info!(media.id = id, blob.hash = %row.hash.to_hex(), "deleted media");
        Ok(row)
    }
}

/// Feeds the body to the disk writer while sniffing its type and enforcing the
/// size limit. Returns the type and the limit that applies to it.
async fn receive<S, E>(
    policy: &Policy,
    mut body: S,
    chunks: mpsc::UnboundedSender<Queued>,
) -> Result<(&'static str, u64)>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: Display,
{
    let budget = Arc::new(Semaphore::new(WRITE_QUEUE_BYTES));
    let mut head: Vec<u8> = Vec::with_capacity(SNIFF_LEN);
    let mut sniffed: Option<(&'static str, u64)> = None;
    let mut limit = policy.max_bytes();
    let mut total: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| MediaError::Body(e.to_string()))?;
        if chunk.is_empty() {
            continue;
        }
        total += chunk.len() as u64;
        let too_large = |limit, mime: Option<&str>| PolicyError::TooLarge {
            limit,
            mime: mime.map(str::to_owned),
        };
        if total > limit {
            return Err(too_large(limit, sniffed.map(|(m, _)| m)).into());
        }
        if sniffed.is_none() {
            let take = (SNIFF_LEN - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
            if head.len() == SNIFF_LEN {
                let found = admit(policy, &head, false)?;
                limit = found.1;
                sniffed = Some(found);
                if total > limit {
                    return Err(too_large(limit, Some(found.0)).into());
                }
            }
        }
        // Wait until the writer has room (a chunk larger than the whole budget
        // waits for an empty queue).
        let want = chunk.len().clamp(1, WRITE_QUEUE_BYTES) as u32;
        let Ok(permit) = budget.clone().acquire_many_owned(want).await else {
            break;
        };
        if chunks.send((chunk, permit)).is_err() {
            // The writer stopped early: it failed, and `ingest` reports why.
            break;
        }
    }
    if total == 0 {
        // A client mistake (an empty file picked, a body lost on the way), the
        // same 400 for raw and multipart uploads.
        return Err(MediaError::Empty);
    }
    match sniffed {
        Some(found) => Ok(found),
        None => admit(policy, &head, true),
    }
}

fn admit(policy: &Policy, head: &[u8], complete: bool) -> Result<(&'static str, u64)> {
    let mime = policy::sniff(head, complete).ok_or(PolicyError::Unrecognised)?;
    Ok((mime, policy.admit(mime)?))
}

/// A staged JPEG without its identifying metadata (`upload.strip_exif`):
/// a new staging file when there was something to remove, else the same one.
/// The stored (and deduplicated) content is the stripped bytes.
fn strip_metadata(store: &BlobStore, staged: StagingFile) -> Result<StagingFile> {
    let bytes = staged.read_all()?;
    match exif::strip_jpeg(&bytes) {
        None => Ok(staged),
        Some(clean) => {
            let mut stripped = store.stage()?;
            stripped.write_chunk(&clean)?;
            tracing::debug!(
                removed_bytes = bytes.len() - clean.len(),
                "stripped JPEG metadata"
            );
            Ok(stripped)
        }
    }
}

/// Where an upload's bytes go.
enum Sink {
    /// A staging file (hashing as it writes).
    Staged(StagingFile),
    /// Nowhere: content already stored is only hashed, to prove the claim.
    HashOnly(blake3::Hasher, u64),
}

impl Sink {
    fn len(&self) -> u64 {
        match self {
            Sink::Staged(s) => s.len(),
            Sink::HashOnly(_, n) => *n,
        }
    }

    fn hash(&self) -> blake3::Hash {
        match self {
            Sink::Staged(s) => s.hash(),
            Sink::HashOnly(h, _) => h.finalize(),
        }
    }
}

/// Runs on a blocking thread: hashes (and writes) chunks as they arrive, all
/// the chunks already queued in one go.
fn write_chunks(mut sink: Sink, mut rx: mpsc::UnboundedReceiver<Queued>) -> Result<Sink> {
    let mut queued: Vec<Queued> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        queued.push(first);
        while let Ok(more) = rx.try_recv() {
            queued.push(more);
        }
        match &mut sink {
            Sink::Staged(staged) => {
                let slices: Vec<&[u8]> = queued.iter().map(|(b, _)| &b[..]).collect();
                staged.write_chunks(&slices)?;
            }
            Sink::HashOnly(hasher, len) => {
                for (chunk, _) in &queued {
                    hasher.update(chunk);
                    *len += chunk.len() as u64;
                }
            }
        }
        queued.clear();
    }
    Ok(sink)
}
