//! `cairn stack ...`: the orchestrator's commands, one module each; what
//! they share (the catalog's repository and password, opening it, writing
//! reports and metrics) is here.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use cairn_repo::{IndexedRepository, Repository};
use cairn_stack::catalog::Catalog;
use cairn_stack::run;

use crate::GlobalArgs;

mod args;
pub use args::*;
mod forget;
pub use forget::*;
mod backup;
mod plan;
mod restore;
pub use restore::*;
mod rollback;
pub use rollback::*;
mod drill;
pub use drill::*;
mod history;
pub use history::*;
mod audit;
pub use audit::*;

/// How to go on with an interrupted restore, rollback or drill.
pub(crate) fn resume_hint(kind: &str, id: &str) -> String {
    match kind {
        "drill" => "a drill is not resumed: run `cairn stack drill` again".into(),
        k => format!("resume it with `cairn stack {k} --resume {id}`"),
    }
}

/// The global options with the catalog's repository and password file
/// where the options and environment name none.
pub(crate) fn catalog_globals(g: &GlobalArgs, cat: &Catalog) -> GlobalArgs {
    let mut g = g.clone();
    if g.repo.is_none() {
        g.repo = cat.repository.clone();
    }
    if g.password_file.is_none()
        && g.password_command.is_none()
        && std::env::var_os("CAIRN_PASSWORD").is_none()
    {
        g.password_file = cat.password_file.clone();
    }
    g
}

/// [`catalog_globals`] for an optional `--catalog` (production view).
pub(crate) fn globals_with(g: &GlobalArgs, catalog: &Option<PathBuf>) -> Result<GlobalArgs> {
    Ok(match catalog {
        Some(c) => catalog_globals(g, &Catalog::load(c, None)?),
        None => g.clone(),
    })
}

pub(crate) fn write_metrics(path: &Option<PathBuf>, text: &str) -> Result<()> {
    write_out(path, text)
}

/// The repository the catalog (or the options) name, index not loaded.
pub(crate) fn open_repo(g: &GlobalArgs, cat: &Catalog) -> Result<Repository> {
    let g = catalog_globals(g, cat);
    if g.repo.is_none() {
        bail!("no repository: give --repo, CAIRN_REPOSITORY or [repository] path in the catalog");
    }
    crate::commands::open(&g)
}

pub(crate) fn open(g: &GlobalArgs, cat: &Catalog) -> Result<IndexedRepository> {
    // Stack backups and restores (safety snapshots) write: a session first.
    let r = open_repo(g, cat)?.load_index_for_writing("stack")?;
    crate::commands::warn_unreadable_index(
        &r,
        "what only it lists is stored again, and prune refuses until the index is repaired",
    );
    Ok(r)
}

fn write_out(path: &Option<PathBuf>, text: &str) -> Result<()> {
    if let Some(p) = path {
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

pub fn stack(g: &GlobalArgs, cmd: StackCmd) -> Result<i32> {
    // A signal kills the datastore tools and removes temporary dumps.
    cairn_stack::children::install_signal_handlers()
        .map_err(|e| anyhow!("installing signal handlers: {e}"))?;
    let cmd = match cmd {
        StackCmd::Forget(f) => return stack_forget(g, f),
        StackCmd::Rollback(a) => return rollback(g, a),
        StackCmd::Drill(a) => return drill(g, a),
        StackCmd::History(a) => return history(g, a),
        StackCmd::Audit(a) => return audit(g, a),
        other => other,
    };
    let (StackCmd::Backup(a) | StackCmd::Plan(a) | StackCmd::Restore(a)) = &cmd else {
        unreachable!("the others returned above")
    };
    let mut env = a.env.clone();
    // A resumed restore opens the repository first (the journal says which
    // environment applies), and keeps it.
    let mut opened = None;
    let journal = match (&cmd, &a.resume) {
        (StackCmd::Restore(_), Some(rid)) => {
            let repo = open(g, &Catalog::load(&a.catalog, env.as_deref())?)?;
            let j = cairn_stack::trail::read_journal(repo.repo(), rid)?;
            opened = Some(repo);
            if j.begin.kind != "restore" {
                bail!(
                    "{} is a {}, not a restore: {}",
                    j.begin.restore_id,
                    j.begin.kind,
                    resume_hint(&j.begin.kind, &j.begin.restore_id)
                );
            }
            if let Some(true) = j.ended {
                eprintln!(
                    "restore {} already ended; verifying and finishing what did not pass",
                    j.begin.restore_id
                );
            }
            env = (j.begin.env != "production").then(|| j.begin.env.clone());
            Some(j)
        }
        _ => None,
    };
    let cat = Catalog::load(&a.catalog, env.as_deref())?;
    let selected: BTreeSet<String> = match &journal {
        Some(j) => {
            for s in &j.begin.services {
                if !cat.services.contains_key(s) {
                    bail!(
                        "restore {} included service {s:?}, which the catalog no longer has",
                        j.begin.restore_id
                    );
                }
            }
            j.begin.services.iter().cloned().collect()
        }
        None => cat.select(&a.only, a.with_deps)?,
    };
    if let StackCmd::Restore(a) = &cmd
        && cat.env != "production"
        && !a.allow_production_targets
    {
        // The services --with-dependents restarts run their stop and start
        // commands: guarded like the restored ones.
        let mut guarded = selected.clone();
        if a.with_dependents {
            guarded.extend(cat.dependents_of(&selected));
        }
        cairn_stack::target::refuse_production_overlap(
            &cat,
            &guarded,
            &format!(
                "a restore with --env {} (--allow-production-targets overrides)",
                cat.env
            ),
        )?;
    }
    let repo = match opened {
        Some(r) => r,
        None => open(g, &cat)?,
    };
    let jobs = a.jobs.unwrap_or(cat.jobs);
    match cmd {
        StackCmd::Backup(a) => backup::backup(g, &a, &cat, &repo, &selected, jobs),
        StackCmd::Plan(a) => plan::plan(g, &a, &cat, &repo, &selected),
        StackCmd::Restore(a) => restore::restore(g, &a, &cat, &repo, selected, jobs, journal),
        StackCmd::Forget(_)
        | StackCmd::Rollback(_)
        | StackCmd::Drill(_)
        | StackCmd::History(_)
        | StackCmd::Audit(_) => unreachable!("handled above"),
    }
}
