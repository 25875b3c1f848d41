//! Format-independent second half: resize, colour-convert, orient, encode.

use fast_image_resize as fr;
use image::metadata::Orientation;
use image::{DynamicImage, RgbImage, RgbaImage};

use crate::{Fit, OutputFormat, PreviewError, Rendition};

/// Channel layout of decoded 8-bit pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    Rgb,
    /// Straight (not premultiplied) alpha.
    Rgba,
    /// Four ink channels; `inverted` for Adobe JPEGs, which store 255 − ink.
    Cmyk {
        inverted: bool,
    },
}

impl Layout {
    fn channels(self) -> usize {
        match self {
            Layout::Rgb => 3,
            _ => 4,
        }
    }
}

/// A decoded picture in its stored orientation, possibly already shrunk on
/// load, with what is needed to finish it.
pub(crate) struct Decoded {
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
    pub pixels: Vec<u8>,
    /// Stored size of the original, before any shrink-on-load.
    pub full_width: u32,
    pub full_height: u32,
    /// What makes the stored picture upright (EXIF or equivalent).
    pub orientation: Orientation,
    /// Embedded ICC profile, converted to sRGB at the end.
    pub icc: Option<Vec<u8>>,
}

fn swaps_axes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

impl Decoded {
    /// Size of the original once upright.
    pub fn upright_size(&self) -> (u32, u32) {
        if swaps_axes(self.orientation) {
            (self.full_height, self.full_width)
        } else {
            (self.full_width, self.full_height)
        }
    }
}

/// The box a decoder may shrink towards, in upright pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Within { w: u32, h: u32 },
    Cover { w: u32, h: u32 },
}

impl Target {
    pub fn from_fit(fit: Fit) -> Target {
        match fit {
            Fit::Within { w, h } => Target::Within {
                w: w.max(1),
                h: h.max(1),
            },
            Fit::Cover { w, h } => Target::Cover {
                w: w.max(1),
                h: h.max(1),
            },
        }
    }

    /// Output size for an upright original of `ow`×`oh`; never larger than it.
    pub fn output_size(self, ow: u32, oh: u32) -> (u32, u32) {
        let (ow_f, oh_f) = (ow as f64, oh as f64);
        let round = |v: f64| (v.round() as u32).max(1);
        match self {
            Target::Within { w, h } => {
                let k = (w as f64 / ow_f).min(h as f64 / oh_f).min(1.0);
                if k >= 1.0 {
                    (ow, oh)
                } else {
                    (round(ow_f * k).min(w), round(oh_f * k).min(h))
                }
            }
            Target::Cover { w, h } => {
                // Largest box of aspect w:h that the original still covers.
                let k = (ow_f / w as f64).min(oh_f / h as f64).min(1.0);
                (round(w as f64 * k).min(ow), round(h as f64 * k).min(oh))
            }
        }
    }

    /// The smallest uniform scale of the stored picture (`sw`×`sh`,
    /// orientation `o`) that still leaves enough pixels for the output.
    pub fn min_scale(self, sw: u32, sh: u32, o: Orientation) -> f64 {
        let (uw, uh) = if swaps_axes(o) { (sh, sw) } else { (sw, sh) };
        let (tw, th) = self.output_size(uw, uh);
        // Within: both sides shrink alike. Cover: the side that is not
        // cropped is the tighter one. Either way the larger ratio decides.
        (tw as f64 / uw as f64).max(th as f64 / uh as f64)
    }
}

/// Resizes, converts to sRGB, orients and encodes `d` as a `tw`×`th` picture.
pub(crate) fn produce(
    d: Decoded,
    fit: Fit,
    (tw, th): (u32, u32),
    format: OutputFormat,
    quality: u8,
) -> Result<Rendition, PreviewError> {
    let (img, has_alpha) = finish_pixels(d, matches!(fit, Fit::Cover { .. }), (tw, th))?;
    let (width, height) = (img.width(), img.height());
    let quality = quality.clamp(1, 100);
    let bytes = match format {
        OutputFormat::WebP => {
            let memory = if has_alpha {
                let rgba = img.into_rgba8();
                webp::Encoder::from_rgba(&rgba, width, height).encode_simple(false, quality as f32)
            } else {
                let rgb = img.into_rgb8();
                webp::Encoder::from_rgb(&rgb, width, height).encode_simple(false, quality as f32)
            };
            memory
                .map_err(|e| PreviewError::Encode(format!("libwebp: {e:?}")))?
                .to_vec()
        }
        OutputFormat::Jpeg => {
            let rgb = if has_alpha {
                flatten_on_white(&img.into_rgba8())
            } else {
                img.into_rgb8()
            };
            crate::jpeg::encode(&rgb, quality)?
        }
    };
    Ok(Rendition {
        bytes,
        mime: format.mime(),
        width,
        height,
    })
}

/// ThumbHash of the upright, sRGB picture (at most 100×100, as the format
/// requires).
pub(crate) fn thumbhash(d: Decoded) -> Result<Vec<u8>, PreviewError> {
    let (ow, oh) = d.upright_size();
    let size = Target::Within { w: 100, h: 100 }.output_size(ow, oh);
    let (img, _) = finish_pixels(d, false, size)?;
    let rgba = img.into_rgba8();
    Ok(thumbhash::rgba_to_thumb_hash(
        rgba.width() as usize,
        rgba.height() as usize,
        rgba.as_raw(),
    ))
}

/// Everything but the encoding. Returns the upright sRGB picture and whether
/// it has any transparent pixel.
fn finish_pixels(
    d: Decoded,
    crop: bool,
    (tw, th): (u32, u32),
) -> Result<(DynamicImage, bool), PreviewError> {
    // Resize in stored orientation; rotating the small result is cheaper.
    let (sw, sh) = if swaps_axes(d.orientation) {
        (th, tw)
    } else {
        (tw, th)
    };
    let pixels = resize(&d, crop, sw, sh)?;
    let rgb_or_rgba = match d.layout {
        Layout::Cmyk { inverted } => cmyk_to_rgb(&pixels, inverted, d.icc.as_deref()),
        Layout::Rgb | Layout::Rgba => {
            let mut pixels = pixels;
            if let Some(icc) = d.icc.as_deref() {
                rgb_to_srgb(&mut pixels, d.layout == Layout::Rgba, icc);
            }
            pixels
        }
    };
    let mut img = if d.layout == Layout::Rgba {
        let has_alpha = rgb_or_rgba.chunks_exact(4).any(|p| p[3] != 255);
        let rgba = RgbaImage::from_raw(sw, sh, rgb_or_rgba).expect("buffer sized by resize");
        if has_alpha {
            DynamicImage::ImageRgba8(rgba)
        } else {
            DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(rgba).into_rgb8())
        }
    } else {
        DynamicImage::ImageRgb8(
            RgbImage::from_raw(sw, sh, rgb_or_rgba).expect("buffer sized by resize"),
        )
    };
    img.apply_orientation(d.orientation);
    let has_alpha = img.color().has_alpha();
    Ok((img, has_alpha))
}

/// Lanczos3 with SIMD (fast_image_resize); alpha is premultiplied for the
/// filter so that transparent pixels do not bleed colour.
fn resize(d: &Decoded, crop: bool, sw: u32, sh: u32) -> Result<Vec<u8>, PreviewError> {
    if (d.width, d.height) == (sw, sh) {
        return Ok(d.pixels.clone());
    }
    let pixel_type = match d.layout.channels() {
        3 => fr::PixelType::U8x3,
        _ => fr::PixelType::U8x4,
    };
    let src = fr::images::ImageRef::new(d.width, d.height, &d.pixels, pixel_type)
        .map_err(|e| PreviewError::CorruptImage(format!("decoded buffer: {e}")))?;
    let mut dst = fr::images::Image::new(sw, sh, pixel_type);
    let mut options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3))
        .use_alpha(d.layout == Layout::Rgba);
    if crop {
        options = options.fit_into_destination(Some((0.5, 0.5)));
    }
    fr::Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| PreviewError::Encode(format!("resize: {e}")))?;
    Ok(dst.into_vec())
}

fn srgb_transform(
    icc: &[u8],
    src: moxcms::Layout,
    dst: moxcms::Layout,
) -> Option<std::sync::Arc<moxcms::Transform8BitExecutor>> {
    // A profile that cannot be parsed is ignored rather than failing the
    // preview: the pixels are then taken as sRGB, as browsers do.
    let profile = moxcms::ColorProfile::new_from_slice(icc).ok()?;
    let wanted = match src {
        moxcms::Layout::Rgb | moxcms::Layout::Rgba => moxcms::DataColorSpace::Rgb,
        _ => moxcms::DataColorSpace::Cmyk,
    };
    if profile.color_space != wanted {
        return None;
    }
    let srgb = moxcms::ColorProfile::new_srgb();
    profile
        .create_transform_8bit(src, &srgb, dst, moxcms::TransformOptions::default())
        .ok()
}

fn rgb_to_srgb(pixels: &mut [u8], alpha: bool, icc: &[u8]) {
    let layout = if alpha {
        moxcms::Layout::Rgba
    } else {
        moxcms::Layout::Rgb
    };
    if let Some(t) = srgb_transform(icc, layout, layout) {
        let src = pixels.to_vec();
        if t.transform(&src, pixels).is_err() {
            pixels.copy_from_slice(&src);
        }
    }
}

fn cmyk_to_rgb(pixels: &[u8], inverted: bool, icc: Option<&[u8]>) -> Vec<u8> {
    let ink: Vec<u8> = if inverted {
        pixels.iter().map(|v| 255 - v).collect()
    } else {
        pixels.to_vec()
    };
    if let Some(t) =
        icc.and_then(|icc| srgb_transform(icc, moxcms::Layout::Rgba, moxcms::Layout::Rgb))
    {
        let mut rgb = vec![0; ink.len() / 4 * 3];
        if t.transform(&ink, &mut rgb).is_ok() {
            return rgb;
        }
    }
    // No usable CMYK profile: the naive conversion every viewer falls back to.
    let mut rgb = Vec::with_capacity(ink.len() / 4 * 3);
    for p in ink.chunks_exact(4) {
        let k = 255 - p[3] as u32;
        for &c in &p[..3] {
            rgb.push(((255 - c as u32) * k / 255) as u8);
        }
    }
    rgb
}

fn flatten_on_white(rgba: &RgbaImage) -> RgbImage {
    let mut rgb = RgbImage::new(rgba.width(), rgba.height());
    for (o, i) in rgb.pixels_mut().zip(rgba.pixels()) {
        let a = i[3] as u32;
        for c in 0..3 {
            o[c] = ((i[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    rgb
}
