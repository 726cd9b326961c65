//! Datastore adapters: each runs the datastore's own tools and streams their
//! output straight into the repository (and back out on restore).
//!
//! | kind | backup | restore |
//! |---|---|---|
//! | postgres | `pg_dump -Fc -Z0` (uncompressed, so cairn dedups it across days) | dump → temp file → drop/create database → `pg_restore -j N` |
//! | mariadb | `mariadb-dump --single-transaction` | drop/create database → `mariadb` reading the dump on stdin |
//! | redis | SCAN + DUMP + PTTL per key of the service's pattern | UNLINK the pattern's keys, RESTORE each with its TTL |
//! | files | directory tree | tree restored into the target directory (emptied first) |
//! | command | user command's stdout | user command reading the dump on stdin |
//!
//! The one temp file: `pg_restore -j` needs a seekable archive (it reads table
//! data out of order in parallel), which a pipe is not.

use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use cairn_format::snapshot::Snapshot;
use cairn_format::tree::NodeKind;
use cairn_repo::{
    BackupOptions, BackupResult, IndexedRepository, Progress, RepoError, RestoreOptions,
    RestoreProgress,
};

use crate::StackError;
use crate::catalog::{Kind, Service};
use crate::fingerprint::{self, Fingerprint};
use crate::redis::{Conn, Reply};

/// Name of the stream file inside a datastore snapshot.
pub const STREAM_NAME: &str = "dump";

fn err(svc: &Service, detail: impl Into<String>) -> StackError {
    StackError::Service {
        service: svc.name.clone(),
        detail: detail.into(),
    }
}

/// Apply connection settings to a tool's command.
pub(crate) fn tool(svc: &Service, program: &str) -> Command {
    let mut c = Command::new(program);
    c.stdin(Stdio::null());
    crate::children::contain(&mut c);
    match svc.kind {
        Kind::Postgres => {
            if let Some(h) = &svc.host {
                c.env("PGHOST", h);
            }
            if let Some(p) = svc.port {
                c.env("PGPORT", p.to_string());
            }
            if let Some(u) = &svc.user {
                c.env("PGUSER", u);
            }
            if let Some(p) = &svc.password {
                c.env("PGPASSWORD", p);
            }
            c.env("PGCONNECT_TIMEOUT", "10");
        }
        Kind::Mariadb => {
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
        _ => {}
    }
    c
}

/// Run to completion; stdout on success, an error with stderr otherwise.
pub(crate) fn run(
    svc: &Service,
    mut c: Command,
    input: Option<&[u8]>,
) -> Result<String, StackError> {
    let desc = format!("{:?}", c.get_program());
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c
        .spawn()
        .map_err(|e| err(svc, format!("cannot run {desc}: {e}")))?;
    if let Some(i) = input {
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(i)
            .map_err(|e| err(svc, format!("{desc}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(svc, format!("{desc}: {e}")))?;
    if !out.status.success() {
        return Err(err(
            svc,
            format!(
                "{desc} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Wait for a child whose stdout was consumed; fail with its stderr.
fn finish(svc: &Service, child: Child, what: &str) -> Result<(), RepoError> {
    let out = child
        .wait_with_output()
        .map_err(|e| RepoError::io(what, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RepoError::InvalidInput(format!(
            "service {}: {what} failed ({}): {}",
            svc.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A user command, run by `sh -c` in the catalog's directory.
pub fn shell(svc: &Service, cmd: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .current_dir(&svc.workdir);
    c
}

pub(crate) fn redis_conn(svc: &Service) -> Result<Conn, StackError> {
    let addr = format!(
        "{}:{}",
        svc.host.as_deref().unwrap_or("127.0.0.1"),
        svc.port.unwrap_or(6379)
    );
    Conn::connect(&addr, svc.password.as_deref())
        .map_err(|e| err(svc, format!("redis at {addr}: {e}")))
}

/// Back up one service, recording its fingerprint (see [`crate::fingerprint`]).
pub fn backup(
    svc: &Service,
    repo: &IndexedRepository,
    opts: BackupOptions,
) -> Result<BackupResult, StackError> {
    let progress = Progress::default();
    let repo_err = |e: StackError| match e {
        StackError::Repo(r) => r,
        other => RepoError::InvalidInput(other.to_string()),
    };
    // Stream a tool's stdout while `measure` fingerprints the same state on
    // another thread; the snapshot commits only when both succeeded.
    let stream = |mut child: Child,
                  what: &str,
                  measure: &(dyn Fn() -> Result<Fingerprint, StackError> + Sync)|
     -> Result<BackupResult, StackError> {
        let out = child.stdout.take().expect("piped");
        std::thread::scope(|s| {
            let fp = s.spawn(measure);
            let what = what.to_string();
            Ok(
                repo.backup_stream_measured(out, STREAM_NAME, &opts, &progress, move || {
                    finish(svc, child, &what)?;
                    let fp = fp
                        .join()
                        .map_err(|_| RepoError::InvalidInput("fingerprint thread panicked".into()))?
                        .map_err(repo_err)?;
                    Ok(fingerprint::encode(&fp))
                })?,
            )
        })
    };
    match svc.kind {
        Kind::Postgres => {
            // pg_dump and the fingerprint read the same exported snapshot.
            let snap = fingerprint::pg_export_snapshot(svc)?;
            let mut c = tool(svc, "pg_dump");
            c.args([
                "-Fc",
                "-Z0",
                "--snapshot",
                &snap.id,
                "-d",
                svc.database.as_deref().unwrap_or_default(),
            ]);
            let child = c
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| err(svc, format!("pg_dump: {e}")))?;
            let r = stream(child, "pg_dump", &|| {
                fingerprint::postgres(svc, Some(&snap.id))
            });
            drop(snap);
            r
        }
        Kind::Mariadb => {
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
            let out = DumpStarted {
                inner: child.stdout.take().expect("piped"),
                tail: Vec::new(),
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
                        let fp = fp
                            .join()
                            .map_err(|_| {
                                RepoError::InvalidInput("fingerprint thread panicked".into())
                            })?
                            .map_err(repo_err)?;
                        Ok(fingerprint::encode(&fp))
                    })?,
                )
            })
        }
        Kind::Command => {
            let child = crate::children::contain(&mut shell(
                svc,
                svc.backup.as_deref().expect("validated"),
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(svc, format!("backup command: {e}")))?;
            stream(child, "backup command", &|| Ok(Fingerprint::new()))
        }
        Kind::Files => {
            let path = svc.path.clone().expect("validated");
            if !path.is_dir() {
                return Err(err(svc, format!("{} is not a directory", path.display())));
            }
            Ok(repo.backup_paths(&[path], &opts, &progress)?)
        }
        Kind::Redis => {
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
                let res =
                    repo.backup_stream_measured(&mut r, STREAM_NAME, &opts, &progress, || {
                        let fp = writer
                            .join()
                            .map_err(|_| {
                                RepoError::InvalidInput("redis dump thread panicked".into())
                            })?
                            .map_err(repo_err)?;
                        Ok(fingerprint::encode(&fp))
                    });
                drop(r);
                Ok(res?)
            })
        }
    }
}

/// mariadb-dump's output, watched for the first sign that its transaction
/// has begun (it starts it before writing any table, routine or event
/// section); at that point, at the end of the output, or if the reader is
/// dropped, `started` is set.
struct DumpStarted<R: Read> {
    inner: R,
    /// The last bytes seen, for a marker split across reads.
    tail: Vec<u8>,
    started: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl<R: Read> DumpStarted<R> {
    fn signal(&self) {
        let (m, cv) = &*self.started;
        *m.lock().expect("dump started") = true;
        cv.notify_all();
    }
}

const DUMP_SECTIONS: [&[u8]; 4] = [
    b"\n-- Table structure for table ",
    b"\n-- Dumping data for table ",
    b"\n-- Dumping events for database ",
    b"\n-- Dumping routines for database ",
];

impl<R: Read> Read for DumpStarted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !*self.started.0.lock().expect("dump started") {
            if n == 0 {
                self.signal();
            } else {
                self.tail.extend_from_slice(&buf[..n]);
                if DUMP_SECTIONS
                    .iter()
                    .any(|m| self.tail.windows(m.len()).any(|w| w == *m))
                {
                    self.signal();
                    self.tail = Vec::new();
                } else {
                    let keep = self.tail.len().saturating_sub(64);
                    self.tail.drain(..keep);
                }
            }
        }
        Ok(n)
    }
}

impl<R: Read> Drop for DumpStarted<R> {
    fn drop(&mut self) {
        self.signal();
    }
}

const REDIS_MAGIC: &[u8] = b"CAIRN-REDIS-DUMP 1\n";

/// The first line of every dump mariadb-dump (10.11.8 and later) writes.
const MARIADB_SANDBOX: &[u8] = b"/*M!999999\\- enable the sandbox mode */";

/// Stream format: magic line, then per key `db u32 | key bytes32 | pttl i64
/// (-1 = no expiry) | DUMP payload bytes32`, all little-endian. Returns the
/// fingerprint of exactly the keys written.
fn redis_dump(
    svc: &Service,
    conn: &mut Conn,
    w: &mut impl Write,
) -> Result<Fingerprint, StackError> {
    let io = |e: std::io::Error| err(svc, format!("redis: {e}"));
    w.write_all(REDIS_MAGIC).map_err(io)?;
    let mut fp = fingerprint::RedisFingerprint::default();
    fingerprint::redis_keys(svc, conn, |k| {
        fp.add(&k);
        w.write_all(&k.db.to_le_bytes()).map_err(io)?;
        w.write_all(&(k.key.len() as u32).to_le_bytes())
            .map_err(io)?;
        w.write_all(&k.key).map_err(io)?;
        w.write_all(&k.pttl.to_le_bytes()).map_err(io)?;
        w.write_all(&(k.dump.len() as u32).to_le_bytes())
            .map_err(io)?;
        w.write_all(&k.dump).map_err(io)
    })?;
    Ok(fp.finish(&svc.databases))
}

/// Read a cairn Redis dump stream record by record: `(db, key, pttl, payload)`.
pub(crate) fn read_redis_dump(
    svc: &Service,
    r: &mut dyn Read,
    mut each: impl FnMut(u32, Vec<u8>, i64, Vec<u8>) -> Result<(), StackError>,
) -> Result<(), StackError> {
    let io = |e: std::io::Error| err(svc, format!("redis dump: {e}"));
    let mut magic = vec![0u8; REDIS_MAGIC.len()];
    r.read_exact(&mut magic).map_err(io)?;
    if magic != REDIS_MAGIC {
        return Err(err(svc, "the snapshot does not hold a cairn redis dump"));
    }
    loop {
        let mut dbb = [0u8; 4];
        match r.read_exact(&mut dbb) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(io(e)),
        }
        let read_bytes = |r: &mut dyn Read| -> Result<Vec<u8>, StackError> {
            let mut n = [0u8; 4];
            r.read_exact(&mut n).map_err(io)?;
            let n = u32::from_le_bytes(n) as usize;
            if n > 512 << 20 {
                return Err(err(svc, "redis dump record too large (damaged dump?)"));
            }
            let mut v = vec![0u8; n];
            r.read_exact(&mut v).map_err(io)?;
            Ok(v)
        };
        let key = read_bytes(r)?;
        let mut t = [0u8; 8];
        r.read_exact(&mut t).map_err(io)?;
        let payload = read_bytes(r)?;
        each(u32::from_le_bytes(dbb), key, i64::from_le_bytes(t), payload)?;
    }
}

/// UNLINK every key of the service's pattern in each of its databases;
/// returns how many there were.
fn unlink_service_keys(svc: &Service, conn: &mut Conn) -> std::io::Result<usize> {
    let mut n = 0;
    for db in &svc.databases {
        conn.call(&[b"SELECT", db.to_string().as_bytes()])?;
        let keys = conn.scan(&svc.key_pattern)?;
        for batch in keys.chunks(500) {
            let mut cmd: Vec<&[u8]> = vec![b"UNLINK"];
            cmd.extend(batch.iter().map(|k| k.as_slice()));
            conn.call(&cmd)?;
        }
        n += keys.len();
    }
    Ok(n)
}

/// Refuse a Redis dump holding keys outside the service's key space (its
/// pattern, its databases) before anything is written: a forged dump for
/// one service must not overwrite another's keys.
fn redis_check_key_space(
    svc: &Service,
    r: &mut dyn Read,
    map: &std::collections::BTreeMap<u32, u32>,
) -> Result<(), StackError> {
    let mut outside = 0u64;
    let mut first = None;
    read_redis_dump(svc, r, |db, key, _, _| {
        let db = map.get(&db).copied().unwrap_or(db);
        if !svc.databases.contains(&db) || !crate::target::glob_match(&svc.key_pattern, &key) {
            outside += 1;
            first.get_or_insert_with(|| format!("db{db} key {:?}", String::from_utf8_lossy(&key)));
        }
        Ok(())
    })?;
    if let Some(f) = first {
        return Err(err(
            svc,
            format!(
                "the dump holds {outside} key(s) outside the service's key space (pattern {:?}, databases {:?}), first {f}: refused before anything was touched (a dump of another key space may be forged)",
                svc.key_pattern, svc.databases
            ),
        ));
    }
    Ok(())
}

/// What a Redis load did.
#[derive(Debug, Default, Clone, Copy)]
pub struct RedisLoad {
    /// Keys restored.
    pub loaded: u64,
    /// Keys whose expiry (backup time + TTL) had passed: not restored.
    pub expired: u64,
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// When a key with `pttl` ms to live at the backup of `snap` expires (Unix
/// ms), or None without expiry. The snapshot's time is when the dump began,
/// before the key's TTL was read, so the expiry is never later than the
/// real one.
pub(crate) fn redis_expiry(snap: &Snapshot, pttl: i64) -> Option<i64> {
    (pttl >= 0).then(|| snap.time_ns / 1_000_000 + pttl)
}

fn redis_load(
    svc: &Service,
    conn: &mut Conn,
    r: &mut impl Read,
    map: &std::collections::BTreeMap<u32, u32>,
    snap: &Snapshot,
) -> Result<RedisLoad, StackError> {
    let io = |e: std::io::Error| err(svc, format!("redis restore: {e}"));
    let mut done = RedisLoad::default();
    // Remove the service's keys first, so the result equals the backup.
    unlink_service_keys(svc, conn).map_err(io)?;
    let mut current_db: Option<u32> = None;
    let mut cmds: Vec<Vec<Vec<u8>>> = Vec::new();
    let flush = |conn: &mut Conn, cmds: &mut Vec<Vec<Vec<u8>>>| -> Result<(), StackError> {
        for r in conn.pipeline(cmds).map_err(io)? {
            if let Reply::Error(e) = r {
                return Err(err(svc, format!("redis RESTORE: {e}")));
            }
        }
        cmds.clear();
        Ok(())
    };
    read_redis_dump(svc, r, |db, key, pttl, payload| {
        let db = map.get(&db).copied().unwrap_or(db);
        if current_db != Some(db) {
            flush(conn, &mut cmds)?;
            conn.call(&[b"SELECT", db.to_string().as_bytes()])
                .map_err(io)?;
            current_db = Some(db);
        }
        // Expiry times are absolute: the TTL left shrinks by the time since
        // the backup, and a key whose time has passed is not restored.
        let mut cmd = vec![b"RESTORE".to_vec(), key];
        match redis_expiry(snap, pttl) {
            None => cmd.push(b"0".to_vec()),
            Some(at) if at <= now_ms() => {
                done.expired += 1;
                return Ok(());
            }
            Some(at) => cmd.push(at.to_string().into_bytes()),
        }
        cmd.push(payload);
        cmd.push(b"REPLACE".to_vec());
        if pttl >= 0 {
            cmd.push(b"ABSTTL".to_vec());
        }
        done.loaded += 1;
        cmds.push(cmd);
        if cmds.len() >= 500 {
            flush(conn, &mut cmds)?;
        }
        Ok(())
    })?;
    flush(conn, &mut cmds)?;
    Ok(done)
}

/// A snapshot that passed [`preflight`] for a service: what [`restore`]
/// takes, so that nothing loads a snapshot that was not checked.
pub struct Checked<'a>(&'a Snapshot);

/// Check a snapshot before anything of the service is touched (no safety
/// snapshot, no stop, no drop): the adapter that wrote it must be the
/// catalog's kind; a MariaDB dump must begin with mariadb-dump's sandbox
/// line (it puts the client in sandbox mode: no `system`, `\!`, `source`;
/// a dump without it was not written by mariadb-dump as cairn runs it); a
/// Redis dump may hold only keys of the service's pattern and databases.
pub fn preflight<'a>(
    svc: &Service,
    repo: &IndexedRepository,
    id: &cairn_format::SnapshotId,
    snap: &'a Snapshot,
) -> Result<Checked<'a>, StackError> {
    crate::run::snapshot_kind_matches(svc, id, snap).map_err(|e| err(svc, e))?;
    match svc.kind {
        Kind::Mariadb => {
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
        }
        Kind::Redis => {
            let map = fingerprint::redis_db_map(svc, snap);
            with_dump(svc, repo, snap, &mut |r| {
                redis_check_key_space(svc, r, &map).map(|_| vec![])
            })?;
        }
        Kind::Postgres | Kind::Files | Kind::Command => {}
    }
    Ok(Checked(snap))
}

/// Load a snapshot into the service. Returns bytes restored and what was
/// held back (a files service's device nodes and setuid bits, Redis keys
/// that expired since the backup) as a sentence.
pub fn restore(
    svc: &Service,
    repo: &IndexedRepository,
    checked: Checked<'_>,
) -> Result<(u64, Option<String>), StackError> {
    let snap = checked.0;
    if svc.kind == Kind::Files {
        return restore_files(svc, repo, snap);
    }
    let node = repo
        .find_node(&snap.tree, format!("/{STREAM_NAME}").as_bytes())?
        .ok_or_else(|| err(svc, "snapshot holds no dump stream"))?;
    let size = node.size;
    let mut note = None;
    // Stream the dump into `sink` from a helper thread.
    let feed =
        |sink: &mut dyn Write| -> Result<(), StackError> { Ok(repo.dump_file(&node, sink)?) };
    match svc.kind {
        Kind::Postgres => {
            let db = svc.database.as_deref().unwrap_or_default();
            // The whole database in plaintext: 0600 in cairn's own
            // directory, removed on every path (also on a signal, and by
            // --resume after a SIGKILL).
            let dir = crate::children::temp_dir(svc.temp_dir.as_deref())
                .map_err(|e| err(svc, format!("temporary directory: {e}")))?;
            let mut tmp = crate::children::TempDump::create(&dir)
                .map_err(|e| err(svc, format!("temporary dump in {}: {e}", dir.display())))?;
            {
                let mut w = BufWriter::with_capacity(1 << 20, tmp.file());
                feed(&mut w)?;
                w.flush().map_err(|e| err(svc, e.to_string()))?;
            }
            let mut c = tool(svc, "psql");
            c.args(["-X", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"])
                .arg(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    crate::sql::pg::ident(db)
                ))
                .arg("-c")
                .arg(format!("CREATE DATABASE {}", crate::sql::pg::ident(db)));
            run(svc, c, None)?;
            let mut c = tool(svc, "pg_restore");
            c.args([
                "--exit-on-error",
                "-j",
                &svc.parallelism.to_string(),
                "-d",
                db,
            ])
            .arg(tmp.path());
            run(svc, c, None)?;
        }
        Kind::Mariadb => {
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
        }
        Kind::Command => {
            let mut c = shell(svc, svc.restore.as_deref().expect("validated"));
            crate::children::contain(&mut c);
            pipe_into(svc, c, &feed, "restore command")?;
        }
        Kind::Redis => {
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
        }
        Kind::Files => unreachable!("handled above"),
    }
    Ok((size, note))
}

fn pipe_into(
    svc: &Service,
    mut c: Command,
    feed: &(dyn Fn(&mut dyn Write) -> Result<(), StackError> + Sync),
    what: &str,
) -> Result<(), StackError> {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(svc, format!("{what}: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let fed = {
        let mut w = BufWriter::with_capacity(1 << 20, &mut stdin);
        let r = feed(&mut w);
        let _ = w.flush();
        r
    };
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| err(svc, format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(err(
            svc,
            format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    fed
}

fn restore_files(
    svc: &Service,
    repo: &IndexedRepository,
    snap: &Snapshot,
) -> Result<(u64, Option<String>), StackError> {
    let src = svc.path.as_ref().expect("validated");
    let target: PathBuf = svc.target.clone().unwrap_or_else(|| src.clone());
    let tree = service_tree(svc, repo, snap)?;
    // The service's directory must end up equal to the snapshot: empty it first.
    if target.exists() {
        for e in std::fs::read_dir(&target)
            .map_err(|e| err(svc, format!("{}: {e}", target.display())))?
        {
            let p = e.map_err(|e| err(svc, e.to_string()))?.path();
            let r = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(|e| err(svc, format!("{}: {e}", p.display())))?;
        }
    }
    let opts = RestoreOptions {
        target: target.clone(),
        includes: vec![],
        overwrite: true,
        no_owner: false,
        no_special: !svc.allow_special,
        no_setuid: !svc.allow_setuid,
        what: format!("service {}'s snapshot", svc.name),
    };
    let report = repo.restore(&tree, &opts, &RestoreProgress::default())?;
    if let Some(d) = report.damaged.first() {
        return Err(err(
            svc,
            format!(
                "{} files damaged, first: {}: {}",
                report.damaged.len(),
                d.path.display(),
                d.detail
            ),
        ));
    }
    Ok((report.bytes_written, report.withheld.summary()))
}

/// The tree a files service's directory has in its snapshot.
pub fn service_tree(
    svc: &Service,
    repo: &IndexedRepository,
    snap: &Snapshot,
) -> Result<cairn_format::ChunkId, StackError> {
    let src = svc.path.as_ref().expect("validated");
    let abs = cairn_repo::clean_absolute(src)?;
    let node = repo
        .find_node(&snap.tree, abs.as_os_str().as_encoded_bytes())?
        .ok_or_else(|| err(svc, "snapshot root is not the service directory"))?;
    match node.kind {
        NodeKind::Dir { tree } => Ok(tree),
        _ => Err(err(
            svc,
            format!("{} is not a directory in the snapshot", abs.display()),
        )),
    }
}

/// Reads a dump stream and reports what it found.
pub type DumpReader<'a> = dyn FnMut(&mut dyn Read) -> Result<Vec<String>, StackError> + 'a;

/// Run `f` over the snapshot's dump stream, read from the repository as `f`
/// consumes it.
pub fn with_dump(
    svc: &Service,
    repo: &IndexedRepository,
    snap: &Snapshot,
    f: &mut DumpReader,
) -> Result<Vec<String>, StackError> {
    let node = repo
        .find_node(&snap.tree, format!("/{STREAM_NAME}").as_bytes())?
        .ok_or_else(|| err(svc, "snapshot holds no dump stream"))?;
    let (r, mut w) = std::io::pipe().map_err(|e| err(svc, e.to_string()))?;
    std::thread::scope(|s| {
        let t = s.spawn(move || {
            let mut bw = BufWriter::with_capacity(1 << 20, &mut w);
            let res = repo.dump_file(&node, &mut bw);
            let _ = bw.flush();
            res
        });
        let mut br = std::io::BufReader::with_capacity(1 << 20, r);
        let out = f(&mut br);
        drop(br);
        let _ = t.join();
        out
    })
}

/// Run a SQL query in a postgres or mariadb service's database; its output
/// in batch form (tab-separated, no headers).
pub fn query(svc: &Service, sql: &str) -> Result<String, StackError> {
    let db = svc.database.as_deref().unwrap_or_default();
    match svc.kind {
        Kind::Postgres => {
            let mut c = tool(svc, "psql");
            c.args([
                "-X",
                "-At",
                "-F",
                "\t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
            ])
            .arg(sql);
            run(svc, c, None)
        }
        Kind::Mariadb => {
            let mut c = tool(svc, "mariadb");
            c.args(["-N", "-B", "-e"]).arg(sql).arg(db);
            run(svc, c, None)
        }
        _ => Err(err(
            svc,
            "sql invariants need a postgres or mariadb service (use `command` for others)",
        )),
    }
}

/// Whether the service's restore target holds anything a restore would
/// overwrite (a database that exists, matching keys, a non-empty directory;
/// command services are asked through their backup command).
pub fn holds_data(svc: &Service) -> Result<bool, StackError> {
    let db = svc.database.as_deref().unwrap_or_default();
    match svc.kind {
        Kind::Postgres => {
            let mut c = tool(svc, "psql");
            c.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"])
                .arg(format!(
                    "select count(*) from pg_database where datname = {}",
                    crate::sql::pg::lit(db)
                ));
            Ok(run(svc, c, None)?.trim() != "0")
        }
        Kind::Mariadb => {
            let mut c = tool(svc, "mariadb");
            c.args(["-N", "-B", "-e"]).arg(format!(
                "select count(*) from information_schema.schemata where schema_name = {}",
                crate::sql::my::lit(db)
            ));
            Ok(run(svc, c, None)?.trim() != "0")
        }
        Kind::Redis => {
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
        Kind::Files => {
            let t = svc
                .target
                .as_ref()
                .or(svc.path.as_ref())
                .expect("validated");
            Ok(std::fs::read_dir(t).is_ok_and(|mut d| d.next().is_some()))
        }
        Kind::Command => Ok(true),
    }
}

/// Remove what a drill restored: drop the database, unlink the keys, remove
/// the directory, or run the service's `teardown` command.
pub fn teardown(svc: &Service) -> Result<String, StackError> {
    let db = svc.database.as_deref().unwrap_or_default();
    match svc.kind {
        Kind::Postgres => {
            let mut c = tool(svc, "psql");
            c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"])
                .arg(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    crate::sql::pg::ident(db)
                ));
            run(svc, c, None)?;
            Ok(format!("dropped database {db}"))
        }
        Kind::Mariadb => {
            let mut c = tool(svc, "mariadb");
            c.arg("-e").arg(format!(
                "DROP DATABASE IF EXISTS {}",
                crate::sql::my::ident(db)
            ));
            run(svc, c, None)?;
            Ok(format!("dropped database {db}"))
        }
        Kind::Redis => {
            let n = unlink_service_keys(svc, &mut redis_conn(svc)?)
                .map_err(|e| err(svc, e.to_string()))?;
            Ok(format!("removed {n} keys"))
        }
        Kind::Files => {
            let t = svc
                .target
                .as_ref()
                .or(svc.path.as_ref())
                .expect("validated");
            if t.exists() {
                std::fs::remove_dir_all(t)
                    .map_err(|e| err(svc, format!("{}: {e}", t.display())))?;
            }
            Ok(format!("removed {}", t.display()))
        }
        Kind::Command => match svc.teardown.as_deref().or(svc.stop.as_deref()) {
            Some(c) => {
                run(svc, shell(svc, c), None)?;
                Ok(format!("ran `{c}`"))
            }
            None => Ok("no teardown command".into()),
        },
    }
}
