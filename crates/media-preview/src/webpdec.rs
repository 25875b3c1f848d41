//! Still WebP through libwebp (already linked for encoding): its decoder is
//! several times faster than the pure-Rust one and scales while decoding, as
//! vips does; a 2 MP photo for a 320 px thumbnail never exists at full size.
//! Animated files go to the `image` crate, which composes the first frame.

use std::io::Cursor;

use image::ImageDecoder;
use image::codecs::webp::WebPDecoder;
use image::metadata::Orientation;
use libwebp_sys as w;

use crate::error::check_dimensions;
use crate::raster::{Decoded, Layout, Target};
use crate::{Limits, PreviewError};

/// Decodes a still WebP, scaled towards `target`; `None` for an animation.
pub(crate) fn decode_still(
    data: &[u8],
    limits: &Limits,
    target: Option<Target>,
) -> Result<Option<Decoded>, PreviewError> {
    // SAFETY: WebPBitstreamFeatures is plain data; libwebp fills it from a
    // live slice of the given length.
    let mut features: w::WebPBitstreamFeatures = unsafe { std::mem::zeroed() };
    let status = unsafe { w::WebPGetFeatures(data.as_ptr(), data.len(), &mut features) };
    if status != w::VP8StatusCode::VP8_STATUS_OK {
        return Err(PreviewError::CorruptImage(format!(
            "WebP header: {status:?}"
        )));
    }
    if features.has_animation != 0 {
        return Ok(None);
    }
    let (fw, fh) = (features.width as u32, features.height as u32);
    let alpha = features.has_alpha != 0;
    let bpp: u32 = if alpha { 4 } else { 3 };
    check_dimensions(fw as u64, fh as u64, bpp as u64, limits)?;

    // Orientation and ICC profile from the container (header chunks only).
    let mut meta = WebPDecoder::new(Cursor::new(data))
        .map_err(|e| PreviewError::CorruptImage(e.to_string()))?;
    let orientation = meta.orientation().unwrap_or(Orientation::NoTransforms);
    let icc = meta.icc_profile().ok().flatten();

    // libwebp's scaler averages areas: scale to twice the output so the
    // final Lanczos pass still has detail to work with.
    let (sw, sh) = match target {
        Some(t) => {
            let s = (t.min_scale(fw, fh, orientation) * 2.0).min(1.0);
            let scaled = |d: u32| ((d as f64 * s).ceil() as u32).clamp(1, d);
            (scaled(fw), scaled(fh))
        }
        None => (fw, fh),
    };
    let stride = sw as usize * bpp as usize;
    let mut pixels = vec![0u8; stride * sh as usize];

    // SAFETY: the config is initialised by libwebp; the output buffer is our
    // Vec, described exactly (pointer, stride, size) and alive until
    // WebPDecode returns; WebPFreeDecBuffer frees nothing external.
    unsafe {
        let mut config: w::WebPDecoderConfig = std::mem::zeroed();
        if !w::WebPInitDecoderConfig(&mut config) {
            return Err(PreviewError::Io(std::io::Error::other(
                "libwebp version mismatch",
            )));
        }
        config.options.use_threads = 0;
        if (sw, sh) != (fw, fh) {
            config.options.use_scaling = 1;
            config.options.scaled_width = sw as i32;
            config.options.scaled_height = sh as i32;
        }
        config.output.colorspace = if alpha {
            w::WEBP_CSP_MODE::MODE_RGBA
        } else {
            w::WEBP_CSP_MODE::MODE_RGB
        };
        config.output.is_external_memory = 1;
        config.output.u.RGBA = w::WebPRGBABuffer {
            rgba: pixels.as_mut_ptr(),
            stride: stride as i32,
            size: pixels.len(),
        };
        let status = w::WebPDecode(data.as_ptr(), data.len(), &mut config);
        w::WebPFreeDecBuffer(&mut config.output);
        if status != w::VP8StatusCode::VP8_STATUS_OK {
            return Err(PreviewError::CorruptImage(format!("WebP data: {status:?}")));
        }
    }
    Ok(Some(Decoded {
        width: sw,
        height: sh,
        layout: if alpha { Layout::Rgba } else { Layout::Rgb },
        pixels,
        full_width: fw,
        full_height: fh,
        orientation,
        icc,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_still_is_scaled_while_decoding_and_keeps_its_colours() {
        let rgb: Vec<u8> = (0..2000 * 1500)
            .flat_map(|i| [(i % 2000 / 8) as u8, 90, 200])
            .collect();
        let webp = webp::Encoder::from_rgb(&rgb, 2000, 1500)
            .encode(90.0)
            .to_vec();
        let target = Target::Within { w: 320, h: 320 };
        let d = decode_still(&webp, &Limits::default(), Some(target))
            .unwrap()
            .unwrap();
        assert_eq!((d.width, d.height), (640, 480));
        assert_eq!((d.full_width, d.full_height), (2000, 1500));
        // Left edge dark red channel, right edge bright; blue constant.
        let px = |x: usize| &d.pixels[(240 * 640 + x) * 3..][..3];
        assert!(
            px(2)[0] < 20 && px(637)[0] > 230,
            "{:?} {:?}",
            px(2),
            px(637)
        );
        assert!(px(320)[2].abs_diff(200) < 10);
    }

    #[test]
    fn an_animation_is_left_to_the_image_crate() {
        let anim = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/webp/animated.webp"
        ))
        .unwrap();
        assert!(
            decode_still(&anim, &Limits::default(), None)
                .unwrap()
                .is_none()
        );
    }
}
