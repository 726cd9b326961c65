//! What a restic user reaches for in the first week (#21): filters on every
//! command that takes a snapshot, `latest` of this host, quiet runs,
//! version, completions and manual pages, stable JSON.

use std::fs;

use super::util::{CHEAP_KDF, Env};

/// A repository with a directory backed up three times: as this host
/// (tags `daily`), as host `elsewhere` (tag `weekly`, later), and as
/// service `orders-db` from `elsewhere` (latest of all).
fn fleet() -> (Env, String, String, String) {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "mine").unwrap();
    let src_s = src.to_str().unwrap().to_string();
    let mine = env.json(&["backup", &src_s, "--tag", "daily"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    fs::write(src.join("f"), "theirs").unwrap();
    let theirs = env.json(&["backup", &src_s, "--host", "elsewhere", "--tag", "weekly"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = env
        .cmd()
        .args(["backup", "--stdin", "--stdin-name", "db.sql"])
        .args(["--service", "orders-db", "--host", "elsewhere", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"dump")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(o.status.success());
    let db: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    (env, mine, theirs, db["id"].as_str().unwrap().to_string())
}

#[test]
fn latest_is_this_hosts_latest_unless_a_host_service_or_all_hosts_is_given() {
    let (env, mine, theirs, db) = fleet();
    let ls_latest = |extra: &[&str]| {
        let mut a = vec!["ls", "latest"];
        a.extend_from_slice(extra);
        env.ok(&a)
    };
    // `latest` is this host's although another host's is newer.
    let t = env.path("t");
    env.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    let f = t.join(env.path("src/f").strip_prefix("/").unwrap());
    assert_eq!(fs::read_to_string(&f).unwrap(), "mine");
    // Naming the host, or all hosts, reaches the others.
    assert!(ls_latest(&["--host", "elsewhere"]).contains("db.sql"));
    assert!(ls_latest(&["--all-hosts"]).contains("db.sql"));
    assert!(ls_latest(&["--service", "orders-db"]).contains("db.sql"));
    // `tag latest` changes this host's snapshot and no other.
    env.ok(&["tag", "latest", "--add", "checked"]);
    let snaps = env.json(&["snapshots"]);
    let tagged: Vec<&serde_json::Value> = snaps
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["tags"].as_array().unwrap().contains(&"checked".into()))
        .collect();
    assert_eq!(tagged.len(), 1, "{snaps}");
    assert_ne!(tagged[0]["hostname"], "elsewhere");
    assert!(
        snaps
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == theirs.as_str() || s["id"] == db.as_str()),
        "the other host's snapshots are untouched"
    );
    let _ = mine;
}

#[test]
fn latest_with_no_snapshot_of_this_host_names_whose_latest_there_is() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    env.ok(&["backup", src.to_str().unwrap(), "--host", "elsewhere"]);
    let o = env.run(&["ls", "latest"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no snapshot of this host")
            && err.contains("\"elsewhere\"")
            && err.contains("--all-hosts"),
        "{err}"
    );
    env.ok(&["ls", "latest", "--all-hosts"]);
    // A path that the snapshot does not hold is an error naming it.
    let o = env.run(&["ls", "latest", "--all-hosts", "/no/such/path"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no/such"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn tag_and_path_filters_narrow_every_command_that_takes_a_snapshot() {
    let (env, mine, theirs, _db) = fleet();
    let src = env.path("src");
    let src_s = src.to_str().unwrap();
    // --tag picks among hosts' snapshots (with --all-hosts for latest).
    let dump = env.ok(&[
        "dump",
        "latest",
        "--all-hosts",
        "--tag",
        "weekly",
        &format!("{src_s}/f"),
    ]);
    assert_eq!(dump, "theirs");
    let dump = env.ok(&["dump", "latest", "--tag", "daily", &format!("{src_s}/f")]);
    assert_eq!(dump, "mine");
    // --path: only snapshots of that path.
    let out = env.ok(&["ls", "latest", "--all-hosts", "--path", src_s]);
    assert!(out.contains("/f"), "{out}");
    let o = env.run(&["ls", "latest", "--all-hosts", "--path", "/nowhere"]);
    assert_eq!(o.status.code(), Some(1));
    // snapshots --tag/--path/--host.
    let n = |args: &[&str]| env.json(args).as_array().unwrap().len();
    assert_eq!(n(&["snapshots", "--tag", "weekly"]), 1);
    assert_eq!(n(&["snapshots", "--path", src_s]), 2);
    assert_eq!(n(&["snapshots", "--host", "elsewhere"]), 2);
    // forget by id prefix with a filter that excludes it finds nothing.
    let o = env.run(&["forget", &mine[..8], "--tag", "weekly"]);
    assert_eq!(o.status.code(), Some(1));
    // forget by rules only within the filter.
    env.ok(&[
        "forget",
        "--keep-last",
        "1",
        "--host",
        "elsewhere",
        "--tag",
        "weekly",
    ]);
    assert_eq!(
        n(&["snapshots"]),
        3,
        "one snapshot per group: nothing to remove"
    );
    let _ = theirs;
}

#[test]
fn quiet_backup_restore_and_forget_print_nothing_but_errors() {
    let env = Env::new();
    let mut init = vec!["-q", "init"];
    init.extend_from_slice(&CHEAP_KDF);
    let o = env.run(&init);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "", "init -q");
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "x").unwrap();
    for args in [
        vec!["-q", "backup", src.to_str().unwrap()],
        vec!["backup", "-q", src.to_str().unwrap()],
        vec![
            "-q",
            "restore",
            "latest",
            "--target",
            env.path("t").to_str().unwrap(),
        ],
        vec!["-q", "forget", "--keep-last", "1"],
        vec!["-q", "check"],
    ] {
        let o = env.run(&args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout), "", "{args:?} printed");
        assert_eq!(String::from_utf8_lossy(&o.stderr), "", "{args:?} printed");
    }
    // An error still reaches stderr, with a non-zero exit.
    let o = env.run(&["-q", "restore", "ffffffff", "--target", "/tmp/x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no snapshot matches"));
    // A listing under -q is still the listing; --json under -q is still JSON.
    assert!(env.ok(&["-q", "snapshots"]).contains("1 snapshots"));
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["-q", "backup", src.to_str().unwrap(), "--json"])).unwrap();
    assert!(v["id"].is_string());
}

#[test]
fn version_names_the_commit_and_the_format_versions() {
    let env = Env::new();
    let v = env.ok(&["--version"]);
    assert!(v.starts_with("cairn "), "{v}");
    assert!(
        v.contains("commit ") && v.contains("repository format 1"),
        "{v}"
    );
    let j: serde_json::Value = serde_json::from_str(&env.ok(&["version", "--json"])).unwrap();
    let commit = j["commit"].as_str().unwrap();
    assert!(!commit.is_empty(), "{j}");
    // Built from a git checkout: the commit is the checkout's.
    let head = std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .unwrap();
    if head.status.success() && std::env::var_os("CAIRN_COMMIT").is_none() {
        assert_eq!(commit, String::from_utf8_lossy(&head.stdout).trim(), "{j}");
    }
    assert_eq!(j["formats_written"]["config"], 1);
    assert_eq!(j["formats_written"]["tree"], 2);
    assert_eq!(j["tree_versions_read"], serde_json::json!([1, 2]));
}

#[test]
fn bash_completion_loads_and_completes_subcommands_and_options() {
    let env = Env::new();
    let script = env.ok(&["completion", "bash"]);
    fs::write(env.path("c.bash"), &script).unwrap();
    // As bash calls a completion function: the command, the word being
    // completed and the one before it.
    let complete = |words: &str, cword: usize| {
        let w: Vec<&str> = words.split(' ').collect();
        let o = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {} && COMP_WORDS=({words}) && COMP_CWORD={cword} && COMP_LINE='{words}' && COMP_POINT=${{#COMP_LINE}} && _cairn cairn {} {} && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                env.path("c.bash").display(),
                w[cword],
                w[cword - 1]
            ))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let subs = complete("cairn ba", 1);
    assert_eq!(subs.trim(), "backup", "{subs}");
    let subs = complete("cairn s", 1);
    assert!(
        subs.lines().any(|l| l == "snapshots") && subs.lines().any(|l| l == "stack"),
        "{subs}"
    );
    let opts = complete("cairn restore --ta", 2);
    assert!(opts.lines().any(|l| l == "--target"), "{opts}");
    for shell in ["zsh", "fish"] {
        assert!(!env.ok(&["completion", shell]).is_empty());
    }
}

#[test]
fn man_pages_are_written_for_every_command() {
    let env = Env::new();
    let dir = env.path("man");
    env.ok(&["man", "--dir", dir.to_str().unwrap()]);
    for page in [
        "cairn.1",
        "cairn-backup.1",
        "cairn-restore.1",
        "cairn-stack.1",
        "cairn-stack-restore.1",
        "cairn-key-add.1",
    ] {
        let text = fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is not a manual page");
    }
    let backup = fs::read_to_string(dir.join("cairn-backup.1")).unwrap();
    assert!(
        backup.contains("exclude"),
        "the backup page lists its options"
    );
    // Without --dir: the main page on stdout.
    assert!(env.ok(&["man"]).contains(".TH"));
}

#[test]
fn forget_json_groups_are_objects_and_config_times_are_rfc3339() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    env.ok(&["backup", src.to_str().unwrap(), "--tag", "a"]);
    env.ok(&["backup", src.to_str().unwrap(), "--tag", "a"]);
    let v = env.json(&[
        "forget",
        "--keep-last",
        "1",
        "--dry-run",
        "--group-by",
        "host,paths,tags",
    ]);
    let g = &v["groups"][0]["group"];
    assert!(g.is_object(), "{v}");
    assert_eq!(
        g["paths"],
        serde_json::json!([src.to_str().unwrap()]),
        "{v}"
    );
    assert_eq!(g["tags"], serde_json::json!(["a"]), "{v}");
    assert!(
        g["hostname"].is_string() && g.get("service").is_none(),
        "{v}"
    );
    let c: serde_json::Value = serde_json::from_str(&env.ok(&["cat", "config"])).unwrap();
    let created = c["created"].as_str().unwrap();
    assert!(
        created.len() == 30 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
        "{created}"
    );
}

#[test]
fn protection_is_a_field_and_a_mark_not_a_tag_in_the_table() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    env.ok(&["backup", src.to_str().unwrap(), "--tag", "keepme"]);
    env.ok(&["tag", "latest", "--protect"]);
    let v = env.json(&["snapshots"]);
    assert_eq!(v[0]["protected"], true, "{v}");
    assert_eq!(v[0]["tags"], serde_json::json!(["keepme"]), "{v}");
    let table = env.ok(&["snapshots"]);
    assert!(!table.contains("cairn:protected"), "{table}");
    let row = table.lines().nth(1).unwrap();
    assert_eq!(row.as_bytes()[8], b'*', "{table}");
    assert!(table.contains("* protected from forget"), "{table}");
}

#[test]
fn dump_of_a_directory_is_a_tar_that_gnu_tar_extracts_to_the_same_tree() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    let deep = src.join("d".repeat(60)).join("e".repeat(60));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("long-named-file.txt"), "deep").unwrap();
    fs::write(src.join("big"), super::util::prng(3, 3 << 20)).unwrap();
    fs::write(src.join("a"), "linked").unwrap();
    fs::hard_link(src.join("a"), src.join("b")).unwrap();
    std::os::unix::fs::symlink("a".repeat(150), src.join("long-link")).unwrap();
    std::os::unix::fs::symlink("a", src.join("short-link")).unwrap();
    let st = std::process::Command::new("setfattr")
        .args(["-n", "user.note", "-v", "kept"])
        .arg(src.join("a"))
        .status()
        .unwrap();
    assert!(st.success());
    env.ok(&["backup", src.to_str().unwrap()]);
    // To a terminal it refuses; through a pipe it writes tar.
    let o = env
        .cmd()
        .args(["dump", "latest", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fs::write(env.path("out.tar"), &o.stdout).unwrap();
    let dest = env.path("dest");
    fs::create_dir_all(&dest).unwrap();
    let st = std::process::Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(env.path("out.tar"))
        .arg("-C")
        .arg(&dest)
        .status()
        .unwrap();
    assert!(st.success());
    super::util::assert_same_tree(&src, &dest.join("src"));
    let (a, b) = (
        fs::metadata(dest.join("src/a")).unwrap(),
        fs::metadata(dest.join("src/b")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "the hard link came back as a link");
    let x = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", "user.note"])
        .arg(dest.join("src/a"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&x.stdout), "kept");
    // A single file with --archive tar; the whole snapshot from `/`.
    let o = env
        .cmd()
        .args(["dump", "--archive", "tar", "latest"])
        .arg(src.join("a"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let list = std::process::Command::new("tar")
        .arg("-t")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&o.stdout)?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&list.stdout), "a\n");
    let o = env.cmd().args(["dump", "latest", "/"]).output().unwrap();
    assert!(o.status.success());
    assert!(o.stdout.len() > 3 << 20);
}

#[test]
fn rewrite_removes_a_secret_from_every_snapshot_and_prune_reclaims_it() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("conf")).unwrap();
    fs::write(src.join("keep.bin"), super::util::prng(1, 1 << 20)).unwrap();
    fs::write(src.join("conf/secret.key"), super::util::prng(2, 3 << 20)).unwrap();
    let s = src.to_str().unwrap();
    env.ok(&["backup", s]);
    fs::write(src.join("later.txt"), "day 2").unwrap();
    env.ok(&["backup", s]);
    env.ok(&["tag", "latest", "--protect"]);
    // A dry run says what would go and writes nothing.
    let before = super::util::dir_size(&env.repo());
    let dry = env.json(&["rewrite", "--exclude", "secret.key", "--dry-run"]);
    assert_eq!(dry["snapshots"].as_array().unwrap().len(), 2, "{dry}");
    assert!(dry["snapshots"][0]["new"].is_null(), "{dry}");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2);
    assert_eq!(
        super::util::dir_size(&env.repo()),
        before,
        "a dry run wrote"
    );
    // The real run: copies without it; the unprotected original is
    // forgotten, the protected one kept with a warning (exit 3).
    let o = env.run(&["rewrite", "--exclude", "secret.key", "--forget", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("is protected"));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for row in r["snapshots"].as_array().unwrap() {
        assert_eq!(
            row["removed"],
            serde_json::json!([format!("{s}/conf/secret.key")]),
            "{r}"
        );
        assert!(row["new"].is_string(), "{r}");
    }
    let snaps = env.json(&["snapshots"]);
    assert_eq!(
        snaps.as_array().unwrap().len(),
        3,
        "two copies and the protected original: {snaps}"
    );
    // The copies hold everything else, byte for byte.
    let new_latest = r["snapshots"][1]["new"].as_str().unwrap();
    let t = env.path("t");
    env.ok(&["restore", new_latest, "--target", t.to_str().unwrap()]);
    let got = t.join(s.strip_prefix('/').unwrap());
    assert!(!got.join("conf/secret.key").exists());
    // The source without the secret (its directory's mtime as backed up).
    let conf_mtime = fs::metadata(src.join("conf")).unwrap().modified().unwrap();
    fs::remove_file(src.join("conf/secret.key")).unwrap();
    fs::File::open(src.join("conf"))
        .unwrap()
        .set_modified(conf_mtime)
        .unwrap();
    super::util::assert_same_tree(&src, &got);
    // Unprotect and forget the last original: prune then frees the secret.
    let orig = r["snapshots"][1]["snapshot"].as_str().unwrap();
    let t: serde_json::Value =
        serde_json::from_str(&env.ok(&["tag", orig, "--unprotect", "--json"])).unwrap();
    env.ok(&["forget", t["new"].as_str().unwrap()]);
    let o = env.run(&["find", "secret.key", "--json"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
    let full = super::util::dir_size(&env.repo());
    env.ok(&["prune", "--instant-delete"]);
    let after = super::util::dir_size(&env.repo());
    assert!(full - after > 3 << 20, "prune freed {} bytes", full - after);
    env.ok(&["check", "--read-data"]);
    // A pattern that matches nothing is a warning, not a silent success.
    let o = env.run(&["rewrite", "--exclude", "no-such-file"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("matched nothing"));
}

#[test]
fn snapshots_latest_n_per_group_and_global_options_in_their_own_help_section() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for host in ["a", "a", "a", "b", "b"] {
        env.ok(&["backup", src.to_str().unwrap(), "--host", host]);
    }
    let v = env.json(&["snapshots", "--group-by", "host", "--latest", "2"]);
    let groups = v.as_array().unwrap();
    assert_eq!(groups.len(), 2, "{v}");
    assert_eq!(
        groups[0]["group"],
        serde_json::json!({"hostname": "a"}),
        "{v}"
    );
    assert_eq!(groups[0]["snapshots"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(groups[1]["snapshots"].as_array().unwrap().len(), 2, "{v}");
    // The latest two of host a are its newest.
    let all_a: Vec<String> = env
        .json(&["snapshots", "--host", "a"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(groups[0]["snapshots"][1]["id"], all_a[2].as_str());
    // --latest alone: per host and paths, as restic.
    assert_eq!(
        env.json(&["snapshots", "--latest", "1"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let table = env.ok(&["snapshots", "--group-by", "host", "--latest", "1"]);
    assert!(
        table.contains("group host=a:") && table.contains("group host=b:"),
        "{table}"
    );
    assert!(table.contains("2 snapshots"), "{table}");
    // Help: the command's options, then the global ones under their heading.
    let help = env.ok(&["backup", "--help"]);
    let global = help
        .find("Global options:")
        .expect("a Global options section");
    assert!(help.find("--exclude").unwrap() < global, "{help}");
    assert!(help[global..].contains("--repo"), "{help}");
}

#[test]
fn backup_verbose_lists_new_changed_and_gone_files_and_dry_run_writes_nothing() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("keep"), "same").unwrap();
    fs::write(src.join("edit"), "one").unwrap();
    fs::write(src.join("d/gone"), "bye").unwrap();
    let s = src.to_str().unwrap();
    let first = env.ok(&["backup", "-v", s]);
    for f in ["keep", "edit", "d/gone"] {
        assert!(first.contains(&format!("+    {s}/{f}\n")), "{first}");
    }
    fs::write(src.join("edit"), "two, longer").unwrap();
    fs::remove_file(src.join("d/gone")).unwrap();
    fs::write(src.join("new"), super::util::prng(5, 2 << 20)).unwrap();
    // A dry run: what would be added, and nothing written.
    let before = super::util::dir_size(&env.repo());
    let dry = env.ok(&["backup", "--dry-run", "-v", s]);
    assert!(
        dry.contains(&format!("+    {s}/new\n")) && dry.contains(&format!("M    {s}/edit\n")),
        "{dry}"
    );
    assert!(!dry.contains("keep"), "{dry}");
    assert!(dry.contains("dry run: nothing was written"), "{dry}");
    let j: serde_json::Value =
        serde_json::from_str(&env.ok(&["backup", "--dry-run", s, "--json"])).unwrap();
    assert_eq!(j["dry_run"], true, "{j}");
    assert!(j["id"].is_null(), "{j}");
    assert!(
        j["summary"]["bytes_added"].as_u64().unwrap() > 2_000_000,
        "{j}"
    );
    assert_eq!(
        super::util::dir_size(&env.repo()),
        before,
        "a dry run wrote to the repository"
    );
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);
    // The real backup lists by content against its parent.
    let second = env.ok(&["backup", "-v", s]);
    assert!(second.contains(&format!("+    {s}/new\n")), "{second}");
    assert!(second.contains(&format!("M    {s}/edit\n")), "{second}");
    assert!(second.contains(&format!("-    {s}/d/gone\n")), "{second}");
    assert!(!second.contains(&format!("{s}/keep")), "{second}");
    assert!(second.contains("saved"), "{second}");
}

#[test]
fn find_matches_names_and_bounds_mtimes_across_snapshots() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    let set = |p: &std::path::Path, secs: u64| {
        fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
            .unwrap();
    };
    fs::write(src.join("etc/old.conf"), "o").unwrap();
    set(&src.join("etc/old.conf"), 1_700_000_000); // 2023-11-14
    fs::write(src.join("etc/NEW.CONF"), "n").unwrap();
    set(&src.join("etc/NEW.CONF"), 1_790_000_000); // 2026-09-21
    env.ok(&["backup", src.to_str().unwrap()]);
    fs::write(src.join("other.txt"), "x").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let hits = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["find"];
        a.extend_from_slice(args);
        let v = env.json(&a);
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["matches"].as_array().unwrap().clone())
            .map(|m| {
                m["path"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(
        hits(&["*.conf"]),
        vec!["old.conf", "old.conf"],
        "one per snapshot"
    );
    assert_eq!(hits(&["-i", "*.conf"]).len(), 4);
    assert_eq!(
        hits(&["-i", "*.conf", "--oldest", "2026-01-01"]),
        vec!["NEW.CONF", "NEW.CONF"]
    );
    assert_eq!(
        hits(&["-i", "*.conf", "--newest", "2024-01-01T00:00:00Z"]),
        vec!["old.conf", "old.conf"]
    );
    assert_eq!(
        hits(&["other.txt"]),
        vec!["other.txt"],
        "only the second snapshot has it"
    );
    let o = env.run(&["find", "x", "--oldest", "2026-02-30"]);
    assert_eq!(o.status.code(), Some(2), "a bad date is a usage error");
}

/// Found by an outside attack on #21: a group key built from lossy strings
/// put different backup sets into one group, and `forget --keep-last 1`
/// removed every snapshot of one of them.
#[test]
fn forget_never_merges_backup_sets_whose_keys_only_look_alike() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    env.init(&[]);
    let g = env.path("g");
    let (a, b) = (
        g.join(OsStr::from_bytes(b"\xff")),
        g.join(OsStr::from_bytes(b"\xfe")),
    );
    let (pq, p, q) = (
        g.join(format!("p:{}/q", g.display())),
        g.join("p"),
        g.join("q"),
    );
    for d in [&a, &b, &pq, &p, &q] {
        fs::create_dir_all(d).unwrap();
    }
    let arg = |p: &std::path::Path| p.as_os_str().to_owned();
    for _ in 0..2 {
        for set in [
            vec![arg(&a)],
            vec![arg(&b)],
            vec![arg(&pq)],
            vec![arg(&p), arg(&q)],
        ] {
            let o = env.cmd().arg("backup").args(&set).output().unwrap();
            assert!(o.status.success());
        }
        env.ok(&["backup", g.to_str().unwrap(), "--tag", "x,y"]);
        env.ok(&["backup", g.to_str().unwrap(), "--tag", "x", "--tag", "y"]);
    }
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 12);
    let v = env.json(&[
        "forget",
        "--keep-last",
        "1",
        "--group-by",
        "host,paths,tags",
    ]);
    assert_eq!(
        v["groups"].as_array().unwrap().len(),
        6,
        "six backup sets: {v}"
    );
    assert_eq!(
        env.json(&["snapshots"]).as_array().unwrap().len(),
        6,
        "one kept of each set"
    );
}

/// Found by an outside attack on #21: an empty id (a script's variable that
/// came out empty) is a prefix of every id.
#[test]
fn an_empty_snapshot_id_names_no_snapshot() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    for args in [
        vec!["forget", ""],
        vec!["forget", " "],
        vec!["tag", "", "--add", "x"],
        vec!["ls", ""],
        vec!["rewrite", "", "--exclude", "x"],
    ] {
        let o = env.run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("empty snapshot id"),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);
    // Naming one snapshot twice acts on it once.
    let id = env.json(&["snapshots"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.ok(&["forget", &id, &id[..8]]);
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0);
}

/// Found by an outside attack on #21: a file dated after 2262 made
/// `ls --json` panic (nanoseconds overflowed), and JSON times were clamped.
#[test]
fn times_past_2262_are_listed_as_they_are() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("future"), "x").unwrap();
    let st = std::process::Command::new("touch")
        .args(["-d", "2400-01-01T00:00:00Z"])
        .arg(src.join("future"))
        .status()
        .unwrap();
    assert!(st.success());
    env.ok(&["backup", src.to_str().unwrap()]);
    let ls = env.json(&["ls", "latest"]);
    let f = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"].as_str().unwrap().ends_with("/future"))
        .unwrap();
    assert_eq!(f["mtime"], "2400-01-01T00:00:00.000000000Z", "{f}");
    let found = env.json(&["find", "future"]);
    assert_eq!(
        found[0]["matches"][0]["mtime"],
        "2400-01-01T00:00:00.000000000Z"
    );
}

/// Found by an outside attack on #21: `--exclude '*'` wrote an empty
/// snapshot and forgot the original; removed directories counted 0 bytes.
#[test]
fn rewrite_refuses_to_empty_a_snapshot_and_counts_what_removed_directories_held() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::write(src.join("cache/blob"), super::util::prng(4, 1 << 20)).unwrap();
    fs::write(src.join("keep"), "k").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    for pat in ["*", "/tmp"] {
        let o = env.run(&["rewrite", "--exclude", pat, "--forget"]);
        assert_eq!(o.status.code(), Some(1), "{pat}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("empty snapshot"),
            "{pat}"
        );
    }
    assert_eq!(
        env.json(&["snapshots"]).as_array().unwrap().len(),
        1,
        "nothing forgotten"
    );
    let d = env.json(&["rewrite", "--exclude", "cache", "--dry-run"]);
    assert_eq!(d["snapshots"][0]["bytes_removed"], 1 << 20, "{d}");
}

/// Found by an outside attack on #21: `backup` recorded the host name
/// while `latest` looked for CAIRN_HOST.
#[test]
fn backup_records_cairn_host_so_latest_finds_it() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let o = env
        .cmd()
        .env("CAIRN_HOST", "web1")
        .args(["backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(env.json(&["snapshots"])[0]["hostname"], "web1");
    let o = env
        .cmd()
        .env("CAIRN_HOST", "web1")
        .args(["ls", "latest"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Found by an outside attack on #21: a non-UTF-8 extended attribute name
/// cut a directory's tar short.
#[test]
fn dump_carries_extended_attribute_names_that_are_not_utf8() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "x").unwrap();
    let st = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os; os.setxattr({:?}, b'user.\\xff', b'1')",
            src.join("f").to_str().unwrap()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    env.ok(&["backup", src.to_str().unwrap()]);
    let o = env
        .cmd()
        .args(["dump", "latest", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stdout.windows(17).any(|w| w == b"SCHILY.xattr.user"),
        "pax record written"
    );
    assert!(o.stdout.ends_with(&[0u8; 1024]), "the archive is complete");
}
