//! The catalog as TOML spells it (every field optional, spans kept for
//! file:line errors), the merge of environment overrides, and the parsing
//! context that turns offsets into lines.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCatalog {
    pub(super) repository: Option<RawRepository>,
    pub(super) defaults: Option<RawDefaults>,
    #[serde(default)]
    pub(super) service: BTreeMap<String, Spanned<RawService>>,
    #[serde(default)]
    pub(super) invariant: Vec<Spanned<RawInvariant>>,
    pub(super) drill: Option<RawDrill>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrill {
    pub(super) teardown: Option<bool>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInvariant {
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) services: Vec<Spanned<String>>,
    pub(super) sql: Option<String>,
    pub(super) on: Option<Spanned<String>>,
    pub(super) command: Option<String>,
    pub(super) equals: Option<toml::Value>,
    pub(super) at_least: Option<f64>,
    pub(super) at_most: Option<f64>,
    pub(super) matches: Option<String>,
    pub(super) gate: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRepository {
    pub(super) path: Option<String>,
    pub(super) password_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub(super) rto: Option<Spanned<String>>,
    pub(super) parallelism: Option<u32>,
    pub(super) jobs: Option<usize>,
    pub(super) ready_timeout: Option<Spanned<String>>,
    pub(super) retention: Option<Retention>,
}

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReady {
    pub(super) command: Option<String>,
    pub(super) tcp: Option<String>,
    pub(super) http: Option<String>,
    pub(super) timeout: Option<Spanned<String>>,
}

/// Fields an environment may override.
#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOverride {
    pub(super) host: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    pub(super) database: Option<String>,
    pub(super) databases: Option<Vec<u32>>,
    pub(super) key_pattern: Option<String>,
    pub(super) path: Option<PathBuf>,
    pub(super) target: Option<PathBuf>,
    pub(super) backup: Option<String>,
    pub(super) restore: Option<String>,
    pub(super) start: Option<String>,
    pub(super) stop: Option<String>,
    pub(super) teardown: Option<String>,
    pub(super) ready: Option<RawReady>,
    pub(super) rto: Option<Spanned<String>>,
    pub(super) parallelism: Option<u32>,
    pub(super) temp_dir: Option<PathBuf>,
    pub(super) restore_role: Option<String>,
    pub(super) post_restore: Option<String>,
    pub(super) verify: Option<String>,
}

// Not `#[serde(flatten)]` of RawOverride: flatten disables deny_unknown_fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) kind: Spanned<String>,
    #[serde(default)]
    pub(super) depends_on: Vec<Spanned<String>>,
    pub(super) retention: Option<Retention>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, Spanned<RawOverride>>,
    #[serde(default)]
    pub(super) invariant: Vec<Spanned<RawInvariant>>,
    pub(super) host: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    pub(super) database: Option<String>,
    pub(super) databases: Option<Vec<u32>>,
    pub(super) key_pattern: Option<String>,
    pub(super) path: Option<PathBuf>,
    pub(super) target: Option<PathBuf>,
    pub(super) backup: Option<String>,
    pub(super) restore: Option<String>,
    pub(super) start: Option<String>,
    pub(super) stop: Option<String>,
    pub(super) teardown: Option<String>,
    pub(super) ready: Option<RawReady>,
    pub(super) rto: Option<Spanned<String>>,
    pub(super) parallelism: Option<u32>,
    pub(super) temp_dir: Option<PathBuf>,
    pub(super) restore_role: Option<String>,
    pub(super) post_restore: Option<String>,
    pub(super) verify: Option<String>,
    pub(super) allow_special: Option<bool>,
    pub(super) allow_setuid: Option<bool>,
    pub(super) exclude: Option<Vec<String>>,
    pub(super) one_file_system: Option<bool>,
}

impl RawOverride {
    /// The fields set, by name.
    pub(super) fn set_fields(&self) -> Vec<&'static str> {
        let all = [
            ("host", self.host.is_some()),
            ("port", self.port.is_some()),
            ("user", self.user.is_some()),
            ("password", self.password.is_some()),
            ("database", self.database.is_some()),
            ("databases", self.databases.is_some()),
            ("key_pattern", self.key_pattern.is_some()),
            ("path", self.path.is_some()),
            ("target", self.target.is_some()),
            ("backup", self.backup.is_some()),
            ("restore", self.restore.is_some()),
            ("start", self.start.is_some()),
            ("stop", self.stop.is_some()),
            ("teardown", self.teardown.is_some()),
            ("ready", self.ready.is_some()),
            ("rto", self.rto.is_some()),
            ("parallelism", self.parallelism.is_some()),
            ("temp_dir", self.temp_dir.is_some()),
            ("restore_role", self.restore_role.is_some()),
            ("post_restore", self.post_restore.is_some()),
            ("verify", self.verify.is_some()),
        ];
        all.into_iter()
            .filter(|(_, set)| *set)
            .map(|(f, _)| f)
            .collect()
    }
}

/// Fields every kind takes (besides kind, depends_on, retention, env and
/// invariant).
pub(super) const COMMON_FIELDS: &[&str] = &["start", "stop", "ready", "rto", "post_restore"];

impl RawService {
    pub(super) fn base(&self) -> RawOverride {
        macro_rules! copy {
            ($($f:ident),*) => { RawOverride { $($f: self.$f.clone()),* } };
        }
        copy!(
            host,
            port,
            user,
            password,
            database,
            databases,
            key_pattern,
            path,
            target,
            backup,
            restore,
            start,
            stop,
            teardown,
            ready,
            rto,
            parallelism,
            temp_dir,
            restore_role,
            post_restore,
            verify
        )
    }
}

pub(super) struct Ctx<'a> {
    pub(super) file: &'a Path,
    pub(super) src: &'a str,
    pub(super) errors: Vec<String>,
}

impl Ctx<'_> {
    /// The offset of the line setting `field` in the table whose text
    /// starts at `from` (its header line included), else `from`.
    pub(super) fn field_offset(&self, from: usize, field: &str) -> usize {
        let from = from.min(self.src.len());
        let mut off = from;
        for (i, line) in self.src[from..].split_inclusive('\n').enumerate() {
            let t = line.trim_start();
            if i > 0 && t.starts_with('[') {
                break; // the next table
            }
            if let Some(r) = t.strip_prefix(field)
                && r.trim_start().starts_with('=')
            {
                return off;
            }
            off += line.len();
        }
        from
    }
    pub(super) fn line(&self, offset: usize) -> usize {
        self.src[..offset.min(self.src.len())].matches('\n').count() + 1
    }
    pub(super) fn err(&mut self, offset: usize, msg: String) {
        let l = self.line(offset);
        self.errors
            .push(format!("{}:{l}: {msg}", self.file.display()));
    }
    pub(super) fn duration(&mut self, s: &Spanned<String>) -> Option<Duration> {
        match parse_duration(s.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(s.span().start, e);
                None
            }
        }
    }
}

impl Ctx<'_> {
    /// Validate one invariant; `owner` is the service it belongs to (None:
    /// top level).
    pub(super) fn invariant(
        &mut self,
        raw: &Spanned<RawInvariant>,
        default_name: &str,
        owner: Option<&str>,
        names: &BTreeSet<String>,
    ) -> Option<Invariant> {
        let at = raw.span().start;
        let r = raw.get_ref();
        let name = r.name.clone().unwrap_or_else(|| default_name.to_string());
        let mut services: Vec<String> = owner.map(|o| vec![o.to_string()]).unwrap_or_default();
        let mut ok = true;
        for s in &r.services {
            if !names.contains(s.get_ref()) {
                self.err(
                    s.span().start,
                    format!("invariant {name:?} names unknown service {:?}", s.get_ref()),
                );
                ok = false;
            } else if !services.contains(s.get_ref()) {
                services.push(s.get_ref().clone());
            }
        }
        if owner.is_none() && services.is_empty() {
            self.err(
                at,
                format!("invariant {name:?}: list the services it needs in `services`"),
            );
            ok = false;
        }
        let check = match (&r.sql, &r.command) {
            (Some(q), None) => {
                let on = match (&r.on, owner) {
                    (Some(o), _) => {
                        if !names.contains(o.get_ref()) {
                            self.err(
                                o.span().start,
                                format!(
                                    "invariant {name:?}: `on` names unknown service {:?}",
                                    o.get_ref()
                                ),
                            );
                            ok = false;
                        } else if !services.contains(o.get_ref()) {
                            services.push(o.get_ref().clone());
                        }
                        o.get_ref().clone()
                    }
                    (None, Some(o)) => o.to_string(),
                    (None, None) => {
                        self.err(
                            at,
                            format!("invariant {name:?}: a top-level sql invariant needs `on = \"SERVICE\"`"),
                        );
                        ok = false;
                        String::new()
                    }
                };
                Check::Sql {
                    on,
                    query: q.clone(),
                }
            }
            (None, Some(c)) => Check::Command(c.clone()),
            _ => {
                self.err(
                    at,
                    format!("invariant {name:?} needs exactly one of `sql` or `command`"),
                );
                return None;
            }
        };
        let mut expects = Vec::new();
        if let Some(v) = &r.equals {
            expects.push(Expect::Equals(match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            }));
        }
        if let Some(v) = r.at_least {
            expects.push(Expect::AtLeast(v));
        }
        if let Some(v) = r.at_most {
            expects.push(Expect::AtMost(v));
        }
        if let Some(v) = &r.matches {
            if let Err(e) = regex_lite::Regex::new(v) {
                self.err(
                    at,
                    format!("invariant {name:?}: bad `matches` pattern: {e}"),
                );
                ok = false;
            }
            expects.push(Expect::Matches(v.clone()));
        }
        if expects.len() != 1 {
            self.err(
                at,
                format!(
                    "invariant {name:?} needs exactly one of equals, at_least, at_most, matches"
                ),
            );
            return None;
        }
        ok.then(|| Invariant {
            name,
            services,
            check,
            expect: expects.pop().expect("one"),
            line: self.line(at),
            gate: r.gate.unwrap_or(true),
        })
    }
}

pub(super) fn merge(base: &RawOverride, o: &RawOverride) -> RawOverride {
    macro_rules! pick {
        ($($f:ident),*) => { RawOverride { $($f: o.$f.clone().or_else(|| base.$f.clone())),* } };
    }
    pick!(
        host,
        port,
        user,
        password,
        database,
        databases,
        key_pattern,
        path,
        target,
        backup,
        restore,
        start,
        stop,
        teardown,
        ready,
        rto,
        parallelism,
        temp_dir,
        restore_role,
        post_restore,
        verify
    )
}
