//! `kind = "sqlite"` against real `sqlite3`: backups while the service
//! writes (WAL and rollback-journal mode), restores that must not replay a
//! stale WAL, the production guard around the live file's companions, and
//! forged or awkward databases refused before anything is touched.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::stack::{report, svc};
use crate::util::Env;

fn sql(file: &Path, script: &str) -> String {
    let o = Command::new("sqlite3")
        .arg(file)
        .arg(script)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// A `sqlite3` session fed statements until stopped; returns how many.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
    child: std::process::Child,
}

impl Writer {
    fn start(db: &Path, every: Duration, stmt: impl Fn(u64) -> String + Send + 'static) -> Writer {
        let mut child = Command::new("sqlite3")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b".timeout 20000\n").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                i += 1;
                if stdin.write_all(stmt(i).as_bytes()).is_err() {
                    break;
                }
                std::thread::sleep(every);
            }
            i
        });
        Writer {
            stop,
            thread: Some(thread),
            child,
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let n = self.thread.take().unwrap().join().unwrap();
        let _ = self.child.wait();
        n
    }
}

/// Files whose names start with cairn's temporary prefix, below `dir`.
fn temps(dir: &Path) -> Vec<PathBuf> {
    crate::util::walk(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("cairn-pg-"))
        })
        .collect()
}

fn catalog(env: &Env, body: &str) -> PathBuf {
    let p = env.path("cairn.toml");
    fs::write(&p, body).unwrap();
    p
}

fn restore_staging(env: &Env, cat: &Path, rep: &str) -> (std::process::Output, serde_json::Value) {
    restore_staging_with(env, cat, rep, None, None)
}

/// `stack restore --env staging` of one service (`only`) or all, with a
/// shell command run between the load and the verification (`hook`).
fn restore_staging_with(
    env: &Env,
    cat: &Path,
    rep: &str,
    only: Option<&str>,
    hook: Option<String>,
) -> (std::process::Output, serde_json::Value) {
    let rep = env.path(rep);
    let mut c = env.cmd();
    if let Some(h) = hook {
        c.env("CAIRN_TEST_HOOK_BEFORE_VERIFY", h);
    }
    c.args(["stack", "restore", "--catalog"])
        .arg(cat)
        .args(["--env", "staging", "--no-safety-snapshot", "--report"])
        .arg(&rep);
    if let Some(o) = only {
        c.args(["--only", o]);
    }
    let o = c.output().unwrap();
    let r = if rep.exists() {
        report(&rep)
    } else {
        serde_json::Value::Null
    };
    (o, r)
}

/// A SQLite database written continuously (WAL mode, one writer session a
/// few hundred rows a second) is backed up five times; every restore into staging verifies, although each time a
/// stale `-wal` file from another database sits next to the staging target
/// (replayed, it would corrupt the restored file).
#[test]
fn sqlite_backups_taken_under_writes_all_restore_verified() {
    let env = Env::new();
    env.init(&[]);
    let db = env.path("events.db");
    let staging = env.path("staging/events.db");
    fs::create_dir_all(staging.parent().unwrap()).unwrap();
    let sql = |file: &std::path::Path, script: &str| {
        let o = Command::new("sqlite3")
            .arg(file)
            .arg(script)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    sql(
        &db,
        "PRAGMA journal_mode=WAL; CREATE TABLE events (id INTEGER PRIMARY KEY, at REAL, v BLOB, note TEXT); CREATE TABLE counters (k INTEGER PRIMARY KEY, n INTEGER) WITHOUT ROWID; INSERT INTO counters VALUES (1, 0);",
    );
    // A stale WAL of another database, planted next to the staging target.
    // (copied while its writer is still open: the last connection to close
    // checkpoints and removes it).
    let other = env.path("other.db");
    let planted = env.path("planted-wal");
    {
        let mut o = Command::new("sqlite3")
            .arg(&other)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut i = o.stdin.take().unwrap();
        i.write_all(b"PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE events (id INTEGER PRIMARY KEY, at REAL, v BLOB, note TEXT); INSERT INTO events VALUES (1, 0, x'00', 'foreign'); CREATE TABLE counters (k INTEGER PRIMARY KEY, n INTEGER); INSERT INTO counters VALUES (1, 999);\n").unwrap();
        let wal = env.path("other.db-wal");
        let t0 = std::time::Instant::now();
        while fs::metadata(&wal).map_or(0, |m| m.len()) == 0 {
            assert!(t0.elapsed().as_secs() < 10, "no WAL appeared");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        fs::copy(&wal, &planted).unwrap();
        drop(i);
        o.wait().unwrap();
    }
    let cat = env.path("cairn.toml");
    fs::write(
        &cat,
        format!(
            "[service.events]\nkind = \"sqlite\"\npath = \"{}\"\n[service.events.env.staging]\ntarget = \"{}\"\n",
            db.display(),
            staging.display()
        ),
    )
    .unwrap();
    let mut w = Command::new("sqlite3")
        .arg(&db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = w.stdin.take().unwrap();
    stdin.write_all(b".timeout 10000\n").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            let s = format!(
                "BEGIN; INSERT INTO events (at, v, note) VALUES (julianday('now'), randomblob(48), 'line {i}' || char(10) || 'two'); UPDATE counters SET n = n + 1 WHERE k = 1; COMMIT;\n"
            );
            if stdin.write_all(s.as_bytes()).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
        i
    });
    let c = cat.to_str().unwrap();
    let mut failures = Vec::new();
    for round in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        env.ok(&["stack", "backup", "--catalog", c]);
        let mut wal = staging.as_os_str().to_owned();
        wal.push("-wal");
        fs::copy(&planted, &wal).unwrap();
        let rep = env.path(&format!("r{round}.json"));
        let o = env.run(&[
            "stack",
            "restore",
            "--catalog",
            c,
            "--env",
            "staging",
            "--no-safety-snapshot",
            "--report",
            rep.to_str().unwrap(),
        ]);
        let r = report(&rep);
        let s = svc(&r, "events");
        if !(o.status.success() && s["fingerprint"]["verified"] == true) {
            failures.push(format!(
                "round {round}: {} {}",
                s["error"],
                String::from_utf8_lossy(&o.stderr)
            ));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().unwrap();
    let _ = w.wait();
    let rows: u64 = sql(&db, "SELECT count(*) FROM events")
        .trim()
        .parse()
        .unwrap();
    assert!(
        rows > 100 && writes > 100,
        "the writer barely wrote: {rows} rows"
    );
    assert!(failures.is_empty(), "{failures:?}");
    // The restored copy is a sound database holding what was backed up last.
    assert_eq!(sql(&staging, "PRAGMA integrity_check").trim(), "ok");
    let n: u64 = sql(&staging, "SELECT count(*) FROM events")
        .trim()
        .parse()
        .unwrap();
    assert!(n > 0 && n <= rows, "{n} of {rows}");
}

/// A 20 MB database with a writer committing about a hundred times a second
/// backs up in bounded time, in rollback-journal mode and in WAL mode (the
/// backup API's `.backup` restarts on every write and never finished), the
/// restore verifies, and no plaintext copy or `-wal`/`-shm` of one is left
/// in cairn's temporary directory or next to the restored file.
#[test]
fn a_busy_sqlite_database_backs_up_in_bounded_time_and_leaves_no_copies() {
    for mode in ["DELETE", "WAL"] {
        let env = Env::new();
        env.init(&[]);
        let db = env.path("busy.db");
        let staging = env.path("staging/busy.db");
        let tmp = env.path("tmp");
        fs::create_dir_all(staging.parent().unwrap()).unwrap();
        sql(
            &db,
            &format!(
                "PRAGMA journal_mode={mode}; CREATE TABLE big (id INTEGER PRIMARY KEY, v BLOB); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) INSERT INTO big (v) SELECT randomblob(1000) FROM n; CREATE TABLE c (k INTEGER PRIMARY KEY, n INTEGER); INSERT INTO c VALUES (1, 0);"
            ),
        );
        let cat = catalog(
            &env,
            &format!(
                "[service.busy]\nkind = \"sqlite\"\npath = \"{}\"\ntemp_dir = \"{}\"\n[service.busy.env.staging]\ntarget = \"{}\"\n",
                db.display(),
                tmp.display(),
                staging.display()
            ),
        );
        let w = Writer::start(&db, Duration::from_millis(10), |i| {
            format!(
                "BEGIN IMMEDIATE; INSERT INTO big (v) VALUES (randomblob(200)); UPDATE c SET n = {i} WHERE k = 1; COMMIT;\n"
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        let mut child = env
            .cmd()
            .args(["stack", "backup", "--catalog", cat.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if t0.elapsed() > Duration::from_secs(90) {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let writes = w.stop();
        let status = status.unwrap_or_else(|| panic!("{mode}: the backup did not end within 90 s"));
        assert!(status.success(), "{mode}: backup failed");
        assert!(writes > 20, "{mode}: the writer barely wrote ({writes})");
        let (o, r) = restore_staging(&env, &cat, "r.json");
        assert!(
            o.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            svc(&r, "busy")["fingerprint"]["verified"],
            true,
            "{mode}: {r}"
        );
        assert_eq!(
            sql(&staging, "PRAGMA journal_mode").trim(),
            mode.to_lowercase(),
            "{mode}: the restored file keeps the journal mode"
        );
        assert_eq!(temps(&tmp), Vec::<PathBuf>::new(), "{mode}");
        assert_eq!(
            temps(staging.parent().unwrap()),
            Vec::<PathBuf>::new(),
            "{mode}"
        );
    }
}

/// The guard keeps staging restores off the live file's `-wal`, `-shm` and
/// `-journal` (a restore renamed over the live WAL destroys committed
/// writes), a symlinked database path is refused at backup time, and a
/// plaintext copy a SIGKILLed backup left is removed by the next backup.
#[test]
fn the_sqlite_guard_covers_the_live_wal_symlinks_are_refused_and_killed_copies_swept() {
    let env = Env::new();
    env.init(&[]);
    let db = env.path("prod/app.db");
    let tmp = env.path("tmp");
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    sql(
        &db,
        "PRAGMA journal_mode=WAL; CREATE TABLE t (a); INSERT INTO t VALUES (1);",
    );
    let plain = catalog(
        &env,
        &format!(
            "[service.app]\nkind = \"sqlite\"\npath = \"{}\"\ntemp_dir = \"{}\"\n",
            db.display(),
            tmp.display()
        ),
    );
    env.ok(&["stack", "backup", "--catalog", plain.to_str().unwrap()]);
    for suffix in ["-wal", "-shm", "-journal"] {
        let cat = catalog(
            &env,
            &format!(
                "[service.app]\nkind = \"sqlite\"\npath = \"{}\"\ntemp_dir = \"{}\"\n[service.app.env.staging]\ntarget = \"{}{suffix}\"\n",
                db.display(),
                tmp.display(),
                db.display()
            ),
        );
        for cmd in [
            &["stack", "drill"][..],
            &["stack", "restore", "--env", "staging"][..],
        ] {
            let o = env
                .cmd()
                .args(cmd)
                .args(["--catalog", cat.to_str().unwrap()])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{suffix} {cmd:?}: {err}");
            assert!(err.contains("production"), "{suffix} {cmd:?}: {err}");
        }
    }
    assert_eq!(sql(&db, "SELECT count(*) FROM t").trim(), "1");

    // A symlinked path is refused when it is backed up, naming the file.
    let link = env.path("prod/link.db");
    std::os::unix::fs::symlink(&db, &link).unwrap();
    let cat = catalog(
        &env,
        &format!(
            "[service.app]\nkind = \"sqlite\"\npath = \"{}\"\ntemp_dir = \"{}\"\n",
            link.display(),
            tmp.display()
        ),
    );
    let o = env.run(&["stack", "backup", "--catalog", cat.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("is a symlink"), "{out}");

    // A copy a killed backup left (its process is gone) goes at the next.
    let cat = catalog(
        &env,
        &format!(
            "[service.app]\nkind = \"sqlite\"\npath = \"{}\"\ntemp_dir = \"{}\"\n",
            db.display(),
            tmp.display()
        ),
    );
    fs::create_dir_all(&tmp).unwrap();
    let stale = tmp.join("cairn-pg-999999999-0123456789abcdef.dump");
    fs::write(&stale, b"SQLite format 3\0plaintext").unwrap();
    fs::write(
        tmp.join("cairn-pg-999999999-0123456789abcdef.dump-journal"),
        b"x",
    )
    .unwrap();
    let o = env.run(&["stack", "backup", "--catalog", cat.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(&stale.display().to_string()), "{err}");
    assert_eq!(temps(&tmp), Vec::<PathBuf>::new());
}

/// A table whose name holds a newline is fingerprinted like any other (a
/// change to it after the load fails verification), a `'` in `temp_dir`
/// works, and a forged snapshot that starts like an SQLite file but is not
/// a sound database is refused in the preflight: the service's `stop`
/// never runs and the target is untouched.
#[test]
fn odd_sqlite_names_and_forged_database_files_are_handled_before_anything_is_touched() {
    let env = Env::new();
    env.init(&[]);
    let db = env.path("app.db");
    let staging = env.path("staging/app.db");
    let tmp = env.path("it's tmp");
    fs::create_dir_all(staging.parent().unwrap()).unwrap();
    sql(
        &db,
        "CREATE TABLE \"secret\nb\" (a); INSERT INTO \"secret\nb\" VALUES (1), (2); CREATE TABLE b (a); INSERT INTO b VALUES (3);",
    );
    let stopped = env.path("stopped");
    let cat = catalog(
        &env,
        &format!(
            "[service.app]\nkind = \"sqlite\"\npath = \"{}\"\ntemp_dir = \"{}\"\n[service.app.env.staging]\ntarget = \"{}\"\nstop = \"touch {}\"\n",
            db.display(),
            tmp.display(),
            staging.display(),
            stopped.display()
        ),
    );
    let c = cat.to_str().unwrap();
    env.ok(&["stack", "backup", "--catalog", c]);
    let (o, r) = restore_staging(&env, &cat, "r1.json");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fp = &svc(&r, "app")["fingerprint"];
    assert_eq!(fp["verified"], true, "{r}");
    assert!(fp["expected"].get("table:secret\nb").is_some(), "{fp}");
    // Changed between load and verification: found.
    let (o, r2) = restore_staging_with(
        &env,
        &cat,
        "r2.json",
        None,
        Some(format!(
            "sqlite3 '{}' 'DELETE FROM \"secret\nb\" WHERE a = 1'",
            staging.display()
        )),
    );
    assert!(!o.status.success());
    let e = svc(&r2, "app")["error"].to_string();
    assert!(e.contains("secret"), "{e}");

    // A forged snapshot: SQLite's magic, then junk.
    fs::remove_file(&stopped).ok();
    let before = fs::read(&staging).unwrap();
    let repo = crate::stack_hostile::library_repo(&env);
    let (like, _) = crate::stack_hostile::newest(&repo, "app");
    let mut junk = b"SQLite format 3\0".to_vec();
    junk.extend(crate::util::prng(5, 64 << 10));
    crate::stack_hostile::forge(&repo, &like, &junk, like.tags.clone());
    drop(repo);
    let (o, r) = restore_staging(&env, &cat, "r3.json");
    assert!(!o.status.success());
    let s = svc(&r, "app");
    let e = s["error"].to_string();
    assert!(
        e.contains("preflight") && e.contains("nothing was touched"),
        "{e}"
    );
    assert!(!stopped.exists(), "stop ran for a forged snapshot");
    assert_eq!(
        fs::read(&staging).unwrap(),
        before,
        "the target was touched"
    );
}

/// What a second outside attack found: a UTF-16 database and one whose
/// index uses a collation only the application defines back up and verify;
/// a dropped trigger, renumbered rowids or a reset AUTOINCREMENT after the
/// load fail verification; a virtual table reading a file of the restoring
/// host (zipfile) is not read; and a staging target below a directory
/// another user owns is refused before anything is touched, so a swap of
/// that directory cannot turn the drill's restore or teardown onto
/// production.
#[test]
fn sqlite_encodings_collations_schema_changes_vtables_and_foreign_directories() {
    let env = Env::new();
    env.init(&[]);
    let tmp = env.path("tmp");
    // UTF-16, with a table name outside ASCII.
    let utf16 = env.path("u16.db");
    sql(
        &utf16,
        "PRAGMA encoding = 'UTF-16le'; CREATE TABLE \"gr\u{fc}n\" (a INTEGER PRIMARY KEY AUTOINCREMENT, b TEXT); INSERT INTO \"gr\u{fc}n\" (b) VALUES ('x'), ('y'); CREATE TRIGGER tg AFTER INSERT ON \"gr\u{fc}n\" BEGIN SELECT 1; END; PRAGMA user_version = 41;",
    );
    // An index under an application collation (made by Python's sqlite3).
    let coll = env.path("coll.db");
    let o = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c = sqlite3.connect({:?}); c.create_collation('unicase', lambda a, b: (a.lower() > b.lower()) - (a.lower() < b.lower())); c.execute('CREATE TABLE w (k TEXT COLLATE unicase, v)'); c.execute('CREATE INDEX wk ON w (k)'); c.execute(\"INSERT INTO w VALUES ('B', 1), ('a', 2)\"); c.commit()",
            coll.to_str().unwrap()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A zipfile virtual table naming a file on this host.
    let secret = env.path("secret.zip");
    let o = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import zipfile; z = zipfile.ZipFile({:?}, 'w'); z.writestr('s.txt', 'TOPSECRET'); z.close()",
            secret.to_str().unwrap()
        ))
        .output()
        .unwrap();
    assert!(o.status.success());
    let vt = env.path("vt.db");
    sql(
        &vt,
        &format!(
            "CREATE VIRTUAL TABLE z USING zipfile('{}'); CREATE TABLE plain (a); INSERT INTO plain VALUES (1);",
            secret.display()
        ),
    );
    let staging = env.path("staging");
    fs::create_dir_all(&staging).unwrap();
    let mut body = String::new();
    for (name, db) in [("u16", &utf16), ("coll", &coll), ("vt", &vt)] {
        body += &format!(
            "[service.{name}]\nkind = \"sqlite\"\npath = \"{}\"\ntemp_dir = \"{}\"\n[service.{name}.env.staging]\ntarget = \"{}/{name}.db\"\n",
            db.display(),
            tmp.display(),
            staging.display()
        );
    }
    let cat = catalog(&env, &body);
    let c = cat.to_str().unwrap();
    env.ok(&["stack", "backup", "--catalog", c]);
    let (o, r) = restore_staging(&env, &cat, "r1.json");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for s in ["u16", "coll", "vt"] {
        assert_eq!(svc(&r, s)["fingerprint"]["verified"], true, "{s}: {r}");
    }
    let vt_parts = svc(&r, "vt")["fingerprint"]["expected"].to_string();
    assert!(
        !vt_parts.contains("table:z"),
        "the zipfile table was read: {vt_parts}"
    );
    assert!(
        svc(&r, "u16")["fingerprint"]["expected"]
            .get("table:gr\u{fc}n")
            .is_some()
    );
    // Changes between load and verification that rows alone do not show.
    for (what, hook) in [
        ("a dropped trigger", "DROP TRIGGER tg"),
        ("renumbered rowids", "UPDATE \"gr\u{fc}n\" SET a = a + 100"),
        ("a reset sequence", "UPDATE sqlite_sequence SET seq = 0"),
        ("a changed user_version", "PRAGMA user_version = 0"),
    ] {
        let (o, r) = restore_staging_with(
            &env,
            &cat,
            "hook.json",
            Some("u16"),
            Some(format!("sqlite3 '{}/u16.db' '{hook}'", staging.display())),
        );
        assert!(!o.status.success(), "{what} passed verification");
        assert_eq!(svc(&r, "u16")["fingerprint"]["verified"], false, "{what}");
    }
    // A staging directory another user owns: refused before anything.
    let foreign = env.path("foreign");
    fs::create_dir_all(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    let body = format!(
        "[service.vt]\nkind = \"sqlite\"\npath = \"{}\"\ntemp_dir = \"{}\"\n[service.vt.env.staging]\ntarget = \"{}/vt.db\"\n",
        vt.display(),
        tmp.display(),
        foreign.display()
    );
    let cat = catalog(&env, &body);
    for cmd in [
        &["stack", "drill"][..],
        &["stack", "restore", "--env", "staging"][..],
    ] {
        let o = env
            .cmd()
            .args(cmd)
            .args(["--catalog", cat.to_str().unwrap()])
            .output()
            .unwrap();
        let out =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{cmd:?}: {out}");
        assert!(out.contains("owned by uid 65534"), "{cmd:?}: {out}");
    }
    assert_eq!(
        fs::read_dir(&foreign).unwrap().count(),
        0,
        "something was written"
    );
    assert_eq!(sql(&vt, "SELECT count(*) FROM plain").trim(), "1");
}

/// What a third outside attack found: FTS content (in shadow tables) and
/// text past an embedded NUL are fingerprinted (a change to either after
/// the load fails verification); a database whose CHECK constraint calls a
/// function only the application defines backs up and verifies; and a
/// staging path through a symlink another user owns is refused (that user
/// could point it at production between cairn's checks and the teardown).
#[test]
fn sqlite_shadow_tables_nul_text_app_functions_and_foreign_symlinks() {
    let env = Env::new();
    env.init(&[]);
    let tmp = env.path("tmp");
    let db = env.path("fts.db");
    sql(
        &db,
        "CREATE VIRTUAL TABLE f USING fts5(body); INSERT INTO f VALUES ('hello world'), ('second'); CREATE TABLE n (k TEXT); INSERT INTO n VALUES ('key=' || char(0) || 'secret');",
    );
    let func = env.path("func.db");
    let o = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c = sqlite3.connect({:?}); c.create_function('appf', 1, lambda x: x); c.execute('CREATE TABLE c (a INTEGER CHECK (appf(a) > 0))'); c.execute('INSERT INTO c VALUES (1), (2)'); c.commit()",
            func.to_str().unwrap()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let staging = env.path("staging");
    fs::create_dir_all(&staging).unwrap();
    let mut body = String::new();
    for (name, p) in [("fts", &db), ("func", &func)] {
        body += &format!(
            "[service.{name}]\nkind = \"sqlite\"\npath = \"{}\"\ntemp_dir = \"{}\"\n[service.{name}.env.staging]\ntarget = \"{}/{name}.db\"\n",
            p.display(),
            tmp.display(),
            staging.display()
        );
    }
    let cat = catalog(&env, &body);
    let c = cat.to_str().unwrap();
    env.ok(&["stack", "backup", "--catalog", c]);
    let (o, r) = restore_staging(&env, &cat, "r1.json");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for s in ["fts", "func"] {
        assert_eq!(svc(&r, s)["fingerprint"]["verified"], true, "{s}: {r}");
    }
    for (what, hook) in [
        ("changed FTS content", "UPDATE f SET body = 'tampered'"),
        (
            "text changed past a NUL",
            "UPDATE n SET k = 'key=' || char(0) || 'AAAAAA'",
        ),
    ] {
        let (o, r) = restore_staging_with(
            &env,
            &cat,
            "hook.json",
            Some("fts"),
            Some(format!("sqlite3 '{}/fts.db' \"{hook}\"", staging.display())),
        );
        assert!(!o.status.success(), "{what} passed verification");
        assert_eq!(svc(&r, "fts")["fingerprint"]["verified"], false, "{what}");
    }
    // A symlink owned by another user on the staging path.
    let real = env.path("real-staging");
    fs::create_dir_all(&real).unwrap();
    let link = PathBuf::from(format!(
        "/tmp/{}-link",
        env.dir.path().file_name().unwrap().to_str().unwrap()
    ));
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&real, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    let body = format!(
        "[service.fts]\nkind = \"sqlite\"\npath = \"{}\"\ntemp_dir = \"{}\"\n[service.fts.env.staging]\ntarget = \"{}/fts.db\"\n",
        db.display(),
        tmp.display(),
        link.display()
    );
    let cat = catalog(&env, &body);
    let o = env
        .cmd()
        .args(["stack", "drill", "--catalog", cat.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = fs::remove_file(&link);
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("owned by uid 65534"), "{out}");
    assert_eq!(
        fs::read_dir(&real).unwrap().count(),
        0,
        "something was written"
    );
}
