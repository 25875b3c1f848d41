//! PNG (and APNG), GIF, WebP, TIFF and BMP through the `image` crate, with
//! its limits set on every decoder (image-rs #3081: `from_decoder` alone does
//! not check them) and our own size check before any pixel is read.

use std::io::Cursor;

use image::codecs::{
    bmp::BmpDecoder, gif::GifDecoder, png::PngDecoder, tiff::TiffDecoder, webp::WebPDecoder,
};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat};

use crate::error::check_dimensions;
use crate::raster::{Decoded, Layout};
use crate::{Limits, PreviewError};

fn image_limits(limits: &Limits) -> image::Limits {
    let mut l = image::Limits::default();
    let side = u32::try_from(limits.max_pixels).unwrap_or(u32::MAX);
    l.max_image_width = Some(side);
    l.max_image_height = Some(side);
    l.max_alloc = Some(limits.max_alloc_bytes);
    l
}

pub(crate) fn map_err(e: ImageError, limits: &Limits) -> PreviewError {
    match e {
        ImageError::Limits(_) => PreviewError::ImageTooLarge {
            max: limits.max_alloc_bytes,
        },
        // The input is in memory: an I/O error is a truncated file.
        other => PreviewError::CorruptImage(other.to_string()),
    }
}

/// Frames an animation declares in its header (APNG, WebP), or has (GIF,
/// counted up to `max + 1` without LZW decoding), without decoding any.
fn declared_frames(data: &[u8], format: ImageFormat, max: u64) -> Option<u64> {
    match format {
        ImageFormat::Gif => {
            let mut options = gif::DecodeOptions::new();
            options.skip_frame_decoding(true);
            options.set_memory_limit(gif::MemoryLimit::Bytes(
                std::num::NonZeroU64::new(16 << 20).expect("non-zero"),
            ));
            let mut decoder = options.read_info(Cursor::new(data)).ok()?;
            let mut frames = 0;
            // A broken frame ends the count; decoding the first frame will
            // report the damage if it matters.
            while frames <= max && matches!(decoder.read_next_frame(), Ok(Some(_))) {
                frames += 1;
            }
            Some(frames)
        }
        ImageFormat::Png => {
            let reader = png::Decoder::new(Cursor::new(data)).read_info().ok()?;
            reader.info().animation_control.map(|a| a.num_frames as u64)
        }
        ImageFormat::WebP => {
            let d = image_webp::WebPDecoder::new(Cursor::new(data)).ok()?;
            d.is_animated().then(|| d.num_frames() as u64)
        }
        _ => None,
    }
}

/// Decodes the first frame (first page for TIFF) of `data`.
pub(crate) fn decode(
    data: &[u8],
    format: ImageFormat,
    limits: &Limits,
) -> Result<Decoded, PreviewError> {
    match image::guess_format(data) {
        Ok(f) if f == format => {}
        _ => {
            return Err(PreviewError::TypeMismatch(
                format.to_mime_type().to_string(),
            ));
        }
    }
    if let Some(frames) = declared_frames(data, format, limits.max_frames)
        && frames > limits.max_frames
    {
        return Err(PreviewError::TooManyFrames {
            frames,
            max: limits.max_frames,
        });
    }
    let err = |e| map_err(e, limits);
    let cursor = Cursor::new(data);
    let mut decoder: Box<dyn ImageDecoder> = match format {
        ImageFormat::Png => {
            Box::new(PngDecoder::with_limits(cursor, image_limits(limits)).map_err(err)?)
        }
        ImageFormat::Gif => Box::new(GifDecoder::new(cursor).map_err(err)?),
        ImageFormat::WebP => Box::new(WebPDecoder::new(cursor).map_err(err)?),
        ImageFormat::Tiff => Box::new(TiffDecoder::new(cursor).map_err(err)?),
        ImageFormat::Bmp => Box::new(BmpDecoder::new(cursor).map_err(err)?),
        other => {
            return Err(PreviewError::UnsupportedType(
                other.to_mime_type().to_string(),
            ));
        }
    };
    decoder.set_limits(image_limits(limits)).map_err(err)?;
    let (w, h) = decoder.dimensions();
    let bpp = decoder.color_type().bytes_per_pixel() as u64;
    check_dimensions(w as u64, h as u64, bpp, limits)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let img = DynamicImage::from_decoder(decoder).map_err(err)?;
    let (layout, pixels) = if img.color().has_alpha() {
        (Layout::Rgba, img.into_rgba8().into_raw())
    } else {
        (Layout::Rgb, img.into_rgb8().into_raw())
    };
    Ok(Decoded {
        width: w,
        height: h,
        layout,
        pixels,
        full_width: w,
        full_height: h,
        orientation,
        icc,
    })
}
