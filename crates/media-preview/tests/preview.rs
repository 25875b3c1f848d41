//! Behaviour of `render` and `probe` on real samples (tests/data, see its
//! MANIFEST.md) and on hostile files generated here.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::metadata::Orientation;
use image::{DynamicImage, RgbImage, RgbaImage};
use media_preview::{
    ErrorKind, Fit, Input, Limits, OutputFormat, PreviewError, Rendered, Rendition, Tools,
    VariantSpec, probe, render,
};

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(p)
}

fn read(p: &str) -> Vec<u8> {
    std::fs::read(data(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn within(w: u32, h: u32) -> VariantSpec {
    VariantSpec {
        fit: Fit::Within { w, h },
        format: OutputFormat::WebP,
        quality: 90,
    }
}

fn thumb() -> VariantSpec {
    VariantSpec::named("thumb").unwrap()
}

fn rendition(r: Result<Rendered, PreviewError>, what: &str) -> Rendition {
    match r {
        Ok(Rendered::Rendition(r)) => r,
        other => panic!("{what}: expected a rendition, got {other:?}"),
    }
}

fn render_bytes(bytes: &[u8], mime: &str, spec: &VariantSpec) -> Rendition {
    rendition(
        render(Input::Bytes(bytes), mime, spec, &Limits::default()),
        mime,
    )
}

fn render_file(p: &str, mime: &str, spec: &VariantSpec) -> Rendition {
    rendition(
        render(Input::Path(&data(p)), mime, spec, &Limits::default()),
        p,
    )
}

fn err_of(r: Result<Rendered, PreviewError>) -> PreviewError {
    match r {
        Err(e) => e,
        Ok(other) => panic!("expected an error, got {other:?}"),
    }
}

/// Decodes a rendition, checking that its bytes are what its mime says.
fn pixels(r: &Rendition) -> RgbaImage {
    let format = match r.mime {
        "image/webp" => image::ImageFormat::WebP,
        "image/jpeg" => image::ImageFormat::Jpeg,
        m => panic!("unexpected mime {m}"),
    };
    assert_eq!(image::guess_format(&r.bytes).unwrap(), format);
    let img = image::load_from_memory_with_format(&r.bytes, format).unwrap();
    assert_eq!((img.width(), img.height()), (r.width, r.height));
    img.into_rgba8()
}

/// Mean absolute difference per channel (0..255) after scaling `b` to `a`.
fn diff(a: &RgbaImage, b: &RgbaImage) -> f64 {
    let b = image::imageops::resize(
        b,
        a.width(),
        a.height(),
        image::imageops::FilterType::Triangle,
    );
    let sum: u64 = a
        .pixels()
        .zip(b.pixels())
        .map(|(p, q)| {
            (0..3)
                .map(|c| (p[c] as i64 - q[c] as i64).unsigned_abs())
                .sum::<u64>()
        })
        .sum();
    sum as f64 / (a.width() * a.height() * 3) as f64
}

fn mean_saturation(img: &RgbaImage) -> f64 {
    let sum: u64 = img
        .pixels()
        .map(|p| (p[0].max(p[1]).max(p[2]) - p[0].min(p[1]).min(p[2])) as u64)
        .sum();
    sum as f64 / (img.width() * img.height()) as f64
}

// ---------------------------------------------------------------- orientation

#[test]
fn jpeg_all_eight_exif_orientations_come_out_upright() {
    let spec = within(120, 120);
    let upright = pixels(&render_file(
        "exif-orientation/small/Landscape_1.jpg",
        "image/jpeg",
        &spec,
    ));
    assert_eq!((upright.width(), upright.height()), (120, 80));
    for n in 0..=8 {
        let p = format!("exif-orientation/small/Landscape_{n}.jpg");
        let img = pixels(&render_file(&p, "image/jpeg", &spec));
        assert_eq!((img.width(), img.height()), (120, 80), "{p}");
        // Same photo, only the digit in the middle differs.
        let d = diff(&upright, &img);
        assert!(d < 12.0, "{p}: differs from the upright picture by {d:.1}");
    }
    // The check above can fail: the stored (unrotated) picture of 2 is far off.
    let stored = image::load_from_memory(&read("exif-orientation/small/Landscape_2.jpg"))
        .unwrap()
        .into_rgba8();
    assert!(diff(&upright, &stored) > 25.0);
}

#[test]
fn png_and_webp_exif_orientation_6_come_out_upright() {
    let spec = within(120, 120);
    let upright = pixels(&render_file(
        "exif-orientation/small/Landscape_1.jpg",
        "image/jpeg",
        &spec,
    ));
    for (p, mime) in [
        ("png/exif_orientation_6.png", "image/png"),
        ("webp/exif_orientation_6.webp", "image/webp"),
    ] {
        let img = pixels(&render_file(p, mime, &spec));
        assert_eq!((img.width(), img.height()), (120, 80), "{p}");
        let d = diff(&upright, &img);
        assert!(d < 14.0, "{p}: differs from the upright picture by {d:.1}");
    }
}

/// An upright 64×40 picture with a coloured quadrant in each corner and some
/// noise (so that lossless originals are larger than a small rendition).
fn quadrants() -> RgbImage {
    let colours = [[220, 30, 30], [30, 200, 30], [30, 30, 220], [240, 240, 240]];
    let mut seed = 0x9e37_79b9u32;
    RgbImage::from_fn(64, 40, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let q = (x >= 32) as usize + 2 * (y >= 20) as usize;
        let n = (seed % 21) as i32 - 10;
        image::Rgb(colours[q].map(|c: i32| (c + n).clamp(0, 255) as u8))
    })
}

fn inverse(o: Orientation) -> Orientation {
    match o {
        Orientation::Rotate90 => Orientation::Rotate270,
        Orientation::Rotate270 => Orientation::Rotate90,
        other => other,
    }
}

/// A minimal little-endian EXIF (TIFF) block holding only Orientation.
fn exif_orientation(n: u16) -> Vec<u8> {
    let mut e = b"II*\0".to_vec();
    e.extend(8u32.to_le_bytes());
    e.extend(1u16.to_le_bytes());
    e.extend(0x0112u16.to_le_bytes());
    e.extend(3u16.to_le_bytes()); // SHORT
    e.extend(1u32.to_le_bytes());
    e.extend((n as u32).to_le_bytes());
    e.extend(0u32.to_le_bytes());
    e
}

fn png_with_exif(img: &RgbImage, n: u16) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, img.width(), img.height());
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().unwrap();
    w.write_chunk(png::chunk::eXIf, &exif_orientation(n))
        .unwrap();
    w.write_image_data(img.as_raw()).unwrap();
    w.finish().unwrap();
    out
}

fn tiff_with_orientation(img: &RgbImage, n: u16) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let mut enc = tiff::encoder::TiffEncoder::new(&mut out).unwrap();
    let mut im = enc
        .new_image::<tiff::encoder::colortype::RGB8>(img.width(), img.height())
        .unwrap();
    im.encoder()
        .write_tag(tiff::tags::Tag::Orientation, n)
        .unwrap();
    im.write_data(img.as_raw()).unwrap();
    out.into_inner()
}

fn riff_chunk(id: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut c = id.to_vec();
    c.extend((body.len() as u32).to_le_bytes());
    c.extend(body);
    if body.len() % 2 == 1 {
        c.push(0);
    }
    c
}

/// Extended-format WebP: VP8X with the EXIF flag, the image, an EXIF chunk.
fn webp_with_exif(img: &RgbImage, n: u16) -> Vec<u8> {
    webp_extended(img, Some(n), None)
}

/// Extended-format WebP with an optional EXIF orientation and ICC profile.
fn webp_extended(img: &RgbImage, orientation: Option<u16>, icc: Option<&[u8]>) -> Vec<u8> {
    let mut simple = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut simple)
        .encode(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    let image_chunk = &simple[12..]; // after RIFF size WEBP
    let flags = if orientation.is_some() { 0x08 } else { 0 } | if icc.is_some() { 0x20 } else { 0 };
    let mut vp8x = vec![flags, 0, 0, 0];
    vp8x.extend(&(img.width() - 1).to_le_bytes()[..3]);
    vp8x.extend(&(img.height() - 1).to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    body.extend(riff_chunk(b"VP8X", &vp8x));
    if let Some(icc) = icc {
        body.extend(riff_chunk(b"ICCP", icc));
    }
    body.extend(image_chunk);
    if let Some(n) = orientation {
        body.extend(riff_chunk(b"EXIF", &exif_orientation(n)));
    }
    riff_chunk(b"RIFF", &body)
}

#[test]
fn png_tiff_and_webp_all_eight_orientations_come_out_upright() {
    let upright = quadrants();
    let spec = within(32, 32);
    for n in 1..=8u16 {
        let o = Orientation::from_exif(n as u8).unwrap();
        let mut stored = DynamicImage::ImageRgb8(upright.clone());
        stored.apply_orientation(inverse(o));
        let stored = stored.into_rgb8();
        for (mime, bytes) in [
            ("image/png", png_with_exif(&stored, n)),
            ("image/tiff", tiff_with_orientation(&stored, n)),
            ("image/webp", webp_with_exif(&stored, n)),
        ] {
            let img = pixels(&render_bytes(&bytes, mime, &spec));
            assert_eq!(
                (img.width(), img.height()),
                (32, 20),
                "{mime} orientation {n}"
            );
            // Centre of each quadrant: red, green / blue, white.
            for (x, y, want) in [
                (8, 5, [220, 30, 30]),
                (24, 5, [30, 200, 30]),
                (8, 15, [30, 30, 220]),
                (24, 15, [240, 240, 240]),
            ] {
                let got = img.get_pixel(x, y);
                let off: i32 = (0..3).map(|c| (got[c] as i32 - want[c]).abs()).sum();
                assert!(
                    off < 90,
                    "{mime} orientation {n}: pixel ({x},{y}) is {got:?}, want {want:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- colour

/// Drops APP2 ICC_PROFILE segments from a JPEG.
fn strip_icc(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    let mut pos = 2;
    while jpeg[pos] == 0xFF && jpeg[pos + 1] != 0xDA {
        let len = u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]) as usize;
        let seg = &jpeg[pos..pos + 2 + len];
        if !(jpeg[pos + 1] == 0xE2 && seg[4..].starts_with(b"ICC_PROFILE")) {
            out.extend(seg);
        }
        pos += 2 + len;
    }
    out.extend(&jpeg[pos..]);
    out
}

#[test]
fn adobe_rgb_jpeg_is_converted_to_srgb() {
    let original = read("jpeg/rocket_adobergb_icc.jpg");
    let stripped = strip_icc(&original);
    assert!(
        stripped.len() < original.len(),
        "the sample has an ICC profile"
    );
    let spec = within(160, 160);
    let with_icc = pixels(&render_bytes(&original, "image/jpeg", &spec));
    let as_srgb = pixels(&render_bytes(&stripped, "image/jpeg", &spec));
    // Adobe RGB primaries are wider: the same numbers mean more saturated
    // colours, which in sRGB need larger channel differences.
    let (s1, s0) = (mean_saturation(&with_icc), mean_saturation(&as_srgb));
    assert!(
        s1 > s0 * 1.08,
        "saturation {s1:.1} with the profile, {s0:.1} without"
    );
}

/// The ICC profile of a JPEG (APP2 chunks in order).
fn icc_of(jpeg: &[u8]) -> Vec<u8> {
    let mut icc = Vec::new();
    let mut pos = 2;
    while jpeg[pos] == 0xFF && jpeg[pos + 1] != 0xDA {
        let len = u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]) as usize;
        let seg = &jpeg[pos + 4..pos + 2 + len];
        if jpeg[pos + 1] == 0xE2 && seg.starts_with(b"ICC_PROFILE\0") {
            icc.extend(&seg[14..]);
        }
        pos += 2 + len;
    }
    icc
}

#[test]
fn webp_icc_profile_is_converted_to_srgb() {
    let jpeg = read("jpeg/rocket_adobergb_icc.jpg");
    let icc = icc_of(&jpeg);
    assert!(icc.len() > 400);
    let stored = image::load_from_memory(&jpeg)
        .unwrap()
        .thumbnail(160, 160)
        .into_rgb8();
    let spec = within(120, 120);
    let tagged = pixels(&render_bytes(
        &webp_extended(&stored, None, Some(&icc)),
        "image/webp",
        &spec,
    ));
    let untagged = pixels(&render_bytes(
        &webp_extended(&stored, None, None),
        "image/webp",
        &spec,
    ));
    let (s1, s0) = (mean_saturation(&tagged), mean_saturation(&untagged));
    assert!(
        s1 > s0 * 1.08,
        "saturation {s1:.1} with the profile, {s0:.1} without"
    );
}

#[test]
fn cmyk_and_ycck_jpegs_look_like_the_rgb_original() {
    let spec = within(100, 100);
    let reference = pixels(&render_file("jpeg/baseline_420.jpg", "image/jpeg", &spec));
    for p in ["jpeg/cmyk_adobe_plain.jpg", "jpeg/cmyk_adobe_ycck.jpg"] {
        let img = pixels(&render_file(p, "image/jpeg", &spec));
        let d = diff(&reference, &img);
        assert!(d < 16.0, "{p}: differs from the RGB original by {d:.1}");
    }
}

#[test]
fn grayscale_and_16_bit_and_palette_images_render() {
    let spec = within(100, 100);
    let gray = pixels(&render_file("jpeg/grayscale.jpg", "image/jpeg", &spec));
    assert_eq!((gray.width(), gray.height()), (100, 100));
    assert!(
        gray.pixels()
            .all(|p| p[0].abs_diff(p[1]) < 6 && p[1].abs_diff(p[2]) < 6)
    );
    let gray16 = pixels(&render_file("png/gray16.png", "image/png", &spec));
    assert!(
        diff(&gray, &gray16) < 16.0,
        "16-bit gray PNG differs from the gray JPEG of the same photo"
    );
    // rgb16.png and progressive.jpg are both made from coffee.png.
    let coffee8 = pixels(&render_file("jpeg/progressive.jpg", "image/jpeg", &spec));
    let coffee16 = pixels(&render_file("png/rgb16.png", "image/png", &spec));
    assert!(diff(&coffee8, &coffee16) < 14.0);
    let chelsea = pixels(&render_file("jpeg/baseline_420.jpg", "image/jpeg", &spec));
    for (p, mime) in [
        ("png/palette8.png", "image/png"),
        ("png/interlaced_adam7.png", "image/png"),
        ("gif/static.gif", "image/gif"),
        ("tiff/rgb_lzw.tif", "image/tiff"),
        ("tiff/multipage_deflate.tif", "image/tiff"),
        ("webp/lossy.webp", "image/webp"),
        ("jpeg/arithmetic.jpg", "image/jpeg"),
    ] {
        let img = pixels(&render_file(p, mime, &spec));
        let d = diff(&chelsea, &img);
        assert!(d < 16.0, "{p}: differs from the same photo by {d:.1}");
    }
}

#[test]
fn transparency_is_kept_in_webp_and_flattened_on_white_in_jpeg() {
    // Avatar: a crop, so never "serve the original" even for tiny files.
    let mut spec = VariantSpec::named("avatar").unwrap();
    for (p, mime) in [
        ("png/rgba8.png", "image/png"),
        ("png/palette_trns.png", "image/png"),
        ("webp/lossy_alpha.webp", "image/webp"),
        ("bmp/rgba32_v5.bmp", "image/bmp"),
    ] {
        spec.format = OutputFormat::WebP;
        let webp = pixels(&render_file(p, mime, &spec));
        let clear: Vec<(u32, u32)> = webp
            .enumerate_pixels()
            .filter(|(_, _, px)| px[3] < 40)
            .map(|(x, y, _)| (x, y))
            .collect();
        assert!(clear.len() > 100, "{p}: WebP lost the transparency");
        spec.format = OutputFormat::Jpeg;
        let jpeg = render_file(p, mime, &spec);
        assert_eq!(jpeg.mime, "image/jpeg");
        let jpeg = pixels(&jpeg);
        let whiteish = clear
            .iter()
            .filter(|&&(x, y)| jpeg.get_pixel(x, y).0[..3].iter().all(|&c| c > 200))
            .count();
        assert!(
            whiteish * 10 > clear.len() * 9,
            "{p}: transparent parts are not white in JPEG"
        );
    }
}

#[test]
fn animations_give_their_first_frame_as_a_still() {
    use image::AnimationDecoder;
    let spec = within(100, 100);
    let gif = read("gif/animated.gif");
    let frames: Vec<_> = image::codecs::gif::GifDecoder::new(Cursor::new(&gif))
        .unwrap()
        .into_frames()
        .take(2)
        .map(|f| f.unwrap().into_buffer())
        .collect();
    let out = render_bytes(&gif, "image/gif", &spec);
    let img = pixels(&out);
    let (d0, d1) = (diff(&img, &frames[0]), diff(&img, &frames[1]));
    assert!(
        d0 < 8.0 && d0 < d1,
        "GIF: {d0:.1} from frame 1, {d1:.1} from frame 2"
    );
    for (p, mime) in [
        ("gif/animated.gif", "image/gif"),
        ("gif/animated_transparent.gif", "image/gif"),
        ("webp/animated.webp", "image/webp"),
        ("png/apng_animated.png", "image/png"),
    ] {
        let r = render_file(p, mime, &spec);
        assert!(
            !contains(&r.bytes, b"ANIM") && !contains(&r.bytes, b"ANMF"),
            "{p}: output is animated"
        );
        pixels(&r);
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------- metadata

/// The chunk ids of a WebP file.
fn webp_chunks(b: &[u8]) -> Vec<String> {
    assert_eq!(&b[..4], b"RIFF");
    assert_eq!(&b[8..12], b"WEBP");
    let mut ids = Vec::new();
    let mut pos = 12;
    while pos + 8 <= b.len() {
        ids.push(String::from_utf8_lossy(&b[pos..pos + 4]).into_owned());
        let len = u32::from_le_bytes(b[pos + 4..pos + 8].try_into().unwrap()) as usize;
        pos += 8 + len + len % 2;
    }
    ids
}

/// The marker bytes of a JPEG up to the first scan.
fn jpeg_markers(b: &[u8]) -> Vec<u8> {
    let mut markers = Vec::new();
    let mut pos = 2;
    while b[pos] == 0xFF && b[pos + 1] != 0xDA {
        markers.push(b[pos + 1]);
        pos += 2 + u16::from_be_bytes([b[pos + 2], b[pos + 3]]) as usize;
    }
    markers
}

#[test]
fn renditions_carry_no_metadata() {
    for (p, mime) in [
        ("jpeg/metadata_gps_exif_xmp_iptc.jpg", "image/jpeg"),
        ("png/metadata_text_chunks.png", "image/png"),
        ("exif-orientation/small/Landscape_6.jpg", "image/jpeg"),
        ("jpeg/rocket_adobergb_icc.jpg", "image/jpeg"),
    ] {
        let mut spec = within(100, 100);
        let webp = render_file(p, mime, &spec);
        let chunks = webp_chunks(&webp.bytes);
        // Lossy (VP8), nothing but the picture.
        assert!(
            chunks == ["VP8 "] || chunks == ["VP8X", "ALPH", "VP8 "],
            "{p}: WebP chunks {chunks:?}"
        );
        spec.format = OutputFormat::Jpeg;
        let jpeg = render_file(p, mime, &spec);
        let markers = jpeg_markers(&jpeg.bytes);
        assert!(
            markers.iter().all(|m| !matches!(m, 0xE1..=0xEF | 0xFE)),
            "{p}: JPEG has metadata markers {markers:x?}"
        );
        for out in [&webp.bytes, &jpeg.bytes] {
            for secret in [
                &b"Exif"[..],
                b"Private",
                b"SN-0123456789",
                b"Example Street",
                b"ICC_PROFILE",
                b"http://ns.adobe.com",
            ] {
                assert!(
                    !contains(out, secret),
                    "{p}: output contains {:?}",
                    String::from_utf8_lossy(secret)
                );
            }
        }
    }
}

// ---------------------------------------------------------------- sizes

#[test]
fn default_variants_have_the_contract_sizes_and_never_upscale() {
    let names: Vec<_> = VariantSpec::defaults().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["thumb", "preview", "avatar"]);
    let big = "exif-orientation/small/Landscape_6.jpg"; // upright 450×300
    let t = render_file(big, "image/jpeg", &thumb());
    assert_eq!((t.width, t.height, t.mime), (320, 213, "image/webp"));
    let a = render_file(big, "image/jpeg", &VariantSpec::named("avatar").unwrap());
    assert_eq!((a.width, a.height), (96, 96));
    // Preview of a 450×300 picture: not enlarged to 1280.
    let p = render_file(big, "image/jpeg", &VariantSpec::named("preview").unwrap());
    assert_eq!((p.width, p.height), (450, 300));
    // Avatar of a picture smaller than 96 px: the largest centred square.
    let small =
        image::imageops::resize(&quadrants(), 60, 40, image::imageops::FilterType::Triangle);
    let mut png = Vec::new();
    DynamicImage::ImageRgb8(small)
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let a = render_bytes(&png, "image/png", &VariantSpec::named("avatar").unwrap());
    assert_eq!((a.width, a.height), (40, 40));
}

#[test]
fn a_small_original_is_served_as_is() {
    // 1.4 KB bilevel PNG: no rendition can be smaller.
    let r = render(
        Input::Path(&data("png/gray1.png")),
        "image/png",
        &thumb(),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(r, Rendered::UseOriginal);
    // A TIFF is never served in place of a rendition.
    let r = render_file("tiff/rgb_lzw.tif", "image/tiff", &thumb());
    assert_eq!((r.width, r.height), (226, 150));
}

#[test]
fn jpeg_shrink_on_load_keeps_the_picture() {
    // A 12-megapixel photo (generated from a real one): the 320-px thumb is
    // decoded at 1/8 scale and must still look like the photo.
    let photo = image::load_from_memory(&read("exif-orientation/Landscape_1.jpg")).unwrap();
    let big = photo.resize_exact(4000, 3000, image::imageops::FilterType::Triangle);
    let mut jpeg = Vec::new();
    big.write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let t = render_bytes(&jpeg, "image/jpeg", &thumb());
    assert_eq!((t.width, t.height), (320, 240));
    let reference = image::imageops::resize(
        &photo.into_rgba8(),
        320,
        240,
        image::imageops::FilterType::Lanczos3,
    );
    assert!(diff(&reference, &pixels(&t)) < 8.0);
}

// ---------------------------------------------------------------- other formats

#[cfg(feature = "heif")]
#[test]
fn heic_and_avif_decode_through_libheif() {
    let spec = within(100, 100);
    let chelsea = pixels(&render_file("jpeg/baseline_420.jpg", "image/jpeg", &spec));
    for (p, mime, size) in [
        ("heic/image.heic", "image/heic", (100, 67)),
        ("avif/yuv420_8bit.avif", "image/avif", (100, 67)),
        ("avif/yuv444_10bit.avif", "image/avif", (100, 66)),
        ("avif/alpha.avif", "image/avif", (100, 66)),
    ] {
        let img = pixels(&render_file(p, mime, &spec));
        assert_eq!((img.width(), img.height()), size, "{p}");
        if p != "avif/alpha.avif" {
            let d = diff(&chelsea, &img);
            assert!(d < 16.0, "{p}: differs from the same photo by {d:.1}");
        } else {
            assert!(img.get_pixel(0, 0)[3] < 40, "{p}: alpha lost");
        }
    }
}

#[test]
fn video_poster_frames_are_upright() {
    for (p, mime, size) in [
        ("video/h264_aac_faststart.mp4", "video/mp4", (320, 240)),
        ("video/h264_rotate90.mp4", "video/mp4", (240, 320)),
        ("video/vp9_opus.webm", "video/webm", (320, 240)),
    ] {
        let r = render_file(p, mime, &thumb());
        assert_eq!((r.width, r.height), size, "{p}");
        let img = pixels(&r);
        // testsrc2 is colourful, never a blank frame.
        assert!(mean_saturation(&img) > 40.0, "{p}: frame looks blank");
        let a = render_file(p, mime, &VariantSpec::named("avatar").unwrap());
        assert_eq!((a.width, a.height), (96, 96), "{p} avatar");
    }
}

#[test]
fn pdf_first_page_is_rendered() {
    let r = render_file("document/sample.pdf", "application/pdf", &thumb());
    assert_eq!(r.height, 320);
    assert!(r.width < r.height, "portrait page");
    let img = pixels(&r);
    let white = img
        .pixels()
        .filter(|p| p[0] > 240 && p[1] > 240 && p[2] > 240)
        .count();
    assert!(
        white * 2 > (r.width * r.height) as usize,
        "a mostly white page"
    );
    assert!(
        white < (r.width * r.height) as usize,
        "with something on it"
    );
}

#[test]
fn types_without_a_preview_say_so() {
    let limits = Limits::default();
    let audio = render(
        Input::Path(&data("audio/tone_aac.m4a")),
        "audio/mp4",
        &thumb(),
        &limits,
    );
    assert_eq!(err_of(audio).code(), "variant_not_available");
    for mime in [
        "application/zip",
        "image/svg+xml",
        "text/plain; charset=utf-8",
    ] {
        let e = err_of(render(Input::Bytes(b"PK\x03\x04"), mime, &thumb(), &limits));
        assert_eq!(
            (e.code(), e.kind()),
            ("unsupported_type", ErrorKind::Unsupported),
            "{mime}"
        );
    }
    let e = err_of(render(
        Input::Bytes(&read("video/h264_aac_faststart.mp4")),
        "video/mp4",
        &thumb(),
        &limits,
    ));
    assert_eq!(e.code(), "needs_path");
    // An MP4 with only sound, sent as video/mp4: nothing to show.
    let e = err_of(render(
        Input::Path(&data("audio/tone_aac.m4a")),
        "video/mp4",
        &thumb(),
        &limits,
    ));
    assert_eq!(e.code(), "variant_not_available");
}

#[cfg(not(feature = "heif"))]
#[test]
fn heif_without_the_feature_is_not_available() {
    let e = err_of(render(
        Input::Path(&data("heic/image.heic")),
        "image/heic",
        &thumb(),
        &Limits::default(),
    ));
    assert_eq!(e.code(), "variant_not_available");
}

#[test]
fn a_missing_tool_makes_the_variant_unavailable() {
    let limits = Limits {
        tools: Tools {
            ffmpeg: "/nonexistent/ffmpeg".into(),
            ffprobe: "/nonexistent/ffprobe".into(),
            pdftoppm: "/nonexistent/pdftoppm".into(),
        },
        ..Limits::default()
    };
    for (p, mime) in [
        ("video/h264_aac_faststart.mp4", "video/mp4"),
        ("document/sample.pdf", "application/pdf"),
    ] {
        let e = err_of(render(Input::Path(&data(p)), mime, &thumb(), &limits));
        assert_eq!(
            (e.code(), e.kind()),
            ("variant_not_available", ErrorKind::NotAvailable),
            "{p}"
        );
    }
    // probe still answers, without duration.
    let info = probe(
        Input::Path(&data("audio/tone_aac.m4a")),
        "audio/mp4",
        &limits,
    )
    .unwrap();
    assert_eq!(info.duration_ms, None);
}

#[test]
fn a_hanging_tool_is_killed_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let tool = dir.path().join("slow-ffmpeg");
    std::fs::write(&tool, "#!/bin/sh\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let limits = Limits {
        timeout: Duration::from_millis(300),
        tools: Tools {
            ffmpeg: tool,
            ..Tools::default()
        },
        ..Limits::default()
    };
    let start = Instant::now();
    let e = err_of(render(
        Input::Path(&data("video/vp9_opus.webm")),
        "video/webm",
        &thumb(),
        &limits,
    ));
    assert_eq!((e.code(), e.kind()), ("timed_out", ErrorKind::Timeout));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_tool_writing_too_much_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let tool = dir.path().join("chatty-pdftoppm");
    std::fs::write(&tool, "#!/bin/sh\nexec head -c 100000000 /dev/zero\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let limits = Limits {
        tools: Tools {
            pdftoppm: tool,
            ..Tools::default()
        },
        ..Limits::default()
    };
    let e = err_of(render(
        Input::Path(&data("document/sample.pdf")),
        "application/pdf",
        &thumb(),
        &limits,
    ));
    assert_eq!(e.code(), "tool_failed");
    assert!(e.to_string().contains("more than"), "{e}");
}

#[test]
fn a_playlist_posing_as_a_video_cannot_make_ffmpeg_read_other_files() {
    // An HLS playlist pointing at another local video: without a demuxer
    // whitelist ffmpeg would happily render that file's frame.
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("evil.mp4");
    let target = data("video/h264_aac_faststart.mp4");
    std::fs::write(
        &evil,
        format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{}\n#EXT-X-ENDLIST\n",
            target.display()
        ),
    )
    .unwrap();
    let e = err_of(render(
        Input::Path(&evil),
        "video/mp4",
        &thumb(),
        &Limits::default(),
    ));
    assert_eq!(
        (e.code(), e.kind()),
        ("tool_failed", ErrorKind::InvalidInput)
    );
    let concat = dir.path().join("concat.mp4");
    std::fs::write(
        &concat,
        format!("ffconcat version 1.0\nfile '{}'\n", target.display()),
    )
    .unwrap();
    let e = err_of(render(
        Input::Path(&concat),
        "video/mp4",
        &thumb(),
        &Limits::default(),
    ));
    assert_eq!(e.code(), "tool_failed");
    let info = probe(Input::Path(&evil), "video/mp4", &Limits::default());
    assert!(info.is_err_and(|e| e.is_client_error()));
}

#[test]
fn a_broken_video_is_a_client_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.mp4");
    let mut bytes = read("video/h264_aac_faststart.mp4");
    bytes.truncate(600);
    std::fs::write(&p, bytes).unwrap();
    let e = err_of(render(
        Input::Path(&p),
        "video/mp4",
        &thumb(),
        &Limits::default(),
    ));
    assert!(e.is_client_error(), "{e:?}");
}

// ---------------------------------------------------------------- probe

#[test]
fn probe_reports_upright_size_duration_and_thumbhash() {
    let limits = Limits::default();
    let info = probe(
        Input::Path(&data("exif-orientation/small/Landscape_6.jpg")),
        "image/jpeg",
        &limits,
    )
    .unwrap();
    assert_eq!(
        (info.width, info.height, info.duration_ms),
        (Some(450), Some(300), None)
    );
    let hash = info.thumbhash.unwrap();
    // The hash's average colour is that of the photo.
    let (r, g, b, _) = thumbhash::thumb_hash_to_average_rgba(&hash).unwrap();
    let photo = pixels(&render_file(
        "exif-orientation/small/Landscape_6.jpg",
        "image/jpeg",
        &within(50, 50),
    ));
    let n = (photo.width() * photo.height()) as f32;
    let mean = |c: usize| photo.pixels().map(|p| p[c] as f32).sum::<f32>() / n / 255.0;
    for (got, want) in [(r, mean(0)), (g, mean(1)), (b, mean(2))] {
        assert!((got - want).abs() < 0.08, "average colour {got} vs {want}");
    }
    let png = probe(
        Input::Bytes(&read("png/exif_orientation_6.png")),
        "image/png",
        &limits,
    )
    .unwrap();
    assert_eq!((png.width, png.height), (Some(240), Some(160)));
    if cfg!(feature = "heif") {
        let heic = probe(Input::Path(&data("heic/image.heic")), "image/heic", &limits).unwrap();
        assert_eq!((heic.width, heic.height), (Some(451), Some(300)));
    }

    let video = probe(
        Input::Path(&data("video/h264_rotate90.mp4")),
        "video/mp4",
        &limits,
    )
    .unwrap();
    assert_eq!(
        (video.width, video.height, video.duration_ms),
        (Some(240), Some(320), Some(2000))
    );
    assert_eq!(video.thumbhash, None);
    let audio = probe(
        Input::Path(&data("audio/tone_aac.m4a")),
        "audio/mp4",
        &limits,
    )
    .unwrap();
    assert_eq!(
        (
            audio.width,
            audio.duration_ms.map(|d| d.abs_diff(2000) < 50)
        ),
        (None, Some(true))
    );
    let pdf = probe(
        Input::Path(&data("document/sample.pdf")),
        "application/pdf",
        &limits,
    )
    .unwrap();
    assert_eq!(pdf, media_preview::MediaInfo::default());
}

// ---------------------------------------------------------------- hostile input

fn png_chunk(out: &mut Vec<u8>, id: &[u8; 4], body: &[u8]) {
    out.extend((body.len() as u32).to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(id);
    crc.update(body);
    out.extend(id);
    out.extend(body);
    out.extend(crc.finalize().to_be_bytes());
}

/// ~100 KB PNG declaring 65535×65535 RGBA (17 GB decoded).
fn png_bomb() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(65535u32.to_be_bytes());
    ihdr.extend(65535u32.to_be_bytes());
    ihdr.extend([8, 6, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    // zlib header, then stored deflate blocks of zeros (not final).
    let mut z = vec![0x78, 0x01];
    for _ in 0..3 {
        z.push(0);
        z.extend(32768u16.to_le_bytes());
        z.extend((!32768u16).to_le_bytes());
        z.extend(std::iter::repeat_n(0u8, 32768));
    }
    png_chunk(&mut out, b"IDAT", &z);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn decompression_bombs_are_refused_from_the_header() {
    let limits = Limits::default();
    let bomb = png_bomb();
    assert!(bomb.len() > 90_000 && bomb.len() < 110_000);
    let start = Instant::now();
    let e = err_of(render(Input::Bytes(&bomb), "image/png", &thumb(), &limits));
    assert_eq!(
        (e.code(), e.kind()),
        ("too_many_pixels", ErrorKind::TooLarge)
    );
    let e = probe(Input::Bytes(&bomb), "image/png", &limits).unwrap_err();
    assert_eq!(e.code(), "too_many_pixels");

    // JPEG: a real file whose SOF says 65500×65500.
    let mut jpeg = read("jpeg/baseline_420.jpg");
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xDC, 0xFF, 0xDC]);
    let e = err_of(render(Input::Bytes(&jpeg), "image/jpeg", &thumb(), &limits));
    assert_eq!(e.code(), "too_many_pixels");

    // GIF: logical screen and frame 65535×65535.
    let mut gif = read("gif/static.gif");
    gif[6..10].copy_from_slice(&[0xFF; 4]);
    let e = err_of(render(Input::Bytes(&gif), "image/gif", &thumb(), &limits));
    assert!(
        e.kind() == ErrorKind::TooLarge || e.code() == "corrupt_image",
        "{e:?}"
    );

    // WebP: VP8X canvas 16384×16384.
    let mut webp = webp_with_exif(&quadrants(), 1);
    webp[24..30].copy_from_slice(&[0xFF, 0x3F, 0, 0xFF, 0x3F, 0]);
    let e = err_of(render(Input::Bytes(&webp), "image/webp", &thumb(), &limits));
    assert!(e.is_client_error(), "{e:?}");

    // A smaller pixel budget applies to everything, HEIC included.
    let tight = Limits {
        max_pixels: 10_000,
        ..Limits::default()
    };
    for (p, mime) in [
        ("heic/image.heic", "image/heic"),
        ("avif/yuv420_8bit.avif", "image/avif"),
        ("tiff/rgb_lzw.tif", "image/tiff"),
        ("bmp/rgba32_v5.bmp", "image/bmp"),
        ("webp/lossy.webp", "image/webp"),
    ] {
        if (mime == "image/heic" || mime == "image/avif") && !cfg!(feature = "heif") {
            continue;
        }
        let e = err_of(render(Input::Path(&data(p)), mime, &thumb(), &tight));
        assert_eq!(e.code(), "too_many_pixels", "{p}");
    }
    let small_alloc = Limits {
        max_alloc_bytes: 100_000,
        ..Limits::default()
    };
    let e = err_of(render(
        Input::Path(&data("png/rgba8.png")),
        "image/png",
        &thumb(),
        &small_alloc,
    ));
    assert_eq!(
        (e.code(), e.kind()),
        ("image_too_large", ErrorKind::TooLarge)
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn inputs_over_the_size_limit_are_refused_unread() {
    let limits = Limits {
        max_input_bytes: 1000,
        ..Limits::default()
    };
    let e = err_of(render(
        Input::Path(&data("jpeg/baseline_420.jpg")),
        "image/jpeg",
        &thumb(),
        &limits,
    ));
    assert_eq!(
        (e.code(), e.kind()),
        ("input_too_large", ErrorKind::TooLarge)
    );
}

#[test]
fn pathological_animations_are_refused() {
    // APNG whose acTL declares a million frames.
    let mut apng = read("png/apng_animated.png");
    let actl = apng.windows(4).position(|w| w == b"acTL").unwrap();
    apng[actl + 4..actl + 8].copy_from_slice(&1_000_000u32.to_be_bytes());
    let crc = crc32fast::hash(&apng[actl..actl + 12]);
    apng[actl + 12..actl + 16].copy_from_slice(&crc.to_be_bytes());
    let e = err_of(render(
        Input::Bytes(&apng),
        "image/png",
        &thumb(),
        &Limits::default(),
    ));
    assert_eq!(
        (e.code(), e.kind()),
        ("too_many_frames", ErrorKind::TooLarge)
    );
    let few = Limits {
        max_frames: 5,
        ..Limits::default()
    };
    let e = err_of(render(
        Input::Path(&data("webp/animated.webp")),
        "image/webp",
        &thumb(),
        &few,
    ));
    assert_eq!(e.code(), "too_many_frames");
}

#[test]
fn mismatched_types_are_client_errors() {
    let limits = Limits::default();
    let png = read("png/palette8.png");
    let jpeg = read("jpeg/baseline_420.jpg");
    for (bytes, mime) in [
        (&png[..], "image/jpeg"),
        (&jpeg[..], "image/png"),
        (
            &jpeg[..],
            if cfg!(feature = "heif") {
                "image/heic"
            } else {
                "image/gif"
            },
        ),
        (&b"hello, world"[..], "image/gif"),
        (&png[..], "image/webp"),
    ] {
        let e = err_of(render(Input::Bytes(bytes), mime, &thumb(), &limits));
        assert_eq!(
            (e.code(), e.kind()),
            ("type_mismatch", ErrorKind::InvalidInput),
            "{mime}"
        );
        assert!(e.is_client_error());
    }
}

/// Images of every decoder; HEIF ones only with the `heif` feature.
fn images() -> impl Iterator<Item = (&'static str, &'static str)> {
    IMAGES.into_iter().filter(|(_, mime)| {
        cfg!(feature = "heif") || !(mime.starts_with("image/hei") || *mime == "image/avif")
    })
}

const IMAGES: [(&str, &str); 14] = [
    ("jpeg/baseline_420.jpg", "image/jpeg"),
    ("jpeg/progressive.jpg", "image/jpeg"),
    ("jpeg/cmyk_adobe_ycck.jpg", "image/jpeg"),
    ("png/rgba8.png", "image/png"),
    ("png/interlaced_adam7.png", "image/png"),
    ("png/apng_animated.png", "image/png"),
    ("gif/animated.gif", "image/gif"),
    ("webp/lossy.webp", "image/webp"),
    ("webp/lossy_alpha.webp", "image/webp"),
    ("webp/animated.webp", "image/webp"),
    ("tiff/rgb_lzw.tif", "image/tiff"),
    ("bmp/rgba32_v5.bmp", "image/bmp"),
    ("heic/image.heic", "image/heic"),
    ("avif/alpha.avif", "image/avif"),
];

#[test]
fn truncated_files_are_typed_errors() {
    let limits = Limits::default();
    for (p, mime) in images() {
        let full = read(p);
        for cut in [full.len() / 2, full.len() * 9 / 10] {
            let r = render(Input::Bytes(&full[..cut]), mime, &thumb(), &limits);
            let r2 = probe(Input::Bytes(&full[..cut]), mime, &limits);
            // Animated files cut after the first frame still have a picture.
            let first_frame_whole = p.contains("animated") && cut > full.len() / 3;
            if !first_frame_whole {
                let e = err_of(r);
                assert!(e.is_client_error(), "{p} cut at {cut}: {e:?}");
                assert!(r2.is_err(), "{p} cut at {cut}: probe succeeded");
            }
        }
    }
}

/// xorshift: reproducible corruption without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn corrupt_files_never_panic_and_give_client_errors() {
    let limits = Limits {
        max_pixels: 20_000_000,
        ..Limits::default()
    };
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for (p, mime) in images() {
        let original = read(p);
        for round in 0..12 {
            let mut bytes = original.clone();
            // Flip a few bytes, mostly in the headers where it hurts most.
            for _ in 0..(1 + round % 4) {
                let span = if round % 2 == 0 {
                    bytes.len().min(512)
                } else {
                    bytes.len()
                };
                let i = (rng.next() % span as u64) as usize;
                bytes[i] ^= (rng.next() % 255 + 1) as u8;
            }
            let outcome = std::panic::catch_unwind(|| {
                (
                    render(Input::Bytes(&bytes), mime, &thumb(), &limits),
                    probe(Input::Bytes(&bytes), mime, &limits),
                )
            });
            let (r, pr) = outcome.unwrap_or_else(|_| panic!("{p} round {round}: panic escaped"));
            for e in [r.err(), pr.err()].into_iter().flatten() {
                assert!(
                    e.is_client_error(),
                    "{p} round {round}: {e:?} is not a client error"
                );
            }
        }
    }
}
