//! ffmpeg, ffprobe and pdftoppm: run directly (no shell), with a deadline
//! after which the process is killed, and with their output capped.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use wait_timeout::ChildExt;

use crate::raster::Target;
use crate::{Limits, MediaInfo, PreviewError};

/// Output a tool may write before it is taken as misbehaving: a PNG of a
/// frame no larger than the preview box is far below this.
const MAX_TOOL_OUTPUT: u64 = 64 << 20;
/// How much of stderr is kept for the error message.
const MAX_STDERR: u64 = 8 << 10;

fn tool_name(program: &Path) -> String {
    program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// Runs `program` with `args` and returns its stdout.
fn run(program: &Path, args: &[OsString], limits: &Limits) -> Result<Vec<u8>, PreviewError> {
    let tool = tool_name(program);
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PreviewError::VariantNotAvailable(format!(
                "{tool} is not installed"
            )));
        }
        Err(e) => return Err(PreviewError::Io(e)),
    };
    // Drain both pipes on their own threads so a chatty tool cannot block on
    // a full pipe while we wait for it; keep only the first bytes of each.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let res = (&mut stdout)
            .take(MAX_TOOL_OUTPUT + 1)
            .read_to_end(&mut buf);
        // Past the cap, keep draining so the tool can finish.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        res.map(|_| buf)
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(MAX_STDERR).read_to_end(&mut buf);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        buf
    });
    let status = match child.wait_timeout(limits.timeout)? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = out_reader.join();
            let _ = err_reader.join();
            return Err(PreviewError::TimedOut {
                tool,
                timeout: limits.timeout,
            });
        }
    };
    let out = out_reader
        .join()
        .map_err(|_| std::io::Error::other("stdout reader panicked"))??;
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        let message = String::from_utf8_lossy(&err).trim().to_string();
        return Err(PreviewError::ToolFailed {
            tool,
            message: if message.is_empty() {
                status.to_string()
            } else {
                message
            },
        });
    }
    if out.len() as u64 > MAX_TOOL_OUTPUT {
        return Err(PreviewError::ToolFailed {
            tool,
            message: format!("wrote more than {MAX_TOOL_OUTPUT} bytes"),
        });
    }
    if out.is_empty() {
        return Err(PreviewError::ToolFailed {
            tool,
            message: "produced no picture".into(),
        });
    }
    Ok(out)
}

fn os_args(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Demuxers ffmpeg and ffprobe may use: the containers chat clients send.
/// Without this list, a "video" that is really an HLS playlist or an ffconcat
/// script makes ffmpeg read other local files or fetch URLs into the poster.
const FORMAT_WHITELIST: &str =
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpeg,mpegts,flv,asf,ogg,mp3,flac,wav,aac,aiff,amr";

/// Input options shared by ffmpeg and ffprobe: only plain files, only the
/// listed demuxers, one decoding thread.
fn ffmpeg_input_args(path: &Path) -> Vec<OsString> {
    let mut args = os_args(&[
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        FORMAT_WHITELIST,
        "-threads",
        "1",
        "-i",
    ]);
    args.push(ffmpeg_input(path));
    args
}

/// `file:` keeps ffmpeg from reading a name as a protocol (`concat:`,
/// `http:`...) or an option.
fn ffmpeg_input(path: &Path) -> OsString {
    let mut s = OsString::from("file:");
    s.push(path.as_os_str());
    s
}

/// A relative name starting with `-` would be read as an option.
fn safe_path(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new(".").join(path)
    }
}

/// The first video frame as PNG, upright (ffmpeg applies the rotation
/// matrix), scaled down inside ffmpeg to what `target` needs.
pub(crate) fn video_frame(
    path: &Path,
    target: Target,
    limits: &Limits,
) -> Result<Vec<u8>, PreviewError> {
    let (w, h, mode) = match target {
        Target::Within { w, h } => (w, h, "decrease"),
        Target::Cover { w, h } => (w, h, "increase"),
    };
    // min() keeps ffmpeg from upscaling a small video.
    let filter =
        format!("scale=w='min(iw,{w})':h='min(ih,{h})':force_original_aspect_ratio={mode}");
    let mut args = os_args(&["-nostdin", "-hide_banner", "-loglevel", "error"]);
    args.extend(ffmpeg_input_args(path));
    args.extend(os_args(&[
        "-map",
        "0:v:0",
        "-frames:v",
        "1",
        "-vf",
        &filter,
        "-f",
        "image2pipe",
        "-c:v",
        "png",
        "-",
    ]));
    match run(&limits.tools.ffmpeg, &args, limits) {
        // A "video" with no picture at all (audio in an MP4) has no poster.
        Err(PreviewError::ToolFailed { message, .. }) if message.contains("matches no streams") => {
            Err(PreviewError::VariantNotAvailable(
                "the file has no video stream".into(),
            ))
        }
        other => other,
    }
}

/// The first page as PNG, its longer side `bound` pixels.
pub(crate) fn pdf_page(
    path: &Path,
    target: Target,
    limits: &Limits,
) -> Result<Vec<u8>, PreviewError> {
    let bound = match target {
        Target::Within { w, h } => w.max(h),
        // A cover crop needs the shorter side large enough; pages are rarely
        // longer than twice their width.
        Target::Cover { w, h } => 2 * w.max(h),
    }
    .to_string();
    let mut args = os_args(&[
        "-f",
        "1",
        "-l",
        "1",
        "-singlefile",
        "-png",
        "-scale-to",
        &bound,
    ]);
    args.push(safe_path(path).into_os_string());
    run(&limits.tools.pdftoppm, &args, limits)
}

/// Duration of the container and upright size of the first video stream.
pub(crate) fn ffprobe(path: &Path, limits: &Limits) -> Result<MediaInfo, PreviewError> {
    let mut args = os_args(&[
        "-v",
        "error",
        "-show_entries",
        "format=duration:stream=codec_type,width,height:stream_side_data=rotation",
        "-of",
        "default=noprint_wrappers=1",
    ]);
    args.extend(ffmpeg_input_args(path));
    let out = run(&limits.tools.ffprobe, &args, limits)?;
    Ok(parse_ffprobe(&String::from_utf8_lossy(&out)))
}

/// Parses `key=value` lines; streams come before the format section.
fn parse_ffprobe(text: &str) -> MediaInfo {
    let mut info = MediaInfo::default();
    let mut in_video = false;
    let mut video_done = false;
    let mut rotation = 0i64;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "codec_type" => {
                if in_video {
                    video_done = true;
                }
                in_video = value == "video" && !video_done;
            }
            "width" if in_video => info.width = value.parse().ok(),
            "height" if in_video => info.height = value.parse().ok(),
            "rotation" if in_video => {
                rotation = value.parse::<f64>().map(|r| r as i64).unwrap_or(0)
            }
            "duration" => {
                info.duration_ms = value
                    .parse::<f64>()
                    .ok()
                    .filter(|d| d.is_finite() && *d >= 0.0)
                    .map(|d| (d * 1000.0).round() as u64);
            }
            _ => {}
        }
    }
    if rotation.rem_euclid(180) == 90 {
        std::mem::swap(&mut info.width, &mut info.height);
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffprobe_output_rotation_swaps_and_later_streams_are_ignored() {
        let text = "codec_type=video\nwidth=320\nheight=240\nrotation=-90\ncodec_type=video\nwidth=64\nheight=64\ncodec_type=audio\nduration=2.037551\n";
        let info = parse_ffprobe(text);
        assert_eq!((info.width, info.height), (Some(240), Some(320)));
        assert_eq!(info.duration_ms, Some(2038));
    }

    #[test]
    fn ffprobe_output_without_video_has_no_size() {
        let info = parse_ffprobe("codec_type=audio\nduration=N/A\n");
        assert_eq!(info, MediaInfo::default());
    }
}
