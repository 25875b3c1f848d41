//! Pins and claims of blobs kept in a network store (S3), where no object
//! can be written or deleted under SQLite's write lock (storage-layout.md,
//! "S3"). An upload pins a hash before it puts the object and unpins it when
//! its reference commits; GC claims a zero-count row before it deletes the
//! object and forgets the row after. A pinned hash is never claimed, and a
//! claimed row is never pinned or given a reference, so GC never deletes an
//! object an upload relies on.

use rusqlite::{OptionalExtension as _, params};

use super::gc::ZeroCountBlob;
use super::{Reader, Result, Tx};

/// What [`Tx::pin_blob`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// Pinned (`id` unpins it). `recorded`: the index has an unclaimed row
    /// for the hash, whose object was put before the row was written (the
    /// object may still be damaged or gone: check before relying on it).
    Pinned { id: i64, recorded: Option<u64> },
    /// GC is deleting this hash's object: wait until it forgets the row.
    Claimed,
}

impl Tx<'_> {
    /// Pins a hash against GC while its object is being put.
    pub fn pin_blob(&self, hash: &blake3::Hash, now_ms: i64) -> Result<Pin> {
        let row: Option<(u64, Option<i64>)> = self
            .conn()
            .query_row(
                "SELECT size, gc_claimed_at FROM blobs WHERE hash = ?1",
                [hash.as_bytes()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if matches!(row, Some((_, Some(_)))) {
            return Ok(Pin::Claimed);
        }
        self.conn().execute(
            "INSERT INTO blob_pins (hash, pinned_at) VALUES (?1, ?2)",
            params![hash.as_bytes(), now_ms],
        )?;
        Ok(Pin::Pinned {
            id: self.conn().last_insert_rowid(),
            recorded: row.map(|(size, _)| size),
        })
    }

    /// Drops one pin (its upload committed or gave up).
    pub fn unpin_blob(&self, id: i64) -> Result<()> {
        self.conn()
            .execute("DELETE FROM blob_pins WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Drops pins taken at or before `cutoff_ms`: their uploads died (a
    /// put lasts seconds to minutes; the cutoff is hours). Returns how many.
    pub fn expire_pins(&self, cutoff_ms: i64) -> Result<usize> {
        Ok(self
            .conn()
            .execute("DELETE FROM blob_pins WHERE pinned_at <= ?1", [cutoff_ms])?)
    }

    /// Claims the next `limit` zero-count blobs stamped at or before
    /// `cutoff_ms` that no upload has pinned, for deletion of their objects.
    /// Rows some media or rendition still uses are left alone (a drifted
    /// count) and returned in the second list.
    pub fn claim_zero_count_blobs(
        &self,
        cutoff_ms: i64,
        limit: usize,
        now_ms: i64,
    ) -> Result<(Vec<ZeroCountBlob>, Vec<blake3::Hash>)> {
        let candidates: Vec<ZeroCountBlob> = self
            .conn()
            .prepare_cached(
                "SELECT zero_since, hash, size FROM blobs b
                 WHERE refcount = 0 AND zero_since <= ?1 AND gc_claimed_at IS NULL
                   AND NOT EXISTS (SELECT 1 FROM blob_pins p WHERE p.hash = b.hash)
                 ORDER BY zero_since, hash LIMIT ?2",
            )?
            .query_map(params![cutoff_ms, limit as i64], |r| {
                Ok(ZeroCountBlob {
                    zero_since_ms: r.get(0)?,
                    hash: blake3::Hash::from_bytes(r.get(1)?),
                    size: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut claimed = Vec::with_capacity(candidates.len());
        let mut drifted = Vec::new();
        for blob in candidates {
            if self.hash_in_use(&blob.hash)? {
                drifted.push(blob.hash);
                continue;
            }
            self.conn().execute(
                "UPDATE blobs SET gc_claimed_at = ?2 WHERE hash = ?1",
                params![blob.hash.as_bytes(), now_ms],
            )?;
            claimed.push(blob);
        }
        Ok((claimed, drifted))
    }

    /// Claims an object the index has no row for (found by listing the
    /// bucket), unless an upload pinned its hash or recorded it meanwhile:
    /// a claimed row with count 0 stands for it until GC forgets it.
    pub fn claim_unknown_blob(&self, hash: &blake3::Hash, size: u64, now_ms: i64) -> Result<bool> {
        Ok(self.conn().execute(
            "INSERT INTO blobs (hash, size, refcount, zero_since, created_at, gc_claimed_at)
             SELECT ?1, ?2, 0, ?3, ?3, ?3
             WHERE NOT EXISTS (SELECT 1 FROM blobs WHERE hash = ?1)
               AND NOT EXISTS (SELECT 1 FROM blob_pins WHERE hash = ?1)",
            params![hash.as_bytes(), size, now_ms],
        )? == 1)
    }

    /// Forgets a claimed row whose object is deleted, with the renditions
    /// made from it (their blobs lose a reference each).
    pub fn forget_claimed_blob(&self, hash: &blake3::Hash, now_ms: i64) -> Result<bool> {
        self.release_renditions_of(hash, now_ms)?;
        Ok(self.conn().execute(
            "DELETE FROM blobs WHERE hash = ?1 AND refcount = 0 AND gc_claimed_at IS NOT NULL",
            [hash.as_bytes()],
        )? == 1)
    }
}

impl Tx<'_> {
    /// Records that the archive bucket holds a whole copy of the blob (its
    /// primary copy is unlinked in the same transaction). Refused for a row
    /// GC has claimed or forgotten meanwhile.
    pub fn mark_archived(&self, hash: &blake3::Hash, now_ms: i64) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE blobs SET archived_at = ?2 WHERE hash = ?1 AND gc_claimed_at IS NULL",
            params![hash.as_bytes(), now_ms],
        )? == 1)
    }

    /// A local copy now stands for the blob (an upload installed one):
    /// archival puts it to the bucket again later.
    pub fn clear_archived(&self, hash: &blake3::Hash) -> Result<()> {
        self.conn().execute(
            "UPDATE blobs SET archived_at = NULL WHERE hash = ?1",
            [hash.as_bytes()],
        )?;
        Ok(())
    }
}

impl Reader<'_> {
    /// Whether the archive bucket holds the blob (its object was put and
    /// checked, and no damage was found since).
    pub fn blob_archived(&self, hash: &blake3::Hash) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT archived_at IS NOT NULL FROM blobs WHERE hash = ?1",
                [hash.as_bytes()],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false))
    }

    /// Blobs and bytes the archive bucket holds, by the index.
    pub fn archived_in_bucket(&self) -> Result<(u64, u64)> {
        Ok(self.conn.query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM blobs WHERE archived_at IS NOT NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }
}

/// `meta` key naming the backend the index's blobs are in (`local` when
/// absent): set by `migrate-store` once every blob is copied and verified.
const BACKEND_KEY: &str = "blob_backend";

impl Tx<'_> {
    /// Records which backend holds the blobs (after a complete migration).
    pub fn set_blob_backend(&self, backend: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [BACKEND_KEY, backend],
        )?;
        Ok(())
    }
}

impl Reader<'_> {
    /// The backend recorded as holding the blobs (`None`: never recorded,
    /// an index from before backends, whose blobs are local).
    pub fn blob_backend(&self) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [BACKEND_KEY],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Rows GC claimed and has not forgotten yet (an earlier run stopped
    /// between deleting objects and forgetting rows): resumed first.
    pub fn claimed_blobs(&self, limit: usize) -> Result<Vec<(blake3::Hash, u64)>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT hash, size FROM blobs WHERE gc_claimed_at IS NOT NULL
                 ORDER BY gc_claimed_at, hash LIMIT ?1",
            )?
            .query_map([limit as i64], |r| {
                Ok((blake3::Hash::from_bytes(r.get(0)?), r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// Whether an upload holds a pin on the hash, or the index has a row for it.
    pub fn blob_known_or_pinned(&self, hash: &blake3::Hash) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM blobs WHERE hash = ?1)
                 OR EXISTS (SELECT 1 FROM blob_pins WHERE hash = ?1)",
            [hash.as_bytes()],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Maintenance;

    fn fresh() -> (tempfile::TempDir, Maintenance) {
        let dir = tempfile::tempdir().unwrap();
        let m = Maintenance::create(dir.path()).unwrap();
        (dir, m)
    }

    #[test]
    fn a_pinned_hash_is_not_claimed_and_a_claimed_row_takes_no_pin_or_reference() {
        let (_dir, mut m) = fresh();
        let h = blake3::hash(b"x");
        m.immediate(|tx| -> Result<()> {
            tx.add_blob_ref(&h, 1, 0)?;
            tx.release_blob_ref(&h, 1)?;
            Ok(())
        })
        .unwrap();
        let pin = m.immediate(|tx| tx.pin_blob(&h, 2)).unwrap();
        let Pin::Pinned { id, recorded } = pin else {
            panic!("{pin:?}")
        };
        assert_eq!(recorded, Some(1));
        let (claimed, _) = m
            .immediate(|tx| tx.claim_zero_count_blobs(10, 10, 3))
            .unwrap();
        assert!(claimed.is_empty(), "a pinned hash was claimed");
        m.immediate(|tx| tx.unpin_blob(id)).unwrap();
        let (claimed, _) = m
            .immediate(|tx| tx.claim_zero_count_blobs(10, 10, 4))
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(m.immediate(|tx| tx.pin_blob(&h, 5)).unwrap(), Pin::Claimed);
        let err = m.immediate(|tx| tx.add_blob_ref(&h, 1, 6)).unwrap_err();
        assert!(
            matches!(err, crate::index::IndexError::BlobClaimed),
            "{err}"
        );
        assert!(m.immediate(|tx| tx.forget_claimed_blob(&h, 7)).unwrap());
        assert!(matches!(
            m.immediate(|tx| tx.pin_blob(&h, 8)).unwrap(),
            Pin::Pinned { recorded: None, .. }
        ));
    }

    #[test]
    fn an_unknown_object_is_claimed_only_without_row_or_pin() {
        let (_dir, mut m) = fresh();
        let (a, b, c) = (blake3::hash(b"a"), blake3::hash(b"b"), blake3::hash(b"c"));
        m.immediate(|tx| -> Result<()> {
            tx.add_blob_ref(&a, 1, 0)?;
            tx.pin_blob(&b, 0)?;
            Ok(())
        })
        .unwrap();
        let claims = m
            .immediate(|tx| -> Result<Vec<bool>> {
                Ok(vec![
                    tx.claim_unknown_blob(&a, 1, 1)?,
                    tx.claim_unknown_blob(&b, 1, 1)?,
                    tx.claim_unknown_blob(&c, 1, 1)?,
                ])
            })
            .unwrap();
        assert_eq!(claims, vec![false, false, true]);
        assert_eq!(m.reader().claimed_blobs(10).unwrap(), vec![(c, 1)]);
        assert_eq!(m.immediate(|tx| tx.expire_pins(0)).unwrap(), 1);
    }
}
