//! Stack orchestration II against the real PostgreSQL, MariaDB and Redis of
//! this machine: fingerprints prove a restore, invariants, resumable
//! restores, rollback, drills with history, and the audit trail.
//! Every test runs the example fleet under unique names and removes it.

use std::fs;
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::stack::{Stack, mariadb, pg_content, psql, redis_content, report, svc, unique};
use crate::util::{CHEAP_KDF, Env};

/// The example fleet, seeded small, with an initialized repository and a
/// state directory of its own.
struct Fleet {
    // Dropped in this order: the stack's teardown (which stops the API it
    // finds in the state directory) before the directory is deleted.
    stack: Stack,
    env: Env,
    catalog: PathBuf,
}

impl Fleet {
    fn new() -> Fleet {
        let env = Env::new();
        let stack = Stack {
            prefix: unique(),
            state: env.path("state"),
            port: crate::stack::free_port(),
        };
        stack.script("seed", "1");
        let catalog = stack.catalog(env.dir.path());
        let f = Fleet {
            env,
            stack,
            catalog,
        };
        let repo = f.stack.state.join("repo");
        let mut init = vec!["init", "--repo", repo.to_str().unwrap()];
        init.extend_from_slice(&CHEAP_KDF);
        f.ok(&init);
        f
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(crate::util::cairn_bin());
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("CAIRN_PASSWORD_FILE", self.stack.state.join("password"))
            .env("CAIRN_STATE_DIR", self.env.path("cairn-state"))
            .env("HOME", self.env.path("home"))
            .args(args);
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "cairn {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn cat(&self) -> &str {
        self.catalog.to_str().unwrap()
    }
    fn repo(&self) -> String {
        self.stack.state.join("repo").display().to_string()
    }
    fn pg(&self) -> String {
        format!("{}_orders", self.stack.prefix)
    }
    fn my(&self) -> String {
        format!("{}_catalog", self.stack.prefix)
    }
    fn backup(&self) {
        self.ok(&["stack", "backup", "--catalog", self.cat()]);
    }
    /// `stack restore` writing its report; the report and the output.
    fn restore(&self, extra: &[&str], hook: Option<&str>) -> (serde_json::Value, Output) {
        let rep = self.env.path(&format!("report-{}.json", unique()));
        let mut args = vec![
            "stack",
            "restore",
            "--catalog",
            self.cat(),
            "--report",
            rep.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut c = self.cmd(&args);
        if let Some(h) = hook {
            c.env("CAIRN_TEST_HOOK_BEFORE_VERIFY", h);
        }
        let o = c.output().unwrap();
        (report(&rep), o)
    }
    fn state_of_everything(&self) -> (String, String, String, Vec<(PathBuf, Vec<u8>)>) {
        let my = self.my();
        let files = crate::util::walk(&self.stack.state.join("uploads"))
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| {
                let c = fs::read(&p).unwrap();
                (p, c)
            })
            .collect();
        (
            pg_content(&self.pg()),
            mariadb(&format!(
                "CHECKSUM TABLE `{my}`.products, `{my}`.categories, `{my}`.customers"
            )),
            format!("{:?}", redis_content(&format!("{}:*", self.stack.prefix))),
            files,
        )
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn tampering_between_restore_and_verification_is_named_and_an_untouched_restore_verifies() {
    let f = Fleet::new();
    f.backup();
    f.stack.script("destroy", "0");

    // Untouched: every service verifies against its recorded fingerprint.
    let (r, o) = f.restore(&[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    for s in ["orders-db", "catalog-db", "sessions", "uploads", "reports"] {
        let x = svc(&r, s);
        assert_eq!(x["status"], "passed", "{s}: {x}");
        assert_eq!(x["fingerprint"]["verified"], true, "{s}: {x}");
        assert!(
            x["fingerprint"]["differences"]
                .as_array()
                .unwrap()
                .is_empty()
        );
    }
    let orders = &svc(&r, "orders-db")["fingerprint"];
    assert_eq!(orders["method"], "tables");
    assert_eq!(orders["expected"]["table:public.orders"]["count"], 20000);
    assert_eq!(
        orders["expected"]["table:public.pgbench_accounts"]["count"],
        100000
    );
    assert_eq!(orders["expected"], orders["actual"]);
    assert_ne!(
        orders["expected"]["table:public.orders"]["hash"],
        "0".repeat(64)
    );
    let sessions = &svc(&r, "sessions")["fingerprint"];
    assert_eq!(sessions["expected"]["db0"]["count"], 1202);
    assert_eq!(sessions["expected"], sessions["actual"]);
    assert_eq!(svc(&r, "uploads")["fingerprint"]["method"], "tree");
    assert_eq!(r["invariants"][0]["status"], "passed");

    // One row, one Redis value, one file (same size) changed after the load.
    let hook = format!(
        r#"case "$CAIRN_SERVICE" in
  orders-db) psql -h 127.0.0.1 -U postgres -XAtq -d {pg} -c "update orders set amount = amount + 1 where id = 77" ;;
  catalog-db) true ;;
  sessions) redis-cli -h 127.0.0.1 SET {p}:flag:3 off >/dev/null ;;
  uploads) printf 'Z' | dd of={img} bs=1 seek=100 conv=notrunc status=none ;;
esac"#,
        pg = f.pg(),
        p = f.stack.prefix,
        img = f.stack.state.join("uploads/images/img5.bin").display()
    );
    // Make sure the byte really changes.
    let img = f.stack.state.join("uploads/images/img5.bin");
    let mut content = fs::read(&img).unwrap();
    if content[100] == b'Z' {
        content[100] = b'Y';
        fs::write(&img, &content).unwrap();
        f.backup();
    }
    let (r, o) = f.restore(&["--no-safety-snapshot"], Some(&hook));
    assert!(!o.status.success());
    let err = stderr(&o);
    let o_db = svc(&r, "orders-db");
    assert_eq!(o_db["status"], "failed");
    let e = o_db["error"].as_str().unwrap();
    assert!(
        e.contains("table:public.orders: content differs"),
        "orders-db: {e}"
    );
    assert!(
        !e.contains("pgbench"),
        "only the changed table is named: {e}"
    );
    let s = svc(&r, "sessions")["error"].as_str().unwrap().to_string();
    assert!(
        s.contains(&format!("key \"{}:flag:3\": value differs", f.stack.prefix)),
        "sessions: {s}"
    );
    let u = svc(&r, "uploads")["error"].as_str().unwrap().to_string();
    assert!(
        u.contains("images/img5.bin: content differs at byte 0"),
        "uploads: {u}"
    );
    assert_eq!(svc(&r, "catalog-db")["status"], "passed");
    assert_eq!(svc(&r, "reports")["status"], "passed");
    assert_eq!(svc(&r, "api")["status"], "skipped");
    assert_eq!(r["invariants"][0]["status"], "skipped");
    assert!(err.contains("did not pass"), "{err}");
}

#[test]
fn cross_service_invariant_catches_an_order_whose_customer_was_deleted() {
    let f = Fleet::new();
    // Customer 42 leaves the catalog database; orders in PostgreSQL still
    // refer to it (orders 41, 5041, 10041, 15041).
    mariadb(&format!("DELETE FROM `{}`.customers WHERE id = 42", f.my()));
    f.backup();
    f.stack.script("destroy", "0");
    let (r, o) = f.restore(&[], None);
    assert!(
        !o.status.success(),
        "the broken invariant must fail the restore"
    );
    for s in ["orders-db", "catalog-db", "sessions", "uploads", "reports"] {
        assert_eq!(svc(&r, s)["status"], "passed", "{s}");
    }
    // The API depends on both databases the invariant names: it is not
    // started on data that failed the check.
    assert_eq!(svc(&r, "api")["status"], "skipped", "{}", svc(&r, "api"));
    assert_eq!(
        svc(&r, "api")["error"],
        "invariant \"orders refer to existing customers\" did not pass"
    );
    let inv = &r["invariants"][0];
    assert_eq!(inv["name"], "orders refer to existing customers");
    assert_eq!(inv["status"], "failed");
    assert_eq!(inv["actual"], "1");
    assert_eq!(
        inv["expect"],
        serde_json::json!({"op": "equals", "value": "0"})
    );
    let e = inv["error"].as_str().unwrap();
    assert!(
        e.contains("expected equal to \"0\", got \"1\"") && e.contains("comm -23"),
        "{e}"
    );
    assert!(
        stderr(&o).contains("invariant \"orders refer to existing customers\""),
        "{}",
        stderr(&o)
    );
    // Put the customer back in the live database: the invariant holds there.
    mariadb(&format!(
        "INSERT INTO `{}`.customers VALUES (42, 'customer 42')",
        f.my()
    ));
}

#[test]
fn killed_restore_resumes_without_redoing_completed_services_and_ends_verified() {
    let f = Fleet::new();
    f.backup();
    f.stack.script("destroy", "0");
    // The API's start is slowed down so the kill lands while it runs, after
    // every other service has completed.
    let text = fs::read_to_string(&f.catalog).unwrap();
    let slow = text.replacen("start = \"nohup", "start = \"sleep 60; nohup", 1);
    assert_ne!(slow, text);
    fs::write(&f.catalog, &slow).unwrap();
    let mut child = f
        .cmd(&["stack", "restore", "--catalog", f.cat()])
        .process_group(0)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut rid = None;
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(x) = line.split("--resume ").nth(1) {
            rid = Some(x.trim_end_matches(')').to_string());
        }
        let reached = line.starts_with("api: fetch+load done");
        lines.push(line);
        if reached {
            break;
        }
    }
    // SIGKILL the whole process group (cairn and the sleeping start command).
    let killed = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap();
    let rid = rid.unwrap_or_else(|| panic!("no restore id in {lines:#?}"));
    assert!(
        lines.iter().any(|l| l.starts_with("api: fetch+load done")),
        "{lines:#?}"
    );
    let oid = |db: &str| {
        psql(
            "postgres",
            &format!("select oid from pg_database where datname = '{db}'"),
        )
    };
    let pg_oid = oid(&f.pg());
    assert!(!pg_oid.is_empty());

    // Resume with the normal catalog.
    fs::write(&f.catalog, &text).unwrap();
    let (r, o) = f.restore(&["--resume", &rid[..8]], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(r["restore_id"], rid);
    assert_eq!(r["resumed"], true);
    for s in ["orders-db", "catalog-db", "sessions", "uploads", "reports"] {
        let x = svc(&r, s);
        assert_eq!(x["status"], "passed", "{s}");
        assert_eq!(x["resumed"], true, "{s} was redone: {x}");
        let stages: Vec<&str> = x["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|st| st["name"].as_str().unwrap())
            .collect();
        assert_eq!(stages, vec!["verify (resumed)"], "{s}");
        assert_eq!(x["fingerprint"]["verified"], true, "{s}");
    }
    let api = svc(&r, "api");
    assert_eq!(api["status"], "passed");
    assert_eq!(api["resumed"], false);
    assert!(
        api["stages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "fetch+load")
    );
    // The database was not dropped and recreated by the resumed run.
    assert_eq!(oid(&f.pg()), pg_oid);
    assert_eq!(r["invariants"][0]["status"], "passed");
}

#[test]
fn rollback_after_restoring_over_live_data_brings_back_the_pre_restore_state() {
    let f = Fleet::new();
    f.backup();
    let backed_up = f.state_of_everything();
    // Live data moves on after the backup.
    psql(
        &f.pg(),
        "insert into orders select g, 7, 12 from generate_series(30001, 30500) g",
    );
    mariadb(&format!(
        "UPDATE `{}`.products SET price = price * 2 WHERE id <= 10",
        f.my()
    ));
    let mut c = cairn_stack::redis::Conn::connect("127.0.0.1:6379", None).unwrap();
    c.call(&[
        b"SET",
        format!("{}:late", f.stack.prefix).as_bytes(),
        b"value",
    ])
    .unwrap();
    fs::write(f.stack.state.join("uploads/late.txt"), b"written after").unwrap();
    let live = f.state_of_everything();
    assert_ne!(live, backed_up);

    let (r, o) = f.restore(&[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(f.state_of_everything(), backed_up);
    for s in ["orders-db", "catalog-db", "sessions", "uploads", "reports"] {
        assert!(
            svc(&r, s)["safety_snapshot"].is_string(),
            "{s} has no safety snapshot: {}",
            svc(&r, s)
        );
    }
    let rid = r["restore_id"].as_str().unwrap().to_string();
    // The safety snapshots form a group of their own, but `latest` still
    // means the latest backup.
    let plan: serde_json::Value =
        serde_json::from_str(&f.ok(&["stack", "plan", "--catalog", f.cat(), "--json"])).unwrap();
    assert_eq!(plan["group"], r["group"]);
    assert_ne!(r["safety_group"], r["group"]);

    let rep = f.env.path("rollback.json");
    let out = f.ok(&[
        "stack",
        "rollback",
        &rid,
        "--catalog",
        f.cat(),
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(out.contains("rollback"), "{out}");
    let rb = report(&rep);
    assert_eq!(rb["kind"], "rollback");
    assert_eq!(rb["undoes"], rid.as_str());
    for s in ["orders-db", "catalog-db", "sessions", "uploads", "reports"] {
        let x = svc(&rb, s);
        assert_eq!(x["status"], "passed", "{s}");
        // Verified against the safety snapshot's fingerprint.
        assert_eq!(x["fingerprint"]["verified"], true, "{s}");
        assert_eq!(
            x["snapshot"],
            svc(&r, s)["safety_snapshot"],
            "{s} was rolled back from another snapshot"
        );
    }
    assert_eq!(f.state_of_everything(), live);
}

#[test]
fn drill_into_staging_reports_records_history_and_renders_html() {
    let f = Fleet::new();
    f.backup();
    let before = f.state_of_everything();
    let rep = f.env.path("drill.json");
    f.ok(&[
        "stack",
        "drill",
        "--catalog",
        f.cat(),
        "--report",
        rep.to_str().unwrap(),
    ]);
    let d = report(&rep);
    assert_eq!(d["kind"], "drill");
    assert_eq!(d["env"], "staging");
    for s in d["services"].as_array().unwrap() {
        assert_eq!(s["status"], "passed", "{s}");
        assert_ne!(s["fingerprint"]["verified"], false, "{s}");
        assert!(s["seconds"].as_f64().unwrap() > 0.0);
        assert!(s["rto_met"].is_boolean(), "{s}");
    }
    assert_eq!(d["invariants"][0]["status"], "passed");
    let teardown = d["teardown"].as_array().unwrap();
    assert_eq!(teardown.len(), 6);
    assert!(teardown.iter().all(|t| t["ok"] == true), "{teardown:?}");
    // Staging is gone; production was never touched.
    assert_eq!(
        psql(
            "postgres",
            &format!(
                "select count(*) from pg_database where datname = '{}_staging'",
                f.pg()
            )
        ),
        "0"
    );
    assert_eq!(
        mariadb(&format!(
            "select count(*) from information_schema.schemata where schema_name = '{}_staging'",
            f.my()
        )),
        "0"
    );
    assert!(!f.stack.state.join("staging/uploads").exists());
    assert_eq!(f.state_of_everything(), before);

    // History: the drill is there, per service, with budgets.
    let repo = f.repo();
    let h: serde_json::Value =
        serde_json::from_str(&f.ok(&["stack", "history", "--repo", &repo, "--json"])).unwrap();
    let runs = h["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6);
    assert!(
        runs.iter()
            .all(|r| r["kind"] == "drill" && r["env"] == "staging")
    );
    let orders = runs.iter().find(|r| r["service"] == "orders-db").unwrap();
    assert_eq!(orders["budget"], 180.0);
    // A second drill gives a trend.
    f.ok(&["stack", "drill", "--catalog", f.cat()]);
    let html = f.env.path("history.html");
    let h: serde_json::Value = serde_json::from_str(&f.ok(&[
        "stack",
        "history",
        "--repo",
        &repo,
        "--json",
        "--html",
        html.to_str().unwrap(),
    ]))
    .unwrap();
    let sum = h["services"].as_array().unwrap();
    assert_eq!(sum.len(), 6);
    assert!(
        sum.iter()
            .all(|s| s["runs"] == 2 && s["slope_seconds_per_run"].is_number())
    );
    let page = fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("<polyline") && page.contains("orders-db"));
    assert!(!page.contains("<script"), "the page is self-contained");
    // Rendered by headless Chromium: a screenshot that is not blank.
    let png = f.env.path("history.png");
    let o = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/chromium.sh"))
        .args([html.to_str().unwrap(), png.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "chromium: {}", stderr(&o));
    let shot = fs::read(&png).unwrap();
    assert_eq!(&shot[1..4], b"PNG");
    assert!(
        shot.len() > 20_000,
        "screenshot is only {} bytes: blank page?",
        shot.len()
    );
    if let Ok(dir) = std::env::var("CAIRN_KEEP_SCREENSHOT") {
        fs::copy(&png, Path::new(&dir).join("history.png")).unwrap();
    }

    // A catalog without staging overrides for a service is refused: the
    // drill would overwrite production.
    let text = fs::read_to_string(&f.catalog).unwrap();
    let no_staging = text.replace("[service.sessions.env.staging]\ndatabases = [1]\n", "");
    assert_ne!(no_staging, text);
    let bad = f.env.path("no-staging.toml");
    fs::write(&bad, no_staging).unwrap();
    let o = f.run(&["stack", "drill", "--catalog", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("sessions") && stderr(&o).contains("would overwrite production"),
        "{}",
        stderr(&o)
    );
    let o = f.run(&[
        "stack",
        "drill",
        "--catalog",
        f.cat(),
        "--env",
        "production",
    ]);
    assert!(!o.status.success());
}

#[test]
fn removing_or_editing_any_audit_record_fails_verification_and_names_it() {
    let env = Env::new();
    let data = env.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("a.txt"), b"first").unwrap();
    let catalog = env.path("cairn.toml");
    fs::write(
        &catalog,
        format!(
            "[repository]\npath = \"{}\"\n[service.files]\nkind = \"files\"\npath = \"{}\"\n",
            env.repo().display(),
            data.display()
        ),
    )
    .unwrap();
    env.init(&[]);
    let state = env.path("state");
    let run = |state: &Path, args: &[&str]| {
        let mut c = env.cmd();
        c.env("CAIRN_STATE_DIR", state).args(args);
        c.output().unwrap()
    };
    let cat = catalog.to_str().unwrap();
    for i in 0..3 {
        fs::write(data.join("a.txt"), format!("version {i}")).unwrap();
        assert!(
            run(&state, &["stack", "backup", "--catalog", cat])
                .status
                .success()
        );
    }
    assert!(
        run(&state, &["stack", "restore", "--catalog", cat])
            .status
            .success()
    );
    let o = run(&state, &["stack", "audit", "--verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("intact: 4 records"), "{out}");
    let records: Vec<PathBuf> = {
        let mut v: Vec<(u64, PathBuf)> = Vec::new();
        let listing = run(&state, &["stack", "audit", "--json"]);
        let j: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
        for r in j["records"].as_array().unwrap() {
            v.push((
                r["seq"].as_u64().unwrap(),
                env.repo().join("audit").join(r["id"].as_str().unwrap()),
            ));
        }
        v.sort();
        v.into_iter().map(|(_, p)| p).collect()
    };
    assert_eq!(records.len(), 4);
    for (i, rec) in records.iter().enumerate() {
        let id = rec.file_name().unwrap().to_str().unwrap().to_string();
        for edit in [false, true] {
            let bytes = fs::read(rec).unwrap();
            if edit {
                let mut b = bytes.clone();
                let n = b.len();
                b[n / 2] ^= 0x20;
                fs::write(rec, b).unwrap();
            } else {
                fs::remove_file(rec).unwrap();
            }
            let o = run(&state, &["stack", "audit", "--verify"]);
            assert!(
                !o.status.success(),
                "record {i} {} went unnoticed",
                if edit { "edited" } else { "removed" }
            );
            assert!(
                stderr(&o).contains(&id),
                "record {i} ({id}) {} but not named: {}",
                if edit { "edited" } else { "removed" },
                stderr(&o)
            );
            fs::write(rec, bytes).unwrap();
        }
    }
    let o = run(&state, &["stack", "audit", "--verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Pids of processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(c) = fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&c).contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

/// A restore killed while `pg_restore` runs (a stand-in on PATH that forks
/// a worker, as `pg_restore -j` does, waits 30 s, then execs the real one)
/// leaves no datastore tool behind, workers included — SIGKILL through the
/// parent-death signal and the watchdog, SIGTERM through the handler — and no
/// plaintext dump once `--resume` has completed: SIGTERM removes it at once,
/// SIGKILL leaves it 0600 in the catalog's `temp_dir`, and the resume
/// removes it and names it.
#[test]
fn killed_restores_leave_no_child_and_no_plaintext_dump_after_resume() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fleet::new();
    f.backup();
    let tmpdir = f.env.path("pgtmp");
    let text = fs::read_to_string(&f.catalog).unwrap();
    let with_tmp = text.replacen(
        "[service.orders-db]\n",
        &format!("[service.orders-db]\ntemp_dir = \"{}\"\n", tmpdir.display()),
        1,
    );
    assert_ne!(with_tmp, text);
    fs::write(&f.catalog, &with_tmp).unwrap();
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v pg_restore"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let shim = f.env.path("shim");
    fs::create_dir(&shim).unwrap();
    fs::write(
        shim.join("pg_restore"),
        format!(
            "#!/usr/bin/env python3\nimport os, sys, time\nif os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)\ntime.sleep(30)\nos.execv({real:?}, [{real:?}] + sys.argv[1:])\n"
        ),
    )
    .unwrap();
    fs::set_permissions(shim.join("pg_restore"), fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", shim.display(), std::env::var("PATH").unwrap());
    let needle = tmpdir.display().to_string();
    let dumps = || -> Vec<PathBuf> {
        fs::read_dir(&tmpdir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };

    for sig in ["KILL", "TERM"] {
        let mut child = f
            .cmd(&[
                "stack",
                "restore",
                "--catalog",
                f.cat(),
                "--only",
                "orders-db",
            ])
            .env("PATH", &path)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            for line in std::io::BufReader::new(err).lines() {
                let line = line.unwrap();
                if let Some(x) = line.split("--resume ").nth(1) {
                    let _ = tx.send(x.trim_end_matches(')').to_string());
                }
                all.push(line);
            }
            all
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let tools = loop {
            let p: Vec<u32> = processes_with(&needle)
                .into_iter()
                .filter(|p| *p != child.id())
                .collect();
            // The stand-in and the worker it forked.
            if p.len() >= 2 {
                break p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pg_restore never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // The dump pg_restore reads: in temp_dir, 0600, the directory 0700.
        let d = dumps();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            fs::metadata(&d[0]).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&tmpdir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let killed = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let st = child.wait().unwrap();
        assert!(!st.success(), "{sig}: {st}");
        let lines = reader.join().unwrap();
        let rid = rx
            .try_recv()
            .unwrap_or_else(|_| panic!("no restore id in {lines:#?}"));
        // No tool survives cairn.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !processes_with(&needle).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{sig}: still running after cairn ended: {:?} (were {tools:?})",
                processes_with(&needle)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if sig == "TERM" {
            assert!(dumps().is_empty(), "SIGTERM left {:?}", dumps());
        } else {
            assert_eq!(dumps(), d, "SIGKILL cannot remove it: the resume must");
        }
        let (r, o) = f.restore(&["--resume", &rid[..8]], None);
        assert!(o.status.success(), "{sig}: {}", stderr(&o));
        assert_eq!(svc(&r, "orders-db")["status"], "passed");
        if sig == "KILL" {
            assert!(
                stderr(&o).contains(&format!("removed {}", d[0].display())),
                "{}",
                stderr(&o)
            );
        }
        assert!(
            dumps().is_empty(),
            "{sig}: left after the resume: {:?}",
            dumps()
        );
    }
}

/// A rollback puts back the pre-restore state even when that state breaks
/// the catalog's invariants (they describe restored data, and used to skip
/// half the fleet); its hints name `stack rollback --resume`, which resumes
/// it.
#[test]
fn rollback_runs_no_invariants_on_pre_restore_data_and_resumes_with_its_own_command() {
    let f = Fleet::new();
    f.backup();
    // Live data that fails "orders have positive amounts".
    psql(
        &f.pg(),
        "insert into orders select g, 7, -5 from generate_series(40001, 40010) g",
    );
    let live = f.state_of_everything();
    let (r, o) = f.restore(&[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let rid = r["restore_id"].as_str().unwrap().to_string();
    let rep = f.env.path("rollback.json");
    let o = f.run(&[
        "stack",
        "rollback",
        &rid,
        "--catalog",
        f.cat(),
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rb = report(&rep);
    for s in [
        "orders-db",
        "catalog-db",
        "sessions",
        "uploads",
        "reports",
        "api",
    ] {
        assert_eq!(svc(&rb, s)["status"], "passed", "{s}: {}", svc(&rb, s));
    }
    assert_eq!(rb["invariants"].as_array().unwrap().len(), 0, "{rb}");
    assert_eq!(f.state_of_everything(), live);
    // The rollback's id is resumed by `stack rollback --resume`, and `stack
    // restore --resume` says so.
    let rbid = rb["restore_id"].as_str().unwrap().to_string();
    let o = f.run(&["stack", "restore", "--catalog", f.cat(), "--resume", &rbid]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!(
            "resume it with `cairn stack rollback --resume {rbid}`"
        )),
        "{}",
        stderr(&o)
    );
    let o = f.run(&[
        "stack",
        "rollback",
        "--resume",
        &rbid[..8],
        "--catalog",
        f.cat(),
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let again = report(&rep);
    assert_eq!(again["resumed"], true);
    assert_eq!(again["restore_id"], rbid.as_str());
    assert_eq!(f.state_of_everything(), live);
}
