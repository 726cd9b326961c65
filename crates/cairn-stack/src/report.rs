//! What the stack commands report: a restore's statuses, stages,
//! per-service results and the whole run's report, a stack backup's
//! per-service results and report, and how they name a kind. Plain data,
//! below everything that fills it in (`run`, `backup`, `invariants`) or
//! reads it (`metrics`).

use crate::catalog::Kind;
use crate::fingerprint::{Fingerprint, FingerprintReport};
use serde::Serialize;

/// Where a service, an invariant or a stage stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not started yet.
    #[default]
    Pending,
    /// Running now.
    Running,
    /// Done, verified.
    Passed,
    /// Done, and it did not pass.
    Failed,
    /// Not run (a dependency or a gating invariant did not pass).
    Skipped,
}

impl Status {
    /// As the reports write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for Status {
    fn eq(&self, o: &&str) -> bool {
        self.as_str() == *o
    }
}

/// Kind as written in the catalog.
pub fn kind_name(k: Kind) -> &'static str {
    k.name()
}

/// The stages of a service restore, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageName {
    /// A resumed restore re-verifies what completed before.
    VerifyResumed,
    /// The snapshot is checked (kind tag, the kind's own checks).
    Preflight,
    /// What the target holds is backed up first.
    SafetySnapshot,
    /// The service's `stop` command.
    Stop,
    /// The snapshot is fetched and loaded.
    FetchLoad,
    /// The kind's own stage after the load ([`crate::datastore::Datastore::after_load`]).
    AfterLoad(&'static str),
    /// The service's `start` command.
    Start,
    /// Its readiness check.
    Ready,
    /// The restored state is compared with the snapshot's fingerprint.
    Verify,
    /// Its invariants.
    Invariants,
    /// Its `post_restore` hook.
    PostRestore,
}

impl StageName {
    /// As reports, journals and metrics spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            StageName::VerifyResumed => "verify (resumed)",
            StageName::Preflight => "preflight",
            StageName::SafetySnapshot => "safety-snapshot",
            StageName::Stop => "stop",
            StageName::FetchLoad => "fetch+load",
            StageName::AfterLoad(n) => n,
            StageName::Start => "start",
            StageName::Ready => "ready",
            StageName::Verify => "verify",
            StageName::Invariants => "invariants",
            StageName::PostRestore => "post-restore",
        }
    }
}

impl std::fmt::Display for StageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for StageName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One timed stage of a service restore.
#[derive(Debug, Serialize, Clone)]
pub struct Stage {
    /// Which.
    pub name: StageName,
    /// Seconds since the restore began.
    pub start: f64,
    /// Seconds since the restore began.
    pub end: f64,
    /// Duration.
    pub seconds: f64,
}

/// One invariant's evaluation.
#[derive(Debug, Serialize, Clone)]
pub struct InvariantResult {
    /// Name.
    pub name: String,
    /// Services it needs.
    pub services: Vec<String>,
    /// What ran.
    pub check: crate::catalog::Check,
    /// What was expected.
    pub expect: crate::catalog::Expect,
    /// What it printed (trimmed).
    pub actual: Option<String>,
    /// passed | failed | skipped
    pub status: Status,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// Duration.
    pub seconds: f64,
}

/// One service's restore.
#[derive(Debug, Serialize, Clone)]
pub struct ServiceRestore {
    /// Service.
    pub service: String,
    /// Kind.
    pub kind: &'static str,
    /// passed | failed | skipped
    pub status: Status,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// Snapshot restored.
    pub snapshot: Option<String>,
    /// Seconds since the restore began.
    pub start: f64,
    /// Seconds since the restore began.
    pub end: f64,
    /// Duration.
    pub seconds: f64,
    /// Stages.
    pub stages: Vec<Stage>,
    /// Bytes restored.
    pub bytes_restored: u64,
    /// What the restore held back (a files service's device nodes and setuid
    /// bits, Redis keys that expired since the backup), if any.
    pub withheld: Option<String>,
    /// Budget.
    pub rto_budget_seconds: Option<f64>,
    /// Whether the budget was met (None without a budget or when not passed).
    pub rto_met: Option<bool>,
    /// Safety snapshot of what the target held before (hex).
    pub safety_snapshot: Option<String>,
    /// Why there is no safety snapshot.
    pub safety_note: Option<String>,
    /// True when a resumed restore found it complete and still verified.
    pub resumed: bool,
    /// True for a service restarted, not restored (`--with-dependents`).
    pub restarted: bool,
    /// Fingerprint check.
    pub fingerprint: FingerprintReport,
    /// The service's own invariants.
    pub invariants: Vec<InvariantResult>,
}

/// What `stack_restore` does.
#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RestoreKind {
    /// A restore of a backup group.
    Restore,
    /// Putting a restore's safety snapshots back.
    Rollback,
    /// A rehearsal into another environment.
    Drill,
}

impl RestoreKind {
    /// As written in reports and the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            RestoreKind::Restore => "restore",
            RestoreKind::Rollback => "rollback",
            RestoreKind::Drill => "drill",
        }
    }
}

/// Result of `stack restore` (and rollback, drill).
#[derive(Debug, Serialize)]
pub struct RestoreReport {
    /// Id of this restore (its journal).
    pub restore_id: String,
    /// restore | rollback | drill
    pub kind: RestoreKind,
    /// Group restored.
    pub group: String,
    /// Environment.
    pub env: String,
    /// Whether this run resumed an interrupted one.
    pub resumed: bool,
    /// For a rollback: the restore undone.
    pub undoes: Option<String>,
    /// Group id of the safety snapshots taken (hex).
    pub safety_group: Option<String>,
    /// Start, Unix seconds.
    pub started_at: f64,
    /// Wall time of the whole restore.
    pub wall_seconds: f64,
    /// Sum of the per-service times.
    pub sum_service_seconds: f64,
    /// The slowest dependency chain (by service time).
    pub critical_path: Vec<String>,
    /// Its length in seconds.
    pub critical_path_seconds: f64,
    /// Per service, in start order.
    pub services: Vec<ServiceRestore>,
    /// Cross-service invariants.
    pub invariants: Vec<InvariantResult>,
}

impl RestoreReport {
    /// True when every service and every invariant passed.
    pub fn ok(&self) -> bool {
        self.services.iter().all(|s| s.status == "passed")
            && self.invariants.iter().all(|i| i.status == "passed")
    }
}

/// One service's part of a stack backup.
#[derive(Debug, Serialize, Clone)]
pub struct ServiceBackup {
    /// Service.
    pub service: String,
    /// Its kind.
    pub kind: &'static str,
    /// Whether it succeeded.
    pub ok: bool,
    /// Error, if it failed.
    pub error: Option<String>,
    /// Snapshot written.
    pub snapshot: Option<String>,
    /// Capture time (Unix seconds): when its dump started.
    pub captured_at: f64,
    /// Wall time.
    pub seconds: f64,
    /// Bytes read from the service.
    pub bytes_read: u64,
    /// Bytes added to the repository.
    pub bytes_added: u64,
    /// Fingerprint recorded (tables, Redis databases).
    pub fingerprint: Fingerprint,
}

/// Result of `stack backup`.
#[derive(Debug, Serialize)]
pub struct StackBackupReport {
    /// Group id shared by the snapshots.
    pub group: String,
    /// Environment whose catalog was used.
    pub env: String,
    /// Per service.
    pub services: Vec<ServiceBackup>,
    /// Latest minus earliest capture time of the successful services.
    pub skew_seconds: f64,
    /// Wall time of the whole backup.
    pub seconds: f64,
    /// Temporary copies a killed run left (plaintext), removed first.
    pub stale_temps_removed: Vec<String>,
}
