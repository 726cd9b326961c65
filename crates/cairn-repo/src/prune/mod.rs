//! Two-phase prune and the backup side of its protocol. See
//! `format-spec/README.md` §5.1 for why this is safe without locks.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | options and report, the entry points, the lease, listing in the protocol's order (§5.3 steps 1–4), the walk of used blobs |
//! | `sessions.rs` | step 2: other writer sessions — claims as roots, fencing, markers they hold |
//! | `plan.rs` | steps 4–8 decided without writing: the [`PruneReport`] of a dry run is the plan's |
//! | `execute.rs` | steps 8–10: deletions, repacking, the new index and marker, the re-check |
//! | `commit.rs` | the backup side: the commit check and re-listing marked packs (§5.1) |

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cairn_format::deletion::Deletion;
use cairn_format::pack::PackEntry;
use cairn_format::snapshot::Snapshot;
use cairn_format::tree::NodeKind;
use cairn_format::{BlobKind, ChunkId, PackId, SnapshotId};

use crate::error::{RepoError, Result};
use crate::indexed::IndexedRepository;
use crate::layout::ObjectKind;
use crate::repo::Repository;
use crate::store;

mod commit;
mod execute;
mod plan;
mod sessions;

impl Repository {
    /// Prune (format-spec §5.3): announce prune's own writer session, take
    /// the prune lease, then list markers, sessions and snapshots before the
    /// index is read once (what the CLI uses; see [`IndexedRepository::prune`]
    /// for an already indexed repository).
    pub fn prune(self, opts: &PruneOptions) -> Result<PruneReport> {
        crate::set_stage(&opts.stage, "announcing the prune");
        let session = crate::session::Session::announce(&self, "prune")?;
        let r = IndexedRepository::new_internal(
            std::sync::Arc::new(self),
            std::sync::RwLock::new(crate::index::Index::default()),
        );
        r.set_session(session);
        r.prune(opts)
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
    /// Take the prune lease even if it has not expired (the operator knows
    /// its holder is gone).
    pub force_takeover: bool,
    /// Prune although the store does not keep create-only writes
    /// create-only, so the lease cannot keep two prunes apart: the operator
    /// makes sure no other prune runs at the same time (format-spec §1.1).
    pub single_pruner: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused: 0.05,
            keep_delete: Duration::from_secs(24 * 3600),
            instant_delete: false,
            dry_run: false,
            stage: None,
            force_takeover: false,
            single_pruner: false,
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
    /// Due markers held back because a session that may rely on their
    /// packs is still running (one line each, naming the session).
    pub markers_held: Vec<String>,
    /// Stale sessions fenced (taken for dead) and removed.
    pub sessions_fenced: Vec<String>,
    /// Snapshots of sessions that claimed their commit but have not written
    /// the snapshot object yet (counted as snapshots).
    pub commits_pending: usize,
    /// Packs the index listed but storage did not hold, dropped from the index.
    pub missing_packs_dropped: Vec<PackId>,
    /// Things the operator should know (clock skew, missing packs).
    pub warnings: Vec<String>,
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
                used.extend(n.data_ids().map(|id| (BlobKind::Data, id)));
                if let NodeKind::Dir { tree } = n.kind {
                    stack.push((tree, snap));
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

    /// Remove what no snapshot uses: finish due deletions (phase 2), then mark
    /// unused and mostly-unused packs (phase 1). Never deletes a pack a live
    /// index lists or a snapshot — or a running session — may need. Packs are
    /// the truth, the index a summary of them: any stored pack that no live
    /// index lists but that holds data a snapshot uses is indexed again.
    pub fn prune(&self, opts: &PruneOptions) -> Result<PruneReport> {
        let session = match self.session() {
            Some(s) => s,
            None => {
                let s = crate::session::Session::announce(&self.repo, "prune")?;
                self.set_session(s.clone());
                s
            }
        };
        crate::set_stage(
            &opts.stage,
            "checking that the store keeps create-only writes",
        );
        // A dry run writes no lease that could be raced for, so it does
        // not probe (it still says so where the store emulates them).
        let unenforced = if opts.dry_run {
            (self.repo.store.write_once == crate::store::WriteOnce::Emulated).then(|| {
                "create-only writes are emulated with a HEAD before each write (conditional_put=disabled)".to_string()
            })
        } else {
            crate::backend::create_only_unenforced(&self.repo.store)?
        };
        if let Some(why) = &unenforced
            && !opts.single_pruner
            && !opts.dry_run
        {
            return Err(RepoError::Refused(format!(
                "prune refused: {why} (format-spec §1.1); if no other prune can run on this repository at the same time, pass --single-pruner"
            )));
        }
        crate::set_stage(&opts.stage, "taking the prune lease");
        let clock = session.store_now()?;
        let lease = crate::session::Lease::acquire(&self.repo, &clock, opts.force_takeover)?;
        let mut r = self.prune_leased(&lease, &session, clock, opts);
        if let (Some(why), Ok(report)) = (unenforced, &mut r) {
            report.warnings.push(if opts.dry_run {
                format!("{why}: a real prune is refused here unless given --single-pruner (format-spec §1.1)")
            } else {
                format!("{why}: this prune relied on no other prune running (format-spec §1.1)")
            });
        }
        lease.release();
        self.end_session();
        r
    }

    /// The prune proper, holding the lease (format-spec §5.3 steps 1–10):
    /// list in the protocol's order, plan, then (unless a dry run) execute
    /// the plan.
    fn prune_leased(
        &self,
        lease: &crate::session::Lease,
        session: &crate::session::Session,
        clock: crate::session::StoreClock,
        opts: &PruneOptions,
    ) -> Result<PruneReport> {
        let mut r = PruneReport::default();
        r.warnings.extend(clock.skew_warning());
        // Step 1: markers, due by store time.
        crate::set_stage(&opts.stage, "reading deletion markers and sessions");
        let now = lease.renew_now()?;
        let marker_times: HashMap<String, i64> = self
            .repo
            .store
            .list_kind_timed(ObjectKind::Deletion)?
            .into_iter()
            .map(|(n, _, t)| (n, t))
            .collect();
        let markers: Vec<(String, Deletion)> = self
            .repo
            .list_deletions()?
            .into_iter()
            .filter(|(n, _)| marker_times.contains_key(n))
            .collect();
        // Step 2: sessions.
        let sessions = self.settle_sessions(lease, session, now, &markers, &mut r, opts)?;
        if opts.instant_delete && sessions.live > 0 {
            return Err(RepoError::Refused(format!(
                "--instant-delete refuses to run while {} other session(s) write to the repository (a backup or a prune is running); run a normal prune",
                sessions.live
            )));
        }
        r.commits_pending = sessions.roots.len();
        // Step 3: snapshots, after the sessions.
        crate::set_stage(&opts.stage, "reading snapshots and index");
        let mut snaps = self.repo.list_snapshots()?;
        let listed: HashSet<SnapshotId> = snaps.iter().map(|x| x.0).collect();
        snaps.extend(
            sessions
                .roots
                .into_iter()
                .filter(|x| !listed.contains(&x.0)),
        );
        // Step 4: the index, after the snapshots (marked packs re-listed by
        // a session are live here: prune reads the index as it is).
        self.replace_index(self.repo.read_index()?);
        let listing = plan::Listing {
            now,
            snaps,
            markers,
            marker_times,
            held_by: sessions.held_by,
            live_start: sessions.live_start,
        };
        let plan = self.plan_prune(listing, r, opts)?;
        if opts.dry_run {
            return Ok(plan.report);
        }
        self.execute_prune(lease, plan, opts)
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
