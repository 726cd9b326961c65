//! `cairn restore`.

use super::*;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id, id prefix or `latest`; SNAPSHOT:/PATH restores only
    /// that directory's content (or that file) at the target's root
    snapshot: String,
    /// Directory to restore into
    #[arg(long)]
    target: PathBuf,
    /// Restore only what matches PATTERN, with everything beneath it
    /// (repeatable): `/home/ann` from the root, `*.conf` a name anywhere,
    /// `**` any number of directories. A pattern that matches nothing is
    /// an error
    #[arg(long = "include", value_name = "PATTERN")]
    include: Vec<String>,
    /// Like --include, ignoring case
    #[arg(long = "iinclude", value_name = "PATTERN")]
    iinclude: Vec<String>,
    /// Leave out what matches PATTERN, with everything beneath it
    /// (repeatable); a pattern that matches nothing is an error
    #[arg(long = "exclude", value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Like --exclude, ignoring case
    #[arg(long = "iexclude", value_name = "PATTERN")]
    iexclude: Vec<String>,
    /// Do not set extended attributes (ACLs aside: see --no-acls)
    #[arg(long)]
    no_xattrs: bool,
    /// Do not set POSIX ACLs
    #[arg(long)]
    no_acls: bool,
    /// Restore into a non-empty target, replacing entries (what is in the way
    /// is unlinked and recreated, never written through)
    #[arg(long)]
    overwrite: bool,
    /// Do not set the snapshot's owners (as root: files belong to root);
    /// for snapshots you do not fully trust
    #[arg(long)]
    no_owner: bool,
    /// Do not create device nodes or FIFOs
    #[arg(long)]
    no_special: bool,
    /// Clear setuid and setgid bits and leave out file capabilities
    #[arg(long)]
    no_setuid: bool,
    /// Exit 3 (not 1) when some files are damaged: the intact ones are
    /// restored either way, damaged ones are listed and kept as NAME.damaged
    #[arg(long)]
    ignore_damaged: bool,
    #[command(flatten)]
    pick: Pick,
}

pub fn restore(g: &GlobalArgs, a: RestoreArgs) -> Result<i32> {
    use cairn_repo::select::{Pattern, Patterns};
    let pats = |cs: &[String], ci: &[String]| -> Result<Patterns> {
        let mut p: Vec<Pattern> = cs.iter().map(Pattern::new).collect();
        p.extend(ci.iter().map(Pattern::ignoring_case));
        Ok(Patterns::new(&p)?)
    };
    let include = pats(&a.include, &a.iinclude)?;
    let exclude = pats(&a.exclude, &a.iexclude)?;
    let (snapshot, subpath) = match a.snapshot.split_once(':') {
        Some((s, p)) => {
            if p.is_empty() {
                bail!("{}: no path after ':' (SNAPSHOT:/PATH)", a.snapshot);
            }
            (s.to_string(), Some(p.as_bytes().to_vec()))
        }
        None => (a.snapshot.clone(), None),
    };
    let repo = open_indexed(g)?;
    let (id, snap) = resolve(repo.repo(), &snapshot, &a.pick)?;
    let opts = RestoreOptions {
        target: a.target.clone(),
        subpath,
        include,
        exclude,
        no_xattrs: a.no_xattrs,
        no_acls: a.no_acls,
        overwrite: a.overwrite,
        no_owner: a.no_owner,
        no_special: a.no_special,
        no_setuid: a.no_setuid,
        what: format!("snapshot {}", id.short()),
    };
    let progress = Arc::new(RestoreProgress::default());
    let p2 = progress.clone();
    let ticker = Ticker::start(!g.quiet && !g.json, move || {
        (
            p2.bytes_written.load(Ordering::Relaxed),
            p2.bytes_total.load(Ordering::Relaxed),
            String::new(),
        )
    });
    let start = std::time::Instant::now();
    let r = repo.restore(&snap.tree, &opts, &progress);
    drop(ticker);
    let r = r?;
    let secs = start.elapsed().as_secs_f64();
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    for d in &r.damaged {
        let what = if d.on_target {
            "not written"
        } else {
            "damaged"
        };
        eprintln!("{what}: {}: {}", d.path.display(), d.detail);
    }
    if g.json {
        print_json(&json!({
            "snapshot": id.to_hex(),
            "target": a.target.display().to_string(),
            "files": r.files, "dirs": r.dirs, "symlinks": r.symlinks, "others": r.others, "hard_links": r.links,
            "bytes_written": r.bytes_written,
            "seconds": secs,
            "damaged": r.damaged.iter().map(|d| json!({"path": d.path.display().to_string(), "detail": d.detail, "on_target": d.on_target})).collect::<Vec<_>>(),
            "warnings": r.warnings,
            "withheld": {"special": r.withheld.special, "setuid": r.withheld.setuid, "capabilities": r.withheld.capabilities, "owner": r.withheld.owner},
        }))?;
    } else {
        let others = if r.others > 0 {
            format!(", {} FIFOs/devices", r.others)
        } else {
            String::new()
        };
        println!(
            "restored snapshot {} to {}: {} files, {} dirs, {} symlinks{others}, {} in {:.2}s",
            id.short(),
            a.target.display(),
            r.files,
            r.dirs,
            r.symlinks,
            human_bytes(r.bytes_written),
            secs
        );
        if let Some(w) = r.withheld.summary() {
            println!("withheld: {w}");
        }
    }
    let on_target = r.damaged.iter().filter(|d| d.on_target).count();
    if on_target > 0 && on_target == r.damaged.len() {
        // The target failed (no space, names too long, permissions): say
        // so, and do not send the operator to check a healthy repository.
        bail!(
            "{on_target} files could not be written to the target {} (listed above: the target's own errors); the repository is not at fault — fix the target (space, permissions, name length) and restore again",
            a.target.display()
        );
    }
    if !r.damaged.is_empty() {
        if on_target > 0 {
            eprintln!(
                "{on_target} of these failed on the target itself (its own errors, listed above), the others because of damage in the repository"
            );
        }
        if a.ignore_damaged {
            eprintln!(
                "warning: {} damaged files were left out (listed above); the rest is restored; the repository is damaged: run `cairn check`",
                r.damaged.len()
            );
            return Ok(EXIT_WARNINGS);
        }
        bail!(
            "{} files could not be restored correctly (listed above); the repository is damaged (--ignore-damaged restores the rest with exit code 3)",
            r.damaged.len()
        );
    }
    Ok(if r.warnings.is_empty() {
        0
    } else {
        EXIT_WARNINGS
    })
}
