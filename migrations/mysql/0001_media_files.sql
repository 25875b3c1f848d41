-- media_files as the chat deployment's seed schema defines it. IF NOT EXISTS:
-- a deployment whose seed already created the table keeps it, and 0002 brings
-- it to what media-store writes.
CREATE TABLE IF NOT EXISTS media_files (
    id          INT          NOT NULL PRIMARY KEY,
    uploader_id INT          NOT NULL,
    file_url    VARCHAR(255) NOT NULL,
    file_type   VARCHAR(50)  NOT NULL,
    uploaded_at TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
