-- Which media_files rows media-store wrote (issue #10, point 8). The chat
-- backend may have rows of its own in media_files: the mirror overwrites and
-- deletes only ids listed here, and lists an id in the same MySQL transaction
-- as its first upsert.
--
-- `adopting` = 1: `media-store import` is taking the backend's row over. Such
-- a row may be overwritten (only once the index holds the id, which is when
-- the mirror writes it; that write clears the flag) but is never deleted.
--
-- Rows written by an earlier media-store (before this table existed) are
-- recognised by their blake3 column: migration 0002 added it with '' as the
-- default, and only media-store fills it (64 lowercase hex characters).
CREATE TABLE IF NOT EXISTS media_store_rows (
    id       INT     NOT NULL PRIMARY KEY,
    adopting TINYINT NOT NULL DEFAULT 0
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
INSERT IGNORE INTO media_store_rows (id)
    SELECT id FROM media_files WHERE CHAR_LENGTH(blake3) = 64;
