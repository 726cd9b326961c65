//! `cairn repair`: index, snapshots.

use anyhow::Result;
use serde_json::json;

use crate::GlobalArgs;

#[derive(clap::Subcommand, Debug)]
pub enum RepairCmd {
    /// Rebuild the index from the pack headers (replaces every index object)
    Index {
        /// Report only
        #[arg(long)]
        dry_run: bool,
    },
    /// Write repaired copies of damaged snapshots (originals kept until forgotten)
    Snapshots {
        /// Report only
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn repair_cmd(g: &GlobalArgs, cmd: RepairCmd) -> Result<i32> {
    let repo = crate::commands::open_uncached(g)?;
    match cmd {
        RepairCmd::Index { dry_run } => {
            let r = repo.repair_index(dry_run)?;
            if g.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"dry_run": dry_run, "packs_indexed": r.packs_indexed, "blobs_indexed": r.blobs_indexed, "unreadable_packs": r.unreadable_packs, "indexes_replaced": r.indexes_replaced})
                    )?
                );
            } else {
                for u in &r.unreadable_packs {
                    eprintln!("unreadable pack (its blobs cannot be indexed): {u}");
                }
                println!(
                    "{} {} packs ({} blobs) from their headers, replacing {} index objects",
                    if dry_run { "would index" } else { "indexed" },
                    r.packs_indexed,
                    r.blobs_indexed,
                    r.indexes_replaced
                );
            }
            Ok(if r.unreadable_packs.is_empty() {
                0
            } else {
                crate::EXIT_WARNINGS
            })
        }
        RepairCmd::Snapshots { dry_run } => {
            let r = repo.repair_snapshots(dry_run)?;
            if g.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "dry_run": dry_run,
                        "untouched": r.untouched,
                        "repaired": r.repaired.iter().map(|(o, n)| json!({"original": o.to_hex(), "repaired": n.map(|n| n.to_hex())})).collect::<Vec<_>>(),
                        "removed": r.removed.iter().map(|(o, p)| json!({"snapshot": o.to_hex(), "paths": p})).collect::<Vec<_>>(),
                        "unreadable": r.unreadable.iter().map(|(o, why)| json!({"object": o, "detail": why, "removed": !dry_run})).collect::<Vec<_>>(),
                    }))?
                );
            } else {
                for (o, why) in &r.unreadable {
                    println!(
                        "{} {o}: unreadable ({why})",
                        if dry_run { "would remove" } else { "removed" }
                    );
                }
                for (o, paths) in &r.removed {
                    println!(
                        "snapshot {}: {} damaged entries left out: {}",
                        o.short(),
                        paths.len(),
                        paths.join(", ")
                    );
                }
                for (o, n) in &r.repaired {
                    match n {
                        Some(n) => println!(
                            "snapshot {} repaired as {} (tag: repaired); forget the original when done",
                            o.short(),
                            n.short()
                        ),
                        None => println!("snapshot {} would be repaired", o.short()),
                    }
                }
                println!("{} snapshots were not affected", r.untouched);
            }
            Ok(0)
        }
    }
}
