//! Message references (storage-layout.md, "Message references"): the async
//! operations the HTTP layer calls. The statements are in `index::refs`.

use super::LifecycleError;
use crate::clock::SharedClock;
use crate::index::{AttachOutcome, Index, MediaRow};

pub use crate::index::refs::Attached;
pub use crate::index::{Released, Usage};

type Result<T, E = LifecycleError> = std::result::Result<T, E>;

/// Message references over one index, with the clock that stamps them.
#[derive(Clone)]
pub struct References {
    index: Index,
    clock: SharedClock,
}

impl References {
    pub fn new(index: Index, clock: SharedClock) -> Self {
        References { index, clock }
    }

    /// Sets the metrics of the recorded `media-store gc` and `fsck` runs
    /// (for a scrape of `/metrics`; see `lifecycle::runs`).
    pub async fn observe_runs(&self) -> Result<()> {
        let records = self.index.read(|r| r.run_records()).await?;
        super::runs::export(&records);
        Ok(())
    }

    /// Attaches a media to a message of a group (idempotent).
    pub async fn attach(&self, message_id: i64, media_id: i64, group_id: i64) -> Result<Attached> {
        let now = self.clock.now_ms();
        let outcome = self
            .index
            .write(move |ctx| ctx.attach(message_id, media_id, group_id, now))
            .await?;
        match outcome {
            AttachOutcome::Attached(a) => Ok(a),
            AttachOutcome::MediaMissing => Err(LifecycleError::MediaNotFound(media_id)),
            AttachOutcome::OtherGroup { existing } => Err(LifecycleError::GroupMismatch {
                message_id,
                existing,
                requested: group_id,
            }),
        }
    }

    /// Drops a message's references; media left without any are deleted.
    pub async fn delete_message(&self, message_id: i64) -> Result<Released> {
        let now = self.clock.now_ms();
        Ok(self
            .index
            .write(move |ctx| ctx.delete_message(message_id, now))
            .await?)
    }

    /// Drops every reference of a group's messages; media left without any are deleted.
    pub async fn delete_group(&self, group_id: i64) -> Result<Released> {
        let now = self.clock.now_ms();
        Ok(self
            .index
            .write(move |ctx| ctx.delete_group(group_id, now))
            .await?)
    }

    /// The group of a message (if it has references) and its media, in attach order.
    pub async fn message_media(&self, message_id: i64) -> Result<(Option<i64>, Vec<MediaRow>)> {
        Ok(self
            .index
            .read(move |r| r.message_media(message_id))
            .await?)
    }

    pub async fn usage(&self, uploader_id: i64) -> Result<Usage> {
        Ok(self.index.read(move |r| r.usage(uploader_id)).await?)
    }
}
