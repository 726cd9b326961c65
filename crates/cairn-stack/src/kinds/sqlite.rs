//! SQLite: a database file copied with `VACUUM INTO` (one read transaction:
//! a consistent copy while the service keeps writing, done however busy the
//! writers are), fingerprinted from that copy — so the recorded fingerprint
//! is of exactly what was stored — and streamed into the repository. The
//! preflight checks the whole snapshot (header, `PRAGMA integrity_check`)
//! before the service is stopped. A restore writes the snapshot next to the
//! target (0600), checks it again,
//! removes the target's stale `-wal`, `-shm` and `-journal` files (a WAL
//! left from the old database would be replayed into the new one) and
//! renames it into place, keeping the old file's owner and mode.
//!
//! Fingerprint parts are `table:<name>`: the row count and the BLAKE3 of the
//! rows in `.mode quote` (SQL literals, blobs in hex), ordered by every
//! column. Every `sqlite3` that reads a snapshot runs `-safe` and
//! `-readonly` (no shell escapes, no extensions, no writes).

use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cairn_format::snapshot::Snapshot;
use cairn_repo::{BackupOptions, BackupResult, IndexedRepository, Progress};

use crate::StackError;
use crate::catalog::Service;
use crate::datastore::Datastore;
use crate::fingerprint::{Fingerprint, Part};
use crate::target::{Target, canonical};
use crate::tools::{err, run, tool};

/// The first bytes of every SQLite database file.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// The `sqlite` kind.
pub struct Sqlite;

/// The database file a restore writes (`target`, else `path`).
fn restore_path(svc: &Service) -> PathBuf {
    let p = svc.target.as_ref().or(svc.path.as_ref());
    let p = p.cloned().unwrap_or_default();
    if p.is_absolute() {
        p
    } else {
        svc.workdir.join(p)
    }
}

fn live_path(svc: &Service) -> PathBuf {
    let p = svc.path.clone().unwrap_or_default();
    if p.is_absolute() {
        p
    } else {
        svc.workdir.join(p)
    }
}

/// `sqlite3` on a file that must not be trusted: read-only, safe mode (no
/// `.shell`, no `ATTACH`, no extensions), stop at the first error.
fn reader(svc: &Service, db: &Path) -> Command {
    let mut c = tool(svc, "sqlite3");
    c.args(["-readonly", "-safe", "-bail", "-batch", "-noheader"]);
    c.arg(db);
    c
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// First line of every script a reader runs: functions and virtual tables
/// that views, triggers, CHECKs and generated columns of the (possibly
/// hostile) schema name run only if SQLite calls them innocuous.
const PRELUDE: &str = "PRAGMA trusted_schema = OFF;\n";

/// One table to fingerprint, as the schema lists it.
#[derive(serde::Deserialize)]
struct TableRow {
    name: String,
    /// `table` (a rowid table), `wr` (WITHOUT ROWID) or `virtual`.
    kind: String,
    cols: String,
}

/// Fingerprint a database file: per table (`sqlite_sequence` included) the
/// row count and a BLAKE3 of its rows in `.mode quote` (rowid tables with
/// their rowids, in rowid order; WITHOUT ROWID tables by every column under
/// BINARY collation; no index is used, so no application collation is
/// needed), plus
/// `schema` (every entry of `sqlite_schema` but its page numbers: triggers,
/// views, indexes) and `header` (`user_version`, `application_id`).
/// Virtual tables are left out: their content lives in their shadow tables
/// (fingerprinted: FTS, R-tree) or outside the database, which a
/// fingerprint must not read. Values are hashed as their type and bytes
/// (text in hex). Everything is read by one `sqlite3`.
fn fingerprint(svc: &Service, db: &Path) -> Result<Fingerprint, StackError> {
    let list = run(
        svc,
        reader(svc, db),
        Some(
            format!(
                "{PRELUDE}.mode json\nSELECT l.name AS name, CASE WHEN l.type = 'virtual' THEN 'virtual' WHEN l.wr THEN 'wr' ELSE 'table' END AS kind, CASE WHEN l.type = 'virtual' THEN '[]' ELSE (SELECT json_group_array(c.name) FROM pragma_table_info(l.name) AS c) END AS cols FROM pragma_table_list AS l WHERE l.schema = 'main' AND l.type IN ('table', 'shadow', 'virtual') AND (l.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' OR l.name = 'sqlite_sequence') ORDER BY l.name;\n"
            )
            .as_bytes(),
        ),
    )?;
    let tables: Vec<TableRow> = if list.trim().is_empty() {
        vec![]
    } else {
        serde_json::from_str(&list)
            .map_err(|e| err(svc, format!("fingerprint: the table list: {e}")))?
    };
    let mut nonce = [0u8; 16];
    cairn_format::crypto::random_bytes(&mut nonce);
    let nonce = cairn_format::id::to_hex(&nonce);
    let mut script = format!("{PRELUDE}.mode quote\n");
    let mut names = Vec::new();
    for t in tables.iter().filter(|t| t.kind != "virtual") {
        let cols: Vec<String> = serde_json::from_str(&t.cols).unwrap_or_default();
        let id = ident(&t.name);
        // Each value as its type and bytes: text in hex (`.mode quote`
        // would stop at an embedded NUL), the rest quoted (REALs in full).
        let values: Vec<String> = cols
            .iter()
            .map(|c| {
                let c = ident(c);
                format!("CASE typeof({c}) WHEN 'text' THEN 'T' || hex({c}) ELSE quote({c}) END")
            })
            .collect();
        let values = if values.is_empty() {
            "NULL".to_string()
        } else {
            values.join(", ")
        };
        let (select, order) = if t.kind == "wr" {
            let order: Vec<String> = cols
                .iter()
                .map(|c| format!("{} COLLATE BINARY", ident(c)))
                .collect();
            (values, order.join(", "))
        } else {
            (format!("_rowid_, {values}"), "_rowid_".to_string())
        };
        let i = names.len();
        names.push(t.name.clone());
        script += &format!(
            ".print {nonce} count {i}\nSELECT count(*) FROM {id} NOT INDEXED;\n.print {nonce} rows {i}\nSELECT {select} FROM {id} NOT INDEXED ORDER BY {order};\n"
        );
    }
    script += &format!(
        ".print {nonce} schema\nSELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name, tbl_name;\n.print {nonce} header\nPRAGMA user_version;\nPRAGMA application_id;\n.print {nonce} end\n"
    );
    let mut child = reader(svc, db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(svc, format!("sqlite3: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let feeder = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
    let out = std::io::BufReader::with_capacity(1 << 16, child.stdout.take().expect("piped"));
    // Sections start at a line `<nonce> <what>`, which no row can forge.
    let marker = format!("{nonce} ");
    let mut f = Fingerprint::new();
    let mut section: Option<(String, blake3::Hasher, u64)> = None;
    let mut count: Option<u64> = None;
    let close = |section: &mut Option<(String, blake3::Hasher, u64)>,
                 count: Option<u64>,
                 f: &mut Fingerprint| {
        if let Some((what, h, lines)) = section.take() {
            let (name, n) = match what.split_once(' ') {
                Some(("rows", i)) => (
                    i.parse::<usize>()
                        .ok()
                        .and_then(|i| names.get(i))
                        .map(|n| format!("table:{n}")),
                    count.unwrap_or(0),
                ),
                _ if what == "schema" => (Some("schema".to_string()), lines),
                _ if what == "header" => (Some("header".to_string()), lines),
                _ => (None, 0),
            };
            if let Some(name) = name {
                f.insert(
                    name,
                    Part {
                        count: n,
                        hash: *h.finalize().as_bytes(),
                    },
                );
            }
        }
    };
    let mut ended = false;
    for line in std::io::BufRead::split(out, b'\n') {
        let line = line.map_err(|e| err(svc, format!("fingerprint: {e}")))?;
        if let Some(what) = line.strip_prefix(marker.as_bytes()) {
            close(&mut section, count, &mut f);
            let what = String::from_utf8_lossy(what).into_owned();
            if what == "end" {
                ended = true;
            } else if what.starts_with("count ") {
                count = None;
                section = Some((what, blake3::Hasher::new(), 0));
            } else {
                section = Some((what, blake3::Hasher::new(), 0));
            }
            continue;
        }
        if let Some((what, h, lines)) = section.as_mut() {
            if what.starts_with("count ") {
                count = String::from_utf8_lossy(&line).trim().parse().ok();
            } else {
                h.update(&line);
                h.update(b"\n");
                *lines += 1;
            }
        }
    }
    let _ = feeder.join();
    let o = child
        .wait_with_output()
        .map_err(|e| err(svc, format!("fingerprint: {e}")))?;
    if !o.status.success() || !ended {
        return Err(err(
            svc,
            format!(
                "fingerprint of {} failed ({}): {}",
                db.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ));
    }
    Ok(f)
}

/// The directory a file is in.
fn parent_dir(p: &Path) -> PathBuf {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// The first 100 bytes of a database file (its header).
fn header(db: &Path) -> Option<[u8; 100]> {
    let mut h = [0u8; 100];
    std::fs::File::open(db).ok()?.read_exact(&mut h).ok()?;
    Some(h)
}

/// Refuse a database path that is a symlink: a restore replaces the file
/// at the path, which would not be the file the service reads. Said at
/// backup time and before a restore touches anything.
fn not_a_symlink(svc: &Service, p: &Path) -> Result<(), StackError> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => Err(err(
            svc,
            format!(
                "{} is a symlink{}: give the database file itself as path/target",
                p.display(),
                std::fs::canonicalize(p)
                    .map(|r| format!(" to {}", r.display()))
                    .unwrap_or_default()
            ),
        )),
        _ => Ok(()),
    }
}

/// Refuse what is not a whole, sound SQLite database.
fn check_file(svc: &Service, db: &Path, what: &str) -> Result<(), StackError> {
    let mut head = [0u8; 16];
    let ok = std::fs::File::open(db)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok();
    if !ok || &head != MAGIC {
        return Err(err(svc, format!("{what} is not an SQLite database")));
    }
    let out = match run(
        svc,
        reader(svc, db),
        Some(format!("{PRELUDE}.mode list\nPRAGMA integrity_check;\n").as_bytes()),
    ) {
        Ok(o) => o,
        // An index under a collation only the application defines cannot be
        // checked here: then every table is read instead (the fingerprint's
        // reading), which finds damage in the tables, not in that index.
        Err(e) if e.to_string().contains("no such collation sequence") => {
            fingerprint(svc, db)?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if out.trim() != "ok" {
        return Err(err(
            svc,
            format!(
                "{what} fails PRAGMA integrity_check: {}",
                out.lines().take(5).collect::<Vec<_>>().join("; ")
            ),
        ));
    }
    Ok(())
}

/// The database's companion files, which belong to the file they sit next to.
fn companions(db: &Path) -> Vec<PathBuf> {
    ["-wal", "-shm", "-journal"]
        .iter()
        .map(|s| {
            let mut n = db.as_os_str().to_owned();
            n.push(s);
            PathBuf::from(n)
        })
        .collect()
}

impl Datastore for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn fields(&self) -> &'static [&'static str] {
        &["path", "target", "temp_dir"]
    }

    fn required(&self) -> &'static [(&'static str, &'static str)] {
        &[("path", "path (the database file)")]
    }

    fn configure(&self, svc: &Service, c: &mut Command) {
        // SQLite's own temporary files (a sort that spills, VACUUM's
        // journal) hold rows in plaintext: they go where the copies go.
        if let Ok(d) = crate::children::temp_dir(svc.temp_dir.as_deref()) {
            c.env("SQLITE_TMPDIR", d);
        }
    }

    fn backup(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        opts: BackupOptions,
    ) -> Result<BackupResult, StackError> {
        let live = live_path(svc);
        not_a_symlink(svc, &live)?;
        if !live.is_file() {
            return Err(err(
                svc,
                format!("{} is not a database file", live.display()),
            ));
        }
        // The copy is the whole database in plaintext: 0600 in cairn's own
        // 0700 directory, removed on every path (and by --resume).
        let dir = crate::children::temp_dir(svc.temp_dir.as_deref())
            .map_err(|e| err(svc, format!("temporary directory: {e}")))?;
        let tmp = crate::children::TempDump::create(&dir)
            .map_err(|e| err(svc, format!("temporary copy in {}: {e}", dir.display())))?;
        // VACUUM INTO copies in one read transaction: consistent, and done
        // however busy the writers are (the backup API's `.backup` starts
        // over whenever another connection writes, and may never finish).
        let target = tmp
            .path()
            .to_str()
            .ok_or_else(|| err(svc, format!("{}: not UTF-8", tmp.path().display())))?;
        let mut c = tool(svc, "sqlite3");
        c.args(["-bail", "-batch"]).arg(&live);
        let script = format!(
            ".timeout 60000\nVACUUM INTO '{}';\n",
            target.replace('\'', "''")
        );
        if let Err(e) = run(svc, c, Some(script.as_bytes())) {
            // VACUUM rebuilds indexes and re-checks constraints, which needs
            // every collation and function they name; those the application
            // defines (`unicase`, Android's `LOCALIZED`) are unknown here. The page copy of the backup API
            // needs none; it restarts when a writer commits, so it is given
            // an hour.
            let msg = e.to_string();
            if !msg.contains("no such collation sequence") && !msg.contains("no such function") {
                return Err(err(svc, format!("copy of {}: {e}", live.display())));
            }
            let mut c = tool(svc, "timeout");
            c.args(["--kill-after=10", "3600", "sqlite3", "-bail", "-batch"])
                .arg(&live);
            let script = format!(
                ".timeout 60000\n.backup main \"{}\"\n",
                target.replace('\\', "\\\\").replace('"', "\\\"")
            );
            run(svc, c, Some(script.as_bytes())).map_err(|e| {
                err(
                    svc,
                    format!(
                        "copy of {} (with the backup API: VACUUM INTO needs a collation the application defines): {e}",
                        live.display()
                    ),
                )
            })?;
        }
        // The copy is in rollback-journal mode; a WAL database is restored
        // as one (the mode lives in the file's header).
        if header(&live).is_some_and(|h| h[18] == 2) {
            let mut c = tool(svc, "sqlite3");
            c.args(["-bail", "-batch", "-safe"]).arg(tmp.path());
            run(svc, c, Some(b".mode list\nPRAGMA journal_mode = WAL;\n"))?;
        }
        check_file(svc, tmp.path(), "the copy")?;
        let fp = fingerprint(svc, tmp.path())?;
        let file = std::fs::File::open(tmp.path())
            .map_err(|e| err(svc, format!("{}: {e}", tmp.path().display())))?;
        let r = repo.backup_stream_measured(
            file,
            crate::adapters::STREAM_NAME,
            &opts,
            &Progress::default(),
            move || Ok(crate::fingerprint::encode(&fp)),
        )?;
        drop(tmp);
        Ok(r)
    }

    fn preflight(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        snap: &Snapshot,
    ) -> Result<(), StackError> {
        // The whole file is checked before the service is stopped: written
        // to a 0600 copy in cairn's own directory, its header and
        // `PRAGMA integrity_check` (`-readonly -safe`), then removed.
        let target = restore_path(svc);
        not_a_symlink(svc, &target)?;
        if let Some(why) = crate::target::swappable_ancestor(&target) {
            return Err(err(svc, format!("{why}; nothing was touched")));
        }
        // The restore writes its copy next to the target: that must work
        // before the service is stopped (a read-only or missing place, an
        // owner this process cannot give the restored file).
        let dir = parent_dir(&target);
        std::fs::create_dir_all(&dir)
            .and_then(|_| crate::children::TempDump::create(&dir).map(drop))
            .map_err(|e| {
                err(
                    svc,
                    format!(
                        "cannot write next to {}: {e}; nothing was touched",
                        target.display()
                    ),
                )
            })?;
        if let Ok(m) = std::fs::symlink_metadata(&target) {
            let me = cairn_repo::sys::euid();
            if me != 0 && m.uid() != me {
                return Err(err(
                    svc,
                    format!(
                        "{} belongs to uid {}, which only root can give the restored file; nothing was touched",
                        target.display(),
                        m.uid()
                    ),
                ));
            }
        }
        let (node, _) = crate::adapters::dump_node(svc, repo, snap)?;
        let dir = crate::children::temp_dir(svc.temp_dir.as_deref())
            .map_err(|e| err(svc, format!("temporary directory: {e}")))?;
        let mut tmp = crate::children::TempDump::create(&dir)
            .map_err(|e| err(svc, format!("temporary copy in {}: {e}", dir.display())))?;
        {
            let mut w = BufWriter::with_capacity(1 << 20, tmp.file());
            repo.dump_file(&node, &mut w)?;
            w.flush().map_err(|e| err(svc, e.to_string()))?;
        }
        check_file(svc, tmp.path(), "the snapshot's database").map_err(|e| match e {
            StackError::Service { service, detail } => StackError::Service {
                service,
                detail: format!("{detail}; nothing was touched"),
            },
            e => e,
        })
    }

    fn restore(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        snap: &Snapshot,
    ) -> Result<(u64, Option<String>), StackError> {
        let (node, size) = crate::adapters::dump_node(svc, repo, snap)?;
        let target = restore_path(svc);
        if let Some(why) = crate::target::swappable_ancestor(&target) {
            return Err(err(svc, why));
        }
        let dir = parent_dir(&target);
        std::fs::create_dir_all(&dir).map_err(|e| err(svc, format!("{}: {e}", dir.display())))?;
        // Written next to the target, so that the rename is atomic.
        let mut tmp = crate::children::TempDump::create(&dir)
            .map_err(|e| err(svc, format!("temporary file in {}: {e}", dir.display())))?;
        {
            let mut w = BufWriter::with_capacity(1 << 20, tmp.file());
            repo.dump_file(&node, &mut w)?;
            w.flush().map_err(|e| err(svc, e.to_string()))?;
        }
        tmp.file()
            .sync_all()
            .map_err(|e| err(svc, format!("{}: {e}", tmp.path().display())))?;
        check_file(svc, tmp.path(), "the snapshot's database")?;
        // The old file's owner and mode, else 0600.
        let old = std::fs::symlink_metadata(&target).ok();
        if let Some(m) = &old {
            if !m.is_file() {
                return Err(err(
                    svc,
                    format!("{} is not a regular file; not replaced", target.display()),
                ));
            }
            let shown = tmp.path().display().to_string();
            let f = tmp.file();
            std::os::unix::fs::fchown(&*f, Some(m.uid()), Some(m.gid()))
                .map_err(|e| err(svc, format!("{shown}: chown: {e}")))?;
            f.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o777))
                .map_err(|e| err(svc, format!("{shown}: chmod: {e}")))?;
        }
        for c in companions(&target) {
            match std::fs::remove_file(&c) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(svc, format!("{}: {e}", c.display()))),
            }
        }
        std::fs::rename(tmp.path(), &target)
            .map_err(|e| err(svc, format!("{}: {e}", target.display())))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok((size, None))
    }

    fn live_fingerprint(&self, svc: &Service) -> Result<Option<Fingerprint>, StackError> {
        // What a restore wrote (the staging copy under an environment).
        Ok(Some(fingerprint(svc, &restore_path(svc))?))
    }

    fn query(&self, svc: &Service, sql: &str) -> Result<String, StackError> {
        let mut c = reader(svc, &restore_path(svc));
        c.args(["-separator", "\t"]);
        run(svc, c, Some(format!(".mode list\n{sql}\n").as_bytes()))
    }

    fn holds_data(&self, svc: &Service) -> Result<bool, StackError> {
        Ok(std::fs::metadata(restore_path(svc)).is_ok_and(|m| m.len() > 0))
    }

    fn teardown(&self, svc: &Service) -> Result<String, StackError> {
        let t = restore_path(svc);
        if let Some(why) = crate::target::swappable_ancestor(&t) {
            return Err(err(svc, format!("{why}; {} left in place", t.display())));
        }
        for p in std::iter::once(t.clone()).chain(companions(&t)) {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(svc, format!("{}: {e}", p.display()))),
            }
        }
        Ok(format!("removed {}", t.display()))
    }

    fn target(&self, s: &Service) -> Target {
        Target::Dir(canonical(&restore_path(s), &s.workdir))
    }

    fn protected(&self, s: &Service) -> Vec<Target> {
        // The live file and the files SQLite keeps next to it (a restore
        // renamed over its `-wal` would destroy committed writes).
        let live = live_path(s);
        std::iter::once(self.target(s))
            .chain(
                std::iter::once(live.clone())
                    .chain(companions(&live))
                    .map(|p| Target::Dir(canonical(&p, &s.workdir))),
            )
            .collect()
    }

    fn live_view(&self, svc: &Service) -> Service {
        let mut s = svc.clone();
        if let Some(t) = s.target.take() {
            s.path = Some(t);
        }
        s
    }

    fn temp_dirs(&self, svc: &Service) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = crate::children::temp_dir(svc.temp_dir.as_deref())
            .into_iter()
            .collect();
        if let Some(d) = restore_path(svc).parent() {
            v.push(d.to_path_buf());
        }
        v
    }

    fn describe(&self, s: &Service) -> String {
        format!(
            "sqlite database file {} (replaced)",
            restore_path(s).display()
        )
    }
}
