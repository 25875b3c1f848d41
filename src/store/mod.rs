//! The blob-store port: everything about where and how blob bytes live.
//!
//! Blobs are immutable byte strings named by their BLAKE3 hash. The one type
//! [`BlobStore`] owns their layout, staging, durability, reading, listing,
//! verification, quarantine and deletion; no other module builds a blob path
//! or touches blob data with `std::fs`. Today it keeps blobs on local disk in
//! up to two roots: the data folder (primary) and an optional archive root (a
//! second, cheaper disk for old blobs), both laid out as
//! `blobs/<h0h1>/<h2h3>/<hash>` (storage-layout.md, "Folders"). A further
//! backend (S3) is added inside this module: its callers name blobs by hash
//! and never see where they are.
//!
//! # Contract
//! - **Staging** ([`BlobStore::stage`]): a new, private staging file that
//!   hashes what is written; dropped unless installed, it leaves nothing.
//! - **Install** ([`BlobStore::install`]): given a staging file whose bytes
//!   are durable ([`StagingFile::sync`]), makes it the blob of its hash
//!   atomically (readers see no blob or the whole blob). The returned
//!   [`Pending`] names what must still be made durable for the blob to
//!   survive a power cut; the index runs [`BlobStore::make_durable`] on it
//!   before the commit that records the blob (I2: file before row).
//! - **Exists** ([`BlobStore::contains`], [`BlobStore::locate`]): a file is
//!   present under the hash's name. It says nothing about the bytes: only
//!   [`BlobStore::verify`] (size and hash) does. Blobs are only ever created
//!   by install (I1), so damage comes from the disk or from outside.
//! - **Read** ([`BlobStore::read_whole`], [`BlobStore::open_range`]): from
//!   whichever root holds the blob, primary first, so a blob moved to the
//!   archive meanwhile is still found.
//! - **Delete** ([`BlobStore::delete`], [`BlobStore::delete_unknown`],
//!   [`BlobStore::delete_primary_copy`]): the store never decides that a blob
//!   may go; lifecycle code decides, under the index's write lock.
//! - **List** ([`BlobStore::walk`]): every file in a root's `blobs/`, in hash
//!   order, one leaf folder at a time (memory bounded by a folder's size).
//! - **Quarantine** ([`BlobStore::quarantine`]): a damaged blob is moved
//!   aside, never deleted.
//! - **Serve hint** ([`BlobStore::accel_path`]): where nginx finds the blob
//!   below its internal location, for `X-Accel-Redirect`.

pub mod external;
mod layout;
pub mod s3;
mod staging;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::Stream;

/// The documented on-disk layout (storage-layout.md, "Folders"), for tools and
/// tests that inspect a data folder from outside; the service itself builds
/// blob paths only in this module.
pub use layout::{blob_relative_path, parse_hash_hex};
pub use s3::{Backend, S3Config, StoreConfig};
pub use staging::StagingFile;

use crate::error::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob store I/O failed: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("the data disk is full")]
    DiskFull(#[source] io::Error),
    /// A root that is not this store's (missing or foreign marker): never
    /// written to, so an unmounted disk's empty mount point is not filled.
    #[error("{0}")]
    WrongRoot(String),
    /// The network store did not answer (or failed) in time: retryable.
    #[error("{0}")]
    Unavailable(String),
    /// The store's configuration cannot be used (S3 credentials, endpoint).
    #[error("{0}")]
    Config(String),
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        // ENOSPC / EDQUOT: the client may retry later; say so rather than "internal".
        if matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        ) {
            return StoreError::DiskFull(source);
        }
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::DiskFull(_) => ErrorKind::InsufficientStorage,
            StoreError::Unavailable(_) => ErrorKind::Unavailable,
            StoreError::Io { .. } | StoreError::WrongRoot(_) | StoreError::Config(_) => {
                ErrorKind::Internal
            }
        }
    }
    fn code(&self) -> &'static str {
        match self {
            StoreError::DiskFull(_) => "disk_full",
            StoreError::Io { .. } => "internal",
            StoreError::WrongRoot(_) => "wrong_root",
            StoreError::Unavailable(_) => "store_unavailable",
            StoreError::Config(_) => "internal",
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which root a blob file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Primary,
    Archive,
}

/// Writes that must become durable before the index records them (folder
/// entries changed by installs). Opaque outside the store; empty for writes
/// that were durable when they returned.
#[derive(Debug, Default)]
pub struct Pending {
    dirs: Vec<PathBuf>,
}

impl Pending {
    pub fn merge(&mut self, other: Pending) {
        self.dirs.extend(other.dirs);
    }

    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }
}

/// One file found under a root's `blobs/` by [`BlobStore::walk`].
#[derive(Debug, Clone, PartialEq)]
pub enum BlobEntry {
    /// A file named by a valid hash, where the layout puts that hash.
    Blob(blake3::Hash),
    /// Anything else (a stray name, or a hash file in the wrong shard): never
    /// touched, only reported (its path).
    Foreign(String),
}

/// What [`BlobStore::verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Missing,
    /// Wrong size or hash (or unreadable).
    Corrupt,
    /// A network store did not answer: no verdict on the bytes.
    Unreachable,
}

/// What a deletion did.
#[derive(Debug, PartialEq)]
pub enum Unlinked {
    Removed,
    /// Already gone: fine, nothing freed.
    Absent,
}

/// What [`BlobStore::stage_archive_copy`] did.
#[derive(Debug)]
pub enum ArchiveCopy {
    /// Written and verified, not yet durable nor visible.
    Staged(Box<StagingFile>),
    /// A whole copy was already archived (an earlier, interrupted move).
    AlreadyThere,
    /// The primary copy vanished (GC deleted the blob meanwhile).
    SourceGone,
    /// The primary copy does not match its hash or size; nothing was archived.
    SourceCorrupt,
}

/// A stream of a blob's bytes (a range of them), for a response body.
pub type BlobStream = std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Handle on the blob roots of one data folder. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobStore {
    /// The store's id, from the primary root's marker; every root of the
    /// store carries the same one (storage-layout.md, "Folders").
    id: String,
    primary: Root,
    archive: Option<Root>,
    durable: DurableFolders,
    /// With `[store] backend = "s3"`: the bucket holding every blob; the
    /// primary root then keeps only staging files (and the index beside it).
    remote: Option<std::sync::Arc<s3::S3Blobs>>,
    /// With `[archive] backend = "s3"`: the archive tier is a bucket. Blobs
    /// live in the primary root until archival puts them there and unlinks
    /// the primary copy; reads fall back to the bucket (storage-layout.md,
    /// "S3 archive tier").
    cold: Option<std::sync::Arc<s3::S3Blobs>>,
    /// Hashing and syncing done through this store and its clones.
    work: std::sync::Arc<Work>,
}

/// Work counters ([`BlobStore::bytes_hashed`], [`BlobStore::syncs`]):
/// lifecycle runs check that none of this happens while they hold the
/// index's write lock. Downloads hash on their own counter
/// ([`BlobStore::download_bytes_hashed`]): they run beside GC in the daemon
/// and are not its work.
#[derive(Debug, Default)]
struct Work {
    hashed: std::sync::atomic::AtomicU64,
    syncs: std::sync::atomic::AtomicU64,
    download_hashed: std::sync::atomic::AtomicU64,
}

impl Work {
    fn add_hashed(&self, n: u64) {
        self.hashed
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    fn add_syncs(&self, n: u64) {
        self.syncs
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Shard folders whose own entries (in their parents) this process has made
/// durable: a folder found on disk but not in here gets its parents synced
/// with the next install into it.
#[derive(Debug, Clone, Default)]
struct DurableFolders(std::sync::Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>);

impl DurableFolders {
    fn contains(&self, dir: &Path) -> bool {
        self.0.lock().expect("durable folders lock").contains(dir)
    }

    fn extend(&self, dirs: &[PathBuf]) {
        self.0
            .lock()
            .expect("durable folders lock")
            .extend(dirs.iter().cloned());
    }
}

/// The file in each root naming the store it belongs to (as Garage's node
/// id): `<32 hex>` and a newline.
const MARKER: &str = "store-id";

/// A root's store id, if it has a marker.
fn read_marker(dir: &Path) -> Result<Option<String>> {
    match fs::read_to_string(dir.join(MARKER)) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(
            format!("read {}", dir.join(MARKER).display()),
            e,
        )),
    }
}

/// Writes a root's marker durably (a new file, its folder synced): a marker
/// lost to a power cut would make the root look foreign at the next start.
fn write_marker(dir: &Path, id: &str) -> Result<()> {
    let io = |what: &str, e| StoreError::io(format!("{what} {}", dir.join(MARKER).display()), e);
    let tmp = dir.join(format!("{MARKER}.tmp"));
    let mut file = File::create(&tmp).map_err(|e| io("create", e))?;
    use std::io::Write as _;
    writeln!(file, "{id}").map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("sync", e))?;
    fs::rename(&tmp, dir.join(MARKER)).map_err(|e| io("install", e))?;
    fsync_dir(dir).map_err(|e| io("sync the folder of", e))
}

/// What [`BlobStore::init_archive`] did.
#[derive(Debug, PartialEq)]
pub enum ArchiveInit {
    /// The marker was written.
    Initialised,
    /// The root already belonged to this store.
    AlreadyThis,
}

/// `blobs/`, `tmp/` and `quarantine/` of one root (the data folder, or the
/// archive root).
#[derive(Debug, Clone)]
struct Root {
    dir: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
}

impl Root {
    fn open(dir: &Path) -> Result<Root> {
        let root = Root {
            dir: dir.to_owned(),
            blobs: dir.join("blobs"),
            tmp: dir.join("tmp"),
        };
        for dir in [&root.blobs, &root.tmp] {
            fs::create_dir_all(dir)
                .map_err(|e| StoreError::io(format!("create {}", dir.display()), e))?;
        }
        // Those names, and the root's own (the daemon creates a missing data
        // folder), must be durable before anything in them counts as stored.
        // The parent is best effort: one we cannot read was not made by us.
        let dir = &root.dir;
        fsync_dir(dir).map_err(|e| StoreError::io(format!("fsync {}", dir.display()), e))?;
        if let Some(parent) = dir.canonicalize().ok().as_deref().and_then(Path::parent) {
            let _ = fsync_dir(parent);
        }
        Ok(root)
    }

    fn blob(&self, hash: &blake3::Hash) -> PathBuf {
        self.blobs.join(blob_relative_path(hash))
    }

    /// A blob's shard folder and its parents up to `blobs/`: syncing all of
    /// them makes the blob's file reachable after a power cut, whoever
    /// created the folders.
    fn entry_chain(&self, hash: &blake3::Hash) -> Vec<PathBuf> {
        let path = self.blob(hash);
        let shard = path.parent().expect("blob paths have a shard");
        let outer = shard.parent().expect("shard has a parent");
        vec![self.blobs.clone(), outer.to_owned(), shard.to_owned()]
    }

    /// Whether this root's blobs/ and tmp/ can be written (health checks).
    fn writable(&self) -> bool {
        [&self.blobs, &self.tmp].iter().all(|d| {
            nix::unistd::access(
                d.as_path(),
                nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            )
            .is_ok()
        })
    }

    /// Creates a new, uniquely named staging file in `tmp/`.
    fn stage(&self) -> Result<StagingFile> {
        for _ in 0..8 {
            let name = format!("{:032x}.part", rand::random::<u128>());
            let path = self.tmp.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok(StagingFile::new(path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StoreError::io("create staging file", e)),
            }
        }
        Err(StoreError::io(
            "create staging file",
            io::Error::other("no unique name after 8 tries"),
        ))
    }

    /// Renames a synced staging file to its content address; returns the
    /// folders whose entries changed.
    fn install(
        &self,
        mut staged: StagingFile,
        hash: &blake3::Hash,
        durable: &DurableFolders,
    ) -> Result<Pending> {
        debug_assert!(
            staged.synced,
            "is a bug: blobs are installed only after fsync"
        );
        let target = self.blob(hash);
        let shard = target.parent().expect("blob paths have a shard folder");
        let outer = shard.parent().expect("shard has a parent");
        let mut changed = Vec::with_capacity(3);
        if !shard.is_dir() {
            // New shard folders are new entries in their parents too.
            if !outer.is_dir() || !durable.contains(outer) {
                changed.push(self.blobs.clone());
            }
            fs::create_dir_all(shard)
                .map_err(|e| StoreError::io(format!("create {}", shard.display()), e))?;
            changed.push(outer.to_owned());
        } else if !durable.contains(shard) {
            // Whoever created this shard folder (a batch that failed, another
            // process, a run that crashed) may not have made its entry in
            // its parents durable: this process syncs them once.
            changed.push(outer.to_owned());
            changed.push(self.blobs.clone());
        }
        fs::rename(&staged.path, &target)
            .map_err(|e| StoreError::io(format!("install blob {}", hash.to_hex()), e))?;
        staged.installed = true;
        changed.push(shard.to_owned());
        Ok(Pending { dirs: changed })
    }
}

impl BlobStore {
    /// Opens (creating if needed) `blobs/` and `tmp/` under `data_dir`.
    /// A new data folder (or one from before store ids) gets its marker here.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let primary = Root::open(data_dir)?;
        let id = match read_marker(data_dir)? {
            Some(id) => id,
            None => {
                let id = format!("{:032x}", rand::random::<u128>());
                write_marker(data_dir, &id)?;
                id
            }
        };
        Ok(BlobStore {
            id,
            primary,
            archive: None,
            durable: DurableFolders::default(),
            remote: None,
            cold: None,
            work: Default::default(),
        })
    }

    /// Opens the primary root of an existing store (for `gc`, `fsck`): it
    /// must carry its marker already; nothing is created.
    pub fn open_existing(data_dir: &Path) -> Result<Self> {
        let Some(id) = read_marker(data_dir)? else {
            return Err(StoreError::WrongRoot(format!(
                "{} has no {MARKER} marker: it is not a media-store data folder (a wrong or \
                 unmounted path?), or one last used before store ids; start the daemon on it \
                 once to give it one",
                data_dir.display()
            )));
        };
        Ok(BlobStore {
            id,
            primary: Root::open(data_dir)?,
            archive: None,
            durable: DurableFolders::default(),
            remote: None,
            cold: None,
            work: Default::default(),
        })
    }

    /// Puts the blobs in the configured backend. For S3 the bucket carries
    /// this store's id as an object (`<prefix>store-id`), as a disk root
    /// carries its marker: a bucket of another store is refused, and so is
    /// one that holds blobs but no marker.
    pub fn with_backend(mut self, config: &StoreConfig) -> Result<Self> {
        if config.backend != Backend::S3 {
            self.remote = None;
            return Ok(self);
        }
        self.remote = Some(std::sync::Arc::new(self.open_bucket(config)?));
        Ok(self)
    }

    /// Makes the bucket of `[store.s3]` the archive tier (`[archive] backend
    /// = "s3"`) below a local primary; `None` leaves it off.
    pub fn with_archive_bucket(mut self, config: Option<&StoreConfig>) -> Result<Self> {
        self.cold = match config {
            Some(config) => {
                if self.archive.is_some() || config.backend == Backend::S3 {
                    return Err(StoreError::Config(
                        "an archive bucket needs a local primary and no archive root".into(),
                    ));
                }
                Some(std::sync::Arc::new(self.open_bucket(config)?))
            }
            None => None,
        };
        Ok(self)
    }

    /// Opens the bucket of `[store.s3]` and checks it is this store's.
    fn open_bucket(&self, config: &StoreConfig) -> Result<s3::S3Blobs> {
        let remote = s3::S3Blobs::open(&config.s3)?;
        match remote.read_marker()? {
            Some(id) if id == self.id => {}
            Some(other) => {
                return Err(StoreError::WrongRoot(format!(
                    "the bucket {} belongs to another store (store-id {other}; this store is {}): \
                     is store.s3 pointing at the right bucket and prefix?",
                    remote.location, self.id
                )));
            }
            None if remote.has_blobs()? => {
                return Err(StoreError::WrongRoot(format!(
                    "the bucket {} holds blobs but no store-id: it is not this store's; use \
                     another bucket or prefix",
                    remote.location
                )));
            }
            None => remote.write_marker(&self.id)?,
        }
        Ok(remote)
    }

    /// Whether blobs live in a network store (S3), where nothing may be
    /// written under the index's write lock (storage-layout.md, "S3").
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Whether the archive tier is a bucket below a local primary.
    pub fn has_archive_bucket(&self) -> bool {
        self.cold.is_some()
    }

    /// The bucket this store uses, as its backend or as its archive tier.
    fn bucket(&self) -> Option<&s3::S3Blobs> {
        self.remote.as_deref().or(self.cold.as_deref())
    }

    /// Whether the store uses a bucket (as its backend or archive tier).
    pub fn uses_bucket(&self) -> bool {
        self.bucket().is_some()
    }

    /// [`BlobStore::bucket`], for operations that make no sense without one.
    fn any_bucket(&self) -> Result<&s3::S3Blobs> {
        self.bucket()
            .ok_or_else(|| StoreError::Config("this store uses no bucket".into()))
    }

    /// Whether the network store (backend or archive bucket) answers; `None`
    /// when the store uses none.
    pub fn remote_reachable(&self) -> Option<bool> {
        self.bucket().map(|r| r.reachable())
    }

    /// `local`, or `s3` with its endpoint/bucket/prefix (for `/healthz`);
    /// an archive bucket is named after the local primary.
    pub fn describe_backend(&self) -> String {
        match (&self.remote, &self.cold) {
            (Some(r), _) => format!("s3 {}", r.location),
            (None, Some(c)) => format!("local, archive s3 {}", c.location),
            (None, None) => "local".to_owned(),
        }
    }

    /// Whether downloads of this blob come from the bucket: every blob of an
    /// S3 store, and blobs of an archive bucket that have no local copy.
    /// Blocking (a file lookup).
    pub fn served_from_bucket(&self, hash: &blake3::Hash) -> bool {
        self.is_remote() || (self.cold.is_some() && !self.primary.blob(hash).is_file())
    }

    /// Uploads a staged blob to the network store and checks what the store
    /// reports. Only for a remote store; the caller holds a pin on the hash
    /// (storage-layout.md, "S3"), never the index's write lock.
    pub fn put(&self, staged: &StagingFile) -> Result<()> {
        let remote = self.remote_store()?;
        remote.put_file(&staged.path, staged.len(), &staged.hash())
    }

    /// A presigned GET of a blob in the network store, valid for `ttl`,
    /// answered with the given headers (`content-type`, `content-disposition`,
    /// `cache-control`).
    pub fn presign(
        &self,
        hash: &blake3::Hash,
        ttl: Duration,
        response_headers: &[(&str, String)],
    ) -> Result<String> {
        self.any_bucket()?.presign(hash, ttl, response_headers)
    }

    /// Every object of the bucket (the S3 backend, or the archive bucket):
    /// pages of (entry, size, last modified in Unix ms), in key order.
    pub fn list_remote<E: From<StoreError>>(
        &self,
        f: impl FnMut(Vec<(BlobEntry, u64, i64)>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.any_bucket()?.list(f)
    }

    /// Multipart uploads under the network store's prefix that were begun
    /// and never completed nor aborted (a daemon killed mid-upload).
    pub fn incomplete_uploads(&self) -> Result<Vec<s3::IncompleteUpload>> {
        self.any_bucket()?.incomplete_uploads()
    }

    /// Aborts one of [`BlobStore::incomplete_uploads`]: its parts are dropped.
    pub fn abort_upload(&self, upload: &s3::IncompleteUpload) -> Result<()> {
        self.any_bucket()?.abort_upload(upload)
    }

    /// `local` or `s3`: the name `migrate-store` records in the index.
    pub fn backend_name(&self) -> &'static str {
        if self.is_remote() { "s3" } else { "local" }
    }

    /// Copies one blob from `source` (another backend of the same store)
    /// into this one, checking its BLAKE3 hash and size on the way, and
    /// makes it durable here. A whole copy already here is left as is (a
    /// resumed migration). Blocking.
    pub fn copy_from(&self, source: &BlobStore, hash: &blake3::Hash, size: u64) -> Result<Copied> {
        if self.stat(hash).is_some_and(|(_, s)| s == size) {
            return Ok(Copied::AlreadyThere);
        }
        let local = match source.local_copy(hash) {
            Ok(local) => local,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Copied::SourceMissing),
            Err(e) => return Err(StoreError::io("read the blob to copy", e)),
        };
        let mut input =
            File::open(&local.path).map_err(|e| StoreError::io("open the blob to copy", e))?;
        let mut staged = self.stage()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => staged.write_chunk(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::io("read the blob to copy", e)),
            }
        }
        if staged.hash() != *hash || staged.len() != size {
            return Ok(Copied::SourceCorrupt);
        }
        if self.is_remote() {
            self.put(&staged)?;
        } else {
            staged.sync()?;
            let pending = self.install(staged, hash)?;
            self.make_durable(pending)
                .map_err(|e| StoreError::io("sync the copied blob", e))?;
        }
        Ok(Copied::Copied)
    }

    fn remote_store(&self) -> Result<&s3::S3Blobs> {
        self.remote
            .as_deref()
            .ok_or_else(|| StoreError::Config("not an S3 store".into()))
    }

    /// This store's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds the archive root; `None` leaves archival off. The root must
    /// exist and carry this store's marker ([`BlobStore::init_archive`] puts
    /// it there on purpose): an unmounted disk's mount point is an empty
    /// folder that would otherwise be filled, and then hidden by the disk.
    pub fn with_archive(mut self, root: Option<&Path>) -> Result<Self> {
        let Some(root) = root else {
            self.archive = None;
            return Ok(self);
        };
        if !root.is_dir() {
            // Not created on demand: a typo or an unmounted disk would
            // otherwise silently fill the wrong file system.
            return Err(StoreError::WrongRoot(format!(
                "archive root {} does not exist (is the archive disk mounted?)",
                root.display()
            )));
        }
        match read_marker(root)? {
            Some(id) if id == self.id => {}
            Some(other) => {
                return Err(StoreError::WrongRoot(format!(
                    "archive root {} belongs to another store (store-id {other}; this store is \
                     {}): is the right disk mounted there?",
                    root.display(),
                    self.id
                )));
            }
            None => {
                return Err(StoreError::WrongRoot(format!(
                    "archive root {} has no {MARKER} marker, so it is not this store's archive \
                     (is the archive disk mounted?). To start a new, empty archive there on \
                     purpose, run `media-store init-archive`",
                    root.display()
                )));
            }
        }
        self.archive = Some(Root::open(root)?);
        Ok(self)
    }

    /// Makes `root` this store's archive root on purpose, by writing its
    /// marker. Refused when the root belongs to another store, or when it
    /// already holds files but `adopt_existing` is not given (an archive
    /// written before store ids: adopt it knowingly).
    pub fn init_archive(&self, root: &Path, adopt_existing: bool) -> Result<ArchiveInit> {
        if !root.is_dir() {
            return Err(StoreError::WrongRoot(format!(
                "archive root {} does not exist: create it (on the mounted archive disk) first",
                root.display()
            )));
        }
        match read_marker(root)? {
            Some(id) if id == self.id => return Ok(ArchiveInit::AlreadyThis),
            Some(other) => {
                return Err(StoreError::WrongRoot(format!(
                    "{} belongs to another store (store-id {other}); refusing to take it over",
                    root.display()
                )));
            }
            None => {}
        }
        let has_files = fs::read_dir(root)
            .map_err(|e| StoreError::io(format!("list {}", root.display()), e))?
            .next()
            .is_some();
        if has_files && !adopt_existing {
            return Err(StoreError::WrongRoot(format!(
                "{} is not empty; if it is this store's archive from before store ids, run \
                 `media-store init-archive --adopt-existing`",
                root.display()
            )));
        }
        write_marker(root, &self.id)?;
        Ok(ArchiveInit::Initialised)
    }

    /// Whether the store has an archive tier (a root or a bucket).
    pub fn has_archive(&self) -> bool {
        self.archive.is_some() || self.cold.is_some()
    }

    /// Whether each root can be written: (primary, archive if any).
    pub fn writable(&self) -> (bool, Option<bool>) {
        if self.is_remote() {
            return (self.primary.writable(), None);
        }
        (
            self.primary.writable(),
            self.archive.as_ref().map(Root::writable),
        )
    }

    fn root(&self, tier: Tier) -> Option<&Root> {
        match tier {
            Tier::Primary => Some(&self.primary),
            Tier::Archive => self.archive.as_ref(),
        }
    }

    // ---- writes -------------------------------------------------------

    /// Creates a new staging file (in the primary root's `tmp/`).
    pub fn stage(&self) -> Result<StagingFile> {
        self.primary.stage()
    }

    /// Moves a finished, synced staging file to its content address in the
    /// primary root. The rename is atomic, so readers see either no blob or
    /// the whole blob. The result must be made durable
    /// ([`BlobStore::make_durable`]) before the blob is recorded as present.
    pub fn install(&self, staged: StagingFile, hash: &blake3::Hash) -> Result<Pending> {
        if self.is_remote() {
            return Err(StoreError::Config(
                "is a bug: install on an S3 store (uploads use put, outside the write lock)".into(),
            ));
        }
        self.primary.install(staged, hash, &self.durable)
    }

    /// Makes pending writes durable: one fsync per folder for a few, one
    /// `syncfs` of the file system when many changed in the same batch
    /// (group commit: one flush then covers all of them).
    pub fn make_durable(&self, pending: Pending) -> io::Result<()> {
        let mut dirs = pending.dirs;
        dirs.sort();
        dirs.dedup();
        self.work.add_syncs(make_dirs_durable(&dirs)?);
        // Every folder in here had its own entries synced: a shard among
        // them was installed into, so its parents were in this set too.
        self.durable.extend(&dirs);
        Ok(())
    }

    /// Removes staging files last modified before `older_than` ago (all of them
    /// for `Duration::ZERO`) in the primary root. Returns how many were removed.
    pub fn clean_tmp(&self, older_than: Duration) -> Result<usize> {
        let cutoff = SystemTime::now() - older_than;
        let mut removed = 0;
        let entries = fs::read_dir(&self.primary.tmp)
            .map_err(|e| StoreError::io("list staging folder", e))?;
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let stale = meta.modified().map(|m| m <= cutoff).unwrap_or(true);
            if meta.is_file()
                && (older_than.is_zero() || stale)
                && fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Staging files (of every root) last modified at or before `cutoff_ms`
    /// (Unix ms): removed, or with `dry_run` only listed. Returns their paths.
    pub fn sweep_staging(&self, cutoff_ms: i64, dry_run: bool) -> Result<Vec<String>> {
        let mut swept = Vec::new();
        for root in std::iter::once(&self.primary).chain(&self.archive) {
            let entries = fs::read_dir(&root.tmp)
                .map_err(|e| StoreError::io(format!("list {}", root.tmp.display()), e))?;
            for entry in entries.flatten() {
                let path = entry.path();
                if !path.is_file() || mtime_ms(&path).is_none_or(|m| m > cutoff_ms) {
                    continue;
                }
                if dry_run || fs::remove_file(&path).is_ok() {
                    swept.push(path.display().to_string());
                }
            }
        }
        Ok(swept)
    }

    // ---- reads --------------------------------------------------------

    /// The root holding this blob, primary first; `None` if neither has it.
    /// "Exists", not "whole": see [`BlobStore::verify`].
    pub fn locate(&self, hash: &blake3::Hash) -> Option<Tier> {
        if let Some(remote) = &self.remote {
            return remote.head(hash).ok().flatten().map(|_| Tier::Primary);
        }
        [Tier::Primary, Tier::Archive]
            .into_iter()
            .find(|t| self.root(*t).is_some_and(|r| r.blob(hash).is_file()))
            .or_else(|| self.cold_head(hash).map(|_| Tier::Archive))
    }

    /// The bucket that holds a tier's copies: an S3 store's for the primary
    /// tier, an archive bucket for the archive tier; `None` for a tier on
    /// disk (or absent).
    fn tier_bucket(&self, tier: Tier) -> Option<&s3::S3Blobs> {
        match tier {
            Tier::Primary => self.remote.as_deref(),
            Tier::Archive => self.cold.as_deref(),
        }
    }

    /// The archive bucket's size and last modification of the blob's object
    /// (`None` without an archive bucket, or when it cannot say).
    fn cold_head(&self, hash: &blake3::Hash) -> Option<(u64, i64)> {
        self.cold.as_ref()?.head(hash).ok().flatten()
    }

    pub fn contains(&self, hash: &blake3::Hash) -> bool {
        self.locate(hash).is_some()
    }

    /// The root holding this blob (primary first) and the size of its file
    /// there. A size other than the recorded one means the copy is damaged.
    pub fn stat(&self, hash: &blake3::Hash) -> Option<(Tier, u64)> {
        if let Some(remote) = &self.remote {
            return remote
                .head(hash)
                .ok()
                .flatten()
                .map(|(s, _)| (Tier::Primary, s));
        }
        self.stat_local(hash)
            .or_else(|| self.cold_head(hash).map(|(size, _)| (Tier::Archive, size)))
    }

    /// [`BlobStore::stat`] of the local roots only: no network request, so
    /// it may run under the index's write lock (an archive bucket's objects
    /// are known from the index there).
    pub fn stat_local(&self, hash: &blake3::Hash) -> Option<(Tier, u64)> {
        if self.is_remote() {
            return self.stat(hash);
        }
        [Tier::Primary, Tier::Archive].into_iter().find_map(|t| {
            let meta = fs::metadata(self.root(t)?.blob(hash)).ok()?;
            meta.is_file().then_some((t, meta.len()))
        })
    }

    /// The folder entry of the blob's file (in whichever root holds it), as
    /// pending durability work: a blob file found without a live row may have
    /// been installed by a batch that never committed, whose barrier may not
    /// have run. Empty when no root holds the blob.
    pub fn entry(&self, hash: &blake3::Hash) -> Pending {
        if self.is_remote() {
            // An acknowledged put is durable in the cluster.
            return Pending::default();
        }
        // Local files only (an archive bucket's object needs no sync, and
        // this runs under the index's write lock: no network request).
        let dirs = self
            .stat_local(hash)
            .and_then(|(t, _)| self.root(t))
            .map(|root| root.entry_chain(hash))
            .unwrap_or_default();
        Pending { dirs }
    }

    /// Identifies the file now holding the blob (root, [`file_id`], size): a
    /// verdict reached on one file is applied only if the same file is still
    /// there (an upload may have replaced a damaged copy meanwhile).
    pub fn fingerprint(&self, hash: &blake3::Hash) -> Option<(Tier, u64, u64)> {
        if let Some(remote) = &self.remote {
            // An object's identity: its last modification (a re-put changes it).
            let (size, modified) = remote.head(hash).ok().flatten()?;
            return Some((Tier::Primary, modified as u64, size));
        }
        [Tier::Primary, Tier::Archive]
            .into_iter()
            .find_map(|t| {
                let meta = fs::metadata(self.root(t)?.blob(hash)).ok()?;
                meta.is_file().then_some((t, file_id(&meta), meta.len()))
            })
            .or_else(|| {
                let (size, modified) = self.cold_head(hash)?;
                Some((Tier::Archive, modified as u64, size))
            })
    }

    /// Whether the primary root holds a file for this blob.
    pub fn in_primary(&self, hash: &blake3::Hash) -> bool {
        if self.is_remote() {
            return self.contains(hash);
        }
        self.primary.blob(hash).is_file()
    }

    /// Opens the blob from whichever root holds it. The primary is tried first
    /// and the archive on `NotFound`, so a blob moved to the archive meanwhile
    /// (its primary copy unlinked after the archive copy was durable) is found.
    fn open_file(&self, hash: &blake3::Hash) -> io::Result<File> {
        match File::open(self.primary.blob(hash)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match &self.archive {
                Some(archive) => File::open(archive.blob(hash)),
                None => Err(e),
            },
            other => other,
        }
    }

    /// The file name of the blob (primary first, then the archive), for
    /// read-only use by an external program that needs one (the preview
    /// engine hands videos and PDFs to ffmpeg and pdftoppm by name). Never
    /// written through; `NotFound` when neither root holds the blob.
    pub fn read_path(&self, hash: &blake3::Hash) -> io::Result<PathBuf> {
        if self.served_from_bucket(hash) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "an S3 blob has no file name; use local_copy",
            ));
        }
        let tier = self
            .locate(hash)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        self.root(tier)
            .map(|r| r.blob(hash))
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    /// A local file with the blob's bytes, for an external program that
    /// needs a file name: the blob's own file on disk, or for S3 a download
    /// into a staging file, removed when the copy is dropped. Blocking.
    pub fn local_copy(&self, hash: &blake3::Hash) -> io::Result<LocalCopy> {
        let remote = match self.bucket() {
            Some(bucket) if self.served_from_bucket(hash) => bucket,
            _ => {
                return Ok(LocalCopy {
                    path: self.read_path(hash)?,
                    _staged: None,
                });
            }
        };
        let mut staged = self.stage().map_err(io::Error::other)?;
        remote.download(hash, &mut staged)?;
        Ok(LocalCopy {
            path: staged.path.clone(),
            _staged: Some(staged),
        })
    }

    /// The first `len` bytes of the blob (the whole of a small blob). Blocking.
    pub fn read_whole(&self, hash: &blake3::Hash, len: u64) -> io::Result<Vec<u8>> {
        if let Some(remote) = &self.remote {
            return remote.read_whole(hash, len);
        }
        let mut buf = vec![0; len as usize];
        match self.open_file(hash) {
            Ok(mut file) => file.read_exact(&mut buf)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => match &self.cold {
                Some(cold) => return cold.read_whole(hash, len),
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
        Ok(buf)
    }

    /// A stream of `len` bytes of the blob from `start`, read in chunks of
    /// `chunk` bytes. Blocking (opens and seeks); the stream itself is async.
    pub fn open_range(
        &self,
        hash: &blake3::Hash,
        start: u64,
        len: u64,
        chunk: usize,
    ) -> io::Result<BlobStream> {
        Ok(self.open_bytes(hash, start, len, chunk, false)?.0)
    }

    /// [`open_range`](Self::open_range), saying which bucket the bytes come
    /// from (an S3 store, or an archive bucket when there is no local copy)
    /// and the object's version. `whole`: all of the blob (`start` 0, `len`
    /// its size), asked of a bucket without a Range.
    fn open_bytes(
        &self,
        hash: &blake3::Hash,
        start: u64,
        len: u64,
        chunk: usize,
        whole: bool,
    ) -> io::Result<BucketOpened<'_>> {
        use std::io::{Seek, SeekFrom};
        use tokio::io::AsyncReadExt as _;
        let range = (!whole).then_some(start..start + len);
        if let Some(remote) = &self.remote {
            return open_object(remote, hash, range, len);
        }
        let mut file = match (self.open_file(hash), &self.cold) {
            (Err(e), Some(cold)) if e.kind() == io::ErrorKind::NotFound => {
                return open_object(cold, hash, range, len);
            }
            (file, _) => file?,
        };
        file.seek(SeekFrom::Start(start))?;
        let file = tokio::fs::File::from_std(file).take(len);
        Ok((
            Box::pin(tokio_util::io::ReaderStream::with_capacity(file, chunk)),
            None,
        ))
    }

    /// The whole blob as a stream that is checked against its hash as it
    /// goes: the last chunk is held back until the hash is known, and on a
    /// mismatch the stream ends with an error instead (the client sees a
    /// failed transfer, never a clean wrong body) and `on_mismatch` runs.
    /// BLAKE3 hashes faster than the disk reads, so this costs little.
    ///
    /// A bucket's object is hashed once per object version (unless
    /// `store.s3.verify_downloads = "always"`): a version hashed right
    /// before is served as it comes, the bucket checking its own blocks on
    /// every read (storage-layout.md, "Serving S3 blobs").
    pub fn open_verified(
        &self,
        hash: &blake3::Hash,
        size: u64,
        chunk: usize,
        on_mismatch: Box<dyn FnOnce() + Send>,
    ) -> io::Result<BlobStream> {
        let (inner, bucket) = self.open_bytes(hash, 0, size, chunk, true)?;
        let on_match = match bucket {
            None => None,
            Some((bucket, version)) => {
                if let Some(seen) = &version
                    && bucket.verified_before(hash, seen)
                {
                    metrics::counter!(s3::metric::WHOLE_DOWNLOADS, "check" => "version")
                        .increment(1);
                    return Ok(inner);
                }
                metrics::counter!(s3::metric::WHOLE_DOWNLOADS, "check" => "hashed").increment(1);
                version.and_then(|version| bucket.on_verified(hash, version))
            }
        };
        Ok(Box::pin(VerifiedStream {
            inner,
            work: self.work.clone(),
            hasher: blake3::Hasher::new(),
            expected: *hash,
            held: None,
            done: false,
            on_mismatch: Some(on_mismatch),
            on_match,
        }))
    }

    /// Where nginx finds the blob below the internal location that aliases
    /// both roots' `blobs/` (`X-Accel-Redirect`), e.g. `ab/cd/abcd…`.
    pub fn accel_path(&self, hash: &blake3::Hash) -> String {
        blob_relative_path(hash).to_string_lossy().into_owned()
    }

    /// The path of the blob's file in a root, for operators' reports (dry
    /// runs, fsck); never to be opened by callers.
    pub fn describe(&self, tier: Tier, hash: &blake3::Hash) -> String {
        match (&self.remote, &self.cold, tier) {
            (Some(bucket), _, _) | (None, Some(bucket), Tier::Archive) => {
                return format!("s3 {}", bucket.key(hash));
            }
            _ => {}
        }
        self.root(tier)
            .map(|r| r.blob(hash).display().to_string())
            .unwrap_or_default()
    }

    // ---- maintenance --------------------------------------------------

    /// Checks the blob's size and BLAKE3 hash where it is found (primary
    /// first). Files of 1 MiB and more are memory-mapped and hashed on the
    /// rayon pool.
    pub fn verify(&self, hash: &blake3::Hash, size: u64) -> (Verdict, Option<Tier>) {
        if let Some(remote) = &self.remote {
            // One GET: a HEAD first would turn an unreachable store into "missing".
            return match remote.verify(hash, size) {
                Verdict::Missing => (Verdict::Missing, None),
                verdict => (verdict, Some(Tier::Primary)),
            };
        }
        match (self.stat_local(hash), &self.cold) {
            (Some((tier, _)), _) => (self.verify_copy(tier, hash, size), Some(tier)),
            // One GET, as above.
            (None, Some(cold)) => match cold.verify(hash, size) {
                Verdict::Missing => (Verdict::Missing, None),
                verdict => (verdict, Some(Tier::Archive)),
            },
            (None, None) => (Verdict::Missing, None),
        }
    }

    /// Calls `f` with the blob files of one root's `blobs/`, a leaf shard
    /// folder at a time, in hash order; `on_shard` is called after each
    /// top-level shard folder (for progress bars). A root that is not
    /// configured has nothing to walk.
    pub fn walk<E: From<StoreError>>(
        &self,
        tier: Tier,
        on_shard: impl FnMut(),
        f: impl FnMut(Vec<(BlobEntry, Option<i64>)>) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(bucket) = self.tier_bucket(tier) {
            let mut f = f;
            return bucket.list(|page| {
                f(page
                    .into_iter()
                    .map(|(e, _, modified)| (e, Some(modified)))
                    .collect())
            });
        }
        match self.root(tier) {
            Some(root) => walk_blobs(&root.blobs, on_shard, f),
            None => Ok(()),
        }
    }

    /// Number of top-level shard folders of a root (a progress bar's length).
    pub fn shard_count(&self, tier: Tier) -> u64 {
        if self.is_remote() {
            return 0;
        }
        self.root(tier)
            .and_then(|r| fs::read_dir(&r.blobs).ok())
            .map(|d| d.count() as u64)
            .unwrap_or(0)
    }

    /// The blob file's size and last modification (Unix ms) in a root, if
    /// it exists.
    pub fn file_meta(&self, tier: Tier, hash: &blake3::Hash) -> Option<(u64, i64)> {
        if let Some(bucket) = self.tier_bucket(tier) {
            return bucket.head(hash).ok().flatten();
        }
        let path = self.root(tier)?.blob(hash);
        let meta = fs::symlink_metadata(&path).ok()?;
        Some((meta.len(), mtime_ms(&path)?))
    }

    /// Deletes every copy of a blob (both roots, or the primary copy and the
    /// archive bucket's object). Returns how many copies went. Callers decide
    /// that the blob is garbage: under the index's write lock for files, by
    /// a claim for objects (storage-layout.md, "S3").
    pub fn delete(&self, hash: &blake3::Hash) -> Result<u64> {
        if let Some(remote) = &self.remote {
            return Ok(u64::from(remote.delete(hash)? == Unlinked::Removed));
        }
        let mut removed = 0;
        if let Some(cold) = &self.cold {
            // The object first: a failure leaves the claim and the primary
            // copy for the next run.
            removed += u64::from(cold.delete(hash)? == Unlinked::Removed);
        }
        for root in std::iter::once(&self.primary).chain(&self.archive) {
            if unlink(&root.blob(hash))? == Unlinked::Removed {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Deletes a blob file the index does not know, in one root.
    pub fn delete_unknown(&self, tier: Tier, hash: &blake3::Hash) -> Result<Unlinked> {
        if let Some(bucket) = self.tier_bucket(tier) {
            return bucket.delete(hash);
        }
        match self.root(tier) {
            Some(root) => unlink(&root.blob(hash)),
            None => Ok(Unlinked::Absent),
        }
    }

    /// Moves a damaged blob (from whichever root holds it) to that root's
    /// `quarantine/<hash>.<now_ms>`, never across disks, and makes the move
    /// durable. Returns the quarantined file's path; `None` if the blob was
    /// already gone.
    pub fn quarantine(&self, hash: &blake3::Hash, now_ms: i64) -> Result<Option<String>> {
        if self.is_remote() {
            return self.quarantine_copy(Tier::Primary, hash, now_ms);
        }
        match self.locate(hash) {
            Some(tier) => self.quarantine_copy(tier, hash, now_ms),
            None => Ok(None),
        }
    }

    /// Moves one root's copy of a blob to that root's `quarantine/`, as
    /// [`BlobStore::quarantine`] does. `None` if that root has no copy.
    pub fn quarantine_copy(
        &self,
        tier: Tier,
        hash: &blake3::Hash,
        now_ms: i64,
    ) -> Result<Option<String>> {
        if let Some(bucket) = self.tier_bucket(tier) {
            return bucket.quarantine(hash, now_ms);
        }
        let Some((moved, pending)) = self.quarantine_copy_unsynced(tier, hash, now_ms)? else {
            return Ok(None);
        };
        self.make_durable(pending)
            .map_err(|e| StoreError::io("sync a quarantine move", e))?;
        Ok(Some(moved))
    }

    /// [`BlobStore::quarantine_copy`] without its syncs: the move is made
    /// durable by [`BlobStore::make_durable`] on the returned [`Pending`]
    /// (fsck repair does that after releasing the index's write lock).
    pub fn quarantine_copy_unsynced(
        &self,
        tier: Tier,
        hash: &blake3::Hash,
        now_ms: i64,
    ) -> Result<Option<(String, Pending)>> {
        if self.tier_bucket(tier).is_some() {
            return Ok(self
                .quarantine_copy(tier, hash, now_ms)?
                .map(|moved| (moved, Pending::default())));
        }
        let Some(root) = self.root(tier) else {
            return Ok(None);
        };
        let from = root.blob(hash);
        let folder = root.dir.join("quarantine");
        fs::create_dir_all(&folder)
            .map_err(|e| StoreError::io(format!("create {}", folder.display()), e))?;
        let to = folder.join(format!("{}.{now_ms}", hash.to_hex()));
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StoreError::io(format!("quarantine {}", from.display()), e));
            }
        }
        // Both halves of the rename and the quarantine folder's own entry;
        // the blob's whole chain of folders, so that `make_durable` may
        // remember its shard as durable (its rule for every shard it syncs).
        let mut dirs = root.entry_chain(hash);
        dirs.extend([folder, root.dir.clone()]);
        let pending = Pending { dirs };
        Ok(Some((to.display().to_string(), pending)))
    }

    /// Checks the size and hash of the blob's copy in one root.
    pub fn verify_copy(&self, tier: Tier, hash: &blake3::Hash, size: u64) -> Verdict {
        if let Some(bucket) = self.tier_bucket(tier) {
            return bucket.verify(hash, size);
        }
        match self.root(tier) {
            Some(root) => verify_file(&root.blob(hash), size, hash, &self.work),
            None => Verdict::Missing,
        }
    }

    /// Bytes this store (and its clones) has read and hashed so far, to verify
    /// blobs or copy them to the archive: lifecycle runs check that none of it
    /// happens while they hold the index's write lock.
    pub fn bytes_hashed(&self) -> u64 {
        self.work.hashed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes whole downloads ([`BlobStore::open_verified`]) have hashed so
    /// far through this store and its clones.
    pub fn download_bytes_hashed(&self) -> u64 {
        self.work
            .download_hashed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// File and folder syncs (fsync, fdatasync, syncfs) this store (and its
    /// clones) has made so far for durability work and quarantines (uploads'
    /// own staging syncs are not counted).
    pub fn syncs(&self) -> u64 {
        self.work.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A handle on [`BlobStore::bytes_hashed`]'s counter.
    pub fn hashed_counter(&self) -> impl Fn() -> u64 + Send + 'static {
        let work = self.work.clone();
        move || work.hashed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A handle on [`BlobStore::syncs`]'s counter.
    pub fn syncs_counter(&self) -> impl Fn() -> u64 + Send + 'static {
        let work = self.work.clone();
        move || work.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks every copy of the blob (both roots), each with the id of its
    /// file ([`BlobStore::copy_fingerprint`]); roots without a copy are left
    /// out.
    pub fn verify_copies(&self, hash: &blake3::Hash, size: u64) -> Vec<(Tier, Verdict, u64)> {
        [Tier::Primary, Tier::Archive]
            .into_iter()
            .filter_map(|tier| {
                let ino = self.copy_fingerprint(tier, hash)?;
                Some((tier, self.verify_copy(tier, hash, size), ino))
            })
            .collect()
    }

    /// Identifies the blob's copy in one root (its inode and change time, see
    /// [`file_id`]): a verdict reached on a file is applied only while the
    /// same file is there.
    pub fn copy_fingerprint(&self, tier: Tier, hash: &blake3::Hash) -> Option<u64> {
        if let Some(bucket) = self.tier_bucket(tier) {
            // An object's identity: its last modification (a re-put changes it).
            let (_, modified) = bucket.head(hash).ok().flatten()?;
            return Some(modified as u64);
        }
        let meta = fs::metadata(self.root(tier)?.blob(hash)).ok()?;
        meta.is_file().then_some(file_id(&meta))
    }

    // ---- archive tier ------------------------------------------------

    /// Whether the archive root holds a whole copy of the blob. Archive files
    /// are only ever created by renaming a hash-verified, durable copy (A1),
    /// so a file of the right size there is the content.
    pub fn archived_whole(&self, hash: &blake3::Hash, size: u64) -> bool {
        if self.cold.is_some() {
            return self.cold_head(hash).is_some_and(|(s, _)| s == size);
        }
        self.archive
            .as_ref()
            .and_then(|a| fs::metadata(a.blob(hash)).ok())
            .is_some_and(|m| m.is_file() && m.len() == size)
    }

    /// Step 1a of a move to the archive root: copies a primary blob into the
    /// archive's `tmp/`, verifying its BLAKE3 hash and size on the way. The
    /// copy becomes visible only through [`BlobStore::install_archive_copies`];
    /// the primary copy is left alone (the caller unlinks it once the archive
    /// copy is durable, A2).
    pub fn stage_archive_copy(&self, hash: &blake3::Hash, size: u64) -> Result<ArchiveCopy> {
        if self.archived_whole(hash, size) {
            return Ok(ArchiveCopy::AlreadyThere);
        }
        let archive = self.archive_root();
        let mut source = match File::open(self.primary.blob(hash)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ArchiveCopy::SourceGone),
            Err(e) => return Err(StoreError::io("open blob to archive", e)),
        };
        let mut staged = archive.stage()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::io("read blob to archive", e)),
            };
            staged.write_chunk(&buf[..n])?;
            self.work.add_hashed(n as u64);
        }
        if staged.hash() != *hash || staged.len() != size {
            // Never spread a damaged copy; fsck reports and quarantines it.
            return Ok(ArchiveCopy::SourceCorrupt);
        }
        // Each copy's own fdatasync: a writeback error on this file is seen
        // on this descriptor (one `syncfs` on another could miss it).
        staged.sync_as("archive-copy-sync")?;
        self.work.add_syncs(1);
        Ok(ArchiveCopy::Staged(Box::new(staged)))
    }

    /// A move to the archive bucket, step 1 (storage-layout.md, "S3 archive
    /// tier"): verifies the primary copy's hash and size, then puts it to
    /// the bucket (which checks the size it reports). The caller holds a pin
    /// on the hash and unlinks the primary copy once this returned `Ok`.
    pub fn put_archive_object(&self, hash: &blake3::Hash, size: u64) -> Result<Copied> {
        let cold = self
            .cold
            .as_ref()
            .ok_or_else(|| StoreError::Config("is a bug: no archive bucket".into()))?;
        let path = self.primary.blob(hash);
        match verify_file(&path, size, hash, &self.work) {
            Verdict::Ok => {}
            Verdict::Missing => return Ok(Copied::SourceMissing),
            Verdict::Corrupt | Verdict::Unreachable => return Ok(Copied::SourceCorrupt),
        }
        cold.put_file(&path, size, hash)?;
        Ok(Copied::Copied)
    }

    /// Step 1b: renames staged archive copies (each already made durable by
    /// its own `fdatasync` in step 1a) to their content addresses. The result
    /// must be made durable before a primary copy goes.
    pub fn install_archive_copies(&self, staged: Vec<Box<StagingFile>>) -> Result<Pending> {
        let archive = self.archive_root();
        let mut pending = Pending::default();
        for copy in staged.into_iter().map(|b| *b) {
            let hash = copy.hash();
            pending.merge(archive.install(copy, &hash, &self.durable)?);
        }
        Ok(pending)
    }

    /// The archive copy's folder entry, as pending durability work (its mover
    /// may have crashed before syncing it).
    pub fn archive_entry(&self, hash: &blake3::Hash) -> Pending {
        let dirs = self
            .archive
            .as_ref()
            .map(|a| a.entry_chain(hash))
            .unwrap_or_default();
        Pending { dirs }
    }

    /// Deletes the primary copy of a blob whose archive copy is whole and
    /// durable (step 3 of a move, or the leftover of an interrupted one).
    pub fn delete_primary_copy(&self, hash: &blake3::Hash) -> Result<Unlinked> {
        unlink(&self.primary.blob(hash))
    }

    fn archive_root(&self) -> &Root {
        self.archive
            .as_ref()
            .expect("is a bug: archive operation without an archive root")
    }
}

/// What [`BlobStore::copy_from`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    Copied,
    /// A whole copy was there already.
    AlreadyThere,
    /// The source has no copy (lost: fsck reports it).
    SourceMissing,
    /// The source's bytes do not match the hash; nothing was copied.
    SourceCorrupt,
}

/// A local file holding a blob's bytes ([`BlobStore::local_copy`]).
#[derive(Debug)]
pub struct LocalCopy {
    pub path: PathBuf,
    /// The downloaded copy of an S3 blob, removed when dropped.
    _staged: Option<StagingFile>,
}

/// Whether two data roots would share blob files: the same folder makes every
/// blob its own "archived copy"; one inside the other's `blobs/` would look
/// like foreign files to GC.
pub fn roots_overlap(a: &Path, b: &Path) -> bool {
    a == b || a.starts_with(b.join("blobs")) || b.starts_with(a.join("blobs"))
}

/// A blob's bytes from a bucket, which says the object's version.
type BucketOpened<'a> = (
    BlobStream,
    Option<(&'a s3::S3Blobs, Option<s3::ObjectVersion>)>,
);

/// `len` bytes of the object (`range`, or all of it), with the bucket.
fn open_object<'a>(
    bucket: &'a s3::S3Blobs,
    hash: &blake3::Hash,
    range: Option<std::ops::Range<u64>>,
    len: u64,
) -> io::Result<BucketOpened<'a>> {
    if len == 0 {
        return Ok((Box::pin(futures_util::stream::empty()), None));
    }
    let (stream, version) = bucket.open_stream(hash, range)?;
    Ok((stream, Some((bucket, version))))
}

/// See [`BlobStore::open_verified`].
struct VerifiedStream {
    inner: BlobStream,
    /// Counts the bytes hashed ([`BlobStore::download_bytes_hashed`]).
    work: std::sync::Arc<Work>,
    hasher: blake3::Hasher,
    expected: blake3::Hash,
    /// The latest chunk, sent once the next one arrives or the hash is right.
    held: Option<Bytes>,
    done: bool,
    on_mismatch: Option<Box<dyn FnOnce() + Send>>,
    /// Runs when the bytes hashed right.
    on_match: Option<Box<dyn FnOnce() + Send>>,
}

impl Stream for VerifiedStream {
    type Item = io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    this.hasher.update(&chunk);
                    this.work
                        .download_hashed
                        .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    if let Some(previous) = this.held.replace(chunk) {
                        return Poll::Ready(Some(Ok(previous)));
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if this.hasher.finalize() == this.expected {
                        if let Some(recorded) = this.on_match.take() {
                            recorded();
                        }
                        return Poll::Ready(this.held.take().map(Ok));
                    }
                    if let Some(report) = this.on_mismatch.take() {
                        report();
                    }
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "blob bytes do not match their hash",
                    ))));
                }
            }
        }
    }
}

/// Test-only (cargo feature `fault-injection`): whether `MEDIA_STORE_FAULT_SKIP`
/// names this sync, so tests/it/powercut.rs can show that it catches its absence.
#[cfg(feature = "fault-injection")]
pub(crate) fn skip_sync(name: &str) -> bool {
    std::env::var("MEDIA_STORE_FAULT_SKIP").is_ok_and(|v| v == name)
}
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn skip_sync(_: &str) -> bool {
    false
}

/// Tells one file apart from any other that held the same name: its inode
/// number mixed with its change time (nanoseconds). The inode number alone is
/// not enough: a file GC unlinks frees its number, and the next file created
/// (an upload of the same content, say) often gets it back at once (ext4).
/// Any change of the file's metadata (a rename, a write) changes the id too,
/// which only makes a verdict skipped, never wrongly applied.
fn file_id(meta: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let ctime_ns = (meta.ctime() as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(meta.ctime_nsec() as u64);
    meta.ino() ^ ctime_ns.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// From this many files or folders to flush, one `syncfs` is cheaper than an
/// fsync of each.
const SYNCFS_FROM: usize = 4;

/// Makes a directory's entries durable.
fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes the folders' entries durable. `syncfs` flushes one file system
/// only, and one barrier may span two (an index batch with new uploads in the
/// primary root and a deduplicated zero-count blob in the archive root): the
/// folders are grouped by device, and each group gets its own syncs.
/// Returns how many syncs it made.
fn make_dirs_durable(dirs: &[PathBuf]) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    if skip_sync("dir-barrier") {
        return Ok(0);
    }
    let mut by_device: std::collections::BTreeMap<u64, Vec<&PathBuf>> = Default::default();
    for dir in dirs {
        by_device
            .entry(fs::metadata(dir)?.dev())
            .or_default()
            .push(dir);
    }
    let mut syncs = 0;
    for group in by_device.values() {
        if group.len() >= SYNCFS_FROM {
            let fd = File::open(group[0])?;
            nix::unistd::syncfs(&fd).map_err(io::Error::from)?;
            syncs += 1;
        } else {
            group.iter().try_for_each(|d| fsync_dir(d))?;
            syncs += group.len() as u64;
        }
    }
    Ok(syncs)
}

fn unlink(path: &Path) -> Result<Unlinked> {
    match fs::remove_file(path) {
        Ok(()) => Ok(Unlinked::Removed),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Unlinked::Absent),
        Err(e) => Err(StoreError::io(format!("delete {}", path.display()), e)),
    }
}

fn mtime_ms(path: &Path) -> Option<i64> {
    let m = fs::symlink_metadata(path).ok()?.modified().ok()?;
    Some(m.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// Files below this are read and hashed on one thread (files are already
/// spread over the cores); mapping them costs more than it saves.
const MMAP_FROM: u64 = 1 << 20;

fn verify_file(path: &Path, size: u64, hash: &blake3::Hash, work: &Work) -> Verdict {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Verdict::Missing,
        Err(_) => return Verdict::Corrupt,
    };
    if meta.len() != size {
        return Verdict::Corrupt;
    }
    work.add_hashed(size);
    let actual = if size < MMAP_FROM {
        fs::read(path).map(|bytes| blake3::hash(&bytes))
    } else {
        // blake3 maps the file (memmap2) and hashes it on the rayon pool.
        // Blobs are never modified in place (I1), so the mapping is stable.
        let mut hasher = blake3::Hasher::new();
        hasher.update_mmap_rayon(path).map(|h| h.finalize())
    };
    match actual {
        Ok(h) if h == *hash => Verdict::Ok,
        _ => Verdict::Corrupt,
    }
}

/// The walk behind [`BlobStore::walk`]: each entry with its mtime (Unix ms).
fn walk_blobs<E: From<StoreError>>(
    blobs: &Path,
    mut on_shard: impl FnMut(),
    mut f: impl FnMut(Vec<(BlobEntry, Option<i64>)>) -> Result<(), E>,
) -> Result<(), E> {
    let foreign = |p: &Path| (BlobEntry::Foreign(p.display().to_string()), None);
    for outer in sorted_entries(blobs)? {
        if !outer.is_dir() {
            f(vec![foreign(&outer)])?;
            continue;
        }
        for inner in sorted_entries(&outer)? {
            if !inner.is_dir() {
                f(vec![foreign(&inner)])?;
                continue;
            }
            let mut batch = Vec::new();
            for file in sorted_entries(&inner)? {
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
                match parse_hash_hex(name) {
                    Some(h) if blobs.join(blob_relative_path(&h)) == file && !file.is_dir() => {
                        batch.push((BlobEntry::Blob(h), mtime_ms(&file)))
                    }
                    _ => batch.push(foreign(&file)),
                }
            }
            f(batch)?;
        }
        on_shard();
    }
    Ok(())
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| StoreError::io(format!("list {}", dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// The port's contract as checks (used by the backends' tests only).
#[doc(hidden)]
pub mod contract;

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_count(root: &Root) -> usize {
        fs::read_dir(&root.tmp).unwrap().count()
    }

    #[test]
    fn local_disk_passes_the_blob_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        contract::run(&store);
        // Nothing left in staging by the contract's operations.
        assert_eq!(tmp_count(&store.primary), 0);
    }

    #[test]
    fn local_disk_with_an_archive_passes_the_blob_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_archive(dir.path());
        contract::run(&store);
    }

    /// A store in `dir/data` with an archive root `dir/archive`, initialised.
    fn store_with_archive(dir: &Path) -> BlobStore {
        let archive = dir.join("archive");
        fs::create_dir(&archive).unwrap();
        let store = BlobStore::open(&dir.join("data")).unwrap();
        assert_eq!(
            store.init_archive(&archive, false).unwrap(),
            ArchiveInit::Initialised
        );
        store.with_archive(Some(&archive)).unwrap()
    }

    fn store_with_blob(content: &[u8]) -> (tempfile::TempDir, BlobStore, blake3::Hash) {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_archive(dir.path());
        let hash = contract::put(&store, content);
        (dir, store, hash)
    }

    #[test]
    fn archived_blob_is_found_and_read_in_the_archive_root() {
        let (_dir, store, hash) = store_with_blob(b"old content");
        let ArchiveCopy::Staged(copy) = store.stage_archive_copy(&hash, 11).unwrap() else {
            panic!("not staged")
        };
        let archive = store.archive.clone().unwrap();
        assert!(!archive.blob(&hash).exists(), "visible before install");
        let pending = store.install_archive_copies(vec![copy]).unwrap();
        store.make_durable(pending).unwrap();
        // Both copies: the primary one is preferred.
        assert_eq!(store.locate(&hash), Some(Tier::Primary));
        assert!(matches!(
            store.stage_archive_copy(&hash, 11).unwrap(),
            ArchiveCopy::AlreadyThere
        ));
        assert_eq!(store.delete_primary_copy(&hash).unwrap(), Unlinked::Removed);
        assert_eq!(store.locate(&hash), Some(Tier::Archive));
        assert_eq!(store.read_whole(&hash, 11).unwrap(), b"old content");
        assert_eq!(store.verify(&hash, 11), (Verdict::Ok, Some(Tier::Archive)));
        assert!(matches!(
            store.stage_archive_copy(&blake3::hash(b"x"), 1).unwrap(),
            ArchiveCopy::SourceGone
        ));
        assert_eq!(tmp_count(&archive), 0);
    }

    #[test]
    fn a_corrupt_blob_is_never_copied_to_the_archive() {
        let (_dir, store, hash) = store_with_blob(b"soon damaged");
        fs::write(store.primary.blob(&hash), b"soon DAMAGED").unwrap();
        assert!(matches!(
            store.stage_archive_copy(&hash, 12).unwrap(),
            ArchiveCopy::SourceCorrupt
        ));
        let archive = store.archive.clone().unwrap();
        assert!(!archive.blob(&hash).exists());
        assert_eq!(tmp_count(&archive), 0);
        assert_eq!(
            store.verify(&hash, 12),
            (Verdict::Corrupt, Some(Tier::Primary))
        );
    }

    #[test]
    fn quarantine_moves_a_blob_aside_on_its_own_disk() {
        let (dir, store, hash) = store_with_blob(b"bad bytes");
        let moved = store.quarantine(&hash, 42).unwrap().unwrap();
        assert!(moved.starts_with(&dir.path().join("data/quarantine").display().to_string()));
        assert!(moved.ends_with(&format!("{}.42", hash.to_hex())));
        assert!(!store.contains(&hash));
        assert_eq!(store.quarantine(&hash, 43).unwrap(), None);
    }

    #[test]
    fn a_missing_archive_root_is_refused_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not-mounted");
        let err = BlobStore::open(dir.path())
            .unwrap()
            .with_archive(Some(&missing))
            .unwrap_err();
        assert!(err.to_string().contains("not-mounted"), "{err}");
        assert!(!missing.exists());
    }

    /// Issue #10, point 5: an archive root is used only if it carries this
    /// store's marker; an empty folder (an unmounted disk's mount point) or
    /// another store's disk is refused, and the refusal says how to
    /// initialise a new root on purpose.
    #[test]
    fn only_this_stores_archive_root_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mount_point = dir.path().join("archive");
        fs::create_dir(&mount_point).unwrap();
        let store = BlobStore::open(&data).unwrap();
        let err = store.clone().with_archive(Some(&mount_point)).unwrap_err();
        assert!(
            err.to_string().contains("media-store init-archive"),
            "{err}"
        );
        assert!(
            fs::read_dir(&mount_point).unwrap().next().is_none(),
            "nothing is written into a root that is not ours"
        );
        store.init_archive(&mount_point, false).unwrap();
        assert_eq!(
            store.init_archive(&mount_point, false).unwrap(),
            ArchiveInit::AlreadyThis
        );
        store.clone().with_archive(Some(&mount_point)).unwrap();
        // The same store reopened keeps its id.
        assert_eq!(BlobStore::open(&data).unwrap().id(), store.id());
        assert_eq!(BlobStore::open_existing(&data).unwrap().id(), store.id());

        // Another store's disk.
        let other = BlobStore::open(&dir.path().join("other-data")).unwrap();
        let err = other.clone().with_archive(Some(&mount_point)).unwrap_err();
        assert!(err.to_string().contains("another store"), "{err}");
        assert!(other.init_archive(&mount_point, true).is_err());

        // A root with files but no marker is adopted only on request.
        let old = dir.path().join("old-archive");
        fs::create_dir_all(old.join("blobs")).unwrap();
        assert!(store.init_archive(&old, false).is_err());
        store.init_archive(&old, true).unwrap();
    }

    #[test]
    fn commands_refuse_a_data_folder_without_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let err = BlobStore::open_existing(dir.path()).unwrap_err();
        assert!(err.to_string().contains("store-id"), "{err}");
        assert!(!dir.path().join("blobs").exists(), "nothing created");
    }

    /// Issue #10, point 6: a shard folder this process did not make durable
    /// (created by a failed batch, another process, a crashed run) gets its
    /// parents synced with the next install into it; once durable, an
    /// install syncs only its own folder.
    #[test]
    fn parents_of_shard_folders_are_synced_whoever_created_them() {
        let dir = tempfile::tempdir().unwrap();
        let content = b"shard parents";
        let hash = blake3::hash(content);
        let relative = blob_relative_path(&hash);
        let shard = dir.path().join("blobs").join(relative.parent().unwrap());
        fs::create_dir_all(&shard).unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let stage = |content: &[u8]| {
            let mut staged = store.stage().unwrap();
            staged.write_chunk(content).unwrap();
            staged.sync().unwrap();
            staged
        };
        let pending = store.install(stage(content), &hash).unwrap();
        let mut dirs = pending.dirs.clone();
        dirs.sort();
        assert_eq!(
            dirs,
            vec![
                dir.path().join("blobs"),
                shard.parent().unwrap().to_owned(),
                shard.clone()
            ]
        );
        store.make_durable(pending).unwrap();
        // Same shard, another blob: only its own folder now.
        let mut other = None;
        for i in 0u32.. {
            let c = i.to_le_bytes();
            if blob_relative_path(&blake3::hash(&c)).parent() == relative.parent() {
                other = Some(c);
                break;
            }
        }
        let other = other.unwrap();
        let pending = store.install(stage(&other), &blake3::hash(&other)).unwrap();
        assert_eq!(pending.dirs, vec![shard]);
    }

    #[test]
    fn clean_tmp_respects_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        fs::write(store.primary.tmp.join("left.part"), b"x").unwrap();
        assert_eq!(store.clean_tmp(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(store.clean_tmp(Duration::ZERO).unwrap(), 1);
    }

    #[test]
    fn walk_reports_foreign_files_without_touching_them() {
        let (_dir, store, hash) = store_with_blob(b"listed");
        fs::write(store.primary.blobs.join("README"), b"x").unwrap();
        let mut seen = Vec::new();
        store
            .walk(
                Tier::Primary,
                || {},
                |batch| -> Result<()> {
                    seen.extend(batch.into_iter().map(|(e, _)| e));
                    Ok(())
                },
            )
            .unwrap();
        assert!(seen.contains(&BlobEntry::Blob(hash)));
        assert!(
            seen.iter()
                .any(|e| matches!(e, BlobEntry::Foreign(p) if p.ends_with("README")))
        );
        assert!(store.primary.blobs.join("README").exists());
    }

    #[test]
    fn disk_full_errors_are_classified_by_kind() {
        let e = StoreError::io("write", io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(e.code(), "disk_full");
        let e = StoreError::io("write", io::Error::from_raw_os_error(libc::EDQUOT));
        assert_eq!(e.code(), "disk_full");
        let e = StoreError::io("write", io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(e.code(), "internal");
    }
}
