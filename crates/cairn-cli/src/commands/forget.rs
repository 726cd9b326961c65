//! `cairn forget`: keep rules, grouping, `--prune`.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use cairn_format::SnapshotId;
use cairn_format::snapshot::Snapshot;
use cairn_repo::Repository;
use cairn_repo::forget::{self, Decision, GroupBy, PROTECTED_TAG, RetentionPolicy};
use clap::Args;
use serde_json::{Value, json};

use super::{PruneArgs, lossy, prune_would_run, run_prune};
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
    #[command(flatten)]
    pick: crate::commands::Pick,
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

/// One group's decisions, its snapshots, and its key as JSON (the grouped
/// fields only: `service`, `hostname`, `paths`, `tags`).
pub struct GroupDecisions {
    pub decisions: Vec<Decision>,
    pub snaps: BTreeMap<SnapshotId, Snapshot>,
    pub key: Value,
}

/// Apply a policy to snapshots (already filtered); returns the decisions by group.
pub fn decide(
    policy: &RetentionPolicy,
    group_by: GroupBy,
    snaps: Vec<(SnapshotId, Snapshot)>,
) -> BTreeMap<String, GroupDecisions> {
    let mut groups: BTreeMap<String, Vec<(SnapshotId, Snapshot)>> = BTreeMap::new();
    for (id, s) in snaps {
        groups.entry(group_by.key(&s)).or_default().push((id, s));
    }
    groups
        .into_iter()
        .map(|(k, g)| {
            let decisions = forget::apply(policy, &g);
            let key = group_json(group_by, &g[0].1);
            (
                k,
                GroupDecisions {
                    decisions,
                    snaps: g.into_iter().collect(),
                    key,
                },
            )
        })
        .collect()
}

/// The fields `group_by` groups `s` by, as a JSON object.
pub(crate) fn group_json(group_by: GroupBy, s: &Snapshot) -> Value {
    let mut o = serde_json::Map::new();
    if group_by.service {
        o.insert("service".into(), json!(s.service));
    }
    if group_by.host {
        o.insert("hostname".into(), json!(s.hostname));
    }
    if group_by.paths {
        let p: Vec<String> = s.paths.iter().map(|p| lossy(p)).collect();
        o.insert("paths".into(), json!(p));
    }
    if group_by.tags {
        let mut t: Vec<&String> = s.tags.iter().filter(|t| *t != PROTECTED_TAG).collect();
        t.sort();
        o.insert("tags".into(), json!(t));
    }
    Value::Object(o)
}

/// Print decisions and remove what is not kept (unless dry run). Returns the
/// number removed.
pub fn execute(
    g: &GlobalArgs,
    repo: &Repository,
    groups: &BTreeMap<String, GroupDecisions>,
    dry_run: bool,
    allow_empty: bool,
    label: &str,
) -> Result<(usize, Value)> {
    let emptied: Vec<&str> = groups
        .iter()
        .filter(|(_, g)| !g.decisions.is_empty() && g.decisions.iter().all(|d| !d.keep))
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
    for (key, gd) in groups {
        let (decisions, snaps) = (&gd.decisions, &gd.snaps);
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
        out.push(json!({"group": gd.key, "snapshots": rows}));
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
        for (id, s) in crate::commands::resolve_all(&repo, &a.ids, &a.pick)? {
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
        .filter(|(_, s)| a.pick.matches(s))
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
