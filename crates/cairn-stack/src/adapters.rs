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

fn quote_ident_pg(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
fn quote_ident_my(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}
fn quote_lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
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
            let child = c
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| err(svc, format!("mariadb-dump: {e}")))?;
            stream(child, "mariadb-dump", &|| fingerprint::mariadb(svc))
        }
        Kind::Command => {
            let child = shell(svc, svc.backup.as_deref().expect("validated"))
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

const REDIS_MAGIC: &[u8] = b"CAIRN-REDIS-DUMP 1\n";

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

fn redis_load(
    svc: &Service,
    conn: &mut Conn,
    r: &mut impl Read,
    map: &std::collections::BTreeMap<u32, u32>,
) -> Result<(), StackError> {
    let io = |e: std::io::Error| err(svc, format!("redis restore: {e}"));
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
        cmds.push(vec![
            b"RESTORE".to_vec(),
            key,
            pttl.max(0).to_string().into_bytes(), // -1 (no expiry) → 0
            payload,
            b"REPLACE".to_vec(),
        ]);
        if cmds.len() >= 500 {
            flush(conn, &mut cmds)?;
        }
        Ok(())
    })?;
    flush(conn, &mut cmds)
}

/// Load a snapshot into the service. Returns bytes restored and, for files
/// services, what was withheld (device nodes, setuid bits) as a sentence.
pub fn restore(
    svc: &Service,
    repo: &IndexedRepository,
    snap: &Snapshot,
) -> Result<(u64, Option<String>), StackError> {
    if svc.kind == Kind::Files {
        return restore_files(svc, repo, snap);
    }
    let node = repo
        .find_node(&snap.tree, format!("/{STREAM_NAME}").as_bytes())?
        .ok_or_else(|| err(svc, "snapshot holds no dump stream"))?;
    let size = node.size;
    // Stream the dump into `sink` from a helper thread.
    let feed =
        |sink: &mut dyn Write| -> Result<(), StackError> { Ok(repo.dump_file(&node, sink)?) };
    match svc.kind {
        Kind::Postgres => {
            let db = svc.database.as_deref().unwrap_or_default();
            let mut tmp = tempfile::Builder::new()
                .prefix("cairn-pg-")
                .suffix(".dump")
                .tempfile()
                .map_err(|e| err(svc, e.to_string()))?;
            {
                let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
                feed(&mut w)?;
                w.flush().map_err(|e| err(svc, e.to_string()))?;
            }
            let mut c = tool(svc, "psql");
            c.args(["-X", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"])
                .arg(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident_pg(db)
                ))
                .arg("-c")
                .arg(format!("CREATE DATABASE {}", quote_ident_pg(db)));
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
            let mut c = tool(svc, "mariadb");
            c.arg("-e").arg(format!(
                "DROP DATABASE IF EXISTS {0}; CREATE DATABASE {0}",
                quote_ident_my(db)
            ));
            run(svc, c, None)?;
            let mut c = tool(svc, "mariadb");
            c.arg(db);
            pipe_into(svc, c, &feed, "mariadb")?;
        }
        Kind::Command => {
            pipe_into(
                svc,
                shell(svc, svc.restore.as_deref().expect("validated")),
                &feed,
                "restore command",
            )?;
        }
        Kind::Redis => {
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
                let loaded = redis_load(
                    svc,
                    &mut conn,
                    &mut br,
                    &fingerprint::redis_db_map(svc, snap),
                );
                drop(br);
                drop(r);
                let fed = t.join().map_err(|_| err(svc, "dump thread panicked"))?;
                fed.and(loaded)
            })?;
        }
        Kind::Files => unreachable!("handled above"),
    }
    Ok((size, None))
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
                    quote_lit(db)
                ));
            Ok(run(svc, c, None)?.trim() != "0")
        }
        Kind::Mariadb => {
            let mut c = tool(svc, "mariadb");
            c.args(["-N", "-B", "-e"]).arg(format!(
                "select count(*) from information_schema.schemata where schema_name = {}",
                quote_lit(db)
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
                    quote_ident_pg(db)
                ));
            run(svc, c, None)?;
            Ok(format!("dropped database {db}"))
        }
        Kind::Mariadb => {
            let mut c = tool(svc, "mariadb");
            c.arg("-e")
                .arg(format!("DROP DATABASE IF EXISTS {}", quote_ident_my(db)));
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
