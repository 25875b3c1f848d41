-- The archive tier as a bucket (`[archive] backend = "s3"`; storage-layout.md,
-- "S3 archive tier"): set when archival has put the blob's object, checked
-- its size and unlinked the primary copy. The bucket's objects are known from
-- here, so no upload asks the network under SQLite's write lock. Cleared when
-- the archived copy is found damaged or lost (the next upload of the content
-- then installs a local copy, which archival puts again later).
ALTER TABLE blobs ADD COLUMN archived_at INTEGER;
