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
    assert!(
        fs::read_to_string(env.path("backup.prom"))
            .unwrap()
            .contains("cairn_backup_success{service=\"orders-db\"} 1")
    );

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
    assert!(
        fs::read_to_string(env.path("restore.prom"))
            .unwrap()
            .contains("cairn_restore_success{service=\"api\"} 1")
    );
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

    // Restore the first (complete) group into the broken environment.
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
