//! Statements of garbage collection and archival (storage-layout.md,
//! "Garbage collection", "Archive"). The lifecycle code decides; these read
//! candidates and, inside [`super::Maintenance::immediate`], re-check and
//! forget rows under SQLite's write lock.

use rusqlite::params;

use super::{Reader, Result, Tx};

/// A blob row whose count is 0: GC's candidate, and the keyset cursor of its scan.
#[derive(Debug, Clone, PartialEq)]
pub struct ZeroCountBlob {
    pub zero_since_ms: i64,
    pub hash: blake3::Hash,
    pub size: u64,
}

impl Reader<'_> {
    /// How many blobs have had count 0 since at or before `cutoff_ms`.
    pub fn count_zero_count_blobs(&self, cutoff_ms: i64) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM blobs WHERE refcount = 0 AND zero_since <= ?1",
            [cutoff_ms],
            |r| r.get(0),
        )?)
    }

    /// Zero-count blobs still inside the grace period (count 0 since after
    /// `cutoff_ms`): how many, and their bytes.
    pub fn zero_count_blobs_in_grace(&self, cutoff_ms: i64) -> Result<(u64, u64)> {
        Ok(self.conn.query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM blobs
             WHERE refcount = 0 AND zero_since > ?1",
            [cutoff_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    /// The next `limit` zero-count blobs past `after` (in (zero_since, hash)
    /// order, over the partial index), stamped at or before `cutoff_ms`.
    /// Run inside the deleting transaction, it is also the re-check.
    pub fn zero_count_blobs(
        &self,
        cutoff_ms: i64,
        after: Option<&ZeroCountBlob>,
        limit: usize,
    ) -> Result<Vec<ZeroCountBlob>> {
        let (since, hash) = match after {
            Some(b) => (b.zero_since_ms, b.hash.as_bytes().to_vec()),
            None => (i64::MIN, Vec::new()),
        };
        let rows = self
            .conn
            .prepare_cached(
                "SELECT zero_since, hash, size FROM blobs
                 WHERE refcount = 0 AND zero_since <= ?1 AND (zero_since, hash) > (?2, ?3)
                 ORDER BY zero_since, hash LIMIT ?4",
            )?
            .query_map(params![cutoff_ms, since, hash, limit as i64], |r| {
                Ok(ZeroCountBlob {
                    zero_since_ms: r.get(0)?,
                    hash: blake3::Hash::from_bytes(r.get(1)?),
                    size: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Whether any media row or rendition row uses the hash (whatever its
    /// count says).
    pub fn hash_in_use(&self, hash: &blake3::Hash) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM media WHERE hash = ?1)
                 OR EXISTS (SELECT 1 FROM renditions WHERE hash = ?1)",
            [hash.as_bytes()],
            |r| r.get(0),
        )?)
    }

    /// How many referenced blobs were created at or before `cutoff_ms`
    /// (archival's progress bar).
    pub fn count_archivable(&self, cutoff_ms: i64) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM blobs
             WHERE refcount > 0 AND created_at <= ?1 AND archived_at IS NULL",
            [cutoff_ms],
            |r| r.get(0),
        )?)
    }

    /// The next `limit` referenced blobs past `after` (hash order) none of
    /// whose uploads is newer than `cutoff_ms`: archival's candidates.
    pub fn archivable_blobs(
        &self,
        cutoff_ms: i64,
        after: Option<&blake3::Hash>,
        limit: usize,
    ) -> Result<Vec<(blake3::Hash, u64)>> {
        let cursor = after.map(|h| h.as_bytes().to_vec()).unwrap_or_default();
        let rows = self
            .conn
            .prepare_cached(
                "SELECT b.hash, b.size FROM blobs b
                 WHERE b.hash > ?1 AND b.refcount > 0 AND b.created_at <= ?2
                   AND b.archived_at IS NULL
                   AND NOT EXISTS (SELECT 1 FROM media m
                                   WHERE m.hash = b.hash AND m.uploaded_at > ?2)
                 ORDER BY b.hash LIMIT ?3",
            )?
            .query_map(params![cursor, cutoff_ms, limit as i64], |r| {
                Ok((blake3::Hash::from_bytes(r.get(0)?), r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}

impl Tx<'_> {
    /// Forgets a blob row, only while its count is still 0.
    pub fn forget_zero_count_blob(&self, hash: &blake3::Hash) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM blobs WHERE hash = ?1 AND refcount = 0",
            [hash.as_bytes()],
        )? == 1)
    }
}
