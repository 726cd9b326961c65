//! Golden outputs: what the read-only commands print for the committed
//! version-1 repository (`tests/fixtures/repo-v1`), checked byte for byte
//! against `tests/golden/*`. Field names, order and wording are part of the
//! interface: a change to them shows up here as a deliberate diff.
//!
//! `CAIRN_BLESS=1 cargo test --test cli golden` rewrites the files after a
//! deliberate change (review the diff before committing it).

use std::path::{Path, PathBuf};

use super::util::Env;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

/// A copy of the fixture repository, so that the committed one is never
/// written to.
fn fixture_env() -> Env {
    let env = Env::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(fixture.join("repo-v1"))
        .arg(env.repo())
        .status()
        .unwrap();
    assert!(st.success());
    // Store times are the files' mtimes: fix them (a checkout sets them to
    // its own time), a few seconds after the snapshots' own times.
    let st = std::process::Command::new("find")
        .arg(env.repo())
        .args([
            "-exec",
            "touch",
            "-h",
            "-d",
            "2026-12-02T11:18:30Z",
            "{}",
            "+",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::copy(fixture.join("repo-v1.password"), env.path("pw")).unwrap();
    env
}

/// Compare `out` with `tests/golden/NAME` (or write it under CAIRN_BLESS).
/// The only normalisation: the scratch directory's path becomes `<TMP>`.
fn golden(env: &Env, name: &str, out: &str) {
    let out = out.replace(env.dir.path().to_str().unwrap(), "<TMP>");
    let path = golden_dir().join(name);
    if std::env::var_os("CAIRN_BLESS").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, &out).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with CAIRN_BLESS=1 to create it)",
            path.display()
        )
    });
    if want != out {
        let first = want
            .lines()
            .zip(out.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(out.lines().count()));
        panic!(
            "output differs from {} at line {}:\n--- golden\n{}\n--- now\n{}\n(if the change is deliberate, rerun with CAIRN_BLESS=1 and commit the diff)",
            path.display(),
            first + 1,
            want.lines().nth(first).unwrap_or("<end>"),
            out.lines().nth(first).unwrap_or("<end>"),
        );
    }
}

/// Run read-only `args` on the fixture with a fixed terminal width and no
/// cache; stdout must be a success.
fn out(env: &Env, args: &[&str]) -> String {
    let o = env
        .cmd()
        .arg("--no-cache")
        .args(args)
        .env("COLUMNS", "100")
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cairn {args:?}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn listings_of_the_version_1_fixture_match_their_golden_files() {
    let env = fixture_env();
    for (name, args) in [
        ("snapshots.json", &["snapshots", "--json"][..]),
        ("snapshots.txt", &["snapshots"][..]),
        (
            "snapshots-tag.json",
            &["snapshots", "--tag", "first", "--json"][..],
        ),
        ("ls-second.json", &["ls", "--json", "eff31f6d"][..]),
        ("ls-second.txt", &["ls", "eff31f6d"][..]),
        (
            "ls-dump.json",
            &["ls", "--json", "--service", "orders-db", "latest"][..],
        ),
        ("key-list.json", &["key", "list", "--json"][..]),
        ("diff.txt", &["diff", "45aed33a", "eff31f6d"][..]),
        ("diff.json", &["diff", "45aed33a", "eff31f6d", "--json"][..]),
        (
            "diff-metadata.txt",
            &["diff", "--metadata", "45aed33a", "eff31f6d"][..],
        ),
        ("find.txt", &["find", "*.txt", "config.ini"][..]),
        ("find.json", &["find", "*.txt", "--json"][..]),
        (
            "rewrite-dry-run.json",
            &["rewrite", "--exclude", "config.ini", "--dry-run", "--json"][..],
        ),
        (
            "snapshots-grouped.json",
            &[
                "snapshots",
                "--group-by",
                "host,paths",
                "--latest",
                "1",
                "--json",
            ][..],
        ),
        ("stats.json", &["stats", "--json"][..]),
        ("cat-config.json", &["cat", "config"][..]),
        ("check.json", &["check", "--json"][..]),
        ("check.txt", &["check"][..]),
        (
            "forget-dry-run.json",
            &["forget", "--keep-last", "1", "--dry-run", "--json"][..],
        ),
    ] {
        golden(&env, name, &out(&env, args));
    }
}
