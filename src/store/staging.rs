//! Staging files: uploads (and archive copies) being written to a root's
//! `tmp/`, hashed as they are written, removed when dropped unless installed.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;

use super::{Result, StoreError};

/// An upload being written to `tmp/`. Hashes what it writes; removes its file
/// when dropped unless it was installed.
#[derive(Debug)]
pub struct StagingFile {
    pub(super) path: PathBuf,
    pub(super) file: File,
    hasher: blake3::Hasher,
    len: u64,
    /// Bytes before this offset have had their writeback started.
    writeback_from: u64,
    pub(super) synced: bool,
    pub(super) installed: bool,
}

/// Start writing a large upload's pages to disk every this many bytes, so the
/// final fsync has only the tail left (disk and network overlap).
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

impl StagingFile {
    /// Wraps a newly created (empty) staging file.
    pub(super) fn new(path: PathBuf, file: File) -> StagingFile {
        StagingFile {
            path,
            file,
            hasher: blake3::Hasher::new(),
            len: 0,
            writeback_from: 0,
            synced: false,
            installed: false,
        }
    }

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
        self.sync_as("staging-fdatasync")
    }

    /// [`StagingFile::sync`], named for fault injection (`super::skip_sync`).
    pub(super) fn sync_as(&mut self, name: &str) -> Result<()> {
        if !self.synced {
            if !super::skip_sync(name) {
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
