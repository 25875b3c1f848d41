//! Media lifecycle: message references, retention, garbage collection, fsck.
//!
//! Deletion decisions are made only here (storage-layout.md, "Garbage collection").

/// Someone outside the index who may still point at media ids: the chat
/// backend's `messages.media_id` in MySQL (see `sync`). Retention and garbage
/// collection ask it before deleting media, and keep whatever it names.
pub trait ExternalReferences: Send + Sync {
    /// Returns the subset of `media_ids` that are still referenced. An error
    /// means "unknown": the caller must then delete none of them.
    fn referenced(&self, media_ids: &[i64]) -> anyhow::Result<Vec<i64>>;
}
