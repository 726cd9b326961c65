//! Restoring snapshots, listing and dumping their content.
//!
//! Restore creates every entry first (files at their final size, so holes stay
//! holes), then reads the packs it needs in parallel — each pack once, whole
//! when most of it is needed — authenticates and re-hashes every blob, and
//! writes it at its offsets in every file that uses it. Metadata comes last,
//! deepest entries first, so writing a file does not disturb its directory's
//! mtime.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use cairn_format::tree::{Extent, Node, NodeKind, Tree, XattrValue};
use cairn_format::{BlobKind, ChunkId};
use rayon::prelude::*;

use crate::error::{RepoError, Result};
use crate::fsat::{Beneath, Create, Ident, Meta};
use crate::index::BlobLocation;
use crate::indexed::IndexedRepository;
use crate::select::Patterns;

/// Bytes of a pack read at once when most of it is restored.
const RESTORE_WINDOW: u64 = 4 << 20;

/// Reports blobs (and so the files using them) as damaged.
type FailFn<'a> = dyn Fn(&[(ChunkId, BlobLocation)], &str, bool) + Sync + 'a;

/// Settings of a restore.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Directory to restore into.
    pub target: PathBuf,
    /// Restore only this part of the snapshot (a directory's content, or a
    /// file), at the target's root (`restore SNAPSHOT:SUBPATH`).
    pub subpath: Option<Vec<u8>>,
    /// Restore only what matches (a directory with everything beneath it,
    /// and the directories above it); empty = all. Matched against
    /// snapshot paths (see [`crate::select`]); a pattern that matches
    /// nothing is an error.
    pub include: Patterns,
    /// Leave out what matches (a directory with everything beneath it); a
    /// pattern that matches nothing is an error.
    pub exclude: Patterns,
    /// Do not set extended attributes (other than ACLs).
    pub no_xattrs: bool,
    /// Do not set POSIX ACLs (`system.posix_acl_access`/`_default`).
    pub no_acls: bool,
    /// Allow a non-empty target and replace what is there.
    pub overwrite: bool,
    /// Leave ownership to the restoring user (as root, do not set the
    /// snapshot's owners).
    pub no_owner: bool,
    /// Do not create device nodes or FIFOs.
    pub no_special: bool,
    /// Clear setuid and setgid bits, and leave out file capabilities
    /// (`security.capability`), which grant privileges as setuid does.
    pub no_setuid: bool,
    /// How errors name what is restored ("snapshot 1a2b3c4d"; empty: "the
    /// snapshot").
    pub what: String,
}

/// What a restore held back on purpose (`--no-owner`, `--no-special`,
/// `--no-setuid`, or a stack `files` service's defaults).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Withheld {
    /// Device nodes and FIFOs not created.
    pub special: u64,
    /// Entries whose setuid/setgid bits were cleared.
    pub setuid: u64,
    /// Entries whose file capabilities (`security.capability`) were left
    /// out (`--no-setuid`).
    pub capabilities: u64,
    /// Entries whose snapshot owner was not set (it differs from the
    /// restoring user's).
    pub owner: u64,
}

impl Withheld {
    /// "2 device nodes/FIFOs not created, 1 setuid/setgid bits cleared, …",
    /// or `None` when nothing was held back.
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.special > 0 {
            parts.push(format!("{} device nodes/FIFOs not created", self.special));
        }
        if self.setuid > 0 {
            parts.push(format!("{} setuid/setgid bits cleared", self.setuid));
        }
        if self.capabilities > 0 {
            parts.push(format!("{} file capabilities left out", self.capabilities));
        }
        if self.owner > 0 {
            parts.push(format!("{} owners not set", self.owner));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// A file that could not be restored correctly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Path in the target.
    pub path: PathBuf,
    /// What went wrong (names the object).
    pub detail: String,
    /// The target failed (no space, a name too long, permissions), not the
    /// repository: the repository is not damaged by this.
    pub on_target: bool,
}

/// Live counters of a running restore.
#[derive(Default, Debug)]
pub struct RestoreProgress {
    /// Content bytes written.
    pub bytes_written: AtomicU64,
    /// Content bytes to write.
    pub bytes_total: AtomicU64,
}

/// Outcome of a restore.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Regular files restored.
    pub files: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Symlinks restored.
    pub symlinks: u64,
    /// Other entries (FIFOs, devices).
    pub others: u64,
    /// Entries restored as hard links to an earlier one (counted in
    /// `files`/`others` too).
    pub links: u64,
    /// Content bytes written.
    pub bytes_written: u64,
    /// Files whose content is damaged or missing; non-empty means failure.
    pub damaged: Vec<Damage>,
    /// Non-fatal problems (e.g. ownership that could not be set).
    pub warnings: Vec<String>,
    /// What was held back on purpose.
    pub withheld: Withheld,
}

/// One entry to restore: its path relative to the target, its node, and
/// the identity of what this restore created for it.
struct Item {
    rel: PathBuf,
    node: Node,
    /// The earlier entry of this restore this one was a hard link to.
    link_to: Option<usize>,
    /// Set once it was made a link to `link_to` (its content and metadata
    /// are then the leader's).
    linked: std::sync::atomic::AtomicBool,
    made: OnceLock<Ident>,
    /// Set when a later entry of this restore got the same identity: this
    /// one was deleted by someone else in between (its inode number was
    /// handed out again), so nothing is done through its identity.
    revoked: std::sync::atomic::AtomicBool,
}

impl Item {
    /// The identity of what this restore created for the entry, if it
    /// still stands.
    fn ident(&self) -> Option<&Ident> {
        if self.revoked.load(Ordering::Relaxed) {
            return None;
        }
        self.made.get()
    }
}

/// Bounds on what a snapshot's tree may expand to (format-spec §10). Trees
/// are shared by id, so 41 tree blobs can describe 2^40 paths: before a
/// restore or a listing walks a snapshot, its expansion is computed over the
/// distinct trees only and refused when it passes a bound. The defaults are
/// far above real trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeLimits {
    /// Entries (files, directories, links, …) in the whole tree.
    pub entries: u64,
    /// Directory levels below the root.
    pub depth: u32,
    /// Sum of the entries' apparent sizes (sparse files count whole).
    pub bytes: u64,
}

impl Default for TreeLimits {
    fn default() -> Self {
        TreeLimits {
            entries: 1_000_000_000,
            depth: 1024,
            bytes: 1 << 50,
        }
    }
}

/// What a tree expands to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expansion {
    /// Entries below (not counting the tree itself).
    pub entries: u64,
    /// Levels of directories below.
    pub depth: u32,
    /// Sum of apparent sizes.
    pub bytes: u64,
}

/// An entry of a snapshot with its path.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Absolute path inside the snapshot (bytes).
    pub path: Vec<u8>,
    /// The node.
    pub node: Node,
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// A tree that cannot be read, named as the directory whose listing is lost.
fn listing_error(e: RepoError, prefix: &[u8]) -> RepoError {
    match e {
        RepoError::Corrupted { object, detail } => RepoError::Corrupted {
            object,
            detail: format!(
                "{detail}; the listing of directory {} cannot be read",
                if prefix.is_empty() {
                    "/".into()
                } else {
                    String::from_utf8_lossy(prefix).into_owned()
                }
            ),
        },
        other => other,
    }
}

/// The name under which an ACL travels as an extended attribute.
fn is_acl(name: &[u8]) -> bool {
    name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
}

/// Whether two entries are links to one inode: equal as nodes but for the
/// name (a snapshot that claims a link between different files gets two).
fn same_inode(a: &Node, b: &Node) -> bool {
    a.kind == b.kind
        && a.mode == b.mode
        && (a.uid, a.gid) == (b.uid, b.gid)
        && a.mtime == b.mtime
        && a.size == b.size
        && a.xattrs == b.xattrs
}

/// Normalize a user-given snapshot path: leading slash, no trailing slash.
pub fn normalize_snapshot_path(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in p
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
    {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    out
}

impl IndexedRepository {
    /// Refuse a tree whose expansion passes the repository's
    /// [`TreeLimits`]; `what` names it in the error (e.g. "snapshot 1a2b…").
    /// Reads each distinct tree once.
    pub fn check_tree_limits(&self, root: &ChunkId, what: &str) -> Result<Expansion> {
        self.check_tree_limits_with(root, what, &mut HashMap::new())
    }

    /// [`Self::check_tree_limits`] sharing what is known of trees between
    /// calls (`check` over many snapshots).
    pub(crate) fn check_tree_limits_with(
        &self,
        root: &ChunkId,
        what: &str,
        memo: &mut HashMap<ChunkId, Expansion>,
    ) -> Result<Expansion> {
        let limits = self.repo.tree_limits;
        self.expand(root, b"", 0, &limits, memo)
            .map_err(|e| match e {
                RepoError::Refused(m) => RepoError::Refused(format!(
                    "{what}: {m}; refused before reading it (a tree that expands this far is planted or absurd; the --max-tree-entries, --max-tree-depth and --max-tree-size options raise the bounds)"
                )),
                other => other,
            })
    }

    fn expand(
        &self,
        id: &ChunkId,
        prefix: &[u8],
        depth: u32,
        limits: &TreeLimits,
        memo: &mut HashMap<ChunkId, Expansion>,
    ) -> Result<Expansion> {
        let over = |e: &Expansion, depth: u32| -> Result<()> {
            if e.entries > limits.entries {
                return Err(RepoError::Refused(format!(
                    "its tree holds more than {} entries",
                    limits.entries
                )));
            }
            if e.bytes > limits.bytes {
                return Err(RepoError::Refused(format!(
                    "its files add up to more than {} bytes",
                    limits.bytes
                )));
            }
            if depth.saturating_add(e.depth) > limits.depth {
                return Err(RepoError::Refused(format!(
                    "its tree is more than {} directories deep",
                    limits.depth
                )));
            }
            Ok(())
        };
        if let Some(e) = memo.get(id) {
            over(e, depth)?;
            return Ok(*e);
        }
        if depth > limits.depth {
            return Err(RepoError::Refused(format!(
                "its tree is more than {} directories deep",
                limits.depth
            )));
        }
        let t = self.load_tree(id).map_err(|e| listing_error(e, prefix))?;
        let mut e = Expansion::default();
        for n in &t.nodes {
            e.entries = e.entries.saturating_add(1);
            e.bytes = e.bytes.saturating_add(n.size);
            if let NodeKind::Dir { tree } = &n.kind {
                let sub = self.expand(tree, &join(prefix, &n.name), depth + 1, limits, memo)?;
                e.entries = e.entries.saturating_add(sub.entries);
                e.bytes = e.bytes.saturating_add(sub.bytes);
                e.depth = e.depth.max(sub.depth.saturating_add(1));
            }
            over(&e, depth)?;
        }
        memo.insert(*id, e);
        Ok(e)
    }

    /// Walk a tree depth-first in name order, calling `f` for every entry whose
    /// path passes `filter` (a directory that fails it is not descended into).
    /// Callers walking a whole snapshot check [`Self::check_tree_limits`] first.
    pub fn walk(
        &self,
        tree: &ChunkId,
        prefix: &[u8],
        filter: &dyn Fn(&[u8]) -> bool,
        f: &mut dyn FnMut(Entry) -> Result<()>,
    ) -> Result<()> {
        let t = self.load_tree(tree).map_err(|e| listing_error(e, prefix))?;
        for node in t.nodes {
            let path = join(prefix, &node.name);
            if !filter(&path) {
                continue;
            }
            let sub = match &node.kind {
                NodeKind::Dir { tree } => Some(*tree),
                _ => None,
            };
            f(Entry {
                path: path.clone(),
                node,
            })?;
            if let Some(sub) = sub {
                self.walk(&sub, &path, filter, f)?;
            }
        }
        Ok(())
    }

    /// Find the node at a snapshot path (`/` gives `None` with the root tree).
    pub fn find_node(&self, root: &ChunkId, path: &[u8]) -> Result<Option<Node>> {
        let path = normalize_snapshot_path(path);
        let mut tree: Tree = self.load_tree(root)?;
        let comps: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        if comps.is_empty() {
            return Ok(None);
        }
        for (i, c) in comps.iter().enumerate() {
            let node = tree.find(c).cloned().ok_or_else(|| {
                RepoError::InvalidInput(format!(
                    "{} not found in the snapshot",
                    String::from_utf8_lossy(&path)
                ))
            })?;
            if i + 1 == comps.len() {
                return Ok(Some(node));
            }
            match node.kind {
                NodeKind::Dir { tree: t } => tree = self.load_tree(&t)?,
                _ => {
                    return Err(RepoError::InvalidInput(format!(
                        "{} is not a directory",
                        String::from_utf8_lossy(c)
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Write a file's content (holes as zeros) to `out`.
    pub fn dump_file(&self, node: &Node, out: &mut dyn Write) -> Result<()> {
        let NodeKind::File { extents } = &node.kind else {
            return Err(RepoError::InvalidInput(format!(
                "{} is not a regular file",
                String::from_utf8_lossy(&node.name)
            )));
        };
        let zeros = vec![0u8; 1 << 16];
        for e in extents {
            match e {
                Extent::Chunk { id, .. } => {
                    let b = self.read_blob(BlobKind::Data, id)?;
                    out.write_all(&b)
                        .map_err(|e| RepoError::io("<stdout>", e))?;
                }
                Extent::Hole { len } => {
                    let mut left = *len;
                    while left > 0 {
                        let n = left.min(zeros.len() as u64) as usize;
                        out.write_all(&zeros[..n])
                            .map_err(|e| RepoError::io("<stdout>", e))?;
                        left -= n as u64;
                    }
                }
            }
        }
        Ok(())
    }

    /// The entries below `prefix` a restore selects, in walk order: what
    /// `include` matches (`inherited`: an ancestor matched) with the
    /// directories above it, less what `exclude` matches. Returns whether
    /// anything below was selected.
    fn select(
        &self,
        tree: &ChunkId,
        prefix: &[u8],
        inherited: bool,
        opts: &RestoreOptions,
        out: &mut Vec<Entry>,
    ) -> Result<bool> {
        let t = self.load_tree(tree).map_err(|e| listing_error(e, prefix))?;
        let all = opts.include.is_empty();
        let mut any = false;
        for node in t.nodes {
            let path = join(prefix, &node.name);
            let sub = match &node.kind {
                NodeKind::Dir { tree } => Some(*tree),
                _ => None,
            };
            // Both are matched (and their hits counted) before either
            // decides, so that neither is reported as matching nothing
            // when the other took the path.
            let is_dir = sub.is_some();
            let included = !(inherited || all) && opts.include.matches(&path, is_dir);
            if opts.exclude.matches(&path, is_dir) {
                continue;
            }
            let here = inherited || all || included;
            match sub {
                None if here => {
                    out.push(Entry { path, node });
                    any = true;
                }
                None => {}
                Some(sub) => {
                    if !here && !opts.include.may_match_below(&path) {
                        continue;
                    }
                    let at = out.len();
                    out.push(Entry {
                        path: path.clone(),
                        node,
                    });
                    if self.select(&sub, &path, here, opts, out)? || here {
                        any = true;
                    } else {
                        out.truncate(at);
                    }
                }
            }
        }
        Ok(any)
    }

    /// Restore a snapshot's tree into `opts.target`.
    pub fn restore(
        &self,
        root: &ChunkId,
        opts: &RestoreOptions,
        progress: &RestoreProgress,
    ) -> Result<RestoreReport> {
        let target = &opts.target;
        if target.exists() {
            let non_empty = fs::read_dir(target)
                .map_err(|e| RepoError::io(target, e))?
                .next()
                .is_some();
            if non_empty && !opts.overwrite {
                return Err(RepoError::InvalidInput(format!(
                    "target {} is not empty (use --overwrite to restore into it)",
                    target.display()
                )));
            }
        }
        fs::create_dir_all(target).map_err(|e| RepoError::io(target, e))?;
        let beneath = Beneath::open(target).map_err(|e| RepoError::io(target, e))?;

        let what = if opts.what.is_empty() {
            "the snapshot"
        } else {
            &opts.what
        };
        self.check_tree_limits(root, what)?;
        let mut report = RestoreReport::default();
        let me = (crate::sys::euid(), crate::sys::egid());
        let mut entries: Vec<Entry> = Vec::new();
        let base = opts.subpath.as_deref().map(normalize_snapshot_path);
        match &base {
            None => {
                self.select(root, b"", false, opts, &mut entries)?;
            }
            Some(sub) => match self.find_node(root, sub).map_err(|e| match e {
                RepoError::InvalidInput(m) => {
                    RepoError::InvalidInput(m.replace("the snapshot", what))
                }
                other => other,
            })? {
                None => self
                    .select(root, b"", false, opts, &mut entries)
                    .map(|_| ())?,
                Some(node) => match &node.kind {
                    NodeKind::Dir { tree } => {
                        let here = opts.include.is_empty() || opts.include.matches(sub, true);
                        if !opts.exclude.matches(sub, true) {
                            self.select(tree, sub, here, opts, &mut entries)?;
                        }
                    }
                    _ => {
                        let included = opts.include.is_empty() || opts.include.matches(sub, false);
                        if !opts.exclude.matches(sub, false) && included {
                            entries.push(Entry {
                                path: sub.clone(),
                                node,
                            });
                        }
                    }
                },
            },
        }
        // Includes prune the walk: an exclude may match only outside what
        // they selected, which is no typo. Look for it in the whole tree.
        if !opts.include.is_empty() && !opts.exclude.unmatched().is_empty() {
            let tree = match &base {
                Some(sub) => match self.find_node(root, sub)? {
                    Some(Node {
                        kind: NodeKind::Dir { tree },
                        ..
                    }) => Some((tree, sub.clone())),
                    _ => None,
                },
                None => Some((*root, Vec::new())),
            };
            if let Some((tree, prefix)) = tree {
                self.walk(&tree, &prefix, &|_| true, &mut |e| {
                    let is_dir = matches!(e.node.kind, NodeKind::Dir { .. });
                    opts.exclude.matches(&e.path, is_dir);
                    Ok(())
                })?;
            }
        }
        let name = |flag: &str, (p, ci): (&str, bool)| {
            format!("--{}{flag} {p:?}", if ci { "i" } else { "" })
        };
        let unmatched: Vec<String> = opts
            .include
            .unmatched()
            .into_iter()
            .map(|p| name("include", p))
            .chain(
                opts.exclude
                    .unmatched()
                    .into_iter()
                    .map(|p| name("exclude", p)),
            )
            .collect();
        if !unmatched.is_empty() {
            return Err(RepoError::InvalidInput(format!(
                "{} of {what} (patterns match snapshot paths such as /home/ann/file; see restore --help)",
                if unmatched.len() == 1 {
                    format!("{} matches nothing", unmatched[0])
                } else {
                    format!("{} match nothing", unmatched.join(", "))
                }
            )));
        }
        // Where entries go: below the target, without the subpath's own
        // directories (a file given as the subpath keeps its name).
        let strip = match (&base, entries.first()) {
            (Some(sub), Some(first)) if first.path == *sub => {
                sub.iter().rposition(|&c| c == b'/').unwrap_or(0)
            }
            (Some(sub), _) => sub.len(),
            (None, _) => 0,
        };
        let mut items: Vec<Item> = Vec::new();
        let mut leaders: HashMap<(u64, u64), usize> = HashMap::new();
        for e in entries {
            let mut node = e.node;
            if opts.no_special
                && matches!(
                    node.kind,
                    NodeKind::Fifo | NodeKind::CharDevice { .. } | NodeKind::BlockDevice { .. }
                )
            {
                report.withheld.special += 1;
                continue;
            }
            let foreign = opts.no_owner && (node.uid, node.gid) != me;
            if foreign {
                report.withheld.owner += 1;
            }
            // Not setting the owner must not hand another user's setuid
            // program (or file capability) to the restoring one either.
            if opts.no_setuid || foreign {
                if node.mode & 0o6000 != 0 {
                    node.mode &= !0o6000;
                    report.withheld.setuid += 1;
                }
                let before = node.xattrs.len();
                node.xattrs.retain(|x| x.name != b"security.capability");
                if node.xattrs.len() != before {
                    report.withheld.capabilities += 1;
                }
            }
            if opts.no_xattrs {
                node.xattrs.retain(|x| is_acl(&x.name));
            }
            if opts.no_acls {
                node.xattrs.retain(|x| !is_acl(&x.name));
            }
            let idx = items.len();
            let link_to = match node.link_key() {
                Some(key) => match leaders.get(&key) {
                    Some(&l) if same_inode(&items[l].node, &node) => Some(l),
                    Some(_) => None,
                    None => {
                        leaders.insert(key, idx);
                        None
                    }
                },
                None => None,
            };
            items.push(Item {
                rel: PathBuf::from(OsStr::from_bytes(&e.path[strip + 1..])),
                node,
                link_to,
                linked: Default::default(),
                made: OnceLock::new(),
                revoked: Default::default(),
            });
        }
        if items.is_empty() && !(opts.include.is_empty() && base.is_none()) {
            return Err(RepoError::InvalidInput(format!(
                "nothing of {what} is selected (after --include/--exclude)"
            )));
        }

        // Parallel work (creating entries, downloading packs) runs on the
        // store's connections: more than the cores when the store is remote
        // and latency, not CPU, bounds it.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(
                self.repo
                    .store
                    .connections
                    .max(rayon::current_num_threads()),
            )
            .thread_name(|i| format!("cairn-restore-{i}"))
            .build()
            .map_err(|e| RepoError::InvalidInput(format!("restore threads: {e}")))?;
        pool.install(|| self.create_entries(&beneath, target, &items, opts.overwrite, &mut report));

        // Plan: which (file, offset) pairs each chunk goes to, grouped by pack.
        let mut targets: HashMap<ChunkId, Vec<(u32, u64)>> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            if item.linked.load(Ordering::Relaxed) {
                continue; // its leader's content is its own
            }
            if let NodeKind::File { extents } = &item.node.kind {
                let mut off = 0u64;
                for e in extents {
                    if let Extent::Chunk { id, .. } = e {
                        targets.entry(*id).or_default().push((i as u32, off));
                        progress.bytes_total.fetch_add(e.len(), Ordering::Relaxed);
                    }
                    off += e.len();
                }
            }
        }
        let damaged = Mutex::new(Vec::new());
        let mut by_pack: BTreeMap<u32, Vec<(ChunkId, BlobLocation)>> = BTreeMap::new();
        {
            let idx = self.index.read().expect("index lock");
            for id in targets.keys() {
                match idx.get(BlobKind::Data, id) {
                    Some(loc) => by_pack.entry(loc.pack).or_default().push((*id, loc)),
                    None => {
                        let mut d = damaged.lock().expect("damage");
                        for (i, _) in &targets[id] {
                            d.push(Damage {
                                path: target.join(&items[*i as usize].rel),
                                detail: format!("data blob {id} is not in any index (missing)"),
                                on_target: false,
                            });
                        }
                    }
                }
            }
        }
        let packs: Vec<(u32, Vec<(ChunkId, BlobLocation)>)> = by_pack
            .into_iter()
            .map(|(p, mut v)| {
                v.sort_by_key(|x| x.1.offset);
                (p, v)
            })
            .collect();
        let written = AtomicU64::new(0);
        pool.install(|| {
            packs.par_iter().enumerate().for_each(|(i, (pack, blobs))| {
                // Read the next pack ahead when it will be read whole (rayon
                // gives each thread a run of consecutive packs).
                if let Some((next, next_blobs)) = packs.get(i + 1)
                    && self.reads_whole(*next, next_blobs)
                {
                    self.prefetch_pack(*next);
                }
                let fail = |blobs: &[(ChunkId, BlobLocation)], detail: &str, on_target: bool| {
                    let mut d = damaged.lock().expect("damage");
                    for (id, _) in blobs {
                        for (i, _) in &targets[id] {
                            d.push(Damage {
                                path: target.join(&items[*i as usize].rel),
                                detail: detail.to_string(),
                                on_target,
                            });
                        }
                    }
                };
                let to = Targets {
                    beneath: &beneath,
                    target,
                    items: &items,
                    chunks: &targets,
                };
                if let Err(e) = self.restore_pack(*pack, blobs, &to, &written, progress, &fail) {
                    let local = matches!(e, RepoError::Io { .. });
                    fail(blobs, &e.to_string(), local);
                }
            })
        });
        report.bytes_written = written.into_inner();

        // Attributes are made exact (what the target had removed) where
        // it can hold some the snapshot does not: directories kept by
        // --overwrite, and entries inheriting a default ACL of the target.
        let inherits = crate::sys::xattr_names_fd(beneath.root_fd(), true)
            .is_ok_and(|n| n.iter().any(|n| n == b"system.posix_acl_default"));
        let exact = opts.overwrite || inherits;
        self.set_metadata(&beneath, target, &items, opts.no_owner, exact, &mut report);
        report.links = items
            .iter()
            .filter(|i| i.linked.load(Ordering::Relaxed))
            .count() as u64;
        let mut d = damaged.into_inner().expect("damage");
        d.sort_by(|a, b| a.path.cmp(&b.path));
        d.dedup_by(|a, b| a.path == b.path);
        // A file with damaged content must not pass for a good one: it is
        // kept, for what can be salvaged, under a name that says so.
        let by_path: HashMap<PathBuf, &Item> =
            items.iter().map(|i| (target.join(&i.rel), i)).collect();
        for dmg in &mut d {
            let Some(item) = by_path.get(&dmg.path) else {
                continue;
            };
            if let (NodeKind::File { .. }, Some(made)) = (&item.node.kind, item.ident())
                && crate::fsat::rename_suffix(&beneath, &item.rel, *made, ".damaged").is_ok()
            {
                let mut renamed = dmg.path.clone().into_os_string();
                renamed.push(".damaged");
                dmg.detail
                    .push_str(&format!(" (kept as {})", PathBuf::from(renamed).display()));
            }
        }
        report.damaged.extend(d);
        report.damaged.sort_by(|a, b| a.path.cmp(&b.path));
        report.damaged.dedup_by(|a, b| a.path == b.path);
        Ok(report)
    }

    /// The bytes of an extended attribute's value.
    pub fn xattr_value(&self, v: &XattrValue) -> Result<Vec<u8>> {
        match v {
            XattrValue::Inline(b) => Ok(b.clone()),
            XattrValue::Chunks(c) => {
                let mut out = Vec::with_capacity(v.len() as usize);
                for (id, _) in c {
                    out.extend_from_slice(&self.read_blob(BlobKind::Data, id)?);
                }
                if out.len() as u64 != v.len() {
                    return Err(RepoError::Corrupted {
                        object: format!("data blob {}", c[0].0),
                        detail: format!(
                            "an extended attribute's chunks hold {} bytes, its tree says {}",
                            out.len(),
                            v.len()
                        ),
                    });
                }
                Ok(out)
            }
        }
    }

    /// Whether a restore reads this pack whole (at least half of it is
    /// needed) rather than blob by blob.
    fn reads_whole(&self, pack: u32, blobs: &[(ChunkId, BlobLocation)]) -> bool {
        let size = self.index.read().expect("index lock").pack_sizes[pack as usize];
        let needed: u64 = blobs.iter().map(|b| b.1.length as u64).sum();
        needed * 2 >= size
    }

    fn restore_pack(
        &self,
        pack: u32,
        blobs: &[(ChunkId, BlobLocation)],
        to: &Targets<'_>,
        written: &AtomicU64,
        progress: &RestoreProgress,
        fail: &FailFn<'_>,
    ) -> Result<()> {
        let mut plain = Vec::new();
        let mut put = |id: &ChunkId, loc: &BlobLocation, key: &_, sealed: &[u8]| {
            if let Err(e) = self.open_sealed(BlobKind::Data, id, loc, key, sealed, &mut plain) {
                fail(&[(*id, *loc)], &e.to_string(), false);
                return;
            }
            for (i, off) in &to.chunks[id] {
                let item = &to.items[*i as usize];
                // Creation failed: that is reported already.
                let Some(made) = item.ident() else {
                    continue;
                };
                let r = crate::fsat::open_for_content(to.beneath, &item.rel, *made)
                    .and_then(|f| f.write_all_at(&plain, *off));
                if let Err(e) = r {
                    fail(
                        &[(*id, *loc)],
                        &format!("writing {}: {e}", to.target.join(&item.rel).display()),
                        true,
                    );
                    continue;
                }
                written.fetch_add(plain.len() as u64, Ordering::Relaxed);
                progress
                    .bytes_written
                    .fetch_add(plain.len() as u64, Ordering::Relaxed);
            }
        };
        if self.reads_whole(pack, blobs) {
            // Most of the pack: read it front to back in windows, checked
            // against its name at the end (memory: a window, not a pack).
            let mut reader = crate::indexed::PackReader::new(self, pack, RESTORE_WINDOW);
            let key = reader.key()?;
            for (id, loc) in blobs {
                match reader.blob(loc.offset, loc.length) {
                    Ok(sealed) => put(id, loc, &key, &sealed),
                    Err(e) => fail(&[(*id, *loc)], &e.to_string(), false),
                }
            }
            // Keep going on a mismatch: blobs were authenticated one by one,
            // but the files that use this pack are reported.
            if let Err(e) = reader.finish() {
                fail(blobs, &e.to_string(), false);
            }
        } else {
            let key = self.pack_key(pack, None)?;
            let ranges: Vec<_> = blobs
                .iter()
                .map(|(_, l)| l.offset as u64..l.offset as u64 + l.length as u64)
                .collect();
            let sealed_parts = self.repo.store.get_ranges(&self.pack_name(pack), &ranges)?;
            for ((id, loc), sealed) in blobs.iter().zip(&sealed_parts) {
                put(id, loc, &key, sealed);
            }
        }
        Ok(())
    }

    /// Create every entry: directories level by level, then everything else,
    /// each level in parallel (creating a file costs about a millisecond on
    /// a journaling filesystem here; one at a time, that bounded a restore of
    /// many small files). Entries are created beneath the target's
    /// descriptor, never through a symlink (see [`crate::fsat`]).
    fn create_entries(
        &self,
        beneath: &Beneath,
        target: &std::path::Path,
        items: &[Item],
        overwrite: bool,
        report: &mut RestoreReport,
    ) {
        let damaged = Mutex::new(Vec::new());
        // Identities handed out so far. Entries this restore creates all
        // belong to the restoring user, so two with one (device, inode)
        // mean the first was deleted by someone else and its inode number
        // reused for the second: the first is revoked, or an attacker could
        // swap the two names between the content and metadata steps.
        let owners: Mutex<HashMap<Ident, usize>> = Mutex::new(HashMap::new());
        // Directories by path, as created (the target itself as ""): an
        // entry is only created in the directory this restore made for it.
        let dir_made: Mutex<HashMap<PathBuf, Ident>> = Mutex::new(HashMap::new());
        if let Ok(root) = beneath.root_ident() {
            dir_made.lock().expect("dirs").insert(PathBuf::new(), root);
        }
        let parent_of = |item: &Item| -> Option<Ident> {
            let p = item.rel.parent().unwrap_or(std::path::Path::new(""));
            dir_made.lock().expect("dirs").get(p).copied()
        };
        let create = |(idx, item): &(usize, &Item)| {
            let (idx, item) = (*idx, *item);
            let Some(parent_is) = parent_of(item) else {
                damaged.lock().expect("damage").push(Damage {
                    path: target.join(&item.rel),
                    detail: "not created: its directory was not restored".into(),
                    on_target: true,
                });
                return;
            };
            let what = match &item.node.kind {
                NodeKind::Dir { .. } => Create::Dir,
                NodeKind::File { .. } => Create::File(item.node.size),
                NodeKind::Symlink { target } => Create::Symlink(target),
                NodeKind::Fifo => Create::Fifo,
                NodeKind::CharDevice { rdev } => Create::CharDevice(*rdev),
                NodeKind::BlockDevice { rdev } => Create::BlockDevice(*rdev),
                NodeKind::Socket => return,
            };
            match crate::fsat::create(beneath, &item.rel, Some(parent_is), &what, overwrite) {
                Ok(made) => {
                    let _ = item.made.set(made);
                    if matches!(what, Create::Dir) {
                        dir_made
                            .lock()
                            .expect("dirs")
                            .insert(item.rel.clone(), made);
                    }
                    let prev = owners.lock().expect("owners").insert(made, idx);
                    if let Some(prev) = prev.filter(|p| *p != idx) {
                        items[prev].revoked.store(true, Ordering::Relaxed);
                        damaged.lock().expect("damage").push(Damage {
                            path: target.join(&items[prev].rel),
                            detail: "deleted by someone else while restoring (its inode number was reused for another entry); not restored".into(),
                            on_target: true,
                        });
                    }
                }
                Err(e) => damaged.lock().expect("damage").push(Damage {
                    path: target.join(&item.rel),
                    detail: format!("cannot create: {e}"),
                    on_target: true,
                }),
            }
        };
        let mut dirs: BTreeMap<usize, Vec<(usize, &Item)>> = BTreeMap::new();
        let mut others = Vec::new();
        let mut followers = Vec::new();
        for (idx, item) in items.iter().enumerate() {
            if item.link_to.is_some() {
                match item.node.kind {
                    NodeKind::File { .. } => report.files += 1,
                    NodeKind::Symlink { .. } => report.symlinks += 1,
                    _ => report.others += 1,
                }
                followers.push((idx, item));
                continue;
            }
            match item.node.kind {
                NodeKind::Dir { .. } => {
                    report.dirs += 1;
                    dirs.entry(item.rel.components().count())
                        .or_default()
                        .push((idx, item));
                }
                NodeKind::File { .. } => {
                    report.files += 1;
                    others.push((idx, item));
                }
                NodeKind::Symlink { .. } => {
                    report.symlinks += 1;
                    others.push((idx, item));
                }
                NodeKind::Socket => {}
                _ => {
                    report.others += 1;
                    others.push((idx, item));
                }
            }
        }
        for level in dirs.values() {
            level.par_iter().for_each(create);
        }
        others.par_iter().for_each(create);
        // Hard links, once their leaders exist; where linking is not
        // possible (a file system without links, a leader not created), the
        // entry is created as a file of its own and restored in full.
        let warnings = Mutex::new(Vec::new());
        followers.par_iter().for_each(|&(idx, item)| {
            let leader = &items[item.link_to.expect("follower")];
            let why = match leader.ident() {
                None => "its first link was not restored".to_string(),
                Some(made) => {
                    match crate::fsat::link(
                        beneath,
                        &leader.rel,
                        *made,
                        &item.rel,
                        parent_of(item),
                        overwrite,
                    ) {
                        Ok(()) => {
                            let _ = item.made.set(*made);
                            item.linked.store(true, Ordering::Relaxed);
                            return;
                        }
                        Err(e) => e.to_string(),
                    }
                }
            };
            warnings.lock().expect("warnings").push(format!(
                "{}: not restored as a hard link to {} ({why}); restored as a separate copy",
                target.join(&item.rel).display(),
                target.join(&leader.rel).display()
            ));
            create(&(idx, item));
        });
        report
            .warnings
            .extend(warnings.into_inner().expect("warnings"));
        report.damaged.extend(damaged.into_inner().expect("damage"));
    }

    /// Owner, mode and mtime, deepest entries first, each through a
    /// descriptor checked to be the entry this restore created. An entry
    /// swapped for another one meanwhile is reported as not restored
    /// (nothing is set through it).
    fn set_metadata(
        &self,
        beneath: &Beneath,
        target: &std::path::Path,
        items: &[Item],
        no_owner: bool,
        exact: bool,
        report: &mut RestoreReport,
    ) {
        let root = crate::sys::euid() == 0;
        for item in items.iter().rev() {
            let node = &item.node;
            if item.linked.load(Ordering::Relaxed) {
                continue; // the leader's metadata is its own
            }
            let Some(made) = item.ident() else {
                continue;
            };
            let path = target.join(&item.rel);
            let mut xattrs = Vec::with_capacity(node.xattrs.len());
            for x in &node.xattrs {
                match self.xattr_value(&x.value) {
                    Ok(v) => xattrs.push((x.name.clone(), v)),
                    // The repository's damage, as for content: exit 1.
                    Err(e) => report.damaged.push(Damage {
                        path: path.clone(),
                        detail: format!(
                            "extended attribute {} not restored: {e}",
                            String::from_utf8_lossy(&x.name)
                        ),
                        on_target: false,
                    }),
                }
            }
            let meta = Meta {
                kind: match node.kind {
                    NodeKind::Dir { .. } => rustix::fs::FileType::Directory,
                    NodeKind::File { .. } => rustix::fs::FileType::RegularFile,
                    NodeKind::Symlink { .. } => rustix::fs::FileType::Symlink,
                    NodeKind::Fifo => rustix::fs::FileType::Fifo,
                    NodeKind::CharDevice { .. } => rustix::fs::FileType::CharacterDevice,
                    NodeKind::BlockDevice { .. } => rustix::fs::FileType::BlockDevice,
                    NodeKind::Socket => rustix::fs::FileType::Socket,
                },
                owner: (root && !no_owner).then_some((node.uid, node.gid)),
                mode: (!matches!(node.kind, NodeKind::Symlink { .. }))
                    .then_some(node.mode & 0o7777),
                mtime: (node.mtime.sec, node.mtime.nsec),
                xattrs,
                exact_xattrs: exact,
            };
            for (what, e) in crate::fsat::set_meta(beneath, &item.rel, *made, &meta) {
                if what == "open" {
                    report.damaged.push(Damage {
                        path: path.clone(),
                        detail: format!("metadata not set: {e}"),
                        on_target: true,
                    });
                } else {
                    report
                        .warnings
                        .push(format!("{}: cannot set {what}: {e}", path.display()));
                }
            }
        }
    }
}

/// Where the blobs of a pack go.
struct Targets<'a> {
    beneath: &'a Beneath,
    target: &'a std::path::Path,
    items: &'a [Item],
    chunks: &'a HashMap<ChunkId, Vec<(u32, u64)>>,
}
