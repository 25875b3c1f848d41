//! fsck / scrub (storage-layout.md, "fsck"): checks every blob against the
//! index and the index against itself; with `repair`, fixes what can be fixed
//! without losing anything.
//!
//! Checks: each `blobs` row with a count above 0 has its file, with the right
//! size and BLAKE3 hash (mmap + multi-threaded hashing, files in parallel);
//! each count equals its number of media rows and `zero_since` is set exactly
//! at 0 (I3, I4); files under `blobs/` without a row and count-0 rows without
//! a file are listed as orphans (GC removes both; they are not errors).
//!
//! Repair never deletes data: counts are recomputed from the media rows, a
//! corrupt blob is moved to `quarantine/<hash>.<unix ms>` and the media rows
//! using it (and those of a missing blob) get `corrupt_since`. A later upload
//! of the same content re-installs the blob (the upload finds no file), and a
//! later fsck that finds it whole clears the mark.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::report::progress;
use crate::index::Maintenance;
use crate::store::{BlobEntry, BlobStore, Tier, Verdict};

pub use crate::index::CountMismatch;

#[derive(Debug, Clone, Default)]
pub struct FsckOptions {
    pub repair: bool,
    pub progress: bool,
    pub now_ms: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckSummary {
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    /// Of the blobs checked, those found in the archive root.
    pub blobs_archived: u64,
    /// Referenced blobs whose file is missing (media rows not yet marked).
    pub missing: Vec<String>,
    /// Referenced blobs whose file is missing and whose media are all marked
    /// `corrupt_since` already: known losses, not new problems.
    pub known_lost: Vec<String>,
    /// Blobs whose file has the wrong size or hash.
    pub corrupt: Vec<String>,
    /// Counts (or tombstones) that disagree with the media rows.
    pub count_mismatches: Vec<CountMismatch>,
    /// Files under `blobs/` that the index does not know (GC removes them).
    pub orphan_files: Vec<String>,
    /// Count-0 rows whose file is gone (GC removes them).
    pub orphan_rows: Vec<String>,
    /// Paths under `blobs/` that are not blob files.
    pub foreign_files: Vec<String>,
    pub repaired: bool,
    pub counts_fixed: u64,
    pub quarantined: Vec<String>,
    pub media_marked: u64,
    pub media_unmarked: u64,
    pub duration_ms: u64,
}

impl FsckSummary {
    /// Problems: data missing or corrupt, or counts wrong. Orphans are not.
    pub fn problems(&self) -> u64 {
        (self.missing.len() + self.corrupt.len() + self.count_mismatches.len()) as u64
    }

    pub fn to_text(&self) -> String {
        let mut s = format!(
            "fsck: {} blobs ({} bytes, {} archived) checked in {} ms: {} missing, {} corrupt, \
             {} count mismatches, {} known lost; orphans: {} files, {} rows\n",
            self.blobs_checked,
            self.bytes_checked,
            self.blobs_archived,
            self.duration_ms,
            self.missing.len(),
            self.corrupt.len(),
            self.count_mismatches.len(),
            self.known_lost.len(),
            self.orphan_files.len(),
            self.orphan_rows.len(),
        );
        for h in &self.missing {
            s.push_str(&format!("missing blob {h}\n"));
        }
        for h in &self.corrupt {
            s.push_str(&format!("corrupt blob {h}\n"));
        }
        for m in &self.count_mismatches {
            s.push_str(&format!(
                "count of {} is {} but {} media rows use it\n",
                m.hash, m.recorded, m.actual
            ));
        }
        for p in &self.orphan_files {
            s.push_str(&format!("orphan file {p}\n"));
        }
        for h in &self.orphan_rows {
            s.push_str(&format!("orphan row {h}\n"));
        }
        for p in &self.foreign_files {
            s.push_str(&format!("not a blob: {p}\n"));
        }
        if self.repaired {
            s.push_str(&format!(
                "repaired: {} counts fixed, {} blobs quarantined, {} media marked corrupt, {} unmarked\n",
                self.counts_fixed,
                self.quarantined.len(),
                self.media_marked,
                self.media_unmarked
            ));
        }
        s
    }
}

/// Rows read per chunk: bounds memory at any index size.
const CHUNK: usize = 4096;

pub fn run(
    index: &mut Maintenance,
    store: &BlobStore,
    opts: &FsckOptions,
) -> anyhow::Result<FsckSummary> {
    let started = Instant::now();
    let mut summary = FsckSummary {
        repaired: opts.repair,
        ..Default::default()
    };
    let reader = index.reader();
    let total = reader.count_blobs()?;
    let marked = reader.corrupt_marked_hashes()?;

    // 1. Every blob row against its file, in chunks, files hashed in parallel.
    let bar = progress(total, "blobs", opts.progress);
    let mut after: Option<blake3::Hash> = None;
    let mut to_quarantine = Vec::new();
    let mut to_mark = Vec::new();
    let mut healthy_marked = Vec::new();
    loop {
        let rows = reader.blobs_after(after.as_ref(), CHUNK)?;
        let Some(last) = rows.last() else { break };
        after = Some(last.0);
        let verdicts: Vec<(Verdict, Option<Tier>)> = rows
            .par_iter()
            .map(|(hash, size, _)| store.verify(hash, *size))
            .collect();
        for ((hash, size, refcount), (verdict, tier)) in rows.iter().zip(verdicts) {
            let hex = hash.to_hex().to_string();
            summary.blobs_checked += 1;
            if tier == Some(Tier::Archive) {
                summary.blobs_archived += 1;
            }
            match verdict {
                Verdict::Ok => {
                    summary.bytes_checked += size;
                    if marked.contains(hash) {
                        healthy_marked.push(*hash);
                    }
                }
                Verdict::Missing if *refcount == 0 => summary.orphan_rows.push(hex),
                Verdict::Missing => {
                    // GC may have removed it since this chunk was read (its count
                    // fell to 0 meanwhile): only a still-referenced row counts.
                    if reader.still_referenced(hash)? {
                        if reader.all_marked_corrupt(hash)? {
                            summary.known_lost.push(hex);
                        } else {
                            summary.missing.push(hex);
                            to_mark.push(*hash);
                        }
                    }
                }
                Verdict::Corrupt => {
                    summary.corrupt.push(hex);
                    to_quarantine.push(*hash);
                }
            }
        }
        bar.inc(rows.len() as u64);
    }
    bar.finish_and_clear();

    // 2. Counts against the media rows, in one statement (one snapshot).
    summary.count_mismatches = reader.count_mismatches()?;

    // 3. Files the index does not know, in each root.
    orphan_files(index, store, Tier::Primary, opts, &mut summary)?;
    if store.has_archive() {
        orphan_files(index, store, Tier::Archive, opts, &mut summary)?;
    }

    if opts.repair {
        repair(
            index,
            store,
            opts.now_ms,
            &to_quarantine,
            &to_mark,
            &healthy_marked,
            &mut summary,
        )?;
    }
    summary.duration_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// Lists the files in a root's `blobs/` with no index row.
fn orphan_files(
    index: &Maintenance,
    store: &BlobStore,
    tier: Tier,
    opts: &FsckOptions,
    summary: &mut FsckSummary,
) -> anyhow::Result<()> {
    let bar = progress(store.shard_count(tier), "orphan files", opts.progress);
    let reader = index.reader();
    // The walk yields files in hash order (the shard folders are hash
    // prefixes), so a merge with the rows in hash order finds the unknown ones
    // without one lookup per file; rows are read in chunks.
    let mut rows: std::collections::VecDeque<blake3::Hash> = Default::default();
    let mut after: Option<blake3::Hash> = None;
    let mut exhausted = false;
    store.walk(
        tier,
        || bar.inc(1),
        |entries| -> anyhow::Result<()> {
            for (entry, _) in entries {
                match entry {
                    BlobEntry::Foreign(p) => summary.foreign_files.push(p),
                    BlobEntry::Blob(hash) => {
                        let h = *hash.as_bytes();
                        loop {
                            while rows.front().is_some_and(|r| *r.as_bytes() < h) {
                                rows.pop_front();
                            }
                            if !rows.is_empty() || exhausted {
                                break;
                            }
                            let chunk = reader.blobs_after(after.as_ref(), CHUNK)?;
                            match chunk.last() {
                                Some(last) => after = Some(last.0),
                                None => exhausted = true,
                            }
                            rows.extend(chunk.into_iter().map(|(h, _, _)| h));
                        }
                        if rows.front() != Some(&hash) {
                            summary.orphan_files.push(store.describe(tier, &hash));
                        }
                    }
                }
            }
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    Ok(())
}

fn repair(
    index: &mut Maintenance,
    store: &BlobStore,
    now_ms: i64,
    to_quarantine: &[blake3::Hash],
    to_mark: &[blake3::Hash],
    healthy_marked: &[blake3::Hash],
    summary: &mut FsckSummary,
) -> anyhow::Result<()> {
    // Under the write lock, like GC: no upload decides "deduplicated" on a
    // file we are moving, and the recount sees every committed row.
    index.immediate(|tx| -> anyhow::Result<()> {
        summary.counts_fixed = tx.recount_mismatches(now_ms)?;
        for hash in to_quarantine {
            // Re-verify under the lock: an upload may have replaced a missing file.
            if let Some(size) = tx.blob_size(hash)?
                && store.verify(hash, size).0 == Verdict::Ok
            {
                continue;
            }
            // Gone meanwhile: nothing to move; whatever media still use the
            // hash have lost their data and are marked.
            if let Some(moved) = store.quarantine(hash, now_ms)? {
                summary.quarantined.push(moved);
            }
            summary.media_marked += tx.mark_corrupt(hash, now_ms)?;
        }
        for hash in to_mark {
            summary.media_marked += tx.mark_corrupt(hash, now_ms)?;
        }
        for hash in healthy_marked {
            summary.media_unmarked += tx.unmark_corrupt(hash)?;
        }
        Ok(())
    })
}
