//! `cairn stack restore`, and what every restore, rollback and drill does
//! when it ends (report, audit record, exit code).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cairn_repo::IndexedRepository;
use cairn_stack::run::{RestoreKind, RestoreReport};

use super::*;
use crate::GlobalArgs;

pub(crate) fn print_restore(r: &RestoreReport) {
    println!(
        "{} {} of group {} ({}){}",
        r.kind.name(),
        r.restore_id,
        &r.group[..8],
        r.env,
        if r.resumed { ", resumed" } else { "" }
    );
    println!(
        "{:<20} {:<8} {:>9} {:>9} {:<5} {:<9} stages",
        "service", "status", "seconds", "budget", "met", "verified"
    );
    for s in &r.services {
        println!(
            "{:<20} {:<8} {:>9.2} {:>9} {:<5} {:<9} {}",
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
            match (s.fingerprint.verified, s.resumed) {
                (Some(true), true) => "yes (kept)",
                (Some(true), false) => "yes",
                (Some(false), _) => "NO",
                (None, _) => "-",
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
        for i in s.invariants.iter().filter(|i| i.status != "passed") {
            eprintln!(
                "  {}: invariant {:?}: {}",
                s.service,
                i.name,
                i.error.as_deref().unwrap_or("")
            );
        }
    }
    for i in &r.invariants {
        println!(
            "invariant {:?} ({}): {}{}",
            i.name,
            i.services.join(", "),
            i.status,
            i.actual
                .as_deref()
                .map(|a| format!(", got {a:?}"))
                .unwrap_or_default()
        );
        if let Some(e) = &i.error {
            eprintln!("  invariant {:?}: {e}", i.name);
        }
    }
    println!(
        "wall {:.2}s, sum of services {:.2}s, critical path {:.2}s ({})",
        r.wall_seconds,
        r.sum_service_seconds,
        r.critical_path_seconds,
        r.critical_path.join(" -> ")
    );
    if let Some(sg) = &r.safety_group
        && r.services.iter().any(|s| s.safety_snapshot.is_some())
    {
        println!(
            "safety snapshots (group {}) of what was overwritten: undo with `cairn stack rollback {}`",
            &sg[..8],
            r.restore_id
        );
    }
}

/// Report, audit record, exit code of a finished restore, rollback or drill.
pub fn finish_restore(
    g: &GlobalArgs,
    repo: &IndexedRepository,
    r: &RestoreReport,
    report: &Option<PathBuf>,
) -> Result<i32> {
    let v = serde_json::to_value(r)?;
    if let Some(p) = report {
        std::fs::write(p, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if g.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_restore(r);
    }
    let passed = r.services.iter().filter(|s| s.status == "passed").count();
    audit_append(
        repo.repo(),
        r.kind.name(),
        format!(
            "{} {} of group {} into {}: {passed}/{} services passed, {}/{} invariants passed",
            r.kind.name(),
            r.restore_id,
            &r.group[..8],
            r.env,
            r.services.len(),
            r.invariants.iter().filter(|i| i.status == "passed").count(),
            r.invariants.len()
        ),
        v,
    )?;
    if !r.ok() {
        let bad: Vec<String> = r
            .services
            .iter()
            .filter(|s| s.status != "passed")
            .map(|s| s.service.clone())
            .chain(
                r.invariants
                    .iter()
                    .filter(|i| i.status != "passed")
                    .map(|i| format!("invariant {:?}", i.name)),
            )
            .collect();
        let hint = match r.kind {
            RestoreKind::Restore => format!(
                "resume with `cairn stack restore --resume {}`",
                r.restore_id
            ),
            RestoreKind::Rollback => format!(
                "resume with `cairn stack rollback --resume {}`",
                r.restore_id
            ),
            RestoreKind::Drill => "run the drill again".to_string(),
        };
        if r.kind == RestoreKind::Rollback {
            // Never leave the fleet half rolled back without saying so.
            for s in &r.services {
                let state = match s.status.as_str() {
                    "passed" => "rolled back (its pre-restore state, verified)".to_string(),
                    "skipped" => format!(
                        "NOT rolled back: still as restore {} left it ({})",
                        r.undoes.as_deref().unwrap_or("?"),
                        s.error.as_deref().unwrap_or("skipped")
                    ),
                    _ => format!(
                        "FAILED during its rollback, state unknown ({}){}",
                        s.error.as_deref().unwrap_or(""),
                        s.safety_snapshot
                            .as_deref()
                            .map(|x| format!(
                                "; what it held before the rollback is snapshot {}",
                                &x[..8]
                            ))
                            .unwrap_or_default()
                    ),
                };
                eprintln!("  {}: {state}", s.service);
            }
        }
        bail!(
            "{} {} incomplete: {} did not pass ({hint})",
            r.kind.name(),
            r.restore_id,
            bad.join(", "),
        );
    }
    let missed = r
        .services
        .iter()
        .filter(|s| s.rto_met == Some(false))
        .count();
    Ok(if missed > 0 { crate::EXIT_WARNINGS } else { 0 })
}

/// Restore the selected services (or resume a journaled restore).
pub(super) fn restore(
    g: &GlobalArgs,
    a: &StackArgs,
    cat: &Catalog,
    repo: &IndexedRepository,
    selected: std::collections::BTreeSet<String>,
    jobs: usize,
    journal: Option<cairn_stack::trail::Journal>,
) -> Result<i32> {
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
    let r = run::stack_restore(cat, repo, req, &|msg| {
        if !quiet {
            eprintln!("{msg}");
        }
    })?;
    write_out(&a.metrics_file, &run::restore_metrics(&r))?;
    finish_restore(g, repo, &r, &a.report)
}
