//! Garbage collection of a network blob store (S3; storage-layout.md, "S3").
//!
//! An object cannot be deleted under SQLite's write lock as a file is
//! unlinked, and S3 has no guarded delete, so GC works in three steps, each
//! safe against uploads of the same content:
//! 1. **claim** rows (count 0 past the grace period, no upload's pin on the
//!    hash) in one `BEGIN IMMEDIATE` transaction: from then on no upload
//!    pins the hash or adds a reference to it (it waits);
//! 2. **delete** the claimed rows' objects, outside any transaction;
//! 3. **forget** the claimed rows in one transaction.
//!
//! A run stopped between 1 and 3 leaves claims, which the next run finishes
//! first. Objects with no row (an upload that died after its put, or that
//! lost its commit) are claimed the same way, by inserting a claimed row for
//! them, when no row and no pin exists and they are older than the grace
//! period.

use super::gc::{GcOptions, GcSummary, in_write_tx, millis};
use crate::index::Maintenance;
use crate::store::{BlobEntry, BlobStore, Tier};

/// Pins older than this belong to uploads that died (a put lasts seconds to
/// minutes): the staging files of such uploads are removed at the same age.
fn pin_cutoff(opts: &GcOptions) -> i64 {
    opts.now_ms.saturating_sub(millis(opts.tmp_max_age))
}

/// Zero-count blobs and unknown objects of a network store.
pub(super) fn collect(
    index: &mut Maintenance,
    store: &BlobStore,
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    let cutoff = opts.now_ms.saturating_sub(millis(opts.grace));
    (summary.blobs_in_grace, summary.bytes_in_grace) =
        index.reader().zero_count_blobs_in_grace(cutoff)?;
    if opts.dry_run {
        for blob in index.reader().zero_count_blobs(cutoff, None, usize::MAX)? {
            summary
                .would_delete
                .push(store.describe(Tier::Primary, &blob.hash));
            summary.blobs_deleted += 1;
            summary.bytes_freed += blob.size;
        }
        return Ok(());
    }
    let expired = in_write_tx(index, opts, |tx| Ok(tx.expire_pins(pin_cutoff(opts))?))?;
    if expired > 0 {
        tracing::warn!(
            pins = expired,
            "dropped pins of uploads that never finished"
        );
    }
    // Claims an earlier run left first, then new ones; each round is bounded
    // by the batch, and a round that deletes nothing ends the phase.
    loop {
        let mut claimed = index.reader().claimed_blobs(opts.batch)?;
        if claimed.is_empty() {
            let (fresh, drifted) = in_write_tx(index, opts, |tx| {
                Ok(tx.claim_zero_count_blobs(cutoff, opts.batch, opts.now_ms)?)
            })?;
            for hash in drifted {
                summary.errors.push(format!(
                    "blob {} has count 0 but media rows use it; kept (run `media-store fsck --repair`)",
                    hash.to_hex()
                ));
            }
            claimed = fresh.into_iter().map(|b| (b.hash, b.size)).collect();
        }
        if claimed.is_empty() {
            break;
        }
        let (deleted, stop) = delete_objects(store, &claimed, summary);
        forget(index, opts, &deleted)?;
        summary.blobs_deleted += deleted.len() as u64;
        if stop || deleted.is_empty() {
            break;
        }
    }
    collect_unknown_objects(index, store, cutoff, opts, summary)
}

/// Deletes the objects of claimed rows; stops at the first failure (the
/// store is down: the claims stay for the next run). Returns the hashes
/// whose objects are gone, and whether it stopped early.
fn delete_objects(
    store: &BlobStore,
    claimed: &[(blake3::Hash, u64)],
    summary: &mut GcSummary,
) -> (Vec<blake3::Hash>, bool) {
    let mut deleted = Vec::with_capacity(claimed.len());
    for (hash, size) in claimed {
        match store.delete(hash) {
            Ok(removed) => {
                summary.bytes_freed += removed * size;
                deleted.push(*hash);
            }
            Err(e) => {
                summary.errors.push(e.to_string());
                return (deleted, true);
            }
        }
    }
    (deleted, false)
}

fn forget(
    index: &mut Maintenance,
    opts: &GcOptions,
    hashes: &[blake3::Hash],
) -> anyhow::Result<()> {
    if hashes.is_empty() {
        return Ok(());
    }
    in_write_tx(index, opts, |tx| {
        for hash in hashes {
            // The source's renditions go with it (R2).
            tx.forget_claimed_blob(hash, opts.now_ms)?;
        }
        Ok(())
    })
}

/// Objects under the bucket's `blobs/` with no row and no pin, last written
/// before the grace period: claimed (a row inserted as claimed, under the
/// write lock, re-checking "no row, no pin"), deleted, forgotten.
fn collect_unknown_objects(
    index: &mut Maintenance,
    store: &BlobStore,
    cutoff: i64,
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    let mut candidates: Vec<(blake3::Hash, u64)> = Vec::new();
    store.list_remote(|page| -> anyhow::Result<()> {
        for (entry, size, modified) in page {
            match entry {
                BlobEntry::Foreign(key) => summary.foreign_files.push(key),
                BlobEntry::Blob(hash) if modified <= cutoff => {
                    if !index.reader().blob_known_or_pinned(&hash)? {
                        candidates.push((hash, size));
                    }
                }
                BlobEntry::Blob(_) => {}
            }
        }
        Ok(())
    })?;
    for batch in candidates.chunks(opts.batch) {
        let claimed = in_write_tx(index, opts, |tx| {
            let mut claimed = Vec::new();
            for (hash, size) in batch {
                if tx.claim_unknown_blob(hash, *size, opts.now_ms)? {
                    claimed.push((*hash, *size));
                }
            }
            Ok(claimed)
        })?;
        let (deleted, stop) = delete_objects(store, &claimed, summary);
        forget(index, opts, &deleted)?;
        summary.unknown_files_deleted += deleted.len() as u64;
        if stop {
            break;
        }
    }
    Ok(())
}

/// Incomplete multipart uploads under the store's prefix begun before
/// `now - gc.tmp_max_age` are aborted (storage-layout.md, S8): a daemon
/// killed mid-upload left them, holding their parts' space. The age is the
/// one after which an upload's pin and staging file count as dead, since no
/// upload lasts that long; a younger one may be an upload in flight (this
/// daemon's, or another's) and is left alone. Failures are reported, and
/// the next run tries again.
pub(super) fn abort_stale_uploads(store: &BlobStore, opts: &GcOptions, summary: &mut GcSummary) {
    let cutoff = pin_cutoff(opts);
    let uploads = match store.incomplete_uploads() {
        Ok(uploads) => uploads,
        Err(e) => {
            summary.errors.push(e.to_string());
            return;
        }
    };
    for upload in uploads.iter().filter(|u| u.initiated_ms <= cutoff) {
        if opts.dry_run {
            summary.would_delete.push(format!(
                "s3 multipart upload {} of {}",
                upload.upload_id, upload.key
            ));
            summary.multipart_uploads_aborted += 1;
            continue;
        }
        match store.abort_upload(upload) {
            Ok(()) => {
                tracing::info!(
                    key = upload.key,
                    upload_id = upload.upload_id,
                    initiated_ms = upload.initiated_ms,
                    "aborted an incomplete multipart upload"
                );
                summary.multipart_uploads_aborted += 1;
            }
            Err(e) => {
                summary.errors.push(e.to_string());
                // The bucket is failing: the rest waits for the next run.
                return;
            }
        }
    }
}
