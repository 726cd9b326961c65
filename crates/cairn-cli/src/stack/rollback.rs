//! `cairn stack rollback`: put back what a restore overwrote.

use anyhow::{Result, bail};
use cairn_stack::catalog::Catalog;
use cairn_stack::run::{self, RestoreKind, RestoreRequest};
use cairn_stack::trail;

use super::*;
use crate::GlobalArgs;

pub fn rollback(g: &GlobalArgs, a: RollbackArgs) -> Result<i32> {
    let probe = Catalog::load(&a.catalog, None)?;
    let repo = open(g, &probe)?;
    // A resumed rollback: its journal names the restore it undoes.
    let resumed = match &a.resume {
        Some(rid) => {
            let rj = trail::read_journal(repo.repo(), rid)?;
            if rj.begin.kind != "rollback" {
                bail!(
                    "{} is a {}, not a rollback: {}",
                    rj.begin.restore_id,
                    rj.begin.kind,
                    resume_hint(&rj.begin.kind, &rj.begin.restore_id)
                );
            }
            Some(rj)
        }
        None => None,
    };
    let undo_id = match (&resumed, &a.restore_id) {
        (Some(rj), given) => {
            let undoes = rj.begin.undoes.clone().unwrap_or_default();
            if let Some(given) = given
                && !undoes.starts_with(given.as_str())
            {
                bail!(
                    "rollback {} undoes restore {undoes}, not {given}",
                    rj.begin.restore_id
                );
            }
            undoes
        }
        (None, Some(id)) => id.clone(),
        (None, None) => unreachable!("clap requires one"),
    };
    let j = trail::read_journal(repo.repo(), &undo_id)?;
    let env = (j.begin.env != "production").then_some(j.begin.env.as_str());
    // The live view: a files service's safety snapshot is of its target.
    let cat = Catalog::load(&a.catalog, env)?.live_view();
    let (_, snaps) = run::group_snapshots(&repo, &j.begin.safety_group).unwrap_or_default();
    for (svc, snap) in &j.prepared {
        if snap.is_none() && !g.json {
            println!(
                "{svc}: held no data before restore {} (nothing to put back; left as restored)",
                j.begin.restore_id
            );
        }
    }
    if snaps.is_empty() {
        bail!(
            "restore {} took no safety snapshot (its targets were empty, or it ran with --no-safety-snapshot): nothing to roll back",
            j.begin.restore_id
        );
    }
    let mut selected = std::collections::BTreeSet::new();
    for s in snaps.keys() {
        if !cat.services.contains_key(s) {
            bail!("the safety snapshot of {s:?} names a service the catalog no longer has");
        }
        selected.insert(s.clone());
    }
    let quiet = g.json || g.quiet;
    let r = run::stack_restore(
        &cat,
        &repo,
        RestoreRequest {
            kind: RestoreKind::Rollback,
            group: j.begin.safety_group.clone(),
            selected,
            jobs: a.jobs.unwrap_or(cat.jobs),
            safety: resumed
                .as_ref()
                .map(|rj| rj.begin.safety)
                .unwrap_or(!a.no_safety_snapshot),
            resume: resumed,
            undoes: Some(j.begin.restore_id.clone()),
            restart: Default::default(),
        },
        &|m| {
            if !quiet {
                eprintln!("{m}");
            }
        },
    )?;
    write_metrics(&a.metrics_file, &run::restore_metrics(&r))?;
    finish_restore(g, &repo, &r, &a.report)
}
