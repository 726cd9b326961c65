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
    /// Keep everything within this span of the newest snapshot (e.g. 1y6m, 30d, 12h; m = months)
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
    label: &str,
) -> Result<(usize, Value)> {
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
    let repo = crate::commands::open(g)?;
    let policy = a.keep.policy();
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
    let snaps: Vec<_> = repo
        .list_snapshots()?
        .into_iter()
        .filter(|(_, s)| {
            a.service.as_ref().is_none_or(|x| &s.service == x)
                && a.host.as_ref().is_none_or(|x| &s.hostname == x)
        })
        .collect();
    let groups = decide(&policy, a.group_by, snaps);
    let (_, v) = execute(g, &repo, &groups, a.dry_run, "")?;
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"dry_run": a.dry_run, "groups": v}))?
        );
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
