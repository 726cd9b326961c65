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
    /// Put back the safety snapshots a restore took of what it overwrote
    Rollback(RollbackArgs),
    /// Rehearse: restore the latest group into staging, verify, time, tear down
    Drill(DrillArgs),
    /// RTO per service across restores and drills, with the trend
    History(HistoryArgs),
    /// List the audit trail; --verify proves the hash chain is intact
    Audit(AuditArgs),
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The restore to undo (id or unique prefix, as printed by `stack restore`)
    #[arg(required_unless_present = "resume")]
    pub restore_id: Option<String>,
    /// Continue an interrupted rollback (its id, as printed when it started)
    #[arg(long, value_name = "ROLLBACK_ID")]
    pub resume: Option<String>,
    /// Service catalog
    #[arg(long, env = "CAIRN_CATALOG", default_value = "cairn.toml")]
    pub catalog: PathBuf,
    /// Services at once
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Do not snapshot what the rollback overwrites
    #[arg(long)]
    pub no_safety_snapshot: bool,
    /// Write the JSON report here
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write Prometheus textfile metrics here
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// Service catalog
    #[arg(long, env = "CAIRN_CATALOG", default_value = "cairn.toml")]
    pub catalog: PathBuf,
    /// Environment to drill into (never production)
    #[arg(long, default_value = "staging")]
    pub env: String,
    /// Group to restore: id, id prefix or `latest`
    #[arg(long, default_value = "latest")]
    pub group: String,
    /// Only these services (repeatable; their dependencies are added)
    #[arg(long = "only")]
    pub only: Vec<String>,
    /// Services at once
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Leave the restored copy in place (default: the catalog's [drill] teardown, else remove it)
    #[arg(long)]
    pub keep: bool,
    /// Write the JSON report here
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write Prometheus textfile metrics here
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Service catalog whose [repository] (path, password_file) to use
    #[arg(long, env = "CAIRN_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Only this service
    #[arg(long)]
    pub service: Option<String>,
    /// Write a self-contained HTML page with a chart here
    #[arg(long)]
    pub html: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Service catalog whose [repository] (path, password_file) to use
    #[arg(long, env = "CAIRN_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Check every record and the hash chain; exit 1 naming any record removed or changed
    #[arg(long)]
    pub verify: bool,
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
    crate::forget::prune_would_run(&repo, &a.prune_args, a.prune, a.dry_run)?;
    let all = crate::commands::readable_snapshots(&repo)?;
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
        let policy = ret
            .policy()
            .map_err(|e| anyhow!("service {name}: retention: {e}"))?;
        let snaps: Vec<_> = all
            .iter()
            .filter(|(_, s)| &s.service == name && !run::is_safety(s))
            .cloned()
            .collect();
        let groups = crate::forget::decide(&policy, cairn_repo::forget::GroupBy::default(), snaps);
        let (n, v) =
            crate::forget::execute(g, &repo, &groups, a.dry_run, false, &format!("{name}: "))?;
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
    /// Restore: also restart (stop before, start after; no restore) the
    /// services that depend on the restored ones
    #[arg(long)]
    with_dependents: bool,
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
    /// Restore: continue an interrupted restore (skips services that completed and still verify)
    #[arg(long, value_name = "RESTORE_ID")]
    resume: Option<String>,
    /// Restore: do not snapshot live targets before overwriting them
    #[arg(long)]
    no_safety_snapshot: bool,
    /// Restore with --env: allow targets that overlap production's (refused
    /// by default: an environment without overrides restores over production)
    #[arg(long)]
    allow_production_targets: bool,
}

/// How to go on with an interrupted restore, rollback or drill.
pub(crate) fn resume_hint(kind: &str, id: &str) -> String {
    match kind {
        "drill" => "a drill is not resumed: run `cairn stack drill` again".into(),
        k => format!("resume it with `cairn stack {k} --resume {id}`"),
    }
}

/// The global options with the catalog's repository and password file
/// where the options and environment name none.
pub(crate) fn catalog_globals(g: &GlobalArgs, cat: &Catalog) -> GlobalArgs {
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
    g
}

/// [`catalog_globals`] for an optional `--catalog` (production view).
pub(crate) fn globals_with(g: &GlobalArgs, catalog: &Option<PathBuf>) -> Result<GlobalArgs> {
    Ok(match catalog {
        Some(c) => catalog_globals(g, &Catalog::load(c, None)?),
        None => g.clone(),
    })
}

pub(crate) fn write_metrics(path: &Option<PathBuf>, text: &str) -> Result<()> {
    write_out(path, text)
}

/// The repository the catalog (or the options) name, index not loaded.
pub(crate) fn open_repo(g: &GlobalArgs, cat: &Catalog) -> Result<Repository> {
    let g = catalog_globals(g, cat);
    if g.repo.is_none() {
        bail!("no repository: give --repo, CAIRN_REPOSITORY or [repository] path in the catalog");
    }
    crate::commands::open(&g)
}

pub(crate) fn open(g: &GlobalArgs, cat: &Catalog) -> Result<IndexedRepository> {
    // Stack backups and restores (safety snapshots) write: a session first.
    let r = open_repo(g, cat)?.load_index_for_writing("stack")?;
    crate::commands::warn_unreadable_index(
        &r,
        "what only it lists is stored again, and prune refuses until the index is repaired",
    );
    Ok(r)
}

fn write_out(path: &Option<PathBuf>, text: &str) -> Result<()> {
    if let Some(p) = path {
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

pub fn stack(g: &GlobalArgs, cmd: StackCmd) -> Result<i32> {
    // A signal kills the datastore tools and removes temporary dumps.
    cairn_stack::children::install_signal_handlers()
        .map_err(|e| anyhow!("installing signal handlers: {e}"))?;
    let cmd = match cmd {
        StackCmd::Forget(f) => return stack_forget(g, f),
        StackCmd::Rollback(a) => return crate::stack_ops::rollback(g, a),
        StackCmd::Drill(a) => return crate::stack_ops::drill(g, a),
        StackCmd::History(a) => return crate::stack_ops::history(g, a),
        StackCmd::Audit(a) => return crate::stack_ops::audit(g, a),
        other => other,
    };
    let (StackCmd::Backup(a) | StackCmd::Plan(a) | StackCmd::Restore(a)) = &cmd else {
        unreachable!("the others returned above")
    };
    let mut env = a.env.clone();
    // A resumed restore opens the repository first (the journal says which
    // environment applies), and keeps it.
    let mut opened = None;
    let journal = match (&cmd, &a.resume) {
        (StackCmd::Restore(_), Some(rid)) => {
            let repo = open(g, &Catalog::load(&a.catalog, env.as_deref())?)?;
            let j = cairn_stack::trail::read_journal(&repo.repo, rid)?;
            opened = Some(repo);
            if j.begin.kind != "restore" {
                bail!(
                    "{} is a {}, not a restore: {}",
                    j.begin.restore_id,
                    j.begin.kind,
                    resume_hint(&j.begin.kind, &j.begin.restore_id)
                );
            }
            if let Some(true) = j.ended {
                eprintln!(
                    "restore {} already ended; verifying and finishing what did not pass",
                    j.begin.restore_id
                );
            }
            env = (j.begin.env != "production").then(|| j.begin.env.clone());
            Some(j)
        }
        _ => None,
    };
    let cat = Catalog::load(&a.catalog, env.as_deref())?;
    let selected: BTreeSet<String> = match &journal {
        Some(j) => {
            for s in &j.begin.services {
                if !cat.services.contains_key(s) {
                    bail!(
                        "restore {} included service {s:?}, which the catalog no longer has",
                        j.begin.restore_id
                    );
                }
            }
            j.begin.services.iter().cloned().collect()
        }
        None => cat.select(&a.only, a.with_deps)?,
    };
    if let StackCmd::Restore(a) = &cmd
        && cat.env != "production"
        && !a.allow_production_targets
    {
        // The services --with-dependents restarts run their stop and start
        // commands: guarded like the restored ones.
        let mut guarded = selected.clone();
        if a.with_dependents {
            guarded.extend(cat.dependents_of(&selected));
        }
        cairn_stack::target::refuse_production_overlap(
            &cat,
            &guarded,
            &format!(
                "a restore with --env {} (--allow-production-targets overrides)",
                cat.env
            ),
        )?;
    }
    let repo = match opened {
        Some(r) => r,
        None => open(g, &cat)?,
    };
    let jobs = a.jobs.unwrap_or(cat.jobs);
    match cmd {
        StackCmd::Backup(a) => {
            let (host, user) = cairn_repo::whoami();
            let r = run::stack_backup(&cat, &repo, &selected, jobs, &host, &user);
            for p in &r.stale_temps_removed {
                eprintln!("removed {p}: a temporary copy an interrupted run left");
            }
            let v = serde_json::to_value(&r)?;
            let failed_n = r.services.iter().filter(|s| !s.ok).count();
            crate::stack_ops::audit_append(
                &repo.repo,
                "backup",
                format!(
                    "stack backup of group {} ({} services, {} failed)",
                    &r.group[..8],
                    r.services.len(),
                    failed_n
                ),
                v.clone(),
            )?;
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
                for n in &p.notes {
                    eprintln!("note: {n}");
                }
                match &p.group {
                    Some(gid) => println!("group {gid}, environment {}", p.env),
                    None => println!("no group to restore yet, environment {}", p.env),
                }
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
        StackCmd::Forget(_)
        | StackCmd::Rollback(_)
        | StackCmd::Drill(_)
        | StackCmd::History(_)
        | StackCmd::Audit(_) => unreachable!("handled above"),
        StackCmd::Restore(a) => {
            let quiet = g.json || g.quiet;
            let restart = match &journal {
                Some(j) => j.begin.restart.iter().cloned().collect(),
                None if a.with_dependents => cat.dependents_of(&selected),
                None => BTreeSet::new(),
            };
            let req = run::RestoreRequest {
                kind: run::RestoreKind::Restore,
                group: journal
                    .as_ref()
                    .map(|j| j.begin.group.clone())
                    .unwrap_or_else(|| a.group.clone()),
                selected,
                jobs,
                safety: journal
                    .as_ref()
                    .map(|j| j.begin.safety)
                    .unwrap_or(!a.no_safety_snapshot),
                restart,
                resume: journal,
                undoes: None,
            };
            let r = run::stack_restore(&cat, &repo, req, &|msg| {
                if !quiet {
                    eprintln!("{msg}");
                }
            })?;
            write_out(&a.metrics_file, &run::restore_metrics(&r))?;
            crate::stack_ops::finish_restore(g, &repo, &r, &a.report)
        }
    }
}
