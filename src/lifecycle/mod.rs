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

/// `[archive]`: moving old blobs to a second data root (a cheaper disk),
/// still served transparently.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Folder on the archive disk (gets `blobs/` and `tmp/`); empty: archival off.
    pub root: std::path::PathBuf,
    /// A blob moves once its newest upload is this many days old (0: at the
    /// next GC run). Moves happen in `media-store gc` and the daemon's GC task.
    pub after_days: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
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

    pub(crate) fn validate(&self, data_dir: &std::path::Path) -> Result<(), String> {
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
