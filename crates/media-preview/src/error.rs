//! The one error type of the crate, with stable codes for the HTTP layer.

use std::time::Duration;

/// Why a preview or probe failed.
///
/// [`code`](PreviewError::code) is a stable snake_case identifier for API
/// responses; [`kind`](PreviewError::kind) says whose fault it is, without
/// naming HTTP statuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PreviewError {
    /// The header declares more pixels than [`Limits::max_pixels`](crate::Limits).
    #[error("image is {width}x{height} pixels, more than the {max} allowed")]
    TooManyPixels {
        /// Declared width.
        width: u64,
        /// Declared height.
        height: u64,
        /// The limit.
        max: u64,
    },
    /// Decoding would allocate more than [`Limits::max_alloc_bytes`](crate::Limits).
    #[error("decoding needs more than the {max} bytes allowed")]
    ImageTooLarge {
        /// The limit.
        max: u64,
    },
    /// The input is larger than [`Limits::max_input_bytes`](crate::Limits).
    #[error("input is {size} bytes, more than the {max} allowed")]
    InputTooLarge {
        /// Input size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The animation declares more frames than [`Limits::max_frames`](crate::Limits).
    #[error("animation declares {frames} frames, more than the {max} allowed")]
    TooManyFrames {
        /// Declared frames.
        frames: u64,
        /// The limit.
        max: u64,
    },
    /// No preview is made for this type at all (documents, archives, SVG...).
    #[error("no preview for type {0}")]
    UnsupportedType(String),
    /// The type could have a preview, but not here: its tool is not
    /// installed, its support not compiled in, or it has no picture (audio).
    #[error("variant not available: {0}")]
    VariantNotAvailable(String),
    /// The bytes are not of the type the caller said.
    #[error("content is not {0}")]
    TypeMismatch(String),
    /// The picture is truncated, corrupt or uses something the decoder rejects.
    #[error("corrupt image: {0}")]
    CorruptImage(String),
    /// A decoder or encoder panicked; the panic was caught.
    #[error("decoder panicked: {0}")]
    DecoderPanicked(String),
    /// An external tool ran longer than [`Limits::timeout`](crate::Limits) and was killed.
    #[error("{tool} did not finish within {timeout:?}")]
    TimedOut {
        /// The program.
        tool: String,
        /// The limit.
        timeout: Duration,
    },
    /// An external tool failed on this input or wrote too much.
    #[error("{tool} failed: {message}")]
    ToolFailed {
        /// The program.
        tool: String,
        /// Its complaint (end of its stderr).
        message: String,
    },
    /// Videos and PDFs are handed to tools by path; the caller gave bytes.
    #[error("this type needs Input::Path")]
    NeedsPath,
    /// The encoder refused the picture.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// Reading the input failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Whose fault an error is, independent of any protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input exceeds a limit (HTTP: 413 or 422).
    TooLarge,
    /// The input is broken, hostile or not what its type says (HTTP: 422).
    InvalidInput,
    /// No preview exists for this type (HTTP: 415 or 404).
    Unsupported,
    /// A preview could exist but cannot be made here (HTTP: 404 or 501).
    NotAvailable,
    /// An external tool was too slow (HTTP: 422 or 503).
    Timeout,
    /// A fault on this side: I/O, encoder, wrong use of the API (HTTP: 500).
    Internal,
}

impl PreviewError {
    /// Stable snake_case identifier.
    pub fn code(&self) -> &'static str {
        match self {
            PreviewError::TooManyPixels { .. } => "too_many_pixels",
            PreviewError::ImageTooLarge { .. } => "image_too_large",
            PreviewError::InputTooLarge { .. } => "input_too_large",
            PreviewError::TooManyFrames { .. } => "too_many_frames",
            PreviewError::UnsupportedType(_) => "unsupported_type",
            PreviewError::VariantNotAvailable(_) => "variant_not_available",
            PreviewError::TypeMismatch(_) => "type_mismatch",
            PreviewError::CorruptImage(_) => "corrupt_image",
            PreviewError::DecoderPanicked(_) => "decoder_panicked",
            PreviewError::TimedOut { .. } => "timed_out",
            PreviewError::ToolFailed { .. } => "tool_failed",
            PreviewError::NeedsPath => "needs_path",
            PreviewError::Encode(_) => "encode_failed",
            PreviewError::Io(_) => "io_error",
        }
    }

    /// Whose fault it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PreviewError::TooManyPixels { .. }
            | PreviewError::ImageTooLarge { .. }
            | PreviewError::InputTooLarge { .. }
            | PreviewError::TooManyFrames { .. } => ErrorKind::TooLarge,
            // A tool that runs and fails has almost always been given a broken
            // file; a decoder that panics has been given a hostile one.
            PreviewError::TypeMismatch(_)
            | PreviewError::CorruptImage(_)
            | PreviewError::DecoderPanicked(_)
            | PreviewError::ToolFailed { .. } => ErrorKind::InvalidInput,
            PreviewError::UnsupportedType(_) => ErrorKind::Unsupported,
            PreviewError::VariantNotAvailable(_) => ErrorKind::NotAvailable,
            PreviewError::TimedOut { .. } => ErrorKind::Timeout,
            PreviewError::NeedsPath | PreviewError::Encode(_) | PreviewError::Io(_) => {
                ErrorKind::Internal
            }
        }
    }

    /// True when the input, not this side, is at fault (answer 4xx).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::TooLarge | ErrorKind::InvalidInput | ErrorKind::Unsupported
        )
    }
}

/// Checks a header's dimensions against the limits before anything is decoded.
pub(crate) fn check_dimensions(
    width: u64,
    height: u64,
    bytes_per_pixel: u64,
    limits: &crate::Limits,
) -> Result<(), PreviewError> {
    if width == 0 || height == 0 {
        return Err(PreviewError::CorruptImage("zero width or height".into()));
    }
    let pixels = width.saturating_mul(height);
    if pixels > limits.max_pixels {
        return Err(PreviewError::TooManyPixels {
            width,
            height,
            max: limits.max_pixels,
        });
    }
    let needed = pixels.saturating_mul(bytes_per_pixel);
    if needed > limits.max_alloc_bytes {
        return Err(PreviewError::ImageTooLarge {
            max: limits.max_alloc_bytes,
        });
    }
    Ok(())
}
