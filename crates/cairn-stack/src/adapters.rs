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
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use cairn_format::snapshot::Snapshot;
use cairn_format::tree::NodeKind;
use cairn_repo::{
    BackupOptions, BackupResult, IndexedRepository, Progress, RepoError, RestoreOptions,
    RestoreProgress,
};

use crate::StackError;
use crate::catalog::{Kind, Service};
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
fn tool(svc: &Service, program: &str) -> Command {
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
fn run(svc: &Service, mut c: Command, input: Option<&[u8]>) -> Result<String, StackError> {
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

fn parse_counts(out: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = out
        .lines()
        .filter_map(|l| {
            let (k, n) = l.rsplit_once('\t')?;
            Some((k.to_string(), n.trim().parse().ok()?))
        })
        .collect();
    v.sort();
    v
}

fn redis_conn(svc: &Service) -> Result<Conn, StackError> {
    let addr = format!(
        "{}:{}",
        svc.host.as_deref().unwrap_or("127.0.0.1"),
        svc.port.unwrap_or(6379)
    );
    Conn::connect(&addr, svc.password.as_deref())
        .map_err(|e| err(svc, format!("redis at {addr}: {e}")))
}

/// Row, key or file counts of the live service, by name (sorted): what the
/// snapshot records at backup time.
pub fn counts(svc: &Service) -> Result<Vec<(String, u64)>, StackError> {
    counts_at(svc, svc.path.as_deref())
}

/// The same counts where a restore put the data (a files service's target).
pub fn restored_counts(svc: &Service) -> Result<Vec<(String, u64)>, StackError> {
    counts_at(svc, svc.target.as_deref().or(svc.path.as_deref()))
}

fn counts_at(svc: &Service, dir: Option<&Path>) -> Result<Vec<(String, u64)>, StackError> {
    match svc.kind {
        Kind::Postgres => {
            let db = svc.database.as_deref().unwrap_or_default();
            let mut c = tool(svc, "psql");
            c.args(["-X", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", db, "-c"]).arg(
                "select schemaname, tablename from pg_tables where schemaname not in ('pg_catalog','information_schema') order by 1, 2",
            );
            let tables = run(svc, c, None)?;
            let parts: Vec<String> = tables
                .lines()
                .filter_map(|l| l.split_once('\t'))
                .map(|(s, t)| {
                    format!(
                        "select {}, count(*) from {}.{}",
                        quote_lit(&format!("{s}.{t}")),
                        quote_ident_pg(s),
                        quote_ident_pg(t)
                    )
                })
                .collect();
            if parts.is_empty() {
                return Ok(vec![]);
            }
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
            .arg(parts.join(" union all "));
            Ok(parse_counts(&run(svc, c, None)?))
        }
        Kind::Mariadb => {
            let db = svc.database.as_deref().unwrap_or_default();
            let mut c = tool(svc, "mariadb");
            c.args(["-N", "-B", "-e"]).arg(format!(
                "select table_name from information_schema.tables where table_schema = {} and table_type = 'BASE TABLE' order by 1",
                quote_lit(db)
            ));
            let tables = run(svc, c, None)?;
            let parts: Vec<String> = tables
                .lines()
                .filter(|t| !t.is_empty())
                .map(|t| {
                    format!(
                        "select {}, count(*) from {}.{}",
                        quote_lit(t),
                        quote_ident_my(db),
                        quote_ident_my(t)
                    )
                })
                .collect();
            if parts.is_empty() {
                return Ok(vec![]);
            }
            let mut c = tool(svc, "mariadb");
            c.args(["-N", "-B", "-e"]).arg(parts.join(" union all "));
            Ok(parse_counts(&run(svc, c, None)?))
        }
        Kind::Redis => {
            let mut conn = redis_conn(svc)?;
            let mut out = Vec::new();
            for db in &svc.databases {
                conn.call(&[b"SELECT", db.to_string().as_bytes()])
                    .map_err(|e| err(svc, e.to_string()))?;
                let n = conn
                    .scan(&svc.key_pattern)
                    .map_err(|e| err(svc, e.to_string()))?
                    .len();
                out.push((format!("db{db}"), n as u64));
            }
            Ok(out)
        }
        Kind::Files => {
            let root = dir.expect("validated: files services have a path");
            let (mut files, mut bytes) = (0u64, 0u64);
            count_files(root, &mut files, &mut bytes)
                .map_err(|e| err(svc, format!("{}: {e}", root.display())))?;
            Ok(vec![("bytes".into(), bytes), ("files".into(), files)])
        }
        Kind::Command => Ok(vec![]),
    }
}

fn count_files(p: &Path, files: &mut u64, bytes: &mut u64) -> std::io::Result<()> {
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            count_files(&e.path(), files, bytes)?;
        } else if ft.is_file() {
            *files += 1;
            *bytes += e.metadata()?.len();
        }
    }
    Ok(())
}

/// Encode counts as snapshot fingerprints (`count:NAME` → u64 LE).
pub fn counts_to_fingerprints(c: &[(String, u64)]) -> Vec<(String, Vec<u8>)> {
    c.iter()
        .map(|(k, v)| (format!("count:{k}"), v.to_le_bytes().to_vec()))
        .collect()
}

/// Decode the counts a snapshot recorded.
pub fn fingerprints_to_counts(s: &Snapshot) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = s
        .fingerprints
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("count:")?;
            let b: [u8; 8] = v.as_slice().try_into().ok()?;
            Some((name.to_string(), u64::from_le_bytes(b)))
        })
        .collect();
    v.sort();
    v
}

/// Back up one service.
pub fn backup(
    svc: &Service,
    repo: &IndexedRepository,
    mut opts: BackupOptions,
) -> Result<BackupResult, StackError> {
    let progress = Progress::default();
    // Counts first: the service must be reachable before anything is written.
    let c = counts(svc)?;
    opts.fingerprints = counts_to_fingerprints(&c);
    let stream = |mut child: Child, what: &str| -> Result<BackupResult, StackError> {
        let out = child.stdout.take().expect("piped");
        let what = what.to_string();
        Ok(
            repo.backup_stream(out, STREAM_NAME, &opts, &progress, move || {
                finish(svc, child, &what)
            })?,
        )
    };
    match svc.kind {
        Kind::Postgres => {
            let mut c = tool(svc, "pg_dump");
            c.args([
                "-Fc",
                "-Z0",
                "-d",
                svc.database.as_deref().unwrap_or_default(),
            ]);
            let child = c
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| err(svc, format!("pg_dump: {e}")))?;
            stream(child, "pg_dump")
        }
        Kind::Mariadb => {
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
            stream(child, "mariadb-dump")
        }
        Kind::Command => {
            let child = shell(svc, svc.backup.as_deref().expect("validated"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| err(svc, format!("backup command: {e}")))?;
            stream(child, "backup command")
        }
        Kind::Files => {
            let path = svc.path.clone().expect("validated");
            Ok(repo.backup_paths(&[path], &opts, &progress)?)
        }
        Kind::Redis => {
            let (mut r, mut w) = std::io::pipe().map_err(|e| err(svc, e.to_string()))?;
            let mut conn = redis_conn(svc)?;
            std::thread::scope(|s| {
                let writer = s.spawn(move || -> Result<(), StackError> {
                    let mut bw = BufWriter::with_capacity(1 << 20, &mut w);
                    let r = redis_dump(svc, &mut conn, &mut bw);
                    let f = bw.flush().map_err(|e| err(svc, e.to_string()));
                    drop(bw);
                    drop(w);
                    r.and(f)
                });
                let res = repo.backup_stream(&mut r, STREAM_NAME, &opts, &progress, || Ok(()));
                drop(r);
                let w = writer
                    .join()
                    .map_err(|_| err(svc, "redis dump thread panicked"))?;
                w?;
                Ok(res?)
            })
        }
    }
}

const REDIS_MAGIC: &[u8] = b"CAIRN-REDIS-DUMP 1\n";

/// Stream format: magic line, then per key `db u32 | key bytes32 | pttl i64
/// (-1 = no expiry) | DUMP payload bytes32`, all little-endian.
fn redis_dump(svc: &Service, conn: &mut Conn, w: &mut impl Write) -> Result<(), StackError> {
    let io = |e: std::io::Error| err(svc, format!("redis: {e}"));
    w.write_all(REDIS_MAGIC).map_err(io)?;
    for db in &svc.databases {
        conn.call(&[b"SELECT", db.to_string().as_bytes()])
            .map_err(io)?;
        let keys = conn.scan(&svc.key_pattern).map_err(io)?;
        for batch in keys.chunks(500) {
            let mut cmds = Vec::with_capacity(batch.len() * 2);
            for k in batch {
                cmds.push(vec![b"PTTL".to_vec(), k.clone()]);
                cmds.push(vec![b"DUMP".to_vec(), k.clone()]);
            }
            let replies = conn.pipeline(&cmds).map_err(io)?;
            for (k, pair) in batch.iter().zip(replies.chunks(2)) {
                let (Reply::Int(ttl), Reply::Bulk(Some(payload))) = (&pair[0], &pair[1]) else {
                    continue; // expired or deleted since SCAN
                };
                if *ttl == -2 {
                    continue;
                }
                w.write_all(&db.to_le_bytes()).map_err(io)?;
                w.write_all(&(k.len() as u32).to_le_bytes()).map_err(io)?;
                w.write_all(k).map_err(io)?;
                w.write_all(&ttl.to_le_bytes()).map_err(io)?;
                w.write_all(&(payload.len() as u32).to_le_bytes())
                    .map_err(io)?;
                w.write_all(payload).map_err(io)?;
            }
        }
    }
    Ok(())
}

fn redis_load(svc: &Service, conn: &mut Conn, r: &mut impl Read) -> Result<(), StackError> {
    let io = |e: std::io::Error| err(svc, format!("redis restore: {e}"));
    let mut magic = vec![0u8; REDIS_MAGIC.len()];
    r.read_exact(&mut magic).map_err(io)?;
    if magic != REDIS_MAGIC {
        return Err(err(svc, "the snapshot does not hold a cairn redis dump"));
    }
    // Remove the service's keys first, so the result equals the backup.
    for db in &svc.databases {
        conn.call(&[b"SELECT", db.to_string().as_bytes()])
            .map_err(io)?;
        let keys = conn.scan(&svc.key_pattern).map_err(io)?;
        for batch in keys.chunks(500) {
            let mut cmd: Vec<&[u8]> = vec![b"UNLINK"];
            cmd.extend(batch.iter().map(|k| k.as_slice()));
            conn.call(&cmd).map_err(io)?;
        }
    }
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
    loop {
        let mut dbb = [0u8; 4];
        match r.read_exact(&mut dbb) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io(e)),
        }
        let db = u32::from_le_bytes(dbb);
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
        let ttl = i64::from_le_bytes(t).max(0); // -1 (no expiry) → 0
        let payload = read_bytes(r)?;
        if current_db != Some(db) {
            flush(conn, &mut cmds)?;
            conn.call(&[b"SELECT", db.to_string().as_bytes()])
                .map_err(io)?;
            current_db = Some(db);
        }
        cmds.push(vec![
            b"RESTORE".to_vec(),
            key,
            ttl.to_string().into_bytes(),
            payload,
            b"REPLACE".to_vec(),
        ]);
        if cmds.len() >= 500 {
            flush(conn, &mut cmds)?;
        }
    }
    flush(conn, &mut cmds)
}

/// Load a snapshot into the service. Returns bytes restored.
pub fn restore(
    svc: &Service,
    repo: &IndexedRepository,
    snap: &Snapshot,
) -> Result<u64, StackError> {
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
                let loaded = redis_load(svc, &mut conn, &mut br);
                drop(br);
                drop(r);
                let fed = t.join().map_err(|_| err(svc, "dump thread panicked"))?;
                fed.and(loaded)
            })?;
        }
        Kind::Files => unreachable!("handled above"),
    }
    Ok(size)
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
) -> Result<u64, StackError> {
    let src = svc.path.as_ref().expect("validated");
    let target: PathBuf = svc.target.clone().unwrap_or_else(|| src.clone());
    let abs = cairn_repo::clean_absolute(src)?;
    let node = repo
        .find_node(&snap.tree, abs.as_os_str().as_encoded_bytes())?
        .ok_or_else(|| err(svc, "snapshot root is not the service directory"))?;
    let NodeKind::Dir { tree } = node.kind else {
        return Err(err(
            svc,
            format!("{} is not a directory in the snapshot", abs.display()),
        ));
    };
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
    Ok(report.bytes_written)
}
