//! The difference between two snapshot trees (`cairn diff`): entries
//! added, removed, of another type, with other content, or only with other
//! metadata. Content is compared by chunk ids (never by mtimes), so a file
//! rewritten with the same bytes is unchanged and a file whose bytes
//! changed under a kept mtime is modified. Subtrees with equal ids are
//! skipped without being read: the cost follows what changed.

use cairn_format::ChunkId;
use cairn_format::tree::{Extent, Node, NodeKind};

use crate::error::Result;
use crate::indexed::IndexedRepository;
use crate::restore::join;

/// How an entry differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Only in the second tree.
    Added,
    /// Only in the first tree.
    Removed,
    /// In both, of different types (a file became a directory, …).
    TypeChanged,
    /// In both, with different content (file chunks, symlink target,
    /// device numbers).
    Modified,
    /// Same content; mode, owner, mtime, extended attributes or links
    /// differ.
    Metadata,
}

impl Change {
    /// restic's one-letter mark: `+`, `-`, `T`, `M`, `U`.
    pub fn mark(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::TypeChanged => 'T',
            Change::Modified => 'M',
            Change::Metadata => 'U',
        }
    }

    /// Its name in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::TypeChanged => "type_changed",
            Change::Modified => "modified",
            Change::Metadata => "metadata",
        }
    }
}

/// One entry that differs.
#[derive(Clone, Debug)]
pub struct DiffEntry {
    /// Absolute path inside the snapshots.
    pub path: Vec<u8>,
    /// How.
    pub change: Change,
    /// The entry in the first tree (absent when added).
    pub before: Option<Node>,
    /// The entry in the second tree (absent when removed).
    pub after: Option<Node>,
    /// For modified and metadata changes: what differs (`content`,
    /// `mode`, `owner`, `mtime`, `xattrs`, `links`).
    pub what: Vec<&'static str>,
}

impl DiffEntry {
    /// An entry only in the second tree (`Added`) or only in the first.
    fn one_side(path: Vec<u8>, change: Change, n: Node) -> Self {
        let (before, after) = if change == Change::Added {
            (None, Some(n))
        } else {
            (Some(n), None)
        };
        DiffEntry {
            path,
            change,
            before,
            after,
            what: Vec::new(),
        }
    }
}

/// Totals of a diff.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Entries added, removed, of another type, modified, changed in
    /// metadata only.
    pub added: u64,
    /// See `added`.
    pub removed: u64,
    /// See `added`.
    pub type_changed: u64,
    /// See `added`.
    pub modified: u64,
    /// See `added`.
    pub metadata: u64,
    /// Sizes of the entries added (files: their length).
    pub bytes_added: u64,
    /// Sizes of the entries removed.
    pub bytes_removed: u64,
    /// Trees whose ids were equal on both sides (not read).
    pub trees_skipped: u64,
}

impl IndexedRepository {
    /// Compare the trees `a` and `b`, calling `each` for every entry that
    /// differs, in path order (an added or removed directory is followed by
    /// everything beneath it). Callers walking whole snapshots check
    /// [`Self::check_tree_limits`] first.
    pub fn diff_trees(
        &self,
        a: &ChunkId,
        b: &ChunkId,
        each: &mut dyn FnMut(DiffEntry) -> Result<()>,
    ) -> Result<DiffStats> {
        let mut st = DiffStats::default();
        self.diff_dir(a, b, b"", &mut st, each)?;
        Ok(st)
    }

    fn diff_dir(
        &self,
        a: &ChunkId,
        b: &ChunkId,
        prefix: &[u8],
        st: &mut DiffStats,
        each: &mut dyn FnMut(DiffEntry) -> Result<()>,
    ) -> Result<()> {
        if a == b {
            st.trees_skipped += 1;
            return Ok(());
        }
        let ta = self.load_tree(a)?;
        let tb = self.load_tree(b)?;
        let (mut ia, mut ib) = (
            ta.nodes.into_iter().peekable(),
            tb.nodes.into_iter().peekable(),
        );
        loop {
            let order = match (ia.peek(), ib.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => x.name.cmp(&y.name),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let n = ia.next().expect("peeked");
                    self.one_side(n, prefix, Change::Removed, st, each)?;
                }
                std::cmp::Ordering::Greater => {
                    let n = ib.next().expect("peeked");
                    self.one_side(n, prefix, Change::Added, st, each)?;
                }
                std::cmp::Ordering::Equal => {
                    let (x, y) = (ia.next().expect("peeked"), ib.next().expect("peeked"));
                    self.both_sides(x, y, prefix, st, each)?;
                }
            }
        }
        Ok(())
    }

    /// An entry of one side only, and (a directory) everything below it.
    fn one_side(
        &self,
        n: Node,
        prefix: &[u8],
        change: Change,
        st: &mut DiffStats,
        each: &mut dyn FnMut(DiffEntry) -> Result<()>,
    ) -> Result<()> {
        let path = join(prefix, &n.name);
        let sub = match n.kind {
            NodeKind::Dir { tree } => Some(tree),
            _ => None,
        };
        count(st, change, &n);
        each(DiffEntry::one_side(path.clone(), change, n))?;
        if let Some(t) = sub {
            self.list_below(&t, &path, change, st, each)?;
        }
        Ok(())
    }

    /// Everything below the directory `tree` at `path`, as added or removed.
    fn list_below(
        &self,
        tree: &ChunkId,
        path: &[u8],
        change: Change,
        st: &mut DiffStats,
        each: &mut dyn FnMut(DiffEntry) -> Result<()>,
    ) -> Result<()> {
        self.walk(tree, path, &|_| true, &mut |e| {
            count(st, change, &e.node);
            each(DiffEntry::one_side(e.path, change, e.node))
        })
    }

    /// An entry on both sides: compared, then (directories) descended into.
    fn both_sides(
        &self,
        x: Node,
        y: Node,
        prefix: &[u8],
        st: &mut DiffStats,
        each: &mut dyn FnMut(DiffEntry) -> Result<()>,
    ) -> Result<()> {
        let path = join(prefix, &x.name);
        if std::mem::discriminant(&x.kind) != std::mem::discriminant(&y.kind) {
            st.type_changed += 1;
            // What the old entry held is gone and the new one's is there:
            // a directory on either side is listed below it.
            let (sub_x, sub_y) = (dir_tree(&x), dir_tree(&y));
            each(DiffEntry {
                path: path.clone(),
                change: Change::TypeChanged,
                before: Some(x),
                after: Some(y),
                what: vec!["type"],
            })?;
            for (sub, change) in [(sub_x, Change::Removed), (sub_y, Change::Added)] {
                if let Some(t) = sub {
                    self.list_below(&t, &path, change, st, each)?;
                }
            }
            return Ok(());
        }
        let what = differences(&x, &y);
        let content = what.contains(&"content");
        let subs = (dir_tree(&x), dir_tree(&y));
        if !what.is_empty() {
            let change = if content {
                st.modified += 1;
                Change::Modified
            } else {
                st.metadata += 1;
                Change::Metadata
            };
            each(DiffEntry {
                path: path.clone(),
                change,
                before: Some(x),
                after: Some(y),
                what,
            })?;
        }
        if let (Some(ta), Some(tb)) = subs {
            self.diff_dir(&ta, &tb, &path, st, each)?;
        }
        Ok(())
    }
}

fn dir_tree(n: &Node) -> Option<ChunkId> {
    match n.kind {
        NodeKind::Dir { tree } => Some(tree),
        _ => None,
    }
}

fn count(st: &mut DiffStats, change: Change, n: &Node) {
    match change {
        Change::Added => {
            st.added += 1;
            st.bytes_added += n.size;
        }
        Change::Removed => {
            st.removed += 1;
            st.bytes_removed += n.size;
        }
        _ => {}
    }
}

/// What differs between two entries of the same type. A directory's own
/// content is its entries (compared below it), so only its metadata counts
/// here.
fn differences(x: &Node, y: &Node) -> Vec<&'static str> {
    let mut what = Vec::new();
    let content = match (&x.kind, &y.kind) {
        (NodeKind::File { extents: a }, NodeKind::File { extents: b }) => !same_content(a, b),
        (NodeKind::Dir { .. }, NodeKind::Dir { .. }) => false,
        (a, b) => a != b,
    };
    if content {
        what.push("content");
    }
    if x.mode != y.mode {
        what.push("mode");
    }
    if (x.uid, x.gid) != (y.uid, y.gid) {
        what.push("owner");
    }
    if x.mtime != y.mtime {
        what.push("mtime");
    }
    if x.xattrs != y.xattrs {
        what.push("xattrs");
    }
    if (x.nlink > 1) != (y.nlink > 1) {
        what.push("links");
    }
    what
}

/// Whether two files hold the same bytes: the same chunks and holes, once
/// adjacent holes are merged (a hole may be recorded in pieces).
fn same_content(a: &[Extent], b: &[Extent]) -> bool {
    fn merged(e: &[Extent]) -> Vec<Extent> {
        let mut out: Vec<Extent> = Vec::with_capacity(e.len());
        for x in e {
            match (out.last_mut(), x) {
                (Some(Extent::Hole { len: l }), Extent::Hole { len }) => *l += len,
                _ => out.push(*x),
            }
        }
        out
    }
    a == b || merged(a) == merged(b)
}
