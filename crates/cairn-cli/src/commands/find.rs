//! `cairn find PATTERN...`: entries matching patterns (restore's pattern
//! language) across snapshots. Each distinct directory (tree id at a path)
//! is read once however many snapshots hold it: 50 snapshots of a mostly
//! unchanged tree cost little more than one.

use std::collections::HashMap;
use std::rc::Rc;

use super::*;
use cairn_repo::select::{Pattern, Patterns};

#[derive(Args, Debug)]
pub struct FindArgs {
    /// Patterns (`*.conf` a name anywhere, `/etc/**/x` from the root, `**`
    /// any number of directories; see restore --include)
    #[arg(required = true, value_name = "PATTERN")]
    patterns: Vec<String>,
    /// Patterns ignore case
    #[arg(short = 'i', long)]
    ignore_case: bool,
    /// Only in these snapshots (id or prefix; repeatable; default: every
    /// snapshot the filters let through)
    #[arg(long = "snapshot", short = 's', value_name = "ID")]
    snapshots: Vec<String>,
    /// Only entries modified at or after this time (RFC 3339, or
    /// YYYY-MM-DD[ HH:MM[:SS]], UTC)
    #[arg(long, value_name = "TIME", value_parser = parse_when)]
    oldest: Option<i64>,
    /// Only entries modified at or before this time
    #[arg(long, value_name = "TIME", value_parser = parse_when)]
    newest: Option<i64>,
    /// Service, host, tag and path filters for the snapshots searched
    #[command(flatten)]
    pick: Pick,
}

fn parse_when(s: &str) -> std::result::Result<i64, String> {
    cairn_repo::duration::parse_datetime(s)
        .ok_or_else(|| format!("not a time: {s:?} (RFC 3339, or YYYY-MM-DD[ HH:MM[:SS]] in UTC)"))
}

/// What matched in one directory (a tree at a path) and below it.
#[derive(Default)]
struct Found {
    here: Vec<(Vec<u8>, Node)>,
    below: Vec<Rc<Found>>,
}

impl Found {
    fn is_empty(&self) -> bool {
        self.here.is_empty() && self.below.is_empty()
    }

    fn emit(&self, out: &mut dyn FnMut(&[u8], &Node) -> Result<()>) -> Result<()> {
        // Entries of this directory, then each subdirectory's, in name order
        // (both lists were filled in name order).
        for (path, node) in &self.here {
            out(path, node)?;
        }
        for b in &self.below {
            b.emit(out)?;
        }
        Ok(())
    }
}

struct Finder<'a> {
    repo: &'a IndexedRepository,
    pats: Patterns,
    oldest: Option<i64>,
    newest: Option<i64>,
    memo: HashMap<(ChunkId, Vec<u8>), Rc<Found>>,
    empty: Rc<Found>,
    trees_read: u64,
}

impl Finder<'_> {
    fn when_ok(&self, n: &Node) -> bool {
        let t = n.mtime.as_ns();
        self.oldest.is_none_or(|o| t >= o) && self.newest.is_none_or(|x| t <= x)
    }

    fn search(&mut self, tree: &ChunkId, prefix: &[u8]) -> Result<Rc<Found>> {
        if let Some(f) = self.memo.get(&(*tree, prefix.to_vec())) {
            return Ok(f.clone());
        }
        self.trees_read += 1;
        let t = self.repo.load_tree(tree)?;
        let mut found = Found::default();
        let mut subs = Vec::new();
        for node in t.nodes {
            let mut path = prefix.to_vec();
            path.push(b'/');
            path.extend_from_slice(&node.name);
            let sub = match node.kind {
                NodeKind::Dir { tree } => Some(tree),
                _ => None,
            };
            if let Some(s) = sub {
                subs.push((s, path.clone()));
            }
            if self.pats.matches(&path, sub.is_some()) && self.when_ok(&node) {
                found.here.push((path, node));
            }
        }
        for (s, path) in subs {
            if !self.pats.may_match_below(&path) {
                continue;
            }
            let f = self.search(&s, &path)?;
            if !f.is_empty() {
                found.below.push(f);
            }
        }
        let f = if found.is_empty() {
            self.empty.clone()
        } else {
            Rc::new(found)
        };
        self.memo.insert((*tree, prefix.to_vec()), f.clone());
        Ok(f)
    }
}

pub fn find_cmd(g: &GlobalArgs, a: FindArgs) -> Result<i32> {
    let pats: Vec<Pattern> = a
        .patterns
        .iter()
        .map(|p| {
            if a.ignore_case {
                Pattern::ignoring_case(p)
            } else {
                Pattern::new(p)
            }
        })
        .collect();
    let pats = Patterns::new(&pats)?;
    let repo = open_indexed(g)?;
    let mut snaps: Vec<(SnapshotId, Snapshot)> = named_or_all(repo.repo(), &a.snapshots, &a.pick)?;
    snaps.sort_by_key(|(id, s)| (s.time_ns, *id));
    let mut f = Finder {
        repo: &repo,
        pats,
        oldest: a.oldest,
        newest: a.newest,
        memo: HashMap::new(),
        empty: Rc::new(Found::default()),
        trees_read: 0,
    };
    let mut out = std::io::stdout().lock();
    let mut json_out = Vec::new();
    let mut total = 0u64;
    for (id, s) in &snaps {
        repo.check_tree_limits(&s.tree, &format!("snapshot {}", id.short()))?;
        let found = f.search(&s.tree, b"")?;
        if found.is_empty() {
            continue;
        }
        let mut rows = Vec::new();
        if !g.json {
            writeln!(
                out,
                "Found matching entries in snapshot {} from {} ({})",
                id.short(),
                format_time(s.time_ns, false),
                s.hostname
            )?;
        }
        found.emit(&mut |path, n| {
            total += 1;
            let mtime = format_node_time(&n.mtime);
            if g.json {
                rows.push(
                    json!({"path": lossy(path), "type": kind_name(n), "size": n.size,
                    "mode": format!("{:o}", n.mode), "uid": n.uid, "gid": n.gid, "mtime": mtime}),
                );
            } else {
                writeln!(
                    out,
                    "{:<8} {:>10}  {}  {}",
                    kind_name(n),
                    n.size,
                    &mtime[..19],
                    lossy(path)
                )
                .map_err(|e| RepoError::InvalidInput(format!("writing: {e}")))?;
            }
            Ok(())
        })?;
        if g.json {
            json_out.push(
                json!({"snapshot": id.to_hex(), "time": format_time(s.time_ns, true),
                "hostname": s.hostname, "service": s.service, "hits": rows.len(), "matches": rows}),
            );
        } else {
            writeln!(out)?;
        }
    }
    drop(out);
    if g.json {
        print_json(&Value::Array(json_out))?;
    } else if !g.quiet {
        eprintln!(
            "{total} matches in {} snapshots ({} directories read)",
            snaps.len(),
            f.trees_read
        );
    }
    Ok(0)
}
