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
    let svg = chart(&rows);
    let table = trend_table(summary);
    let runs_table = runs_table(&rows);
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

/// What the chart shows: the runs in time order (the x axis), each
/// service's points (run, seconds, passed, kind), its RTO budget, and the
/// longest time.
struct ChartData<'a> {
    runs: Vec<(f64, String)>,
    series: BTreeMap<&'a str, Vec<(usize, f64, bool, &'a str)>>,
    budgets: BTreeMap<&'a str, f64>,
    ymax: f64,
}

/// Where the chart draws: its size, the plot area, and the scales.
struct Plot {
    w: f64,
    h: f64,
    l: f64,
    t: f64,
    pw: f64,
    ph: f64,
    n: f64,
    ymax: f64,
}

impl Plot {
    /// The x coordinate of run `x`.
    fn px(&self, x: usize) -> f64 {
        let (l, pw, n) = (self.l, self.pw, self.n);
        l + pw * (x as f64) / n
    }

    /// The y coordinate of `y` seconds.
    fn py(&self, y: f64) -> f64 {
        let (t, ph, ymax) = (self.t, self.ph, self.ymax);
        t + ph * (1.0 - y / ymax)
    }
}

/// The inline SVG chart: seconds per run, one line per service.
fn chart(rows: &[&serde_json::Value]) -> String {
    let d = chart_data(rows);
    // Scaled to the times; budgets far above them are named in the legend
    // instead of flattening every line to the axis.
    let ymax = d.ymax * 1.25;
    let (w, h, l, rpad, t, b) = (960.0, 420.0, 60.0, 240.0, 30.0, 50.0);
    let pw = w - l - rpad;
    let ph = h - t - b;
    let n = d.runs.len().max(2) as f64 - 1.0;
    let p = Plot {
        w,
        h,
        l,
        t,
        pw,
        ph,
        n,
        ymax,
    };
    let mut svg = String::new();
    axes(&mut svg, &p, &d.runs);
    for (k, (s, pts)) in d.series.iter().enumerate() {
        service_line(&mut svg, &p, k, s, pts, &d.budgets);
    }
    svg += "</svg>";
    svg
}

/// The rows as the chart's data.
fn chart_data<'a>(rows: &[&'a serde_json::Value]) -> ChartData<'a> {
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
    for r in rows {
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
    ChartData {
        runs,
        series,
        budgets,
        ymax,
    }
}

/// The chart's frame: the SVG element, the plot area, the seconds grid,
/// the runs' labels and the x axis' title.
fn axes(svg: &mut String, p: &Plot, runs: &[(f64, String)]) {
    let Plot {
        w,
        h,
        l,
        t,
        pw,
        ph,
        ymax,
        ..
    } = *p;
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
            p.py(y),
            l - 6.0,
            p.py(y) + 4.0
        );
    }
    for (i, (time, id)) in runs.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle"><title>{}</title>{}</text>"#,
            p.px(i),
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
}

/// One service's line, its points (open when failed), its RTO budget (when
/// within the scale) and its legend entry; `k` is its place in the legend.
fn service_line(
    svg: &mut String,
    p: &Plot,
    k: usize,
    s: &str,
    pts: &[(usize, f64, bool, &str)],
    budgets: &BTreeMap<&str, f64>,
) {
    let Plot { l, t, pw, ymax, .. } = *p;
    let c = COLORS[k % COLORS.len()];
    let path: Vec<String> = pts
        .iter()
        .map(|(x, y, _, _)| format!("{:.1},{:.1}", p.px(*x), p.py(*y)))
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
            p.px(*x),
            p.py(*y),
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
            p.py(*bud),
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

/// A number with its unit (sign forced when `signed`), or a dash.
fn number(v: &serde_json::Value, unit: &str, signed: bool) -> String {
    v.as_f64()
        .map(|x| {
            if signed {
                format!("{x:+.2}{unit}")
            } else {
                format!("{x:.2}{unit}")
            }
        })
        .unwrap_or_else(|| "–".into())
}

/// The trend table: per service, its runs, last time, budget, trend.
fn trend_table(summary: &[serde_json::Value]) -> String {
    let mut table = String::from(
        "<table><tr><th>service</th><th>runs</th><th>last</th><th>budget</th><th>trend</th><th>last vs median</th></tr>",
    );
    for s in summary {
        let _ = write!(
            table,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(s["service"].as_str().unwrap_or_default()),
            s["runs"],
            number(&s["last_seconds"], " s", false),
            number(&s["budget_seconds"], " s", false),
            number(&s["slope_seconds_per_run"], " s/run", true),
            number(&s["last_vs_median_percent"], " %", true),
        );
    }
    table += "</table>";
    table
}

/// The runs table: every row of the history.
fn runs_table(rows: &[&serde_json::Value]) -> String {
    let mut runs_table = String::from(
        "<table><tr><th>when (UTC)</th><th>kind</th><th>restore</th><th>env</th><th>service</th><th>status</th><th>seconds</th><th>budget</th></tr>",
    );
    for r in rows {
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
    runs_table
}

fn crate_time(t: f64) -> String {
    let s = cairn_stack::run::rfc3339(t);
    // "YYYY-MM-DDTHH:MM:SSZ" → "MM-DD HH:MM"
    format!("{} {}", &s[5..10], &s[11..19])
}
