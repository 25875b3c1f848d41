//! Lossless removal of identifying metadata from JPEG originals
//! (`upload.strip_exif`, issue #11 point 5).
//!
//! Only the marker segments before the first scan are rewritten; the
//! compressed picture data is copied byte for byte, so the pixels are
//! exactly the same. Removed: EXIF (GPS position, camera serial numbers,
//! owner, dates, thumbnails, maker notes), XMP, Photoshop/IPTC (APP13) and
//! comments. Kept: JFIF (APP0), ICC profiles (APP2, colours), Adobe (APP14,
//! needed to decode CMYK), every table and frame header, and the EXIF
//! orientation, rewritten as a minimal EXIF block holding only that tag, so
//! the picture still shows upright.

/// The JPEG without identifying metadata, or `None` when there is nothing to
/// remove or the bytes are not a JPEG this understands (stored unchanged).
pub fn strip_jpeg(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..2]);
    let mut pos = 2;
    let mut removed = false;
    loop {
        // Fill bytes (0xFF runs) may precede a marker.
        let mut p = pos;
        while p < bytes.len() && bytes[p] == 0xFF {
            p += 1;
        }
        if p == pos || p >= bytes.len() {
            return None;
        }
        let marker = bytes[p];
        let seg_start = p - 1;
        // Standalone markers (no length): TEM, RSTn.
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            out.extend_from_slice(&bytes[seg_start..p + 1]);
            pos = p + 1;
            continue;
        }
        if marker == 0xD9 {
            // EOI before any scan: nothing to decode; leave it alone.
            return None;
        }
        let len = u16::from_be_bytes([*bytes.get(p + 1)?, *bytes.get(p + 2)?]) as usize;
        if len < 2 {
            return None;
        }
        let end = p + 1 + len;
        let payload = bytes.get(p + 3..end)?;
        if marker == 0xDA {
            // Start of scan: everything from here on is picture data.
            out.extend_from_slice(&bytes[seg_start..]);
            break;
        }
        match marker {
            0xE1 if payload.starts_with(b"Exif\0\0") => {
                let kept = orientation(&payload[6..])
                    .filter(|&o| o != 1)
                    .map(minimal_exif)
                    .unwrap_or_default();
                // A block that is already minimal is not a removal (idempotent).
                removed |= kept.as_slice() != &bytes[seg_start..end];
                out.extend_from_slice(&kept);
            }
            // XMP (and extended XMP), Photoshop/IPTC, comments.
            0xE1 | 0xED | 0xFE => removed = true,
            _ => out.extend_from_slice(&bytes[seg_start..end]),
        }
        pos = end;
    }
    removed.then_some(out)
}

/// The Orientation tag (0x0112) of IFD0 of a TIFF structure.
fn orientation(tiff: &[u8]) -> Option<u16> {
    let big = match tiff.get(..2)? {
        b"MM" => true,
        b"II" => false,
        _ => return None,
    };
    let u16_at = |i: usize| -> Option<u16> {
        let b = [*tiff.get(i)?, *tiff.get(i + 1)?];
        Some(if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |i: usize| -> Option<u32> {
        let b = [
            *tiff.get(i)?,
            *tiff.get(i + 1)?,
            *tiff.get(i + 2)?,
            *tiff.get(i + 3)?,
        ];
        Some(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let ifd = u32_at(4)? as usize;
    let count = u16_at(ifd)? as usize;
    (0..count.min(512)).find_map(|k| {
        let entry = ifd + 2 + 12 * k;
        // SHORT, count 1: the value sits in the entry.
        (u16_at(entry)? == 0x0112 && u16_at(entry + 2)? == 3)
            .then(|| u16_at(entry + 8))
            .flatten()
            .filter(|o| (1..=8).contains(o))
    })
}

/// An APP1 segment with an EXIF block holding only IFD0's Orientation.
fn minimal_exif(orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0\x2A\0\0\0\x08"); // big-endian, IFD0 at 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes());
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
    seg.extend_from_slice(b"Exif\0\0");
    seg.extend_from_slice(&tiff);
    seg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(marker: u8, payload: &[u8]) -> Vec<u8> {
        let mut s = vec![0xFF, marker];
        s.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        s.extend_from_slice(payload);
        s
    }

    /// A little-endian EXIF block with Orientation and a GPS IFD pointer.
    fn exif_le(orientation: u16) -> Vec<u8> {
        let mut p = b"Exif\0\0II\x2A\0\x08\0\0\0".to_vec();
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&0x0112u16.to_le_bytes());
        p.extend_from_slice(&3u16.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&orientation.to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&0x8825u16.to_le_bytes()); // GPSInfo
        p.extend_from_slice(&4u16.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&100u32.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(b"GPS 52.52N 13.40E");
        p
    }

    fn jpeg(segments: &[Vec<u8>]) -> Vec<u8> {
        let mut j = vec![0xFF, 0xD8];
        for s in segments {
            j.extend_from_slice(s);
        }
        j.extend_from_slice(&segment(0xDA, b"\x01\x01\x00\x00\x3f\x00"));
        j.extend_from_slice(b"\x12\x34\xFF\x00\x56\xFF\xD9");
        j
    }

    #[test]
    fn exif_xmp_iptc_and_comments_go_orientation_and_picture_stay() {
        let jfif = segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
        let icc = segment(0xE2, b"ICC_PROFILE\0\x01\x01abc");
        let dqt = segment(0xDB, &[0; 65]);
        let original = jpeg(&[
            jfif.clone(),
            segment(0xE1, &exif_le(6)),
            segment(
                0xE1,
                b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>me</x:xmpmeta>",
            ),
            segment(0xED, b"Photoshop 3.0\0IPTC by-line"),
            segment(0xFE, b"taken at home"),
            icc.clone(),
            dqt.clone(),
        ]);
        let clean = strip_jpeg(&original).unwrap();
        let expected = jpeg(&[jfif, minimal_exif(6), icc, dqt]);
        assert_eq!(clean, expected);
        // The rewritten block reads back as orientation 6.
        let exif = &minimal_exif(6)[4 + 6..];
        assert_eq!(orientation(exif), Some(6));
        // Stripping is idempotent: nothing more to remove.
        assert_eq!(strip_jpeg(&clean), None);
        assert!(!clean.windows(3).any(|w| w == b"GPS"));
    }

    #[test]
    fn orientation_1_needs_no_exif_and_non_jpegs_are_left_alone() {
        let clean = strip_jpeg(&jpeg(&[segment(0xE1, &exif_le(1))])).unwrap();
        assert_eq!(clean, jpeg(&[]));
        assert_eq!(strip_jpeg(b"\x89PNG\r\n\x1a\n"), None);
        assert_eq!(strip_jpeg(&[0xFF, 0xD8, 0xFF, 0xE1, 0x00]), None);
        assert_eq!(strip_jpeg(&jpeg(&[])), None);
    }
}
