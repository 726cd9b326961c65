//! Rewriting a snapshot without some of its entries (`cairn rewrite`): a
//! secret backed up by mistake is removed from new copies of the snapshots
//! that hold it; `prune` then reclaims its data once the originals are
//! forgotten. Only the directories on the way to a removed entry are
//! written again; everything else is referenced as it is. The new snapshot
//! is committed under the prune protocol like a backup (format-spec §5.1).

use cairn_format::snapshot::Snapshot;
use cairn_format::tree::{NodeKind, Tree};
use cairn_format::{BlobKind, ChunkId, SnapshotId};

use crate::error::Result;
use crate::indexed::IndexedRepository;
use crate::packer::Packer;
use crate::restore::join;
use crate::select::Patterns;

/// What rewriting one snapshot did (dry run: would do).
#[derive(Clone, Debug, Default)]
pub struct Rewritten {
    /// Entries left out (a directory stands for everything beneath it).
    pub removed: Vec<Vec<u8>>,
    /// Their apparent sizes (a directory's: everything beneath it).
    pub bytes_removed: u64,
    /// The new snapshot (none when nothing matched, or in a dry run).
    pub new: Option<SnapshotId>,
    /// Things to know (a late re-listing failure).
    pub warnings: Vec<String>,
}

impl IndexedRepository {
    /// Write a copy of snapshot `id` without the entries `exclude` matches
    /// (and everything beneath matched directories). The copy keeps the
    /// original's time, host, paths, tags and fingerprints and records
    /// `rewritten_from`; the original stays until forgotten.
    pub fn rewrite_snapshot(
        &self,
        id: &SnapshotId,
        snap: &Snapshot,
        exclude: &Patterns,
        dry_run: bool,
    ) -> Result<Rewritten> {
        let mut out = Rewritten::default();
        if !dry_run {
            // The session comes first so that the index the rewrite relies
            // on is read after it (format-spec §5.1 steps 1-2).
            self.writer_session("rewrite")?;
        }
        let packer = Packer::new(self);
        let root = self.rewrite_tree(&packer, &snap.tree, b"", exclude, &mut out, dry_run)?;
        let reused = packer.reused();
        let stats = packer.finish()?;
        let Some(root) = root.filter(|_| !dry_run && !out.removed.is_empty()) else {
            return Ok(out);
        };
        let mut n = snap.clone();
        n.tree = root;
        n.summary.bytes_total = n.summary.bytes_total.saturating_sub(out.bytes_removed);
        n.extra.retain(|(k, _)| k != "rewritten_from");
        n.extra.push(("rewritten_from".into(), id.to_hex()));
        let (new, warning) = self.commit_snapshot("rewrite", &n, &reused, &stats.packs_written)?;
        out.new = Some(new);
        out.warnings.extend(warning);
        Ok(out)
    }

    /// The tree at `prefix` without what `exclude` matches: `Some(id)` of
    /// the new tree when something below changed (an arbitrary id in a dry
    /// run), `None` when nothing did.
    fn rewrite_tree(
        &self,
        packer: &Packer<'_>,
        tree: &ChunkId,
        prefix: &[u8],
        exclude: &Patterns,
        out: &mut Rewritten,
        dry_run: bool,
    ) -> Result<Option<ChunkId>> {
        let t = self.load_tree(tree)?;
        let mut nodes = Vec::with_capacity(t.nodes.len());
        let mut kept_trees = Vec::new();
        let mut changed = false;
        for mut n in t.nodes {
            let path = join(prefix, &n.name);
            let sub = match n.kind {
                NodeKind::Dir { tree } => Some(tree),
                _ => None,
            };
            if exclude.matches(&path, sub.is_some()) {
                // A directory's size is what it holds (its tree passed the
                // snapshot's limits already).
                out.bytes_removed += match sub {
                    Some(t) => self.check_tree_limits(&t, "a removed directory")?.bytes,
                    None => n.size,
                };
                out.removed.push(path);
                changed = true;
                continue;
            }
            if let Some(sub) = sub {
                let new = if exclude.may_match_below(&path) {
                    self.rewrite_tree(packer, &sub, &path, exclude, out, dry_run)?
                } else {
                    None
                };
                match new {
                    Some(new) => {
                        n.kind = NodeKind::Dir { tree: new };
                        changed = true;
                    }
                    None => kept_trees.push(sub),
                }
            }
            nodes.push(n);
        }
        if !changed {
            return Ok(None);
        }
        if prefix.is_empty() && nodes.is_empty() {
            return Err(crate::error::RepoError::Refused(
                "these patterns leave out everything the snapshot holds: a rewrite would write an empty snapshot (to remove the snapshot, forget it)".into(),
            ));
        }
        // What the new tree refers to without storing it: unchanged
        // subtrees and the kept entries' data (checked at commit).
        packer.note_reused(BlobKind::Tree, kept_trees.into_iter());
        for n in &nodes {
            packer.note_reused(BlobKind::Data, n.data_ids());
        }
        if dry_run {
            return Ok(Some(*tree));
        }
        Ok(Some(packer.store_tree(&Tree { nodes })?))
    }
}
