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
    // A Java archive runs wherever its ZIP entries are, even after an image
    // (a GIF/JAR polyglot): looked for in the whole window first.
    if zip_entries(head).any(|name| name.eq_ignore_ascii_case(JAR_MANIFEST)) {
        return Some("application/java-archive");
    }
    if let Some(kind) = infer::get(head) {
        let mime = normalise(kind.mime_type());
        return match mime {
            // `infer` names some OOXML files itself, macro-enabled ones included.
            "application/zip"
            | "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            | "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            | "application/vnd.openxmlformats-officedocument.presentationml.presentation" => {
                Some(office_container(head).unwrap_or(mime))
            }
            // Markup: decide between HTML, SVG and XML ourselves, so the policy can name them.
            m if m.starts_with("text/") || m.ends_with("/xml") => sniff_text(head, complete),
            m => Some(m),
        };
    }
    sniff_text(head, complete)
}

/// The entry that makes a ZIP a Java archive (`java -jar`, double-click).
const JAR_MANIFEST: &[u8] = b"META-INF/MANIFEST.MF";
/// The part that holds an Office file's VBA macros.
const VBA_PROJECT: &[u8] = b"vbaProject.bin";

/// The names of the ZIP entries whose local headers lie in `head`, in order.
/// Stops at the first header cut by the end of `head`.
fn zip_entries(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    const LOCAL_HEADER: &[u8] = b"PK\x03\x04";
    let mut at = 0;
    std::iter::from_fn(move || {
        let h = at + find(head.get(at..)?, LOCAL_HEADER)?;
        let name_len = usize::from(u16::from_le_bytes([*head.get(h + 26)?, *head.get(h + 27)?]));
        let name = head.get(h + 30..h + 30 + name_len)?;
        at = h + 30 + name_len;
        Some(name)
    })
}

/// Tells OOXML and OpenDocument files from plain ZIPs by the names of the
/// entries at the start of the archive, and macro-enabled OOXML (a
/// `vbaProject.bin` part) from plain OOXML. Written by hand because ZIP readers
/// (the `zip` crate) need the central directory at the end of the file, which a
/// streaming upload has not received yet, and `infer`'s own OOXML check only
/// looks at fixed entry positions (it calls our Word sample a ZIP). A macro
/// part past the sniff window goes unseen: the download's name then gets the
/// macro-free extension (`.docx`), under which Office refuses to run it.
fn office_container(head: &[u8]) -> Option<&'static str> {
    let mut office: Option<(&'static str, &'static str)> = None;
    let mut macros = false;
    for name in zip_entries(head) {
        if name == b"mimetype" {
            // ODF stores its type uncompressed right after the first entry's header.
            let h = find(head, b"mimetype")?.checked_sub(30)?;
            let extra_len =
                usize::from(u16::from_le_bytes([*head.get(h + 28)?, *head.get(h + 29)?]));
            let start = h + 30 + name.len() + extra_len;
            let content = head.get(start..(start + 60).min(head.len()))?;
            for mime in [
                "application/vnd.oasis.opendocument.text",
                "application/vnd.oasis.opendocument.spreadsheet",
                "application/vnd.oasis.opendocument.presentation",
            ] {
                if content.starts_with(mime.as_bytes()) {
                    return Some(mime);
                }
            }
        }
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(&VBA_PROJECT.to_ascii_lowercase()) {
            macros = true;
        }
        for (dir, mime, macro_mime) in [
            (
                &b"word/"[..],
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "application/vnd.ms-word.document.macroenabled.12",
            ),
            (
                b"xl/",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "application/vnd.ms-excel.sheet.macroenabled.12",
            ),
            (
                b"ppt/",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
                "application/vnd.ms-powerpoint.presentation.macroenabled.12",
            ),
        ] {
            if office.is_none() && name.starts_with(dir) {
                office = Some((mime, macro_mime));
            }
        }
    }
    match (office, macros) {
        (Some((_, macro_mime)), true) => Some(macro_mime),
        (Some((mime, _)), false) => Some(mime),
        (None, true) => Some("application/vnd.ms-office.vbaproject"),
        (None, false) => None,
    }
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
        || start.contains("<hta:application")
    {
        return Some("text/html");
    }
    if let Some(script) = script_type(&start) {
        return Some(script);
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

/// Script a host runs when the file is opened (Windows Script Host, node):
/// JavaScript or VBScript, from the lower-cased start of a text file. Plain
/// prose and notes stay `text/plain`: it takes an interpreter line, a Windows
/// Script Host object, or mostly lines that only code has.
fn script_type(start: &str) -> Option<&'static str> {
    let first = start.lines().next().unwrap_or("");
    if first.starts_with("#!") && ["node", "deno", "bun"].iter().any(|i| first.contains(i)) {
        return Some("text/javascript");
    }
    if start.contains("activexobject") || start.contains("wscript.createobject") {
        return Some("text/javascript");
    }
    let code_like = |l: &str| {
        let l = l.trim();
        [
            "var ",
            "let ",
            "const ",
            "function",
            "import ",
            "export ",
            "return",
            "if (",
            "for (",
            "while (",
            "try {",
            "} catch",
            "//",
            "/*",
            "*/",
            "eval(",
            "new ",
            "this.",
            "document.",
            "window.",
        ]
        .iter()
        .any(|k| l.starts_with(k))
            || [";", "{", "}", "});", "},", ");", "=>"]
                .iter()
                .any(|e| l.ends_with(e))
    };
    let lines: Vec<&str> = start.lines().filter(|l| !l.trim().is_empty()).collect();
    let js = lines.iter().filter(|l| code_like(l)).count();
    if lines.len() >= 2 && js * 10 >= lines.len() * 7 {
        return Some("text/javascript");
    }
    let vbs_like = |l: &str| {
        let l = l.trim();
        [
            "dim ",
            "set ",
            "sub ",
            "end sub",
            "function ",
            "end function",
            "msgbox",
            "on error resume",
            "'",
            "rem ",
        ]
        .iter()
        .any(|k| l.starts_with(k))
            || l.contains("createobject(")
            || l.contains("wscript.")
    };
    let vbs = lines.iter().filter(|l| vbs_like(l)).count();
    if start.contains("createobject(") || (lines.len() >= 2 && vbs * 10 >= lines.len() * 7) {
        return Some("text/vbscript");
    }
    None
}

/// The file name extensions that agree with a stored type, the usual one
/// first; empty for types without one.
pub fn extensions(mime: &str) -> &'static [&'static str] {
    match mime.to_ascii_lowercase().as_str() {
        "image/jpeg" => &["jpg", "jpeg", "jpe", "jfif"],
        "image/png" => &["png"],
        "image/gif" => &["gif"],
        "image/webp" => &["webp"],
        "image/avif" => &["avif"],
        "image/heif" | "image/heic" => &["heic", "heif"],
        "image/bmp" => &["bmp"],
        "image/tiff" => &["tif", "tiff"],
        "image/x-icon" | "image/vnd.microsoft.icon" => &["ico"],
        "image/jxl" => &["jxl"],
        "image/jp2" => &["jp2"],
        "image/vnd.adobe.photoshop" => &["psd"],
        "image/x-canon-cr2" => &["cr2"],
        "audio/mpeg" => &["mp3"],
        "audio/flac" => &["flac"],
        "audio/ogg" => &["ogg", "oga", "opus"],
        "audio/opus" => &["opus", "ogg"],
        "audio/wav" => &["wav"],
        "audio/aac" => &["aac"],
        "audio/mp4" | "audio/m4a" | "audio/x-m4a" => &["m4a", "mp4"],
        "audio/amr" => &["amr"],
        "audio/midi" => &["mid", "midi"],
        "audio/aiff" | "audio/x-aiff" => &["aiff", "aif"],
        "audio/webm" => &["weba", "webm"],
        "video/mp4" => &["mp4", "m4v"],
        "video/quicktime" => &["mov"],
        "video/webm" => &["webm"],
        "video/x-matroska" => &["mkv"],
        "video/x-msvideo" => &["avi"],
        "video/3gpp" => &["3gp"],
        "video/mpeg" => &["mpg", "mpeg"],
        "video/x-flv" => &["flv"],
        "video/ogg" => &["ogv", "ogg"],
        "application/pdf" => &["pdf"],
        "application/zip" => &["zip"],
        "application/msword" => &["doc"],
        "application/vnd.ms-excel" => &["xls"],
        "application/vnd.ms-powerpoint" => &["ppt"],
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => &["docx"],
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => &["xlsx"],
        "application/vnd.openxmlformats-officedocument.presentationml.presentation" => &["pptx"],
        "application/vnd.oasis.opendocument.text" => &["odt"],
        "application/vnd.oasis.opendocument.spreadsheet" => &["ods"],
        "application/vnd.oasis.opendocument.presentation" => &["odp"],
        "application/rtf" => &["rtf"],
        "application/epub+zip" => &["epub"],
        "application/gzip" => &["gz"],
        "application/x-7z-compressed" => &["7z"],
        "application/x-tar" => &["tar"],
        "application/x-bzip2" => &["bz2"],
        "application/x-xz" => &["xz"],
        "application/vnd.rar" | "application/x-rar-compressed" => &["rar"],
        "text/plain" => &["txt", "text", "log", "md", "csv"],
        _ => &[],
    }
}

/// A stored filename made safe to offer for download as `mime`: cleaned (see
/// [`clean_filename`]) and with an extension that agrees with the type,
/// appended when it does not (`evil.hta` stored as `text/plain` is offered as
/// `evil.hta.txt`), so the uploader's name cannot turn a file into an
/// executable on the downloader's disk. `fallback` (the media id) names files
/// uploaded without a name.
pub fn download_name(name: Option<&str>, mime: &str, fallback: &str) -> String {
    let name = name
        .and_then(clean_filename)
        .unwrap_or_else(|| fallback.to_owned());
    // Windows drops trailing dots and spaces: `evil.exe.` would be `evil.exe`.
    let name = name.trim_end_matches(['.', ' ']);
    let name = if name.is_empty() { fallback } else { name };
    let Some(&usual) = extensions(mime).first() else {
        // No extension for this type: `.bin`, which nothing runs.
        return if name.to_ascii_lowercase().ends_with(".bin") {
            name.to_owned()
        } else {
            format!("{name}.bin")
        };
    };
    let agrees = name.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty() && extensions(mime).iter().any(|e| e.eq_ignore_ascii_case(ext))
    });
    if agrees {
        return name.to_owned();
    }
    let mut stem = name.to_owned();
    while stem.len() + 1 + usual.len() > MAX_NAME_BYTES {
        stem.pop();
    }
    format!("{stem}.{usual}")
}

/// Longest filename kept, in bytes (what file systems allow).
const MAX_NAME_BYTES: usize = 255;

/// Keeps only the last path component of a client's filename, without
/// control or format characters (Unicode category Cc, Cf: bidirectional
/// overrides such as U+202E that show `invoice\u{202E}gnp.exe` as
/// `invoiceexe.png`, zero-width characters), invisible fillers, and with
/// look-alikes of `.`, `/` and `\\` replaced by `_` and exotic spaces by a
/// plain one; at most 255 bytes. `None` when nothing usable is left.
pub fn clean_filename(raw: &str) -> Option<String> {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    let mut name: String = last
        .chars()
        .filter(|c| !c.is_control() && !is_format_or_invisible(*c))
        .map(|c| {
            if is_separator_lookalike(c) {
                '_'
            } else if c.is_whitespace() {
                ' '
            } else {
                c
            }
        })
        .collect();
    while name.len() > MAX_NAME_BYTES {
        name.pop();
    }
    let name = name.trim().to_owned();
    (!name.is_empty() && name != "." && name != "..").then_some(name)
}

/// Unicode category Cf (format characters, Unicode 15.1), line and paragraph
/// separators, and characters that render as nothing (variation selectors,
/// fillers, the combining grapheme joiner).
fn is_format_or_invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F
        // Invisible: combining grapheme joiner, Hangul and Khmer fillers,
        // Mongolian variation selectors, variation selectors, braille blank.
        | 0x034F | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180D | 0x180F
        | 0x2800 | 0x3164 | 0xFE00..=0xFE0F | 0xFFA0 | 0xE0100..=0xE01EF)
}

/// Characters that look like the `.` of an extension or a path separator.
fn is_separator_lookalike(c: char) -> bool {
    matches!(
        c,
        '\u{2024}'
            | '\u{2025}'
            | '\u{2026}'
            | '\u{FE52}'
            | '\u{FF0E}'
            | '\u{0701}'
            | '\u{0702}'
            | '\u{A60E}'
            | '\u{10A50}'
            | '\u{3002}'
            | '\u{FF61}'
            | '\u{2E2E}'
            | '\u{06D4}'
            | '\u{2044}'
            | '\u{2215}'
            | '\u{29F8}'
            | '\u{FF0F}'
            | '\u{2571}'
            | '\u{FE68}'
            | '\u{29F5}'
            | '\u{29F9}'
            | '\u{FF3C}'
            | '\u{2216}'
            | '\u{2572}'
            | '\u{3033}'
    )
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
                "text/vbscript",
                "application/vnd.ms-word.document.macroenabled.12",
                "application/vnd.ms-excel.sheet.macroenabled.12",
                "application/vnd.ms-powerpoint.presentation.macroenabled.12",
                "application/vnd.ms-office.vbaproject",
            ]
            .map(String::from)
            .to_vec(),
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

    /// A stored (uncompressed) ZIP with `entries`, as `zip -0` writes them.
    pub(crate) fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in entries {
            out.extend_from_slice(b"PK\x03\x04\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00");
            out.extend_from_slice(&[0; 4]); // crc, not checked by sniffing
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
        }
        out.extend_from_slice(b"PK\x05\x06");
        out.extend_from_slice(&[0; 18]);
        out
    }

    #[test]
    fn java_archives_and_macros_are_recognised() {
        let jar = zip(&[
            ("META-INF/", b""),
            (
                "META-INF/MANIFEST.MF",
                b"Manifest-Version: 1.0\r\nMain-Class: Evil\r\n",
            ),
            ("Evil.class", b"\xca\xfe\xba\xbe"),
        ]);
        assert_eq!(sniff(&jar, true), Some("application/java-archive"));
        // A GIF with a JAR appended (GIFAR) is a JAR too.
        let mut gifar = testdata("gif/animated.gif");
        gifar.extend_from_slice(&jar);
        if gifar.len() <= SNIFF_LEN {
            assert_eq!(sniff(&gifar, true), Some("application/java-archive"));
        }
        let mut small_gifar = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec();
        small_gifar.extend_from_slice(&jar);
        assert_eq!(sniff(&small_gifar, true), Some("application/java-archive"));
        // A ZIP without a manifest stays a ZIP.
        assert_eq!(
            sniff(&zip(&[("a.txt", b"hello")]), true),
            Some("application/zip")
        );
        let docm = zip(&[
            ("[Content_Types].xml", b"<Types/>"),
            ("word/document.xml", b"<w:document/>"),
            ("word/vbaProject.bin", b"\xd0\xcf\x11\xe0"),
        ]);
        assert_eq!(
            sniff(&docm, true),
            Some("application/vnd.ms-word.document.macroenabled.12")
        );
        let xlsm = zip(&[("xl/workbook.xml", b"<w/>"), ("xl/vbaProject.bin", b"x")]);
        assert_eq!(
            sniff(&xlsm, true),
            Some("application/vnd.ms-excel.sheet.macroenabled.12")
        );
        let docx = zip(&[("word/document.xml", b"<w:document/>")]);
        let p = Policy::new(UploadConfig::default());
        assert!(p.admit(sniff(&docx, true).unwrap()).is_ok());
        for refused in [&jar, &small_gifar, &docm, &xlsm] {
            let mime = sniff(refused, true).unwrap();
            assert!(
                matches!(p.admit(mime), Err(PolicyError::TypeNotAllowed { .. })),
                "{mime}"
            );
        }
    }

    #[test]
    fn scripts_are_recognised_so_the_deny_list_can_refuse_them() {
        let p = Policy::new(UploadConfig::default());
        for (text, mime) in [
            (
                &b"#!/usr/bin/env node\nrequire('child_process').exec('x')\n"[..],
                "text/javascript",
            ),
            (
                b"var sh = new ActiveXObject(\"WScript.Shell\");\nsh.Run(\"calc\");\n",
                "text/javascript",
            ),
            (
                b"function run() {\n  const x = 1;\n  return x;\n}\nrun();\n",
                "text/javascript",
            ),
            (
                b"Set sh = CreateObject(\"WScript.Shell\")\nsh.Run \"calc\"\n",
                "text/vbscript",
            ),
            (b"<HTA:APPLICATION ID=\"x\">\n<p>hi</p>\n", "text/html"),
        ] {
            assert_eq!(
                sniff(text, true),
                Some(mime),
                "{}",
                String::from_utf8_lossy(text)
            );
            assert!(p.admit(mime).is_err(), "{mime}");
        }
        for prose in [
            &b"Dear team,\nthe meeting moves to Friday.\nRegards, Ann\n"[..],
            b"shopping: milk; bread; eggs\nand more\ncall me",
            b"@echo off\nstart calc.exe\n",
            b"hello",
        ] {
            assert_eq!(
                sniff(prose, true),
                Some("text/plain"),
                "{}",
                String::from_utf8_lossy(prose)
            );
        }
        assert_eq!(sniff_file("text/utf8.txt"), Some("text/plain"));
    }

    #[test]
    fn download_names_agree_with_the_stored_type() {
        for (name, mime, served) in [
            (Some("evil.hta"), "text/plain", "evil.hta.txt"),
            (Some("evil.bat"), "text/plain", "evil.bat.txt"),
            (Some("evil.js"), "text/plain", "evil.js.txt"),
            (Some("evil.jar"), "application/zip", "evil.jar.zip"),
            (Some("gifar.jar"), "image/gif", "gifar.jar.gif"),
            (
                Some("invoice\u{202E}gnp.exe"),
                "image/png",
                "invoicegnp.exe.png",
            ),
            (Some("photo.JPEG"), "image/jpeg", "photo.JPEG"),
            (Some("photo.png"), "image/jpeg", "photo.png.jpg"),
            (Some("notes.txt"), "text/plain", "notes.txt"),
            (Some("report.pdf"), "application/pdf", "report.pdf"),
            (Some("evil.exe. . "), "text/plain", "evil.exe.txt"),
            (Some(".png"), "image/png", ".png.png"),
            (Some("x\u{FF0E}exe"), "text/plain", "x_exe.txt"),
            (Some("a\u{2215}b.pdf"), "application/pdf", "a_b.pdf"),
            (
                Some("zero\u{200B}width\u{FE0F}.png"),
                "image/png",
                "zerowidth.png",
            ),
            (Some("\u{202E}"), "image/png", "7.png"),
            (None, "video/mp4", "7.mp4"),
            (Some("data.bin"), "font/woff", "data.bin"),
            (Some("run.exe"), "font/woff", "run.exe.bin"),
        ] {
            assert_eq!(download_name(name, mime, "7"), served, "{name:?} as {mime}");
        }
        let long = format!("{}.exe", "a".repeat(300));
        let served = download_name(Some(&long), "text/plain", "7");
        assert!(served.len() <= 255 && served.ends_with(".txt"), "{served}");
    }

    #[test]
    fn filenames_lose_paths_format_characters_and_lookalikes() {
        assert_eq!(
            clean_filename("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            clean_filename("C:\\x\\photo.jpg").as_deref(),
            Some("photo.jpg")
        );
        assert_eq!(clean_filename("a\u{0}b\n.png").as_deref(), Some("ab.png"));
        assert_eq!(
            clean_filename("invoice\u{202E}gnp.exe").as_deref(),
            Some("invoicegnp.exe")
        );
        assert_eq!(
            clean_filename("\u{2066}a\u{2069}\u{00A0}b\u{3000}c.txt").as_deref(),
            Some("a b c.txt")
        );
        assert_eq!(clean_filename("\u{200D}\u{2060}"), None);
        assert_eq!(clean_filename(".."), None);
    }

    #[test]
    fn patterns_match_families_and_exact_types() {
        assert!(type_matches("image/*", "image/png"));
        assert!(!type_matches("image/*", "video/mp4"));
        assert!(type_matches("application/pdf", "application/PDF"));
        assert!(type_matches("*/*", "x/y"));
    }
}
