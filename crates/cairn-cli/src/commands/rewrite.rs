//! `cairn rewrite`: new copies of snapshots without the entries patterns
//! match (a secret backed up by mistake); `--forget` removes the originals,
//! `prune` then reclaims what only they held.

use super::*;
use cairn_repo::forget::PROTECTED_TAG;
use cairn_repo::select::{Pattern, Patterns, patterns_from_file};

#[derive(Args, Debug)]
pub struct RewriteArgs {
    /// Snapshots to rewrite (id, prefix or `latest`); default: every
    /// snapshot the filters let through
    snapshots: Vec<String>,
    /// Leave out what matches PATTERN, with everything beneath it
    /// (repeatable; backup's pattern language)
    #[arg(long = "exclude", value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Like --exclude, ignoring case
    #[arg(long = "iexclude", value_name = "PATTERN")]
    iexclude: Vec<String>,
    /// Read exclude patterns from a file (one per line, # comments)
    #[arg(long = "exclude-file", value_name = "FILE")]
    exclude_file: Vec<PathBuf>,
    /// Forget each original once its copy is committed (protected ones
    /// are kept, with a warning)
    #[arg(long)]
    forget: bool,
    /// Say what would be left out; write nothing
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    pick: Pick,
}

pub fn rewrite_cmd(g: &GlobalArgs, a: RewriteArgs) -> Result<i32> {
    let mut pats: Vec<Pattern> = a.exclude.iter().map(Pattern::new).collect();
    pats.extend(a.iexclude.iter().map(Pattern::ignoring_case));
    for f in &a.exclude_file {
        pats.extend(patterns_from_file(f, false)?);
    }
    if pats.is_empty() {
        bail!("nothing to leave out: give --exclude, --iexclude or --exclude-file");
    }
    let pats = Patterns::new(&pats)?;
    let repo = open_indexed(g)?;
    let targets: Vec<(SnapshotId, Snapshot)> = named_or_all(repo.repo(), &a.snapshots, &a.pick)?;
    let mut rows = Vec::new();
    let mut forgotten = Vec::new();
    let mut warnings = 0usize;
    for (id, s) in &targets {
        repo.check_tree_limits(&s.tree, &format!("snapshot {}", id.short()))?;
        let r = repo
            .rewrite_snapshot(id, s, &pats, a.dry_run)
            .with_context(|| format!("snapshot {}", id.short()))?;
        for w in &r.warnings {
            eprintln!("warning: {w}");
            warnings += 1;
        }
        let protected = s.tags.iter().any(|t| t == PROTECTED_TAG);
        if !g.json {
            if r.removed.is_empty() {
                println!("snapshot {}: nothing matches", id.short());
            } else {
                for p in &r.removed {
                    println!("  - {}", lossy(p));
                }
                match r.new {
                    Some(n) => println!(
                        "snapshot {} rewritten as {} ({} entries, {} left out)",
                        id.short(),
                        n.short(),
                        r.removed.len(),
                        human_bytes(r.bytes_removed)
                    ),
                    None => println!(
                        "snapshot {}: {} entries ({}) would be left out (dry run)",
                        id.short(),
                        r.removed.len(),
                        human_bytes(r.bytes_removed)
                    ),
                }
            }
        }
        if a.forget
            && let Some(new) = r.new
        {
            if protected {
                eprintln!(
                    "warning: snapshot {} is protected: kept (its copy {} is protected too); cairn tag --unprotect, then forget it",
                    id.short(),
                    new.short()
                );
                warnings += 1;
            } else {
                repo.repo().delete_snapshots(&[*id])?;
                forgotten.push(*id);
            }
        }
        rows.push(json!({
            "snapshot": id.to_hex(),
            "new": r.new.map(|n| n.to_hex()),
            "removed": r.removed.iter().map(|p| lossy(p)).collect::<Vec<_>>(),
            "bytes_removed": r.bytes_removed,
            "forgotten": forgotten.contains(id),
        }));
    }
    repo.end_session();
    for (p, _) in pats.unmatched() {
        eprintln!(
            "warning: --exclude {p:?} matched nothing in {} snapshots",
            targets.len()
        );
        warnings += 1;
    }
    if g.json {
        print_json(&json!({"dry_run": a.dry_run, "snapshots": rows}))?;
    } else if !forgotten.is_empty() {
        println!(
            "{} originals forgotten; `cairn prune --max-unused 0` frees what only they held (a plain prune may keep a small removed file inside a mostly used pack)",
            forgotten.len()
        );
    }
    Ok(if warnings > 0 { EXIT_WARNINGS } else { 0 })
}
