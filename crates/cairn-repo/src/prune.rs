//! Two-phase prune and the backup side of its protocol. See
//! `format-spec/README.md` §5.1 for why this is safe without locks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use cairn_format::deletion::Deletion;
use cairn_format::index::{IndexFile, IndexPack};
use cairn_format::pack::PackEntry;
use cairn_format::snapshot::Snapshot;
use cairn_format::tree::NodeKind;
use cairn_format::{BlobKind, ChunkId, IndexId, PackId, SnapshotId};

use crate::error::{RepoError, Result};
use crate::indexed::IndexedRepository;
use crate::layout::ObjectKind;
use crate::packer::Packer;
use crate::repo::Repository;
use crate::store;

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

    /// The prune proper, holding the lease (format-spec §5.3 steps 1–10).
    fn prune_leased(
        &self,
        lease: &crate::session::Lease,
        session: &crate::session::Session,
        clock: crate::session::StoreClock,
        opts: &PruneOptions,
    ) -> Result<PruneReport> {
        use crate::session::{End, list_sessions};
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
        let mut roots: Vec<(SnapshotId, Snapshot)> = Vec::new();
        let mut held_by: HashMap<String, String> = HashMap::new();
        let mut live_start: Option<i64> = None;
        let mut live = 0usize;
        for v in list_sessions(&self.repo)? {
            if v.sid == session.sid {
                continue;
            }
            // Every commit claim is a root, as long as it exists: only its
            // session removes it (format-spec §5.3 step 2, checked by the
            // model in format-spec/model: completing or removing claims let
            // a paused session's snapshot lose its data).
            let mut unwritten = false;
            for (name, e) in &v.ends {
                match e {
                    End::Commit(bytes) => {
                        let id = SnapshotId::of(bytes);
                        let snap = Snapshot::decode(&self.repo.key, bytes)
                            .map_err(|x| RepoError::from_format(name, x))?;
                        if self.repo.store.head(&store::snapshot_path(&id))?.is_none() {
                            unwritten = true;
                        }
                        roots.push((id, snap));
                    }
                    End::Unreadable(why) => r
                        .warnings
                        .push(format!("{name} cannot be read ({why}); left as it is")),
                    End::Fence => {}
                }
            }
            let stale = now - v.last_alive_ns > v.stale.as_nanos() as i64;
            let foreign = v.ends.iter().any(|(_, e)| matches!(e, End::Unreadable(_)))
                || v.start_ns.is_some() && v.markers.is_none();
            if foreign {
                // Never removed; held as if running (it may be).
                r.warnings.push(format!(
                    "session {} has objects this cairn cannot read; it is treated as running and left in place",
                    v.sid
                ));
            } else if unwritten && stale {
                // Claimed a commit and went quiet before writing it: its
                // claim stays a root (its data is kept) until the session
                // writes the snapshot and removes the claim itself.
                r.warnings.push(format!(
                    "{} claimed a snapshot and has not written it (no heartbeat for {}); its data is kept until it does (if that process is gone for good, remove sessions/{}/ by hand)",
                    v.who,
                    crate::session::human(std::time::Duration::from_nanos(
                        (now - v.last_alive_ns).max(0) as u64
                    )),
                    v.sid
                ));
                continue;
            } else if v.fenced() || v.markers.is_none() && stale {
                if !opts.dry_run {
                    lease.check()?;
                    crate::session::remove_session(&self.repo, &v)?;
                }
                continue;
            } else if stale && !unwritten {
                if opts.dry_run {
                    r.sessions_fenced.push(v.who.clone());
                    continue;
                }
                lease.check()?;
                if crate::session::fence(&self.repo, &v)?.is_some() {
                    r.sessions_fenced.push(format!(
                        "{} (no heartbeat for {})",
                        v.who,
                        crate::session::human(std::time::Duration::from_nanos(
                            (now - v.last_alive_ns).max(0) as u64
                        ))
                    ));
                    // A claim may have landed just before the fence: then
                    // the session stays (its claim a root) until it ends.
                    let (again, claims) = self.claims_since(&v)?;
                    if let Some(again) = again
                        && claims.is_empty()
                    {
                        crate::session::remove_session(&self.repo, &again)?;
                    }
                    roots.extend(claims);
                    continue;
                }
                // It claimed while we tried: alive after all, and its claim
                // is a root (format-spec §5.3 step 2).
                roots.extend(self.claims_since(&v)?.1);
            }
            live += 1;
            if let Some(t) = v.start_ns {
                live_start = Some(live_start.map_or(t, |x: i64| x.min(t)));
            }
            let seen = v.markers.clone().unwrap_or_default();
            for (name, _) in &markers {
                if !seen.contains(name) {
                    held_by.entry(name.clone()).or_insert_with(|| v.who.clone());
                }
            }
        }
        if opts.instant_delete && live > 0 {
            return Err(RepoError::Refused(format!(
                "--instant-delete refuses to run while {live} other session(s) write to the repository (a backup or a prune is running); run a normal prune"
            )));
        }
        r.commits_pending = roots.len();
        // Step 3: snapshots, after the sessions.
        crate::set_stage(&opts.stage, "reading snapshots and index");
        let mut snaps = self.repo.list_snapshots()?;
        let listed: HashSet<SnapshotId> = snaps.iter().map(|x| x.0).collect();
        snaps.extend(roots.into_iter().filter(|x| !listed.contains(&x.0)));
        // Step 4: the index, after the snapshots (marked packs re-listed by
        // a session are live here: prune reads the index as it is).
        self.replace_index(self.repo.read_index()?);
        self.prune_listed(
            lease,
            snaps,
            markers,
            &marker_times,
            now,
            &held_by,
            live_start,
            r,
            opts,
        )
    }

    /// List session `v` again: its view now (if it still has objects) and
    /// the commit claims it made since `v` was listed, as roots.
    fn claims_since(&self, v: &crate::session::SessionView) -> Result<SessionClaims> {
        let Some(again) = crate::session::list_sessions(&self.repo)?
            .into_iter()
            .find(|x| x.sid == v.sid)
        else {
            return Ok((None, Vec::new()));
        };
        let mut claims = Vec::new();
        for (name, e) in &again.ends {
            if let crate::session::End::Commit(bytes) = e
                && !v.ends.iter().any(|(n, _)| n == name)
            {
                let snap = Snapshot::decode(&self.repo.key, bytes)
                    .map_err(|x| RepoError::from_format(name, x))?;
                claims.push((SnapshotId::of(bytes), snap));
            }
        }
        Ok((Some(again), claims))
    }

    /// Steps 4–10; `snaps` and `markers` were listed before the index now
    /// held was read.
    #[allow(clippy::too_many_arguments)]
    fn prune_listed(
        &self,
        lease: &crate::session::Lease,
        snaps: Vec<(SnapshotId, Snapshot)>,
        markers: Vec<(String, Deletion)>,
        marker_times: &HashMap<String, i64>,
        now: i64,
        held_by: &HashMap<String, String>,
        live_start: Option<i64>,
        mut r: PruneReport,
        opts: &PruneOptions,
    ) -> Result<PruneReport> {
        let stored_timed: HashMap<PackId, (u64, i64)> = self
            .repo
            .store
            .list_kind_timed(ObjectKind::Pack)?
            .into_iter()
            .filter_map(|(n, size, t)| Some((ObjectKind::Pack.id::<PackId>(&n)?, (size, t))))
            .collect();
        let stored: HashMap<PackId, u64> =
            stored_timed.iter().map(|(p, (s, _))| (*p, *s)).collect();
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
        r.snapshots = snaps.len();
        r.packs_before = live.len();
        r.bytes_before = packs
            .iter()
            .zip(&sizes)
            .filter(|(p, _)| !missing.contains(p))
            .map(|(_, s)| s)
            .sum();

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
        // Step 5: a used blob that no stored pack holds is damage prune must
        // not paper over (the index would drop its last trace).
        {
            let idx = self.index.read().expect("index lock");
            let in_orphans: HashSet<(BlobKind, ChunkId)> = orphans
                .values()
                .flat_map(|o| o.blobs.iter().map(|e| (e.kind, e.id)))
                .collect();
            if let Some((k, id)) = used
                .iter()
                .find(|(k, id)| !idx.contains(*k, id) && !in_orphans.contains(&(*k, *id)))
            {
                return Err(RepoError::NotFound {
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
                });
            }
        }
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
            // Due by the marker's store time, never by the `time` its
            // writer's clock put in it (format-spec §5.3 step 1).
            let written = marker_times.get(name).copied().unwrap_or(i64::MAX);
            let due = opts.instant_delete
                || now.saturating_sub(written) >= opts.keep_delete.as_nanos() as i64;
            if !due {
                r.markers_pending += 1;
                pending.extend(m.packs.iter().copied());
                continue;
            }
            if let Some(who) = held_by.get(name) {
                r.markers_held.push(format!(
                    "{name}: its grace period is over, but {who} may still rely on its packs"
                ));
                pending.extend(m.packs.iter().copied());
                continue;
            }
            if !opts.dry_run {
                lease.check()?;
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
            if missing.contains(&pid) || !stored.contains_key(&pid) {
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
        // ... except the packs of running sessions not indexed yet: stored
        // no earlier than the earliest live session started (2 s for the
        // store's timestamp resolution).
        let young = |p: &PackId| {
            live_start.is_some_and(|t| {
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
        lease.check()?;
        self.repo
            .store
            .put_new(&store::index_path(&IndexId::of(&bytes)), bytes)?;
        lease.check()?;
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
        for (name, indexes) in &completed {
            lease.check()?;
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

/// A session listed again, and the commit claims it made meanwhile.
type SessionClaims = (
    Option<crate::session::SessionView>,
    Vec<(SnapshotId, Snapshot)>,
);

/// Up to this many packs the commit check always asks for each (in
/// parallel); beyond, it lists `data/` when that takes fewer requests.
const COMMIT_CHECK_HEADS: usize = 8;

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
