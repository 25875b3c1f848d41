-- Presigned upload URLs already used (signing.single_use_uploads): the
-- signature's MAC bytes, kept until the URL expires (then it is refused as
-- expired anyway, and the row is deleted by the next claim).
CREATE TABLE used_upload_urls (
    signature  BLOB PRIMARY KEY,
    expires_at INTEGER NOT NULL -- Unix seconds
) WITHOUT ROWID;
CREATE INDEX used_upload_urls_expiry ON used_upload_urls (expires_at);
