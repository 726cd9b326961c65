//! Two-phase prune and the backup side of its protocol. See
//! `format-spec/README.md` §5.1 for why this is safe without locks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use cairn_format::deletion::Deletion;
use cairn_format::index::{IndexFile, IndexPack};
use cairn_format::pack::PackEntry;
use cairn_format::snapshot::Snapshot;
use cairn_format::tree::{Extent, NodeKind};
use cairn_format::{BlobKind, ChunkId, IndexId, PackId, SnapshotId};

use crate::error::{RepoError, Result};
use crate::indexed::IndexedRepository;
use crate::packer::Packer;
use crate::repo::{Repository, now_ns};
use crate::store;

impl Repository {
    /// Prune a repository whose index is not loaded yet: lists snapshots and
    /// markers first, then reads the index once (what the CLI uses; see
    /// [`IndexedRepository::prune`] for an already indexed repository).
    pub fn prune(self, opts: &PruneOptions) -> Result<PruneReport> {
        crate::set_stage(&opts.stage, "reading snapshots and index");
        let snaps = self.list_snapshots()?;
        let markers = self.list_deletions()?;
        self.load_index()?.prune_listed(snaps, markers, opts)
    }
}

/// Settings of a prune.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Repack packs whose unused share is above this fraction.
    pub max_unused: f64,
    /// Grace period between marking and deleting.
    pub keep_delete: Duration,
    /// Delete at once (only safe when nothing else writes to the repository).
    pub instant_delete: bool,
    /// Report only.
    pub dry_run: bool,
    /// Where to report what prune is doing.
    pub stage: Option<crate::Stage>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused: 0.05,
            keep_delete: Duration::from_secs(24 * 3600),
            instant_delete: false,
            dry_run: false,
            stage: None,
        }
    }
}

/// What a prune did (or, dry run, would do).
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    /// Snapshots considered.
    pub snapshots: usize,
    /// Packs in the live index before.
    pub packs_before: usize,
    /// Their bytes.
    pub bytes_before: u64,
    /// Distinct blobs used by snapshots.
    pub blobs_used: usize,
    /// Indexed blobs no snapshot uses.
    pub blobs_unused: usize,
    /// Packs marked for deletion now (phase 1).
    pub packs_marked: usize,
    /// Bytes of those packs.
    pub bytes_marked: u64,
    /// Packs whose used blobs were copied into new packs.
    pub packs_repacked: usize,
    /// Blobs copied.
    pub blobs_repacked: usize,
    /// Bytes written by repacking.
    pub bytes_repacked: u64,
    /// Packs in storage that no index listed, marked.
    pub unindexed_marked: usize,
    /// Packs deleted now (phase 2 or instant).
    pub packs_deleted: usize,
    /// Bytes reclaimed now.
    pub bytes_deleted: u64,
    /// Marked packs kept because a snapshot still needs them.
    pub packs_recovered: usize,
    /// Markers whose grace period has not passed yet.
    pub markers_pending: usize,
    /// Markers completed (phase 2 done).
    pub markers_completed: usize,
}

impl IndexedRepository {
    /// Every blob the snapshots reference (trees walked once each).
    pub fn used_blobs(
        &self,
        snaps: &[(SnapshotId, Snapshot)],
    ) -> Result<HashSet<(BlobKind, ChunkId)>> {
        self.used_blobs_with(snaps, &HashMap::new())
    }

    /// Like [`Self::used_blobs`], also reading trees from packs that are marked
    /// for deletion and so not in the live index (`marked_trees`: tree id →
    /// pack, pack size, entry).
    fn used_blobs_with(
        &self,
        snaps: &[(SnapshotId, Snapshot)],
        marked_trees: &HashMap<ChunkId, (PackId, u64, PackEntry)>,
    ) -> Result<HashSet<(BlobKind, ChunkId)>> {
        let mut used = HashSet::new();
        let mut stack: Vec<(ChunkId, SnapshotId)> =
            snaps.iter().map(|(id, s)| (s.tree, *id)).collect();
        while let Some((tree, snap)) = stack.pop() {
            if !used.insert((BlobKind::Tree, tree)) {
                continue;
            }
            let loaded = match (self.load_tree(&tree), marked_trees.get(&tree)) {
                (Err(RepoError::NotFound { .. }), Some((pack, size, entry))) => {
                    self.load_tree_from(pack, *size, entry)
                }
                (r, _) => r,
            };
            let t = loaded.map_err(|e| {
                RepoError::InvalidInput(format!(
                    "snapshot {} cannot be read ({e}); prune refuses to run on a damaged repository",
                    snap.short()
                ))
            })?;
            for n in t.nodes {
                match n.kind {
                    NodeKind::Dir { tree } => stack.push((tree, snap)),
                    NodeKind::File { extents } => {
                        for e in extents {
                            if let Extent::Chunk { id, .. } = e {
                                used.insert((BlobKind::Data, id));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(used)
    }

    /// Read a tree blob from a pack that the live index does not list.
    fn load_tree_from(
        &self,
        pack: &PackId,
        size: u64,
        e: &PackEntry,
    ) -> Result<cairn_format::tree::Tree> {
        let name = store::pack_path(pack);
        let prefix = self
            .repo
            .store
            .get_range(&name, 0..cairn_format::pack::PREFIX_LEN as u64)?;
        let key = cairn_format::pack::unwrap_key(&self.repo.key, &prefix)
            .map_err(|x| RepoError::from_format(&name, x))?;
        if e.offset as u64 + e.length as u64 > size {
            return Err(RepoError::Corrupted {
                object: name,
                detail: "tree blob past the end".into(),
            });
        }
        let sealed = self
            .repo
            .store
            .get_range(&name, e.offset as u64..e.offset as u64 + e.length as u64)?;
        let mut out = Vec::new();
        cairn_format::pack::open_blob(
            &key,
            &self.repo.key.id_hasher(),
            e.kind,
            &e.id,
            &sealed,
            e.raw_len,
            &mut out,
        )
        .map_err(|x| RepoError::from_format(&name, x))?;
        cairn_format::tree::Tree::decode(&out).map_err(|x| RepoError::from_format(&name, x))
    }

    /// Before a snapshot is written: if index objects this session loaded are
    /// gone, a prune's second phase ran meanwhile; make sure every reused blob
    /// still exists, or fail without writing the snapshot.
    pub(crate) fn guard_reused(
        &self,
        reused: &HashSet<(BlobKind, ChunkId)>,
        own: &[IndexPack],
    ) -> Result<()> {
        if reused.is_empty() && own.is_empty() {
            return Ok(());
        }
        let loaded: Vec<IndexId> = self.index.read().expect("index lock").index_ids.clone();
        let now: HashSet<String> = self
            .repo
            .store
            .list("index")?
            .into_iter()
            .map(|x| x.0)
            .collect();
        if loaded.iter().all(|i| now.contains(&store::index_path(i))) {
            return Ok(());
        }
        // A phase 2 ran during this backup: what it wrote itself must still exist too.
        for p in own {
            if !self.repo.store.exists(&store::pack_path(&p.id))? {
                return Err(RepoError::InvalidInput(format!(
                    "a prune that ran during this backup removed pack {} that the backup wrote; no snapshot was written, run the backup again",
                    p.id.short()
                )));
            }
        }
        let fresh = self.repo.read_index()?;
        let marked = self.repo.marked_packs()?;
        let idx = self.index.read().expect("index lock");
        for (kind, id) in reused {
            if fresh.contains(*kind, id) {
                continue;
            }
            let in_marked = idx
                .get(*kind, id)
                .map(|l| idx.packs[l.pack as usize])
                .filter(|p| marked.contains(p));
            match in_marked {
                Some(p) if self.repo.store.exists(&store::pack_path(&p))? => {}
                _ => {
                    return Err(RepoError::InvalidInput(format!(
                        "a prune that ran during this backup removed {} {} that the backup relied on; no snapshot was written, run the backup again",
                        kind.name(),
                        id.short()
                    )));
                }
            }
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
        let bytes = IndexFile {
            supersedes: vec![],
            packs,
        }
        .encode(&self.repo.key);
        self.repo
            .store
            .put_new(&store::index_path(&IndexId::of(&bytes)), bytes)
    }

    /// Remove what no snapshot uses: finish due deletions (phase 2), then mark
    /// unused and mostly-unused packs (phase 1). Never deletes a pack a live
    /// index lists or a snapshot needs. Packs are the truth, the index a
    /// summary of them: any stored pack that no live index lists but that holds
    /// data a snapshot uses is indexed again.
    pub fn prune(&self, opts: &PruneOptions) -> Result<PruneReport> {
        crate::set_stage(&opts.stage, "reading snapshots and index");
        // Snapshots first, then the index: a snapshot is written after its
        // index, so every snapshot seen here has its index in what we load.
        let snaps = self.repo.list_snapshots()?;
        let markers = self.repo.list_deletions()?;
        self.replace_index(self.repo.read_index()?);
        self.prune_listed(snaps, markers, opts)
    }

    /// The prune proper; `snaps` and `markers` were listed before the index
    /// now held was read.
    fn prune_listed(
        &self,
        snaps: Vec<(SnapshotId, Snapshot)>,
        markers: Vec<(String, Deletion)>,
        opts: &PruneOptions,
    ) -> Result<PruneReport> {
        let now = now_ns();
        let stored: HashMap<PackId, u64> = self
            .repo
            .store
            .list("data")?
            .into_iter()
            .filter_map(|(n, size)| Some((PackId::from_hex(n.rsplit('/').next()?)?, size)))
            .collect();
        // The new index supersedes every index object read, superseded ones
        // included: otherwise deleting an index (phase 2 of some marker) could
        // leave an older one it superseded without a superseder, live again
        // with packs that are gone.
        let (packs, sizes, loaded_ids) = {
            let idx = self.index.read().expect("index lock");
            let mut ids = idx.index_ids.clone();
            ids.extend(idx.superseded_ids.iter().copied());
            (idx.packs.clone(), idx.pack_sizes.clone(), ids)
        };
        let live: HashSet<PackId> = packs.iter().copied().collect();
        let mut r = PruneReport {
            snapshots: snaps.len(),
            packs_before: packs.len(),
            bytes_before: sizes.iter().sum(),
            ..Default::default()
        };

        // Stored packs outside the live index: marked ones, and leftovers of
        // interrupted (or still running) backups. Their headers tell what they hold.
        let mut orphans: HashMap<PackId, IndexPack> = HashMap::new();
        let mut unreadable: HashSet<PackId> = HashSet::new();
        for (p, &size) in &stored {
            if live.contains(p) {
                continue;
            }
            match self.read_pack_header(p, size) {
                Ok(blobs) => {
                    orphans.insert(
                        *p,
                        IndexPack {
                            id: *p,
                            size,
                            blobs,
                        },
                    );
                }
                // Cannot prove it unused: never delete it.
                Err(_) => {
                    unreadable.insert(*p);
                }
            }
        }
        let mut orphan_trees = HashMap::new();
        for o in orphans.values() {
            for e in o.blobs.iter().filter(|e| e.kind == BlobKind::Tree) {
                orphan_trees.insert(e.id, (o.id, o.size, *e));
            }
        }
        crate::set_stage(
            &opts.stage,
            format!("walking the trees of {} snapshots", snaps.len()),
        );
        let used = self.used_blobs_with(&snaps, &orphan_trees)?;
        r.blobs_used = used.len();
        crate::set_stage(
            &opts.stage,
            "phase 2: deleting packs whose grace period is over",
        );
        // Orphans holding used blobs that no live pack has: index them again.
        let recovered: Vec<IndexPack> = {
            let idx = self.index.read().expect("index lock");
            orphans
                .values()
                .filter(|o| {
                    o.blobs
                        .iter()
                        .any(|e| used.contains(&(e.kind, e.id)) && !idx.contains(e.kind, &e.id))
                })
                .cloned()
                .collect()
        };
        r.packs_recovered = recovered.len();
        let recovered_ids: HashSet<PackId> = recovered.iter().map(|p| p.id).collect();

        // Phase 2: markers whose grace period is over. Their packs go unless
        // live or recovered; the markers themselves are removed only after the
        // new index is written (below), so a failure here loses nothing.
        let mut completed: Vec<(String, Vec<IndexId>)> = Vec::new();
        let mut pending: HashSet<PackId> = HashSet::new();
        let mut deleted: HashSet<PackId> = HashSet::new();
        for (name, m) in &markers {
            let due = opts.instant_delete || now - m.time_ns >= opts.keep_delete.as_nanos() as i64;
            if !due {
                r.markers_pending += 1;
                pending.extend(m.packs.iter().copied());
                continue;
            }
            for p in &m.packs {
                let Some(&size) = stored.get(p) else { continue };
                if live.contains(p)
                    || recovered_ids.contains(p)
                    || unreadable.contains(p)
                    || deleted.contains(p)
                {
                    continue;
                }
                if !opts.dry_run {
                    self.repo.store.delete(&store::pack_path(p))?;
                }
                deleted.insert(*p);
                r.packs_deleted += 1;
                r.bytes_deleted += size;
            }
            completed.push((name.clone(), m.indexes.clone()));
        }
        r.markers_completed = completed.len();

        // Phase 1: per live pack, the blobs the index points to in it.
        crate::set_stage(&opts.stage, "phase 1: finding unused packs");
        let mut by_pack: Vec<Vec<PackEntry>> = vec![Vec::new(); packs.len()];
        {
            let idx = self.index.read().expect("index lock");
            for kind in [BlobKind::Data, BlobKind::Tree] {
                for (id, loc) in idx.iter(kind) {
                    by_pack[loc.pack as usize].push(PackEntry {
                        kind,
                        id,
                        offset: loc.offset,
                        length: loc.length,
                        raw_len: loc.raw_len,
                    });
                }
            }
        }
        let mut keep: Vec<IndexPack> = Vec::new();
        let mut mark: Vec<PackId> = Vec::new();
        let mut marked_contents: HashMap<PackId, IndexPack> = HashMap::new();
        let mut repack: Vec<(u32, Vec<PackEntry>)> = Vec::new();
        for (i, entries) in by_pack.into_iter().enumerate() {
            let (pid, size) = (packs[i], sizes[i]);
            if !stored.contains_key(&pid) {
                return Err(RepoError::InvalidInput(format!(
                    "pack {} is listed in the index but missing from storage; prune refuses to run on a damaged repository",
                    store::pack_path(&pid)
                )));
            }
            let all_entries = entries.clone();
            let (used_e, unused_e): (Vec<PackEntry>, Vec<PackEntry>) = entries
                .into_iter()
                .partition(|e| used.contains(&(e.kind, e.id)));
            r.blobs_unused += unused_e.len();
            let used_bytes: u64 = used_e.iter().map(|e| e.length as u64).sum();
            let mostly_unused = (size - used_bytes.min(size)) as f64
                > opts.max_unused * size as f64
                && !unused_e.is_empty();
            if used_e.is_empty() || mostly_unused {
                if !used_e.is_empty() {
                    repack.push((i as u32, used_e));
                }
                mark.push(pid);
                marked_contents.insert(
                    pid,
                    IndexPack {
                        id: pid,
                        size,
                        blobs: all_entries,
                    },
                );
                r.bytes_marked += size;
            } else {
                let mut all = used_e;
                all.extend(unused_e);
                keep.push(IndexPack {
                    id: pid,
                    size,
                    blobs: all,
                });
            }
        }
        // Orphans that hold nothing needed and are not already awaiting deletion.
        for o in orphans.values() {
            if !recovered_ids.contains(&o.id)
                && !pending.contains(&o.id)
                && !deleted.contains(&o.id)
            {
                let in_completed = markers.iter().any(|(_, m)| m.packs.contains(&o.id));
                if !in_completed {
                    r.unindexed_marked += 1;
                }
                mark.push(o.id);
                marked_contents.insert(o.id, o.clone());
                r.bytes_marked += o.size;
            }
        }
        r.packs_marked = mark.len();
        r.packs_repacked = repack.len();
        if opts.dry_run {
            return Ok(r);
        }

        // Copy the used blobs of repacked packs (a normal writer session).
        if !repack.is_empty() {
            crate::set_stage(&opts.stage, format!("repacking {} packs", repack.len()));
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
        }

        // The new index (kept plus recovered packs) supersedes every index
        // object loaded; then the marker; then the completed markers go.
        keep.extend(recovered);
        let file = IndexFile {
            supersedes: loaded_ids.clone(),
            packs: keep,
        };
        let bytes = file.encode(&self.repo.key);
        self.repo
            .store
            .put_new(&store::index_path(&IndexId::of(&bytes)), bytes)?;
        if opts.instant_delete {
            for p in &mark {
                self.repo.store.delete(&store::pack_path(p))?;
                r.packs_deleted += 1;
                r.bytes_deleted += stored.get(p).copied().unwrap_or(0);
            }
            for i in &loaded_ids {
                delete_if_present(&self.repo.store, &store::index_path(i))?;
            }
        } else if !mark.is_empty() || !loaded_ids.is_empty() {
            let d = Deletion {
                time_ns: now_ns(),
                packs: mark,
                indexes: loaded_ids,
            };
            let bytes = d.encode(&self.repo.key);
            self.repo.store.put_new(
                &format!("deletions/{}", IndexId::of(&bytes).to_hex()),
                bytes,
            )?;
        }
        for (name, indexes) in &completed {
            for i in indexes {
                delete_if_present(&self.repo.store, &store::index_path(i))?;
            }
            delete_if_present(&self.repo.store, name)?;
        }
        if !opts.instant_delete {
            // A backup may have committed after `used` was computed and before
            // the marker existed (its own re-check then found no marker): list
            // again the marked packs that any new snapshot needs.
            let known: HashSet<SnapshotId> = snaps.iter().map(|s| s.0).collect();
            let new: Vec<(SnapshotId, Snapshot)> = self
                .repo
                .list_snapshots()?
                .into_iter()
                .filter(|s| !known.contains(&s.0))
                .collect();
            // Their own index objects are newer than what we read: read again.
            // A new snapshot's own packs may be among those just marked (its
            // index was read, its snapshot not yet listed): their trees must
            // be readable for this walk although no live index lists them.
            for p in marked_contents.values() {
                for e in p.blobs.iter().filter(|e| e.kind == BlobKind::Tree) {
                    orphan_trees.insert(e.id, (p.id, p.size, *e));
                }
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
                    .and_then(|_| self.used_blobs_with(&new, &orphan_trees).ok())
            };
            if let Some(used_new) = used_new {
                let relist: Vec<IndexPack> = marked_contents
                    .into_values()
                    .filter(|p| p.blobs.iter().any(|e| used_new.contains(&(e.kind, e.id))))
                    .collect();
                if !relist.is_empty() {
                    r.packs_recovered += relist.len();
                    let bytes = IndexFile {
                        supersedes: vec![],
                        packs: relist,
                    }
                    .encode(&self.repo.key);
                    self.repo
                        .store
                        .put_new(&store::index_path(&IndexId::of(&bytes)), bytes)?;
                }
            }
        }
        Ok(r)
    }
}

/// Bytes of a pack read at once while repacking it: a quarter of the pack
/// target, within 256 KiB – 4 MiB (a blob larger than that is read whole).
fn repack_window(pack_target: u32) -> u64 {
    (pack_target as u64 / 4).clamp(256 << 10, 4 << 20)
}

fn delete_if_present(store: &crate::store::Store, name: &str) -> Result<()> {
    match store.delete(name) {
        Ok(()) | Err(RepoError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
