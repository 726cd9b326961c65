//! Stack backup, plan and restore, with reports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_format::SnapshotId;
use cairn_format::id::to_hex;
use cairn_format::snapshot::Snapshot;
use cairn_repo::{BackupOptions, IndexedRepository, ParentChoice};
use serde::Serialize;

use crate::StackError;
use crate::adapters;
use crate::catalog::{Catalog, Invariant, Kind, Service};
use crate::fingerprint::{self, Fingerprint};
use crate::trail::{self, Journal, JournalEvent};

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One service's part of a stack backup.
#[derive(Debug, Serialize, Clone)]
pub struct ServiceBackup {
    /// Service.
    pub service: String,
    /// Its kind.
    pub kind: &'static str,
    /// Whether it succeeded.
    pub ok: bool,
    /// Error, if it failed.
    pub error: Option<String>,
    /// Snapshot written.
    pub snapshot: Option<String>,
    /// Capture time (Unix seconds): when its dump started.
    pub captured_at: f64,
    /// Wall time.
    pub seconds: f64,
    /// Bytes read from the service.
    pub bytes_read: u64,
    /// Bytes added to the repository.
    pub bytes_added: u64,
    /// Fingerprint recorded (tables, Redis databases).
    pub fingerprint: Fingerprint,
}

/// Result of `stack backup`.
#[derive(Debug, Serialize)]
pub struct StackBackupReport {
    /// Group id shared by the snapshots.
    pub group: String,
    /// Environment whose catalog was used.
    pub env: String,
    /// Per service.
    pub services: Vec<ServiceBackup>,
    /// Latest minus earliest capture time of the successful services.
    pub skew_seconds: f64,
    /// Wall time of the whole backup.
    pub seconds: f64,
}

/// Run `f` over `items` on up to `jobs` threads, results in input order.
pub(crate) fn parallel<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= items.len() {
                        break;
                    }
                    let r = f(&items[i]);
                    out.lock().expect("results")[i] = Some(r);
                }
            });
        }
    });
    out.into_inner()
        .expect("results")
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

/// Back up the selected services in parallel under one group id.
pub fn stack_backup(
    cat: &Catalog,
    repo: &IndexedRepository,
    selected: &BTreeSet<String>,
    jobs: usize,
    hostname: &str,
    username: &str,
) -> StackBackupReport {
    let start = Instant::now();
    let mut group = [0u8; 16];
    cairn_format::crypto::random_bytes(&mut group);
    let names: Vec<&String> = selected.iter().collect();
    let services = parallel(&names, jobs, |name| {
        let svc = &cat.services[*name];
        let t0 = Instant::now();
        let captured_at = unix_secs(SystemTime::now());
        let opts = BackupOptions {
            service: svc.name.clone(),
            hostname: hostname.to_string(),
            username: username.to_string(),
            tags: vec!["stack".into(), format!("kind:{}", kind_name(svc.kind))],
            parent: ParentChoice::Auto,
            group: Some(group),
            fingerprints: vec![],
        };
        match adapters::backup(svc, repo, opts) {
            Ok(r) => ServiceBackup {
                service: svc.name.clone(),
                kind: kind_name(svc.kind),
                ok: true,
                error: None,
                snapshot: Some(r.id.to_hex()),
                captured_at,
                seconds: t0.elapsed().as_secs_f64(),
                bytes_read: r.snapshot.summary.bytes_read,
                bytes_added: r.snapshot.summary.bytes_added,
                fingerprint: fingerprint::decode(&r.snapshot),
            },
            Err(e) => ServiceBackup {
                service: svc.name.clone(),
                kind: kind_name(svc.kind),
                ok: false,
                error: Some(e.to_string()),
                snapshot: None,
                captured_at,
                seconds: t0.elapsed().as_secs_f64(),
                bytes_read: 0,
                bytes_added: 0,
                fingerprint: Fingerprint::new(),
            },
        }
    });
    let caps: Vec<f64> = services
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.captured_at)
        .collect();
    let skew = if caps.is_empty() {
        0.0
    } else {
        caps.iter().cloned().fold(f64::MIN, f64::max)
            - caps.iter().cloned().fold(f64::MAX, f64::min)
    };
    StackBackupReport {
        group: to_hex(&group),
        env: cat.env.clone(),
        services,
        skew_seconds: skew,
        seconds: start.elapsed().as_secs_f64(),
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

/// Refuse a snapshot whose adapter tag (`kind:…`, written by every stack
/// backup and safety snapshot) is not the catalog's kind for the service.
pub fn snapshot_kind_matches(svc: &Service, id: &SnapshotId, s: &Snapshot) -> Result<(), String> {
    let want = kind_name(svc.kind);
    let kinds: Vec<&str> = s
        .tags
        .iter()
        .filter_map(|t| t.strip_prefix("kind:"))
        .collect();
    match kinds.as_slice() {
        [k] if *k == want => Ok(()),
        [] => Err(format!(
            "snapshot {} has no kind tag (it was not written by a stack backup); the catalog says kind {want}",
            &id.to_hex()[..8]
        )),
        ks => Err(format!(
            "snapshot {} was written as kind {}, but the catalog says kind {want}: a snapshot of another kind is not restored (it may be forged)",
            &id.to_hex()[..8],
            ks.join(", ")
        )),
    }
}

/// Whether a snapshot is a restore's safety snapshot (tag `safety`).
pub fn is_safety(s: &Snapshot) -> bool {
    s.tags.iter().any(|t| t == "safety")
}

/// A group's snapshots by service.
pub type GroupSnapshots = BTreeMap<String, (SnapshotId, Snapshot)>;

/// The snapshots of one group, by service (`spec`: a hex id or prefix, or
/// `latest` = the newest group, whatever it holds). Restores choose with
/// [`choose_group`].
pub fn group_snapshots(
    repo: &IndexedRepository,
    spec: &str,
) -> Result<([u8; 16], GroupSnapshots), StackError> {
    let c = choose_group(repo, spec, None)?;
    Ok((c.group, c.snapshots))
}

/// A group chosen for a restore or a plan.
#[derive(Debug, Default)]
pub struct GroupChoice {
    /// Its id.
    pub group: [u8; 16],
    /// Its snapshots by service.
    pub snapshots: GroupSnapshots,
    /// Why newer groups or snapshots were passed over (one line each).
    pub notes: Vec<String>,
}

/// How far a snapshot's own time may lie after the time storage received
/// it before it counts as dated in the future (clocks of writers drift).
const FUTURE_TOLERANCE_NS: i64 = 10 * 60 * 1_000_000_000;

/// Choose the group to restore. `latest` means the newest backup group that
/// holds a snapshot of every service in `selected` (all groups when None):
/// a `stack backup --only X` or a backup in which a service failed does not
/// hide the last complete group, and the groups passed over are named in
/// the notes. A snapshot whose recorded time lies more than ten minutes
/// after the time storage received it is never taken as `latest` (a planted
/// or skewed snapshot dated in the future would otherwise shadow every real
/// backup); name its group explicitly to restore it.
pub fn choose_group(
    repo: &IndexedRepository,
    spec: &str,
    selected: Option<&BTreeSet<String>>,
) -> Result<GroupChoice, StackError> {
    // Unreadable snapshot objects do not block a restore that does not
    // need them (`check` names them).
    let all = repo.repo.list_snapshots_readable()?.0;
    let of_group = |g: [u8; 16]| -> GroupSnapshots {
        let mut m = BTreeMap::new();
        for (id, s) in &all {
            if s.group == Some(g) {
                m.insert(s.service.clone(), (*id, s.clone()));
            }
        }
        m
    };
    if spec != "latest" {
        let spec = spec.to_ascii_lowercase();
        let gs: BTreeSet<[u8; 16]> = all
            .iter()
            .filter_map(|(_, s)| s.group)
            .filter(|g| to_hex(g).starts_with(&spec))
            .collect();
        let group = match gs.len() {
            1 => *gs.iter().next().expect("one"),
            0 => return Err(StackError::Invalid(format!("no group matches {spec:?}"))),
            n => return Err(StackError::Invalid(format!("{n} groups match {spec:?}"))),
        };
        return Ok(GroupChoice {
            group,
            snapshots: of_group(group),
            notes: vec![],
        });
    }
    let received = repo.repo.snapshot_store_times()?;
    let mut notes = Vec::new();
    // Groups of backups (safety snapshots form groups too), newest first by
    // their newest snapshot; future-dated snapshots are left out.
    let mut newest: BTreeMap<[u8; 16], i64> = BTreeMap::new();
    let mut future: BTreeSet<SnapshotId> = BTreeSet::new();
    for (id, s) in &all {
        let Some(g) = s.group else { continue };
        if is_safety(s) {
            continue;
        }
        if let Some(&t) = received.get(id)
            && s.time_ns > t.saturating_add(FUTURE_TOLERANCE_NS)
        {
            notes.push(format!(
                "snapshot {} of {} is dated {}, after storage received it ({}): not taken as latest",
                &id.to_hex()[..8],
                s.service,
                rfc3339(s.time_ns as f64 / 1e9),
                rfc3339(t as f64 / 1e9)
            ));
            future.insert(*id);
            continue;
        }
        let e = newest.entry(g).or_insert(i64::MIN);
        *e = (*e).max(s.time_ns);
    }
    let mut order: Vec<([u8; 16], i64)> = newest.into_iter().collect();
    order.sort_by_key(|(g, t)| (std::cmp::Reverse(*t), *g));
    if order.is_empty() {
        return Err(StackError::Invalid(
            "no stack backup (group) in the repository".into(),
        ));
    }
    for (g, _) in &order {
        let mut snaps = of_group(*g);
        snaps.retain(|_, (id, _)| !future.contains(id));
        let missing: Vec<&String> = match selected {
            Some(sel) => sel.iter().filter(|n| !snaps.contains_key(*n)).collect(),
            None => vec![],
        };
        if missing.is_empty() {
            return Ok(GroupChoice {
                group: *g,
                snapshots: snaps,
                notes,
            });
        }
        notes.push(format!(
            "group {} has no snapshot of {} (a partial or failed backup): passed over",
            &to_hex(g)[..8],
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Err(StackError::Invalid(format!(
        "no backup group holds a snapshot of every selected service:\n  {}\nrestore fewer services (--only) or name a group (--group)",
        notes.join("\n  ")
    )))
}

/// One row of `stack plan`.
#[derive(Debug, Serialize)]
pub struct PlanEntry {
    /// Service.
    pub service: String,
    /// Kind.
    pub kind: &'static str,
    /// Wave number (1-based).
    pub wave: usize,
    /// Dependencies.
    pub depends_on: Vec<String>,
    /// Snapshot to restore, if the group has one.
    pub snapshot: Option<String>,
    /// Snapshot time (RFC 3339 seconds since epoch).
    pub snapshot_time_ns: Option<i64>,
    /// What would be overwritten.
    pub overwrites: String,
    /// RTO budget.
    pub rto_seconds: Option<f64>,
}

/// Output of `stack plan`.
#[derive(Debug, Serialize)]
pub struct Plan {
    /// Group id (None: no group to restore, see the notes).
    pub group: Option<String>,
    /// Why newer groups were passed over, or why there is none.
    pub notes: Vec<String>,
    /// Environment.
    pub env: String,
    /// Dependency waves.
    pub waves: Vec<Vec<String>>,
    /// Per service.
    pub services: Vec<PlanEntry>,
}

/// The plan: waves plus per-service details. Touches nothing.
pub fn plan(
    cat: &Catalog,
    repo: &IndexedRepository,
    group: &str,
    selected: &BTreeSet<String>,
) -> Result<Plan, StackError> {
    // Before the first backup the plan still shows the order.
    let choice = match choose_group(repo, group, Some(selected)) {
        Ok(c) => c,
        Err(StackError::Invalid(why)) if group == "latest" => GroupChoice {
            notes: vec![why],
            ..Default::default()
        },
        Err(e) => return Err(e),
    };
    let (g, snaps) = (choice.group, &choice.snapshots);
    let waves = cat.waves(selected);
    let mut entries = Vec::new();
    for (i, w) in waves.iter().enumerate() {
        for name in w {
            let s = &cat.services[name];
            entries.push(PlanEntry {
                service: name.clone(),
                kind: kind_name(s.kind),
                wave: i + 1,
                depends_on: s
                    .depends_on
                    .iter()
                    .filter(|d| selected.contains(*d))
                    .cloned()
                    .collect(),
                snapshot: snaps.get(name).map(|x| x.0.to_hex()),
                snapshot_time_ns: snaps.get(name).map(|x| x.1.time_ns),
                overwrites: describe_target(s),
                rto_seconds: s.rto.map(|d| d.as_secs_f64()),
            });
        }
    }
    Ok(Plan {
        group: (g != [0u8; 16]).then(|| to_hex(&g)),
        env: cat.env.clone(),
        waves,
        services: entries,
        notes: choice.notes,
    })
}

/// One timed stage of a service restore.
#[derive(Debug, Serialize, Clone)]
pub struct Stage {
    /// verify (resumed) | preflight | safety-snapshot | stop | fetch+load | analyze (postgres) | start | ready | verify | invariants | post-restore
    pub name: String,
    /// Seconds since the restore began.
    pub start: f64,
    /// Seconds since the restore began.
    pub end: f64,
    /// Duration.
    pub seconds: f64,
}

/// The restored state compared with the backed-up state.
#[derive(Debug, Serialize, Clone, Default)]
pub struct FingerprintReport {
    /// tables | keys | tree | none
    pub method: String,
    /// Recorded at backup time.
    pub expected: Fingerprint,
    /// Recomputed from the live service after the restore.
    pub actual: Fingerprint,
    /// The snapshot tree of a files service (hex).
    pub tree: Option<String>,
    /// What differs, naming the table, key or path.
    pub differences: Vec<String>,
    /// Whether it matched (None: nothing to compare, command services).
    pub verified: Option<bool>,
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
    pub status: String,
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
    pub status: String,
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

/// Current time, Unix seconds.
pub fn now() -> f64 {
    unix_secs(SystemTime::now())
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(t: f64) -> String {
    let secs = t.floor() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
    // Temporary dumps a killed run left (the whole database in plaintext).
    if req.resume.is_some() {
        let dirs: BTreeSet<PathBuf> = selected
            .iter()
            .filter_map(|n| cat.services.get(n))
            .flat_map(|s| s.kind.datastore().temp_dirs(s))
            .collect();
        for d in dirs {
            for p in crate::children::remove_stale(&d) {
                on_event(&format!(
                    "removed {}: a temporary dump an interrupted run left",
                    p.display()
                ));
            }
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
                        on_event(&format!("{name}: skipped ({why})"));
                        status.insert(name.clone(), Some(skipped(&cat.services[name], why, now)));
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
                placeholder.status = "running".into();
                status.insert(name.clone(), Some(placeholder));
                running += 1;
                let svc = &cat.services[name];
                let snap = snaps.get(name).cloned();
                let tx = tx.clone();
                let cx = &cx;
                scope.spawn(move || {
                    let r = restore_one(cx, svc, snap);
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

/// Whether `a` depends on `b`, directly or through others.
fn depends_on(cat: &Catalog, a: &str, b: &str) -> bool {
    let mut todo = vec![a];
    let mut seen = BTreeSet::new();
    while let Some(x) = todo.pop() {
        for d in cat
            .services
            .get(x)
            .map(|s| s.depends_on.as_slice())
            .unwrap_or(&[])
        {
            if d == b {
                return true;
            }
            if seen.insert(d.as_str()) {
                todo.push(d);
            }
        }
    }
    false
}

/// The cross-service invariants (indexes) that gate the start of `name`:
/// `gate` ones naming a selected service it depends on, unless they also
/// name `name` or a service depending on it (they could not run before it).
fn gates<'a>(
    cat: &'a Catalog,
    name: &'a str,
    selected: &'a BTreeSet<String>,
) -> impl Iterator<Item = usize> + 'a {
    cat.invariants
        .iter()
        .enumerate()
        .filter_map(move |(i, inv)| {
            let relevant = inv.gate
                && inv
                    .services
                    .iter()
                    .any(|s| selected.contains(s) && depends_on(cat, name, s))
                && !inv
                    .services
                    .iter()
                    .any(|s| s == name || depends_on(cat, s, name));
            relevant.then_some(i)
        })
}

fn skipped(svc: &Service, why: String, now: f64) -> ServiceRestore {
    ServiceRestore {
        service: svc.name.clone(),
        kind: kind_name(svc.kind),
        status: "skipped".into(),
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
        fingerprint: FingerprintReport::default(),
        invariants: vec![],
    }
}

fn skipped_invariant(inv: &Invariant, why: String) -> InvariantResult {
    InvariantResult {
        name: inv.name.clone(),
        services: inv.services.clone(),
        check: inv.check.clone(),
        expect: inv.expect.clone(),
        actual: None,
        status: "skipped".into(),
        error: Some(why),
        seconds: 0.0,
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

/// `CAIRN_<SERVICE>_<FIELD>` variables for invariant commands: every
/// service's connection settings in the environment applied.
pub fn service_env(cat: &Catalog) -> Vec<(String, String)> {
    let mut v = vec![("CAIRN_ENV".to_string(), cat.env.clone())];
    for s in cat.services.values() {
        let p: String = s
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        let mut put = |k: &str, val: Option<String>| {
            if let Some(val) = val {
                v.push((format!("CAIRN_{p}_{k}"), val));
            }
        };
        put("HOST", s.host.clone());
        put("PORT", s.port.map(|x| x.to_string()));
        put("USER", s.user.clone());
        put("DATABASE", s.database.clone());
        put(
            "PATH",
            s.target
                .as_ref()
                .or(s.path.as_ref())
                .map(|x| x.display().to_string()),
        );
        for (k, val) in s.kind.datastore().env(s) {
            put(k, Some(val));
        }
    }
    v
}

/// Evaluate one invariant now.
pub fn run_invariant(cat: &Catalog, inv: &Invariant) -> InvariantResult {
    use crate::catalog::{Check, Expect};
    let t = Instant::now();
    let mut r = skipped_invariant(inv, String::new());
    r.error = None;
    let out: Result<String, String> = match &inv.check {
        Check::Sql { on, query } => {
            let svc = &cat.services[on];
            adapters::query(svc, query).map_err(|e| e.to_string())
        }
        Check::Command(c) => {
            let dir = cat
                .services
                .values()
                .next()
                .map(|s| s.workdir.clone())
                .unwrap_or_else(|| ".".into());
            std::process::Command::new("sh")
                .arg("-c")
                .arg(c)
                .current_dir(dir)
                .envs(service_env(cat))
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| e.to_string())
                .and_then(|o| {
                    if o.status.success() {
                        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
                    } else {
                        Err(format!(
                            "command failed ({}): {}",
                            o.status,
                            String::from_utf8_lossy(&o.stderr).trim()
                        ))
                    }
                })
        }
    };
    r.seconds = t.elapsed().as_secs_f64();
    let out = match out {
        Ok(o) => o.trim().to_string(),
        Err(e) => {
            r.status = "failed".into();
            r.error = Some(e);
            return r;
        }
    };
    let num = |s: &str| s.trim().parse::<f64>().ok();
    let ok = match &inv.expect {
        Expect::Equals(e) => {
            out == e.trim() || matches!((num(&out), num(e)), (Some(a), Some(b)) if a == b)
        }
        Expect::AtLeast(b) => num(&out).is_some_and(|a| a >= *b),
        Expect::AtMost(b) => num(&out).is_some_and(|a| a <= *b),
        Expect::Matches(p) => regex_lite::Regex::new(p).is_ok_and(|re| re.is_match(&out)),
    };
    r.actual = Some(out.clone());
    if ok {
        r.status = "passed".into();
    } else {
        r.status = "failed".into();
        let want = match &inv.expect {
            Expect::Equals(e) => format!("equal to {e:?}"),
            Expect::AtLeast(b) => format!("at least {b}"),
            Expect::AtMost(b) => format!("at most {b}"),
            Expect::Matches(p) => format!("matching /{p}/"),
        };
        let what = match &inv.check {
            Check::Sql { on, query } => format!("query `{query}` on {on}"),
            Check::Command(c) => format!("command `{c}`"),
        };
        r.error = Some(format!("{what}: expected {want}, got {out:?}"));
    }
    r
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
                 name: &str,
                 f: &mut dyn FnMut(&mut ServiceRestore) -> Result<(), String>|
     -> bool {
        let s = t0.elapsed().as_secs_f64();
        let res = f(r);
        let e = t0.elapsed().as_secs_f64();
        r.stages.push(Stage {
            name: name.into(),
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
                r.status = "failed".into();
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
            r.status = "failed".into();
            r.error = Some("the group has no snapshot of this service".into());
            return false;
        };
        r.snapshot = Some(id.to_hex());
        // A resumed restore skips what completed and still verifies.
        if let Some(j) = cx.journal
            && j.passed.get(&svc.name) == Some(&id.to_hex())
        {
            let mut rr = r.clone();
            if stage(&mut rr, "verify (resumed)", &mut |r| verify(r, snap)) {
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
            r.status = String::new();
            r.error = None;
        }
        // A snapshot that may be forged is refused before anything runs:
        // another adapter's kind (a `command` impostor of a database
        // service), a MariaDB dump without its sandbox line, a Redis dump
        // reaching outside the service's key space.
        let mut checked = None;
        if !stage(&mut r, "preflight", &mut |_| {
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
            if !stage(&mut r, "safety-snapshot", &mut |r| {
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
            r.status = "failed".into();
            r.error = Some(format!("journal: {e}"));
            return false;
        }
        if let Some(stop) = &svc.stop
            && !stage(&mut r, "stop", &mut |_| run_shell(svc, stop))
        {
            return false;
        }
        if !stage(&mut r, "fetch+load", &mut |r| {
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
            && !stage(&mut r, name, &mut |_| {
                svc.kind
                    .datastore()
                    .run_after_load(svc)
                    .map_err(|e| e.to_string())
            })
        {
            return false;
        }
        if let Some(start) = &svc.start
            && !stage(&mut r, "start", &mut |_| run_shell(svc, start))
        {
            return false;
        }
        if let Some(ready) = &svc.ready
            && !stage(&mut r, "ready", &mut |_| {
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
        if !stage(&mut r, "verify", &mut |r| verify(r, snap)) {
            return false;
        }
        if !svc.invariants.is_empty()
            && cx.invariants
            && !stage(&mut r, "invariants", &mut |r| {
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
            && !stage(&mut r, "post-restore", &mut |_| run_shell(svc, hook))
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
            r.status = "failed".into();
            r.error = Some(format!("journal: {e}"));
            return false;
        }
        true
    })();
    r.end = t0.elapsed().as_secs_f64();
    r.seconds = r.end - r.start;
    if ok {
        r.status = "passed".into();
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

pub use crate::metrics::{backup_metrics, restore_metrics};
