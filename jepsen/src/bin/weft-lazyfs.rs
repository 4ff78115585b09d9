//! `weft-lazyfs MOUNTPOINT`: an in-memory FUSE filesystem that keeps every file's data in two
//! versions, what was written and what was last fsynced, in the spirit of LazyFS. Writing
//! anything to `MOUNTPOINT/.power-cut` is a power cut: every file's data falls back to what
//! was fsynced (`fsync` or `fdatasync` of that file). The `power-loss` nemesis SIGKILLs the node
//! whose data dir is here, cuts the power, and restarts it on what survived: an acknowledged
//! write that was never fsynced is then lost, as on a real machine, and the checkers see it.
//!
//! Directory operations (create, mkdir, rename, unlink, link) are durable at once: the model
//! is a filesystem that journals metadata synchronously and data lazily (a weaker fault than a
//! disk that also loses unsynced directory entries). Files are opened with direct I/O and
//! attributes are never cached, so the kernel holds no copy of data the cut threw away.
//!
//! Writing `full` to `MOUNTPOINT/.disk-full` makes every later write, create, mkdir,
//! fallocate and growing truncate fail with ENOSPC until `free` is written there (the
//! `disk-full` nemesis, when the data dirs are on this filesystem).
//!
//! Runs in the foreground until unmounted (`umount MOUNTPOINT`).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;
/// Writing to this file at the root cuts the power.
const POWER_CUT: &str = ".power-cut";
/// Writing `full` or `free` to this file at the root fills the disk or frees it.
const DISK_FULL: &str = ".disk-full";
const BLOCK: u64 = 4096;

struct Inode {
    kind: FileType,
    perm: u16,
    nlink: u32,
    /// Open handles: an unlinked file lives on until the last is released.
    open: u32,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    /// What a read sees: everything written.
    data: Vec<u8>,
    /// What survives a power cut: the data as of the last fsync.
    synced: Vec<u8>,
    children: BTreeMap<OsString, u64>,
}

impl Inode {
    fn new(kind: FileType, perm: u16, req: &Request<'_>) -> Inode {
        Inode {
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            open: 0,
            uid: req.uid(),
            gid: req.gid(),
            mtime: SystemTime::now(),
            data: Vec::new(),
            synced: Vec::new(),
            children: BTreeMap::new(),
        }
    }
}

struct LazyFs {
    inodes: BTreeMap<u64, Inode>,
    next: u64,
    power_cut_ino: u64,
    disk_full_ino: u64,
    full: bool,
    cuts: u64,
}

impl LazyFs {
    fn new() -> LazyFs {
        let root = Inode {
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            open: 0,
            uid: 0,
            gid: 0,
            mtime: SystemTime::now(),
            data: Vec::new(),
            synced: Vec::new(),
            children: BTreeMap::new(),
        };
        LazyFs {
            inodes: BTreeMap::from([(ROOT, root)]),
            next: ROOT + 1,
            power_cut_ino: 0,
            disk_full_ino: 0,
            full: false,
            cuts: 0,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let inode = self.inodes.get(&ino)?;
        let size = inode.data.len() as u64;
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: inode.mtime,
            mtime: inode.mtime,
            ctime: inode.mtime,
            crtime: inode.mtime,
            kind: inode.kind,
            perm: inode.perm,
            nlink: inode.nlink,
            uid: inode.uid,
            gid: inode.gid,
            rdev: 0,
            blksize: BLOCK as u32,
            flags: 0,
        })
    }

    fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.inodes.get(&parent)?.children.get(name).copied()
    }

    fn add(&mut self, parent: u64, name: &OsStr, inode: Inode) -> Result<u64, i32> {
        if self.full && !(parent == ROOT && (name == POWER_CUT || name == DISK_FULL)) {
            return Err(libc::ENOSPC);
        }
        let Some(dir) = self.inodes.get(&parent) else { return Err(libc::ENOENT) };
        if dir.kind != FileType::Directory {
            return Err(libc::ENOTDIR);
        }
        if dir.children.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        let is_dir = inode.kind == FileType::Directory;
        self.inodes.insert(ino, inode);
        let dir = self.inodes.get_mut(&parent).expect("checked above");
        dir.children.insert(name.to_os_string(), ino);
        if is_dir {
            dir.nlink += 1;
        }
        if parent == ROOT && name == POWER_CUT {
            self.power_cut_ino = ino;
        }
        if parent == ROOT && name == DISK_FULL {
            self.disk_full_ino = ino;
        }
        Ok(ino)
    }

    /// Drops one link to `ino`; frees it when none is left.
    fn unlink_ino(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.nlink = inode.nlink.saturating_sub(1);
            if (inode.nlink == 0 && inode.open == 0) || inode.kind == FileType::Directory {
                self.inodes.remove(&ino);
            }
        }
    }

    fn power_cut(&mut self) {
        self.cuts += 1;
        let mut lost = 0u64;
        for inode in self.inodes.values_mut() {
            if inode.data != inode.synced {
                lost += 1;
                inode.data = inode.synced.clone();
            }
        }
        eprintln!("weft-lazyfs: power cut {}: {lost} files lost their unsynced writes", self.cuts);
    }
}

impl Filesystem for LazyFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|ino| self.attr(ino)) {
            Some(attr) => reply.entry(&TTL, &attr, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let Some(inode) = self.inodes.get_mut(&ino) else { return reply.error(libc::ENOENT) };
        if let Some(mode) = mode {
            inode.perm = (mode & 0o7777) as u16;
        }
        if size.is_some_and(|size| size > inode.data.len() as u64) && self.full {
            return reply.error(libc::ENOSPC);
        }
        if let Some(size) = size {
            // A truncate is a data change: lost by a cut until fsynced, like a write.
            inode.data.resize(size as usize, 0);
            inode.mtime = SystemTime::now();
        }
        reply.attr(&TTL, &self.attr(ino).expect("exists"));
    }

    fn mkdir(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        match self.add(parent, name, Inode::new(FileType::Directory, (mode & 0o7777) as u16, req)) {
            Ok(ino) => reply.entry(&TTL, &self.attr(ino).expect("added"), 0),
            Err(error) => reply.error(error),
        }
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.add(parent, name, Inode::new(FileType::RegularFile, (mode & 0o7777) as u16, req)) {
            Ok(ino) => {
                self.inodes.get_mut(&ino).expect("added").open += 1;
                reply.created(&TTL, &self.attr(ino).expect("added"), 0, 0, fuser::consts::FOPEN_DIRECT_IO)
            }
            Err(error) => reply.error(error),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.inodes.get_mut(&ino) {
            Some(inode) => {
                inode.open += 1;
                reply.opened(0, fuser::consts::FOPEN_DIRECT_IO);
            }
            None => reply.error(libc::ENOENT),
        }
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.open = inode.open.saturating_sub(1);
            if inode.open == 0 && inode.nlink == 0 {
                self.inodes.remove(&ino);
            }
        }
        reply.ok();
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(inode) = self.inodes.get(&ino) else { return reply.error(libc::ENOENT) };
        let start = (offset.max(0) as usize).min(inode.data.len());
        let end = (start + size as usize).min(inode.data.len());
        reply.data(&inode.data[start..end]);
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        if ino == self.power_cut_ino && ino != 0 {
            self.power_cut();
            return reply.written(data.len() as u32);
        }
        if ino == self.disk_full_ino && ino != 0 {
            self.full = data.starts_with(b"full");
            eprintln!("weft-lazyfs: the disk is {}", if self.full { "full" } else { "free" });
            return reply.written(data.len() as u32);
        }
        if self.full {
            return reply.error(libc::ENOSPC);
        }
        let Some(inode) = self.inodes.get_mut(&ino) else { return reply.error(libc::ENOENT) };
        let start = offset.max(0) as usize;
        if inode.data.len() < start + data.len() {
            inode.data.resize(start + data.len(), 0);
        }
        inode.data[start..start + data.len()].copy_from_slice(data);
        inode.mtime = SystemTime::now();
        reply.written(data.len() as u32);
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let Some(inode) = self.inodes.get_mut(&ino) else { return reply.error(libc::ENOENT) };
        inode.synced = inode.data.clone();
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if self.full {
            return reply.error(libc::ENOSPC);
        }
        let Some(inode) = self.inodes.get_mut(&ino) else { return reply.error(libc::ENOENT) };
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return reply.error(libc::EOPNOTSUPP);
        }
        let end = (offset.max(0) + length.max(0)) as usize;
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && inode.data.len() < end {
            inode.data.resize(end, 0);
        }
        reply.ok();
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let Some(ino) = self.child(parent, name) else { return reply.error(libc::ENOENT) };
        if self.inodes[&ino].kind == FileType::Directory {
            return reply.error(libc::EISDIR);
        }
        self.inodes.get_mut(&parent).expect("parent").children.remove(name);
        self.unlink_ino(ino);
        reply.ok();
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let Some(ino) = self.child(parent, name) else { return reply.error(libc::ENOENT) };
        let inode = &self.inodes[&ino];
        if inode.kind != FileType::Directory {
            return reply.error(libc::ENOTDIR);
        }
        if !inode.children.is_empty() {
            return reply.error(libc::ENOTEMPTY);
        }
        let dir = self.inodes.get_mut(&parent).expect("parent");
        dir.children.remove(name);
        dir.nlink -= 1;
        self.inodes.remove(&ino);
        reply.ok();
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        _flags: u32,
        reply: ReplyEmpty,
    ) {
        let Some(ino) = self.child(parent, name) else { return reply.error(libc::ENOENT) };
        if !self.inodes.get(&newparent).is_some_and(|d| d.kind == FileType::Directory) {
            return reply.error(libc::ENOENT);
        }
        if let Some(replaced) = self.child(newparent, newname) {
            if replaced == ino {
                return reply.ok();
            }
            if self.inodes[&replaced].kind == FileType::Directory && !self.inodes[&replaced].children.is_empty() {
                return reply.error(libc::ENOTEMPTY);
            }
            self.unlink_ino(replaced);
        }
        self.inodes.get_mut(&parent).expect("parent").children.remove(name);
        self.inodes.get_mut(&newparent).expect("new parent").children.insert(newname.to_os_string(), ino);
        reply.ok();
    }

    fn link(&mut self, _req: &Request<'_>, ino: u64, newparent: u64, newname: &OsStr, reply: ReplyEntry) {
        if !self.inodes.contains_key(&ino) {
            return reply.error(libc::ENOENT);
        }
        let Some(dir) = self.inodes.get_mut(&newparent) else { return reply.error(libc::ENOENT) };
        if dir.children.contains_key(newname) {
            return reply.error(libc::EEXIST);
        }
        dir.children.insert(newname.to_os_string(), ino);
        self.inodes.get_mut(&ino).expect("checked").nlink += 1;
        reply.entry(&TTL, &self.attr(ino).expect("exists"), 0);
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let Some(dir) = self.inodes.get(&ino) else { return reply.error(libc::ENOENT) };
        let mut entries: Vec<(u64, FileType, OsString)> =
            vec![(ino, FileType::Directory, ".".into()), (ino, FileType::Directory, "..".into())];
        for (name, child) in &dir.children {
            let kind = self.inodes.get(child).map_or(FileType::RegularFile, |c| c.kind);
            entries.push((*child, kind, name.clone()));
        }
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(child, i as i64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let used: u64 = self.inodes.values().map(|i| (i.data.len() as u64).div_ceil(BLOCK)).sum();
        let total = (8u64 << 30) / BLOCK;
        let free = if self.full { 0 } else { total.saturating_sub(used) };
        reply.statfs(total, free, free, 1 << 20, 1 << 20, BLOCK as u32, 255, BLOCK as u32);
    }
}

fn main() {
    let Some(mountpoint) = std::env::args_os().nth(1) else {
        eprintln!("usage: weft-lazyfs MOUNTPOINT");
        std::process::exit(2);
    };
    let options = [MountOption::FSName("weft-lazyfs".into()), MountOption::DefaultPermissions];
    if let Err(error) = fuser::mount2(LazyFs::new(), &mountpoint, &options) {
        eprintln!("weft-lazyfs: mount {}: {error}", std::path::Path::new(&mountpoint).display());
        std::process::exit(1);
    }
}
