//! Output helpers for the `gc` and `fsck` commands: a progress bar on a
//! terminal only, and the walk over `blobs/` both commands share.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on stderr when it is a terminal; hidden otherwise (logs,
/// systemd journal, `--json` pipelines stay clean).
pub fn progress(len: u64, what: &str, enabled: bool) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} ({eta})")
            .expect("is a bug: literal progress template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// One entry found under `blobs/`.
pub enum BlobEntry {
    /// A file named by a valid hash, at the path the layout gives that hash.
    Blob(blake3::Hash, PathBuf),
    /// Anything else (a stray name, or a hash file in the wrong shard).
    Foreign(PathBuf),
}

/// Calls `f` with the entries of each leaf shard folder of `blobs/` in turn
/// (one `Vec` per `xx/yy` folder, so memory stays bounded by a folder's size),
/// reporting each top-level shard to `on_shard`.
pub fn walk_blobs(
    blobs: &Path,
    mut on_shard: impl FnMut(),
    mut f: impl FnMut(Vec<BlobEntry>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for outer in sorted_entries(blobs)? {
        if !outer.is_dir() {
            f(vec![BlobEntry::Foreign(outer)])?;
            continue;
        }
        for inner in sorted_entries(&outer)? {
            if !inner.is_dir() {
                f(vec![BlobEntry::Foreign(inner)])?;
                continue;
            }
            let mut batch = Vec::new();
            for file in sorted_entries(&inner)? {
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
                match crate::store::parse_hash_hex(name) {
                    Some(h)
                        if blobs.join(crate::store::blob_relative_path(&h)) == file
                            && !file.is_dir() =>
                    {
                        batch.push(BlobEntry::Blob(h, file))
                    }
                    _ => batch.push(BlobEntry::Foreign(file)),
                }
            }
            f(batch)?;
        }
        on_shard();
    }
    Ok(())
}

fn sorted_entries(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// Number of top-level shard folders, for a progress bar's length.
pub fn shard_count(blobs: &Path) -> u64 {
    std::fs::read_dir(blobs)
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}
