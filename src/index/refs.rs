//! Message references: which message carries which media
//! (storage-layout.md, "Message references").
//!
//! A media row whose last message reference goes is deleted in the same
//! transaction, and its blob reference is released there too (I3), so a blob
//! whose last media row is gone has count 0 and is garbage for `gc`.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{MediaRow, Reader, Result, Tx};

/// What [`Tx::attach`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum AttachOutcome {
    /// Attached (`created`: false when the reference already existed).
    Attached(Attached),
    /// No media row with that id.
    MediaMissing,
    /// The message already belongs to another group.
    OtherGroup { existing: i64 },
}

/// The outcome of attaching a media to a message.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Attached {
    pub message_id: i64,
    pub media_id: i64,
    pub group_id: i64,
    /// False when the reference already existed (the call is idempotent).
    pub created: bool,
}

/// Records that `message_id` (in `group_id`) carries `media_id`.
/// What releasing references did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Released {
    /// Distinct messages whose references were removed.
    pub messages: u64,
    /// References removed.
    pub references: u64,
    /// Media rows deleted because their last reference went.
    pub media_deleted: u64,
}

/// One uploader's footprint.
#[derive(Debug, Clone, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Usage {
    pub uploader_id: i64,
    /// Number of media rows (uploads) the uploader has.
    pub file_count: u64,
    /// Sum of the sizes of those uploads, duplicates counted each time.
    pub bytes_referenced: u64,
    /// Sum of the sizes of the distinct blobs they use: what they cost on disk
    /// after deduplication (a blob shared with others counts in full).
    pub bytes_stored: u64,
}

impl Tx<'_> {
    pub fn attach(
        &self,
        message_id: i64,
        media_id: i64,
        group_id: i64,
        now: i64,
    ) -> Result<AttachOutcome> {
        let tx = self.conn();
        if self.get_media(media_id)?.is_none() {
            return Ok(AttachOutcome::MediaMissing);
        }
        let existing: Option<i64> = tx
            .query_row(
                "SELECT group_id FROM message_media WHERE message_id = ?1 LIMIT 1",
                [message_id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(existing) = existing
            && existing != group_id
        {
            return Ok(AttachOutcome::OtherGroup { existing });
        }
        let created = tx.execute(
            "INSERT INTO message_media (message_id, media_id, group_id, attached_at)
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            params![message_id, media_id, group_id, now],
        )? == 1;
        Ok(AttachOutcome::Attached(Attached {
            message_id,
            media_id,
            group_id,
            created,
        }))
    }

    /// Releases every reference of one message; media left without any reference
    /// are deleted through `index::media::delete_media` (row and blob ref together).
    pub fn delete_message(&self, message_id: i64, now: i64) -> Result<Released> {
        let tx = self.conn();
        let media_ids: Vec<i64> = tx
            .prepare_cached("SELECT media_id FROM message_media WHERE message_id = ?1")?
            .query_map([message_id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let references = tx.execute(
            "DELETE FROM message_media WHERE message_id = ?1",
            [message_id],
        )? as u64;
        let mut media_deleted = 0;
        for id in media_ids {
            let still: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM message_media WHERE media_id = ?1)",
                [id],
                |r| r.get(0),
            )?;
            if !still && self.delete_media(id, now)?.is_some() {
                media_deleted += 1;
            }
        }
        Ok(Released {
            messages: u64::from(references > 0),
            references,
            media_deleted,
        })
    }

    /// Releases every reference of every message of a group, set-based: a fixed
    /// number of statements whatever the group's size (100,000 messages in one
    /// transaction). Keeps the semantics of `index::media::delete_media`: each
    /// blob's count drops by exactly the number of its media rows deleted, a count
    /// reaching 0 is stamped with `zero_since`, and media rows are deleted by SQL
    /// on `media`, so triggers on that table see every row.
    pub fn delete_group(&self, group_id: i64, now: i64) -> Result<Released> {
        let tx = self.conn();
        // Temp tables live in this connection's transaction: a failed job's
        // savepoint rollback removes them too; the DROPs below keep the names free.
        tx.execute_batch(
            "DROP TABLE IF EXISTS temp.lifecycle_group_media;
         DROP TABLE IF EXISTS temp.lifecycle_doomed;
         DROP TABLE IF EXISTS temp.lifecycle_gone_hashes;",
        )?;
        let messages: u64 = tx.query_row(
            "SELECT count(DISTINCT message_id) FROM message_media WHERE group_id = ?1",
            [group_id],
            |r| r.get(0),
        )?;
        tx.execute(
            "CREATE TEMP TABLE lifecycle_group_media AS
         SELECT DISTINCT media_id AS id FROM message_media WHERE group_id = ?1",
            [group_id],
        )?;
        let references = tx.execute("DELETE FROM message_media WHERE group_id = ?1", [group_id])?;
        tx.execute_batch(
            "CREATE TEMP TABLE lifecycle_doomed AS
         SELECT g.id AS id FROM lifecycle_group_media g
         WHERE NOT EXISTS (SELECT 1 FROM message_media r WHERE r.media_id = g.id);
         CREATE TEMP TABLE lifecycle_gone_hashes AS
         SELECT m.hash AS hash, count(*) AS n FROM media m
         WHERE m.id IN (SELECT id FROM lifecycle_doomed) GROUP BY m.hash;",
        )?;
        // In SET, `refcount` is the value before this update.
        tx.execute(
            "UPDATE blobs SET
             refcount = max(refcount - g.n, 0),
             zero_since = CASE WHEN refcount - g.n <= 0 THEN ?1 ELSE zero_since END
         FROM lifecycle_gone_hashes g WHERE blobs.hash = g.hash",
            [now],
        )?;
        let media_deleted = tx.execute(
            "DELETE FROM media WHERE id IN (SELECT id FROM lifecycle_doomed)",
            [],
        )?;
        tx.execute_batch(
            "DROP TABLE temp.lifecycle_group_media;
         DROP TABLE temp.lifecycle_doomed;
         DROP TABLE temp.lifecycle_gone_hashes;",
        )?;
        Ok(Released {
            messages,
            references: references as u64,
            media_deleted: media_deleted as u64,
        })
    }
}

impl Reader<'_> {
    pub fn message_media(&self, message_id: i64) -> Result<(Option<i64>, Vec<MediaRow>)> {
        let conn = self.conn;
        let pairs: Vec<(i64, i64)> = conn
            .prepare_cached(
                "SELECT media_id, group_id FROM message_media WHERE message_id = ?1
             ORDER BY attached_at, media_id",
            )?
            .query_map([message_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let group = pairs.first().map(|p| p.1);
        let mut rows = Vec::with_capacity(pairs.len());
        for (id, _) in pairs {
            if let Some(row) = self.get_media(id)? {
                rows.push(row);
            }
        }
        Ok((group, rows))
    }

    /// The uploader's (file count, bytes referenced), kept exact by triggers on `media`.
    pub fn counted_usage(&self, uploader_id: i64) -> Result<(u64, u64)> {
        let conn = self.conn;
        Ok(conn
            .query_row(
                "SELECT file_count, bytes FROM uploader_usage WHERE uploader_id = ?1",
                [uploader_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((0, 0)))
    }

    pub fn usage(&self, uploader_id: i64) -> Result<Usage> {
        let conn = self.conn;
        let (file_count, bytes_referenced) = self.counted_usage(uploader_id)?;
        let bytes_stored: u64 = conn.query_row(
            "SELECT coalesce(sum(size), 0) FROM blobs
         WHERE hash IN (SELECT hash FROM media WHERE uploader_id = ?1)",
            [uploader_id],
            |r| r.get(0),
        )?;
        Ok(Usage {
            uploader_id,
            file_count,
            bytes_referenced,
            bytes_stored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::NewMedia;
    use rusqlite::Connection;

    fn conn() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::index::open_connection(&dir.path().join("i.db")).unwrap();
        (dir, c)
    }

    fn tx(c: &Connection) -> Tx<'_> {
        Tx {
            reader: Reader { conn: c },
        }
    }

    fn attach(c: &Connection, message: i64, media: i64, group: i64, now: i64) -> AttachOutcome {
        tx(c).attach(message, media, group, now).unwrap()
    }

    fn created(outcome: AttachOutcome) -> bool {
        match outcome {
            AttachOutcome::Attached(a) => a.created,
            other => panic!("not attached: {other:?}"),
        }
    }

    fn upload(c: &Connection, uploader: i64, content: &[u8]) -> i64 {
        let hash = blake3::hash(content);
        tx(c).add_blob_ref(&hash, content.len() as u64, 1).unwrap();
        tx(c)
            .insert_media(
                &NewMedia {
                    uploader_id: uploader,
                    file_type: "image/png".into(),
                    hash,
                    size: content.len() as u64,
                    original_name: None,
                },
                1,
            )
            .unwrap()
            .id
    }

    fn blob(c: &Connection, content: &[u8]) -> Option<(i64, Option<i64>)> {
        c.query_row(
            "SELECT refcount, zero_since FROM blobs WHERE hash = ?1",
            [blake3::hash(content).as_bytes()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .unwrap()
    }

    #[test]
    fn attach_is_idempotent_and_refuses_another_group() {
        let (_dir, c) = conn();
        let m = upload(&c, 1, b"a");
        assert!(created(attach(&c, 10, m, 5, 2)));
        assert!(!created(attach(&c, 10, m, 5, 3)));
        assert_eq!(
            attach(&c, 10, m, 6, 3),
            AttachOutcome::OtherGroup { existing: 5 }
        );
        assert_eq!(attach(&c, 10, 999, 5, 3), AttachOutcome::MediaMissing);
    }

    #[test]
    fn media_goes_with_its_last_message_and_its_blob_count_follows() {
        let (_dir, c) = conn();
        let m = upload(&c, 1, b"shared");
        let other = upload(&c, 2, b"shared"); // same blob, another upload
        attach(&c, 10, m, 5, 2);
        attach(&c, 11, m, 5, 2); // a forward
        let r = tx(&c).delete_message(10, 3).unwrap();
        assert_eq!((r.references, r.media_deleted), (1, 0));
        assert!(tx(&c).get_media(m).unwrap().is_some());
        let r = tx(&c).delete_message(11, 4).unwrap();
        assert_eq!((r.references, r.media_deleted), (1, 1));
        assert!(tx(&c).get_media(m).unwrap().is_none());
        assert_eq!(blob(&c, b"shared"), Some((1, None)));
        assert!(tx(&c).get_media(other).unwrap().is_some());
        assert_eq!(tx(&c).usage(1).unwrap().file_count, 0);
    }

    #[test]
    fn group_delete_keeps_counts_exact_and_spares_media_other_groups_use() {
        let (_dir, c) = conn();
        let a = upload(&c, 1, b"a");
        let a2 = upload(&c, 1, b"a"); // duplicate content: refcount 2
        let b = upload(&c, 2, b"b");
        let kept = upload(&c, 3, b"c");
        attach(&c, 1, a, 7, 1);
        attach(&c, 2, a2, 7, 1);
        attach(&c, 2, b, 7, 1);
        attach(&c, 3, kept, 7, 1);
        attach(&c, 4, kept, 8, 1); // forwarded into group 8
        let r = tx(&c).delete_group(7, 99).unwrap();
        assert_eq!(
            r,
            Released {
                messages: 3,
                references: 4,
                media_deleted: 3
            }
        );
        assert_eq!(blob(&c, b"a"), Some((0, Some(99))));
        assert_eq!(blob(&c, b"b"), Some((0, Some(99))));
        assert_eq!(blob(&c, b"c"), Some((1, None)));
        assert!(tx(&c).get_media(kept).unwrap().is_some());
        let u = tx(&c).usage(1).unwrap();
        assert_eq!((u.file_count, u.bytes_referenced), (0, 0));
        // Idempotent: a second delete finds nothing.
        assert_eq!(tx(&c).delete_group(7, 100).unwrap(), Released::default());
    }

    #[test]
    fn usage_counts_duplicates_once_for_stored_bytes() {
        let (_dir, c) = conn();
        upload(&c, 1, b"12345");
        upload(&c, 1, b"12345");
        upload(&c, 1, b"678");
        let u = tx(&c).usage(1).unwrap();
        assert_eq!(
            (u.file_count, u.bytes_referenced, u.bytes_stored),
            (3, 13, 8)
        );
    }
}
