//! Records lifecycle runs leave for the daemon's `/metrics`: `media-store gc`
//! and `media-store fsck` run in processes of their own, so what they found
//! reaches the daemon through the index, as one `meta` row per record (key
//! `lifecycle:<name>`, a JSON object of numbers).

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};

use super::{Reader, Result, Tx};

/// The figures of one record: name → number.
pub type RunFigures = BTreeMap<String, f64>;

const PREFIX: &str = "lifecycle:";

/// The record of what the archive root holds, written by GC runs.
const ARCHIVE: &str = "archive_stored";

impl Reader<'_> {
    /// Every run record, by name. A row that does not parse is left out.
    pub fn run_records(&self) -> Result<BTreeMap<String, RunFigures>> {
        let rows: Vec<(String, String)> = self
            .conn
            .prepare_cached("SELECT key, value FROM meta WHERE key > ?1 AND key < ?2")?
            .query_map(params![PREFIX, "lifecycle;"], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, value)| {
                let name = key.strip_prefix(PREFIX)?.to_owned();
                Some((name, serde_json::from_str(&value).ok()?))
            })
            .collect())
    }

    /// One run record, if kept (and it parses).
    pub fn run_record(&self, name: &str) -> Result<Option<RunFigures>> {
        let value: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [format!("{PREFIX}{name}")],
                |r| r.get(0),
            )
            .optional()?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }
}

impl Reader<'_> {
    /// What the archive root held at the end of the last GC run that had
    /// one: (blobs the index knows, their bytes).
    pub fn archive_stored(&self) -> Result<Option<(u64, u64)>> {
        Ok(self.run_record(ARCHIVE)?.map(|f| {
            let get = |k: &str| f.get(k).copied().unwrap_or(0.0) as u64;
            (get("blobs"), get("bytes"))
        }))
    }
}

impl Tx<'_> {
    /// Records what the archive root holds (see [`Reader::archive_stored`]).
    pub fn put_archive_stored(&self, blobs: u64, bytes: u64, now_ms: i64) -> Result<()> {
        let f: RunFigures = [
            ("blobs".to_owned(), blobs as f64),
            ("bytes".to_owned(), bytes as f64),
            ("at_ms".to_owned(), now_ms as f64),
        ]
        .into();
        self.put_run_record(ARCHIVE, &f)
    }

    /// Replaces a run record.
    pub fn put_run_record(&self, name: &str, figures: &RunFigures) -> Result<()> {
        let value = serde_json::to_string(figures).expect("numbers serialize");
        self.conn().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![format!("{PREFIX}{name}"), value],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::index::Maintenance;

    #[test]
    fn run_records_round_trip_and_stay_apart_from_other_meta_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Maintenance::create(dir.path()).unwrap();
        assert!(m.reader().run_records().unwrap().is_empty());
        let figures = [("runs".to_string(), 2.0), ("bytes".to_string(), 1e12)].into();
        m.immediate(|tx| tx.put_run_record("gc_cli", &figures))
            .unwrap();
        m.immediate(|tx| tx.put_run_record("fsck", &Default::default()))
            .unwrap();
        let all = m.reader().run_records().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all["gc_cli"], figures);
        assert_eq!(m.reader().run_record("gc_cli").unwrap(), Some(figures));
        assert_eq!(m.reader().run_record("nothing").unwrap(), None);
    }
}
