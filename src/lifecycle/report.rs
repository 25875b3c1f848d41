//! Output helpers for the `gc` and `fsck` commands: a progress bar on a
//! terminal only, and the write-lock use each run reports.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use crate::index::Maintenance;
use crate::store::BlobStore;

/// A progress bar on stderr when it is a terminal; hidden otherwise (logs,
/// systemd journal, `--json` pipelines stay clean).
pub fn progress(len: u64, what: &str, enabled: bool) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} ({eta})")
            .expect("is a bug: literal progress template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

const HASHED: &str = "bytes_hashed";
const SYNCS: &str = "syncs";

/// How a lifecycle run used the index's write lock, in its summary: the
/// daemon's uploads wait while it is held, so long work (hashing, fsyncs) is
/// done before a transaction starts (storage-layout.md L7, A7).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct WriteLockUse {
    /// Write transactions the run committed (or rolled back).
    pub transactions: u64,
    /// Time the lock was held, all transactions together (µs).
    pub held_us_total: u64,
    /// The longest hold of one transaction (µs).
    pub held_us_max: u64,
    /// Bytes the run's blob store handle hashed while one of the run's
    /// transactions was open: 0 unless verification happened under the lock.
    /// (Every run, the daemon's background GC included, opens a store handle
    /// of its own, so nothing else is counted here.)
    pub bytes_hashed_under_lock: u64,
    /// File and folder syncs (fsync, fdatasync, syncfs) the run's blob store
    /// handle made while one of the run's transactions was open: 0 unless
    /// durability work happened under the lock.
    pub syncs_under_lock: u64,
}

impl WriteLockUse {
    /// One line for the text reports (empty when no transaction ran).
    pub fn to_text(&self) -> String {
        if self.transactions == 0 {
            return String::new();
        }
        format!(
            "write lock: {} transactions, held {:.1} ms in all, {:.1} ms at most\n",
            self.transactions,
            self.held_us_total as f64 / 1000.0,
            self.held_us_max as f64 / 1000.0
        )
    }

    /// Starts counting for a run: resets the connection's statistics and
    /// watches the store's hashing.
    pub(crate) fn start(index: &mut Maintenance, store: &BlobStore) {
        index.watch_work(HASHED, store.hashed_counter());
        index.watch_work(SYNCS, store.syncs_counter());
        index.take_lock_stats();
    }

    /// What the connection saw since [`WriteLockUse::start`].
    pub(crate) fn take(index: &mut Maintenance) -> WriteLockUse {
        let s = index.take_lock_stats();
        WriteLockUse {
            transactions: s.transactions,
            held_us_total: s.held_us_total,
            held_us_max: s.held_us_max,
            bytes_hashed_under_lock: s.work_under_lock.get(HASHED).copied().unwrap_or(0),
            syncs_under_lock: s.work_under_lock.get(SYNCS).copied().unwrap_or(0),
        }
    }
}
