//! Directory trees: backed up as cairn trees, restored through the
//! descriptor-based restore (nothing followed that was swapped in; devices
//! and setuid bits withheld unless the catalog allows them), verified entry
//! by entry.

use std::path::PathBuf;

use cairn_format::snapshot::Snapshot;
use cairn_repo::select::{Exclusions, Pattern, Patterns};
use cairn_repo::{BackupOptions, BackupResult, IndexedRepository, Progress};

use crate::StackError;
use crate::catalog::Service;
use crate::datastore::Datastore;
use crate::fingerprint::{self, FingerprintReport};
use crate::target::{Target, canonical};
use crate::tools::err;

/// The backup exclusions of a `files` service.
pub fn exclusions(svc: &Service) -> Result<Exclusions, StackError> {
    let patterns: Vec<Pattern> = svc.exclude.iter().map(Pattern::new).collect();
    Ok(Exclusions {
        patterns: Patterns::new(&patterns).map_err(|e| err(svc, format!("exclude: {e}")))?,
        one_file_system: svc.one_file_system,
        ..Default::default()
    })
}

/// The `files` kind.
pub struct Files;

impl Datastore for Files {
    fn name(&self) -> &'static str {
        "files"
    }

    fn fields(&self) -> &'static [&'static str] {
        &[
            "path",
            "target",
            "allow_special",
            "allow_setuid",
            "exclude",
            "one_file_system",
        ]
    }

    fn required(&self) -> &'static [(&'static str, &'static str)] {
        &[("path", "path")]
    }

    fn backup(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        mut opts: BackupOptions,
    ) -> Result<BackupResult, StackError> {
        let progress = Progress::default();
        opts.exclusions = exclusions(svc)?;

        let path = svc.path.clone().expect("validated");
        if !path.is_dir() {
            return Err(err(svc, format!("{} is not a directory", path.display())));
        }
        Ok(repo.backup_paths(&[path], &opts, &progress)?)
    }

    fn preflight(
        &self,
        svc: &Service,
        _repo: &IndexedRepository,
        _snap: &Snapshot,
    ) -> Result<(), StackError> {
        let t = svc
            .target
            .as_ref()
            .or(svc.path.as_ref())
            .expect("validated");
        match crate::target::swappable_ancestor(t) {
            Some(why) => Err(err(svc, format!("{why}; nothing was touched"))),
            None => Ok(()),
        }
    }

    fn restore(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        snap: &Snapshot,
    ) -> Result<(u64, Option<String>), StackError> {
        let t = svc
            .target
            .as_ref()
            .or(svc.path.as_ref())
            .expect("validated");
        if let Some(why) = crate::target::swappable_ancestor(t) {
            return Err(err(svc, why));
        }
        crate::adapters::restore_files(svc, repo, snap)
    }

    fn verify(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        snap: &Snapshot,
    ) -> Result<FingerprintReport, StackError> {
        let mut f = FingerprintReport {
            expected: fingerprint::decode(snap),
            ..Default::default()
        };

        f.method = "tree".into();
        let tree = crate::adapters::service_tree(svc, repo, snap)?;
        f.tree = Some(tree.to_hex());
        let dir = svc
            .target
            .as_ref()
            .or(svc.path.as_ref())
            .expect("validated");
        let withheld = fingerprint::Withholding {
            special: !svc.allow_special,
            setuid: !svc.allow_setuid,
        };
        f.differences = fingerprint::verify_tree(repo, &tree, dir, withheld, 20)?;
        f.verified = Some(f.differences.is_empty());

        Ok(f)
    }

    fn holds_data(&self, svc: &Service) -> Result<bool, StackError> {
        let t = svc
            .target
            .as_ref()
            .or(svc.path.as_ref())
            .expect("validated");
        Ok(std::fs::read_dir(t).is_ok_and(|mut d| d.next().is_some()))
    }

    fn teardown(&self, svc: &Service) -> Result<String, StackError> {
        let t = svc
            .target
            .as_ref()
            .or(svc.path.as_ref())
            .expect("validated");
        if let Some(why) = crate::target::swappable_ancestor(t) {
            return Err(err(svc, format!("{why}; {} left in place", t.display())));
        }
        if t.exists() {
            std::fs::remove_dir_all(t).map_err(|e| err(svc, format!("{}: {e}", t.display())))?;
        }
        Ok(format!("removed {}", t.display()))
    }

    fn target(&self, s: &Service) -> Target {
        Target::Dir(canonical(
            s.target
                .as_deref()
                .or(s.path.as_deref())
                .unwrap_or(std::path::Path::new("")),
            &s.workdir,
        ))
    }

    fn protected(&self, s: &Service) -> Vec<Target> {
        let mut v = vec![self.target(s)];
        if let Some(p) = &s.path {
            v.push(Target::Dir(canonical(p, &s.workdir)));
        }
        v
    }

    fn live_view(&self, svc: &Service) -> Service {
        let mut s = svc.clone();
        if let Some(t) = s.target.take() {
            s.path = Some(t);
        }
        s
    }

    fn describe(&self, s: &Service) -> String {
        format!(
            "directory {} (emptied, then restored)",
            s.target
                .as_ref()
                .or(s.path.as_ref())
                .map(|p: &PathBuf| p.display().to_string())
                .unwrap_or_default()
        )
    }
}
