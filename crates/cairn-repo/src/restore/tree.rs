//! Reading a snapshot's tree: the bounds on what it may expand to
//! ([`TreeLimits`], checked before a walk), walking it, finding the node at a
//! path, and dumping a file's content.

use std::collections::HashMap;
use std::io::Write;

use cairn_format::tree::{Extent, Node, NodeKind, Tree};
use cairn_format::{BlobKind, ChunkId};

use crate::error::{RepoError, Result};
use crate::indexed::IndexedRepository;

use crate::limits::TreeLimits;

/// What a tree expands to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expansion {
    /// Entries below (not counting the tree itself).
    pub entries: u64,
    /// Levels of directories below.
    pub depth: u32,
    /// Sum of apparent sizes.
    pub bytes: u64,
}

/// An entry of a snapshot with its path.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Absolute path inside the snapshot (bytes).
    pub path: Vec<u8>,
    /// The node.
    pub node: Node,
}

pub(crate) fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// A tree that cannot be read, named as the directory whose listing is lost.
pub(super) fn listing_error(e: RepoError, prefix: &[u8]) -> RepoError {
    match e {
        RepoError::Corrupted { object, detail } => RepoError::Corrupted {
            object,
            detail: format!(
                "{detail}; the listing of directory {} cannot be read",
                if prefix.is_empty() {
                    "/".into()
                } else {
                    String::from_utf8_lossy(prefix).into_owned()
                }
            ),
        },
        other => other,
    }
}

/// Normalize a user-given snapshot path: leading slash, no trailing slash.
pub fn normalize_snapshot_path(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in p
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
    {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    out
}

impl IndexedRepository {
    /// Refuse a tree whose expansion passes the repository's
    /// [`TreeLimits`]; `what` names it in the error (e.g. "snapshot 1a2b…").
    /// Reads each distinct tree once.
    pub fn check_tree_limits(&self, root: &ChunkId, what: &str) -> Result<Expansion> {
        self.check_tree_limits_with(root, what, &mut HashMap::new())
    }

    /// [`Self::check_tree_limits`] sharing what is known of trees between
    /// calls (`check` over many snapshots).
    pub(crate) fn check_tree_limits_with(
        &self,
        root: &ChunkId,
        what: &str,
        memo: &mut HashMap<ChunkId, Expansion>,
    ) -> Result<Expansion> {
        let limits = self.repo.tree_limits;
        self.expand(root, b"", 0, &limits, memo)
            .map_err(|e| match e {
                RepoError::Refused(m) => RepoError::Refused(format!(
                    "{what}: {m}; refused before reading it (a tree that expands this far is planted or absurd; the --max-tree-entries, --max-tree-depth and --max-tree-size options raise the bounds)"
                )),
                other => other,
            })
    }

    fn expand(
        &self,
        id: &ChunkId,
        prefix: &[u8],
        depth: u32,
        limits: &TreeLimits,
        memo: &mut HashMap<ChunkId, Expansion>,
    ) -> Result<Expansion> {
        let over = |e: &Expansion, depth: u32| -> Result<()> {
            if e.entries > limits.entries {
                return Err(RepoError::Refused(format!(
                    "its tree holds more than {} entries",
                    limits.entries
                )));
            }
            if e.bytes > limits.bytes {
                return Err(RepoError::Refused(format!(
                    "its files add up to more than {} bytes",
                    limits.bytes
                )));
            }
            if depth.saturating_add(e.depth) > limits.depth {
                return Err(RepoError::Refused(format!(
                    "its tree is more than {} directories deep",
                    limits.depth
                )));
            }
            Ok(())
        };
        if let Some(e) = memo.get(id) {
            over(e, depth)?;
            return Ok(*e);
        }
        if depth > limits.depth {
            return Err(RepoError::Refused(format!(
                "its tree is more than {} directories deep",
                limits.depth
            )));
        }
        let t = self.load_tree(id).map_err(|e| listing_error(e, prefix))?;
        let mut e = Expansion::default();
        for n in &t.nodes {
            e.entries = e.entries.saturating_add(1);
            e.bytes = e.bytes.saturating_add(n.size);
            if let NodeKind::Dir { tree } = &n.kind {
                let sub = self.expand(tree, &join(prefix, &n.name), depth + 1, limits, memo)?;
                e.entries = e.entries.saturating_add(sub.entries);
                e.bytes = e.bytes.saturating_add(sub.bytes);
                e.depth = e.depth.max(sub.depth.saturating_add(1));
            }
            over(&e, depth)?;
        }
        memo.insert(*id, e);
        Ok(e)
    }

    /// Walk a tree depth-first in name order, calling `f` for every entry whose
    /// path passes `filter` (a directory that fails it is not descended into).
    /// Callers walking a whole snapshot check [`Self::check_tree_limits`] first.
    pub fn walk(
        &self,
        tree: &ChunkId,
        prefix: &[u8],
        filter: &dyn Fn(&[u8]) -> bool,
        f: &mut dyn FnMut(Entry) -> Result<()>,
    ) -> Result<()> {
        let t = self.load_tree(tree).map_err(|e| listing_error(e, prefix))?;
        for node in t.nodes {
            let path = join(prefix, &node.name);
            if !filter(&path) {
                continue;
            }
            let sub = match &node.kind {
                NodeKind::Dir { tree } => Some(*tree),
                _ => None,
            };
            f(Entry {
                path: path.clone(),
                node,
            })?;
            if let Some(sub) = sub {
                self.walk(&sub, &path, filter, f)?;
            }
        }
        Ok(())
    }

    /// Find the node at a snapshot path (`/` gives `None` with the root tree).
    pub fn find_node(&self, root: &ChunkId, path: &[u8]) -> Result<Option<Node>> {
        let path = normalize_snapshot_path(path);
        let mut tree: Tree = self.load_tree(root)?;
        let comps: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        if comps.is_empty() {
            return Ok(None);
        }
        for (i, c) in comps.iter().enumerate() {
            let node = tree.find(c).cloned().ok_or_else(|| {
                RepoError::InvalidInput(format!(
                    "{} not found in the snapshot",
                    String::from_utf8_lossy(&path)
                ))
            })?;
            if i + 1 == comps.len() {
                return Ok(Some(node));
            }
            match node.kind {
                NodeKind::Dir { tree: t } => tree = self.load_tree(&t)?,
                _ => {
                    return Err(RepoError::InvalidInput(format!(
                        "{} is not a directory",
                        String::from_utf8_lossy(c)
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Write a file's content (holes as zeros) to `out`.
    pub fn dump_file(&self, node: &Node, out: &mut dyn Write) -> Result<()> {
        let NodeKind::File { extents } = &node.kind else {
            return Err(RepoError::InvalidInput(format!(
                "{} is not a regular file",
                String::from_utf8_lossy(&node.name)
            )));
        };
        let zeros = vec![0u8; 1 << 16];
        for e in extents {
            match e {
                Extent::Chunk { id, .. } => {
                    let b = self.read_blob(BlobKind::Data, id)?;
                    out.write_all(&b)
                        .map_err(|e| RepoError::io("<stdout>", e))?;
                }
                Extent::Hole { len } => {
                    let mut left = *len;
                    while left > 0 {
                        let n = left.min(zeros.len() as u64) as usize;
                        out.write_all(&zeros[..n])
                            .map_err(|e| RepoError::io("<stdout>", e))?;
                        left -= n as u64;
                    }
                }
            }
        }
        Ok(())
    }
}
