//! `cairn backup`: files, directories, `--stdin`, with excludes.

use super::*;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up
    paths: Vec<PathBuf>,
    /// Service the snapshot belongs to
    #[arg(long, default_value = "")]
    service: String,
    /// Tag (repeatable)
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Host name to record (default: CAIRN_HOST, else this machine's name)
    #[arg(long)]
    host: Option<String>,
    /// Compare against this snapshot instead of the latest matching one
    #[arg(long)]
    parent: Option<String>,
    /// Read every file (no parent snapshot)
    #[arg(long)]
    force: bool,
    /// Back up standard input
    #[arg(long, conflicts_with = "stdin_from_command")]
    stdin: bool,
    /// File name for standard input or command output
    #[arg(long, default_value = "stdin")]
    stdin_name: String,
    /// Back up the standard output of a command (given after --)
    #[arg(long)]
    stdin_from_command: bool,
    /// Read and encode everything, store nothing: say what would be added
    #[arg(short = 'n', long, conflicts_with_all = ["stdin", "stdin_from_command"])]
    dry_run: bool,
    /// List the files that are new (+), changed (M) and gone (-) since the
    /// parent snapshot (with --dry-run: new and changed)
    #[arg(short = 'v', long)]
    verbose: bool,
    #[command(flatten)]
    select: BackupSelect,
}

/// What a backup leaves out, and lists of paths to back up.
#[derive(Args, Debug, Default)]
pub struct BackupSelect {
    /// Leave out paths matching PATTERN (repeatable). `*.log` matches a name
    /// anywhere, `/var/cache` only from the root, `**` any number of
    /// directories, a trailing `/` only directories
    #[arg(short = 'e', long = "exclude", value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Like --exclude, ignoring case
    #[arg(long = "iexclude", value_name = "PATTERN")]
    iexclude: Vec<String>,
    /// Read --exclude patterns from a file, one per line (# starts a comment)
    #[arg(long = "exclude-file", value_name = "FILE")]
    exclude_file: Vec<PathBuf>,
    /// Read --iexclude patterns from a file
    #[arg(long = "iexclude-file", value_name = "FILE")]
    iexclude_file: Vec<PathBuf>,
    /// Leave out directories holding a CACHEDIR.TAG (https://bford.info/cachedir/)
    #[arg(long)]
    exclude_caches: bool,
    /// Leave out directories holding a file NAME (whose content starts with
    /// HEADER, when given) (repeatable)
    #[arg(long = "exclude-if-present", value_name = "NAME[:HEADER]")]
    exclude_if_present: Vec<String>,
    /// Leave out files larger than SIZE (e.g. 500M, 2G; K, M, G, T are
    /// powers of 1024)
    #[arg(long, value_name = "SIZE")]
    exclude_larger_than: Option<String>,
    /// Stay on the file system of each path given: what is mounted below is
    /// left out (the mount point is kept, empty)
    #[arg(short = 'x', long)]
    one_file_system: bool,
    /// Back up the paths listed in FILE, one per line (# starts a comment,
    /// empty lines are skipped) (repeatable)
    #[arg(long = "files-from", value_name = "FILE")]
    files_from: Vec<PathBuf>,
    /// Like --files-from, every line a path as written (no comments)
    #[arg(long = "files-from-verbatim", value_name = "FILE")]
    files_from_verbatim: Vec<PathBuf>,
    /// Like --files-from, paths separated by NUL bytes (find -print0)
    #[arg(long = "files-from-raw", value_name = "FILE")]
    files_from_raw: Vec<PathBuf>,
}

impl BackupSelect {
    fn exclusions(&self) -> Result<cairn_repo::select::Exclusions> {
        use cairn_repo::select::{CACHEDIR_TAG, Exclusions, Pattern, Patterns, patterns_from_file};
        let mut pats: Vec<Pattern> = self.exclude.iter().map(Pattern::new).collect();
        pats.extend(self.iexclude.iter().map(Pattern::ignoring_case));
        for f in &self.exclude_file {
            pats.extend(patterns_from_file(f, false)?);
        }
        for f in &self.iexclude_file {
            pats.extend(patterns_from_file(f, true)?);
        }
        let mut if_present = Vec::new();
        if self.exclude_caches {
            if_present.push((CACHEDIR_TAG.0.to_string(), Some(CACHEDIR_TAG.1.to_vec())));
        }
        for spec in &self.exclude_if_present {
            if_present.push(Exclusions::parse_if_present(spec)?);
        }
        Ok(Exclusions {
            patterns: Patterns::new(&pats)?,
            if_present,
            larger_than: self
                .exclude_larger_than
                .as_deref()
                .map(|v| parse_size64(v).map_err(|e| anyhow::anyhow!("--exclude-larger-than: {e}")))
                .transpose()?,
            one_file_system: self.one_file_system,
        })
    }

    /// Paths listed by --files-from and its variants.
    fn listed_paths(&self) -> Result<Vec<PathBuf>> {
        use std::os::unix::ffi::OsStrExt;
        let mut out = Vec::new();
        let read = |f: &PathBuf| -> Result<Vec<u8>> {
            if f.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                Ok(b)
            } else {
                std::fs::read(f).with_context(|| format!("reading {}", f.display()))
            }
        };
        for f in &self.files_from {
            let b = read(f)?;
            for line in b.split(|&c| c == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let trimmed = line.trim_ascii();
                if trimmed.is_empty() || trimmed.starts_with(b"#") {
                    continue;
                }
                out.push(PathBuf::from(std::ffi::OsStr::from_bytes(trimmed)));
            }
        }
        for f in &self.files_from_verbatim {
            let b = read(f)?;
            for line in b.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
                out.push(PathBuf::from(std::ffi::OsStr::from_bytes(line)));
            }
        }
        for f in &self.files_from_raw {
            let b = read(f)?;
            for p in b.split(|&c| c == 0).filter(|l| !l.is_empty()) {
                out.push(PathBuf::from(std::ffi::OsStr::from_bytes(p)));
            }
        }
        let listed = !(self.files_from.is_empty()
            && self.files_from_verbatim.is_empty()
            && self.files_from_raw.is_empty());
        if listed && out.is_empty() {
            bail!("--files-from: the lists name no path");
        }
        Ok(out)
    }
}

pub fn backup(g: &GlobalArgs, mut a: BackupArgs) -> Result<i32> {
    let exclusions = a.select.exclusions()?;
    let listed = a.select.listed_paths()?;
    if !listed.is_empty() && (a.stdin || a.stdin_from_command) {
        bail!("--files-from takes no --stdin or --stdin-from-command");
    }
    a.paths.extend(listed);
    if !a.stdin && !a.stdin_from_command && a.paths.is_empty() {
        bail!("nothing to back up: give paths, --stdin or --stdin-from-command -- CMD");
    }
    if a.stdin && !a.paths.is_empty() {
        bail!("--stdin takes no paths");
    }
    if a.stdin_from_command && a.paths.is_empty() {
        bail!("--stdin-from-command needs a command after --");
    }
    let repo = if a.dry_run {
        open_indexed(g)?
    } else {
        open_for_writing(g, "backup")?
    };
    let (_, user) = cairn_repo::whoami();
    let parent = if a.force {
        ParentChoice::None
    } else if let Some(p) = &a.parent {
        ParentChoice::Id(repo.repo().resolve_snapshot(p, &|_| true)?.0)
    } else {
        ParentChoice::Auto
    };
    let opts = BackupOptions {
        service: a.service.clone(),
        hostname: a.host.clone().unwrap_or_else(this_host),
        username: user,
        tags: a.tags.clone(),
        parent,
        group: None,
        fingerprints: vec![],
        exclusions,
        dry_run: a.dry_run,
    };
    let progress = Arc::new(Progress {
        list_changes: a.verbose && a.dry_run,
        ..Default::default()
    });
    let p2 = progress.clone();
    let ticker = Ticker::start(!g.quiet && !g.json, move || {
        let read = p2.bytes_read.load(Ordering::Relaxed);
        let files = p2.files_new.load(Ordering::Relaxed)
            + p2.files_changed.load(Ordering::Relaxed)
            + p2.files_unchanged.load(Ordering::Relaxed);
        (read, 0, format!("{files} files"))
    });
    let result = if a.stdin {
        repo.backup_stream(
            std::io::stdin().lock(),
            &a.stdin_name,
            &opts,
            &progress,
            || Ok(()),
        )
    } else if a.stdin_from_command {
        let (cmd, args) = a.paths.split_first().expect("checked non-empty");
        let mut child = Command::new(cmd)
            .args(args)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", cmd.display()))?;
        let out = child.stdout.take().expect("piped");
        let name = cmd.display().to_string();
        repo.backup_stream(out, &a.stdin_name, &opts, &progress, move || {
            let status = child
                .wait()
                .map_err(|e| RepoError::io(PathBuf::from(&name), e))?;
            if status.success() {
                Ok(())
            } else {
                Err(RepoError::InvalidInput(format!(
                    "command {name} failed ({status}); no snapshot was written"
                )))
            }
        })
    } else {
        repo.backup_paths(&a.paths, &opts, &progress)
    };
    drop(ticker);
    let r = result?;
    if a.verbose && !g.json {
        list_changes(&repo, &r, &progress)?;
    }
    report_backup(g, &r, a.dry_run)?;
    Ok(if r.warnings.is_empty() {
        0
    } else {
        EXIT_WARNINGS
    })
}

/// `-v`: what the backup found new, changed or gone. After a real backup,
/// the difference from its parent by content; in a dry run (nothing was
/// stored to compare with), the files the walk read as new or changed.
fn list_changes(repo: &IndexedRepository, r: &BackupResult, progress: &Progress) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if progress.list_changes {
        for (mark, p) in progress.changes.lock().expect("changes").iter() {
            writeln!(out, "{mark}    {}", p.display())?;
        }
        return Ok(());
    }
    let Some(parent) = &r.snapshot.parent else {
        // No parent: every file is new.
        repo.walk(&r.snapshot.tree, b"", &|_| true, &mut |e| {
            if matches!(e.node.kind, NodeKind::Dir { .. }) {
                return Ok(());
            }
            writeln!(out, "+    {}", lossy(&e.path))
                .map_err(|x| RepoError::InvalidInput(format!("writing: {x}")))
        })?;
        return Ok(());
    };
    let parent_tree = repo.repo().load_snapshot(parent)?.tree;
    repo.diff_trees(&parent_tree, &r.snapshot.tree, &mut |e| {
        if e.change == cairn_repo::diff::Change::Metadata {
            return Ok(());
        }
        let is_dir = e
            .after
            .as_ref()
            .or(e.before.as_ref())
            .is_some_and(|n| matches!(n.kind, NodeKind::Dir { .. }));
        if is_dir && e.change != cairn_repo::diff::Change::TypeChanged {
            return Ok(());
        }
        writeln!(out, "{}    {}", e.change.mark(), lossy(&e.path))
            .map_err(|x| RepoError::InvalidInput(format!("writing: {x}")))
    })?;
    Ok(())
}

pub(crate) fn report_backup(g: &GlobalArgs, r: &BackupResult, dry_run: bool) -> Result<()> {
    let s = &r.snapshot.summary;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if g.json {
        let mut v = snapshot_json(&r.id, &r.snapshot);
        v["packs_added"] = json!(r.stats.packs);
        if let Some((_, n)) = r.snapshot.extra.iter().find(|(k, _)| k == "excluded") {
            v["excluded"] = json!(n.parse::<u64>().unwrap_or(0));
        }
        v["warnings"] = json!(r.warnings);
        if dry_run {
            v["dry_run"] = json!(true);
            v["id"] = Value::Null;
            v["short_id"] = Value::Null;
        }
        return print_json(&v);
    }
    println!(
        "Files:      {} new, {} changed, {} unchanged",
        s.files_new, s.files_changed, s.files_unchanged
    );
    println!("Dirs:       {}", s.dirs);
    if let Some((_, n)) = r.snapshot.extra.iter().find(|(k, _)| k == "excluded") {
        println!("Excluded:   {n} entries");
    }
    println!(
        "Read:       {} of {} total",
        human_bytes(s.bytes_read),
        human_bytes(s.bytes_total)
    );
    println!(
        "Added:      {} ({} data blobs, {} tree blobs, after dedup and compression)",
        human_bytes(s.bytes_added),
        s.data_blobs_added,
        s.tree_blobs_added
    );
    println!("Duration:   {:.2}s", s.duration_ns as f64 / 1e9);
    if !r.warnings.is_empty() {
        println!(
            "Warnings:   {} (listed above: sources skipped, changed while read, or excluded though given)",
            r.warnings.len()
        );
    }
    if dry_run {
        println!("dry run: nothing was written");
    } else {
        println!("snapshot {} saved", r.id.short());
    }
    Ok(())
}
