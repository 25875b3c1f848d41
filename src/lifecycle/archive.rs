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
use rusqlite::{Connection, params};

use super::gc::{GcOptions, GcSummary, Unlinked, in_write_tx, millis, unlink};
use super::report::progress;
use crate::store::{ArchiveCopy, BlobStore};

/// One archival pass (a GC phase). Does nothing when the store has no archive root.
pub fn run(
    conn: &mut Connection,
    store: &BlobStore,
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    if store.archive_blobs_dir().is_none() {
        return Ok(());
    }
    // Both are Unix ms; a blob counts as new while any upload of it is.
    let cutoff = opts.now_ms.saturating_sub(millis(opts.archive_after));
    let total: u64 = conn.query_row(
        "SELECT count(*) FROM blobs WHERE refcount > 0 AND created_at <= ?1",
        [cutoff],
        |r| r.get(0),
    )?;
    let bar = progress(total, "archive", opts.progress);
    let mut cursor: Vec<u8> = Vec::new();
    loop {
        let rows: Vec<([u8; 32], u64)> = conn
            .prepare_cached(
                "SELECT b.hash, b.size FROM blobs b
                 WHERE b.hash > ?1 AND b.refcount > 0 AND b.created_at <= ?2
                   AND NOT EXISTS (SELECT 1 FROM media m
                                   WHERE m.hash = b.hash AND m.uploaded_at > ?2)
                 ORDER BY b.hash LIMIT ?3",
            )?
            .query_map(params![cursor, cutoff, opts.batch as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let Some(last) = rows.last() else { break };
        cursor = last.0.to_vec();
        bar.inc(rows.len() as u64);
        let candidates: Vec<(blake3::Hash, u64)> = rows
            .into_iter()
            .map(|(h, size)| (blake3::Hash::from_bytes(h), size))
            .filter(|(hash, _)| store.blob_path(hash).is_file())
            .collect();
        if candidates.is_empty() {
            continue;
        }
        if opts.dry_run {
            for (hash, size) in &candidates {
                summary
                    .would_archive
                    .push(store.blob_path(hash).display().to_string());
                summary.blobs_archived += 1;
                summary.bytes_archived += size;
            }
            continue;
        }
        move_batch(conn, store, &candidates, opts, summary)?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Steps 1 to 3 for one batch: all copies first (outside the lock, one
/// durability barrier for all of them), then one write transaction unlinking
/// the primaries.
fn move_batch(
    conn: &mut Connection,
    store: &BlobStore,
    candidates: &[(blake3::Hash, u64)],
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    let mut staged = Vec::with_capacity(candidates.len());
    let mut copied = Vec::with_capacity(candidates.len());
    let mut dirs = Vec::new();
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
                // Its folder entry may predate a crash of the mover: sync it too.
                if let Some(path) = store.archive_path(hash) {
                    dirs.push(path.parent().expect("blob paths have a shard").to_owned());
                }
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
    dirs.extend(
        store
            .install_archive_copies(staged)
            .map_err(|e| anyhow::anyhow!("cannot install archive copies: {e}"))?,
    );
    crate::store::make_dirs_durable(&dirs)
        .map_err(|e| anyhow::anyhow!("cannot make archive folders durable: {e}"))?;

    in_write_tx(conn, opts, |_| {
        for (hash, size) in copied {
            // Under the lock no GC is removing the archive copy: if it is
            // whole now, it stays whole after the primary goes.
            if !store.archived_whole(&hash, size) {
                continue;
            }
            if unlink(&store.blob_path(&hash), summary) == Unlinked::Removed {
                summary.blobs_archived += 1;
                summary.bytes_archived += size;
            }
        }
        Ok(())
    })
}
