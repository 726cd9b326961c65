//! `cairn prune` (also run by `forget --prune`): options, the create-only
//! check, the report.

use anyhow::{Result, bail};
use cairn_repo::Repository;
use clap::Args;
use serde_json::json;

use crate::GlobalArgs;

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
        && let Some(why) = cairn_repo::backend::create_only_unenforced(repo.store())?
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
