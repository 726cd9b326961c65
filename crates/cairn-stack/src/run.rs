//! `stack restore` (and rollback, drill): the scheduler, each service's
//! stages, the report. Backups are in `backup.rs`, group choice and plans
//! in `plan.rs`, invariants in `invariants.rs`, metrics in `metrics.rs`,
//! time in `time.rs`; they are re-exported here, where callers found them
//! before.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn_format::SnapshotId;
use cairn_format::id::to_hex;
use cairn_format::snapshot::Snapshot;
use cairn_repo::{BackupOptions, IndexedRepository, ParentChoice};
use serde::Serialize;

use crate::StackError;
use crate::adapters;
use crate::catalog::{Catalog, Kind, Service};
use crate::fingerprint;
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

/// Where a service, an invariant or a stage stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not started yet.
    #[default]
    Pending,
    /// Running now.
    Running,
    /// Done, verified.
    Passed,
    /// Done, and it did not pass.
    Failed,
    /// Not run (a dependency or a gating invariant did not pass).
    Skipped,
}

impl Status {
    /// As the reports write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for Status {
    fn eq(&self, o: &&str) -> bool {
        self.as_str() == *o
    }
}

/// Kind as written in the catalog.
pub fn kind_name(k: Kind) -> &'static str {
    k.name()
}

/// What a restore of a service would overwrite.
pub fn describe_target(s: &Service) -> String {
    s.kind.datastore().describe(s)
}

/// The stages of a service restore, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageName {
    /// A resumed restore re-verifies what completed before.
    VerifyResumed,
    /// The snapshot is checked (kind tag, the kind's own checks).
    Preflight,
    /// What the target holds is backed up first.
    SafetySnapshot,
    /// The service's `stop` command.
    Stop,
    /// The snapshot is fetched and loaded.
    FetchLoad,
    /// The kind's own stage after the load ([`crate::datastore::Datastore::after_load`]).
    AfterLoad(&'static str),
    /// The service's `start` command.
    Start,
    /// Its readiness check.
    Ready,
    /// The restored state is compared with the snapshot's fingerprint.
    Verify,
    /// Its invariants.
    Invariants,
    /// Its `post_restore` hook.
    PostRestore,
}

impl StageName {
    /// As reports, journals and metrics spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            StageName::VerifyResumed => "verify (resumed)",
            StageName::Preflight => "preflight",
            StageName::SafetySnapshot => "safety-snapshot",
            StageName::Stop => "stop",
            StageName::FetchLoad => "fetch+load",
            StageName::AfterLoad(n) => n,
            StageName::Start => "start",
            StageName::Ready => "ready",
            StageName::Verify => "verify",
            StageName::Invariants => "invariants",
            StageName::PostRestore => "post-restore",
        }
    }
}

impl std::fmt::Display for StageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for StageName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One timed stage of a service restore.
#[derive(Debug, Serialize, Clone)]
pub struct Stage {
    /// Which.
    pub name: StageName,
    /// Seconds since the restore began.
    pub start: f64,
    /// Seconds since the restore began.
    pub end: f64,
    /// Duration.
    pub seconds: f64,
}

/// One invariant's evaluation.
#[derive(Debug, Serialize, Clone)]
pub struct InvariantResult {
    /// Name.
    pub name: String,
    /// Services it needs.
    pub services: Vec<String>,
    /// What ran.
    pub check: crate::catalog::Check,
    /// What was expected.
    pub expect: crate::catalog::Expect,
    /// What it printed (trimmed).
    pub actual: Option<String>,
    /// passed | failed | skipped
    pub status: Status,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// Duration.
    pub seconds: f64,
}

/// One service's restore.
#[derive(Debug, Serialize, Clone)]
pub struct ServiceRestore {
    /// Service.
    pub service: String,
    /// Kind.
    pub kind: &'static str,
    /// passed | failed | skipped
    pub status: Status,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// Snapshot restored.
    pub snapshot: Option<String>,
    /// Seconds since the restore began.
    pub start: f64,
    /// Seconds since the restore began.
    pub end: f64,
    /// Duration.
    pub seconds: f64,
    /// Stages.
    pub stages: Vec<Stage>,
    /// Bytes restored.
    pub bytes_restored: u64,
    /// What the restore held back (a files service's device nodes and setuid
    /// bits, Redis keys that expired since the backup), if any.
    pub withheld: Option<String>,
    /// Budget.
    pub rto_budget_seconds: Option<f64>,
    /// Whether the budget was met (None without a budget or when not passed).
    pub rto_met: Option<bool>,
    /// Safety snapshot of what the target held before (hex).
    pub safety_snapshot: Option<String>,
    /// Why there is no safety snapshot.
    pub safety_note: Option<String>,
    /// True when a resumed restore found it complete and still verified.
    pub resumed: bool,
    /// True for a service restarted, not restored (`--with-dependents`).
    pub restarted: bool,
    /// Fingerprint check.
    pub fingerprint: FingerprintReport,
    /// The service's own invariants.
    pub invariants: Vec<InvariantResult>,
}

/// What `stack_restore` does.
#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RestoreKind {
    /// A restore of a backup group.
    Restore,
    /// Putting a restore's safety snapshots back.
    Rollback,
    /// A rehearsal into another environment.
    Drill,
}

impl RestoreKind {
    /// As written in reports and the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            RestoreKind::Restore => "restore",
            RestoreKind::Rollback => "rollback",
            RestoreKind::Drill => "drill",
        }
    }
}

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

/// Result of `stack restore` (and rollback, drill).
#[derive(Debug, Serialize)]
pub struct RestoreReport {
    /// Id of this restore (its journal).
    pub restore_id: String,
    /// restore | rollback | drill
    pub kind: RestoreKind,
    /// Group restored.
    pub group: String,
    /// Environment.
    pub env: String,
    /// Whether this run resumed an interrupted one.
    pub resumed: bool,
    /// For a rollback: the restore undone.
    pub undoes: Option<String>,
    /// Group id of the safety snapshots taken (hex).
    pub safety_group: Option<String>,
    /// Start, Unix seconds.
    pub started_at: f64,
    /// Wall time of the whole restore.
    pub wall_seconds: f64,
    /// Sum of the per-service times.
    pub sum_service_seconds: f64,
    /// The slowest dependency chain (by service time).
    pub critical_path: Vec<String>,
    /// Its length in seconds.
    pub critical_path_seconds: f64,
    /// Per service, in start order.
    pub services: Vec<ServiceRestore>,
    /// Cross-service invariants.
    pub invariants: Vec<InvariantResult>,
}

impl RestoreReport {
    /// True when every service and every invariant passed.
    pub fn ok(&self) -> bool {
        self.services.iter().all(|s| s.status == "passed")
            && self.invariants.iter().all(|i| i.status == "passed")
    }
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
            &repo.repo,
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
        for (id, s) in repo.repo.list_snapshots()? {
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
        &repo.repo,
        &restore_id,
        &JournalEvent::End {
            ok: report.ok(),
            time: now(),
        },
    )?;
    Ok(report)
}

/// A service restarted, not restored (`--with-dependents`): its `stop`
/// ran before the restore began; now `start` and `ready`.
fn restart_one(cx: &Ctx, svc: &Service, stopped: Option<Stage>) -> ServiceRestore {
    let start = cx.t0.elapsed().as_secs_f64();
    let mut r = skipped(svc, String::new(), start);
    r.error = None;
    r.restarted = true;
    r.fingerprint.method = "none (restarted, not restored)".into();
    r.stages.extend(stopped);
    let timed =
        |r: &mut ServiceRestore, name: StageName, res: &mut dyn FnMut() -> Result<(), String>| {
            let s = cx.t0.elapsed().as_secs_f64();
            let out = res();
            let e = cx.t0.elapsed().as_secs_f64();
            r.stages.push(Stage {
                name,
                start: s,
                end: e,
                seconds: e - s,
            });
            (cx.on_event)(&format!(
                "{}: {name} {}",
                svc.name,
                match &out {
                    Ok(()) => format!("done in {:.2}s", e - s),
                    Err(m) => format!("FAILED: {m}"),
                }
            ));
            out
        };
    let mut res = Ok(());
    if let Some(cmd) = &svc.start {
        res = timed(&mut r, StageName::Start, &mut || run_shell(svc, cmd));
    }
    if res.is_ok()
        && let Some(ready) = &svc.ready
    {
        res = timed(&mut r, StageName::Ready, &mut || {
            crate::ready::wait(ready, svc.ready_timeout, &svc.workdir)
        });
    }
    r.end = cx.t0.elapsed().as_secs_f64();
    r.seconds = r.end - r.start;
    match res {
        Ok(()) => r.status = Status::Passed,
        Err(e) => {
            r.status = Status::Failed;
            r.error = Some(e);
        }
    }
    r
}

fn skipped(svc: &Service, why: String, now: f64) -> ServiceRestore {
    ServiceRestore {
        service: svc.name.clone(),
        kind: kind_name(svc.kind),
        status: Status::Skipped,
        error: Some(why),
        snapshot: None,
        start: now,
        end: now,
        seconds: 0.0,
        stages: vec![],
        bytes_restored: 0,
        withheld: None,
        rto_budget_seconds: svc.rto.map(|d| d.as_secs_f64()),
        rto_met: None,
        safety_snapshot: None,
        safety_note: None,
        resumed: false,
        restarted: false,
        fingerprint: FingerprintReport::default(),
        invariants: vec![],
    }
}

fn run_shell(svc: &Service, cmd: &str) -> Result<(), String> {
    let out = adapters::shell(svc, cmd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{cmd}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Compare a service's live state with the snapshot it was restored from.
pub fn verify_service(
    svc: &Service,
    repo: &IndexedRepository,
    snap: &Snapshot,
) -> Result<FingerprintReport, StackError> {
    svc.kind.datastore().verify(svc, repo, snap)
}

/// Verify by fingerprint: the one recorded at backup time (database numbers
/// remapped for Redis environments) against the service's live one.
pub fn verify_fingerprint(
    svc: &Service,
    _repo: &IndexedRepository,
    snap: &Snapshot,
    method: &str,
) -> Result<FingerprintReport, StackError> {
    let mut f = FingerprintReport {
        expected: fingerprint::decode(snap),
        method: method.into(),
        ..Default::default()
    };
    let map = fingerprint::redis_db_map(svc, snap);
    f.expected = fingerprint::remap(&f.expected, &map);
    f.actual = svc
        .kind
        .datastore()
        .live_fingerprint(svc)?
        .unwrap_or_default();
    f.differences = fingerprint::compare(&f.expected, &f.actual);
    f.verified = Some(f.differences.is_empty());
    Ok(f)
}

fn restore_one(cx: &Ctx, svc: &Service, snap: Option<(SnapshotId, Snapshot)>) -> ServiceRestore {
    let t0 = cx.t0;
    let on_event = cx.on_event;
    let start = t0.elapsed().as_secs_f64();
    let mut r = skipped(svc, String::new(), start);
    r.error = None;
    let stage = |r: &mut ServiceRestore,
                 name: StageName,
                 f: &mut dyn FnMut(&mut ServiceRestore) -> Result<(), String>|
     -> bool {
        let s = t0.elapsed().as_secs_f64();
        let res = f(r);
        let e = t0.elapsed().as_secs_f64();
        r.stages.push(Stage {
            name,
            start: s,
            end: e,
            seconds: e - s,
        });
        match res {
            Ok(()) => {
                on_event(&format!("{}: {name} done in {:.2}s", svc.name, e - s));
                true
            }
            Err(msg) => {
                on_event(&format!("{}: {name} FAILED: {msg}", svc.name));
                r.status = Status::Failed;
                r.error = Some(format!("{name}: {msg}"));
                false
            }
        }
    };
    let verify = |r: &mut ServiceRestore, snap: &Snapshot| -> Result<(), String> {
        let f = verify_service(svc, cx.repo, snap).map_err(|e| e.to_string())?;
        let diffs = f.differences.clone();
        r.fingerprint = f;
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the restored state differs from the backup: {}",
                diffs.join("; ")
            ))
        }
    };
    let ok = (|| {
        let Some((id, snap)) = &snap else {
            r.status = Status::Failed;
            r.error = Some("the group has no snapshot of this service".into());
            return false;
        };
        r.snapshot = Some(id.to_hex());
        // A resumed restore skips what completed and still verifies.
        if let Some(j) = cx.journal
            && j.passed.get(&svc.name) == Some(&id.to_hex())
        {
            let mut rr = r.clone();
            if stage(&mut rr, StageName::VerifyResumed, &mut |r| verify(r, snap)) {
                rr.resumed = true;
                rr.safety_snapshot = j.prepared.get(&svc.name).cloned().flatten();
                r = rr;
                return true;
            }
            on_event(&format!(
                "{}: completed before the interruption but no longer verifies; restoring it again",
                svc.name
            ));
            r.stages = rr.stages;
            r.status = Status::Pending;
            r.error = None;
        }
        // A snapshot that may be forged is refused before anything runs:
        // another adapter's kind (a `command` impostor of a database
        // service), a MariaDB dump without its sandbox line, a Redis dump
        // reaching outside the service's key space.
        let mut checked = None;
        if !stage(&mut r, StageName::Preflight, &mut |_| {
            checked = Some(adapters::preflight(svc, cx.repo, id, snap).map_err(|e| e.to_string())?);
            Ok(())
        }) {
            return false;
        }
        // Safety snapshot, once per restore, before anything is overwritten.
        let prepared = cx.journal.and_then(|j| j.prepared.get(&svc.name).cloned());
        if let Some(p) = prepared {
            r.safety_snapshot = p;
        } else if let Some(id) = cx.existing_safety.get(&svc.name) {
            r.safety_snapshot = Some(id.clone());
        } else if cx.safety {
            if !stage(&mut r, StageName::SafetySnapshot, &mut |r| {
                match adapters::holds_data(svc) {
                    Ok(false) => {
                        r.safety_note = Some("the target held no data".into());
                        return Ok(());
                    }
                    Ok(true) => {}
                    Err(e) => return Err(e.to_string()),
                }
                let (host, user) = cairn_repo::whoami();
                let opts = BackupOptions {
                    service: svc.name.clone(),
                    hostname: host,
                    username: user,
                    tags: vec![
                        "safety".into(),
                        format!("restore:{}", cx.restore_id),
                        format!("kind:{}", kind_name(svc.kind)),
                    ],
                    parent: ParentChoice::Auto,
                    group: Some(cx.safety_group),
                    fingerprints: vec![],
                    exclusions: Default::default(),
                };
                match adapters::backup(&svc.live_view(), cx.repo, opts) {
                    Ok(b) => r.safety_snapshot = Some(b.id.to_hex()),
                    Err(e) if svc.kind.datastore().safety_snapshot_optional() => {
                        r.safety_note = Some(format!("backup command failed: {e}"))
                    }
                    Err(e) => return Err(format!("{e} (nothing was overwritten)")),
                }
                Ok(())
            }) {
                return false;
            }
        } else {
            r.safety_note = Some("safety snapshots off".into());
        }
        if let Err(e) = trail::journal(
            &cx.repo.repo,
            &cx.restore_id,
            &JournalEvent::Prepared {
                service: svc.name.clone(),
                safety_snapshot: r.safety_snapshot.clone(),
                note: r.safety_note.clone(),
                time: now(),
            },
        ) {
            r.status = Status::Failed;
            r.error = Some(format!("journal: {e}"));
            return false;
        }
        if let Some(stop) = &svc.stop
            && !stage(&mut r, StageName::Stop, &mut |_| run_shell(svc, stop))
        {
            return false;
        }
        if !stage(&mut r, StageName::FetchLoad, &mut |r| {
            let c = checked.take().ok_or("preflight did not run")?;
            let (bytes, withheld) =
                adapters::restore(svc, cx.repo, c).map_err(|e| e.to_string())?;
            r.bytes_restored = bytes;
            if let Some(w) = &withheld {
                on_event(&format!("{}: withheld: {w}", svc.name));
            }
            r.withheld = withheld;
            Ok(())
        }) {
            return false;
        }
        if let Some(name) = svc.kind.datastore().after_load()
            && !stage(&mut r, StageName::AfterLoad(name), &mut |_| {
                svc.kind
                    .datastore()
                    .run_after_load(svc)
                    .map_err(|e| e.to_string())
            })
        {
            return false;
        }
        if let Some(start) = &svc.start
            && !stage(&mut r, StageName::Start, &mut |_| run_shell(svc, start))
        {
            return false;
        }
        if let Some(ready) = &svc.ready
            && !stage(&mut r, StageName::Ready, &mut |_| {
                crate::ready::wait(ready, svc.ready_timeout, &svc.workdir)
            })
        {
            return false;
        }
        // Test hook: change the service between load and verification.
        if let Ok(hook) = std::env::var("CAIRN_TEST_HOOK_BEFORE_VERIFY") {
            let _ = adapters::shell(svc, &hook)
                .env("CAIRN_SERVICE", &svc.name)
                .status();
        }
        if !stage(&mut r, StageName::Verify, &mut |r| verify(r, snap)) {
            return false;
        }
        if !svc.invariants.is_empty()
            && cx.invariants
            && !stage(&mut r, StageName::Invariants, &mut |r| {
                let res: Vec<InvariantResult> = svc
                    .invariants
                    .iter()
                    .map(|i| run_invariant(cx.cat, i))
                    .collect();
                let bad: Vec<String> = res
                    .iter()
                    .filter(|i| i.status != "passed")
                    .map(|i| format!("{}: {}", i.name, i.error.as_deref().unwrap_or("")))
                    .collect();
                r.invariants = res;
                if bad.is_empty() {
                    Ok(())
                } else {
                    Err(bad.join("; "))
                }
            })
        {
            return false;
        }
        if let Some(hook) = &svc.post_restore
            && !stage(&mut r, StageName::PostRestore, &mut |_| {
                run_shell(svc, hook)
            })
        {
            return false;
        }
        if let Err(e) = trail::journal(
            &cx.repo.repo,
            &cx.restore_id,
            &JournalEvent::Passed {
                service: svc.name.clone(),
                snapshot: id.to_hex(),
                time: now(),
            },
        ) {
            r.status = Status::Failed;
            r.error = Some(format!("journal: {e}"));
            return false;
        }
        true
    })();
    r.end = t0.elapsed().as_secs_f64();
    r.seconds = r.end - r.start;
    if ok {
        r.status = Status::Passed;
        r.rto_met = svc.rto.map(|b| Duration::from_secs_f64(r.seconds) <= b);
    }
    r
}

/// Longest chain of selected services by restore time.
fn critical_path(
    cat: &Catalog,
    selected: &BTreeSet<String>,
    services: &[ServiceRestore],
) -> (Vec<String>, f64) {
    let dur: BTreeMap<&str, f64> = services
        .iter()
        .map(|s| (s.service.as_str(), s.seconds))
        .collect();
    let mut best: BTreeMap<String, (f64, Vec<String>)> = BTreeMap::new();
    for wave in cat.waves(selected) {
        for name in wave {
            let (pre, mut chain) = cat.services[&name]
                .depends_on
                .iter()
                .filter(|d| selected.contains(*d))
                .filter_map(|d| best.get(d).cloned())
                .max_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal))
                .unwrap_or((0.0, vec![]));
            chain.push(name.clone());
            best.insert(
                name.clone(),
                (pre + dur.get(name.as_str()).copied().unwrap_or(0.0), chain),
            );
        }
    }
    best.into_values()
        .max_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal))
        .map(|(t, c)| (c, t))
        .unwrap_or_default()
}
