//! MariaDB fingerprints, in consistent-snapshot sessions started together with the dump's.

use crate::StackError;
use crate::catalog::Service;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Stdio};

use super::*;

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
        let mut c = crate::tools::tool(svc, "mariadb");
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
