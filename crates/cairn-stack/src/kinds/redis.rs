//! Redis: the keys of the service's pattern in its databases, read with
//! DUMP/PTTL into cairn's own stream format; restored with RESTORE …
//! ABSTTL into the running server after the preflight checked every key is
//! the service's.

use std::io::{BufWriter, Write};

use cairn_format::snapshot::Snapshot;
use cairn_repo::{BackupOptions, BackupResult, IndexedRepository, Progress, RepoError};

use crate::StackError;
use crate::adapters::{
    STREAM_NAME, redis_check_key_space, redis_differences, redis_dump, redis_load, repo_err,
    unlink_service_keys, with_dump,
};
use crate::catalog::Service;
use crate::datastore::Datastore;
use crate::fingerprint::{self, Fingerprint, FingerprintReport};
use crate::target::{Server, Target};
use crate::tools::{err, redis_conn};

/// The `redis` kind.
pub struct Redis;

impl Datastore for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn fields(&self) -> &'static [&'static str] {
        &["host", "port", "password", "databases", "key_pattern"]
    }

    fn backup(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        opts: BackupOptions,
    ) -> Result<BackupResult, StackError> {
        let progress = Progress::default();

        let (mut r, mut w) = std::io::pipe().map_err(|e| err(svc, e.to_string()))?;
        let mut conn = redis_conn(svc)?;
        std::thread::scope(|s| {
            let writer = s.spawn(move || -> Result<Fingerprint, StackError> {
                let mut bw = BufWriter::with_capacity(1 << 20, &mut w);
                let r = redis_dump(svc, &mut conn, &mut bw);
                let f = bw.flush().map_err(|e| err(svc, e.to_string()));
                drop(bw);
                drop(w);
                let fp = r?;
                f?;
                Ok(fp)
            });
            let res = repo.backup_stream_measured(&mut r, STREAM_NAME, &opts, &progress, || {
                let fp = writer
                    .join()
                    .map_err(|_| RepoError::InvalidInput("redis dump thread panicked".into()))?
                    .map_err(repo_err)?;
                Ok(fingerprint::encode(&fp))
            });
            drop(r);
            Ok(res?)
        })
    }

    fn preflight(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        snap: &Snapshot,
    ) -> Result<(), StackError> {
        let map = fingerprint::redis_db_map(svc, snap);
        with_dump(svc, repo, snap, &mut |r| {
            redis_check_key_space(svc, r, &map).map(|_| vec![])
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
        let mut note = None;

        let map = fingerprint::redis_db_map(svc, snap);
        let mut conn = redis_conn(svc)?;
        let (mut r, mut w) = std::io::pipe().map_err(|e| err(svc, e.to_string()))?;
        std::thread::scope(|s| {
            let t = s.spawn(move || {
                let mut bw = BufWriter::with_capacity(1 << 20, &mut w);
                let res = feed(&mut bw);
                let _ = bw.flush();
                res
            });
            let mut br = std::io::BufReader::with_capacity(1 << 20, &mut r);
            let loaded = redis_load(svc, &mut conn, &mut br, &map, snap);
            drop(br);
            drop(r);
            let fed = t.join().map_err(|_| err(svc, "dump thread panicked"))?;
            fed?;
            loaded
        })
        .map(|l| {
            note = (l.expired > 0).then(|| {
                format!(
                    "{} key(s) had expired since the backup and were not restored",
                    l.expired
                )
            });
        })?;

        Ok((size, note))
    }

    fn verify(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        snap: &Snapshot,
    ) -> Result<FingerprintReport, StackError> {
        let mut f = crate::fingerprint::verify_fingerprint(svc, repo, snap, "keys")?;
        if !f.differences.is_empty() {
            // Compare key by key: the stored dump (authenticated, the same
            // keys the fingerprint covers) with the live keys. Keys that
            // expired since the backup are not restored, so the database
            // digests differ; the key comparison then decides.
            let map = fingerprint::redis_db_map(svc, snap);
            let mut conn = redis_conn(svc)?;
            let keys = with_dump(svc, repo, snap, &mut |r| {
                redis_differences(svc, &mut conn, r, &map, snap)
            })?;
            f.differences = if keys.is_empty() {
                vec![]
            } else {
                let mut d = f.differences.clone();
                d.extend(keys.into_iter().take(20));
                d
            };
            f.verified = Some(f.differences.is_empty());
        }
        Ok(f)
    }

    fn live_fingerprint(&self, svc: &Service) -> Result<Option<Fingerprint>, StackError> {
        Ok(Some(fingerprint::redis(svc, &mut redis_conn(svc)?)?))
    }

    fn holds_data(&self, svc: &Service) -> Result<bool, StackError> {
        let mut conn = redis_conn(svc)?;
        for d in &svc.databases {
            conn.call(&[b"SELECT", d.to_string().as_bytes()])
                .map_err(|e| err(svc, e.to_string()))?;
            if !conn
                .scan(&svc.key_pattern)
                .map_err(|e| err(svc, e.to_string()))?
                .is_empty()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn teardown(&self, svc: &Service) -> Result<String, StackError> {
        let n =
            unlink_service_keys(svc, &mut redis_conn(svc)?).map_err(|e| err(svc, e.to_string()))?;
        Ok(format!("removed {n} keys"))
    }

    fn target(&self, s: &Service) -> Target {
        Target::Redis {
            server: Server::resolve(s.host.as_deref(), s.port.unwrap_or(6379)),
            databases: s.databases.iter().copied().collect(),
            pattern: s.key_pattern.clone(),
        }
    }

    fn describe(&self, s: &Service) -> String {
        format!(
            "redis keys matching {:?} in databases {:?} at {}:{} (replaced)",
            s.key_pattern,
            s.databases,
            s.host.as_deref().unwrap_or("127.0.0.1"),
            s.port.unwrap_or(6379)
        )
    }

    fn env(&self, s: &Service) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASES", format!("{:?}", s.databases)),
            ("KEY_PATTERN", s.key_pattern.clone()),
        ]
    }
}
