-- Damaged media (corrupt_since set by fsck --repair or by a download whose
-- bytes did not hash right) are few: a partial index lists them cheaply
-- (`GET /v1/media?corrupt=true`).
CREATE INDEX media_corrupt ON media (id) WHERE corrupt_since IS NOT NULL;
