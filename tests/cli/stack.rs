//! `cairn stack` against the real PostgreSQL, MariaDB and Redis of this machine.
//! Every test uses uniquely named databases and keys and removes them after.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_stack::redis::{Conn, Reply};

use crate::util::{CHEAP_KDF, Env, assert_same_tree};

pub(crate) fn unique() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("cairn_t_{}_{}", std::process::id(), t % 1_000_000_000)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/stack")
}

pub(crate) fn psql(db: &str, sql: &str) -> String {
    let o = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-X",
            "-At",
            "-d",
            db,
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Drop a PostgreSQL database this test created (ignoring errors: cleanup).
pub(crate) fn drop_pg(db: &str) {
    let _ = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-X",
            "-q",
            "-d",
            "postgres",
            "-c",
        ])
        .arg(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .output();
}

pub(crate) fn mariadb(sql: &str) -> String {
    let o = Command::new("mariadb")
        .args([
            "--protocol=TCP",
            "-h",
            "127.0.0.1",
            "-u",
            "root",
            "-N",
            "-B",
            "-e",
            sql,
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mariadb: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// The example's data under unique names; removed on drop.
pub(crate) struct Stack {
    pub(crate) prefix: String,
    pub(crate) state: PathBuf,
    pub(crate) port: u16,
}

impl Stack {
    fn envs(&self, c: &mut Command) {
        c.env("PG_DB", format!("{}_orders", self.prefix))
            .env("MY_DB", format!("{}_catalog", self.prefix))
            .env("REDIS_PREFIX", &self.prefix)
            .env("STATE", &self.state);
    }
    pub(crate) fn script(&self, name: &str, scale: &str) {
        let mut c = Command::new(example().join(name));
        self.envs(&mut c);
        c.env("SCALE", scale);
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    /// The example catalog, pointed at this stack's names.
    pub(crate) fn catalog(&self, dir: &Path) -> PathBuf {
        let src = fs::read_to_string(example().join("cairn.toml")).unwrap();
        let text = src
            .replace("cairn_example", &self.prefix)
            .replace("18080", &self.port.to_string())
            .replace("18081", &free_port().to_string())
            .replace("state/", &format!("{}/", self.state.display()));
        let p = dir.join("cairn.toml");
        fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let mut c = Command::new(example().join("destroy"));
        self.envs(&mut c);
        let _ = c.output();
        for db in ["orders", "catalog"] {
            drop_pg(&format!("{}_{db}_staging", self.prefix));
            let _ = Command::new("mariadb")
                .args(["--protocol=TCP", "-h", "127.0.0.1", "-u", "root", "-e"])
                .arg(format!(
                    "DROP DATABASE IF EXISTS `{}_{db}_staging`",
                    self.prefix
                ))
                .output();
        }
    }
}

/// Content fingerprints independent of physical layout.
pub(crate) fn pg_content(db: &str) -> String {
    let tables = psql(
        db,
        "select tablename from pg_tables where schemaname = 'public' order by 1",
    );
    tables
        .lines()
        .map(|t| {
            psql(
                db,
                &format!(
                    "select '{t}', count(*), sum(hashtextextended(x::text, 0)) from \"{t}\" x"
                ),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn redis_content(pattern: &str) -> BTreeMap<Vec<u8>, (Vec<u8>, bool)> {
    let mut c = Conn::connect("127.0.0.1:6379", None).unwrap();
    let mut out = BTreeMap::new();
    for k in c.scan(pattern).unwrap() {
        let Reply::Bulk(Some(dump)) = c.call(&[b"DUMP", &k]).unwrap() else {
            panic!("dump")
        };
        let Reply::Int(ttl) = c.call(&[b"PTTL", &k]).unwrap() else {
            panic!("pttl")
        };
        // DUMP payloads carry the value, its type and encoding: equal payloads, equal values.
        out.insert(k, (dump, ttl > 0));
    }
    out
}

pub(crate) fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

pub(crate) fn svc<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == name)
        .unwrap()
}

#[test]
fn example_stack_backs_up_is_destroyed_and_restores_in_dependency_order() {
    use std::os::unix::fs::PermissionsExt;
    let tmp_mode = fs::metadata(std::env::temp_dir())
        .unwrap()
        .permissions()
        .mode();
    let env = Env::new();
    let stack = Stack {
        prefix: unique(),
        state: env.path("state"),
        port: free_port(),
    };
    stack.script("seed", "14");
    let pg_db = format!("{}_orders", stack.prefix);
    let my_db = format!("{}_catalog", stack.prefix);
    let size: u64 = psql(&pg_db, &format!("select pg_database_size('{pg_db}')"))
        .parse()
        .unwrap();
    assert!(
        size >= 200 << 20,
        "postgres test database is only {size} bytes"
    );
    let catalog = stack.catalog(env.dir.path());
    let cat = catalog.to_str().unwrap();
    let pw = stack.state.join("password");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("CAIRN_PASSWORD_FILE", &pw)
            .args(args)
            .output()
            .unwrap()
    };
    let mut init = vec!["init", "--repo"];
    let repo = stack.state.join("repo");
    init.push(repo.to_str().unwrap());
    init.extend_from_slice(&CHEAP_KDF);
    assert!(run(&init).status.success());

    let before_pg = pg_content(&pg_db);
    let before_my = mariadb(&format!(
        "CHECKSUM TABLE `{my_db}`.products, `{my_db}`.categories"
    ));
    let before_redis = redis_content(&format!("{}:*", stack.prefix));
    assert_eq!(before_redis.len(), 1202);
    let files_copy = env.path("files-before");
    for d in ["uploads", "reports"] {
        crate::copy_dir(&stack.state.join(d), &files_copy.join(d));
    }
    // copy_dir does not keep mtimes: compare against a second listing instead.
    let _ = files_copy;
    let snapshot_of = |d: &str| {
        let mut v = Vec::new();
        for p in crate::util::walk(&stack.state.join(d)) {
            let md = fs::symlink_metadata(&p).unwrap();
            let content = if md.is_file() {
                fs::read(&p).unwrap()
            } else {
                vec![]
            };
            use std::os::unix::fs::MetadataExt;
            v.push((
                p.strip_prefix(&stack.state).unwrap().to_path_buf(),
                md.mode(),
                md.mtime(),
                md.mtime_nsec(),
                content,
            ));
        }
        v
    };
    let before_files = (snapshot_of("uploads"), snapshot_of("reports"));

    // One command backs the whole stack up.
    let o = run(&[
        "stack",
        "backup",
        "--catalog",
        cat,
        "--json",
        "--metrics-file",
        env.path("backup.prom").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(b["services"].as_array().unwrap().len(), 6);
    assert!(
        b["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["ok"] == true)
    );
    let prom = fs::read_to_string(env.path("backup.prom")).unwrap();
    assert!(
        prom.contains(
            "cairn_backup_success{service=\"orders-db\",kind=\"postgres\",env=\"production\",status=\"passed\"} 1"
        ),
        "{prom}"
    );
    crate::util::assert_promtool_accepts(&env.path("backup.prom"));

    // The plan touches nothing and lists the waves.
    let o = run(&["stack", "plan", "--catalog", cat, "--json"]);
    assert!(o.status.success());
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["waves"].as_array().unwrap().len(), 2);
    assert_eq!(plan["waves"][1], serde_json::json!(["api"]));

    // Disaster.
    stack.script("destroy", "0");
    assert_eq!(
        psql(
            "postgres",
            &format!("select count(*) from pg_database where datname = '{pg_db}'")
        ),
        "0"
    );

    // One command restores it.
    let rep = env.path("report.json");
    let o = run(&[
        "stack",
        "restore",
        "--catalog",
        cat,
        "--report",
        rep.to_str().unwrap(),
        "--metrics-file",
        env.path("restore.prom").to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let r = report(&rep);

    assert_eq!(pg_content(&pg_db), before_pg);
    assert_eq!(
        mariadb(&format!(
            "CHECKSUM TABLE `{my_db}`.products, `{my_db}`.categories"
        )),
        before_my
    );
    assert_eq!(redis_content(&format!("{}:*", stack.prefix)), before_redis);
    assert_eq!(
        (snapshot_of("uploads"), snapshot_of("reports")),
        before_files
    );
    assert!(
        fs::read_to_string(stack.state.join("api/config.json"))
            .unwrap()
            .contains(&pg_db)
    );

    // Dependency order: api started after every dependency passed.
    let api = svc(&r, "api");
    let api_start = api["start"].as_f64().unwrap();
    for d in ["orders-db", "catalog-db", "sessions", "uploads", "reports"] {
        let s = svc(&r, d);
        assert_eq!(s["status"], "passed");
        assert!(
            s["end"].as_f64().unwrap() <= api_start,
            "api started before {d} passed"
        );
    }
    assert_eq!(api["status"], "passed");
    // The temporary dump went to a directory of cairn's own (no state
    // directory here: <system temp>/cairn-<uid>), never by changing the
    // system's temporary directory (an earlier version tightened it to 0700).
    assert_eq!(
        fs::metadata(std::env::temp_dir())
            .unwrap()
            .permissions()
            .mode(),
        tmp_mode
    );
    // PostgreSQL got planner statistics in a stage of its own.
    let stages: Vec<&str> = svc(&r, "orders-db")["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(stages.contains(&"analyze"), "{stages:?}");
    assert_ne!(
        psql(
            &pg_db,
            "select count(*) from pg_stat_user_tables where last_analyze is not null"
        )
        .trim(),
        "0"
    );
    // Independent services overlapped in time.
    let o = svc(&r, "orders-db");
    let c = svc(&r, "catalog-db");
    assert!(
        c["start"].as_f64().unwrap() < o["end"].as_f64().unwrap()
            && o["start"].as_f64().unwrap() < c["end"].as_f64().unwrap(),
        "orders-db and catalog-db did not overlap: {o} {c}"
    );
    // Wall time close to the critical path.
    let wall = r["wall_seconds"].as_f64().unwrap();
    let cp = r["critical_path_seconds"].as_f64().unwrap();
    eprintln!(
        "stack restore: wall {wall:.2}s, critical path {cp:.2}s ({}), sum {:.2}s",
        r["critical_path"], r["sum_service_seconds"]
    );
    assert!(
        wall <= 1.2 * cp,
        "wall {wall:.2}s > 1.2 x critical path {cp:.2}s"
    );
    let prom = fs::read_to_string(env.path("restore.prom")).unwrap();
    assert!(
        prom.contains(
            "cairn_restore_success{service=\"api\",kind=\"command\",env=\"production\",operation=\"restore\",status=\"passed\"} 1"
        ),
        "{prom}"
    );
    crate::util::assert_promtool_accepts(&env.path("restore.prom"));
}

#[test]
fn unreachable_database_fails_its_service_stops_dependents_and_spares_the_rest() {
    let env = Env::new();
    let db = unique();
    psql("postgres", &format!("CREATE DATABASE \"{db}\""));
    struct Drop1(String);
    impl Drop for Drop1 {
        fn drop(&mut self) {
            drop_pg(&self.0);
        }
    }
    let _guard = Drop1(db.clone());
    psql(
        &db,
        "create table t (id int primary key); insert into t select generate_series(1, 100)",
    );
    let files = env.path("files");
    fs::create_dir_all(&files).unwrap();
    fs::write(files.join("a"), "a").unwrap();
    let catalog = env.path("cairn.toml");
    fs::write(
        &catalog,
        format!(
            r#"[service.pg]
kind = "postgres"
host = "127.0.0.1"
user = "postgres"
database = "{db}"

[service.pg.env.broken]
port = 1

[service.app]
kind = "command"
backup = "echo app"
restore = "cat > /dev/null"
depends_on = ["pg"]

[service.app.env.broken]

[service.docs]
kind = "files"
path = "{files}"
target = "{target}"

[service.docs.env.broken]
"#,
            files = files.display(),
            target = env.path("restored-docs").display()
        ),
    )
    .unwrap();
    env.init(&[]);
    let cat = catalog.to_str().unwrap();
    let o = env.run(&["stack", "backup", "--catalog", cat]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Backup against the unreachable server: that service fails clearly, the others commit.
    let o = env.run(&[
        "stack",
        "backup",
        "--catalog",
        cat,
        "--env",
        "broken",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let pg = b["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "pg")
        .unwrap();
    assert_eq!(pg["ok"], false);
    assert!(pg["error"].as_str().unwrap().contains("service pg"), "{pg}");
    assert!(
        b["services"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["ok"] == true)
            .count()
            == 2
    );

    // Restore the first (complete) group into the broken environment (its
    // other services keep production's targets: allowed on purpose).
    let groups: Vec<String> = env
        .json(&["snapshots"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["group"].as_str().map(String::from))
        .collect();
    let first_group = groups[0].clone();
    let rep = env.path("r.json");
    let o = env.run(&[
        "stack",
        "restore",
        "--catalog",
        cat,
        "--env",
        "broken",
        "--allow-production-targets",
        "--group",
        &first_group,
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pg") && err.contains("app"), "{err}");
    let r = report(&rep);
    assert_eq!(svc(&r, "pg")["status"], "failed");
    // The unreachable server is found by the first stage that talks to it
    // (the safety snapshot of what the target holds), before anything is
    // overwritten.
    let pg_err = svc(&r, "pg")["error"].as_str().unwrap().to_string();
    assert!(
        pg_err.starts_with("safety-snapshot:") && pg_err.contains("Connection refused"),
        "{pg_err}"
    );
    assert!(
        !svc(&r, "pg")["stages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "fetch+load")
    );
    assert_eq!(svc(&r, "app")["status"], "skipped");
    assert!(
        svc(&r, "app")["error"]
            .as_str()
            .unwrap()
            .contains("dependency pg")
    );
    assert_eq!(svc(&r, "docs")["status"], "passed");
    assert_same_tree(&files, &env.path("restored-docs"));
}

#[test]
fn bad_catalogs_are_rejected_with_file_and_line() {
    let env = Env::new();
    env.init(&[]);
    let cases = [
        (
            "[service.a]\nkind = \"files\"\npath = \"/x\"\ndepends_on = [\"b\"]\n[service.b]\nkind = \"files\"\npath = \"/y\"\ndepends_on = [\"a\"]\n",
            ":1: dependency cycle: a -> b -> a",
        ),
        (
            "[service.a]\nkind = \"files\"\npath = \"/x\"\ndepends_on = [\"nope\"]\n",
            ":4: service a depends on unknown service \"nope\"",
        ),
        (
            "[service.a]\nkind = \"files\"\npath = \"/x\"\nfrobnicate = true\n",
            ":4:",
        ),
    ];
    for (text, expected) in cases {
        let p = env.path("cairn.toml");
        fs::write(&p, text).unwrap();
        let o = env.run(&["stack", "plan", "--catalog", p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("{}{expected}", p.display())),
            "expected {expected:?} in {err}"
        );
    }
}

#[test]
fn stack_forget_applies_catalog_retention_per_service() {
    let env = Env::new();
    env.init(&[]);
    let files = env.path("files");
    fs::create_dir_all(&files).unwrap();
    let catalog = env.path("cairn.toml");
    fs::write(
        &catalog,
        format!(
            "[service.docs]\nkind = \"files\"\npath = \"{}\"\nretention = {{ keep_last = 2 }}\n\n[service.app]\nkind = \"command\"\nbackup = \"echo app\"\nrestore = \"cat >/dev/null\"\n",
            files.display()
        ),
    )
    .unwrap();
    let cat = catalog.to_str().unwrap();
    for i in 0..4 {
        fs::write(files.join("f"), format!("{i}")).unwrap();
        assert!(
            env.run(&["stack", "backup", "--catalog", cat])
                .status
                .success()
        );
    }
    let count = |svc: &str| {
        env.json(&["snapshots", "--service", svc])
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!((count("docs"), count("app")), (4, 4));
    let o = env.run(&["stack", "forget", "--catalog", cat]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // docs keeps 2; app has no retention and keeps everything.
    assert_eq!((count("docs"), count("app")), (2, 4));
    // --prune runs the two-phase prune after the forget.
    let o = env.run(&[
        "stack",
        "forget",
        "--catalog",
        cat,
        "--prune",
        "--keep-delete",
        "0s",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"packs_marked\""));
    assert_eq!((count("docs"), count("app")), (2, 4));
    let bad = env.path("bad.toml");
    fs::write(
        &bad,
        "[service.d]\nkind = \"files\"\npath = \"/x\"\nretention = { keep_within = \"3 weeks\" }\n",
    )
    .unwrap();
    let o = env.run(&["stack", "forget", "--catalog", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(":1: service d: retention"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The example catalog with its state directory in `dir`, then `edit`ed.
fn example_catalog_in(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let src = fs::read_to_string(example().join("cairn.toml")).unwrap();
    let text = edit(src.replace("state/", &format!("{}/state/", dir.display())));
    let p = dir.join(format!("cairn-{}.toml", unique()));
    fs::write(&p, text).unwrap();
    p
}

/// Staging overrides that name production's data in another spelling — a
/// trailing slash, `localhost` for `127.0.0.1`, a directory inside
/// production's, a Redis pattern overlapping production's keys, another
/// service's directory — are refused by `stack drill` and by `stack restore
/// --env staging` before anything is touched (the repository is not even
/// opened: it does not exist here), naming the service and both targets.
#[test]
fn drills_and_env_restores_aimed_at_production_in_another_spelling_are_refused_before_anything_runs()
 {
    let env = Env::new();
    let dir = env.dir.path();
    let prod_uploads = dir.join("state/uploads");
    fs::create_dir_all(&prod_uploads).unwrap();
    fs::write(prod_uploads.join("keep"), b"production").unwrap();
    let up = prod_uploads.display().to_string();
    type Edit<'a> = Box<dyn Fn(String) -> String + 'a>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "uploads",
            Box::new(move |t: String| {
                t.replace(
                    &format!("target = \"{}/state/staging/uploads\"", dir.display()),
                    &format!("target = \"{up}/\""),
                )
            }),
        ),
        (
            "orders-db",
            Box::new(|t: String| {
                t.replace(
                    "[service.orders-db.env.staging]\ndatabase = \"cairn_example_orders_staging\"",
                    "[service.orders-db.env.staging]\nhost = \"localhost\"",
                )
            }),
        ),
        (
            "uploads",
            Box::new(move |t: String| {
                t.replace(
                    &format!("{}/state/staging/uploads", dir.display()),
                    &format!("{}/state/uploads/staging", dir.display()),
                )
            }),
        ),
        (
            "sessions",
            Box::new(|t: String| {
                t.replace(
                    "[service.sessions.env.staging]\ndatabases = [1]",
                    "[service.sessions.env.staging]\nkey_pattern = \"cairn_*\"",
                )
            }),
        ),
        (
            "reports",
            Box::new(move |t: String| {
                t.replace(
                    &format!("{}/state/staging/reports", dir.display()),
                    &format!("{}/state/./uploads/../uploads", dir.display()),
                )
            }),
        ),
    ];
    let plain = fs::read_to_string(example_catalog_in(dir, |t| t)).unwrap();
    for (service, edit) in &cases {
        let cat = example_catalog_in(dir, edit);
        assert_ne!(
            fs::read_to_string(&cat).unwrap(),
            plain,
            "the edit for {service} changed nothing"
        );
        for args in [
            vec!["stack", "drill", "--catalog", cat.to_str().unwrap()],
            vec![
                "stack",
                "restore",
                "--env",
                "staging",
                "--catalog",
                cat.to_str().unwrap(),
            ],
        ] {
            let o = env.run(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{args:?} for {service}: {err}");
            assert!(
                err.contains("would overwrite production data; nothing was touched")
                    && err.contains(&format!("  {service}: ")),
                "{args:?} for {service}: {err}"
            );
        }
    }
    assert_eq!(fs::read(prod_uploads.join("keep")).unwrap(), b"production");
    // The example's own staging overrides pass the guard (and then fail on
    // the missing repository, which is not the guard's business).
    let cat = example_catalog_in(dir, |t| t);
    let o = env.run(&["stack", "drill", "--catalog", cat.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("would overwrite production"), "{err}");
    // --allow-production-targets lets an operator restore staging over
    // production on purpose.
    let cat = example_catalog_in(dir, &cases[0].1);
    let o = env.run(&[
        "stack",
        "restore",
        "--env",
        "staging",
        "--allow-production-targets",
        "--catalog",
        cat.to_str().unwrap(),
    ]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("would overwrite production"));
}

/// A service named with a quote and a backslash: the textfiles of its stack
/// backup and restore are valid exposition (promtool accepts them) and the
/// label value is escaped, not cut.
#[test]
fn metrics_of_a_service_named_with_quotes_and_backslashes_pass_promtool() {
    let env = Env::new();
    env.init(&[]);
    let data = env.path("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("a"), b"x").unwrap();
    let cat = env.path("cairn.toml");
    fs::write(
        &cat,
        format!(
            "[service.'we\"ird\\name']\nkind = \"files\"\npath = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let (b, r) = (env.path("b.prom"), env.path("r.prom"));
    let c = cat.to_str().unwrap();
    env.ok(&[
        "stack",
        "backup",
        "--catalog",
        c,
        "--metrics-file",
        b.to_str().unwrap(),
    ]);
    env.ok(&[
        "stack",
        "restore",
        "--catalog",
        c,
        "--metrics-file",
        r.to_str().unwrap(),
    ]);
    for p in [&b, &r] {
        let text = fs::read_to_string(p).unwrap();
        assert!(text.contains("service=\"we\\\"ird\\\\name\""), "{text}");
        crate::util::assert_promtool_accepts(p);
    }
}

/// `stack plan` before any backup shows the order; `latest` is the newest
/// group holding a snapshot of every selected service, so a `--only`
/// backup or one in which a service failed does not break a full restore
/// (the groups passed over are named), and a `--only` restore takes the
/// newest group that has its service.
#[test]
fn latest_is_the_newest_complete_group_and_plan_works_before_any_backup() {
    let env = Env::new();
    env.init(&[]);
    let (a, b) = (env.path("a"), env.path("b"));
    for d in [&a, &b] {
        fs::create_dir(d).unwrap();
        fs::write(d.join("f"), b"one").unwrap();
    }
    let cat = env.path("cairn.toml");
    fs::write(
        &cat,
        format!(
            "[service.a]\nkind = \"files\"\npath = \"{}\"\n[service.b]\nkind = \"files\"\npath = \"{}\"\ndepends_on = [\"a\"]\n",
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    let c = cat.to_str().unwrap();
    let out = env.ok(&["stack", "plan", "--catalog", c]);
    assert!(
        out.contains("no group to restore yet")
            && out.contains("wave 1:\n  a ")
            && out.contains("wave 2:\n  b "),
        "{out}"
    );
    let group_of = |out: &str| {
        out.lines()
            .next()
            .unwrap()
            .strip_prefix("group ")
            .unwrap()
            .to_string()
    };
    let full = group_of(&env.ok(&["stack", "backup", "--catalog", c]));
    fs::write(a.join("f"), b"two").unwrap();
    let only_a = group_of(&env.ok(&["stack", "backup", "--catalog", c, "--only", "a"]));
    // A full backup in which b fails (its directory is gone).
    fs::rename(&b, env.path("b-away")).unwrap();
    let o = env.run(&["stack", "backup", "--catalog", c]);
    assert_eq!(o.status.code(), Some(1));
    fs::rename(env.path("b-away"), &b).unwrap();

    let rep = env.path("r.json");
    let o = env.run(&[
        "stack",
        "restore",
        "--catalog",
        c,
        "--report",
        rep.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let r = report(&rep);
    assert_eq!(r["group"], full, "{err}");
    assert!(
        err.contains(&format!("group {} has no snapshot of b", &only_a[..8])),
        "{err}"
    );
    assert_eq!(fs::read(a.join("f")).unwrap(), b"one");
    let o = env.run(&[
        "stack",
        "restore",
        "--catalog",
        c,
        "--only",
        "a",
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = report(&rep);
    assert_ne!(r["group"], full);
    assert_eq!(fs::read(a.join("f")).unwrap(), b"two");
}

/// Redis expiry times are absolute: a key whose TTL ran out during the
/// outage is not restored (and counted), a long TTL shrinks by the time
/// since the backup, and the restore still verifies.
#[test]
fn redis_ttls_are_restored_as_absolute_expiry_times() {
    let env = Env::new();
    env.init(&[]);
    let p = unique();
    let mut c = Conn::connect("127.0.0.1:6379", None).unwrap();
    let k = |s: &str| format!("{p}:{s}");
    c.call(&[b"SET", k("plain").as_bytes(), b"1"]).unwrap();
    c.call(&[b"SET", k("short").as_bytes(), b"2", b"PX", b"1500"])
        .unwrap();
    c.call(&[b"SET", k("long").as_bytes(), b"3", b"EX", b"3600"])
        .unwrap();
    let cat = env.path("cairn.toml");
    fs::write(
        &cat,
        format!(
            "[service.sessions]\nkind = \"redis\"\nhost = \"127.0.0.1\"\nkey_pattern = \"{p}:*\"\n"
        ),
    )
    .unwrap();
    let c_ = cat.to_str().unwrap();
    env.ok(&["stack", "backup", "--catalog", c_]);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    for s in ["plain", "long"] {
        c.call(&[b"DEL", k(s).as_bytes()]).unwrap();
    }
    let rep = env.path("r.json");
    let o = env.run(&[
        "stack",
        "restore",
        "--catalog",
        c_,
        "--no-safety-snapshot",
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = svc(&report(&rep), "sessions").clone();
    assert_eq!(s["fingerprint"]["verified"], true, "{s}");
    assert_eq!(
        s["withheld"], "1 key(s) had expired since the backup and were not restored",
        "{s}"
    );
    let exists = |c: &mut Conn, s: &str| c.call(&[b"EXISTS", k(s).as_bytes()]).unwrap();
    assert_eq!(exists(&mut c, "short"), Reply::Int(0));
    assert_eq!(exists(&mut c, "plain"), Reply::Int(1));
    let Reply::Int(left) = c.call(&[b"PTTL", k("long").as_bytes()]).unwrap() else {
        panic!("PTTL")
    };
    assert!(
        left > 3_590_000 && left <= 3_600_000 - 2_500,
        "the TTL left is {left} ms: not shortened by the time since the backup"
    );
    for s in ["plain", "short", "long"] {
        c.call(&[b"DEL", k(s).as_bytes()]).unwrap();
    }
}

/// Back up the MariaDB database `db` (created by `setup`) five times while
/// one client session runs `write(i)` every `every_ms`, restoring each
/// backup into a staging database; returns (failures, statements written,
/// rows in `table` at the end).
fn mariadb_backups_under_writes(
    setup: &str,
    write: impl Fn(u64) -> String + Send + 'static,
    every_ms: u64,
    db: &str,
    table: &str,
) -> (Vec<String>, u64, u64) {
    use std::io::Write;
    let env = Env::new();
    env.init(&[]);
    mariadb(setup);
    let cat = env.path("cairn.toml");
    fs::write(
        &cat,
        format!(
            "[service.orders]\nkind = \"mariadb\"\nhost = \"127.0.0.1\"\nuser = \"root\"\ndatabase = \"{db}\"\n[service.orders.env.staging]\ndatabase = \"{db}_staging\"\n"
        ),
    )
    .unwrap();
    let mut w = Command::new("mariadb")
        .args(["--protocol=TCP", "-h", "127.0.0.1", "-u", "root", "-n", db])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = w.stdin.take().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            if stdin.write_all(write(i).as_bytes()).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(every_ms));
        }
        i
    });
    let c = cat.to_str().unwrap();
    let mut failures = Vec::new();
    for round in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        env.ok(&["stack", "backup", "--catalog", c]);
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
        let s = svc(&r, "orders");
        if !(o.status.success() && s["fingerprint"]["verified"] == true) {
            failures.push(format!("round {round}: {}", s["error"]));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().unwrap();
    let _ = w.wait();
    let rows: u64 = mariadb(&format!("SELECT count(*) FROM `{db}`.{table}"))
        .trim()
        .parse()
        .unwrap();
    mariadb(&format!(
        "DROP DATABASE IF EXISTS `{db}`; DROP DATABASE IF EXISTS `{db}_staging`"
    ));
    (failures, writes, rows)
}

/// Five MariaDB backups taken while a client writes about a hundred rows a
/// second all restore verified: the fingerprint describes exactly what the
/// dump holds (it used to start a second or so after the dump's snapshot,
/// and every restore failed its check).
#[test]
fn mariadb_backups_taken_under_writes_all_restore_verified() {
    let db = unique();
    let (failures, writes, rows) = mariadb_backups_under_writes(
        &format!(
            "CREATE DATABASE `{db}`; CREATE TABLE `{db}`.audit_log (id INT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6), v VARBINARY(64)) ENGINE=InnoDB; CREATE TABLE `{db}`.counters (k INT PRIMARY KEY, n INT) ENGINE=InnoDB; INSERT INTO `{db}`.counters VALUES (1, 0);"
        ),
        |i| {
            format!(
                "INSERT INTO audit_log (at, v) VALUES (NOW(6), UNHEX(SHA2('{i}', 256))); UPDATE counters SET n = n + 1 WHERE k = 1;\n"
            )
        },
        10,
        &db,
        "audit_log",
    );
    assert!(
        rows > 100 && writes > 100,
        "the writer barely wrote: {rows} rows"
    );
    assert!(failures.is_empty(), "{failures:?}");
}

/// Tables without transactions (Aria) are not covered by a consistent
/// snapshot: the backup holds the global read lock until the dump has
/// ended, so five backups under writes all restore verified.
#[test]
fn mariadb_aria_tables_backed_up_under_writes_restore_verified() {
    let db = unique();
    let (failures, writes, rows) = mariadb_backups_under_writes(
        &format!(
            "CREATE DATABASE `{db}`; CREATE TABLE `{db}`.ar (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=Aria;"
        ),
        |i| format!("INSERT INTO ar (v) VALUES ({i});\n"),
        5,
        &db,
        "ar",
    );
    assert!(
        rows > 100 && writes > 100,
        "the writer barely wrote: {rows} rows"
    );
    assert!(failures.is_empty(), "{failures:?}");
}

/// A cross-service invariant gates the dependents of the services it names:
/// when it fails, they are skipped (naming it) and never started; with
/// `gate = false` they start anyway. Under `--only`, an invariant naming an
/// unselected service checks that service as it lives.
#[test]
fn cross_service_invariants_gate_dependents_and_check_unselected_services_live() {
    let env = Env::new();
    env.init(&[]);
    let (a, b) = (env.path("a"), env.path("b"));
    for d in [&a, &b] {
        fs::create_dir(d).unwrap();
    }
    fs::write(a.join("v"), b"backed-up").unwrap();
    fs::write(b.join("v"), b"backed-up").unwrap();
    let ran = env.path("app-restored");
    let catalog = |gate: bool| {
        let p = env.path(&format!("cairn-{gate}.toml"));
        fs::write(
            &p,
            format!(
                "[service.a]\nkind = \"files\"\npath = \"{a}\"\n[service.b]\nkind = \"files\"\npath = \"{b}\"\n\
                 [service.app]\nkind = \"command\"\nbackup = \"echo state\"\nrestore = \"cat > {ran}\"\ndepends_on = [\"a\"]\n\
                 [[invariant]]\nname = \"b is live\"\nservices = [\"a\", \"b\"]\ncommand = 'cat \"$CAIRN_B_PATH/v\"'\nequals = \"live\"\ngate = {gate}\n",
                a = a.display(),
                b = b.display(),
                ran = ran.display()
            ),
        )
        .unwrap();
        p
    };
    let (gated, ungated) = (catalog(true), catalog(false));
    env.ok(&["stack", "backup", "--catalog", gated.to_str().unwrap()]);
    fs::write(b.join("v"), b"live").unwrap();

    // A full restore puts b's backed-up file back: the invariant fails, and
    // app (depending on a, which the invariant names) is never started.
    let rep = env.path("r.json");
    let o = env.run(&[
        "stack",
        "restore",
        "--catalog",
        gated.to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let r = report(&rep);
    assert_eq!(svc(&r, "app")["status"], "skipped", "{r}");
    assert_eq!(
        svc(&r, "app")["error"],
        "invariant \"b is live\" did not pass",
        "{r}"
    );
    assert!(!ran.exists(), "app was restored on unchecked data");
    // Opted out: app starts as soon as a passed.
    fs::write(b.join("v"), b"live").unwrap();
    let o = env.run(&[
        "stack",
        "restore",
        "--catalog",
        ungated.to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(svc(&report(&rep), "app")["status"], "passed");
    assert!(ran.exists());
    // --only a: b is not restored, the invariant reads the live b and passes.
    fs::write(b.join("v"), b"live").unwrap();
    let o = env.run(&[
        "stack",
        "restore",
        "--catalog",
        gated.to_str().unwrap(),
        "--only",
        "a",
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = report(&rep);
    assert_eq!(r["invariants"][0]["status"], "passed", "{r}");
    assert_eq!(fs::read(b.join("v")).unwrap(), b"live");
}

/// A command service with a `verify` command is proven like a database:
/// its output is fingerprinted at backup time and compared after the
/// restore (a tampered restore fails); `post_restore` runs as a stage of its
/// own once the service passed.
#[test]
fn command_services_verify_through_their_verify_command_and_run_post_restore_hooks() {
    let env = Env::new();
    env.init(&[]);
    let state = env.path("state.json");
    fs::write(&state, b"{\"v\": 1}").unwrap();
    let cat = env.path("cairn.toml");
    fs::write(
        &cat,
        "[service.cfg]\nkind = \"command\"\nbackup = \"cat state.json\"\nrestore = \"cat > state.json\"\nverify = \"sha256sum state.json\"\npost_restore = \"touch hooked\"\n",
    )
    .unwrap();
    let c = cat.to_str().unwrap();
    env.ok(&["stack", "backup", "--catalog", c]);
    fs::write(&state, b"lost").unwrap();
    let rep = env.path("r.json");
    env.ok(&[
        "stack",
        "restore",
        "--catalog",
        c,
        "--no-safety-snapshot",
        "--report",
        rep.to_str().unwrap(),
    ]);
    let s = svc(&report(&rep), "cfg").clone();
    assert_eq!(s["fingerprint"]["verified"], true, "{s}");
    assert_eq!(s["fingerprint"]["method"], "command");
    assert_eq!(fs::read(&state).unwrap(), b"{\"v\": 1}");
    assert!(env.path("hooked").exists());
    assert!(
        s["stages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "post-restore")
    );
    // Tampered between load and verification: named, failed.
    fs::remove_file(env.path("hooked")).unwrap();
    let o = env
        .cmd()
        .args([
            "stack",
            "restore",
            "--catalog",
            c,
            "--no-safety-snapshot",
            "--report",
            rep.to_str().unwrap(),
        ])
        .env(
            "CAIRN_TEST_HOOK_BEFORE_VERIFY",
            format!("echo x >> {}", state.display()),
        )
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let s = svc(&report(&rep), "cfg").clone();
    assert_eq!(s["fingerprint"]["verified"], false, "{s}");
    assert!(
        !env.path("hooked").exists(),
        "post_restore ran after a failed verification"
    );
}
