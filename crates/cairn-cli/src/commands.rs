//! The commands.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow, bail};
use cairn_format::config::Config;
use cairn_format::snapshot::Snapshot;
use cairn_format::tree::{Node, NodeKind};
use cairn_format::{BlobKind, ChunkId, IndexId, KdfParams, KeyId, SnapshotId, id::to_hex};
use cairn_repo::backend::{BackendOptions, ConditionalCreate};
use cairn_repo::store::Store;
use cairn_repo::{
    BackupOptions, BackupResult, IndexedRepository, ParentChoice, Progress, RepoError, Repository,
    RestoreOptions, RestoreProgress, store,
};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::util::{Ticker, format_time, human_bytes, parse_size, parse_size64, read_password};
use crate::{EXIT_WARNINGS, GlobalArgs};

pub fn location(g: &GlobalArgs) -> Result<String> {
    g.repo
        .clone()
        .ok_or_else(|| anyhow!("no repository given: use --repo or set CAIRN_REPOSITORY"))
}

pub fn open(g: &GlobalArgs) -> Result<Repository> {
    let pw = read_password(g, false)?;
    open_with_password(g, &pw)
}

/// The backend of the repository `g` names; `use_cache` = false for commands
/// that must see the stored objects themselves (check, repair).
pub fn backend(g: &GlobalArgs, create: bool, use_cache: bool) -> Result<Store> {
    let loc = location(g)?;
    let opts = BackendOptions {
        options: BackendOptions::parse_options(&g.options)?,
        cache_dir: if use_cache && !g.no_cache {
            g.cache_dir.clone().or_else(cairn_repo::cache::default_dir)
        } else {
            None
        },
    };
    Ok(cairn_repo::backend::open(&loc, create, &opts)?.into_store())
}

/// Open without the local cache: for commands that judge the stored objects
/// themselves (check, repair).
pub fn open_uncached(g: &GlobalArgs) -> Result<Repository> {
    let pw = read_password(g, false)?;
    open_store_with_password(g, backend(g, false, false)?, &pw)
}

/// Open the repository `g` names with a password already read.
pub fn open_with_password(g: &GlobalArgs, pw: &[u8]) -> Result<Repository> {
    open_store_with_password(g, backend(g, false, true)?, pw)
}

/// Open the repository over a store already configured.
fn open_store_with_password(g: &GlobalArgs, store: Store, pw: &[u8]) -> Result<Repository> {
    let loc = location(g)?;
    let probe = store.clone();
    let hint_file = key_hint_file(&loc);
    let choice = cairn_repo::KeyChoice {
        hint: g.key_hint.clone().or_else(|| {
            let h = std::fs::read_to_string(hint_file.as_ref()?).ok()?;
            Some(h.trim().to_string()).filter(|h| !h.is_empty())
        }),
        allow_expensive_kdf: g.allow_expensive_kdf,
    };
    let mut repo = Repository::open_store_with(store, pw, &choice).map_err(|e| match e {
        RepoError::NoRepository { .. } => match cairn_repo::backend::missing_bucket(&probe) {
            Some(why) => anyhow!("no cairn repository at {loc}: {why}"),
            None => anyhow!("no cairn repository at {loc} (run `cairn init` first)"),
        },
        other => anyhow::Error::new(other).context(format!("opening repository {loc}")),
    })?;
    let l = &mut repo.tree_limits;
    l.entries = g.max_tree_entries.unwrap_or(l.entries);
    l.depth = g.max_tree_depth.unwrap_or(l.depth);
    l.bytes = g.max_tree_size.unwrap_or(l.bytes);
    for w in &repo.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(f) = hint_file {
        remember_key(&f, &repo.key_id.to_hex());
    }
    Ok(repo)
}

/// Where this host remembers which key file opened the repository at
/// `loc` (`$XDG_STATE_HOME/cairn/keys/…`, else `~/.local/state/cairn/keys/…`),
/// so that it is tried first next time.
fn key_hint_file(loc: &str) -> Option<PathBuf> {
    let name = to_hex(&cairn_format::KeyId::of(loc.as_bytes()).0[..16]);
    Some(crate::util::state_dir()?.join("keys").join(name))
}

/// Best effort: a host that cannot keep the hint tries every key file.
fn remember_key(f: &std::path::Path, key: &str) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if std::fs::read_to_string(f).is_ok_and(|k| k.trim() == key) {
        return;
    }
    let Some(dir) = f.parent() else { return };
    if std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .is_err()
    {
        return;
    }
    let tmp = f.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut w| w.write_all(key.as_bytes()))
        .and_then(|_| std::fs::rename(&tmp, f));
    if ok.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Open for a command that only reads (ls, dump, restore, stats, mount): an
/// unreadable index object is named as a warning and skipped (format-spec
/// §8), so it fails only what needs it.
pub fn open_indexed(g: &GlobalArgs) -> Result<IndexedRepository> {
    let r = open(g)?.load_index_readable()?;
    warn_unreadable_index(&r, "what only it lists cannot be restored");
    Ok(r)
}

/// Name each index object the load skipped, and what that costs.
pub fn warn_unreadable_index(r: &IndexedRepository, cost: &str) {
    for e in &r.index.read().expect("index lock").unreadable {
        eprintln!(
            "warning: skipped an unreadable index object: {e}; {cost} (`cairn check` names it, `cairn repair index` rebuilds the index)"
        );
    }
}

/// Open for a command that writes: a writer session is announced before
/// the index is loaded (format-spec §5.1); clock skew and packs the index
/// lists but storage lacks are reported.
pub fn open_for_writing(g: &GlobalArgs, command: &str) -> Result<IndexedRepository> {
    let r = open(g)?.load_index_for_writing(command)?;
    warn_unreadable_index(
        &r,
        "what only it lists is stored again, and prune refuses until the index is repaired",
    );
    if let Some(w) = r.session().and_then(|s| s.clock.skew_warning()) {
        eprintln!("warning: {w}");
    }
    let missing = r.index.read().expect("index lock").missing_packs.clone();
    if let Some(first) = missing.first() {
        eprintln!(
            "warning: {} pack(s) listed in the index are missing from storage ({}{}); nothing is deduplicated against them — run `cairn check` and `cairn repair index`",
            missing.len(),
            cairn_repo::store::pack_path(first),
            if missing.len() > 1 { ", …" } else { "" }
        );
    }
    Ok(r)
}

fn print_json(v: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn snapshot_json(id: &SnapshotId, s: &Snapshot) -> Value {
    let m = &s.summary;
    json!({
        "id": id.to_hex(),
        "short_id": id.short(),
        "time": format_time(s.time_ns, true),
        "tree": s.tree.to_hex(),
        "parent": s.parent.map(|p| p.to_hex()),
        "group": s.group.map(|g| to_hex(&g)),
        "service": s.service,
        "hostname": s.hostname,
        "username": s.username,
        "paths": s.paths.iter().map(|p| lossy(p)).collect::<Vec<_>>(),
        "tags": s.tags,
        "summary": {
            "files_new": m.files_new,
            "files_changed": m.files_changed,
            "files_unchanged": m.files_unchanged,
            "dirs": m.dirs,
            "bytes_read": m.bytes_read,
            "bytes_total": m.bytes_total,
            "data_blobs_added": m.data_blobs_added,
            "tree_blobs_added": m.tree_blobs_added,
            "bytes_added": m.bytes_added,
            "errors": m.errors,
            "duration_seconds": m.duration_ns as f64 / 1e9,
        },
    })
}

// ---------------------------------------------------------------- init

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Minimum chunk size
    #[arg(long, value_parser = parse_size, default_value = "256KiB")]
    chunk_min: u32,
    /// Average chunk size
    #[arg(long, value_parser = parse_size, default_value = "1MiB")]
    chunk_avg: u32,
    /// Maximum chunk size
    #[arg(long, value_parser = parse_size, default_value = "4MiB")]
    chunk_max: u32,
    /// zstd level for blobs (-7..=22)
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    compression: i32,
    /// Target pack size
    #[arg(long, value_parser = parse_size, default_value = "16MiB")]
    pack_size: u32,
    #[command(flatten)]
    kdf: KdfArgs,
}

#[derive(Args, Debug, Clone)]
pub struct KdfArgs {
    /// Argon2id memory cost of the new key, KiB
    #[arg(long, default_value_t = 65536)]
    kdf_memory_kib: u32,
    /// Argon2id iterations of the new key
    #[arg(long, default_value_t = 3)]
    kdf_iterations: u32,
    /// Argon2id lanes of the new key
    #[arg(long, default_value_t = 4)]
    kdf_parallelism: u32,
    /// Accept Argon2id settings below the floor (19 MiB, 2 iterations):
    /// for tests only, a stolen key file is then cheap to guess against
    #[arg(long)]
    insecure_kdf: bool,
}

/// The weakest Argon2id settings a key file may have without
/// `--insecure-kdf` (OWASP's minimum for Argon2id: m = 19 MiB, t = 2).
const KDF_FLOOR_KIB: u32 = 19 * 1024;
const KDF_FLOOR_ITERATIONS: u32 = 2;

impl KdfArgs {
    fn params(&self) -> Result<KdfParams> {
        let p = KdfParams {
            m_cost: self.kdf_memory_kib,
            t_cost: self.kdf_iterations,
            p_cost: self.kdf_parallelism,
        };
        p.validate()?;
        if !self.insecure_kdf && (p.m_cost < KDF_FLOOR_KIB || p.t_cost < KDF_FLOOR_ITERATIONS) {
            bail!(
                "refusing a weak key derivation (Argon2id m = {} KiB, t = {}): a stolen key file would be cheap to guess against; the floor is m = {KDF_FLOOR_KIB} KiB, t = {KDF_FLOOR_ITERATIONS} (--insecure-kdf allows it, for tests)",
                p.m_cost,
                p.t_cost
            );
        }
        Ok(p)
    }
}

pub fn init(g: &GlobalArgs, a: InitArgs) -> Result<i32> {
    let loc = location(g)?;
    let mut cfg = Config::new_default(cairn_repo::now_ns() / 1_000_000_000);
    cfg.chunk_min = a.chunk_min;
    cfg.chunk_avg = a.chunk_avg;
    cfg.chunk_max = a.chunk_max;
    cfg.zstd_level = a.compression;
    cfg.pack_target = a.pack_size;
    cfg.validate()?;
    let kdf = a.kdf.params()?;
    let store = backend(g, true, true)?;
    if store.exists(store::CONFIG)? {
        bail!("a repository already exists at {loc}");
    }
    let conditional = match cairn_repo::backend::probe_conditional_create(&store) {
        Ok(c) => c,
        Err(e) => match cairn_repo::backend::missing_bucket(&store) {
            Some(why) => bail!("cannot create a repository at {loc}: {why}; create it first"),
            None => {
                return Err(
                    anyhow::Error::new(e).context(format!("writing a test object to {loc}"))
                );
            }
        },
    };
    if conditional == ConditionalCreate::Ignored {
        eprintln!(
            "warning: {loc} ignores create-only writes (If-None-Match); cairn names every object but the config by the hash of its bytes, so a repeated write stores the same bytes, but two `cairn init` racing on this location could replace each other's config, and the prune lease cannot keep two prunes apart: prune refuses there unless given --single-pruner (format-spec §1.1)"
        );
    } else if store.write_once == cairn_repo::store::WriteOnce::Emulated {
        eprintln!(
            "warning: {loc}: create-only writes are emulated with a HEAD before each write (conditional_put=disabled), so the prune lease cannot keep two prunes apart: prune refuses there unless given --single-pruner (format-spec §1.1)"
        );
    }
    let pw = read_password(g, true)?;
    let repo = Repository::init_store(store, &pw, cfg, kdf)?;
    if g.json {
        print_json(
            &json!({"repository": loc, "id": to_hex(&repo.config.repo_id), "key": repo.key_id.to_hex()}),
        )?;
    } else {
        println!(
            "created cairn repository {} at {loc}",
            &to_hex(&repo.config.repo_id)[..8]
        );
        println!("keep the password safe: without it the data cannot be read");
    }
    Ok(0)
}

// ---------------------------------------------------------------- backup

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
    /// Host name to record (default: this machine's)
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
    let repo = open_for_writing(g, "backup")?;
    let (host, user) = cairn_repo::whoami();
    let parent = if a.force {
        ParentChoice::None
    } else if let Some(p) = &a.parent {
        ParentChoice::Id(repo.repo.resolve_snapshot(p, &|_| true)?.0)
    } else {
        ParentChoice::Auto
    };
    let opts = BackupOptions {
        service: a.service.clone(),
        hostname: a.host.clone().unwrap_or(host),
        username: user,
        tags: a.tags.clone(),
        parent,
        group: None,
        fingerprints: vec![],
        exclusions,
    };
    let progress = Arc::new(Progress::default());
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
    report_backup(g, &r)?;
    Ok(if r.warnings.is_empty() {
        0
    } else {
        EXIT_WARNINGS
    })
}

fn report_backup(g: &GlobalArgs, r: &BackupResult) -> Result<()> {
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
    println!("snapshot {} saved", r.id.short());
    Ok(())
}

// ---------------------------------------------------------------- snapshots

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Only this service
    #[arg(long)]
    service: Option<String>,
    /// Only snapshots with this tag (repeatable: all must match)
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Only this host
    #[arg(long)]
    host: Option<String>,
}

/// The readable snapshots; each unreadable object is a warning naming it
/// (`check` fails on it, `repair snapshots` removes it).
pub fn readable_snapshots(repo: &Repository) -> Result<Vec<(SnapshotId, Snapshot)>> {
    let (list, bad) = repo.list_snapshots_readable()?;
    for e in &bad {
        eprintln!(
            "warning: skipped an unreadable snapshot object: {e} (`cairn repair snapshots` removes it)"
        );
    }
    Ok(list)
}

pub fn snapshots(g: &GlobalArgs, a: SnapshotsArgs) -> Result<i32> {
    let repo = open(g)?;
    let list: Vec<_> = readable_snapshots(&repo)?
        .into_iter()
        .filter(|(_, s)| {
            a.service.as_ref().is_none_or(|x| &s.service == x)
                && a.host.as_ref().is_none_or(|x| &s.hostname == x)
                && a.tags.iter().all(|t| s.tags.contains(t))
        })
        .collect();
    let stored = repo.snapshot_store_times()?;
    let skew = |id: &cairn_format::SnapshotId, s: &cairn_format::snapshot::Snapshot| {
        stored
            .get(id)
            .and_then(|t| cairn_repo::forget::retention_time(id, s, *t).1)
    };
    if g.json {
        return print_json(&Value::Array(
            list.iter()
                .map(|(i, s)| {
                    let mut v = snapshot_json(i, s);
                    v["stored_time"] = json!(stored.get(i).map(|t| format_time(*t, true)));
                    v["time_warning"] = json!(skew(i, s));
                    v
                })
                .collect(),
        ))
        .map(|_| 0);
    }
    println!(
        "{:<8}  {:<20}  {:<12}  {:<12}  {:<16}  {:>10}  paths",
        "id", "time (UTC)", "host", "service", "tags", "size"
    );
    let mut warnings = Vec::new();
    for (id, s) in &list {
        let w = skew(id, s);
        let mark = if w.is_some() { "!" } else { " " };
        warnings.extend(w);
        println!(
            "{:<8}  {:<19}{mark}  {:<12}  {:<12}  {:<16}  {:>10}  {}",
            id.short(),
            format_time(s.time_ns, false),
            s.hostname,
            s.service,
            s.tags.join(","),
            human_bytes(s.summary.bytes_total),
            s.paths
                .iter()
                .map(|p| lossy(p))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!("{} snapshots", list.len());
    for w in &warnings {
        println!("! {w}");
    }
    Ok(0)
}

/// `--service`/`--host` narrowing for `latest`.
#[derive(Args, Debug, Clone)]
pub struct Pick {
    /// With `latest`: the latest snapshot of this service
    #[arg(long)]
    service: Option<String>,
    /// With `latest`: the latest snapshot of this host
    #[arg(long)]
    host: Option<String>,
}

fn resolve(repo: &Repository, spec: &str, pick: &Pick) -> Result<(SnapshotId, Snapshot)> {
    let f = |s: &Snapshot| {
        pick.service.as_ref().is_none_or(|x| &s.service == x)
            && pick.host.as_ref().is_none_or(|x| &s.hostname == x)
    };
    Ok(repo.resolve_snapshot(spec, &f)?)
}

// ---------------------------------------------------------------- ls / dump

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id, id prefix or `latest`
    snapshot: String,
    /// Only below this path
    path: Option<String>,
    #[command(flatten)]
    pick: Pick,
}

fn kind_name(n: &Node) -> &'static str {
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
    let (id, snap) = resolve(&repo.repo, &a.snapshot, &a.pick)?;
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
    let (_, snap) = resolve(&repo.repo, &a.snapshot, &a.pick)?;
    let node = repo
        .find_node(&snap.tree, a.path.as_bytes())?
        .ok_or_else(|| anyhow!("{} is a directory", a.path))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    repo.dump_file(&node, &mut out)?;
    out.flush()?;
    Ok(0)
}

// ---------------------------------------------------------------- restore

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
    let (id, snap) = resolve(&repo.repo, &snapshot, &a.pick)?;
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

// ---------------------------------------------------------------- stats / cat

pub fn stats(g: &GlobalArgs) -> Result<i32> {
    let repo = open_indexed(g)?;
    let snaps = repo.repo.list_snapshots()?;
    let all = repo.repo.store.list("")?;
    let total_bytes: u64 = all.iter().map(|o| o.1).sum();
    let idx = repo.index.read().expect("index lock");
    let mut raw = 0u64;
    let mut stored = 0u64;
    for kind in [BlobKind::Data, BlobKind::Tree] {
        for (_, loc) in idx.iter(kind) {
            raw += loc.raw_len as u64;
            stored += loc.length as u64;
        }
    }
    let logical: u64 = snaps.iter().map(|s| s.1.summary.bytes_total).sum();
    let v = json!({
        "snapshots": snaps.len(),
        "packs": idx.packs.len(),
        "index_objects": idx.index_ids.len(),
        "data_blobs": idx.len(BlobKind::Data),
        "tree_blobs": idx.len(BlobKind::Tree),
        "repository_bytes": total_bytes,
        "unique_raw_bytes": raw,
        "stored_blob_bytes": stored,
        "snapshots_logical_bytes": logical,
        "compression_ratio": if stored > 0 { raw as f64 / stored as f64 } else { 0.0 },
        "dedup_ratio": if raw > 0 { logical as f64 / raw as f64 } else { 0.0 },
        "index_bytes_per_blob": idx.bytes_per_blob(),
    });
    if g.json {
        print_json(&v)?;
    } else {
        println!("snapshots:             {}", snaps.len());
        println!("packs:                 {}", idx.packs.len());
        println!(
            "blobs:                 {} data, {} tree",
            idx.len(BlobKind::Data),
            idx.len(BlobKind::Tree)
        );
        println!("repository size:       {}", human_bytes(total_bytes));
        println!("unique data (raw):     {}", human_bytes(raw));
        println!("stored blobs:          {}", human_bytes(stored));
        println!("all snapshots (sum):   {}", human_bytes(logical));
        println!(
            "compression ratio:     {:.2}",
            v["compression_ratio"].as_f64().unwrap_or(0.0)
        );
        println!(
            "dedup ratio:           {:.2}",
            v["dedup_ratio"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct CatArgs {
    /// config | snapshot ID | index ID | tree ID | key ID
    what: String,
    /// Object id (or `latest` for snapshot)
    id: Option<String>,
}

pub fn cat(g: &GlobalArgs, a: CatArgs) -> Result<i32> {
    let need_id = || {
        a.id.clone()
            .ok_or_else(|| anyhow!("cat {} needs an id", a.what))
    };
    let v = match a.what.as_str() {
        "config" => {
            let r = open(g)?;
            let c = &r.config;
            json!({
                "repo_id": to_hex(&c.repo_id), "version": cairn_format::config::VERSION,
                "chunk_min": c.chunk_min, "chunk_avg": c.chunk_avg, "chunk_max": c.chunk_max,
                "zstd_level": c.zstd_level, "pack_target": c.pack_target, "created": c.created,
            })
        }
        "snapshot" => {
            let r = open(g)?;
            let (id, s) = r.resolve_snapshot(&need_id()?, &|_| true)?;
            snapshot_json(&id, &s)
        }
        "index" => {
            let r = open(g)?;
            let id = IndexId::from_hex(&need_id()?).ok_or_else(|| anyhow!("bad index id"))?;
            let name = store::index_path(&id);
            let b = r.store.get(&name)?;
            let f = cairn_format::index::IndexFile::decode(&r.key, &b)
                .map_err(|e| RepoError::from_format(&name, e))?;
            json!({
                "supersedes": f.supersedes.iter().map(|s| s.to_hex()).collect::<Vec<_>>(),
                "packs": f.packs.iter().map(|p| json!({
                    "id": p.id.to_hex(), "size": p.size,
                    "blobs": p.blobs.iter().map(|b| json!({
                        "kind": if b.kind == BlobKind::Data { "data" } else { "tree" },
                        "id": b.id.to_hex(), "offset": b.offset, "length": b.length, "raw_len": b.raw_len,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        }
        "tree" => {
            let r = open(g)?.load_index()?;
            let id = ChunkId::from_hex(&need_id()?).ok_or_else(|| anyhow!("bad tree id"))?;
            let t = r.load_tree(&id)?;
            Value::Array(
                t.nodes
                    .iter()
                    .map(|n| json!({"name": lossy(&n.name), "type": kind_name(n), "mode": format!("{:o}", n.mode), "size": n.size,
                        "uid": n.uid, "gid": n.gid, "mtime": [n.mtime.sec, n.mtime.nsec], "inode": n.inode,
                        "content": match &n.kind {
                            NodeKind::File { extents } => json!(extents.iter().map(|e| match e {
                                cairn_format::tree::Extent::Chunk { id, len } => json!({"chunk": id.to_hex(), "len": len}),
                                cairn_format::tree::Extent::Hole { len } => json!({"hole": len}),
                            }).collect::<Vec<_>>()),
                            NodeKind::Dir { tree } => json!(tree.to_hex()),
                            NodeKind::Symlink { target } => json!(lossy(target)),
                            _ => Value::Null,
                        }}))
                    .collect(),
            )
        }
        "key" => {
            let r = open(g)?;
            let id = KeyId::from_hex(&need_id()?).ok_or_else(|| anyhow!("bad key id"))?;
            let k = r
                .list_keys()?
                .into_iter()
                .find(|k| k.id == id)
                .ok_or_else(|| anyhow!("no key {id}"))?;
            json!({"id": k.id.to_hex(), "created": k.created, "hostname": k.hostname, "username": k.username})
        }
        other => bail!("cannot cat {other:?}: use config, snapshot, index, tree or key"),
    };
    print_json(&v)?;
    Ok(0)
}

// ---------------------------------------------------------------- key

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// List key files
    List,
    /// Add a key file for a new password
    Add {
        /// File holding the new password (else prompt)
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Remove a key file
    Remove {
        /// Key id (or unique prefix)
        id: String,
    },
    /// Change the password of the key in use
    Passwd {
        /// File holding the new password (else prompt)
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
}

fn new_password(f: &Option<PathBuf>) -> Result<Vec<u8>> {
    match f {
        Some(p) => {
            let mut s = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            while matches!(s.last(), Some(b'\n') | Some(b'\r')) {
                s.pop();
            }
            if s.is_empty() {
                bail!("the new password is empty");
            }
            Ok(s)
        }
        None => crate::util::prompt_password("enter the new password: ", true),
    }
}

pub fn key(g: &GlobalArgs, cmd: KeyCmd) -> Result<i32> {
    let repo = open(g)?;
    match cmd {
        KeyCmd::List => {
            let keys = repo.list_keys()?;
            if g.json {
                print_json(&Value::Array(
                    keys.iter()
                        .map(|k| json!({"id": k.id.to_hex(), "current": k.id == repo.key_id, "created": format_time(k.created * 1_000_000_000, true), "hostname": k.hostname, "username": k.username}))
                        .collect(),
                ))?;
            } else {
                for k in keys {
                    println!(
                        "{} {}  {}  {}@{}",
                        if k.id == repo.key_id { "*" } else { " " },
                        k.id.short(),
                        format_time(k.created * 1_000_000_000, false),
                        k.username,
                        k.hostname
                    );
                }
            }
        }
        KeyCmd::Add {
            new_password_file,
            kdf,
        } => {
            let kdf = kdf.params()?;
            let pw = new_password(&new_password_file)?;
            let id = repo.add_key(&pw, kdf)?;
            println!("added key {}", id.short());
        }
        KeyCmd::Remove { id } => {
            let keys = repo.list_keys()?;
            let m: Vec<_> = keys
                .iter()
                .filter(|k| k.id.to_hex().starts_with(&id.to_ascii_lowercase()))
                .collect();
            if m.len() != 1 {
                bail!("{} keys match {id:?}", m.len());
            }
            repo.remove_key(&m[0].id)?;
            println!("removed key {}", m[0].id.short());
        }
        KeyCmd::Passwd {
            new_password_file,
            kdf,
        } => {
            let kdf = kdf.params()?;
            let pw = new_password(&new_password_file)?;
            let id = repo.add_key(&pw, kdf)?;
            // The new key is durable before the old one goes.
            repo.store.delete(&store::key_path(&repo.key_id))?;
            println!(
                "password changed: key {} replaces {}",
                id.short(),
                repo.key_id.short()
            );
        }
    }
    Ok(0)
}
