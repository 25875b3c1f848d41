//! The blob store: content-addressed files on local disk.
//!
//! Owns `blobs/` and `tmp/` inside the data folder, and the same two folders in
//! the optional archive root (a second, cheaper disk for old blobs). It stages
//! uploads in `tmp/`, installs them under their BLAKE3 hash with an atomic
//! rename, copies old blobs to the archive, and opens blobs for reading from
//! whichever root holds them. It never opens SQLite and never decides that a
//! blob may be deleted. Invariant upheld (storage-layout.md, I1 and A1): a file
//! under either `blobs/` is only ever created by renaming a fully written,
//! fsynced (and, for the archive, hash-verified) temporary file.

mod layout;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub use layout::{blob_relative_path, parse_hash_hex};

use crate::error::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob store I/O failed: {context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("the data disk is full")]
    DiskFull(#[source] io::Error),
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        // ENOSPC / EDQUOT: the client may retry later; say so rather than "internal".
        if matches!(source.raw_os_error(), Some(28) | Some(122)) {
            return StoreError::DiskFull(source);
        }
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::DiskFull(_) => ErrorKind::InsufficientStorage,
            StoreError::Io { .. } => ErrorKind::Internal,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            StoreError::DiskFull(_) => "disk_full",
            StoreError::Io { .. } => "internal",
        }
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Handle on the blob folders of one data folder (and its archive root, if
/// any). Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobStore {
    primary: Root,
    archive: Option<Root>,
}

/// `blobs/` and `tmp/` of one root (the data folder, or the archive root).
#[derive(Debug, Clone)]
struct Root {
    blobs: PathBuf,
    tmp: PathBuf,
}

impl Root {
    fn open(dir: &Path) -> Result<Root> {
        let root = Root {
            blobs: dir.join("blobs"),
            tmp: dir.join("tmp"),
        };
        for dir in [&root.blobs, &root.tmp] {
            fs::create_dir_all(dir)
                .map_err(|e| StoreError::io(format!("create {}", dir.display()), e))?;
        }
        // Those names, and the root's own (the daemon creates a missing data
        // folder), must be durable before anything in them counts as stored.
        // The parent is best effort: one we cannot read was not made by us.
        fsync_dir(dir).map_err(|e| StoreError::io(format!("fsync {}", dir.display()), e))?;
        if let Some(parent) = dir.canonicalize().ok().as_deref().and_then(Path::parent) {
            let _ = fsync_dir(parent);
        }
        Ok(root)
    }
}

/// Which root a blob file was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Primary,
    Archive,
}

impl BlobStore {
    /// Opens (creating if needed) `blobs/` and `tmp/` under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Ok(BlobStore {
            primary: Root::open(data_dir)?,
            archive: None,
        })
    }

    /// Adds the archive root, which must exist (`blobs/` and `tmp/` under it
    /// are created if needed); `None` leaves archival off.
    pub fn with_archive(mut self, root: Option<&Path>) -> Result<Self> {
        if let Some(root) = root
            && !root.is_dir()
        {
            // Not created on demand: a typo or an unmounted disk would
            // otherwise silently fill the wrong file system.
            return Err(StoreError::io(
                format!(
                    "archive root {} (is the archive disk mounted?)",
                    root.display()
                ),
                io::ErrorKind::NotFound.into(),
            ));
        }
        self.archive = root.map(Root::open).transpose()?;
        Ok(self)
    }

    pub fn blobs_dir(&self) -> &Path {
        &self.primary.blobs
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.primary.tmp
    }

    /// The archive root's `blobs/`, when archival is on.
    pub fn archive_blobs_dir(&self) -> Option<&Path> {
        self.archive.as_ref().map(|a| a.blobs.as_path())
    }

    /// The archive root's `tmp/`, when archival is on.
    pub fn archive_tmp_dir(&self) -> Option<&Path> {
        self.archive.as_ref().map(|a| a.tmp.as_path())
    }

    /// Where the blob with this hash lives in the primary root (whether or not
    /// it exists). New blobs are always installed here.
    pub fn blob_path(&self, hash: &blake3::Hash) -> PathBuf {
        self.primary.blobs.join(blob_relative_path(hash))
    }

    /// Where the blob's archived copy lives (whether or not it exists).
    pub fn archive_path(&self, hash: &blake3::Hash) -> Option<PathBuf> {
        self.archive
            .as_ref()
            .map(|a| a.blobs.join(blob_relative_path(hash)))
    }

    /// Whether the archive root holds a whole copy of the blob. Archive files
    /// are only ever created by renaming a hash-verified, durable copy (A1),
    /// so a file of the right size there is the content.
    pub fn archived_whole(&self, hash: &blake3::Hash, size: u64) -> bool {
        self.archive_path(hash)
            .and_then(|p| fs::metadata(p).ok())
            .is_some_and(|m| m.is_file() && m.len() == size)
    }

    /// The file holding this blob, primary root first; `None` if neither has it.
    pub fn locate(&self, hash: &blake3::Hash) -> Option<(PathBuf, Tier)> {
        let primary = self.blob_path(hash);
        if primary.is_file() {
            return Some((primary, Tier::Primary));
        }
        self.archive_path(hash)
            .filter(|p| p.is_file())
            .map(|p| (p, Tier::Archive))
    }

    pub fn contains(&self, hash: &blake3::Hash) -> bool {
        self.locate(hash).is_some()
    }

    /// Opens the blob from whichever root holds it. The primary is tried first
    /// and the archive on `NotFound`, so a blob moved to the archive meanwhile
    /// (its primary copy unlinked after the archive copy was durable) is found.
    pub fn open_blob(&self, hash: &blake3::Hash) -> io::Result<File> {
        match File::open(self.blob_path(hash)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match self.archive_path(hash) {
                Some(archived) => File::open(archived),
                None => Err(e),
            },
            other => other,
        }
    }

    /// Step 1a of a move to the archive root: copies a primary blob into the
    /// archive's `tmp/`, verifying its BLAKE3 hash and size on the way. The
    /// copy becomes visible only through [`BlobStore::install_archive_copies`];
    /// the primary copy is left alone (the caller unlinks it once the archive
    /// copy is durable, A2).
    pub fn stage_archive_copy(&self, hash: &blake3::Hash, size: u64) -> Result<ArchiveCopy> {
        if self.archived_whole(hash, size) {
            return Ok(ArchiveCopy::AlreadyThere);
        }
        let archive = self.archive_store();
        let mut source = match File::open(self.blob_path(hash)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ArchiveCopy::SourceGone),
            Err(e) => return Err(StoreError::io("open blob to archive", e)),
        };
        let mut staged = archive.stage()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            use std::io::Read as _;
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::io("read blob to archive", e)),
            };
            staged.write_chunk(&buf[..n])?;
        }
        if staged.hash() != *hash || staged.len() != size {
            // Never spread a damaged copy; fsck reports and quarantines it.
            return Ok(ArchiveCopy::SourceCorrupt);
        }
        Ok(ArchiveCopy::Staged(Box::new(staged)))
    }

    /// Step 1b: makes staged archive copies durable (one `syncfs` of the
    /// archive file system for a batch, as group commit does for uploads) and
    /// renames each to its content address. Returns the archive folders whose
    /// entries changed: they must be made durable before a primary copy goes.
    pub fn install_archive_copies(&self, staged: Vec<Box<StagingFile>>) -> Result<Vec<PathBuf>> {
        let archive = self.archive_store();
        let mut staged: Vec<StagingFile> = staged.into_iter().map(|b| *b).collect();
        sync_all(&mut staged)?;
        let mut dirs = Vec::new();
        for copy in staged {
            let hash = copy.hash();
            dirs.extend(archive.install(copy, &hash)?);
        }
        Ok(dirs)
    }

    /// The archive root as a store of its own (for staging and installing).
    fn archive_store(&self) -> BlobStore {
        let archive = self
            .archive
            .as_ref()
            .expect("is a bug: archive operation without an archive root");
        BlobStore {
            primary: archive.clone(),
            archive: None,
        }
    }

    /// Creates a new, uniquely named staging file in `tmp/`.
    pub fn stage(&self) -> Result<StagingFile> {
        for _ in 0..8 {
            let name = format!("{:032x}.part", rand::random::<u128>());
            let path = self.primary.tmp.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(StagingFile {
                        path,
                        file,
                        hasher: blake3::Hasher::new(),
                        len: 0,
                        writeback_from: 0,
                        synced: false,
                        installed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StoreError::io("create staging file", e)),
            }
        }
        Err(StoreError::io(
            "create staging file",
            io::Error::other("no unique name after 8 tries"),
        ))
    }

    /// Moves a finished staging file to its content address.
    ///
    /// The staging file must be synced first ([`StagingFile::sync`]); the rename is
    /// atomic, so readers see either no blob or the whole blob. Returns the
    /// directories whose entries changed: they must be fsynced (or the file system
    /// synced) before the blob is recorded as present.
    pub fn install(&self, mut staged: StagingFile, hash: &blake3::Hash) -> Result<Vec<PathBuf>> {
        debug_assert!(
            staged.synced,
            "is a bug: blobs are installed only after fsync"
        );
        let target = self.blob_path(hash);
        let shard = target.parent().expect("blob paths have a shard folder");
        let mut changed = Vec::with_capacity(3);
        if !shard.is_dir() {
            // New shard folders are new entries in their parents too.
            let outer = shard.parent().expect("shard has a parent");
            if !outer.is_dir() {
                changed.push(self.primary.blobs.clone());
            }
            fs::create_dir_all(shard)
                .map_err(|e| StoreError::io(format!("create {}", shard.display()), e))?;
            changed.push(outer.to_owned());
        }
        fs::rename(&staged.path, &target)
            .map_err(|e| StoreError::io(format!("install blob {}", hash.to_hex()), e))?;
        staged.installed = true;
        changed.push(shard.to_owned());
        Ok(changed)
    }

    /// Removes staging files last modified before `older_than` ago (all of them
    /// for `Duration::ZERO`). Returns how many were removed.
    pub fn clean_tmp(&self, older_than: Duration) -> Result<usize> {
        let cutoff = SystemTime::now() - older_than;
        let mut removed = 0;
        let entries = fs::read_dir(&self.primary.tmp)
            .map_err(|e| StoreError::io("list staging folder", e))?;
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let stale = meta.modified().map(|m| m <= cutoff).unwrap_or(true);
            if meta.is_file()
                && (older_than.is_zero() || stale)
                && fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// What [`BlobStore::stage_archive_copy`] did.
#[derive(Debug)]
pub enum ArchiveCopy {
    /// Written and verified, not yet durable nor visible.
    Staged(Box<StagingFile>),
    /// A whole copy was already archived (an earlier, interrupted move).
    AlreadyThere,
    /// The primary copy vanished (GC deleted the blob meanwhile).
    SourceGone,
    /// The primary copy does not match its hash or size; nothing was archived.
    SourceCorrupt,
}

/// An upload being written to `tmp/`. Hashes what it writes; removes its file
/// when dropped unless it was installed.
#[derive(Debug)]
pub struct StagingFile {
    path: PathBuf,
    file: File,
    hasher: blake3::Hasher,
    len: u64,
    /// Bytes before this offset have had their writeback started.
    writeback_from: u64,
    synced: bool,
    installed: bool,
}

/// Start writing a large upload's pages to disk every this many bytes, so the
/// final fsync has only the tail left (disk and network overlap).
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

impl StagingFile {
    /// Appends a chunk, hashing it on the way.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<()> {
        self.write_chunks(&[chunk])
    }

    /// Appends several chunks with as few `writev(2)` calls as the kernel
    /// allows (network chunks are often small; this saves syscalls, not copies).
    pub fn write_chunks(&mut self, chunks: &[&[u8]]) -> Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            self.hasher.update(chunk);
            self.len += chunk.len() as u64;
            slices.push(io::IoSlice::new(chunk));
        }
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match self.file.write_vectored(rest) {
                Ok(0) => {
                    return Err(StoreError::io(
                        "write staging file",
                        io::ErrorKind::WriteZero.into(),
                    ));
                }
                Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::io("write staging file", e)),
            }
        }
        if self.len - self.writeback_from >= WRITEBACK_EVERY {
            self.start_writeback();
        }
        Ok(())
    }

    /// Asks the kernel to start writing the pages written so far, without
    /// waiting. A hint only: durability still comes from `sync`.
    fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd as _;
        let (from, len) = (self.writeback_from, self.len - self.writeback_from);
        // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
        // Neither nix nor rustix wraps sync_file_range(2).
        let rc = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                from as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc == 0 {
            self.writeback_from = self.len;
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn hash(&self) -> blake3::Hash {
        self.hasher.finalize()
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Makes the staged bytes durable (fdatasync).
    pub fn sync(&mut self) -> Result<()> {
        if !self.synced {
            if !skip_sync("staging-fdatasync") {
                self.file
                    .sync_data()
                    .map_err(|e| StoreError::io("fsync staging file", e))?;
            }
            self.synced = true;
        }
        Ok(())
    }
}

impl Drop for StagingFile {
    fn drop(&mut self) {
        if !self.installed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// From this many files or folders to flush, one `syncfs` is cheaper than an
/// fsync of each.
const SYNCFS_FROM: usize = 4;

/// Makes every staging file's bytes durable: `fdatasync` each of a few, one
/// `syncfs` of their file system for many (all are in one `tmp/`).
fn sync_all(files: &mut [StagingFile]) -> Result<()> {
    if skip_sync("archive-copy-sync") {
        files.iter_mut().for_each(|f| f.synced = true);
        return Ok(());
    }
    if files.len() >= SYNCFS_FROM {
        nix::unistd::syncfs(&files[0].file)
            .map_err(|e| StoreError::io("syncfs of staged copies", io::Error::from(e)))?;
        for file in files.iter_mut() {
            file.synced = true;
        }
        return Ok(());
    }
    files.iter_mut().try_for_each(StagingFile::sync)
}

/// Makes a directory's entries durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes every directory in `dirs` durable: one fsync each for a few, one
/// `syncfs` of the whole file system when many changed in the same batch
/// (group commit: one flush then covers all of them).
pub fn make_dirs_durable(dirs: &[PathBuf]) -> io::Result<()> {
    if skip_sync("dir-barrier") {
        return Ok(());
    }
    let mut unique: Vec<&PathBuf> = dirs.iter().collect();
    unique.sort();
    unique.dedup();
    if unique.len() >= SYNCFS_FROM {
        let fd = File::open(unique[0])?;
        nix::unistd::syncfs(&fd).map_err(io::Error::from)
    } else {
        unique.into_iter().try_for_each(|d| fsync_dir(d))
    }
}

/// Test-only (cargo feature `fault-injection`): whether `MEDIA_STORE_FAULT_SKIP`
/// names this sync, so tests/it/powercut.rs can show that it catches its absence.
#[cfg(feature = "fault-injection")]
fn skip_sync(name: &str) -> bool {
    std::env::var("MEDIA_STORE_FAULT_SKIP").is_ok_and(|v| v == name)
}
#[cfg(not(feature = "fault-injection"))]
fn skip_sync(_: &str) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_blob_is_installed_under_its_hash_and_tmp_is_left_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut staged = store.stage().unwrap();
        staged.write_chunk(b"hello ").unwrap();
        staged.write_chunks(&[b"wo", b"", b"rld"]).unwrap();
        let hash = staged.hash();
        assert_eq!(hash, blake3::hash(b"hello world"));
        staged.sync().unwrap();
        let dirs = store.install(staged, &hash).unwrap();
        make_dirs_durable(&dirs).unwrap();
        assert_eq!(fs::read(store.blob_path(&hash)).unwrap(), b"hello world");
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn dropped_staging_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut staged = store.stage().unwrap();
        staged.write_chunk(b"partial").unwrap();
        drop(staged);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    fn store_with_blob(content: &[u8]) -> (tempfile::TempDir, BlobStore, blake3::Hash) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("archive")).unwrap();
        let store = BlobStore::open(&dir.path().join("data"))
            .unwrap()
            .with_archive(Some(&dir.path().join("archive")))
            .unwrap();
        let mut staged = store.stage().unwrap();
        staged.write_chunk(content).unwrap();
        let hash = staged.hash();
        staged.sync().unwrap();
        store.install(staged, &hash).unwrap();
        (dir, store, hash)
    }

    #[test]
    fn archived_blob_is_found_and_opened_in_the_archive_root() {
        let (_dir, store, hash) = store_with_blob(b"old content");
        let ArchiveCopy::Staged(copy) = store.stage_archive_copy(&hash, 11).unwrap() else {
            panic!("not staged")
        };
        assert!(
            !store.archive_path(&hash).unwrap().exists(),
            "visible before install"
        );
        let dirs = store.install_archive_copies(vec![copy]).unwrap();
        make_dirs_durable(&dirs).unwrap();
        // Both copies: the primary one is preferred.
        assert_eq!(store.locate(&hash).unwrap().1, Tier::Primary);
        assert!(matches!(
            store.stage_archive_copy(&hash, 11).unwrap(),
            ArchiveCopy::AlreadyThere
        ));
        fs::remove_file(store.blob_path(&hash)).unwrap();
        assert_eq!(store.locate(&hash).unwrap().1, Tier::Archive);
        assert!(store.contains(&hash));
        let mut text = String::new();
        use std::io::Read as _;
        store
            .open_blob(&hash)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "old content");
        assert!(matches!(
            store.stage_archive_copy(&blake3::hash(b"x"), 1).unwrap(),
            ArchiveCopy::SourceGone
        ));
        assert_eq!(
            fs::read_dir(store.archive_tmp_dir().unwrap())
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_corrupt_blob_is_never_copied_to_the_archive() {
        let (_dir, store, hash) = store_with_blob(b"soon damaged");
        fs::write(store.blob_path(&hash), b"soon DAMAGED").unwrap();
        assert!(matches!(
            store.stage_archive_copy(&hash, 12).unwrap(),
            ArchiveCopy::SourceCorrupt
        ));
        assert!(!store.archive_path(&hash).unwrap().exists());
        assert_eq!(
            fs::read_dir(store.archive_tmp_dir().unwrap())
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_missing_archive_root_is_refused_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not-mounted");
        let err = BlobStore::open(dir.path())
            .unwrap()
            .with_archive(Some(&missing))
            .unwrap_err();
        assert!(err.to_string().contains("not-mounted"), "{err}");
        assert!(!missing.exists());
    }

    #[test]
    fn clean_tmp_respects_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        fs::write(store.tmp_dir().join("left.part"), b"x").unwrap();
        assert_eq!(store.clean_tmp(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(store.clean_tmp(Duration::ZERO).unwrap(), 1);
    }
}
