//! Per-uploader quotas, checked in the upload commit job under the index
//! writer: the totals read there cannot change before the upload's own row
//! commits, so concurrent uploads of one uploader cannot overshoot together.

use super::MediaError;
use crate::index::Reader;

/// Limits per uploader; 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quota {
    pub bytes: u64,
    pub files: u64,
}

impl Quota {
    pub fn is_unlimited(&self) -> bool {
        self.bytes == 0 && self.files == 0
    }
}

/// Refuses (507 `quota_exceeded`) an upload of `size` bytes that would take the
/// uploader past its quota. Must run inside the commit transaction.
pub fn check(
    index: &Reader<'_>,
    quota: &Quota,
    uploader_id: i64,
    size: u64,
) -> Result<(), MediaError> {
    if quota.is_unlimited() {
        return Ok(());
    }
    let (files, bytes) = index.counted_usage(uploader_id)?;
    let refuse = MediaError::QuotaExceeded;
    if quota.files > 0 && files + 1 > quota.files {
        return Err(refuse(format!(
            "uploader {uploader_id} already has {files} files; the quota is {}",
            quota.files
        )));
    }
    if quota.bytes > 0 && bytes.saturating_add(size) > quota.bytes {
        return Err(refuse(format!(
            "uploader {uploader_id} stores {bytes} bytes; {size} more would pass the quota of {} bytes",
            quota.bytes
        )));
    }
    Ok(())
}
