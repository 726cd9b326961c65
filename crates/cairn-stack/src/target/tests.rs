//! Tests of what a restore overwrites: when two targets overlap (near
//! misses in another spelling, real separations), the guard over a
//! catalog, globs, canonical paths.

use super::*;

fn dir(p: &str) -> Target {
    Target::Dir(canonical(Path::new(p), Path::new("/")))
}
fn db(host: Option<&str>, port: u16, name: &str) -> Target {
    Target::Database {
        engine: Kind::POSTGRES,
        server: Server::resolve(host, port),
        name: name.into(),
    }
}
fn rd(host: &str, dbs: &[u32], pat: &str) -> Target {
    Target::Redis {
        server: Server::resolve(Some(host), 6379),
        databases: dbs.iter().copied().collect(),
        pattern: pat.into(),
    }
}

/// A case: two targets, whether they overlap, what the case is.
type Case = (Target, Target, bool, &'static str);

/// Near misses the guard must refuse, and real separations it must allow.
#[test]
fn near_miss_targets_overlap_and_separate_ones_do_not() {
    let tmp = tempfile::tempdir().unwrap();
    let prod = tmp.path().join("prod");
    std::fs::create_dir(&prod).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&prod, &link).unwrap();
    let p = prod.to_str().unwrap();
    let l = link.to_str().unwrap();
    let mut cases = directory_cases(tmp.path(), p, l);
    cases.extend(database_cases());
    cases.extend(redis_cases());
    cases.extend(address_cases());
    for (a, b, want, what) in cases {
        assert_eq!(overlap(&a, &b), want, "{what}: {a} vs {b}");
        assert_eq!(overlap(&b, &a), want, "{what} (reversed): {b} vs {a}");
    }
}

/// Directories: `p` is production, `l` a symlink to it, both under `tmp`.
fn directory_cases(tmp: &Path, p: &str, l: &str) -> Vec<Case> {
    vec![
        (dir(p), dir(&format!("{p}/")), true, "trailing slash"),
        (dir(p), dir(&format!("{p}/./")), true, "dot component"),
        (
            dir(p),
            dir(&format!("{p}/../prod")),
            true,
            "dot-dot back in",
        ),
        (dir(p), dir(&format!("{p}/staging")), true, "nested inside"),
        (dir(&format!("{p}/data")), dir(p), true, "parent of it"),
        (dir(p), dir(l), true, "through a symlink"),
        (
            dir(p),
            dir(&format!("{l}/sub/")),
            true,
            "inside, through a symlink",
        ),
        (
            dir(p),
            dir(&format!("{p}-staging")),
            false,
            "sibling with a common prefix",
        ),
        (
            dir(p),
            dir(tmp.join("other").to_str().unwrap()),
            false,
            "elsewhere",
        ),
    ]
}

/// Databases: hosts spelled otherwise, socket directories, name case.
fn database_cases() -> Vec<Case> {
    vec![
        (
            db(Some("127.0.0.1"), 5432, "orders"),
            db(Some("localhost"), 5432, "orders"),
            true,
            "localhost vs 127.0.0.1",
        ),
        (
            db(Some("127.0.0.1"), 5432, "orders"),
            db(None, 5432, "orders"),
            true,
            "default socket vs 127.0.0.1",
        ),
        (
            db(Some("127.0.0.1"), 5432, "orders"),
            db(Some("/var/run/postgresql"), 5432, "orders"),
            true,
            "socket dir",
        ),
        (
            db(Some("127.0.0.1"), 5432, "orders"),
            db(Some("127.0.0.2"), 5432, "orders"),
            true,
            "another loopback address",
        ),
        (
            db(Some("127.0.0.1"), 5432, "orders"),
            db(Some("::1"), 5432, "orders"),
            true,
            "IPv6 loopback",
        ),
        (
            db(Some("127.0.0.1"), 5432, "orders"),
            db(Some("LOCALHOST."), 5432, "orders"),
            true,
            "case and trailing dot",
        ),
        (
            db(Some("127.0.0.1"), 5432, "orders"),
            db(Some("127.0.0.1"), 5432, "Orders"),
            true,
            "database name case",
        ),
        (
            db(Some("127.0.0.1"), 5432, "orders"),
            db(Some("127.0.0.1"), 5432, "orders_staging"),
            false,
            "another database",
        ),
        (
            db(Some("127.0.0.1"), 5432, "orders"),
            db(Some("127.0.0.1"), 5433, "orders"),
            false,
            "another port",
        ),
        (
            db(Some("127.0.0.1"), 5432, "orders"),
            db(Some("no-such-host.invalid"), 5432, "orders"),
            true,
            "unresolvable host",
        ),
    ]
}

/// Redis key spaces: databases and patterns that intersect or do not.
fn redis_cases() -> Vec<Case> {
    vec![
        (
            rd("127.0.0.1", &[0], "orders:*"),
            rd("localhost", &[0], "orders:*"),
            true,
            "same pattern, localhost",
        ),
        (
            rd("127.0.0.1", &[0], "orders:*"),
            rd("127.0.0.1", &[0], "*"),
            true,
            "everything",
        ),
        (
            rd("127.0.0.1", &[0], "orders:*"),
            rd("127.0.0.1", &[0], "ord*"),
            true,
            "prefix of the prefix",
        ),
        (
            rd("127.0.0.1", &[0], "orders:*"),
            rd("127.0.0.1", &[0], "*:1"),
            true,
            "suffix pattern",
        ),
        (
            rd("127.0.0.1", &[0], "orders:*"),
            rd("127.0.0.1", &[0], "[o]rders:?"),
            true,
            "class and one",
        ),
        (
            rd("127.0.0.1", &[0], "orders:*"),
            rd("127.0.0.1", &[0, 1], "orders:*"),
            true,
            "databases intersect",
        ),
        (
            rd("127.0.0.1", &[0], "orders:*"),
            rd("127.0.0.1", &[1], "orders:*"),
            false,
            "another database",
        ),
        (
            rd("127.0.0.1", &[0], "orders:*"),
            rd("127.0.0.1", &[0], "staging:orders:*"),
            false,
            "another prefix",
        ),
        (
            rd("127.0.0.1", &[0], "orders:*"),
            rd("127.0.0.1", &[0], "[^o]*"),
            false,
            "negated class",
        ),
        (
            rd("127.0.0.1", &[0], "a\\*"),
            rd("127.0.0.1", &[0], "ab"),
            false,
            "escaped star",
        ),
        (
            rd("127.0.0.1", &[0], "brk__*"),
            rd("127.0.0.1", &[0], "brk_[a-]"),
            true,
            "range ending in ]",
        ),
    ]
}

/// Databases: IPv4-mapped IPv6 addresses, and another host.
fn address_cases() -> Vec<Case> {
    vec![
        (
            db(Some("127.0.0.1"), 5432, "orders"),
            db(Some("::ffff:127.0.0.1"), 5432, "orders"),
            true,
            "IPv4-mapped IPv6",
        ),
        (
            db(Some("127.0.0.1"), 5432, "orders"),
            db(Some("::ffff:7f00:1"), 5432, "orders"),
            true,
            "IPv4-mapped, in hex",
        ),
        (
            db(None, 5432, "orders"),
            db(Some("198.51.100.7"), 5432, "orders"),
            false,
            "default socket vs another host",
        ),
        (
            db(Some("localhost"), 5432, "orders"),
            db(Some("198.51.100.7"), 5432, "orders"),
            false,
            "localhost vs another host",
        ),
    ]
}

/// A files service restoring elsewhere than it reads: a staging restore
/// into its live `path` is refused too.
#[test]
fn a_files_services_live_path_is_protected_as_well_as_its_target() {
    let src = "[service.f]\nkind = \"files\"\npath = \"/srv/live\"\ntarget = \"/srv/restored\"\n[service.f.env.staging]\ntarget = \"/srv/live/\"\n";
    let p = std::path::Path::new("c.toml");
    let prod = crate::catalog::Catalog::parse(p, src, None).unwrap();
    let stg = crate::catalog::Catalog::parse(p, src, Some("staging")).unwrap();
    let all: BTreeSet<String> = ["f".to_string()].into();
    let c = guard(&stg, &prod, &all);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].production_target.contains("/srv/live"), "{c:?}");
}

/// A directory inside a bind mount of production's is production's.
#[test]
fn a_directory_inside_a_bind_mount_of_production_overlaps() {
    if cairn_repo::sys::euid() != 0 {
        eprintln!("skipped: bind mounts need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (prod, bm) = (tmp.path().join("prod"), tmp.path().join("bm"));
    std::fs::create_dir_all(prod.join("sub")).unwrap();
    std::fs::create_dir(&bm).unwrap();
    let st = std::process::Command::new("mount")
        .args(["--bind", prod.to_str().unwrap(), bm.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success(), "mount --bind");
    let r = overlap(
        &dir(bm.join("sub").to_str().unwrap()),
        &dir(prod.to_str().unwrap()),
    );
    let _ = std::process::Command::new("umount").arg(&bm).status();
    assert!(r, "bm/sub is prod/sub");
}

/// Every address of this machine's interfaces is this machine.
#[test]
fn the_machines_own_addresses_are_local() {
    let t = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let mut own = Vec::new();
    let lines: Vec<&str> = t.lines().collect();
    for w in lines.windows(2) {
        if w[1].contains("/32 host LOCAL")
            && let Some(ip) = w[0].split_whitespace().last()
            && let Ok(ip) = ip.parse::<IpAddr>()
            && !ip.is_loopback()
        {
            own.push(ip);
        }
    }
    for ip in own {
        let s = Server::resolve(Some(&ip.to_string()), 5432);
        assert!(s.local, "{ip} is this machine's");
        assert!(s.same(&Server::resolve(Some("127.0.0.1"), 5432)), "{ip}");
    }
}

#[test]
fn globs_match_as_redis_does() {
    for (p, k, want) in [
        ("*", "", true),
        ("orders:*", "orders:1", true),
        ("orders:*", "order:1", false),
        ("a?c", "abc", true),
        ("a?c", "ac", false),
        ("[ab]x", "bx", true),
        ("[^ab]x", "bx", false),
        ("[a-c]*", "c9", true),
        ("a\\*b", "a*b", true),
        ("a\\*b", "axb", false),
        ("*:*:x", "a:b:x", true),
        ("*:*:x", "a:x", false),
        ("brk_[a-]", "brk__", true),
    ] {
        assert_eq!(glob_match(p, k.as_bytes()), want, "{p} ~ {k}");
    }
}

#[test]
fn canonical_paths_have_no_trailing_slash_and_follow_symlinks() {
    assert_eq!(
        canonical(Path::new("/a/b/"), Path::new("/")),
        PathBuf::from("/a/b")
    );
    assert_eq!(
        canonical(Path::new("x/../y"), Path::new("/base")),
        PathBuf::from("/base/y")
    );
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().canonicalize().unwrap().join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink("real", tmp.path().join("rel")).unwrap();
    assert_eq!(
        canonical(&tmp.path().join("rel/new/"), Path::new("/")),
        real.join("new")
    );
}
