//! `repair index` and `repair snapshots`.

use std::collections::HashSet;

use cairn_format::index::{IndexFile, IndexPack};
use cairn_format::snapshot::Snapshot;
use cairn_format::tree::{Node, NodeKind, Tree};
use cairn_format::{BlobKind, ChunkId, IndexId, PackId, SnapshotId};

use crate::check::ReadData;
use crate::error::{RepoError, Result};
use crate::indexed::IndexedRepository;
use crate::layout::ObjectKind;
use crate::packer::Packer;
use crate::repo::Repository;
use crate::store;

/// Outcome of `repair index`.
#[derive(Debug, Default, Clone)]
pub struct IndexRepair {
    /// Packs indexed from their headers.
    pub packs_indexed: usize,
    /// Blobs indexed.
    pub blobs_indexed: usize,
    /// Packs whose header could not be read (their blobs are lost).
    pub unreadable_packs: Vec<String>,
    /// Index objects replaced.
    pub indexes_replaced: usize,
}

/// Outcome of `repair snapshots`.
#[derive(Debug, Default, Clone)]
pub struct SnapshotRepair {
    /// (original, repaired) pairs.
    pub repaired: Vec<(SnapshotId, Option<SnapshotId>)>,
    /// Paths dropped or emptied, per original snapshot.
    pub removed: Vec<(SnapshotId, Vec<String>)>,
    /// Snapshots left untouched (not affected).
    pub untouched: usize,
    /// Snapshot objects that cannot be read at all (damaged, foreign,
    /// planted; each with why), removed unless a dry run: nothing of them
    /// can be restored, and they block prune.
    pub unreadable: Vec<(String, String)>,
}

impl Repository {
    /// Rebuild the index from the pack headers and replace every index object.
    /// Packs awaiting deletion by prune are left out.
    pub fn repair_index(&self, dry_run: bool) -> Result<IndexRepair> {
        let mut out = IndexRepair::default();
        let marked = self.marked_packs()?;
        let old: Vec<String> = self
            .store
            .list_kind(ObjectKind::Index)?
            .into_iter()
            .map(|x| x.0)
            .collect();
        // An empty index is enough to read pack headers.
        let reader = IndexedRepository::from_parts(
            std::sync::Arc::new(self.clone()),
            crate::index::Index::default(),
        );
        let mut packs = Vec::new();
        for (name, size) in self.store.list_kind(ObjectKind::Pack)? {
            let Some(id) = ObjectKind::Pack.id::<PackId>(&name) else {
                continue;
            };
            if marked.contains(&id) {
                continue;
            }
            match reader.read_pack_header(&id, size) {
                Ok(blobs) => {
                    out.blobs_indexed += blobs.len();
                    packs.push(IndexPack { id, size, blobs });
                }
                Err(e) => out.unreadable_packs.push(format!("{name}: {e}")),
            }
        }
        out.packs_indexed = packs.len();
        out.indexes_replaced = old.len();
        if dry_run {
            return Ok(out);
        }
        // Replacing every index object must not race a prune (§5.2).
        let session = crate::session::Session::announce(self, "repair index")?;
        let lease = crate::session::Lease::acquire(self, &session.store_now()?, false)?;
        lease.check()?;
        let supersedes = old
            .iter()
            .filter_map(|n| ObjectKind::Index.id::<IndexId>(n))
            .collect();
        let bytes = IndexFile { supersedes, packs }.encode(&self.key);
        let new_name = store::index_path(&IndexId::of(&bytes));
        self.store.put_new(&new_name, bytes)?;
        // Damaged index objects would stop every reader: remove the old ones.
        for n in &old {
            match self.store.delete(n) {
                Ok(()) | Err(RepoError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        lease.release();
        session.end();
        Ok(out)
    }

    /// Write repaired copies of damaged snapshots: files with damaged or
    /// missing data are left out, unreadable directories become empty; the
    /// copies are tagged `repaired`, the originals stay until forgotten.
    pub fn repair_snapshots(self, dry_run: bool) -> Result<SnapshotRepair> {
        let report = self.clone().check(ReadData::All)?;
        let damaged = report.damaged_blobs;
        let repo = self.load_index()?;
        let mut out = SnapshotRepair::default();
        let (snaps, bad) = repo.repo.list_snapshots_readable()?;
        for e in bad {
            if let RepoError::Corrupted { object, detail } = e {
                if !dry_run {
                    repo.repo.store.delete(&object)?;
                }
                out.unreadable.push((object, detail));
            } else {
                return Err(e);
            }
        }
        let packer = Packer::new(&repo);
        let mut todo = Vec::new();
        for (id, s) in &snaps {
            let mut removed = Vec::new();
            let new_root = repair_tree(
                &repo,
                &packer,
                &s.tree,
                b"",
                &damaged,
                &mut removed,
                dry_run,
            )?;
            if removed.is_empty() {
                out.untouched += 1;
                continue;
            }
            out.removed.push((*id, removed));
            todo.push((*id, s.clone(), new_root));
        }
        packer.finish()?;
        for (id, s, root) in todo {
            if dry_run {
                out.repaired.push((id, None));
                continue;
            }
            let mut n: Snapshot = s;
            n.tree = root.expect("a tree unless dry run");
            if !n.tags.iter().any(|t| t == "repaired") {
                n.tags.push("repaired".into());
            }
            n.extra.push(("repaired_from".into(), id.to_hex()));
            let new = repo.repo.save_snapshot(&n)?;
            out.repaired.push((id, Some(new)));
        }
        Ok(out)
    }
}

/// Rewrite a tree without damaged parts; returns the new tree id (None in a dry run).
fn repair_tree(
    repo: &IndexedRepository,
    packer: &Packer<'_>,
    tree: &ChunkId,
    prefix: &[u8],
    damaged: &HashSet<(BlobKind, ChunkId)>,
    removed: &mut Vec<String>,
    dry_run: bool,
) -> Result<Option<ChunkId>> {
    let here = || {
        if prefix.is_empty() {
            "/".to_string()
        } else {
            String::from_utf8_lossy(prefix).into_owned()
        }
    };
    let t = if damaged.contains(&(BlobKind::Tree, *tree)) {
        None
    } else {
        repo.load_tree(tree).ok()
    };
    let Some(t) = t else {
        removed.push(format!("{} (unreadable directory, now empty)", here()));
        return store_tree(packer, Tree::default(), dry_run);
    };
    let mut nodes: Vec<Node> = Vec::with_capacity(t.nodes.len());
    for mut n in t.nodes {
        let mut p = prefix.to_vec();
        p.push(b'/');
        p.extend_from_slice(&n.name);
        match &n.kind {
            NodeKind::Dir { tree } => {
                let before = removed.len();
                let new = repair_tree(repo, packer, tree, &p, damaged, removed, dry_run)?;
                if removed.len() > before
                    && let Some(id) = new
                {
                    n.kind = NodeKind::Dir { tree: id };
                }
            }
            _ => {
                let bad = n.data_ids().any(|id| {
                    damaged.contains(&(BlobKind::Data, id))
                        || !repo
                            .index
                            .read()
                            .expect("index")
                            .contains(BlobKind::Data, &id)
                });
                if bad {
                    removed.push(String::from_utf8_lossy(&p).into_owned());
                    continue;
                }
            }
        }
        nodes.push(n);
    }
    store_tree(packer, Tree { nodes }, dry_run)
}

fn store_tree(packer: &Packer<'_>, t: Tree, dry_run: bool) -> Result<Option<ChunkId>> {
    if dry_run {
        return Ok(None);
    }
    Ok(Some(packer.store_tree(&t)?))
}
