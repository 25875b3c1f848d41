//! JPEG through libjpeg-turbo's TurboJPEG API, decoding at a reduced DCT
//! scale (shrink-on-load), as vips does: a 12 MP photo meant for a 320 px
//! thumbnail is decoded straight to ~500×375.

use std::ffi::CStr;

use image::metadata::Orientation;
use turbojpeg_sys as tj;

use crate::error::check_dimensions;
use crate::raster::{Decoded, Layout, Target};
use crate::{Limits, PreviewError};

/// An owned TurboJPEG instance.
struct Handle(tj::tjhandle);

impl Handle {
    fn decompressor() -> Result<Handle, PreviewError> {
        // SAFETY: no preconditions; a null result is checked.
        let h = unsafe { tj::tjInitDecompress() };
        Self::checked(h)
    }

    fn compressor() -> Result<Handle, PreviewError> {
        // SAFETY: no preconditions; a null result is checked.
        let h = unsafe { tj::tjInitCompress() };
        Self::checked(h)
    }

    fn checked(h: tj::tjhandle) -> Result<Handle, PreviewError> {
        if h.is_null() {
            return Err(PreviewError::Io(std::io::Error::other(
                "TurboJPEG could not allocate a handle",
            )));
        }
        Ok(Handle(h))
    }

    /// The last error's message and whether it was only a warning.
    fn last_error(&self) -> (String, bool) {
        // SAFETY: self.0 is a live handle; the string is owned by it and
        // copied before the handle is used again.
        unsafe {
            let msg = CStr::from_ptr(tj::tjGetErrorStr2(self.0))
                .to_string_lossy()
                .into_owned();
            let warning = tj::tjGetErrorCode(self.0) == tj::TJERR_TJERR_WARNING as libc::c_int;
            (msg, warning)
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from tjInit* and is destroyed once.
        unsafe {
            tj::tjDestroy(self.0);
        }
    }
}

/// What the marker segments before the first scan say.
#[derive(Default)]
struct Markers {
    orientation: Option<Orientation>,
    icc: Option<Vec<u8>>,
    /// An Adobe APP14 segment: 4-channel data is stored inverted.
    adobe: bool,
}

/// Walks the marker segments up to the first SOS. TurboJPEG 2.1 exposes
/// neither EXIF nor ICC (tj3GetICCProfile is 3.0), and a full parser such as
/// `img-parts` would copy the whole file.
fn scan_markers(data: &[u8]) -> Markers {
    let mut m = Markers::default();
    let mut icc_chunks: Vec<(u8, &[u8])> = Vec::new();
    let mut pos = 2;
    while pos + 4 <= data.len() {
        if data[pos] != 0xFF {
            break;
        }
        let marker = data[pos + 1];
        if marker == 0xFF {
            pos += 1; // fill byte
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            break; // start of scan or end of image: no more metadata
        }
        if (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            pos += 2;
            continue;
        }
        let len = u16::from_be_bytes([data[pos + 2], data[pos + 3]]) as usize;
        if len < 2 || pos + 2 + len > data.len() {
            break;
        }
        let seg = &data[pos + 4..pos + 2 + len];
        match marker {
            0xE1 if seg.starts_with(b"Exif\0\0") && m.orientation.is_none() => {
                m.orientation = Orientation::from_exif_chunk(&seg[6..]);
            }
            0xE2 if seg.starts_with(b"ICC_PROFILE\0") && seg.len() > 14 => {
                icc_chunks.push((seg[12], &seg[14..]));
            }
            0xEE if seg.starts_with(b"Adobe") => m.adobe = true,
            _ => {}
        }
        pos += 2 + len;
    }
    if !icc_chunks.is_empty() {
        icc_chunks.sort_by_key(|(seq, _)| *seq);
        m.icc = Some(
            icc_chunks
                .into_iter()
                .flat_map(|(_, c)| c.iter().copied())
                .collect(),
        );
    }
    m
}

/// TJSCALED: the size libjpeg-turbo produces for `dim` at `num`/8.
fn scaled(dim: u32, num: u32) -> u32 {
    (dim * num).div_ceil(8)
}

/// Decodes a JPEG, shrunk on load as far as `target` allows.
pub(crate) fn decode(
    data: &[u8],
    limits: &Limits,
    target: Option<Target>,
) -> Result<Decoded, PreviewError> {
    if !data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Err(PreviewError::TypeMismatch("image/jpeg".into()));
    }
    let markers = scan_markers(data);
    let orientation = markers.orientation.unwrap_or(Orientation::NoTransforms);
    let handle = Handle::decompressor()?;
    let (mut w, mut h, mut subsamp, mut colorspace) = (0, 0, 0, 0);
    // SAFETY: data is a live slice of the given length; the out-pointers are
    // valid locals.
    let rc = unsafe {
        tj::tjDecompressHeader3(
            handle.0,
            data.as_ptr(),
            data.len() as libc::c_ulong,
            &mut w,
            &mut h,
            &mut subsamp,
            &mut colorspace,
        )
    };
    if rc != 0 {
        return Err(PreviewError::CorruptImage(handle.last_error().0));
    }
    let (w, h) = (w as u32, h as u32);
    check_dimensions(w as u64, h as u64, 0, limits)?;

    let num = match target {
        Some(t) => {
            let s = t.min_scale(w, h, orientation);
            (1..=8)
                .find(|&n| {
                    scaled(w, n) as f64 >= w as f64 * s - 1e-6
                        && scaled(h, n) as f64 >= h as f64 * s - 1e-6
                })
                .unwrap_or(8)
        }
        None => 8,
    };
    let (sw, sh) = (scaled(w, num), scaled(h, num));
    let cmyk = colorspace == tj::TJCS_TJCS_CMYK as libc::c_int
        || colorspace == tj::TJCS_TJCS_YCCK as libc::c_int;
    let (format, layout, bpp) = if cmyk {
        (
            tj::TJPF_TJPF_CMYK,
            Layout::Cmyk {
                inverted: markers.adobe,
            },
            4,
        )
    } else {
        // Grayscale is expanded to RGB by libjpeg itself.
        (tj::TJPF_TJPF_RGB, Layout::Rgb, 3)
    };
    check_dimensions(sw as u64, sh as u64, bpp, limits)?;
    let mut pixels = vec![0u8; sw as usize * sh as usize * bpp as usize];
    // LIMITSCANS rejects progressive files with absurd scan counts, a known
    // CPU denial of service.
    let flags = tj::TJFLAG_LIMITSCANS as libc::c_int;
    // SAFETY: pixels holds sw*sh*bpp bytes, which is what TurboJPEG writes
    // for this width, height and format with pitch 0 (= tightly packed).
    let rc = unsafe {
        tj::tjDecompress2(
            handle.0,
            data.as_ptr(),
            data.len() as libc::c_ulong,
            pixels.as_mut_ptr(),
            sw as libc::c_int,
            0,
            sh as libc::c_int,
            format as libc::c_int,
            flags,
        )
    };
    if rc != 0 {
        let (msg, warning) = handle.last_error();
        // Warnings (stray bytes between markers and the like) are common in
        // real photos and harmless; a file that ends early is not a picture.
        if !warning || msg.contains("Premature end") {
            return Err(PreviewError::CorruptImage(msg));
        }
    }
    Ok(Decoded {
        width: sw,
        height: sh,
        layout,
        pixels,
        full_width: w,
        full_height: h,
        orientation,
        icc: markers.icc,
    })
}

/// Encodes tightly packed RGB as a baseline 4:2:0 JPEG with no metadata
/// segments (TurboJPEG writes only JFIF APP0).
pub(crate) fn encode(rgb: &image::RgbImage, quality: u8) -> Result<Vec<u8>, PreviewError> {
    let handle = Handle::compressor()?;
    let mut buf: *mut libc::c_uchar = std::ptr::null_mut();
    let mut size: libc::c_ulong = 0;
    // SAFETY: rgb holds width*height*3 bytes; TurboJPEG allocates buf, which
    // is freed with tjFree below whatever the result.
    let rc = unsafe {
        tj::tjCompress2(
            handle.0,
            rgb.as_raw().as_ptr(),
            rgb.width() as libc::c_int,
            0,
            rgb.height() as libc::c_int,
            tj::TJPF_TJPF_RGB as libc::c_int,
            &mut buf,
            &mut size,
            tj::TJSAMP_TJSAMP_420 as libc::c_int,
            quality as libc::c_int,
            0,
        )
    };
    let out = if rc == 0 && !buf.is_null() {
        // SAFETY: TurboJPEG wrote size bytes to buf.
        Ok(unsafe { std::slice::from_raw_parts(buf, size as usize) }.to_vec())
    } else {
        Err(PreviewError::Encode(handle.last_error().0))
    };
    if !buf.is_null() {
        // SAFETY: buf was allocated by TurboJPEG.
        unsafe { tj::tjFree(buf) };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        encode(&img, 80).unwrap()
    }

    #[test]
    fn decodes_at_the_smallest_dct_scale_that_still_covers_the_target() {
        let data = jpeg(4000, 3000);
        let limits = Limits::default();
        let thumb = decode(&data, &limits, Some(Target::Within { w: 320, h: 320 })).unwrap();
        assert_eq!((thumb.width, thumb.height), (500, 375));
        assert_eq!((thumb.full_width, thumb.full_height), (4000, 3000));
        let preview = decode(&data, &limits, Some(Target::Within { w: 1280, h: 1280 })).unwrap();
        assert_eq!((preview.width, preview.height), (1500, 1125));
        let full = decode(&data, &limits, None).unwrap();
        assert_eq!((full.width, full.height), (4000, 3000));
    }

    #[test]
    fn finds_exif_orientation_and_a_multi_segment_icc_profile() {
        let mut data = jpeg(16, 16);
        let mut exif =
            b"Exif\0\0MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0".to_vec();
        let mut segs = vec![0xFF, 0xE1];
        segs.extend(((exif.len() + 2) as u16).to_be_bytes());
        segs.append(&mut exif);
        for (seq, part) in [(2u8, &b"world"[..]), (1, b"hello ")] {
            let mut body = b"ICC_PROFILE\0".to_vec();
            body.extend([seq, 2]);
            body.extend(part);
            segs.extend([0xFF, 0xE2]);
            segs.extend(((body.len() + 2) as u16).to_be_bytes());
            segs.extend(body);
        }
        data.splice(2..2, segs);
        let m = scan_markers(&data);
        assert_eq!(m.orientation, Some(Orientation::Rotate90));
        assert_eq!(m.icc.as_deref(), Some(&b"hello world"[..]));
        assert!(!m.adobe);
    }
}
