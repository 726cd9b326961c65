//! Restoring snapshots, listing and dumping their content.
//!
//! Restore creates every entry first (files at their final size, so holes stay
//! holes), then reads the packs it needs in parallel — each pack once, whole
//! when most of it is needed — authenticates and re-hashes every blob, and
//! writes it at its offsets in every file that uses it. Metadata comes last,
//! deepest entries first, so writing a file does not disturb its directory's
//! mtime.
//!
//! This module owns a restore's settings and report and runs its phases in
//! order ([`IndexedRepository::restore`]): the target, the selection
//! ([`selection`]), what is held back on purpose, creating entries
//! ([`create`]), content ([`content`]), metadata ([`metadata`]) and damaged
//! files kept under a name that says so. Reading trees (limits, walks,
//! lookups, dumps) is in [`tree`].

mod content;
mod create;
mod metadata;
mod selection;
mod tree;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use cairn_format::ChunkId;
use cairn_format::tree::{Node, NodeKind};

use crate::error::{RepoError, Result};
use crate::fsat::{Beneath, Ident};
use crate::indexed::IndexedRepository;
use crate::select::Patterns;
use content::Targets;
use metadata::is_acl;
pub(crate) use tree::join;
pub use tree::{Entry, normalize_snapshot_path};

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

impl IndexedRepository {
    /// Restore a snapshot's tree into `opts.target`.
    pub fn restore(
        &self,
        root: &ChunkId,
        opts: &RestoreOptions,
        progress: &RestoreProgress,
    ) -> Result<RestoreReport> {
        let target = &opts.target;
        let beneath = open_target(opts)?;

        let what = if opts.what.is_empty() {
            "the snapshot"
        } else {
            &opts.what
        };
        self.check_tree_limits(root, what)?;
        let mut report = RestoreReport::default();
        let me = (crate::sys::euid(), crate::sys::egid());
        let (base, entries) = self.selected_entries(root, opts, what)?;
        let items = items_of(entries, base.as_deref(), opts, me, &mut report.withheld);
        if items.is_empty() && !(opts.include.is_empty() && base.is_none()) {
            return Err(RepoError::InvalidInput(format!(
                "nothing of {what} is selected (after --include/--exclude)"
            )));
        }

        let pool = self.restore_pool()?;
        pool.install(|| self.create_entries(&beneath, target, &items, opts.overwrite, &mut report));

        // Plan: which (file, offset) pairs each chunk goes to, grouped by pack.
        let chunks = content::chunk_targets(&items, progress);
        let damaged = Mutex::new(Vec::new());
        let packs = self.packs_of(&chunks, target, &items, &damaged);
        let to = Targets {
            beneath: &beneath,
            target,
            items: &items,
            chunks: &chunks,
        };
        report.bytes_written = self.write_packs(&pool, &packs, &to, progress, &damaged);

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
        let d = damaged.into_inner().expect("damage");
        keep_damaged(&beneath, target, &items, d, &mut report);
        Ok(report)
    }

    /// Parallel work (creating entries, downloading packs) runs on the
    /// store's connections: more than the cores when the store is remote
    /// and latency, not CPU, bounds it.
    fn restore_pool(&self) -> Result<rayon::ThreadPool> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(
                self.repo
                    .store
                    .connections
                    .max(rayon::current_num_threads()),
            )
            .thread_name(|i| format!("cairn-restore-{i}"))
            .build()
            .map_err(|e| RepoError::InvalidInput(format!("restore threads: {e}")))
    }
}

/// The target, made if missing and refused if not empty (unless
/// `--overwrite`), opened for the entries to be created beneath it.
fn open_target(opts: &RestoreOptions) -> Result<Beneath> {
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
    Beneath::open(target).map_err(|e| RepoError::io(target, e))
}

/// The selected entries as items to restore: paths below the target, what
/// is held back left out or cleared (counted in `withheld`), and each later
/// name of a hard-linked inode pointed at its first.
fn items_of(
    entries: Vec<Entry>,
    base: Option<&[u8]>,
    opts: &RestoreOptions,
    me: (u32, u32),
    withheld: &mut Withheld,
) -> Vec<Item> {
    // Where entries go: below the target, without the subpath's own
    // directories (a file given as the subpath keeps its name).
    let strip = match (base, entries.first()) {
        (Some(sub), Some(first)) if first.path == sub => {
            sub.iter().rposition(|&c| c == b'/').unwrap_or(0)
        }
        (Some(sub), _) => sub.len(),
        (None, _) => 0,
    };
    let mut items: Vec<Item> = Vec::new();
    let mut leaders: HashMap<(u64, u64), usize> = HashMap::new();
    for e in entries {
        let mut node = e.node;
        if !hold_back(&mut node, opts, me, withheld) {
            continue;
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
    items
}

/// Clear from `node` what the options hold back (setuid bits, file
/// capabilities, extended attributes, ACLs), counting it in `withheld`.
/// Returns false for an entry not restored at all (`--no-special`).
fn hold_back(
    node: &mut Node,
    opts: &RestoreOptions,
    me: (u32, u32),
    withheld: &mut Withheld,
) -> bool {
    if opts.no_special
        && matches!(
            node.kind,
            NodeKind::Fifo | NodeKind::CharDevice { .. } | NodeKind::BlockDevice { .. }
        )
    {
        withheld.special += 1;
        return false;
    }
    let foreign = opts.no_owner && (node.uid, node.gid) != me;
    if foreign {
        withheld.owner += 1;
    }
    // Not setting the owner must not hand another user's setuid
    // program (or file capability) to the restoring one either.
    if opts.no_setuid || foreign {
        if node.mode & 0o6000 != 0 {
            node.mode &= !0o6000;
            withheld.setuid += 1;
        }
        let before = node.xattrs.len();
        node.xattrs.retain(|x| x.name != b"security.capability");
        if node.xattrs.len() != before {
            withheld.capabilities += 1;
        }
    }
    if opts.no_xattrs {
        node.xattrs.retain(|x| is_acl(&x.name));
    }
    if opts.no_acls {
        node.xattrs.retain(|x| !is_acl(&x.name));
    }
    true
}

/// Add the content damage to the report, one per file; a file with damaged
/// content must not pass for a good one: it is kept, for what can be
/// salvaged, under a name that says so.
fn keep_damaged(
    beneath: &Beneath,
    target: &Path,
    items: &[Item],
    mut d: Vec<Damage>,
    report: &mut RestoreReport,
) {
    d.sort_by(|a, b| a.path.cmp(&b.path));
    d.dedup_by(|a, b| a.path == b.path);
    let by_path: HashMap<PathBuf, &Item> = items.iter().map(|i| (target.join(&i.rel), i)).collect();
    for dmg in &mut d {
        let Some(item) = by_path.get(&dmg.path) else {
            continue;
        };
        if let (NodeKind::File { .. }, Some(made)) = (&item.node.kind, item.ident())
            && crate::fsat::rename_suffix(beneath, &item.rel, *made, ".damaged").is_ok()
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
}
