//! `check`: find every damaged or missing object and say what it affects.
//!
//! Structure (always): config, key files, index objects (name hash, decryption),
//! snapshots, every tree they reach, every data blob indexed, every indexed pack
//! present with its indexed size. With `read_data`: every selected pack is
//! downloaded once, hashed against its name, its header compared with the
//! index, and every blob authenticated and re-hashed. Keyless mode only hashes
//! objects against their names. Damage never stops the check; at the end the
//! snapshots are walked once more to name the snapshots and paths affected.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use cairn_format::index::IndexFile;
use cairn_format::snapshot::Snapshot;
use cairn_format::tree::NodeKind;
use cairn_format::{BlobKind, ChunkId, IndexId, PackId, SnapshotId};
use rayon::prelude::*;

use crate::error::{RepoError, Result};
use crate::index::Index;
use crate::indexed::IndexedRepository;
use crate::layout::ObjectKind;
use crate::repo::Repository;
use crate::store::{self, Store};

/// Which packs `--read-data` reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReadData {
    /// Structure only.
    None,
    /// Every pack.
    All,
    /// Group `n` (1-based) of `m`, by pack id.
    Subset(u32, u32),
    /// A random fraction of the packs.
    Fraction(f64),
}

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The damaged or missing object (repository path) or blob.
    pub object: String,
    /// What is wrong.
    pub detail: String,
}

/// Result of a check.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    /// Damage (non-empty = the repository is damaged).
    pub problems: Vec<Problem>,
    /// Harmless findings (unindexed leftovers, duplicate blobs, packs awaiting deletion).
    pub notes: Vec<String>,
    /// Snapshots affected by damage, with up to 20 affected paths each.
    pub affected: BTreeMap<SnapshotId, Vec<String>>,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Packs in the index.
    pub packs: usize,
    /// Packs read with `read_data`.
    pub packs_read: usize,
    /// Blobs authenticated with `read_data`.
    pub blobs_read: u64,
    /// Bytes read with `read_data`.
    pub bytes_read: u64,
    /// Blobs found missing or damaged (what `repair snapshots` removes).
    pub damaged_blobs: HashSet<(BlobKind, ChunkId)>,
    /// Hash-named objects compared with their names (keyless check).
    pub objects_hashed: u64,
    /// What this check could not judge (keyless: everything behind the
    /// encryption); empty for a check with the password.
    pub unjudged: Vec<String>,
}

impl CheckReport {
    /// True when nothing is damaged.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Check without the password: every named object must hash to its name.
/// What needs the key — the config's content, and whether the index lists
/// every pack the snapshots need — is reported as not judged
/// ([`CheckReport::unjudged`]; format-spec §8).
pub fn check_keyless(store: &Store) -> Result<CheckReport> {
    let mut report = CheckReport {
        unjudged: vec![
            "the config object (sealed with the master key; it has no hash name to compare with)".into(),
            "whether the snapshots' data and trees are all in packs storage holds (the index and snapshots are encrypted): a deleted pack is not seen".into(),
            "the blobs inside the packs (only each pack as a whole is compared with its name)".into(),
        ],
        ..Default::default()
    };
    for prefix in ["keys", "index", "snapshots", "deletions", "data"] {
        let objs = store.list(prefix)?;
        let names: Vec<String> = objs.iter().map(|o| o.0.clone()).collect();
        for (name, bytes) in names.iter().zip(store.get_many(&names, 8)) {
            let Some(id) = ObjectKind::Index.id::<IndexId>(name) else {
                report
                    .notes
                    .push(format!("{name}: not a cairn object name"));
                continue;
            };
            match bytes {
                Ok(b) => {
                    if prefix == "data" {
                        report.packs_read += 1;
                        report.bytes_read += b.len() as u64;
                    }
                    report.objects_hashed += 1;
                    if blake3::hash(&b).as_bytes() != &id.0 {
                        report.problems.push(Problem {
                            object: name.clone(),
                            detail: format!("its {} bytes do not hash to its name", b.len()),
                        });
                    }
                }
                Err(e) => report.problems.push(Problem {
                    object: name.clone(),
                    detail: e.to_string(),
                }),
            }
        }
    }
    if !store.exists(store::CONFIG)? {
        report.problems.push(Problem {
            object: store::CONFIG.into(),
            detail: "missing".into(),
        });
    }
    Ok(report)
}

fn selected(pack: &PackId, rd: ReadData) -> bool {
    match rd {
        ReadData::None => false,
        ReadData::All => true,
        ReadData::Subset(n, m) => {
            u32::from_le_bytes(pack.0[..4].try_into().expect("4")) % m == n - 1
        }
        ReadData::Fraction(f) => {
            let mut b = [0u8; 8];
            cairn_format::crypto::random_bytes(&mut b);
            (u64::from_le_bytes(b) as f64 / u64::MAX as f64) < f
        }
    }
}

impl Repository {
    /// Check the repository (it was opened, so config and one key are fine).
    pub fn check(self, read_data: ReadData) -> Result<CheckReport> {
        self.check_with_progress(read_data, None)
    }

    /// [`Repository::check`], reporting what it is doing to `stage`. The
    /// phases, in order, are the methods of [`Checker`].
    pub fn check_with_progress(
        self,
        read_data: ReadData,
        stage: Option<crate::Stage>,
    ) -> Result<CheckReport> {
        let mut c = Checker {
            report: CheckReport::default(),
            stage,
            bad_packs: HashSet::new(),
            damaged: HashSet::new(),
        };
        crate::set_stage(&c.stage, "checking key files and index objects");
        c.key_files(&self)?;
        // Snapshot names before the index: a snapshot is written after its
        // index, so every snapshot listed here has its index among those read below.
        let snapshot_names: Vec<String> = self
            .store
            .list_kind(ObjectKind::Snapshot)?
            .into_iter()
            .map(|x| x.0)
            .collect();
        let index = c.index(&self)?;
        c.packs(&self, &index)?;
        let repo = IndexedRepository::from_parts(Arc::new(self), index);
        let snaps = c.snapshots(&repo, &snapshot_names);
        crate::set_stage(
            &c.stage,
            format!("checking the trees of {} snapshots", snaps.len()),
        );
        c.structure(&repo, &snaps);
        if read_data != ReadData::None {
            c.read_packs(&repo, read_data);
        }
        c.tree_limits(&repo, &snaps);
        c.affected(&repo, &snaps);
        c.report.problems.sort();
        c.report.problems.dedup();
        c.report.damaged_blobs = c.damaged;
        Ok(c.report)
    }
}

/// A check in progress: what it found so far, and the packs and blobs known
/// to be damaged (which later phases skip, and the last one traces to
/// snapshots and paths).
struct Checker {
    report: CheckReport,
    stage: Option<crate::Stage>,
    /// Positions (in the index) of packs missing or of the wrong size.
    bad_packs: HashSet<u32>,
    damaged: HashSet<(BlobKind, ChunkId)>,
}

impl Checker {
    fn problem(&mut self, object: &str, detail: String) {
        self.report.problems.push(Problem {
            object: object.to_string(),
            detail,
        })
    }

    /// Every key file hashes to its name and decodes.
    fn key_files(&mut self, repo: &Repository) -> Result<()> {
        for (name, _) in repo.store.list_kind(ObjectKind::Key)? {
            let ok = ObjectKind::Key
                .id::<cairn_format::KeyId>(&name)
                .map(|id| crate::repo::get_verified(&repo.store, &name, &id.0))
                .transpose()
                .and_then(|b| match b {
                    Some(b) => cairn_format::keyfile::KeyFile::decode(&b)
                        .map(|_| ())
                        .map_err(|e| RepoError::from_format(&name, e)),
                    None => Err(RepoError::Corrupted {
                        object: name.clone(),
                        detail: "bad key file name".into(),
                    }),
                });
            if let Err(e) = ok {
                self.problem(&name, e.to_string());
            }
        }
        Ok(())
    }

    /// Every index object, one by one (hash, decode), and the live index
    /// they make (superseded objects left out).
    fn index(&mut self, repo: &Repository) -> Result<Index> {
        let mut files: Vec<(IndexId, IndexFile)> = Vec::new();
        let names: Vec<String> = repo
            .store
            .list_kind(ObjectKind::Index)?
            .into_iter()
            .map(|x| x.0)
            .collect();
        for (name, bytes) in names.iter().zip(repo.store.get_many(&names, 16)) {
            let Some(id) = ObjectKind::Index.id::<IndexId>(name) else {
                self.report
                    .notes
                    .push(format!("{name}: not a cairn object name"));
                continue;
            };
            let r = bytes.and_then(|b| {
                if blake3::hash(&b).as_bytes() != &id.0 {
                    return Err(RepoError::Corrupted {
                        object: name.clone(),
                        detail: format!("its {} bytes do not hash to its name", b.len()),
                    });
                }
                IndexFile::decode(&repo.key, &b).map_err(|e| RepoError::from_format(name, e))
            });
            match r {
                Ok(f) => files.push((id, f)),
                Err(e) => self.problem(name, e.to_string()),
            }
        }
        let superseded: HashSet<IndexId> = files
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().copied())
            .collect();
        let mut index = Index::default();
        let mut seen_blobs: HashMap<(BlobKind, ChunkId), u32> = HashMap::new();
        for (id, f) in &files {
            if superseded.contains(id) {
                continue;
            }
            index.add_file(*id, f);
            for p in &f.packs {
                for b in &p.blobs {
                    *seen_blobs.entry((b.kind, b.id)).or_default() += 1;
                }
            }
        }
        index.finish();
        let dups = seen_blobs.values().filter(|&&n| n > 1).count();
        if dups > 0 {
            self.report.notes.push(format!(
                "{dups} blobs are stored more than once (concurrent backups; prune consolidates)"
            ));
        }
        Ok(index)
    }

    /// Every indexed pack is stored with the size the index says; packs in
    /// no index and packs marked for deletion are noted.
    fn packs(&mut self, repo: &Repository, index: &Index) -> Result<()> {
        let stored: HashMap<PackId, u64> = repo
            .store
            .list_kind(ObjectKind::Pack)?
            .into_iter()
            .filter_map(|(n, size)| Some((ObjectKind::Pack.id::<PackId>(&n)?, size)))
            .collect();
        let marked: HashSet<PackId> = match repo.list_deletions() {
            Ok(m) => m.into_iter().flat_map(|(_, d)| d.packs).collect(),
            Err(e) => {
                self.problem("deletions", e.to_string());
                HashSet::new()
            }
        };
        self.report.packs = index.packs.len();
        for (i, (p, size)) in index.packs.iter().zip(&index.pack_sizes).enumerate() {
            match stored.get(p) {
                None => {
                    self.problem(
                        &store::pack_path(p),
                        "listed in the index but missing".into(),
                    );
                    self.bad_packs.insert(i as u32);
                }
                Some(s) if s != size => {
                    self.problem(
                        &store::pack_path(p),
                        format!("{s} bytes, the index says {size}"),
                    );
                    self.bad_packs.insert(i as u32);
                }
                Some(_) => {}
            }
        }
        let live: HashSet<PackId> = index.packs.iter().copied().collect();
        let unindexed = stored
            .keys()
            .filter(|p| !live.contains(p) && !marked.contains(p))
            .count();
        if unindexed > 0 {
            self.report.notes.push(format!("{unindexed} packs are in no index (left by an interrupted backup; prune removes them)"));
        }
        let awaiting = stored
            .keys()
            .filter(|p| marked.contains(p) && !live.contains(p))
            .count();
        if awaiting > 0 {
            self.report
                .notes
                .push(format!("{awaiting} packs are marked for deletion by prune"));
        }
        Ok(())
    }

    /// Every snapshot listed, one by one.
    fn snapshots(
        &mut self,
        repo: &IndexedRepository,
        names: &[String],
    ) -> Vec<(SnapshotId, Snapshot)> {
        let mut snaps: Vec<(SnapshotId, Snapshot)> = Vec::new();
        for name in names {
            let Some(id) = ObjectKind::Snapshot.id::<SnapshotId>(name) else {
                continue;
            };
            match repo.repo.load_snapshot(&id) {
                Ok(s) => snaps.push((id, s)),
                Err(RepoError::NotFound { .. }) => {} // forgotten meanwhile
                Err(e) => self.problem(name, e.to_string()),
            }
        }
        self.report.snapshots = snaps.len();
        snaps
    }

    /// Every tree of every snapshot loads, and every data blob it names is
    /// indexed (in a pack that is not damaged).
    fn structure(&mut self, repo: &IndexedRepository, snaps: &[(SnapshotId, Snapshot)]) {
        let mut visited: HashSet<ChunkId> = HashSet::new();
        for (sid, s) in snaps {
            let mut stack = vec![s.tree];
            while let Some(t) = stack.pop() {
                if !visited.insert(t) {
                    continue;
                }
                match repo.load_tree(&t) {
                    Ok(tree) => {
                        for n in tree.nodes {
                            if let NodeKind::Dir { tree } = n.kind {
                                stack.push(tree);
                            }
                            for id in n.data_ids() {
                                let loc =
                                    repo.index.read().expect("index").get(BlobKind::Data, &id);
                                match loc {
                                    None => {
                                        if self.damaged.insert((BlobKind::Data, id)) {
                                            self.problem(
                                                &format!("data blob {id}"),
                                                "not in any index".into(),
                                            );
                                        }
                                    }
                                    Some(l) if self.bad_packs.contains(&l.pack) => {
                                        self.damaged.insert((BlobKind::Data, id));
                                    }
                                    Some(_) => {}
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.damaged.insert((BlobKind::Tree, t));
                        self.problem(
                            &format!("tree blob {t} (in snapshot {})", sid.short()),
                            e.to_string(),
                        );
                    }
                }
            }
        }
    }

    /// `--read-data`: the selected packs read in parallel, each blob
    /// authenticated and each pack hashed against its name.
    fn read_packs(&mut self, repo: &IndexedRepository, read_data: ReadData) {
        let idx = repo.index.read().expect("index");
        let mut per_pack: BTreeMap<u32, Vec<(BlobKind, ChunkId)>> = BTreeMap::new();
        for kind in [BlobKind::Data, BlobKind::Tree] {
            for (id, loc) in idx.iter(kind) {
                per_pack.entry(loc.pack).or_default().push((kind, id));
            }
        }
        let todo: Vec<(u32, Vec<(BlobKind, ChunkId)>)> = per_pack
            .into_iter()
            .filter(|(p, _)| {
                !self.bad_packs.contains(p) && selected(&idx.packs[*p as usize], read_data)
            })
            .collect();
        drop(idx);
        let found: Mutex<ReadFindings> = Mutex::new(ReadFindings::default());
        let done = std::sync::atomic::AtomicUsize::new(0);
        let total = todo.len();
        let stage = &self.stage;
        todo.par_iter().enumerate().for_each(|(i, (pack, blobs))| {
            // Read the next pack ahead (rayon gives each thread a run of
            // consecutive packs).
            if let Some((next, _)) = todo.get(i + 1) {
                repo.prefetch_pack(*next);
            }
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            crate::set_stage(stage, format!("reading packs: {n}/{total}"));
            read_pack(repo, *pack, blobs, &found);
        });
        let ReadFindings {
            problems: probs,
            bad,
            blobs: blobs_read,
            bytes: bytes_read,
        } = found.into_inner().expect("found");
        self.report.packs_read = todo.len();
        self.report.blobs_read = blobs_read;
        self.report.bytes_read = bytes_read;
        self.report.problems.extend(probs);
        self.damaged.extend(bad);
    }

    /// Trees that expand past the bounds restore and ls enforce
    /// (format-spec §10): a planted tree bomb passes every other check.
    fn tree_limits(&mut self, repo: &IndexedRepository, snaps: &[(SnapshotId, Snapshot)]) {
        let mut memo = HashMap::new();
        for (sid, s) in snaps {
            let what = format!("snapshot {}", sid.short());
            if let Err(RepoError::Refused(m)) =
                repo.check_tree_limits_with(&s.tree, &what, &mut memo)
            {
                self.problem(&what, m);
            }
        }
    }

    /// Which snapshots and paths the damage reaches (trees without damage
    /// below are remembered, so shared subtrees are walked once).
    fn affected(&mut self, repo: &IndexedRepository, snaps: &[(SnapshotId, Snapshot)]) {
        if self.damaged.is_empty() {
            return;
        }
        let mut clean = HashSet::new();
        for (sid, s) in snaps {
            let mut paths = Vec::new();
            let mut hit = false;
            affected_paths(
                repo,
                &s.tree,
                b"",
                &self.damaged,
                &mut clean,
                &mut paths,
                &mut hit,
            );
            if hit {
                self.report.affected.insert(
                    *sid,
                    paths
                        .into_iter()
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .take(20)
                        .collect(),
                );
            }
        }
    }
}

/// Read one pack front to back in windows (memory: a window per thread, not
/// a pack), hashed as it goes and checked against the pack's name at the
/// end; its header must agree with the index and every blob open.
fn read_pack(
    repo: &IndexedRepository,
    pack: u32,
    blobs: &[(BlobKind, ChunkId)],
    found: &Mutex<ReadFindings>,
) {
    let mut reader = crate::indexed::PackReader::new(repo, pack, CHECK_WINDOW);
    let name = reader.name().to_string();
    let size = reader.size();
    let mut errs = Vec::new();
    let mut bad = Vec::new();
    let header = reader
        .read(0, cairn_format::pack::PREFIX_LEN.min(size as usize) as u64)
        .and_then(|prefix| {
            cairn_format::pack::header_len(&prefix).map_err(|e| RepoError::from_format(&name, e))
        })
        .and_then(|hl| reader.read(0, (cairn_format::pack::PREFIX_LEN + hl) as u64))
        .and_then(|start| {
            cairn_format::pack::decode_header(&repo.repo.key, &start, size)
                .map_err(|e| RepoError::from_format(&name, e))
        });
    match header {
        Ok((key, entries)) => {
            // Header must agree with the index.
            let in_header: HashMap<(BlobKind, ChunkId), (u32, u32)> = entries
                .iter()
                .map(|e| ((e.kind, e.id), (e.offset, e.length)))
                .collect();
            let mut located: Vec<_> = {
                let idx = repo.index.read().expect("index");
                blobs
                    .iter()
                    .map(|(kind, id)| (*kind, *id, idx.get(*kind, id).expect("listed")))
                    .collect()
            };
            located.sort_by_key(|(_, _, loc)| loc.offset);
            let mut plain = Vec::new();
            for (kind, id, loc) in &located {
                if in_header.get(&(*kind, *id)) != Some(&(loc.offset, loc.length)) {
                    errs.push(format!(
                        "{} {} is not where the index says",
                        kind.name(),
                        id.short()
                    ));
                    bad.push((*kind, *id));
                    continue;
                }
                let opened = reader
                    .blob(loc.offset, loc.length)
                    .and_then(|sealed| repo.open_sealed(*kind, id, loc, &key, &sealed, &mut plain));
                if let Err(e) = opened {
                    errs.push(e.to_string());
                    bad.push((*kind, *id));
                }
            }
        }
        Err(e) => {
            errs.push(format!("header: {e}"));
            bad.extend(blobs.iter().copied());
        }
    }
    // Whatever the blobs said, a pack that does not hash to its name is
    // damaged: every blob in it is counted as damaged.
    if let Err(e) = reader.finish() {
        errs.push(match e {
            RepoError::Corrupted { detail, .. } => detail,
            other => other.to_string(),
        });
        bad.extend(blobs.iter().copied());
    } else {
        found.lock().expect("found").bytes += size;
    }
    let mut f = found.lock().expect("found");
    f.blobs += blobs.len() as u64;
    for e in errs {
        f.problems.push(Problem {
            object: name.clone(),
            detail: e,
        });
    }
    f.bad.extend(bad);
}

/// Bytes of a pack read at once by `check --read-data`.
const CHECK_WINDOW: u64 = 4 << 20;

/// What the parallel pack reads found.
#[derive(Default)]
struct ReadFindings {
    problems: Vec<Problem>,
    bad: HashSet<(BlobKind, ChunkId)>,
    blobs: u64,
    bytes: u64,
}

/// Paths reported per snapshot.
const AFFECTED_PATHS: usize = 20;

/// Collect up to [`AFFECTED_PATHS`] paths below `tree` that use damaged
/// blobs; returns whether the subtree is clean (then remembered in `clean`).
fn affected_paths(
    repo: &IndexedRepository,
    tree: &ChunkId,
    prefix: &[u8],
    damaged: &HashSet<(BlobKind, ChunkId)>,
    clean: &mut HashSet<ChunkId>,
    out: &mut Vec<String>,
    hit: &mut bool,
) -> bool {
    if clean.contains(tree) {
        return true;
    }
    let here = if prefix.is_empty() {
        "/".to_string()
    } else {
        String::from_utf8_lossy(prefix).into_owned()
    };
    if damaged.contains(&(BlobKind::Tree, *tree)) {
        *hit = true;
        out.push(format!("{here} (directory listing)"));
        return false;
    }
    let Ok(t) = repo.load_tree(tree) else {
        *hit = true;
        out.push(format!("{here} (directory listing)"));
        return false;
    };
    let mut is_clean = true;
    for n in t.nodes {
        if *hit && out.len() >= AFFECTED_PATHS {
            // Enough named: the snapshot is known to be hit.
            return false;
        }
        let mut p = prefix.to_vec();
        p.push(b'/');
        p.extend_from_slice(&n.name);
        match n.kind {
            NodeKind::Dir { tree } => {
                is_clean &= affected_paths(repo, &tree, &p, damaged, clean, out, hit);
            }
            _ if n
                .data_ids()
                .any(|id| damaged.contains(&(BlobKind::Data, id))) =>
            {
                *hit = true;
                is_clean = false;
                out.push(String::from_utf8_lossy(&p).into_owned());
            }
            _ => {}
        }
    }
    if is_clean {
        clean.insert(*tree);
    }
    is_clean
}

impl IndexedRepository {
    /// Assemble from an opened repository and an index built elsewhere.
    pub fn from_parts(repo: Arc<Repository>, index: Index) -> Self {
        IndexedRepository::new_internal(repo, RwLock::new(index))
    }
}
