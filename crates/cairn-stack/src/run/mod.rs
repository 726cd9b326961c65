//! `stack restore` (and rollback, drill): the scheduler, each service's
//! stages, the report. Backups are in `backup.rs`, group choice and plans
//! in `plan.rs`, invariants in `invariants.rs`, metrics in `metrics.rs`,
//! the report types in `report.rs`, time in `time.rs`; what other crates
//! use of them is re-exported here, where they found it before.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::Instant;

use cairn_format::id::to_hex;
use cairn_repo::IndexedRepository;

use crate::StackError;
use crate::catalog::Catalog;
use crate::report::{InvariantResult, Stage, StageName, Status, kind_name};
use crate::trail::{self, Journal, JournalEvent};

pub use crate::backup::stack_backup;
pub use crate::fingerprint::FingerprintReport;
use crate::invariants::{gates, skipped_invariant};
pub use crate::invariants::{run_invariant, service_env};
pub use crate::metrics::{backup_metrics, restore_metrics};
pub use crate::plan::{
    GroupChoice, GroupSnapshots, Plan, PlanEntry, choose_group, group_snapshots, is_safety, plan,
};
pub use crate::report::{RestoreKind, RestoreReport, ServiceRestore};
pub use crate::time::{now, rfc3339};

mod service;
pub use service::verify_service;
use service::*;

/// A restore to run.
pub struct RestoreRequest {
    /// What it is.
    pub kind: RestoreKind,
    /// Group: hex id, prefix or `latest`.
    pub group: String,
    /// Services.
    pub selected: BTreeSet<String>,
    /// Services at once.
    pub jobs: usize,
    /// Take safety snapshots of live targets before overwriting them.
    pub safety: bool,
    /// The journal of the restore being resumed.
    pub resume: Option<Journal>,
    /// For a rollback: the restore it undoes.
    pub undoes: Option<String>,
    /// Services that depend on the restored ones and are restarted, not
    /// restored (`--with-dependents`): stopped before anything is restored,
    /// started again once their dependencies passed.
    pub restart: BTreeSet<String>,
}

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
        rollback_cat = for_rollback(cat);
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
    let (restore_id, safety_group) = restore_ids(&req);
    if req.resume.is_none() {
        journal_begin(cat, repo, &req, &restore_id, g, safety_group, started_at)?;
    }
    on_event(&started_event(&req, &restore_id));
    let restart = restarted(cat, &req);
    let pre_stops = stop_dependents(cat, &restart, t0, on_event)?;
    let selected: BTreeSet<String> = req.selected.union(&restart).cloned().collect();
    let existing_safety = if req.resume.is_some() {
        resume_leftovers(cat, repo, &selected, safety_group, on_event)?
    } else {
        BTreeMap::new()
    };
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
    let (status, invariants) = schedule(&cx, &selected, &restart, &pre_stops, &snaps, req.jobs);
    let report = restore_report(&cx, &req, g, started_at, &selected, status, invariants);
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

/// The catalog a rollback restores with: every service marked as rolled
/// back.
fn for_rollback(cat: &Catalog) -> Catalog {
    let mut c = cat.clone();
    for s in c.services.values_mut() {
        s.rollback = true;
    }
    c
}

/// This restore's id and its safety group: the journal's when resumed,
/// fresh random ones otherwise.
fn restore_ids(req: &RestoreRequest) -> (String, [u8; 16]) {
    match &req.resume {
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
    }
}

/// Journal the start of a new (not resumed) restore.
fn journal_begin(
    cat: &Catalog,
    repo: &IndexedRepository,
    req: &RestoreRequest,
    restore_id: &str,
    group: [u8; 16],
    safety_group: [u8; 16],
    started_at: f64,
) -> Result<(), StackError> {
    let (host, user) = cairn_repo::whoami();
    trail::journal(
        repo.repo(),
        restore_id,
        &JournalEvent::Begin(trail::Begin {
            restore_id: restore_id.to_string(),
            kind: req.kind.name().into(),
            group: to_hex(&group),
            env: cat.env.clone(),
            services: req.selected.iter().cloned().collect(),
            restart: req.restart.iter().cloned().collect(),
            safety: req.safety,
            safety_group: to_hex(&safety_group),
            undoes: req.undoes.clone(),
            time: started_at,
            user,
            host,
        }),
    )?;
    Ok(())
}

/// The event announcing the run (with how to resume it if interrupted).
fn started_event(req: &RestoreRequest, restore_id: &str) -> String {
    format!(
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
    )
}

/// The services restarted, not restored (`--with-dependents`): those the
/// catalog knows that are not selected for the restore.
fn restarted(cat: &Catalog, req: &RestoreRequest) -> BTreeSet<String> {
    req.restart
        .iter()
        .filter(|n| cat.services.contains_key(*n) && !req.selected.contains(*n))
        .cloned()
        .collect()
}

/// --with-dependents: stop the services that depend on what is restored
/// (dependents first) before anything is restored; they are started
/// again, without a restore, once their dependencies passed. A stop that
/// fails starts again what was stopped and fails the whole run.
fn stop_dependents(
    cat: &Catalog,
    restart: &BTreeSet<String>,
    t0: Instant,
    on_event: &(dyn Fn(&str) + Sync),
) -> Result<BTreeMap<String, Stage>, StackError> {
    let mut pre_stops: BTreeMap<String, Stage> = BTreeMap::new();
    for wave in cat.waves(restart).iter().rev() {
        for name in wave {
            let svc = &cat.services[name];
            let Some(stop) = &svc.stop else { continue };
            let s0 = t0.elapsed().as_secs_f64();
            if let Err(e) = run_shell(svc, stop) {
                // Nothing was restored: start again what was stopped.
                let again = start_again(cat, &pre_stops);
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
    Ok(pre_stops)
}

/// Start again the services already stopped (dependencies first); one line
/// each saying whether it started.
fn start_again(cat: &Catalog, pre_stops: &BTreeMap<String, Stage>) -> Vec<String> {
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
    again
}

/// What an interrupted run left, for its resumption: temporary dumps it
/// removes, and the safety snapshots it already took (by service).
fn resume_leftovers(
    cat: &Catalog,
    repo: &IndexedRepository,
    selected: &BTreeSet<String>,
    safety_group: [u8; 16],
    on_event: &(dyn Fn(&str) + Sync),
) -> Result<BTreeMap<String, String>, StackError> {
    // Temporary dumps a killed run left (the whole database in plaintext).
    for p in crate::children::sweep_stale(selected.iter().filter_map(|n| cat.services.get(n))) {
        on_event(&format!(
            "removed {}: a temporary dump an interrupted run left",
            p.display()
        ));
    }
    // Safety snapshots a previous run of this restore already took.
    let mut existing_safety = BTreeMap::new();
    for (id, s) in repo.repo().list_snapshots()? {
        if s.group == Some(safety_group) {
            existing_safety.insert(s.service.clone(), id.to_hex());
        }
    }
    Ok(existing_safety)
}

/// The scheduler's state across its rounds: where each scheduled service
/// stands (`None`: not started) and the cross-service invariants run so far.
struct Schedule<'a> {
    cx: &'a Ctx<'a>,
    selected: &'a BTreeSet<String>,
    restart: &'a BTreeSet<String>,
    pre_stops: &'a BTreeMap<String, Stage>,
    status: BTreeMap<String, Option<ServiceRestore>>,
    invariants: Vec<InvariantResult>,
    inv_done: BTreeSet<usize>,
}

/// Run the scheduled services, each as soon as it may start, at most
/// `jobs` at once, until nothing runs and nothing more can start. Returns
/// every service's result and the cross-service invariants' results.
fn schedule(
    cx: &Ctx,
    selected: &BTreeSet<String>,
    restart: &BTreeSet<String>,
    pre_stops: &BTreeMap<String, Stage>,
    snaps: &GroupSnapshots,
    jobs: usize,
) -> (
    BTreeMap<String, Option<ServiceRestore>>,
    Vec<InvariantResult>,
) {
    let cat = cx.cat;
    let mut sch = Schedule {
        cx,
        selected,
        restart,
        pre_stops,
        status: selected.iter().map(|s| (s.clone(), None)).collect(),
        invariants: Vec::new(),
        inv_done: BTreeSet::new(),
    };
    let mut running = 0usize;
    let (tx, rx) = mpsc::channel::<ServiceRestore>();
    std::thread::scope(|scope| {
        loop {
            sch.skip_blocked();
            sch.run_finished_invariants();
            // Start every service whose dependencies all passed.
            for name in selected {
                if running >= jobs.max(1) {
                    break;
                }
                if sch.status[name].is_some() {
                    continue;
                }
                if !sch.ready(name) {
                    continue;
                }
                let mut placeholder = skipped(&cat.services[name], String::new(), 0.0);
                placeholder.status = Status::Running;
                sch.status.insert(name.clone(), Some(placeholder));
                running += 1;
                let svc = &cat.services[name];
                let snap = snaps.get(name).cloned();
                let tx = tx.clone();
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
                sch.skip_never_started();
                break;
            }
            let r = rx.recv().expect("a worker is running");
            running -= 1;
            sch.status.insert(r.service.clone(), Some(r));
        }
    });
    (sch.status, sch.invariants)
}

impl Schedule<'_> {
    /// The invariants gating a service (none when invariants do not run).
    fn gates(&self, name: &str) -> std::vec::IntoIter<usize> {
        let run_invariants = self.cx.invariants;
        gates(self.cx.cat, name, self.selected)
            .filter(move |_| run_invariants)
            .collect::<Vec<usize>>()
            .into_iter()
    }

    /// Skip services whose dependency did not pass (or a gating invariant
    /// over its dependencies), until no more are skipped.
    fn skip_blocked(&mut self) {
        let (cat, selected) = (self.cx.cat, self.selected);
        let mut changed = true;
        while changed {
            changed = false;
            for name in selected {
                if self.status[name].is_some() {
                    continue;
                }
                let bad = cat.services[name].depends_on.iter().filter(|d| selected.contains(*d)).find(|d| {
                    matches!(&self.status[*d], Some(r) if r.status != "passed" && r.status != "running")
                });
                let why = bad
                    .map(|d| format!("dependency {d} did not pass"))
                    .or_else(|| {
                        // A gating invariant over its dependencies failed.
                        self.gates(name).find_map(|i| {
                            self.invariants
                                .iter()
                                .find(|r: &&InvariantResult| {
                                    r.name == cat.invariants[i].name && r.status != "passed"
                                })
                                .map(|r| format!("invariant {:?} did not pass", r.name))
                        })
                    });
                if let Some(why) = why {
                    let now = self.cx.t0.elapsed().as_secs_f64();
                    let mut r = skipped(&cat.services[name], why.clone(), now);
                    if self.restart.contains(name) {
                        // Stopped for the restore, not started again.
                        r.restarted = true;
                        r.stages.extend(self.pre_stops.get(name).cloned());
                        r.error = Some(format!("left stopped: {why}"));
                    }
                    (self.cx.on_event)(&format!(
                        "{name}: skipped ({})",
                        r.error.as_deref().unwrap_or("")
                    ));
                    self.status.insert(name.clone(), Some(r));
                    changed = true;
                }
            }
        }
    }

    /// Run the cross-service invariants whose services have all finished.
    fn run_finished_invariants(&mut self) {
        let (cat, selected) = (self.cx.cat, self.selected);
        let run_invariants = self.cx.invariants;
        for (i, inv) in cat.invariants.iter().enumerate() {
            if self.inv_done.contains(&i) || !run_invariants {
                continue;
            }
            // Under --only, services it names that are not restored are
            // checked as they live; one that names none restored is not
            // run at all (there is nothing new to check).
            if !inv.services.iter().any(|s| selected.contains(s)) {
                self.inv_done.insert(i);
                continue;
            }
            let states: Vec<Option<&str>> = inv
                .services
                .iter()
                .map(|s| {
                    if !selected.contains(s) {
                        Some("passed")
                    } else {
                        match &self.status[s] {
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
            self.inv_done.insert(i);
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
            (self.cx.on_event)(&format!(
                "invariant {:?}: {}{}",
                r.name,
                r.status,
                r.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
            self.invariants.push(r);
        }
    }

    /// Whether a service not started yet may start: its dependencies all
    /// passed...
    fn ready(&self, name: &str) -> bool {
        let (cat, selected) = (self.cx.cat, self.selected);
        cat.services[name]
            .depends_on
            .iter()
            .filter(|d| selected.contains(*d))
            .all(|d| matches!(&self.status[d], Some(r) if r.status == "passed"))
            // ...and every invariant gating it has passed.
            && self.gates(name).all(|i| {
                self.invariants
                    .iter()
                    .any(|r| r.name == cat.invariants[i].name && r.status == "passed")
            })
    }

    /// Nothing runs and nothing more can start: a service still waiting is
    /// reported, never dropped from the report.
    fn skip_never_started(&mut self) {
        let (cat, selected) = (self.cx.cat, self.selected);
        let now = self.cx.t0.elapsed().as_secs_f64();
        for name in selected {
            if self.status[name].is_none() {
                let why = self
                    .gates(name)
                    .find_map(|i| {
                        self.invariants
                            .iter()
                            .find(|r| r.name == cat.invariants[i].name && r.status != "passed")
                            .map(|r| format!("invariant {:?} did not pass", r.name))
                    })
                    .unwrap_or_else(|| {
                        "not started: its dependencies or gating invariants never passed"
                            .to_string()
                    });
                (self.cx.on_event)(&format!("{name}: skipped ({why})"));
                self.status
                    .insert(name.clone(), Some(skipped(&cat.services[name], why, now)));
            }
        }
    }
}

/// The run's report: services in the order they started, the critical
/// path, the times.
fn restore_report(
    cx: &Ctx,
    req: &RestoreRequest,
    group: [u8; 16],
    started_at: f64,
    selected: &BTreeSet<String>,
    status: BTreeMap<String, Option<ServiceRestore>>,
    invariants: Vec<InvariantResult>,
) -> RestoreReport {
    let mut services: Vec<ServiceRestore> = status.into_values().flatten().collect();
    services.sort_by(|a, b| {
        a.start
            .partial_cmp(&b.start)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.service.cmp(&b.service))
    });
    let (critical_path, critical_path_seconds) = critical_path(cx.cat, selected, &services);
    RestoreReport {
        restore_id: cx.restore_id.clone(),
        kind: req.kind,
        group: to_hex(&group),
        env: cx.cat.env.clone(),
        resumed: req.resume.is_some(),
        undoes: req.undoes.clone(),
        safety_group: req.safety.then(|| to_hex(&cx.safety_group)),
        started_at,
        wall_seconds: cx.t0.elapsed().as_secs_f64(),
        sum_service_seconds: services.iter().map(|s| s.seconds).sum(),
        critical_path,
        critical_path_seconds,
        services,
        invariants,
    }
}
