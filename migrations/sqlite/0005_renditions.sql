-- media-store index, version 5: renditions (previews, issue #11) and the
-- layout metadata of media. See storage-layout.md ("Renditions").

-- One row per (source content, variant) that has been rendered. A rendition is
-- an ordinary blob: `hash` names its `blobs` row, and this row is one of the
-- references `blobs.refcount` counts (besides media rows). `hash` is NULL when
-- the original is served as is (`UseOriginal`): no blob, no reference.
-- `spec_fingerprint` is the variant's spec when rendered: a changed spec makes
-- the row stale and it is rendered again (and replaced).
--
-- The row lives as long as its SOURCE blob row: when GC forgets a zero-count
-- source blob, it deletes these rows and releases their references in the same
-- transaction; the rendition blobs then reach count 0 and are collected by the
-- ordinary zero-count rule.
CREATE TABLE renditions (
    source_hash      BLOB    NOT NULL REFERENCES blobs (hash),
    variant          TEXT    NOT NULL,
    spec_fingerprint TEXT    NOT NULL,
    hash             BLOB    REFERENCES blobs (hash),
    mime             TEXT,
    size             INTEGER,
    width            INTEGER,
    height           INTEGER,
    created_at       INTEGER NOT NULL,
    PRIMARY KEY (source_hash, variant)
) WITHOUT ROWID;
CREATE INDEX renditions_by_hash ON renditions (hash) WHERE hash IS NOT NULL;

-- What clients need to lay out a message (media_preview::probe): upright
-- pixel size of images and videos, duration of audio and video (ms), and a
-- ThumbHash of images. NULL while unknown (not probed yet, or nothing to know).
ALTER TABLE media ADD COLUMN width INTEGER;
ALTER TABLE media ADD COLUMN height INTEGER;
ALTER TABLE media ADD COLUMN duration_ms INTEGER;
ALTER TABLE media ADD COLUMN thumbhash BLOB;

-- The MySQL mirror's `media_files` has none of these columns: an update that
-- only records a probe's result queues nothing for it (0003's update trigger,
-- now limited to the columns that existed and are mirrored).
DROP TRIGGER media_mysql_outbox_update;
CREATE TRIGGER media_mysql_outbox_update
AFTER UPDATE OF id, uploader_id, file_type, family, hash, size, original_name, uploaded_at,
                corrupt_since ON media
WHEN EXISTS (SELECT 1 FROM meta WHERE key = 'mysql_outbox' AND value = 'on')
BEGIN
    INSERT INTO mysql_outbox (media_id, created_at)
    SELECT OLD.id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE OLD.id <> NEW.id;
    INSERT INTO mysql_outbox (media_id, created_at)
    VALUES (NEW.id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
