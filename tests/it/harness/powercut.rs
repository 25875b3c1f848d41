//! Power-cut simulation: a FUSE file system, served from this test process,
//! that keeps what was not yet made durable in memory and throws it away on a
//! simulated power cut (as SQLite's own crash tests do with a VFS shim).
//!
//! kill -9 keeps the page cache, so it cannot show a missing fsync; this can.
//!
//! # Durability model
//!
//! Every file has durable contents and current contents, every folder durable
//! entries and current entries. Reads and writes see the current state.
//! - `fsync`/`fdatasync` of a file make its current contents (and length)
//!   durable. They do not make its name durable (POSIX; fsync(2) says so).
//! - `fsync` of a folder (FUSE `fsyncdir`) makes its current entries durable:
//!   creates, unlinks, mkdirs and both halves of renames in that folder. A
//!   durable entry for a new file or folder brings the inode with it, with
//!   whatever contents of it are durable (none, unless it was fsynced).
//! - `syncfs(2)` makes the whole file system durable. The kernel does not pass
//!   it to a FUSE server (it sends `FUSE_SYNCFS` to virtiofs only, and fuser
//!   has no such operation), so it cannot be seen here. Treating it as a no-op
//!   would fail the daemon's group commit, which relies on it; treating every
//!   flush as a syncfs would hide missing syncs. So [`PowerCut::spawn`] runs the
//!   daemon and `media-store gc` under a seccomp filter that stops them at each
//!   `syncfs` call and tells this process (a user notification), which makes the
//!   volume the descriptor lives on durable before the call goes on.
//! - `sync_file_range` is only a hint and reaches nobody.
//!
//! A cut ([`PowerCut::cut`]) first turns the power off (from then on every
//! request fails with EIO, as a dead disk would), then reverts every file and
//! folder to its durable state and forgets inodes no durable entry reaches.
//! With `reorder`, each write, truncate and folder entry change made since the
//! last sync is kept or dropped at random instead (any subset of unsynced
//! operations may have reached the disk, in any order), which is stricter.
//!
//! Limits: writes are not torn below a write request; attributes other than the
//! size (mode, mtimes) are not reverted; the model is stricter than ext4 or XFS
//! in ordered mode (which persist more than POSIX promises), so a protocol that
//! passes here does not depend on file-system-specific ordering.
//!
//! # Keeping the kernel from caching
//!
//! Attribute and entry timeouts are 0, and files are opened with `direct_io`
//! (with `FUSE_DIRECT_IO_ALLOW_MMAP`, so shared read mappings, which fsck's
//! hashing uses, still work): every read, write and fsync reaches this server.
//! The writeback cache is off, so writes are write-through. The one exception
//! is SQLite's `-shm` file, which must be mmapped shared and writable: it uses
//! the page cache (its contents never need to be durable; the first connection
//! after a crash truncates and rebuilds it). Locks (`fcntl` and `flock`) are not
//! implemented here, so the kernel keeps them locally: correct, since every
//! process is on this machine.
//!
//! The session runs one thread: requests are handled in order, which the cut
//! relies on (see [`PowerCut::power_on`]).
//!
//! The test process serves the file system, so it must never mmap a file on
//! it (SQLite does, for `-shm`): munmap waits for the writeback of a shared
//! mapping while holding the process's mmap lock, which the serving thread
//! then needs to allocate. Tests copy the index out of the mount to read it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use rand::{Rng as _, SeedableRng as _};

/// Kernel caches of entries and attributes: off.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;

/// What `/dev/fuse` says about running these tests here.
pub fn available() -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    eprintln!(
        "SKIPPED: /dev/fuse is absent, so the power-cut tests cannot mount their file system"
    );
    false
}

/// An operation not yet made durable, kept to replay a random subset of them.
enum Pending {
    Write { offset: usize, data: Vec<u8> },
    SetLen(usize),
}

impl Pending {
    fn apply(&self, buf: &mut Vec<u8>) {
        match self {
            Pending::Write { offset, data } => {
                let end = offset + data.len();
                if buf.len() < end {
                    buf.resize(end, 0);
                }
                buf[*offset..end].copy_from_slice(data);
            }
            Pending::SetLen(len) => buf.resize(*len, 0),
        }
    }
}

enum Body {
    File {
        current: Vec<u8>,
        durable: Vec<u8>,
        pending: Vec<Pending>,
    },
    Dir {
        current: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
}

struct Inode {
    body: Body,
    perm: u16,
    mtime: SystemTime,
    /// SQLite's `-shm`: opened through the page cache (see the module doc).
    page_cache: bool,
}

/// How often each sync reached the file system (to show the tests exercise them).
#[derive(Debug, Default, Clone, Copy)]
pub struct Syncs {
    pub fsync: u64,
    pub fsyncdir: u64,
    pub syncfs: u64,
}

struct State {
    powered: bool,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    syncs: Syncs,
}

/// One simulated disk: its state and where it is mounted.
pub struct Volume {
    state: Mutex<State>,
    mountpoint: PathBuf,
    direct_io: AtomicBool,
}

impl Volume {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `syncfs(2)` of this volume, reported by the seccomp supervisor.
    fn syncfs(&self) {
        let mut s = self.lock();
        if !s.powered {
            return;
        }
        s.syncs.syncfs += 1;
        for inode in s.inodes.values_mut() {
            make_durable(&mut inode.body);
        }
    }

    fn cut(&self, s: &mut State, rng: Option<&mut rand::rngs::StdRng>) {
        s.powered = false;
        let mut rng = rng;
        // SQLite's `-shm` is shared memory in a file: it is left as it is (a
        // process may still map it, and a page fault past a shrunk end is a
        // SIGBUS); the first opener after the cut truncates and rebuilds it.
        for inode in s.inodes.values_mut().filter(|i| !i.page_cache) {
            match &mut inode.body {
                Body::File {
                    current,
                    durable,
                    pending,
                } => {
                    if let Some(rng) = rng.as_deref_mut() {
                        for op in pending.iter().filter(|_| rng.random_bool(0.5)) {
                            op.apply(durable);
                        }
                    }
                    pending.clear();
                    *current = durable.clone();
                }
                Body::Dir { current, durable } => {
                    if let Some(rng) = rng.as_deref_mut() {
                        let names: HashSet<OsString> =
                            current.keys().chain(durable.keys()).cloned().collect();
                        let mut names: Vec<OsString> = names.into_iter().collect();
                        names.sort(); // a seed replays the same choices
                        for name in names {
                            let now = current.get(&name).copied();
                            if now != durable.get(&name).copied() && rng.random_bool(0.5) {
                                match now {
                                    Some(ino) => durable.insert(name, ino),
                                    None => durable.remove(&name),
                                };
                            }
                        }
                    }
                    *current = durable.clone();
                }
            }
        }
        // Inodes that no durable entry reaches are gone (their names never
        // reached the disk, or their unlink did).
        let mut reachable = HashSet::from([ROOT]);
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if let Some(Inode {
                body: Body::Dir { current, .. },
                ..
            }) = s.inodes.get(&ino)
            {
                for child in current.values() {
                    if reachable.insert(*child) {
                        stack.push(*child);
                    }
                }
            }
        }
        s.inodes
            .retain(|ino, inode| reachable.contains(ino) || inode.page_cache);
    }

    pub fn syncs(&self) -> Syncs {
        self.lock().syncs
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
}

fn make_durable(body: &mut Body) {
    match body {
        Body::File {
            current,
            durable,
            pending,
        } => {
            durable.clone_from(current);
            pending.clear();
        }
        Body::Dir { current, durable } => durable.clone_from(current),
    }
}

/// The FUSE side of a [`Volume`].
struct Fs(Arc<Volume>);

impl Fs {
    /// The state, or EIO while the power is off.
    fn on(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let s = self.0.lock();
        if s.powered { Ok(s) } else { Err(Errno::EIO) }
    }

    /// The state for a request on `ino`. SQLite's `-shm` stays usable while
    /// the power is off: it is mmapped, and an EIO on a page fault is a
    /// SIGBUS that would kill this test process itself. Its contents never
    /// matter after a cut (the next opener rebuilds it).
    fn on_for(&self, ino: INodeNo) -> Result<MutexGuard<'_, State>, Errno> {
        let s = self.0.lock();
        if s.powered || s.inodes.get(&ino.0).is_some_and(|i| i.page_cache) {
            Ok(s)
        } else {
            Err(Errno::EIO)
        }
    }

    fn open_flags(&self, inode: &Inode) -> FopenFlags {
        if inode.page_cache || !self.0.direct_io.load(Ordering::Relaxed) {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_DIRECT_IO
        }
    }
}

fn attr(ino: u64, inode: &Inode) -> FileAttr {
    let (kind, size, nlink) = match &inode.body {
        Body::File { current, .. } => (FileType::RegularFile, current.len() as u64, 1),
        Body::Dir { .. } => (FileType::Directory, 4096, 2),
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: inode.mtime,
        mtime: inode.mtime,
        ctime: inode.mtime,
        crtime: inode.mtime,
        kind,
        perm: inode.perm,
        nlink,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn dir_mut(s: &mut State, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
    match s.inodes.get_mut(&ino).map(|i| &mut i.body) {
        Some(Body::Dir { current, .. }) => Ok(current),
        Some(Body::File { .. }) => Err(Errno::ENOTDIR),
        None => Err(Errno::ENOENT),
    }
}

fn file_mut(s: &mut State, ino: u64) -> Result<(&mut Vec<u8>, &mut Vec<Pending>), Errno> {
    match s.inodes.get_mut(&ino).map(|i| &mut i.body) {
        Some(Body::File {
            current, pending, ..
        }) => Ok((current, pending)),
        Some(Body::Dir { .. }) => Err(Errno::EISDIR),
        None => Err(Errno::ENOENT),
    }
}

fn is_empty_dir(s: &State, ino: u64) -> bool {
    matches!(s.inodes.get(&ino).map(|i| &i.body), Some(Body::Dir { current, .. }) if current.is_empty())
}

fn is_dir(s: &State, ino: u64) -> bool {
    matches!(s.inodes.get(&ino).map(|i| &i.body), Some(Body::Dir { .. }))
}

fn new_inode(
    s: &mut State,
    parent: u64,
    name: &OsStr,
    body: Body,
    mode: u32,
) -> Result<u64, Errno> {
    let ino = s.next_ino;
    let dir = dir_mut(s, parent)?;
    if dir.contains_key(name) {
        return Err(Errno::EEXIST);
    }
    dir.insert(name.to_owned(), ino);
    s.next_ino += 1;
    s.inodes.insert(
        ino,
        Inode {
            body,
            perm: (mode & 0o7777) as u16,
            mtime: SystemTime::now(),
            page_cache: name.as_bytes().ends_with(b"-shm"),
        },
    );
    Ok(ino)
}

impl fuser::Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Kernels before 6.6 cannot mmap direct_io files; fall back to the
        // page cache, which every open drops (no FOPEN_KEEP_CACHE).
        let allow_mmap = config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        self.0.direct_io.store(allow_mmap, Ordering::Relaxed);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self.on().and_then(|mut s| {
            let ino = *dir_mut(&mut s, parent.0)?.get(name).ok_or(Errno::ENOENT)?;
            Ok(attr(ino, &s.inodes[&ino]))
        });
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        // The root answers even while the power is off: `PowerCut::power_on`
        // uses a stat of it as a barrier behind requests already read.
        let s = match self.on_for(ino) {
            Err(_) if ino.0 == ROOT => self.0.lock(),
            Err(e) => return reply.error(e),
            Ok(s) => s,
        };
        match s.inodes.get(&ino.0) {
            Some(inode) => reply.attr(&TTL, &attr(ino.0, inode)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.on_for(ino).and_then(|mut s| {
            if let Some(len) = size {
                let (current, pending) = file_mut(&mut s, ino.0)?;
                let op = Pending::SetLen(len as usize);
                op.apply(current);
                pending.push(op);
            }
            let inode = s.inodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
            if let Some(mode) = mode {
                inode.perm = (mode & 0o7777) as u16;
            }
            match mtime {
                Some(TimeOrNow::SpecificTime(t)) => inode.mtime = t,
                Some(TimeOrNow::Now) => inode.mtime = SystemTime::now(),
                None if size.is_some() => inode.mtime = SystemTime::now(),
                None => {}
            }
            Ok(attr(ino.0, inode))
        });
        match result {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.on().and_then(|mut s| {
            let body = Body::Dir {
                current: BTreeMap::new(),
                durable: BTreeMap::new(),
            };
            let ino = new_inode(&mut s, parent.0, name, body, mode)?;
            Ok(attr(ino, &s.inodes[&ino]))
        });
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.on().and_then(|mut s| {
            let existing = dir_mut(&mut s, parent.0)?.get(name).copied();
            let ino = match existing {
                Some(_) if flags & libc::O_EXCL != 0 => return Err(Errno::EEXIST),
                Some(ino) => {
                    if flags & libc::O_TRUNC != 0 {
                        let (current, pending) = file_mut(&mut s, ino)?;
                        current.clear();
                        pending.push(Pending::SetLen(0));
                    }
                    ino
                }
                None => {
                    let body = Body::File {
                        current: Vec::new(),
                        durable: Vec::new(),
                        pending: Vec::new(),
                    };
                    new_inode(&mut s, parent.0, name, body, mode)?
                }
            };
            let inode = &s.inodes[&ino];
            Ok((attr(ino, inode), self.open_flags(inode)))
        });
        match result {
            Ok((a, f)) => reply.created(&TTL, &a, Generation(0), FileHandle(a.ino.0), f),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.on().and_then(|mut s| {
            let ino = *dir_mut(&mut s, parent.0)?.get(name).ok_or(Errno::ENOENT)?;
            if is_dir(&s, ino) {
                return Err(Errno::EISDIR);
            }
            dir_mut(&mut s, parent.0)?.remove(name);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.on().and_then(|mut s| {
            let ino = *dir_mut(&mut s, parent.0)?.get(name).ok_or(Errno::ENOENT)?;
            if !is_dir(&s, ino) {
                return Err(Errno::ENOTDIR);
            }
            if !is_empty_dir(&s, ino) {
                return Err(Errno::ENOTEMPTY);
            }
            dir_mut(&mut s, parent.0)?.remove(name);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.on().and_then(|mut s| {
            if flags.contains(RenameFlags::RENAME_EXCHANGE)
                || flags.contains(RenameFlags::RENAME_WHITEOUT)
            {
                return Err(Errno::EINVAL);
            }
            let ino = *dir_mut(&mut s, parent.0)?.get(name).ok_or(Errno::ENOENT)?;
            if let Some(target) = dir_mut(&mut s, newparent.0)?.get(newname).copied() {
                if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                    return Err(Errno::EEXIST);
                }
                match (is_dir(&s, ino), is_dir(&s, target)) {
                    (false, true) => return Err(Errno::EISDIR),
                    (true, false) => return Err(Errno::ENOTDIR),
                    (true, true) if !is_empty_dir(&s, target) => return Err(Errno::ENOTEMPTY),
                    _ => {}
                }
            }
            dir_mut(&mut s, parent.0)?.remove(name);
            dir_mut(&mut s, newparent.0)?.insert(newname.to_owned(), ino);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.on_for(ino).and_then(|s| {
            let inode = s.inodes.get(&ino.0).ok_or(Errno::ENOENT)?;
            Ok(self.open_flags(inode))
        });
        match result {
            Ok(f) => reply.opened(FileHandle(ino.0), f),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let result = self.on_for(ino).and_then(|mut s| {
            let (current, _) = file_mut(&mut s, ino.0)?;
            let start = (offset as usize).min(current.len());
            let end = (start + size as usize).min(current.len());
            Ok(current[start..end].to_vec())
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = self.on_for(ino).and_then(|mut s| {
            let (current, pending) = file_mut(&mut s, ino.0)?;
            let op = Pending::Write {
                offset: offset as usize,
                data: data.to_vec(),
            };
            op.apply(current);
            pending.push(op);
            if let Some(inode) = s.inodes.get_mut(&ino.0) {
                inode.mtime = SystemTime::now();
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): no durability (and no error: nothing is buffered here).
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // fdatasync makes the length durable too (needed to read the data
        // back); other attributes are not modelled.
        let result = self.on_for(ino).and_then(|mut s| {
            s.syncs.fsync += 1;
            let inode = s.inodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
            make_durable(&mut inode.body);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self
            .on()
            .and_then(|mut s| dir_mut(&mut s, ino.0).map(|_| ()))
        {
            Ok(()) => reply.opened(FileHandle(ino.0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.on().and_then(|mut s| {
            let entries: Vec<(OsString, u64)> = dir_mut(&mut s, ino.0)?
                .iter()
                .map(|(n, i)| (n.clone(), *i))
                .collect();
            let mut all = vec![
                (OsString::from("."), ino.0, FileType::Directory),
                (OsString::from(".."), ROOT, FileType::Directory),
            ];
            for (name, child) in entries {
                let kind = if is_dir(&s, child) {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                all.push((name, child, kind));
            }
            Ok(all)
        });
        match result {
            Ok(all) => {
                for (i, (name, child, kind)) in all.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.on().and_then(|mut s| {
            s.syncs.fsyncdir += 1;
            let inode = s.inodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
            make_durable(&mut inode.body);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.on() {
            // 64 GiB free in 4 KiB blocks: no free-space check trips.
            Ok(_) => reply.statfs(1 << 24, 1 << 24, 1 << 24, 1 << 20, 1 << 20, 4096, 255, 4096),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = self.on().and_then(|mut s| {
            let (current, pending) = file_mut(&mut s, ino.0)?;
            match mode {
                0 => {
                    let end = (offset + length) as usize;
                    if end > current.len() {
                        let op = Pending::SetLen(end);
                        op.apply(current);
                        pending.push(op);
                    }
                    Ok(())
                }
                libc::FALLOC_FL_KEEP_SIZE => Ok(()),
                _ => Err(Errno::EOPNOTSUPP),
            }
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted [`Volume`].
struct Mounted {
    volume: Arc<Volume>,
    session: Option<fuser::BackgroundSession>,
}

/// One or more simulated disks that lose power together.
pub struct PowerCut {
    disks: Vec<Mounted>,
    dir: tempfile::TempDir,
}

impl PowerCut {
    /// Mounts one empty volume per name at `<tempdir>/<name>` (see
    /// [`PowerCut::path`]). Panics when mounting fails: call [`available`] first.
    pub fn mount(names: &[&str]) -> PowerCut {
        let dir = tempfile::tempdir().unwrap();
        let mut disks = Vec::new();
        for name in names {
            let mountpoint = dir.path().join(name);
            std::fs::create_dir(&mountpoint).unwrap();
            let mountpoint = mountpoint.canonicalize().unwrap();
            let root = Inode {
                body: Body::Dir {
                    current: BTreeMap::new(),
                    durable: BTreeMap::new(),
                },
                perm: 0o755,
                mtime: SystemTime::now(),
                page_cache: false,
            };
            let volume = Arc::new(Volume {
                state: Mutex::new(State {
                    powered: true,
                    inodes: HashMap::from([(ROOT, root)]),
                    next_ino: ROOT + 1,
                    syncs: Syncs::default(),
                }),
                mountpoint: mountpoint.clone(),
                direct_io: AtomicBool::new(true),
            });
            let mut config = fuser::Config::default();
            config.mount_options =
                vec![MountOption::FSName("powercut".into()), MountOption::NoAtime];
            // One thread: requests are handled in the order they were read.
            config.n_threads = Some(1);
            let session = fuser::spawn_mount(Fs(volume.clone()), &mountpoint, &config)
                .unwrap_or_else(|e| {
                    panic!(
                        "mount the power-cut file system at {}: {e}",
                        mountpoint.display()
                    )
                });
            disks.push(Mounted {
                volume,
                session: Some(session),
            });
        }
        PowerCut { disks, dir }
    }

    /// Where the `i`-th volume is mounted.
    pub fn path(&self, i: usize) -> &Path {
        &self.disks[i].volume.mountpoint
    }

    /// A folder for logs and configs, beside the mounts (on a real disk).
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }

    pub fn syncs(&self, i: usize) -> Syncs {
        self.disks[i].volume.syncs()
    }

    /// Cuts the power of every volume at once: afterwards each holds only what
    /// was durable (or, with `reorder`, a random subset of the rest too), and
    /// every request fails with EIO until [`PowerCut::power_on`]. Kill the
    /// processes that used them before turning the power back on.
    pub fn cut(&self, reorder: Option<u64>) {
        let mut rng = reorder.map(rand::rngs::StdRng::seed_from_u64);
        let mut guards: Vec<MutexGuard<'_, State>> =
            self.disks.iter().map(|d| d.volume.lock()).collect();
        for (disk, state) in self.disks.iter().zip(guards.iter_mut()) {
            disk.volume.cut(state, rng.as_mut());
        }
    }

    /// Turns the power back on, after the processes of before the cut are gone.
    pub fn power_on(&self) {
        // A request a killed process had sent may have been read by the
        // session thread before the cut and not yet handled; a stat of the
        // root queues behind it (one thread, in order), so once it returns
        // such a request has met the power off and failed.
        for disk in &self.disks {
            std::fs::metadata(&disk.volume.mountpoint).unwrap();
        }
        for disk in &self.disks {
            disk.volume.lock().powered = true;
        }
    }

    /// Spawns `cmd` so that its `syncfs(2)` calls reach these volumes (see the
    /// module doc): a seccomp filter turns each into a user notification that
    /// a thread of this process answers after making the volume durable.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        (self.spawner())(cmd)
    }

    /// [`PowerCut::spawn`] for another thread.
    pub fn spawner(&self) -> impl Fn(&mut Command) -> io::Result<Child> + Send + 'static {
        let volumes: Vec<Arc<Volume>> = self.disks.iter().map(|d| d.volume.clone()).collect();
        move |cmd| spawn_with_syncfs_notify(cmd, volumes.clone())
    }
}

impl Drop for PowerCut {
    fn drop(&mut self) {
        for disk in &mut self.disks {
            disk.volume.lock().powered = true;
            // A lazy unmount never blocks on a busy mount; the session thread
            // ends once the last user of the mount is gone.
            let path =
                std::ffi::CString::new(disk.volume.mountpoint.as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid C string.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            if let Some(session) = disk.session.take() {
                std::mem::forget(session); // its own unmount would race ours
            }
        }
    }
}

/// The file descriptor number under which the child keeps its seccomp
/// listener until the parent has taken a copy (`pidfd_getfd`).
const LISTENER_FD: i32 = 913;

fn spawn_with_syncfs_notify(cmd: &mut Command, volumes: Vec<Arc<Volume>>) -> io::Result<Child> {
    fn stmt(code: u32, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        }
    }
    // if (nr == SYS_syncfs) return USER_NOTIF; return ALLOW;
    let filter = [
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0), // seccomp_data.nr
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_syncfs as u32,
        },
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_USER_NOTIF),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls on memory it owns.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &prog as *const libc::sock_fprog,
            );
            if fd < 0 || libc::dup2(fd as i32, LISTENER_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::close(fd as i32);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // spawn returns after the exec, so the listener is in place.
    // SAFETY: plain system calls; the returned descriptors are owned here.
    let listener = unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0);
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd as i32, LISTENER_FD, 0);
        let err = io::Error::last_os_error();
        libc::close(pidfd as i32);
        if fd < 0 {
            return Err(err);
        }
        OwnedFd::from_raw_fd(fd as i32)
    };
    std::thread::spawn(move || answer_syncfs(listener, volumes));
    Ok(child)
}

/// Answers the child's `syncfs` calls until every process under the filter
/// has exited.
fn answer_syncfs(listener: OwnedFd, volumes: Vec<Arc<Volume>>) {
    let fd = listener.as_raw_fd();
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on the stack.
        let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if pfd.revents & libc::POLLIN != 0 {
            // SAFETY: the kernel fills the zeroed struct it is given.
            let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
            if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } != 0 {
                continue; // the caller died meanwhile
            }
            let link = format!("/proc/{}/fd/{}", req.pid, req.data.args[0]);
            if let Ok(target) = std::fs::read_link(link) {
                for volume in volumes.iter().filter(|v| target.starts_with(&v.mountpoint)) {
                    volume.syncfs();
                }
            }
            let mut resp = libc::seccomp_notif_resp {
                id: req.id,
                val: 0,
                error: 0,
                flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
            };
            // SAFETY: as above; a failure means the caller died.
            unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
        } else if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return;
        }
    }
}
