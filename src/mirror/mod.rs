//! The MySQL mirror: keeps the chat backend's `media_files` table equal to the
//! index, and answers the GC safety belt ("is this media id still referenced
//! by a chat message?").
//!
//! The index stays the source of truth; uploads never wait for MySQL.
//! - `outbox`: the SQLite side. Triggers on `media` append the changed id to
//!   `mysql_outbox` in the same transaction as the change (migration 0003), so
//!   no code path can change media without the mirror hearing of it.
//! - `worker`: one std thread (the `mysql` crate is blocking) that drains the
//!   outbox in order, in batches: it re-reads each id's current row and upserts
//!   it into MySQL, or deletes it there; entries are deleted only after MySQL
//!   has committed, so replays are harmless and nothing is lost. MySQL down,
//!   slow or restarted: reconnect with capped exponential backoff.
//! - `reconcile`: compares the whole table with the index in id chunks and
//!   queues every difference into the outbox (so repairs take the same path).
//! - `mysql`: connection options, the MySQL migrations, statements, and
//!   [`MysqlReferences`] (the `ExternalReferences` implementation).
//! - `import`: `media-store import`, which adopts the chat backend's own
//!   `media_files` rows (fetches each file, stores it under the same id).
//!
//! Only rows media-store wrote (`media_store_rows`) are ever changed or
//! deleted in MySQL; new media ids start above MySQL's `max(id)` (M6, M7).
//!
//! Writes to SQLite only to ack or queue outbox entries, to raise the media id
//! floor, and (import) to record adopted media. Invariants upheld:
//! storage-layout.md, "MySQL mirror" (M1–M7).

pub mod config;
pub mod import;
pub mod mysql;
pub mod reconcile;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::{Value, json};

pub use self::config::MysqlConfig;
pub use self::mysql::{MysqlReferences, mirror_file_type};
pub use self::worker::{Drained, ack, drain_all, drain_batch, raise_id_floor};
use crate::clock::SharedClock;
use crate::error::{Classify, ErrorKind};
use crate::index::{Index, IndexError, Maintenance};

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("MySQL request failed")]
    Mysql(#[from] ::mysql::Error),
    #[error("index request failed")]
    Index(#[from] IndexError),
    #[error("mysql.url is not a valid MySQL URL")]
    Url(#[source] ::mysql::UrlError),
    #[error("another media-store process is syncing to this MySQL database (mirror lock held)")]
    Locked,
    #[error(
        "MySQL schema is at version {found}, this media-store needs {needed}: run `media-store migrate --mysql URL`"
    )]
    Schema { found: u32, needed: u32 },
    #[error("media id {0} does not fit media_files.id (INT)")]
    IdOutOfRange(i64),
}

impl Classify for MirrorError {
    fn kind(&self) -> ErrorKind {
        match self {
            MirrorError::Index(e) => e.kind(),
            MirrorError::Mysql(_) | MirrorError::Locked => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            MirrorError::Index(e) => e.code(),
            MirrorError::Mysql(_) | MirrorError::Locked => "mysql_unavailable",
            _ => "internal",
        }
    }
}

pub type Result<T, E = MirrorError> = std::result::Result<T, E>;

/// What `/healthz` and the metrics show about the mirror.
#[derive(Debug, Default, Clone)]
struct Status {
    connected: bool,
    last_error: Option<String>,
    /// Unix ms of the last batch MySQL committed.
    last_sync_ms: Option<i64>,
    /// Changes not mirrored since start because `media_files` holds a row of
    /// the chat backend under the same id (M6).
    foreign_conflicts: u64,
}

/// State shared by the daemon and its worker thread.
struct Shared {
    /// std Mutex: held only to copy or update a few fields, never across I/O.
    status: Mutex<Status>,
    /// Set when the daemon drops its handle; the worker exits at its next check.
    stop: Mutex<bool>,
    /// Wakes the worker from a poll or backoff wait (stop).
    wake: Condvar,
    /// `public_base_url`, live: `file_url` is derived from it.
    base_url: ArcSwap<String>,
    /// The base URL changed at runtime: every file_url must be rewritten.
    reconcile_requested: AtomicBool,
    /// Unix ms (the injected clock) of the last full reconcile (kept in the
    /// index's `meta`): the periodic reconcile (`mysql.reconcile_interval`)
    /// counts from it.
    last_reconcile_ms: AtomicI64,
}

impl Shared {
    fn stopped(&self) -> bool {
        *self.stop.lock().expect("sync stop lock poisoned")
    }

    /// Sleeps up to `d`; returns early (true) when stopping.
    fn wait(&self, d: Duration) -> bool {
        let guard = self.stop.lock().expect("sync stop lock poisoned");
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, d, |stop| !*stop)
            .expect("sync stop lock poisoned");
        *guard
    }

    fn set_status(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().expect("sync status lock poisoned"));
    }
}

/// The daemon's handle on the mirror. Dropping it stops the worker thread
/// (which may finish its current MySQL round trip first; an unacked batch is
/// simply sent again next time).
pub struct MysqlSync {
    shared: Option<Arc<Shared>>,
}

impl MysqlSync {
    /// Enables or disables the outbox triggers to match the config and, with a
    /// MySQL URL, starts the worker thread. Called once at daemon start, before
    /// serving (it opens its own short-lived connection to the index file).
    pub fn start(
        cfg: &MysqlConfig,
        public_base_url: &str,
        data_dir: &std::path::Path,
        index: &Index,
        clock: SharedClock,
    ) -> std::result::Result<MysqlSync, anyhow::Error> {
        // Its own short-lived connection: the daemon is not serving yet, and
        // this runs on the async runtime, where the writer cannot be awaited
        // blockingly.
        let mut conn = Maintenance::open_existing(data_dir)?;
        if !cfg.enabled() {
            let dropped = conn.immediate(|tx| tx.outbox_disable())?;
            if dropped > 0 {
                tracing::warn!(
                    entries = dropped,
                    "mysql.url is empty: dropped the unsent MySQL outbox; enabling MySQL later runs a full reconcile"
                );
            }
            return Ok(MysqlSync { shared: None });
        }
        let opts = mysql::opts(cfg)?;
        if conn.immediate(|tx| tx.outbox_enable())? {
            tracing::info!("MySQL mirror enabled: a full reconcile will run once connected");
        }
        // M7: the first time this database is mirrored, raise the id floor
        // before serving, so no upload takes an id the chat backend used. Later
        // starts leave it to the worker's connect (the floor only ever rises).
        let place = mysql::describe(&opts);
        if !conn.reader().id_floor_checked(&place)? {
            match mysql::connect(&opts).and_then(|mut c| mysql::max_id(&mut c)) {
                Ok(max) => {
                    conn.immediate(|tx| {
                        tx.media_id_floor(max)?;
                        tx.mark_id_floor_checked(&place)
                    })?;
                }
                Err(e) => tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(e)),
                    mysql = %place,
                    "MySQL unreachable at the first start with this database: media ids are raised above media_files' largest once the worker connects; uploads meanwhile may collide with the chat backend's ids (such rows are never overwritten, only reported)"
                ),
            }
        }
        // The periodic reconcile counts from the last one, across restarts (a
        // daemon restarted daily must still reconcile); never one: due now.
        let last_reconcile_ms = conn.reader().last_reconcile_ms()?.unwrap_or(0);
        drop(conn);
        let shared = Arc::new(Shared {
            status: Mutex::new(Status::default()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            base_url: ArcSwap::from_pointee(public_base_url.to_owned()),
            reconcile_requested: AtomicBool::new(false),
            last_reconcile_ms: AtomicI64::new(last_reconcile_ms),
        });
        let worker = worker::Worker {
            index: index.clone(),
            opts,
            cfg: cfg.clone(),
            shared: shared.clone(),
            clock,
        };
        std::thread::Builder::new()
            .name("mysql-sync".into())
            .spawn(move || worker.run())?;
        Ok(MysqlSync {
            shared: Some(shared),
        })
    }

    /// A handle with no worker (mirror disabled); for tools that build state by hand.
    pub fn disabled() -> MysqlSync {
        MysqlSync { shared: None }
    }

    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Applies a reloaded `public_base_url`: every mirrored `file_url` is
    /// rewritten by a reconcile when it changed.
    pub fn set_public_base_url(&self, base: &str) {
        if let Some(shared) = &self.shared
            && shared.base_url.load().as_str() != base
        {
            shared.base_url.store(Arc::new(base.to_owned()));
            shared.reconcile_requested.store(true, Ordering::SeqCst);
        }
    }

    /// The `mysql` object of `/healthz`. `backlog` is the outbox length (None
    /// when the index could not be read).
    pub fn health(&self, backlog: Option<i64>) -> Value {
        let Some(shared) = &self.shared else {
            return json!({ "enabled": false, "connected": false, "backlog": 0, "last_error": null, "last_sync_at": null, "foreign_conflicts": 0 });
        };
        let s = shared
            .status
            .lock()
            .expect("sync status lock poisoned")
            .clone();
        json!({
            "enabled": true,
            "connected": s.connected,
            "backlog": backlog,
            "last_error": s.last_error,
            "last_sync_at": s.last_sync_ms.map(crate::timefmt::rfc3339_ms),
            "foreign_conflicts": s.foreign_conflicts,
        })
    }
}

impl Drop for MysqlSync {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            *shared.stop.lock().expect("sync stop lock poisoned") = true;
            shared.wake.notify_all();
        }
    }
}

/// Metric names (Prometheus text on `GET /metrics`).
pub mod metric {
    /// Outbox entries not yet committed to MySQL (gauge).
    pub const BACKLOG: &str = "media_store_mysql_outbox_backlog";
    /// 1 while the worker holds a working MySQL connection (gauge).
    pub const CONNECTED: &str = "media_store_mysql_connected";
    /// Media rows upserted or deleted in MySQL (counter).
    pub const ROWS_SYNCED: &str = "media_store_mysql_rows_synced_total";
    /// Failed sync attempts (counter).
    pub const ERRORS: &str = "media_store_mysql_sync_errors_total";
    /// Seconds from a media change's commit to its MySQL commit (histogram).
    pub const LAG: &str = "media_store_mysql_sync_lag_seconds";
    /// Changes not mirrored because `media_files` holds a row of the chat
    /// backend under the same id (counter; the row is never overwritten).
    pub const FOREIGN_CONFLICTS: &str = "media_store_mysql_foreign_conflicts_total";
}
