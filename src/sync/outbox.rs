//! The SQLite side of the mirror: the `mysql_outbox` table (filled by the
//! triggers of migration 0003), its on/off switch, and the reads the worker and
//! reconcile need. Functions take a connection or transaction; callers choose
//! the transaction boundaries (the index writer for writes).

use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::index::Result;
use crate::index::media::MediaRow;

/// `meta` key read by the triggers: 'on' while the mirror is enabled.
const STATE_KEY: &str = "mysql_outbox";
/// `meta` key: '1' while a full reconcile is owed (the outbox missed changes).
const PENDING_KEY: &str = "mysql_reconcile_pending";
/// `meta` key: the target (server, database, base URL) of the last full reconcile.
const TARGET_KEY: &str = "mysql_reconciled_target";

/// One queued change: "media `media_id` may differ from MySQL".
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: i64,
    pub media_id: i64,
    /// Unix ms when the change committed.
    pub created_at_ms: i64,
}

fn immediate<T>(conn: &Connection, f: impl FnOnce() -> Result<T>) -> Result<T> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match f() {
        Ok(v) => {
            conn.execute_batch("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
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

/// Turns the triggers off and empties the outbox (nobody would drain it).
/// Returns how many entries were dropped. A later [`enable`] owes a reconcile.
pub fn disable(conn: &Connection) -> Result<usize> {
    immediate(conn, || {
        set_meta(conn, STATE_KEY, "off")?;
        Ok(conn.execute("DELETE FROM mysql_outbox", [])?)
    })
}

/// Turns the triggers on. If they were off (first start with MySQL, or MySQL
/// was disabled for a while), changes were not captured: a full reconcile is
/// marked as owed. Returns whether one is owed.
pub fn enable(conn: &Connection) -> Result<bool> {
    immediate(conn, || {
        if get_meta(conn, STATE_KEY)?.as_deref() != Some("on") {
            set_meta(conn, PENDING_KEY, "1")?;
            set_meta(conn, STATE_KEY, "on")?;
        }
        Ok(get_meta(conn, PENDING_KEY)?.as_deref() == Some("1"))
    })
}

/// Whether a full reconcile is owed towards `target` (a different server,
/// database or base URL than the last reconcile also owes one).
pub fn reconcile_owed(conn: &Connection, target: &str) -> Result<bool> {
    Ok(get_meta(conn, PENDING_KEY)?.as_deref() == Some("1")
        || get_meta(conn, TARGET_KEY)?.as_deref() != Some(target))
}

/// Records that a full reconcile towards `target` has queued every difference.
pub fn mark_reconciled(conn: &Connection, target: &str) -> Result<()> {
    set_meta(conn, PENDING_KEY, "0")?;
    set_meta(conn, TARGET_KEY, target)
}

/// The oldest `limit` entries after `after_seq`, in commit order.
pub fn next_batch(conn: &Connection, after_seq: i64, limit: usize) -> Result<Vec<Entry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, media_id, created_at FROM mysql_outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after_seq, limit as i64], |r| {
        Ok(Entry {
            seq: r.get(0)?,
            media_id: r.get(1)?,
            created_at_ms: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes every entry up to `seq` (all of them were in batches MySQL has
/// committed: entries are read oldest first and seq grows in commit order).
pub fn ack(conn: &Connection, up_to_seq: i64) -> Result<usize> {
    Ok(conn.execute("DELETE FROM mysql_outbox WHERE seq <= ?1", [up_to_seq])?)
}

/// Queues ids explicitly (reconcile repairs).
pub fn enqueue(conn: &Connection, ids: &[i64]) -> Result<()> {
    let now = crate::timefmt::now_ms();
    let mut stmt =
        conn.prepare_cached("INSERT INTO mysql_outbox (media_id, created_at) VALUES (?1, ?2)")?;
    for id in ids {
        stmt.execute(params![id, now])?;
    }
    Ok(())
}

/// Entries not yet committed to MySQL. Computed from the seq range (two
/// b-tree lookups, cheap even with millions queued): entries are appended with
/// growing seq and removed only as a prefix, and a rolled-back insert also
/// rolls back AUTOINCREMENT, so the range has no holes.
pub fn backlog(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT coalesce(max(seq) - min(seq) + 1, 0) FROM mysql_outbox",
        [],
        |r| r.get(0),
    )?)
}

use crate::index::media::{COLUMNS, from_row as media_row};

/// The current rows of those `ids` that exist (the others were deleted).
pub fn rows_by_ids(conn: &Connection, ids: &[i64]) -> Result<Vec<MediaRow>> {
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
pub fn rows_from(conn: &Connection, from: i64, limit: usize) -> Result<Vec<MediaRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM media WHERE id >= ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![from, limit as i64], media_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::media::{NewMedia, add_blob_ref, delete_media, insert_media};

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
        add_blob_ref(c, &n.hash, 1, 0).unwrap();
        insert_media(c, &n, 1000).unwrap().id
    }

    #[test]
    fn triggers_queue_every_change_only_while_enabled() {
        let c = conn();
        // Fresh index: off until the daemon enables it.
        upload(&c, 1);
        assert_eq!(backlog(&c).unwrap(), 0);
        assert!(enable(&c).unwrap(), "first enable owes a reconcile");
        let a = upload(&c, 2);
        let b = upload(&c, 3);
        delete_media(&c, a, 2000).unwrap();
        // A bulk delete that bypasses delete_media is captured too.
        c.execute("DELETE FROM media WHERE id = ?1", [b]).unwrap();
        c.execute("UPDATE media SET file_type = 'image/gif' WHERE id = 1", [])
            .unwrap();
        let ids: Vec<i64> = next_batch(&c, 0, 100)
            .unwrap()
            .iter()
            .map(|e| e.media_id)
            .collect();
        assert_eq!(ids, vec![a, b, a, b, 1]);
        let first_two = next_batch(&c, 0, 2).unwrap();
        assert_eq!(
            next_batch(&c, first_two[0].seq, 1).unwrap()[0],
            first_two[1]
        );
        assert_eq!(ack(&c, first_two[1].seq).unwrap(), 2);
        assert_eq!(backlog(&c).unwrap(), 3);
        assert_eq!(disable(&c).unwrap(), 3);
        upload(&c, 4);
        assert_eq!(backlog(&c).unwrap(), 0);
    }

    #[test]
    fn reconcile_is_owed_after_enabling_and_on_a_new_target() {
        let c = conn();
        assert!(enable(&c).unwrap());
        assert!(reconcile_owed(&c, "db1").unwrap());
        mark_reconciled(&c, "db1").unwrap();
        assert!(!reconcile_owed(&c, "db1").unwrap());
        assert!(!enable(&c).unwrap(), "still on: nothing missed");
        assert!(reconcile_owed(&c, "db2").unwrap());
        disable(&c).unwrap();
        assert!(enable(&c).unwrap(), "changes while off were missed");
        assert!(reconcile_owed(&c, "db1").unwrap());
    }

    #[test]
    fn reads_current_rows_by_id_and_by_range() {
        let c = conn();
        let ids: Vec<i64> = (0..10).map(|i| upload(&c, i)).collect();
        delete_media(&c, ids[3], 0).unwrap();
        let got = rows_by_ids(&c, &[ids[2], ids[3], ids[4]]).unwrap();
        assert_eq!(
            got.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![ids[2], ids[4]]
        );
        let page = rows_from(&c, ids[2], 3).unwrap();
        assert_eq!(
            page.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![ids[2], ids[4], ids[5]]
        );
    }
}
