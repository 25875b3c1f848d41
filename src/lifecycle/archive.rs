//! Archival (storage-layout.md, "Archive"): moves blobs whose newest upload is
//! older than `archive.after_days` from the primary `blobs/` to the archive
//! root's `blobs/` (a second, cheaper disk). Readers need not know: the daemon
//! opens a blob from either root, and the shipped nginx config falls back from
//! the primary location to the archive one.
//!
//! The move never leaves a referenced blob without a whole, durable copy (A2):
//! 1. copy primary -> archive `tmp/`, verifying the hash
//!    ([`BlobStore::stage_archive_copy`]);
//! 2. make the batch's copies durable, rename each to its content address,
//!    make the archive folders durable ([`BlobStore::install_archive_copies`]);
//! 3. under SQLite's write lock, check the archive copy is still there and
//!    whole, then unlink the primary copy.
//!
//! A crash after 2 leaves two copies: the next GC deletes the primary one
//! (`gc::collect_unknown_files`, A3). A GC that deleted the blob meanwhile
//! (count 0 past grace) removes both copies under the same lock; if it ran
//! before the rename, the archive copy has no row and is swept as unknown.

use rayon::prelude::*;

use super::gc::{GcOptions, GcSummary, in_write_tx, millis};
use super::report::progress;
use crate::index::Maintenance;
use crate::index::remote::Pin;
use crate::store::{ArchiveCopy, BlobStore, Copied, Pending, Tier, Unlinked, Verdict};

/// One archival pass (a GC phase). Does nothing when the store has no archive root.
pub fn run(
    index: &mut Maintenance,
    store: &BlobStore,
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    if !store.has_archive() {
        return Ok(());
    }
    // Both are Unix ms; a blob counts as new while any upload of it is.
    let cutoff = opts.now_ms.saturating_sub(millis(opts.archive_after));
    let total = index.reader().count_archivable(cutoff)?;
    let bar = progress(total, "archive", opts.progress);
    let mut cursor: Option<blake3::Hash> = None;
    loop {
        let rows = index
            .reader()
            .archivable_blobs(cutoff, cursor.as_ref(), opts.batch)?;
        let Some(last) = rows.last() else { break };
        cursor = Some(last.0);
        bar.inc(rows.len() as u64);
        let candidates: Vec<(blake3::Hash, u64)> = rows
            .into_iter()
            .filter(|(hash, _)| store.in_primary(hash))
            .collect();
        if candidates.is_empty() {
            continue;
        }
        if opts.dry_run {
            for (hash, size) in &candidates {
                summary
                    .would_archive
                    .push(store.describe(Tier::Primary, hash));
                summary.blobs_archived += 1;
                summary.bytes_archived += size;
            }
            continue;
        }
        if store.has_archive_bucket() {
            move_batch_to_bucket(index, store, &candidates, opts, summary)?;
        } else {
            move_batch(index, store, &candidates, opts, summary)?;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// Steps 1 to 3 for one batch: all copies first (outside the lock, one
/// durability barrier for all of them), then one write transaction unlinking
/// the primaries.
fn move_batch(
    index: &mut Maintenance,
    store: &BlobStore,
    candidates: &[(blake3::Hash, u64)],
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    let mut staged = Vec::with_capacity(candidates.len());
    let mut copied = Vec::with_capacity(candidates.len());
    let mut pending = Pending::default();
    // Copying and hashing is CPU work: spread it over the cores.
    let outcomes: Vec<_> = candidates
        .par_iter()
        .map(|(hash, size)| store.stage_archive_copy(hash, *size))
        .collect();
    for ((hash, size), outcome) in candidates.iter().zip(outcomes) {
        match outcome {
            Ok(ArchiveCopy::Staged(copy)) => {
                staged.push(copy);
                copied.push((*hash, *size));
            }
            Ok(ArchiveCopy::AlreadyThere) => {
                // Left by an interrupted move: its size is right, but only a
                // verified hash lets it replace the primary copy (A2).
                if store.verify_copy(Tier::Archive, hash, *size) != Verdict::Ok {
                    summary.errors.push(format!(
                        "the archived copy of blob {} is damaged; the primary copy stays (run `media-store fsck --repair`)",
                        hash.to_hex()
                    ));
                    continue;
                }
                // Its folder entry may predate a crash of the mover: sync it too.
                pending.merge(store.archive_entry(hash));
                copied.push((*hash, *size));
            }
            Ok(ArchiveCopy::SourceGone) => {}
            Ok(ArchiveCopy::SourceCorrupt) => summary.errors.push(format!(
                "blob {} does not match its hash; not archived (run `media-store fsck`)",
                hash.to_hex()
            )),
            Err(e) => summary
                .errors
                .push(format!("cannot archive blob {}: {e}", hash.to_hex())),
        }
    }
    if copied.is_empty() {
        return Ok(());
    }
    pending.merge(
        store
            .install_archive_copies(staged)
            .map_err(|e| anyhow::anyhow!("cannot install archive copies: {e}"))?,
    );
    store
        .make_durable(pending)
        .map_err(|e| anyhow::anyhow!("cannot make archive folders durable: {e}"))?;

    in_write_tx(index, opts, |_| {
        for (hash, size) in copied {
            // Under the lock no GC is removing the archive copy: if it is
            // whole now, it stays whole after the primary goes.
            if !store.archived_whole(&hash, size) {
                continue;
            }
            match store.delete_primary_copy(&hash) {
                Ok(Unlinked::Removed) => {
                    summary.blobs_archived += 1;
                    summary.bytes_archived += size;
                }
                Ok(Unlinked::Absent) => {}
                Err(e) => summary.errors.push(e.to_string()),
            }
        }
        Ok(())
    })
}

/// A batch's move to the archive bucket (storage-layout.md, "S3 archive
/// tier"): the hashes are pinned (GC claims no pinned row and sweeps no
/// pinned object), each primary copy is verified and put to the bucket
/// outside any transaction, then one write transaction records each put
/// object as archived, unlinks its primary copy and drops the pins. A crash
/// before that transaction leaves pins (expired by GC after
/// `gc.tmp_max_age`) and objects the index does not count as archived: the
/// next move puts them again, or GC sweeps them once their rows are gone.
fn move_batch_to_bucket(
    index: &mut Maintenance,
    store: &BlobStore,
    candidates: &[(blake3::Hash, u64)],
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    let pinned: Vec<(blake3::Hash, u64, i64)> = in_write_tx(index, opts, |tx| {
        let mut pinned = Vec::with_capacity(candidates.len());
        for (hash, size) in candidates {
            if let Pin::Pinned { id, .. } = tx.pin_blob(hash, opts.now_ms)? {
                pinned.push((*hash, *size, id));
            }
        }
        Ok(pinned)
    })?;
    // Hashing is CPU work and puts wait on the network: overlap them.
    let outcomes: Vec<_> = pinned
        .par_iter()
        .map(|(hash, size, _)| store.put_archive_object(hash, *size))
        .collect();
    in_write_tx(index, opts, |tx| {
        for ((hash, size, pin), outcome) in pinned.iter().zip(outcomes) {
            tx.unpin_blob(*pin)?;
            match outcome {
                Ok(Copied::Copied | Copied::AlreadyThere) => {}
                Ok(Copied::SourceMissing) => continue,
                Ok(Copied::SourceCorrupt) => {
                    summary.errors.push(format!(
                        "blob {} does not match its hash; not archived (run `media-store fsck`)",
                        hash.to_hex()
                    ));
                    continue;
                }
                Err(e) => {
                    summary
                        .errors
                        .push(format!("cannot archive blob {}: {e}", hash.to_hex()));
                    continue;
                }
            }
            // Claims skip pinned rows: the row is missing only if GC
            // forgot it before the pin was taken.
            if !tx.mark_archived(hash, opts.now_ms)? {
                continue;
            }
            match store.delete_primary_copy(hash) {
                Ok(Unlinked::Removed) | Ok(Unlinked::Absent) => {
                    summary.blobs_archived += 1;
                    summary.bytes_archived += size;
                }
                Err(e) => summary.errors.push(e.to_string()),
            }
        }
        Ok(())
    })
}
