//! `cairn stack restore` of snapshots someone with the repository password
//! forged: a MariaDB dump that escapes to the shell, a `command` impostor of
//! a database service, a Redis dump reaching outside its key pattern. Each
//! is refused before anything runs or is written. Against this machine's
//! MariaDB and Redis, under unique names.

use std::fs;
use std::path::{Path, PathBuf};

use cairn_stack::redis::Conn;

use crate::stack::{mariadb, unique};
use crate::util::Env;

/// The repository through the library, as a writer holding the password.
fn library_repo(env: &Env) -> cairn_repo::IndexedRepository {
    let b = cairn_repo::backend::open(env.repo().to_str().unwrap(), false, &Default::default())
        .unwrap();
    cairn_repo::Repository::open_store(b.into_store(), b"correct horse")
        .unwrap()
        .load_index()
        .unwrap()
}

/// The newest snapshot of `service` and its dump stream.
fn newest(
    repo: &cairn_repo::IndexedRepository,
    service: &str,
) -> (cairn_format::snapshot::Snapshot, Vec<u8>) {
    let snap = repo
        .repo
        .list_snapshots()
        .unwrap()
        .into_iter()
        .rev()
        .find(|(_, s)| s.service == service)
        .unwrap()
        .1;
    let node = repo
        .find_node(&snap.tree, b"/dump")
        .unwrap()
        .expect("a dump stream");
    let mut out = Vec::new();
    repo.dump_file(&node, &mut out).unwrap();
    (snap, out)
}

/// Write `dump` as a new snapshot of the same service in a new group, with
/// `like`'s tags and fingerprints (what a forger copies from the real one),
/// dated one second later so that it is `latest`.
fn forge(
    repo: &cairn_repo::IndexedRepository,
    like: &cairn_format::snapshot::Snapshot,
    dump: &[u8],
    tags: Vec<String>,
) {
    let mut group = [0u8; 16];
    cairn_format::crypto::random_bytes(&mut group);
    let opts = cairn_repo::BackupOptions {
        service: like.service.clone(),
        hostname: like.hostname.clone(),
        username: like.username.clone(),
        tags,
        parent: cairn_repo::ParentChoice::None,
        group: Some(group),
        fingerprints: like.fingerprints.clone(),
        exclusions: Default::default(),
    };
    repo.backup_stream(dump, "dump", &opts, &Default::default(), || Ok(()))
        .unwrap();
}

fn catalog(env: &Env, body: &str) -> PathBuf {
    let p = env.path(&format!("cairn-{}.toml", unique()));
    fs::write(&p, body).unwrap();
    p
}

fn stack(env: &Env, cat: &Path, args: &[&str]) -> std::process::Output {
    env.cmd()
        .arg("stack")
        .args(args)
        .arg("--catalog")
        .arg(cat)
        .output()
        .unwrap()
}

fn drop_my(db: &str) {
    mariadb(&format!("DROP DATABASE IF EXISTS `{db}`"));
}

/// A MariaDB dump with mariadb-dump's sandbox line removed and a `system`
/// command added, with the real fingerprints copied, is refused before the
/// database is dropped, and the command does not run. With the sandbox line
/// kept, the client's --sandbox refuses the shell escape.
#[test]
fn a_trojan_mariadb_dump_is_refused_and_its_shell_command_never_runs() {
    let env = Env::new();
    env.init(&[]);
    let db = unique();
    mariadb(&format!(
        "CREATE DATABASE `{db}`; CREATE TABLE `{db}`.t (id INT PRIMARY KEY, v VARBINARY(16)); INSERT INTO `{db}`.t VALUES (1, 0x00ff), (2, 'x');"
    ));
    let cat = catalog(
        &env,
        &format!(
            "[service.catalog-db]\nkind = \"mariadb\"\nhost = \"127.0.0.1\"\nuser = \"root\"\ndatabase = \"{db}\"\n"
        ),
    );
    let o = stack(&env, &cat, &["backup"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pwned = env.path("pwned");
    let repo = library_repo(&env);
    let (snap, dump) = newest(&repo, "catalog-db");
    let text = String::from_utf8(dump).unwrap();
    let first = text.lines().next().unwrap();
    assert!(first.contains("enable the sandbox mode"), "{first}");
    let body = &text[first.len() + 1..];
    let escape = format!("system touch {}\n", pwned.display());

    for (what, forged) in [
        ("sandbox line removed", format!("{escape}{body}")),
        ("sandbox line kept", format!("{first}\n{body}{escape}")),
    ] {
        forge(&repo, &snap, forged.as_bytes(), snap.tags.clone());
        // The live database changes after the backup: a refused restore
        // must leave this row in place.
        mariadb(&format!(
            "INSERT INTO `{db}`.t VALUES (3, 'after') ON DUPLICATE KEY UPDATE v = 'after'"
        ));
        let o = stack(&env, &cat, &["restore"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{what}: {err}");
        assert!(!pwned.exists(), "{what}: the dump's shell command ran");
        if what == "sandbox line removed" {
            assert!(
                err.contains("does not begin with mariadb-dump's sandbox line"),
                "{what}: {err}"
            );
            // Refused in the preflight: not even a safety snapshot was taken.
            assert!(!err.contains("safety-snapshot"), "{what}: {err}");
            assert_eq!(
                mariadb(&format!("SELECT v FROM `{db}`.t WHERE id = 3")).trim(),
                "after",
                "{what}: the database was touched"
            );
        } else {
            assert!(
                err.contains("Not allowed in the sandbox mode"),
                "{what}: {err}"
            );
        }
    }
    drop(repo);
    drop_my(&db);
}

/// A second catalog declaring the MariaDB service as a `command` service
/// writes a snapshot of that name tagged kind:command; the real catalog's
/// restore refuses it before anything runs.
#[test]
fn a_command_impostor_of_a_database_service_is_refused_before_anything_runs() {
    let env = Env::new();
    env.init(&[]);
    let db = unique();
    mariadb(&format!(
        "CREATE DATABASE `{db}`; CREATE TABLE `{db}`.t (id INT PRIMARY KEY); INSERT INTO `{db}`.t VALUES (7);"
    ));
    let evil = env.path("evil.sql");
    let pwned = env.path("pwned");
    fs::write(&evil, format!("system touch {}\n", pwned.display())).unwrap();
    let impostor = catalog(
        &env,
        &format!(
            "[service.orders-db]\nkind = \"command\"\nbackup = \"cat {}\"\nrestore = \"cat\"\n",
            evil.display()
        ),
    );
    let o = stack(&env, &impostor, &["backup"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let real = catalog(
        &env,
        &format!(
            "[service.orders-db]\nkind = \"mariadb\"\nhost = \"127.0.0.1\"\nuser = \"root\"\ndatabase = \"{db}\"\n"
        ),
    );
    let o = stack(&env, &real, &["restore"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("was written as kind command, but the catalog says kind mariadb"),
        "{err}"
    );
    assert!(!pwned.exists());
    assert_eq!(mariadb(&format!("SELECT id FROM `{db}`.t")).trim(), "7");
    // No safety snapshot was taken either: nothing ran.
    let repo = library_repo(&env);
    assert!(
        !repo
            .repo
            .list_snapshots()
            .unwrap()
            .iter()
            .any(|(_, s)| s.tags.iter().any(|t| t == "safety"))
    );
    drop(repo);
    drop_my(&db);
}

/// A Redis dump for `P:*` that also holds `Q:victim` is refused before any
/// key is written or unlinked: the other key space keeps its value, and so
/// do the service's own keys.
#[test]
fn a_redis_dump_reaching_outside_its_key_pattern_is_refused_before_anything_is_written() {
    let env = Env::new();
    env.init(&[]);
    let p = unique();
    let mut c = Conn::connect("127.0.0.1:6379", None).unwrap();
    let set = |c: &mut Conn, k: &str, v: &str| {
        c.call(&[b"SET", k.as_bytes(), v.as_bytes()]).unwrap();
    };
    set(&mut c, &format!("{p}:a"), "1");
    set(&mut c, &format!("{p}x:victim"), "precious");
    let cat = catalog(
        &env,
        &format!(
            "[service.sessions]\nkind = \"redis\"\nhost = \"127.0.0.1\"\nkey_pattern = \"{p}:*\"\n"
        ),
    );
    let o = stack(&env, &cat, &["backup"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The forged dump: the real one plus a record for the other key space,
    // whose payload is the DUMP of a key holding "owned".
    let repo = library_repo(&env);
    let (snap, mut dump) = newest(&repo, "sessions");
    set(&mut c, &format!("{p}:tmp"), "owned");
    let cairn_stack::redis::Reply::Bulk(Some(payload)) =
        c.call(&[b"DUMP", format!("{p}:tmp").as_bytes()]).unwrap()
    else {
        panic!("DUMP")
    };
    c.call(&[b"DEL", format!("{p}:tmp").as_bytes()]).unwrap();
    let key = format!("{p}x:victim");
    dump.extend_from_slice(&0u32.to_le_bytes());
    dump.extend_from_slice(&(key.len() as u32).to_le_bytes());
    dump.extend_from_slice(key.as_bytes());
    dump.extend_from_slice(&(-1i64).to_le_bytes());
    dump.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    dump.extend_from_slice(&payload);
    forge(&repo, &snap, &dump, snap.tags.clone());
    drop(repo);
    set(&mut c, &format!("{p}:a"), "live");
    let o = stack(&env, &cat, &["restore", "--no-safety-snapshot"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("1 key(s) outside the service's key space")
            && err.contains(&format!("db0 key \"{p}x:victim\"")),
        "{err}"
    );
    let get = |c: &mut Conn, k: &str| match c.call(&[b"GET", k.as_bytes()]).unwrap() {
        cairn_stack::redis::Reply::Bulk(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
        other => format!("{other:?}"),
    };
    assert!(get(&mut c, &format!("{p}x:victim")).contains("precious"));
    assert!(
        get(&mut c, &format!("{p}:a")).contains("live"),
        "the service's keys were touched"
    );
    for k in [format!("{p}:a"), format!("{p}x:victim")] {
        c.call(&[b"DEL", k.as_bytes()]).unwrap();
    }
}

/// A PostgreSQL archive whose table has a CHECK constraint calling a
/// function that runs `COPY … TO PROGRAM` (a shell command on the database
/// host) runs that command when `pg_restore` loads the rows as a superuser.
/// With `restore_role` (a role without SUPERUSER, which then owns the
/// recreated database and everything in it), `pg_restore` connects as that
/// role, the load fails naming the missing privilege and the command never
/// runs; an honest database restores verified under the role and is owned
/// by it; a superuser `restore_role` is refused before anything is touched.
#[test]
fn a_postgres_archive_that_runs_a_program_is_harmless_under_restore_role() {
    use crate::stack::{drop_pg, psql, report, svc};
    let env = Env::new();
    env.init(&[]);
    let (db, role, admin) = (unique(), unique(), unique());
    let marker = PathBuf::from(format!("/tmp/{db}-ran"));
    // Dropped whatever happens below.
    struct Cleanup(String, [String; 2]);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let db = &self.0;
            for d in [
                db.clone(),
                format!("{db}_g"),
                format!("{db}_o"),
                format!("{db}_s"),
            ] {
                drop_pg(&d);
            }
            for r in &self.1 {
                let _ = std::process::Command::new("psql")
                    .args(["-h", "127.0.0.1", "-U", "postgres", "-X", "-q", "-c"])
                    .arg(format!("DROP ROLE IF EXISTS {r}"))
                    .output();
            }
        }
    }
    let _cleanup = Cleanup(db.clone(), [role.clone(), admin.clone()]);
    psql("postgres", &format!("CREATE DATABASE {db}"));
    psql("postgres", &format!("CREATE ROLE {role} LOGIN"));
    psql("postgres", &format!("CREATE ROLE {admin} LOGIN SUPERUSER"));
    psql(
        &db,
        &format!(
            "CREATE FUNCTION run(int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {}'''; RETURN $1; END $$; CREATE TABLE t (a int PRIMARY KEY CHECK (run(a) > 0), b text); INSERT INTO t VALUES (1, 'x'), (2, 'y'); CREATE TABLE honest (k int PRIMARY KEY, v text); INSERT INTO honest SELECT g, md5(g::text) FROM generate_series(1, 500) g;",
            marker.display()
        ),
    );
    let _ = fs::remove_file(&marker);
    let cat = catalog(
        &env,
        &format!(
            "[service.orders]\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nuser = \"postgres\"\ndatabase = \"{db}\"\n[service.orders.env.guarded]\ndatabase = \"{db}_g\"\nrestore_role = \"{role}\"\n[service.orders.env.open]\ndatabase = \"{db}_o\"\n[service.orders.env.super]\ndatabase = \"{db}_s\"\nrestore_role = \"{admin}\"\n"
        ),
    );
    let o = stack(&env, &cat, &["backup"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let restore = |e: &str| {
        let rep = env.path(&format!("{e}.json"));
        let o = stack(
            &env,
            &cat,
            &[
                "restore",
                "--env",
                e,
                "--no-safety-snapshot",
                "--report",
                rep.to_str().unwrap(),
            ],
        );
        (o, report(&rep))
    };
    // A superuser as restore role: refused in the preflight, nothing made.
    let (o, r) = restore("super");
    assert!(!o.status.success());
    let e = svc(&r, "orders")["error"].to_string();
    assert!(e.contains("is a superuser"), "{e}");
    assert_eq!(
        psql(
            "postgres",
            &format!("select count(*) from pg_database where datname = '{db}_s'")
        ),
        "0"
    );
    // Under the restore role the program never runs.
    let (o, r) = restore("guarded");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{err}");
    let e = svc(&r, "orders")["error"].to_string();
    assert!(e.contains("pg_execute_server_program"), "{e}");
    assert!(
        !marker.exists(),
        "the archive's program ran under restore_role"
    );
    // Without it, as the superuser, it does: the threat is real.
    let (o, _) = restore("open");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(marker.exists(), "the superuser restore ran the program");
    let _ = fs::remove_file(&marker);
    // An honest database restores verified under the role, owned by it.
    psql(&db, "DROP TABLE t; DROP FUNCTION run(int)");
    let o = stack(&env, &cat, &["backup"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (o, r) = restore("guarded");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(svc(&r, "orders")["fingerprint"]["verified"], true, "{r}");
    assert_eq!(
        psql(
            &format!("{db}_g"),
            "select tableowner from pg_tables where tablename = 'honest'"
        ),
        role
    );
    assert_eq!(
        psql(
            "postgres",
            &format!("select pg_get_userbyid(datdba) from pg_database where datname = '{db}_g'")
        ),
        role
    );
    let _ = fs::remove_file(&marker);
}
