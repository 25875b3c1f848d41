//! Statements of retention (storage-layout.md, "Retention"): which media
//! rows have expired, re-checked under the write lock before deletion.

use rusqlite::{OptionalExtension, params};

use super::{Reader, Result, Tx};

/// Why media expire.
#[derive(Debug, Clone, PartialEq)]
pub enum RetentionRule {
    /// Never attached to a message within `orphan_ttl`.
    Orphan,
    /// Of this type family and older than its maximum age.
    MaxAge(String),
}

impl Reader<'_> {
    /// The newest media id uploaded before `cutoff_ms` (ids grow with time, I6).
    pub fn last_id_before(&self, cutoff_ms: i64) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id FROM media WHERE uploaded_at < ?1 ORDER BY uploaded_at DESC, id DESC LIMIT 1",
                [cutoff_ms],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Up to `limit` ids in `(after, max_id]` that the rule selects, by id.
    pub fn expiry_candidates(
        &self,
        rule: &RetentionRule,
        after: i64,
        max_id: i64,
        limit: usize,
    ) -> Result<Vec<i64>> {
        let limit = limit as i64;
        let ids = match rule {
            RetentionRule::Orphan => self
                .conn
                .prepare_cached(
                    "SELECT id FROM media m WHERE id > ?1 AND id <= ?2
                     AND NOT EXISTS (SELECT 1 FROM message_media r WHERE r.media_id = m.id)
                     ORDER BY id LIMIT ?3",
                )?
                .query_map(params![after, max_id, limit], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?,
            RetentionRule::MaxAge(family) => self
                .conn
                .prepare_cached(
                    "SELECT id FROM media WHERE family = ?1 AND id > ?2 AND id <= ?3
                     ORDER BY id LIMIT ?4",
                )?
                .query_map(params![family, after, max_id, limit], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?,
        };
        Ok(ids)
    }
}

impl Tx<'_> {
    /// Deletes the media (releasing their blob references) that the rule still
    /// selects under the write lock: an orphan attached meanwhile stays.
    /// Returns how many were deleted.
    pub fn expire_media(
        &self,
        rule: &RetentionRule,
        ids: &[i64],
        cutoff_ms: i64,
        now_ms: i64,
    ) -> Result<u64> {
        let mut deleted = 0;
        for &id in ids {
            let still: bool = match rule {
                RetentionRule::Orphan => self.conn().query_row(
                    "SELECT EXISTS (SELECT 1 FROM media m WHERE m.id = ?1 AND m.uploaded_at < ?2
                     AND NOT EXISTS (SELECT 1 FROM message_media r WHERE r.media_id = m.id))",
                    params![id, cutoff_ms],
                    |r| r.get(0),
                )?,
                RetentionRule::MaxAge(_) => true,
            };
            if still && self.delete_media(id, now_ms)?.is_some() {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
