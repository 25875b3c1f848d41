//! Media rows and blob reference counts: the upload and delete paths'
//! statements (storage-layout.md, I3–I6).

use rusqlite::{OptionalExtension, params};

use super::{Reader, Result, Tx};

/// One upload as the index records it.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaRow {
    pub id: i64,
    pub uploader_id: i64,
    pub file_type: String,
    pub hash: blake3::Hash,
    pub size: u64,
    pub original_name: Option<String>,
    pub uploaded_at_ms: i64,
    /// When the media's bytes were found damaged or missing (Unix ms); a later
    /// upload of the same content clears it.
    pub corrupt_since_ms: Option<i64>,
    /// What clients need to lay out a message (filled in after upload).
    pub layout: Layout,
}

/// Layout metadata of a media's content, probed after upload
/// (`media_preview::probe`); every field is `None` while unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// Upright width in pixels (images, videos).
    pub width: Option<u32>,
    /// Upright height in pixels.
    pub height: Option<u32>,
    /// Duration of audio and video, in milliseconds.
    pub duration_ms: Option<u64>,
    /// ThumbHash of an image (raw bytes).
    pub thumbhash: Option<Vec<u8>>,
}

impl Layout {
    pub fn is_empty(&self) -> bool {
        *self == Layout::default()
    }
}

/// A media row to insert; the id and time are assigned by [`insert_media`].
#[derive(Debug, Clone)]
pub struct NewMedia {
    pub uploader_id: i64,
    pub file_type: String,
    pub hash: blake3::Hash,
    pub size: u64,
    pub original_name: Option<String>,
}

/// Why a row cannot be recorded under the id and time it asks for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdoptConflict {
    #[error("not a valid media id")]
    BadId,
    #[error("the id is already used by media-store media (uploader {}, uploaded at {} ms)", .0.uploader_id, .0.uploaded_at_ms)]
    IdTaken(Box<MediaRow>),
    #[error(
        "its upload time would break the index's time order (I6): the nearest lower id was uploaded at {before:?} ms, the nearest higher at {after:?} ms"
    )]
    OutOfOrder {
        before: Option<i64>,
        after: Option<i64>,
    },
}

/// The `media` columns that [`from_row`] reads, in its order.
pub(super) const COLUMNS: &str = "id, uploader_id, file_type, hash, size, original_name, \
     uploaded_at, corrupt_since, width, height, duration_ms, thumbhash";

/// Maps a row selected with [`COLUMNS`].
pub(super) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MediaRow> {
    let hash: [u8; 32] = r.get(3)?;
    Ok(MediaRow {
        id: r.get(0)?,
        uploader_id: r.get(1)?,
        file_type: r.get(2)?,
        hash: blake3::Hash::from_bytes(hash),
        size: r.get(4)?,
        original_name: r.get(5)?,
        uploaded_at_ms: r.get(6)?,
        corrupt_since_ms: r.get(7)?,
        layout: Layout {
            width: r.get(8)?,
            height: r.get(9)?,
            duration_ms: r.get(10)?,
            thumbhash: r.get(11)?,
        },
    })
}

impl Reader<'_> {
    /// The blob's reference count, or `None` when the index has no row for it.
    pub fn blob_refcount(&self, hash: &blake3::Hash) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT refcount FROM blobs WHERE hash = ?1",
                [hash.as_bytes()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The size recorded for a blob, or `None` when the index has no row for it.
    pub fn blob_size(&self, hash: &blake3::Hash) -> Result<Option<u64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT size FROM blobs WHERE hash = ?1")?
            .query_row([hash.as_bytes()], |r| r.get(0))
            .optional()?)
    }

    /// A blob row's count and tombstone (`zero_since`, Unix ms), if it exists.
    pub fn blob_state(&self, hash: &blake3::Hash) -> Result<Option<(i64, Option<i64>)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT refcount, zero_since FROM blobs WHERE hash = ?1",
                [hash.as_bytes()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    pub fn get_media(&self, id: i64) -> Result<Option<MediaRow>> {
        // Cached: this runs for every download.
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM media WHERE id = ?1"))?
            .query_row([id], from_row)
            .optional()?)
    }
}

impl Tx<'_> {
    /// Adds one reference to a blob, creating its row (or reviving a zero-count
    /// row, which clears its GC tombstone).
    pub fn add_blob_ref(&self, hash: &blake3::Hash, size: u64, now_ms: i64) -> Result<()> {
        // A row GC has claimed is being deleted from a network store: no
        // reference may be added until GC forgets it (storage-layout.md, "S3").
        let changed = self.conn().execute(
            "INSERT INTO blobs (hash, size, refcount, zero_since, created_at)
         VALUES (?1, ?2, 1, NULL, ?3)
         ON CONFLICT (hash) DO UPDATE SET refcount = refcount + 1, zero_since = NULL
         WHERE gc_claimed_at IS NULL",
            params![hash.as_bytes(), size, now_ms],
        )?;
        if changed == 0 {
            return Err(super::IndexError::BlobClaimed);
        }
        Ok(())
    }

    /// Drops one reference; a blob whose count reaches 0 is stamped with the time,
    /// which starts its GC grace period.
    pub fn release_blob_ref(&self, hash: &blake3::Hash, now_ms: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE blobs SET refcount = refcount - 1,
                zero_since = CASE WHEN refcount = 1 THEN ?2 ELSE zero_since END
         WHERE hash = ?1 AND refcount > 0",
            params![hash.as_bytes(), now_ms],
        )?;
        Ok(())
    }

    /// Inserts a media row with the next id. `uploaded_at` is the later of now and
    /// the newest existing row's time, so time never goes backwards as ids grow.
    pub fn insert_media(&self, new: &NewMedia, now_ms: i64) -> Result<MediaRow> {
        let newest: Option<i64> =
            self.conn()
                .query_row("SELECT max(uploaded_at) FROM media", [], |r| r.get(0))?;
        let uploaded_at_ms = newest.map_or(now_ms, |n| n.max(now_ms));
        let family = crate::policy::family(&new.file_type);
        self.conn().execute(
        "INSERT INTO media (uploader_id, file_type, family, hash, size, original_name, uploaded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            new.uploader_id,
            new.file_type,
            family,
            new.hash.as_bytes(),
            new.size,
            new.original_name,
            uploaded_at_ms
        ],
    )?;
        Ok(MediaRow {
            id: self.conn().last_insert_rowid(),
            uploader_id: new.uploader_id,
            file_type: new.file_type.clone(),
            hash: new.hash,
            size: new.size,
            original_name: new.original_name.clone(),
            uploaded_at_ms,
            corrupt_since_ms: None,
            layout: self.copy_layout(&new.hash)?,
        })
    }

    /// A new media row of content probed already (a duplicate) gets the
    /// layout of its siblings. Returns what the newest row now holds.
    fn copy_layout(&self, hash: &blake3::Hash) -> Result<Layout> {
        let id = self.conn().last_insert_rowid();
        let sibling = self
            .conn()
            .prepare_cached(
                "SELECT width, height, duration_ms, thumbhash FROM media
                 WHERE hash = ?1 AND id != ?2
                   AND (width IS NOT NULL OR duration_ms IS NOT NULL OR thumbhash IS NOT NULL)
                 LIMIT 1",
            )?
            .query_row(params![hash.as_bytes(), id], |r| {
                Ok(Layout {
                    width: r.get(0)?,
                    height: r.get(1)?,
                    duration_ms: r.get(2)?,
                    thumbhash: r.get(3)?,
                })
            })
            .optional()?;
        let Some(layout) = sibling else {
            return Ok(Layout::default());
        };
        self.conn().execute(
            "UPDATE media SET width = ?2, height = ?3, duration_ms = ?4, thumbhash = ?5 WHERE id = ?1",
            params![id, layout.width, layout.height, layout.duration_ms, layout.thumbhash],
        )?;
        Ok(layout)
    }

    /// Records the probed layout on every media row of the content that has
    /// none yet. Returns how many rows changed.
    pub fn set_layout(&self, hash: &blake3::Hash, layout: &Layout) -> Result<u64> {
        Ok(self.conn().execute(
            "UPDATE media SET width = ?2, height = ?3, duration_ms = ?4, thumbhash = ?5
             WHERE hash = ?1 AND width IS NULL AND duration_ms IS NULL AND thumbhash IS NULL",
            params![
                hash.as_bytes(),
                layout.width,
                layout.height,
                layout.duration_ms,
                layout.thumbhash
            ],
        )? as u64)
    }

    /// Why a media row cannot be recorded under a given id and time
    /// ([`Tx::insert_media_as`]); `None` when it can. Read-only: callers check
    /// before any file step, then insert in the same transaction.
    pub fn adoption_conflict(&self, id: i64, uploaded_at_ms: i64) -> Result<Option<AdoptConflict>> {
        if id <= 0 {
            return Ok(Some(AdoptConflict::BadId));
        }
        if let Some(row) = self.get_media(id)? {
            return Ok(Some(AdoptConflict::IdTaken(Box::new(row))));
        }
        // I6: uploaded_at never decreases as id grows, so the row must fit
        // between its neighbours' times.
        let (before, after): (Option<i64>, Option<i64>) = self.conn().query_row(
            "SELECT (SELECT uploaded_at FROM media WHERE id < ?1 ORDER BY id DESC LIMIT 1),
                    (SELECT uploaded_at FROM media WHERE id > ?1 ORDER BY id LIMIT 1)",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if before.is_some_and(|b| b > uploaded_at_ms) || after.is_some_and(|a| a < uploaded_at_ms) {
            return Ok(Some(AdoptConflict::OutOfOrder { before, after }));
        }
        Ok(None)
    }

    /// Inserts a media row under a given id and upload time (adopting a row the
    /// chat backend wrote, `media-store import`), after the checks of
    /// [`Tx::adoption_conflict`]. The AUTOINCREMENT sequence only ever grows, so
    /// an id below it is fine and later uploads still get new ids.
    pub fn insert_media_as(
        &self,
        new: &NewMedia,
        id: i64,
        uploaded_at_ms: i64,
    ) -> Result<std::result::Result<MediaRow, AdoptConflict>> {
        if let Some(conflict) = self.adoption_conflict(id, uploaded_at_ms)? {
            return Ok(Err(conflict));
        }
        let family = crate::policy::family(&new.file_type);
        self.conn().execute(
            "INSERT INTO media (id, uploader_id, file_type, family, hash, size, original_name, uploaded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                id,
                new.uploader_id,
                new.file_type,
                family,
                new.hash.as_bytes(),
                new.size,
                new.original_name,
                uploaded_at_ms
            ],
        )?;
        Ok(Ok(MediaRow {
            id,
            uploader_id: new.uploader_id,
            file_type: new.file_type.clone(),
            hash: new.hash,
            size: new.size,
            original_name: new.original_name.clone(),
            uploaded_at_ms,
            corrupt_since_ms: None,
            layout: Layout::default(),
        }))
    }

    /// Deletes a media row and releases its blob reference. Returns the row that was.
    pub fn delete_media(&self, id: i64, now_ms: i64) -> Result<Option<MediaRow>> {
        let Some(row) = self.get_media(id)? else {
            return Ok(None);
        };
        self.conn()
            .execute("DELETE FROM media WHERE id = ?1", [id])?;
        self.release_blob_ref(&row.hash, now_ms)?;
        Ok(Some(row))
    }
}

/// How a listing filters by type.
#[derive(Debug, Clone, PartialEq)]
pub enum TypeFilter {
    Exact(String),
    Family(String),
}

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub uploader_id: Option<i64>,
    pub file_type: Option<TypeFilter>,
    /// Inclusive lower bound on `uploaded_at`.
    pub since_ms: Option<i64>,
    /// Exclusive upper bound on `uploaded_at`.
    pub until_ms: Option<i64>,
    /// Only rows with an id below this (the keyset cursor).
    pub before_id: Option<i64>,
    /// Only damaged (`true`) or only healthy (`false`) media.
    pub corrupt: Option<bool>,
    /// Only media at least this wide / high (pixels, upright); media whose
    /// size is unknown are left out.
    pub min_width: Option<u32>,
    pub min_height: Option<u32>,
    pub limit: u32,
}

/// Lists newest first. Every filter combination is served by an index that
/// ends in `id`, so SQLite walks it backwards and stops after `limit` rows;
/// time bounds become id bounds through `media_by_time` because `uploaded_at`
/// grows with `id`.
impl Reader<'_> {
    pub fn list_media(&self, q: &ListQuery) -> Result<Vec<MediaRow>> {
        let mut sql = format!("SELECT {COLUMNS} FROM media WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(u) = q.uploader_id {
            sql.push_str(" AND uploader_id = ?");
            args.push(u.into());
        }
        match &q.file_type {
            Some(TypeFilter::Exact(t)) => {
                sql.push_str(" AND file_type = ?");
                args.push(t.clone().into());
            }
            Some(TypeFilter::Family(f)) => {
                sql.push_str(" AND family = ?");
                args.push(f.clone().into());
            }
            None => {}
        }
        match q.corrupt {
            Some(true) => sql.push_str(" AND corrupt_since IS NOT NULL"),
            Some(false) => sql.push_str(" AND corrupt_since IS NULL"),
            None => {}
        }
        if let Some(w) = q.min_width {
            sql.push_str(" AND width >= ?");
            args.push(i64::from(w).into());
        }
        if let Some(h) = q.min_height {
            sql.push_str(" AND height >= ?");
            args.push(i64::from(h).into());
        }
        // SQLite uses one lower and one upper bound on `id` per index search, so
        // every bound is folded into a single max(...)/min(...) expression: with
        // separate `id < cursor` and `id <= until_bound` terms it may pick the
        // looser one and scan millions of rows that the other rejects.
        let mut lower: Vec<&str> = Vec::new();
        let mut upper: Vec<&str> = Vec::new();
        let mut lower_args: Vec<rusqlite::types::Value> = Vec::new();
        let mut upper_args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(before) = q.before_id {
            upper.push("?");
            upper_args.push(before.saturating_sub(1).into());
        }
        if let Some(since) = q.since_ms {
            // `+` keeps the planner off `media_by_time` for the outer query: the id
            // bounds below select the same rows, already in id order.
            sql.push_str(" AND +uploaded_at >= ?");
            args.push(since.into());
            lower.push(
                "coalesce((SELECT id FROM media WHERE uploaded_at >= ? \
             ORDER BY uploaded_at, id LIMIT 1), 9223372036854775807)",
            );
            lower_args.push(since.into());
        }
        if let Some(until) = q.until_ms {
            sql.push_str(" AND +uploaded_at < ?");
            args.push(until.into());
            upper.push(
                "coalesce((SELECT id FROM media WHERE uploaded_at < ? \
             ORDER BY uploaded_at DESC, id DESC LIMIT 1), -1)",
            );
            upper_args.push(until.into());
        }
        let fold = |f: &str, terms: &[&str]| match terms {
            [one] => one.to_string(),
            many => format!("{f}({})", many.join(", ")),
        };
        if !lower.is_empty() {
            sql.push_str(&format!(" AND id >= {}", fold("max", &lower)));
            args.extend(lower_args);
        }
        if !upper.is_empty() {
            sql.push_str(&format!(" AND id <= {}", fold("min", &upper)));
            args.extend(upper_args);
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push(i64::from(q.limit).into());
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> rusqlite::Connection {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        super::super::migrations().to_latest(&mut c).unwrap();
        c
    }

    fn tx(c: &rusqlite::Connection) -> Tx<'_> {
        Tx {
            reader: Reader { conn: c },
        }
    }

    fn new(uploader: i64, t: &str, content: &[u8]) -> NewMedia {
        NewMedia {
            uploader_id: uploader,
            file_type: t.into(),
            hash: blake3::hash(content),
            size: content.len() as u64,
            original_name: None,
        }
    }

    #[test]
    fn refcount_goes_to_zero_with_tombstone_and_revives() {
        let c = conn();
        let h = blake3::hash(b"x");
        tx(&c).add_blob_ref(&h, 1, 10).unwrap();
        tx(&c).add_blob_ref(&h, 1, 11).unwrap();
        assert_eq!(tx(&c).blob_refcount(&h).unwrap(), Some(2));
        tx(&c).release_blob_ref(&h, 20).unwrap();
        tx(&c).release_blob_ref(&h, 30).unwrap();
        let (rc, zero): (i64, Option<i64>) = c
            .query_row("SELECT refcount, zero_since FROM blobs", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((rc, zero), (0, Some(30)));
        // Never below zero.
        tx(&c).release_blob_ref(&h, 40).unwrap();
        assert_eq!(tx(&c).blob_refcount(&h).unwrap(), Some(0));
        tx(&c).add_blob_ref(&h, 1, 50).unwrap();
        let zero: Option<i64> = c
            .query_row("SELECT zero_since FROM blobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(zero, None);
    }

    #[test]
    fn recording_a_layout_queues_nothing_for_the_mirror() {
        let c = conn();
        c.execute(
            "INSERT INTO meta (key, value) VALUES ('mysql_outbox', 'on')",
            [],
        )
        .unwrap();
        let outbox = || -> i64 {
            c.query_row("SELECT count(*) FROM mysql_outbox", [], |r| r.get(0))
                .unwrap()
        };
        let n = new(1, "image/png", b"a");
        tx(&c).add_blob_ref(&n.hash, 1, 0).unwrap();
        let first = tx(&c).insert_media(&n, 1).unwrap();
        assert_eq!(outbox(), 1);
        let layout = Layout {
            width: Some(3),
            height: Some(2),
            duration_ms: None,
            thumbhash: Some(vec![1, 2]),
        };
        assert_eq!(tx(&c).set_layout(&n.hash, &layout).unwrap(), 1);
        assert_eq!(outbox(), 1);
        // A duplicate inherits the layout in its insert: one entry, its own.
        let dup = tx(&c).insert_media(&n, 2).unwrap();
        assert_eq!(dup.layout, layout);
        assert_eq!(outbox(), 2);
        assert_eq!(tx(&c).get_media(first.id).unwrap().unwrap().layout, layout);
        // Mirrored columns still queue.
        c.execute(
            "UPDATE media SET original_name = 'x' WHERE id = ?1",
            [first.id],
        )
        .unwrap();
        assert_eq!(outbox(), 3);
    }

    #[test]
    fn uploaded_at_never_decreases_with_id() {
        let c = conn();
        let n = new(1, "image/png", b"a");
        tx(&c).add_blob_ref(&n.hash, 1, 0).unwrap();
        let a = tx(&c).insert_media(&n, 1000).unwrap();
        let b = tx(&c).insert_media(&n, 500).unwrap(); // clock stepped back
        assert!(b.id > a.id);
        assert_eq!(b.uploaded_at_ms, 1000);
    }

    #[test]
    fn list_filters_and_pages_newest_first() {
        let c = conn();
        for i in 0..10i64 {
            let t = if i % 2 == 0 { "image/png" } else { "video/mp4" };
            let n = new(i % 3, t, &i.to_le_bytes());
            tx(&c).add_blob_ref(&n.hash, 8, 0).unwrap();
            tx(&c).insert_media(&n, 1000 * i).unwrap();
        }
        let all = tx(&c)
            .list_media(&ListQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            all.iter().map(|r| r.id).collect::<Vec<_>>(),
            (1..=10).rev().collect::<Vec<_>>()
        );
        let images = tx(&c)
            .list_media(&ListQuery {
                file_type: Some(TypeFilter::Family("image".into())),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert!(images.iter().all(|r| r.file_type == "image/png"));
        assert_eq!(images.len(), 5);
        let page = tx(&c)
            .list_media(&ListQuery {
                before_id: Some(5),
                limit: 2,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), vec![4, 3]);
        let window = tx(&c)
            .list_media(&ListQuery {
                since_ms: Some(2000),
                until_ms: Some(5000),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            window.iter().map(|r| r.uploaded_at_ms).collect::<Vec<_>>(),
            vec![4000, 3000, 2000]
        );
        let none = tx(&c)
            .list_media(&ListQuery {
                since_ms: Some(99_000),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert!(none.is_empty());
    }
}
