//! Reconcile: compare all of `media_files` with the index and repair the
//! differences.
//!
//! Both sides are walked in id order, `mysql.reconcile_chunk` rows at a time,
//! so memory stays bounded at any table size. Repairs are not written to MySQL
//! directly: the differing ids are queued into the outbox, and the normal drain
//! (which re-reads the current row) applies them. So a reconcile that races with
//! live uploads, or with the daemon's own worker, cannot undo a newer change.
//!
//! Only rows media-store owns (`media_store_rows`, M6) are repaired: a row the
//! chat backend wrote is counted as `foreign`, or as `conflicting` when the
//! index has the same id, and never queued.

use std::cmp::Ordering;

use mysql::Conn;
use serde::Serialize;

use super::mysql::{self as my, MirrorRow, Owner};
use super::{MysqlConfig, Result, worker};
use crate::clock::Clock;
use crate::index::{DurabilityBarrier, Index, IndexConfig};

/// What a comparison found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Rows in the index.
    pub index_rows: u64,
    /// Rows in `media_files`.
    pub mysql_rows: u64,
    /// In the index, not in MySQL.
    pub missing: u64,
    /// In MySQL, not in the index.
    pub extra: u64,
    /// In both, with different values.
    pub differing: u64,
    /// In MySQL only, written by the chat backend (not media-store's): left alone.
    pub foreign: u64,
    /// In both, but MySQL's row is the chat backend's: an id collision, left
    /// alone (never overwritten) and reported.
    pub conflicting: u64,
}

impl Report {
    /// The differences a repair fixes (foreign rows and collisions are not
    /// media-store's to change).
    pub fn differences(&self) -> u64 {
        self.missing + self.extra + self.differing
    }
}

/// Compares the whole table with the index; with `queue`, queues every
/// differing id into the outbox (one index write per chunk).
pub fn compare(
    index: &Index,
    conn: &mut Conn,
    chunk: usize,
    base_url: &str,
    queue: bool,
    clock: &dyn Clock,
) -> Result<Report> {
    let mut report = Report::default();
    // The first few collisions, for one warning at the end.
    let mut conflicts: Vec<i64> = Vec::new();
    let mut from = i64::MIN;
    loop {
        let ours = index.read_blocking(move |r| r.media_from(from, chunk))?;
        let theirs = my::rows_from(conn, from, chunk)?;
        if ours.is_empty() && theirs.is_empty() {
            break;
        }
        // A full page may have more rows after its last id: only the ids below
        // the smaller such bound are complete on both sides in this round.
        let bound =
            |len: usize, last: Option<i64>| (len == chunk).then(|| last.map(|l| l + 1)).flatten();
        let end = [
            bound(ours.len(), ours.last().map(|r| r.id)),
            bound(theirs.len(), theirs.last().map(|t| t.row.id)),
        ]
        .into_iter()
        .flatten()
        .min();
        let below = |id: i64| end.is_none_or(|e| id < e);
        let ours: Vec<MirrorRow> = ours
            .iter()
            .filter(|r| below(r.id))
            .map(|r| MirrorRow::from_media(r, base_url))
            .collect();
        let theirs: Vec<my::TargetRow> = theirs.into_iter().filter(|t| below(t.row.id)).collect();
        report.index_rows += ours.len() as u64;
        report.mysql_rows += theirs.len() as u64;
        let mut repair = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < ours.len() || j < theirs.len() {
            let order = match (ours.get(i), theirs.get(j)) {
                (Some(a), Some(b)) => a.id.cmp(&b.row.id),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match order {
                Ordering::Less => {
                    report.missing += 1;
                    repair.push(ours[i].id);
                    i += 1;
                }
                Ordering::Greater => {
                    // Only media-store's own rows are "extra"; one being
                    // adopted is not deleted before the index has it.
                    if theirs[j].owner == Owner::MediaStore {
                        report.extra += 1;
                        repair.push(theirs[j].row.id);
                    } else {
                        report.foreign += 1;
                    }
                    j += 1;
                }
                Ordering::Equal => {
                    if theirs[j].owner == Owner::Backend {
                        report.conflicting += 1;
                        if conflicts.len() < 10 {
                            conflicts.push(ours[i].id);
                        }
                    } else if ours[i] != theirs[j].row || theirs[j].owner == Owner::Adopting {
                        // An adoption the index has stored but the mirror has
                        // not written yet counts as differing: the write
                        // completes it.
                        report.differing += 1;
                        repair.push(ours[i].id);
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        if queue && !repair.is_empty() {
            let now = clock.now_ms();
            index.write_blocking(move |ctx| ctx.outbox_enqueue(&repair, now))?;
        }
        match end {
            Some(e) => from = e,
            None => break,
        }
    }
    if report.conflicting > 0 {
        tracing::warn!(
            count = report.conflicting,
            first_ids = ?conflicts,
            "media_files holds rows of the chat backend under media-store ids; they are left untouched and these media are not mirrored"
        );
    }
    Ok(report)
}

/// What `mysql-sync --reconcile` did with the differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// `--dry-run`: nothing changed.
    DryRun,
    /// Queued and sent to MySQL by this process; `rows` ids written.
    Repaired { rows: u64 },
    /// Queued; a running daemon holds the mirror and will send them.
    QueuedForDaemon,
}

/// `media-store mysql-sync --reconcile [--dry-run]` against a data folder whose
/// daemon may or may not be running.
pub fn run_cli(
    cfg: &MysqlConfig,
    data_dir: &std::path::Path,
    base: &str,
    dry_run: bool,
    clock: &dyn Clock,
) -> anyhow::Result<(Report, Applied)> {
    use anyhow::Context as _;
    anyhow::ensure!(
        cfg.enabled(),
        "no MySQL configured: set mysql.url (MEDIA_STORE_MYSQL_URL)"
    );
    let path = crate::index::path_in(data_dir);
    anyhow::ensure!(path.exists(), "no index at {}", path.display());
    // Reconcile writes outbox rows only: no blob installs to make durable.
    let no_blob_writes: DurabilityBarrier = std::sync::Arc::new(|_| Ok(()));
    let index = Index::open(&path, &IndexConfig::default(), no_blob_writes)?;
    let opts = my::opts(cfg)?;
    let mut conn = my::connect(&opts)
        .with_context(|| format!("cannot connect to MySQL at {}", my::describe(&opts)))?;
    if cfg.auto_migrate && !dry_run {
        my::migrate(&mut conn)?;
    } else {
        my::check_schema(&mut conn)?;
    }
    let report = compare(
        &index,
        &mut conn,
        cfg.reconcile_chunk,
        base,
        !dry_run,
        clock,
    )?;
    if dry_run {
        return Ok((report, Applied::DryRun));
    }
    if !my::try_lock_mirror(&mut conn)? {
        return Ok((report, Applied::QueuedForDaemon));
    }
    // We hold the mirror: send the whole outbox (repairs and anything a stopped
    // or MySQL-less daemon left), bounded by what is queued now plus what
    // arrives meanwhile; a live daemon cannot be writing (it would hold the lock).
    let rows = worker::drain_all(&index, &mut conn, cfg.batch_size, base)?;
    Ok((report, Applied::Repaired { rows }))
}
