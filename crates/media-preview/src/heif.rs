//! HEIC and AVIF through the system libheif (libde265 for HEVC, dav1d/aom for
//! AV1, as Debian builds it).

use image::metadata::Orientation;
use libheif_rs::{ColorSpace, HeifContext, LibHeif, RgbChroma};

use crate::error::check_dimensions;
use crate::raster::{Decoded, Layout};
use crate::{Limits, PreviewError};

fn is_heif(data: &[u8]) -> bool {
    // ISO-BMFF: a `ftyp` box whose brands say HEIF or AVIF.
    data.len() >= 12
        && &data[4..8] == b"ftyp"
        && matches!(
            &data[8..12],
            b"heic"
                | b"heix"
                | b"hevc"
                | b"hevx"
                | b"heim"
                | b"heis"
                | b"mif1"
                | b"msf1"
                | b"avif"
                | b"avis"
        )
}

/// libheif initialised once for the process: heif_deinit on every call would
/// unload its plugins while another thread may be decoding.
fn library() -> &'static LibHeif {
    static LIB: std::sync::OnceLock<LibHeif> = std::sync::OnceLock::new();
    LIB.get_or_init(LibHeif::new)
}

/// Decodes the primary image, upright (libheif applies `irot`/`imir`).
pub(crate) fn decode(data: &[u8], limits: &Limits) -> Result<Decoded, PreviewError> {
    if !is_heif(data) {
        return Err(PreviewError::TypeMismatch(
            "image/heif or image/avif".into(),
        ));
    }
    let corrupt = |e: libheif_rs::HeifError| PreviewError::CorruptImage(e.to_string());
    let lib = library();
    let mut ctx = HeifContext::read_from_bytes(data).map_err(corrupt)?;
    // One call, one thread, as for every other format.
    ctx.set_max_decoding_threads(1);
    let handle = ctx.primary_image_handle().map_err(corrupt)?;
    let (w, h) = (handle.width(), handle.height());
    let alpha = handle.has_alpha_channel();
    let bpp = if alpha { 4 } else { 3 };
    check_dimensions(w as u64, h as u64, bpp, limits)?;
    let icc = handle.color_profile_raw().map(|p| p.data);
    let chroma = if alpha {
        RgbChroma::Rgba
    } else {
        RgbChroma::Rgb
    };
    let image = lib
        .decode(&handle, ColorSpace::Rgb(chroma), None)
        .map_err(corrupt)?;
    let planes = image.planes();
    let plane = planes.interleaved.ok_or_else(|| {
        PreviewError::CorruptImage("libheif returned no interleaved plane".into())
    })?;
    let (pw, ph) = (plane.width as usize, plane.height as usize);
    let row = pw * bpp as usize;
    let mut pixels = Vec::with_capacity(row * ph);
    for y in 0..ph {
        let start = y * plane.stride;
        let line = plane
            .data
            .get(start..start + row)
            .ok_or_else(|| PreviewError::CorruptImage("short pixel plane".into()))?;
        pixels.extend_from_slice(line);
    }
    Ok(Decoded {
        width: pw as u32,
        height: ph as u32,
        layout: if alpha { Layout::Rgba } else { Layout::Rgb },
        pixels,
        full_width: pw as u32,
        full_height: ph as u32,
        orientation: Orientation::NoTransforms,
        icc,
    })
}
