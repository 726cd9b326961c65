//! The arguments of `cairn stack` and its subcommands.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum StackCmd {
    /// Back up every service (or --only some) in parallel under one group id
    Backup(StackArgs),
    /// Show the restore plan without touching anything
    Plan(StackArgs),
    /// Restore a group: dependency order, parallel where possible, gated and timed
    Restore(StackArgs),
    /// Apply each service's catalog retention to its snapshots
    Forget(StackForgetArgs),
    /// Put back the safety snapshots a restore took of what it overwrote
    Rollback(RollbackArgs),
    /// Rehearse: restore the latest group into staging, verify, time, tear down
    Drill(DrillArgs),
    /// RTO per service across restores and drills, with the trend
    History(HistoryArgs),
    /// List the audit trail; --verify proves the hash chain is intact
    Audit(AuditArgs),
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The restore to undo (id or unique prefix, as printed by `stack restore`)
    #[arg(required_unless_present = "resume")]
    pub restore_id: Option<String>,
    /// Continue an interrupted rollback (its id, as printed when it started)
    #[arg(long, value_name = "ROLLBACK_ID")]
    pub resume: Option<String>,
    /// Service catalog
    #[arg(long, env = "CAIRN_CATALOG", default_value = "cairn.toml")]
    pub catalog: PathBuf,
    /// Services at once
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Do not snapshot what the rollback overwrites
    #[arg(long)]
    pub no_safety_snapshot: bool,
    /// Write the JSON report here
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write Prometheus textfile metrics here
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// Service catalog
    #[arg(long, env = "CAIRN_CATALOG", default_value = "cairn.toml")]
    pub catalog: PathBuf,
    /// Environment to drill into (never production)
    #[arg(long, default_value = "staging")]
    pub env: String,
    /// Group to restore: id, id prefix or `latest`
    #[arg(long, default_value = "latest")]
    pub group: String,
    /// Only these services (repeatable; their dependencies are added)
    #[arg(long = "only")]
    pub only: Vec<String>,
    /// Services at once
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Leave the restored copy in place (default: the catalog's [drill] teardown, else remove it)
    #[arg(long)]
    pub keep: bool,
    /// Write the JSON report here
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write Prometheus textfile metrics here
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Service catalog whose [repository] (path, password_file) to use
    #[arg(long, env = "CAIRN_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Only this service
    #[arg(long)]
    pub service: Option<String>,
    /// Write a self-contained HTML page with a chart here
    #[arg(long)]
    pub html: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Service catalog whose [repository] (path, password_file) to use
    #[arg(long, env = "CAIRN_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Check every record and the hash chain; exit 1 naming any record removed or changed
    #[arg(long)]
    pub verify: bool,
}

#[derive(Args, Debug)]
pub struct StackForgetArgs {
    /// Service catalog
    #[arg(long, env = "CAIRN_CATALOG", default_value = "cairn.toml")]
    pub catalog: PathBuf,
    /// Only these services (repeatable)
    #[arg(long = "only")]
    pub only: Vec<String>,
    /// Show what would be removed; remove nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Prune afterwards
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub prune_args: crate::commands::PruneArgs,
}

#[derive(Args, Debug)]
pub struct StackArgs {
    /// Service catalog
    #[arg(long, env = "CAIRN_CATALOG", default_value = "cairn.toml")]
    pub catalog: PathBuf,
    /// Only these services (repeatable)
    #[arg(long = "only")]
    pub only: Vec<String>,
    /// With --only: add their dependencies
    #[arg(long)]
    pub with_deps: bool,
    /// Restore: also restart (stop before, start after; no restore) the
    /// services that depend on the restored ones
    #[arg(long)]
    pub with_dependents: bool,
    /// Group to restore: id, id prefix or `latest`
    #[arg(long, default_value = "latest")]
    pub group: String,
    /// Environment whose overrides apply (e.g. staging)
    #[arg(long)]
    pub env: Option<String>,
    /// Services at once (default: the catalog's `jobs`, else 4)
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Write the JSON report here
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write Prometheus textfile metrics here
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
    /// Restore: continue an interrupted restore (skips services that completed and still verify)
    #[arg(long, value_name = "RESTORE_ID")]
    pub resume: Option<String>,
    /// Restore: do not snapshot live targets before overwriting them
    #[arg(long)]
    pub no_safety_snapshot: bool,
    /// Restore with --env: allow targets that overlap production's (refused
    /// by default: an environment without overrides restores over production)
    #[arg(long)]
    pub allow_production_targets: bool,
}
