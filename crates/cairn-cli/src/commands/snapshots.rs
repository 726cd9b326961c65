//! `cairn snapshots` and picking a snapshot by id, `latest`, host, tag.

use super::*;

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Only this service
    #[arg(long)]
    service: Option<String>,
    /// Only snapshots with this tag (repeatable: all must match)
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Only this host
    #[arg(long)]
    host: Option<String>,
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
        .filter(|(_, s)| {
            a.service.as_ref().is_none_or(|x| &s.service == x)
                && a.host.as_ref().is_none_or(|x| &s.hostname == x)
                && a.tags.iter().all(|t| s.tags.contains(t))
        })
        .collect();
    let stored = repo.snapshot_store_times()?;
    let skew = |id: &cairn_format::SnapshotId, s: &cairn_format::snapshot::Snapshot| {
        stored
            .get(id)
            .and_then(|t| cairn_repo::forget::retention_time(id, s, *t).1)
    };
    if g.json {
        return print_json(&Value::Array(
            list.iter()
                .map(|(i, s)| {
                    let mut v = snapshot_json(i, s);
                    v["stored_time"] = json!(stored.get(i).map(|t| format_time(*t, true)));
                    v["time_warning"] = json!(skew(i, s));
                    v
                })
                .collect(),
        ))
        .map(|_| 0);
    }
    println!(
        "{:<8}  {:<20}  {:<12}  {:<12}  {:<16}  {:>10}  paths",
        "id", "time (UTC)", "host", "service", "tags", "size"
    );
    let mut warnings = Vec::new();
    for (id, s) in &list {
        let w = skew(id, s);
        let mark = if w.is_some() { "!" } else { " " };
        warnings.extend(w);
        println!(
            "{:<8}  {:<19}{mark}  {:<12}  {:<12}  {:<16}  {:>10}  {}",
            id.short(),
            format_time(s.time_ns, false),
            s.hostname,
            s.service,
            s.tags.join(","),
            human_bytes(s.summary.bytes_total),
            s.paths
                .iter()
                .map(|p| lossy(p))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!("{} snapshots", list.len());
    for w in &warnings {
        println!("! {w}");
    }
    Ok(0)
}

/// `--service`/`--host` narrowing for `latest`.
#[derive(Args, Debug, Clone)]
pub struct Pick {
    /// With `latest`: the latest snapshot of this service
    #[arg(long)]
    service: Option<String>,
    /// With `latest`: the latest snapshot of this host
    #[arg(long)]
    host: Option<String>,
}

pub(crate) fn resolve(
    repo: &Repository,
    spec: &str,
    pick: &Pick,
) -> Result<(SnapshotId, Snapshot)> {
    let f = |s: &Snapshot| {
        pick.service.as_ref().is_none_or(|x| &s.service == x)
            && pick.host.as_ref().is_none_or(|x| &s.hostname == x)
    };
    Ok(repo.resolve_snapshot(spec, &f)?)
}
