//! Walking a backup's directories: the entries of one directory looked at
//! in name order, small files read in parallel (the kernel asked to read
//! them all ahead), subdirectories in parallel, large files one at a time,
//! and the synthetic directories above the paths given to the backup.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cairn_format::ChunkId;
use cairn_format::tree::{Extent, Node, NodeKind, Tree};
use rayon::prelude::*;

use super::entry::{Todo, base_node};
use super::{ParentTree, Progress, Trie, Walker};
use crate::error::{RepoError, Result};

impl Walker<'_> {
    /// The parent snapshot's directory `name` under `parent`, if it was one
    /// and its tree can be read; whether it records extended attributes
    /// (version 2, in a parent that does) comes with it.
    fn parent_subtree(&self, parent: Option<&ParentTree>, name: &[u8]) -> Option<ParentTree> {
        match parent?.0.find(name)?.kind {
            NodeKind::Dir { tree } => self
                .repo
                .load_tree_versioned(&tree)
                .ok()
                .map(|(t, v2)| (t, v2 && parent.is_some_and(|p| p.1))),
            _ => None,
        }
    }

    /// Nodes for a list of (name, path) entries of one directory, in name
    /// order. `dir_dev` is the device of the directory holding them (`None`
    /// for the paths given to the backup).
    fn nodes_for(
        &self,
        mut entries: Vec<(Vec<u8>, PathBuf)>,
        parent: Option<&ParentTree>,
        dir_dev: Option<u64>,
    ) -> Result<Vec<Node>> {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let small_limit = self.params.max as u64;
        let mut todo = Vec::with_capacity(entries.len());
        for (name, path) in entries {
            if let Some(t) = self.plan_entry(name, path, parent, dir_dev, small_limit)? {
                todo.push(t);
            }
        }
        prefetch_small(&todo);
        self.read_small(&mut todo)?;
        let subtrees = self.subtrees(&todo, parent)?;
        self.assemble(todo, subtrees)
    }

    /// Read a regular file into `node`; `false` if it could not be read
    /// (warned, skipped). A file changed while it was read is stored as
    /// read, and named.
    fn fill(&self, node: &mut Node, path: &Path, md: &fs::Metadata, small: bool) -> Result<bool> {
        match self.read_file(path, md, small) {
            Ok(ext) => {
                node.size = ext.iter().map(Extent::len).sum();
                if node.nlink > 1 {
                    self.links.lock().expect("links").insert(
                        (md.dev(), md.ino()),
                        (node.size, node.mtime, node.ctime, ext.clone()),
                    );
                }
                node.kind = NodeKind::File { extents: ext };
                // Like tar and borg: a file written to while it was read
                // is stored as read (the node keeps the times seen
                // before, so the next backup reads it again) and named.
                // Not on procfs or sysfs, whose inode times are made up
                // anew whenever the kernel re-creates the inode.
                if let Ok(now) = fs::symlink_metadata(path)
                    && (now.size() != md.size()
                        || now.mtime() != md.mtime()
                        || now.mtime_nsec() != md.mtime_nsec()
                        || now.ctime() != md.ctime()
                        || now.ctime_nsec() != md.ctime_nsec()
                        || now.ino() != md.ino())
                    && !crate::sys::is_pseudo_fs(path)
                {
                    self.progress.warn(format!(
                        "{}: file changed as it was read; stored as read (its content may mix old and new data), the next backup reads it again",
                        path.display()
                    ));
                }
                Ok(true)
            }
            Err(RepoError::Io { path, source }) => {
                self.progress
                    .warn(format!("{}: {source} (skipped)", path.display()));
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Small files in parallel; each task is sequential inside.
    fn read_small(&self, todo: &mut [Todo]) -> Result<()> {
        todo.par_iter_mut().try_for_each(|t| -> Result<()> {
            if let Todo::Small(node, path, md) = t
                && !self.fill(node, path, md, true)?
            {
                *t = Todo::Skip;
            }
            Ok(())
        })
    }

    /// Subdirectories in parallel (the walk runs on its own pool, see
    /// `backup_paths`): each one's tree by its place in `todo` (`None`: it
    /// could not be read).
    fn subtrees(
        &self,
        todo: &[Todo],
        parent: Option<&ParentTree>,
    ) -> Result<HashMap<usize, Option<ChunkId>>> {
        todo.par_iter()
            .enumerate()
            .filter_map(|(i, t)| match t {
                Todo::Dir(n, path, dev, cross) => Some((i, n, path, *dev, *cross)),
                _ => None,
            })
            .map(
                |(i, n, path, dev, cross)| -> Result<(usize, Option<ChunkId>)> {
                    if cross {
                        // A mount point: kept, without what is mounted there.
                        return Ok((i, Some(self.packer.store_tree(&Tree::default())?)));
                    }
                    let prev_tree = self.parent_subtree(parent, &n.name);
                    Ok((i, self.backup_dir(path, prev_tree.as_ref(), dev)?))
                },
            )
            .collect::<Result<_>>()
    }

    /// The directory's nodes in order: large files read now, one at a time,
    /// subdirectories' trees put in place; what was skipped left out.
    fn assemble(
        &self,
        todo: Vec<Todo>,
        mut subtrees: HashMap<usize, Option<ChunkId>>,
    ) -> Result<Vec<Node>> {
        let mut nodes = Vec::with_capacity(todo.len());
        for (i, t) in todo.into_iter().enumerate() {
            match t {
                Todo::Done(n) | Todo::Small(n, _, _) => nodes.push(n),
                Todo::Large(mut n, path, md) => {
                    if self.fill(&mut n, &path, &md, false)? {
                        nodes.push(n);
                    }
                }
                Todo::Dir(mut n, ..) => {
                    if let Some(id) = subtrees.remove(&i).flatten() {
                        n.kind = NodeKind::Dir { tree: id };
                        nodes.push(n);
                    }
                }
                Todo::Skip => {}
            }
        }
        Ok(nodes)
    }

    /// Back up a directory; `None` if it could not be read (warned).
    fn backup_dir(
        &self,
        path: &Path,
        parent: Option<&ParentTree>,
        dev: u64,
    ) -> Result<Option<ChunkId>> {
        match self.dir_nodes(path, parent, dev)? {
            Some(nodes) => Ok(Some(self.packer.store_tree(&Tree { nodes })?)),
            None => Ok(None),
        }
    }

    /// The nodes of a directory's entries; `None` if it could not be read (warned).
    pub(super) fn dir_nodes(
        &self,
        path: &Path,
        parent: Option<&ParentTree>,
        dev: u64,
    ) -> Result<Option<Vec<Node>>> {
        Progress::add(&self.progress.dirs, 1);
        let rd = match fs::read_dir(path) {
            Ok(rd) => rd,
            Err(e) => {
                self.progress
                    .warn(format!("{}: {e} (skipped)", path.display()));
                return Ok(None);
            }
        };
        let mut entries = Vec::new();
        for e in rd {
            match e {
                Ok(e) => entries.push((e.file_name().as_bytes().to_vec(), e.path())),
                Err(e) => self.progress.warn(format!("{}: {e}", path.display())),
            }
        }
        Ok(Some(self.nodes_for(entries, parent, Some(dev))?))
    }

    /// Build the synthetic directories above the backed-up paths.
    pub(super) fn backup_trie(
        &self,
        trie: &Trie,
        path: &Path,
        parent: Option<&ParentTree>,
    ) -> Result<Vec<Node>> {
        let mut targets = Vec::new();
        let mut nodes = Vec::new();
        for (name, child) in &trie.children {
            let cpath = path.join(OsStr::from_bytes(name));
            if child.target {
                targets.push((name.clone(), cpath));
                continue;
            }
            // A directory above a backed-up path: the walk goes through it,
            // so a symlink here (`/home -> /data/home`) is recorded as the
            // directory it leads to, not with the link's own 0777.
            let md = fs::metadata(&cpath).map_err(|e| RepoError::io(&cpath, e))?;
            let prev_tree = self.parent_subtree(parent, name);
            let sub = self.backup_trie(child, &cpath, prev_tree.as_ref())?;
            let id = self.packer.store_tree(&Tree { nodes: sub })?;
            let mut node = base_node(name.clone(), &md, NodeKind::Dir { tree: id });
            let real = fs::canonicalize(&cpath).unwrap_or(cpath.clone());
            node.xattrs = self.xattrs(&real)?;
            nodes.push(node);
        }
        nodes.extend(self.nodes_for(targets, parent, None)?);
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }
}

/// Start reading every small file of a directory at once: on a cold cache
/// the device then serves them together instead of one read per worker at
/// a time. Each is closed again at once (opened a second time to be read):
/// keeping a directory's files open could exhaust the descriptor limit.
fn prefetch_small(todo: &[Todo]) {
    for t in todo {
        if let Todo::Small(_, path, _) = t
            && let Ok(f) = File::open(path)
        {
            crate::sys::prefetch(&f);
        }
    }
}
