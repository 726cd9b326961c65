//! Logical fingerprints: what a service holds, independent of its physical
//! layout, so a restore can be proven equal to the backup (format-spec §11).
//!
//! | kind | part name | count | hash |
//! |---|---|---|---|
//! | postgres | `table:<schema>.<table>` | rows | BLAKE3 of the `COPY … TO STDOUT` text of the rows in primary-key order (no key: ordered by the row's text) |
//! | mariadb | `table:<table>` | rows | BLAKE3 of the batch-mode rows in primary-key order (no key: ordered by every column) |
//! | sqlite | `table:<table>` | rows | BLAKE3 of the rows in `.mode quote` ordered by every column, read from the online backup's copy (`kinds/sqlite.rs`) |
//! | redis | `db<n>` | keys | BLAKE3 over the keys in byte order, each `key, type, TTL present, value` |
//! | files | (the snapshot's tree) | | compared entry by entry with the restored directory |
//!
//! PostgreSQL fingerprints are taken inside the exported snapshot `pg_dump`
//! runs in, so they describe exactly the dumped state even while the database
//! is being written. MariaDB cannot share a snapshot between sessions, so
//! the backup holds a brief global read lock (`FLUSH TABLES WITH READ LOCK`,
//! the RELOAD privilege) while the fingerprint sessions and `mariadb-dump`
//! start their consistent-snapshot transactions, and releases it as soon as
//! the dump's output shows it has begun (its first table section); every
//! snapshot then sees the same committed state, even under writes. Writers
//! wait for that window only (milliseconds; `mariadb-dump
//! --single-transaction --master-data` holds the same lock for the same
//! reason).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use cairn_format::ChunkId;
use cairn_format::snapshot::Snapshot;
use cairn_format::tree::{Extent, NodeKind};
use cairn_repo::IndexedRepository;
use serde::Serialize;

use crate::StackError;
use crate::catalog::Service;
use crate::redis::{Conn, Reply};

/// One measured part of a service (a table, a Redis database).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// Rows or keys.
    pub count: u64,
    /// BLAKE3 over the part's content (all zero when only a count is known).
    pub hash: [u8; 32],
}

impl Serialize for Part {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Part", 2)?;
        st.serialize_field("count", &self.count)?;
        st.serialize_field("hash", &cairn_format::id::to_hex(&self.hash))?;
        st.end()
    }
}

/// Parts by name.
pub type Fingerprint = BTreeMap<String, Part>;

const PREFIX: &str = "fp:";

/// Encode as snapshot fingerprint entries (`fp:<part>` → count u64 LE ‖ hash).
pub fn encode(f: &Fingerprint) -> Vec<(String, Vec<u8>)> {
    f.iter()
        .map(|(k, p)| {
            let mut v = p.count.to_le_bytes().to_vec();
            v.extend_from_slice(&p.hash);
            (format!("{PREFIX}{k}"), v)
        })
        .collect()
}

/// Decode what a snapshot recorded (older `count:` entries give counts only).
pub fn decode(s: &Snapshot) -> Fingerprint {
    let mut f = Fingerprint::new();
    for (k, v) in &s.fingerprints {
        if let Some(name) = k.strip_prefix(PREFIX)
            && v.len() == 40
        {
            let count = u64::from_le_bytes(v[..8].try_into().expect("8"));
            let hash: [u8; 32] = v[8..].try_into().expect("32");
            f.insert(name.to_string(), Part { count, hash });
        } else if let Some(name) = k.strip_prefix("count:")
            && let Ok(b) = <[u8; 8]>::try_from(v.as_slice())
        {
            let name = if name.starts_with("db") || name == "files" || name == "bytes" {
                name.to_string()
            } else {
                format!("table:{name}")
            };
            f.insert(
                name,
                Part {
                    count: u64::from_le_bytes(b),
                    hash: [0; 32],
                },
            );
        }
    }
    f
}

/// The differences between a recorded and a recomputed fingerprint, one line
/// per part, naming it.
pub fn compare(expected: &Fingerprint, actual: &Fingerprint) -> Vec<String> {
    let mut out = Vec::new();
    for (k, e) in expected {
        match actual.get(k) {
            None => out.push(format!("{k}: missing after the restore")),
            Some(a) if a.count != e.count => out.push(format!(
                "{k}: {} rows/keys expected, {} found",
                e.count, a.count
            )),
            Some(a) if e.hash != [0; 32] && a.hash != e.hash => out.push(format!(
                "{k}: content differs ({} rows/keys in both; hash {} expected, {} found)",
                e.count,
                &cairn_format::id::to_hex(&e.hash)[..16],
                &cairn_format::id::to_hex(&a.hash)[..16]
            )),
            Some(_) => {}
        }
    }
    for k in actual.keys() {
        if !expected.contains_key(k) {
            out.push(format!("{k}: present after the restore, not in the backup"));
        }
    }
    out
}

fn err(svc: &Service, detail: impl Into<String>) -> StackError {
    StackError::Service {
        service: svc.name.clone(),
        detail: detail.into(),
    }
}

/// Hash a child's stdout line by line: (lines, BLAKE3).
pub(crate) fn hash_output(
    svc: &Service,
    mut c: Command,
    input: &str,
    what: &str,
) -> Result<Part, StackError> {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(svc, format!("{what}: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(input.as_bytes())
        .map_err(|e| err(svc, format!("{what}: {e}")))?;
    drop(stdin);
    let mut out = child.stdout.take().expect("piped");
    let mut h = blake3::Hasher::new();
    let mut count = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = out
            .read(&mut buf)
            .map_err(|e| err(svc, format!("{what}: {e}")))?;
        if n == 0 {
            break;
        }
        count += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        h.update(&buf[..n]);
    }
    let o = child
        .wait_with_output()
        .map_err(|e| err(svc, format!("{what}: {e}")))?;
    if !o.status.success() {
        return Err(err(
            svc,
            format!(
                "{what} failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ));
    }
    Ok(Part {
        count,
        hash: *h.finalize().as_bytes(),
    })
}

/// A PostgreSQL session holding a transaction whose snapshot was exported;
/// the snapshot lives as long as this value.
pub struct PgSnapshot {
    child: Child,
    /// The snapshot id (`pg_dump --snapshot`, `SET TRANSACTION SNAPSHOT`).
    pub id: String,
}

impl Drop for PgSnapshot {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Open a repeatable-read transaction and export its snapshot.
pub fn pg_export_snapshot(svc: &Service) -> Result<PgSnapshot, StackError> {
    let db = svc.database.as_deref().unwrap_or_default();
    let mut c = crate::adapters::tool(svc, "psql");
    c.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db]);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(svc, format!("psql: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(
            b"SET search_path = pg_catalog, pg_temp;\nBEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_catalog.pg_export_snapshot();\n",
        )
        .and_then(|_| stdin.flush())
        .map_err(|e| err(svc, format!("psql: {e}")))?;
    child.stdin = Some(stdin);
    let mut line = String::new();
    let mut r = BufReader::new(child.stdout.take().expect("piped"));
    let _ = r.read_line(&mut line);
    let id = line.trim().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        drop(child.stdin.take());
        let o = child
            .wait_with_output()
            .map_err(|e| err(svc, format!("psql: {e}")))?;
        return Err(err(
            svc,
            format!(
                "cannot export a snapshot of database {db:?}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ));
    }
    Ok(PgSnapshot { child, id })
}

/// Every fingerprint session: functions and operators resolve in
/// `pg_catalog` only, so a database (which may be hostile: restored from a
/// forged snapshot, or written by an application role) cannot make the
/// catalog's user — often a superuser — call its own `public.quote_ident`
/// or operator instead (as pg_dump does since CVE-2018-1058).
const PG_SESSION: &str = "SET search_path = pg_catalog, pg_temp;\nSET TimeZone = 'UTC';\nSET DateStyle = 'ISO, YMD';\nSET IntervalStyle = 'postgres';\nSET extra_float_digits = 1;\nSET bytea_output = 'hex';\nBEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n";

fn pg_script(snapshot: Option<&str>, body: &str) -> String {
    let mut s = PG_SESSION.to_string();
    if let Some(id) = snapshot {
        s += &format!("SET TRANSACTION SNAPSHOT '{id}';\n");
    }
    s + body + "\nCOMMIT;\n"
}

/// Fingerprint a PostgreSQL database (inside `snapshot` when given).
pub fn postgres(svc: &Service, snapshot: Option<&str>) -> Result<Fingerprint, StackError> {
    let db = svc.database.as_deref().unwrap_or_default();
    let psql = || {
        let mut c = crate::adapters::tool(svc, "psql");
        c.args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-f",
            "-",
        ]);
        c
    };
    // Tables (partitions through their parent) with their primary-key columns.
    let list = "COPY (SELECT n.nspname, c.relname, coalesce((SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname::pg_catalog.text) || CASE WHEN a.attcollation <> 0 THEN ' COLLATE pg_catalog.\"C\"' ELSE '' END, ', ' ORDER BY k.ord) FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum WHERE i.indrelid = c.oid AND i.indisprimary), '') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2) TO STDOUT WITH (FORMAT csv);";
    let out = crate::adapters::run(svc, psql(), Some(pg_script(snapshot, list).as_bytes()))?;
    let mut tables = Vec::new();
    for rec in parse_csv(&out) {
        if rec.len() == 3 {
            tables.push((rec[0].clone(), rec[1].clone(), rec[2].clone()));
        }
    }
    let parts = crate::run::parallel(&tables, svc.parallelism as usize, |(s, t, pk)| {
        let order = if pk.is_empty() {
            // The row's text through the built-in record output, never a
            // cast: the table's owner owns its row type and may have made
            // a cast of it to text that runs its own function. `x.*`: a
            // column may be named `x` too.
            "pg_catalog.textin(pg_catalog.record_out(x.*)) COLLATE pg_catalog.\"C\"".to_string()
        } else {
            pk.clone()
        };
        let q = format!(
            "COPY (SELECT * FROM {}.{} AS x ORDER BY {order}) TO STDOUT;",
            crate::sql::pg::ident(s),
            crate::sql::pg::ident(t)
        );
        hash_output(
            svc,
            psql(),
            &pg_script(snapshot, &q),
            &format!("fingerprint of {s}.{t}"),
        )
        .map(|p| (format!("table:{s}.{t}"), p))
    });
    parts.into_iter().collect()
}

/// Fingerprint a MariaDB database in a consistent-snapshot transaction.
/// A `mariadb` client kept open: statements are written to it and its
/// batch output read line by line up to a marker only this session knows.
pub(crate) struct MySession {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    out: BufReader<std::process::ChildStdout>,
    marker: Vec<u8>,
    svc_name: String,
}

impl MySession {
    /// Connect (unbuffered batch mode: each result is written at once).
    pub(crate) fn open(svc: &Service) -> Result<MySession, StackError> {
        let mut c = crate::adapters::tool(svc, "mariadb");
        c.args(["-N", "-B", "-n", "--default-character-set=utf8mb4"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .map_err(|e| err(svc, format!("cannot run mariadb: {e}")))?;
        let mut nonce = [0u8; 16];
        cairn_format::crypto::random_bytes(&mut nonce);
        Ok(MySession {
            stdin: child.stdin.take(),
            out: BufReader::new(child.stdout.take().expect("piped")),
            child,
            marker: format!("cairn-end-{}", cairn_format::id::to_hex(&nonce)).into_bytes(),
            svc_name: svc.name.clone(),
        })
    }

    fn fail(&mut self, what: &str, e: impl std::fmt::Display) -> StackError {
        // The client stops at the first failing statement: its stderr says why.
        self.stdin.take();
        let mut msg = String::new();
        if let Some(mut se) = self.child.stderr.take() {
            let _ = se.read_to_string(&mut msg);
        }
        let _ = self.child.wait();
        StackError::Service {
            service: self.svc_name.clone(),
            detail: format!(
                "{what}: {}",
                if msg.trim().is_empty() {
                    e.to_string()
                } else {
                    msg.trim().to_string()
                }
            ),
        }
    }

    /// Run `sql` (complete statements), calling `line` for every output line
    /// (with its newline) until the marker.
    pub(crate) fn exec(
        &mut self,
        what: &str,
        sql: &str,
        line: &mut dyn FnMut(&[u8]),
    ) -> Result<(), StackError> {
        let m = String::from_utf8_lossy(&self.marker).into_owned();
        let w = self
            .stdin
            .as_mut()
            .map(|i| i.write_all(format!("{sql}\nSELECT '{m}';\n").as_bytes()))
            .unwrap_or_else(|| Err(std::io::Error::other("session closed")));
        if let Err(e) = w {
            return Err(self.fail(what, e));
        }
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match self.out.read_until(b'\n', &mut buf) {
                Ok(0) => return Err(self.fail(what, "the client ended")),
                Ok(_) => {}
                Err(e) => return Err(self.fail(what, e)),
            }
            if buf.strip_suffix(b"\n") == Some(self.marker.as_slice()) {
                return Ok(());
            }
            line(&buf);
        }
    }

    /// End the session (its transaction and locks end with it).
    pub(crate) fn close(mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

/// The base tables of a MariaDB database: name, primary-key column list
/// (quoted, or empty), number of columns.
/// The base tables of a MariaDB database (name, quoted primary-key columns
/// or empty, number of columns), and the names of those whose engine has no
/// transactions (Aria, MyISAM, …: a consistent snapshot does not cover them).
fn mariadb_tables(svc: &Service, s: &mut MySession) -> Result<(MyTables, Vec<String>), StackError> {
    let db = svc.database.as_deref().unwrap_or_default();
    let list = format!(
        "SELECT t.table_name, coalesce((SELECT group_concat(concat('`', replace(k.column_name, '`', '``'), '`') ORDER BY k.ordinal_position SEPARATOR ', ') FROM information_schema.key_column_usage k WHERE k.table_schema = t.table_schema AND k.table_name = t.table_name AND k.constraint_name = 'PRIMARY'), ''), (SELECT count(*) FROM information_schema.columns c WHERE c.table_schema = t.table_schema AND c.table_name = t.table_name), coalesce(t.engine, '') FROM information_schema.tables t WHERE t.table_schema = {} AND t.table_type = 'BASE TABLE' ORDER BY 1;",
        crate::sql::my::lit(db)
    );
    let mut out = Vec::new();
    let mut plain = Vec::new();
    s.exec("listing tables", &list, &mut |l| {
        let l = String::from_utf8_lossy(l);
        let mut it = l.trim_end_matches('\n').split('\t');
        if let (Some(t), Some(pk), Some(n)) = (it.next(), it.next(), it.next())
            && let Ok(n) = n.parse()
        {
            if !it.next().unwrap_or("").eq_ignore_ascii_case("innodb") {
                plain.push(t.to_string());
            }
            out.push((t.to_string(), pk.to_string(), n));
        }
    })?;
    Ok((out, plain))
}

/// Sessions ready to fingerprint, each inside its own consistent-snapshot
/// transaction.
fn mariadb_snapshot_sessions(svc: &Service, n: usize) -> Result<Vec<MySession>, StackError> {
    (0..n.max(1))
        .map(|_| {
            let mut s = MySession::open(svc)?;
            s.exec(
                "starting the fingerprint transaction",
                "SET time_zone = '+00:00'; START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;",
                &mut |_| {},
            )?;
            Ok(s)
        })
        .collect()
}

/// Hash every table over the sessions (each in its transaction), tables
/// shared out among them.
fn mariadb_hash_tables(
    svc: &Service,
    sessions: Vec<MySession>,
    tables: &[(String, String, usize)],
) -> Result<Fingerprint, StackError> {
    let db = svc.database.as_deref().unwrap_or_default();
    let next = std::sync::Mutex::new(0usize);
    let results: Vec<Result<Vec<(String, Part)>, StackError>> = std::thread::scope(|sc| {
        let handles: Vec<_> = sessions
            .into_iter()
            .map(|mut sess| {
                let next = &next;
                sc.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let i = {
                            let mut g = next.lock().expect("table queue");
                            let i = *g;
                            *g += 1;
                            i
                        };
                        let Some((t, pk, ncols)) = tables.get(i) else {
                            break;
                        };
                        let order = if pk.is_empty() {
                            (1..=*ncols)
                                .map(|i| i.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        } else {
                            pk.clone()
                        };
                        let q = format!(
                            "SELECT * FROM {}.{} ORDER BY {order};",
                            crate::sql::my::ident(db),
                            crate::sql::my::ident(t)
                        );
                        let mut h = blake3::Hasher::new();
                        let mut count = 0u64;
                        sess.exec(&format!("fingerprint of {t}"), &q, &mut |l| {
                            count += 1;
                            h.update(l);
                        })?;
                        out.push((
                            format!("table:{t}"),
                            Part {
                                count,
                                hash: *h.finalize().as_bytes(),
                            },
                        ));
                    }
                    sess.close();
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(err(svc, "fingerprint thread panicked")))
            })
            .collect()
    });
    let mut f = Fingerprint::new();
    for r in results {
        f.extend(r?);
    }
    Ok(f)
}

/// Fingerprint a MariaDB database as it is now (after a restore).
pub fn mariadb(svc: &Service) -> Result<Fingerprint, StackError> {
    let mut s = MySession::open(svc)?;
    let (tables, _) = mariadb_tables(svc, &mut s)?;
    s.close();
    let sessions = mariadb_snapshot_sessions(svc, (svc.parallelism as usize).min(tables.len()))?;
    mariadb_hash_tables(svc, sessions, &tables)
}

/// The fingerprint of exactly what a `mariadb-dump --single-transaction`
/// dumps, taken while it runs: a brief global read lock is held while the
/// fingerprint sessions start their transactions and until `dump_started`
/// returns (the dump has begun its own), then released; the tables are
/// hashed afterwards inside those transactions. `start_dump` spawns the dump
/// (under the lock) and returns a value passed back to the caller.
type MyTables = Vec<(String, String, usize)>;

pub(crate) struct MyConsistent {
    lock: Option<MySession>,
    sessions: Vec<MySession>,
    tables: Vec<(String, String, usize)>,
    /// Tables without transactions: while there are any, the lock is held
    /// until the dump has ended (a snapshot does not cover them).
    pub(crate) non_transactional: Vec<String>,
}

/// The global read lock, while it must outlast the fingerprint (tables
/// without transactions): dropped once the dump has ended.
pub(crate) struct HeldLock(Option<MySession>);

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Some(l) = self.0.take() {
            l.close();
        }
    }
}

impl MyConsistent {
    /// Take the lock and start the fingerprint transactions.
    pub(crate) fn begin(svc: &Service) -> Result<MyConsistent, StackError> {
        // FLUSH TABLES WITH READ LOCK waits for running writes, and every
        // writer waits behind it: never ask while a long write runs (wait up
        // to a minute for it), and give up an attempt after 2 s (retried 5
        // times), so writers are held up for seconds at worst, not minutes.
        let busy = "SELECT count(*) FROM information_schema.processlist WHERE id <> connection_id() AND command = 'Query' AND time_ms > 300 AND upper(ltrim(coalesce(info, ''))) NOT LIKE 'SELECT%';";
        // The tables are listed before the lock (listing takes seconds on a
        // database with hundreds of tables). A table created in between is
        // in the dump but not in the fingerprint: the restore check then
        // fails (a false alarm, never a false pass).
        let (tables, plain) = {
            let mut s = MySession::open(svc)?;
            let t = mariadb_tables(svc, &mut s)?;
            s.close();
            t
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut attempt = 0;
        let lock = loop {
            // Advisory: if the server cannot answer, go ahead (the lock's
            // own 2 s timeout still bounds the wait).
            if let Ok(mut probe) = MySession::open(svc) {
                loop {
                    let mut n = String::new();
                    let asked = probe.exec("looking for long-running writes", busy, &mut |l| {
                        n = String::from_utf8_lossy(l).trim().to_string()
                    });
                    if asked.is_err() || n == "0" || std::time::Instant::now() >= deadline {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                probe.close();
            }
            let mut lock = MySession::open(svc)?;
            match lock.exec(
                "taking the brief global read lock that makes the fingerprint match the dump (FLUSH TABLES WITH READ LOCK needs the RELOAD privilege)",
                "SET SESSION lock_wait_timeout = 2; FLUSH TABLES WITH READ LOCK;",
                &mut |_| {},
            ) {
                Ok(()) => break lock,
                Err(e) if attempt < 5 && e.to_string().contains("Lock wait timeout") => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        };

        let sessions =
            mariadb_snapshot_sessions(svc, (svc.parallelism as usize).min(tables.len()))?;
        Ok(MyConsistent {
            lock: Some(lock),
            sessions,
            tables,
            non_transactional: plain,
        })
    }

    /// The dump's transaction has begun: release the lock, unless tables
    /// without transactions need it until the dump has ended.
    pub(crate) fn release(&mut self) {
        if self.non_transactional.is_empty()
            && let Some(l) = self.lock.take()
        {
            l.close();
        }
    }

    /// Hash the tables in the transactions begun under the lock; the lock,
    /// if it must outlast the dump, comes back to be dropped after it.
    pub(crate) fn finish(mut self, svc: &Service) -> Result<(Fingerprint, HeldLock), StackError> {
        self.release();
        let f = mariadb_hash_tables(svc, std::mem::take(&mut self.sessions), &self.tables)?;
        Ok((f, HeldLock(self.lock.take())))
    }
}

/// Minimal CSV (PostgreSQL's `FORMAT csv` output) reader.
fn parse_csv(s: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
        } else {
            match c {
                '"' => quoted = true,
                ',' => row.push(std::mem::take(&mut field)),
                '\n' => {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                c => field.push(c),
            }
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// One Redis key as read atomically (MULTI/EXEC): TTL, DUMP payload and the
/// digest of its logical content.
pub struct RedisKey {
    /// Database.
    pub db: u32,
    /// Key.
    pub key: Vec<u8>,
    /// PTTL (-1 = no expiry).
    pub pttl: i64,
    /// DUMP payload.
    pub dump: Vec<u8>,
    /// BLAKE3 of (key, type, TTL present, value).
    pub digest: [u8; 32],
}

fn value_command(ty: &str, key: &[u8]) -> Vec<Vec<u8>> {
    let k = key.to_vec();
    match ty {
        "string" => vec![b"GET".to_vec(), k],
        "list" => vec![b"LRANGE".to_vec(), k, b"0".to_vec(), b"-1".to_vec()],
        "set" => vec![b"SMEMBERS".to_vec(), k],
        "zset" => vec![
            b"ZRANGE".to_vec(),
            k,
            b"0".to_vec(),
            b"-1".to_vec(),
            b"WITHSCORES".to_vec(),
        ],
        "hash" => vec![b"HGETALL".to_vec(), k],
        "stream" => vec![b"XRANGE".to_vec(), k, b"-".to_vec(), b"+".to_vec()],
        // Module types: their DUMP payload stands for the value.
        _ => vec![b"DUMP".to_vec(), k],
    }
}

fn put_reply(h: &mut blake3::Hasher, r: &Reply) {
    match r {
        Reply::Bulk(Some(b)) => {
            h.update(b"$");
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        }
        Reply::Bulk(None) | Reply::Array(None) => {
            h.update(b"_");
        }
        Reply::Int(i) => {
            h.update(b":");
            h.update(&i.to_le_bytes());
        }
        Reply::Status(s) | Reply::Error(s) => {
            h.update(b"+");
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        Reply::Array(Some(v)) => {
            h.update(b"*");
            h.update(&(v.len() as u64).to_le_bytes());
            for x in v {
                put_reply(h, x);
            }
        }
    }
}

fn key_digest(key: &[u8], ty: &str, ttl_present: bool, value: &Reply) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(&(ty.len() as u64).to_le_bytes());
    h.update(ty.as_bytes());
    h.update(&[u8::from(ttl_present)]);
    // Unordered types are hashed in a canonical order.
    let canon = match (ty, value) {
        ("set", Reply::Array(Some(v))) => {
            let mut v = v.clone();
            v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
            Reply::Array(Some(v))
        }
        ("hash", Reply::Array(Some(v))) => {
            let mut pairs: Vec<Vec<Reply>> = v.chunks(2).map(|c| c.to_vec()).collect();
            pairs.sort_by(|a, b| format!("{:?}", a[0]).cmp(&format!("{:?}", b[0])));
            Reply::Array(Some(pairs.concat()))
        }
        _ => value.clone(),
    };
    put_reply(&mut h, &canon);
    *h.finalize().as_bytes()
}

/// Read every key of the service (per database, in key order), each
/// atomically; `each` sees them one by one.
pub fn redis_keys(
    svc: &Service,
    conn: &mut Conn,
    mut each: impl FnMut(RedisKey) -> Result<(), StackError>,
) -> Result<(), StackError> {
    let io = |e: std::io::Error| err(svc, format!("redis: {e}"));
    for &db in &svc.databases {
        conn.call(&[b"SELECT", db.to_string().as_bytes()])
            .map_err(io)?;
        let keys = conn.scan(&svc.key_pattern).map_err(io)?;
        for batch in keys.chunks(256) {
            let mut pending: Vec<Vec<u8>> = batch.to_vec();
            let mut got: BTreeMap<Vec<u8>, RedisKey> = BTreeMap::new();
            for _attempt in 0..5 {
                if pending.is_empty() {
                    break;
                }
                let types = conn
                    .pipeline(
                        &pending
                            .iter()
                            .map(|k| vec![b"TYPE".to_vec(), k.clone()])
                            .collect::<Vec<_>>(),
                    )
                    .map_err(io)?;
                let mut cmds = Vec::new();
                for (k, t) in pending.iter().zip(&types) {
                    let ty = match t {
                        Reply::Status(s) => s.clone(),
                        _ => "none".into(),
                    };
                    cmds.push(vec![b"MULTI".to_vec()]);
                    cmds.push(vec![b"PTTL".to_vec(), k.clone()]);
                    cmds.push(vec![b"DUMP".to_vec(), k.clone()]);
                    cmds.push(vec![b"TYPE".to_vec(), k.clone()]);
                    cmds.push(value_command(&ty, k));
                    cmds.push(vec![b"EXEC".to_vec()]);
                }
                let replies = conn.pipeline(&cmds).map_err(io)?;
                let mut retry = Vec::new();
                for (k, rs) in pending.iter().zip(replies.chunks(6)) {
                    let Reply::Array(Some(v)) = &rs[5] else {
                        retry.push(k.clone());
                        continue;
                    };
                    let [pttl, dump, ty, value] = v.as_slice() else {
                        retry.push(k.clone());
                        continue;
                    };
                    let (Reply::Int(pttl), Reply::Status(ty)) = (pttl, ty) else {
                        retry.push(k.clone());
                        continue;
                    };
                    if *pttl == -2 || ty == "none" {
                        continue; // expired or deleted since SCAN
                    }
                    let Reply::Bulk(Some(dump)) = dump else {
                        continue;
                    };
                    if matches!(value, Reply::Error(_)) {
                        retry.push(k.clone()); // type changed since TYPE
                        continue;
                    }
                    got.insert(
                        k.clone(),
                        RedisKey {
                            db,
                            key: k.clone(),
                            pttl: *pttl,
                            dump: dump.clone(),
                            digest: key_digest(k, ty, *pttl >= 0, value),
                        },
                    );
                }
                pending = retry;
            }
            if let Some(k) = pending.first() {
                return Err(err(
                    svc,
                    format!(
                        "redis key {:?} kept changing type while being read",
                        String::from_utf8_lossy(k)
                    ),
                ));
            }
            for (_, k) in got {
                each(k)?;
            }
        }
    }
    Ok(())
}

/// Accumulates per-database Redis fingerprints from [`redis_keys`].
#[derive(Default)]
pub struct RedisFingerprint {
    dbs: BTreeMap<u32, (u64, blake3::Hasher)>,
}

impl RedisFingerprint {
    /// Add one key (keys arrive in order within a database).
    pub fn add(&mut self, k: &RedisKey) {
        let e = self.dbs.entry(k.db).or_default();
        e.0 += 1;
        e.1.update(&k.digest);
    }
    /// The parts, every selected database present (empty ones count 0).
    pub fn finish(mut self, databases: &[u32]) -> Fingerprint {
        for d in databases {
            self.dbs.entry(*d).or_default();
        }
        self.dbs
            .into_iter()
            .map(|(db, (n, h))| {
                (
                    format!("db{db}"),
                    Part {
                        count: n,
                        hash: *h.finalize().as_bytes(),
                    },
                )
            })
            .collect()
    }
}

/// How a snapshot's Redis databases map onto the service's (an environment
/// may restore database 0 into 1): by position when both list the same
/// number of databases, else unchanged.
pub fn redis_db_map(svc: &Service, snap: &Snapshot) -> BTreeMap<u32, u32> {
    let mut src: Vec<u32> = decode(snap)
        .keys()
        .filter_map(|k| k.strip_prefix("db")?.parse().ok())
        .collect();
    src.sort_unstable();
    if src.len() == svc.databases.len() {
        src.into_iter().zip(svc.databases.iter().copied()).collect()
    } else {
        BTreeMap::new()
    }
}

/// A snapshot's fingerprint with Redis database parts renamed by `map`.
pub fn remap(f: &Fingerprint, map: &BTreeMap<u32, u32>) -> Fingerprint {
    f.iter()
        .map(|(k, p)| {
            let k = match k.strip_prefix("db").and_then(|d| d.parse::<u32>().ok()) {
                Some(d) => format!("db{}", map.get(&d).copied().unwrap_or(d)),
                None => k.clone(),
            };
            (k, *p)
        })
        .collect()
}

/// Fingerprint a Redis service's keys now.
pub fn redis(svc: &Service, conn: &mut Conn) -> Result<Fingerprint, StackError> {
    let mut f = RedisFingerprint::default();
    redis_keys(svc, conn, |k| {
        f.add(&k);
        Ok(())
    })?;
    Ok(f.finish(&svc.databases))
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
    let soon = crate::adapters::now_ms() + 5_000;
    let mut may_be_gone: BTreeMap<(u32, Vec<u8>), (bool, Vec<u8>)> = BTreeMap::new();
    crate::adapters::read_redis_dump(svc, stored, |db, key, pttl, payload| {
        let db = map.get(&db).copied().unwrap_or(db);
        match crate::adapters::redis_expiry(snap, pttl) {
            Some(at) if at <= soon => may_be_gone.insert((db, key), (true, payload)),
            _ => want.insert((db, key), (pttl >= 0, payload)),
        };
        Ok(())
    })?;
    let mut out = Vec::new();
    redis_keys(svc, conn, |k| {
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

/// Fingerprint a database service now (postgres, mariadb, redis); `None`
/// for kinds verified otherwise (files) or not at all (command).
pub fn live(svc: &Service) -> Result<Option<Fingerprint>, StackError> {
    svc.kind.datastore().live_fingerprint(svc)
}

/// Compare a directory with a snapshot tree: every entry's type, mode,
/// size, mtime, link target and content (each chunk's keyed hash), plus
/// entries present on one side only. Returns the differences by path (at
/// most `limit`). What the restore withheld on purpose is not expected.
pub fn verify_tree(
    repo: &IndexedRepository,
    tree: &ChunkId,
    dir: &Path,
    withheld: Withholding,
    limit: usize,
) -> Result<Vec<String>, StackError> {
    let mut out = Vec::new();
    walk_compare(repo, tree, dir, withheld, &mut out, limit)?;
    Ok(out)
}

/// What a files restore holds back (so its verification does not expect it).
#[derive(Clone, Copy, Debug, Default)]
pub struct Withholding {
    /// Device nodes and FIFOs are not created.
    pub special: bool,
    /// setuid/setgid bits are cleared.
    pub setuid: bool,
}

fn walk_compare(
    repo: &IndexedRepository,
    tree: &ChunkId,
    dir: &Path,
    withheld: Withholding,
    out: &mut Vec<String>,
    limit: usize,
) -> Result<(), StackError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let t = repo.load_tree(tree)?;
    let mut on_disk: std::collections::BTreeSet<Vec<u8>> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().as_bytes().to_vec())
            .collect(),
        Err(e) => {
            out.push(format!("{}: {e}", dir.display()));
            return Ok(());
        }
    };
    for n in &t.nodes {
        if out.len() >= limit {
            return Ok(());
        }
        let p = dir.join(std::ffi::OsStr::from_bytes(&n.name));
        on_disk.remove(&n.name);
        let special = matches!(
            n.kind,
            NodeKind::Fifo | NodeKind::CharDevice { .. } | NodeKind::BlockDevice { .. }
        );
        if special && withheld.special {
            continue;
        }
        let mode = if withheld.setuid {
            n.mode & !0o6000
        } else {
            n.mode
        };
        let md = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(_) => {
                out.push(format!("{}: missing after the restore", p.display()));
                continue;
            }
        };
        let ft = md.file_type();
        let same_type = match &n.kind {
            NodeKind::File { .. } => ft.is_file(),
            NodeKind::Dir { .. } => ft.is_dir(),
            NodeKind::Symlink { .. } => ft.is_symlink(),
            _ => !ft.is_file() && !ft.is_dir() && !ft.is_symlink(),
        };
        if !same_type {
            out.push(format!("{}: type differs", p.display()));
            continue;
        }
        let want: Vec<(Vec<u8>, Vec<u8>)> = n
            .xattrs
            .iter()
            .filter(|x| !(withheld.setuid && x.name == b"security.capability"))
            .map(|x| Ok((x.name.clone(), repo.xattr_value(&x.value)?)))
            .collect::<Result<_, cairn_repo::RepoError>>()?;
        match cairn_repo::sys::read_xattrs(&p) {
            Ok(have) if have == want => {}
            Ok(have) => {
                let names = |v: &[(Vec<u8>, Vec<u8>)]| {
                    v.iter()
                        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                out.push(format!(
                    "{}: extended attributes differ (expected [{}], found [{}])",
                    p.display(),
                    names(&want),
                    names(&have)
                ));
            }
            Err(e) => out.push(format!("{}: extended attributes: {e}", p.display())),
        }
        if md.mode() & 0o7777 != mode && !ft.is_symlink() {
            out.push(format!(
                "{}: mode {:o} expected, {:o} found",
                p.display(),
                mode,
                md.mode() & 0o7777
            ));
        }
        match &n.kind {
            NodeKind::File { extents } => {
                if md.len() != n.size {
                    out.push(format!(
                        "{}: {} bytes expected, {} found",
                        p.display(),
                        n.size,
                        md.len()
                    ));
                    continue;
                }
                if md.mtime() != n.mtime.sec || md.mtime_nsec() as u32 != n.mtime.nsec {
                    out.push(format!("{}: modification time differs", p.display()));
                }
                if let Some(d) = content_differs(repo, &p, extents)? {
                    out.push(format!("{}: {d}", p.display()));
                }
            }
            NodeKind::Dir { tree } => walk_compare(repo, tree, &p, withheld, out, limit)?,
            NodeKind::Symlink { target } => {
                let t = std::fs::read_link(&p).map(|t| t.as_os_str().as_bytes().to_vec());
                if t.as_deref().ok() != Some(target.as_slice()) {
                    out.push(format!("{}: link target differs", p.display()));
                }
            }
            _ => {}
        }
    }
    for extra in on_disk.into_iter().take(limit.saturating_sub(out.len())) {
        out.push(format!(
            "{}: present after the restore, not in the backup",
            dir.join(std::ffi::OsStr::from_bytes(&extra)).display()
        ));
    }
    Ok(())
}

fn content_differs(
    repo: &IndexedRepository,
    p: &Path,
    extents: &[Extent],
) -> Result<Option<String>, StackError> {
    let mut f = match std::fs::File::open(p) {
        Ok(f) => f,
        Err(e) => return Ok(Some(e.to_string())),
    };
    let hasher = repo.repo.chunk_hasher();
    let mut buf = Vec::new();
    let mut offset = 0u64;
    for e in extents {
        match e {
            Extent::Chunk { id, len } => {
                buf.resize(*len as usize, 0);
                if let Err(e) = f.read_exact(&mut buf) {
                    return Ok(Some(e.to_string()));
                }
                if hasher.id(&buf) != *id {
                    return Ok(Some(format!("content differs at byte {offset}")));
                }
                offset += *len as u64;
            }
            Extent::Hole { len } => {
                let mut left = *len;
                while left > 0 {
                    let n = left.min(1 << 20) as usize;
                    buf.resize(n, 0);
                    if let Err(e) = f.read_exact(&mut buf) {
                        return Ok(Some(e.to_string()));
                    }
                    if buf.iter().any(|&b| b != 0) {
                        return Ok(Some(format!(
                            "content differs in the hole at byte {offset}"
                        )));
                    }
                    left -= n as u64;
                    offset += n as u64;
                }
            }
        }
    }
    Ok(None)
}

/// The restored state compared with the backed-up state.
#[derive(Debug, Serialize, Clone, Default)]
pub struct FingerprintReport {
    /// tables | keys | tree | none
    pub method: String,
    /// Recorded at backup time.
    pub expected: Fingerprint,
    /// Recomputed from the live service after the restore.
    pub actual: Fingerprint,
    /// The snapshot tree of a files service (hex).
    pub tree: Option<String>,
    /// What differs, naming the table, key or path.
    pub differences: Vec<String>,
    /// Whether it matched (None: nothing to compare, command services).
    pub verified: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(fingerprints: Vec<(String, Vec<u8>)>) -> Snapshot {
        Snapshot {
            time_ns: 0,
            tree: ChunkId([0; 32]),
            parent: None,
            group: None,
            service: "s".into(),
            hostname: "h".into(),
            username: "u".into(),
            paths: vec![],
            tags: vec![],
            summary: Default::default(),
            fingerprints,
            extra: vec![],
        }
    }

    /// format-spec §11: snapshots written before `fp:` parts recorded
    /// `count:<name>` (row or key counts only); they are still read, as
    /// counts without a hash, tables under `table:`.
    #[test]
    fn old_count_fingerprints_are_read_as_counts_and_new_parts_round_trip() {
        let n = |v: u64| v.to_le_bytes().to_vec();
        let old = snapshot(vec![
            ("count:orders".into(), n(641)),
            ("count:db0".into(), n(12)),
            ("count:files".into(), n(3)),
            ("count:broken".into(), vec![1, 2, 3]),
        ]);
        let f = decode(&old);
        assert_eq!(f.len(), 3, "{f:?}");
        assert_eq!(
            f["table:orders"],
            Part {
                count: 641,
                hash: [0; 32]
            }
        );
        assert_eq!(f["db0"].count, 12);
        assert_eq!(f["files"].count, 3);
        // A count-only part compares by count: equal counts pass.
        let live: Fingerprint = [(
            "table:orders".to_string(),
            Part {
                count: 641,
                hash: [7; 32],
            },
        )]
        .into_iter()
        .collect();
        assert!(
            compare(
                &decode(&snapshot(vec![("count:orders".into(), n(641))])),
                &live
            )
            .is_empty()
        );
        assert_eq!(
            compare(
                &decode(&snapshot(vec![("count:orders".into(), n(640))])),
                &live
            )
            .len(),
            1
        );
        // New parts round-trip through encode/decode.
        let now: Fingerprint = [(
            "table:a.b".to_string(),
            Part {
                count: 5,
                hash: [9; 32],
            },
        )]
        .into_iter()
        .collect();
        assert_eq!(decode(&snapshot(encode(&now))), now);
    }
}
