//! Invariants: evaluating one (SQL in a service's database, or a command
//! with every service's settings in its environment), and which of them
//! gate the start of a service.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::adapters;
use crate::catalog::{Catalog, Invariant};
use crate::report::{InvariantResult, Status};

/// Whether `a` depends on `b`, directly or through others.
pub(crate) fn depends_on(cat: &Catalog, a: &str, b: &str) -> bool {
    let mut todo = vec![a];
    let mut seen = BTreeSet::new();
    while let Some(x) = todo.pop() {
        for d in cat
            .services
            .get(x)
            .map(|s| s.depends_on.as_slice())
            .unwrap_or(&[])
        {
            if d == b {
                return true;
            }
            if seen.insert(d.as_str()) {
                todo.push(d);
            }
        }
    }
    false
}

/// The cross-service invariants (indexes) that gate the start of `name`:
/// `gate` ones naming a selected service it depends on, unless they also
/// name `name` or a service depending on it (they could not run before it).
pub(crate) fn gates<'a>(
    cat: &'a Catalog,
    name: &'a str,
    selected: &'a BTreeSet<String>,
) -> impl Iterator<Item = usize> + 'a {
    cat.invariants
        .iter()
        .enumerate()
        .filter_map(move |(i, inv)| {
            let relevant = inv.gate
                && inv
                    .services
                    .iter()
                    .any(|s| selected.contains(s) && depends_on(cat, name, s))
                && !inv
                    .services
                    .iter()
                    .any(|s| s == name || depends_on(cat, s, name));
            relevant.then_some(i)
        })
}

pub(crate) fn skipped_invariant(inv: &Invariant, why: String) -> InvariantResult {
    InvariantResult {
        name: inv.name.clone(),
        services: inv.services.clone(),
        check: inv.check.clone(),
        expect: inv.expect.clone(),
        actual: None,
        status: Status::Skipped,
        error: Some(why),
        seconds: 0.0,
    }
}

/// `CAIRN_<SERVICE>_<FIELD>` variables for invariant commands: every
/// service's connection settings in the environment applied.
pub fn service_env(cat: &Catalog) -> Vec<(String, String)> {
    let mut v = vec![("CAIRN_ENV".to_string(), cat.env.clone())];
    for s in cat.services.values() {
        let p: String = s
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        let mut put = |k: &str, val: Option<String>| {
            if let Some(val) = val {
                v.push((format!("CAIRN_{p}_{k}"), val));
            }
        };
        put("HOST", s.host.clone());
        put("PORT", s.port.map(|x| x.to_string()));
        // A PostgreSQL restore role is who the restored data is checked as
        // (the catalog's user may be a superuser, the data hostile).
        put("USER", s.restore_role.clone().or_else(|| s.user.clone()));
        put("DATABASE", s.database.clone());
        put(
            "PATH",
            s.target
                .as_ref()
                .or(s.path.as_ref())
                .map(|x| x.display().to_string()),
        );
        for (k, val) in s.kind.datastore().env(s) {
            put(k, Some(val));
        }
    }
    v
}

/// Evaluate one invariant now.
pub fn run_invariant(cat: &Catalog, inv: &Invariant) -> InvariantResult {
    use crate::catalog::{Check, Expect};
    let t = Instant::now();
    let mut r = skipped_invariant(inv, String::new());
    r.error = None;
    let out: Result<String, String> = match &inv.check {
        Check::Sql { on, query } => {
            let svc = &cat.services[on];
            adapters::query(svc, query).map_err(|e| e.to_string())
        }
        Check::Command(c) => {
            let dir = cat
                .services
                .values()
                .next()
                .map(|s| s.workdir.clone())
                .unwrap_or_else(|| ".".into());
            std::process::Command::new("sh")
                .arg("-c")
                .arg(c)
                .current_dir(dir)
                .envs(service_env(cat))
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| e.to_string())
                .and_then(|o| {
                    if o.status.success() {
                        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
                    } else {
                        Err(format!(
                            "command failed ({}): {}",
                            o.status,
                            String::from_utf8_lossy(&o.stderr).trim()
                        ))
                    }
                })
        }
    };
    r.seconds = t.elapsed().as_secs_f64();
    let out = match out {
        Ok(o) => o.trim().to_string(),
        Err(e) => {
            r.status = Status::Failed;
            r.error = Some(e);
            return r;
        }
    };
    let num = |s: &str| s.trim().parse::<f64>().ok();
    let ok = match &inv.expect {
        Expect::Equals(e) => {
            out == e.trim() || matches!((num(&out), num(e)), (Some(a), Some(b)) if a == b)
        }
        Expect::AtLeast(b) => num(&out).is_some_and(|a| a >= *b),
        Expect::AtMost(b) => num(&out).is_some_and(|a| a <= *b),
        Expect::Matches(p) => regex_lite::Regex::new(p).is_ok_and(|re| re.is_match(&out)),
    };
    r.actual = Some(out.clone());
    if ok {
        r.status = Status::Passed;
    } else {
        r.status = Status::Failed;
        let want = match &inv.expect {
            Expect::Equals(e) => format!("equal to {e:?}"),
            Expect::AtLeast(b) => format!("at least {b}"),
            Expect::AtMost(b) => format!("at most {b}"),
            Expect::Matches(p) => format!("matching /{p}/"),
        };
        let what = match &inv.check {
            Check::Sql { on, query } => format!("query `{query}` on {on}"),
            Check::Command(c) => format!("command `{c}`"),
        };
        r.error = Some(format!("{what}: expected {want}, got {out:?}"));
    }
    r
}
