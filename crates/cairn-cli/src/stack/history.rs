//! `cairn stack history`: RTO per service across restores and drills.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use cairn_repo::Repository;
use cairn_stack::run;
use cairn_stack::trail;
use serde_json::json;

use super::*;
use crate::GlobalArgs;

/// One service's restore in the history.
#[derive(serde::Serialize, Clone)]
pub(crate) struct HistoryRow {
    time: f64,
    when: String,
    kind: String,
    restore_id: String,
    env: String,
    service: String,
    status: String,
    seconds: f64,
    budget: Option<f64>,
    verified: Option<bool>,
}

pub(crate) fn history_rows(repo: &Repository, only: Option<&str>) -> Result<Vec<HistoryRow>> {
    let mut rows = Vec::new();
    for e in trail::load(repo)? {
        let Some(r) = e.record else { continue };
        if !["restore", "rollback", "drill"].contains(&r.kind.as_str()) {
            continue;
        }
        let d = &r.details;
        for s in d["services"].as_array().into_iter().flatten() {
            let name = s["service"].as_str().unwrap_or_default().to_string();
            if only.is_some_and(|o| o != name) || s["status"] == "skipped" {
                continue;
            }
            rows.push(HistoryRow {
                time: r.time,
                when: run::rfc3339(r.time),
                kind: r.kind.clone(),
                restore_id: d["restore_id"].as_str().unwrap_or_default().to_string(),
                env: d["env"].as_str().unwrap_or_default().to_string(),
                service: name,
                status: s["status"].as_str().unwrap_or_default().to_string(),
                seconds: s["seconds"].as_f64().unwrap_or(0.0),
                budget: s["rto_budget_seconds"].as_f64(),
                verified: s["fingerprint"]["verified"].as_bool(),
            });
        }
    }
    Ok(rows)
}

/// Trend of a service's passed restore times: the least-squares slope in
/// seconds per run, and the last time against the median of the earlier ones.
pub(crate) fn trend(times: &[f64]) -> (Option<f64>, Option<f64>) {
    if times.len() < 2 {
        return (None, None);
    }
    let n = times.len() as f64;
    let mx = (n - 1.0) / 2.0;
    let my = times.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in times.iter().enumerate() {
        num += (i as f64 - mx) * (y - my);
        den += (i as f64 - mx).powi(2);
    }
    let mut earlier = times[..times.len() - 1].to_vec();
    earlier.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let med = earlier[earlier.len() / 2];
    let last = times[times.len() - 1];
    (
        Some(num / den),
        (med > 0.0).then(|| (last - med) / med * 100.0),
    )
}

pub fn history(g: &GlobalArgs, a: HistoryArgs) -> Result<i32> {
    let g = &globals_with(g, &a.catalog)?;
    let repo = crate::commands::open(g)?;
    let rows = history_rows(&repo, a.service.as_deref())?;
    let mut by: BTreeMap<String, Vec<&HistoryRow>> = BTreeMap::new();
    for r in &rows {
        by.entry(r.service.clone()).or_default().push(r);
    }
    let summary: Vec<serde_json::Value> = by
        .iter()
        .map(|(s, rs)| {
            let passed: Vec<f64> = rs
                .iter()
                .filter(|r| r.status == "passed")
                .map(|r| r.seconds)
                .collect();
            let (slope, change) = trend(&passed);
            json!({
                "service": s,
                "runs": rs.len(),
                "passed": passed.len(),
                "last_seconds": rs.last().map(|r| r.seconds),
                "budget_seconds": rs.last().and_then(|r| r.budget),
                "slope_seconds_per_run": slope,
                "last_vs_median_percent": change,
            })
        })
        .collect();
    if let Some(p) = &a.html {
        std::fs::write(p, crate::history_html::page(&rows_json(&rows), &summary))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"runs": rows, "services": summary}))?
        );
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no restores or drills in the audit trail yet");
        return Ok(0);
    }
    println!(
        "{:<21} {:<8} {:<17} {:<10} {:<20} {:<7} {:>9} {:>8}",
        "when", "kind", "restore", "env", "service", "status", "seconds", "budget"
    );
    for r in &rows {
        println!(
            "{:<21} {:<8} {:<17} {:<10} {:<20} {:<7} {:>9.2} {:>8}",
            r.when,
            r.kind,
            r.restore_id,
            r.env,
            r.service,
            r.status,
            r.seconds,
            r.budget
                .map(|b| format!("{b:.0}s"))
                .unwrap_or_else(|| "-".into())
        );
    }
    println!();
    for s in &summary {
        println!(
            "{:<20} {} runs, last {:.2}s{}{}",
            s["service"].as_str().unwrap_or_default(),
            s["runs"],
            s["last_seconds"].as_f64().unwrap_or(0.0),
            s["slope_seconds_per_run"]
                .as_f64()
                .map(|x| format!(", trend {x:+.2}s per run"))
                .unwrap_or_default(),
            s["last_vs_median_percent"]
                .as_f64()
                .map(|x| format!(", last vs median of earlier {x:+.0}%"))
                .unwrap_or_default()
        );
    }
    Ok(0)
}

pub(crate) fn rows_json(rows: &[HistoryRow]) -> serde_json::Value {
    serde_json::to_value(rows).unwrap_or_default()
}
