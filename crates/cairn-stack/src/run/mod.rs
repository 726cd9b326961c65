//! `stack restore` (and rollback, drill): the scheduler, each service's
//! stages, the report. Backups are in `backup.rs`, group choice and plans
//! in `plan.rs`, invariants in `invariants.rs`, metrics in `metrics.rs`,
//! time in `time.rs`; they are re-exported here, where callers found them
//! before.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::Instant;

use cairn_format::id::to_hex;
use cairn_repo::IndexedRepository;

use crate::StackError;
use crate::catalog::Catalog;
use crate::trail::{self, Journal, JournalEvent};

pub(crate) use crate::backup::parallel;
pub use crate::backup::{ServiceBackup, StackBackupReport, stack_backup};
pub use crate::fingerprint::FingerprintReport;
use crate::invariants::{gates, skipped_invariant};
pub use crate::invariants::{run_invariant, service_env};
pub use crate::metrics::{backup_metrics, restore_metrics};
pub use crate::plan::{
    GroupChoice, GroupSnapshots, Plan, PlanEntry, choose_group, group_snapshots, is_safety, plan,
    snapshot_kind_matches,
};
pub use crate::time::{now, rfc3339};

mod report;
mod service;
pub use report::*;
use service::*;
pub use service::{verify_fingerprint, verify_service};

struct Ctx<'a> {
    cat: &'a Catalog,
    repo: &'a IndexedRepository,
    restore_id: String,
    safety_group: [u8; 16],
    safety: bool,
    journal: Option<&'a Journal>,
    existing_safety: BTreeMap<String, String>,
    t0: Instant,
    on_event: &'a (dyn Fn(&str) + Sync),
    /// Whether invariants run (not in a rollback: they describe the
    /// restored data, not the pre-restore state a rollback puts back).
    invariants: bool,
}

/// Restore a group: each service starts as soon as all its (selected)
/// dependencies have passed; at most `jobs` run at once; a failure skips its
/// dependents while independent services continue. Every step is journaled
/// in the repository so an interrupted restore can be resumed.
pub fn stack_restore(
    cat: &Catalog,
    repo: &IndexedRepository,
    req: RestoreRequest,
    on_event: &(dyn Fn(&str) + Sync),
) -> Result<RestoreReport, StackError> {
    // A rollback puts back safety snapshots of what the targets held: the
    // kinds may load them differently (PostgreSQL as the database's owner
    // of record, see kinds/postgres.rs).
    let rollback_cat;
    let cat = if req.kind == RestoreKind::Rollback {
        let mut c = cat.clone();
        for s in c.services.values_mut() {
            s.rollback = true;
        }
        rollback_cat = c;
        &rollback_cat
    } else {
        cat
    };
    // A resumed restore keeps the group it started with (its id is in the
    // journal); a new one chooses the newest complete group.
    let choice = choose_group(repo, &req.group, Some(&req.selected))?;
    for n in &choice.notes {
        on_event(n);
    }
    let (g, snaps) = (choice.group, choice.snapshots);
    let t0 = Instant::now();
    let started_at = now();
    let selected = &req.selected;
    let (restore_id, safety_group) = match &req.resume {
        Some(j) => (
            j.begin.restore_id.clone(),
            cairn_format::id::from_hex::<16>(&j.begin.safety_group).unwrap_or_default(),
        ),
        None => {
            let mut rid = [0u8; 8];
            cairn_format::crypto::random_bytes(&mut rid);
            let mut sg = [0u8; 16];
            cairn_format::crypto::random_bytes(&mut sg);
            (to_hex(&rid), sg)
        }
    };
    if req.resume.is_none() {
        let (host, user) = cairn_repo::whoami();
        trail::journal(
            repo.repo(),
            &restore_id,
            &JournalEvent::Begin(trail::Begin {
                restore_id: restore_id.clone(),
                kind: req.kind.name().into(),
                group: to_hex(&g),
                env: cat.env.clone(),
                services: selected.iter().cloned().collect(),
                restart: req.restart.iter().cloned().collect(),
                safety: req.safety,
                safety_group: to_hex(&safety_group),
                undoes: req.undoes.clone(),
                time: started_at,
                user,
                host,
            }),
        )?;
    }
    on_event(&format!(
        "{} {restore_id} {}{}",
        req.kind.name(),
        if req.resume.is_some() {
            "resumed"
        } else {
            "started"
        },
        match req.kind {
            RestoreKind::Restore => {
                format!(" (if interrupted: cairn stack restore --resume {restore_id})")
            }
            RestoreKind::Rollback => {
                format!(" (if interrupted: cairn stack rollback --resume {restore_id})")
            }
            RestoreKind::Drill => String::new(),
        }
    ));
    // --with-dependents: stop the services that depend on what is restored
    // (dependents first) before anything is restored; they are started
    // again, without a restore, once their dependencies passed.
    let mut pre_stops: BTreeMap<String, Stage> = BTreeMap::new();
    let restart: BTreeSet<String> = req
        .restart
        .iter()
        .filter(|n| cat.services.contains_key(*n) && !selected.contains(*n))
        .cloned()
        .collect();
    for wave in cat.waves(&restart).iter().rev() {
        for name in wave {
            let svc = &cat.services[name];
            let Some(stop) = &svc.stop else { continue };
            let s0 = t0.elapsed().as_secs_f64();
            if let Err(e) = run_shell(svc, stop) {
                // Nothing was restored: start again what was stopped.
                let mut again = Vec::new();
                for w in cat.waves(&pre_stops.keys().cloned().collect()) {
                    for n in w {
                        let s = &cat.services[&n];
                        let ok = s.start.as_ref().is_none_or(|c| run_shell(s, c).is_ok());
                        again.push(format!(
                            "{n} ({})",
                            if ok {
                                "started again"
                            } else {
                                "FAILED to start again"
                            }
                        ));
                    }
                }
                return Err(StackError::Service {
                    service: name.clone(),
                    detail: format!(
                        "stopping it before its dependencies are restored failed: {e}; nothing was restored{}",
                        if again.is_empty() {
                            String::new()
                        } else {
                            format!("; already stopped: {}", again.join(", "))
                        }
                    ),
                });
            }
            let s1 = t0.elapsed().as_secs_f64();
            on_event(&format!(
                "{name}: stopped (restarted after its dependencies)"
            ));
            pre_stops.insert(
                name.clone(),
                Stage {
                    name: StageName::Stop,
                    start: s0,
                    end: s1,
                    seconds: s1 - s0,
                },
            );
        }
    }
    let scheduled: BTreeSet<String> = selected.union(&restart).cloned().collect();
    let selected = &scheduled;
    // Temporary dumps a killed run left (the whole database in plaintext).
    if req.resume.is_some() {
        for p in crate::children::sweep_stale(selected.iter().filter_map(|n| cat.services.get(n))) {
            on_event(&format!(
                "removed {}: a temporary dump an interrupted run left",
                p.display()
            ));
        }
    }
    // Safety snapshots a previous run of this restore already took.
    let mut existing_safety = BTreeMap::new();
    if req.resume.is_some() {
        for (id, s) in repo.repo().list_snapshots()? {
            if s.group == Some(safety_group) {
                existing_safety.insert(s.service.clone(), id.to_hex());
            }
        }
    }
    let cx = Ctx {
        cat,
        repo,
        restore_id: restore_id.clone(),
        safety_group,
        safety: req.safety,
        journal: req.resume.as_ref(),
        existing_safety,
        t0,
        on_event,
        invariants: req.kind != RestoreKind::Rollback,
    };
    let run_invariants = cx.invariants;
    let gates = |cat: &'_ Catalog, name: &'_ str, selected: &'_ BTreeSet<String>| {
        gates(cat, name, selected)
            .filter(move |_| run_invariants)
            .collect::<Vec<usize>>()
            .into_iter()
    };
    let jobs = req.jobs;
    let mut status: BTreeMap<String, Option<ServiceRestore>> =
        selected.iter().map(|s| (s.clone(), None)).collect();
    let mut invariants: Vec<InvariantResult> = Vec::new();
    let mut inv_done: BTreeSet<usize> = BTreeSet::new();
    let mut running = 0usize;
    let (tx, rx) = mpsc::channel::<ServiceRestore>();
    std::thread::scope(|scope| {
        loop {
            // Skip services whose dependency did not pass.
            let mut changed = true;
            while changed {
                changed = false;
                for name in selected {
                    if status[name].is_some() {
                        continue;
                    }
                    let bad = cat.services[name].depends_on.iter().filter(|d| selected.contains(*d)).find(|d| {
                        matches!(&status[*d], Some(r) if r.status != "passed" && r.status != "running")
                    });
                    let why = bad
                        .map(|d| format!("dependency {d} did not pass"))
                        .or_else(|| {
                            // A gating invariant over its dependencies failed.
                            gates(cat, name, selected).find_map(|i| {
                                invariants
                                    .iter()
                                    .find(|r: &&InvariantResult| {
                                        r.name == cat.invariants[i].name && r.status != "passed"
                                    })
                                    .map(|r| format!("invariant {:?} did not pass", r.name))
                            })
                        });
                    if let Some(why) = why {
                        let now = t0.elapsed().as_secs_f64();
                        let mut r = skipped(&cat.services[name], why.clone(), now);
                        if restart.contains(name) {
                            // Stopped for the restore, not started again.
                            r.restarted = true;
                            r.stages.extend(pre_stops.get(name).cloned());
                            r.error = Some(format!("left stopped: {why}"));
                        }
                        on_event(&format!(
                            "{name}: skipped ({})",
                            r.error.as_deref().unwrap_or("")
                        ));
                        status.insert(name.clone(), Some(r));
                        changed = true;
                    }
                }
            }
            // Cross-service invariants whose services have all finished.
            for (i, inv) in cat.invariants.iter().enumerate() {
                if inv_done.contains(&i) || !run_invariants {
                    continue;
                }
                // Under --only, services it names that are not restored are
                // checked as they live; one that names none restored is not
                // run at all (there is nothing new to check).
                if !inv.services.iter().any(|s| selected.contains(s)) {
                    inv_done.insert(i);
                    continue;
                }
                let states: Vec<Option<&str>> = inv
                    .services
                    .iter()
                    .map(|s| {
                        if !selected.contains(s) {
                            Some("passed")
                        } else {
                            match &status[s] {
                                Some(r) if r.status == "running" => None,
                                Some(r) => Some(r.status.as_str()),
                                None => None,
                            }
                        }
                    })
                    .collect();
                if states.iter().any(|s| s.is_none()) {
                    continue;
                }
                inv_done.insert(i);
                let r = if let Some((s, st)) = inv
                    .services
                    .iter()
                    .zip(&states)
                    .find(|(_, st)| **st != Some("passed"))
                {
                    skipped_invariant(inv, format!("service {s} {}", st.unwrap_or("")))
                } else {
                    run_invariant(cat, inv)
                };
                on_event(&format!(
                    "invariant {:?}: {}{}",
                    r.name,
                    r.status,
                    r.error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
                invariants.push(r);
            }
            // Start every service whose dependencies all passed.
            for name in selected {
                if running >= jobs.max(1) {
                    break;
                }
                if status[name].is_some() {
                    continue;
                }
                let ready = cat.services[name]
                    .depends_on
                    .iter()
                    .filter(|d| selected.contains(*d))
                    .all(|d| matches!(&status[d], Some(r) if r.status == "passed"))
                    // ...and every invariant gating it has passed.
                    && gates(cat, name, selected).all(|i| {
                        invariants
                            .iter()
                            .any(|r| r.name == cat.invariants[i].name && r.status == "passed")
                    });
                if !ready {
                    continue;
                }
                let mut placeholder = skipped(&cat.services[name], String::new(), 0.0);
                placeholder.status = Status::Running;
                status.insert(name.clone(), Some(placeholder));
                running += 1;
                let svc = &cat.services[name];
                let snap = snaps.get(name).cloned();
                let tx = tx.clone();
                let cx = &cx;
                let restart_only = restart.contains(name).then(|| pre_stops.get(name).cloned());
                scope.spawn(move || {
                    let r = match restart_only {
                        Some(stop) => restart_one(cx, svc, stop),
                        None => restore_one(cx, svc, snap),
                    };
                    let _ = tx.send(r);
                });
            }
            if running == 0 {
                // Nothing runs and nothing more can start: a service still
                // waiting is reported, never dropped from the report.
                let now = t0.elapsed().as_secs_f64();
                for name in selected {
                    if status[name].is_none() {
                        let why = gates(cat, name, selected)
                            .find_map(|i| {
                                invariants
                                    .iter()
                                    .find(|r| {
                                        r.name == cat.invariants[i].name && r.status != "passed"
                                    })
                                    .map(|r| format!("invariant {:?} did not pass", r.name))
                            })
                            .unwrap_or_else(|| {
                                "not started: its dependencies or gating invariants never passed"
                                    .to_string()
                            });
                        on_event(&format!("{name}: skipped ({why})"));
                        status.insert(name.clone(), Some(skipped(&cat.services[name], why, now)));
                    }
                }
                break;
            }
            let r = rx.recv().expect("a worker is running");
            running -= 1;
            status.insert(r.service.clone(), Some(r));
        }
    });
    let mut services: Vec<ServiceRestore> = status.into_values().flatten().collect();
    services.sort_by(|a, b| {
        a.start
            .partial_cmp(&b.start)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.service.cmp(&b.service))
    });
    let (critical_path, critical_path_seconds) = critical_path(cat, selected, &services);
    let report = RestoreReport {
        restore_id: restore_id.clone(),
        kind: req.kind,
        group: to_hex(&g),
        env: cat.env.clone(),
        resumed: req.resume.is_some(),
        undoes: req.undoes.clone(),
        safety_group: req.safety.then(|| to_hex(&safety_group)),
        started_at,
        wall_seconds: t0.elapsed().as_secs_f64(),
        sum_service_seconds: services.iter().map(|s| s.seconds).sum(),
        critical_path,
        critical_path_seconds,
        services,
        invariants,
    };
    trail::journal(
        repo.repo(),
        &restore_id,
        &JournalEvent::End {
            ok: report.ok(),
            time: now(),
        },
    )?;
    Ok(report)
}
