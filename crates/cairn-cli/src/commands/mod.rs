//! The repository commands, one module each; what they share (opening the
//! repository with its key hint, JSON output, snapshot rows) is here.

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

use crate::util::{
    Ticker, format_node_time, format_time, human_bytes, parse_size, parse_size64, read_password,
};
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
    let l = repo.tree_limits_mut();
    l.entries = g.max_tree_entries.unwrap_or(l.entries);
    l.depth = g.max_tree_depth.unwrap_or(l.depth);
    l.bytes = g.max_tree_size.unwrap_or(l.bytes);
    for w in repo.warnings() {
        eprintln!("warning: {w}");
    }
    if let Some(f) = hint_file {
        remember_key(&f, &repo.key_id().to_hex());
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
    for e in &r.index().unreadable {
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
    let missing = r.index().missing_packs.clone();
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
        "tags": s.tags.iter().filter(|t| *t != cairn_repo::forget::PROTECTED_TAG).collect::<Vec<_>>(),
        "protected": s.tags.iter().any(|t| t == cairn_repo::forget::PROTECTED_TAG),
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

mod init;
pub use init::*;
mod backup;
pub use backup::*;
mod snapshots;
pub use snapshots::*;
mod ls;
pub use ls::*;
mod restore;
pub use restore::*;
mod stats;
pub use stats::*;
mod key;
pub use key::*;
mod check;
pub use check::*;
mod forget;
pub use forget::*;
mod mount;
pub use mount::*;
mod prune;
pub use prune::*;
mod repair;
pub use repair::*;
mod tag;
pub use tag::*;
mod version;
pub use version::*;
mod diff;
pub use diff::*;
mod find;
pub use find::*;
mod completion;
mod copy;
mod rewrite;
pub use copy::*;
mod tar;
pub use completion::*;
pub use rewrite::*;
