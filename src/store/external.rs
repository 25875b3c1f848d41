//! Reading files from a folder outside the data folder, confined to it: the
//! sources `media-store import` adopts (an existing chat deployment's upload
//! folder). Not blob data, but file-system access, so it lives with the other
//! file code here.
//!
//! Confinement is enforced by the kernel, not by string checks alone:
//! `openat2(2)` with `RESOLVE_BENEATH` resolves the path relative to the
//! root's open descriptor and fails with `EXDEV` when any step (a `..`, an
//! absolute or escaping symlink) would leave it. `..` components are refused
//! before that too, and only regular files are read.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use futures_util::Stream;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    #[error("{0}: no such file under the import root")]
    NotFound(PathBuf),
    #[error("{0}: leaves the import root (`..`, an absolute path or a symlink pointing outside)")]
    Escapes(PathBuf),
    #[error("{0}: not a regular file")]
    NotAFile(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An open folder that files are read from, never beyond.
pub struct ExternalRoot {
    dir: OwnedFd,
    path: PathBuf,
}

/// A regular file opened under an [`ExternalRoot`].
pub struct ExternalFile {
    file: std::fs::File,
    len: u64,
}

impl ExternalRoot {
    pub fn open(path: &Path) -> Result<ExternalRoot, ExternalError> {
        let how = OpenHow::new().flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC);
        let dir = openat2(nix::fcntl::AT_FDCWD, path, how).map_err(|e| ExternalError::Io {
            path: path.to_owned(),
            source: e.into(),
        })?;
        Ok(ExternalRoot {
            dir,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `relative` (a path below the root, without `..`) for reading.
    pub fn open_file(&self, relative: &Path) -> Result<ExternalFile, ExternalError> {
        let shown = self.path.join(relative);
        if relative.as_os_str().is_empty()
            || relative
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(ExternalError::Escapes(shown));
        }
        // O_NONBLOCK: opening a FIFO must not hang the import; it is refused below.
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
            .mode(Mode::empty())
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = openat2(&self.dir, relative, how).map_err(|e| match e {
            Errno::ENOENT | Errno::ENOTDIR => ExternalError::NotFound(shown.clone()),
            Errno::EXDEV | Errno::ELOOP => ExternalError::Escapes(shown.clone()),
            e => ExternalError::Io {
                path: shown.clone(),
                source: e.into(),
            },
        })?;
        let file = std::fs::File::from(fd);
        let meta = file.metadata().map_err(|source| ExternalError::Io {
            path: shown.clone(),
            source,
        })?;
        if !meta.file_type().is_file() {
            return Err(ExternalError::NotAFile(shown));
        }
        Ok(ExternalFile {
            file,
            len: meta.len(),
        })
    }
}

impl ExternalFile {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's bytes as a stream of chunks, read on tokio's blocking pool.
    pub fn into_stream(self) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static {
        tokio_util::io::ReaderStream::with_capacity(
            tokio::fs::File::from_std(self.file),
            256 * 1024,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_below_the_root_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/f.bin"), b"hello").unwrap();
        std::fs::write(dir.path().join("secret"), b"no").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("out")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("abs")).unwrap();
        std::os::unix::fs::symlink("a/f.bin", root.join("inside")).unwrap();
        let r = ExternalRoot::open(&root).unwrap();
        assert_eq!(r.open_file(Path::new("a/f.bin")).unwrap().len(), 5);
        assert_eq!(r.open_file(Path::new("inside")).unwrap().len(), 5);
        for escaping in ["out", "abs", "../secret", "a/../../secret", "/etc/passwd"] {
            assert!(
                matches!(
                    r.open_file(Path::new(escaping)),
                    Err(ExternalError::Escapes(_))
                ),
                "{escaping}"
            );
        }
        assert!(matches!(
            r.open_file(Path::new("a/missing")),
            Err(ExternalError::NotFound(_))
        ));
        assert!(matches!(
            r.open_file(Path::new("a")),
            Err(ExternalError::NotAFile(_))
        ));
    }
}
