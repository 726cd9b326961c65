//! What a datastore kind is to the orchestrator: one trait, one module per
//! kind (`kinds/`), one registry ([`crate::registry`]). Adding a kind is one
//! new module and one line in [`crate::registry::BUILT_IN`] (or
//! [`crate::registry::register`] at run time): the catalog, the scheduler,
//! drills, rollbacks, metrics and the production guard take everything else
//! from the trait.

use std::process::Command;

use cairn_format::snapshot::Snapshot;
use cairn_repo::{BackupOptions, BackupResult, IndexedRepository};

use crate::StackError;
use crate::catalog::Service;
use crate::fingerprint::{Fingerprint, FingerprintReport};
use crate::target::Target;

/// A datastore kind. Methods get the service as the catalog resolved it
/// (environment overrides applied).
pub trait Datastore: Sync + Send {
    /// Its `kind = "…"` in the catalog.
    fn name(&self) -> &'static str;

    /// The catalog fields it takes, besides those every kind takes (`kind`,
    /// `depends_on`, `retention`, `env`, `invariant`, `start`, `stop`,
    /// `ready`, `rto`): any other is an error naming its line.
    fn fields(&self) -> &'static [&'static str];

    /// Fields that must be set: (field, what to call it in the error).
    fn required(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// Connection settings for one of its tools (`psql`, `mariadb`, …).
    fn configure(&self, _svc: &Service, _c: &mut Command) {}

    /// Back up into the repository, recording the fingerprint of exactly
    /// what was stored in the snapshot.
    fn backup(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        opts: BackupOptions,
    ) -> Result<BackupResult, StackError>;

    /// Check a snapshot (which may be forged) before anything of the
    /// service is touched; its kind tag was checked already.
    fn preflight(
        &self,
        _svc: &Service,
        _repo: &IndexedRepository,
        _snap: &Snapshot,
    ) -> Result<(), StackError> {
        Ok(())
    }

    /// Load a snapshot that passed the preflight. Returns bytes restored
    /// and what was held back, as a sentence.
    fn restore(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        snap: &Snapshot,
    ) -> Result<(u64, Option<String>), StackError>;

    /// A stage of its own after the load (name, what it does), timed and
    /// failing the service like the others: PostgreSQL's `analyze` (a
    /// restored database has no planner statistics).
    fn after_load(&self) -> Option<&'static str> {
        None
    }

    /// Run the [`Self::after_load`] stage.
    fn run_after_load(&self, _svc: &Service) -> Result<(), StackError> {
        Ok(())
    }

    /// Compare the restored service with the snapshot (default: the live
    /// fingerprint against the recorded one; none recorded: not judged).
    fn verify(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        snap: &Snapshot,
    ) -> Result<FingerprintReport, StackError> {
        match self.live_fingerprint(svc)? {
            Some(_) => crate::fingerprint::verify_fingerprint(svc, repo, snap, "tables"),
            None => Ok(FingerprintReport {
                expected: crate::fingerprint::decode(snap),
                method: "none".into(),
                ..Default::default()
            }),
        }
    }

    /// The service's fingerprint now (None: it has none).
    fn live_fingerprint(&self, _svc: &Service) -> Result<Option<Fingerprint>, StackError> {
        Ok(None)
    }

    /// Run an SQL invariant's query (batch output).
    fn query(&self, svc: &Service, _sql: &str) -> Result<String, StackError> {
        Err(StackError::Service {
            service: svc.name.clone(),
            detail: "sql invariants need a postgres or mariadb service (use `command` for others)"
                .into(),
        })
    }

    /// Whether the restore target holds anything a restore would overwrite.
    fn holds_data(&self, svc: &Service) -> Result<bool, StackError>;

    /// Remove what a drill restored.
    fn teardown(&self, svc: &Service) -> Result<String, StackError>;

    /// What a restore overwrites, comparable with other targets.
    fn target(&self, svc: &Service) -> Target;

    /// Everything of the production service another environment's restore
    /// must not touch: its target, and for kinds that restore elsewhere
    /// than they read (files with a `target`) the live source too.
    fn protected(&self, svc: &Service) -> Vec<Target> {
        vec![self.target(svc)]
    }

    /// The same, as a sentence for plans.
    fn describe(&self, svc: &Service) -> String;

    /// The service as its restore target (what a safety snapshot backs up
    /// and a rollback restores); default: itself.
    fn live_view(&self, svc: &Service) -> Service {
        svc.clone()
    }

    /// Whether a failed safety snapshot may be noted and the restore go on
    /// (a command whose state may simply not exist yet) instead of stopping
    /// it before anything is overwritten.
    fn safety_snapshot_optional(&self) -> bool {
        false
    }

    /// Directories where its restores keep temporary files named by
    /// [`crate::children::TEMP_PREFIX`], which `--resume` clears of what a
    /// killed run left.
    fn temp_dirs(&self, _svc: &Service) -> Vec<std::path::PathBuf> {
        vec![]
    }

    /// Extra `CAIRN_<SERVICE>_<NAME>` variables for invariant commands.
    fn env(&self, _svc: &Service) -> Vec<(&'static str, String)> {
        vec![]
    }
}
