//! Stack backup, plan and restore, with reports.

use std::collections::{BTreeMap, BTreeSet};
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
use crate::catalog::{Catalog, Kind, Service};

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
    /// Counts recorded (rows, keys, files).
    pub counts: BTreeMap<String, u64>,
}

/// Result of `stack backup`.
#[derive(Debug, Serialize)]
pub struct StackBackupReport {
    /// Group id shared by the snapshots.
    pub group: String,
    /// Per service.
    pub services: Vec<ServiceBackup>,
    /// Latest minus earliest capture time of the successful services.
    pub skew_seconds: f64,
    /// Wall time of the whole backup.
    pub seconds: f64,
}

/// Run `f` over `items` on up to `jobs` threads, results in input order.
fn parallel<T: Sync, R: Send>(items: &[T], jobs: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
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
                ok: true,
                error: None,
                snapshot: Some(r.id.to_hex()),
                captured_at,
                seconds: t0.elapsed().as_secs_f64(),
                bytes_read: r.snapshot.summary.bytes_read,
                bytes_added: r.snapshot.summary.bytes_added,
                counts: adapters::fingerprints_to_counts(&r.snapshot)
                    .into_iter()
                    .collect(),
            },
            Err(e) => ServiceBackup {
                service: svc.name.clone(),
                ok: false,
                error: Some(e.to_string()),
                snapshot: None,
                captured_at,
                seconds: t0.elapsed().as_secs_f64(),
                bytes_read: 0,
                bytes_added: 0,
                counts: BTreeMap::new(),
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
        services,
        skew_seconds: skew,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// Kind as written in the catalog.
pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Postgres => "postgres",
        Kind::Mariadb => "mariadb",
        Kind::Redis => "redis",
        Kind::Files => "files",
        Kind::Command => "command",
    }
}

/// What a restore of a service would overwrite.
pub fn describe_target(s: &Service) -> String {
    let hp = |dp: u16| {
        format!(
            "{}:{}",
            s.host.as_deref().unwrap_or("127.0.0.1"),
            s.port.unwrap_or(dp)
        )
    };
    match s.kind {
        Kind::Postgres => format!(
            "postgres database {:?} at {} (dropped and recreated)",
            s.database.as_deref().unwrap_or(""),
            hp(5432)
        ),
        Kind::Mariadb => format!(
            "mariadb database {:?} at {} (dropped and recreated)",
            s.database.as_deref().unwrap_or(""),
            hp(3306)
        ),
        Kind::Redis => format!(
            "redis keys matching {:?} in databases {:?} at {} (replaced)",
            s.key_pattern,
            s.databases,
            hp(6379)
        ),
        Kind::Files => format!(
            "directory {} (emptied, then restored)",
            s.target
                .as_ref()
                .or(s.path.as_ref())
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
        Kind::Command => format!("whatever `{}` writes", s.restore.as_deref().unwrap_or("")),
    }
}

/// A group's snapshots by service.
pub type GroupSnapshots = BTreeMap<String, (SnapshotId, Snapshot)>;

/// The snapshots of one group, by service.
pub fn group_snapshots(
    repo: &IndexedRepository,
    spec: &str,
) -> Result<([u8; 16], GroupSnapshots), StackError> {
    let all = repo.repo.list_snapshots()?;
    let group = if spec == "latest" {
        all.iter().rev().find_map(|(_, s)| s.group).ok_or_else(|| {
            StackError::Invalid("no stack backup (group) in the repository".into())
        })?
    } else {
        let spec = spec.to_ascii_lowercase();
        let gs: BTreeSet<[u8; 16]> = all
            .iter()
            .filter_map(|(_, s)| s.group)
            .filter(|g| to_hex(g).starts_with(&spec))
            .collect();
        match gs.len() {
            1 => *gs.iter().next().expect("one"),
            0 => return Err(StackError::Invalid(format!("no group matches {spec:?}"))),
            n => return Err(StackError::Invalid(format!("{n} groups match {spec:?}"))),
        }
    };
    let mut m = BTreeMap::new();
    for (id, s) in all {
        if s.group == Some(group) {
            m.insert(s.service.clone(), (id, s));
        }
    }
    Ok((group, m))
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
    /// Group id.
    pub group: String,
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
    let (g, snaps) = group_snapshots(repo, group)?;
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
        group: to_hex(&g),
        env: cat.env.clone(),
        waves,
        services: entries,
    })
}

/// One timed stage of a service restore.
#[derive(Debug, Serialize, Clone)]
pub struct Stage {
    /// stop | fetch+load | start | ready | check
    pub name: String,
    /// Seconds since the restore began.
    pub start: f64,
    /// Seconds since the restore began.
    pub end: f64,
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
    /// Budget.
    pub rto_budget_seconds: Option<f64>,
    /// Whether the budget was met (None without a budget or when not passed).
    pub rto_met: Option<bool>,
    /// Counts recorded at backup.
    pub expected_counts: BTreeMap<String, u64>,
    /// Counts found after restore.
    pub actual_counts: BTreeMap<String, u64>,
}

/// Result of `stack restore`.
#[derive(Debug, Serialize)]
pub struct RestoreReport {
    /// Random id of this restore.
    pub restore_id: String,
    /// Group restored.
    pub group: String,
    /// Environment.
    pub env: String,
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
}

impl RestoreReport {
    /// True when every service passed.
    pub fn ok(&self) -> bool {
        self.services.iter().all(|s| s.status == "passed")
    }
}

/// Restore the group's snapshots: each service starts as soon as all its
/// (selected) dependencies have passed; at most `jobs` run at once; a failure
/// skips its dependents while independent services continue.
pub fn stack_restore(
    cat: &Catalog,
    repo: &IndexedRepository,
    group: &str,
    selected: &BTreeSet<String>,
    jobs: usize,
    on_event: &(dyn Fn(&str) + Sync),
) -> Result<RestoreReport, StackError> {
    let (g, snaps) = group_snapshots(repo, group)?;
    let t0 = Instant::now();
    let started_at = unix_secs(SystemTime::now());
    let mut rid = [0u8; 8];
    cairn_format::crypto::random_bytes(&mut rid);
    let mut status: BTreeMap<String, Option<ServiceRestore>> =
        selected.iter().map(|s| (s.clone(), None)).collect();
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
                    if let Some(d) = bad {
                        let now = t0.elapsed().as_secs_f64();
                        on_event(&format!("{name}: skipped (dependency {d} did not pass)"));
                        status.insert(
                            name.clone(),
                            Some(skipped(
                                &cat.services[name],
                                format!("dependency {d} did not pass"),
                                now,
                            )),
                        );
                        changed = true;
                    }
                }
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
                    .all(|d| matches!(&status[d], Some(r) if r.status == "passed"));
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
                scope.spawn(move || {
                    let r = restore_one(svc, repo, snap, t0, on_event);
                    let _ = tx.send(r);
                });
            }
            if running == 0 {
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
    Ok(RestoreReport {
        restore_id: to_hex(&rid),
        group: to_hex(&g),
        env: cat.env.clone(),
        started_at,
        wall_seconds: t0.elapsed().as_secs_f64(),
        sum_service_seconds: services.iter().map(|s| s.seconds).sum(),
        critical_path,
        critical_path_seconds,
        services,
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
        rto_budget_seconds: svc.rto.map(|d| d.as_secs_f64()),
        rto_met: None,
        expected_counts: BTreeMap::new(),
        actual_counts: BTreeMap::new(),
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

fn restore_one(
    svc: &Service,
    repo: &IndexedRepository,
    snap: Option<(SnapshotId, Snapshot)>,
    t0: Instant,
    on_event: &(dyn Fn(&str) + Sync),
) -> ServiceRestore {
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
    let ok = (|| {
        let Some((id, snap)) = &snap else {
            r.status = "failed".into();
            r.error = Some("the group has no snapshot of this service".into());
            return false;
        };
        r.snapshot = Some(id.to_hex());
        r.expected_counts = adapters::fingerprints_to_counts(snap).into_iter().collect();
        if let Some(stop) = &svc.stop
            && !stage(&mut r, "stop", &mut |_| run_shell(svc, stop))
        {
            return false;
        }
        if !stage(&mut r, "fetch+load", &mut |r| {
            r.bytes_restored = adapters::restore(svc, repo, snap).map_err(|e| e.to_string())?;
            Ok(())
        }) {
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
        stage(&mut r, "check", &mut |r| {
            let actual: BTreeMap<String, u64> = adapters::restored_counts(svc)
                .map_err(|e| e.to_string())?
                .into_iter()
                .collect();
            r.actual_counts = actual.clone();
            if svc.kind == Kind::Command || actual == r.expected_counts {
                Ok(())
            } else {
                let diffs: Vec<String> = r
                    .expected_counts
                    .keys()
                    .chain(actual.keys())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|k| r.expected_counts.get(*k) != actual.get(*k))
                    .map(|k| {
                        format!(
                            "{k}: expected {:?}, found {:?}",
                            r.expected_counts.get(k),
                            actual.get(k)
                        )
                    })
                    .collect();
                Err(format!(
                    "counts differ from the snapshot: {}",
                    diffs.join("; ")
                ))
            }
        })
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

/// Prometheus textfile metrics for a stack backup.
pub fn backup_metrics(r: &StackBackupReport) -> String {
    let mut s = String::new();
    s += "# HELP cairn_backup_success Whether the last stack backup of the service succeeded.\n# TYPE cairn_backup_success gauge\n";
    for b in &r.services {
        s += &format!(
            "cairn_backup_success{{service=\"{}\"}} {}\n",
            b.service,
            u8::from(b.ok)
        );
    }
    s += "# HELP cairn_backup_last_success_timestamp_seconds Capture time of the last successful backup.\n# TYPE cairn_backup_last_success_timestamp_seconds gauge\n";
    for b in r.services.iter().filter(|b| b.ok) {
        s += &format!(
            "cairn_backup_last_success_timestamp_seconds{{service=\"{}\"}} {:.3}\n",
            b.service, b.captured_at
        );
    }
    s += "# HELP cairn_backup_duration_seconds Wall time of the service's backup.\n# TYPE cairn_backup_duration_seconds gauge\n";
    for b in &r.services {
        s += &format!(
            "cairn_backup_duration_seconds{{service=\"{}\"}} {:.3}\n",
            b.service, b.seconds
        );
    }
    s += "# HELP cairn_backup_bytes_read Bytes read from the service.\n# TYPE cairn_backup_bytes_read gauge\n";
    for b in &r.services {
        s += &format!(
            "cairn_backup_bytes_read{{service=\"{}\"}} {}\n",
            b.service, b.bytes_read
        );
    }
    s += "# HELP cairn_backup_bytes_added Bytes added to the repository.\n# TYPE cairn_backup_bytes_added gauge\n";
    for b in &r.services {
        s += &format!(
            "cairn_backup_bytes_added{{service=\"{}\"}} {}\n",
            b.service, b.bytes_added
        );
    }
    s += &format!(
        "# HELP cairn_backup_group_skew_seconds Capture-time skew across the group.\n# TYPE cairn_backup_group_skew_seconds gauge\ncairn_backup_group_skew_seconds {:.3}\n",
        r.skew_seconds
    );
    s
}

/// Prometheus textfile metrics for a stack restore.
pub fn restore_metrics(r: &RestoreReport) -> String {
    let mut s = String::new();
    s += "# HELP cairn_restore_success Whether the service's last restore passed.\n# TYPE cairn_restore_success gauge\n";
    for x in &r.services {
        s += &format!(
            "cairn_restore_success{{service=\"{}\"}} {}\n",
            x.service,
            u8::from(x.status == "passed")
        );
    }
    s += "# HELP cairn_restore_duration_seconds Time to restore the service (all stages).\n# TYPE cairn_restore_duration_seconds gauge\n";
    for x in &r.services {
        s += &format!(
            "cairn_restore_duration_seconds{{service=\"{}\"}} {:.3}\n",
            x.service, x.seconds
        );
    }
    s += "# HELP cairn_restore_rto_budget_seconds The service's RTO budget.\n# TYPE cairn_restore_rto_budget_seconds gauge\n";
    for x in &r.services {
        if let Some(b) = x.rto_budget_seconds {
            s += &format!(
                "cairn_restore_rto_budget_seconds{{service=\"{}\"}} {b:.3}\n",
                x.service
            );
        }
    }
    s += "# HELP cairn_restore_bytes Bytes restored.\n# TYPE cairn_restore_bytes gauge\n";
    for x in &r.services {
        s += &format!(
            "cairn_restore_bytes{{service=\"{}\"}} {}\n",
            x.service, x.bytes_restored
        );
    }
    s += &format!(
        "# HELP cairn_restore_last_timestamp_seconds Start of the last stack restore.\n# TYPE cairn_restore_last_timestamp_seconds gauge\ncairn_restore_last_timestamp_seconds {:.3}\n",
        r.started_at
    );
    s += &format!(
        "# HELP cairn_restore_wall_seconds Wall time of the last stack restore.\n# TYPE cairn_restore_wall_seconds gauge\ncairn_restore_wall_seconds {:.3}\n",
        r.wall_seconds
    );
    s
}
