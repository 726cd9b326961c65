//! Directory trees compared entry by entry with a snapshot's tree.

use crate::StackError;
use cairn_format::ChunkId;
use cairn_format::tree::{Extent, NodeKind};
use cairn_repo::IndexedRepository;
use std::io::Read;
use std::path::Path;

/// Compare a directory with a snapshot tree: every entry's type, mode,
/// size, mtime, link target and content (each chunk's keyed hash), plus
/// entries present on one side only. Returns the differences by path (at
/// most `limit`). What the restore withheld on purpose is not expected.
pub fn verify_tree(
    repo: &IndexedRepository,
    tree: &ChunkId,
    dir: &Path,
    withheld: Withholding,
    limit: usize,
) -> Result<Vec<String>, StackError> {
    let mut out = Vec::new();
    walk_compare(repo, tree, dir, withheld, &mut out, limit)?;
    Ok(out)
}

/// What a files restore holds back (so its verification does not expect it).
#[derive(Clone, Copy, Debug, Default)]
pub struct Withholding {
    /// Device nodes and FIFOs are not created.
    pub special: bool,
    /// setuid/setgid bits are cleared.
    pub setuid: bool,
}

fn walk_compare(
    repo: &IndexedRepository,
    tree: &ChunkId,
    dir: &Path,
    withheld: Withholding,
    out: &mut Vec<String>,
    limit: usize,
) -> Result<(), StackError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let t = repo.load_tree(tree)?;
    let mut on_disk: std::collections::BTreeSet<Vec<u8>> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().as_bytes().to_vec())
            .collect(),
        Err(e) => {
            out.push(format!("{}: {e}", dir.display()));
            return Ok(());
        }
    };
    for n in &t.nodes {
        if out.len() >= limit {
            return Ok(());
        }
        let p = dir.join(std::ffi::OsStr::from_bytes(&n.name));
        on_disk.remove(&n.name);
        let special = matches!(
            n.kind,
            NodeKind::Fifo | NodeKind::CharDevice { .. } | NodeKind::BlockDevice { .. }
        );
        if special && withheld.special {
            continue;
        }
        let mode = if withheld.setuid {
            n.mode & !0o6000
        } else {
            n.mode
        };
        let md = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(_) => {
                out.push(format!("{}: missing after the restore", p.display()));
                continue;
            }
        };
        let ft = md.file_type();
        let same_type = match &n.kind {
            NodeKind::File { .. } => ft.is_file(),
            NodeKind::Dir { .. } => ft.is_dir(),
            NodeKind::Symlink { .. } => ft.is_symlink(),
            _ => !ft.is_file() && !ft.is_dir() && !ft.is_symlink(),
        };
        if !same_type {
            out.push(format!("{}: type differs", p.display()));
            continue;
        }
        let want: Vec<(Vec<u8>, Vec<u8>)> = n
            .xattrs
            .iter()
            .filter(|x| !(withheld.setuid && x.name == b"security.capability"))
            .map(|x| Ok((x.name.clone(), repo.xattr_value(&x.value)?)))
            .collect::<Result<_, cairn_repo::RepoError>>()?;
        match cairn_repo::sys::read_xattrs(&p) {
            Ok(have) if have == want => {}
            Ok(have) => {
                let names = |v: &[(Vec<u8>, Vec<u8>)]| {
                    v.iter()
                        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                out.push(format!(
                    "{}: extended attributes differ (expected [{}], found [{}])",
                    p.display(),
                    names(&want),
                    names(&have)
                ));
            }
            Err(e) => out.push(format!("{}: extended attributes: {e}", p.display())),
        }
        if md.mode() & 0o7777 != mode && !ft.is_symlink() {
            out.push(format!(
                "{}: mode {:o} expected, {:o} found",
                p.display(),
                mode,
                md.mode() & 0o7777
            ));
        }
        match &n.kind {
            NodeKind::File { extents } => {
                if md.len() != n.size {
                    out.push(format!(
                        "{}: {} bytes expected, {} found",
                        p.display(),
                        n.size,
                        md.len()
                    ));
                    continue;
                }
                if md.mtime() != n.mtime.sec || md.mtime_nsec() as u32 != n.mtime.nsec {
                    out.push(format!("{}: modification time differs", p.display()));
                }
                if let Some(d) = content_differs(repo, &p, extents)? {
                    out.push(format!("{}: {d}", p.display()));
                }
            }
            NodeKind::Dir { tree } => walk_compare(repo, tree, &p, withheld, out, limit)?,
            NodeKind::Symlink { target } => {
                let t = std::fs::read_link(&p).map(|t| t.as_os_str().as_bytes().to_vec());
                if t.as_deref().ok() != Some(target.as_slice()) {
                    out.push(format!("{}: link target differs", p.display()));
                }
            }
            _ => {}
        }
    }
    for extra in on_disk.into_iter().take(limit.saturating_sub(out.len())) {
        out.push(format!(
            "{}: present after the restore, not in the backup",
            dir.join(std::ffi::OsStr::from_bytes(&extra)).display()
        ));
    }
    Ok(())
}

fn content_differs(
    repo: &IndexedRepository,
    p: &Path,
    extents: &[Extent],
) -> Result<Option<String>, StackError> {
    let mut f = match std::fs::File::open(p) {
        Ok(f) => f,
        Err(e) => return Ok(Some(e.to_string())),
    };
    let hasher = repo.repo().chunk_hasher();
    let mut buf = Vec::new();
    let mut offset = 0u64;
    for e in extents {
        match e {
            Extent::Chunk { id, len } => {
                buf.resize(*len as usize, 0);
                if let Err(e) = f.read_exact(&mut buf) {
                    return Ok(Some(e.to_string()));
                }
                if hasher.id(&buf) != *id {
                    return Ok(Some(format!("content differs at byte {offset}")));
                }
                offset += *len as u64;
            }
            Extent::Hole { len } => {
                let mut left = *len;
                while left > 0 {
                    let n = left.min(1 << 20) as usize;
                    buf.resize(n, 0);
                    if let Err(e) = f.read_exact(&mut buf) {
                        return Ok(Some(e.to_string()));
                    }
                    if buf.iter().any(|&b| b != 0) {
                        return Ok(Some(format!(
                            "content differs in the hole at byte {offset}"
                        )));
                    }
                    left -= n as u64;
                    offset += n as u64;
                }
            }
        }
    }
    Ok(None)
}
