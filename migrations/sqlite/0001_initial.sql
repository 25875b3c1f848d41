-- media-store index, version 1. See storage-layout.md ("The index").

-- One row per distinct content. `refcount` is the number of media rows that use
-- the blob; when it drops to 0, `zero_since` records when (GC grace period).
CREATE TABLE blobs (
    hash        BLOB    PRIMARY KEY CHECK (length(hash) = 32),
    size        INTEGER NOT NULL CHECK (size >= 0),
    refcount    INTEGER NOT NULL CHECK (refcount >= 0),
    zero_since  INTEGER,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX blobs_zero_since ON blobs (zero_since) WHERE refcount = 0;

-- One row per upload, duplicates included. `uploaded_at` (Unix ms) never
-- decreases as `id` grows: time ranges map onto id ranges (see list queries).
CREATE TABLE media (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    uploader_id   INTEGER NOT NULL,
    file_type     TEXT    NOT NULL,
    family        TEXT    NOT NULL,
    hash          BLOB    NOT NULL REFERENCES blobs (hash),
    size          INTEGER NOT NULL,
    original_name TEXT,
    uploaded_at   INTEGER NOT NULL
);
CREATE INDEX media_by_uploader        ON media (uploader_id, id);
CREATE INDEX media_by_type            ON media (file_type, id);
CREATE INDEX media_by_family          ON media (family, id);
CREATE INDEX media_by_uploader_type   ON media (uploader_id, file_type, id);
CREATE INDEX media_by_uploader_family ON media (uploader_id, family, id);
CREATE INDEX media_by_time            ON media (uploaded_at, id);
CREATE INDEX media_by_hash            ON media (hash);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
