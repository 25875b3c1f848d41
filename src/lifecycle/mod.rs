//! Media lifecycle: message references, retention, garbage collection, fsck.
//!
//! Deletion decisions are made only here (storage-layout.md, "Message
//! references", "Garbage collection", "fsck"). Like `media`, this module
//! combines the index and the blob store, and so states the order of
//! operations: a media row goes before its blob's file, and a blob's file is
//! unlinked only inside the SQLite write transaction that deletes its
//! zero-count row.

pub mod archive;
pub mod fsck;
pub mod gc;
pub mod migrate;
pub mod refs;
mod remote;
pub mod report;
pub mod retention;
pub mod runs;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Classify, ErrorKind};
use crate::index::IndexError;

/// Someone outside the index who may still point at media ids: the chat
/// backend's `messages.media_id` in MySQL (see `mirror`). Retention and garbage
/// collection ask it before deleting media, and keep whatever it names.
pub trait ExternalReferences: Send + Sync {
    /// Returns the subset of `media_ids` that are still referenced. An error
    /// means "unknown": the caller must then delete none of them.
    fn referenced(&self, media_ids: &[i64]) -> anyhow::Result<Vec<i64>>;
}

/// `[retention]`: what is deleted when, and per-uploader quotas.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Uploads never attached to a message are deleted this long after upload.
    #[serde(with = "humantime_serde")]
    pub orphan_ttl: Duration,
    /// Maximum age in days per type family (`video = 365`); absent: kept forever.
    pub max_age_days: BTreeMap<String, u64>,
    /// Most bytes one uploader may have stored (sum of its uploads' sizes); 0: no limit.
    pub quota_bytes: u64,
    /// Most files one uploader may have stored; 0: no limit.
    pub quota_files: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            orphan_ttl: Duration::from_secs(24 * 3600),
            max_age_days: BTreeMap::new(),
            quota_bytes: 0,
            quota_files: 0,
        }
    }
}

impl RetentionConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (family, days) in &self.max_age_days {
            if *days == 0 {
                return Err(format!("retention.max_age_days.{family} must be positive"));
            }
            if family.is_empty() || family.contains('/') {
                return Err(format!(
                    "retention.max_age_days: {family:?} is not a type family such as \"video\""
                ));
            }
        }
        Ok(())
    }
}

/// `[gc]`: garbage collection of unreferenced blobs and stale files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// How long a blob's count must have been 0 (and an unknown file must be
    /// untouched) before GC deletes it.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Staging files untouched this long are removed (an upload in flight
    /// writes to its staging file continuously).
    #[serde(with = "humantime_serde")]
    pub tmp_max_age: Duration,
    /// Blobs deleted per SQLite transaction; small batches keep uploads flowing.
    pub batch: usize,
    /// How often the daemon runs retention + GC itself; "0s": never (use the
    /// `media-store gc` command, e.g. from the systemd timer).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            grace: Duration::from_secs(3600),
            tmp_max_age: Duration::from_secs(24 * 3600),
            batch: 256,
            interval: Duration::ZERO,
        }
    }
}

/// `[archive]`: moving old blobs to a second data root (a cheaper disk) or
/// to a bucket (a Garage cluster), still served transparently.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// `local`: the archive tier is `root` (archival off while it is empty);
    /// `s3`: the bucket of `[store.s3]`, below the local data folder
    /// (storage-layout.md, "S3 archive tier").
    pub backend: crate::store::Backend,
    /// Folder on the archive disk (gets `blobs/` and `tmp/`); empty: archival off.
    pub root: std::path::PathBuf,
    /// A blob moves once its newest upload is this many days old (0: at the
    /// next GC run). Moves happen in `media-store gc` and the daemon's GC task.
    pub after_days: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            backend: crate::store::Backend::Local,
            root: std::path::PathBuf::new(),
            after_days: 90,
        }
    }
}

impl ArchiveConfig {
    /// The archive root, when archival is on.
    pub fn root(&self) -> Option<&std::path::Path> {
        (!self.root.as_os_str().is_empty()).then_some(self.root.as_path())
    }

    /// Whether the archive tier is the bucket of `[store.s3]`.
    pub fn in_bucket(&self) -> bool {
        self.backend == crate::store::Backend::S3
    }

    pub(crate) fn validate(&self, data_dir: &std::path::Path) -> Result<(), String> {
        if self.in_bucket() && self.root().is_some() {
            return Err(
                "archive.root and archive.backend = \"s3\" exclude each other: the archive \
                 tier is a folder or the bucket of [store.s3]"
                    .into(),
            );
        }
        let Some(root) = self.root() else {
            return Ok(());
        };
        if crate::store::roots_overlap(data_dir, root) {
            return Err(format!(
                "archive.root ({}) must be a folder of its own, apart from the data folder ({})",
                root.display(),
                data_dir.display()
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("media {0} does not exist")]
    MediaNotFound(i64),
    #[error("message {message_id} belongs to group {existing}, not {requested}")]
    GroupMismatch {
        message_id: i64,
        existing: i64,
        requested: i64,
    },
    #[error("background task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl Classify for LifecycleError {
    fn kind(&self) -> ErrorKind {
        match self {
            LifecycleError::Index(e) => e.kind(),
            LifecycleError::MediaNotFound(_) => ErrorKind::NotFound,
            LifecycleError::GroupMismatch { .. } => ErrorKind::Conflict,
            LifecycleError::Task(_) => ErrorKind::Internal,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            LifecycleError::Index(e) => e.code(),
            LifecycleError::MediaNotFound(_) => "media_not_found",
            LifecycleError::GroupMismatch { .. } => "group_mismatch",
            LifecycleError::Task(_) => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    //! Long work stays outside the index's write lock (storage-layout.md L7,
    //! A7): every upload commit of the daemon waits while a lifecycle run
    //! holds it, and fails with 503 after its busy timeout. The store counts
    //! the bytes it hashes and the syncs it makes, the index connection what
    //! of those happened while it held the lock; these tests fail when
    //! hashing or syncing moves under it.

    use super::fsck::{self, FsckOptions};
    use super::gc::{self, GcOptions};
    use crate::index::{Maintenance, NewMedia};
    use crate::store::{ArchiveCopy, BlobStore, Tier};

    const LEN: usize = 1 << 20;

    /// `n` blobs of 1 MiB in the primary root, each used by one media row.
    fn with_blobs(store: &BlobStore, index: &mut Maintenance, n: u64) -> Vec<blake3::Hash> {
        (0..n)
            .map(|i| {
                let mut content = vec![0x5a; LEN];
                content[..8].copy_from_slice(&i.to_le_bytes());
                let mut staged = store.stage().unwrap();
                staged.write_chunks(&[&content]).unwrap();
                staged.sync().unwrap();
                let hash = staged.hash();
                store
                    .make_durable(store.install(staged, &hash).unwrap())
                    .unwrap();
                index
                    .immediate(|tx| {
                        tx.add_blob_ref(&hash, LEN as u64, 0)?;
                        tx.insert_media(
                            &NewMedia {
                                uploader_id: 1,
                                file_type: "application/octet-stream".into(),
                                hash,
                                size: LEN as u64,
                                original_name: None,
                            },
                            0,
                        )
                    })
                    .unwrap();
                hash
            })
            .collect()
    }

    /// Nothing was hashed or synced while the run held the write lock.
    fn assert_no_io_under_lock(lock: &super::report::WriteLockUse, who: &str) {
        assert_eq!(
            lock.bytes_hashed_under_lock, 0,
            "{who} hashed under the write lock: {lock:?}"
        );
        assert_eq!(
            lock.syncs_under_lock, 0,
            "{who} synced under the write lock: {lock:?}"
        );
    }

    #[test]
    fn fsck_repair_hashes_nothing_under_the_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut index = Maintenance::create(dir.path()).unwrap();
        let hashes = with_blobs(&store, &mut index, 8);
        // Half of them damaged in place (same size): repair quarantines them.
        for hash in &hashes[..4] {
            let path = store.describe(Tier::Primary, hash);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[LEN - 1] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
        let (hashed, syncs) = (store.bytes_hashed(), store.syncs());
        let opts = FsckOptions {
            repair: true,
            progress: false,
            now_ms: 1,
        };
        let s = fsck::run(&mut index, &store, &opts).unwrap();
        assert_eq!((s.quarantined.len(), s.media_marked), (4, 4), "{s:?}");
        assert!(
            store.bytes_hashed() - hashed >= 8 * LEN as u64,
            "the scan hashed every blob"
        );
        assert!(
            store.syncs() > syncs,
            "the quarantine moves were made durable"
        );
        assert_eq!(
            s.write_lock.transactions, 2,
            "recount, then one batch: {s:?}"
        );
        assert_no_io_under_lock(&s.write_lock, "repair");
    }

    #[test]
    fn the_redundant_copy_sweep_verifies_archive_copies_before_taking_the_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (data, root) = (dir.path().join("data"), dir.path().join("archive"));
        std::fs::create_dir_all(&root).unwrap();
        let store = BlobStore::open(&data).unwrap();
        store.init_archive(&root, false).unwrap();
        let store = store.with_archive(Some(&root)).unwrap();
        let mut index = Maintenance::create(&data).unwrap();
        let hashes = with_blobs(&store, &mut index, 8);
        // A move interrupted after its step 2: a whole, durable archive copy
        // of each, the primary copy still there.
        let staged: Vec<_> = hashes
            .iter()
            .map(|h| match store.stage_archive_copy(h, LEN as u64).unwrap() {
                ArchiveCopy::Staged(copy) => copy,
                other => panic!("{other:?}"),
            })
            .collect();
        store
            .make_durable(store.install_archive_copies(staged).unwrap())
            .unwrap();
        let (hashed, syncs) = (store.bytes_hashed(), store.syncs());
        let opts = GcOptions {
            pace: false,
            ..GcOptions::from_config(&Default::default(), &Default::default(), 1)
        };
        let s = gc::run(&mut index, &store, &Default::default(), &opts, None).unwrap();
        assert_eq!(s.redundant_copies_deleted, 8, "{s:?}");
        assert!(hashes.iter().all(|h| !store.in_primary(h)));
        assert!(
            store.bytes_hashed() - hashed >= 8 * LEN as u64,
            "every archive copy was verified before its primary went"
        );
        assert!(s.write_lock.transactions >= 1, "{s:?}");
        assert!(
            store.syncs() > syncs,
            "the archive copies' folders were synced"
        );
        assert_no_io_under_lock(&s.write_lock, "the sweep");
    }
}
