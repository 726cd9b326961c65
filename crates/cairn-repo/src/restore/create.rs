//! Creating a restore's entries beneath the target: directories level by
//! level, then files (at their final size), symlinks and special files, then
//! hard links to what was created; each checked to be what this restore made.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use cairn_format::tree::NodeKind;
use rayon::prelude::*;

use super::{Damage, Item, RestoreReport};
use crate::fsat::{Beneath, Create, Ident};
use crate::indexed::IndexedRepository;

impl IndexedRepository {
    /// Create every entry: directories level by level, then everything else,
    /// each level in parallel (creating a file costs about a millisecond on
    /// a journaling filesystem here; one at a time, that bounded a restore of
    /// many small files). Entries are created beneath the target's
    /// descriptor, never through a symlink (see [`crate::fsat`]).
    pub(super) fn create_entries(
        &self,
        beneath: &Beneath,
        target: &Path,
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
            let p = item.rel.parent().unwrap_or(Path::new(""));
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
}
