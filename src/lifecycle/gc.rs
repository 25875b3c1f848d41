//! Garbage collection (storage-layout.md, "Garbage collection").
//!
//! Deletes, in this order: expired media (retention), blobs whose count has
//! been 0 for longer than the grace period, files under `blobs/` the index
//! does not know (untouched for longer than the grace period), and stale
//! staging files.
//!
//! Safe beside a running daemon that uploads the very same content: every
//! deletion of a blob file happens inside a `BEGIN IMMEDIATE` transaction —
//! SQLite's write lock, which the daemon's upload commit also holds while it
//! decides "deduplicated = row exists AND file exists" and while it renames a
//! new blob into place. Under that lock GC re-checks that the row still has
//! count 0 past the grace period and that no media row uses the hash, unlinks
//! the file, deletes the row, and commits. Whichever transaction comes second
//! sees the other's result whole.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::report::{WriteLockUse, progress};
use super::retention::{self, RetentionSummary};
use super::{ArchiveConfig, ExternalReferences, GcConfig, RetentionConfig};
use crate::index::{Maintenance, Tx, ZeroCountBlob};
use crate::store::{BlobEntry, BlobStore, Tier, Unlinked, Verdict};

/// What one GC run is told.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// A blob whose count has been 0 for less than this stays; an unknown file
    /// modified less than this long ago stays.
    pub grace: Duration,
    /// Staging files untouched for this long are removed.
    pub tmp_max_age: Duration,
    /// Deletions per transaction.
    pub batch: usize,
    /// List what would go; delete nothing.
    pub dry_run: bool,
    /// "Now", in Unix ms (injected so tests and the stress test control time).
    pub now_ms: i64,
    /// Show progress bars (only ever on a terminal).
    pub progress: bool,
    /// Apply the retention rules first.
    pub retention: bool,
    /// Pause after each write transaction (see [`pace`]); off only in tests
    /// that want rounds as fast as possible.
    pub pace: bool,
    /// Blobs whose newest upload is older than this move to the archive root
    /// (when the store has one; see [`super::archive`]).
    pub archive_after: Duration,
}

impl GcOptions {
    pub fn from_config(gc: &GcConfig, archive: &ArchiveConfig, now_ms: i64) -> GcOptions {
        GcOptions {
            grace: gc.grace,
            tmp_max_age: gc.tmp_max_age,
            batch: gc.batch.max(1),
            dry_run: false,
            now_ms,
            progress: false,
            retention: true,
            pace: true,
            archive_after: Duration::from_secs(archive.after_days.saturating_mul(86_400)),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcSummary {
    pub dry_run: bool,
    pub retention: RetentionSummary,
    /// Zero-count blobs deleted (row and file).
    pub blobs_deleted: u64,
    /// Bytes of blob files unlinked (zero-count and unknown).
    pub bytes_freed: u64,
    /// Unreferenced blobs still waiting out the grace period (`gc.grace`):
    /// collected by a later run.
    pub blobs_in_grace: u64,
    pub bytes_in_grace: u64,
    /// Files under `blobs/` with no index row, deleted.
    pub unknown_files_deleted: u64,
    /// Staging files removed from `tmp/` (both roots).
    pub tmp_files_deleted: u64,
    /// S3: incomplete multipart uploads under the store's prefix begun more
    /// than `gc.tmp_max_age` ago (a daemon killed mid-upload), aborted.
    pub multipart_uploads_aborted: u64,
    /// Blobs moved to the archive root (primary copy unlinked).
    pub blobs_archived: u64,
    pub bytes_archived: u64,
    /// Primary copies of blobs already whole in the archive (left by a move
    /// that was interrupted), deleted.
    pub redundant_copies_deleted: u64,
    /// Blobs the index knows that the archive root holds after the run, and
    /// their bytes (0 without an archive root).
    pub archive_blobs: u64,
    pub archive_bytes: u64,
    /// Paths under `blobs/` that are not blob files; reported, never deleted.
    pub foreign_files: Vec<String>,
    /// In a dry run: the blob files that would be deleted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_delete: Vec<String>,
    /// In a dry run: the blob files that would move to the archive.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_archive: Vec<String>,
    /// Problems that stopped one deletion each (the rest went on).
    pub errors: Vec<String>,
    pub duration_ms: u64,
    /// Time per phase: retention, blobs, unknown_files, archive, tmp (S3:
    /// retention, blobs, multipart, tmp).
    pub phases_ms: std::collections::BTreeMap<&'static str, u64>,
    /// How long the run held the index's write lock (uploads wait meanwhile).
    pub write_lock: WriteLockUse,
}

impl GcSummary {
    /// Anything deleted, or that would be in a dry run.
    pub fn found_garbage(&self) -> bool {
        self.blobs_deleted
            + self.unknown_files_deleted
            + self.tmp_files_deleted
            + self.multipart_uploads_aborted
            + self.retention.orphans_expired
            + self.retention.aged_expired
            > 0
    }

    pub fn to_text(&self) -> String {
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        let mut s = format!(
            "gc {verb}: {} expired media ({} orphans, {} past max age; {} kept by external references), \
             {} blobs, {} unknown files, {} staging files, {} redundant copies; {} bytes freed; \
             {} blobs ({} bytes) {}; {} ms\n",
            self.retention.orphans_expired + self.retention.aged_expired,
            self.retention.orphans_expired,
            self.retention.aged_expired,
            self.retention.kept_by_external,
            self.blobs_deleted,
            self.unknown_files_deleted,
            self.tmp_files_deleted,
            self.redundant_copies_deleted,
            self.bytes_freed,
            self.blobs_archived,
            self.bytes_archived,
            if self.dry_run {
                "would be archived"
            } else {
                "archived"
            },
            self.duration_ms,
        );
        if self.multipart_uploads_aborted > 0 {
            s.push_str(&format!(
                "{} incomplete multipart uploads (older than gc.tmp_max_age) {}\n",
                self.multipart_uploads_aborted,
                if self.dry_run {
                    "would be aborted"
                } else {
                    "aborted"
                }
            ));
        }
        if self.blobs_in_grace > 0 {
            s.push_str(&format!(
                "{} unreferenced blobs ({} bytes) wait out the grace period (gc.grace); a later run collects them\n",
                self.blobs_in_grace, self.bytes_in_grace
            ));
        }
        for p in &self.would_delete {
            s.push_str(&format!("would delete {p}\n"));
        }
        for p in &self.would_archive {
            s.push_str(&format!("would archive {p}\n"));
        }
        for id in &self.retention.would_delete {
            s.push_str(&format!("would delete media {id}\n"));
        }
        for p in &self.foreign_files {
            s.push_str(&format!("left alone (not a blob): {p}\n"));
        }
        for e in &self.errors {
            s.push_str(&format!("error: {e}\n"));
        }
        s.push_str(&self.write_lock.to_text());
        s
    }
}

/// One full GC run on its own index connection (not the daemon's: the
/// SQLite write lock is what serialises it with uploads, in this process or
/// another).
pub fn run(
    index: &mut Maintenance,
    store: &BlobStore,
    retention_cfg: &RetentionConfig,
    opts: &GcOptions,
    external: Option<&dyn ExternalReferences>,
) -> anyhow::Result<GcSummary> {
    let started = Instant::now();
    WriteLockUse::start(index, store);
    let mut summary = GcSummary {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let mut phase = Instant::now();
    let mut lap = |summary: &mut GcSummary, name: &'static str| {
        summary
            .phases_ms
            .insert(name, phase.elapsed().as_millis() as u64);
        phase = Instant::now();
    };
    if opts.retention {
        summary.retention = retention::expire(index, retention_cfg, opts, external)?;
    }
    lap(&mut summary, "retention");
    if store.is_remote() || store.has_archive_bucket() {
        // A zero-count blob may have an object: claimed, its copies deleted
        // outside the lock, then forgotten (storage-layout.md, "S3" and "S3
        // archive tier"); the bucket's unknown objects go the same way.
        super::remote::collect(index, store, opts, &mut summary)?;
        lap(&mut summary, "blobs");
        super::remote::abort_stale_uploads(store, opts, &mut summary);
        lap(&mut summary, "multipart");
    } else {
        collect_zero_count_blobs(index, store, opts, &mut summary)?;
        lap(&mut summary, "blobs");
    }
    // An S3 store has nothing local to sweep or move.
    if !store.is_remote() {
        collect_unknown_files(index, store, Tier::Primary, opts, &mut summary)?;
        if store.has_archive() && !store.has_archive_bucket() {
            collect_unknown_files(index, store, Tier::Archive, opts, &mut summary)?;
        }
        lap(&mut summary, "unknown_files");
        super::archive::run(index, store, opts, &mut summary)?;
        if store.has_archive_bucket() {
            // The index knows what the bucket holds (no listing walked it).
            (summary.archive_blobs, summary.archive_bytes) = index.reader().archived_in_bucket()?;
        } else {
            summary.archive_blobs += summary.blobs_archived;
            summary.archive_bytes += summary.bytes_archived;
        }
        if store.has_archive() && !opts.dry_run {
            let (blobs, bytes) = (summary.archive_blobs, summary.archive_bytes);
            index.immediate(|tx| tx.put_archive_stored(blobs, bytes, opts.now_ms))?;
        }
        lap(&mut summary, "archive");
    }
    let cutoff = opts.now_ms.saturating_sub(millis(opts.tmp_max_age));
    let swept = store.sweep_staging(cutoff, opts.dry_run)?;
    summary.tmp_files_deleted = swept.len() as u64;
    if opts.dry_run {
        summary.would_delete.extend(swept);
    }
    lap(&mut summary, "tmp");
    summary.duration_ms = started.elapsed().as_millis() as u64;
    summary.write_lock = WriteLockUse::take(index);
    Ok(summary)
}

/// Opens a data folder's existing index and its blob store for a lifecycle
/// run, refusing a folder that has no index (a wrong or unmounted path).
pub fn open_existing(
    data_dir: &std::path::Path,
    archive_root: Option<&std::path::Path>,
) -> anyhow::Result<(Maintenance, BlobStore)> {
    let index = Maintenance::open_existing(data_dir)?;
    let store = BlobStore::open_existing(data_dir)?.with_archive(archive_root)?;
    Ok((index, store))
}

pub(super) fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// Blobs with count 0 since before `now - grace`, in batches of `opts.batch`,
/// each batch one `BEGIN IMMEDIATE` transaction that selects (and so
/// re-checks) its rows under the write lock.
fn collect_zero_count_blobs(
    index: &mut Maintenance,
    store: &BlobStore,
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    let cutoff = opts.now_ms.saturating_sub(millis(opts.grace));
    (summary.blobs_in_grace, summary.bytes_in_grace) =
        index.reader().zero_count_blobs_in_grace(cutoff)?;
    let total = index.reader().count_zero_count_blobs(cutoff)?;
    let bar = progress(total, "blobs", opts.progress);
    // Keyset cursor over the partial index (zero_since, hash) WHERE refcount = 0:
    // rows skipped (dry run, errors) are not seen again.
    let mut cursor: Option<ZeroCountBlob> = None;
    loop {
        let seen = in_write_tx(index, opts, |tx| {
            let rows = tx.zero_count_blobs(cutoff, cursor.as_ref(), opts.batch)?;
            for blob in &rows {
                collect_one(tx, store, blob, opts, summary)?;
            }
            cursor = rows.last().cloned();
            Ok(rows.len())
        })?;
        if seen == 0 {
            break;
        }
        bar.inc(seen as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

fn collect_one(
    tx: &Tx<'_>,
    store: &BlobStore,
    blob: &ZeroCountBlob,
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    let hash = &blob.hash;
    // Never trust the count alone: a media row using the hash means the
    // count drifted (fsck --repair fixes it); keep the file.
    if tx.hash_in_use(hash)? {
        summary.errors.push(format!(
            "blob {} has count 0 but media rows use it; kept (run `media-store fsck --repair`)",
            hash.to_hex()
        ));
        return Ok(());
    }
    if opts.dry_run {
        summary
            .would_delete
            .push(store.describe(Tier::Primary, hash));
        summary.blobs_deleted += 1;
        summary.bytes_freed += blob.size;
        return Ok(());
    }
    // Files first (both copies), then the row, all under the write lock: a
    // crash in between leaves a count-0 row without a file, which an upload
    // treats as absent (it installs its own copy) and the next GC drops.
    match store.delete(hash) {
        Ok(copies) => summary.bytes_freed += copies * blob.size,
        Err(e) => {
            summary.errors.push(e.to_string());
            return Ok(());
        }
    }
    // The source's renditions go with it (storage-layout.md R2): their rows,
    // and their blobs' references, which may zero-count them for a later
    // batch of this same scan (stamped with this run's time).
    tx.release_renditions_of(hash, opts.now_ms)?;
    tx.forget_zero_count_blob(hash)?;
    summary.blobs_deleted += 1;
    Ok(())
}

/// Files under a root's `blobs/` with no `blobs` row, untouched for the grace
/// period. A blob renamed into place by an upload whose transaction has not
/// committed yet has no row either: the re-check happens under the write lock
/// (which that upload holds from its rename to its commit), and the mtime
/// bound keeps any file written recently.
///
/// In the primary root, a known blob whose archive copy is whole is a
/// leftover of an interrupted move (A3): its primary copy is deleted.
fn collect_unknown_files(
    index: &mut Maintenance,
    store: &BlobStore,
    tier: Tier,
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    let cutoff = opts.now_ms.saturating_sub(millis(opts.grace));
    let bar = progress(store.shard_count(tier), "unknown files", opts.progress);
    let mut unknown: Vec<blake3::Hash> = Vec::new();
    let mut redundant: Vec<blake3::Hash> = Vec::new();
    store.walk(
        tier,
        || bar.inc(1),
        |entries| -> anyhow::Result<()> {
            for (entry, modified) in entries {
                match entry {
                    BlobEntry::Foreign(p) => summary.foreign_files.push(p),
                    BlobEntry::Blob(hash) => match index.reader().blob_size(&hash)? {
                        // (An archive bucket's copies are known from the
                        // index: no request per blob here.)
                        Some(size)
                            if tier == Tier::Primary
                                && !store.has_archive_bucket()
                                && store.archived_whole(&hash, size) =>
                        {
                            redundant.push(hash)
                        }
                        Some(size) if tier == Tier::Archive => {
                            summary.archive_blobs += 1;
                            summary.archive_bytes += size;
                        }
                        Some(_) => {}
                        None if modified.is_some_and(|m| m <= cutoff) => unknown.push(hash),
                        None => {}
                    },
                }
            }
            if unknown.len() >= opts.batch {
                delete_unknown(index, store, tier, &mut unknown, cutoff, opts, summary)?;
            }
            if redundant.len() >= opts.batch {
                delete_redundant(index, store, &mut redundant, opts, summary)?;
            }
            Ok(())
        },
    )?;
    delete_unknown(index, store, tier, &mut unknown, cutoff, opts, summary)?;
    delete_redundant(index, store, &mut redundant, opts, summary)?;
    bar.finish_and_clear();
    Ok(())
}

/// Deletes primary copies of blobs whose archive copy is whole (A3). The
/// long work happens before the write lock is taken: each archive copy's hash
/// is verified (a copy of the right size may still be damaged, and must never
/// replace a good primary) and its folder entry made durable (its mover may
/// not have synced it). Under the lock only the cheap re-check (the copy is
/// still there, with its size) and the unlink remain.
fn delete_redundant(
    index: &mut Maintenance,
    store: &BlobStore,
    pending: &mut Vec<blake3::Hash>,
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let reader = index.reader();
    let mut verified: Vec<(blake3::Hash, u64)> = Vec::with_capacity(pending.len());
    let mut entries = crate::store::Pending::default();
    for hash in pending.drain(..) {
        let Some(size) = reader.blob_size(&hash)? else {
            continue;
        };
        match store.verify_copy(Tier::Archive, &hash, size) {
            Verdict::Ok => {}
            Verdict::Missing | Verdict::Unreachable => continue,
            Verdict::Corrupt => {
                summary.errors.push(format!(
                    "the archived copy of blob {} is damaged; the primary copy stays (run `media-store fsck --repair`)",
                    hash.to_hex()
                ));
                continue;
            }
        }
        entries.merge(store.archive_entry(&hash));
        verified.push((hash, size));
    }
    if verified.is_empty() {
        return Ok(());
    }
    if !opts.dry_run
        && let Err(e) = store.make_durable(entries)
    {
        summary
            .errors
            .push(format!("cannot sync the archive's folders: {e}"));
        return Ok(());
    }
    in_write_tx(index, opts, |tx| {
        for (hash, size) in verified {
            if tx.blob_size(&hash)? != Some(size) || !store.archived_whole(&hash, size) {
                continue;
            }
            if opts.dry_run {
                summary
                    .would_delete
                    .push(store.describe(Tier::Primary, &hash));
                summary.redundant_copies_deleted += 1;
                continue;
            }
            match store.delete_primary_copy(&hash) {
                Ok(Unlinked::Removed) => summary.redundant_copies_deleted += 1,
                Ok(Unlinked::Absent) => {}
                Err(e) => summary.errors.push(e.to_string()),
            }
        }
        Ok(())
    })
}

/// Runs `f` in one `BEGIN IMMEDIATE` transaction (SQLite's write lock, which
/// the daemon's upload commit also takes), commits, then [`pace`]s.
pub(super) fn in_write_tx<T>(
    index: &mut Maintenance,
    opts: &GcOptions,
    f: impl FnOnce(&Tx<'_>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let out = index.immediate(f)?;
    pace(opts, started);
    Ok(out)
}

fn delete_unknown(
    index: &mut Maintenance,
    store: &BlobStore,
    tier: Tier,
    pending: &mut Vec<blake3::Hash>,
    cutoff: i64,
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    in_write_tx(index, opts, |tx| {
        for hash in pending.drain(..) {
            // Under the write lock: no upload is between its rename and its commit.
            let Some((size, modified)) = store.file_meta(tier, &hash) else {
                continue;
            };
            if tx.blob_size(&hash)?.is_some() || modified > cutoff {
                continue;
            }
            if opts.dry_run {
                summary.would_delete.push(store.describe(tier, &hash));
                summary.unknown_files_deleted += 1;
                summary.bytes_freed += size;
                continue;
            }
            match store.delete_unknown(tier, &hash) {
                Ok(Unlinked::Removed) => {
                    summary.unknown_files_deleted += 1;
                    summary.bytes_freed += size;
                }
                Ok(Unlinked::Absent) => {}
                Err(e) => summary.errors.push(e.to_string()),
            }
        }
        Ok(())
    })
}

/// After a write transaction, leaves the write lock free for as long as the
/// transaction held it (at least 10 ms). SQLite's busy handler polls with
/// sleeps of up to 100 ms, so a writer waiting for the lock (the daemon's
/// upload commit) could otherwise keep missing the short gaps between GC
/// batches until its 5 s busy timeout fails the upload with 503. At half the
/// time, a waiting writer finds the lock free within a few polls.
pub fn pace(opts: &GcOptions, tx_started: Instant) {
    if opts.pace {
        let held = tx_started.elapsed();
        std::thread::sleep(held.clamp(Duration::from_millis(10), Duration::from_millis(250)));
    }
}

/// Metric names of GC runs: the daemon's background runs (`gc.interval`,
/// `source="daemon"`) and `media-store gc` runs (`source="cli"`, recorded in
/// the index and exported by the daemon: `lifecycle::runs`).
pub mod metric {
    /// Runs, by `result` (`ok`, `failed`) (counter).
    pub const RUNS: &str = "media_store_gc_runs_total";
    /// Duration of each finished run, retention and archival included (histogram).
    pub const RUN_SECONDS: &str = "media_store_gc_run_seconds";
    /// Zero-count blobs deleted (counter).
    pub const BLOBS_DELETED: &str = "media_store_gc_blobs_deleted_total";
    /// Bytes of blob files unlinked (counter).
    pub const BYTES_FREED: &str = "media_store_gc_freed_bytes_total";
    /// Media rows expired by retention (counter).
    pub const MEDIA_EXPIRED: &str = "media_store_gc_media_expired_total";
    /// Blobs moved to the archive root (counter).
    pub const BLOBS_ARCHIVED: &str = "media_store_archive_blobs_moved_total";
    /// Bytes moved to the archive root (counter).
    pub const BYTES_ARCHIVED: &str = "media_store_archive_moved_bytes_total";
    /// Incomplete S3 multipart uploads aborted (counter).
    pub const MULTIPART_ABORTED: &str = "media_store_gc_multipart_uploads_aborted_total";
    /// Deletions or moves that failed in a run (counter).
    pub const ERRORS: &str = "media_store_gc_errors_total";
    /// Unix time of the last finished run (gauge).
    pub const LAST_RUN: &str = "media_store_gc_last_run_timestamp_seconds";
}

/// Records a background run's summary, finished at `now_ms`, in the
/// metrics (`source="daemon"`; `media-store gc` runs reach them as
/// `source="cli"` through `lifecycle::runs`).
pub fn record_metrics(s: &GcSummary, now_ms: i64) {
    use super::runs::metric::{GC_LAST_DURATION, LAST_LOCK_HELD_MAX};
    let d = "daemon";
    metrics::counter!(metric::RUNS, "result" => "ok", "source" => d).increment(1);
    metrics::histogram!(metric::RUN_SECONDS).record(s.duration_ms as f64 / 1000.0);
    metrics::counter!(metric::BLOBS_DELETED, "source" => d).increment(s.blobs_deleted);
    metrics::counter!(metric::BYTES_FREED, "source" => d).increment(s.bytes_freed);
    metrics::counter!(metric::MEDIA_EXPIRED, "source" => d)
        .increment(s.retention.orphans_expired + s.retention.aged_expired);
    metrics::counter!(metric::BLOBS_ARCHIVED, "source" => d).increment(s.blobs_archived);
    metrics::counter!(metric::BYTES_ARCHIVED, "source" => d).increment(s.bytes_archived);
    metrics::counter!(metric::MULTIPART_ABORTED, "source" => d)
        .increment(s.multipart_uploads_aborted);
    metrics::counter!(metric::ERRORS, "source" => d).increment(s.errors.len() as u64);
    metrics::gauge!(metric::LAST_RUN, "source" => d).set(now_ms as f64 / 1000.0);
    metrics::gauge!(GC_LAST_DURATION, "source" => d).set(s.duration_ms as f64 / 1000.0);
    metrics::gauge!(LAST_LOCK_HELD_MAX, "command" => "gc", "source" => d)
        .set(s.write_lock.held_us_max as f64 / 1e6);
}

/// Records a background run that failed.
pub fn record_failed_run() {
    metrics::counter!(metric::RUNS, "result" => "failed", "source" => "daemon").increment(1);
}
