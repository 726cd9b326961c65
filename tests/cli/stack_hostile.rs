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
pub(crate) fn library_repo(env: &Env) -> cairn_repo::IndexedRepository {
    let b = cairn_repo::backend::open(env.repo().to_str().unwrap(), false, &Default::default())
        .unwrap();
    cairn_repo::Repository::open_store(b.into_store(), b"correct horse")
        .unwrap()
        .load_index()
        .unwrap()
}

/// The newest snapshot of `service` and its dump stream.
pub(crate) fn newest(
    repo: &cairn_repo::IndexedRepository,
    service: &str,
) -> (cairn_format::snapshot::Snapshot, Vec<u8>) {
    let snap = repo
        .repo()
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
pub(crate) fn forge(
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
        dry_run: false,
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
            .repo()
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
            "CREATE FUNCTION run(int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''cat > {}'''; RETURN $1; END $$; CREATE TABLE t (a int PRIMARY KEY CHECK (run(a) > 0), b text); INSERT INTO t VALUES (1, 'x'), (2, 'y'); CREATE TABLE honest (k int PRIMARY KEY, v text); INSERT INTO honest SELECT g, md5(g::text) FROM generate_series(1, 500) g;",
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
    // With a table under FORCE ROW LEVEL SECURITY, which binds its owner
    // (the role after the restore) but not the verification.
    psql(
        &db,
        "DROP TABLE t; DROP FUNCTION run(int); CREATE TABLE docs (id int PRIMARY KEY, tenant text); INSERT INTO docs VALUES (1, 'a'), (2, 'b'); ALTER TABLE docs ENABLE ROW LEVEL SECURITY; ALTER TABLE docs FORCE ROW LEVEL SECURITY; CREATE POLICY p ON docs USING (tenant = current_setting('app.tenant', true))",
    );
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

/// Roles created for one test, dropped (with what they own) whatever
/// happens; databases first.
struct PgScratch {
    dbs: Vec<String>,
    roles: Vec<String>,
}

impl Drop for PgScratch {
    fn drop(&mut self) {
        for d in &self.dbs {
            crate::stack::drop_pg(d);
        }
        for r in &self.roles {
            let _ = std::process::Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-X", "-q", "-c"])
                .arg(format!("DROP ROLE IF EXISTS {r}"))
                .output();
        }
    }
}

/// A database written by an application role (no superuser) that plants
/// `public.quote_ident(name)` — a better match than pg_catalog's
/// `quote_ident(text)` for a column name — and a cast of its table's row
/// type to text, each running `COPY … TO PROGRAM` when called: the catalog's
/// superuser backs it up, restores it and verifies it, and neither program
/// ever runs (the fingerprint sessions resolve names in pg_catalog only and
/// read rows through the built-in record output).
#[test]
fn a_database_cannot_make_the_fingerprint_run_its_functions_as_the_superuser() {
    use crate::stack::{psql, report, svc};
    let env = Env::new();
    env.init(&[]);
    let (db, app) = (unique(), unique());
    let _s = PgScratch {
        dbs: vec![db.clone(), format!("{db}_st")],
        roles: vec![app.clone()],
    };
    let marker = PathBuf::from(format!("/tmp/{db}-ran"));
    psql("postgres", &format!("CREATE ROLE {app} LOGIN"));
    psql("postgres", &format!("CREATE DATABASE {db} OWNER {app}"));
    let as_app = |sql: &str| {
        let o = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                &app,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &db,
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let body = format!(
        "BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''cat > {}'''; EXCEPTION WHEN OTHERS THEN NULL; END;",
        marker.display()
    );
    as_app(&format!(
        "CREATE TABLE nokey (a int, b text); INSERT INTO nokey VALUES (2, 'y'), (1, 'x'); CREATE TABLE keyed (k int PRIMARY KEY, v text); INSERT INTO keyed VALUES (1, 'a'); \
         CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE plpgsql AS $$ BEGIN {body} RETURN pg_catalog.quote_ident($1::text); END $$; \
         CREATE FUNCTION public.nokey_text(nokey) RETURNS text LANGUAGE plpgsql AS $$ BEGIN {body} RETURN 'x'; END $$; \
         CREATE CAST (nokey AS text) WITH FUNCTION public.nokey_text(nokey);"
    ));
    let _ = fs::remove_file(&marker);
    let cat = catalog(
        &env,
        &format!(
            "[service.orders]\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nuser = \"postgres\"\ndatabase = \"{db}\"\n[service.orders.env.staging]\ndatabase = \"{db}_st\"\n"
        ),
    );
    let o = stack(&env, &cat, &["backup"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rep = env.path("r.json");
    let o = stack(
        &env,
        &cat,
        &[
            "restore",
            "--env",
            "staging",
            "--no-safety-snapshot",
            "--report",
            rep.to_str().unwrap(),
        ],
    );
    // The restore itself (pg_restore as the superuser) may run what the
    // archive says; this test is about cairn's own queries, so the marker
    // is checked before and after, and only the fingerprint ran between.
    let r = report(&rep);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(svc(&r, "orders")["fingerprint"]["verified"], true, "{r}");
    assert!(
        !marker.exists(),
        "a function of the database ran as the superuser during backup or verification"
    );
    let _ = fs::remove_file(&marker);
}

/// `restore_role` is refused before anything is touched when it could gain
/// the host's rights (CREATEROLE, membership of pg_execute_server_program or
/// of a superuser role) or cannot open the connections pg_restore needs
/// (CONNECTION LIMIT 0): the existing target database keeps its table.
/// After a restore under a proper role, a rollback puts back the owner the
/// target had (the application role can write its tables again).
#[test]
fn unsafe_restore_roles_are_refused_first_and_a_rollback_puts_owners_back() {
    use crate::stack::{psql, report, svc};
    let env = Env::new();
    env.init(&[]);
    let db = unique();
    let [app, ok, cr, ex, sup, msup, cl0] =
        ["app", "ok", "cr", "ex", "sup", "msup", "cl0"].map(|r| format!("{db}_{r}"));
    let target = format!("{db}_t");
    let _s = PgScratch {
        dbs: vec![db.clone(), target.clone()],
        roles: vec![
            app.clone(),
            ok.clone(),
            cr.clone(),
            ex.clone(),
            msup.clone(),
            cl0.clone(),
            sup.clone(),
        ],
    };
    for q in [
        format!("CREATE ROLE {app} LOGIN"),
        format!("CREATE ROLE {ok} LOGIN"),
        format!("CREATE ROLE {cr} LOGIN CREATEROLE"),
        format!("CREATE ROLE {ex} LOGIN IN ROLE pg_execute_server_program"),
        format!("CREATE ROLE {sup} NOLOGIN SUPERUSER"),
        format!("CREATE ROLE {msup} LOGIN IN ROLE {sup}"),
        format!("CREATE ROLE {cl0} LOGIN CONNECTION LIMIT 0"),
        format!("CREATE DATABASE {db}"),
        format!("CREATE DATABASE {target} OWNER {app}"),
    ] {
        psql("postgres", &q);
    }
    psql(
        &db,
        "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders VALUES (1), (2)",
    );
    let app_sql = |sql: &str| {
        std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                &app,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &target,
                "-c",
                sql,
            ])
            .output()
            .unwrap()
    };
    assert!(
        app_sql("CREATE TABLE precious (x int); INSERT INTO precious VALUES (42)")
            .status
            .success()
    );
    let mut body = format!(
        "[service.orders]\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nuser = \"postgres\"\ndatabase = \"{db}\"\n"
    );
    for r in [&ok, &cr, &ex, &msup, &cl0] {
        body +=
            &format!("[service.orders.env.{r}]\ndatabase = \"{target}\"\nrestore_role = \"{r}\"\n");
    }
    let cat = catalog(&env, &body);
    let o = stack(&env, &cat, &["backup"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (r, why) in [
        (&cr, "CREATEROLE"),
        (&ex, "pg_execute_server_program"),
        (&msup, sup.as_str()),
        (&cl0, "CONNECTION LIMIT"),
    ] {
        let rep = env.path(&format!("{r}.json"));
        let o = stack(
            &env,
            &cat,
            &[
                "restore",
                "--env",
                r,
                "--allow-production-targets",
                "--report",
                rep.to_str().unwrap(),
            ],
        );
        assert!(!o.status.success(), "{r}");
        let e = svc(&report(&rep), "orders")["error"].to_string();
        assert!(
            e.contains(why) && e.contains("nothing was touched"),
            "{r}: {e}"
        );
        assert_eq!(
            psql(&target, "SELECT x FROM precious"),
            "42",
            "{r} touched the target"
        );
    }
    // A proper role restores; the rollback puts the application's own
    // database back, owned by it.
    let rep = env.path("ok.json");
    let o = stack(
        &env,
        &cat,
        &[
            "restore",
            "--env",
            &ok,
            "--allow-production-targets",
            "--report",
            rep.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = report(&rep);
    assert_eq!(svc(&r, "orders")["fingerprint"]["verified"], true, "{r}");
    let id = r["restore_id"].as_str().unwrap().to_string();
    let o = stack(&env, &cat, &["rollback", &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(psql(&target, "SELECT x FROM precious"), "42");
    assert_eq!(
        psql(
            &target,
            "SELECT tableowner FROM pg_tables WHERE tablename = 'precious'"
        ),
        app
    );
    assert!(app_sql("INSERT INTO precious VALUES (43)").status.success());
}

/// Content a restore role wrote stays under that role's rights when it is
/// put back: a database whose CHECK constraint runs `COPY … TO PROGRAM`
/// whenever a superuser loads it is restored under `restore_role` (nothing
/// runs), restored again (the safety snapshot now holds the role-built
/// database), and that restore rolled back — the rollback loads as the
/// database's owner of record, the role, and nothing runs. A cross-service
/// invariant's command sees the role as the service's user. And a role that
/// is only a member of a CREATEROLE role is refused like one with it.
#[test]
fn rollbacks_and_invariant_commands_keep_the_restore_roles_rights() {
    use crate::stack::{psql, report, svc};
    let env = Env::new();
    env.init(&[]);
    let db = unique();
    let (role, cr, mcr) = (format!("{db}_r"), format!("{db}_cr"), format!("{db}_mcr"));
    let target = format!("{db}_g");
    let _s = PgScratch {
        dbs: vec![db.clone(), target.clone()],
        roles: vec![role.clone(), mcr.clone(), cr.clone()],
    };
    let marker = PathBuf::from(format!("/tmp/{db}-ran"));
    for q in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("CREATE ROLE {cr} NOLOGIN CREATEROLE"),
        format!("CREATE ROLE {mcr} LOGIN IN ROLE {cr}"),
        format!("CREATE DATABASE {db}"),
    ] {
        psql("postgres", &q);
    }
    psql(
        &db,
        &format!(
            "CREATE FUNCTION run(int) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''cat > {}'''; END IF; RETURN true; END $$; CREATE TABLE t (a int PRIMARY KEY CHECK (run(a))); INSERT INTO t VALUES (1), (2);",
            marker.display()
        ),
    );
    let _ = fs::remove_file(&marker);
    let user_out = env.path("user-seen");
    let cat = catalog(
        &env,
        &format!(
            "[service.orders]\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nuser = \"postgres\"\ndatabase = \"{db}\"\n[service.orders.env.guarded]\ndatabase = \"{target}\"\nrestore_role = \"{role}\"\n[service.orders.env.weak]\ndatabase = \"{target}\"\nrestore_role = \"{mcr}\"\n[[invariant]]\nname = \"who\"\nservices = [\"orders\"]\ncommand = \"printf %s \\\"$CAIRN_ORDERS_USER\\\" | tee {}\"\nmatches = \"^{role}$\"\n",
            user_out.display()
        ),
    );
    let o = stack(&env, &cat, &["backup"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let restore = |e: &str, rep: &str| {
        let rep = env.path(rep);
        let o = stack(
            &env,
            &cat,
            &[
                "restore",
                "--env",
                e,
                "--allow-production-targets",
                "--report",
                rep.to_str().unwrap(),
            ],
        );
        (o, report(&rep))
    };
    let (o, r) = restore("weak", "weak.json");
    assert!(!o.status.success());
    let e = svc(&r, "orders")["error"].to_string();
    assert!(e.contains(&cr) && e.contains("nothing was touched"), "{e}");
    let (o, r) = restore("guarded", "r1.json");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(svc(&r, "orders")["fingerprint"]["verified"], true, "{r}");
    assert_eq!(
        fs::read_to_string(&user_out).unwrap(),
        role,
        "the invariant's user"
    );
    let (o, r) = restore("guarded", "r2.json");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!marker.exists(), "a restore ran the program");
    let id = r["restore_id"].as_str().unwrap().to_string();
    let o = stack(&env, &cat, &["rollback", &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !marker.exists(),
        "the rollback replayed the role-built database as the superuser"
    );
    assert_eq!(
        psql(
            &target,
            "SELECT tableowner FROM pg_tables WHERE tablename = 't'"
        ),
        role
    );
}

/// A database a superuser owns, with a schema an application role writes
/// to: the role plants a CHECK constraint whose function runs `COPY … TO
/// PROGRAM` whenever a superuser evaluates it. A restore under
/// `restore_role` takes a safety snapshot of it; rolling that restore back
/// loads the snapshot as the restore role too, never as the superuser
/// owner of record, so the program never runs (it did).
#[test]
fn a_rollback_of_a_superuser_owned_database_never_loads_as_the_superuser() {
    use crate::stack::{psql, report, svc};
    let env = Env::new();
    env.init(&[]);
    let db = unique();
    let (role, app, target) = (format!("{db}_r"), format!("{db}_app"), format!("{db}_g"));
    let _s = PgScratch {
        dbs: vec![db.clone(), target.clone()],
        roles: vec![role.clone(), app.clone()],
    };
    let marker = PathBuf::from(format!("/tmp/{db}-ran"));
    for q in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("CREATE ROLE {app} LOGIN"),
        format!("CREATE DATABASE {db}"),
        format!("CREATE DATABASE {target} OWNER postgres"),
    ] {
        psql("postgres", &q);
    }
    psql(
        &db,
        "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders VALUES (1)",
    );
    psql(&target, &format!("CREATE SCHEMA s AUTHORIZATION {app}"));
    let o = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", &app, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &target, "-c"])
        .arg(format!(
            "CREATE FUNCTION s.chk(int) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''cat > {}'''; END IF; RETURN true; END $$; CREATE TABLE s.evil (x int CHECK (s.chk(x))); INSERT INTO s.evil VALUES (1);",
            marker.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = fs::remove_file(&marker);
    let cat = catalog(
        &env,
        &format!(
            "[service.orders]\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nuser = \"postgres\"\ndatabase = \"{db}\"\n[service.orders.env.guarded]\ndatabase = \"{target}\"\nrestore_role = \"{role}\"\n"
        ),
    );
    let o = stack(&env, &cat, &["backup"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rep = env.path("r.json");
    let o = stack(
        &env,
        &cat,
        &[
            "restore",
            "--env",
            "guarded",
            "--allow-production-targets",
            "--report",
            rep.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = report(&rep);
    assert!(svc(&r, "orders")["safety_snapshot"].is_string(), "{r}");
    let id = r["restore_id"].as_str().unwrap().to_string();
    let o = stack(&env, &cat, &["rollback", &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !marker.exists(),
        "the rollback loaded the application's content as the superuser"
    );
    assert_eq!(psql(&target, "SELECT count(*) FROM s.evil"), "1");
}
