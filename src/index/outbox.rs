//! The index side of the MySQL mirror: the `mysql_outbox` table (filled by the
//! triggers of migration 0003), its on/off switch, and the reads the mirror's
//! worker and reconcile need (storage-layout.md, "MySQL mirror").

use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::media::{COLUMNS, from_row as media_row};
use super::{MediaRow, Reader, Result, Tx};

/// `meta` key read by the triggers: 'on' while the mirror is enabled.
const STATE_KEY: &str = "mysql_outbox";
/// `meta` key: '1' while a full reconcile is owed (the outbox missed changes).
const PENDING_KEY: &str = "mysql_reconcile_pending";
/// `meta` key: the target (server, database, base URL) of the last full reconcile.
const TARGET_KEY: &str = "mysql_reconciled_target";
/// `meta` key: the MySQL target (server, database) whose `max(id)` the media
/// id floor has been raised above at least once.
const FLOOR_KEY: &str = "mysql_id_floor_target";
/// `meta` key: when (Unix ms) the last full reconcile finished queueing; the
/// periodic reconcile counts from it, across restarts.
const RECONCILED_AT_KEY: &str = "mysql_reconciled_at";

/// One queued change: "media `media_id` may differ from MySQL".
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub seq: i64,
    pub media_id: i64,
    /// Unix ms when the change committed.
    pub created_at_ms: i64,
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

fn get_meta(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

impl Tx<'_> {
    /// Turns the triggers off and empties the outbox (nobody would drain it).
    /// Returns how many entries were dropped. A later enable owes a reconcile.
    pub fn outbox_disable(&self) -> Result<usize> {
        let conn = self.conn();
        set_meta(conn, STATE_KEY, "off")?;
        Ok(conn.execute("DELETE FROM mysql_outbox", [])?)
    }

    /// Turns the triggers on. If they were off (first start with MySQL, or MySQL
    /// was disabled for a while), changes were not captured: a full reconcile is
    /// marked as owed. Returns whether one is owed.
    pub fn outbox_enable(&self) -> Result<bool> {
        let conn = self.conn();
        if get_meta(conn, STATE_KEY)?.as_deref() != Some("on") {
            set_meta(conn, PENDING_KEY, "1")?;
            set_meta(conn, STATE_KEY, "on")?;
        }
        Ok(get_meta(conn, PENDING_KEY)?.as_deref() == Some("1"))
    }

    /// Records that a full reconcile towards `target` has queued every
    /// difference, at `now_ms`.
    pub fn mark_reconciled(&self, target: &str, now_ms: i64) -> Result<()> {
        set_meta(self.conn(), PENDING_KEY, "0")?;
        set_meta(self.conn(), RECONCILED_AT_KEY, &now_ms.to_string())?;
        set_meta(self.conn(), TARGET_KEY, target)
    }

    /// Deletes every entry up to `seq` (all of them were in batches MySQL has
    /// committed: entries are read oldest first and seq grows in commit order).
    pub fn outbox_ack(&self, up_to_seq: i64) -> Result<usize> {
        Ok(self
            .conn()
            .execute("DELETE FROM mysql_outbox WHERE seq <= ?1", [up_to_seq])?)
    }

    /// Makes the next media id greater than `floor` (the largest id in the
    /// mirrored MySQL table), so new uploads never take an id the chat backend
    /// already used. Moves `sqlite_sequence` (AUTOINCREMENT's counter) up only,
    /// never down. Returns whether it moved.
    pub fn media_id_floor(&self, floor: i64) -> Result<bool> {
        let conn = self.conn();
        let current: Option<i64> = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'media'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let highest: i64 =
            conn.query_row("SELECT coalesce(max(id), 0) FROM media", [], |r| r.get(0))?;
        if current.unwrap_or(0).max(highest) >= floor {
            return Ok(false);
        }
        match current {
            Some(_) => conn.execute(
                "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'media'",
                [floor],
            )?,
            None => conn.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('media', ?1)",
                [floor],
            )?,
        };
        Ok(true)
    }

    /// Records that the id floor was raised above `target`'s `max(id)`.
    pub fn mark_id_floor_checked(&self, target: &str) -> Result<()> {
        set_meta(self.conn(), FLOOR_KEY, target)
    }

    /// Queues ids explicitly (reconcile repairs).
    pub fn outbox_enqueue(&self, ids: &[i64], now_ms: i64) -> Result<()> {
        let mut stmt = self
            .conn()
            .prepare_cached("INSERT INTO mysql_outbox (media_id, created_at) VALUES (?1, ?2)")?;
        for id in ids {
            stmt.execute(params![id, now_ms])?;
        }
        Ok(())
    }
}

impl Reader<'_> {
    /// Whether a full reconcile is owed towards `target` (a different server,
    /// database or base URL than the last reconcile also owes one).
    pub fn reconcile_owed(&self, target: &str) -> Result<bool> {
        Ok(get_meta(self.conn, PENDING_KEY)?.as_deref() == Some("1")
            || get_meta(self.conn, TARGET_KEY)?.as_deref() != Some(target))
    }

    /// When (Unix ms) the last full reconcile finished, if one ever did.
    pub fn last_reconcile_ms(&self) -> Result<Option<i64>> {
        Ok(get_meta(self.conn, RECONCILED_AT_KEY)?.and_then(|v| v.parse().ok()))
    }

    /// Whether the media id floor was ever raised above `target`'s `max(id)`.
    pub fn id_floor_checked(&self, target: &str) -> Result<bool> {
        Ok(get_meta(self.conn, FLOOR_KEY)?.as_deref() == Some(target))
    }

    /// The oldest `limit` entries after `after_seq`, in commit order.
    pub fn outbox_next_batch(&self, after_seq: i64, limit: usize) -> Result<Vec<OutboxEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, media_id, created_at FROM mysql_outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after_seq, limit as i64], |r| {
            Ok(OutboxEntry {
                seq: r.get(0)?,
                media_id: r.get(1)?,
                created_at_ms: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Entries not yet committed to MySQL. Computed from the seq range (two
    /// b-tree lookups, cheap even with millions queued): entries are appended with
    /// growing seq and removed only as a prefix, and a rolled-back insert also
    /// rolls back AUTOINCREMENT, so the range has no holes.
    pub fn outbox_backlog(&self) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT coalesce(max(seq) - min(seq) + 1, 0) FROM mysql_outbox",
            [],
            |r| r.get(0),
        )?)
    }

    /// The current rows of those `ids` that exist (the others were deleted).
    pub fn media_by_ids(&self, ids: &[i64]) -> Result<Vec<MediaRow>> {
        let conn = self.conn;
        let mut out = Vec::with_capacity(ids.len());
        // Stay well under SQLite's bound-parameter limit.
        for chunk in ids.chunks(5000) {
            let marks = vec!["?"; chunk.len()].join(",");
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM media WHERE id IN ({marks}) ORDER BY id"
            ))?;
            let rows = stmt.query_map(params_from_iter(chunk), media_row)?;
            for row in rows {
                out.push(row?);
            }
        }
        Ok(out)
    }

    /// Up to `limit` rows with `id >= from`, by id (reconcile's chunks).
    pub fn media_from(&self, from: i64, limit: usize) -> Result<Vec<MediaRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM media WHERE id >= ?1 ORDER BY id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![from, limit as i64], media_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::NewMedia;

    fn tx(c: &Connection) -> Tx<'_> {
        Tx {
            reader: Reader { conn: c },
        }
    }

    fn conn() -> Connection {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::index::open_connection(&dir.path().join("i.db")).unwrap();
        // The file stays open; the folder may go.
        std::mem::forget(dir);
        c
    }

    fn upload(c: &Connection, seed: u8) -> i64 {
        let n = NewMedia {
            uploader_id: 7,
            file_type: "image/png".into(),
            hash: blake3::hash(&[seed]),
            size: 1,
            original_name: None,
        };
        tx(c).add_blob_ref(&n.hash, 1, 0).unwrap();
        tx(c).insert_media(&n, 1000).unwrap().id
    }

    #[test]
    fn triggers_queue_every_change_only_while_enabled() {
        let c = conn();
        // Fresh index: off until the daemon enables it.
        upload(&c, 1);
        assert_eq!(tx(&c).outbox_backlog().unwrap(), 0);
        assert!(
            tx(&c).outbox_enable().unwrap(),
            "first enable owes a reconcile"
        );
        let a = upload(&c, 2);
        let b = upload(&c, 3);
        tx(&c).delete_media(a, 2000).unwrap();
        // A bulk delete that bypasses delete_media is captured too.
        c.execute("DELETE FROM media WHERE id = ?1", [b]).unwrap();
        c.execute("UPDATE media SET file_type = 'image/gif' WHERE id = 1", [])
            .unwrap();
        let ids: Vec<i64> = tx(&c)
            .outbox_next_batch(0, 100)
            .unwrap()
            .iter()
            .map(|e| e.media_id)
            .collect();
        assert_eq!(ids, vec![a, b, a, b, 1]);
        let first_two = tx(&c).outbox_next_batch(0, 2).unwrap();
        assert_eq!(
            tx(&c).outbox_next_batch(first_two[0].seq, 1).unwrap()[0],
            first_two[1]
        );
        assert_eq!(tx(&c).outbox_ack(first_two[1].seq).unwrap(), 2);
        assert_eq!(tx(&c).outbox_backlog().unwrap(), 3);
        assert_eq!(tx(&c).outbox_disable().unwrap(), 3);
        upload(&c, 4);
        assert_eq!(tx(&c).outbox_backlog().unwrap(), 0);
    }

    #[test]
    fn reconcile_is_owed_after_enabling_and_on_a_new_target() {
        let c = conn();
        assert!(tx(&c).outbox_enable().unwrap());
        assert!(tx(&c).reconcile_owed("db1").unwrap());
        assert_eq!(tx(&c).last_reconcile_ms().unwrap(), None);
        tx(&c).mark_reconciled("db1", 1234).unwrap();
        assert_eq!(tx(&c).last_reconcile_ms().unwrap(), Some(1234));
        assert!(!tx(&c).reconcile_owed("db1").unwrap());
        assert!(!tx(&c).outbox_enable().unwrap(), "still on: nothing missed");
        assert!(tx(&c).reconcile_owed("db2").unwrap());
        tx(&c).outbox_disable().unwrap();
        assert!(
            tx(&c).outbox_enable().unwrap(),
            "changes while off were missed"
        );
        assert!(tx(&c).reconcile_owed("db1").unwrap());
    }

    #[test]
    fn media_id_floor_moves_the_next_id_up_only() {
        let c = conn();
        // Before any upload (no sqlite_sequence row yet).
        assert!(tx(&c).media_id_floor(100).unwrap());
        assert_eq!(upload(&c, 1), 101);
        assert!(!tx(&c).media_id_floor(50).unwrap(), "never down");
        assert!(!tx(&c).media_id_floor(101).unwrap());
        assert!(tx(&c).media_id_floor(500).unwrap());
        assert_eq!(upload(&c, 2), 501);
    }

    #[test]
    fn adopted_rows_keep_their_id_and_time_and_respect_time_order() {
        use crate::index::AdoptConflict;
        let c = conn();
        tx(&c).media_id_floor(10).unwrap();
        let ours = upload(&c, 1); // id 11 at t=1000
        let n = NewMedia {
            uploader_id: 3,
            file_type: "image/png".into(),
            hash: blake3::hash(b"old"),
            size: 3,
            original_name: None,
        };
        tx(&c).add_blob_ref(&n.hash, 3, 0).unwrap();
        let row = tx(&c).insert_media_as(&n, 4, 900).unwrap().unwrap();
        assert_eq!((row.id, row.uploaded_at_ms), (4, 900));
        assert_eq!(tx(&c).get_media(4).unwrap().unwrap(), row);
        assert!(matches!(
            tx(&c).insert_media_as(&n, 4, 900).unwrap(),
            Err(AdoptConflict::IdTaken(_))
        ));
        // Between id 4 (t=900) and id 11 (t=1000): 950 fits, 1500 and 100 do not.
        assert!(tx(&c).adoption_conflict(7, 950).unwrap().is_none());
        assert!(matches!(
            tx(&c).adoption_conflict(7, 1500).unwrap(),
            Some(AdoptConflict::OutOfOrder { .. })
        ));
        assert!(matches!(
            tx(&c).adoption_conflict(7, 100).unwrap(),
            Some(AdoptConflict::OutOfOrder { .. })
        ));
        // New uploads still go above everything.
        assert!(upload(&c, 2) > ours);
    }

    #[test]
    fn reads_current_rows_by_id_and_by_range() {
        let c = conn();
        let ids: Vec<i64> = (0..10).map(|i| upload(&c, i)).collect();
        tx(&c).delete_media(ids[3], 0).unwrap();
        let got = tx(&c).media_by_ids(&[ids[2], ids[3], ids[4]]).unwrap();
        assert_eq!(
            got.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![ids[2], ids[4]]
        );
        let page = tx(&c).media_from(ids[2], 3).unwrap();
        assert_eq!(
            page.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![ids[2], ids[4], ids[5]]
        );
    }
}
