//! `cairn diff A B`: what changed between two snapshots, decided by content
//! ids (restic's marks: `+` added, `-` removed, `M` content, `U` metadata
//! only, `T` type).

use super::*;
use cairn_repo::diff::{DiffEntry, DiffStats};

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The first snapshot (id, id prefix or `latest`)
    a: String,
    /// The second snapshot
    b: String,
    /// Also list entries whose metadata only changed (mode, owner, mtime,
    /// extended attributes); they are always counted
    #[arg(long)]
    metadata: bool,
    #[command(flatten)]
    pick: Pick,
}

fn entry_json(e: &DiffEntry) -> Value {
    let side = |n: &Option<Node>| {
        n.as_ref().map(|n| {
            json!({
                "type": kind_name(n),
                "size": n.size,
                "mode": format!("{:o}", n.mode),
                "uid": n.uid,
                "gid": n.gid,
                "mtime": format_node_time(&n.mtime),
            })
        })
    };
    json!({
        "path": lossy(&e.path),
        "change": e.change.name(),
        "what": e.what,
        "before": side(&e.before),
        "after": side(&e.after),
    })
}

fn stats_json(s: &DiffStats) -> Value {
    json!({
        "added": s.added, "removed": s.removed, "type_changed": s.type_changed,
        "modified": s.modified, "metadata": s.metadata,
        "bytes_added": s.bytes_added, "bytes_removed": s.bytes_removed,
    })
}

pub fn diff_cmd(g: &GlobalArgs, a: DiffArgs) -> Result<i32> {
    let repo = open_indexed(g)?;
    let (ia, sa) = resolve(repo.repo(), &a.a, &a.pick)?;
    let (ib, sb) = resolve(repo.repo(), &a.b, &a.pick)?;
    repo.check_tree_limits(&sa.tree, &format!("snapshot {}", ia.short()))?;
    repo.check_tree_limits(&sb.tree, &format!("snapshot {}", ib.short()))?;
    let mut out = std::io::stdout().lock();
    let mut changes = Vec::new();
    let stats = repo.diff_trees(&sa.tree, &sb.tree, &mut |e| {
        if e.change == cairn_repo::diff::Change::Metadata && !a.metadata {
            return Ok(());
        }
        if g.json {
            changes.push(entry_json(&e));
        } else {
            let what = if e.what.is_empty() || e.change != cairn_repo::diff::Change::Metadata {
                String::new()
            } else {
                format!("  ({})", e.what.join(", "))
            };
            let dir = if e
                .after
                .as_ref()
                .or(e.before.as_ref())
                .is_some_and(|n| matches!(n.kind, NodeKind::Dir { .. }))
            {
                "/"
            } else {
                ""
            };
            writeln!(out, "{}    {}{dir}{what}", e.change.mark(), lossy(&e.path)).map_err(|x| {
                cairn_repo::RepoError::InvalidInput(format!("writing the diff: {x}"))
            })?;
        }
        Ok(())
    })?;
    if g.json {
        print_json(&json!({
            "a": ia.to_hex(),
            "b": ib.to_hex(),
            "changes": changes,
            "stats": stats_json(&stats),
        }))?;
    } else {
        writeln!(
            out,
            "\n{} added ({}), {} removed ({}), {} modified, {} of another type, {} changed metadata only",
            stats.added,
            human_bytes(stats.bytes_added),
            stats.removed,
            human_bytes(stats.bytes_removed),
            stats.modified,
            stats.type_changed,
            stats.metadata
        )?;
    }
    Ok(0)
}
