//! `stack backup`: every selected service in parallel under one group id,
//! each snapshot with the fingerprint of exactly what it holds.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use cairn_format::id::to_hex;
use cairn_repo::{BackupOptions, IndexedRepository, ParentChoice};
use serde::Serialize;

use crate::adapters;
use crate::catalog::Catalog;
use crate::fingerprint::{self, Fingerprint};
use crate::run::kind_name;
use crate::time::unix_secs;

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

/// Run `f` over `items` on up to `jobs` threads, results in input order.
pub(crate) fn parallel<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= items.len() {
                        break;
                    }
                    let r = f(&items[i]);
                    out.lock().expect("results")[i] = Some(r);
                }
            });
        }
    });
    out.into_inner()
        .expect("results")
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

/// Back up the selected services in parallel under one group id.
pub fn stack_backup(
    cat: &Catalog,
    repo: &IndexedRepository,
    selected: &BTreeSet<String>,
    jobs: usize,
    hostname: &str,
    username: &str,
) -> StackBackupReport {
    let start = Instant::now();
    let stale_temps_removed =
        crate::children::sweep_stale(selected.iter().filter_map(|n| cat.services.get(n)))
            .into_iter()
            .map(|p| p.display().to_string())
            .collect();
    let mut group = [0u8; 16];
    cairn_format::crypto::random_bytes(&mut group);
    let names: Vec<&String> = selected.iter().collect();
    let services = parallel(&names, jobs, |name| {
        let svc = &cat.services[*name];
        let t0 = Instant::now();
        let captured_at = unix_secs(SystemTime::now());
        let opts = BackupOptions {
            service: svc.name.clone(),
            hostname: hostname.to_string(),
            username: username.to_string(),
            tags: vec!["stack".into(), format!("kind:{}", kind_name(svc.kind))],
            parent: ParentChoice::Auto,
            group: Some(group),
            fingerprints: vec![],
            exclusions: Default::default(),
        };
        match adapters::backup(svc, repo, opts) {
            Ok(r) => ServiceBackup {
                service: svc.name.clone(),
                kind: kind_name(svc.kind),
                ok: true,
                error: None,
                snapshot: Some(r.id.to_hex()),
                captured_at,
                seconds: t0.elapsed().as_secs_f64(),
                bytes_read: r.snapshot.summary.bytes_read,
                bytes_added: r.snapshot.summary.bytes_added,
                fingerprint: fingerprint::decode(&r.snapshot),
            },
            Err(e) => ServiceBackup {
                service: svc.name.clone(),
                kind: kind_name(svc.kind),
                ok: false,
                error: Some(e.to_string()),
                snapshot: None,
                captured_at,
                seconds: t0.elapsed().as_secs_f64(),
                bytes_read: 0,
                bytes_added: 0,
                fingerprint: Fingerprint::new(),
            },
        }
    });
    let caps: Vec<f64> = services
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.captured_at)
        .collect();
    let skew = if caps.is_empty() {
        0.0
    } else {
        caps.iter().cloned().fold(f64::MIN, f64::max)
            - caps.iter().cloned().fold(f64::MAX, f64::min)
    };
    StackBackupReport {
        group: to_hex(&group),
        env: cat.env.clone(),
        services,
        skew_seconds: skew,
        seconds: start.elapsed().as_secs_f64(),
        stale_temps_removed,
    }
}
