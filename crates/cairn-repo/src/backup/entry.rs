//! One directory entry of a backup, by kind: its metadata and extended
//! attributes (an unchanged file's taken from its parent), a regular file
//! unchanged since the parent or to be read, another link to an inode read
//! already, a directory, a symlink, a device node, FIFO or socket. What the
//! exclusions leave out is decided here too; reading content and walking
//! directories are the other modules'.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use cairn_format::ChunkId;
use cairn_format::tree::{Extent, Node, NodeKind, Time, XATTR_INLINE_MAX, Xattr, XattrValue};

use super::{ParentTree, Progress, Walker};
use crate::error::Result;

/// What a directory's entry needs once it has been looked at.
pub(super) enum Todo {
    Done(Node),
    Small(Node, PathBuf, fs::Metadata),
    Large(Node, PathBuf, fs::Metadata),
    /// A directory, its path, its device, and whether it is a mount
    /// point left empty by `--one-file-system`.
    Dir(Node, PathBuf, u64, bool),
    Skip,
}

fn time_of(sec: i64, nsec: i64) -> Time {
    Time {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

pub(super) fn base_node(name: Vec<u8>, md: &fs::Metadata, kind: NodeKind) -> Node {
    let linked = md.nlink() > 1 && !md.is_dir();
    Node {
        name,
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: time_of(md.mtime(), md.mtime_nsec()),
        ctime: time_of(md.ctime(), md.ctime_nsec()),
        inode: md.ino(),
        size: 0,
        device: if linked { md.dev() } else { 0 },
        nlink: if linked {
            md.nlink().min(u32::MAX as u64) as u32
        } else {
            0
        },
        xattrs: Vec::new(),
    }
}

impl Walker<'_> {
    /// The entry's extended attributes as tree values (large ones stored as
    /// data blobs). A list that cannot be read is a warning naming the
    /// entry, which is kept without them.
    pub(super) fn xattrs(&self, path: &Path) -> Result<Vec<Xattr>> {
        Ok(self.xattrs_read(path)?.0)
    }

    /// [`Self::xattrs`], and whether they could be read.
    fn xattrs_read(&self, path: &Path) -> Result<(Vec<Xattr>, bool)> {
        let raw = match crate::sys::read_xattrs(path) {
            Ok(r) => r,
            Err(e) => {
                self.progress.warn(format!(
                    "{}: cannot read extended attributes: {e} (stored without them; the next backup reads them again)",
                    path.display()
                ));
                return Ok((Vec::new(), false));
            }
        };
        let mut out = Vec::with_capacity(raw.len());
        for (name, value) in raw {
            let value = if value.len() <= XATTR_INLINE_MAX {
                XattrValue::Inline(value)
            } else {
                XattrValue::Chunks(self.store_in_memory(&value)?)
            };
            out.push(Xattr { name, value });
        }
        Ok((out, true))
    }

    /// Whether every data blob of these attribute values is still indexed;
    /// if so the backup relies on them (as [`Self::chunk_ok`]).
    fn xattr_chunks_ok(&self, xattrs: &[Xattr]) -> bool {
        self.all_indexed(xattrs.iter().flat_map(|x| x.value.chunk_ids()))
    }

    /// Whether the exclusions leave this entry out.
    fn excluded(&self, path: &Path, md: &fs::Metadata) -> bool {
        let e = self.excl;
        let is_dir = md.is_dir();
        let out = e.patterns.matches(path.as_os_str().as_bytes(), is_dir)
            || (md.is_file() && e.larger_than.is_some_and(|n| md.size() > n))
            || (is_dir && !e.if_present.is_empty() && e.tagged(path));
        if out {
            Progress::add(&self.progress.excluded, 1);
        }
        out
    }

    /// What to do with one (name, path) entry of a directory; `None` when
    /// the exclusions leave it out. `dir_dev` is the device of the
    /// directory holding it (`None` for the paths given to the backup);
    /// files up to `small_limit` bytes are read whole.
    pub(super) fn plan_entry(
        &self,
        name: Vec<u8>,
        path: PathBuf,
        parent: Option<&ParentTree>,
        dir_dev: Option<u64>,
        small_limit: u64,
    ) -> Result<Option<Todo>> {
        let md = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                self.progress
                    .warn(format!("{}: {e} (skipped)", path.display()));
                return Ok(Some(Todo::Skip));
            }
        };
        if self.excluded(&path, &md) {
            if dir_dev.is_none() {
                // Given to back up and excluded at once: said, not silent.
                self.top_excluded.fetch_add(1, Ordering::Relaxed);
                self.progress.warn(format!(
                    "{}: given to back up, but the exclusions leave it out",
                    path.display()
                ));
            }
            return Ok(None);
        }
        let ft = md.file_type();
        let prev = parent.and_then(|t| t.0.find(&name));
        let (xattrs, xattrs_read) = self.entry_xattrs(&path, &md, ft, parent, prev)?;
        let linked = md.nlink() > 1 && ft.is_file();
        if linked
            && let Some((size, mtime, ctime, extents)) =
                self.links.lock().expect("links").get(&(md.dev(), md.ino()))
            && *size == md.size()
            && *mtime == time_of(md.mtime(), md.mtime_nsec())
            && *ctime == time_of(md.ctime(), md.ctime_nsec())
        {
            let node = self.link_read_before(name, &md, prev, xattrs, *size, extents);
            return Ok(Some(Todo::Done(node)));
        }
        let mut todo = if ft.is_file() {
            let mut node = self.file_node(name, &md, xattrs);
            if self.take_unchanged(&mut node, prev, &md, linked) {
                return Ok(Some(Todo::Done(node)));
            }
            self.changed_file(node, path, md, prev, small_limit)
        } else if ft.is_dir() {
            self.dir_entry(name, path, &md, xattrs, dir_dev)
        } else if ft.is_symlink() {
            self.symlink_entry(name, &path, &md, xattrs)
        } else {
            special_entry(name, &md, ft, xattrs)
        };
        if !xattrs_read {
            // Recorded without its attributes: a ctime no file has
            // makes the next backup read it (and them) again.
            if let Todo::Done(n) | Todo::Small(n, ..) | Todo::Large(n, ..) | Todo::Dir(n, ..) =
                &mut todo
            {
                n.ctime = Time::default();
            }
        }
        Ok(Some(todo))
    }

    /// The entry's extended attributes, and whether they could be read.
    /// An unchanged file (same size, mtime, ctime, inode) has the
    /// attributes its version-2 parent recorded: setting one changes the
    /// ctime. Saves a syscall per unchanged file.
    fn entry_xattrs(
        &self,
        path: &Path,
        md: &fs::Metadata,
        ft: fs::FileType,
        parent: Option<&ParentTree>,
        prev: Option<&Node>,
    ) -> Result<(Vec<Xattr>, bool)> {
        let known = parent.is_some_and(|t| t.1)
            && ft.is_file()
            && prev.is_some_and(|p| {
                matches!(p.kind, NodeKind::File { .. })
                    && p.size == md.size()
                    && p.mtime == time_of(md.mtime(), md.mtime_nsec())
                    && p.ctime == time_of(md.ctime(), md.ctime_nsec())
                    && p.inode == md.ino()
                    && self.xattr_chunks_ok(&p.xattrs)
            });
        match prev {
            Some(p) if known => Ok((p.xattrs.clone(), true)),
            _ => self.xattrs_read(path),
        }
    }

    /// Another link to an inode read in this backup already (`size` and
    /// `extents` as read then): counted as new or changed, as it was, but
    /// not read again.
    fn link_read_before(
        &self,
        name: Vec<u8>,
        md: &fs::Metadata,
        prev: Option<&Node>,
        xattrs: Vec<Xattr>,
        size: u64,
        extents: &[Extent],
    ) -> Node {
        let mut node = base_node(
            name,
            md,
            NodeKind::File {
                extents: extents.to_vec(),
            },
        );
        node.size = size;
        node.xattrs = xattrs;
        Progress::add(&self.progress.bytes_total, md.size());
        let unchanged = prev.is_some_and(|p| {
            p.size == node.size
                && p.mtime == node.mtime
                && p.ctime == node.ctime
                && p.inode == node.inode
        });
        let counter = match prev {
            _ if unchanged => &self.progress.files_unchanged,
            Some(_) => &self.progress.files_changed,
            None => &self.progress.files_new,
        };
        Progress::add(counter, 1);
        node
    }

    /// A regular file's node, its content not yet known (counted in the
    /// bytes seen).
    fn file_node(&self, name: Vec<u8>, md: &fs::Metadata, xattrs: Vec<Xattr>) -> Node {
        let mut node = base_node(name, md, NodeKind::File { extents: vec![] });
        node.size = md.size();
        Progress::add(&self.progress.bytes_total, md.size());
        node.xattrs = xattrs;
        node
    }

    /// Whether a regular file is unchanged since the parent (same size,
    /// mtime, ctime and inode, every chunk still indexed); if so `node`
    /// takes the parent's extents, counted unchanged (and remembered for
    /// its other links).
    fn take_unchanged(
        &self,
        node: &mut Node,
        prev: Option<&Node>,
        md: &fs::Metadata,
        linked: bool,
    ) -> bool {
        if let Some(p) = prev
            && let NodeKind::File { extents } = &p.kind
            && p.size == node.size
            && p.mtime == node.mtime
            && p.ctime == node.ctime
            && p.inode == node.inode
            && self.chunk_ok(extents)
        {
            node.kind = NodeKind::File {
                extents: extents.clone(),
            };
            Progress::add(&self.progress.files_unchanged, 1);
            if linked && let NodeKind::File { extents } = &node.kind {
                self.links.lock().expect("links").insert(
                    (md.dev(), md.ino()),
                    (node.size, node.mtime, node.ctime, extents.clone()),
                );
            }
            return true;
        }
        false
    }

    /// A new or changed regular file, to be read whole (small) or through
    /// a window (large).
    fn changed_file(
        &self,
        node: Node,
        path: PathBuf,
        md: fs::Metadata,
        prev: Option<&Node>,
        small_limit: u64,
    ) -> Todo {
        if prev.is_some() {
            Progress::add(&self.progress.files_changed, 1);
        } else {
            Progress::add(&self.progress.files_new, 1);
        }
        if self.progress.list_changes {
            let mark = if prev.is_some() { 'M' } else { '+' };
            self.progress
                .changes
                .lock()
                .expect("changes")
                .push((mark, path.clone()));
        }
        if md.size() <= small_limit {
            Todo::Small(node, path, md)
        } else {
            Todo::Large(node, path, md)
        }
    }

    /// A directory, its tree to be made; a mount point crossed under
    /// `--one-file-system` is kept empty (and counted as excluded).
    fn dir_entry(
        &self,
        name: Vec<u8>,
        path: PathBuf,
        md: &fs::Metadata,
        xattrs: Vec<Xattr>,
        dir_dev: Option<u64>,
    ) -> Todo {
        let mut node = base_node(
            name,
            md,
            NodeKind::Dir {
                tree: ChunkId::default(),
            },
        );
        node.xattrs = xattrs;
        let cross = self.excl.one_file_system && dir_dev.is_some_and(|d| d != md.dev());
        if cross {
            Progress::add(&self.progress.excluded, 1);
        }
        Todo::Dir(node, path, md.dev(), cross)
    }

    /// A symlink with its target; one that cannot be read is skipped
    /// (warned).
    fn symlink_entry(
        &self,
        name: Vec<u8>,
        path: &Path,
        md: &fs::Metadata,
        xattrs: Vec<Xattr>,
    ) -> Todo {
        match fs::read_link(path) {
            Ok(t) => {
                let target = t.as_os_str().as_bytes().to_vec();
                let mut node = base_node(name, md, NodeKind::Symlink { target });
                node.size = t.as_os_str().len() as u64;
                node.xattrs = xattrs;
                Todo::Done(node)
            }
            Err(e) => {
                self.progress
                    .warn(format!("{}: {e} (skipped)", path.display()));
                Todo::Skip
            }
        }
    }
}

/// A FIFO, device node or socket.
fn special_entry(name: Vec<u8>, md: &fs::Metadata, ft: fs::FileType, xattrs: Vec<Xattr>) -> Todo {
    let kind = if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_char_device() {
        NodeKind::CharDevice { rdev: md.rdev() }
    } else if ft.is_block_device() {
        NodeKind::BlockDevice { rdev: md.rdev() }
    } else {
        NodeKind::Socket
    };
    let mut node = base_node(name, md, kind);
    node.xattrs = xattrs;
    Todo::Done(node)
}
