//! What a restore overwrites, as a value that can be compared: the guard
//! that keeps a drill or a non-production restore off production data.
//!
//! Display strings are not compared: `/srv/data/` and `/srv/data`,
//! `localhost` and `127.0.0.1`, `orders` and `Orders` name the same thing.
//! A [`Target`] holds the canonical form — paths resolved through symlinks
//! with no trailing slash, hosts resolved to addresses (every address of
//! this machine counts as one), database names compared case-insensitively,
//! Redis key spaces as database sets and glob patterns — and [`overlap`]
//! says whether two targets can touch the same data. When it cannot tell
//! (an unresolvable host) it answers "overlap": the guard refuses rather
//! than guesses. A command service's target is known only by its restore
//! command and directory: an override that leaves them as they are is
//! refused, but what a changed command writes cannot be judged (review
//! such overrides; README "Never over production by accident").

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};

use crate::catalog::{Kind, Service};

/// A database server as reached by a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// The host as written (for messages).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Whether the host is this machine (loopback, a Unix socket directory,
    /// an address of this host's name, or unspecified).
    pub local: bool,
    /// Addresses the host resolved to (empty when it did not resolve).
    pub addrs: BTreeSet<IpAddr>,
}

impl Server {
    /// Resolve `host` (None = the tool's default, a local socket) and `port`.
    pub fn resolve(host: Option<&str>, port: u16) -> Server {
        let written = host.unwrap_or("localhost").trim();
        let bare = written
            .trim_end_matches('.')
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if host.is_none() || bare.is_empty() || bare.starts_with('/') || bare == "localhost" {
            return Server {
                host: written.to_string(),
                port,
                local: true,
                addrs: BTreeSet::new(),
            };
        }
        let addrs: BTreeSet<IpAddr> = (bare.as_str(), port)
            .to_socket_addrs()
            .map(|a| a.map(|s| canonical_ip(s.ip())).collect())
            .unwrap_or_default();
        let local = addrs.iter().any(|a| is_this_host(*a));
        Server {
            host: bare,
            port,
            local,
            addrs,
        }
    }

    /// Whether two servers may be the same one.
    pub fn same(&self, o: &Server) -> bool {
        if self.port != o.port {
            return false;
        }
        if self.local && o.local {
            return true;
        }
        if self.local || o.local {
            // This host against another: separate, unless the other did not
            // resolve (then nobody can tell).
            let other = if self.local { o } else { self };
            return other.addrs.is_empty();
        }
        if self.addrs.is_empty() || o.addrs.is_empty() {
            // Unresolvable: only the names can be compared, and different
            // names may still be one server — assume so unless both resolve.
            return true;
        }
        !self.addrs.is_disjoint(&o.addrs)
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) as the IPv4 address
/// it reaches.
fn canonical_ip(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        v4 => v4,
    }
}

/// Whether `a` reaches this machine: loopback, unspecified, or an address
/// of one of its interfaces (a socket can be bound to it; IPv6 addresses,
/// link-local ones included, are also read from /proc/net/if_inet6).
fn is_this_host(a: IpAddr) -> bool {
    let a = canonical_ip(a);
    if a.is_loopback() || a.is_unspecified() {
        return true;
    }
    if std::net::UdpSocket::bind((a, 0)).is_ok() {
        return true;
    }
    if let IpAddr::V6(v6) = a
        && let Ok(t) = std::fs::read_to_string("/proc/net/if_inet6")
    {
        let hex: String = v6.octets().iter().map(|b| format!("{b:02x}")).collect();
        return t
            .lines()
            .any(|l| l.split_whitespace().next() == Some(hex.as_str()));
    }
    false
}

/// What a restore of one service overwrites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A SQL database, dropped and recreated.
    Database {
        /// `postgres` or `mariadb`.
        engine: Kind,
        /// Where.
        server: Server,
        /// Database name, as written.
        name: String,
    },
    /// Redis keys matching a pattern in some databases.
    Redis {
        /// Where.
        server: Server,
        /// Database numbers.
        databases: BTreeSet<u32>,
        /// Glob pattern (Redis `SCAN MATCH` syntax).
        pattern: String,
    },
    /// A directory, emptied and restored (canonical path).
    Dir(PathBuf),
    /// Whatever a restore command writes: known only by its text and the
    /// directory it runs in.
    Command {
        /// The restore command.
        restore: String,
        /// Its working directory.
        workdir: PathBuf,
    },
}

impl Target {
    /// The target of a service's restore (a files service's `target` when
    /// set, else its `path`).
    pub fn of(s: &Service) -> Target {
        s.kind.datastore().target(s)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Database {
                engine,
                server,
                name,
            } => write!(
                f,
                "{} database {name:?} at {}:{}",
                engine.name(),
                server.host,
                server.port
            ),
            Target::Redis {
                server,
                databases,
                pattern,
            } => write!(
                f,
                "redis keys matching {pattern:?} in databases {:?} at {}:{}",
                databases.iter().collect::<Vec<_>>(),
                server.host,
                server.port
            ),
            Target::Dir(p) => write!(f, "directory {}", p.display()),
            Target::Command { restore, .. } => write!(f, "whatever `{restore}` writes"),
        }
    }
}

/// `p` made absolute (against `base`), with `.` and `..` resolved and the
/// longest existing prefix resolved through symlinks; no trailing slash.
pub fn canonical(p: &Path, base: &Path) -> PathBuf {
    use std::ffi::OsString;
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    // Components still to resolve, next last; a symlink met on the way
    // pushes its own (at most 40 links are followed, as the kernel does).
    fn push_all(rest: &mut Vec<OsString>, p: &Path) {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => rest.push(n.to_os_string()),
                Component::ParentDir => rest.push("..".into()),
                Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            }
        }
    }
    let mut out = PathBuf::from("/");
    let mut rest = Vec::new();
    push_all(&mut rest, &abs);
    let mut links = 0;
    while let Some(n) = rest.pop() {
        if n == ".." {
            out.pop();
            continue;
        }
        let next = out.join(&n);
        match std::fs::read_link(&next) {
            Ok(t) if links < 40 => {
                links += 1;
                if t.is_absolute() {
                    out = PathBuf::from("/");
                }
                push_all(&mut rest, &t);
            }
            _ => out = next,
        }
    }
    out
}

/// Whether two glob patterns (Redis syntax: `*`, `?`, `[...]` with `^`
/// negation and ranges, `\` escapes) can match one common key.
pub fn patterns_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (glob_tokens(a.as_bytes()), glob_tokens(b.as_bytes()));
    // Product of the two patterns' automata, searched for a common accept.
    let mut seen = BTreeSet::new();
    let mut todo = vec![(0usize, 0usize)];
    while let Some((i, j)) = todo.pop() {
        if !seen.insert((i, j)) {
            continue;
        }
        if i == a.len() && j == b.len() {
            return true;
        }
        // A star may match nothing.
        if a.get(i) == Some(&Tok::Star) {
            todo.push((i + 1, j));
        }
        if b.get(j) == Some(&Tok::Star) {
            todo.push((i, j + 1));
        }
        let (Some(ta), Some(tb)) = (a.get(i), b.get(j)) else {
            continue;
        };
        if (0..=255u8).any(|c| ta.accepts(c) && tb.accepts(c)) {
            let ni = if *ta == Tok::Star { i } else { i + 1 };
            let nj = if *tb == Tok::Star { j } else { j + 1 };
            todo.push((ni, nj));
        }
    }
    false
}

/// Whether `key` matches the glob `pattern` (Redis `SCAN MATCH` syntax).
pub fn glob_match(pattern: &str, key: &[u8]) -> bool {
    let toks = glob_tokens(pattern.as_bytes());
    // States: positions in the pattern reachable after the bytes so far.
    let close = |set: &mut Vec<bool>| {
        for i in 0..toks.len() {
            if set[i] && toks[i] == Tok::Star {
                set[i + 1] = true;
            }
        }
    };
    let mut cur = vec![false; toks.len() + 1];
    cur[0] = true;
    close(&mut cur);
    for &c in key {
        let mut next = vec![false; toks.len() + 1];
        for i in 0..toks.len() {
            if cur[i] && toks[i].accepts(c) {
                next[if toks[i] == Tok::Star { i } else { i + 1 }] = true;
            }
        }
        close(&mut next);
        if !next.iter().any(|x| *x) {
            return false;
        }
        cur = next;
    }
    cur[toks.len()]
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Star,
    /// One byte of a set (a bitmap of 256 bits).
    One([u64; 4]),
}

impl Tok {
    fn accepts(&self, c: u8) -> bool {
        match self {
            Tok::Star => true,
            Tok::One(set) => set[(c >> 6) as usize] & (1 << (c & 63)) != 0,
        }
    }
}

fn set_bit(set: &mut [u64; 4], c: u8) {
    set[(c >> 6) as usize] |= 1 << (c & 63);
}

fn glob_tokens(p: &[u8]) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut i = 0;
    let single = |c: u8| {
        let mut s = [0u64; 4];
        set_bit(&mut s, c);
        Tok::One(s)
    };
    while i < p.len() {
        match p[i] {
            b'*' => {
                if out.last() != Some(&Tok::Star) {
                    out.push(Tok::Star);
                }
                i += 1;
            }
            b'?' => {
                out.push(Tok::One([u64::MAX; 4]));
                i += 1;
            }
            b'\\' if i + 1 < p.len() => {
                out.push(single(p[i + 1]));
                i += 2;
            }
            b'[' => {
                // Redis's stringmatchlen: `[^...]` negates, `a-z` ranges,
                // `\x` escapes; an unclosed class runs to the end.
                let mut set = [0u64; 4];
                let mut j = i + 1;
                let neg = p.get(j) == Some(&b'^');
                if neg {
                    j += 1;
                }
                while j < p.len() && p[j] != b']' {
                    if p[j] == b'\\' && j + 1 < p.len() {
                        set_bit(&mut set, p[j + 1]);
                        j += 2;
                    } else if j + 2 < p.len() && p[j + 1] == b'-' {
                        // As Redis reads it: `a-]` is the range a..] (the
                        // `]` ends the range, not the class).
                        let (lo, hi) = (p[j].min(p[j + 2]), p[j].max(p[j + 2]));
                        for c in lo..=hi {
                            set_bit(&mut set, c);
                        }
                        j += 3;
                    } else {
                        set_bit(&mut set, p[j]);
                        j += 1;
                    }
                }
                if neg {
                    for w in set.iter_mut() {
                        *w = !*w;
                    }
                }
                out.push(Tok::One(set));
                i = j + 1;
            }
            c => {
                out.push(single(c));
                i += 1;
            }
        }
    }
    out
}

/// Whether two targets may touch the same data (see the module text).
pub fn overlap(a: &Target, b: &Target) -> bool {
    match (a, b) {
        (
            Target::Database {
                engine: ea,
                server: sa,
                name: na,
            },
            Target::Database {
                engine: eb,
                server: sb,
                name: nb,
            },
        ) => ea == eb && sa.same(sb) && na.eq_ignore_ascii_case(nb),
        (
            Target::Redis {
                server: sa,
                databases: da,
                pattern: pa,
            },
            Target::Redis {
                server: sb,
                databases: db,
                pattern: pb,
            },
        ) => sa.same(sb) && !da.is_disjoint(db) && patterns_overlap(pa, pb),
        (Target::Dir(a), Target::Dir(b)) => {
            a.starts_with(b) || b.starts_with(a) || inside_by_inode(a, b) || inside_by_inode(b, a)
        }
        (
            Target::Command {
                restore: ra,
                workdir: wa,
            },
            Target::Command {
                restore: rb,
                workdir: wb,
            },
        ) => ra == rb && wa == wb,
        _ => false,
    }
}

/// Whether two existing paths are one directory under two names (a bind
/// mount, a hard-to-see symlink chain): same device and inode.
fn same_directory(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Whether `a`, or an existing directory it lies in, is the directory `b`
/// under another name (a bind mount of `b`, or of a directory above it...
/// checked by device and inode).
fn inside_by_inode(a: &Path, b: &Path) -> bool {
    a.ancestors().any(|anc| same_directory(anc, b))
}

/// One refusal of [`guard`]: a service whose target overlaps a production
/// service's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clash {
    /// The service being restored.
    pub service: String,
    /// Its target.
    pub target: String,
    /// The production service whose data it would touch.
    pub production: String,
    /// That service's target.
    pub production_target: String,
}

impl fmt::Display for Clash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.service == self.production {
            write!(
                f,
                "{}: {} is production's target ({})",
                self.service, self.target, self.production_target
            )
        } else {
            write!(
                f,
                "{}: {} overlaps production service {}'s {}",
                self.service, self.target, self.production, self.production_target
            )
        }
    }
}

/// Every selected service of `env` whose restore target overlaps the target
/// of any production service (not only its own: a staging override aimed at
/// another service's data is refused too).
pub fn guard(
    env: &crate::catalog::Catalog,
    production: &crate::catalog::Catalog,
    selected: &BTreeSet<String>,
) -> Vec<Clash> {
    let prod: Vec<(&String, Target)> = production
        .services
        .iter()
        .flat_map(|(n, s)| {
            s.kind
                .datastore()
                .protected(s)
                .into_iter()
                .map(move |t| (n, t))
        })
        .collect();
    let mut out = Vec::new();
    for name in selected {
        let Some(s) = env.services.get(name) else {
            continue;
        };
        let t = Target::of(s);
        for (pn, pt) in &prod {
            if overlap(&t, pt) {
                out.push(Clash {
                    service: name.clone(),
                    target: t.to_string(),
                    production: (*pn).clone(),
                    production_target: pt.to_string(),
                });
            }
        }
    }
    out
}

/// Refuse, before anything is touched, to restore services of a
/// non-production catalog (`what`: "a drill", "a restore with --env
/// staging") into targets that overlap production's: the production
/// catalog is the same file read without environment overrides.
pub fn refuse_production_overlap(
    env: &crate::catalog::Catalog,
    selected: &BTreeSet<String>,
    what: &str,
) -> Result<(), crate::StackError> {
    let production = crate::catalog::Catalog::load(&env.file, None)?;
    let clashes = guard(env, &production, selected);
    if clashes.is_empty() {
        return Ok(());
    }
    Err(crate::StackError::Invalid(format!(
        "{}: {what} would overwrite production data; nothing was touched:\n  {}\n\
         give each service [service.NAME.env.{}] overrides that move its target \
         (another directory, database, server or Redis key space)",
        env.file.display(),
        clashes
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("\n  "),
        env.env
    )))
}

/// The first existing directory at or above `path`'s parent that another
/// user could use to swap what the path resolves to (owned by someone but
/// root and this user, or writable by group or others without the sticky
/// bit), with why. A restore or teardown through such a directory can be
/// made to write or delete elsewhere — production included — between its
/// checks and its writes; restores and teardowns of files and SQLite
/// targets refuse them (as OpenSSH's StrictModes does for key files).
pub fn swappable_ancestor(path: &Path) -> Option<String> {
    let me = cairn_repo::sys::euid();
    // The path as written and, where a symlink is on it, as it resolves:
    // every entry on both is checked as it is (a symlink another user owns
    // can be replaced by that user, even in a sticky directory).
    let mut chains = vec![path.to_path_buf()];
    if let Some(real) = path.parent().and_then(|p| std::fs::canonicalize(p).ok())
        && Some(real.as_path()) != path.parent()
    {
        chains.push(real.join("x"));
    }
    for p in &chains {
        if let Some(why) = swappable_entry(p, me) {
            return Some(why);
        }
    }
    None
}

fn swappable_entry(path: &Path, me: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d.as_os_str().is_empty() {
            break;
        }
        if let Ok(m) = std::fs::symlink_metadata(d) {
            if m.uid() != 0 && m.uid() != me {
                return Some(format!(
                    "{} is owned by uid {}, who could swap it during the restore",
                    d.display(),
                    m.uid()
                ));
            }
            if m.is_dir() && m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
                return Some(format!(
                    "{} is writable by {} (mode {:o}, not sticky), who could swap what is in it during the restore",
                    d.display(),
                    if m.mode() & 0o002 != 0 {
                        "anyone"
                    } else {
                        "its group"
                    },
                    m.mode() & 0o7777
                ));
            }
        }
        dir = d.parent();
    }
    None
}

#[cfg(test)]
mod tests;
