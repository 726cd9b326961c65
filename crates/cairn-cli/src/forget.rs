//! `cairn forget` and `cairn tag`.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use cairn_format::SnapshotId;
use cairn_format::snapshot::Snapshot;
use cairn_repo::Repository;
use cairn_repo::forget::{self, Decision, GroupBy, PROTECTED_TAG, RetentionPolicy};
use clap::Args;
use serde_json::{Value, json};

use crate::GlobalArgs;
use crate::util::format_time;

/// Keep rules as command-line options.
#[derive(Args, Debug, Clone, Default)]
pub struct KeepArgs {
    /// Keep the N newest snapshots
    #[arg(long)]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours
    #[arg(long)]
    keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days
    #[arg(long)]
    keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N weeks
    #[arg(long)]
    keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months
    #[arg(long)]
    keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years
    #[arg(long)]
    keep_yearly: Option<u32>,
    /// Keep everything within this span of the newest snapshot (e.g. 1y6m,
    /// 30d, 12h). Here, as in restic, m = months (30 days); everywhere else
    /// in cairn m = minutes. Units: ms, s, min, m, h, d, w, mo, y
    #[arg(long, value_parser = forget::parse_keep_within)]
    keep_within: Option<std::time::Duration>,
    /// Keep snapshots with this tag (repeatable)
    #[arg(long = "keep-tag")]
    keep_tags: Vec<String>,
}

impl KeepArgs {
    fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within,
            keep_tags: self.keep_tags.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Remove exactly these snapshots (instead of applying keep rules)
    ids: Vec<String>,
    #[command(flatten)]
    keep: KeepArgs,
    /// Group snapshots by these fields before applying the rules
    #[arg(long, default_value = "service,host,paths", value_parser = GroupBy::parse)]
    group_by: GroupBy,
    /// Only snapshots of this service
    #[arg(long)]
    service: Option<String>,
    /// Only snapshots of this host
    #[arg(long)]
    host: Option<String>,
    /// Show what would be removed; remove nothing
    #[arg(long)]
    dry_run: bool,
    /// Allow the rules to remove every snapshot of a group (only --keep-tag
    /// can: every other rule keeps the newest)
    #[arg(long)]
    allow_empty: bool,
    /// Prune afterwards
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    prune_args: PruneArgs,
}

/// Apply a policy to snapshots (already filtered); returns the decisions by group.
pub fn decide(
    policy: &RetentionPolicy,
    group_by: GroupBy,
    snaps: Vec<(SnapshotId, Snapshot)>,
) -> BTreeMap<String, (Vec<Decision>, BTreeMap<SnapshotId, Snapshot>)> {
    let mut groups: BTreeMap<String, Vec<(SnapshotId, Snapshot)>> = BTreeMap::new();
    for (id, s) in snaps {
        groups.entry(group_by.key(&s)).or_default().push((id, s));
    }
    groups
        .into_iter()
        .map(|(k, g)| {
            let d = forget::apply(policy, &g);
            (k, (d, g.into_iter().collect()))
        })
        .collect()
}

/// Print decisions and remove what is not kept (unless dry run). Returns the
/// number removed.
pub fn execute(
    g: &GlobalArgs,
    repo: &Repository,
    groups: &BTreeMap<String, (Vec<Decision>, BTreeMap<SnapshotId, Snapshot>)>,
    dry_run: bool,
    allow_empty: bool,
    label: &str,
) -> Result<(usize, Value)> {
    let emptied: Vec<&str> = groups
        .iter()
        .filter(|(_, (d, _))| !d.is_empty() && d.iter().all(|d| !d.keep))
        .map(|(k, _)| k.as_str())
        .collect();
    if !emptied.is_empty() && !allow_empty && !dry_run {
        bail!(
            "{label}the rules keep no snapshot of {} {}: nothing was removed (check the rules, or pass --allow-empty to remove them all)",
            if emptied.len() == 1 {
                "group"
            } else {
                "groups"
            },
            emptied.join(", ")
        );
    }
    if !emptied.is_empty() && !allow_empty {
        eprintln!(
            "note: {label}the rules keep no snapshot of {}: a real run refuses without --allow-empty",
            emptied.join(", ")
        );
    }
    let mut remove = Vec::new();
    let mut out = Vec::new();
    for (key, (decisions, snaps)) in groups {
        if !g.json {
            println!("{label}group {key}:");
        }
        let mut rows = Vec::new();
        for d in decisions {
            let s = &snaps[&d.id];
            if !d.keep {
                remove.push(d.id);
            }
            if !g.json {
                println!(
                    "  {} {}  {}  {}",
                    if d.keep { "keep  " } else { "remove" },
                    d.id.short(),
                    format_time(s.time_ns, false),
                    d.reasons.join(", ")
                );
            }
            rows.push(json!({"id": d.id.to_hex(), "time": format_time(s.time_ns, true), "keep": d.keep, "reasons": d.reasons}));
        }
        out.push(json!({"group": key, "snapshots": rows}));
    }
    if !dry_run {
        repo.delete_snapshots(&remove)?;
    }
    if !g.json {
        println!(
            "{label}{} snapshots {}",
            remove.len(),
            if dry_run {
                "would be removed (dry run)"
            } else {
                "removed; run prune to free their data"
            }
        );
    }
    Ok((remove.len(), Value::Array(out)))
}

pub fn forget_cmd(g: &GlobalArgs, a: ForgetArgs) -> Result<i32> {
    let policy = a.keep.policy();
    policy.validate().map_err(anyhow::Error::msg)?;
    let repo = crate::commands::open(g)?;
    prune_would_run(&repo, &a.prune_args, a.prune, a.dry_run)?;
    if !a.ids.is_empty() {
        if !policy.is_empty() {
            bail!("give either snapshot ids or keep rules, not both");
        }
        let mut ids = Vec::new();
        for spec in &a.ids {
            let (id, s) = repo.resolve_snapshot(spec, &|_| true)?;
            if s.tags.iter().any(|t| t == PROTECTED_TAG) {
                bail!(
                    "snapshot {} is protected (cairn tag --unprotect first)",
                    id.short()
                );
            }
            ids.push(id);
        }
        if !a.dry_run {
            repo.delete_snapshots(&ids)?;
        }
        if a.prune {
            return run_prune(g, repo, &a.prune_args, a.dry_run);
        }
        if g.json {
            println!(
                "{}",
                json!({"removed": ids.iter().map(|i| i.to_hex()).collect::<Vec<_>>(), "dry_run": a.dry_run})
            );
        } else {
            println!(
                "{} snapshots {}",
                ids.len(),
                if a.dry_run {
                    "would be removed"
                } else {
                    "removed"
                }
            );
        }
        return Ok(0);
    }
    if policy.is_empty() {
        bail!(
            "no keep rule given: nothing would be kept, so nothing is removed (use --keep-last, --keep-daily, ...)"
        );
    }
    let stored = repo.snapshot_store_times()?;
    let snaps: Vec<_> = crate::commands::readable_snapshots(&repo)?
        .into_iter()
        .filter(|(_, s)| {
            a.service.as_ref().is_none_or(|x| &s.service == x)
                && a.host.as_ref().is_none_or(|x| &s.hostname == x)
        })
        .map(|(id, mut s)| {
            // Retention by a time the writer cannot fake (the storage's).
            if let Some(&t) = stored.get(&id) {
                let (when, warning) = forget::retention_time(&id, &s, t);
                if let Some(w) = warning {
                    eprintln!("warning: {w}");
                }
                s.time_ns = when;
            }
            (id, s)
        })
        .collect();
    let groups = decide(&policy, a.group_by, snaps);
    let (_, v) = execute(g, &repo, &groups, a.dry_run, a.allow_empty, "")?;
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"dry_run": a.dry_run, "groups": v}))?
        );
    }
    if a.prune {
        return run_prune(g, repo, &a.prune_args, a.dry_run);
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// Snapshots (id, id prefix or latest)
    #[arg(required = true)]
    ids: Vec<String>,
    /// Add a tag (repeatable)
    #[arg(long)]
    add: Vec<String>,
    /// Remove a tag (repeatable)
    #[arg(long)]
    remove: Vec<String>,
    /// Protect from forget
    #[arg(long, conflicts_with = "unprotect")]
    protect: bool,
    /// Remove the protection
    #[arg(long)]
    unprotect: bool,
}

pub fn tag_cmd(g: &GlobalArgs, a: TagArgs) -> Result<i32> {
    let repo = crate::commands::open(g)?;
    let mut add = a.add.clone();
    let mut remove = a.remove.clone();
    if a.protect {
        add.push(PROTECTED_TAG.into());
    }
    if a.unprotect {
        remove.push(PROTECTED_TAG.into());
    }
    if add.is_empty() && remove.is_empty() {
        bail!("nothing to do: give --add, --remove, --protect or --unprotect");
    }
    for spec in &a.ids {
        let (id, _) = repo.resolve_snapshot(spec, &|_| true)?;
        let new = repo.retag(&id, &add, &remove)?;
        if g.json {
            println!("{}", json!({"old": id.to_hex(), "new": new.to_hex()}));
        } else {
            println!("snapshot {} is now {}", id.short(), new.short());
        }
    }
    Ok(0)
}

/// Options of `cairn prune` (also taken by `forget --prune`).
#[derive(Args, Debug, Clone)]
pub struct PruneArgs {
    /// Repack packs whose unused share exceeds this (e.g. 5% or 0.05)
    #[arg(long, default_value = "5%", value_parser = parse_fraction)]
    max_unused: f64,
    /// Grace period between marking packs and deleting them (e.g. 24h, 30m;
    /// m = minutes; units ms, s, min, m, h, d, w, mo, y)
    #[arg(long, default_value = "24h", value_parser = cairn_stack::catalog::parse_duration)]
    keep_delete: std::time::Duration,
    /// Delete immediately: ONLY safe if nothing else writes to the repository
    /// (refused while another backup or prune session is running)
    #[arg(long)]
    instant_delete: bool,
    /// Take the prune lease even though it has not expired: only when the
    /// prune holding it is certainly gone (its host is down, its process killed)
    #[arg(long)]
    force_takeover: bool,
    /// Prune on a store that does not enforce create-only writes (S3 with
    /// conditional_put=disabled, or a server that ignores If-None-Match),
    /// where the lease cannot keep two prunes apart: you make sure no other
    /// prune runs on this repository at the same time
    #[arg(long)]
    single_pruner: bool,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|x| x / 100.0),
        None => s.trim().parse::<f64>(),
    }
    .map_err(|_| format!("bad fraction {s:?} (use 5% or 0.05)"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s:?} is not between 0% and 100%"))
    }
}

#[derive(Args, Debug)]
pub struct PruneCmdArgs {
    #[command(flatten)]
    prune: PruneArgs,
    /// Report only
    #[arg(long)]
    dry_run: bool,
}

/// Before `forget --prune` removes anything: `--single-pruner` without
/// `--prune` is a mistake, and a prune the store cannot keep apart from
/// others is refused now, before snapshots are forgotten, not after.
pub fn prune_would_run(repo: &Repository, a: &PruneArgs, prune: bool, dry_run: bool) -> Result<()> {
    if a.single_pruner && !prune {
        bail!("--single-pruner is an option of the prune: add --prune");
    }
    if prune
        && !dry_run
        && !a.single_pruner
        && let Some(why) = cairn_repo::backend::create_only_unenforced(&repo.store)?
    {
        bail!(
            "prune refused: {why} (format-spec §1.1); if no other prune can run on this repository at the same time, pass --single-pruner; nothing was forgotten"
        );
    }
    Ok(())
}

/// Run a prune and print its report.
pub fn run_prune(g: &GlobalArgs, repo: Repository, a: &PruneArgs, dry_run: bool) -> Result<i32> {
    if a.instant_delete && !g.json {
        eprintln!(
            "warning: --instant-delete: packs are deleted now, without a grace period; a backup running at the same time can lose data"
        );
    }
    let opts = cairn_repo::PruneOptions {
        max_unused: a.max_unused,
        keep_delete: a.keep_delete,
        instant_delete: a.instant_delete,
        dry_run,
        stage: Some(cairn_repo::Stage::default()),
        force_takeover: a.force_takeover,
        single_pruner: a.single_pruner,
    };
    let ticker = crate::util::Ticker::stage(!g.quiet && !g.json, opts.stage.clone().expect("set"));
    let r = repo.prune(&opts);
    drop(ticker);
    let r = r?;
    let h = crate::util::human_bytes;
    if !g.json {
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
    }
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "dry_run": dry_run, "snapshots": r.snapshots, "packs_before": r.packs_before, "bytes_before": r.bytes_before,
                "blobs_used": r.blobs_used, "blobs_unused": r.blobs_unused,
                "packs_marked": r.packs_marked, "bytes_marked": r.bytes_marked, "unindexed_marked": r.unindexed_marked,
                "packs_repacked": r.packs_repacked, "blobs_repacked": r.blobs_repacked, "bytes_repacked": r.bytes_repacked,
                "packs_deleted": r.packs_deleted, "bytes_deleted": r.bytes_deleted, "packs_recovered": r.packs_recovered,
                "markers_pending": r.markers_pending, "markers_completed": r.markers_completed,
                "markers_held": r.markers_held, "sessions_fenced": r.sessions_fenced,
                "commits_pending": r.commits_pending,
                "missing_packs_dropped": r.missing_packs_dropped.iter().map(|p| p.to_hex()).collect::<Vec<_>>(),
                "warnings": r.warnings,
            }))?
        );
    } else {
        println!(
            "{} snapshots use {} blobs; {} indexed blobs are unused",
            r.snapshots, r.blobs_used, r.blobs_unused
        );
        println!(
            "deleted now:   {} packs, {} (finished {} earlier markings{})",
            r.packs_deleted,
            h(r.bytes_deleted),
            r.markers_completed,
            if r.packs_recovered > 0 {
                format!(
                    ", {} packs kept because a snapshot needs them",
                    r.packs_recovered
                )
            } else {
                String::new()
            }
        );
        println!(
            "marked now:    {} packs, {} ({} repacked: {} blobs copied, {} written; {} unindexed)",
            r.packs_marked,
            h(r.bytes_marked),
            r.packs_repacked,
            r.blobs_repacked,
            h(r.bytes_repacked),
            r.unindexed_marked
        );
        if !a.instant_delete && r.packs_marked > 0 {
            println!(
                "marked packs are deleted by a prune run after {:?} from now",
                a.keep_delete
            );
        }
        if r.markers_pending > 0 {
            println!(
                "{} earlier markings are still in their grace period",
                r.markers_pending
            );
        }
        for m in &r.markers_held {
            println!("held:          {m}");
        }
        for f in &r.sessions_fenced {
            println!("fenced:        {f}: taken for dead, its objects removed");
        }
        if dry_run {
            println!("dry run: nothing was changed");
        }
    }
    Ok(0)
}

pub fn prune_cmd(g: &GlobalArgs, a: PruneCmdArgs) -> Result<i32> {
    run_prune(g, crate::commands::open(g)?, &a.prune, a.dry_run)
}
