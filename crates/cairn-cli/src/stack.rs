//! `cairn stack ...`: the orchestrator's commands.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use cairn_repo::{IndexedRepository, Repository};
use cairn_stack::catalog::Catalog;
use cairn_stack::run;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::GlobalArgs;
use crate::util::{format_time, human_bytes};

#[derive(Subcommand, Debug)]
pub enum StackCmd {
    /// Back up every service (or --only some) in parallel under one group id
    Backup(StackArgs),
    /// Show the restore plan without touching anything
    Plan(StackArgs),
    /// Restore a group: dependency order, parallel where possible, gated and timed
    Restore(StackArgs),
    /// Apply each service's catalog retention to its snapshots
    Forget(StackForgetArgs),
}

#[derive(Args, Debug)]
pub struct StackForgetArgs {
    /// Service catalog
    #[arg(long, env = "CAIRN_CATALOG", default_value = "cairn.toml")]
    catalog: PathBuf,
    /// Only these services (repeatable)
    #[arg(long = "only")]
    only: Vec<String>,
    /// Show what would be removed; remove nothing
    #[arg(long)]
    dry_run: bool,
    /// Prune afterwards
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    prune_args: crate::forget::PruneArgs,
}

fn stack_forget(g: &GlobalArgs, a: StackForgetArgs) -> Result<i32> {
    let cat = Catalog::load(&a.catalog, None)?;
    let selected = cat.select(&a.only, false)?;
    let repo = open_repo(g, &cat)?;
    let all = repo.list_snapshots()?;
    let mut report = Vec::new();
    let mut removed = 0;
    for name in &selected {
        let svc = &cat.services[name];
        let Some(ret) = &svc.retention else {
            if !g.json {
                println!("{name}: no retention in the catalog, nothing removed");
            }
            continue;
        };
        let policy = ret.policy().map_err(|e| anyhow!("service {name}: {e}"))?;
        let snaps: Vec<_> = all
            .iter()
            .filter(|(_, s)| &s.service == name)
            .cloned()
            .collect();
        let groups = crate::forget::decide(&policy, cairn_repo::forget::GroupBy::default(), snaps);
        let (n, v) = crate::forget::execute(g, &repo, &groups, a.dry_run, &format!("{name}: "))?;
        removed += n;
        report.push(json!({"service": name, "removed": n, "groups": v}));
    }
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"dry_run": a.dry_run, "removed": removed, "services": report})
            )?
        );
    }
    if a.prune {
        return crate::forget::run_prune(g, repo, &a.prune_args, a.dry_run);
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct StackArgs {
    /// Service catalog
    #[arg(long, env = "CAIRN_CATALOG", default_value = "cairn.toml")]
    catalog: PathBuf,
    /// Only these services (repeatable)
    #[arg(long = "only")]
    only: Vec<String>,
    /// With --only: add their dependencies
    #[arg(long)]
    with_deps: bool,
    /// Group to restore: id, id prefix or `latest`
    #[arg(long, default_value = "latest")]
    group: String,
    /// Environment whose overrides apply (e.g. staging)
    #[arg(long)]
    env: Option<String>,
    /// Services at once (default: the catalog's `jobs`, else 4)
    #[arg(long)]
    jobs: Option<usize>,
    /// Write the JSON report here
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write Prometheus textfile metrics here
    #[arg(long)]
    metrics_file: Option<PathBuf>,
}

/// The repository the catalog (or the options) name, index not loaded.
fn open_repo(g: &GlobalArgs, cat: &Catalog) -> Result<Repository> {
    let mut g = g.clone();
    if g.repo.is_none() {
        g.repo = cat.repository.clone();
    }
    if g.password_file.is_none()
        && g.password_command.is_none()
        && std::env::var_os("CAIRN_PASSWORD").is_none()
    {
        g.password_file = cat.password_file.clone();
    }
    if g.repo.is_none() {
        bail!("no repository: give --repo, CAIRN_REPOSITORY or [repository] path in the catalog");
    }
    crate::commands::open(&g)
}

fn open(g: &GlobalArgs, cat: &Catalog) -> Result<IndexedRepository> {
    Ok(open_repo(g, cat)?.load_index()?)
}

fn write_out(path: &Option<PathBuf>, text: &str) -> Result<()> {
    if let Some(p) = path {
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

pub fn stack(g: &GlobalArgs, cmd: StackCmd) -> Result<i32> {
    if let StackCmd::Forget(f) = cmd {
        return stack_forget(g, f);
    }
    let (StackCmd::Backup(a) | StackCmd::Plan(a) | StackCmd::Restore(a)) = &cmd else {
        unreachable!("forget returned above")
    };
    let cat = Catalog::load(&a.catalog, a.env.as_deref())?;
    let selected: BTreeSet<String> = cat.select(&a.only, a.with_deps)?;
    let repo = open(g, &cat)?;
    let jobs = a.jobs.unwrap_or(cat.jobs);
    match cmd {
        StackCmd::Backup(a) => {
            let (host, user) = cairn_repo::whoami();
            let r = run::stack_backup(&cat, &repo, &selected, jobs, &host, &user);
            let v = serde_json::to_value(&r)?;
            write_out(&a.report, &serde_json::to_string_pretty(&v)?)?;
            write_out(&a.metrics_file, &run::backup_metrics(&r))?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("group {}", &r.group);
                println!(
                    "{:<20} {:<6} {:>9} {:>12} {:>12}  snapshot",
                    "service", "status", "seconds", "read", "added"
                );
                for s in &r.services {
                    println!(
                        "{:<20} {:<6} {:>9.2} {:>12} {:>12}  {}",
                        s.service,
                        if s.ok { "ok" } else { "FAILED" },
                        s.seconds,
                        human_bytes(s.bytes_read),
                        human_bytes(s.bytes_added),
                        s.snapshot.as_deref().map(|x| &x[..8]).unwrap_or("-")
                    );
                    if let Some(e) = &s.error {
                        eprintln!("  {}: {e}", s.service);
                    }
                }
                println!(
                    "capture skew across the group: {:.2}s; total {:.2}s",
                    r.skew_seconds, r.seconds
                );
            }
            let failed = r.services.iter().filter(|s| !s.ok).count();
            if failed > 0 {
                bail!(
                    "{failed} of {} services failed to back up (the others' snapshots are committed)",
                    r.services.len()
                );
            }
            Ok(0)
        }
        StackCmd::Plan(_) => {
            let p = run::plan(&cat, &repo, &a.group, &selected)?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                println!("group {}, environment {}", p.group, p.env);
                for (i, w) in p.waves.iter().enumerate() {
                    println!("wave {}:", i + 1);
                    for name in w {
                        let e = p
                            .services
                            .iter()
                            .find(|e| &e.service == name)
                            .expect("entry");
                        println!(
                            "  {name} ({}) <- snapshot {} {}",
                            e.kind,
                            e.snapshot.as_deref().map(|s| &s[..8]).unwrap_or("MISSING"),
                            e.snapshot_time_ns
                                .map(|t| format_time(t, false))
                                .unwrap_or_default()
                        );
                        println!("      overwrites {}", e.overwrites);
                        if !e.depends_on.is_empty() {
                            println!("      after {}", e.depends_on.join(", "));
                        }
                    }
                }
            }
            Ok(0)
        }
        StackCmd::Forget(_) => unreachable!("handled above"),
        StackCmd::Restore(a) => {
            let quiet = g.json || g.quiet;
            let r = run::stack_restore(&cat, &repo, &a.group, &selected, jobs, &|msg| {
                if !quiet {
                    eprintln!("{msg}");
                }
            })?;
            let v = serde_json::to_value(&r)?;
            write_out(&a.report, &serde_json::to_string_pretty(&v)?)?;
            write_out(&a.metrics_file, &run::restore_metrics(&r))?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "restore {} of group {} ({})",
                    r.restore_id,
                    &r.group[..8],
                    r.env
                );
                println!(
                    "{:<20} {:<8} {:>9} {:>9} {:<6}  stages",
                    "service", "status", "seconds", "budget", "met"
                );
                for s in &r.services {
                    println!(
                        "{:<20} {:<8} {:>9.2} {:>9} {:<6}  {}",
                        s.service,
                        s.status,
                        s.seconds,
                        s.rto_budget_seconds
                            .map(|b| format!("{b:.0}s"))
                            .unwrap_or_else(|| "-".into()),
                        match s.rto_met {
                            Some(true) => "yes",
                            Some(false) => "NO",
                            None => "-",
                        },
                        s.stages
                            .iter()
                            .map(|st| format!("{} {:.2}s", st.name, st.seconds))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    if let Some(e) = &s.error {
                        eprintln!("  {}: {e}", s.service);
                    }
                }
                println!(
                    "wall {:.2}s, sum of services {:.2}s, critical path {:.2}s ({})",
                    r.wall_seconds,
                    r.sum_service_seconds,
                    r.critical_path_seconds,
                    r.critical_path.join(" -> ")
                );
            }
            if !r.ok() {
                let bad: Vec<&str> = r
                    .services
                    .iter()
                    .filter(|s| s.status != "passed")
                    .map(|s| s.service.as_str())
                    .collect();
                bail!("restore incomplete: {} did not pass", bad.join(", "));
            }
            let missed = r
                .services
                .iter()
                .filter(|s| s.rto_met == Some(false))
                .count();
            Ok(if missed > 0 { crate::EXIT_WARNINGS } else { 0 })
        }
    }
}
