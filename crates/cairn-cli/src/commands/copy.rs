//! `cairn copy --from-repo SRC`: snapshots of another repository copied
//! into this one (`-r`), re-chunked and re-encrypted, deduplicated against
//! what this one holds. A snapshot already copied (in either direction) is
//! skipped, so running it again adds nothing.

use std::collections::HashSet;

use super::*;
use cairn_repo::CopyMemo;

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Snapshots to copy (id, prefix or `latest` of the source); default:
    /// every snapshot the filters let through
    snapshots: Vec<String>,
    /// The repository to copy from
    #[arg(long, env = "CAIRN_FROM_REPOSITORY", value_name = "LOC")]
    from_repo: String,
    /// Backend option of the source (repeatable)
    #[arg(long = "from-option", value_name = "KEY=VALUE")]
    from_options: Vec<String>,
    /// File holding the source's password
    #[arg(long, env = "CAIRN_FROM_PASSWORD_FILE", value_name = "FILE")]
    from_password_file: Option<PathBuf>,
    /// Shell command printing the source's password
    #[arg(long, env = "CAIRN_FROM_PASSWORD_COMMAND", value_name = "CMD")]
    from_password_command: Option<String>,
    /// Say what would be copied; copy nothing
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    pick: Pick,
}

pub fn copy_cmd(g: &GlobalArgs, a: CopyArgs) -> Result<i32> {
    let mut sg = g.clone();
    sg.repo = Some(a.from_repo.clone());
    sg.options = a.from_options.clone();
    sg.password_file = a.from_password_file.clone();
    sg.password_command = a.from_password_command.clone();
    sg.key_hint = None;
    let spw = match std::env::var("CAIRN_FROM_PASSWORD") {
        Ok(p) if sg.password_file.is_none() && sg.password_command.is_none() => p.into_bytes(),
        _ => read_password(&sg, false).context("the source repository's password")?,
    };
    let src = open_with_password(&sg, &spw)
        .with_context(|| format!("opening the source repository {}", a.from_repo))?
        .load_index_readable()?;
    warn_unreadable_index(&src, "what only it lists cannot be copied");
    let dst = open_indexed(g)?;
    if src.repo().config().repo_id == dst.repo().config().repo_id {
        bail!("the source and the target are the same repository");
    }
    let wanted: Vec<(SnapshotId, Snapshot)> = named_or_all(src.repo(), &a.snapshots, &a.pick)?;
    // What the target holds already: the origins of its snapshots, and
    // its own snapshots as copies of them name them.
    let have: Vec<(SnapshotId, Snapshot)> = readable_snapshots(dst.repo())?;
    let mut known: HashSet<String> = have.iter().map(|(id, s)| dst.origin_key(id, s)).collect();
    known.extend(have.iter().map(|(id, _)| dst.copy_key(id)));
    let progress = Progress::default();
    let mut memo = CopyMemo::new();
    let mut rows = Vec::new();
    let mut warnings = 0;
    let (mut copied, mut skipped) = (0usize, 0usize);
    for (id, s) in &wanted {
        let origin = src.origin_key(id, s);
        if known.contains(&origin) || known.contains(&src.copy_key(id)) {
            skipped += 1;
            if !g.json {
                println!("snapshot {} is in the target already: skipped", id.short());
            }
            rows.push(json!({"snapshot": id.to_hex(), "new": null, "skipped": true}));
            continue;
        }
        src.check_tree_limits(&s.tree, &format!("snapshot {}", id.short()))?;
        if a.dry_run {
            if !g.json {
                println!("snapshot {} would be copied", id.short());
            }
            rows.push(json!({"snapshot": id.to_hex(), "new": null, "skipped": false}));
            continue;
        }
        let (new, w) = dst.copy_snapshot(&src, id, s, &progress, &mut memo)?;
        for w in &w {
            eprintln!("warning: {w}");
            warnings += 1;
        }
        known.insert(origin);
        copied += 1;
        if !g.json {
            println!("snapshot {} copied as {}", id.short(), new.short());
        }
        rows.push(json!({"snapshot": id.to_hex(), "new": new.to_hex(), "skipped": false}));
    }
    dst.end_session();
    if g.json {
        print_json(
            &json!({"dry_run": a.dry_run, "copied": copied, "skipped": skipped,
            "bytes_read": progress.bytes_read.load(Ordering::Relaxed), "snapshots": rows}),
        )?;
    } else {
        println!(
            "{copied} snapshots copied ({} read from the source), {skipped} already there",
            human_bytes(progress.bytes_read.load(Ordering::Relaxed))
        );
    }
    Ok(if warnings > 0 { EXIT_WARNINGS } else { 0 })
}
