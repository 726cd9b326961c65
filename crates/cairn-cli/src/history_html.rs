//! `cairn stack history --html`: one self-contained page (inline SVG chart,
//! inline CSS, no scripts, no external resources) of restore and drill
//! times per service.

use std::collections::BTreeMap;
use std::fmt::Write;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// The page for `rows` (history rows as JSON) and `summary` (per service).
pub fn page(rows: &serde_json::Value, summary: &[serde_json::Value]) -> String {
    let rows: Vec<&serde_json::Value> = rows
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    // Runs in time order define the x axis.
    let mut runs: Vec<(f64, String)> = rows
        .iter()
        .map(|r| {
            (
                r["time"].as_f64().unwrap_or(0.0),
                r["restore_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    runs.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    runs.dedup_by(|a, b| a.1 == b.1);
    let x_of: BTreeMap<&str, usize> = runs
        .iter()
        .enumerate()
        .map(|(i, (_, id))| (id.as_str(), i))
        .collect();
    let mut series: BTreeMap<&str, Vec<(usize, f64, bool, &str)>> = BTreeMap::new();
    let mut budgets: BTreeMap<&str, f64> = BTreeMap::new();
    let mut ymax: f64 = 1.0;
    for r in &rows {
        let s = r["service"].as_str().unwrap_or_default();
        let x = x_of[r["restore_id"].as_str().unwrap_or_default()];
        let y = r["seconds"].as_f64().unwrap_or(0.0);
        ymax = ymax.max(y);
        if let Some(b) = r["budget"].as_f64() {
            budgets.insert(s, b);
        }
        series.entry(s).or_default().push((
            x,
            y,
            r["status"] == "passed",
            r["kind"].as_str().unwrap_or_default(),
        ));
    }
    // Scaled to the times; budgets far above them are named in the legend
    // instead of flattening every line to the axis.
    let ymax = ymax * 1.25;
    let (w, h, l, rpad, t, b) = (960.0, 420.0, 60.0, 240.0, 30.0, 50.0);
    let pw = w - l - rpad;
    let ph = h - t - b;
    let n = runs.len().max(2) as f64 - 1.0;
    let px = |x: usize| l + pw * (x as f64) / n;
    let py = |y: f64| t + ph * (1.0 - y / ymax);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="restore time per service">"#
    );
    let _ = write!(
        svg,
        r##"<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>"##
    );
    for i in 0..=4 {
        let y = ymax * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{l}" x2="{0}" y1="{1:.1}" y2="{1:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" font-size="11" text-anchor="end">{y:.1}s</text>"##,
            l + pw,
            py(y),
            l - 6.0,
            py(y) + 4.0
        );
    }
    for (i, (time, id)) in runs.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle"><title>{}</title>{}</text>"#,
            px(i),
            t + ph + 16.0,
            esc(id),
            esc(&crate_time(*time))
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">restore / drill (time, UTC)</text>"#,
        l + pw / 2.0,
        h - 8.0
    );
    for (k, (s, pts)) in series.iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y, _, _)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for (x, y, ok, kind) in pts {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}" stroke="{c}" stroke-width="2"><title>{} {kind}: {y:.2}s{}</title></circle>"#,
                px(*x),
                py(*y),
                if *ok { c } else { "white" },
                esc(s),
                if *ok { "" } else { " (failed)" }
            );
        }
        if let Some(bud) = budgets.get(s).filter(|b| **b <= ymax) {
            let _ = write!(
                svg,
                r#"<line x1="{l}" x2="{0}" y1="{1:.1}" y2="{1:.1}" stroke="{c}" stroke-dasharray="6 4" opacity="0.6"><title>{2} RTO budget {bud:.0}s</title></line>"#,
                l + pw,
                py(*bud),
                esc(s)
            );
        }
        let ly = t + 14.0 + 18.0 * k as f64;
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="12" height="12" fill="{c}"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            l + pw + 14.0,
            ly - 10.0,
            l + pw + 32.0,
            ly,
            esc(&match budgets.get(s) {
                Some(b) => format!("{s} (budget {b:.0}s)"),
                None => s.to_string(),
            })
        );
    }
    svg += "</svg>";

    let mut table = String::from(
        "<table><tr><th>service</th><th>runs</th><th>last</th><th>budget</th><th>trend</th><th>last vs median</th></tr>",
    );
    for s in summary {
        let f = |v: &serde_json::Value, unit: &str, signed: bool| {
            v.as_f64()
                .map(|x| {
                    if signed {
                        format!("{x:+.2}{unit}")
                    } else {
                        format!("{x:.2}{unit}")
                    }
                })
                .unwrap_or_else(|| "–".into())
        };
        let _ = write!(
            table,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(s["service"].as_str().unwrap_or_default()),
            s["runs"],
            f(&s["last_seconds"], " s", false),
            f(&s["budget_seconds"], " s", false),
            f(&s["slope_seconds_per_run"], " s/run", true),
            f(&s["last_vs_median_percent"], " %", true),
        );
    }
    table += "</table>";
    let mut runs_table = String::from(
        "<table><tr><th>when (UTC)</th><th>kind</th><th>restore</th><th>env</th><th>service</th><th>status</th><th>seconds</th><th>budget</th></tr>",
    );
    for r in &rows {
        let _ = write!(
            runs_table,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td></tr>",
            esc(r["status"].as_str().unwrap_or_default()),
            esc(r["when"].as_str().unwrap_or_default()),
            esc(r["kind"].as_str().unwrap_or_default()),
            esc(r["restore_id"].as_str().unwrap_or_default()),
            esc(r["env"].as_str().unwrap_or_default()),
            esc(r["service"].as_str().unwrap_or_default()),
            esc(r["status"].as_str().unwrap_or_default()),
            r["seconds"].as_f64().unwrap_or(0.0),
            r["budget"]
                .as_f64()
                .map(|b| format!("{b:.0}"))
                .unwrap_or_else(|| "–".into())
        );
    }
    runs_table += "</table>";
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cairn restore history</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0 24px; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
th {{ background: #f0f0f0; }}
tr.failed td {{ color: #b00; }}
</style></head><body>
<h1>Restore time per service</h1>
<p>Every restore, rollback and drill in the repository's audit trail. Filled dots passed, open dots failed; dashed lines are RTO budgets.</p>
{svg}
<h2>Trend</h2>
{table}
<h2>Runs</h2>
{runs_table}
</body></html>
"#
    )
}

fn crate_time(t: f64) -> String {
    let s = cairn_stack::run::rfc3339(t);
    // "YYYY-MM-DDTHH:MM:SSZ" → "MM-DD HH:MM"
    format!("{} {}", &s[5..10], &s[11..19])
}
