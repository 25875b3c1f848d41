//! Renditions (previews) of stored content: which blob serves variant V of
//! source blob S (storage-layout.md, "Renditions", R1–R4).
//!
//! A `renditions` row with a `hash` is a reference to that blob, counted in
//! `blobs.refcount` beside media rows; it lives as long as its source blob's
//! row, and goes (releasing its reference) in the transaction that forgets the
//! source ([`Tx::release_renditions_of`], called by GC).

use rusqlite::{OptionalExtension, params};

use super::{Reader, Result, Tx};

/// One recorded rendition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenditionRow {
    pub source_hash: blake3::Hash,
    pub variant: String,
    /// The variant's spec when this was rendered; another spec is stale.
    pub spec_fingerprint: String,
    /// `None`: the original is served as is (`UseOriginal`).
    pub blob: Option<RenditionBlob>,
}

/// The blob of a rendition and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenditionBlob {
    pub hash: blake3::Hash,
    pub size: u64,
    pub mime: String,
    pub width: u32,
    pub height: u32,
}

impl Reader<'_> {
    /// The rendition recorded for `variant` of the source content, if any.
    pub fn rendition(&self, source: &blake3::Hash, variant: &str) -> Result<Option<RenditionRow>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT spec_fingerprint, hash, size, mime, width, height FROM renditions
                 WHERE source_hash = ?1 AND variant = ?2",
            )?
            .query_row(params![source.as_bytes(), variant], |r| {
                let hash: Option<[u8; 32]> = r.get(1)?;
                Ok(RenditionRow {
                    source_hash: *source,
                    variant: variant.to_owned(),
                    spec_fingerprint: r.get(0)?,
                    blob: match hash {
                        None => None,
                        Some(h) => Some(RenditionBlob {
                            hash: blake3::Hash::from_bytes(h),
                            size: r.get(2)?,
                            mime: r.get(3)?,
                            width: r.get(4)?,
                            height: r.get(5)?,
                        }),
                    },
                })
            })
            .optional()?)
    }

    /// How many rendition rows use the blob (its references besides media rows).
    pub fn rendition_refs(&self, hash: &blake3::Hash) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM renditions WHERE hash = ?1",
            [hash.as_bytes()],
            |r| r.get(0),
        )?)
    }

    /// How many rendition rows the index holds (with and without a blob).
    pub fn count_renditions(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM renditions", [], |r| r.get(0))?)
    }
}

impl Tx<'_> {
    /// Records (or replaces) the rendition of `variant` of `source`. A blob
    /// gets one reference for the row (the caller has installed it under
    /// this transaction); a replaced row's blob loses its reference. The
    /// source's blob row must exist (it is checked under the same lock).
    pub fn put_rendition(
        &self,
        source: &blake3::Hash,
        variant: &str,
        spec_fingerprint: &str,
        blob: Option<&RenditionBlob>,
        now_ms: i64,
    ) -> Result<()> {
        if let Some(old) = self.rendition(source, variant)? {
            if let Some(b) = &old.blob {
                self.release_blob_ref(&b.hash, now_ms)?;
            }
            self.conn().execute(
                "DELETE FROM renditions WHERE source_hash = ?1 AND variant = ?2",
                params![source.as_bytes(), variant],
            )?;
        }
        if let Some(b) = blob {
            self.add_blob_ref(&b.hash, b.size, now_ms)?;
        }
        self.conn().execute(
            "INSERT INTO renditions (source_hash, variant, spec_fingerprint, hash, mime, size,
                                     width, height, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                source.as_bytes(),
                variant,
                spec_fingerprint,
                blob.map(|b| b.hash.as_bytes().to_vec()),
                blob.map(|b| b.mime.clone()),
                blob.map(|b| b.size),
                blob.map(|b| b.width),
                blob.map(|b| b.height),
                now_ms
            ],
        )?;
        Ok(())
    }

    /// Deletes every rendition row of the source content and releases their
    /// blobs' references (a count reaching 0 is stamped `now_ms`, which starts
    /// its grace period). GC calls this in the transaction that forgets the
    /// source's zero-count row (R2). Returns how many rows went.
    pub fn release_renditions_of(&self, source: &blake3::Hash, now_ms: i64) -> Result<u64> {
        let hashes: Vec<[u8; 32]> = self
            .conn()
            .prepare_cached(
                "SELECT hash FROM renditions WHERE source_hash = ?1 AND hash IS NOT NULL",
            )?
            .query_map([source.as_bytes()], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for h in &hashes {
            self.release_blob_ref(&blake3::Hash::from_bytes(*h), now_ms)?;
        }
        Ok(self.conn().execute(
            "DELETE FROM renditions WHERE source_hash = ?1",
            [source.as_bytes()],
        )? as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> rusqlite::Connection {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        c.pragma_update(None, "foreign_keys", "ON").unwrap();
        super::super::migrations().to_latest(&mut c).unwrap();
        c
    }

    fn tx(c: &rusqlite::Connection) -> Tx<'_> {
        Tx {
            reader: Reader { conn: c },
        }
    }

    fn blob(content: &[u8]) -> RenditionBlob {
        RenditionBlob {
            hash: blake3::hash(content),
            size: content.len() as u64,
            mime: "image/webp".into(),
            width: 1,
            height: 1,
        }
    }

    #[test]
    fn renditions_count_as_references_and_go_with_their_source() {
        let c = conn();
        let t = tx(&c);
        let source = blake3::hash(b"source");
        t.add_blob_ref(&source, 6, 0).unwrap();
        let thumb = blob(b"thumb");
        t.put_rendition(&source, "thumb", "a", Some(&thumb), 1)
            .unwrap();
        t.put_rendition(&source, "avatar", "b", None, 1).unwrap();
        assert_eq!(t.blob_refcount(&thumb.hash).unwrap(), Some(1));
        assert_eq!(t.rendition_refs(&thumb.hash).unwrap(), 1);
        // A changed spec replaces the row and moves the reference.
        let thumb2 = blob(b"thumb2");
        t.put_rendition(&source, "thumb", "c", Some(&thumb2), 2)
            .unwrap();
        assert_eq!(t.blob_state(&thumb.hash).unwrap(), Some((0, Some(2))));
        assert_eq!(t.blob_refcount(&thumb2.hash).unwrap(), Some(1));
        let row = t.rendition(&source, "thumb").unwrap().unwrap();
        assert_eq!(row.spec_fingerprint, "c");
        assert_eq!(row.blob, Some(thumb2.clone()));
        assert_eq!(t.rendition(&source, "avatar").unwrap().unwrap().blob, None);
        // The source cannot be forgotten while its renditions stand (the
        // foreign key), and releasing them zero-counts their blobs.
        t.release_blob_ref(&source, 3).unwrap();
        assert!(t.forget_zero_count_blob(&source).is_err());
        assert_eq!(t.release_renditions_of(&source, 4).unwrap(), 2);
        assert_eq!(t.blob_state(&thumb2.hash).unwrap(), Some((0, Some(4))));
        assert!(t.forget_zero_count_blob(&source).unwrap());
        assert_eq!(t.count_renditions().unwrap(), 0);
    }
}
