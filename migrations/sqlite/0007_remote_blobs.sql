-- Blob claims and pins for a network blob store (S3); storage-layout.md, "S3".
-- An object cannot be written under SQLite's write lock, so an upload pins
-- the hash while it puts the object, and GC claims a row before it deletes
-- the row's object (and forgets the row after).

-- Set by GC when it has decided to delete the blob's object: no reference may
-- be added to a claimed row, and an upload waits until GC forgets it.
ALTER TABLE blobs ADD COLUMN gc_claimed_at INTEGER;

-- One row per upload (or rendition) putting an object of this hash right
-- now: GC neither claims such a hash nor sweeps its object as unknown.
CREATE TABLE blob_pins (
    id        INTEGER PRIMARY KEY,
    hash      BLOB    NOT NULL CHECK (length(hash) = 32),
    pinned_at INTEGER NOT NULL
);
CREATE INDEX blob_pins_by_hash ON blob_pins (hash);
