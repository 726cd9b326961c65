//! `cairn snapshots` and picking a snapshot by id, `latest`, host, tag.

use super::*;
use cairn_repo::forget::PROTECTED_TAG;

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pick: Pick,
    /// Only the latest N snapshots of each group (without --group-by: of
    /// each host and set of paths)
    #[arg(long, value_name = "N")]
    latest: Option<usize>,
    /// Group by these fields (any of service,host,paths,tags): the table
    /// gets a heading per group, --json an array of groups
    #[arg(long, value_name = "FIELDS", value_parser = cairn_repo::forget::GroupBy::parse)]
    group_by: Option<cairn_repo::forget::GroupBy>,
}

/// The readable snapshots; each unreadable object is a warning naming it
/// (`check` fails on it, `repair snapshots` removes it).
pub fn readable_snapshots(repo: &Repository) -> Result<Vec<(SnapshotId, Snapshot)>> {
    let (list, bad) = repo.list_snapshots_readable()?;
    for e in &bad {
        eprintln!(
            "warning: skipped an unreadable snapshot object: {e} (`cairn repair snapshots` removes it)"
        );
    }
    Ok(list)
}

pub fn snapshots(g: &GlobalArgs, a: SnapshotsArgs) -> Result<i32> {
    let repo = open(g)?;
    let list: Vec<_> = readable_snapshots(&repo)?
        .into_iter()
        .filter(|(_, s)| a.pick.matches(s))
        .collect();
    // Groups (one without --group-by), each cut to its latest N.
    // --latest alone counts per host and paths, as restic's does.
    let group_by = a.group_by.unwrap_or(cairn_repo::forget::GroupBy {
        service: false,
        host: a.latest.is_some(),
        paths: a.latest.is_some(),
        tags: false,
    });
    let mut groups: std::collections::BTreeMap<String, Vec<(SnapshotId, Snapshot)>> =
        std::collections::BTreeMap::new();
    for (id, s) in list {
        groups.entry(group_by.key(&s)).or_default().push((id, s));
    }
    if let Some(n) = a.latest {
        for v in groups.values_mut() {
            let cut = v.len().saturating_sub(n);
            v.drain(..cut);
        }
    }
    let stored = repo.snapshot_store_times()?;
    let skew = |id: &cairn_format::SnapshotId, s: &cairn_format::snapshot::Snapshot| {
        stored
            .get(id)
            .and_then(|t| cairn_repo::forget::retention_time(id, s, *t).1)
    };
    let rows_json = |list: &[(SnapshotId, Snapshot)]| {
        Value::Array(
            list.iter()
                .map(|(i, s)| {
                    let mut v = snapshot_json(i, s);
                    v["stored_time"] = json!(stored.get(i).map(|t| format_time(*t, true)));
                    v["time_warning"] = json!(skew(i, s));
                    v
                })
                .collect(),
        )
    };
    if g.json {
        if a.group_by.is_some() {
            let v: Vec<Value> = groups
                .values()
                .map(|list| {
                    json!({"group": super::forget::group_json(group_by, &list[0].1), "snapshots": rows_json(list)})
                })
                .collect();
            return print_json(&Value::Array(v)).map(|_| 0);
        }
        let all: Vec<(SnapshotId, Snapshot)> = groups.into_values().flatten().collect();
        return print_json(&rows_json(&all)).map(|_| 0);
    }
    println!(
        "{:<9} {:<20}  {:<12}  {:<12}  {:<16}  {:>10}  paths",
        "id", "time (UTC)", "host", "service", "tags", "size"
    );
    let mut warnings = Vec::new();
    let mut any_protected = false;
    let mut count = 0;
    for (key, list) in &groups {
        if a.group_by.is_some() {
            println!("group {key}:");
        }
        for (id, s) in list {
            count += 1;
            let w = skew(id, s);
            let mark = if w.is_some() { "!" } else { " " };
            warnings.extend(w);
            let protected = s.tags.iter().any(|t| t == PROTECTED_TAG);
            any_protected |= protected;
            let tags: Vec<&str> = s
                .tags
                .iter()
                .filter(|t| *t != PROTECTED_TAG)
                .map(String::as_str)
                .collect();
            println!(
                "{:<8}{} {:<19}{mark}  {:<12}  {:<12}  {:<16}  {:>10}  {}",
                id.short(),
                if protected { "*" } else { " " },
                format_time(s.time_ns, false),
                s.hostname,
                s.service,
                tags.join(","),
                human_bytes(s.summary.bytes_total),
                s.paths
                    .iter()
                    .map(|p| lossy(p))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
    println!("{count} snapshots");
    if any_protected {
        println!("* protected from forget (cairn tag --unprotect)");
    }
    for w in &warnings {
        println!("! {w}");
    }
    Ok(0)
}

/// Which snapshots a command considers: `--service`, `--host`, `--tag` and
/// `--path` narrow ids and `latest` alike. Without `--host`, `--service` or
/// `--all-hosts`, `latest` is the latest snapshot of this host
/// (`CAIRN_HOST`, else the host name): `tag latest` on one machine never
/// changes another's snapshot. A service's snapshots are found on any host
/// (the service may have moved).
#[derive(Args, Debug, Clone, Default)]
pub struct Pick {
    /// Only snapshots of this service
    #[arg(long)]
    pub service: Option<String>,
    /// Only snapshots from this host (repeatable: any of them); `latest`
    /// defaults to this host's unless --service or --all-hosts is given
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// With `latest`: the latest snapshot of any host
    #[arg(long, conflicts_with = "hosts")]
    pub all_hosts: bool,
    /// Only snapshots with this tag (repeatable: all must match)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Only snapshots that backed up this path (repeatable: each must be
    /// one of the snapshot's paths)
    #[arg(long = "path")]
    pub paths: Vec<String>,
}

impl Pick {
    /// Whether `s` passes the filters (the host default of `latest` aside).
    pub fn matches(&self, s: &Snapshot) -> bool {
        self.service.as_ref().is_none_or(|x| &s.service == x)
            && (self.hosts.is_empty() || self.hosts.contains(&s.hostname))
            && self.tags.iter().all(|t| s.tags.contains(t))
            && self.paths.iter().all(|p| {
                let p = cairn_repo::normalize_snapshot_path(p.as_bytes());
                s.paths
                    .iter()
                    .any(|x| cairn_repo::normalize_snapshot_path(x) == p)
            })
    }

    /// The host `latest` is narrowed to by default, if it is.
    fn default_host(&self) -> Option<String> {
        (self.hosts.is_empty() && self.service.is_none() && !self.all_hosts).then(this_host)
    }
}

/// This machine's name as snapshots record it: `CAIRN_HOST`, else the host
/// name.
pub fn this_host() -> String {
    std::env::var("CAIRN_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| cairn_repo::whoami().0)
}

/// The snapshots a command acts on: those `specs` name (see
/// [`resolve_all`]), or, when none is given, every readable snapshot the
/// filters let through.
pub(crate) fn named_or_all(
    repo: &Repository,
    specs: &[String],
    pick: &Pick,
) -> Result<Vec<(SnapshotId, Snapshot)>> {
    if !specs.is_empty() {
        return resolve_all(repo, specs, pick);
    }
    Ok(readable_snapshots(repo)?
        .into_iter()
        .filter(|(_, s)| pick.matches(s))
        .collect())
}

/// Each of `specs` resolved, a snapshot named twice (`ID latest`) once, in
/// the order first named.
pub(crate) fn resolve_all(
    repo: &Repository,
    specs: &[String],
    pick: &Pick,
) -> Result<Vec<(SnapshotId, Snapshot)>> {
    let mut out: Vec<(SnapshotId, Snapshot)> = Vec::new();
    for spec in specs {
        let (id, s) = resolve(repo, spec, pick)?;
        if !out.iter().any(|(x, _)| *x == id) {
            out.push((id, s));
        }
    }
    Ok(out)
}

pub(crate) fn resolve(
    repo: &Repository,
    spec: &str,
    pick: &Pick,
) -> Result<(SnapshotId, Snapshot)> {
    let host = (spec == "latest").then(|| pick.default_host()).flatten();
    let f = |s: &Snapshot| pick.matches(s) && host.as_ref().is_none_or(|h| &s.hostname == h);
    match (repo.resolve_snapshot(spec, &f), &host) {
        (Err(e), Some(h)) => {
            // Say whose latest there is instead.
            if let Ok((id, other)) = repo.resolve_snapshot(spec, &|s| pick.matches(s)) {
                bail!(
                    "no snapshot of this host ({h}) matches latest; the latest of any host is {} of host {:?}: pass --host {:?} or --all-hosts",
                    id.short(),
                    other.hostname,
                    other.hostname
                );
            }
            Err(e.into())
        }
        (r, _) => Ok(r?),
    }
}
