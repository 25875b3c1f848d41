//! The index port: the source of truth for media rows, blob reference counts,
//! message references and the MySQL outbox, with SQLite behind it.
//!
//! Every SQL statement of the program lives under this module (MySQL's own
//! statements for the mirror's target table excepted: see `mirror::mysql`),
//! and no rusqlite type appears in its public signatures: callers see domain
//! operations on three views of the database:
//! - [`Reader`]: reads, on a pooled read-only connection or inside a write;
//! - [`Tx`]: reads and writes inside one transaction (derefs to [`Reader`]);
//! - [`WriteCtx`]: a [`Tx`] inside the writer's group commit, which also
//!   collects the blob store's pending durability work (see below).
//!
//! Writes go through one dedicated writer thread that owns the write connection
//! and runs queued jobs in one transaction (group commit), each job inside its own
//! savepoint so one job's failure does not undo the others. Before the commit, the
//! writer runs the durability barrier for everything the jobs registered (see
//! storage-layout.md, "Group commit"). Reads use a small pool of read-only
//! connections inside `spawn_blocking`. Lifecycle commands (`gc`, `fsck`,
//! retention) open their own [`Maintenance`] connection, serialised with the
//! daemon by SQLite's write lock. This module never opens blob files.
//!
//! A job's error type is the caller's own (`E: From<IndexError>`): domain
//! errors pass through the writer unchanged.

#[cfg(test)]
mod contract;
mod fsck;
mod gc;
pub mod media;
mod outbox;
pub mod refs;
pub mod remote;
pub mod renditions;
mod retention;
mod runs;
mod upload_urls;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use rusqlite_migration::{M, Migrations};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use fsck::CountMismatch;
pub use gc::ZeroCountBlob;
pub use media::{AdoptConflict, Layout, ListQuery, MediaRow, NewMedia, TypeFilter};
pub use outbox::OutboxEntry;
pub use refs::{AttachOutcome, Released, Usage};
pub use renditions::RenditionRow;
pub use retention::RetentionRule;
pub use runs::RunFigures;

use crate::error::{Classify, ErrorKind};
use crate::store::Pending;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index query failed: {0}")]
    Query(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("index migration failed: {0}")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("index is busy")]
    Busy,
    #[error("the index disk is full")]
    DiskFull,
    #[error("index writer has stopped")]
    WriterGone,
    /// A reference was to be added to a blob that GC is deleting (network
    /// store): retry once GC has forgotten it.
    #[error("the content is being removed by garbage collection right now; send it again shortly")]
    BlobClaimed,
    #[error("index commit failed: {0}")]
    CommitFailed(String),
    #[error(
        "{} has no index ({} is missing); is the data folder right and mounted?",
        data_dir.display(),
        path.display()
    )]
    NoIndex { data_dir: PathBuf, path: PathBuf },
}

impl From<rusqlite::Error> for IndexError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                IndexError::Busy
            }
            Some(rusqlite::ErrorCode::DiskFull) => IndexError::DiskFull,
            _ => IndexError::Query(Box::new(e)),
        }
    }
}

impl From<rusqlite_migration::Error> for IndexError {
    fn from(e: rusqlite_migration::Error) -> Self {
        IndexError::Migration(Box::new(e))
    }
}

impl Classify for IndexError {
    fn kind(&self) -> ErrorKind {
        match self {
            IndexError::Busy | IndexError::WriterGone | IndexError::BlobClaimed => {
                ErrorKind::Unavailable
            }
            IndexError::DiskFull => ErrorKind::InsufficientStorage,
            _ => ErrorKind::Internal,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            IndexError::Busy | IndexError::WriterGone => "index_unavailable",
            IndexError::BlobClaimed => "blob_being_collected",
            IndexError::DiskFull => "disk_full",
            _ => "internal",
        }
    }
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

/// The index file inside a data folder.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("index.sqlite3")
}

/// Migrations, embedded from `migrations/sqlite/` in order.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../../migrations/sqlite/0001_initial.sql")),
        M::up(include_str!("../../migrations/sqlite/0002_lifecycle.sql")),
        M::up(include_str!(
            "../../migrations/sqlite/0003_mysql_outbox.sql"
        )),
        M::up(include_str!(
            "../../migrations/sqlite/0004_corrupt_media.sql"
        )),
        M::up(include_str!("../../migrations/sqlite/0005_renditions.sql")),
        M::up(include_str!(
            "../../migrations/sqlite/0006_used_upload_urls.sql"
        )),
        M::up(include_str!(
            "../../migrations/sqlite/0007_remote_blobs.sql"
        )),
        M::up(include_str!(
            "../../migrations/sqlite/0008_archive_bucket.sql"
        )),
    ])
}

/// How long a connection waits for another process's lock (e.g. `media-store gc`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL lets readers run beside the writer; FULL because a 201 promises durability.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Opens the index file read-write and brings its schema up to date.
fn open_connection(path: &Path) -> Result<Connection> {
    let mut conn = Connection::open(path)?;
    configure(&conn)?;
    migrations().to_latest(&mut conn)?;
    Ok(conn)
}

/// A read view of the index: a pooled read connection, or the inside of a
/// write transaction (see [`Tx`]). Domain reads are its methods, in the
/// submodules of this module.
pub struct Reader<'a> {
    conn: &'a Connection,
}

/// Reads and writes inside one transaction (the writer's batch, or a
/// [`Maintenance`] transaction). Domain writes are its methods.
pub struct Tx<'a> {
    reader: Reader<'a>,
}

impl<'a> Deref for Tx<'a> {
    type Target = Reader<'a>;
    fn deref(&self) -> &Reader<'a> {
        &self.reader
    }
}

impl Tx<'_> {
    fn conn(&self) -> &Connection {
        self.reader.conn
    }
}

impl Reader<'_> {
    /// A trivial query: the index answers (health checks).
    pub fn ping(&self) -> Result<()> {
        self.conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }
}

/// Runs at the end of every write batch, before `COMMIT`, with everything
/// the batch's jobs registered through [`WriteCtx::require_durable`]: the
/// blob store makes those writes durable (I2: file before row).
pub type DurabilityBarrier = Arc<dyn Fn(Pending) -> std::io::Result<()> + Send + Sync>;

/// What a write job sees: its batch's transaction (through `Deref`) and the
/// batch's pending durability work.
pub struct WriteCtx<'a> {
    tx: Tx<'a>,
    pending: &'a mut Pending,
}

impl<'a> Deref for WriteCtx<'a> {
    type Target = Tx<'a>;
    fn deref(&self) -> &Tx<'a> {
        &self.tx
    }
}

impl WriteCtx<'_> {
    /// Registers blob-store work that must be durable before this batch commits.
    pub fn require_durable(&mut self, pending: Pending) {
        self.pending.merge(pending);
    }
}

/// Called once the batch's fate is known: `None` when it committed.
type Completion = Box<dyn FnOnce(Option<&IndexError>) + Send>;
/// `Err` when the job failed: the batch's transaction may then be gone.
type Job = Box<dyn FnOnce(&mut WriteCtx<'_>) -> (Completion, bool) + Send>;

/// Handle on the index. Cheap to clone.
#[derive(Clone)]
pub struct Index {
    path: PathBuf,
    jobs: mpsc::UnboundedSender<Job>,
    /// std Mutex: held only to pop or push a connection, never across a query or an await.
    readers: Arc<Mutex<Vec<Connection>>>,
    max_readers: usize,
    /// Bumped by the writer after every batch, before its callers hear back:
    /// caches of rows stay valid only while it is unchanged.
    generation: Arc<AtomicU64>,
}

impl Index {
    /// Opens (creating and migrating) the index and starts its writer thread.
    /// The thread stops when every handle is dropped, after finishing queued jobs.
    pub fn open(path: &Path, config: &IndexConfig, barrier: DurabilityBarrier) -> Result<Index> {
        let conn = open_connection(path)?;
        let (jobs, rx) = mpsc::unbounded_channel();
        let generation = Arc::new(AtomicU64::new(0));
        let bump = generation.clone();
        let group_commit_max = config.group_commit_max.max(1);
        std::thread::Builder::new()
            .name("index-writer".into())
            .spawn(move || writer_loop(conn, rx, group_commit_max, barrier, bump))
            .map_err(|e| IndexError::CommitFailed(format!("cannot start writer thread: {e}")))?;
        Ok(Index {
            path: path.to_owned(),
            jobs,
            readers: Arc::new(Mutex::new(Vec::new())),
            max_readers: config.reader_connections,
            generation,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes after every write batch (committed or not) of this process.
    /// Read it before a query: a result cached under generation `g` is still
    /// current while `generation() == g`.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Runs `f` on a read connection, off the async executor.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Reader<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<IndexError> + Send + 'static,
    {
        let this = self.clone();
        crate::tasks::blocking(move || this.read_blocking(f))
            .await
            .map_err(|_| E::from(IndexError::WriterGone))?
    }

    /// Like [`Index::read`], on the calling thread (for CLI tools and blocking code).
    pub fn read_blocking<T, E>(&self, f: impl FnOnce(&Reader<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<IndexError>,
    {
        let pooled = self
            .readers
            .lock()
            .expect("reader pool lock poisoned")
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_reader(&self.path).map_err(E::from)?,
        };
        let out = f(&Reader { conn: &conn });
        let mut pool = self.readers.lock().expect("reader pool lock poisoned");
        if pool.len() < self.max_readers {
            pool.push(conn);
        }
        out
    }

    /// Queues `f` for the writer thread and waits until its batch has committed.
    /// `f` runs inside a savepoint: if it fails, only its own changes are undone.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<IndexError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.submit(f, reply)?;
        rx.await.map_err(|_| E::from(IndexError::WriterGone))?
    }

    /// Like [`Index::write`], blocking the calling thread (not for async code).
    pub fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<IndexError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.submit(f, reply)?;
        rx.blocking_recv()
            .map_err(|_| E::from(IndexError::WriterGone))?
    }

    fn submit<T, E, F>(&self, f: F, reply: oneshot::Sender<Result<T, E>>) -> Result<(), E>
    where
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<IndexError> + Send + 'static,
    {
        let job: Job = Box::new(move |ctx| {
            let outcome = in_savepoint(ctx, f);
            let failed = outcome.is_err();
            let done: Completion = Box::new(move |commit_error| {
                let result = match (outcome, commit_error) {
                    (Ok(v), None) => Ok(v),
                    (Ok(_), Some(e)) => Err(E::from(IndexError::CommitFailed(e.to_string()))),
                    (Err(e), _) => Err(e),
                };
                let _ = reply.send(result);
            });
            (done, failed)
        });
        self.jobs
            .send(job)
            .map_err(|_| E::from(IndexError::WriterGone))
    }
}

fn open_reader(path: &Path) -> Result<Connection> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(BUSY_TIMEOUT)?;
    Ok(c)
}

fn in_savepoint<T, E: From<IndexError>>(
    ctx: &mut WriteCtx<'_>,
    f: impl FnOnce(&mut WriteCtx<'_>) -> Result<T, E>,
) -> Result<T, E> {
    ctx.conn()
        .execute_batch("SAVEPOINT job")
        .map_err(|e| E::from(IndexError::from(e)))?;
    match f(ctx) {
        Ok(v) => {
            ctx.conn()
                .execute_batch("RELEASE job")
                .map_err(|e| E::from(IndexError::from(e)))?;
            Ok(v)
        }
        Err(e) => {
            // The job's pending durability work stays registered: a file it
            // installed before failing is still on disk and harmless (an
            // unreferenced blob GC will collect), and syncing one folder too
            // many costs nothing. A failed ROLLBACK TO (SQLite may already
            // have rolled the whole transaction back) is seen by the writer
            // through `is_autocommit`.
            let _ = ctx.conn().execute_batch("ROLLBACK TO job; RELEASE job");
            Err(e)
        }
    }
}

/// Runs one job; a panicking job is rolled back to its savepoint and answered
/// with an error, so one bug cannot take the writer thread (and every later
/// write) down with it. Returns the job's completion and whether it failed.
fn run_job(job: Job, ctx: &mut WriteCtx<'_>) -> (Completion, bool) {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(ctx))) {
        Ok(done) => done,
        Err(_) => {
            tracing::error!("an index write job panicked; its changes were rolled back");
            let _ = ctx.conn().execute_batch("ROLLBACK TO job; RELEASE job");
            // The job's reply channel was dropped during unwinding: its caller sees
            // `WriterGone` (503) and the batch commits without it.
            (Box::new(|_| {}), true)
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::UnboundedReceiver<Job>,
    group_commit_max: usize,
    barrier: DurabilityBarrier,
    generation: Arc<AtomicU64>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(group_commit_max);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < group_commit_max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch.drain(..), &barrier, &generation);
    }
    // Every handle is gone: leave a compact WAL behind for the next start.
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

/// Metric names of the index writer (Prometheus text on `GET /metrics`).
pub mod metric {
    /// Write jobs committed together by one transaction (histogram).
    pub const BATCH_SIZE: &str = "media_store_index_writer_batch_size";
    /// Time from a batch's `BEGIN` to its `COMMIT` returning, durability
    /// barrier included (histogram).
    pub const COMMIT_SECONDS: &str = "media_store_index_writer_commit_seconds";
    /// Batches that did not commit (counter).
    pub const FAILED_BATCHES: &str = "media_store_index_writer_failed_batches_total";
    /// How long each write transaction of lifecycle work (GC, archival,
    /// retention, fsck repair) held SQLite's write lock, which the writer's
    /// batches wait for (histogram).
    pub const MAINTENANCE_LOCK_SECONDS: &str = "media_store_maintenance_write_lock_held_seconds";
}

fn run_batch(
    conn: &mut Connection,
    jobs: impl ExactSizeIterator<Item = Job>,
    barrier: &DurabilityBarrier,
    generation: &AtomicU64,
) {
    let started = std::time::Instant::now();
    metrics::histogram!(metric::BATCH_SIZE).record(jobs.len() as f64);
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let err = IndexError::from(e);
            tracing::error!(error = %err, "index writer cannot begin a transaction");
            // Dropping a job unrun drops its reply channel: its caller gets
            // `WriterGone` (503) and may retry.
            jobs.for_each(drop);
            return;
        }
    };
    let mut pending = Pending::default();
    let mut completions: Vec<Completion> = Vec::new();
    let mut aborted: Option<IndexError> = None;
    {
        let mut ctx = WriteCtx {
            tx: Tx {
                reader: Reader { conn: &tx },
            },
            pending: &mut pending,
        };
        for job in jobs {
            if aborted.is_some() {
                // The batch's transaction is gone: run nothing more in it.
                drop(job);
                continue;
            }
            let (done, failed) = run_job(job, &mut ctx);
            completions.push(done);
            if failed && tx.is_autocommit() {
                // On SQLITE_FULL, IOERR or NOMEM SQLite may roll back the whole
                // transaction: later savepoints would open transactions of their
                // own and commit without the barrier. Fail the whole batch.
                aborted = Some(IndexError::CommitFailed(
                    "the batch's transaction was rolled back by SQLite".into(),
                ));
            }
        }
    }
    // The barrier runs whatever the outcome: a blob renamed into place by a
    // failed batch must not be trusted by a later dedup unless durable.
    let synced =
        barrier(pending).map_err(|e| IndexError::CommitFailed(format!("durability barrier: {e}")));
    let outcome = match aborted {
        Some(e) => {
            drop(tx);
            Err(e)
        }
        None => synced.and_then(|()| tx.commit().map_err(IndexError::from)),
    };
    metrics::histogram!(metric::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    if let Err(e) = &outcome {
        metrics::counter!(metric::FAILED_BATCHES).increment(1);
        tracing::error!(error = %e, "index batch did not commit");
    }
    // After the commit, before any caller learns of it (see `Index::generation`).
    generation.fetch_add(1, Ordering::AcqRel);
    for done in completions {
        done(outcome.as_ref().err());
    }
}

/// A connection of its own for lifecycle work (`gc`, `fsck`, retention, and
/// the daemon's background GC): long scans read on it, and deletions run in
/// short `BEGIN IMMEDIATE` transactions, SQLite's write lock, which the
/// daemon's upload commits also take. Whichever comes second sees the other's
/// result whole.
pub struct Maintenance {
    conn: Connection,
    lock: WriteLockStats,
    /// Counters of outside work, sampled around each transaction: see
    /// [`Maintenance::watch_work`].
    work: Vec<(&'static str, WorkCounter)>,
}

/// A monotonic counter read by [`Maintenance::watch_work`].
type WorkCounter = Box<dyn Fn() -> u64 + Send>;

/// How a [`Maintenance`] connection used SQLite's write lock: every upload
/// commit of the daemon waits while it is held (up to its busy timeout), so
/// lifecycle work keeps its transactions short and does its long work (hashing,
/// fsyncs) before taking the lock or after releasing it (storage-layout.md L7,
/// A7).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WriteLockStats {
    /// Write transactions (`BEGIN IMMEDIATE` … `COMMIT`/`ROLLBACK`).
    pub transactions: u64,
    /// Total time the lock was held, from `BEGIN IMMEDIATE` acquiring it to
    /// `COMMIT` returning (the WAL fsync included), in microseconds.
    pub held_us_total: u64,
    /// The longest single hold, in microseconds.
    pub held_us_max: u64,
    /// Each watched counter's growth while a transaction was open (see
    /// [`Maintenance::watch_work`]).
    pub work_under_lock: std::collections::BTreeMap<&'static str, u64>,
}

impl WriteLockStats {
    fn record(&mut self, held: Duration, work: impl Iterator<Item = (&'static str, u64)>) {
        let us = held.as_micros().min(u64::MAX as u128) as u64;
        self.transactions += 1;
        self.held_us_total = self.held_us_total.saturating_add(us);
        self.held_us_max = self.held_us_max.max(us);
        for (name, n) in work {
            let total = self.work_under_lock.entry(name).or_default();
            *total = total.saturating_add(n);
        }
        metrics::histogram!(metric::MAINTENANCE_LOCK_SECONDS).record(held.as_secs_f64());
    }
}

impl Maintenance {
    /// Opens a data folder's existing index, refusing a folder that has none:
    /// on a wrong or unmounted path, an empty new index would make every blob
    /// look unknown to GC.
    pub fn open_existing(data_dir: &Path) -> Result<Maintenance> {
        let path = path_in(data_dir);
        if !path.is_file() {
            return Err(IndexError::NoIndex {
                data_dir: data_dir.to_owned(),
                path,
            });
        }
        let conn = open_connection(&path)?;
        conn.busy_handler(Some(poll_for_lock))?;
        Ok(Maintenance::new(conn))
    }

    /// Opens (creating and migrating if needed) the index of a new data
    /// folder; for set-up and tests, where no index yet is expected.
    pub fn create(data_dir: &Path) -> Result<Maintenance> {
        let conn = open_connection(&path_in(data_dir))?;
        conn.busy_handler(Some(poll_for_lock))?;
        Ok(Maintenance::new(conn))
    }

    fn new(conn: Connection) -> Maintenance {
        Maintenance {
            conn,
            lock: WriteLockStats::default(),
            work: Vec::new(),
        }
    }

    /// Counts outside work done while this connection holds the write lock:
    /// `counter` (monotonic) is read before and after each transaction, and
    /// the difference added to [`WriteLockStats::work_under_lock`] under
    /// `name` (watching a name again replaces its counter). Lifecycle runs
    /// watch the blob store's hashed bytes and syncs, so that their reports
    /// show any such work done under the lock (there must be none).
    pub fn watch_work(&mut self, name: &'static str, counter: impl Fn() -> u64 + Send + 'static) {
        self.work.retain(|(n, _)| *n != name);
        self.work.push((name, Box::new(counter)));
    }

    /// The write-lock use since the last call (or since opening), and resets it.
    pub fn take_lock_stats(&mut self) -> WriteLockStats {
        std::mem::take(&mut self.lock)
    }

    /// Reads outside any write transaction.
    pub fn reader(&self) -> Reader<'_> {
        Reader { conn: &self.conn }
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction and commits if it succeeds.
    pub fn immediate<T, E: From<IndexError>>(
        &mut self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| E::from(IndexError::from(e)))?;
        // The lock is held from here until the commit (or rollback) returns.
        let locked = std::time::Instant::now();
        let before: Vec<u64> = self.work.iter().map(|(_, w)| w()).collect();
        let out = f(&Tx {
            reader: Reader { conn: &tx },
        })
        .and_then(|out| {
            tx.commit()
                .map(|()| out)
                .map_err(|e| E::from(IndexError::from(e)))
        });
        let held = locked.elapsed();
        let work = self.work.iter().zip(before);
        self.lock
            .record(held, work.map(|((name, w), b)| (*name, w() - b)));
        out
    }
}

/// Busy handler for lifecycle connections: retry every millisecond for up to
/// 60 s. SQLite's default handler sleeps up to 100 ms between tries, which
/// next to a daemon committing uploads back to back makes every GC batch wait
/// hundreds of milliseconds for a lock that is free for short moments.
fn poll_for_lock(retries: i32) -> bool {
    std::thread::sleep(Duration::from_millis(1));
    retries < 60_000
}

/// `[index]`: the SQLite index writer and readers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// Most uploads committed by one SQLite transaction (group commit).
    pub group_commit_max: usize,
    /// Read connections kept open for metadata queries.
    pub reader_connections: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            group_commit_max: 128,
            reader_connections: 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_barrier() -> DurabilityBarrier {
        Arc::new(|_| Ok(()))
    }

    fn open(dir: &tempfile::TempDir) -> Index {
        let config = IndexConfig {
            group_commit_max: 64,
            reader_connections: 2,
        };
        Index::open(&dir.path().join("i.db"), &config, no_barrier()).unwrap()
    }

    fn put_meta(ctx: &WriteCtx<'_>, key: &str) -> Result<()> {
        ctx.conn()
            .execute("INSERT INTO meta (key, value) VALUES (?1, 'v')", [key])?;
        Ok(())
    }

    fn meta_keys(index: &Index) -> Vec<String> {
        index
            .read_blocking(|r| -> Result<Vec<String>> {
                let mut s = r.conn.prepare("SELECT key FROM meta ORDER BY key")?;
                let rows = s.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .unwrap()
    }

    #[tokio::test]
    async fn a_panicking_job_does_not_stop_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(&dir);
        let failed = index
            .write(|ctx| -> Result<()> {
                put_meta(ctx, "a")?;
                panic!("bug in a job");
            })
            .await;
        assert!(matches!(failed, Err(IndexError::WriterGone)));
        index.write(|ctx| put_meta(ctx, "b")).await.unwrap();
        assert_eq!(meta_keys(&index), vec!["b".to_string()]);
    }

    /// A caller's own error type, to show it passes through the writer as itself.
    #[derive(Debug, PartialEq)]
    enum Odd {
        Odd(i64),
        Index(String),
    }

    impl From<IndexError> for Odd {
        fn from(e: IndexError) -> Self {
            Odd::Index(e.to_string())
        }
    }

    #[tokio::test]
    async fn failing_job_does_not_undo_its_batch_mates_and_keeps_its_error_type() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(&dir);
        let mut handles = Vec::new();
        for i in 0..20i64 {
            let index = index.clone();
            handles.push(tokio::spawn(async move {
                index
                    .write(move |ctx| {
                        put_meta(ctx, &format!("k{i}"))?;
                        if i % 2 == 1 {
                            return Err(Odd::Odd(i));
                        }
                        Ok(i)
                    })
                    .await
            }));
        }
        let mut ok = 0;
        for (i, h) in handles.into_iter().enumerate() {
            match h.await.unwrap() {
                Ok(v) => {
                    assert_eq!(v, i as i64);
                    ok += 1
                }
                Err(e) => assert_eq!(e, Odd::Odd(i as i64)),
            }
        }
        assert_eq!(ok, 10);
        assert_eq!(meta_keys(&index).len(), 10);
    }

    #[tokio::test]
    async fn the_barrier_runs_before_commit_and_a_failing_barrier_fails_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let config = IndexConfig {
            group_commit_max: 64,
            reader_connections: 2,
        };
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = fail.clone();
        let barrier: DurabilityBarrier = Arc::new(move |_| {
            if flag.load(Ordering::SeqCst) {
                Err(std::io::Error::other("disk gone"))
            } else {
                Ok(())
            }
        });
        let index = Index::open(&dir.path().join("i.db"), &config, barrier).unwrap();
        let failed = index.write(|ctx| put_meta(ctx, "lost")).await;
        assert!(
            matches!(failed, Err(IndexError::CommitFailed(_))),
            "{failed:?}"
        );
        assert!(
            meta_keys(&index).is_empty(),
            "nothing commits past a failed barrier"
        );
        fail.store(false, Ordering::SeqCst);
        index.write(|ctx| put_meta(ctx, "kept")).await.unwrap();
        assert_eq!(meta_keys(&index), vec!["kept".to_string()]);
    }

    /// On SQLITE_FULL, IOERR or NOMEM SQLite may roll the whole transaction
    /// back; a job here does the same by hand. The rest of its batch must fail
    /// (not commit on its own, outside the barrier), and the writer go on.
    #[tokio::test]
    async fn a_batch_whose_transaction_sqlite_rolled_back_fails_whole() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(&dir);
        // Hold the writer busy so that the next two jobs form one batch.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let busy = {
            let index = index.clone();
            tokio::spawn(async move {
                index
                    .write(move |ctx| {
                        wait.recv().unwrap();
                        put_meta(ctx, "before")
                    })
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let failing = {
            let index = index.clone();
            tokio::spawn(async move {
                index
                    .write(|ctx| -> Result<()> {
                        put_meta(ctx, "a")?;
                        ctx.conn().execute_batch("ROLLBACK")?;
                        Err(IndexError::DiskFull)
                    })
                    .await
            })
        };
        let mate = {
            let index = index.clone();
            tokio::spawn(async move { index.write(|ctx| put_meta(ctx, "b")).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        assert!(matches!(failing.await.unwrap(), Err(IndexError::DiskFull)));
        let mate = mate.await.unwrap();
        assert!(
            mate.is_err(),
            "a batch mate must not commit alone: {mate:?}"
        );
        index.write(|ctx| put_meta(ctx, "after")).await.unwrap();
        assert_eq!(
            meta_keys(&index),
            vec!["after".to_string(), "before".to_string()]
        );
    }

    #[tokio::test]
    async fn sqlite_passes_the_index_contract() {
        let dir = tempfile::tempdir().unwrap();
        let config = IndexConfig::default();
        let index = Index::open(&path_in(dir.path()), &config, no_barrier()).unwrap();
        let mut maintenance = Maintenance::open_existing(dir.path()).unwrap();
        contract::run(&index, &mut maintenance).await;
    }
}
