-- The MySQL mirror's outbox (issue 5; see docs/mysql.md and storage-layout.md,
-- "MySQL mirror").
--
-- Every change to a `media` row appends the row's id here, in the same
-- transaction as the change, by the triggers below: whatever path changes media
-- (uploads, API deletes, retention, GC, bulk SQL) is captured without having to
-- cooperate. An entry carries only the id; the sync worker re-reads the current
-- row and upserts it into MySQL or deletes it there, so replaying or reordering
-- entries is harmless. Entries are deleted only after MySQL has committed.
CREATE TABLE mysql_outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    media_id   INTEGER NOT NULL,
    -- Unix ms when the change committed: the worker's lag metric.
    created_at INTEGER NOT NULL
);

-- The triggers write only while the mirror is enabled (meta 'mysql_outbox' =
-- 'on', set at daemon start from mysql.url), so a daemon without MySQL does not
-- grow an outbox nobody drains. Enabling it later schedules a full reconcile.
CREATE TRIGGER media_mysql_outbox_insert AFTER INSERT ON media
WHEN EXISTS (SELECT 1 FROM meta WHERE key = 'mysql_outbox' AND value = 'on')
BEGIN
    INSERT INTO mysql_outbox (media_id, created_at)
    VALUES (NEW.id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

CREATE TRIGGER media_mysql_outbox_delete AFTER DELETE ON media
WHEN EXISTS (SELECT 1 FROM meta WHERE key = 'mysql_outbox' AND value = 'on')
BEGIN
    INSERT INTO mysql_outbox (media_id, created_at)
    VALUES (OLD.id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

-- An update may change the id itself: both the old and the new id are queued.
CREATE TRIGGER media_mysql_outbox_update AFTER UPDATE ON media
WHEN EXISTS (SELECT 1 FROM meta WHERE key = 'mysql_outbox' AND value = 'on')
BEGIN
    INSERT INTO mysql_outbox (media_id, created_at)
    SELECT OLD.id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE OLD.id <> NEW.id;
    INSERT INTO mysql_outbox (media_id, created_at)
    VALUES (NEW.id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
