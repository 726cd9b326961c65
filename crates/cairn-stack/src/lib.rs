//! # cairn-stack
//!
//! The restore orchestrator: a declarative service catalog (`cairn.toml`),
//! datastore adapters that stream dumps into the repository and back, group
//! backups across services, a dependency plan, and restores that start each
//! service as soon as its dependencies have passed their readiness gates,
//! measuring every stage against the service's RTO budget.
//!
//! Key types: [`catalog::Catalog`], [`report::StackBackupReport`],
//! [`report::RestoreReport`].
//!
//! ```
//! use cairn_stack::catalog::Catalog;
//! let c = Catalog::parse(
//!     std::path::Path::new("cairn.toml"),
//!     "[service.db]\nkind = \"postgres\"\ndatabase = \"orders\"\n\
//!      [service.api]\nkind = \"command\"\nbackup = \"cat s\"\nrestore = \"cat > s\"\ndepends_on = [\"db\"]\n",
//!     None,
//! )
//! .unwrap();
//! let all = c.select(&[], false).unwrap();
//! assert_eq!(c.waves(&all), vec![vec!["db".to_string()], vec!["api".to_string()]]);
//! ```
//!
//! ## Where things are
//!
//! | module | owns |
//! |---|---|
//! | [`catalog`] | parsing and validating `cairn.toml` (file:line errors), environments |
//! | [`datastore`] | the `Datastore` trait |
//! | [`kinds`] | one module per kind: postgres, mariadb, redis, files, sqlite, command |
//! | [`registry`] | the registry of kinds, and what needs it: `Kind::datastore`, `Catalog::load`/`parse`, the live views |
//! | [`adapters`] | what the kinds share: streaming dumps, the snapshot checks, Redis dumps |
//! | [`tools`] | running a service's tools: connection settings, errors with stderr, shell commands |
//! | [`children`] | child processes (own process group, parent-death signal) and temporary dumps |
//! | [`fingerprint`] | logical fingerprints and their comparison (format-spec §11) |
//! | [`target`] | comparable restore targets and the production guard |
//! | [`backup`] | group backups |
//! | [`plan`] | choosing the group, the restore plan |
//! | [`run`] | the restore scheduler and its stages |
//! | [`report`] | what backups and restores report: statuses, stages, per-service results |
//! | [`invariants`] | invariant checks and gating |
//! | [`trail`] | the audit trail and restore journals |
//! | [`metrics`] | the Prometheus textfile |
//! | [`sql`] | quoting per SQL dialect |
//! | [`ready`], [`redis`], [`time`] | readiness checks, a small Redis client, time formatting |
//! | `parallel` | one function over many items on a few threads |
#![deny(missing_docs)]

pub mod adapters;
pub mod backup;
pub mod catalog;
pub mod children;
pub mod datastore;
pub mod fingerprint;
pub mod invariants;
pub mod kinds;
pub mod metrics;
mod parallel;
pub mod plan;
pub mod ready;
pub mod redis;
pub mod registry;
pub mod report;
pub mod run;
pub mod sql;
pub mod target;
pub mod time;
pub mod tools;
pub mod trail;

/// Errors of the orchestrator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StackError {
    /// The catalog is invalid (messages carry file:line).
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    /// A service failed (unreachable, tool failed, check failed).
    #[error("service {service}: {detail}")]
    Service {
        /// Service name.
        service: String,
        /// What went wrong.
        detail: String,
    },
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] cairn_repo::RepoError),
    /// Bad request (unknown group, no snapshot for a service, ...).
    #[error("{0}")]
    Invalid(String),
}
