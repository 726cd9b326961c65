//! `cairn stack audit`: the hash-chained audit trail.

use anyhow::{Context, Result, bail};
use cairn_repo::Repository;
use cairn_stack::run;
use cairn_stack::trail;
use serde_json::json;

use super::*;
use crate::GlobalArgs;

/// Append an audit record (anchored in this host's state directory).
pub fn audit_append(
    repo: &Repository,
    kind: &str,
    summary: String,
    details: serde_json::Value,
) -> Result<()> {
    trail::append(
        repo,
        kind,
        summary,
        details,
        trail::default_state_dir().as_deref(),
    )
    .context("the operation finished but its audit record could not be written")?;
    Ok(())
}

pub fn audit(g: &GlobalArgs, a: AuditArgs) -> Result<i32> {
    let g = &globals_with(g, &a.catalog)?;
    // Never through the cache: the stored objects are what is judged.
    let repo = crate::commands::open_uncached(g)?;
    let entries = trail::load(&repo)?;
    let problems = if a.verify {
        trail::verify(&repo, &entries, trail::default_state_dir().as_deref())
    } else {
        vec![]
    };
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "records": entries,
                "verified": a.verify.then_some(problems.is_empty()),
                "problems": problems,
            }))?
        );
    } else {
        for e in &entries {
            match &e.record {
                Some(r) => println!(
                    "{:>5}  {}  {}  {:<8} {}@{}  {}",
                    r.seq,
                    &e.id[..16],
                    run::rfc3339(r.time),
                    r.kind,
                    r.user,
                    r.host,
                    r.summary
                ),
                None => println!(
                    "    ?  {}  DAMAGED: {}",
                    &e.id[..16],
                    e.damaged.as_deref().unwrap_or("")
                ),
            }
        }
        if a.verify {
            for p in &problems {
                eprintln!("{p}");
            }
            if problems.is_empty() {
                println!(
                    "audit trail intact: {} records, hash chain complete",
                    entries.len()
                );
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "audit trail verification failed: {} problem(s)",
            problems.len()
        );
    }
    Ok(0)
}
