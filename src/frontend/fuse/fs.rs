//! The fuser `Filesystem` over the daemon's exports.

use crate::error::Error;
use crate::frontend::exports::Exports;
use crate::Volume;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Attributes are not cached: a resized volume shows its new size at once.
const TTL: Duration = Duration::ZERO;
const MAX_WRITE: u32 = 1 << 20;
const MAX_BACKGROUND: u16 = 64;

/// What an inode stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Node {
    Root,
    Pool(String),
    /// `pool/volume` or `pool/volume@snapshot`.
    Volume(String),
}

/// Inode numbers, shared with the mount (which tells the kernel about size
/// changes by inode).
#[derive(Default)]
pub struct Inodes {
    by_node: HashMap<Node, u64>,
    by_ino: HashMap<u64, Node>,
}

impl Inodes {
    /// The inode of `pool/volume`, if the kernel has looked it up.
    pub fn volume(&self, name: &str) -> Option<u64> {
        self.by_node.get(&Node::Volume(name.to_string())).copied()
    }
}

pub struct VolumeFs {
    exports: Arc<dyn Exports>,
    inodes: Arc<Mutex<Inodes>>,
    next_ino: AtomicU64,
    handles: Arc<Mutex<HashMap<u64, Volume>>>,
    next_fh: AtomicU64,
    started: SystemTime,
    uid: u32,
    gid: u32,
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

impl VolumeFs {
    pub fn new(exports: Arc<dyn Exports>) -> VolumeFs {
        let mut inodes = Inodes::default();
        inodes.by_node.insert(Node::Root, 1);
        inodes.by_ino.insert(1, Node::Root);
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        VolumeFs {
            exports,
            inodes: Arc::new(Mutex::new(inodes)),
            next_ino: AtomicU64::new(2),
            handles: Arc::new(Mutex::new(HashMap::new())),
            next_fh: AtomicU64::new(1),
            started: SystemTime::now(),
            uid,
            gid,
        }
    }

    pub fn inodes(&self) -> Arc<Mutex<Inodes>> {
        self.inodes.clone()
    }

    /// The open files (clients' handles), shared with the mount.
    pub fn handles(&self) -> Arc<Mutex<HashMap<u64, Volume>>> {
        self.handles.clone()
    }

    fn ino(&self, node: Node) -> u64 {
        let mut t = self.inodes.lock();
        if let Some(i) = t.by_node.get(&node) {
            return *i;
        }
        let i = self.next_ino.fetch_add(1, Ordering::Relaxed);
        t.by_node.insert(node.clone(), i);
        t.by_ino.insert(i, node);
        i
    }

    fn node(&self, ino: INodeNo) -> Option<Node> {
        self.inodes.lock().by_ino.get(&ino.0).cloned()
    }

    fn pools(&self) -> Vec<String> {
        self.exports.pools()
    }

    fn attr(&self, ino: u64, node: &Node) -> Result<FileAttr, Errno> {
        let (kind, perm, size) = match node {
            Node::Root => (FileType::Directory, 0o755, 0),
            Node::Pool(p) => {
                if !self.pools().contains(p) {
                    return Err(Errno::ENOENT);
                }
                (FileType::Directory, 0o755, 0)
            }
            Node::Volume(name) => {
                let v = self.exports.open(name).ok_or(Errno::ENOENT)?;
                let size = v.size().map_err(|e| errno(&e))?;
                (
                    FileType::RegularFile,
                    if v.is_read_only() { 0o400 } else { 0o600 },
                    size,
                )
            }
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn handle(&self, fh: FileHandle) -> Result<Volume, Errno> {
        self.handles.lock().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }
}

impl Filesystem for VolumeFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        // Without FUSE_ASYNC_DIO the kernel runs an asynchronous direct
        // request (libaio, io_uring, a loop device with direct I/O) to the end
        // before it returns to the submitter: one request in flight per
        // client thread, whatever its queue depth. libfuse asks for it by
        // default; fuser does not.
        if let Err(missing) = config.add_capabilities(fuser::InitFlags::FUSE_ASYNC_DIO) {
            tracing::warn!("the kernel lacks FUSE capabilities {missing:?}: direct I/O to volume files runs one request at a time");
        }
        // Asynchronous direct requests are background requests: let a loop
        // device's queue (128) and fio's iodepth reach the dispatch threads.
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND * 3 / 4);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        let node = match self.node(parent) {
            Some(Node::Root) => Node::Pool(name.to_string()),
            Some(Node::Pool(p)) => Node::Volume(format!("{p}/{name}")),
            _ => return reply.error(Errno::ENOENT),
        };
        let ino = self.ino(node.clone());
        match self.attr(ino, &node) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self
            .node(ino)
            .ok_or(Errno::ENOENT)
            .and_then(|n| self.attr(ino.0, &n))
        {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(node) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let attr = match self.attr(ino.0, &node) {
            Ok(a) => a,
            Err(e) => return reply.error(e),
        };
        // Sizes change with `vpool vol resize`, not truncate(2).
        if size.is_some_and(|s| s != attr.size) {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&TTL, &attr)
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(Node::Volume(name)) = self.node(ino) else {
            return reply.error(Errno::EISDIR);
        };
        let Some(v) = self.exports.open(&name) else {
            return reply.error(Errno::ENOENT);
        };
        let wants_write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        if wants_write && v.is_read_only() {
            return reply.error(Errno::EROFS);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, v);
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.lock().remove(&fh.0);
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let v = match self.handle(fh) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let end = match v.size() {
            Ok(s) => s,
            Err(e) => return reply.error(errno(&e)),
        };
        // File semantics: a read at or past the end is short.
        let n = (size as u64).min(end.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; n];
        match v.read_at(&mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let v = match self.handle(fh) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        match v.size() {
            // A volume file cannot grow by writing past its end.
            Ok(s) if offset.checked_add(data.len() as u64).is_none_or(|e| e > s) => {
                return reply.error(Errno::EFBIG)
            }
            Err(e) => return reply.error(errno(&e)),
            Ok(_) => {}
        }
        match v.write_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self
            .handle(fh)
            .and_then(|v| v.flush().map_err(|e| errno(&e)))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let v = match self.handle(fh) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let r = if mode == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE {
            v.discard(offset, length)
        } else if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            v.write_zeroes(offset, length)
        } else if mode == 0 || mode == libc::FALLOC_FL_KEEP_SIZE {
            Ok(()) // thin: space is taken on write; nothing to reserve
        } else {
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
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
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (1, FileType::Directory, "..".into()),
        ];
        match self.node(ino) {
            Some(Node::Root) => {
                for p in self.pools() {
                    entries.push((self.ino(Node::Pool(p.clone())), FileType::Directory, p));
                }
            }
            Some(Node::Pool(p)) => {
                let prefix = format!("{p}/");
                for name in self.exports.list() {
                    if let Some(file) = name.strip_prefix(&prefix) {
                        entries.push((
                            self.ino(Node::Volume(name.clone())),
                            FileType::RegularFile,
                            file.to_string(),
                        ));
                    }
                }
            }
            _ => return reply.error(Errno::ENOTDIR),
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }

    // Volumes are managed through the CLI: the namespace is read-only.
    fn mknod(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _r: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }
    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EPERM);
    }
    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }
    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }
    fn rename(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }
    fn create(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EPERM);
    }
}
