//! `cairn check`: structure, `--read-data`, keyless.

use anyhow::{Result, bail};
use cairn_repo::check::{CheckReport, ReadData, check_keyless};
use clap::Args;
use serde_json::json;

use crate::GlobalArgs;
use crate::util::human_bytes;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Download every pack and authenticate every blob
    #[arg(long)]
    read_data: bool,
    /// Read only part of the data: N/M (group N of M, by pack id) or P% (random)
    #[arg(long, value_parser = parse_subset)]
    read_data_subset: Option<ReadData>,
    /// Without the password: hash every object against its name, decrypt nothing
    #[arg(long)]
    no_password: bool,
}

fn parse_subset(s: &str) -> Result<ReadData, String> {
    if let Some(p) = s.strip_suffix('%') {
        let f: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("bad percentage {s:?}"))?;
        if !(0.0..=100.0).contains(&f) {
            return Err(format!("{s:?} is not between 0% and 100%"));
        }
        return Ok(ReadData::Fraction(f / 100.0));
    }
    let (n, m) = s
        .split_once('/')
        .ok_or_else(|| format!("use N/M or P%, not {s:?}"))?;
    let (n, m): (u32, u32) = (
        n.trim().parse().map_err(|_| format!("bad N in {s:?}"))?,
        m.trim().parse().map_err(|_| format!("bad M in {s:?}"))?,
    );
    if m == 0 || n == 0 || n > m {
        return Err(format!("{s:?}: need 1 <= N <= M"));
    }
    Ok(ReadData::Subset(n, m))
}

pub fn check_cmd(g: &GlobalArgs, a: CheckArgs) -> Result<i32> {
    let read = match (a.read_data, a.read_data_subset) {
        (true, Some(_)) => bail!("give --read-data or --read-data-subset, not both"),
        (true, None) => ReadData::All,
        (false, Some(s)) => s,
        (false, None) => ReadData::None,
    };
    let report: CheckReport = if a.no_password {
        check_keyless(&crate::commands::backend(g, false, false)?)?
    } else {
        let stage = cairn_repo::Stage::default();
        let ticker = crate::util::Ticker::stage(!g.quiet && !g.json, stage.clone());
        let r = crate::commands::open_uncached(g)?.check_with_progress(read, Some(stage));
        drop(ticker);
        r?
    };
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "ok": report.ok(),
                "problems": report.problems.iter().map(|p| json!({"object": p.object, "detail": p.detail})).collect::<Vec<_>>(),
                "affected_snapshots": report.affected.iter().map(|(id, paths)| json!({"snapshot": id.to_hex(), "paths": paths})).collect::<Vec<_>>(),
                "notes": report.notes,
                "snapshots": report.snapshots, "packs": report.packs, "packs_read": report.packs_read,
                "blobs_read": report.blobs_read, "bytes_read": report.bytes_read,
                "objects_hashed": report.objects_hashed,
                "not_judged": report.unjudged,
            }))?
        );
    } else {
        for n in &report.notes {
            println!("note: {n}");
        }
        for p in &report.problems {
            eprintln!("damaged: {}: {}", p.object, p.detail);
        }
        for (id, paths) in &report.affected {
            eprintln!("affected snapshot {}: {}", id.short(), paths.join(", "));
        }
        println!(
            "checked {} snapshots, {} packs{}",
            report.snapshots,
            report.packs,
            if report.packs_read > 0 {
                format!(
                    "; read {} packs ({}), {} blobs authenticated",
                    report.packs_read,
                    human_bytes(report.bytes_read),
                    report.blobs_read
                )
            } else {
                String::new()
            }
        );
        if a.no_password {
            println!(
                "{} hash-named objects compared with their names: {}",
                report.objects_hashed,
                if report.ok() {
                    "all match"
                } else {
                    "some do not (listed above)"
                }
            );
            for u in &report.unjudged {
                println!("not judged without the password: {u}");
            }
            println!("run `cairn check` with the password for a full check");
        } else if report.ok() {
            println!("no errors were found");
        }
    }
    if !report.ok() {
        bail!(
            "the repository is damaged: {} problems (listed above)",
            report.problems.len()
        );
    }
    Ok(0)
}
