//! Lifecycle results for the daemon's `/metrics` (README, "Health and
//! metrics"). `media-store gc` and `media-store fsck` run in processes of
//! their own, which no scrape reaches: each run adds its results to a record
//! in the index (`index::runs`), and the daemon exports the records at each
//! scrape. (GC runs, the daemon's own too, also record how much the archive
//! root holds, for the primary/archive split of the stored-blob gauges:
//! `index::Tx::put_archive_stored`.)

use std::collections::BTreeMap;

use super::fsck::FsckSummary;
use super::gc::{self, GcSummary};
use crate::index::{Maintenance, RunFigures};

/// Record names.
const GC_CLI: &str = "gc_cli";
const FSCK: &str = "fsck";

/// Metric names of `media-store fsck` runs, exported by the daemon.
pub mod metric {
    /// Runs, by `result` (`clean`, `problems`, `failed`) (counter).
    pub const FSCK_RUNS: &str = "media_store_fsck_runs_total";
    /// Unix time the last run finished (gauge).
    pub const FSCK_LAST_RUN: &str = "media_store_fsck_last_run_timestamp_seconds";
    /// How long the last run took (gauge).
    pub const FSCK_LAST_DURATION: &str = "media_store_fsck_last_run_duration_seconds";
    /// Blobs the last run checked (gauge).
    pub const FSCK_LAST_CHECKED: &str = "media_store_fsck_last_blobs_checked";
    /// Problems the last run found, by `kind` (`missing`, `corrupt`,
    /// `corrupt_copy`, `count_mismatch`) (gauge).
    pub const FSCK_LAST_PROBLEMS: &str = "media_store_fsck_last_problems";
    /// Copies moved to quarantine by repairs (counter).
    pub const FSCK_QUARANTINED: &str = "media_store_fsck_quarantined_total";
    /// Media marked corrupt by repairs (counter).
    pub const FSCK_MEDIA_MARKED: &str = "media_store_fsck_media_marked_total";
    /// The longest write-lock hold of the last run, by `command` (`gc`,
    /// `fsck`) and `source` (`cli`, `daemon`) (gauge).
    pub const LAST_LOCK_HELD_MAX: &str = "media_store_lifecycle_last_write_lock_held_max_seconds";
    /// How long the last GC run took, by `source` (gauge).
    pub const GC_LAST_DURATION: &str = "media_store_gc_last_run_duration_seconds";
}

fn add(f: &mut RunFigures, name: &str, n: f64) {
    *f.entry(name.to_owned()).or_default() += n;
}

fn set(f: &mut RunFigures, name: &str, n: f64) {
    f.insert(name.to_owned(), n);
}

fn get(f: &RunFigures, name: &str) -> f64 {
    f.get(name).copied().unwrap_or(0.0)
}

/// Adds a `media-store gc` run (`Err`: it failed) to its record. Dry runs
/// change nothing and are not recorded.
pub fn record_gc_cli(
    index: &mut Maintenance,
    run: Result<&GcSummary, ()>,
    now_ms: i64,
) -> anyhow::Result<()> {
    if run.is_ok_and(|s| s.dry_run) {
        return Ok(());
    }
    index.immediate(|tx| -> anyhow::Result<()> {
        let mut f = tx.run_record(GC_CLI)?.unwrap_or_default();
        match run {
            Ok(s) => {
                add(&mut f, "runs_ok", 1.0);
                add(&mut f, "blobs_deleted", s.blobs_deleted as f64);
                add(&mut f, "bytes_freed", s.bytes_freed as f64);
                let expired = s.retention.orphans_expired + s.retention.aged_expired;
                add(&mut f, "media_expired", expired as f64);
                add(&mut f, "blobs_archived", s.blobs_archived as f64);
                add(&mut f, "bytes_archived", s.bytes_archived as f64);
                add(&mut f, "errors", s.errors.len() as f64);
                let aborted = s.multipart_uploads_aborted as f64;
                add(&mut f, "multipart_uploads_aborted", aborted);
                set(&mut f, "last_run_ms", now_ms as f64);
                set(&mut f, "last_duration_ms", s.duration_ms as f64);
                set(
                    &mut f,
                    "last_lock_held_max_us",
                    s.write_lock.held_us_max as f64,
                );
            }
            Err(()) => add(&mut f, "runs_failed", 1.0),
        }
        Ok(tx.put_run_record(GC_CLI, &f)?)
    })
}

/// Adds a `media-store fsck` run (`Err`: it failed) to its record.
pub fn record_fsck(
    index: &mut Maintenance,
    run: Result<&FsckSummary, ()>,
    now_ms: i64,
) -> anyhow::Result<()> {
    index.immediate(|tx| -> anyhow::Result<()> {
        let mut f = tx.run_record(FSCK)?.unwrap_or_default();
        match run {
            Ok(s) => {
                let result = if s.problems() > 0 {
                    "runs_problems"
                } else {
                    "runs_clean"
                };
                add(&mut f, result, 1.0);
                add(&mut f, "quarantined", s.quarantined.len() as f64);
                add(&mut f, "media_marked", s.media_marked as f64);
                set(&mut f, "last_run_ms", now_ms as f64);
                set(&mut f, "last_duration_ms", s.duration_ms as f64);
                set(&mut f, "last_blobs_checked", s.blobs_checked as f64);
                set(&mut f, "last_missing", s.missing.len() as f64);
                set(&mut f, "last_corrupt", s.corrupt.len() as f64);
                set(&mut f, "last_corrupt_copies", s.corrupt_copies.len() as f64);
                let mismatches = s.count_mismatches.len() as f64;
                set(&mut f, "last_count_mismatches", mismatches);
                set(
                    &mut f,
                    "last_lock_held_max_us",
                    s.write_lock.held_us_max as f64,
                );
            }
            Err(()) => add(&mut f, "runs_failed", 1.0),
        }
        Ok(tx.put_run_record(FSCK, &f)?)
    })
}

/// Sets the metrics of the recorded `media-store gc` and `fsck` runs (for a
/// scrape of the daemon's `/metrics`).
pub fn export(records: &BTreeMap<String, RunFigures>) {
    if let Some(f) = records.get(GC_CLI) {
        let counter = |name: &'static str, key: &str| {
            metrics::counter!(name, "source" => "cli").absolute(get(f, key) as u64)
        };
        metrics::counter!(gc::metric::RUNS, "result" => "ok", "source" => "cli")
            .absolute(get(f, "runs_ok") as u64);
        metrics::counter!(gc::metric::RUNS, "result" => "failed", "source" => "cli").absolute(get(
            f,
            "runs_failed",
        )
            as u64);
        counter(gc::metric::BLOBS_DELETED, "blobs_deleted");
        counter(gc::metric::BYTES_FREED, "bytes_freed");
        counter(gc::metric::MEDIA_EXPIRED, "media_expired");
        counter(gc::metric::BLOBS_ARCHIVED, "blobs_archived");
        counter(gc::metric::BYTES_ARCHIVED, "bytes_archived");
        counter(gc::metric::ERRORS, "errors");
        counter(gc::metric::MULTIPART_ABORTED, "multipart_uploads_aborted");
        if f.contains_key("last_run_ms") {
            metrics::gauge!(gc::metric::LAST_RUN, "source" => "cli")
                .set(get(f, "last_run_ms") / 1000.0);
            metrics::gauge!(metric::GC_LAST_DURATION, "source" => "cli")
                .set(get(f, "last_duration_ms") / 1000.0);
            metrics::gauge!(metric::LAST_LOCK_HELD_MAX, "command" => "gc", "source" => "cli")
                .set(get(f, "last_lock_held_max_us") / 1e6);
        }
    }
    if let Some(f) = records.get(FSCK) {
        for (result, key) in [
            ("clean", "runs_clean"),
            ("problems", "runs_problems"),
            ("failed", "runs_failed"),
        ] {
            metrics::counter!(metric::FSCK_RUNS, "result" => result).absolute(get(f, key) as u64);
        }
        metrics::counter!(metric::FSCK_QUARANTINED).absolute(get(f, "quarantined") as u64);
        metrics::counter!(metric::FSCK_MEDIA_MARKED).absolute(get(f, "media_marked") as u64);
        if f.contains_key("last_run_ms") {
            metrics::gauge!(metric::FSCK_LAST_RUN).set(get(f, "last_run_ms") / 1000.0);
            metrics::gauge!(metric::FSCK_LAST_DURATION).set(get(f, "last_duration_ms") / 1000.0);
            metrics::gauge!(metric::FSCK_LAST_CHECKED).set(get(f, "last_blobs_checked"));
            for (kind, key) in [
                ("missing", "last_missing"),
                ("corrupt", "last_corrupt"),
                ("corrupt_copy", "last_corrupt_copies"),
                ("count_mismatch", "last_count_mismatches"),
            ] {
                metrics::gauge!(metric::FSCK_LAST_PROBLEMS, "kind" => kind).set(get(f, key));
            }
            metrics::gauge!(metric::LAST_LOCK_HELD_MAX, "command" => "fsck", "source" => "cli")
                .set(get(f, "last_lock_held_max_us") / 1e6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_add_up_and_dry_runs_are_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Maintenance::create(dir.path()).unwrap();
        let run = GcSummary {
            blobs_deleted: 3,
            bytes_freed: 300,
            duration_ms: 1500,
            ..Default::default()
        };
        record_gc_cli(&mut m, Ok(&run), 1_000_000).unwrap();
        record_gc_cli(&mut m, Ok(&run), 2_000_000).unwrap();
        record_gc_cli(&mut m, Err(()), 3_000_000).unwrap();
        let dry = GcSummary {
            dry_run: true,
            blobs_deleted: 100,
            ..Default::default()
        };
        record_gc_cli(&mut m, Ok(&dry), 4_000_000).unwrap();
        let f = m.reader().run_record(GC_CLI).unwrap().unwrap();
        assert_eq!((get(&f, "runs_ok"), get(&f, "runs_failed")), (2.0, 1.0));
        assert_eq!(get(&f, "blobs_deleted"), 6.0);
        assert_eq!(get(&f, "last_run_ms"), 2_000_000.0);

        let found = FsckSummary {
            blobs_checked: 10,
            corrupt: vec!["x".into()],
            ..Default::default()
        };
        record_fsck(&mut m, Ok(&found), 5_000).unwrap();
        record_fsck(&mut m, Ok(&FsckSummary::default()), 6_000).unwrap();
        let f = m.reader().run_record(FSCK).unwrap().unwrap();
        assert_eq!(
            (get(&f, "runs_problems"), get(&f, "runs_clean")),
            (1.0, 1.0)
        );
        assert_eq!(get(&f, "last_corrupt"), 0.0, "the last run's, not a sum");

        assert_eq!(m.reader().archive_stored().unwrap(), None);
        m.immediate(|tx| tx.put_archive_stored(4, 4096, 7_000))
            .unwrap();
        assert_eq!(m.reader().archive_stored().unwrap(), Some((4, 4096)));
    }
}
