//! Steps 4–8 of a prune (format-spec §5.3), decided before anything in
//! the store changes: which markers are due and which of their packs go,
//! which live packs are marked or repacked, which stored packs outside the
//! index are indexed again or marked. A dry run reports the plan; a real
//! prune executes it (`execute.rs`).

use std::collections::{HashMap, HashSet};

use cairn_format::deletion::Deletion;
use cairn_format::index::IndexPack;
use cairn_format::pack::PackEntry;
use cairn_format::snapshot::Snapshot;
use cairn_format::{BlobKind, ChunkId, IndexId, PackId, SnapshotId};

use super::{PruneOptions, PruneReport};
use crate::error::{RepoError, Result};
use crate::indexed::IndexedRepository;
use crate::layout::ObjectKind;
use crate::store;

/// Tree id → the pack outside the live index holding it, that pack's size,
/// and the tree's entry in it.
pub(super) type OutsideTrees = HashMap<ChunkId, (PackId, u64, PackEntry)>;

/// What prune listed, in the protocol's order, before it read the index
/// (format-spec §5.3 steps 1–3).
pub(super) struct Listing {
    /// Store time when the listing began.
    pub now: i64,
    /// Snapshots, the claims of sessions included.
    pub snaps: Vec<(SnapshotId, Snapshot)>,
    /// Deletion markers.
    pub markers: Vec<(String, Deletion)>,
    /// Marker name → store time it was written.
    pub marker_times: HashMap<String, i64>,
    /// Marker name → a running session that has not seen it.
    pub held_by: HashMap<String, String>,
    /// When the earliest running session started (store time).
    pub live_start: Option<i64>,
}

/// A marker whose grace period is over (phase 2).
pub(super) struct DueMarker {
    /// Its object name.
    pub name: String,
    /// Its packs that are deleted now (not live, recovered, unreadable or
    /// already deleted for an earlier marker).
    pub delete: Vec<PackId>,
    /// The index objects it retires, deleted after the new index is written.
    pub indexes: Vec<IndexId>,
}

/// Everything a prune does, decided before it changes anything.
pub(super) struct PrunePlan {
    /// What it did (a dry run: would do); counts filled in by planning.
    pub report: PruneReport,
    /// Store time when the listing began (the new marker's time).
    pub now: i64,
    /// Snapshots whose blobs `used` was computed for.
    pub snaps: HashSet<SnapshotId>,
    /// Stored packs and their sizes.
    pub stored: HashMap<PackId, u64>,
    /// Phase 2: due markers, in listing order.
    pub due: Vec<DueMarker>,
    /// Live packs (by index position) whose used blobs are copied.
    pub repack: Vec<(u32, Vec<PackEntry>)>,
    /// Live packs the new index keeps.
    pub keep: Vec<IndexPack>,
    /// Packs outside the live index that hold used blobs: indexed again.
    pub recovered: Vec<IndexPack>,
    /// Packs the new marker names.
    pub mark: Vec<PackId>,
    /// What each marked pack holds (for the re-check after marking).
    pub marked_contents: HashMap<PackId, IndexPack>,
    /// Every index object read: the new index supersedes them.
    pub loaded_ids: Vec<IndexId>,
    /// Trees in stored packs outside the live index.
    pub outside_trees: OutsideTrees,
}

/// The live index as prune read it.
struct LiveView {
    /// Packs by index position, and their sizes.
    packs: Vec<PackId>,
    sizes: Vec<u64>,
    /// Index objects read, superseded ones included.
    loaded_ids: Vec<IndexId>,
    /// Packs the index lists that storage does not hold.
    missing: HashSet<PackId>,
    /// Packs the index lists that storage holds.
    live: HashSet<PackId>,
}

/// What phase 1 decides about the live packs.
#[derive(Default)]
struct LiveDecision {
    keep: Vec<IndexPack>,
    mark: Vec<PackId>,
    marked_contents: HashMap<PackId, IndexPack>,
    repack: Vec<(u32, Vec<PackEntry>)>,
}

impl IndexedRepository {
    /// Plan steps 4–8 over `l`, the index now held having been read after it.
    pub(super) fn plan_prune(
        &self,
        l: Listing,
        mut r: PruneReport,
        opts: &PruneOptions,
    ) -> Result<PrunePlan> {
        let stored_timed: HashMap<PackId, (u64, i64)> = self
            .repo
            .store
            .list_kind_timed(ObjectKind::Pack)?
            .into_iter()
            .filter_map(|(n, size, t)| Some((ObjectKind::Pack.id::<PackId>(&n)?, (size, t))))
            .collect();
        let stored: HashMap<PackId, u64> =
            stored_timed.iter().map(|(p, (s, _))| (*p, *s)).collect();
        let view = self.live_view(&mut r);
        r.snapshots = l.snaps.len();
        r.packs_before = view.live.len();
        r.bytes_before = view
            .packs
            .iter()
            .zip(&view.sizes)
            .filter(|(p, _)| !view.missing.contains(p))
            .map(|(_, s)| s)
            .sum();
        let (orphans, unreadable) = self.outside_packs(&stored, &view.live);
        let mut outside_trees = OutsideTrees::new();
        for o in orphans.values() {
            add_trees(&mut outside_trees, o);
        }
        crate::set_stage(
            &opts.stage,
            format!("walking the trees of {} snapshots", l.snaps.len()),
        );
        let used = self.used_blobs_with(&l.snaps, &outside_trees)?;
        r.blobs_used = used.len();
        self.refuse_lost_blobs(&used, &orphans, &r)?;
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
        let mut skip: HashSet<PackId> = view.live.clone();
        skip.extend(recovered_ids.iter().copied());
        skip.extend(unreadable.iter().copied());
        let (due, pending, deleted) = plan_due_markers(&l, &stored, &skip, &mut r, opts);

        crate::set_stage(&opts.stage, "phase 1: finding unused packs");
        let mut d = self.decide_live_packs(&view, &stored, &used, &mut r, opts);
        // Orphans that hold nothing needed and are not already awaiting deletion.
        // ... except the packs of running sessions not indexed yet: stored
        // no earlier than the earliest live session started (2 s for the
        // store's timestamp resolution).
        let young = |p: &PackId| {
            l.live_start.is_some_and(|t| {
                stored_timed
                    .get(p)
                    .is_some_and(|x| x.1 >= t - 2_000_000_000)
            })
        };
        for o in orphans.values() {
            if !recovered_ids.contains(&o.id)
                && !pending.contains(&o.id)
                && !deleted.contains(&o.id)
                && !young(&o.id)
            {
                let in_completed = l.markers.iter().any(|(_, m)| m.packs.contains(&o.id));
                if !in_completed {
                    r.unindexed_marked += 1;
                }
                d.mark.push(o.id);
                d.marked_contents.insert(o.id, o.clone());
                r.bytes_marked += o.size;
            }
        }
        r.packs_marked = d.mark.len();
        r.packs_repacked = d.repack.len();
        Ok(PrunePlan {
            report: r,
            now: l.now,
            snaps: l.snaps.iter().map(|s| s.0).collect(),
            stored,
            due,
            repack: d.repack,
            keep: d.keep,
            recovered,
            mark: d.mark,
            marked_contents: d.marked_contents,
            loaded_ids: view.loaded_ids,
            outside_trees,
        })
    }

    /// The index now held, with the packs it lists that storage lacks
    /// (warned about in `r`: they are dropped from the new index).
    fn live_view(&self, r: &mut PruneReport) -> LiveView {
        // The new index supersedes every index object read, superseded ones
        // included: otherwise deleting an index (phase 2 of some marker) could
        // leave an older one it superseded without a superseder, live again
        // with packs that are gone.
        let (packs, sizes, loaded_ids, missing) = {
            let idx = self.index.read().expect("index lock");
            let mut ids = idx.index_ids.clone();
            ids.extend(idx.superseded_ids.iter().copied());
            (
                idx.packs.clone(),
                idx.pack_sizes.clone(),
                ids,
                idx.missing_packs.clone(),
            )
        };
        if !missing.is_empty() {
            r.warnings.push(format!(
                "{} pack(s) listed in the index are missing from storage ({}{}); they are dropped from the index",
                missing.len(),
                store::pack_path(&missing[0]),
                if missing.len() > 1 { ", …" } else { "" }
            ));
            r.missing_packs_dropped = missing.clone();
        }
        let missing: HashSet<PackId> = missing.into_iter().collect();
        let live: HashSet<PackId> = packs
            .iter()
            .copied()
            .filter(|p| !missing.contains(p))
            .collect();
        LiveView {
            packs,
            sizes,
            loaded_ids,
            missing,
            live,
        }
    }

    /// Stored packs outside the live index: marked ones, and leftovers of
    /// interrupted (or still running) backups. Their headers tell what they
    /// hold; those whose header cannot be read are returned apart (unproven
    /// unused, so never deleted).
    fn outside_packs(
        &self,
        stored: &HashMap<PackId, u64>,
        live: &HashSet<PackId>,
    ) -> (HashMap<PackId, IndexPack>, HashSet<PackId>) {
        let mut orphans: HashMap<PackId, IndexPack> = HashMap::new();
        let mut unreadable: HashSet<PackId> = HashSet::new();
        for (p, &size) in stored {
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
        (orphans, unreadable)
    }

    /// Step 5: a used blob that no stored pack holds is damage prune must
    /// not paper over (the index would drop its last trace).
    fn refuse_lost_blobs(
        &self,
        used: &HashSet<(BlobKind, ChunkId)>,
        orphans: &HashMap<PackId, IndexPack>,
        r: &PruneReport,
    ) -> Result<()> {
        let idx = self.index.read().expect("index lock");
        let in_orphans: HashSet<(BlobKind, ChunkId)> = orphans
            .values()
            .flat_map(|o| o.blobs.iter().map(|e| (e.kind, e.id)))
            .collect();
        let Some((k, id)) = used
            .iter()
            .find(|(k, id)| !idx.contains(*k, id) && !in_orphans.contains(&(*k, *id)))
        else {
            return Ok(());
        };
        Err(RepoError::NotFound {
            object: format!(
                "{} blob {} that a snapshot needs (no stored pack holds it{}); prune refuses to run on a damaged repository — run `cairn check`",
                k.name(),
                id.short(),
                if r.missing_packs_dropped.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; missing packs: {}",
                        r.missing_packs_dropped
                            .iter()
                            .map(store::pack_path)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ),
        })
    }

    /// Phase 1: per live pack, the blobs the index points to in it; a pack
    /// with no used blob, or mostly unused ones, is marked (its used blobs
    /// repacked), the others kept.
    fn decide_live_packs(
        &self,
        view: &LiveView,
        stored: &HashMap<PackId, u64>,
        used: &HashSet<(BlobKind, ChunkId)>,
        r: &mut PruneReport,
        opts: &PruneOptions,
    ) -> LiveDecision {
        let mut by_pack: Vec<Vec<PackEntry>> = vec![Vec::new(); view.packs.len()];
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
        let mut d = LiveDecision::default();
        for (i, entries) in by_pack.into_iter().enumerate() {
            let (pid, size) = (view.packs[i], view.sizes[i]);
            if view.missing.contains(&pid) || !stored.contains_key(&pid) {
                // Dropped from the index (warned above); step 5 made sure no
                // used blob was only there.
                continue;
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
                    d.repack.push((i as u32, used_e));
                }
                d.mark.push(pid);
                d.marked_contents.insert(
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
                d.keep.push(IndexPack {
                    id: pid,
                    size,
                    blobs: all,
                });
            }
        }
        d
    }
}

/// Phase 2 planned: markers whose grace period is over (by store time)
/// and that no running session holds. Their packs go unless in `skip`
/// (live, recovered or unreadable); the markers themselves are removed only
/// after the new index is written, so a failure loses nothing. Returns the
/// due markers, the packs of markers still pending, and the packs deleted.
fn plan_due_markers(
    l: &Listing,
    stored: &HashMap<PackId, u64>,
    skip: &HashSet<PackId>,
    r: &mut PruneReport,
    opts: &PruneOptions,
) -> (Vec<DueMarker>, HashSet<PackId>, HashSet<PackId>) {
    let mut due = Vec::new();
    let mut pending: HashSet<PackId> = HashSet::new();
    let mut deleted: HashSet<PackId> = HashSet::new();
    for (name, m) in &l.markers {
        // Due by the marker's store time, never by the `time` its
        // writer's clock put in it (format-spec §5.3 step 1).
        let written = l.marker_times.get(name).copied().unwrap_or(i64::MAX);
        let is_due = opts.instant_delete
            || l.now.saturating_sub(written) >= opts.keep_delete.as_nanos() as i64;
        if !is_due {
            r.markers_pending += 1;
            pending.extend(m.packs.iter().copied());
            continue;
        }
        if let Some(who) = l.held_by.get(name) {
            r.markers_held.push(format!(
                "{name}: its grace period is over, but {who} may still rely on its packs"
            ));
            pending.extend(m.packs.iter().copied());
            continue;
        }
        let mut delete = Vec::new();
        for p in &m.packs {
            let Some(&size) = stored.get(p) else { continue };
            if skip.contains(p) || deleted.contains(p) {
                continue;
            }
            deleted.insert(*p);
            delete.push(*p);
            r.packs_deleted += 1;
            r.bytes_deleted += size;
        }
        due.push(DueMarker {
            name: name.clone(),
            delete,
            indexes: m.indexes.clone(),
        });
    }
    r.markers_completed = due.len();
    (due, pending, deleted)
}

/// Add the trees of pack `p` (outside the live index) to `trees`.
pub(super) fn add_trees(trees: &mut OutsideTrees, p: &IndexPack) {
    for e in p.blobs.iter().filter(|e| e.kind == BlobKind::Tree) {
        trees.insert(e.id, (p.id, p.size, *e));
    }
}
