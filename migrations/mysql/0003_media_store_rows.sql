-- Which media_files rows media-store wrote (issue #10, point 8). The chat
-- backend may have rows of its own in media_files: the mirror upserts and
-- deletes only ids listed here, and adds an id here in the same MySQL
-- transaction as its first upsert. `media-store import` adds the ids it adopts.
--
-- Rows written by an earlier media-store (before this table existed) are
-- recognised by their blake3 column: migration 0002 added it with '' as the
-- default, and only media-store fills it (64 lowercase hex characters).
CREATE TABLE IF NOT EXISTS media_store_rows (
    id INT NOT NULL PRIMARY KEY
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
INSERT IGNORE INTO media_store_rows (id)
    SELECT id FROM media_files WHERE CHAR_LENGTH(blake3) = 64;
