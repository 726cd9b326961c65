//! One service's restore (its stages, from the preflight to the
//! post-restore hook), a restart under `--with-dependents`, verification,
//! and the critical path.

use crate::StackError;
use crate::adapters;
use crate::catalog::{Catalog, Service};
use crate::trail::{self, JournalEvent};
use cairn_format::SnapshotId;
use cairn_format::snapshot::Snapshot;
use cairn_repo::{BackupOptions, IndexedRepository, ParentChoice};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;

/// A service restarted, not restored (`--with-dependents`): its `stop`
/// ran before the restore began; now `start` and `ready`.
pub(super) fn restart_one(cx: &Ctx, svc: &Service, stopped: Option<Stage>) -> ServiceRestore {
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

pub(super) fn skipped(svc: &Service, why: String, now: f64) -> ServiceRestore {
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

pub(super) fn run_shell(svc: &Service, cmd: &str) -> Result<(), String> {
    let out = crate::tools::shell(svc, cmd)
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

/// Restore one service from its snapshot in the group: its stages in
/// order (see `restore_stages`), timed; the first that fails ends it.
pub(super) fn restore_one(
    cx: &Ctx,
    svc: &Service,
    snap: Option<(SnapshotId, Snapshot)>,
) -> ServiceRestore {
    let t0 = cx.t0;
    let start = t0.elapsed().as_secs_f64();
    let mut r = skipped(svc, String::new(), start);
    r.error = None;
    let ok = restore_stages(cx, svc, &snap, &mut r);
    r.end = t0.elapsed().as_secs_f64();
    r.seconds = r.end - r.start;
    if ok {
        r.status = Status::Passed;
        r.rto_met = svc.rto.map(|b| Duration::from_secs_f64(r.seconds) <= b);
    }
    r
}

/// Run one stage, timed and recorded in `r`, its outcome reported; a
/// failure marks the service failed, naming the stage. Whether it passed.
fn stage(
    cx: &Ctx,
    svc: &Service,
    r: &mut ServiceRestore,
    name: StageName,
    f: &mut dyn FnMut(&mut ServiceRestore) -> Result<(), String>,
) -> bool {
    let t0 = cx.t0;
    let on_event = cx.on_event;
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
}

/// Compare the live state with the snapshot, the fingerprints kept in `r`.
fn verify(cx: &Ctx, svc: &Service, r: &mut ServiceRestore, snap: &Snapshot) -> Result<(), String> {
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
}

/// The stages of a restore, from the snapshot's preflight to the journal
/// entry saying it passed. False as soon as one failed (`r` says why).
fn restore_stages(
    cx: &Ctx,
    svc: &Service,
    snap: &Option<(SnapshotId, Snapshot)>,
    r: &mut ServiceRestore,
) -> bool {
    let Some((id, snap)) = snap else {
        r.status = Status::Failed;
        r.error = Some("the group has no snapshot of this service".into());
        return false;
    };
    r.snapshot = Some(id.to_hex());
    // A resumed restore skips what completed and still verifies.
    if let Some(j) = cx.journal
        && j.passed.get(&svc.name) == Some(&id.to_hex())
        && still_verifies(cx, svc, j, snap, r)
    {
        return true;
    }
    // A snapshot that may be forged is refused before anything runs:
    // another adapter's kind (a `command` impostor of a database
    // service), a MariaDB dump without its sandbox line, a Redis dump
    // reaching outside the service's key space.
    let mut checked = None;
    if !stage(cx, svc, r, StageName::Preflight, &mut |_| {
        checked = Some(adapters::preflight(svc, cx.repo, id, snap).map_err(|e| e.to_string())?);
        Ok(())
    }) {
        return false;
    }
    if !prepare(cx, svc, r) {
        return false;
    }
    if !load_and_start(cx, svc, r, checked) {
        return false;
    }
    if !verify_and_check(cx, svc, snap, r) {
        return false;
    }
    if let Err(e) = trail::journal(
        cx.repo.repo(),
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
}

/// A service the interrupted run completed: whether it still verifies (then
/// `r` is its result, resumed). If not it is restored again, `r` keeping
/// the failed verification's stage.
fn still_verifies(
    cx: &Ctx,
    svc: &Service,
    j: &Journal,
    snap: &Snapshot,
    r: &mut ServiceRestore,
) -> bool {
    let mut rr = r.clone();
    if stage(cx, svc, &mut rr, StageName::VerifyResumed, &mut |r| {
        verify(cx, svc, r, snap)
    }) {
        rr.resumed = true;
        rr.safety_snapshot = j.prepared.get(&svc.name).cloned().flatten();
        *r = rr;
        return true;
    }
    (cx.on_event)(&format!(
        "{}: completed before the interruption but no longer verifies; restoring it again",
        svc.name
    ));
    r.stages = rr.stages;
    r.status = Status::Pending;
    r.error = None;
    false
}

/// Safety snapshot, once per restore, before anything is overwritten (or
/// the one a previous run took), then the journal entry recording it.
fn prepare(cx: &Ctx, svc: &Service, r: &mut ServiceRestore) -> bool {
    let prepared = cx.journal.and_then(|j| j.prepared.get(&svc.name).cloned());
    if let Some(p) = prepared {
        r.safety_snapshot = p;
    } else if let Some(id) = cx.existing_safety.get(&svc.name) {
        r.safety_snapshot = Some(id.clone());
    } else if cx.safety {
        if !stage(cx, svc, r, StageName::SafetySnapshot, &mut |r| {
            safety_snapshot(cx, svc, r)
        }) {
            return false;
        }
    } else {
        r.safety_note = Some("safety snapshots off".into());
    }
    if let Err(e) = trail::journal(
        cx.repo.repo(),
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
    true
}

/// The safety snapshot stage: back up what the target holds, in the
/// restore's safety group (nothing when it holds no data).
fn safety_snapshot(cx: &Ctx, svc: &Service, r: &mut ServiceRestore) -> Result<(), String> {
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
        dry_run: false,
    };
    match adapters::backup(&svc.live_view(), cx.repo, opts) {
        Ok(b) => r.safety_snapshot = Some(b.id.to_hex()),
        Err(e) if svc.kind.datastore().safety_snapshot_optional() => {
            r.safety_note = Some(format!("backup command failed: {e}"))
        }
        Err(e) => return Err(format!("{e} (nothing was overwritten)")),
    }
    Ok(())
}

/// Stop the service, load the preflighted snapshot, run the kind's
/// after-load step, start it and wait until it is ready.
fn load_and_start(
    cx: &Ctx,
    svc: &Service,
    r: &mut ServiceRestore,
    mut checked: Option<adapters::Checked<'_>>,
) -> bool {
    if let Some(stop) = &svc.stop
        && !stage(cx, svc, r, StageName::Stop, &mut |_| run_shell(svc, stop))
    {
        return false;
    }
    if !stage(cx, svc, r, StageName::FetchLoad, &mut |r| {
        let c = checked.take().ok_or("preflight did not run")?;
        let (bytes, withheld) = adapters::restore(svc, cx.repo, c).map_err(|e| e.to_string())?;
        r.bytes_restored = bytes;
        if let Some(w) = &withheld {
            (cx.on_event)(&format!("{}: withheld: {w}", svc.name));
        }
        r.withheld = withheld;
        Ok(())
    }) {
        return false;
    }
    if let Some(name) = svc.kind.datastore().after_load()
        && !stage(cx, svc, r, StageName::AfterLoad(name), &mut |_| {
            svc.kind
                .datastore()
                .run_after_load(svc)
                .map_err(|e| e.to_string())
        })
    {
        return false;
    }
    if let Some(start) = &svc.start
        && !stage(cx, svc, r, StageName::Start, &mut |_| run_shell(svc, start))
    {
        return false;
    }
    if let Some(ready) = &svc.ready
        && !stage(cx, svc, r, StageName::Ready, &mut |_| {
            crate::ready::wait(ready, svc.ready_timeout, &svc.workdir)
        })
    {
        return false;
    }
    true
}

/// Verify the restored service against its snapshot, run its own
/// invariants, then its post-restore hook.
fn verify_and_check(cx: &Ctx, svc: &Service, snap: &Snapshot, r: &mut ServiceRestore) -> bool {
    // Test hook: change the service between load and verification.
    if let Ok(hook) = std::env::var("CAIRN_TEST_HOOK_BEFORE_VERIFY") {
        let _ = crate::tools::shell(svc, &hook)
            .env("CAIRN_SERVICE", &svc.name)
            .status();
    }
    if !stage(cx, svc, r, StageName::Verify, &mut |r| {
        verify(cx, svc, r, snap)
    }) {
        return false;
    }
    if !svc.invariants.is_empty()
        && cx.invariants
        && !stage(cx, svc, r, StageName::Invariants, &mut |r| {
            service_invariants(cx, svc, r)
        })
    {
        return false;
    }
    if let Some(hook) = &svc.post_restore
        && !stage(cx, svc, r, StageName::PostRestore, &mut |_| {
            run_shell(svc, hook)
        })
    {
        return false;
    }
    true
}

/// The invariants stage: the service's own invariants, kept in `r`; an
/// error names each that did not pass.
fn service_invariants(cx: &Ctx, svc: &Service, r: &mut ServiceRestore) -> Result<(), String> {
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
}

/// Longest chain of selected services by restore time.
pub(super) fn critical_path(
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
