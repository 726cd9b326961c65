//! MariaDB / MySQL: `mariadb-dump --single-transaction`, fingerprinted in
//! transactions started with the dump's under a brief global read lock
//! (`fingerprint.rs`); restored through `mariadb --sandbox` after the
//! preflight checked the dump's own sandbox line.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use cairn_format::snapshot::Snapshot;
use cairn_repo::{BackupOptions, BackupResult, IndexedRepository, Progress, RepoError};

use crate::StackError;
use crate::adapters::{DumpStarted, STREAM_NAME, pipe_into, repo_err, with_dump};
use crate::catalog::{Kind, Service};
use crate::datastore::Datastore;
use crate::fingerprint::{self, Fingerprint};
use crate::target::{Server, Target};
use crate::tools::{err, finish, run, tool};

/// The first line of every dump mariadb-dump (10.11.8 and later) writes.
const MARIADB_SANDBOX: &[u8] = b"/*M!999999\\- enable the sandbox mode */";

/// The `mariadb` kind.
pub struct Mariadb;

impl Datastore for Mariadb {
    fn name(&self) -> &'static str {
        "mariadb"
    }

    fn fields(&self) -> &'static [&'static str] {
        &[
            "host",
            "port",
            "user",
            "password",
            "database",
            "parallelism",
        ]
    }

    fn required(&self) -> &'static [(&'static str, &'static str)] {
        &[("database", "database")]
    }

    fn configure(&self, svc: &Service, c: &mut Command) {
        let program = c.get_program().to_string_lossy().into_owned();

        c.arg("--protocol=TCP");
        c.arg(format!(
            "--host={}",
            svc.host.as_deref().unwrap_or("127.0.0.1")
        ));
        c.arg(format!("--port={}", svc.port.unwrap_or(3306)));
        c.arg(format!("--user={}", svc.user.as_deref().unwrap_or("root")));
        if program == "mariadb" {
            c.arg("--connect-timeout=10");
        }
        if let Some(p) = &svc.password {
            c.env("MYSQL_PWD", p);
        }
    }

    fn backup(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        opts: BackupOptions,
    ) -> Result<BackupResult, StackError> {
        let progress = Progress::default();

        // Reachability first: nothing is written for an unreachable server.
        let mut c = tool(svc, "mariadb");
        c.args(["-N", "-e", "SELECT 1"]);
        run(svc, c, None)?;
        // Under a brief global read lock: the fingerprint transactions
        // start, then the dump's (see fingerprint.rs).
        let mut consistent = fingerprint::MyConsistent::begin(svc)?;
        let mut c = tool(svc, "mariadb-dump");
        c.args([
            "--single-transaction",
            "--quick",
            "--routines",
            "--triggers",
            "--events",
            "--hex-blob",
        ]);
        c.arg(svc.database.as_deref().unwrap_or_default());
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(svc, format!("mariadb-dump: {e}")))?;
        let started =
            std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let head = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = DumpStarted {
            inner: child.stdout.take().expect("piped"),
            tail: Vec::new(),
            head: head.clone(),
            started: started.clone(),
        };
        std::thread::scope(|s| {
            let fp = s.spawn(move || {
                let (m, cv) = &*started;
                let mut g = m.lock().expect("dump started");
                while !*g {
                    g = cv.wait(g).expect("dump started");
                }
                drop(g);
                consistent.release();
                consistent.finish(svc)
            });
            Ok(
                repo.backup_stream_measured(out, STREAM_NAME, &opts, &progress, move || {
                    finish(svc, child, "mariadb-dump")?;
                    // A dump without the sandbox line would be refused on
                    // the day it is needed: refuse the backup now instead.
                    if !head.lock().expect("dump head").starts_with(MARIADB_SANDBOX) {
                        return Err(RepoError::InvalidInput(format!(
                            "service {}: mariadb-dump did not begin its dump with the sandbox line (/*M!999999\\- enable the sandbox mode */; mariadb-dump 10.11.8 or later writes it), and restores refuse a dump without it: backup refused",
                            svc.name
                        )));
                    }
                    let (fp, held) = fp
                        .join()
                        .map_err(|_| RepoError::InvalidInput("fingerprint thread panicked".into()))?
                        .map_err(repo_err)?;
                    // Tables without transactions kept the lock until here.
                    drop(held);
                    Ok(fingerprint::encode(&fp))
                })?,
            )
        })
    }

    fn preflight(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        snap: &Snapshot,
    ) -> Result<(), StackError> {
        with_dump(svc, repo, snap, &mut |r| {
            let mut head = Vec::new();
            let _ = r.take(MARIADB_SANDBOX.len() as u64).read_to_end(&mut head);
            if head != MARIADB_SANDBOX {
                return Err(err(
                    svc,
                    "the dump does not begin with mariadb-dump's sandbox line (/*M!999999\\- enable the sandbox mode */): refused before anything was touched (a dump without it may be forged, or come from a mariadb-dump older than 10.11.8)",
                ));
            }
            Ok(vec![])
        })?;

        Ok(())
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

        let db = svc.database.as_deref().unwrap_or_default();
        // The client runs with --sandbox (the preflight checked the
        // dump's own sandbox line too), so a shell escape in the dump
        // fails the load instead of running.
        let mut c = tool(svc, "mariadb");
        c.arg("-e").arg(format!(
            "DROP DATABASE IF EXISTS {0}; CREATE DATABASE {0}",
            crate::sql::my::ident(db)
        ));
        run(svc, c, None)?;
        let mut c = tool(svc, "mariadb");
        c.arg("--sandbox").arg(db);
        pipe_into(svc, c, &feed, "mariadb")?;

        Ok((size, None))
    }

    fn live_fingerprint(&self, svc: &Service) -> Result<Option<Fingerprint>, StackError> {
        Ok(Some(fingerprint::mariadb(svc)?))
    }

    fn query(&self, svc: &Service, sql: &str) -> Result<String, StackError> {
        let db = svc.database.as_deref().unwrap_or_default();

        let mut c = tool(svc, "mariadb");
        c.args(["-N", "-B", "-e"]).arg(sql).arg(db);
        run(svc, c, None)
    }

    fn holds_data(&self, svc: &Service) -> Result<bool, StackError> {
        let db = svc.database.as_deref().unwrap_or_default();

        let mut c = tool(svc, "mariadb");
        c.args(["-N", "-B", "-e"]).arg(format!(
            "select count(*) from information_schema.schemata where schema_name = {}",
            crate::sql::my::lit(db)
        ));
        Ok(run(svc, c, None)?.trim() != "0")
    }

    fn teardown(&self, svc: &Service) -> Result<String, StackError> {
        let db = svc.database.as_deref().unwrap_or_default();

        let mut c = tool(svc, "mariadb");
        c.arg("-e").arg(format!(
            "DROP DATABASE IF EXISTS {}",
            crate::sql::my::ident(db)
        ));
        run(svc, c, None)?;
        Ok(format!("dropped database {db}"))
    }

    fn target(&self, s: &Service) -> Target {
        Target::Database {
            engine: Kind::MARIADB,
            server: Server::resolve(s.host.as_deref(), s.port.unwrap_or(3306)),
            name: s.database.clone().unwrap_or_default(),
        }
    }

    fn describe(&self, s: &Service) -> String {
        format!(
            "mariadb database {:?} at {}:{} (dropped and recreated)",
            s.database.as_deref().unwrap_or(""),
            s.host.as_deref().unwrap_or("127.0.0.1"),
            s.port.unwrap_or(3306)
        )
    }
}
