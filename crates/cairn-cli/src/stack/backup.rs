//! `cairn stack backup`: every selected service into one group.

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use cairn_repo::IndexedRepository;
use cairn_stack::catalog::Catalog;
use cairn_stack::run;

use super::*;
use crate::GlobalArgs;
use crate::util::human_bytes;

/// Back up the selected services, print or write the report, audit it.
pub(super) fn backup(
    g: &GlobalArgs,
    a: &StackArgs,
    cat: &Catalog,
    repo: &IndexedRepository,
    selected: &BTreeSet<String>,
    jobs: usize,
) -> Result<i32> {
    let (host, user) = cairn_repo::whoami();
    let r = run::stack_backup(cat, repo, selected, jobs, &host, &user);
    for p in &r.stale_temps_removed {
        eprintln!("removed {p}: a temporary copy an interrupted run left");
    }
    let v = serde_json::to_value(&r)?;
    let failed_n = r.services.iter().filter(|s| !s.ok).count();
    audit_append(
        repo.repo(),
        "backup",
        format!(
            "stack backup of group {} ({} services, {} failed)",
            &r.group[..8],
            r.services.len(),
            failed_n
        ),
        v.clone(),
    )?;
    write_out(&a.report, &serde_json::to_string_pretty(&v)?)?;
    write_out(&a.metrics_file, &run::backup_metrics(&r))?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("group {}", &r.group);
        println!(
            "{:<20} {:<6} {:>9} {:>12} {:>12}  snapshot",
            "service", "status", "seconds", "read", "added"
        );
        for s in &r.services {
            println!(
                "{:<20} {:<6} {:>9.2} {:>12} {:>12}  {}",
                s.service,
                if s.ok { "ok" } else { "FAILED" },
                s.seconds,
                human_bytes(s.bytes_read),
                human_bytes(s.bytes_added),
                s.snapshot.as_deref().map(|x| &x[..8]).unwrap_or("-")
            );
            if let Some(e) = &s.error {
                eprintln!("  {}: {e}", s.service);
            }
        }
        println!(
            "capture skew across the group: {:.2}s; total {:.2}s",
            r.skew_seconds, r.seconds
        );
    }
    let failed = r.services.iter().filter(|s| !s.ok).count();
    if failed > 0 {
        bail!(
            "{failed} of {} services failed to back up (the others' snapshots are committed)",
            r.services.len()
        );
    }
    Ok(0)
}
