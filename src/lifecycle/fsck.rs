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

use super::report::{WriteLockUse, progress};
use crate::index::Maintenance;
use crate::store::{BlobEntry, BlobStore, Pending, Tier, Verdict};

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
    /// Damaged copies of blobs that have another, whole copy (in the other
    /// root): the media are fine; repair moves the damaged copy aside.
    pub corrupt_copies: Vec<String>,
    /// Counts (or tombstones) that disagree with the media rows.
    pub count_mismatches: Vec<CountMismatch>,
    /// Files under `blobs/` that the index does not know (GC removes them).
    pub orphan_files: Vec<String>,
    /// Count-0 rows whose file is gone (GC removes them).
    pub orphan_rows: Vec<String>,
    /// Paths under `blobs/` that are not blob files.
    pub foreign_files: Vec<String>,
    /// S3: multipart uploads under the store's prefix never completed nor
    /// aborted (`<upload id> <key> begun <time>`); GC aborts those older
    /// than `gc.tmp_max_age`. Not problems, like orphans.
    pub incomplete_uploads: Vec<String>,
    pub repaired: bool,
    pub counts_fixed: u64,
    pub quarantined: Vec<String>,
    pub media_marked: u64,
    pub media_unmarked: u64,
    pub duration_ms: u64,
    /// How long repair held the index's write lock (uploads wait meanwhile).
    pub write_lock: WriteLockUse,
}

impl FsckSummary {
    /// Problems: data missing or corrupt, or counts wrong. Orphans are not.
    pub fn problems(&self) -> u64 {
        (self.missing.len()
            + self.corrupt.len()
            + self.corrupt_copies.len()
            + self.count_mismatches.len()) as u64
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
        for p in &self.corrupt_copies {
            s.push_str(&format!("corrupt copy {p} (another copy is whole)\n"));
        }
        for m in &self.count_mismatches {
            s.push_str(&format!(
                "count of {} is {} but {} media and rendition rows use it\n",
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
        for u in &self.incomplete_uploads {
            s.push_str(&format!("incomplete multipart upload {u}\n"));
        }
        if self.repaired {
            s.push_str(&format!(
                "repaired: {} counts fixed, {} blobs quarantined, {} media marked corrupt, {} unmarked\n",
                self.counts_fixed,
                self.quarantined.len(),
                self.media_marked,
                self.media_unmarked
            ));
            s.push_str(&self.write_lock.to_text());
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
    let scan = scan(index, store, opts)?;
    finish(index, store, opts, scan)
}

/// What [`scan`] found, before any repair: the summary so far, and each
/// verdict with the file it was reached on (inode and change time).
pub struct Scan {
    summary: FsckSummary,
    suspects: Suspects,
    started: Instant,
}

impl Scan {
    /// The findings so far (nothing repaired yet).
    pub fn summary(&self) -> &FsckSummary {
        &self.summary
    }
}

/// Step 1 of [`run`]: checks every blob, every count and every file, reading
/// only (no write lock is taken). [`finish`] then repairs, if asked. The two
/// are apart so that tests can change the store in between, as a concurrent
/// upload or archive move would.
pub fn scan(
    index: &mut Maintenance,
    store: &BlobStore,
    opts: &FsckOptions,
) -> anyhow::Result<Scan> {
    // A bucket that does not answer would make every blob in it look
    // missing (and --repair mark its media lost): no verdict without it.
    if store.remote_reachable() == Some(false) {
        anyhow::bail!(
            "the bucket ({}) does not answer: fsck cannot check the blobs there; run it again \
             once the cluster is reachable",
            store.describe_backend()
        );
    }
    let started = Instant::now();
    WriteLockUse::start(index, store);
    let mut summary = FsckSummary {
        repaired: opts.repair,
        ..Default::default()
    };
    let reader = index.reader();
    let total = reader.count_blobs()?;
    let marked = reader.corrupt_marked_hashes()?;

    // 1. Every blob row against its files (both copies where there are two),
    // in chunks, files hashed in parallel.
    let bar = progress(total, "blobs", opts.progress);
    let mut after: Option<blake3::Hash> = None;
    let mut suspects = Suspects::default();
    loop {
        let rows = reader.blobs_after(after.as_ref(), CHUNK)?;
        let Some(last) = rows.last() else { break };
        after = Some(last.0);
        let copies: Vec<Vec<(Tier, Verdict, u64)>> = rows
            .par_iter()
            .map(|(hash, size, _)| store.verify_copies(hash, *size))
            .collect();
        for ((hash, size, refcount), copies) in rows.iter().zip(copies) {
            let hex = hash.to_hex().to_string();
            summary.blobs_checked += 1;
            let whole: Vec<(Tier, u64)> = copies
                .iter()
                .filter(|c| c.1 == Verdict::Ok)
                .map(|c| (c.0, c.2))
                .collect();
            let damaged: Vec<(Tier, u64)> = copies
                .iter()
                .filter(|c| c.1 != Verdict::Ok)
                .map(|c| (c.0, c.2))
                .collect();
            if copies.is_empty() {
                if *refcount == 0 {
                    summary.orphan_rows.push(hex);
                } else if reader.still_referenced(hash)? {
                    // GC may have removed it since this chunk was read (its
                    // count fell to 0 meanwhile): only a referenced row counts.
                    if reader.all_marked_corrupt(hash)? {
                        summary.known_lost.push(hex);
                    } else {
                        summary.missing.push(hex);
                        suspects.missing.push(*hash);
                    }
                }
                continue;
            }
            if whole.is_empty() {
                summary.corrupt.push(hex);
                suspects.corrupt.push((*hash, damaged));
                continue;
            }
            summary.bytes_checked += size;
            if whole.len() == 1 && whole[0].0 == Tier::Archive && damaged.is_empty() {
                summary.blobs_archived += 1;
            }
            for (tier, id) in damaged {
                summary.corrupt_copies.push(store.describe(tier, hash));
                suspects.corrupt_copies.push((*hash, tier, id));
            }
            if marked.contains(hash) {
                suspects.healthy_marked.push((*hash, whole));
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
    if store.uses_bucket() {
        for u in store.incomplete_uploads()? {
            let begun = crate::timefmt::rfc3339_ms(u.initiated_ms);
            summary
                .incomplete_uploads
                .push(format!("{} {} begun {begun}", u.upload_id, u.key));
        }
    }
    Ok(Scan {
        summary,
        suspects,
        started,
    })
}

/// Step 2 of [`run`]: with `opts.repair`, applies the scan's verdicts under
/// the write lock (see [`repair`]); returns the finished summary.
pub fn finish(
    index: &mut Maintenance,
    store: &BlobStore,
    opts: &FsckOptions,
    scan: Scan,
) -> anyhow::Result<FsckSummary> {
    let Scan {
        mut summary,
        suspects,
        started,
    } = scan;
    if opts.repair {
        repair(index, store, opts.now_ms, &suspects, &mut summary)?;
    }
    summary.duration_ms = started.elapsed().as_millis() as u64;
    summary.write_lock = WriteLockUse::take(index);
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

/// What the scan found wrong, with the id of each file judged (inode and
/// change time, `BlobStore::copy_fingerprint`): repair acts on a file only if
/// it is still the one judged.
#[derive(Default)]
struct Suspects {
    /// Referenced blobs with no file in any root.
    missing: Vec<blake3::Hash>,
    /// Blobs all of whose copies are damaged.
    corrupt: Vec<(blake3::Hash, Vec<(Tier, u64)>)>,
    /// Damaged copies of blobs that have another, whole copy.
    corrupt_copies: Vec<(blake3::Hash, Tier, u64)>,
    /// Blobs found whole whose media are marked corrupt, with the ids of
    /// their whole copies.
    healthy_marked: Vec<(blake3::Hash, Vec<(Tier, u64)>)>,
}

/// Suspects handled per write transaction (a few file renames and row
/// updates each, never a hash or a sync).
const REPAIR_BATCH: usize = 256;

/// One verdict of the scan, to apply.
enum Fix<'a> {
    Corrupt(&'a blake3::Hash, &'a [(Tier, u64)]),
    CorruptCopy(&'a blake3::Hash, Tier, u64),
    Missing(&'a blake3::Hash),
    HealthyMarked(&'a blake3::Hash, &'a [(Tier, u64)]),
}

/// Applies the scan's verdicts under the write lock, like GC: no upload
/// decides "deduplicated" on a file being moved, and the recount sees every
/// committed row. Nothing is re-hashed under the lock: each verdict was
/// reached outside it, and is applied only if the same file is still there
/// (an upload may have replaced a damaged copy, an archive move may have
/// raced the scan, GC may have deleted it and an upload put a new file, even
/// one with the same inode number, under its name). A blob found missing is
/// marked only if it is still missing and still referenced.
///
/// Nothing is synced under the lock either: the verdicts go in transactions
/// of [`REPAIR_BATCH`], and each batch's quarantine moves are made durable
/// after its commit. A power cut in between may undo a move whose media are
/// marked already: the damaged file is then back under `blobs/`, where the
/// next fsck finds it again (and downloads of the marked media answer 410
/// meanwhile).
fn repair(
    index: &mut Maintenance,
    store: &BlobStore,
    now_ms: i64,
    suspects: &Suspects,
    summary: &mut FsckSummary,
) -> anyhow::Result<()> {
    let same_file =
        |tier: Tier, hash: &blake3::Hash, id: u64| store.copy_fingerprint(tier, hash) == Some(id);
    summary.counts_fixed = index.immediate(|tx| tx.recount_mismatches(now_ms))?;
    let fixes: Vec<Fix<'_>> = (suspects.corrupt.iter())
        .map(|(h, damaged)| Fix::Corrupt(h, damaged))
        .chain((suspects.corrupt_copies.iter()).map(|(h, t, id)| Fix::CorruptCopy(h, *t, *id)))
        .chain(suspects.missing.iter().map(Fix::Missing))
        .chain((suspects.healthy_marked.iter()).map(|(h, whole)| Fix::HealthyMarked(h, whole)))
        .collect();
    for batch in fixes.chunks(REPAIR_BATCH) {
        let mut moves = Pending::default();
        let started = std::time::Instant::now();
        index.immediate(|tx| -> anyhow::Result<()> {
            let mut quarantine = |tier: Tier, hash: &blake3::Hash| -> anyhow::Result<()> {
                if let Some((moved, pending)) =
                    store.quarantine_copy_unsynced(tier, hash, now_ms)?
                {
                    summary.quarantined.push(moved);
                    moves.merge(pending);
                }
                Ok(())
            };
            for fix in batch {
                match *fix {
                    Fix::Corrupt(hash, damaged) => {
                        if !damaged.iter().all(|(tier, id)| same_file(*tier, hash, *id)) {
                            continue;
                        }
                        for (tier, _) in damaged {
                            quarantine(*tier, hash)?;
                        }
                        summary.media_marked += tx.mark_corrupt(hash, now_ms)?;
                    }
                    Fix::CorruptCopy(hash, tier, id) => {
                        if same_file(tier, hash, id) {
                            quarantine(tier, hash)?;
                        }
                    }
                    Fix::Missing(hash) => {
                        if !store.contains(hash) && tx.still_referenced(hash)? {
                            summary.media_marked += tx.mark_corrupt(hash, now_ms)?;
                        }
                    }
                    Fix::HealthyMarked(hash, whole) => {
                        // Only while a copy found whole is still there: a
                        // download may have found it damaged and quarantined
                        // it since.
                        if whole.iter().any(|(tier, id)| same_file(*tier, hash, *id)) {
                            summary.media_unmarked += tx.unmark_corrupt(hash)?;
                        }
                    }
                }
            }
            Ok(())
        })?;
        // After the commit, outside the lock.
        store
            .make_durable(moves)
            .map_err(|e| anyhow::anyhow!("cannot make quarantine moves durable: {e}"))?;
        // Leave the lock free for a while before the next batch, as GC does
        // (`gc::pace`): the daemon's writer polls for it.
        if fixes.len() > REPAIR_BATCH {
            std::thread::sleep(started.elapsed().clamp(
                std::time::Duration::from_millis(10),
                std::time::Duration::from_millis(250),
            ));
        }
    }
    Ok(())
}
