//! The sync worker: one std thread that drains the outbox into MySQL.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mysql::{Conn, Opts};

use super::mysql::{self as my, MirrorRow};
use super::{MirrorError, MysqlConfig, Result, Shared, metric, reconcile};
use crate::clock::SharedClock;
use crate::index::{Index, OutboxEntry};

/// First retry delay after a failure; doubles up to `mysql.backoff_max_ms`.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// How often the backlog gauge is refreshed while busy.
const BACKLOG_REFRESH: Duration = Duration::from_secs(1);

pub(super) struct Worker {
    pub index: Index,
    pub opts: Opts,
    pub cfg: MysqlConfig,
    pub shared: Arc<Shared>,
    pub clock: SharedClock,
}

/// What one drained batch did.
pub struct Drained {
    /// The batch's last outbox seq: everything up to it is in MySQL now.
    pub last_seq: i64,
    /// Distinct media ids written (upserted or deleted) in MySQL.
    pub rows: usize,
    pub upserted: usize,
    pub deleted: usize,
    /// Ids left alone because `media_files` holds the chat backend's row
    /// under them (M6): never overwritten, reported.
    pub foreign: Vec<i64>,
}

/// Sends the oldest outbox entries after `after_seq` to MySQL. `None` when
/// there are none. The caller acks (deletes) entries up to `last_seq` with
/// [`ack`], at once or later: the worker acks a few times a second rather than
/// per batch, so the index writer is not given one more commit per batch.
/// Used by the daemon's worker and by `mysql-sync --reconcile`.
///
/// Order of operations (storage-layout.md M2): read entries, then the current
/// rows (so every row read is at least as new as every entry read), commit in
/// MySQL, and only then (in `ack`) delete the entries. A crash in between
/// re-sends the batch, which the idempotent statements make harmless.
pub fn drain_batch(
    index: &Index,
    conn: &mut Conn,
    batch_size: usize,
    base_url: &str,
    after_seq: i64,
    mut on_entry: impl FnMut(&OutboxEntry),
) -> Result<Option<Drained>> {
    let batch = index.read_blocking(move |r| r.outbox_next_batch(after_seq, batch_size))?;
    let Some(last) = batch.last().map(|e| e.seq) else {
        return Ok(None);
    };
    let mut ids: Vec<i64> = batch.iter().map(|e| e.media_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let wanted = ids.clone();
    let rows = index.read_blocking(move |r| r.media_by_ids(&wanted))?;
    let present: std::collections::HashSet<i64> = rows.iter().map(|r| r.id).collect();
    let deleted: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect();
    let mirror: Vec<MirrorRow> = rows
        .iter()
        .map(|r| MirrorRow::from_media(r, base_url))
        .collect();
    let skipped = my::apply(conn, &mirror, &deleted)?;
    if !skipped.foreign.is_empty() {
        metrics::counter!(metric::FOREIGN_CONFLICTS).increment(skipped.foreign.len() as u64);
        tracing::warn!(
            ids = ?skipped.foreign,
            "media_files holds rows of the chat backend under these media-store ids; they are left untouched and these media are not mirrored"
        );
    }
    batch.iter().for_each(&mut on_entry);
    Ok(Some(Drained {
        last_seq: last,
        rows: ids.len(),
        upserted: mirror.len() - skipped.foreign.len(),
        deleted: deleted.len(),
        foreign: skipped.foreign,
    }))
}

/// Sends the whole outbox (what is queued now plus what arrives meanwhile) and
/// acks it; for commands that hold the mirror lock. Returns the ids written.
pub fn drain_all(index: &Index, conn: &mut Conn, batch_size: usize, base_url: &str) -> Result<u64> {
    let mut rows = 0u64;
    while let Some(d) = drain_batch(index, conn, batch_size, base_url, 0, |_| {})? {
        ack(index, d.last_seq)?;
        rows += d.rows as u64;
    }
    Ok(rows)
}

/// Makes the index's next media id greater than every id in `media_files`
/// (the chat backend's rows included), so uploads never collide with them.
/// Run at each connect: a backend that still writes rows meanwhile moves the
/// floor up again at the next one.
pub fn raise_id_floor(index: &Index, conn: &mut Conn, place: &str) -> Result<()> {
    let max = my::max_id(conn)?;
    let place = place.to_owned();
    let raised = index.write_blocking(move |ctx| {
        let raised = ctx.media_id_floor(max)?;
        ctx.mark_id_floor_checked(&place)?;
        Ok::<_, crate::index::IndexError>(raised)
    })?;
    if raised {
        tracing::info!(
            above = max,
            "new media ids now start above the largest id in media_files"
        );
    }
    Ok(())
}

/// Deletes the entries up to `seq`, which MySQL has committed.
pub fn ack(index: &Index, seq: i64) -> Result<()> {
    index.write_blocking(move |ctx| ctx.outbox_ack(seq))?;
    Ok(())
}

/// Longest time sent entries stay unacked while the worker is busy (when idle
/// it acks at once). Unacked entries are re-sent only after a restart.
const ACK_INTERVAL: Duration = Duration::from_millis(250);

/// The worker's position in the outbox.
#[derive(Default)]
struct Cursor {
    /// Last seq committed to MySQL.
    sent: i64,
    /// Last seq deleted from the outbox.
    acked: i64,
}

impl Worker {
    pub fn run(self) {
        let place = my::describe(&self.opts);
        let mut conn: Option<Conn> = None;
        // The target (database + base URL) the last full reconcile covered.
        let mut reconciled: Option<String> = None;
        let mut backoff = BACKOFF_START;
        let cap = Duration::from_millis(self.cfg.backoff_max_ms).max(BACKOFF_START);
        let mut failures: u32 = 0;
        let mut backlog_at = Instant::now() - BACKLOG_REFRESH;
        let poll = Duration::from_millis(self.cfg.poll_interval_ms);
        let mut cursor = Cursor::default();
        let mut acked_at = Instant::now();
        while !self.shared.stopped() {
            let step = self.step(&mut conn, &place, &mut reconciled, &mut cursor);
            // Ack what MySQL has: when idle, or every ACK_INTERVAL while busy.
            let idle = matches!(step, Ok(false));
            if cursor.sent > cursor.acked && (idle || acked_at.elapsed() >= ACK_INTERVAL) {
                match ack(&self.index, cursor.sent) {
                    Ok(()) => cursor.acked = cursor.sent,
                    Err(e) => {
                        tracing::warn!(
                            error = format!("{:#}", anyhow::Error::from(e)),
                            "cannot ack the MySQL outbox; will retry"
                        )
                    }
                }
                acked_at = Instant::now();
            }
            match step {
                Ok(worked) => {
                    if failures > 0 {
                        tracing::info!(attempts = failures, mysql = %place, "MySQL sync recovered");
                        self.shared.set_status(|s| s.last_error = None);
                    }
                    failures = 0;
                    backoff = BACKOFF_START;
                    if !worked || backlog_at.elapsed() >= BACKLOG_REFRESH {
                        self.refresh_backlog();
                        backlog_at = Instant::now();
                    }
                    if !worked {
                        self.shared.wait(poll);
                    }
                }
                Err(e) => {
                    // Re-read from the last ack: re-sending is harmless, skipping is not.
                    cursor.sent = cursor.acked;
                    if !matches!(e, MirrorError::Index(_)) {
                        // Whatever state the connection is in, start over.
                        conn = None;
                        self.shared.set_status(|s| s.connected = false);
                        metrics::gauge!(metric::CONNECTED).set(0.0);
                    }
                    failures += 1;
                    metrics::counter!(metric::ERRORS).increment(1);
                    // The error with its causes (no URL, so no password).
                    let chain = format!("{:#}", anyhow::Error::from(e));
                    // Log the first failure and then ever more rarely: an outage of
                    // hours must not fill the log. /healthz always has the latest.
                    if failures.is_power_of_two() {
                        tracing::warn!(error = %chain, attempt = failures, retry_in_ms = backoff.as_millis() as u64, mysql = %place, "MySQL sync failed; retrying");
                    }
                    self.shared.set_status(|s| s.last_error = Some(chain));
                    self.refresh_backlog();
                    backlog_at = Instant::now();
                    self.shared.wait(backoff);
                    backoff = (backoff * 2).min(cap);
                }
            }
        }
    }

    fn refresh_backlog(&self) {
        if let Ok(n) = self.index.read_blocking(|r| r.outbox_backlog()) {
            metrics::gauge!(metric::BACKLOG).set(n as f64);
        }
    }

    /// One unit of work; `Ok(false)` when there was nothing to do.
    fn step(
        &self,
        conn: &mut Option<Conn>,
        place: &str,
        reconciled: &mut Option<String>,
        cursor: &mut Cursor,
    ) -> Result<bool> {
        let conn = match conn {
            Some(c) => c,
            None => {
                let mut c = my::connect(&self.opts)?;
                if self.cfg.auto_migrate {
                    my::migrate(&mut c)?;
                } else {
                    my::check_schema(&mut c)?;
                }
                if !my::try_lock_mirror(&mut c)? {
                    return Err(MirrorError::Locked);
                }
                raise_id_floor(&self.index, &mut c, place)?;
                tracing::info!(mysql = %place, "connected to MySQL");
                self.shared.set_status(|s| s.connected = true);
                metrics::gauge!(metric::CONNECTED).set(1.0);
                conn.insert(c)
            }
        };
        let base = self.shared.base_url.load_full();
        let target = format!("{place}|{base}");
        let periodic = self.cfg.reconcile_interval;
        let since_ms = self.clock.now_ms() - self.shared.last_reconcile_ms.load(Ordering::SeqCst);
        if !periodic.is_zero() && since_ms >= periodic.as_millis() as i64 {
            tracing::info!(every = ?periodic, "periodic full reconcile due");
            self.shared
                .reconcile_requested
                .store(true, Ordering::SeqCst);
        }
        let requested = self
            .shared
            .reconcile_requested
            .swap(false, Ordering::SeqCst);
        if requested || reconciled.as_deref() != Some(target.as_str()) {
            let t = target.clone();
            let owed = requested || self.index.read_blocking(move |r| r.reconcile_owed(&t))?;
            if owed {
                tracing::info!(mysql = %place, "full reconcile of media_files started");
                let report = reconcile::compare(
                    &self.index,
                    conn,
                    self.cfg.reconcile_chunk,
                    &base,
                    true,
                    self.clock.as_ref(),
                )
                .inspect_err(|_| {
                    if requested {
                        self.shared
                            .reconcile_requested
                            .store(true, Ordering::SeqCst);
                    }
                })?;
                tracing::info!(
                    index_rows = report.index_rows,
                    mysql_rows = report.mysql_rows,
                    missing = report.missing,
                    extra = report.extra,
                    differing = report.differing,
                    foreign = report.foreign,
                    conflicting = report.conflicting,
                    "full reconcile done; differences are queued for sync"
                );
                let t = target.clone();
                let now = self.clock.now_ms();
                self.index
                    .write_blocking(move |ctx| ctx.mark_reconciled(&t, now))?;
                self.shared.last_reconcile_ms.store(now, Ordering::SeqCst);
            }
            *reconciled = Some(target);
        }
        let drained = drain_batch(
            &self.index,
            conn,
            self.cfg.batch_size,
            &base,
            cursor.sent,
            |e| {
                // Called after the MySQL commit: change committed -> mirrored.
                let lag = (self.clock.now_ms() - e.created_at_ms).max(0) as f64 / 1000.0;
                metrics::histogram!(metric::LAG).record(lag);
            },
        )?;
        match drained {
            None => Ok(false),
            Some(d) => {
                cursor.sent = d.last_seq;
                metrics::counter!(metric::ROWS_SYNCED).increment(d.rows as u64);
                let at = self.clock.now_ms();
                let foreign = d.foreign.len() as u64;
                self.shared.set_status(|s| {
                    s.last_sync_ms = Some(at);
                    s.foreign_conflicts += foreign;
                });
                tracing::debug!(
                    rows = d.rows,
                    upserted = d.upserted,
                    deleted = d.deleted,
                    "synced a batch to MySQL"
                );
                Ok(true)
            }
        }
    }
}
