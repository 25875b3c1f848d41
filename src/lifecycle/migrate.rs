//! `media-store migrate-store --to s3|local` (storage-layout.md, "S3"):
//! copies every blob the index knows to the other backend, verifying each
//! (BLAKE3 and size), and records the switch in the index only once every
//! referenced blob is there. Resumable: a blob already whole at the target
//! is skipped, so a killed run is simply run again. The daemon refuses to
//! start on a backend the index does not name, so a half-copied target is
//! never served from. The switch is recorded only by a run that holds the
//! data folder's lock (the daemon stopped), so no upload can land on the old
//! backend after the last copy.

use serde::Serialize;

use super::report::progress;
use crate::index::Maintenance;
use crate::store::{BlobStore, Copied};

#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrateSummary {
    pub from: String,
    pub to: String,
    pub blobs: u64,
    pub copied: u64,
    pub bytes_copied: u64,
    /// Whole at the target already (an earlier, interrupted run).
    pub already_there: u64,
    /// Referenced blobs that could not be copied (missing or damaged at the
    /// source): the switch is not recorded while any is left.
    pub failed: Vec<String>,
    /// True when the index now names the target backend.
    pub switched: bool,
    /// Why the switch was not recorded although nothing failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Rows per read: bounds memory at any index size.
const CHUNK: usize = 1024;

pub fn run(
    index: &mut Maintenance,
    from: &BlobStore,
    to: &BlobStore,
    show_progress: bool,
    may_switch: bool,
) -> anyhow::Result<MigrateSummary> {
    let mut summary = MigrateSummary {
        from: from.backend_name().into(),
        to: to.backend_name().into(),
        ..Default::default()
    };
    let total = index.reader().count_blobs()?;
    let bar = progress(total, "blobs", show_progress);
    let mut after: Option<blake3::Hash> = None;
    loop {
        let rows = index.reader().blobs_after(after.as_ref(), CHUNK)?;
        let Some(last) = rows.last() else { break };
        after = Some(last.0);
        for (hash, size, refcount) in rows {
            summary.blobs += 1;
            bar.inc(1);
            match to.copy_from(from, &hash, size)? {
                Copied::Copied => {
                    summary.copied += 1;
                    summary.bytes_copied += size;
                }
                Copied::AlreadyThere => summary.already_there += 1,
                // A zero-count blob GC may take at any time: not needed.
                Copied::SourceMissing | Copied::SourceCorrupt if refcount == 0 => {}
                outcome => summary
                    .failed
                    .push(format!("{} ({outcome:?})", hash.to_hex())),
            }
        }
    }
    bar.finish_and_clear();
    if summary.failed.is_empty() && may_switch {
        let name = to.backend_name();
        index.immediate(|tx| Ok::<_, anyhow::Error>(tx.set_blob_backend(name)?))?;
        summary.switched = true;
    }
    Ok(summary)
}
