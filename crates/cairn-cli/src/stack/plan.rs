//! `cairn stack plan`: the order a restore would take, and what it overwrites.

use std::collections::BTreeSet;

use anyhow::Result;
use cairn_repo::IndexedRepository;
use cairn_stack::catalog::Catalog;
use cairn_stack::run;

use super::*;
use crate::GlobalArgs;
use crate::util::format_time;

/// Print (or give as JSON) the plan of a restore.
pub(super) fn plan(
    g: &GlobalArgs,
    a: &StackArgs,
    cat: &Catalog,
    repo: &IndexedRepository,
    selected: &BTreeSet<String>,
) -> Result<i32> {
    let p = run::plan(cat, repo, &a.group, selected)?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        for n in &p.notes {
            eprintln!("note: {n}");
        }
        match &p.group {
            Some(gid) => println!("group {gid}, environment {}", p.env),
            None => println!("no group to restore yet, environment {}", p.env),
        }
        for (i, w) in p.waves.iter().enumerate() {
            println!("wave {}:", i + 1);
            for name in w {
                let e = p
                    .services
                    .iter()
                    .find(|e| &e.service == name)
                    .expect("entry");
                println!(
                    "  {name} ({}) <- snapshot {} {}",
                    e.kind,
                    e.snapshot.as_deref().map(|s| &s[..8]).unwrap_or("MISSING"),
                    e.snapshot_time_ns
                        .map(|t| format_time(t, false))
                        .unwrap_or_default()
                );
                println!("      overwrites {}", e.overwrites);
                if !e.depends_on.is_empty() {
                    println!("      after {}", e.depends_on.join(", "));
                }
            }
        }
    }
    Ok(0)
}
