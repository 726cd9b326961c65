//! The mount's virtual directories: which snapshots are shown (re-listed
//! on refresh), how `snapshots/`, `services/` and `groups/` name and group
//! them, with their `latest` links, and the inodes of those directories.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_format::snapshot::Snapshot;
use cairn_format::{ChunkId, SnapshotId};
use fuser::FileType;

use super::{CairnFs, Inode, Kind, Listing, ROOT, ns_to_system_time};

/// `2026-11-23T10:11:12Z` for a time in nanoseconds since the epoch (UTC).
pub fn snapshot_dir_name(time_ns: i64) -> String {
    let secs = time_ns.div_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = cairn_repo::forget::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The entries of one virtual directory, before inodes are assigned.
enum VEntry {
    Dir(BTreeMap<Vec<u8>, VEntry>, SystemTime),
    Snapshot(ChunkId, SystemTime),
    Link(Vec<u8>),
}

/// Give each snapshot in `items` a unique name: its time, with the short id
/// appended where two share a second.
fn unique_names(items: &[(String, SnapshotId)]) -> Vec<String> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (n, _) in items {
        *count.entry(n.as_str()).or_default() += 1;
    }
    items
        .iter()
        .map(|(n, id)| {
            if count[n.as_str()] > 1 {
                format!("{n}-{}", id.short())
            } else {
                n.clone()
            }
        })
        .collect()
}

/// A directory of snapshots (oldest first in `snaps`) with a `latest` link.
fn snapshot_dir(snaps: &[&(SnapshotId, Snapshot)], label: impl Fn(&Snapshot) -> String) -> VEntry {
    let items: Vec<(String, SnapshotId)> = snaps.iter().map(|(id, s)| (label(s), *id)).collect();
    let names = unique_names(&items);
    let mut m = BTreeMap::new();
    let mut newest = UNIX_EPOCH;
    for ((_, s), name) in snaps.iter().zip(&names) {
        let t = ns_to_system_time(s.time_ns);
        newest = newest.max(t);
        m.insert(name.clone().into_bytes(), VEntry::Snapshot(s.tree, t));
    }
    if let Some(last) = names.last() {
        if !m.contains_key(b"latest".as_slice()) {
            m.insert(b"latest".to_vec(), VEntry::Link(last.clone().into_bytes()));
        }
    }
    VEntry::Dir(m, newest)
}

/// The virtual part of the mount for a list of snapshots.
fn virtual_tree(snaps: &[(SnapshotId, Snapshot)]) -> BTreeMap<Vec<u8>, VEntry> {
    let mut sorted: Vec<&(SnapshotId, Snapshot)> = snaps.iter().collect();
    sorted.sort_by_key(|(id, s)| (s.time_ns, *id));
    let newest = sorted
        .last()
        .map(|(_, s)| ns_to_system_time(s.time_ns))
        .unwrap_or(UNIX_EPOCH);
    let time = |s: &Snapshot| snapshot_dir_name(s.time_ns);

    let mut services: BTreeMap<&str, Vec<&(SnapshotId, Snapshot)>> = BTreeMap::new();
    let mut groups: BTreeMap<[u8; 16], Vec<&(SnapshotId, Snapshot)>> = BTreeMap::new();
    for s in &sorted {
        if !s.1.service.is_empty() {
            services.entry(s.1.service.as_str()).or_default().push(s);
        }
        if let Some(g) = s.1.group {
            groups.entry(g).or_default().push(s);
        }
    }
    let mut svc_dir = BTreeMap::new();
    for (name, list) in &services {
        svc_dir.insert(name.as_bytes().to_vec(), snapshot_dir(list, time));
    }
    // Groups are named by id; `latest` points at the group backed up last.
    let mut grp_dir = BTreeMap::new();
    let mut latest_group: Option<(i64, String)> = None;
    for (g, list) in &groups {
        let gname = cairn_format::id::to_hex(g);
        let label = |s: &Snapshot| {
            if s.service.is_empty() {
                "_".to_string()
            } else {
                s.service.clone()
            }
        };
        let VEntry::Dir(mut m, t) = snapshot_dir(list, label) else {
            unreachable!("snapshot_dir makes a directory")
        };
        m.remove(b"latest".as_slice());
        let last = list.last().map(|(_, s)| s.time_ns).unwrap_or(0);
        if latest_group.as_ref().is_none_or(|(lt, _)| last >= *lt) {
            latest_group = Some((last, gname.clone()));
        }
        grp_dir.insert(gname.into_bytes(), VEntry::Dir(m, t));
    }
    if let Some((_, g)) = latest_group {
        grp_dir.insert(b"latest".to_vec(), VEntry::Link(g.into_bytes()));
    }
    let mut root = BTreeMap::new();
    root.insert(b"snapshots".to_vec(), snapshot_dir(&sorted, time));
    root.insert(b"services".to_vec(), VEntry::Dir(svc_dir, newest));
    root.insert(b"groups".to_vec(), VEntry::Dir(grp_dir, newest));
    root
}

impl CairnFs {
    /// Re-list snapshots unless that was done less than `min_age` ago; when
    /// the shown set changed, reload the index (new snapshots reference new
    /// packs) and rebuild the virtual directories. Only snapshots not seen
    /// before are read, so a refresh costs one listing.
    pub fn refresh(&self, min_age: Duration) -> cairn_repo::Result<()> {
        let _one = self.refresh_lock.lock().expect("refresh");
        {
            let shown = self.shown.lock().expect("shown");
            if shown.1.is_some_and(|t| t.elapsed() < min_age) {
                return Ok(());
            }
        }
        let repo = &self.repo.repo();
        let listed: HashSet<SnapshotId> = repo.list_snapshot_ids()?.into_iter().collect();
        let snaps: Vec<(SnapshotId, Snapshot)> = {
            let mut known = self.known.lock().expect("known snapshots");
            known.retain(|id, _| listed.contains(id));
            for id in &listed {
                if known.contains_key(id) {
                    continue;
                }
                match repo.load_snapshot(id) {
                    Ok(s) => {
                        known.insert(*id, s);
                    }
                    // Forgotten between the listing and the read.
                    Err(cairn_repo::RepoError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            known
                .iter()
                .filter(|(_, s)| self.opts.filter.admits(s))
                .map(|(id, s)| (*id, s.clone()))
                .collect()
        };
        let mut ids: Vec<SnapshotId> = snaps.iter().map(|(id, _)| *id).collect();
        ids.sort();
        let (changed, first) = {
            let shown = self.shown.lock().expect("shown");
            (shown.0 != ids, shown.1.is_none())
        };
        if changed {
            if !first {
                let index = repo.read_index()?;
                self.repo.replace_index(index);
            }
            let tree = virtual_tree(&snaps);
            self.install_virtual(ROOT, &tree);
        }
        *self.shown.lock().expect("shown") = (ids, Some(Instant::now()));
        Ok(())
    }

    /// Assign inodes to a virtual directory's entries and set its listing.
    fn install_virtual(&self, dir: u64, entries: &BTreeMap<Vec<u8>, VEntry>) {
        let Some(parent) = self.inode(dir) else {
            return;
        };
        let mut listing: Listing = Vec::with_capacity(entries.len());
        for (name, e) in entries {
            let path = Self::child_path(&parent, name);
            match e {
                VEntry::Dir(children, mtime) => {
                    let attr_time = *mtime;
                    let ino = self.intern(
                        dir,
                        name,
                        |i| matches!(&i.kind, Kind::Dir { tree: None, .. }),
                        |ino| Inode {
                            parent: dir,
                            attr: self.dir_attr(ino, 0o555, attr_time),
                            kind: Kind::Dir {
                                tree: None,
                                listing: Mutex::new(Some(Arc::new(Vec::new()))),
                            },
                            path: path.clone(),
                            virtual_: true,
                            depth: 0,
                            root: 0,
                            xattrs: Vec::new(),
                        },
                    );
                    self.install_virtual(ino, children);
                    listing.push((name.clone(), ino, FileType::Directory));
                }
                VEntry::Snapshot(tree, mtime) => {
                    let (tree, mtime) = (*tree, *mtime);
                    let ino = self.intern(
                        dir,
                        name,
                        |i| matches!(&i.kind, Kind::Dir { tree: Some(t), .. } if *t == tree),
                        |ino| Inode {
                            parent: dir,
                            attr: self.dir_attr(ino, 0o755, mtime),
                            kind: Kind::Dir {
                                tree: Some(tree),
                                listing: Mutex::new(None),
                            },
                            path: path.clone(),
                            virtual_: false,
                            depth: 0,
                            root: ino,
                            xattrs: Vec::new(),
                        },
                    );
                    listing.push((name.clone(), ino, FileType::Directory));
                }
                VEntry::Link(target) => {
                    let target = target.clone();
                    let ino = self.intern(
                        dir,
                        name,
                        |i| matches!(&i.kind, Kind::Link(t) if *t == target),
                        |ino| {
                            let mut attr = self.dir_attr(ino, 0o777, self.started);
                            attr.kind = FileType::Symlink;
                            attr.size = target.len() as u64;
                            attr.nlink = 1;
                            Inode {
                                parent: dir,
                                attr,
                                kind: Kind::Link(target.clone()),
                                path: path.clone(),
                                virtual_: true,
                                depth: 0,
                                root: 0,
                                xattrs: Vec::new(),
                            }
                        },
                    );
                    listing.push((name.clone(), ino, FileType::Symlink));
                }
            }
        }
        if let Kind::Dir { listing: l, .. } = &parent.kind {
            *l.lock().expect("listing") = Some(Arc::new(listing));
        }
    }
}
