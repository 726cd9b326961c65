//! A restore's metadata: extended attributes' values, and owner, mode,
//! mtime and attributes set last, deepest entries first, each through a
//! descriptor checked to be the entry this restore created.

use std::path::Path;
use std::sync::atomic::Ordering;

use cairn_format::BlobKind;
use cairn_format::tree::{NodeKind, XattrValue};

use super::{Damage, Item, RestoreReport};
use crate::error::{RepoError, Result};
use crate::fsat::{Beneath, Meta};
use crate::indexed::IndexedRepository;

/// The name under which an ACL travels as an extended attribute.
pub(super) fn is_acl(name: &[u8]) -> bool {
    name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
}

impl IndexedRepository {
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

    /// Owner, mode and mtime, deepest entries first, each through a
    /// descriptor checked to be the entry this restore created. An entry
    /// swapped for another one meanwhile is reported as not restored
    /// (nothing is set through it).
    pub(super) fn set_metadata(
        &self,
        beneath: &Beneath,
        target: &Path,
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
