//! Preview and thumbnail engine for media-store.
//!
//! A blocking library: [`render`] turns an image, a video (poster frame) or a
//! PDF (first page) into a small, metadata-free WebP or JPEG rendition, and
//! [`probe`] reports upright pixel size, duration and a ThumbHash. Hostile or
//! corrupt input comes back as a typed [`PreviewError`], never as a panic or an
//! unbounded allocation: every size is checked against [`Limits`] from the
//! header before anything is decoded.
//!
//! Calls are CPU-bound and synchronous; from async code run them on a blocking
//! pool (`tokio::task::spawn_blocking`). Each call uses one thread.

mod error;
mod external;
#[cfg(feature = "heif")]
mod heif;
mod imagers;
mod jpeg;
mod raster;
mod webpdec;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{ErrorKind, PreviewError};
use raster::{Decoded, Target};

/// Bounds on what one call may read, decode, allocate and wait for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest image, in pixels (width × height of the stored image), that is
    /// decoded at all. Checked from the header before decoding.
    pub max_pixels: u64,
    /// Largest number of frames an animation may have (APNG, WebP, GIF); only
    /// the first frame is ever decoded.
    pub max_frames: u64,
    /// Largest pixel buffer one decode may allocate, in bytes.
    pub max_alloc_bytes: u64,
    /// Largest input, in bytes.
    pub max_input_bytes: u64,
    /// How long an external tool (ffmpeg, ffprobe, pdftoppm) may run before it
    /// is killed.
    pub timeout: Duration,
    /// Where the external tools are.
    pub tools: Tools,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: 50_000_000,
            max_frames: 1_000,
            max_alloc_bytes: 256 << 20,
            max_input_bytes: 256 << 20,
            timeout: Duration::from_secs(20),
            tools: Tools::default(),
        }
    }
}

/// Programs run for types that have no in-process decoder. Each is run
/// directly (no shell) with a bounded run time and output size; a program
/// that cannot be started makes the variant [`PreviewError::VariantNotAvailable`].
#[derive(Debug, Clone)]
pub struct Tools {
    /// Video poster frames.
    pub ffmpeg: PathBuf,
    /// Video and audio duration, video size.
    pub ffprobe: PathBuf,
    /// PDF first page (poppler-utils).
    pub pdftoppm: PathBuf,
}

impl Default for Tools {
    /// Looked up in `PATH`.
    fn default() -> Self {
        Tools {
            ffmpeg: "ffmpeg".into(),
            ffprobe: "ffprobe".into(),
            pdftoppm: "pdftoppm".into(),
        }
    }
}

/// Encoding of a rendition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Lossy WebP (libwebp), alpha kept.
    WebP,
    /// Baseline JPEG (libjpeg-turbo), transparency flattened on white.
    Jpeg,
}

impl OutputFormat {
    /// The MIME type of renditions in this format.
    pub fn mime(self) -> &'static str {
        match self {
            OutputFormat::WebP => "image/webp",
            OutputFormat::Jpeg => "image/jpeg",
        }
    }
}

/// How the picture is fitted into the requested box. Never upscales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Scale down, keeping the aspect ratio, until it fits in `w`×`h`.
    Within {
        /// Box width in pixels.
        w: u32,
        /// Box height in pixels.
        h: u32,
    },
    /// Crop the centre to the aspect ratio of `w`×`h`, then scale down to it
    /// (an image smaller than the box gives the largest centred crop).
    Cover {
        /// Output width in pixels.
        w: u32,
        /// Output height in pixels.
        h: u32,
    },
}

/// One named rendition: how to fit, what to encode, at which quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VariantSpec {
    /// Fitting of the upright picture.
    pub fit: Fit,
    /// Output encoding.
    pub format: OutputFormat,
    /// Encoder quality, 1..=100.
    pub quality: u8,
}

impl VariantSpec {
    /// The contract's variants: `thumb` (within 320×320), `preview` (within
    /// 1280×1280) and `avatar` (96×96 centre crop), all WebP.
    pub fn defaults() -> [(&'static str, VariantSpec); 3] {
        let webp = |fit, quality| VariantSpec {
            fit,
            format: OutputFormat::WebP,
            quality,
        };
        [
            ("thumb", webp(Fit::Within { w: 320, h: 320 }, 80)),
            ("preview", webp(Fit::Within { w: 1280, h: 1280 }, 82)),
            ("avatar", webp(Fit::Cover { w: 96, h: 96 }, 85)),
        ]
    }

    /// The default variant called `name`, if there is one.
    pub fn named(name: &str) -> Option<VariantSpec> {
        Self::defaults()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s)
    }
}

/// Where the input is.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// The whole content in memory (for example a memory map of the blob).
    Bytes(&'a [u8]),
    /// A file. Images are read into memory; videos and PDFs are handed to the
    /// external tool by path, so they need this form.
    Path(&'a Path),
}

/// The result of [`render`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    /// A new, metadata-free picture.
    Rendition(Rendition),
    /// The original is already at most the requested size (or smaller in
    /// bytes than a rendition would be) and is a web format: serve it as is.
    UseOriginal,
}

/// An encoded picture.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendition {
    /// Encoded picture, without EXIF, XMP, ICC or any other metadata.
    pub bytes: Vec<u8>,
    /// `image/webp` or `image/jpeg`.
    pub mime: &'static str,
    /// Pixel width.
    pub width: u32,
    /// Pixel height.
    pub height: u32,
}

impl std::fmt::Debug for Rendition {
    /// The bytes are summarised: a rendition in a failed assertion or a log
    /// line is kilobytes of numbers otherwise.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendition")
            .field("bytes", &format_args!("[{} bytes]", self.bytes.len()))
            .field("mime", &self.mime)
            .field("width", &self.width)
            .field("height", &self.height)
            .finish()
    }
}

/// What [`probe`] learns about a file. Fields it cannot know are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaInfo {
    /// Upright width in pixels (after EXIF orientation or video rotation).
    pub width: Option<u32>,
    /// Upright height in pixels.
    pub height: Option<u32>,
    /// Duration of audio and video, in milliseconds (needs ffprobe).
    pub duration_ms: Option<u64>,
    /// ThumbHash of an image (raw bytes; base64 it for JSON).
    pub thumbhash: Option<Vec<u8>>,
}

/// What a MIME type is, as far as previews go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jpeg,
    /// Decoded in process by the `image` crate.
    Raster(image::ImageFormat),
    /// HEIC/HEIF/AVIF through libheif.
    Heif,
    Video,
    Audio,
    Pdf,
    /// Media with no preview (documents, archives, text, SVG...).
    None,
}

fn kind_of(mime: &str) -> Kind {
    use image::ImageFormat as F;
    let essence = mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "image/jpeg" | "image/jpg" | "image/pjpeg" => Kind::Jpeg,
        "image/png" | "image/apng" => Kind::Raster(F::Png),
        "image/gif" => Kind::Raster(F::Gif),
        "image/webp" => Kind::Raster(F::WebP),
        "image/tiff" => Kind::Raster(F::Tiff),
        "image/bmp" | "image/x-ms-bmp" => Kind::Raster(F::Bmp),
        "image/heic"
        | "image/heif"
        | "image/heic-sequence"
        | "image/heif-sequence"
        | "image/avif" => Kind::Heif,
        "application/pdf" => Kind::Pdf,
        e if e.starts_with("video/") => Kind::Video,
        e if e.starts_with("audio/") => Kind::Audio,
        _ => Kind::None,
    }
}

/// Renders `input`, whose sniffed type is `mime`, as the variant `spec`.
///
/// Images are decoded in process (shrink-on-load for JPEG), oriented upright,
/// converted to sRGB, resized and encoded without metadata. Videos give a
/// poster frame (ffmpeg) and PDFs their first page (pdftoppm); both need
/// [`Input::Path`]. Any other type is [`PreviewError::UnsupportedType`].
pub fn render(
    input: Input<'_>,
    mime: &str,
    spec: &VariantSpec,
    limits: &Limits,
) -> Result<Rendered, PreviewError> {
    let kind = kind_of(mime);
    let target = Target::from_fit(spec.fit);
    match kind {
        Kind::Video | Kind::Pdf => {
            let path = needs_path(input)?;
            check_file_size(path, limits)?;
            let png = if kind == Kind::Video {
                external::video_frame(path, target, limits)?
            } else {
                external::pdf_page(path, target, limits)?
            };
            let format = image::ImageFormat::Png;
            let decoded = guarded(|| imagers::decode(&png, format, limits))?;
            finish(decoded, spec, None)
        }
        Kind::Audio => Err(PreviewError::VariantNotAvailable(format!(
            "{mime} has no preview"
        ))),
        Kind::None => Err(PreviewError::UnsupportedType(mime.to_owned())),
        Kind::Jpeg | Kind::Raster(_) | Kind::Heif => {
            let bytes = read_input(input, limits)?;
            let bytes = bytes.as_ref();
            let decoded = guarded(|| decode_image(kind, bytes, limits, Some(target)))?;
            // Only formats every browser shows may be served in place of a rendition.
            use image::ImageFormat as F;
            let web = matches!(kind, Kind::Jpeg | Kind::Raster(F::Png | F::Gif | F::WebP));
            finish(decoded, spec, web.then_some(bytes.len()))
        }
    }
}

/// Resizes, colour-converts, orients and encodes; `original_len` is set when
/// the original is a web format that may be served instead.
fn finish(
    decoded: Decoded,
    spec: &VariantSpec,
    original_len: Option<usize>,
) -> Result<Rendered, PreviewError> {
    let upright = decoded.upright_size();
    let size = Target::from_fit(spec.fit).output_size(upright.0, upright.1);
    let rendition =
        guarded(|| raster::produce(decoded, spec.fit, size, spec.format, spec.quality))?;
    // Serve the original when it is no bigger in bytes; a cover crop only
    // when the original already has the requested shape.
    let same_shape = matches!(spec.fit, Fit::Within { .. }) || size == upright;
    match original_len {
        Some(len) if same_shape && rendition.bytes.len() >= len => Ok(Rendered::UseOriginal),
        _ => Ok(Rendered::Rendition(rendition)),
    }
}

fn decode_image(
    kind: Kind,
    bytes: &[u8],
    limits: &Limits,
    target: Option<Target>,
) -> Result<Decoded, PreviewError> {
    match kind {
        Kind::Jpeg => jpeg::decode(bytes, limits, target),
        Kind::Raster(image::ImageFormat::WebP) => {
            if image::guess_format(bytes).ok() != Some(image::ImageFormat::WebP) {
                return Err(PreviewError::TypeMismatch("image/webp".into()));
            }
            match webpdec::decode_still(bytes, limits, target)? {
                Some(decoded) => Ok(decoded),
                None => imagers::decode(bytes, image::ImageFormat::WebP, limits),
            }
        }
        // No shrink-on-load for these: the whole first frame is decoded.
        Kind::Raster(format) => imagers::decode(bytes, format, limits),
        #[cfg(feature = "heif")]
        Kind::Heif => heif::decode(bytes, limits),
        #[cfg(not(feature = "heif"))]
        Kind::Heif => Err(PreviewError::VariantNotAvailable(
            "HEIF/AVIF support was not compiled in (feature `heif`)".into(),
        )),
        _ => unreachable!("decode_image is only called for image kinds"),
    }
}

/// Reports the upright size, the duration and a ThumbHash of `input`.
///
/// Images are checked like [`render`] does (a hostile image is an error);
/// audio and video are asked of ffprobe, and give `None` fields when it is
/// not installed. Types with nothing to report give an empty [`MediaInfo`].
pub fn probe(input: Input<'_>, mime: &str, limits: &Limits) -> Result<MediaInfo, PreviewError> {
    match kind_of(mime) {
        kind @ (Kind::Jpeg | Kind::Raster(_) | Kind::Heif) => {
            let bytes = read_input(input, limits)?;
            let bytes = bytes.as_ref();
            // ThumbHash wants at most 100×100; let the decoder shrink on load.
            let target = Target::Within { w: 100, h: 100 };
            let decoded = guarded(|| decode_image(kind, bytes, limits, Some(target)))?;
            let (width, height) = decoded.upright_size();
            let hash = guarded(|| raster::thumbhash(decoded))?;
            Ok(MediaInfo {
                width: Some(width),
                height: Some(height),
                duration_ms: None,
                thumbhash: Some(hash),
            })
        }
        Kind::Video | Kind::Audio => {
            let path = needs_path(input)?;
            check_file_size(path, limits)?;
            match external::ffprobe(path, limits) {
                Ok(info) => Ok(info),
                Err(PreviewError::VariantNotAvailable(_)) => Ok(MediaInfo::default()),
                Err(e) => Err(e),
            }
        }
        Kind::Pdf | Kind::None => Ok(MediaInfo::default()),
    }
}

fn needs_path(input: Input<'_>) -> Result<&Path, PreviewError> {
    match input {
        Input::Path(p) => Ok(p),
        Input::Bytes(_) => Err(PreviewError::NeedsPath),
    }
}

fn check_file_size(path: &Path, limits: &Limits) -> Result<u64, PreviewError> {
    let size = std::fs::metadata(path)?.len();
    if size > limits.max_input_bytes {
        return Err(PreviewError::InputTooLarge {
            size,
            max: limits.max_input_bytes,
        });
    }
    Ok(size)
}

fn read_input<'a>(
    input: Input<'a>,
    limits: &Limits,
) -> Result<std::borrow::Cow<'a, [u8]>, PreviewError> {
    match input {
        Input::Bytes(b) => {
            if b.len() as u64 > limits.max_input_bytes {
                return Err(PreviewError::InputTooLarge {
                    size: b.len() as u64,
                    max: limits.max_input_bytes,
                });
            }
            Ok(b.into())
        }
        Input::Path(p) => {
            check_file_size(p, limits)?;
            Ok(std::fs::read(p)?.into())
        }
    }
}

/// Runs a decoder or encoder so that a panic inside it becomes
/// [`PreviewError::DecoderPanicked`] instead of unwinding into the caller.
fn guarded<T>(f: impl FnOnce() -> Result<T, PreviewError>) -> Result<T, PreviewError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(PreviewError::DecoderPanicked(msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_a_decoder_becomes_decoder_panicked() {
        let e = guarded::<()>(|| panic!("bad huffman table")).unwrap_err();
        assert_eq!(e.code(), "decoder_panicked");
        assert!(e.is_client_error());
        assert!(e.to_string().contains("bad huffman table"));
    }

    #[test]
    fn mime_parameters_and_case_are_ignored() {
        assert_eq!(kind_of("Image/JPEG; q=1"), Kind::Jpeg);
        assert_eq!(kind_of("video/quicktime"), Kind::Video);
        assert_eq!(kind_of("image/svg+xml"), Kind::None);
    }

    #[test]
    fn fits_never_upscale() {
        let within = Target::Within { w: 320, h: 320 };
        assert_eq!(within.output_size(4000, 3000), (320, 240));
        assert_eq!(within.output_size(100, 50), (100, 50));
        assert_eq!(within.output_size(10_000, 1), (320, 1));
        let cover = Target::Cover { w: 96, h: 96 };
        assert_eq!(cover.output_size(4000, 3000), (96, 96));
        assert_eq!(cover.output_size(60, 40), (40, 40));
    }
}
