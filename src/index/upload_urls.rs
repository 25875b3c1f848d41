//! Statements of single-use presigned upload URLs (`used_upload_urls`):
//! a URL is claimed when an upload through it begins, released when that
//! upload fails, and remembered until it expires.

use rusqlite::params;

use super::{Result, Tx};

impl Tx<'_> {
    /// Claims the upload URL with MAC `signature`, valid until `expires_at`
    /// (Unix seconds); false when it was already claimed. Forgets the URLs
    /// that expired by `now` on the way (their own expiry refuses them).
    pub fn claim_upload_url(&self, signature: &[u8], expires_at: i64, now: i64) -> Result<bool> {
        self.conn
            .prepare_cached("DELETE FROM used_upload_urls WHERE expires_at <= ?1")?
            .execute([now])?;
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO used_upload_urls (signature, expires_at) VALUES (?1, ?2)
                 ON CONFLICT (signature) DO NOTHING",
            )?
            .execute(params![signature, expires_at])?;
        Ok(inserted == 1)
    }

    /// Gives a claimed URL back (its upload failed: the client may retry).
    pub fn release_upload_url(&self, signature: &[u8]) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM used_upload_urls WHERE signature = ?1")?
            .execute([signature])?;
        Ok(())
    }
}
