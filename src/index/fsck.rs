//! Statements of fsck (storage-layout.md, "fsck"): the blob rows in chunks,
//! counts against media rows, and the repairs (recount, corrupt marks).

use std::collections::HashSet;

use rusqlite::params;
use serde::Serialize;

use super::{Reader, Result, Tx};

/// A blob row whose count (or tombstone) disagrees with its media and
/// rendition rows (R1).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CountMismatch {
    pub hash: String,
    pub recorded: i64,
    pub actual: i64,
    pub zero_since: Option<i64>,
}

const MISMATCH_SQL: &str = "
    SELECT hash, refcount, actual, zero_since FROM (
        SELECT b.hash, b.refcount, b.zero_since,
               (SELECT count(*) FROM media m WHERE m.hash = b.hash)
             + (SELECT count(*) FROM renditions r WHERE r.hash = b.hash) AS actual
        FROM blobs b)
    WHERE refcount != actual
       OR (actual = 0 AND zero_since IS NULL)
       OR (actual > 0 AND zero_since IS NOT NULL)";

impl Reader<'_> {
    /// Blob rows and the bytes they hold (metrics).
    pub fn blob_totals(&self) -> Result<(u64, u64)> {
        Ok(self.conn.query_row(
            "SELECT count(*), CAST(total(size) AS INTEGER) FROM blobs",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?)
    }

    pub fn count_blobs(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))?)
    }

    /// Hashes used by media rows marked corrupt.
    pub fn corrupt_marked_hashes(&self) -> Result<HashSet<blake3::Hash>> {
        let hashes = self
            .conn
            .prepare("SELECT DISTINCT hash FROM media WHERE corrupt_since IS NOT NULL")?
            .query_map([], |r| Ok(blake3::Hash::from_bytes(r.get(0)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(hashes)
    }

    /// The next `limit` blob rows after `after` in hash order: (hash, size, count).
    pub fn blobs_after(
        &self,
        after: Option<&blake3::Hash>,
        limit: usize,
    ) -> Result<Vec<(blake3::Hash, u64, i64)>> {
        let cursor = after.map(|h| h.as_bytes().to_vec()).unwrap_or_default();
        let rows = self
            .conn
            .prepare_cached(
                "SELECT hash, size, refcount FROM blobs WHERE hash > ?1 ORDER BY hash LIMIT ?2",
            )?
            .query_map(params![cursor, limit as i64], |r| {
                Ok((blake3::Hash::from_bytes(r.get(0)?), r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Whether the blob has a row with a count above 0.
    pub fn still_referenced(&self, hash: &blake3::Hash) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM blobs WHERE hash = ?1 AND refcount > 0)",
            [hash.as_bytes()],
            |r| r.get(0),
        )?)
    }

    /// Whether every media row using the hash is marked corrupt already.
    pub fn all_marked_corrupt(&self, hash: &blake3::Hash) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT NOT EXISTS (SELECT 1 FROM media WHERE hash = ?1 AND corrupt_since IS NULL)",
            [hash.as_bytes()],
            |r| r.get(0),
        )?)
    }

    /// Every blob row whose count or tombstone disagrees with the media rows
    /// (one statement: one snapshot).
    pub fn count_mismatches(&self) -> Result<Vec<CountMismatch>> {
        let rows = self
            .conn
            .prepare(MISMATCH_SQL)?
            .query_map([], |r| {
                Ok(CountMismatch {
                    hash: blake3::Hash::from_bytes(r.get(0)?).to_hex().to_string(),
                    recorded: r.get(1)?,
                    actual: r.get(2)?,
                    zero_since: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}

impl Tx<'_> {
    /// Recomputes every mismatched count from the media rows (a count that
    /// falls to 0 gets its tombstone). Returns how many rows changed.
    pub fn recount_mismatches(&self, now_ms: i64) -> Result<u64> {
        Ok(self.conn().execute(
            &("UPDATE blobs SET
                 refcount = (SELECT count(*) FROM media m WHERE m.hash = blobs.hash)
                          + (SELECT count(*) FROM renditions r WHERE r.hash = blobs.hash),
                 zero_since = CASE WHEN (SELECT count(*) FROM media m WHERE m.hash = blobs.hash)
                                      + (SELECT count(*) FROM renditions r WHERE r.hash = blobs.hash) = 0
                                   THEN coalesce(zero_since, ?1) ELSE NULL END
             WHERE hash IN (SELECT hash FROM ("
                .to_owned()
                + MISMATCH_SQL
                + "))"),
            [now_ms],
        )? as u64)
    }

    /// Marks the media rows using the hash as corrupt since `now_ms` (rows
    /// marked already keep their time). Returns how many were marked.
    pub fn mark_corrupt(&self, hash: &blake3::Hash, now_ms: i64) -> Result<u64> {
        // The archive bucket no longer vouches for the content (migration 0008).
        self.clear_archived(hash)?;
        Ok(self.conn().execute(
            "UPDATE media SET corrupt_since = ?2 WHERE hash = ?1 AND corrupt_since IS NULL",
            params![hash.as_bytes(), now_ms],
        )? as u64)
    }

    /// Clears the corrupt mark of the media rows using the hash.
    pub fn unmark_corrupt(&self, hash: &blake3::Hash) -> Result<u64> {
        Ok(self.conn().execute(
            "UPDATE media SET corrupt_since = NULL WHERE hash = ?1 AND corrupt_since IS NOT NULL",
            [hash.as_bytes()],
        )? as u64)
    }
}
