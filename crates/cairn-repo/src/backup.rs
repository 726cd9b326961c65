//! Backing up file trees and streams.
//!
//! Directories are walked on the calling thread in name order. Within a
//! directory, small files are read, chunked and sealed in parallel (one rayon
//! task each, no nested parallelism, so memory stays bounded); large files are
//! taken one at a time through a fixed window with their chunks processed in
//! parallel. A file whose size, mtime, ctime and inode match the parent
//! snapshot is not read at all. The kernel is asked to read ahead: all small
//! files of a directory at once, large files 32 MiB ahead of the reader (on a
//! cold cache, reading 50,000 small files one per worker at a time left the
//! cores waiting on the device most of the time).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cairn_chunk::{ChunkerParams, process_window};

/// Reads a file front to back, asking the kernel to read ahead of it
/// ([`PREFETCH`] bytes, renewed every half of that), so that the device works
/// while the window before is cut and encoded.
struct Prefetching<'f> {
    file: &'f File,
    pos: u64,
    asked: u64,
}

/// Bytes of a large file asked for ahead of the reader.
const PREFETCH: u64 = 32 << 20;

impl Read for Prefetching<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.asked < self.pos + PREFETCH / 2 {
            crate::sys::prefetch_range(self.file, self.asked, self.pos + PREFETCH - self.asked);
            self.asked = self.pos + PREFETCH;
        }
        let n = self.file.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Window of a streamed file or dump; two are in use per stream (one being
/// read and cut, one being encoded), 16 MiB together as before the overlap.
const STREAM_WINDOW: usize = 8 << 20;
use cairn_format::snapshot::{Snapshot, Summary};
use cairn_format::tree::{Extent, Node, NodeKind, Time, Tree, XATTR_INLINE_MAX, Xattr, XattrValue};
use cairn_format::{BlobKind, ChunkId, SnapshotId};
use rayon::prelude::*;

use crate::error::{RepoError, Result};
use crate::indexed::IndexedRepository;
use crate::packer::{Packer, PackerStats};
use crate::repo::now_ns;
use crate::select::Exclusions;

/// Which snapshot to compare against for change detection.
#[derive(Clone, Debug, Default)]
pub enum ParentChoice {
    /// The latest snapshot with the same service, host and paths.
    #[default]
    Auto,
    /// None: read every file.
    None,
    /// This snapshot.
    Id(SnapshotId),
}

/// Settings of one backup.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Service name ("" for none).
    pub service: String,
    /// Host name recorded in the snapshot.
    pub hostname: String,
    /// User name recorded in the snapshot.
    pub username: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Parent selection.
    pub parent: ParentChoice,
    /// Group id (stack backups).
    pub group: Option<[u8; 16]>,
    /// Logical fingerprints recorded by a datastore adapter.
    pub fingerprints: Vec<(String, Vec<u8>)>,
    /// What to leave out.
    pub exclusions: Exclusions,
}

/// Live counters of a running backup (polled by progress displays).
#[derive(Default, Debug)]
pub struct Progress {
    /// Files not in the parent.
    pub files_new: AtomicU64,
    /// Files changed since the parent.
    pub files_changed: AtomicU64,
    /// Files skipped as unchanged.
    pub files_unchanged: AtomicU64,
    /// Directories.
    pub dirs: AtomicU64,
    /// Content bytes read.
    pub bytes_read: AtomicU64,
    /// Logical bytes of all files seen.
    pub bytes_total: AtomicU64,
    /// Sources skipped because of errors.
    pub errors: AtomicU64,
    /// Entries left out by the exclusions (an excluded directory counts
    /// once, whatever it holds).
    pub excluded: AtomicU64,
    /// Messages about skipped sources.
    pub warnings: Mutex<Vec<String>>,
}

impl Progress {
    fn warn(&self, msg: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.warnings.lock().expect("warnings").push(msg);
    }
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Result of a backup.
#[derive(Debug)]
pub struct BackupResult {
    /// The new snapshot's id.
    pub id: SnapshotId,
    /// The new snapshot.
    pub snapshot: Snapshot,
    /// What the session wrote.
    pub stats: PackerStats,
    /// Sources that were skipped.
    pub warnings: Vec<String>,
}

struct Walker<'a> {
    repo: &'a IndexedRepository,
    packer: &'a Packer<'a>,
    progress: &'a Progress,
    params: ChunkerParams,
    excl: &'a Exclusions,
    /// Content of inodes with several links read so far in this backup, by
    /// (device, inode), with the size, mtime and ctime it was read at: the
    /// other links reuse it instead of reading the file again.
    links: Mutex<HashMap<(u64, u64), ReadInode>>,
    /// Paths given to the backup that the exclusions left out.
    top_excluded: AtomicU64,
}

/// A parent snapshot's tree, and whether it records extended attributes
/// (version 2): only then may an unchanged file's be taken from it.
type ParentTree = (Tree, bool);

/// An inode's content as read: size, mtime and ctime when read, extents.
type ReadInode = (u64, Time, Time, Vec<Extent>);

#[derive(Default)]
struct Trie {
    target: bool,
    children: BTreeMap<Vec<u8>, Trie>,
}

/// Make a path absolute and lexically clean (no `.` or `..`).
pub fn clean_absolute(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| RepoError::io(p, e))?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

fn time_of(sec: i64, nsec: i64) -> Time {
    Time {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

fn base_node(name: Vec<u8>, md: &fs::Metadata, kind: NodeKind) -> Node {
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
    /// Whether every chunk of an unchanged file is still indexed; if so the
    /// backup relies on them (recorded for the prune protocol, format-spec §5.1).
    fn chunk_ok(&self, extents: &[Extent]) -> bool {
        self.all_indexed(extents.iter().filter_map(|e| match e {
            Extent::Chunk { id, .. } => Some(*id),
            Extent::Hole { .. } => None,
        }))
    }

    /// Whether every one of these data blobs is still indexed; if so the
    /// backup relies on them (noted as reused).
    fn all_indexed(&self, ids: impl Iterator<Item = ChunkId> + Clone) -> bool {
        let ok = {
            let idx = self.repo.index.read().expect("index lock");
            ids.clone().all(|id| idx.contains(BlobKind::Data, &id))
        };
        if ok {
            self.packer.note_reused(BlobKind::Data, ids);
        }
        ok
    }

    /// Cut bytes held in memory into chunks and store them.
    fn store_in_memory(&self, buf: &[u8]) -> Result<Vec<(ChunkId, u32)>> {
        let mut cuts = Vec::new();
        self.params.cut(buf, true, &mut cuts);
        cuts.into_iter()
            .map(|c| {
                Ok((
                    self.store_chunk(&buf[c.offset..c.offset + c.len])?,
                    c.len as u32,
                ))
            })
            .collect()
    }

    /// [`Self::store_in_memory`] as a file's extents.
    fn in_memory_extents(&self, buf: &[u8]) -> Result<Vec<Extent>> {
        Ok(self
            .store_in_memory(buf)?
            .into_iter()
            .map(|(id, len)| Extent::Chunk { id, len })
            .collect())
    }

    /// Store one chunk that is entirely in memory.
    fn store_chunk(&self, data: &[u8]) -> Result<ChunkId> {
        let id = self.packer.encoder.hasher.id(data);
        if self.packer.claim(BlobKind::Data, &id) {
            self.packer
                .encoder
                .encode(BlobKind::Data, id, data, |b| self.packer.add(b))?;
        }
        Ok(id)
    }

    /// Chunk a stream through a window; ids are processed in parallel.
    fn stream_extents(&self, reader: impl Read, out: &mut Vec<Extent>) -> Result<u64> {
        let mut total = 0u64;
        // Reading and cutting the next window overlaps with the encoding of
        // this one, which runs on a plain helper thread: a rayon worker (the
        // walk of `backup_paths`) waiting in a parallel call would take up
        // other walk tasks meanwhile, each with windows of its own, and memory
        // would no longer be bounded.
        cairn_chunk::run_overlapped(self.params, STREAM_WINDOW, reader, |window, cuts| {
            let ids = process_window(
                &self.packer.encoder,
                window,
                cuts,
                |id| self.packer.claim(BlobKind::Data, id),
                |b| self.packer.add(b),
            )?;
            for (id, c) in ids.into_iter().zip(cuts) {
                out.push(Extent::Chunk {
                    id,
                    len: c.len as u32,
                });
            }
            total += window.len() as u64;
            self.progress
                .bytes_read
                .fetch_add(window.len() as u64, Ordering::Relaxed);
            Ok::<(), RepoError>(())
        })?;
        Ok(total)
    }

    /// Read a regular file into extents. Returns the extents (their lengths add
    /// up to what was actually read, which may differ from `md.size()` if the
    /// file changed while being read).
    fn read_file(&self, path: &Path, md: &fs::Metadata, small: bool) -> Result<Vec<Extent>> {
        let mut f = File::open(path).map_err(|e| RepoError::io(path, e))?;
        let size = md.size();
        let mut extents = Vec::new();
        if size == 0 {
            // procfs and sysfs report 0 bytes for files that read data:
            // what is read is stored (an empty file costs one read more).
            let limit = self.params.max as u64;
            let mut buf = Vec::new();
            (&f).take(limit + 1)
                .read_to_end(&mut buf)
                .map_err(|e| RepoError::io(path, e))?;
            if buf.is_empty() {
                return Ok(extents);
            }
            if buf.len() as u64 <= limit {
                // All of it (read to the end): no further read, which
                // /proc/sys refuses for large buffers (ENOMEM).
                Progress::add(&self.progress.bytes_read, buf.len() as u64);
                return self.in_memory_extents(&buf);
            }
            // More than a chunk: streamed (which counts what it reads).
            let rest = std::io::Cursor::new(buf).chain(&f);
            self.stream_extents(rest, &mut extents)
                .map_err(|e| match e {
                    RepoError::Io { source, .. } => RepoError::io(path, source),
                    other => other,
                })?;
            return Ok(extents);
        }
        let sparse = md.blocks() * 512 < size;
        if small && !sparse {
            let mut buf = Vec::with_capacity(size as usize);
            f.read_to_end(&mut buf)
                .map_err(|e| RepoError::io(path, e))?;
            Progress::add(&self.progress.bytes_read, buf.len() as u64);
            return self.in_memory_extents(&buf);
        }
        let regions = if sparse {
            crate::sys::data_regions(&f, size).map_err(|e| RepoError::io(path, e))?
        } else {
            vec![(0, size)]
        };
        let mut pos = 0u64;
        let mut short = false;
        for (start, end) in regions {
            if start > pos {
                extents.push(Extent::Hole { len: start - pos });
            }
            f.seek(SeekFrom::Start(start))
                .map_err(|e| RepoError::io(path, e))?;
            let reader = Prefetching {
                file: &f,
                pos: start,
                asked: start,
            };
            let got = self
                .stream_extents(reader.take(end - start), &mut extents)
                .map_err(|e| match e {
                    RepoError::Io { source, .. } => RepoError::io(path, source),
                    other => other,
                })?;
            pos = start + got;
            if got < end - start {
                // The file shrank while it was read, or never held what its
                // size said (sysfs reports 4096 for a few bytes): stored as
                // read, without a hole to pad it to the size seen.
                short = true;
                break;
            }
        }
        if !short && pos < size && extents.iter().map(Extent::len).sum::<u64>() == pos {
            // Trailing hole (only when the file did not shrink).
            let real_len = f.metadata().map(|m| m.size()).unwrap_or(pos);
            if real_len > pos {
                extents.push(Extent::Hole {
                    len: real_len.min(size) - pos,
                });
            }
        }
        Ok(extents)
    }

    /// The entry's extended attributes as tree values (large ones stored as
    /// data blobs). A list that cannot be read is a warning naming the
    /// entry, which is kept without them.
    fn xattrs(&self, path: &Path) -> Result<Vec<Xattr>> {
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

    /// Nodes for a list of (name, path) entries of one directory, in name
    /// order. `dir_dev` is the device of the directory holding them (`None`
    /// for the paths given to the backup).
    fn nodes_for(
        &self,
        mut entries: Vec<(Vec<u8>, PathBuf)>,
        parent: Option<&ParentTree>,
        dir_dev: Option<u64>,
    ) -> Result<Vec<Node>> {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let small_limit = self.params.max as u64;
        enum Todo {
            Done(Node),
            Small(Node, PathBuf, fs::Metadata),
            Large(Node, PathBuf, fs::Metadata),
            /// A directory, its path, its device, and whether it is a mount
            /// point left empty by `--one-file-system`.
            Dir(Node, PathBuf, u64, bool),
            Skip,
        }
        let mut todo = Vec::with_capacity(entries.len());
        for (name, path) in entries {
            let md = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    self.progress
                        .warn(format!("{}: {e} (skipped)", path.display()));
                    todo.push(Todo::Skip);
                    continue;
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
                continue;
            }
            let ft = md.file_type();
            let prev = parent.and_then(|t| t.0.find(&name));
            // An unchanged file (same size, mtime, ctime, inode) has the
            // attributes its version-2 parent recorded: setting one changes
            // the ctime. Saves a syscall per unchanged file.
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
            let (xattrs, xattrs_read) = match prev {
                Some(p) if known => (p.xattrs.clone(), true),
                _ => self.xattrs_read(&path)?,
            };
            let at = todo.len();
            let linked = md.nlink() > 1 && ft.is_file();
            if linked
                && let Some((size, mtime, ctime, extents)) =
                    self.links.lock().expect("links").get(&(md.dev(), md.ino()))
                && *size == md.size()
                && *mtime == time_of(md.mtime(), md.mtime_nsec())
                && *ctime == time_of(md.ctime(), md.ctime_nsec())
            {
                // Another link to an inode read in this backup already:
                // counted as new or changed, as it was, but not read again.
                let mut node = base_node(
                    name,
                    &md,
                    NodeKind::File {
                        extents: extents.clone(),
                    },
                );
                node.size = *size;
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
                todo.push(Todo::Done(node));
                continue;
            }
            if ft.is_file() {
                let mut node = base_node(name, &md, NodeKind::File { extents: vec![] });
                node.size = md.size();
                Progress::add(&self.progress.bytes_total, md.size());
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
                    node.xattrs = xattrs;
                    if linked && let NodeKind::File { extents } = &node.kind {
                        self.links.lock().expect("links").insert(
                            (md.dev(), md.ino()),
                            (node.size, node.mtime, node.ctime, extents.clone()),
                        );
                    }
                    todo.push(Todo::Done(node));
                    continue;
                }
                if prev.is_some() {
                    Progress::add(&self.progress.files_changed, 1);
                } else {
                    Progress::add(&self.progress.files_new, 1);
                }
                node.xattrs = xattrs;
                if md.size() <= small_limit {
                    todo.push(Todo::Small(node, path, md));
                } else {
                    todo.push(Todo::Large(node, path, md));
                }
            } else if ft.is_dir() {
                let mut node = base_node(
                    name,
                    &md,
                    NodeKind::Dir {
                        tree: ChunkId::default(),
                    },
                );
                node.xattrs = xattrs;
                let cross = self.excl.one_file_system && dir_dev.is_some_and(|d| d != md.dev());
                if cross {
                    Progress::add(&self.progress.excluded, 1);
                }
                todo.push(Todo::Dir(node, path, md.dev(), cross));
            } else if ft.is_symlink() {
                match fs::read_link(&path) {
                    Ok(t) => {
                        let target = t.as_os_str().as_bytes().to_vec();
                        let mut node = base_node(name, &md, NodeKind::Symlink { target });
                        node.size = t.as_os_str().len() as u64;
                        node.xattrs = xattrs;
                        todo.push(Todo::Done(node));
                    }
                    Err(e) => {
                        self.progress
                            .warn(format!("{}: {e} (skipped)", path.display()));
                        todo.push(Todo::Skip);
                    }
                }
            } else {
                let kind = if ft.is_fifo() {
                    NodeKind::Fifo
                } else if ft.is_char_device() {
                    NodeKind::CharDevice { rdev: md.rdev() }
                } else if ft.is_block_device() {
                    NodeKind::BlockDevice { rdev: md.rdev() }
                } else {
                    NodeKind::Socket
                };
                let mut node = base_node(name, &md, kind);
                node.xattrs = xattrs;
                todo.push(Todo::Done(node));
            }
            if !xattrs_read {
                // Recorded without its attributes: a ctime no file has
                // makes the next backup read it (and them) again.
                if let Some(
                    Todo::Done(n) | Todo::Small(n, ..) | Todo::Large(n, ..) | Todo::Dir(n, ..),
                ) = todo.get_mut(at)
                {
                    n.ctime = Time::default();
                }
            }
        }

        let fill = |node: &mut Node, path: &Path, md: &fs::Metadata, small: bool| -> Result<bool> {
            match self.read_file(path, md, small) {
                Ok(ext) => {
                    node.size = ext.iter().map(Extent::len).sum();
                    if node.nlink > 1 {
                        self.links.lock().expect("links").insert(
                            (md.dev(), md.ino()),
                            (node.size, node.mtime, node.ctime, ext.clone()),
                        );
                    }
                    node.kind = NodeKind::File { extents: ext };
                    // Like tar and borg: a file written to while it was read
                    // is stored as read (the node keeps the times seen
                    // before, so the next backup reads it again) and named.
                    // Not on procfs or sysfs, whose inode times are made up
                    // anew whenever the kernel re-creates the inode.
                    if let Ok(now) = fs::symlink_metadata(path)
                        && (now.size() != md.size()
                            || now.mtime() != md.mtime()
                            || now.mtime_nsec() != md.mtime_nsec()
                            || now.ctime() != md.ctime()
                            || now.ctime_nsec() != md.ctime_nsec()
                            || now.ino() != md.ino())
                        && !crate::sys::is_pseudo_fs(path)
                    {
                        self.progress.warn(format!(
                            "{}: file changed as it was read; stored as read (its content may mix old and new data), the next backup reads it again",
                            path.display()
                        ));
                    }
                    Ok(true)
                }
                Err(RepoError::Io { path, source }) => {
                    self.progress
                        .warn(format!("{}: {source} (skipped)", path.display()));
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        };

        // Start reading every small file of this directory at once: on a
        // cold cache the device then serves them together instead of one
        // read per worker at a time. Each is closed again at once (opened a
        // second time to be read): keeping a directory's files open could
        // exhaust the descriptor limit.
        for t in &todo {
            if let Todo::Small(_, path, _) = t
                && let Ok(f) = File::open(path)
            {
                crate::sys::prefetch(&f);
            }
        }
        // Small files in parallel; each task is sequential inside.
        todo.par_iter_mut().try_for_each(|t| -> Result<()> {
            if let Todo::Small(node, path, md) = t
                && !fill(node, path, md, true)?
            {
                *t = Todo::Skip;
            }
            Ok(())
        })?;

        // Subdirectories in parallel (the walk runs on its own pool, see
        // `backup_paths`); their trees are put in place below, in order.
        let mut subtrees: HashMap<usize, Option<ChunkId>> = todo
            .par_iter()
            .enumerate()
            .filter_map(|(i, t)| match t {
                Todo::Dir(n, path, dev, cross) => Some((i, n, path, *dev, *cross)),
                _ => None,
            })
            .map(
                |(i, n, path, dev, cross)| -> Result<(usize, Option<ChunkId>)> {
                    if cross {
                        // A mount point: kept, without what is mounted there.
                        return Ok((i, Some(self.packer.store_tree(&Tree::default())?)));
                    }
                    let prev_tree = match parent.and_then(|t| t.0.find(&n.name)) {
                        Some(Node {
                            kind: NodeKind::Dir { tree },
                            ..
                        }) => self
                            .repo
                            .load_tree_versioned(tree)
                            .ok()
                            .map(|(t, v2)| (t, v2 && parent.is_some_and(|p| p.1))),
                        _ => None,
                    };
                    Ok((i, self.backup_dir(path, prev_tree.as_ref(), dev)?))
                },
            )
            .collect::<Result<_>>()?;

        let mut nodes = Vec::with_capacity(todo.len());
        for (i, t) in todo.into_iter().enumerate() {
            match t {
                Todo::Done(n) | Todo::Small(n, _, _) => nodes.push(n),
                Todo::Large(mut n, path, md) => {
                    if fill(&mut n, &path, &md, false)? {
                        nodes.push(n);
                    }
                }
                Todo::Dir(mut n, ..) => {
                    if let Some(id) = subtrees.remove(&i).flatten() {
                        n.kind = NodeKind::Dir { tree: id };
                        nodes.push(n);
                    }
                }
                Todo::Skip => {}
            }
        }
        Ok(nodes)
    }

    /// Back up a directory; `None` if it could not be read (warned).
    fn backup_dir(
        &self,
        path: &Path,
        parent: Option<&ParentTree>,
        dev: u64,
    ) -> Result<Option<ChunkId>> {
        match self.dir_nodes(path, parent, dev)? {
            Some(nodes) => Ok(Some(self.packer.store_tree(&Tree { nodes })?)),
            None => Ok(None),
        }
    }

    /// The nodes of a directory's entries; `None` if it could not be read (warned).
    fn dir_nodes(
        &self,
        path: &Path,
        parent: Option<&ParentTree>,
        dev: u64,
    ) -> Result<Option<Vec<Node>>> {
        Progress::add(&self.progress.dirs, 1);
        let rd = match fs::read_dir(path) {
            Ok(rd) => rd,
            Err(e) => {
                self.progress
                    .warn(format!("{}: {e} (skipped)", path.display()));
                return Ok(None);
            }
        };
        let mut entries = Vec::new();
        for e in rd {
            match e {
                Ok(e) => entries.push((e.file_name().as_bytes().to_vec(), e.path())),
                Err(e) => self.progress.warn(format!("{}: {e}", path.display())),
            }
        }
        Ok(Some(self.nodes_for(entries, parent, Some(dev))?))
    }

    /// Build the synthetic directories above the backed-up paths.
    fn backup_trie(
        &self,
        trie: &Trie,
        path: &Path,
        parent: Option<&ParentTree>,
    ) -> Result<Vec<Node>> {
        let mut targets = Vec::new();
        let mut nodes = Vec::new();
        for (name, child) in &trie.children {
            let cpath = path.join(OsStr::from_bytes(name));
            if child.target {
                targets.push((name.clone(), cpath));
                continue;
            }
            // A directory above a backed-up path: the walk goes through it,
            // so a symlink here (`/home -> /data/home`) is recorded as the
            // directory it leads to, not with the link's own 0777.
            let md = fs::metadata(&cpath).map_err(|e| RepoError::io(&cpath, e))?;
            let prev_tree = match parent.and_then(|t| t.0.find(name)) {
                Some(Node {
                    kind: NodeKind::Dir { tree },
                    ..
                }) => self
                    .repo
                    .load_tree_versioned(tree)
                    .ok()
                    .map(|(t, v2)| (t, v2 && parent.is_some_and(|p| p.1))),
                _ => None,
            };
            let sub = self.backup_trie(child, &cpath, prev_tree.as_ref())?;
            let id = self.packer.store_tree(&Tree { nodes: sub })?;
            let mut node = base_node(name.clone(), &md, NodeKind::Dir { tree: id });
            let real = fs::canonicalize(&cpath).unwrap_or(cpath.clone());
            node.xattrs = self.xattrs(&real)?;
            nodes.push(node);
        }
        nodes.extend(self.nodes_for(targets, parent, None)?);
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }
}

impl IndexedRepository {
    fn walker<'a>(
        &'a self,
        packer: &'a Packer<'a>,
        progress: &'a Progress,
        excl: &'a Exclusions,
    ) -> Walker<'a> {
        Walker {
            repo: self,
            packer,
            progress,
            params: self.chunker_params(),
            excl,
            links: Mutex::new(HashMap::new()),
            top_excluded: AtomicU64::new(0),
        }
    }

    fn chunker_params(&self) -> ChunkerParams {
        let c = &self.repo.config;
        ChunkerParams {
            min: c.chunk_min,
            avg: c.chunk_avg,
            max: c.chunk_max,
            seed: self.repo.key.chunker_seed(),
        }
    }

    fn find_parent(
        &self,
        opts: &BackupOptions,
        paths: &[Vec<u8>],
    ) -> Result<Option<(SnapshotId, ParentTree)>> {
        let id = match &opts.parent {
            ParentChoice::None => return Ok(None),
            ParentChoice::Id(id) => Some(*id),
            ParentChoice::Auto => self
                .repo
                .list_snapshots_readable()?
                .0
                .into_iter()
                .rev()
                .find(|(_, s)| {
                    s.service == opts.service && s.hostname == opts.hostname && s.paths == paths
                })
                .map(|(id, _)| id),
        };
        match id {
            None => Ok(None),
            Some(id) => {
                // The parent only saves reading unchanged files: if it cannot be
                // read (forgotten or being pruned meanwhile), read everything.
                // Its attributes stand for an unchanged file's only if the
                // same user read them: another (root after a service user)
                // may see namespaces the first could not list.
                let tree = self.repo.load_snapshot(&id).and_then(|s| {
                    let same_user = s.username == opts.username;
                    self.load_tree_versioned(&s.tree)
                        .map(|(t, v2)| (t, v2 && same_user))
                });
                Ok(tree.ok().map(|t| (id, t)))
            }
        }
    }

    /// Back up files and directories. Unreadable entries are skipped and
    /// reported in `warnings`; a missing top-level path is an error.
    pub fn backup_paths(
        &self,
        paths: &[PathBuf],
        opts: &BackupOptions,
        progress: &Progress,
    ) -> Result<BackupResult> {
        let start = Instant::now();
        self.writer_session("backup")?;
        let time_ns = now_ns();
        let mut abs = Vec::new();
        for p in paths {
            let a = clean_absolute(p)?;
            fs::symlink_metadata(&a).map_err(|e| RepoError::io(&a, e))?;
            abs.push(a);
        }
        abs.sort();
        abs.dedup();
        if abs.is_empty() {
            return Err(RepoError::InvalidInput("no paths to back up".into()));
        }
        let path_bytes: Vec<Vec<u8>> = abs
            .iter()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .collect();
        let parent = self.find_parent(opts, &path_bytes)?;
        let mut trie = Trie::default();
        for a in &abs {
            let mut t = &mut trie;
            for c in a.components() {
                if let Component::Normal(n) = c {
                    if t.target {
                        break; // already inside a backed-up path
                    }
                    t = t.children.entry(n.as_bytes().to_vec()).or_default();
                }
            }
            if !t.target {
                t.target = true;
                t.children.clear();
            }
        }
        let packer = Packer::new(self);
        let walker = self.walker(&packer, progress, &opts.exclusions);
        // The walk (directories and small files in parallel) runs on a pool
        // of its own, as many threads as cores; large files' windows are
        // encoded from a plain thread (`Walker::stream_extents`), so at most
        // one window per walk thread is in memory.
        let walk_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("cairn-walk-{i}"))
            .build()
            .map_err(|e| RepoError::InvalidInput(format!("backup threads: {e}")))?;
        let root_nodes = walk_pool.install(|| {
            if trie.target {
                // "/" itself was given: its entries are the root.
                let parent_tree = parent.as_ref().map(|p| &p.1);
                let root_dev = fs::symlink_metadata("/")
                    .map_err(|e| RepoError::io("/", e))?
                    .dev();
                walker
                    .dir_nodes(Path::new("/"), parent_tree, root_dev)?
                    .ok_or_else(|| RepoError::InvalidInput("cannot read the directory /".into()))
            } else {
                walker.backup_trie(&trie, Path::new("/"), parent.as_ref().map(|p| &p.1))
            }
        })?;
        if walker.top_excluded.load(Ordering::Relaxed) == abs.len() as u64 {
            return Err(RepoError::InvalidInput(
                "the exclusions leave out every path given: nothing to back up, no snapshot written"
                    .into(),
            ));
        }
        let root = packer.store_tree(&Tree { nodes: root_nodes })?;
        let reused = packer.reused();
        let stats = packer.finish()?;
        self.commit(
            opts,
            time_ns,
            root,
            path_bytes,
            parent.map(|p| p.0),
            progress,
            stats,
            start,
            &reused,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        opts: &BackupOptions,
        time_ns: i64,
        root: ChunkId,
        paths: Vec<Vec<u8>>,
        parent: Option<SnapshotId>,
        progress: &Progress,
        stats: PackerStats,
        start: Instant,
        reused: &HashSet<(BlobKind, ChunkId)>,
    ) -> Result<BackupResult> {
        let ld = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let snapshot = Snapshot {
            time_ns,
            tree: root,
            parent,
            group: opts.group,
            service: opts.service.clone(),
            hostname: opts.hostname.clone(),
            username: opts.username.clone(),
            paths,
            tags: opts.tags.clone(),
            summary: Summary {
                files_new: ld(&progress.files_new),
                files_changed: ld(&progress.files_changed),
                files_unchanged: ld(&progress.files_unchanged),
                dirs: ld(&progress.dirs),
                bytes_read: ld(&progress.bytes_read),
                bytes_total: ld(&progress.bytes_total),
                data_blobs_added: stats.data_blobs,
                tree_blobs_added: stats.tree_blobs,
                bytes_added: stats.bytes_added,
                errors: ld(&progress.errors),
                duration_ns: start.elapsed().as_nanos() as u64,
            },
            fingerprints: opts.fingerprints.clone(),
            extra: match progress.excluded.load(Ordering::Relaxed) {
                0 => vec![],
                n => vec![("excluded".into(), n.to_string())],
            },
        };
        // Prune protocol (format-spec §5.1 steps 5–8): every pack the
        // snapshot needs exists, the commit is claimed (a prune that took
        // this session for dead would have fenced the claim), then the
        // snapshot is written and packs a prune marked meanwhile re-listed.
        let session = self.writer_session("backup")?;
        self.commit_check(reused, &stats.packs_written)?;
        let bytes = snapshot.encode(&self.repo.key);
        let id = SnapshotId::of(&bytes);
        session.claim(&bytes)?;
        // Already there: a prune completed this claimed commit while the
        // session stalled (names are hashes: the bytes are these).
        match self
            .repo
            .store
            .put_new(&crate::store::snapshot_path(&id), bytes)
        {
            Ok(()) | Err(RepoError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        // The snapshot is committed: from here on nothing may turn this backup
        // into a failure. If re-listing fails, the next prune's phase 2 still
        // recomputes what this snapshot uses and keeps it.
        let mut late_warning = None;
        if let Err(e) = self.relist_marked(reused, &stats.packs_written) {
            late_warning = Some(format!(
                "snapshot committed, but re-listing packs a concurrent prune marked failed ({e}); the next prune keeps them"
            ));
        }
        Ok(BackupResult {
            id,
            snapshot,
            stats,
            warnings: {
                let mut w = progress.warnings.lock().expect("warnings").clone();
                w.extend(late_warning);
                w
            },
        })
    }

    /// Back up a stream as one file named `name` at the snapshot's root.
    /// `before_commit` runs after all data is durable and before the snapshot is
    /// written; an error from it (e.g. the dump command failed) leaves no snapshot.
    pub fn backup_stream(
        &self,
        reader: impl Read,
        name: &str,
        opts: &BackupOptions,
        progress: &Progress,
        before_commit: impl FnOnce() -> Result<()>,
    ) -> Result<BackupResult> {
        self.backup_stream_measured(reader, name, opts, progress, || {
            before_commit().map(|()| Vec::new())
        })
    }

    /// [`Self::backup_stream`] whose `before_commit` also returns fingerprints
    /// measured while the stream was read; they are added to `opts`'s.
    pub fn backup_stream_measured(
        &self,
        reader: impl Read,
        name: &str,
        opts: &BackupOptions,
        progress: &Progress,
        before_commit: impl FnOnce() -> Result<Vec<(String, Vec<u8>)>>,
    ) -> Result<BackupResult> {
        let start = Instant::now();
        self.writer_session("backup")?;
        let time_ns = now_ns();
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(RepoError::InvalidInput(format!(
                "invalid stream name {name:?}"
            )));
        }
        let packer = Packer::new(self);
        let none = Exclusions::default();
        let walker = self.walker(&packer, progress, &none);
        let mut extents = Vec::new();
        let size = walker
            .stream_extents(reader, &mut extents)
            .map_err(|e| match e {
                RepoError::Io { source, .. } => RepoError::io("<stdin>", source),
                other => other,
            })?;
        Progress::add(&progress.files_new, 1);
        Progress::add(&progress.bytes_total, size);
        let now = Time {
            sec: time_ns.div_euclid(1_000_000_000),
            nsec: time_ns.rem_euclid(1_000_000_000) as u32,
        };
        let node = Node {
            name: name.as_bytes().to_vec(),
            kind: NodeKind::File { extents },
            mode: 0o600,
            uid: crate::sys::euid(),
            gid: 0,
            mtime: now,
            ctime: now,
            inode: 0,
            size,
            device: 0,
            nlink: 0,
            xattrs: Vec::new(),
        };
        let root = packer.store_tree(&Tree { nodes: vec![node] })?;
        let reused = packer.reused();
        let stats = packer.finish()?;
        let measured = before_commit()?;
        let mut opts = opts.clone();
        opts.fingerprints.extend(measured);
        let path = format!("/{name}").into_bytes();
        self.commit(
            &opts,
            time_ns,
            root,
            vec![path],
            None,
            progress,
            stats,
            start,
            &reused,
        )
    }
}
