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
                "mtime": format_time(e.node.mtime.sec * 1_000_000_000 + e.node.mtime.nsec as i64, true),
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
                v["xattrs"] = json!(e.node.xattrs.iter().map(|x| lossy(&x.name)).collect::<Vec<_>>());
            }
            rows.push(v);
        } else {
            let mut line = e.path.clone();
            if let NodeKind::Symlink { target } = &e.node.kind {
                line.extend_from_slice(b" -> ");
                line.extend_from_slice(target);
            }
            line.push(b'\n');
            out.write_all(&line).map_err(|e| RepoError::io("<stdout>", e))?;
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
    /// Path of the file inside the snapshot
    path: String,
    #[command(flatten)]
    pick: Pick,
}

pub fn dump(g: &GlobalArgs, a: DumpArgs) -> Result<i32> {
    let repo = open_indexed(g)?;
    let (_, snap) = resolve(repo.repo(), &a.snapshot, &a.pick)?;
    let node = repo
        .find_node(&snap.tree, a.path.as_bytes())?
        .ok_or_else(|| anyhow!("{} is a directory", a.path))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    repo.dump_file(&node, &mut out)?;
    out.flush()?;
    Ok(0)
}
