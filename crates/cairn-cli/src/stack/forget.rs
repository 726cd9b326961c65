//! `cairn stack forget`: each service's catalog retention.

use anyhow::{Result, anyhow};
use cairn_stack::catalog::Catalog;
use cairn_stack::run;
use serde_json::json;

use super::*;
use crate::GlobalArgs;

pub fn stack_forget(g: &GlobalArgs, a: StackForgetArgs) -> Result<i32> {
    let cat = Catalog::load(&a.catalog, None)?;
    let selected = cat.select(&a.only, false)?;
    let repo = open_repo(g, &cat)?;
    crate::commands::prune_would_run(&repo, &a.prune_args, a.prune, a.dry_run)?;
    let all = crate::commands::readable_snapshots(&repo)?;
    let mut report = Vec::new();
    let mut removed = 0;
    for name in &selected {
        let svc = &cat.services[name];
        let Some(ret) = &svc.retention else {
            if !g.json {
                println!("{name}: no retention in the catalog, nothing removed");
            }
            continue;
        };
        let policy = ret
            .policy()
            .map_err(|e| anyhow!("service {name}: retention: {e}"))?;
        let snaps: Vec<_> = all
            .iter()
            .filter(|(_, s)| &s.service == name && !run::is_safety(s))
            .cloned()
            .collect();
        let groups =
            crate::commands::decide(&policy, cairn_repo::forget::GroupBy::default(), snaps);
        let (n, v) =
            crate::commands::execute(g, &repo, &groups, a.dry_run, false, &format!("{name}: "))?;
        removed += n;
        report.push(json!({"service": name, "removed": n, "groups": v}));
    }
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"dry_run": a.dry_run, "removed": removed, "services": report})
            )?
        );
    }
    if a.prune {
        return crate::commands::run_prune(g, repo, &a.prune_args, a.dry_run);
    }
    Ok(0)
}
