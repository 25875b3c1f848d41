//! Peak heap use of one 12-megapixel JPEG thumbnail, measured with a counting
//! global allocator (its own test binary, so no other test's allocations are
//! counted). libjpeg-turbo's own buffers are C allocations and not counted
//! here; `benches/preview.sh` reports the whole process's peak RSS.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};

use media_preview::{Input, Limits, Rendered, VariantSpec, render};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_12_megapixel_jpeg_thumb_stays_under_32_mib() {
    let photo = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/exif-orientation/Landscape_1.jpg"),
    )
    .unwrap();
    let big = image::load_from_memory(&photo).unwrap().resize_exact(
        4000,
        3000,
        image::imageops::FilterType::Triangle,
    );
    let mut jpeg = Vec::new();
    big.write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    drop(big);

    for (name, spec) in VariantSpec::defaults() {
        let before = CURRENT.load(Ordering::SeqCst);
        PEAK.store(before, Ordering::SeqCst);
        let r = render(Input::Bytes(&jpeg), "image/jpeg", &spec, &Limits::default()).unwrap();
        assert!(matches!(r, Rendered::Rendition(_)));
        let used = PEAK.load(Ordering::SeqCst) - before;
        eprintln!(
            "{name}: heap peak {:.1} MiB",
            used as f64 / (1 << 20) as f64
        );
        // The input itself (held by the caller) is not counted.
        assert!(used < 32 << 20, "{name}: peak {used} bytes");
        if name == "thumb" {
            // Shrink-on-load: a full-size RGB decode alone would be 36 MB.
            assert!(used < 8 << 20, "thumb: peak {used} bytes");
        }
    }
}
