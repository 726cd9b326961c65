//! The filesystem: a table of inodes over virtual directories (snapshots,
//! services, groups) and the trees of the snapshots themselves, answering the
//! kernel's FUSE requests from it.
//!
//! Inode numbers are assigned on first sight of a (parent, name) pair and kept
//! for the life of the mount, so the kernel's caches stay coherent. Snapshot
//! content is immutable, so its attributes and pages are cached by the kernel
//! for long; the virtual directories change when snapshots are added or
//! forgotten and are given a short time to live.
//!
//! This module owns the inode table (inodes of snapshot entries, hard links,
//! the per-snapshot entry budget), directory listings loaded from trees, and
//! reading file content chunk by chunk. The virtual directories are
//! `virtual_dirs`'s, the answers to FUSE requests `requests`'s.

mod requests;
mod virtual_dirs;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_format::snapshot::Snapshot;
use cairn_format::tree::{Extent, Node, NodeKind, Time, Xattr};
use cairn_format::{ChunkId, SnapshotId};
use cairn_repo::IndexedRepository;
use fuser::{Errno, FileAttr, FileType, INodeNo, ReplyData};

use crate::cache::ChunkCache;
pub use requests::FsHandle;
pub use virtual_dirs::snapshot_dir_name;

/// Time to live of snapshot content in the kernel's caches: it never changes.
const CONTENT_TTL: Duration = Duration::from_secs(3600);
/// Time to live of the virtual directories, which change on refresh.
const VIRTUAL_TTL: Duration = Duration::from_secs(1);
/// Refreshes triggered by lookups of missing names are at most this frequent
/// (shells and file managers probe for names that do not exist).
const REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Which snapshots the mount shows.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only these services (empty: all).
    pub services: Vec<String>,
    /// Only snapshots carrying every one of these tags.
    pub tags: Vec<String>,
    /// Only these hosts (empty: all).
    pub hosts: Vec<String>,
}

impl Filter {
    fn admits(&self, s: &Snapshot) -> bool {
        (self.services.is_empty() || self.services.contains(&s.service))
            && (self.hosts.is_empty() || self.hosts.contains(&s.hostname))
            && self.tags.iter().all(|t| s.tags.contains(t))
    }
}

/// A file's extents with their starting offsets, for reads at any offset.
pub(crate) struct Layout {
    extents: Vec<Extent>,
    starts: Vec<u64>,
    size: u64,
}

impl Layout {
    fn new(extents: &[Extent]) -> Layout {
        let mut starts = Vec::with_capacity(extents.len());
        let mut at = 0u64;
        for e in extents {
            starts.push(at);
            at += e.len();
        }
        Layout {
            extents: extents.to_vec(),
            starts,
            size: at,
        }
    }

    /// Index of the extent holding byte `off` (which must be < size).
    fn extent_at(&self, off: u64) -> usize {
        match self.starts.binary_search(&off) {
            Ok(i) => i,
            Err(i) => i - 1,
        }
    }

    /// Stored bytes (holes excluded), for `st_blocks`.
    fn allocated(&self) -> u64 {
        self.extents
            .iter()
            .map(|e| match e {
                Extent::Chunk { len, .. } => *len as u64,
                Extent::Hole { .. } => 0,
            })
            .sum()
    }
}

/// One directory listing: names in order, with inode and type.
type Listing = Vec<(Vec<u8>, u64, FileType)>;

enum Kind {
    /// A directory; `tree` is None for virtual ones, whose listing is set by
    /// refresh. Snapshot directories fill their listing on first use.
    Dir {
        tree: Option<ChunkId>,
        listing: Mutex<Option<Arc<Listing>>>,
    },
    Link(Vec<u8>),
    File(Arc<Layout>),
    Special,
}

struct Inode {
    parent: u64,
    attr: FileAttr,
    kind: Kind,
    /// Path below the mountpoint, for error messages.
    path: String,
    virtual_: bool,
    /// Directory levels below its snapshot's root (0 for the root and for
    /// virtual entries), checked against the tree depth limit.
    depth: u32,
    /// The inode of its snapshot's root directory (its own for a snapshot
    /// root; 0 for virtual entries): entries are counted per snapshot.
    root: u64,
    /// Extended attributes of a snapshot entry (none for virtual ones).
    xattrs: Vec<Xattr>,
}

struct Table {
    inodes: HashMap<u64, Arc<Inode>>,
    by_name: HashMap<(u64, Vec<u8>), u64>,
    next: u64,
    /// Entries listed so far below each snapshot root (by its inode).
    held: HashMap<u64, u64>,
    /// Hard links seen, by (snapshot root inode, device, inode): the inode
    /// shown for them and the node it was made from. A later name of the
    /// same inode whose node is equal (but for the name) is shown as the
    /// same inode, as restore links them.
    links: HashMap<(u64, u64, u64), (u64, Node)>,
}

struct Handle {
    /// Where a sequential reader will read next.
    next: AtomicU64,
}

/// Tunables of the filesystem.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Which snapshots to show.
    pub filter: Filter,
    /// Chunks fetched ahead of a sequential reader.
    pub readahead_chunks: usize,
}

/// The mounted repository.
pub struct CairnFs {
    repo: Arc<IndexedRepository>,
    cache: Arc<ChunkCache>,
    opts: FsOptions,
    table: Mutex<Table>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// Ids of the snapshots shown, and when they were last listed.
    shown: Mutex<(Vec<SnapshotId>, Option<Instant>)>,
    /// Every snapshot read so far, shown or not.
    known: Mutex<HashMap<SnapshotId, Snapshot>>,
    refresh_lock: Mutex<()>,
    owner: (u32, u32),
    started: SystemTime,
}

const ROOT: u64 = 1;

fn to_system_time(t: Time) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec as u64)
    }
}

fn ns_to_system_time(ns: i64) -> SystemTime {
    to_system_time(Time {
        sec: ns.div_euclid(1_000_000_000),
        nsec: ns.rem_euclid(1_000_000_000) as u32,
    })
}

fn file_type(k: &NodeKind) -> FileType {
    match k {
        NodeKind::File { .. } => FileType::RegularFile,
        NodeKind::Dir { .. } => FileType::Directory,
        NodeKind::Symlink { .. } => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::CharDevice { .. } => FileType::CharDevice,
        NodeKind::BlockDevice { .. } => FileType::BlockDevice,
        NodeKind::Socket => FileType::Socket,
    }
}

impl CairnFs {
    /// A filesystem over `repo`, showing the snapshots `opts.filter` admits.
    pub fn new(
        repo: Arc<IndexedRepository>,
        cache: Arc<ChunkCache>,
        opts: FsOptions,
    ) -> cairn_repo::Result<CairnFs> {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata("/proc/self")
            .map(|m| (m.uid(), m.gid()))
            .unwrap_or((0, 0));
        let started = SystemTime::now();
        let fs = CairnFs {
            repo,
            cache,
            opts,
            table: Mutex::new(Table {
                inodes: HashMap::new(),
                by_name: HashMap::new(),
                next: ROOT + 1,
                held: HashMap::new(),
                links: HashMap::new(),
            }),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            shown: Mutex::new((Vec::new(), None)),
            known: Mutex::new(HashMap::new()),
            refresh_lock: Mutex::new(()),
            owner,
            started,
        };
        let root_attr = fs.dir_attr(ROOT, 0o555, started);
        fs.table.lock().expect("inode table").inodes.insert(
            ROOT,
            Arc::new(Inode {
                parent: ROOT,
                attr: root_attr,
                kind: Kind::Dir {
                    tree: None,
                    listing: Mutex::new(Some(Arc::new(Vec::new()))),
                },
                path: String::new(),
                virtual_: true,
                depth: 0,
                root: 0,
                xattrs: Vec::new(),
            }),
        );
        fs.refresh(Duration::ZERO)?;
        Ok(fs)
    }

    fn dir_attr(&self, ino: u64, perm: u16, mtime: SystemTime) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: FileType::Directory,
            perm,
            nlink: 2,
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn inode(&self, ino: u64) -> Option<Arc<Inode>> {
        self.table
            .lock()
            .expect("inode table")
            .inodes
            .get(&ino)
            .cloned()
    }

    /// The inode for `name` in `parent`: the existing one if `same` accepts
    /// it, else a new one made by `make`.
    fn intern(
        &self,
        parent: u64,
        name: &[u8],
        same: impl Fn(&Inode) -> bool,
        make: impl FnOnce(u64) -> Inode,
    ) -> u64 {
        let mut t = self.table.lock().expect("inode table");
        if let Some(&ino) = t.by_name.get(&(parent, name.to_vec())) {
            if t.inodes.get(&ino).is_some_and(|i| same(i)) {
                return ino;
            }
        }
        let ino = t.next;
        t.next += 1;
        t.inodes.insert(ino, Arc::new(make(ino)));
        t.by_name.insert((parent, name.to_vec()), ino);
        ino
    }

    /// [`Self::intern`] for a name of an inode with several links: the
    /// inode already shown for an earlier name of it, if that was made
    /// from an equal node.
    fn intern_link(
        &self,
        parent: &Inode,
        parent_ino: u64,
        node: &Node,
        key: (u64, u64, u64),
    ) -> u64 {
        let mut t = self.table.lock().expect("inode table");
        if let Some(&ino) = t.by_name.get(&(parent_ino, node.name.clone())) {
            return ino;
        }
        let unnamed = |n: &Node| Node {
            name: Vec::new(),
            ..n.clone()
        };
        if let Some((ino, first)) = t.links.get(&key)
            && *first == unnamed(node)
        {
            let ino = *ino;
            t.by_name.insert((parent_ino, node.name.clone()), ino);
            return ino;
        }
        let ino = t.next;
        t.next += 1;
        t.inodes.insert(
            ino,
            Arc::new(self.node_inode(parent, parent_ino, node, ino)),
        );
        t.by_name.insert((parent_ino, node.name.clone()), ino);
        t.links.entry(key).or_insert((ino, unnamed(node)));
        ino
    }

    fn child_path(parent: &Inode, name: &[u8]) -> String {
        let n = String::from_utf8_lossy(name);
        if parent.path.is_empty() {
            n.into_owned()
        } else {
            format!("{}/{n}", parent.path)
        }
    }

    fn node_inode(&self, parent: &Inode, parent_ino: u64, node: &Node, ino: u64) -> Inode {
        let kind = match &node.kind {
            NodeKind::File { extents } => Kind::File(Arc::new(Layout::new(extents))),
            NodeKind::Dir { tree } => Kind::Dir {
                tree: Some(*tree),
                listing: Mutex::new(None),
            },
            NodeKind::Symlink { target } => Kind::Link(target.clone()),
            _ => Kind::Special,
        };
        let (size, blocks) = match &kind {
            Kind::File(l) => (l.size, l.allocated().div_ceil(512)),
            Kind::Link(t) => (t.len() as u64, 0),
            _ => (0, 0),
        };
        let rdev = match node.kind {
            NodeKind::CharDevice { rdev } | NodeKind::BlockDevice { rdev } => rdev as u32,
            _ => 0,
        };
        let mtime = to_system_time(node.mtime);
        Inode {
            parent: parent_ino,
            attr: FileAttr {
                ino: INodeNo(ino),
                size,
                blocks,
                atime: mtime,
                mtime,
                ctime: to_system_time(node.ctime),
                crtime: mtime,
                kind: file_type(&node.kind),
                perm: (node.mode & 0o7777) as u16,
                nlink: if matches!(node.kind, NodeKind::Dir { .. }) {
                    2
                } else {
                    node.nlink.max(1)
                },
                uid: node.uid,
                gid: node.gid,
                rdev,
                blksize: 128 * 1024,
                flags: 0,
            },
            kind,
            path: Self::child_path(parent, &node.name),
            virtual_: false,
            depth: parent.depth + 1,
            root: parent.root,
            xattrs: node.xattrs.clone(),
        }
    }

    /// A directory's listing, loading its tree on first use.
    fn listing(&self, ino: u64) -> Result<Arc<Listing>, Errno> {
        let inode = self.inode(ino).ok_or(Errno::ENOENT)?;
        let Kind::Dir { tree, listing } = &inode.kind else {
            return Err(Errno::ENOTDIR);
        };
        if let Some(l) = listing.lock().expect("listing").as_ref() {
            return Ok(l.clone());
        }
        let tree_id = tree.ok_or(Errno::EIO)?;
        let shown_path = if inode.path.is_empty() {
            "/"
        } else {
            &inode.path
        };
        // The tree walk budget (format-spec §10): a hostile snapshot's trees
        // can repeat themselves into more paths than memory holds, so the
        // mount lists no directory deeper than the depth limit and holds no
        // more entries than the entry limit.
        let limits = &self.repo.repo().tree_limits();
        if inode.depth > limits.depth {
            eprintln!(
                "cairn mount: not listing {shown_path}: its tree is more than {} directories \
                 deep (--max-tree-depth); the snapshot may be hostile",
                limits.depth
            );
            return Err(Errno::EIO);
        }
        let tree = self.repo.load_tree(&tree_id).map_err(|e| {
            eprintln!("cairn mount: cannot list {shown_path}: {e}");
            Errno::EIO
        })?;
        {
            let mut t = self.table.lock().expect("inode table");
            let held = t.held.entry(inode.root).or_insert(0);
            let after = held.saturating_add(tree.nodes.len() as u64);
            if after > limits.entries {
                eprintln!(
                    "cairn mount: not listing {shown_path}: its snapshot would show more than \
                     {} entries (--max-tree-entries); the snapshot may be hostile, or remount \
                     with a higher limit",
                    limits.entries
                );
                return Err(Errno::EIO);
            }
            *held = after;
        }
        let mut out: Listing = Vec::with_capacity(tree.nodes.len());
        for node in &tree.nodes {
            let ft = file_type(&node.kind);
            // The parent's tree is immutable, so a (parent, name) pair always
            // means the same node.
            let child = match node.link_key() {
                Some((dev, i)) => self.intern_link(&inode, ino, node, (inode.root, dev, i)),
                None => self.intern(
                    ino,
                    &node.name,
                    |_| true,
                    |c| self.node_inode(&inode, ino, node, c),
                ),
            };
            out.push((node.name.clone(), child, ft));
        }
        let out = Arc::new(out);
        *listing.lock().expect("listing") = Some(out.clone());
        Ok(out)
    }

    fn ttl(inode: &Inode) -> &'static Duration {
        if inode.virtual_ {
            &VIRTUAL_TTL
        } else {
            &CONTENT_TTL
        }
    }

    fn find(&self, parent: u64, name: &[u8]) -> Result<Option<u64>, Errno> {
        let l = self.listing(parent)?;
        Ok(l.binary_search_by(|(n, _, _)| n.as_slice().cmp(name))
            .ok()
            .map(|i| l[i].1))
    }

    /// Read `size` bytes at `offset` of a file.
    fn read_file(
        &self,
        inode: &Inode,
        layout: &Layout,
        offset: u64,
        size: u32,
        sequential: bool,
        reply: ReplyData,
    ) {
        match self.read_range(inode, layout, offset, size, sequential) {
            // The common case, a read inside one chunk, replies from the
            // cached chunk without assembling a buffer.
            Ok(Bytes::Slice(d, from, to)) => reply.data(&d[from..to]),
            Ok(Bytes::Owned(v)) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn chunk(
        &self,
        inode: &Inode,
        id: &ChunkId,
        len: u32,
    ) -> Result<crate::cache::ChunkData, Errno> {
        let data = self.cache.get(id).map_err(|e| {
            eprintln!("cairn mount: cannot read {}: {e}", inode.path);
            Errno::EIO
        })?;
        if data.len() != len as usize {
            eprintln!(
                "cairn mount: cannot read {}: chunk {} has {} bytes, its tree says {len}",
                inode.path,
                id.short(),
                data.len()
            );
            return Err(Errno::EIO);
        }
        Ok(data)
    }

    fn read_range(
        &self,
        inode: &Inode,
        layout: &Layout,
        offset: u64,
        size: u32,
        sequential: bool,
    ) -> Result<Bytes, Errno> {
        if offset >= layout.size || size == 0 {
            return Ok(Bytes::Owned(Vec::new()));
        }
        let end = layout.size.min(offset + size as u64);
        let first = layout.extent_at(offset);
        let last = layout.extent_at(end - 1);
        // Start fetching every chunk after the first now, so that a read
        // spanning several chunks fetches them in parallel.
        let mut ahead: Vec<ChunkId> = Vec::new();
        for e in &layout.extents[first + 1..=last] {
            if let Extent::Chunk { id, .. } = e {
                ahead.push(*id);
            }
        }
        if sequential && self.opts.readahead_chunks > 0 {
            ahead.extend(
                layout.extents[last + 1..]
                    .iter()
                    .filter_map(|e| match e {
                        Extent::Chunk { id, .. } => Some(*id),
                        Extent::Hole { .. } => None,
                    })
                    .take(self.opts.readahead_chunks),
            );
        }
        if !ahead.is_empty() {
            self.cache.prefetch(ahead);
        }
        if first == last {
            if let Extent::Chunk { id, len } = &layout.extents[first] {
                let start = layout.starts[first];
                let data = self.chunk(inode, id, *len)?;
                return Ok(Bytes::Slice(
                    data,
                    (offset - start) as usize,
                    (end - start) as usize,
                ));
            }
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for i in first..=last {
            let (start, e) = (layout.starts[i], &layout.extents[i]);
            let from = offset.max(start) - start;
            let to = end.min(start + e.len()) - start;
            match e {
                Extent::Hole { .. } => out.resize(out.len() + (to - from) as usize, 0),
                Extent::Chunk { id, len } => {
                    let data = self.chunk(inode, id, *len)?;
                    out.extend_from_slice(&data[from as usize..to as usize]);
                }
            }
        }
        Ok(Bytes::Owned(out))
    }
}

/// The bytes of a read: a slice of one cached chunk, or assembled.
enum Bytes {
    Slice(crate::cache::ChunkData, usize, usize),
    Owned(Vec<u8>),
}
