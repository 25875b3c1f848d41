-- What media-store adds to the seed's media_files (file_type stays the seed's
-- VARCHAR(50): MIME types longer than that are mirrored as their extension):
-- * size and blake3 (lowercase hex) so the backend need not ask media-store;
-- * indexes for filtering by uploader, by type and by time, newest first.
-- Plain ALTERs (no MariaDB-only IF NOT EXISTS) so MySQL 8 runs them too.
ALTER TABLE media_files
    ADD COLUMN size BIGINT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN blake3 CHAR(64) CHARACTER SET ascii NOT NULL DEFAULT '',
    ADD INDEX media_files_by_uploader (uploader_id, id),
    ADD INDEX media_files_by_type (file_type, id),
    ADD INDEX media_files_by_uploader_type (uploader_id, file_type, id),
    ADD INDEX media_files_by_time (uploaded_at, id);
