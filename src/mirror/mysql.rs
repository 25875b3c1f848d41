//! The MySQL side: connection options, the schema migrations, the mirror's
//! statements, and the GC safety belt ([`MysqlReferences`]).
//!
//! Every write is idempotent (`INSERT … ON DUPLICATE KEY UPDATE`, `DELETE …
//! WHERE id IN (…)`) with the index's own ids, so sending a batch twice (after a
//! crash between the MySQL commit and the outbox ack) changes nothing.
//!
//! Ownership (storage-layout.md M6): `media_files` may hold rows the chat
//! backend wrote. The ids media-store wrote are listed in `media_store_rows`
//! (migration 0003), added in the same transaction as the first upsert. Every
//! write here touches only those: an upsert of an id that exists and is not
//! listed is skipped and reported, a delete of such an id does nothing. Ids
//! listed with `adopting = 1` (import is taking them over) may be upserted,
//! which makes them owned, but are never deleted.

use std::sync::Mutex;
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, TxOpts, Value};

use super::config::{IDS_PLACEHOLDER, MysqlConfig};
use super::{MirrorError, Result};
use crate::index::MediaRow;

/// `migrations/mysql/`, in order. A hand-written runner rather than refinery:
/// MySQL DDL is not transactional, so all a runner can do is apply each file
/// once under a lock and record it; that is a few lines, and it keeps us on the
/// one `mysql` driver version the worker uses.
const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "media_files",
        include_str!("../../migrations/mysql/0001_media_files.sql"),
    ),
    (
        2,
        "media_store_columns",
        include_str!("../../migrations/mysql/0002_media_store_columns.sql"),
    ),
    (
        3,
        "media_store_rows",
        include_str!("../../migrations/mysql/0003_media_store_rows.sql"),
    ),
];

/// The schema version this build writes.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Connection options from the config, with our timeouts and a UTC session
/// (`uploaded_at` is a TIMESTAMP: converting through a zone with DST could
/// shift or merge instants).
pub fn opts(cfg: &MysqlConfig) -> Result<Opts> {
    let base = Opts::from_url(&cfg.url).map_err(MirrorError::Url)?;
    let io = Some(Duration::from_millis(cfg.io_timeout_ms));
    Ok(OptsBuilder::from_opts(base)
        .tcp_connect_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
        .read_timeout(io)
        .write_timeout(io)
        .init(vec!["SET time_zone = '+00:00'", "SET NAMES utf8mb4"])
        .into())
}

/// Which database the mirror writes, without credentials (for logs and to
/// notice a changed target).
pub fn describe(opts: &Opts) -> String {
    let place = match opts.get_socket() {
        Some(socket) => format!("unix:{socket}"),
        None => format!("{}:{}", opts.get_ip_or_hostname(), opts.get_tcp_port()),
    };
    format!("{place}/{}", opts.get_db_name().unwrap_or(""))
}

pub fn connect(opts: &Opts) -> Result<Conn> {
    Ok(Conn::new(opts.clone())?)
}

/// Applies the migrations not yet recorded in `media_store_schema`; returns the
/// versions applied now. Safe to run concurrently and repeatedly.
pub fn migrate(conn: &mut Conn) -> Result<Vec<u32>> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS media_store_schema (
            version    INT          NOT NULL PRIMARY KEY,
            name       VARCHAR(100) NOT NULL,
            applied_at TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
    )?;
    let got: Option<Option<i64>> =
        conn.query_first("SELECT GET_LOCK(CONCAT('ms_migrate:', MD5(DATABASE())), 60)")?;
    if got != Some(Some(1)) {
        return Err(MirrorError::Locked);
    }
    let result = (|| {
        let done: Vec<u32> = conn.query("SELECT version FROM media_store_schema")?;
        let mut applied = Vec::new();
        for (version, name, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            conn.query_drop(*sql)?;
            conn.exec_drop(
                "INSERT INTO media_store_schema (version, name) VALUES (?, ?)",
                (version, name),
            )?;
            tracing::info!(version, name, "applied MySQL migration");
            applied.push(*version);
        }
        Ok(applied)
    })();
    let _ = conn.query_drop("DO RELEASE_LOCK(CONCAT('ms_migrate:', MD5(DATABASE())))");
    result
}

/// Fails unless every migration has been applied.
pub fn check_schema(conn: &mut Conn) -> Result<()> {
    let found: Option<Option<u32>> = conn
        .query_first("SELECT MAX(version) FROM media_store_schema")
        .or_else(|e| match &e {
            // 1146: table does not exist (never migrated).
            mysql::Error::MySqlError(m) if m.code == 1146 => Ok(None),
            _ => Err(e),
        })?;
    let found = found.flatten().unwrap_or(0);
    if found < latest_version() {
        return Err(MirrorError::Schema {
            found,
            needed: latest_version(),
        });
    }
    Ok(())
}

/// Takes the database's mirror lock (held until the connection closes): two
/// writers draining outboxes into one table could apply an older read of a row
/// after a newer one. Returns false when another connection holds it.
pub fn try_lock_mirror(conn: &mut Conn) -> Result<bool> {
    let got: Option<Option<i64>> =
        conn.query_first("SELECT GET_LOCK(CONCAT('ms_mirror:', MD5(DATABASE())), 0)")?;
    Ok(got == Some(Some(1)))
}

/// A `media_files` row, as the mirror writes it and reconcile compares it.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorRow {
    pub id: i64,
    pub uploader_id: i64,
    pub file_url: String,
    pub file_type: String,
    /// Unix seconds (the column is a second-precision TIMESTAMP).
    pub uploaded_at_s: i64,
    pub size: u64,
    pub blake3: String,
}

impl MirrorRow {
    pub fn from_media(row: &MediaRow, public_base_url: &str) -> MirrorRow {
        MirrorRow {
            id: row.id,
            uploader_id: row.uploader_id,
            // The API's own function, so the mirror and the API never disagree.
            file_url: crate::media::file_url(public_base_url, row.id),
            file_type: mirror_file_type(&row.file_type),
            uploaded_at_s: row.uploaded_at_ms.div_euclid(1000),
            size: row.size,
            blake3: row.hash.to_hex().to_string(),
        }
    }
}

/// The seed's `media_files.file_type` is `VARCHAR(50)`, "MIME type or file
/// extension". MIME types that fit are stored as they are; the longer ones (the
/// OOXML and OpenDocument types, up to 73 characters) as their file extension,
/// which is what the seed allows and what a chat client shows anyway.
pub fn mirror_file_type(mime: &str) -> String {
    const SEED_WIDTH: usize = 50;
    if mime.len() <= SEED_WIDTH {
        return mime.to_owned();
    }
    let known = match mime {
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => Some("docx"),
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => Some("xlsx"),
        "application/vnd.openxmlformats-officedocument.presentationml.presentation" => Some("pptx"),
        "application/vnd.oasis.opendocument.text" => Some("odt"),
        "application/vnd.oasis.opendocument.spreadsheet" => Some("ods"),
        "application/vnd.oasis.opendocument.presentation" => Some("odp"),
        _ => None,
    };
    match known {
        Some(ext) => ext.to_owned(),
        // Any other long type: its last dotted component, cut to fit.
        None => {
            let tail = mime.rsplit(['.', '/']).next().unwrap_or(mime);
            tail.chars().take(SEED_WIDTH).collect()
        }
    }
}

fn check_id(id: i64) -> Result<()> {
    if i32::try_from(id).is_err() {
        return Err(MirrorError::IdOutOfRange(id));
    }
    Ok(())
}

/// What [`apply`] did not do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Ids to upsert whose `media_files` row exists but is not media-store's
    /// (the chat backend's): left untouched.
    pub foreign: Vec<i64>,
}

fn marks(n: usize) -> String {
    vec!["?"; n].join(",")
}

/// In one MySQL transaction: upserts `rows` and deletes `deleted` ids, touching
/// only rows media-store owns (or new ones, which it then owns). Returns the
/// ids it left alone because another writer owns them.
pub fn apply(conn: &mut Conn, rows: &[MirrorRow], deleted: &[i64]) -> Result<Skipped> {
    let mut tx = conn.start_transaction(TxOpts::default())?;
    let mut skipped = Skipped::default();
    if !rows.is_empty() {
        for r in rows {
            check_id(r.id)?;
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        // A locking read: the existing rows are locked, and (REPEATABLE READ,
        // InnoDB's default) so are the gaps of the absent ids, so no other
        // writer can insert one of them before this transaction ends.
        let existing: Vec<(i64, Option<i64>)> = tx.exec(
            format!(
                "SELECT f.id, o.id FROM media_files f LEFT JOIN media_store_rows o ON o.id = f.id \
                 WHERE f.id IN ({}) FOR UPDATE",
                marks(ids.len())
            ),
            ids.clone(),
        )?;
        skipped.foreign = existing
            .iter()
            .filter(|(_, owner)| owner.is_none())
            .map(|(id, _)| *id)
            .collect();
        skipped.foreign.sort_unstable();
        let ours: Vec<&MirrorRow> = rows
            .iter()
            .filter(|r| skipped.foreign.binary_search(&r.id).is_err())
            .collect();
        if !ours.is_empty() {
            let mut sql = String::with_capacity(120 + ours.len() * 40);
            sql.push_str(
                "INSERT INTO media_files (id, uploader_id, file_url, file_type, uploaded_at, size, blake3) VALUES ",
            );
            let mut params: Vec<Value> = Vec::with_capacity(ours.len() * 7);
            for (i, r) in ours.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str("(?,?,?,?,FROM_UNIXTIME(?),?,?)");
                params.extend([
                    r.id.into(),
                    r.uploader_id.into(),
                    r.file_url.clone().into(),
                    r.file_type.clone().into(),
                    r.uploaded_at_s.into(),
                    r.size.into(),
                    r.blake3.clone().into(),
                ]);
            }
            // VALUES(col) rather than MySQL 8's row alias: MariaDB knows only this form.
            sql.push_str(
                " ON DUPLICATE KEY UPDATE uploader_id = VALUES(uploader_id), file_url = VALUES(file_url), \
                 file_type = VALUES(file_type), uploaded_at = VALUES(uploaded_at), size = VALUES(size), \
                 blake3 = VALUES(blake3)",
            );
            tx.exec_drop(sql, params)?;
            // Owned from now on; an adopted row's takeover is complete.
            let owned: Vec<i64> = ours.iter().map(|r| r.id).collect();
            tx.exec_drop(
                format!(
                    "INSERT INTO media_store_rows (id) VALUES {} ON DUPLICATE KEY UPDATE adopting = 0",
                    vec!["(?)"; owned.len()].join(",")
                ),
                owned,
            )?;
        }
    }
    if !deleted.is_empty() {
        // Only rows media-store owns; a foreign row under that id stays, and
        // so does one an import is still adopting (the index lacks it yet).
        tx.exec_drop(
            format!(
                "DELETE f FROM media_files f JOIN media_store_rows o ON o.id = f.id \
                 WHERE o.adopting = 0 AND f.id IN ({})",
                marks(deleted.len())
            ),
            deleted.to_vec(),
        )?;
        tx.exec_drop(
            format!(
                "DELETE FROM media_store_rows WHERE adopting = 0 AND id IN ({})",
                marks(deleted.len())
            ),
            deleted.to_vec(),
        )?;
    }
    tx.commit()?;
    Ok(skipped)
}

/// The largest id in `media_files` (0 when empty or absent): the index's next
/// media id must be above it.
pub fn max_id(conn: &mut Conn) -> Result<i64> {
    let max: Option<Option<i64>> = conn
        .query_first("SELECT MAX(id) FROM media_files")
        .or_else(|e| match &e {
            // 1146: no table yet, so no id to stay above.
            mysql::Error::MySqlError(m) if m.code == 1146 => Ok(None),
            _ => Err(e),
        })?;
    Ok(max.flatten().unwrap_or(0))
}

/// A `media_files` row media-store does not own (or is still adopting), as
/// `media-store import` reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ForeignRow {
    pub id: i64,
    pub uploader_id: Option<i64>,
    pub file_url: Option<String>,
    pub file_type: Option<String>,
    /// Unix seconds.
    pub uploaded_at_s: Option<i64>,
}

/// Up to `limit` rows not owned by media-store (or still being adopted) with
/// `id >= from`, by id.
pub fn foreign_rows_from(conn: &mut Conn, from: i64, limit: usize) -> Result<Vec<ForeignRow>> {
    type Raw = (
        i64,
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<i64>,
    );
    Ok(conn.exec_map(
        "SELECT f.id, f.uploader_id, f.file_url, f.file_type, CAST(UNIX_TIMESTAMP(f.uploaded_at) AS SIGNED)
         FROM media_files f LEFT JOIN media_store_rows o ON o.id = f.id
         WHERE (o.id IS NULL OR o.adopting <> 0) AND f.id >= ? ORDER BY f.id LIMIT ?",
        (from, limit as u64),
        |(id, uploader_id, file_url, file_type, uploaded_at_s): Raw| ForeignRow {
            id,
            uploader_id,
            file_url,
            file_type,
            uploaded_at_s,
        },
    )?)
}

/// Marks a backend row as being adopted (before import stores its file): the
/// mirror may then overwrite it once the index holds the id, which makes it
/// media-store's, but never deletes it. Idempotent.
pub fn mark_adopting(conn: &mut Conn, id: i64) -> Result<()> {
    conn.exec_drop(
        "INSERT IGNORE INTO media_store_rows (id, adopting) VALUES (?, 1)",
        (id,),
    )?;
    Ok(())
}

/// Drops an adoption mark (the file could not be stored): the row is the
/// backend's again. A completed adoption (`adopting = 0`) is left alone.
pub fn unmark_adopting(conn: &mut Conn, id: i64) -> Result<()> {
    conn.exec_drop(
        "DELETE FROM media_store_rows WHERE id = ? AND adopting <> 0",
        (id,),
    )?;
    Ok(())
}

/// Who a `media_files` row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The chat backend's (not in `media_store_rows`).
    Backend,
    /// The backend's, being adopted by `media-store import`: media-store's once
    /// the index holds the id, never deleted before.
    Adopting,
    MediaStore,
}

/// A `media_files` row as reconcile reads it: its values and its owner.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRow {
    pub row: MirrorRow,
    pub owner: Owner,
}

/// Up to `limit` rows with `id >= from`, by id. Columns the chat backend may
/// have left NULL read as values no index row has, so they compare as different.
pub fn rows_from(conn: &mut Conn, from: i64, limit: usize) -> Result<Vec<TargetRow>> {
    type Raw = (
        i64,
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<i64>,
        u64,
        String,
        Option<i64>,
    );
    let rows = conn.exec_map(
        "SELECT f.id, f.uploader_id, f.file_url, f.file_type, CAST(UNIX_TIMESTAMP(f.uploaded_at) AS SIGNED),
                f.size, f.blake3, o.adopting
         FROM media_files f LEFT JOIN media_store_rows o ON o.id = f.id
         WHERE f.id >= ? ORDER BY f.id LIMIT ?",
        (from, limit as u64),
        |(id, uploader_id, file_url, file_type, uploaded_at_s, size, blake3, adopting): Raw| {
            TargetRow {
                row: MirrorRow {
                    id,
                    uploader_id: uploader_id.unwrap_or(i64::MIN),
                    file_url: file_url.unwrap_or_default(),
                    file_type: file_type.unwrap_or_default(),
                    uploaded_at_s: uploaded_at_s.unwrap_or(i64::MIN),
                    size,
                    blake3,
                },
                owner: match adopting {
                    None => Owner::Backend,
                    Some(0) => Owner::MediaStore,
                    Some(_) => Owner::Adopting,
                },
            }
        },
    )?;
    Ok(rows)
}

/// The GC safety belt: asks the chat backend's database which media ids its
/// messages still reference (`mysql.references_query`). Retention and garbage
/// collection keep those. Any failure is an error, which callers read as
/// "unknown: delete none".
pub struct MysqlReferences {
    opts: Opts,
    query: String,
    /// One connection reused across calls; std Mutex because calls are blocking
    /// and short. Dropped after any error so the next call reconnects.
    conn: Mutex<Option<Conn>>,
}

/// Ids per query: keeps statements small whatever the caller passes.
const REFERENCE_CHUNK: usize = 1000;

impl MysqlReferences {
    /// `None` when no MySQL is configured (nothing outside the index refers to media).
    pub fn from_config(cfg: &MysqlConfig) -> Result<Option<MysqlReferences>> {
        if !cfg.enabled() {
            return Ok(None);
        }
        Ok(Some(MysqlReferences {
            opts: opts(cfg)?,
            query: cfg.references_query.clone(),
            conn: Mutex::new(None),
        }))
    }

    fn query_chunk(&self, conn: &mut Conn, ids: &[i64]) -> Result<Vec<i64>> {
        let marks = vec!["?"; ids.len()].join(",");
        let sql = self.query.replace(IDS_PLACEHOLDER, &marks);
        Ok(conn
            .exec_map(sql, ids.to_vec(), |id: Option<i64>| id)?
            .into_iter()
            .flatten()
            .collect())
    }
}

impl crate::lifecycle::ExternalReferences for MysqlReferences {
    fn referenced(&self, media_ids: &[i64]) -> anyhow::Result<Vec<i64>> {
        if media_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut guard = self.conn.lock().expect("references lock poisoned");
        let mut conn = match guard.take() {
            Some(c) => c,
            None => connect(&self.opts)?,
        };
        let mut found = Vec::new();
        for chunk in media_ids.chunks(REFERENCE_CHUNK) {
            // On error the connection is dropped (not put back).
            found.extend(self.query_chunk(&mut conn, chunk)?);
        }
        *guard = Some(conn);
        // Exactly the asked ids that are referenced, whatever else the query returns.
        let asked: std::collections::HashSet<i64> = media_ids.iter().copied().collect();
        found.retain(|id| asked.contains(id));
        found.sort_unstable();
        found.dedup();
        if !found.is_empty() {
            tracing::info!(
                count = found.len(),
                "chat messages in MySQL still reference these media; they are kept"
            );
        }
        Ok(found)
    }
}

/// `media-store migrate --mysql URL`: applies the migrations and says what it did.
pub fn migrate_cli(cfg: &MysqlConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.enabled(),
        "no MySQL given: pass --mysql URL or set mysql.url"
    );
    let opts = opts(cfg)?;
    let run = || -> Result<Vec<u32>> {
        let mut conn = connect(&opts)?;
        migrate(&mut conn)
    };
    let applied = run()?;
    if applied.is_empty() {
        println!(
            "MySQL schema at {} is up to date (version {})",
            describe(&opts),
            latest_version()
        );
    } else {
        println!(
            "MySQL schema at {}: applied {:?}, now at version {}",
            describe(&opts),
            applied,
            latest_version()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::mirror_file_type;

    #[test]
    fn file_types_fit_the_seed_column() {
        assert_eq!(mirror_file_type("image/png"), "image/png");
        assert_eq!(
            mirror_file_type(
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            ),
            "docx"
        );
        // 47 characters: fits, kept as it is.
        assert_eq!(
            mirror_file_type("application/vnd.oasis.opendocument.spreadsheet"),
            "application/vnd.oasis.opendocument.spreadsheet"
        );
        let long = format!("application/x-{}", "a".repeat(80));
        assert!(mirror_file_type(&long).len() <= 50);
    }
}
