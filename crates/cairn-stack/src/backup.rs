//! `stack backup`: every selected service in parallel under one group id,
//! each snapshot with the fingerprint of exactly what it holds.

use std::collections::BTreeSet;
use std::time::{Instant, SystemTime};

use cairn_format::id::to_hex;
use cairn_repo::{BackupOptions, IndexedRepository, ParentChoice};

use crate::adapters;
use crate::catalog::Catalog;
use crate::fingerprint::{self, Fingerprint};
use crate::parallel::parallel;
use crate::report::{ServiceBackup, StackBackupReport, kind_name};
use crate::time::unix_secs;

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
            dry_run: false,
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
