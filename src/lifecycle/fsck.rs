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

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use rusqlite::{Connection, TransactionBehavior, params};
use serde::Serialize;

use super::report::{BlobEntry, progress, shard_count, walk_blobs};
use crate::store::{BlobStore, Tier};

#[derive(Debug, Clone, Default)]
pub struct FsckOptions {
    pub repair: bool,
    pub progress: bool,
    pub now_ms: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CountMismatch {
    pub hash: String,
    pub recorded: i64,
    pub actual: i64,
    pub zero_since: Option<i64>,
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

enum Verdict {
    Ok,
    Missing,
    Corrupt,
}

/// Files below this are read and hashed on one thread (files are already
/// spread over the cores); mapping them costs more than it saves.
const MMAP_FROM: u64 = 1 << 20;

fn verify(path: &Path, size: u64, hash: &blake3::Hash) -> Verdict {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Verdict::Missing,
        Err(_) => return Verdict::Corrupt,
    };
    if meta.len() != size {
        return Verdict::Corrupt;
    }
    let actual = if size < MMAP_FROM {
        std::fs::read(path).map(|bytes| blake3::hash(&bytes))
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

pub fn run(
    conn: &mut Connection,
    store: &BlobStore,
    opts: &FsckOptions,
) -> anyhow::Result<FsckSummary> {
    let started = Instant::now();
    let mut summary = FsckSummary {
        repaired: opts.repair,
        ..Default::default()
    };
    let total: u64 = conn.query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))?;
    let marked: std::collections::HashSet<[u8; 32]> = conn
        .prepare("SELECT DISTINCT hash FROM media WHERE corrupt_since IS NOT NULL")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;

    // 1. Every blob row against its file, in chunks, files hashed in parallel.
    let bar = progress(total, "blobs", opts.progress);
    let mut after: Vec<u8> = Vec::new();
    let mut to_quarantine = Vec::new();
    let mut to_mark = Vec::new();
    let mut healthy_marked = Vec::new();
    loop {
        let rows: Vec<([u8; 32], u64, i64)> = conn
            .prepare_cached(
                "SELECT hash, size, refcount FROM blobs WHERE hash > ?1 ORDER BY hash LIMIT ?2",
            )?
            .query_map(params![after, CHUNK as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let Some(last) = rows.last() else { break };
        after = last.0.to_vec();
        let verdicts: Vec<(Verdict, Option<Tier>)> = rows
            .par_iter()
            .map(|(h, size, _)| {
                let hash = blake3::Hash::from_bytes(*h);
                match store.locate(&hash) {
                    Some((path, tier)) => (verify(&path, *size, &hash), Some(tier)),
                    None => (Verdict::Missing, None),
                }
            })
            .collect();
        for ((h, size, refcount), (verdict, tier)) in rows.iter().zip(verdicts) {
            let hash = blake3::Hash::from_bytes(*h);
            let hex = hash.to_hex().to_string();
            summary.blobs_checked += 1;
            if tier == Some(Tier::Archive) {
                summary.blobs_archived += 1;
            }
            match verdict {
                Verdict::Ok => {
                    summary.bytes_checked += size;
                    if marked.contains(h) {
                        healthy_marked.push(hash);
                    }
                }
                Verdict::Missing if *refcount == 0 => summary.orphan_rows.push(hex),
                Verdict::Missing => {
                    // GC may have removed it since this chunk was read (its count
                    // fell to 0 meanwhile): only a still-referenced row counts.
                    if still_referenced(conn, &hash)? {
                        if all_marked(conn, &hash)? {
                            summary.known_lost.push(hex);
                        } else {
                            summary.missing.push(hex);
                            to_mark.push(hash);
                        }
                    }
                }
                Verdict::Corrupt => {
                    summary.corrupt.push(hex);
                    to_quarantine.push(hash);
                }
            }
        }
        bar.inc(rows.len() as u64);
    }
    bar.finish_and_clear();

    // 2. Counts against the media rows, in one statement (one snapshot).
    summary.count_mismatches = count_mismatches(conn)?;

    // 3. Files the index does not know, in each root.
    orphan_files(conn, store.blobs_dir(), opts, &mut summary)?;
    if let Some(archived) = store.archive_blobs_dir() {
        orphan_files(conn, archived, opts, &mut summary)?;
    }

    if opts.repair {
        repair(
            conn,
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

/// Lists the files under `blobs` (a root's blob folder) with no index row.
fn orphan_files(
    conn: &Connection,
    blobs_dir: &Path,
    opts: &FsckOptions,
    summary: &mut FsckSummary,
) -> anyhow::Result<()> {
    let bar = progress(shard_count(blobs_dir), "orphan files", opts.progress);
    // The walk yields files in hash order (the shard folders are hash
    // prefixes), so a merge with the rows in hash order finds the unknown ones
    // without one lookup per file.
    let mut stmt = conn.prepare("SELECT hash FROM blobs ORDER BY hash")?;
    let mut rows = stmt.query([])?;
    let mut current: Option<[u8; 32]> = None;
    let mut exhausted = false;
    walk_blobs(
        blobs_dir,
        || bar.inc(1),
        |entries| {
            for entry in entries {
                match entry {
                    BlobEntry::Foreign(p) => summary.foreign_files.push(p.display().to_string()),
                    BlobEntry::Blob(hash, path) => {
                        let h = *hash.as_bytes();
                        while !exhausted && current.is_none_or(|c| c < h) {
                            match rows.next()? {
                                Some(r) => current = Some(r.get(0)?),
                                None => exhausted = true,
                            }
                        }
                        if current != Some(h) {
                            summary.orphan_files.push(path.display().to_string());
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

fn still_referenced(conn: &Connection, hash: &blake3::Hash) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM blobs WHERE hash = ?1 AND refcount > 0)",
        [hash.as_bytes()],
        |r| r.get(0),
    )
}

fn all_marked(conn: &Connection, hash: &blake3::Hash) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM media WHERE hash = ?1 AND corrupt_since IS NULL)",
        [hash.as_bytes()],
        |r| r.get(0),
    )
}

const MISMATCH_SQL: &str = "
    SELECT hash, refcount, actual, zero_since FROM (
        SELECT b.hash, b.refcount, b.zero_since,
               (SELECT count(*) FROM media m WHERE m.hash = b.hash) AS actual
        FROM blobs b)
    WHERE refcount != actual
       OR (actual = 0 AND zero_since IS NULL)
       OR (actual > 0 AND zero_since IS NOT NULL)";

fn count_mismatches(conn: &Connection) -> rusqlite::Result<Vec<CountMismatch>> {
    conn.prepare(MISMATCH_SQL)?
        .query_map([], |r| {
            let h: [u8; 32] = r.get(0)?;
            Ok(CountMismatch {
                hash: blake3::Hash::from_bytes(h).to_hex().to_string(),
                recorded: r.get(1)?,
                actual: r.get(2)?,
                zero_since: r.get(3)?,
            })
        })?
        .collect()
}

fn repair(
    conn: &mut Connection,
    store: &BlobStore,
    now_ms: i64,
    to_quarantine: &[blake3::Hash],
    to_mark: &[blake3::Hash],
    healthy_marked: &[blake3::Hash],
    summary: &mut FsckSummary,
) -> anyhow::Result<()> {
    // Under the write lock, like GC: no upload decides "deduplicated" on a
    // file we are moving, and the recount sees every committed row.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    summary.counts_fixed = tx.execute(
        &("UPDATE blobs SET
             refcount = (SELECT count(*) FROM media m WHERE m.hash = blobs.hash),
             zero_since = CASE WHEN (SELECT count(*) FROM media m WHERE m.hash = blobs.hash) = 0
                               THEN coalesce(zero_since, ?1) ELSE NULL END
         WHERE hash IN (SELECT hash FROM ("
            .to_owned()
            + MISMATCH_SQL
            + "))"),
        [now_ms],
    )? as u64;
    for hash in to_quarantine {
        let Some((from, _)) = store.locate(hash) else {
            // Gone meanwhile: nothing to move; whatever media still use the
            // hash have lost their data and are marked.
            summary.media_marked += mark(&tx, hash, now_ms)?;
            continue;
        };
        // Next to the root it was found in: a rename never crosses disks.
        let quarantine = quarantine_dir(&from);
        // Re-verify under the lock: an upload may have replaced a missing file.
        let size: Option<u64> = tx
            .query_row(
                "SELECT size FROM blobs WHERE hash = ?1",
                [hash.as_bytes()],
                |r| r.get(0),
            )
            .ok();
        if size.is_some_and(|s| matches!(verify(&from, s, hash), Verdict::Ok)) {
            continue;
        }
        std::fs::create_dir_all(&quarantine)?;
        let to = quarantine.join(format!("{}.{now_ms}", hash.to_hex()));
        match std::fs::rename(&from, &to) {
            Ok(()) => summary.quarantined.push(to.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::anyhow!("cannot quarantine {}: {e}", from.display())),
        }
        crate::store::fsync_dir(&quarantine)?;
        summary.media_marked += mark(&tx, hash, now_ms)?;
    }
    for hash in to_mark {
        summary.media_marked += mark(&tx, hash, now_ms)?;
    }
    for hash in healthy_marked {
        summary.media_unmarked += tx.execute(
            "UPDATE media SET corrupt_since = NULL WHERE hash = ?1 AND corrupt_since IS NOT NULL",
            [hash.as_bytes()],
        )? as u64;
    }
    tx.commit()?;
    Ok(())
}

fn mark(tx: &Connection, hash: &blake3::Hash, now_ms: i64) -> rusqlite::Result<u64> {
    Ok(tx.execute(
        "UPDATE media SET corrupt_since = ?2 WHERE hash = ?1 AND corrupt_since IS NULL",
        params![hash.as_bytes(), now_ms],
    )? as u64)
}

/// `<root>/quarantine` for a blob file at `<root>/blobs/xx/yy/<hash>`.
pub fn quarantine_dir(blob_file: &Path) -> PathBuf {
    blob_file
        .ancestors()
        .nth(4)
        .expect("is a bug: blob paths are <root>/blobs/xx/yy/<hash>")
        .join("quarantine")
}
