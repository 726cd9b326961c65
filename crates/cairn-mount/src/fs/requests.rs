//! Answers to the kernel's FUSE requests (lookup, attributes, links,
//! extended attributes, open/read/release, directory listings, statfs),
//! from the inode table of [`CairnFs`].

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fuser::{
    Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};

use super::{CairnFs, Handle, Inode, Kind, REFRESH_MIN_INTERVAL};

/// The filesystem as the FUSE session owns it, shared with the refresher.
pub struct FsHandle(pub Arc<CairnFs>);

impl std::ops::Deref for FsHandle {
    type Target = CairnFs;
    fn deref(&self) -> &CairnFs {
        &self.0
    }
}

impl Filesystem for FsHandle {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // POSIX ACLs travel as the extended attributes they are: with this
        // the kernel asks for system.posix_acl_* instead of refusing them.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_POSIX_ACL);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let p = u64::from(parent);
        let name = name.as_bytes();
        let mut found = self.find(p, name);
        if matches!(found, Ok(None)) && self.inode(p).is_some_and(|i| i.virtual_) {
            // A snapshot made after the last refresh.
            if self.refresh(REFRESH_MIN_INTERVAL).is_ok() {
                found = self.find(p, name);
            }
        }
        match found {
            Ok(Some(ino)) => match self.inode(ino) {
                Some(i) => reply.entry(CairnFs::ttl(&i), &i.attr, Generation(0)),
                None => reply.error(Errno::ENOENT),
            },
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inode(u64::from(ino)) {
            Some(i) => reply.attr(CairnFs::ttl(&i), &i.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.inode(u64::from(ino)).as_deref() {
            Some(Inode {
                kind: Kind::Link(t),
                ..
            }) => reply.data(t),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(inode) = self.inode(u64::from(ino)) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let Some(x) = inode.xattrs.iter().find(|x| x.name == name.as_bytes()) else {
            reply.error(Errno::NO_XATTR);
            return;
        };
        let value = match self.repo.xattr_value(&x.value) {
            Ok(v) => v,
            Err(e) => {
                eprintln!(
                    "cairn mount: {}: extended attribute {}: {e}",
                    inode.path,
                    String::from_utf8_lossy(&x.name)
                );
                reply.error(Errno::EIO);
                return;
            }
        };
        if size == 0 {
            reply.size(value.len() as u32);
        } else if value.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(&value);
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(inode) = self.inode(u64::from(ino)) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let mut list = Vec::new();
        for x in &inode.xattrs {
            list.extend_from_slice(&x.name);
            list.push(0);
        }
        if size == 0 {
            reply.size(list.len() as u32);
        } else if list.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(&list);
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        match self.inode(u64::from(ino)).as_deref() {
            Some(Inode {
                kind: Kind::File(_),
                ..
            }) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.handles.lock().expect("handles").insert(
                    fh,
                    Arc::new(Handle {
                        next: AtomicU64::new(0),
                    }),
                );
                // Content never changes: keep the kernel's page cache across opens.
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Some(Inode {
                kind: Kind::Dir { .. },
                ..
            }) => reply.error(Errno::EISDIR),
            Some(_) => reply.error(Errno::EACCES),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(inode) = self.inode(u64::from(ino)) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let Kind::File(layout) = &inode.kind else {
            reply.error(Errno::EISDIR);
            return;
        };
        let handle = self.handles.lock().expect("handles").get(&fh.0).cloned();
        let sequential = handle.as_ref().is_some_and(|h| {
            // The kernel's own read-ahead issues reads slightly out of order;
            // anything starting within 4 MiB of the last end counts.
            let prev = h.next.swap(offset + size as u64, Ordering::Relaxed);
            offset.abs_diff(prev) <= 4 * 1024 * 1024
        });
        self.read_file(&inode, layout, offset, size, sequential, reply);
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
        self.handles.lock().expect("handles").remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let ino = u64::from(ino);
        let Some(inode) = self.inode(ino) else {
            reply.error(Errno::ENOENT);
            return;
        };
        if offset == 0 && inode.virtual_ {
            if let Err(e) = self.refresh(Duration::ZERO) {
                eprintln!("cairn mount: cannot refresh the snapshot list: {e}");
            }
        }
        let listing = match self.listing(ino) {
            Ok(l) => l,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        let dots = [
            (b".".as_slice(), ino, FileType::Directory),
            (b"..".as_slice(), inode.parent, FileType::Directory),
        ];
        let all = dots
            .iter()
            .map(|(n, i, t)| (*n, *i, *t))
            .chain(listing.iter().map(|(n, i, t)| (n.as_slice(), *i, *t)));
        for (k, (name, child, ft)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (k + 1) as u64, ft, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.table.lock().expect("inode table").inodes.len() as u64;
        reply.statfs(0, 0, 0, files, 0, 4096, 4096, 4096);
    }
}
