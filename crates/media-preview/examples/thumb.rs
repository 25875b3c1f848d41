//! Renders one variant of each given file, like `vipsthumbnail`; used by
//! `benches/preview.sh`.
//!
//! ```text
//! thumb [--variant thumb|preview|avatar] [--jpeg] --out-dir DIR FILE...
//! ```
//!
//! The type is taken from the file name's extension. Exits 1 if any file
//! failed (each failure is printed with its error code).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use media_preview::{Input, Limits, OutputFormat, Rendered, VariantSpec, render};

fn mime_of(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "tif" | "tiff" => "image/tiff",
        "bmp" => "image/bmp",
        "heic" | "heif" => "image/heic",
        "avif" => "image/avif",
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut variant = "thumb".to_string();
    let mut jpeg = false;
    let mut out_dir: Option<PathBuf> = None;
    let mut files = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--variant" => variant = args.next().unwrap_or_default(),
            "--jpeg" => jpeg = true,
            "--out-dir" => out_dir = args.next().map(PathBuf::from),
            _ => files.push(PathBuf::from(a)),
        }
    }
    let (Some(out_dir), Some(mut spec)) = (out_dir, VariantSpec::named(&variant)) else {
        eprintln!("usage: thumb [--variant thumb|preview|avatar] [--jpeg] --out-dir DIR FILE...");
        return ExitCode::from(2);
    };
    if jpeg {
        spec.format = OutputFormat::Jpeg;
    }
    let ext = if jpeg { "jpg" } else { "webp" };
    let limits = Limits::default();
    let mut failed = false;
    for file in &files {
        let stem = file.file_stem().unwrap_or_default().to_string_lossy();
        let out = out_dir.join(format!("{stem}.{ext}"));
        match render(Input::Path(file), mime_of(file), &spec, &limits) {
            Ok(Rendered::Rendition(r)) => {
                if let Err(e) = std::fs::write(&out, &r.bytes) {
                    eprintln!("{}: {e}", out.display());
                    failed = true;
                }
            }
            Ok(Rendered::UseOriginal) => {
                if let Err(e) =
                    std::fs::copy(file, out_dir.join(file.file_name().unwrap_or_default()))
                {
                    eprintln!("{}: {e}", file.display());
                    failed = true;
                }
            }
            Err(e) => {
                eprintln!("{}: {} ({e})", file.display(), e.code());
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
