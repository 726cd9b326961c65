//! `cairn ls` and `cairn dump`.

use super::*;

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id, id prefix or `latest`
    snapshot: String,
    /// Only below this path
    path: Option<String>,
    #[command(flatten)]
    pick: Pick,
}

pub(crate) fn kind_name(n: &Node) -> &'static str {
    match n.kind {
        NodeKind::File { .. } => "file",
        NodeKind::Dir { .. } => "dir",
        NodeKind::Symlink { .. } => "symlink",
        NodeKind::Fifo => "fifo",
        NodeKind::CharDevice { .. } => "chardev",
        NodeKind::BlockDevice { .. } => "blockdev",
        NodeKind::Socket => "socket",
    }
}

pub fn ls(g: &GlobalArgs, a: LsArgs) -> Result<i32> {
    let repo = open_indexed(g)?;
    let (id, snap) = resolve(repo.repo(), &a.snapshot, &a.pick)?;
    repo.check_tree_limits(&snap.tree, &format!("snapshot {}", id.short()))?;
    let base = cairn_repo::normalize_snapshot_path(a.path.as_deref().unwrap_or("/").as_bytes());
    let filter = |p: &[u8]| {
        base.is_empty()
            || p.starts_with(&base) && (p.len() == base.len() || p[base.len()] == b'/')
            || base.starts_with(p) && base[p.len()] == b'/'
    };
    // A path that is not in the snapshot is an error, not an empty listing.
    if !base.is_empty() {
        repo.find_node(&snap.tree, &base)?;
    }
    let mut out = std::io::stdout().lock();
    let mut rows = Vec::new();
    repo.walk(&snap.tree, b"", &filter, &mut |e| {
        let inside = base.is_empty() || e.path.len() >= base.len();
        if !inside {
            return Ok(());
        }
        if g.json {
            let mut v = json!({
                "path": lossy(&e.path),
                "type": kind_name(&e.node),
                "mode": format!("{:o}", e.node.mode),
                "uid": e.node.uid,
                "gid": e.node.gid,
                "size": e.node.size,
                "mtime": format_node_time(&e.node.mtime),
            });
            if let NodeKind::Symlink { target } = &e.node.kind {
                v["target"] = json!(lossy(target));
            }
            if let NodeKind::CharDevice { rdev } | NodeKind::BlockDevice { rdev } = e.node.kind {
                v["rdev"] = json!(rdev);
            }
            if e.node.nlink > 1 {
                v["links"] = json!(e.node.nlink);
                v["inode"] = json!(e.node.inode);
                v["device"] = json!(e.node.device);
            }
            if !e.node.xattrs.is_empty() {
                v["xattrs"] = json!(
                    e.node
                        .xattrs
                        .iter()
                        .map(|x| lossy(&x.name))
                        .collect::<Vec<_>>()
                );
            }
            rows.push(v);
        } else {
            let mut line = e.path.clone();
            if let NodeKind::Symlink { target } = &e.node.kind {
                line.extend_from_slice(b" -> ");
                line.extend_from_slice(target);
            }
            line.push(b'\n');
            out.write_all(&line)
                .map_err(|e| RepoError::io("<stdout>", e))?;
        }
        Ok(())
    })?;
    if g.json {
        print_json(&Value::Array(rows))?;
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Snapshot id, id prefix or `latest`
    snapshot: String,
    /// Path inside the snapshot: a file's content, or a directory (or `/`)
    /// as a tar archive
    path: String,
    /// Write a tar archive even of a single file
    #[arg(long, value_name = "FORMAT", value_parser = ["tar"])]
    archive: Option<String>,
    #[command(flatten)]
    pick: Pick,
}

pub fn dump(g: &GlobalArgs, a: DumpArgs) -> Result<i32> {
    let repo = open_indexed(g)?;
    let (id, snap) = resolve(repo.repo(), &a.snapshot, &a.pick)?;
    let node = repo.find_node(&snap.tree, a.path.as_bytes())?;
    let is_file = node
        .as_ref()
        .is_some_and(|n| matches!(n.kind, NodeKind::File { .. }));
    if is_file && a.archive.is_none() {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        repo.dump_file(node.as_ref().expect("a file"), &mut out)?;
        out.flush()?;
        return Ok(0);
    }
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        bail!(
            "{} is {}: cairn dump writes it as a tar archive, which does not belong on a terminal (redirect it: > out.tar, or | tar -x)",
            a.path,
            if is_file { "archived" } else { "a directory" }
        );
    }
    let base = cairn_repo::normalize_snapshot_path(a.path.as_bytes());
    // Names in the archive: from the dumped entry's own name down (`tar -C
    // parent -c name`), or from the root's children for `/`.
    let top: Vec<u8> = base.rsplit(|&b| b == b'/').next().unwrap_or(b"").to_vec();
    let rel = |p: &[u8]| -> Vec<u8> {
        let mut r = top.clone();
        r.extend_from_slice(&p[base.len()..]);
        if top.is_empty() {
            r.drain(..r.iter().take_while(|&&b| b == b'/').count());
        }
        r
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let mut tar = super::tar::TarWriter::new(&mut out);
    let tree = match &node {
        None => snap.tree,
        Some(n) => {
            tar.entry(&repo, &top, n)?;
            match n.kind {
                NodeKind::Dir { tree } => tree,
                _ => return tar.finish().map(|_| 0),
            }
        }
    };
    repo.check_tree_limits(&tree, &format!("{} of snapshot {}", a.path, id.short()))?;
    let mut failed = None;
    repo.walk(&tree, &base, &|_| true, &mut |e| {
        if let Err(x) = tar.entry(&repo, &rel(&e.path), &e.node) {
            failed = Some(x);
            return Err(RepoError::InvalidInput("tar".into()));
        }
        Ok(())
    })
    .map_err(|e| match failed.take() {
        Some(x) => x,
        None => e.into(),
    })?;
    tar.finish()?;
    Ok(0)
}
