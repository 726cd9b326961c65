//! Copying snapshots from another repository (`cairn copy`, the off-site
//! copy of a 3-2-1 scheme). The two repositories have their own keys, so
//! their chunk ids differ: every file is read from the source (each blob
//! authenticated and its id recomputed there), cut again by this
//! repository's chunker and stored once, deduplicated against what this
//! repository holds. Holes stay holes; metadata, extended attributes and
//! hard links are kept as recorded. A tree seen before in this run (the same
//! directory in another snapshot) is not read again. The copy is committed
//! under the prune protocol like a backup and records `copied_from`: the
//! snapshot's origin (source repository id and snapshot id; a copy of a
//! copy keeps the first origin, a retagged snapshot counts as the one it
//! was retagged from), by which a second copy of the same backup — in any
//! direction, through any number of repositories — is skipped.

use std::collections::HashMap;
use std::io::Read;

use cairn_format::snapshot::Snapshot;
use cairn_format::tree::{Extent, Node, NodeKind, Tree, Xattr, XattrValue};
use cairn_format::{BlobKind, ChunkId, SnapshotId};

use super::{Progress, Walker};
use crate::error::{RepoError, Result};
use crate::indexed::IndexedRepository;
use crate::packer::Packer;
use crate::select::Exclusions;

/// The key under which a copy records where it came from.
pub const COPIED_FROM: &str = "copied_from";

/// Source tree id → the tree it was copied to (valid while that tree is
/// in this repository's index).
pub type CopyMemo = HashMap<ChunkId, ChunkId>;

/// Reads the data chunks of a run of a file's extents from the source
/// repository, in order.
struct ChunkReader<'a> {
    src: &'a IndexedRepository,
    ids: std::vec::IntoIter<ChunkId>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(id) = self.ids.next() else {
                return Ok(0);
            };
            self.buf = self
                .src
                .read_blob(BlobKind::Data, &id)
                .map_err(std::io::Error::other)?;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl IndexedRepository {
    /// How a snapshot of this repository is named by its copies.
    pub fn copy_key(&self, id: &SnapshotId) -> String {
        format!(
            "{}:{}",
            cairn_format::id::to_hex(&self.repo.config.repo_id),
            id.to_hex()
        )
    }

    /// Where snapshot `id` of this repository first came from: the origin
    /// its `copied_from` names (a copy of a copy keeps the first), else the
    /// snapshot it was retagged from (`original`), else itself. Two
    /// snapshots with one origin are copies of one backup.
    pub fn origin_key(&self, id: &SnapshotId, snap: &Snapshot) -> String {
        let extra = |k: &str| snap.extra.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        if let Some(o) = extra(COPIED_FROM) {
            return o.clone();
        }
        match extra("original").and_then(|h| SnapshotId::from_hex(h)) {
            Some(orig) => self.copy_key(&orig),
            None => self.copy_key(id),
        }
    }

    /// Copy snapshot `id` of `src` into this repository; returns the new
    /// snapshot's id and warnings. `memo` carries trees already copied by
    /// this run.
    pub fn copy_snapshot(
        &self,
        src: &IndexedRepository,
        id: &SnapshotId,
        snap: &Snapshot,
        progress: &Progress,
        memo: &mut CopyMemo,
    ) -> Result<(SnapshotId, Vec<String>)> {
        self.writer_session("copy")?;
        let packer = Packer::new(self);
        let none = Exclusions::default();
        let walker = self.walker(&packer, progress, &none);
        let root = walker.copy_tree(src, &snap.tree, memo)?;
        let reused = packer.reused();
        let stats = packer.finish()?;
        let mut n = snap.clone();
        n.tree = root;
        let origin = src.origin_key(id, snap);
        n.extra.retain(|(k, _)| k != COPIED_FROM);
        n.extra.push((COPIED_FROM.into(), origin));
        let (new, warning) = self.commit_snapshot("copy", &n, &reused, &stats.packs_written)?;
        Ok((new, warning.into_iter().collect()))
    }
}

impl Walker<'_> {
    /// The tree `tree` of `src`, stored here; returns its id here.
    fn copy_tree(
        &self,
        src: &IndexedRepository,
        tree: &ChunkId,
        memo: &mut CopyMemo,
    ) -> Result<ChunkId> {
        if let Some(t) = memo.get(tree)
            && self.repo.index().contains(BlobKind::Tree, t)
        {
            self.packer.note_reused(BlobKind::Tree, std::iter::once(*t));
            return Ok(*t);
        }
        let t = src.load_tree(tree)?;
        let mut nodes = Vec::with_capacity(t.nodes.len());
        for n in t.nodes {
            nodes.push(self.copy_node(src, n, memo)?);
        }
        let id = self.packer.store_tree(&Tree { nodes })?;
        memo.insert(*tree, id);
        Ok(id)
    }

    fn copy_node(&self, src: &IndexedRepository, mut n: Node, memo: &mut CopyMemo) -> Result<Node> {
        let path = String::from_utf8_lossy(&n.name).into_owned();
        n.kind = match n.kind {
            NodeKind::Dir { tree } => NodeKind::Dir {
                tree: self.copy_tree(src, &tree, memo)?,
            },
            NodeKind::File { extents } => {
                let extents = self.copy_extents(src, extents).map_err(|e| match e {
                    RepoError::Io { source, .. } => RepoError::io(&path, source),
                    other => other,
                })?;
                Progress::add(&self.progress.files_new, 1);
                NodeKind::File { extents }
            }
            other => other,
        };
        let mut xattrs = Vec::with_capacity(n.xattrs.len());
        for x in n.xattrs {
            let value = match x.value {
                XattrValue::Chunks(_) => {
                    XattrValue::Chunks(self.store_in_memory(&src.xattr_value(&x.value)?)?)
                }
                inline => inline,
            };
            xattrs.push(Xattr {
                name: x.name,
                value,
            });
        }
        n.xattrs = xattrs;
        Ok(n)
    }

    /// A file's content, cut again: runs of chunks streamed through this
    /// repository's chunker, holes kept.
    fn copy_extents(&self, src: &IndexedRepository, extents: Vec<Extent>) -> Result<Vec<Extent>> {
        let mut out = Vec::with_capacity(extents.len());
        let mut run: Vec<ChunkId> = Vec::new();
        let flush = |run: &mut Vec<ChunkId>, out: &mut Vec<Extent>| -> Result<()> {
            if run.is_empty() {
                return Ok(());
            }
            let r = ChunkReader {
                src,
                ids: std::mem::take(run).into_iter(),
                buf: Vec::new(),
                pos: 0,
            };
            self.stream_extents(r, out)?;
            Ok(())
        };
        for e in extents {
            match e {
                Extent::Chunk { id, .. } => run.push(id),
                Extent::Hole { len } => {
                    flush(&mut run, &mut out)?;
                    out.push(Extent::Hole { len });
                }
            }
        }
        flush(&mut run, &mut out)?;
        Ok(out)
    }
}
