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
