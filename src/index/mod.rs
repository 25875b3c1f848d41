//! The embedded SQLite index: the source of truth for media rows and blob
//! reference counts.
//!
//! Writes go through one dedicated writer thread that owns the write connection
//! and runs queued jobs in one transaction (group commit), each job inside its own
//! savepoint so one job's failure does not undo the others. Before the commit, the
//! writer runs the durability barrier for every folder the jobs changed (see
//! storage-layout.md, "Group commit"). Reads use a small pool of read-only
//! connections inside `spawn_blocking`. This module never opens blob files.

pub mod media;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use rusqlite_migration::{M, Migrations};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index query failed")]
    Sqlite(#[from] rusqlite::Error),
    #[error("index migration failed")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("index is busy")]
    Busy,
    #[error("index writer has stopped")]
    WriterGone,
    #[error("index commit failed: {0}")]
    CommitFailed(String),
    /// A job's own failure that is not a database error (e.g. the file step of an upload).
    #[error("{message}")]
    Job {
        kind: ErrorKind,
        code: &'static str,
        message: String,
    },
}

impl Classify for IndexError {
    fn kind(&self) -> ErrorKind {
        match self {
            IndexError::Busy | IndexError::WriterGone => ErrorKind::Unavailable,
            IndexError::Sqlite(e) if is_busy(e) => ErrorKind::Unavailable,
            IndexError::Sqlite(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) =>
            {
                ErrorKind::InsufficientStorage
            }
            IndexError::Job { kind, .. } => *kind,
            _ => ErrorKind::Internal,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            IndexError::Job { code, .. } => code,
            e if e.kind() == ErrorKind::Unavailable => "index_unavailable",
            e if e.kind() == ErrorKind::InsufficientStorage => "disk_full",
            _ => "internal",
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

/// Migrations, embedded from `migrations/sqlite/` in order.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../../migrations/sqlite/0001_initial.sql")),
        M::up(include_str!("../../migrations/sqlite/0002_lifecycle.sql")),
        M::up(include_str!(
            "../../migrations/sqlite/0003_mysql_outbox.sql"
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
pub fn open_connection(path: &Path) -> Result<Connection> {
    let mut conn = Connection::open(path)?;
    configure(&conn)?;
    migrations().to_latest(&mut conn)?;
    Ok(conn)
}

/// Called by the writer before each commit with the folders the batch changed;
/// it must make their entries durable (see `store::make_dirs_durable`).
pub type DurabilityBarrier = fn(&[PathBuf]) -> std::io::Result<()>;

/// What a write job sees: the batch's transaction and the barrier list.
pub struct WriteCtx<'a> {
    pub tx: &'a rusqlite::Transaction<'a>,
    durable_dirs: &'a mut Vec<PathBuf>,
}

impl WriteCtx<'_> {
    /// Registers folders whose entries must be durable before this batch commits.
    pub fn require_durable(&mut self, dirs: impl IntoIterator<Item = PathBuf>) {
        self.durable_dirs.extend(dirs);
    }
}

/// Called once the batch's fate is known: `None` when it committed.
type Completion = Box<dyn FnOnce(Option<&IndexError>) + Send>;
type Job = Box<dyn FnOnce(&mut WriteCtx<'_>) -> Completion + Send>;

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
    pub fn open(
        path: &Path,
        group_commit_max: usize,
        max_readers: usize,
        barrier: DurabilityBarrier,
    ) -> Result<Index> {
        let conn = open_connection(path)?;
        let (jobs, rx) = mpsc::unbounded_channel();
        let generation = Arc::new(AtomicU64::new(0));
        let bump = generation.clone();
        std::thread::Builder::new()
            .name("index-writer".into())
            .spawn(move || writer_loop(conn, rx, group_commit_max, barrier, bump))
            .map_err(|e| IndexError::CommitFailed(format!("cannot start writer thread: {e}")))?;
        Ok(Index {
            path: path.to_owned(),
            jobs,
            readers: Arc::new(Mutex::new(Vec::new())),
            max_readers,
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
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        crate::tasks::blocking(move || this.read_blocking(f))
            .await
            .map_err(|_| IndexError::WriterGone)?
    }

    /// Like [`Index::read`], on the calling thread (for CLI tools and blocking code).
    pub fn read_blocking<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = self
            .readers
            .lock()
            .expect("reader pool lock poisoned")
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(BUSY_TIMEOUT)?;
                c
            }
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().expect("reader pool lock poisoned");
        if pool.len() < self.max_readers {
            pool.push(conn);
        }
        out
    }

    /// Queues `f` for the writer thread and waits until its batch has committed.
    /// `f` runs inside a savepoint: if it fails, only its own changes are undone.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.submit(f, reply)?;
        rx.await.map_err(|_| IndexError::WriterGone)?
    }

    /// Like [`Index::write`], blocking the calling thread (not for async code).
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.submit(f, reply)?;
        rx.blocking_recv().map_err(|_| IndexError::WriterGone)?
    }

    fn submit<T, F>(&self, f: F, reply: oneshot::Sender<Result<T>>) -> Result<()>
    where
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let job: Job = Box::new(move |ctx| {
            let outcome = in_savepoint(ctx, f);
            Box::new(move |commit_error| {
                let result = match (outcome, commit_error) {
                    (Ok(v), None) => Ok(v),
                    (Ok(_), Some(e)) => Err(IndexError::CommitFailed(e.to_string())),
                    (Err(e), _) => Err(e),
                };
                let _ = reply.send(result);
            })
        });
        self.jobs.send(job).map_err(|_| IndexError::WriterGone)
    }
}

fn in_savepoint<T>(
    ctx: &mut WriteCtx<'_>,
    f: impl FnOnce(&mut WriteCtx<'_>) -> Result<T>,
) -> Result<T> {
    ctx.tx.execute_batch("SAVEPOINT job")?;
    match f(ctx) {
        Ok(v) => {
            ctx.tx.execute_batch("RELEASE job")?;
            Ok(v)
        }
        Err(e) => {
            // The job's folders stay registered: a file it installed before failing is
            // still on disk and harmless (an unreferenced blob GC will collect), and
            // syncing one folder too many costs nothing.
            ctx.tx.execute_batch("ROLLBACK TO job; RELEASE job")?;
            Err(e)
        }
    }
}

/// Runs one job; a panicking job is rolled back to its savepoint and answered
/// with an error, so one bug cannot take the writer thread (and every later
/// write) down with it.
fn run_job(job: Job, ctx: &mut WriteCtx<'_>) -> Completion {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(ctx))) {
        Ok(done) => done,
        Err(_) => {
            tracing::error!("an index write job panicked; its changes were rolled back");
            let _ = ctx.tx.execute_batch("ROLLBACK TO job; RELEASE job");
            // The job's reply channel was dropped during unwinding: its caller sees
            // `WriterGone` (503) and the batch commits without it.
            Box::new(|_| {})
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
        run_batch(&mut conn, batch.drain(..), barrier, &generation);
    }
    // Every handle is gone: leave a compact WAL behind for the next start.
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

fn run_batch(
    conn: &mut Connection,
    jobs: impl Iterator<Item = Job>,
    barrier: DurabilityBarrier,
    generation: &AtomicU64,
) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let err = if is_busy(&e) {
                IndexError::Busy
            } else {
                IndexError::Sqlite(e)
            };
            tracing::error!(error = %err, "index writer cannot begin a transaction");
            // Dropping a job unrun drops its reply channel: its caller gets
            // `WriterGone` (503) and may retry.
            jobs.for_each(drop);
            return;
        }
    };
    let mut durable_dirs = Vec::new();
    let completions: Vec<Completion> = {
        let mut ctx = WriteCtx {
            tx: &tx,
            durable_dirs: &mut durable_dirs,
        };
        jobs.map(|job| run_job(job, &mut ctx)).collect()
    };
    let outcome = barrier(&durable_dirs)
        .map_err(|e| IndexError::CommitFailed(format!("durability barrier: {e}")))
        .and_then(|()| tx.commit().map_err(IndexError::from));
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "index batch did not commit");
    }
    // After the commit, before any caller learns of it (see `Index::generation`).
    generation.fetch_add(1, Ordering::AcqRel);
    for done in completions {
        done(outcome.as_ref().err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_barrier(_: &[PathBuf]) -> std::io::Result<()> {
        Ok(())
    }

    #[tokio::test]
    async fn a_panicking_job_does_not_stop_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("i.db"), 64, 2, no_barrier).unwrap();
        let failed = index
            .write(|ctx| -> Result<()> {
                ctx.tx
                    .execute("INSERT INTO meta (key, value) VALUES ('a', 'v')", [])?;
                panic!("bug in a job");
            })
            .await;
        assert!(matches!(failed, Err(IndexError::WriterGone)));
        index
            .write(|ctx| {
                Ok(ctx
                    .tx
                    .execute("INSERT INTO meta (key, value) VALUES ('b', 'v')", [])?)
            })
            .await
            .unwrap();
        let keys: Vec<String> = index
            .read(|c| {
                let mut s = c.prepare("SELECT key FROM meta ORDER BY key")?;
                let rows = s.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .await
            .unwrap();
        assert_eq!(keys, vec!["b".to_string()]);
    }

    #[tokio::test]
    async fn failing_job_does_not_undo_its_batch_mates() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("i.db"), 64, 2, no_barrier).unwrap();
        let mut handles = Vec::new();
        for i in 0..20i64 {
            let index = index.clone();
            handles.push(tokio::spawn(async move {
                index
                    .write(move |ctx| {
                        ctx.tx.execute(
                            "INSERT INTO meta (key, value) VALUES (?1, 'v')",
                            [format!("k{i}")],
                        )?;
                        if i % 2 == 1 {
                            return Err(IndexError::Job {
                                kind: ErrorKind::BadRequest,
                                code: "odd",
                                message: "odd".into(),
                            });
                        }
                        Ok(i)
                    })
                    .await
            }));
        }
        let mut ok = 0;
        for h in handles {
            if h.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 10);
        let n: i64 = index
            .read(|c| Ok(c.query_row("SELECT count(*) FROM meta", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 10);
    }
}
