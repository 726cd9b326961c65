//! Backing up file trees and streams.
//!
//! Directories are walked on the calling thread in name order. Within a
//! directory, small files are read, chunked and sealed in parallel (one rayon
//! task each, no nested parallelism, so memory stays bounded); large files are
//! taken one at a time through a fixed window with their chunks processed in
//! parallel. A file whose size, mtime, ctime and inode match the parent
//! snapshot is not read at all. The kernel is asked to read ahead: all small
//! files of a directory at once, large files 32 MiB ahead of the reader (on a
//! cold cache, reading 50,000 small files one per worker at a time left the
//! cores waiting on the device most of the time).
//!
//! This module owns a backup's settings, counters and result, the walker's
//! state, and the backup of paths and of streams up to the snapshot's
//! commit. One directory entry by kind is [`entry`]'s, walking directories
//! [`walk`]'s, reading and chunking content [`content`]'s.

mod content;
mod copy;
pub use copy::{COPIED_FROM, CopyMemo};
mod entry;
mod walk;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cairn_chunk::ChunkerParams;
use cairn_format::snapshot::{Snapshot, Summary};
use cairn_format::tree::{Extent, Node, NodeKind, Time, Tree};
use cairn_format::{BlobKind, ChunkId, SnapshotId};

use crate::error::{RepoError, Result};
use crate::indexed::IndexedRepository;
use crate::packer::{Packer, PackerStats};
use crate::repo::now_ns;
use crate::select::Exclusions;

/// Which snapshot to compare against for change detection.
#[derive(Clone, Debug, Default)]
pub enum ParentChoice {
    /// The latest snapshot with the same service, host and paths.
    #[default]
    Auto,
    /// None: read every file.
    None,
    /// This snapshot.
    Id(SnapshotId),
}

/// Settings of one backup.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Service name ("" for none).
    pub service: String,
    /// Host name recorded in the snapshot.
    pub hostname: String,
    /// User name recorded in the snapshot.
    pub username: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Parent selection.
    pub parent: ParentChoice,
    /// Group id (stack backups).
    pub group: Option<[u8; 16]>,
    /// Logical fingerprints recorded by a datastore adapter.
    pub fingerprints: Vec<(String, Vec<u8>)>,
    /// What to leave out.
    pub exclusions: Exclusions,
    /// Walk, read and encode everything, store nothing: report what would
    /// be added (no session, pack, index or snapshot is written).
    pub dry_run: bool,
}

/// Live counters of a running backup (polled by progress displays).
#[derive(Default, Debug)]
pub struct Progress {
    /// Files not in the parent.
    pub files_new: AtomicU64,
    /// Files changed since the parent.
    pub files_changed: AtomicU64,
    /// Files skipped as unchanged.
    pub files_unchanged: AtomicU64,
    /// Directories.
    pub dirs: AtomicU64,
    /// Content bytes read.
    pub bytes_read: AtomicU64,
    /// Logical bytes of all files seen.
    pub bytes_total: AtomicU64,
    /// Sources skipped because of errors.
    pub errors: AtomicU64,
    /// Entries left out by the exclusions (an excluded directory counts
    /// once, whatever it holds).
    pub excluded: AtomicU64,
    /// Messages about skipped sources.
    pub warnings: Mutex<Vec<String>>,
    /// Record each new (`+`) and changed (`M`) file's path in `changes`.
    pub list_changes: bool,
    /// What `list_changes` recorded, in the order files were reached.
    pub changes: Mutex<Vec<(char, PathBuf)>>,
}

impl Progress {
    fn warn(&self, msg: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.warnings.lock().expect("warnings").push(msg);
    }
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Result of a backup.
#[derive(Debug)]
pub struct BackupResult {
    /// The new snapshot's id.
    pub id: SnapshotId,
    /// The new snapshot.
    pub snapshot: Snapshot,
    /// What the session wrote.
    pub stats: PackerStats,
    /// Sources that were skipped.
    pub warnings: Vec<String>,
}

struct Walker<'a> {
    repo: &'a IndexedRepository,
    packer: &'a Packer<'a>,
    progress: &'a Progress,
    params: ChunkerParams,
    excl: &'a Exclusions,
    /// Content of inodes with several links read so far in this backup, by
    /// (device, inode), with the size, mtime and ctime it was read at: the
    /// other links reuse it instead of reading the file again.
    links: Mutex<HashMap<(u64, u64), ReadInode>>,
    /// Paths given to the backup that the exclusions left out.
    top_excluded: AtomicU64,
}

/// A parent snapshot's tree, and whether it records extended attributes
/// (version 2): only then may an unchanged file's be taken from it.
type ParentTree = (Tree, bool);

/// An inode's content as read: size, mtime and ctime when read, extents.
type ReadInode = (u64, Time, Time, Vec<Extent>);

#[derive(Default)]
struct Trie {
    target: bool,
    children: BTreeMap<Vec<u8>, Trie>,
}

/// Make a path absolute and lexically clean (no `.` or `..`).
pub fn clean_absolute(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| RepoError::io(p, e))?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

impl IndexedRepository {
    fn walker<'a>(
        &'a self,
        packer: &'a Packer<'a>,
        progress: &'a Progress,
        excl: &'a Exclusions,
    ) -> Walker<'a> {
        Walker {
            repo: self,
            packer,
            progress,
            params: self.chunker_params(),
            excl,
            links: Mutex::new(HashMap::new()),
            top_excluded: AtomicU64::new(0),
        }
    }

    fn chunker_params(&self) -> ChunkerParams {
        let c = &self.repo.config;
        ChunkerParams {
            min: c.chunk_min,
            avg: c.chunk_avg,
            max: c.chunk_max,
            seed: self.repo.key.chunker_seed(),
        }
    }

    fn find_parent(
        &self,
        opts: &BackupOptions,
        paths: &[Vec<u8>],
    ) -> Result<Option<(SnapshotId, ParentTree)>> {
        let id = match &opts.parent {
            ParentChoice::None => return Ok(None),
            ParentChoice::Id(id) => Some(*id),
            ParentChoice::Auto => self
                .repo
                .list_snapshots_readable()?
                .0
                .into_iter()
                .rev()
                .find(|(_, s)| {
                    s.service == opts.service && s.hostname == opts.hostname && s.paths == paths
                })
                .map(|(id, _)| id),
        };
        match id {
            None => Ok(None),
            Some(id) => {
                // The parent only saves reading unchanged files: if it cannot be
                // read (forgotten or being pruned meanwhile), read everything.
                // Its attributes stand for an unchanged file's only if the
                // same user read them: another (root after a service user)
                // may see namespaces the first could not list.
                let tree = self.repo.load_snapshot(&id).and_then(|s| {
                    let same_user = s.username == opts.username;
                    self.load_tree_versioned(&s.tree)
                        .map(|(t, v2)| (t, v2 && same_user))
                });
                Ok(tree.ok().map(|t| (id, t)))
            }
        }
    }

    /// Back up files and directories. Unreadable entries are skipped and
    /// reported in `warnings`; a missing top-level path is an error.
    pub fn backup_paths(
        &self,
        paths: &[PathBuf],
        opts: &BackupOptions,
        progress: &Progress,
    ) -> Result<BackupResult> {
        let start = Instant::now();
        if !opts.dry_run {
            self.writer_session("backup")?;
        }
        let time_ns = now_ns();
        let mut abs = Vec::new();
        for p in paths {
            let a = clean_absolute(p)?;
            fs::symlink_metadata(&a).map_err(|e| RepoError::io(&a, e))?;
            abs.push(a);
        }
        abs.sort();
        abs.dedup();
        if abs.is_empty() {
            return Err(RepoError::InvalidInput("no paths to back up".into()));
        }
        let path_bytes: Vec<Vec<u8>> = abs
            .iter()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .collect();
        let parent = self.find_parent(opts, &path_bytes)?;
        let mut trie = Trie::default();
        for a in &abs {
            let mut t = &mut trie;
            for c in a.components() {
                if let Component::Normal(n) = c {
                    if t.target {
                        break; // already inside a backed-up path
                    }
                    t = t.children.entry(n.as_bytes().to_vec()).or_default();
                }
            }
            if !t.target {
                t.target = true;
                t.children.clear();
            }
        }
        let packer = if opts.dry_run {
            Packer::dry(self)
        } else {
            Packer::new(self)
        };
        let walker = self.walker(&packer, progress, &opts.exclusions);
        // The walk (directories and small files in parallel) runs on a pool
        // of its own, as many threads as cores; large files' windows are
        // encoded from a plain thread (`Walker::stream_extents`), so at most
        // one window per walk thread is in memory.
        let walk_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("cairn-walk-{i}"))
            .build()
            .map_err(|e| RepoError::InvalidInput(format!("backup threads: {e}")))?;
        let root_nodes = walk_pool.install(|| {
            if trie.target {
                // "/" itself was given: its entries are the root.
                let parent_tree = parent.as_ref().map(|p| &p.1);
                let root_dev = fs::symlink_metadata("/")
                    .map_err(|e| RepoError::io("/", e))?
                    .dev();
                walker
                    .dir_nodes(Path::new("/"), parent_tree, root_dev)?
                    .ok_or_else(|| RepoError::InvalidInput("cannot read the directory /".into()))
            } else {
                walker.backup_trie(&trie, Path::new("/"), parent.as_ref().map(|p| &p.1))
            }
        })?;
        if walker.top_excluded.load(Ordering::Relaxed) == abs.len() as u64 {
            return Err(RepoError::InvalidInput(
                "the exclusions leave out every path given: nothing to back up, no snapshot written"
                    .into(),
            ));
        }
        let root = packer.store_tree(&Tree { nodes: root_nodes })?;
        let reused = packer.reused();
        let stats = packer.finish()?;
        self.commit(
            opts,
            time_ns,
            root,
            path_bytes,
            parent.map(|p| p.0),
            progress,
            stats,
            start,
            &reused,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        opts: &BackupOptions,
        time_ns: i64,
        root: ChunkId,
        paths: Vec<Vec<u8>>,
        parent: Option<SnapshotId>,
        progress: &Progress,
        stats: PackerStats,
        start: Instant,
        reused: &HashSet<(BlobKind, ChunkId)>,
    ) -> Result<BackupResult> {
        let ld = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let snapshot = Snapshot {
            time_ns,
            tree: root,
            parent,
            group: opts.group,
            service: opts.service.clone(),
            hostname: opts.hostname.clone(),
            username: opts.username.clone(),
            paths,
            tags: opts.tags.clone(),
            summary: Summary {
                files_new: ld(&progress.files_new),
                files_changed: ld(&progress.files_changed),
                files_unchanged: ld(&progress.files_unchanged),
                dirs: ld(&progress.dirs),
                bytes_read: ld(&progress.bytes_read),
                bytes_total: ld(&progress.bytes_total),
                data_blobs_added: stats.data_blobs,
                tree_blobs_added: stats.tree_blobs,
                bytes_added: stats.bytes_added,
                errors: ld(&progress.errors),
                duration_ns: start.elapsed().as_nanos() as u64,
            },
            fingerprints: opts.fingerprints.clone(),
            extra: match progress.excluded.load(Ordering::Relaxed) {
                0 => vec![],
                n => vec![("excluded".into(), n.to_string())],
            },
        };
        let (id, late_warning) = if opts.dry_run {
            // Its id as it would be; nothing is written.
            (SnapshotId::of(&snapshot.encode(&self.repo.key)), None)
        } else {
            self.commit_snapshot("backup", &snapshot, reused, &stats.packs_written)?
        };
        Ok(BackupResult {
            id,
            snapshot,
            stats,
            warnings: {
                let mut w = progress.warnings.lock().expect("warnings").clone();
                w.extend(late_warning);
                w
            },
        })
    }

    /// Back up a stream as one file named `name` at the snapshot's root.
    /// `before_commit` runs after all data is durable and before the snapshot is
    /// written; an error from it (e.g. the dump command failed) leaves no snapshot.
    pub fn backup_stream(
        &self,
        reader: impl Read,
        name: &str,
        opts: &BackupOptions,
        progress: &Progress,
        before_commit: impl FnOnce() -> Result<()>,
    ) -> Result<BackupResult> {
        self.backup_stream_measured(reader, name, opts, progress, || {
            before_commit().map(|()| Vec::new())
        })
    }

    /// [`Self::backup_stream`] whose `before_commit` also returns fingerprints
    /// measured while the stream was read; they are added to `opts`'s.
    pub fn backup_stream_measured(
        &self,
        reader: impl Read,
        name: &str,
        opts: &BackupOptions,
        progress: &Progress,
        before_commit: impl FnOnce() -> Result<Vec<(String, Vec<u8>)>>,
    ) -> Result<BackupResult> {
        let start = Instant::now();
        self.writer_session("backup")?;
        let time_ns = now_ns();
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(RepoError::InvalidInput(format!(
                "invalid stream name {name:?}"
            )));
        }
        let packer = Packer::new(self);
        let none = Exclusions::default();
        let walker = self.walker(&packer, progress, &none);
        let mut extents = Vec::new();
        let size = walker
            .stream_extents(reader, &mut extents)
            .map_err(|e| match e {
                RepoError::Io { source, .. } => RepoError::io("<stdin>", source),
                other => other,
            })?;
        Progress::add(&progress.files_new, 1);
        Progress::add(&progress.bytes_total, size);
        let now = Time {
            sec: time_ns.div_euclid(1_000_000_000),
            nsec: time_ns.rem_euclid(1_000_000_000) as u32,
        };
        let node = Node {
            name: name.as_bytes().to_vec(),
            kind: NodeKind::File { extents },
            mode: 0o600,
            uid: crate::sys::euid(),
            gid: 0,
            mtime: now,
            ctime: now,
            inode: 0,
            size,
            device: 0,
            nlink: 0,
            xattrs: Vec::new(),
        };
        let root = packer.store_tree(&Tree { nodes: vec![node] })?;
        let reused = packer.reused();
        let stats = packer.finish()?;
        let measured = before_commit()?;
        let mut opts = opts.clone();
        opts.fingerprints.extend(measured);
        let path = format!("/{name}").into_bytes();
        self.commit(
            &opts,
            time_ns,
            root,
            vec![path],
            None,
            progress,
            stats,
            start,
            &reused,
        )
    }
}

impl IndexedRepository {
    /// Commit `snapshot` under the prune protocol (format-spec §5.1 steps
    /// 5–8): every pack holding a blob it reuses, and every pack this
    /// session wrote, exists; the commit is claimed (a prune that took this
    /// session for dead would have fenced the claim); the snapshot is
    /// written; packs a prune marked meanwhile are listed again. Returns its
    /// id and, if that last step failed, a warning (the snapshot is
    /// committed all the same: the next prune keeps its packs).
    pub(crate) fn commit_snapshot(
        &self,
        command: &str,
        snapshot: &Snapshot,
        reused: &HashSet<(BlobKind, ChunkId)>,
        packs_written: &[cairn_format::index::IndexPack],
    ) -> Result<(SnapshotId, Option<String>)> {
        let session = self.writer_session(command)?;
        self.commit_check(reused, packs_written)?;
        let bytes = snapshot.encode(&self.repo.key);
        let id = SnapshotId::of(&bytes);
        session.claim(&bytes)?;
        // Already there: a prune completed this claimed commit while the
        // session stalled (names are hashes: the bytes are these).
        match self
            .repo
            .store
            .put_new(&crate::store::snapshot_path(&id), bytes)
        {
            Ok(()) | Err(RepoError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        // The snapshot is committed: from here on nothing may turn this
        // into a failure. If re-listing fails, the next prune's phase 2
        // still recomputes what this snapshot uses and keeps it.
        let mut late_warning = None;
        if let Err(e) = self.relist_marked(reused, packs_written) {
            late_warning = Some(format!(
                "snapshot committed, but re-listing packs a concurrent prune marked failed ({e}); the next prune keeps them"
            ));
        }
        Ok((id, late_warning))
    }
}
