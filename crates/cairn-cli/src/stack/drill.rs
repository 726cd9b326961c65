//! `cairn stack drill`: restore into another environment, verify, tear down.

use anyhow::{Context, Result, bail};
use cairn_stack::catalog::Catalog;
use cairn_stack::run::{self, RestoreKind, RestoreRequest};
use serde_json::json;

use super::*;
use crate::GlobalArgs;

pub fn drill(g: &GlobalArgs, a: DrillArgs) -> Result<i32> {
    if a.env == "production" {
        bail!("a drill restores into a non-production environment; --env production is refused");
    }
    let cat = Catalog::load(&a.catalog, Some(&a.env))?;
    let selected = cat.select(&a.only, true)?;
    // Never let a drill overwrite production: no selected service's target
    // may overlap any production service's (compared as resolved targets,
    // not as text: a trailing slash or `localhost` is the same place).
    cairn_stack::target::refuse_production_overlap(&cat, &selected, "a drill")?;
    let repo = open(g, &cat)?;
    let quiet = g.json || g.quiet;
    let r = run::stack_restore(
        &cat,
        &repo,
        RestoreRequest {
            kind: RestoreKind::Drill,
            group: a.group.clone(),
            selected: selected.clone(),
            jobs: a.jobs.unwrap_or(cat.jobs),
            safety: false,
            resume: None,
            undoes: None,
            restart: Default::default(),
        },
        &|m| {
            if !quiet {
                eprintln!("{m}");
            }
        },
    )?;
    // Tear down (stop services first, then data), unless kept.
    let mut teardown = Vec::new();
    if cat.drill_teardown && !a.keep {
        let waves = cat.waves(&selected);
        for w in waves.iter().rev() {
            for s in w {
                let svc = &cat.services[s];
                let res = cairn_stack::adapters::teardown(svc);
                if !quiet {
                    match &res {
                        Ok(m) => eprintln!("{s}: teardown: {m}"),
                        Err(e) => eprintln!("{s}: teardown FAILED: {e}"),
                    }
                }
                teardown.push(json!({"service": s, "ok": res.is_ok(),
                    "detail": match res { Ok(m) => m, Err(e) => e.to_string() }}));
            }
        }
    }
    let mut v = serde_json::to_value(&r)?;
    v["teardown"] = json!(teardown);
    if let Some(p) = &a.report {
        std::fs::write(p, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    write_metrics(&a.metrics_file, &run::restore_metrics(&r))?;
    let code = finish_restore(g, &repo, &r, &None);
    if teardown.iter().any(|t| t["ok"] == false) {
        bail!("drill teardown failed for some services (see above); remove their copies by hand");
    }
    code
}
