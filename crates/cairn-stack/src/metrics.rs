//! Prometheus textfile metrics (the text exposition format, version 0.0.4):
//! one encoder, so that every label value is escaped (a service named
//! `a"b\c` is valid exposition) and every family has its HELP and TYPE.

use std::fmt::Write;

use crate::report::{RestoreReport, ServiceBackup, ServiceRestore, StackBackupReport};

/// A textfile being written.
#[derive(Default)]
pub struct Metrics {
    out: String,
}

/// A label value escaped for the exposition format (`\`, `"`, newline).
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

impl Metrics {
    /// Start a gauge family.
    pub fn gauge(&mut self, name: &str, help: &str) -> &mut Self {
        let _ = writeln!(
            self.out,
            "# HELP {name} {}\n# TYPE {name} gauge",
            escape_help(help)
        );
        self
    }

    /// One sample of the family started last.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let v = if value.fract() == 0.0 && value.abs() < 1e15 {
            format!("{value:.0}")
        } else {
            format!("{value:.3}")
        };
        let _ = writeln!(self.out, " {v}");
        self
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Metrics of a stack backup: per service (labels service, kind, env,
/// status) and for the group.
pub fn backup_metrics(r: &StackBackupReport) -> String {
    let mut m = Metrics::default();
    let labels = |b: &ServiceBackup| -> Vec<(&str, String)> {
        vec![
            ("service", b.service.clone()),
            ("kind", b.kind.to_string()),
            ("env", r.env.clone()),
        ]
    };
    let fam = |m: &mut Metrics,
               name: &str,
               help: &str,
               only_ok: bool,
               with_status: bool,
               value: &dyn Fn(&ServiceBackup) -> f64| {
        m.gauge(name, help);
        for b in r.services.iter().filter(|b| b.ok || !only_ok) {
            let mut l = labels(b);
            if with_status {
                l.push(("status", if b.ok { "passed" } else { "failed" }.into()));
            }
            let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
            m.sample(name, &l, value(b));
        }
    };
    fam(
        &mut m,
        "cairn_backup_success",
        "Whether the last stack backup of the service succeeded.",
        false,
        true,
        &|b| f64::from(u8::from(b.ok)),
    );
    fam(
        &mut m,
        "cairn_backup_last_success_timestamp_seconds",
        "Capture time of the last successful backup.",
        true,
        false,
        &|b| b.captured_at,
    );
    fam(
        &mut m,
        "cairn_backup_duration_seconds",
        "Wall time of the service's backup.",
        false,
        false,
        &|b| b.seconds,
    );
    fam(
        &mut m,
        "cairn_backup_bytes_read",
        "Bytes read from the service.",
        false,
        false,
        &|b| b.bytes_read as f64,
    );
    fam(
        &mut m,
        "cairn_backup_bytes_added",
        "Bytes added to the repository.",
        false,
        false,
        &|b| b.bytes_added as f64,
    );
    let env = [("env", r.env.as_str())];
    m.gauge(
        "cairn_backup_group_skew_seconds",
        "Capture-time skew across the group.",
    )
    .sample("cairn_backup_group_skew_seconds", &env, r.skew_seconds);
    m.gauge(
        "cairn_backup_group_complete",
        "Whether every selected service of the last stack backup was backed up.",
    )
    .sample(
        "cairn_backup_group_complete",
        &env,
        f64::from(u8::from(r.services.iter().all(|s| s.ok))),
    );
    m.finish()
}

/// Metrics of a stack restore, rollback or drill: per service (labels
/// service, kind, env, status; per stage also stage), the critical path and
/// the wall time.
pub fn restore_metrics(r: &RestoreReport) -> String {
    let mut m = Metrics::default();
    let kind = r.kind.name();
    let owned = |x: &ServiceRestore| -> Vec<(&str, String)> {
        vec![
            ("service", x.service.clone()),
            ("kind", x.kind.to_string()),
            ("env", r.env.clone()),
            ("operation", kind.to_string()),
        ]
    };
    let with_status = |x: &ServiceRestore| {
        let mut l = owned(x);
        l.push(("status", x.status.as_str().to_string()));
        l
    };
    let emit = |m: &mut Metrics, name: &str, l: Vec<(&str, String)>, v: f64| {
        let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
        m.sample(name, &l, v);
    };
    m.gauge(
        "cairn_restore_success",
        "Whether the service's last restore passed.",
    );
    for x in &r.services {
        emit(
            &mut m,
            "cairn_restore_success",
            with_status(x),
            f64::from(u8::from(x.status.as_str() == "passed")),
        );
    }
    m.gauge(
        "cairn_restore_duration_seconds",
        "Time to restore the service (all stages).",
    );
    for x in &r.services {
        emit(
            &mut m,
            "cairn_restore_duration_seconds",
            owned(x),
            x.seconds,
        );
    }
    m.gauge(
        "cairn_restore_stage_duration_seconds",
        "Time of one stage of the service's restore.",
    );
    for x in &r.services {
        for st in &x.stages {
            let mut l = owned(x);
            l.push(("stage", st.name.as_str().to_string()));
            emit(
                &mut m,
                "cairn_restore_stage_duration_seconds",
                l,
                st.seconds,
            );
        }
    }
    m.gauge(
        "cairn_restore_rto_budget_seconds",
        "The service's RTO budget.",
    );
    for x in &r.services {
        if let Some(b) = x.rto_budget_seconds {
            emit(&mut m, "cairn_restore_rto_budget_seconds", owned(x), b);
        }
    }
    m.gauge(
        "cairn_restore_rto_met",
        "Whether the service passed within its RTO budget.",
    );
    for x in &r.services {
        if let Some(met) = x.rto_met {
            emit(
                &mut m,
                "cairn_restore_rto_met",
                owned(x),
                f64::from(u8::from(met)),
            );
        }
    }
    m.gauge("cairn_restore_bytes", "Bytes restored.");
    for x in &r.services {
        emit(
            &mut m,
            "cairn_restore_bytes",
            owned(x),
            x.bytes_restored as f64,
        );
    }
    m.gauge(
        "cairn_restore_on_critical_path",
        "Whether the service is on the last restore's critical path.",
    );
    for x in &r.services {
        emit(
            &mut m,
            "cairn_restore_on_critical_path",
            owned(x),
            f64::from(u8::from(r.critical_path.contains(&x.service))),
        );
    }
    let top = [("env", r.env.as_str()), ("operation", kind)];
    m.gauge(
        "cairn_restore_critical_path_total_seconds",
        "Length of the last restore's critical path.",
    )
    .sample(
        "cairn_restore_critical_path_total_seconds",
        &top,
        r.critical_path_seconds,
    );
    m.gauge(
        "cairn_restore_last_timestamp_seconds",
        "Start of the last stack restore.",
    )
    .sample("cairn_restore_last_timestamp_seconds", &top, r.started_at);
    m.gauge(
        "cairn_restore_wall_seconds",
        "Wall time of the last stack restore.",
    )
    .sample("cairn_restore_wall_seconds", &top, r.wall_seconds);
    m.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut m = Metrics::default();
        m.gauge("x", "help\\me")
            .sample("x", &[("service", "a\"b\\c\nd")], 1.5);
        assert_eq!(
            m.finish(),
            "# HELP x help\\\\me\n# TYPE x gauge\nx{service=\"a\\\"b\\\\c\\nd\"} 1.500\n"
        );
    }
}
