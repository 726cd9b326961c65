//! Tree blobs: one directory, encoded deterministically so that an unchanged
//! directory always produces the same bytes and the same id.
//! See `format-spec/README.md` §4.7.

use crate::codec::{Reader, Writer};
use crate::error::{FormatError, Result};
use crate::id::ChunkId;

/// Magic at the start of a tree blob's plaintext.
pub const MAGIC: &[u8; 8] = b"CAIRNTRE";
/// Current tree version (written); version 1 is still read.
pub const VERSION: u16 = 2;
/// The first tree version, without hard links and extended attributes.
pub const VERSION_1: u16 = 1;
/// Longest name accepted (Linux NAME_MAX is 255; leave room for other systems).
pub const MAX_NAME: usize = 4096;
/// Longest extended attribute name (Linux XATTR_NAME_MAX).
pub const MAX_XATTR_NAME: usize = 255;
/// Largest extended attribute value (Linux XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE: usize = 65536;
/// Values up to this size are stored in the tree; larger ones as data blobs.
pub const XATTR_INLINE_MAX: usize = 1024;
/// Most extended attributes on one entry (Linux lists at most 64 KiB of
/// names, each at least 7 bytes with its NUL).
pub const MAX_XATTRS: usize = 10_000;
/// Most bytes of extended attribute values on one entry (a restore holds
/// one entry's values in memory at a time).
pub const MAX_XATTR_TOTAL: u64 = 64 << 20;

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

/// The value of an extended attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XattrValue {
    /// Stored in the tree (at most [`XATTR_INLINE_MAX`] bytes when written).
    Inline(Vec<u8>),
    /// Stored as data blobs, in order (larger values).
    Chunks(Vec<(ChunkId, u32)>),
}

impl XattrValue {
    /// Length of the value in bytes.
    pub fn len(&self) -> u64 {
        match self {
            XattrValue::Inline(v) => v.len() as u64,
            XattrValue::Chunks(c) => c.iter().map(|(_, l)| *l as u64).sum(),
        }
    }
    /// The data blobs holding the value (none when inline).
    pub fn chunk_ids(&self) -> impl Iterator<Item = ChunkId> + Clone + '_ {
        let chunks: &[(ChunkId, u32)] = match self {
            XattrValue::Inline(_) => &[],
            XattrValue::Chunks(c) => c,
        };
        chunks.iter().map(|(id, _)| *id)
    }
    /// True for an empty value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One extended attribute (`user.*`, `trusted.*`, `security.*`, and
/// `system.posix_acl_access`/`_default`, which carry POSIX ACLs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xattr {
    /// Full name with its namespace, e.g. `user.comment`.
    pub name: Vec<u8>,
    /// Its value.
    pub value: XattrValue,
}

/// Timestamp with nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Time {
    /// Seconds since the Unix epoch.
    pub sec: i64,
    /// Nanoseconds (< 1e9).
    pub nsec: u32,
}

impl Time {
    /// Nanoseconds since the Unix epoch, saturating at the ends of `i64`
    /// (a hostile tree may hold any `sec`).
    pub fn as_ns(&self) -> i64 {
        self.sec
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(self.nsec))
    }
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
    /// Device of the source inode, when it had more than one link (else 0).
    /// Entries of one snapshot with equal `(device, inode)` and `nlink > 1`
    /// were hard links to one inode (format-spec §4.7).
    pub device: u64,
    /// Link count of the source inode when above 1 (never for directories);
    /// 0 otherwise.
    pub nlink: u32,
    /// Extended attributes, sorted by name, unique.
    pub xattrs: Vec<Xattr>,
}

impl Node {
    /// Every data blob the entry refers to: its content's chunks and those
    /// holding its large extended attribute values. Whatever keeps data
    /// alive (prune) or checks it (check, repair) goes through this.
    pub fn data_ids(&self) -> impl Iterator<Item = ChunkId> + '_ {
        let content: &[Extent] = match &self.kind {
            NodeKind::File { extents } => extents,
            _ => &[],
        };
        content
            .iter()
            .filter_map(|e| match e {
                Extent::Chunk { id, .. } => Some(*id),
                Extent::Hole { .. } => None,
            })
            .chain(self.xattrs.iter().flat_map(|x| x.value.chunk_ids()))
    }

    /// The key that groups hard links within one snapshot, if this entry
    /// was one of several links to its inode.
    pub fn link_key(&self) -> Option<(u64, u64)> {
        (self.nlink > 1).then_some((self.device, self.inode))
    }
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
            encode_v2_fields(&mut w, n)?;
        }
        Ok(w.buf)
    }

    /// Decode and validate (version 2, or version 1 without links and
    /// extended attributes).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let version = if bytes.len() >= 10 && bytes[8..10] == VERSION_1.to_le_bytes() {
            VERSION_1
        } else {
            VERSION
        };
        crate::envelope::check_prefix("tree", MAGIC, version, bytes)?;
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
            let (device, nlink, xattrs) = if version == VERSION_1 {
                (0, 0, Vec::new())
            } else {
                decode_v2_fields(&mut r, tag)?
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
                device,
                nlink,
                xattrs,
            });
        }
        r.finish()?;
        Ok(Tree { nodes })
    }
}

fn check_xattr_name(name: &[u8]) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > MAX_XATTR_NAME || name.contains(&0) {
        return Err(format!(
            "invalid extended attribute name {:?}",
            String::from_utf8_lossy(name)
        ));
    }
    Ok(())
}

/// The fields version 2 adds after the kind-specific part (§4.7).
fn encode_v2_fields(w: &mut Writer, n: &Node) -> Result<()> {
    let bad = |m: String| Err(FormatError::InvalidParameter(m));
    if n.nlink == 1 || (n.nlink == 0 && n.device != 0) {
        return bad("a node's device is recorded only with a link count above 1".into());
    }
    if n.nlink > 1 && matches!(n.kind, NodeKind::Dir { .. }) {
        return bad("directories carry no link count".into());
    }
    w.u64(n.device);
    w.u32(n.nlink);
    if n.xattrs.len() > MAX_XATTRS {
        return bad(format!(
            "{} extended attributes on one entry",
            n.xattrs.len()
        ));
    }
    let total: u64 = n.xattrs.iter().map(|x| x.value.len()).sum();
    if total > MAX_XATTR_TOTAL {
        return bad(format!("{total} bytes of extended attributes on one entry"));
    }
    w.u16(n.xattrs.len() as u16);
    let mut prev: Option<&[u8]> = None;
    for x in &n.xattrs {
        check_xattr_name(&x.name).or_else(&bad)?;
        if prev.is_some_and(|p| p >= x.name.as_slice()) {
            return bad("extended attributes must be sorted and unique".into());
        }
        prev = Some(&x.name);
        if x.value.len() > MAX_XATTR_VALUE as u64 {
            return bad(format!(
                "extended attribute value of {} bytes",
                x.value.len()
            ));
        }
        w.bytes16(&x.name);
        match &x.value {
            XattrValue::Inline(v) => {
                w.u8(0);
                w.bytes32(v);
            }
            XattrValue::Chunks(c) => {
                if c.is_empty() || c.iter().any(|(_, l)| *l == 0) {
                    return bad("an extended attribute's chunks are empty".into());
                }
                w.u8(1);
                w.u16(c.len() as u16);
                for (id, len) in c {
                    w.raw(&id.0);
                    w.u32(*len);
                }
            }
        }
    }
    Ok(())
}

fn decode_v2_fields(r: &mut Reader<'_>, tag: u8) -> Result<(u64, u32, Vec<Xattr>)> {
    let device = r.u64()?;
    let nlink = r.u32()?;
    if nlink == 1 || (nlink == 0 && device != 0) {
        return Err(r.err("device recorded without a link count above 1"));
    }
    if nlink > 1 && tag == 1 {
        return Err(r.err("a directory with a link count"));
    }
    let n = r.u16()? as usize;
    if n > MAX_XATTRS || n.saturating_mul(2 + 1 + 4) > r.remaining() {
        return Err(r.err(format!("{n} extended attributes on one entry")));
    }
    let mut xattrs: Vec<Xattr> = Vec::with_capacity(n);
    let mut total = 0u64;
    for _ in 0..n {
        let name = r.bytes16()?.to_vec();
        check_xattr_name(&name).map_err(|m| r.err(m))?;
        if xattrs.last().is_some_and(|p| p.name >= name) {
            return Err(r.err("extended attributes not sorted or not unique"));
        }
        let value = match r.u8()? {
            0 => XattrValue::Inline(r.bytes32()?.to_vec()),
            1 => {
                let nc = r.u16()? as usize;
                if nc == 0 || nc.saturating_mul(36) > r.remaining() {
                    return Err(r.err("bad chunk count of an extended attribute"));
                }
                let mut c = Vec::with_capacity(nc);
                for _ in 0..nc {
                    let id = ChunkId(r.array()?);
                    let len = r.u32()?;
                    if len == 0 {
                        return Err(r.err("empty chunk of an extended attribute"));
                    }
                    c.push((id, len));
                }
                XattrValue::Chunks(c)
            }
            x => return Err(r.err(format!("unknown extended attribute value kind {x}"))),
        };
        if value.len() > MAX_XATTR_VALUE as u64 {
            return Err(r.err(format!(
                "extended attribute value of {} bytes (at most {MAX_XATTR_VALUE})",
                value.len()
            )));
        }
        total += value.len();
        if total > MAX_XATTR_TOTAL {
            return Err(r.err(format!(
                "more than {MAX_XATTR_TOTAL} bytes of extended attributes on one entry"
            )));
        }
        xattrs.push(Xattr { name, value });
    }
    Ok((device, nlink, xattrs))
}
