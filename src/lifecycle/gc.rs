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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::report::{BlobEntry, progress, shard_count, walk_blobs};
use super::retention::{self, RetentionSummary};
use super::{ExternalReferences, RetentionConfig};
use crate::store::BlobStore;

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
    pub fn from_config(config: &crate::Config, now_ms: i64) -> GcOptions {
        let gc = &config.gc;
        GcOptions {
            grace: gc.grace,
            tmp_max_age: gc.tmp_max_age,
            batch: gc.batch.max(1),
            dry_run: false,
            now_ms,
            progress: false,
            retention: true,
            pace: true,
            archive_after: Duration::from_secs(config.archive.after_days.saturating_mul(86_400)),
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
    /// Files under `blobs/` with no index row, deleted.
    pub unknown_files_deleted: u64,
    /// Staging files removed from `tmp/` (both roots).
    pub tmp_files_deleted: u64,
    /// Blobs moved to the archive root (primary copy unlinked).
    pub blobs_archived: u64,
    pub bytes_archived: u64,
    /// Primary copies of blobs already whole in the archive (left by a move
    /// that was interrupted), deleted.
    pub redundant_copies_deleted: u64,
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
    /// Time per phase: retention, blobs, unknown_files, archive, tmp.
    pub phases_ms: std::collections::BTreeMap<&'static str, u64>,
}

impl GcSummary {
    /// Anything deleted, or that would be in a dry run.
    pub fn found_garbage(&self) -> bool {
        self.blobs_deleted
            + self.unknown_files_deleted
            + self.tmp_files_deleted
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
        s
    }
}

/// One full GC run over an open index connection (its own, not the daemon's:
/// the SQLite write lock is what serialises it with uploads, in this process
/// or another).
pub fn run(
    conn: &mut Connection,
    store: &BlobStore,
    retention_cfg: &RetentionConfig,
    opts: &GcOptions,
    external: Option<&dyn ExternalReferences>,
) -> anyhow::Result<GcSummary> {
    let started = Instant::now();
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
        summary.retention = retention::expire(conn, retention_cfg, opts, external)?;
    }
    lap(&mut summary, "retention");
    collect_zero_count_blobs(conn, store, opts, &mut summary)?;
    lap(&mut summary, "blobs");
    collect_unknown_files(conn, store, store.blobs_dir(), opts, &mut summary)?;
    if let Some(archived) = store.archive_blobs_dir() {
        collect_unknown_files(conn, store, archived, opts, &mut summary)?;
    }
    lap(&mut summary, "unknown_files");
    super::archive::run(conn, store, opts, &mut summary)?;
    lap(&mut summary, "archive");
    collect_staging_files(store.tmp_dir(), opts, &mut summary)?;
    if let Some(tmp) = store.archive_tmp_dir() {
        collect_staging_files(tmp, opts, &mut summary)?;
    }
    lap(&mut summary, "tmp");
    summary.duration_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

pub(super) fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// Blobs with count 0 since before `now - grace`, in batches of `opts.batch`,
/// each batch one `BEGIN IMMEDIATE` transaction that selects (and so
/// re-checks) its rows under the write lock.
fn collect_zero_count_blobs(
    conn: &mut Connection,
    store: &BlobStore,
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    let cutoff = opts.now_ms.saturating_sub(millis(opts.grace));
    let total: u64 = conn.query_row(
        "SELECT count(*) FROM blobs WHERE refcount = 0 AND zero_since <= ?1",
        [cutoff],
        |r| r.get(0),
    )?;
    let bar = progress(total, "blobs", opts.progress);
    // Keyset cursor over the partial index (zero_since, hash) WHERE refcount = 0:
    // rows skipped (dry run, errors) are not seen again.
    let mut cursor: (i64, Vec<u8>) = (i64::MIN, Vec::new());
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let tx_started = Instant::now();
        let rows: Vec<(i64, [u8; 32], u64)> = tx
            .prepare_cached(
                "SELECT zero_since, hash, size FROM blobs
                 WHERE refcount = 0 AND zero_since <= ?1 AND (zero_since, hash) > (?2, ?3)
                 ORDER BY zero_since, hash LIMIT ?4",
            )?
            .query_map(
                params![cutoff, cursor.0, cursor.1, opts.batch as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .collect::<rusqlite::Result<_>>()?;
        let Some(last) = rows.last() else { break };
        cursor = (last.0, last.1.to_vec());
        for (_, hash, size) in &rows {
            let hash = blake3::Hash::from_bytes(*hash);
            let path = store.blob_path(&hash);
            let archived = store.archive_path(&hash);
            // Never trust the count alone: a media row using the hash means the
            // count drifted (fsck --repair fixes it); keep the file.
            let used: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM media WHERE hash = ?1)",
                [hash.as_bytes()],
                |r| r.get(0),
            )?;
            if used {
                summary.errors.push(format!(
                    "blob {} has count 0 but media rows use it; kept (run `media-store fsck --repair`)",
                    hash.to_hex()
                ));
                continue;
            }
            if opts.dry_run {
                summary.would_delete.push(path.display().to_string());
                summary.blobs_deleted += 1;
                summary.bytes_freed += size;
                continue;
            }
            // Files first (both copies), then the row, all under the write
            // lock: a crash in between leaves a count-0 row without a file,
            // which an upload treats as absent (it installs its own copy) and
            // the next GC drops.
            let mut failed = false;
            for copy in std::iter::once(&path).chain(archived.as_ref()) {
                match unlink(copy, summary) {
                    Unlinked::Removed => summary.bytes_freed += size,
                    Unlinked::Absent => {}
                    Unlinked::Failed => failed = true,
                }
            }
            if failed {
                continue;
            }
            tx.execute(
                "DELETE FROM blobs WHERE hash = ?1 AND refcount = 0",
                [hash.as_bytes()],
            )?;
            summary.blobs_deleted += 1;
        }
        tx.commit()?;
        bar.inc(rows.len() as u64);
        pace(opts, tx_started);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Files under `dir` (the primary or the archive `blobs/`) with no `blobs`
/// row, untouched for the grace period. A blob renamed into place by an upload
/// whose transaction has not committed yet has no row either: the re-check
/// happens under the write lock (which that upload holds from its rename to its
/// commit), and the mtime bound keeps any file written recently.
///
/// In the primary folder, a known blob whose archive copy is whole is a
/// leftover of an interrupted move (A3): its primary copy is deleted.
fn collect_unknown_files(
    conn: &mut Connection,
    store: &BlobStore,
    dir: &Path,
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    let cutoff = opts.now_ms.saturating_sub(millis(opts.grace));
    let primary = dir == store.blobs_dir();
    let bar = progress(shard_count(dir), "unknown files", opts.progress);
    let mut pending: Vec<(blake3::Hash, PathBuf)> = Vec::new();
    let mut redundant: Vec<(blake3::Hash, PathBuf)> = Vec::new();
    walk_blobs(
        dir,
        || bar.inc(1),
        |entries| {
            for entry in entries {
                match entry {
                    BlobEntry::Foreign(p) => summary.foreign_files.push(p.display().to_string()),
                    BlobEntry::Blob(hash, path) => match known_size(conn, &hash)? {
                        Some(size) if primary && store.archived_whole(&hash, size) => {
                            redundant.push((hash, path))
                        }
                        Some(_) => {}
                        None if older_than(&path, cutoff) => pending.push((hash, path)),
                        None => {}
                    },
                }
            }
            if pending.len() >= opts.batch {
                delete_unknown(conn, &mut pending, cutoff, opts, summary)?;
            }
            if redundant.len() >= opts.batch {
                delete_redundant(conn, store, &mut redundant, opts, summary)?;
            }
            Ok(())
        },
    )?;
    delete_unknown(conn, &mut pending, cutoff, opts, summary)?;
    delete_redundant(conn, store, &mut redundant, opts, summary)?;
    bar.finish_and_clear();
    Ok(())
}

/// The size recorded for a blob, if the index knows it.
fn known_size(conn: &Connection, hash: &blake3::Hash) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached("SELECT size FROM blobs WHERE hash = ?1")?
        .query_row([hash.as_bytes()], |r| r.get(0))
        .optional()
}

/// Deletes primary copies of blobs whose archive copy is whole, under the
/// write lock, after making the archive copy's folder entry durable (its
/// mover may not have synced it yet).
fn delete_redundant(
    conn: &mut Connection,
    store: &BlobStore,
    pending: &mut Vec<(blake3::Hash, PathBuf)>,
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    in_write_tx(conn, opts, |tx| {
        for (hash, path) in pending.drain(..) {
            let Some(size) = known_size(tx, &hash)? else {
                continue;
            };
            if !store.archived_whole(&hash, size) {
                continue;
            }
            if opts.dry_run {
                summary.would_delete.push(path.display().to_string());
                summary.redundant_copies_deleted += 1;
                continue;
            }
            let copy = store
                .archive_path(&hash)
                .expect("archived_whole implies a root");
            let shard = copy.parent().expect("blob paths have a shard");
            if let Err(e) = crate::store::fsync_dir(shard) {
                summary
                    .errors
                    .push(format!("cannot sync the folder of {}: {e}", copy.display()));
                continue;
            }
            if unlink(&path, summary) == Unlinked::Removed {
                summary.redundant_copies_deleted += 1;
            }
        }
        Ok(())
    })
}

/// Runs `f` in one `BEGIN IMMEDIATE` transaction (SQLite's write lock, which
/// the daemon's upload commit also takes), commits, then [`pace`]s.
pub(super) fn in_write_tx(
    conn: &mut Connection,
    opts: &GcOptions,
    f: impl FnOnce(&Connection) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let started = Instant::now();
    f(&tx)?;
    tx.commit()?;
    pace(opts, started);
    Ok(())
}

fn mtime_ms(path: &Path) -> Option<i64> {
    let m = std::fs::symlink_metadata(path).ok()?.modified().ok()?;
    Some(m.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

fn older_than(path: &Path, cutoff_ms: i64) -> bool {
    mtime_ms(path).is_some_and(|m| m <= cutoff_ms)
}

fn delete_unknown(
    conn: &mut Connection,
    pending: &mut Vec<(blake3::Hash, PathBuf)>,
    cutoff: i64,
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    in_write_tx(conn, opts, |tx| {
        for (hash, path) in pending.drain(..) {
            // Under the write lock: no upload is between its rename and its commit.
            if known_size(tx, &hash)?.is_some() || !older_than(&path, cutoff) {
                continue;
            }
            let size = std::fs::symlink_metadata(&path)
                .map(|m| m.len())
                .unwrap_or(0);
            if opts.dry_run {
                summary.would_delete.push(path.display().to_string());
                summary.unknown_files_deleted += 1;
                summary.bytes_freed += size;
                continue;
            }
            if unlink(&path, summary) == Unlinked::Removed {
                summary.unknown_files_deleted += 1;
                summary.bytes_freed += size;
            }
        }
        Ok(())
    })
}

#[derive(Debug, PartialEq)]
pub(super) enum Unlinked {
    Removed,
    /// Already gone: fine, nothing freed.
    Absent,
    /// Could not delete; the error is in the summary.
    Failed,
}

/// Deletes one file for GC; a failure is recorded in the summary, not raised,
/// so one unreadable file does not stop the run.
pub(super) fn unlink(path: &Path, summary: &mut GcSummary) -> Unlinked {
    match std::fs::remove_file(path) {
        Ok(()) => Unlinked::Removed,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Unlinked::Absent,
        Err(e) => {
            summary
                .errors
                .push(format!("cannot delete {}: {e}", path.display()));
            Unlinked::Failed
        }
    }
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

/// Staging files untouched for `tmp_max_age`. An upload in flight writes its
/// staging file continuously, so its mtime stays recent.
fn collect_staging_files(
    tmp: &Path,
    opts: &GcOptions,
    summary: &mut GcSummary,
) -> anyhow::Result<()> {
    let cutoff = opts.now_ms.saturating_sub(millis(opts.tmp_max_age));
    let entries = std::fs::read_dir(tmp)
        .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", tmp.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_file() || !older_than(&path, cutoff) {
            continue;
        }
        if opts.dry_run {
            summary.would_delete.push(path.display().to_string());
            summary.tmp_files_deleted += 1;
        } else if std::fs::remove_file(&path).is_ok() {
            summary.tmp_files_deleted += 1;
        }
    }
    Ok(())
}

/// Milliseconds since the Unix epoch from the system clock.
pub fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Opens a data folder's index for a lifecycle command, refusing a folder
/// that has no index: on a wrong or unmounted path, an empty new index would
/// make every blob look unknown.
pub fn open_existing(
    data_dir: &Path,
    archive_root: Option<&Path>,
) -> anyhow::Result<(Connection, BlobStore)> {
    let path = crate::app::index_path(data_dir);
    if !path.is_file() {
        anyhow::bail!(
            "{} has no index ({} is missing); is the data folder right and mounted?",
            data_dir.display(),
            path.display()
        );
    }
    let conn = crate::index::open_connection(&path)?;
    conn.busy_handler(Some(poll_for_lock))?;
    let store = BlobStore::open(data_dir)?.with_archive(archive_root)?;
    Ok((conn, store))
}

/// Busy handler for lifecycle connections: retry every millisecond for up to
/// 60 s. SQLite's default handler sleeps up to 100 ms between tries, which
/// next to a daemon committing uploads back to back makes every GC batch wait
/// hundreds of milliseconds for a lock that is free for short moments.
fn poll_for_lock(retries: i32) -> bool {
    std::thread::sleep(Duration::from_millis(1));
    retries < 60_000
}

/// The daemon's own GC loop (`gc.interval` > 0): runs retention + GC on its
/// own connection every interval, exactly as `media-store gc` would. Stops
/// when the returned handle is aborted or dropped with the runtime.
pub fn spawn_background(state: crate::AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let config = state.config();
            let interval = config.gc.interval;
            if interval.is_zero() {
                // Off; look again later in case a reload turns it on.
                tokio::time::sleep(Duration::from_secs(60)).await;
                continue;
            }
            tokio::time::sleep(interval).await;
            let config = state.config();
            let outcome = crate::tasks::blocking(move || -> anyhow::Result<GcSummary> {
                let external = super::external_references(&config)?;
                let (mut conn, store) = open_existing(&config.data_dir, config.archive.root())?;
                let opts = GcOptions::from_config(&config, system_now_ms());
                run(
                    &mut conn,
                    &store,
                    &config.retention,
                    &opts,
                    external.as_deref(),
                )
            })
            .await;
            match outcome {
                Ok(Ok(s)) => tracing::info!(
                    blobs_deleted = s.blobs_deleted,
                    bytes_freed = s.bytes_freed,
                    media_expired = s.retention.orphans_expired + s.retention.aged_expired,
                    unknown_files_deleted = s.unknown_files_deleted,
                    duration_ms = s.duration_ms,
                    "background gc finished"
                ),
                Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "background gc failed"),
                Err(e) => tracing::error!(error = %e, "background gc task panicked"),
            }
        }
    })
}
