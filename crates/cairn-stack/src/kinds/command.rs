//! User commands: the `backup` command's stdout is the snapshot, the
//! `restore` command reads it on stdin; nothing to fingerprint.

use std::io::Write;
use std::process::Stdio;

use cairn_format::snapshot::Snapshot;
use cairn_repo::{BackupOptions, BackupResult, IndexedRepository, Progress};

use crate::StackError;
use crate::adapters::pipe_into;
use crate::catalog::Service;
use crate::datastore::Datastore;
use crate::fingerprint::{Fingerprint, FingerprintReport};
use crate::target::{Target, canonical};
use crate::tools::{err, run, shell};

/// The `command` kind.
pub struct CommandKind;

/// The output of the service's `verify` command, fingerprinted (None
/// without one).
fn live(svc: &Service) -> Result<Option<Fingerprint>, StackError> {
    let Some(v) = &svc.verify else {
        return Ok(None);
    };
    let mut c = shell(svc, v);
    crate::children::contain(&mut c);
    let part = crate::fingerprint::hash_output(svc, c, "", "verify command")?;
    Ok(Some(Fingerprint::from([("verify".to_string(), part)])))
}

impl Datastore for CommandKind {
    fn name(&self) -> &'static str {
        "command"
    }

    fn fields(&self) -> &'static [&'static str] {
        &["backup", "restore", "teardown", "verify"]
    }

    fn required(&self) -> &'static [(&'static str, &'static str)] {
        &[("backup", "backup command"), ("restore", "restore command")]
    }

    fn backup(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        opts: BackupOptions,
    ) -> Result<BackupResult, StackError> {
        let progress = Progress::default();

        let child =
            crate::children::contain(&mut shell(svc, svc.backup.as_deref().expect("validated")))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| err(svc, format!("backup command: {e}")))?;
        crate::adapters::stream_child(
            svc,
            repo,
            &opts,
            &progress,
            child,
            "backup command",
            &|| live(svc).map(Option::unwrap_or_default),
        )
    }

    fn restore(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        snap: &Snapshot,
    ) -> Result<(u64, Option<String>), StackError> {
        let (node, size) = crate::adapters::dump_node(svc, repo, snap)?;
        let feed =
            |sink: &mut dyn Write| -> Result<(), StackError> { Ok(repo.dump_file(&node, sink)?) };

        let mut c = shell(svc, svc.restore.as_deref().expect("validated"));
        crate::children::contain(&mut c);
        pipe_into(svc, c, &feed, "restore command")?;

        Ok((size, None))
    }

    fn verify(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        snap: &Snapshot,
    ) -> Result<FingerprintReport, StackError> {
        if svc.verify.is_some() {
            crate::fingerprint::verify_fingerprint(svc, repo, snap, "command")
        } else {
            Ok(FingerprintReport {
                expected: crate::fingerprint::decode(snap),
                method: "none".into(),
                ..Default::default()
            })
        }
    }

    fn live_fingerprint(&self, svc: &Service) -> Result<Option<Fingerprint>, StackError> {
        live(svc)
    }

    fn holds_data(&self, _svc: &Service) -> Result<bool, StackError> {
        // Asked through its backup command when the safety snapshot runs.
        Ok(true)
    }

    fn teardown(&self, svc: &Service) -> Result<String, StackError> {
        match svc.teardown.as_deref().or(svc.stop.as_deref()) {
            Some(c) => {
                run(svc, shell(svc, c), None)?;
                Ok(format!("ran `{c}`"))
            }
            None => Ok("no teardown command".into()),
        }
    }

    fn target(&self, s: &Service) -> Target {
        Target::Command {
            restore: s.restore.clone().unwrap_or_default().trim().to_string(),
            workdir: canonical(&s.workdir, std::path::Path::new("/")),
        }
    }

    fn safety_snapshot_optional(&self) -> bool {
        true
    }

    fn describe(&self, s: &Service) -> String {
        format!("whatever `{}` writes", s.restore.as_deref().unwrap_or(""))
    }
}
