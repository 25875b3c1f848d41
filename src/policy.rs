//! Upload policy: which types are allowed and how large each may be.
//!
//! The type is decided from the content's magic bytes only (the `infer` crate,
//! plus a text check for formats `infer` does not know); the client's
//! Content-Type and filename are never trusted. Pure: no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Classify, ErrorKind};

/// How many leading bytes are enough to sniff any supported format
/// (OOXML containers name their parts within the first entries of the ZIP).
pub const SNIFF_LEN: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("upload is larger than the {limit} bytes allowed{}", for_type(.mime))]
    TooLarge { limit: u64, mime: Option<String> },
    #[error("content type {mime} is not allowed")]
    TypeNotAllowed { mime: String },
    #[error("content type could not be recognised from the file's bytes")]
    Unrecognised,
}

fn for_type(mime: &Option<String>) -> String {
    mime.as_deref()
        .map(|m| format!(" for {m}"))
        .unwrap_or_default()
}

impl Classify for PolicyError {
    fn kind(&self) -> ErrorKind {
        match self {
            PolicyError::TooLarge { .. } => ErrorKind::PayloadTooLarge,
            _ => ErrorKind::UnsupportedMediaType,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            PolicyError::TooLarge { .. } => "too_large",
            PolicyError::TypeNotAllowed { .. } => "type_not_allowed",
            PolicyError::Unrecognised => "type_unrecognised",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    config: UploadConfig,
}

impl Policy {
    pub fn new(config: UploadConfig) -> Self {
        Policy { config }
    }

    /// The global maximum, known before the type is.
    pub fn max_bytes(&self) -> u64 {
        self.config.max_bytes
    }

    /// Whether JPEG uploads lose their identifying metadata (`upload.strip_exif`).
    pub fn strip_exif(&self) -> bool {
        self.config.strip_exif
    }

    /// Checks that `mime` is allowed and returns the size limit that applies to it.
    pub fn admit(&self, mime: &str) -> Result<u64, PolicyError> {
        let denied = self
            .config
            .denied_types
            .iter()
            .any(|p| type_matches(p, mime));
        let allowed = self
            .config
            .allowed_types
            .iter()
            .any(|p| type_matches(p, mime));
        if denied || !allowed {
            return Err(PolicyError::TypeNotAllowed {
                mime: mime.to_owned(),
            });
        }
        let family_max = self
            .config
            .family_max_bytes
            .get(family(mime))
            .copied()
            .unwrap_or(u64::MAX);
        Ok(family_max.min(self.config.max_bytes))
    }
}

/// The top-level type: `image` for `image/png`.
pub fn family(mime: &str) -> &str {
    mime.split('/').next().unwrap_or(mime)
}

/// Whether a pattern (`image/*`, `*/*` or an exact type) matches a MIME type.
pub fn type_matches(pattern: &str, mime: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some("*") => true,
        Some(fam) => family(mime).eq_ignore_ascii_case(fam),
        None => pattern.eq_ignore_ascii_case(mime),
    }
}

/// Decides the MIME type from the leading bytes of the content.
/// `complete` says whether `head` is the whole content (it matters for text).
pub fn sniff(head: &[u8], complete: bool) -> Option<&'static str> {
    if let Some(kind) = infer::get(head) {
        let mime = normalise(kind.mime_type());
        return match mime {
            "application/zip" => Some(office_container(head).unwrap_or(mime)),
            // Markup: decide between HTML, SVG and XML ourselves, so the policy can name them.
            m if m.starts_with("text/") || m.ends_with("/xml") => sniff_text(head, complete),
            m => Some(m),
        };
    }
    sniff_text(head, complete)
}

/// Tells OOXML and OpenDocument files from plain ZIPs by the names of the
/// entries at the start of the archive. Written by hand because ZIP readers
/// (the `zip` crate) need the central directory at the end of the file, which a
/// streaming upload has not received yet, and `infer`'s own OOXML check only
/// looks at fixed entry positions (it calls our Word sample a ZIP).
fn office_container(head: &[u8]) -> Option<&'static str> {
    const LOCAL_HEADER: &[u8] = b"PK\x03\x04";
    let mut at = 0;
    while let Some(pos) = find(&head[at..], LOCAL_HEADER) {
        let h = at + pos;
        let name_len = usize::from(u16::from_le_bytes([*head.get(h + 26)?, *head.get(h + 27)?]));
        let name = head.get(h + 30..h + 30 + name_len)?;
        if name == b"mimetype" {
            // ODF stores its type uncompressed right after the first entry's header.
            let extra_len =
                usize::from(u16::from_le_bytes([*head.get(h + 28)?, *head.get(h + 29)?]));
            let start = h + 30 + name_len + extra_len;
            let content = head.get(start..(start + 60).min(head.len()))?;
            for (prefix, mime) in [
                (
                    &b"application/vnd.oasis.opendocument.text"[..],
                    "application/vnd.oasis.opendocument.text",
                ),
                (
                    b"application/vnd.oasis.opendocument.spreadsheet",
                    "application/vnd.oasis.opendocument.spreadsheet",
                ),
                (
                    b"application/vnd.oasis.opendocument.presentation",
                    "application/vnd.oasis.opendocument.presentation",
                ),
            ] {
                if content.starts_with(prefix) {
                    return Some(mime);
                }
            }
        }
        for (dir, mime) in [
            (
                &b"word/"[..],
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            ),
            (
                b"xl/",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            ),
            (
                b"ppt/",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            ),
        ] {
            if name.starts_with(dir) {
                return Some(mime);
            }
        }
        at = h + 30 + name_len;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Maps `infer`'s names to the IANA types we store.
fn normalise(mime: &'static str) -> &'static str {
    match mime {
        "audio/x-flac" => "audio/flac",
        "audio/x-wav" => "audio/wav",
        "audio/x-aac" => "audio/aac",
        "image/x-canon-cr2" => "image/x-canon-cr2",
        "application/x-executable" => "application/x-executable",
        other => other,
    }
}

/// Text that is not a markup language a browser would run: `text/plain`.
/// HTML, SVG and XML are recognised so the policy can refuse them by name.
fn sniff_text(head: &[u8], complete: bool) -> Option<&'static str> {
    if head.is_empty() {
        return None;
    }
    let body = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        // A multi-byte character cut by the sniff window is still text.
        Err(e) if !complete && e.error_len().is_none() => {
            std::str::from_utf8(&body[..e.valid_up_to()]).ok()?
        }
        Err(_) => return None,
    };
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\x0c'))
    {
        return None;
    }
    let start: String = text
        .trim_start()
        .chars()
        .take(4096)
        .collect::<String>()
        .to_ascii_lowercase();
    if start.starts_with("<!doctype html")
        || start.starts_with("<html")
        || start.contains("<script")
    {
        return Some("text/html");
    }
    if start.contains("<svg") {
        return Some("image/svg+xml");
    }
    if start.starts_with("<?xml") {
        return Some("application/xml");
    }
    if start.starts_with("#!") {
        return Some("application/x-shellscript");
    }
    Some("text/plain")
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Largest accepted upload in bytes, whatever its type.
    pub max_bytes: u64,
    /// Per-family maxima (`image`, `audio`, `video`, `application`, `text`), each capped by `max_bytes`.
    pub family_max_bytes: BTreeMap<String, u64>,
    /// Allowed types: exact MIME types or families such as `image/*`.
    pub allowed_types: Vec<String>,
    /// Refused types even when a family above allows them; wins over `allowed_types`.
    pub denied_types: Vec<String>,
    /// Remove GPS and other identifying EXIF, XMP, IPTC and comments from
    /// JPEG uploads, losslessly, before they are stored (and deduplicated).
    pub strip_exif: bool,
}

const MIB: u64 = 1024 * 1024;

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            max_bytes: 2048 * MIB,
            family_max_bytes: BTreeMap::from([
                ("image".into(), 50 * MIB),
                ("audio".into(), 500 * MIB),
                ("video".into(), 2048 * MIB),
                ("application".into(), 200 * MIB),
                ("text".into(), 20 * MIB),
            ]),
            allowed_types: [
                "image/*",
                "audio/*",
                "video/*",
                "application/pdf",
                "application/zip",
                "application/msword",
                "application/vnd.ms-excel",
                "application/vnd.ms-powerpoint",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
                "application/vnd.oasis.opendocument.text",
                "application/vnd.oasis.opendocument.spreadsheet",
                "application/vnd.oasis.opendocument.presentation",
                "application/rtf",
                "text/plain",
            ]
            .map(String::from)
            .to_vec(),
            denied_types: [
                "image/svg+xml",
                "text/html",
                "application/xhtml+xml",
                "text/javascript",
                "application/javascript",
                "application/x-executable",
                "application/x-msdownload",
                "application/vnd.microsoft.portable-executable",
                "application/x-mach-binary",
                "application/x-elf",
                "application/x-sharedlib",
                "application/x-shellscript",
                "application/java-archive",
                "application/wasm",
            ]
            .map(String::from)
            .to_vec(),
            strip_exif: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn testdata(rel: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(rel);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn sniff_file(rel: &str) -> Option<&'static str> {
        let bytes = testdata(rel);
        let n = bytes.len().min(SNIFF_LEN);
        sniff(&bytes[..n], n == bytes.len())
    }

    #[test]
    fn sniffs_real_files_by_content() {
        for (file, mime) in [
            ("jpeg/progressive.jpg", "image/jpeg"),
            ("png/rgba8.png", "image/png"),
            ("gif/animated.gif", "image/gif"),
            ("webp/lossy.webp", "image/webp"),
            ("avif/alpha.avif", "image/avif"),
            ("heic/image.heic", "image/heif"),
            ("audio/tone_id3_cover.mp3", "audio/mpeg"),
            ("audio/tone.flac", "audio/flac"),
            ("audio/tone_vorbis.ogg", "audio/ogg"),
            ("document/sample.pdf", "application/pdf"),
            (
                "document/sample.docx",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            ),
            ("document/archive.zip", "application/zip"),
            ("text/utf8.txt", "text/plain"),
            ("text/utf8_bom.txt", "text/plain"),
            ("svg/benign.svg", "image/svg+xml"),
        ] {
            assert_eq!(sniff_file(file), Some(mime), "{file}");
        }
    }

    #[test]
    fn html_and_binary_garbage_are_recognised_or_refused() {
        assert_eq!(sniff(b"<!DOCTYPE html><p>x", true), Some("text/html"));
        assert_eq!(sniff(b"\x00\x01\x02\x03garbage\xff\xfe", true), None);
        assert_eq!(sniff(b"", true), None);
        let mut elf =
            b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00".to_vec();
        elf.resize(128, 0);
        assert_eq!(sniff(&elf, true), Some("application/x-executable"));
    }

    #[test]
    fn default_policy_refuses_active_content_and_limits_by_family() {
        let p = Policy::new(UploadConfig::default());
        for bad in [
            "image/svg+xml",
            "text/html",
            "application/x-executable",
            "application/javascript",
        ] {
            assert!(
                matches!(p.admit(bad), Err(PolicyError::TypeNotAllowed { .. })),
                "{bad}"
            );
        }
        assert_eq!(p.admit("image/png").unwrap(), 50 * 1024 * 1024);
        assert_eq!(p.admit("video/mp4").unwrap(), 2048 * 1024 * 1024);
        assert!(p.admit("application/pdf").is_ok());
        assert!(p.admit("application/octet-stream").is_err());
    }

    #[test]
    fn patterns_match_families_and_exact_types() {
        assert!(type_matches("image/*", "image/png"));
        assert!(!type_matches("image/*", "video/mp4"));
        assert!(type_matches("application/pdf", "application/PDF"));
        assert!(type_matches("*/*", "x/y"));
    }
}
