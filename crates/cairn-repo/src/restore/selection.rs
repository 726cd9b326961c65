//! What a restore takes from a snapshot: the subpath (`SNAPSHOT:SUBPATH`),
//! what `--include`/`--exclude` select, and the refusal of a pattern that
//! matches nothing.

use cairn_format::ChunkId;
use cairn_format::tree::{Node, NodeKind};

use super::tree::{join, listing_error};
use super::{Entry, RestoreOptions, normalize_snapshot_path};
use crate::error::{RepoError, Result};
use crate::indexed::IndexedRepository;

impl IndexedRepository {
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

    /// The entries a restore selects, in walk order, with the normalized
    /// subpath they were taken from (`None`: the whole snapshot). A pattern
    /// that matches nothing is an error; `what` names the snapshot in it.
    pub(super) fn selected_entries(
        &self,
        root: &ChunkId,
        opts: &RestoreOptions,
        what: &str,
    ) -> Result<(Option<Vec<u8>>, Vec<Entry>)> {
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
        self.refuse_unmatched(root, base.as_deref(), opts, what)?;
        Ok((base, entries))
    }

    /// Refuse patterns that matched nothing ("--include \"/x\" matches
    /// nothing of …"), once the selection has matched them.
    fn refuse_unmatched(
        &self,
        root: &ChunkId,
        base: Option<&[u8]>,
        opts: &RestoreOptions,
        what: &str,
    ) -> Result<()> {
        // Includes prune the walk: an exclude may match only outside what
        // they selected, which is no typo. Look for it in the whole tree.
        if !opts.include.is_empty() && !opts.exclude.unmatched().is_empty() {
            let tree = match base {
                Some(sub) => match self.find_node(root, sub)? {
                    Some(Node {
                        kind: NodeKind::Dir { tree },
                        ..
                    }) => Some((tree, sub.to_vec())),
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
        Ok(())
    }
}
