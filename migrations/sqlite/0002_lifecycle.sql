-- media-store index, version 2: message references, per-uploader usage and
-- fsck marks. See storage-layout.md ("Message references", "Garbage collection").

-- Which message carries which media. A media id may be carried by several
-- messages (forwards); a message belongs to one group. Deleting a media row
-- (any path, e.g. DELETE /v1/media/{id}) removes its references with it.
CREATE TABLE message_media (
    message_id  INTEGER NOT NULL,
    media_id    INTEGER NOT NULL REFERENCES media (id) ON DELETE CASCADE,
    group_id    INTEGER NOT NULL,
    attached_at INTEGER NOT NULL,
    PRIMARY KEY (message_id, media_id)
) WITHOUT ROWID;
CREATE INDEX message_media_by_media ON message_media (media_id);
CREATE INDEX message_media_by_group ON message_media (group_id, message_id);

-- Per-uploader totals over media rows, kept exact by triggers so that the quota
-- check at upload and GET /v1/uploaders/{id}/usage cost one row read however
-- many files an uploader has, and set-based deletes keep them right too.
CREATE TABLE uploader_usage (
    uploader_id INTEGER PRIMARY KEY,
    file_count  INTEGER NOT NULL CHECK (file_count >= 0),
    bytes       INTEGER NOT NULL CHECK (bytes >= 0)
);
INSERT INTO uploader_usage (uploader_id, file_count, bytes)
    SELECT uploader_id, count(*), coalesce(sum(size), 0) FROM media GROUP BY uploader_id;

CREATE TRIGGER uploader_usage_on_insert AFTER INSERT ON media BEGIN
    INSERT INTO uploader_usage (uploader_id, file_count, bytes)
        VALUES (NEW.uploader_id, 1, NEW.size)
        ON CONFLICT (uploader_id) DO UPDATE
        SET file_count = file_count + 1, bytes = bytes + NEW.size;
END;
CREATE TRIGGER uploader_usage_on_delete AFTER DELETE ON media BEGIN
    UPDATE uploader_usage SET file_count = file_count - 1, bytes = bytes - OLD.size
        WHERE uploader_id = OLD.uploader_id;
END;

-- Set by `fsck --repair` when the media's blob was found missing or corrupt
-- (Unix ms); cleared when a later fsck finds the blob whole again.
ALTER TABLE media ADD COLUMN corrupt_since INTEGER;
