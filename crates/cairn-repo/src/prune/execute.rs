//! Steps 8–10 of a prune (format-spec §5.3): carry out a [`PrunePlan`] —
//! delete the packs of due markers, repack, write the new index, then the
//! new marker, remove completed markers, and re-check for snapshots that
//! committed meanwhile. Every write is preceded by a lease check.

use std::collections::{HashMap, HashSet};

use cairn_format::deletion::Deletion;
use cairn_format::index::{IndexFile, IndexPack};
use cairn_format::pack::PackEntry;
use cairn_format::snapshot::Snapshot;
use cairn_format::{IndexId, PackId, SnapshotId};

use super::plan::{OutsideTrees, PrunePlan, add_trees};
use super::{PruneOptions, PruneReport, delete_if_present, repack_window};
use crate::error::{RepoError, Result};
use crate::indexed::IndexedRepository;
use crate::layout::ObjectKind;
use crate::packer::Packer;
use crate::session::Lease;
use crate::store;

impl IndexedRepository {
    /// Execute `p`, holding `lease`.
    pub(super) fn execute_prune(
        &self,
        lease: &Lease,
        p: PrunePlan,
        opts: &PruneOptions,
    ) -> Result<PruneReport> {
        let PrunePlan {
            mut report,
            now,
            snaps,
            stored,
            due,
            repack,
            mut keep,
            recovered,
            mark,
            marked_contents,
            loaded_ids,
            outside_trees,
        } = p;
        let r = &mut report;
        crate::set_stage(
            &opts.stage,
            "phase 2: deleting packs whose grace period is over",
        );
        for m in &due {
            lease.check()?;
            for pack in &m.delete {
                self.repo.store.delete(&store::pack_path(pack))?;
            }
        }
        if !repack.is_empty() {
            crate::set_stage(&opts.stage, format!("repacking {} packs", repack.len()));
            self.repack(&repack, r)?;
        }

        // The new index (kept plus recovered packs) supersedes every index
        // object loaded; then the marker; then the completed markers go.
        keep.extend(recovered);
        let file = IndexFile {
            supersedes: loaded_ids.clone(),
            packs: keep,
        };
        lease.check()?;
        self.repo.save_index(&file)?;
        lease.check()?;
        if opts.instant_delete {
            for pack in &mark {
                self.repo.store.delete(&store::pack_path(pack))?;
                r.packs_deleted += 1;
                r.bytes_deleted += stored.get(pack).copied().unwrap_or(0);
            }
            for i in &loaded_ids {
                delete_if_present(&self.repo.store, &store::index_path(i))?;
            }
        } else if !mark.is_empty() || !loaded_ids.is_empty() {
            let d = Deletion {
                time_ns: now,
                packs: mark,
                indexes: loaded_ids,
            };
            let bytes = d.encode(&self.repo.key);
            self.repo.store.put_new(
                &ObjectKind::Deletion.path(&IndexId::of(&bytes).to_hex()),
                bytes,
            )?;
        }
        for m in &due {
            lease.check()?;
            for i in &m.indexes {
                delete_if_present(&self.repo.store, &store::index_path(i))?;
            }
            delete_if_present(&self.repo.store, &m.name)?;
        }
        if !opts.instant_delete {
            self.relist_for_new(&snaps, marked_contents, outside_trees, r)?;
        }
        Ok(report)
    }

    /// A backup may have committed after `used` was computed and before
    /// the marker existed (its own re-check then found no marker): list
    /// again the marked packs that any snapshot not in `snaps` needs.
    fn relist_for_new(
        &self,
        snaps: &HashSet<SnapshotId>,
        marked_contents: HashMap<PackId, IndexPack>,
        mut outside_trees: OutsideTrees,
        r: &mut PruneReport,
    ) -> Result<()> {
        let new: Vec<(SnapshotId, Snapshot)> = self
            .repo
            .list_snapshots()?
            .into_iter()
            .filter(|s| !snaps.contains(&s.0))
            .collect();
        // Their own index objects are newer than what we read: read again.
        // A new snapshot's own packs may be among those just marked (its
        // index was read, its snapshot not yet listed): their trees must
        // be readable for this walk although no live index lists them.
        for pack in marked_contents.values() {
            add_trees(&mut outside_trees, pack);
        }
        // Best effort: if this fails, phase 2's recomputation still keeps
        // every pack a snapshot needs.
        let used_new = if new.is_empty() {
            None
        } else {
            self.repo
                .read_index()
                .ok()
                .map(|i| self.replace_index(i))
                .and_then(|_| self.used_blobs_with(&new, &outside_trees).ok())
        };
        if let Some(used_new) = used_new {
            let relist: Vec<IndexPack> = marked_contents
                .into_values()
                .filter(|p| p.blobs.iter().any(|e| used_new.contains(&(e.kind, e.id))))
                .collect();
            if !relist.is_empty() {
                r.packs_recovered += relist.len();
                self.repo.save_index(&IndexFile {
                    supersedes: vec![],
                    packs: relist,
                })?;
            }
        }
        Ok(())
    }

    /// Copy the used blobs of the packs in `repack` (index position, used
    /// entries) into new packs, as a normal writer session.
    fn repack(&self, repack: &[(u32, Vec<PackEntry>)], r: &mut PruneReport) -> Result<()> {
        let packer = Packer::new(self);
        for (i, (pack, entries)) in repack.iter().enumerate() {
            if let Some((next, _)) = repack.get(i + 1) {
                self.prefetch_pack(*next);
            }
            // The pack is read in windows, hashed as it goes (its name is
            // checked at the end) and only the window holding the current
            // blob is kept: memory is a window, not a pack. A failed
            // check aborts before the new index exists, so what was
            // already copied is unindexed garbage for a later prune.
            let mut reader = crate::indexed::PackReader::new(
                self,
                *pack,
                repack_window(self.repo.config.pack_target),
            );
            let name = reader.name().to_string();
            let mut entries = entries.clone();
            entries.sort_by_key(|e| e.offset);
            let key = reader.key()?;
            // Each blob is verified (opened, decompressed, its id
            // recomputed), then its stored form is re-sealed under this
            // session's key as it is: no recompression (which was half
            // of a prune's cycles).
            let (mut stored, mut resealed) = (Vec::new(), Vec::new());
            for e in &entries {
                let sealed = reader.blob(e.offset, e.length)?;
                cairn_format::pack::open_blob_stored(
                    &key,
                    &self.repo.key.id_hasher(),
                    e.kind,
                    &e.id,
                    &sealed,
                    e.raw_len,
                    &mut stored,
                )
                .map_err(|x| RepoError::Corrupted {
                    object: name.clone(),
                    detail: format!(
                        "{} {} at offset {}: {x}",
                        e.kind.name(),
                        e.id.short(),
                        e.offset
                    ),
                })?;
                resealed.clear();
                packer
                    .encoder
                    .key
                    .seal_blob(e.kind, &e.id, &stored, &mut resealed);
                packer.add(cairn_chunk::EncodedBlob {
                    kind: e.kind,
                    id: e.id,
                    raw_len: e.raw_len,
                    sealed: &resealed,
                })?;
                r.blobs_repacked += 1;
            }
            // The rest of the pack, for its hash.
            reader.finish()?;
        }
        let stats = packer.finish()?;
        r.bytes_repacked = stats.bytes_added;
        Ok(())
    }
}
