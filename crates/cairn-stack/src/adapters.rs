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
//!
//! Running the tools themselves (connection settings, errors with their
//! stderr) is [`crate::tools`]; what is here streams, checks and loads what
//! they read and write, the cairn Redis dump stream included.

use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use cairn_format::SnapshotId;
use cairn_format::snapshot::Snapshot;
use cairn_format::tree::NodeKind;
use cairn_repo::{
    BackupOptions, BackupResult, IndexedRepository, Progress, RepoError, RestoreOptions,
    RestoreProgress,
};

use crate::StackError;
use crate::catalog::Service;
use crate::fingerprint::{self, Fingerprint};
use crate::redis::{Conn, Reply};
use crate::report::kind_name;
use crate::tools::{err, finish};

/// Name of the stream file inside a datastore snapshot.
pub const STREAM_NAME: &str = "dump";

/// Back up one service, recording its fingerprint (see [`crate::fingerprint`]).
pub fn backup(
    svc: &Service,
    repo: &IndexedRepository,
    opts: BackupOptions,
) -> Result<BackupResult, StackError> {
    svc.kind.datastore().backup(svc, repo, opts)
}

/// A stack error as a repository error (inside a backup's commit hook).
pub(crate) fn repo_err(e: StackError) -> RepoError {
    match e {
        StackError::Repo(r) => r,
        other => RepoError::InvalidInput(other.to_string()),
    }
}

/// Stream a tool's stdout into the repository while `measure` fingerprints
/// the same state on another thread; the snapshot commits only when both
/// succeeded (and the tool exited 0).
pub(crate) fn stream_child(
    svc: &Service,
    repo: &IndexedRepository,
    opts: &BackupOptions,
    progress: &Progress,
    mut child: Child,
    what: &str,
    measure: &(dyn Fn() -> Result<Fingerprint, StackError> + Sync),
) -> Result<BackupResult, StackError> {
    let out = child.stdout.take().expect("piped");
    std::thread::scope(|s| {
        let fp = s.spawn(measure);
        let what = what.to_string();
        Ok(
            repo.backup_stream_measured(out, STREAM_NAME, opts, progress, move || {
                finish(svc, child, &what)?;
                let fp = fp
                    .join()
                    .map_err(|_| RepoError::InvalidInput("fingerprint thread panicked".into()))?
                    .map_err(repo_err)?;
                Ok(fingerprint::encode(&fp))
            })?,
        )
    })
}

/// The snapshot's dump stream and its size.
pub(crate) fn dump_node(
    svc: &Service,
    repo: &IndexedRepository,
    snap: &Snapshot,
) -> Result<(cairn_format::tree::Node, u64), StackError> {
    let node = repo
        .find_node(&snap.tree, format!("/{STREAM_NAME}").as_bytes())?
        .ok_or_else(|| err(svc, "snapshot holds no dump stream"))?;
    let size = node.size;
    Ok((node, size))
}

/// mariadb-dump's output, watched for the first sign that its transaction
/// has begun (it starts it before writing any table, routine or event
/// section); at that point, at the end of the output, or if the reader is
/// dropped, `started` is set.
pub(crate) struct DumpStarted<R: Read> {
    pub(crate) inner: R,
    /// The last bytes seen, for a marker split across reads.
    pub(crate) tail: Vec<u8>,
    /// The first bytes of the output (to check its sandbox line).
    pub(crate) head: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    pub(crate) started: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
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
        {
            let mut h = self.head.lock().expect("dump head");
            if h.len() < 64 {
                let take = (64 - h.len()).min(n);
                h.extend_from_slice(&buf[..take]);
            }
        }
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

/// Stream format: magic line, then per key `db u32 | key bytes32 | pttl i64
/// (-1 = no expiry) | DUMP payload bytes32`, all little-endian. Returns the
/// fingerprint of exactly the keys written.
pub(crate) fn redis_dump(
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
pub(crate) fn unlink_service_keys(svc: &Service, conn: &mut Conn) -> std::io::Result<usize> {
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
pub(crate) fn redis_check_key_space(
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

/// Name the Redis keys that differ from the snapshot's dump (missing, extra,
/// or with another value or expiry): compares the stored `DUMP` payloads
/// with the live ones.
pub fn redis_differences(
    svc: &Service,
    conn: &mut Conn,
    stored: &mut dyn Read,
    map: &BTreeMap<u32, u32>,
    snap: &Snapshot,
) -> Result<Vec<String>, StackError> {
    let mut want: BTreeMap<(u32, Vec<u8>), (bool, Vec<u8>)> = BTreeMap::new();
    // Keys whose expiry has passed (or passes within the next seconds, while
    // this runs) are not required; present, they still compare.
    let soon = now_ms() + 5_000;
    let mut may_be_gone: BTreeMap<(u32, Vec<u8>), (bool, Vec<u8>)> = BTreeMap::new();
    read_redis_dump(svc, stored, |db, key, pttl, payload| {
        let db = map.get(&db).copied().unwrap_or(db);
        match redis_expiry(snap, pttl) {
            Some(at) if at <= soon => may_be_gone.insert((db, key), (true, payload)),
            _ => want.insert((db, key), (pttl >= 0, payload)),
        };
        Ok(())
    })?;
    let mut out = Vec::new();
    fingerprint::redis_keys(svc, conn, |k| {
        let name = String::from_utf8_lossy(&k.key).into_owned();
        let id = (k.db, k.key.clone());
        match want.remove(&id).or_else(|| may_be_gone.remove(&id)) {
            None => out.push(format!("db{} key {name:?}: not in the backup", k.db)),
            Some((ttl, payload)) => {
                if payload != k.dump {
                    out.push(format!("db{} key {name:?}: value differs", k.db));
                } else if ttl != (k.pttl >= 0) {
                    out.push(format!("db{} key {name:?}: expiry differs", k.db));
                }
            }
        }
        Ok(())
    })?;
    for (db, key) in want.keys() {
        out.push(format!(
            "db{db} key {:?}: missing after the restore",
            String::from_utf8_lossy(key)
        ));
    }
    Ok(out)
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

pub(crate) fn redis_load(
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

/// Refuse a snapshot whose adapter tag (`kind:…`, written by every stack
/// backup and safety snapshot) is not the catalog's kind for the service.
pub fn snapshot_kind_matches(svc: &Service, id: &SnapshotId, s: &Snapshot) -> Result<(), String> {
    let want = kind_name(svc.kind);
    let kinds: Vec<&str> = s
        .tags
        .iter()
        .filter_map(|t| t.strip_prefix("kind:"))
        .collect();
    match kinds.as_slice() {
        [k] if *k == want => Ok(()),
        [] => Err(format!(
            "snapshot {} has no kind tag (it was not written by a stack backup); the catalog says kind {want}",
            &id.to_hex()[..8]
        )),
        ks => Err(format!(
            "snapshot {} was written as kind {}, but the catalog says kind {want}: a snapshot of another kind is not restored (it may be forged)",
            &id.to_hex()[..8],
            ks.join(", ")
        )),
    }
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
    snapshot_kind_matches(svc, id, snap).map_err(|e| err(svc, e))?;
    svc.kind.datastore().preflight(svc, repo, snap)?;
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
    svc.kind.datastore().restore(svc, repo, checked.0)
}

pub(crate) fn pipe_into(
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

pub(crate) fn restore_files(
    svc: &Service,
    repo: &IndexedRepository,
    snap: &Snapshot,
) -> Result<(u64, Option<String>), StackError> {
    let src = svc.path.as_ref().expect("validated");
    let target: PathBuf = svc.target.clone().unwrap_or_else(|| src.clone());
    let tree = service_tree(svc, repo, snap)?;
    // The service's directory must end up equal to the snapshot: empty it
    // first (never what is mounted inside it).
    if target.exists() {
        cairn_repo::empty_directory(&target)
            .map_err(|e| err(svc, format!("emptying {}: {e}", target.display())))?;
    }
    let opts = RestoreOptions {
        target: target.clone(),
        overwrite: true,
        no_owner: false,
        no_special: !svc.allow_special,
        no_setuid: !svc.allow_setuid,
        what: format!("service {}'s snapshot", svc.name),
        ..Default::default()
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
    svc.kind.datastore().query(svc, sql)
}

/// Whether the service's restore target holds anything a restore would
/// overwrite (a database that exists, matching keys, a non-empty directory;
/// command services are asked through their backup command).
pub fn holds_data(svc: &Service) -> Result<bool, StackError> {
    svc.kind.datastore().holds_data(svc)
}

/// Remove what a drill restored: drop the database, unlink the keys, remove
/// the directory, or run the service's `teardown` command.
pub fn teardown(svc: &Service) -> Result<String, StackError> {
    svc.kind.datastore().teardown(svc)
}
