//! Tree blobs: one directory, encoded deterministically so that an unchanged
//! directory always produces the same bytes and the same id.
//! See `format-spec/README.md` §4.7.

use crate::codec::{Reader, Writer};
use crate::error::{FormatError, Result};
use crate::id::ChunkId;

/// Magic at the start of a tree blob's plaintext.
pub const MAGIC: &[u8; 8] = b"CAIRNTRE";
/// Current tree version.
pub const VERSION: u16 = 1;
/// Longest name accepted (Linux NAME_MAX is 255; leave room for other systems).
pub const MAX_NAME: usize = 4096;

/// A piece of a file's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// Bytes stored as a data blob.
    Chunk {
        /// The data blob.
        id: ChunkId,
        /// Its plaintext length.
        len: u32,
    },
    /// A hole: zeros that occupy no disk space in the source (sparse file).
    Hole {
        /// Length of the hole.
        len: u64,
    },
}

impl Extent {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Extent::Chunk { len, .. } => *len as u64,
            Extent::Hole { len } => *len,
        }
    }
    /// True for zero-length extents (never written by cairn).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A regular file and its content.
    File {
        /// Content in order; lengths add up to the node's size.
        extents: Vec<Extent>,
    },
    /// A directory and the tree blob listing it.
    Dir {
        /// Subtree.
        tree: ChunkId,
    },
    /// A symbolic link.
    Symlink {
        /// Target, as bytes.
        target: Vec<u8>,
    },
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDevice {
        /// Device number.
        rdev: u64,
    },
    /// A block device.
    BlockDevice {
        /// Device number.
        rdev: u64,
    },
    /// A Unix socket (recorded, restored as nothing).
    Socket,
}

impl NodeKind {
    fn tag(&self) -> u8 {
        match self {
            NodeKind::File { .. } => 0,
            NodeKind::Dir { .. } => 1,
            NodeKind::Symlink { .. } => 2,
            NodeKind::Fifo => 3,
            NodeKind::CharDevice { .. } => 4,
            NodeKind::BlockDevice { .. } => 5,
            NodeKind::Socket => 6,
        }
    }
}

/// Timestamp with nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Time {
    /// Seconds since the Unix epoch.
    pub sec: i64,
    /// Nanoseconds (< 1e9).
    pub nsec: u32,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Name (bytes; never empty, never contains '/' or NUL, never "." or "..").
    pub name: Vec<u8>,
    /// What it is.
    pub kind: NodeKind,
    /// Permission and special bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Time,
    /// Status change time (change detection only).
    pub ctime: Time,
    /// Inode number (change detection only).
    pub inode: u64,
    /// Size in bytes (files: content length; symlinks: target length; else 0).
    pub size: u64,
}

/// A decoded directory.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tree {
    /// Entries sorted by name bytes, unique.
    pub nodes: Vec<Node>,
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || name == b"."
        || name == b".."
        || name.contains(&b'/')
        || name.contains(&0)
    {
        return Err(FormatError::malformed(
            "tree",
            format!("invalid entry name {:?}", String::from_utf8_lossy(name)),
        ));
    }
    Ok(())
}

impl Tree {
    /// Sort entries by name (the canonical order).
    pub fn sort(&mut self) {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Find an entry by name (requires sorted nodes).
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }

    /// Encode; fails on unsorted or duplicate names or inconsistent sizes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut w = Writer::new();
        w.raw(MAGIC);
        w.u16(VERSION);
        w.u32(self.nodes.len() as u32);
        let mut prev: Option<&[u8]> = None;
        for n in &self.nodes {
            check_name(&n.name)?;
            if let Some(p) = prev
                && p >= n.name.as_slice()
            {
                return Err(FormatError::InvalidParameter(
                    "tree entries must be sorted and unique".into(),
                ));
            }
            prev = Some(&n.name);
            w.bytes16(&n.name);
            w.u8(n.kind.tag());
            w.u32(n.mode);
            w.u32(n.uid);
            w.u32(n.gid);
            w.i64(n.mtime.sec);
            w.u32(n.mtime.nsec);
            w.i64(n.ctime.sec);
            w.u32(n.ctime.nsec);
            w.u64(n.inode);
            w.u64(n.size);
            match &n.kind {
                NodeKind::File { extents } => {
                    let total: u64 = extents.iter().map(Extent::len).sum();
                    if total != n.size {
                        return Err(FormatError::InvalidParameter(format!(
                            "file extents add up to {total}, size is {}",
                            n.size
                        )));
                    }
                    w.u32(extents.len() as u32);
                    for e in extents {
                        match e {
                            Extent::Chunk { id, len } => {
                                w.u8(0);
                                w.raw(&id.0);
                                w.u32(*len);
                            }
                            Extent::Hole { len } => {
                                w.u8(1);
                                w.u64(*len);
                            }
                        }
                    }
                }
                NodeKind::Dir { tree } => w.raw(&tree.0),
                NodeKind::Symlink { target } => w.bytes32(target),
                NodeKind::CharDevice { rdev } | NodeKind::BlockDevice { rdev } => w.u64(*rdev),
                NodeKind::Fifo | NodeKind::Socket => {}
            }
        }
        Ok(w.buf)
    }

    /// Decode and validate.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        crate::envelope::check_prefix("tree", MAGIC, VERSION, bytes)?;
        let mut r = Reader::new(bytes, "tree");
        r.take(10)?;
        let n = r.count(2 + 1 + 4 * 3 + 12 * 2 + 16)?;
        let mut nodes: Vec<Node> = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.bytes16()?.to_vec();
            check_name(&name)?;
            if let Some(p) = nodes.last()
                && p.name >= name
            {
                return Err(r.err("entries not sorted or not unique"));
            }
            let tag = r.u8()?;
            // Masked whatever was written (format-spec §4.7).
            let mode = r.u32()? & 0o7777;
            let uid = r.u32()?;
            let gid = r.u32()?;
            let mtime = Time {
                sec: r.i64()?,
                nsec: r.u32()?,
            };
            let ctime = Time {
                sec: r.i64()?,
                nsec: r.u32()?,
            };
            if mtime.nsec >= 1_000_000_000 || ctime.nsec >= 1_000_000_000 {
                return Err(r.err("nanoseconds out of range"));
            }
            let inode = r.u64()?;
            let size = r.u64()?;
            let kind = match tag {
                0 => {
                    let ne = r.count(9)?;
                    let mut extents = Vec::with_capacity(ne);
                    let mut total: u64 = 0;
                    for _ in 0..ne {
                        let e = match r.u8()? {
                            0 => Extent::Chunk {
                                id: ChunkId(r.array()?),
                                len: r.u32()?,
                            },
                            1 => Extent::Hole { len: r.u64()? },
                            x => return Err(r.err(format!("unknown extent kind {x}"))),
                        };
                        total = total
                            .checked_add(e.len())
                            .ok_or_else(|| r.err("extent lengths overflow"))?;
                        extents.push(e);
                    }
                    if total != size {
                        return Err(
                            r.err(format!("file extents add up to {total}, size says {size}"))
                        );
                    }
                    NodeKind::File { extents }
                }
                1 => NodeKind::Dir {
                    tree: ChunkId(r.array()?),
                },
                2 => NodeKind::Symlink {
                    target: r.bytes32()?.to_vec(),
                },
                3 => NodeKind::Fifo,
                4 => NodeKind::CharDevice { rdev: r.u64()? },
                5 => NodeKind::BlockDevice { rdev: r.u64()? },
                6 => NodeKind::Socket,
                x => return Err(r.err(format!("unknown node kind {x}"))),
            };
            nodes.push(Node {
                name,
                kind,
                mode,
                uid,
                gid,
                mtime,
                ctime,
                inode,
                size,
            });
        }
        r.finish()?;
        Ok(Tree { nodes })
    }
}
