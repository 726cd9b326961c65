//! `cairn stack rollback | drill | history | audit`, and what every restore
//! does when it ends (report, audit record, exit code).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cairn_repo::{IndexedRepository, Repository};
use cairn_stack::catalog::Catalog;
use cairn_stack::run::{self, RestoreKind, RestoreReport, RestoreRequest};
use cairn_stack::trail;
use serde_json::json;

use crate::GlobalArgs;
use crate::stack::{AuditArgs, DrillArgs, HistoryArgs, RollbackArgs};

/// Append an audit record (anchored in this host's state directory).
pub fn audit_append(
    repo: &Repository,
    kind: &str,
    summary: String,
    details: serde_json::Value,
) -> Result<()> {
    trail::append(
        repo,
        kind,
        summary,
        details,
        trail::default_state_dir().as_deref(),
    )
    .context("the operation finished but its audit record could not be written")?;
    Ok(())
}

fn print_restore(r: &RestoreReport) {
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
        &repo.repo,
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

pub fn rollback(g: &GlobalArgs, a: RollbackArgs) -> Result<i32> {
    let probe = Catalog::load(&a.catalog, None)?;
    let repo = crate::stack::open(g, &probe)?;
    // A resumed rollback: its journal names the restore it undoes.
    let resumed = match &a.resume {
        Some(rid) => {
            let rj = trail::read_journal(&repo.repo, rid)?;
            if rj.begin.kind != "rollback" {
                bail!(
                    "{} is a {}, not a rollback: {}",
                    rj.begin.restore_id,
                    rj.begin.kind,
                    crate::stack::resume_hint(&rj.begin.kind, &rj.begin.restore_id)
                );
            }
            Some(rj)
        }
        None => None,
    };
    let undo_id = match (&resumed, &a.restore_id) {
        (Some(rj), given) => {
            let undoes = rj.begin.undoes.clone().unwrap_or_default();
            if let Some(given) = given
                && !undoes.starts_with(given.as_str())
            {
                bail!(
                    "rollback {} undoes restore {undoes}, not {given}",
                    rj.begin.restore_id
                );
            }
            undoes
        }
        (None, Some(id)) => id.clone(),
        (None, None) => unreachable!("clap requires one"),
    };
    let j = trail::read_journal(&repo.repo, &undo_id)?;
    let env = (j.begin.env != "production").then_some(j.begin.env.as_str());
    // The live view: a files service's safety snapshot is of its target.
    let cat = Catalog::load(&a.catalog, env)?.live_view();
    let (_, snaps) = run::group_snapshots(&repo, &j.begin.safety_group).unwrap_or_default();
    for (svc, snap) in &j.prepared {
        if snap.is_none() && !g.json {
            println!(
                "{svc}: held no data before restore {} (nothing to put back; left as restored)",
                j.begin.restore_id
            );
        }
    }
    if snaps.is_empty() {
        bail!(
            "restore {} took no safety snapshot (its targets were empty, or it ran with --no-safety-snapshot): nothing to roll back",
            j.begin.restore_id
        );
    }
    let mut selected = std::collections::BTreeSet::new();
    for s in snaps.keys() {
        if !cat.services.contains_key(s) {
            bail!("the safety snapshot of {s:?} names a service the catalog no longer has");
        }
        selected.insert(s.clone());
    }
    let quiet = g.json || g.quiet;
    let r = run::stack_restore(
        &cat,
        &repo,
        RestoreRequest {
            kind: RestoreKind::Rollback,
            group: j.begin.safety_group.clone(),
            selected,
            jobs: a.jobs.unwrap_or(cat.jobs),
            safety: resumed
                .as_ref()
                .map(|rj| rj.begin.safety)
                .unwrap_or(!a.no_safety_snapshot),
            resume: resumed,
            undoes: Some(j.begin.restore_id.clone()),
            restart: Default::default(),
        },
        &|m| {
            if !quiet {
                eprintln!("{m}");
            }
        },
    )?;
    crate::stack::write_metrics(&a.metrics_file, &run::restore_metrics(&r))?;
    finish_restore(g, &repo, &r, &a.report)
}

pub fn drill(g: &GlobalArgs, a: DrillArgs) -> Result<i32> {
    if a.env == "production" {
        bail!("a drill restores into a non-production environment; --env production is refused");
    }
    let cat = Catalog::load(&a.catalog, Some(&a.env))?;
    let selected = cat.select(&a.only, true)?;
    // Never let a drill overwrite production: no selected service's target
    // may overlap any production service's (compared as resolved targets,
    // not as text: a trailing slash or `localhost` is the same place).
    cairn_stack::target::refuse_production_overlap(&cat, &selected, "a drill")?;
    let repo = crate::stack::open(g, &cat)?;
    let quiet = g.json || g.quiet;
    let r = run::stack_restore(
        &cat,
        &repo,
        RestoreRequest {
            kind: RestoreKind::Drill,
            group: a.group.clone(),
            selected: selected.clone(),
            jobs: a.jobs.unwrap_or(cat.jobs),
            safety: false,
            resume: None,
            undoes: None,
            restart: Default::default(),
        },
        &|m| {
            if !quiet {
                eprintln!("{m}");
            }
        },
    )?;
    // Tear down (stop services first, then data), unless kept.
    let mut teardown = Vec::new();
    if cat.drill_teardown && !a.keep {
        let waves = cat.waves(&selected);
        for w in waves.iter().rev() {
            for s in w {
                let svc = &cat.services[s];
                let res = cairn_stack::adapters::teardown(svc);
                if !quiet {
                    match &res {
                        Ok(m) => eprintln!("{s}: teardown: {m}"),
                        Err(e) => eprintln!("{s}: teardown FAILED: {e}"),
                    }
                }
                teardown.push(json!({"service": s, "ok": res.is_ok(),
                    "detail": match res { Ok(m) => m, Err(e) => e.to_string() }}));
            }
        }
    }
    let mut v = serde_json::to_value(&r)?;
    v["teardown"] = json!(teardown);
    if let Some(p) = &a.report {
        std::fs::write(p, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    crate::stack::write_metrics(&a.metrics_file, &run::restore_metrics(&r))?;
    let code = finish_restore(g, &repo, &r, &None);
    if teardown.iter().any(|t| t["ok"] == false) {
        bail!("drill teardown failed for some services (see above); remove their copies by hand");
    }
    code
}

/// One service's restore in the history.
#[derive(serde::Serialize, Clone)]
struct HistoryRow {
    time: f64,
    when: String,
    kind: String,
    restore_id: String,
    env: String,
    service: String,
    status: String,
    seconds: f64,
    budget: Option<f64>,
    verified: Option<bool>,
}

fn history_rows(repo: &Repository, only: Option<&str>) -> Result<Vec<HistoryRow>> {
    let mut rows = Vec::new();
    for e in trail::load(repo)? {
        let Some(r) = e.record else { continue };
        if !["restore", "rollback", "drill"].contains(&r.kind.as_str()) {
            continue;
        }
        let d = &r.details;
        for s in d["services"].as_array().into_iter().flatten() {
            let name = s["service"].as_str().unwrap_or_default().to_string();
            if only.is_some_and(|o| o != name) || s["status"] == "skipped" {
                continue;
            }
            rows.push(HistoryRow {
                time: r.time,
                when: run::rfc3339(r.time),
                kind: r.kind.clone(),
                restore_id: d["restore_id"].as_str().unwrap_or_default().to_string(),
                env: d["env"].as_str().unwrap_or_default().to_string(),
                service: name,
                status: s["status"].as_str().unwrap_or_default().to_string(),
                seconds: s["seconds"].as_f64().unwrap_or(0.0),
                budget: s["rto_budget_seconds"].as_f64(),
                verified: s["fingerprint"]["verified"].as_bool(),
            });
        }
    }
    Ok(rows)
}

/// Trend of a service's passed restore times: the least-squares slope in
/// seconds per run, and the last time against the median of the earlier ones.
fn trend(times: &[f64]) -> (Option<f64>, Option<f64>) {
    if times.len() < 2 {
        return (None, None);
    }
    let n = times.len() as f64;
    let mx = (n - 1.0) / 2.0;
    let my = times.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in times.iter().enumerate() {
        num += (i as f64 - mx) * (y - my);
        den += (i as f64 - mx).powi(2);
    }
    let mut earlier = times[..times.len() - 1].to_vec();
    earlier.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let med = earlier[earlier.len() / 2];
    let last = times[times.len() - 1];
    (
        Some(num / den),
        (med > 0.0).then(|| (last - med) / med * 100.0),
    )
}

pub fn history(g: &GlobalArgs, a: HistoryArgs) -> Result<i32> {
    let g = &crate::stack::globals_with(g, &a.catalog)?;
    let repo = crate::commands::open(g)?;
    let rows = history_rows(&repo, a.service.as_deref())?;
    let mut by: BTreeMap<String, Vec<&HistoryRow>> = BTreeMap::new();
    for r in &rows {
        by.entry(r.service.clone()).or_default().push(r);
    }
    let summary: Vec<serde_json::Value> = by
        .iter()
        .map(|(s, rs)| {
            let passed: Vec<f64> = rs
                .iter()
                .filter(|r| r.status == "passed")
                .map(|r| r.seconds)
                .collect();
            let (slope, change) = trend(&passed);
            json!({
                "service": s,
                "runs": rs.len(),
                "passed": passed.len(),
                "last_seconds": rs.last().map(|r| r.seconds),
                "budget_seconds": rs.last().and_then(|r| r.budget),
                "slope_seconds_per_run": slope,
                "last_vs_median_percent": change,
            })
        })
        .collect();
    if let Some(p) = &a.html {
        std::fs::write(p, crate::history_html::page(&rows_json(&rows), &summary))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"runs": rows, "services": summary}))?
        );
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no restores or drills in the audit trail yet");
        return Ok(0);
    }
    println!(
        "{:<21} {:<8} {:<17} {:<10} {:<20} {:<7} {:>9} {:>8}",
        "when", "kind", "restore", "env", "service", "status", "seconds", "budget"
    );
    for r in &rows {
        println!(
            "{:<21} {:<8} {:<17} {:<10} {:<20} {:<7} {:>9.2} {:>8}",
            r.when,
            r.kind,
            r.restore_id,
            r.env,
            r.service,
            r.status,
            r.seconds,
            r.budget
                .map(|b| format!("{b:.0}s"))
                .unwrap_or_else(|| "-".into())
        );
    }
    println!();
    for s in &summary {
        println!(
            "{:<20} {} runs, last {:.2}s{}{}",
            s["service"].as_str().unwrap_or_default(),
            s["runs"],
            s["last_seconds"].as_f64().unwrap_or(0.0),
            s["slope_seconds_per_run"]
                .as_f64()
                .map(|x| format!(", trend {x:+.2}s per run"))
                .unwrap_or_default(),
            s["last_vs_median_percent"]
                .as_f64()
                .map(|x| format!(", last vs median of earlier {x:+.0}%"))
                .unwrap_or_default()
        );
    }
    Ok(0)
}

fn rows_json(rows: &[HistoryRow]) -> serde_json::Value {
    serde_json::to_value(rows).unwrap_or_default()
}

pub fn audit(g: &GlobalArgs, a: AuditArgs) -> Result<i32> {
    let g = &crate::stack::globals_with(g, &a.catalog)?;
    // Never through the cache: the stored objects are what is judged.
    let repo = crate::commands::open_uncached(g)?;
    let entries = trail::load(&repo)?;
    let problems = if a.verify {
        trail::verify(&repo, &entries, trail::default_state_dir().as_deref())
    } else {
        vec![]
    };
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "records": entries,
                "verified": a.verify.then_some(problems.is_empty()),
                "problems": problems,
            }))?
        );
    } else {
        for e in &entries {
            match &e.record {
                Some(r) => println!(
                    "{:>5}  {}  {}  {:<8} {}@{}  {}",
                    r.seq,
                    &e.id[..16],
                    run::rfc3339(r.time),
                    r.kind,
                    r.user,
                    r.host,
                    r.summary
                ),
                None => println!(
                    "    ?  {}  DAMAGED: {}",
                    &e.id[..16],
                    e.damaged.as_deref().unwrap_or("")
                ),
            }
        }
        if a.verify {
            for p in &problems {
                eprintln!("{p}");
            }
            if problems.is_empty() {
                println!(
                    "audit trail intact: {} records, hash chain complete",
                    entries.len()
                );
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "audit trail verification failed: {} problem(s)",
            problems.len()
        );
    }
    Ok(0)
}
