//! PostgreSQL: `pg_dump -Fc -Z0` inside an exported snapshot, which the
//! fingerprint reads too; restored with `pg_restore -j` into a dropped and
//! recreated database from a 0600 temporary dump (see `children.rs`).

use std::io::{BufWriter, Write};
use std::process::{Command, Stdio};

use cairn_format::snapshot::Snapshot;
use cairn_repo::{BackupOptions, BackupResult, IndexedRepository, Progress};

use crate::StackError;
use crate::catalog::{Kind, Service};
use crate::datastore::Datastore;
use crate::fingerprint::{self, Fingerprint};
use crate::target::{Server, Target};
use crate::tools::{err, run, tool};

/// The `postgres` kind.
pub struct Postgres;

impl Datastore for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn fields(&self) -> &'static [&'static str] {
        &[
            "host",
            "port",
            "user",
            "password",
            "database",
            "parallelism",
            "temp_dir",
            "restore_role",
        ]
    }

    fn required(&self) -> &'static [(&'static str, &'static str)] {
        &[("database", "database")]
    }

    fn configure(&self, svc: &Service, c: &mut Command) {
        if let Some(h) = &svc.host {
            c.env("PGHOST", h);
        }
        if let Some(p) = svc.port {
            c.env("PGPORT", p.to_string());
        }
        if let Some(u) = &svc.user {
            c.env("PGUSER", u);
        }
        if let Some(p) = &svc.password {
            c.env("PGPASSWORD", p);
        }
        c.env("PGCONNECT_TIMEOUT", "10");
    }

    fn backup(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        opts: BackupOptions,
    ) -> Result<BackupResult, StackError> {
        let progress = Progress::default();
        let mut opts = opts;
        // The database's owner of record, which a rollback puts back.
        if let Some(owner) = owner_of(svc)? {
            opts.fingerprints
                .push((OWNER_PART.into(), owner.into_bytes()));
        }

        // pg_dump and the fingerprint read the same exported snapshot.
        let snap = fingerprint::pg_export_snapshot(svc)?;
        let mut c = tool(svc, "pg_dump");
        c.args([
            "-Fc",
            "-Z0",
            "--snapshot",
            &snap.id,
            "-d",
            svc.database.as_deref().unwrap_or_default(),
        ]);
        let child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(svc, format!("pg_dump: {e}")))?;
        let r =
            crate::adapters::stream_child(svc, repo, &opts, &progress, child, "pg_dump", &|| {
                fingerprint::postgres(svc, Some(&snap.id))
            });
        drop(snap);
        r
    }

    fn preflight(
        &self,
        svc: &Service,
        _repo: &IndexedRepository,
        _snap: &Snapshot,
    ) -> Result<(), StackError> {
        load_role(svc, _snap).map(|_| ())
    }

    fn restore(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        snap: &Snapshot,
    ) -> Result<(u64, Option<String>), StackError> {
        let (node, size) = crate::adapters::dump_node(svc, repo, snap)?;
        let feed =
            |sink: &mut dyn Write| -> Result<(), StackError> { Ok(repo.dump_file(&node, sink)?) };

        let db = svc.database.as_deref().unwrap_or_default();
        let role = load_role(svc, snap)?;
        // The whole database in plaintext: 0600 in cairn's own
        // directory, removed on every path (also on a signal, and by
        // --resume after a SIGKILL).
        let dir = crate::children::temp_dir(svc.temp_dir.as_deref())
            .map_err(|e| err(svc, format!("temporary directory: {e}")))?;
        let mut tmp = crate::children::TempDump::create(&dir)
            .map_err(|e| err(svc, format!("temporary dump in {}: {e}", dir.display())))?;
        {
            let mut w = BufWriter::with_capacity(1 << 20, tmp.file());
            feed(&mut w)?;
            w.flush().map_err(|e| err(svc, e.to_string()))?;
        }
        let mut c = tool(svc, "psql");
        c.args(["-X", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                crate::sql::pg::ident(db)
            ))
            .arg("-c")
            .arg(match &role {
                // The role owns the database, so it may create in it (and
                // in its `public` schema, owned by pg_database_owner).
                Some(r) => format!(
                    "CREATE DATABASE {} OWNER {}",
                    crate::sql::pg::ident(db),
                    crate::sql::pg::ident(r)
                ),
                None => format!("CREATE DATABASE {}", crate::sql::pg::ident(db)),
            });
        run(svc, c, None)?;
        let mut c = tool(svc, "pg_restore");
        c.args([
            "--exit-on-error",
            "-j",
            &svc.parallelism.to_string(),
            "-d",
            db,
        ]);
        if let Some(r) = &role {
            // Connected as the role itself, not `SET ROLE` (which the
            // archive's SQL could `RESET`): objects become its own.
            c.env("PGUSER", r).env_remove("PGPASSWORD");
            c.arg("--no-owner");
        }
        c.arg(tmp.path());
        crate::tools::run_guarded(svc, c)?;
        // A rollback puts back what the target held: its owner too (a
        // restore leaves the database to the restore role, whose rights an
        // application gets by being a member of it).
        if svc.rollback
            && let Some(r) = &role
            && let Some(owner) = owner_to_give_back(svc, snap)?
        {
            give_back(svc, r, &owner)?;
        }

        Ok((size, None))
    }

    fn after_load(&self) -> Option<&'static str> {
        Some("analyze")
    }

    fn run_after_load(&self, svc: &Service) -> Result<(), StackError> {
        // Planner statistics for every table, in parallel (a restored
        // database has none until autovacuum gets to it).
        let mut c = tool(svc, "vacuumdb");
        c.args([
            "--analyze-only",
            "--quiet",
            "--jobs",
            &svc.parallelism.to_string(),
            "--dbname",
            svc.database.as_deref().unwrap_or_default(),
        ]);
        run(svc, c, None).map(|_| ())
    }

    fn live_fingerprint(&self, svc: &Service) -> Result<Option<Fingerprint>, StackError> {
        // As the catalog's user, like the backup's (a role bound by FORCE
        // ROW LEVEL SECURITY would see fewer rows): the fingerprint's own
        // queries resolve nothing outside pg_catalog and call no function of
        // the database, and a superuser is not subject to its policies.
        Ok(Some(fingerprint::postgres(svc, None)?))
    }

    fn query(&self, svc: &Service, sql: &str) -> Result<String, StackError> {
        let db = svc.database.as_deref().unwrap_or_default();
        let svc = &as_restored(svc);
        let mut c = tool(svc, "psql");
        c.args([
            "-X",
            "-At",
            "-F",
            "\t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-c",
        ])
        .arg(sql);
        run(svc, c, None)
    }

    fn holds_data(&self, svc: &Service) -> Result<bool, StackError> {
        let db = svc.database.as_deref().unwrap_or_default();

        let mut c = tool(svc, "psql");
        c.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"])
            .arg(format!(
                "select count(*) from pg_database where datname = {}",
                crate::sql::pg::lit(db)
            ));
        Ok(run(svc, c, None)?.trim() != "0")
    }

    fn teardown(&self, svc: &Service) -> Result<String, StackError> {
        let db = svc.database.as_deref().unwrap_or_default();

        let mut c = tool(svc, "psql");
        c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                crate::sql::pg::ident(db)
            ));
        run(svc, c, None)?;
        Ok(format!("dropped database {db}"))
    }

    fn target(&self, s: &Service) -> Target {
        Target::Database {
            engine: Kind::POSTGRES,
            server: Server::resolve(s.host.as_deref(), s.port.unwrap_or(5432)),
            name: s.database.clone().unwrap_or_default(),
        }
    }

    fn temp_dirs(&self, svc: &Service) -> Vec<std::path::PathBuf> {
        crate::children::temp_dir(svc.temp_dir.as_deref())
            .into_iter()
            .collect()
    }

    fn describe(&self, s: &Service) -> String {
        format!(
            "postgres database {:?} at {}:{} (dropped and recreated)",
            s.database.as_deref().unwrap_or(""),
            s.host.as_deref().unwrap_or("127.0.0.1"),
            s.port.unwrap_or(5432)
        )
    }
}

/// Rights that make a role as strong as a superuser on the database host, or
/// let it make itself so: refused for `restore_role`.
const HOST_ROLES: &[&str] = &[
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
];

/// Refuse a `restore_role` that could run programs or reach the server's
/// files (a superuser, CREATEROLE — which on PostgreSQL 15 can grant itself
/// anything —, a member of a superuser or CREATEROLE role or of the
/// `pg_*_server_*` roles), that does not exist, or that cannot log in and open the
/// connections `pg_restore -j` needs; all before anything is touched.
fn check_restore_role(svc: &Service, role: &str) -> Result<(), StackError> {
    let refuse = |why: String| {
        Err(err(
            svc,
            format!("restore_role {role:?} {why}; nothing was touched"),
        ))
    };
    let Some(RoleFacts {
        superuser,
        login,
        createrole,
        connlimit,
        strong_members: members,
    }) = role_facts(svc, role)?
    else {
        return refuse("does not exist on the server".into());
    };
    if superuser {
        return refuse(
            "is a superuser: the archive's SQL would run with every right; use a role without SUPERUSER".into(),
        );
    }
    if createrole {
        return refuse(
            "has CREATEROLE, with which it can grant itself the right to run programs on the server; use a role without it".into(),
        );
    }
    if !members.is_empty() {
        return refuse(format!(
            "is a member of {members}, which can run programs or reach files on the server, or grant that right; use a role that is not"
        ));
    }
    if !login {
        return refuse("cannot log in (LOGIN)".into());
    }
    let need = svc.parallelism as i64 + 1;
    if connlimit >= 0 && connlimit < need {
        let limit = connlimit;
        return refuse(format!(
            "may open {limit} connections (CONNECTION LIMIT) and pg_restore -j {} needs {need}",
            svc.parallelism
        ));
    }
    // Log in as it, as pg_restore will (password, pg_hba, CONNECT).
    let mut c = tool(svc, "psql");
    c.env("PGUSER", role).env_remove("PGPASSWORD");
    c.args([
        "-X",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        "postgres",
        "-c",
        "SELECT 1",
    ]);
    run(svc, c, None).map_err(|e| {
        err(
            svc,
            format!("restore_role {role:?} cannot log in: {e}; nothing was touched"),
        )
    })?;
    Ok(())
}

/// The service as its invariants see it after a restore: with a
/// `restore_role`, their SQL (which names the database's own tables,
/// functions and operators) connects as that role, which owns everything
/// restored (the database may be hostile; its functions then run with the
/// role's rights, not the catalog user's).
fn as_restored(svc: &Service) -> Service {
    let mut s = svc.clone();
    if let Some(r) = &svc.restore_role {
        s.user = Some(r.clone());
        s.password = None;
    }
    s
}

/// Where a backup records the database's owner (a snapshot fingerprint
/// entry outside the `fp:` parts, so verification ignores it).
const OWNER_PART: &str = "pg:owner";

/// The owner of the service's database, if it exists.
fn owner_of(svc: &Service) -> Result<Option<String>, StackError> {
    let db = svc.database.as_deref().unwrap_or_default();
    let owner = admin_query(
        svc,
        &format!(
            "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database WHERE datname = {}",
            crate::sql::pg::lit(db)
        ),
    )?;
    Ok((!owner.is_empty()).then_some(owner))
}

/// Who loads a snapshot (None: the catalog's user), checked before anything
/// is touched. With `restore_role`, always that role: a restore's snapshot
/// may be forged, and a rollback's safety snapshot holds whatever anyone
/// who could write to the database put there (a superuser-owned database
/// with a schema an application role writes to included), so neither is
/// ever loaded with more than the role's rights.
fn load_role(svc: &Service, _snap: &Snapshot) -> Result<Option<String>, StackError> {
    let Some(role) = &svc.restore_role else {
        return Ok(None);
    };
    check_restore_role(svc, role)?;
    Ok(Some(role.clone()))
}

/// The owner a load gives the database and what it loaded back to: the
/// owner of record (kept in the snapshot at backup time) when that is a
/// role no stronger than a restore role (never a superuser, CREATEROLE or a
/// member of one, or of the `pg_*_server_*` roles: a forged snapshot could
/// name one, and its SECURITY DEFINER functions would then run with those
/// rights); it need not be able to log in.
fn owner_to_give_back(svc: &Service, snap: &Snapshot) -> Result<Option<String>, StackError> {
    let Some(owner) = snap
        .fingerprints
        .iter()
        .find(|(k, _)| k == OWNER_PART)
        .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
    else {
        return Ok(None);
    };
    if Some(&owner) == svc.restore_role.as_ref() {
        return Ok(None);
    }
    let weak = role_facts(svc, &owner)?
        .is_some_and(|f| !f.superuser && !f.createrole && f.strong_members.is_empty());
    Ok(weak.then_some(owner))
}

/// After a load as `restore_role`: the database and everything the role
/// owns in it go to the owner of record (the application can use its data
/// again), as the catalog's user, with catalog commands only (no function of
/// the database runs). `REASSIGN OWNED` also moves shared objects, so the
/// other databases the role owned are given back to it.
fn give_back(svc: &Service, role: &str, owner: &str) -> Result<(), StackError> {
    let db = svc.database.as_deref().unwrap_or_default();
    let (id, lit) = (crate::sql::pg::ident, crate::sql::pg::lit);
    let others = admin_query(
        svc,
        &format!(
            "SELECT pg_catalog.string_agg(pg_catalog.quote_ident(datname), ',') FROM pg_catalog.pg_database WHERE datdba = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = {}) AND datname <> {}",
            lit(role),
            lit(db)
        ),
    )?;
    let mut sql = format!(
        "SET search_path = pg_catalog, pg_temp;\nREASSIGN OWNED BY {} TO {};\nALTER DATABASE {} OWNER TO {};\n",
        id(role),
        id(owner),
        id(db),
        id(owner)
    );
    for o in others.split(',').filter(|o| !o.is_empty()) {
        sql += &format!("ALTER DATABASE {o} OWNER TO {};\n", id(role));
    }
    let mut c = tool(svc, "psql");
    c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"]);
    run(svc, c, Some(sql.as_bytes())).map(|_| ())
}

/// One query as the catalog's user in the `postgres` database, with names
/// resolved in pg_catalog only; its last output line.
fn admin_query(svc: &Service, sql: &str) -> Result<String, StackError> {
    let mut c = tool(svc, "psql");
    c.args([
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        "postgres",
        "-c",
    ])
    .arg(format!("SET search_path = pg_catalog, pg_temp; {sql}"));
    let out = run(svc, c, None)?;
    Ok(out.trim().lines().last().unwrap_or("").to_string())
}

/// What makes a role strong or weak, as the server says.
struct RoleFacts {
    superuser: bool,
    login: bool,
    createrole: bool,
    /// CONNECTION LIMIT (-1: none).
    connlimit: i64,
    /// The superuser, CREATEROLE and `pg_*_server_*` roles it is a member
    /// of (directly, inherited or by SET ROLE), comma-separated.
    strong_members: String,
}

/// [`RoleFacts`] of `role`, None when it does not exist.
fn role_facts(svc: &Service, role: &str) -> Result<Option<RoleFacts>, StackError> {
    let lit = crate::sql::pg::lit;
    let host_roles: Vec<String> = HOST_ROLES.iter().map(|r| lit(r)).collect();
    let out = admin_query(
        svc,
        &format!(
            "SELECT r.rolsuper, r.rolcanlogin, r.rolcreaterole, r.rolconnlimit, (SELECT pg_catalog.string_agg(s.rolname, ', ' ORDER BY s.rolname) FROM pg_catalog.pg_roles s WHERE s.oid <> r.oid AND (s.rolsuper OR s.rolcreaterole OR s.rolname IN ({})) AND pg_catalog.pg_has_role(r.oid, s.oid, 'MEMBER')) FROM pg_catalog.pg_roles r WHERE r.rolname = {}",
            host_roles.join(", "),
            lit(role)
        ),
    )?;
    let f: Vec<&str> = out.split('|').collect();
    let [sup, login, createrole, connlimit, members] = f[..] else {
        return Ok(None);
    };
    Ok(Some(RoleFacts {
        superuser: sup == "t",
        login: login == "t",
        createrole: createrole == "t",
        connlimit: connlimit.parse().unwrap_or(-1),
        strong_members: members.to_string(),
    }))
}
