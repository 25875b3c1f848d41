//! JSON shapes of the API. Index rows never leave the process directly.

use serde::Serialize;

use crate::index::MediaRow;
use crate::media::file_url;
use crate::timefmt::rfc3339_ms;

#[derive(Debug, Serialize)]
pub struct MediaView {
    pub id: i64,
    pub uploader_id: i64,
    pub file_url: String,
    pub file_type: String,
    pub size: u64,
    pub blake3: String,
    pub uploaded_at: String,
    pub original_name: Option<String>,
    /// The stored bytes were found damaged or missing: downloads answer
    /// `410 media_corrupt` until the same content is uploaded again.
    pub corrupt: bool,
    /// When the damage was found (RFC 3339), while `corrupt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupt_since: Option<String>,
}

impl MediaView {
    pub fn new(row: &MediaRow, public_base_url: &str) -> Self {
        MediaView {
            id: row.id,
            uploader_id: row.uploader_id,
            file_url: file_url(public_base_url, row.id),
            file_type: row.file_type.clone(),
            size: row.size,
            blake3: row.hash.to_hex().to_string(),
            uploaded_at: rfc3339_ms(row.uploaded_at_ms),
            original_name: row.original_name.clone(),
            corrupt: row.corrupt_since_ms.is_some(),
            corrupt_since: row.corrupt_since_ms.map(rfc3339_ms),
        }
    }
}

/// The stable, unsigned address of a media file; signed download URLs add a query to it.

#[derive(Debug, Serialize)]
pub struct UploadView {
    #[serde(flatten)]
    pub media: MediaView,
    /// Whether the content was already stored: service uploads only. Left out
    /// of presigned uploads' answers, where it would tell one uploader what
    /// another stored (issue #14).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deduplicated: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct MediaPage {
    pub items: Vec<MediaView>,
    pub next_cursor: Option<String>,
}
