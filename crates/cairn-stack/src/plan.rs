//! Which group a restore takes, and `stack plan`: the waves, per service
//! the snapshot and what it would overwrite. Touches nothing.

use std::collections::{BTreeMap, BTreeSet};

use cairn_format::SnapshotId;
use cairn_format::id::to_hex;
use cairn_format::snapshot::Snapshot;
use cairn_repo::IndexedRepository;
use serde::Serialize;

use crate::StackError;
use crate::catalog::{Catalog, Service};
use crate::report::kind_name;
use crate::time::rfc3339;

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
pub(crate) const FUTURE_TOLERANCE_NS: i64 = 10 * 60 * 1_000_000_000;

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
    let all = repo.repo().list_snapshots_readable()?.0;
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
    let received = repo.repo().snapshot_store_times()?;
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

/// What a restore of a service would overwrite.
pub fn describe_target(s: &Service) -> String {
    s.kind.datastore().describe(s)
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
