//! The service catalog (`cairn.toml`): parsing, validation with file:line
//! errors, environment overrides, and the dependency plan.
//!
//! The catalog knows the datastore kinds only as a `KindTable`: their names
//! and the fields each takes and requires. The registry
//! ([`crate::registry`]) is one, and defines the entry points that use it,
//! `Catalog::load` and `Catalog::parse`, and the live views (which ask each
//! service's kind).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A catalog error, already formatted as `file:line: message`.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct CatalogError(pub Vec<String>);

/// A datastore kind: the name of a [`crate::datastore::Datastore`] in the
/// registry ([`crate::registry`], which gives `Kind::named` and
/// `Kind::datastore`). The built-in ones have constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind(&'static str);

impl Kind {
    /// PostgreSQL database (pg_dump custom format, pg_restore -j).
    pub const POSTGRES: Kind = Kind("postgres");
    /// MariaDB/MySQL database (mariadb-dump, mariadb).
    pub const MARIADB: Kind = Kind("mariadb");
    /// Redis keys (DUMP/RESTORE with TTLs).
    pub const REDIS: Kind = Kind("redis");
    /// A directory tree.
    pub const FILES: Kind = Kind("files");
    /// User commands: stdout backed up, restore reads stdin.
    pub const COMMAND: Kind = Kind("command");

    /// The kind of this name, if `kinds` has one (the registry's
    /// `Kind::named` passes itself).
    pub(crate) fn in_table(name: &str, kinds: &dyn KindTable) -> Option<Kind> {
        kinds.find(name).map(Kind)
    }

    /// As written in the catalog.
    pub fn name(self) -> &'static str {
        self.0
    }
}

impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

/// What the catalog knows of the datastore kinds: their names and the
/// fields each takes and requires. The registry (`crate::registry`)
/// implements it; the catalog knows no kind's implementation.
pub(crate) trait KindTable {
    /// The kind's own spelling of `name`, if there is a kind of that name.
    fn find(&self, name: &str) -> Option<&'static str>;
    /// Every kind's name, in the table's order (for error messages).
    fn names(&self) -> Vec<&'static str>;
    /// The fields `kind` takes besides those every kind takes.
    fn fields(&self, kind: Kind) -> &'static [&'static str];
    /// The fields `kind` requires: (field, what to call it in the error).
    fn required(&self, kind: Kind) -> &'static [(&'static str, &'static str)];
    /// The kinds that take `field`, in the table's order.
    fn takers(&self, field: &str) -> Vec<&'static str>;
}

/// Readiness check after a restore.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Ready {
    /// A shell command that exits 0 when ready.
    Command(String),
    /// A TCP address that accepts connections.
    Tcp(String),
    /// An HTTP URL that answers 2xx.
    Http(String),
}

/// Keep rules applied by `cairn stack forget` (the rules of `cairn forget`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep the last N.
    pub keep_last: Option<u32>,
    /// Keep one per hour for N hours.
    pub keep_hourly: Option<u32>,
    /// Keep one per day for N days.
    pub keep_daily: Option<u32>,
    /// Keep one per week for N weeks.
    pub keep_weekly: Option<u32>,
    /// Keep one per month for N months.
    pub keep_monthly: Option<u32>,
    /// Keep one per year for N years.
    pub keep_yearly: Option<u32>,
    /// Keep everything newer than this duration.
    pub keep_within: Option<String>,
}

impl Retention {
    /// The keep rules as a policy.
    pub fn policy(&self) -> Result<cairn_repo::forget::RetentionPolicy, String> {
        let p = cairn_repo::forget::RetentionPolicy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self
                .keep_within
                .as_deref()
                .map(cairn_repo::forget::parse_keep_within)
                .transpose()?,
            keep_tags: vec![],
        };
        p.validate()
            .map_err(|e| e.replace("--keep-", "keep_").replace("-within", "_within"))?;
        Ok(p)
    }
}

/// What an invariant's output must satisfy.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "op", content = "value")]
pub enum Expect {
    /// Trimmed output equals this text (numbers compare as numbers).
    Equals(String),
    /// Output is a number ≥ this.
    AtLeast(f64),
    /// Output is a number ≤ this.
    AtMost(f64),
    /// Output matches this regular expression.
    Matches(String),
}

/// How an invariant is evaluated.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// A SQL query run in a service's database (psql / mariadb, batch output).
    Sql {
        /// The service whose database runs it.
        on: String,
        /// The query.
        query: String,
    },
    /// A shell command (in the catalog's directory, with every service's
    /// connection settings in `CAIRN_<SERVICE>_<FIELD>` variables).
    Command(String),
}

/// A business invariant checked after a restore.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Invariant {
    /// Name shown in reports.
    pub name: String,
    /// Services that must be restored before it runs.
    pub services: Vec<String>,
    /// What runs.
    pub check: Check,
    /// What the output must satisfy.
    pub expect: Expect,
    /// Catalog line.
    pub line: usize,
    /// Whether the dependents of the services it names wait for it (and are
    /// skipped when it fails); `gate = false` in the catalog opts out.
    pub gate: bool,
}

/// A service after defaults and environment overrides.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: Kind,
    /// Line of its table in the catalog.
    pub line: usize,
    /// Dependencies.
    pub depends_on: Vec<String>,
    /// Server host.
    pub host: Option<String>,
    /// Server port.
    pub port: Option<u16>,
    /// User.
    pub user: Option<String>,
    /// Password (prefer the tool's own mechanisms, e.g. ~/.pgpass).
    #[serde(skip)]
    pub password: Option<String>,
    /// Database name (postgres, mariadb).
    pub database: Option<String>,
    /// Redis databases (default: 0).
    pub databases: Vec<u32>,
    /// Redis key pattern owned by this service (default `*`).
    pub key_pattern: String,
    /// Directory (files).
    pub path: Option<PathBuf>,
    /// Restore directory (files; default: `path`).
    pub target: Option<PathBuf>,
    /// Backup command (command kind).
    pub backup: Option<String>,
    /// Restore command (command kind).
    pub restore: Option<String>,
    /// Command run after the data is loaded.
    pub start: Option<String>,
    /// Command run before the data is loaded.
    pub stop: Option<String>,
    /// Readiness check.
    pub ready: Option<Ready>,
    /// Readiness timeout.
    pub ready_timeout: Duration,
    /// Recovery-time budget.
    pub rto: Option<Duration>,
    /// Parallelism for the datastore's own tool.
    pub parallelism: u32,
    /// Retention rules.
    pub retention: Option<Retention>,
    /// Directory commands run in (the catalog's directory).
    pub workdir: PathBuf,
    /// Command that removes a drill's copy (command services).
    pub teardown: Option<String>,
    /// Whether the catalog has overrides for the environment applied.
    pub has_env_override: bool,
    /// Invariants of this service alone.
    pub invariants: Vec<Invariant>,
    /// Files: restore device nodes and FIFOs (default: withheld, since a
    /// snapshot may be hostile — format-spec §8).
    pub allow_special: bool,
    /// Files: restore setuid/setgid bits (default: cleared).
    pub allow_setuid: bool,
    /// Files: patterns left out of backups (the `--exclude` language).
    pub exclude: Vec<String>,
    /// Files: do not back up what is mounted below the path.
    pub one_file_system: bool,
    /// Postgres: where a restore keeps its temporary dump (the whole
    /// database, uncompressed; default `<state dir>/tmp`).
    pub temp_dir: Option<PathBuf>,
    /// Postgres: the role `pg_restore` connects as (not a superuser), which
    /// owns the recreated database and everything restored into it
    /// (`--no-owner`), so the archive's SQL runs without superuser rights.
    pub restore_role: Option<String>,
    /// Command run after the service verified and its invariants passed
    /// (a stage of its own, `post-restore`).
    pub post_restore: Option<String>,
    /// Command services: a command whose output is fingerprinted at backup
    /// time and compared after the restore.
    pub verify: Option<String>,
    /// Set by a rollback (not a catalog field): the snapshot being loaded is
    /// a safety snapshot of what the target held, to be put back as it was.
    #[serde(skip)]
    pub rollback: bool,
}

/// A parsed, validated catalog for one environment.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// Where it was read from.
    pub file: PathBuf,
    /// Environment applied ("production" when none).
    pub env: String,
    /// Repository location, if the catalog names one.
    pub repository: Option<String>,
    /// Password file, if the catalog names one.
    pub password_file: Option<PathBuf>,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// Default number of services run at once.
    pub jobs: usize,
    /// Invariants across services (`[[invariant]]`).
    pub invariants: Vec<Invariant>,
    /// Whether `stack drill` removes what it restored (default true).
    pub drill_teardown: bool,
}

mod raw;
use raw::*;

/// Parse "90s", "2m", "1h30m", "500ms", "1d" ([`cairn_repo::duration`]; `m`
/// is minutes).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    cairn_repo::duration::parse(s, cairn_repo::duration::Grammar::Span)
}

impl Catalog {
    /// Parse and validate catalog text against the kinds of `kinds` (the
    /// registry's [`Catalog::parse`] passes the registry).
    pub(crate) fn parse_with(
        file: &Path,
        src: &str,
        env: Option<&str>,
        kinds: &dyn KindTable,
    ) -> Result<Catalog, CatalogError> {
        let raw: RawCatalog = toml::from_str(src).map_err(|e| {
            let line = e
                .span()
                .map(|s| src[..s.start.min(src.len())].matches('\n').count() + 1);
            let msg = e.message().to_string();
            CatalogError(vec![match line {
                Some(l) => format!("{}:{l}: {msg}", file.display()),
                None => format!("{}: {msg}", file.display()),
            }])
        })?;
        let mut cx = Ctx {
            file,
            src,
            errors: Vec::new(),
        };
        let env_name = env.unwrap_or("production").to_string();
        let g = Globals::new(&mut cx, &raw, file, env, kinds);
        let mut services = BTreeMap::new();
        for (name, spanned) in &raw.service {
            if let Some(s) = parse_service(&mut cx, &g, name, spanned) {
                services.insert(name.clone(), s);
            }
        }
        let invariants: Vec<Invariant> = raw
            .invariant
            .iter()
            .enumerate()
            .filter_map(|(i, inv)| {
                cx.invariant(inv, &format!("invariant #{}", i + 1), None, &g.names)
            })
            .collect();
        if let Some(cycle) = find_cycle(&services) {
            let first = &services[&cycle[0]];
            cx.errors.push(format!(
                "{}:{}: dependency cycle: {}",
                file.display(),
                first.line,
                cycle.join(" -> ")
            ));
        }
        if !cx.errors.is_empty() {
            return Err(CatalogError(cx.errors));
        }
        Ok(Catalog {
            file: file.to_path_buf(),
            env: env_name,
            repository: raw
                .repository
                .as_ref()
                .and_then(|r| r.path.clone())
                .map(|p| {
                    if p.contains("://") || Path::new(&p).is_absolute() {
                        p
                    } else {
                        g.dir.join(p).display().to_string()
                    }
                }),
            password_file: g.rel(
                raw.repository
                    .as_ref()
                    .and_then(|r| r.password_file.clone()),
            ),
            services,
            jobs: g.defaults.and_then(|d| d.jobs).unwrap_or(4).max(1),
            invariants,
            drill_teardown: raw.drill.and_then(|d| d.teardown).unwrap_or(true),
        })
    }

    /// The services selected by `only` (all when empty), plus their
    /// dependencies when `with_deps`. Unknown names are errors.
    pub fn select(
        &self,
        only: &[String],
        with_deps: bool,
    ) -> Result<BTreeSet<String>, CatalogError> {
        if only.is_empty() {
            return Ok(self.services.keys().cloned().collect());
        }
        let mut out = BTreeSet::new();
        let mut stack: Vec<String> = Vec::new();
        for o in only {
            if !self.services.contains_key(o) {
                return Err(CatalogError(vec![format!(
                    "{}: no service named {o:?}",
                    self.file.display()
                )]));
            }
            stack.push(o.clone());
        }
        while let Some(s) = stack.pop() {
            if out.insert(s.clone()) && with_deps {
                stack.extend(self.services[&s].depends_on.iter().cloned());
            }
        }
        Ok(out)
    }

    /// The services that depend, directly or through others, on any of
    /// `selected`, and are not in it.
    pub fn dependents_of(&self, selected: &BTreeSet<String>) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = BTreeSet::new();
        loop {
            let more: Vec<String> = self
                .services
                .iter()
                .filter(|(n, _)| !selected.contains(*n) && !out.contains(*n))
                .filter(|(_, s)| {
                    s.depends_on
                        .iter()
                        .any(|d| selected.contains(d) || out.contains(d))
                })
                .map(|(n, _)| n.clone())
                .collect();
            if more.is_empty() {
                return out;
            }
            out.extend(more);
        }
    }

    /// Dependency waves over the selection (Kahn's algorithm): each wave only
    /// depends on earlier ones. Dependencies outside the selection are ignored.
    pub fn waves(&self, selected: &BTreeSet<String>) -> Vec<Vec<String>> {
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut waves = Vec::new();
        while done.len() < selected.len() {
            let wave: Vec<String> = selected
                .iter()
                .filter(|s| !done.contains(*s))
                .filter(|s| {
                    self.services[*s]
                        .depends_on
                        .iter()
                        .all(|d| done.contains(d) || !selected.contains(d))
                })
                .cloned()
                .collect();
            if wave.is_empty() {
                break; // unreachable: cycles are rejected at load
            }
            done.extend(wave.iter().cloned());
            waves.push(wave);
        }
        waves
    }
}

/// What the parse of every service shares: the `[defaults]` (their
/// durations parsed once), the environment, the catalog's directory and the
/// names of its services.
struct Globals<'a> {
    env: Option<&'a str>,
    defaults: Option<&'a RawDefaults>,
    default_rto: Option<Duration>,
    default_timeout: Duration,
    default_par: u32,
    /// The catalog's directory, absolute: what relative paths are under.
    dir: PathBuf,
    names: BTreeSet<String>,
    /// The datastore kinds services may name.
    kinds: &'a dyn KindTable,
}

impl<'a> Globals<'a> {
    /// Parse the `[defaults]` section and find the catalog's directory.
    fn new(
        cx: &mut Ctx,
        raw: &'a RawCatalog,
        file: &Path,
        env: Option<&'a str>,
        kinds: &'a dyn KindTable,
    ) -> Globals<'a> {
        let defaults = raw.defaults.as_ref();
        let default_rto = defaults
            .and_then(|d| d.rto.as_ref())
            .and_then(|r| cx.duration(r));
        let default_timeout = defaults
            .and_then(|d| d.ready_timeout.as_ref())
            .and_then(|r| cx.duration(r))
            .unwrap_or(Duration::from_secs(60));
        let default_par = defaults.and_then(|d| d.parallelism).unwrap_or(2);
        let dir = file
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let names: BTreeSet<String> = raw.service.keys().cloned().collect();
        Globals {
            env,
            defaults,
            default_rto,
            default_timeout,
            default_par,
            dir,
            names,
            kinds,
        }
    }

    /// A path of the catalog, relative ones under its directory.
    fn rel(&self, p: Option<PathBuf>) -> Option<PathBuf> {
        p.map(|p| if p.is_relative() { self.dir.join(p) } else { p })
    }
}

/// Parse and validate one `[service.<name>]` table (with the environment's
/// overrides merged in); errors go to `cx`. `None` when its kind is unknown.
fn parse_service(
    cx: &mut Ctx,
    g: &Globals,
    name: &str,
    spanned: &toml::Spanned<RawService>,
) -> Option<Service> {
    let at = spanned.span().start;
    let rs = spanned.get_ref();
    if name.is_empty() || name.contains(['/', ' ']) {
        cx.err(
            at,
            format!("service name {name:?} may not be empty or contain '/' or spaces"),
        );
    }
    let Some(kind) = Kind::in_table(rs.kind.get_ref(), g.kinds) else {
        cx.err(
            rs.kind.span().start,
            format!(
                "service {name}: unknown kind {:?} ({})",
                rs.kind.get_ref(),
                g.kinds.names().join(", ")
            ),
        );
        return None;
    };
    if let Some(e) = g.env
        && e != "production"
        && !rs.env.contains_key(e)
        && !rs.env.is_empty()
    {
        cx.err(
            at,
            format!(
                "service {name}: no [service.{name}.env.{e}] overrides (it has {:?})",
                rs.env.keys().collect::<Vec<_>>()
            ),
        );
    }
    let o = g
        .env
        .and_then(|e| rs.env.get(e))
        .map(|o| o.get_ref().clone())
        .unwrap_or_default();
    let m = merge(&rs.base(), &o);
    let deps = parse_depends_on(cx, name, rs, &g.names);
    let (ready, ready_timeout) = parse_ready(cx, name, at, &m, g.default_timeout);
    let rto = match &m.rto {
        Some(r) => cx.duration(r),
        None => g.default_rto,
    };
    check_required(cx, name, at, rs, kind, &m, g.kinds);
    check_values(cx, name, at, rs, kind, &m);
    check_foreign_fields(cx, name, at, rs, kind, g.kinds);
    let retention = parse_retention(cx, name, at, rs, g.defaults);
    Some(Service {
        name: name.to_string(),
        kind,
        line: cx.line(at),
        depends_on: deps,
        host: m.host,
        port: m.port,
        user: m.user,
        password: m.password,
        database: m.database,
        databases: m.databases.unwrap_or_else(|| vec![0]),
        key_pattern: m.key_pattern.unwrap_or_else(|| "*".into()),
        path: g.rel(m.path),
        target: g.rel(m.target),
        backup: m.backup,
        restore: m.restore,
        start: m.start,
        stop: m.stop,
        ready,
        ready_timeout,
        rto,
        parallelism: m.parallelism.unwrap_or(g.default_par).max(1),
        retention,
        workdir: g.dir.clone(),
        teardown: m.teardown,
        has_env_override: g.env.is_some_and(|e| rs.env.contains_key(e)),
        invariants: rs
            .invariant
            .iter()
            .enumerate()
            .filter_map(|(i, inv)| {
                cx.invariant(inv, &format!("{name}#{}", i + 1), Some(name), &g.names)
            })
            .collect(),
        allow_special: rs.allow_special.unwrap_or(false),
        allow_setuid: rs.allow_setuid.unwrap_or(false),
        exclude: rs.exclude.clone().unwrap_or_default(),
        one_file_system: rs.one_file_system.unwrap_or(false),
        temp_dir: g.rel(m.temp_dir),
        restore_role: m.restore_role,
        post_restore: m.post_restore,
        verify: m.verify,
        rollback: false,
    })
}

/// A service's dependencies: each must name another service of the catalog.
fn parse_depends_on(
    cx: &mut Ctx,
    name: &str,
    rs: &RawService,
    names: &BTreeSet<String>,
) -> Vec<String> {
    let mut deps = Vec::new();
    for d in &rs.depends_on {
        if !names.contains(d.get_ref()) {
            cx.err(
                d.span().start,
                format!(
                    "service {name} depends on unknown service {:?}",
                    d.get_ref()
                ),
            );
        } else if d.get_ref() == name {
            cx.err(d.span().start, format!("service {name} depends on itself"));
        } else {
            deps.push(d.get_ref().clone());
        }
    }
    deps
}

/// A service's readiness check and its timeout (the default one when it
/// sets none).
fn parse_ready(
    cx: &mut Ctx,
    name: &str,
    at: usize,
    m: &RawOverride,
    default_timeout: Duration,
) -> (Option<Ready>, Duration) {
    match &m.ready {
        None => (None, default_timeout),
        Some(r) => {
            let n = [&r.command, &r.tcp, &r.http]
                .iter()
                .filter(|x| x.is_some())
                .count();
            if n != 1 {
                cx.err(
                    at,
                    format!("service {name}: ready needs exactly one of command, tcp, http"),
                );
            }
            let t = r
                .timeout
                .as_ref()
                .and_then(|t| cx.duration(t))
                .unwrap_or(default_timeout);
            let ready = r
                .command
                .clone()
                .map(Ready::Command)
                .or(r.tcp.clone().map(Ready::Tcp))
                .or(r.http.clone().map(Ready::Http));
            (ready, t)
        }
    }
}

/// The fields its kind requires, set in the table or the environment's
/// overrides.
fn check_required(
    cx: &mut Ctx,
    name: &str,
    at: usize,
    rs: &RawService,
    kind: Kind,
    m: &RawOverride,
    kinds: &dyn KindTable,
) {
    let need = |cx: &mut Ctx, ok: bool, what: &str| {
        if !ok {
            cx.err(
                at,
                format!(
                    "service {name} (kind {}): missing {what}",
                    rs.kind.get_ref()
                ),
            );
        }
    };
    let merged_fields = m.set_fields();
    for (field, what) in kinds.required(kind) {
        need(cx, merged_fields.contains(field), what);
    }
}

/// Values the tools would misread: exclude patterns, database and role
/// names.
fn check_values(cx: &mut Ctx, name: &str, at: usize, rs: &RawService, kind: Kind, m: &RawOverride) {
    // A database name is passed to the tools as one: not an option,
    // not a connection string (which would connect elsewhere than
    // the production guard compared).
    if let Some(ex) = &rs.exclude {
        let pats: Vec<_> = ex.iter().map(cairn_repo::select::Pattern::new).collect();
        if let Err(e) = cairn_repo::select::Patterns::new(&pats) {
            let off = cx.field_offset(at, "exclude");
            cx.err(off, format!("service {name}: exclude: {e}"));
        }
    }
    if let Some(db) = &m.database
        && kind == Kind::POSTGRES
        && db.len() > 63
    {
        // PostgreSQL cuts names to 63 bytes: two longer names that
        // share them are one database.
        let off = cx.field_offset(at, "database");
        cx.err(
            off,
            format!(
                "service {name}: database name is {} bytes; PostgreSQL keeps only the first 63, so it would name another database",
                db.len()
            ),
        );
    }
    if let Some(r) = &m.restore_role
        && (r.is_empty()
            || r.len() > 63
            || r.starts_with('-')
            || r.contains('=')
            || r.contains("://"))
    {
        let off = cx.field_offset(at, "restore_role");
        cx.err(
            off,
            format!(
                "service {name}: restore_role {r:?} is not a plain role name (1 to 63 bytes, no leading '-', no '=' or '://')"
            ),
        );
    }
    if let Some(db) = &m.database
        && (db.starts_with('-') || db.contains('=') || db.contains("://"))
    {
        let off = cx.field_offset(at, "database");
        cx.err(
            off,
            format!(
                "service {name}: database {db:?} is not a plain database name (no leading '-', no '=' or '://': connection settings go in host, port, user)"
            ),
        );
    }
}

/// Fields of other kinds set in the table or an environment's overrides.
fn check_foreign_fields(
    cx: &mut Ctx,
    name: &str,
    at: usize,
    rs: &RawService,
    kind: Kind,
    kinds: &dyn KindTable,
) {
    // Fields of other kinds are errors (a Redis service with a
    // `database`, a files service with a `host`): each names its line.
    let mut set: Vec<(&str, usize, Option<&str>)> = rs
        .base()
        .set_fields()
        .into_iter()
        .map(|f| (f, at, None))
        .collect();
    for (f, on) in [
        ("allow_special", rs.allow_special.is_some()),
        ("allow_setuid", rs.allow_setuid.is_some()),
        ("exclude", rs.exclude.is_some()),
        ("one_file_system", rs.one_file_system.is_some()),
    ] {
        if on {
            set.push((f, at, None));
        }
    }
    for (e, o) in &rs.env {
        // The override's own table (or inline table), from its span.
        let from = o.span().start;
        set.extend(
            o.get_ref()
                .set_fields()
                .into_iter()
                .map(|f| (f, from, Some(e.as_str()))),
        );
    }
    for (field, from, in_env) in set {
        if COMMON_FIELDS.contains(&field) || kinds.fields(kind).contains(&field) {
            continue;
        }
        let takers: Vec<&str> = kinds.takers(field);
        let off = cx.field_offset(from, field);
        cx.err(
            off,
            format!(
                "service {name} (kind {}){}: {field} is not a field of this kind (it belongs to kind {})",
                rs.kind.get_ref(),
                in_env.map(|e| format!(", env {e}")).unwrap_or_default(),
                takers.join(", ")
            ),
        );
    }
}

/// A service's retention rules (the default ones when it has none), which
/// must be valid and keep something.
fn parse_retention(
    cx: &mut Ctx,
    name: &str,
    at: usize,
    rs: &RawService,
    defaults: Option<&RawDefaults>,
) -> Option<Retention> {
    let retention = rs
        .retention
        .clone()
        .or_else(|| defaults.and_then(|d| d.retention.clone()));
    if let Some(r) = &retention {
        match r.policy() {
            Err(e) => cx.err(at, format!("service {name}: retention: {e}")),
            Ok(p) if p.is_empty() => {
                cx.err(at, format!("service {name}: retention has no keep rule"))
            }
            Ok(_) => {}
        }
    }
    retention
}

fn find_cycle(services: &BTreeMap<String, Service>) -> Option<Vec<String>> {
    // 0 = unvisited, 1 = on stack, 2 = done
    fn dfs(
        n: &str,
        s: &BTreeMap<String, Service>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        // A service whose table was rejected (unknown kind) has no entry;
        // its error is already reported.
        let Some(svc) = s.get(n) else {
            path.pop();
            state.insert(n.to_string(), 2);
            return None;
        };
        for d in &svc.depends_on {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let i = path.iter().position(|p| p == d).unwrap_or(0);
                    let mut c = path[i..].to_vec();
                    c.push(d.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = dfs(d, s, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in services.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = dfs(n, services, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests;
