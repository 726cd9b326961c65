//! The backup side of the prune protocol (format-spec §5.1 steps 5 and 7):
//! before a snapshot is claimed, every pack it needs exists; after it is
//! written, packs a prune marked meanwhile are listed again.

use std::collections::{BTreeMap, HashSet};

use cairn_format::index::{IndexFile, IndexPack};
use cairn_format::{BlobKind, ChunkId, PackId};

use crate::error::{RepoError, Result};
use crate::indexed::IndexedRepository;
use crate::layout::ObjectKind;
use crate::store;

/// Up to this many packs the commit check always asks for each (in
/// parallel); beyond, it lists `data/` when that takes fewer requests.
const COMMIT_CHECK_HEADS: usize = 8;

impl IndexedRepository {
    /// Before a snapshot is claimed (format-spec §5.1 step 5): every pack
    /// holding a blob the backup reuses, and every pack it wrote, exists —
    /// a HEAD each, or one listing of `data/` when there are many. Never
    /// skipped, whatever the session saw at its start.
    pub(crate) fn commit_check(
        &self,
        reused: &HashSet<(BlobKind, ChunkId)>,
        own: &[IndexPack],
    ) -> Result<()> {
        let mut needed: BTreeMap<PackId, String> = BTreeMap::new();
        let packs_total;
        {
            let idx = self.index.read().expect("index lock");
            packs_total = idx.packs.len();
            for (kind, id) in reused {
                match idx.get(*kind, id) {
                    Some(l) => {
                        needed.entry(idx.packs[l.pack as usize]).or_insert_with(|| {
                            format!(
                                "{} blob {} that this backup reuses",
                                kind.name(),
                                id.short()
                            )
                        });
                    }
                    None => {
                        return Err(RepoError::NotFound {
                            object: format!(
                                "{} blob {} that this backup reuses (no longer in the index); no snapshot was written, run the backup again",
                                kind.name(),
                                id.short()
                            ),
                        });
                    }
                }
            }
        }
        for p in own {
            needed
                .entry(p.id)
                .or_insert_with(|| "written by this backup".to_string());
        }
        // A listing returns 1,000 names a request: ask for each pack only
        // when that takes fewer requests.
        let listing_requests = (packs_total + needed.len()) / 1000 + 1;
        let missing: Vec<(&PackId, &String)> =
            if needed.len() > listing_requests.max(COMMIT_CHECK_HEADS) {
                let stored: HashSet<PackId> = self
                    .repo
                    .store
                    .list_kind(ObjectKind::Pack)?
                    .into_iter()
                    .filter_map(|(n, _)| ObjectKind::Pack.id::<PackId>(&n))
                    .collect();
                needed.iter().filter(|(p, _)| !stored.contains(p)).collect()
            } else {
                let names: Vec<String> = needed.keys().map(store::pack_path).collect();
                let found = self
                    .repo
                    .store
                    .exists_many(&names, self.repo.store.connections);
                let mut m = Vec::new();
                for ((p, why), f) in needed.iter().zip(found) {
                    if !f? {
                        m.push((p, why));
                    }
                }
                m
            };
        if let Some((p, why)) = missing.first() {
            return Err(RepoError::NotFound {
                object: format!(
                    "{} ({why}{}); no snapshot was written — run `cairn check`, `cairn repair index`, then the backup again",
                    store::pack_path(p),
                    if missing.len() > 1 {
                        format!(", and {} more missing packs", missing.len() - 1)
                    } else {
                        String::new()
                    }
                ),
            });
        }
        Ok(())
    }

    /// After a snapshot is written: packs holding reused blobs that a prune has
    /// marked meanwhile are listed again in a new index object, so the prune's
    /// second phase keeps them.
    pub(crate) fn relist_marked(
        &self,
        reused: &HashSet<(BlobKind, ChunkId)>,
        own: &[IndexPack],
    ) -> Result<()> {
        if reused.is_empty() && own.is_empty() {
            return Ok(());
        }
        let marked = self.repo.marked_packs()?;
        if marked.is_empty() {
            return Ok(());
        }
        let needed: BTreeMap<PackId, u64> = {
            let idx = self.index.read().expect("index lock");
            reused
                .iter()
                .filter_map(|(k, id)| idx.get(*k, id))
                .map(|l| (idx.packs[l.pack as usize], idx.pack_sizes[l.pack as usize]))
                .filter(|(p, _)| marked.contains(p))
                .collect()
        };
        let own_marked: Vec<IndexPack> = own
            .iter()
            .filter(|p| marked.contains(&p.id))
            .cloned()
            .collect();
        if needed.is_empty() && own_marked.is_empty() {
            return Ok(());
        }
        let mut packs = own_marked;
        for (p, size) in needed {
            packs.push(IndexPack {
                id: p,
                size,
                blobs: self.read_pack_header(&p, size)?,
            });
        }
        self.repo
            .save_index(&IndexFile {
                supersedes: vec![],
                packs,
            })
            .map(|_| ())
    }
}
