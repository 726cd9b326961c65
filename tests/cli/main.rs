//! End-to-end tests of the `cairn` binary. Each test names what it guards.

mod check;
mod concurrent;
mod faults;
mod golden;
mod hostile;
mod mount;
mod parity;
mod protocol;
mod s3;
mod stack;
mod stack_hostile;
mod stack_proof;
mod stack_sqlite;
mod trees;
mod util;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use util::{CHEAP_KDF, Env, assert_same_tree, dir_size, prng, walk};

const MAX_CHUNK: usize = 4 * 1024 * 1024;

fn restored(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").unwrap())
}

fn set_mtime(p: &Path, secs: u64, nanos: u32) {
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
        .unwrap();
}

/// The tree of the foundation issue: every kind of file cairn must restore.
fn build_tree(src: &Path) -> u64 {
    fs::create_dir_all(src.join("many")).unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(src.join("one"), b"x").unwrap();
    fs::write(src.join("exact-max-chunk"), prng(1, MAX_CHUNK)).unwrap();
    fs::write(src.join("random-100m"), prng(2, 100 << 20)).unwrap();
    let sparse = fs::File::create(src.join("sparse-1g")).unwrap();
    sparse.set_len(1 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(&prng(3, 1 << 20), 512 << 20).unwrap();
    drop(sparse);
    std::os::unix::fs::symlink("one", src.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", src.join("link-dangling")).unwrap();
    fs::write(
        src.join(OsStr::from_bytes(b"not-utf8-\xff\xfe")),
        b"bytes name",
    )
    .unwrap();
    fs::write(src.join("Grüße-日本語-🎉.txt"), "unicode name").unwrap();
    fs::write(src.join("mode-751"), b"mode").unwrap();
    fs::set_permissions(src.join("mode-751"), fs::Permissions::from_mode(0o751)).unwrap();
    set_mtime(&src.join("one"), 1_000_000_000, 123_456_789);
    let mut files = 0;
    for d in 0..10 {
        let dir = src.join("many").join(format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for i in 0..1000 {
            fs::write(
                dir.join(format!("f{i:04}")),
                format!("small file {d}/{i}\n").repeat(1 + i % 7),
            )
            .unwrap();
            files += 1;
        }
    }
    files + 8
}

#[test]
fn every_kind_of_file_restores_byte_identical_and_unchanged_rebackup_reads_nothing() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    let files = build_tree(&src);

    let first = env.json(&["backup", src.to_str().unwrap(), "--service", "files"]);
    assert_eq!(first["summary"]["files_new"], files);

    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let out = restored(&target, &src);
    assert_same_tree(&src, &out);
    let sparse = fs::metadata(out.join("sparse-1g")).unwrap();
    assert_eq!(sparse.len(), 1 << 30);
    assert!(
        sparse.blocks() * 512 <= 4 << 20,
        "sparse file restored with {} bytes allocated",
        sparse.blocks() * 512
    );

    // Second backup of the unchanged tree: no file content read, < 100 KiB added.
    let before = dir_size(&env.repo());
    let second = env.json(&["backup", src.to_str().unwrap(), "--service", "files"]);
    let added = dir_size(&env.repo()) - before;
    assert_eq!(second["summary"]["bytes_read"], 0, "{second}");
    assert_eq!(second["summary"]["files_unchanged"], files);
    assert_eq!(second["summary"]["files_new"], 0);
    assert_eq!(second["summary"]["files_changed"], 0);
    assert_eq!(second["parent"], first["id"]);
    assert!(
        added < 100 * 1024,
        "unchanged re-backup added {added} bytes"
    );

    // A changed file is read again, the rest still is not.
    fs::write(src.join("one"), b"y").unwrap();
    let third = env.json(&["backup", src.to_str().unwrap(), "--service", "files"]);
    assert_eq!(third["summary"]["files_changed"], 1);
    assert_eq!(third["summary"]["bytes_read"], 1);
}

#[test]
fn same_stream_twice_adds_almost_nothing_and_a_middle_edit_adds_little() {
    let env = Env::new();
    env.init(&[]);
    let size = 1usize << 30;
    let mut data = prng(10, size);
    env.backup_stdin(&data, "dump.sql");
    let s1 = dir_size(&env.repo());
    env.backup_stdin(&data, "dump.sql");
    let s2 = dir_size(&env.repo());
    assert!(
        s2 - s1 < 1 << 20,
        "identical stream added {} bytes",
        s2 - s1
    );

    let edit = size * 3 / 100;
    let start = size / 2 - edit / 2;
    data[start..start + edit].copy_from_slice(&prng(11, edit));
    env.backup_stdin(&data, "dump.sql");
    let s3 = dir_size(&env.repo());
    assert!(
        ((s3 - s2) as f64) < size as f64 * 0.10,
        "3% edit added {} bytes ({:.1}% of the stream)",
        s3 - s2,
        (s3 - s2) as f64 * 100.0 / size as f64
    );
    eprintln!(
        "stream dedup: first 1 GiB -> {s1} bytes; same stream again adds {} bytes; 3% middle edit adds {} bytes ({:.2}%)",
        s2 - s1,
        s3 - s2,
        (s3 - s2) as f64 * 100.0 / size as f64
    );
    let out = env
        .cmd()
        .args(["dump", "latest", "/dump.sql"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout == data, "dumped stream differs from the input");
}

#[test]
fn wrong_password_is_reported() {
    let env = Env::new();
    env.init(&[]);
    fs::write(env.path("pw"), "wrong").unwrap();
    let o = env.run(&["snapshots"]);
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("wrong password"), "stderr: {err}");
}

#[test]
fn missing_repository_is_reported() {
    let env = Env::new();
    let o = env.run(&["snapshots"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no cairn repository"));
}

fn packs(repo: &Path) -> Vec<PathBuf> {
    walk(&repo.join("data"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect()
}

#[test]
fn flipped_byte_in_any_pack_fails_restore_and_names_the_file() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("alpha.bin"), prng(20, 700_000)).unwrap();
    fs::write(src.join("dir/beta.bin"), prng(21, 900_000)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let pristine = env.path("pristine");
    copy_dir(&env.repo(), &pristine);
    let all = packs(&env.repo());
    assert_eq!(all.len(), 2, "one data pack and one tree pack");
    // The data pack is the large one.
    let data_pack = all
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    for pack in &all {
        let len = fs::metadata(pack).unwrap().len();
        for pos in [5, 20, 90, 200, len / 2, len - 1] {
            fs::remove_dir_all(env.repo()).unwrap();
            copy_dir(&pristine, &env.repo());
            let mut bytes = fs::read(pack).unwrap();
            bytes[pos as usize] ^= 0x10;
            fs::write(pack, &bytes).unwrap();
            let target = env.path("t");
            let _ = fs::remove_dir_all(&target);
            let o = env.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "flip at {pos} of {pack:?}: {err}");
            let pack_name = pack.file_name().unwrap().to_str().unwrap();
            if pack == &data_pack {
                // Data damage names the files whose content is affected.
                assert!(
                    err.contains("alpha.bin") || err.contains("beta.bin"),
                    "flip at {pos} of the data pack does not name a file: {err}"
                );
            } else {
                // Tree damage names the directory whose listing is lost and the pack.
                assert!(
                    err.contains("the listing of directory /") && err.contains(pack_name),
                    "flip at {pos} of the tree pack does not name the directory: {err}"
                );
            }
        }
    }
}

/// A repository with two backups of `src`: first `big.bin` (`len` bytes of
/// `prng(seed, ..)`), then also `small.txt`; returns the largest pack, the
/// one holding `big.bin`.
fn big_then_small_backups(seed: u64, len: usize) -> (Env, PathBuf, PathBuf) {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big.bin"), prng(seed, len)).unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    fs::write(src.join("small.txt"), "intact").unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let data_pack = packs(&env.repo())
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    (env, src, data_pack)
}

/// With a damaged data chunk, restore still writes every intact file; the
/// damaged one is named and kept only as NAME.damaged; exit 1, or 3 with
/// --ignore-damaged.
#[test]
fn restore_keeps_the_intact_files_and_marks_the_damaged_one() {
    let (env, src, data_pack) = big_then_small_backups(24, 6 << 20);
    let mut bytes = fs::read(&data_pack).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x01;
    fs::write(&data_pack, &bytes).unwrap();
    for (flag, code) in [(None, 1), (Some("--ignore-damaged"), 3)] {
        let target = env.path(&format!("t{code}"));
        let mut args = vec!["restore", "latest", "--target", target.to_str().unwrap()];
        args.extend(flag);
        let o = env.run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{flag:?}: {err}");
        assert!(err.contains("big.bin") && err.contains("kept as"), "{err}");
        let r = restored(&target, &src);
        assert_eq!(fs::read_to_string(r.join("small.txt")).unwrap(), "intact");
        assert!(
            !r.join("big.bin").exists(),
            "a damaged file passes for a good one"
        );
        assert!(r.join("big.bin.damaged").exists());
    }
}

/// A data pack cut short: the restore reads it window by window, reports
/// the file whose chunks lie past the cut and the pack, writes the rest.
#[test]
fn restore_from_a_truncated_pack_names_it_and_keeps_the_intact_files() {
    let (env, src, data_pack) = big_then_small_backups(25, 10 << 20);
    let bytes = fs::read(&data_pack).unwrap();
    assert!(bytes.len() > 9 << 20, "one pack holds big.bin");
    fs::write(&data_pack, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let target = env.path("t");
    let o = env.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let name = data_pack.file_name().unwrap().to_str().unwrap();
    assert!(err.contains("big.bin") && err.contains(name), "{err}");
    assert!(err.contains("shorter than"), "{err}");
    let r = restored(&target, &src);
    assert_eq!(fs::read_to_string(r.join("small.txt")).unwrap(), "intact");
    assert!(!r.join("big.bin").exists());
    assert!(r.join("big.bin.damaged").exists());
}

#[test]
fn truncated_index_names_the_object() {
    let env = Env::new();
    env.init(&[]);
    env.backup_stdin(b"some data", "x");
    let idx = walk(&env.repo().join("index")).pop().unwrap();
    let b = fs::read(&idx).unwrap();
    fs::write(&idx, &b[..b.len() / 2]).unwrap();
    let o = env.run(&[
        "restore",
        "latest",
        "--target",
        env.path("t").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let name = idx.file_name().unwrap().to_str().unwrap();
    assert!(
        err.contains(&format!("index/{name}")) && err.contains("corrupted"),
        "{err}"
    );
}

#[test]
fn failing_dump_command_writes_no_snapshot() {
    let env = Env::new();
    env.init(&[]);
    let o = env.run(&[
        "backup",
        "--stdin-from-command",
        "--",
        "sh",
        "-c",
        "echo partial; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no snapshot was written"));
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0);
    env.ok(&[
        "backup",
        "--stdin-from-command",
        "--stdin-name",
        "d.sql",
        "--",
        "sh",
        "-c",
        "echo complete",
    ]);
    assert_eq!(env.ok(&["dump", "latest", "d.sql"]), "complete\n");
}

#[test]
fn four_concurrent_backups_all_restore_byte_identical() {
    let env = Env::new();
    env.init(&[]);
    let shared = prng(30, 6 << 20);
    let mut srcs = Vec::new();
    for i in 0..4u64 {
        let s = env.path(&format!("src{i}"));
        fs::create_dir_all(&s).unwrap();
        fs::write(s.join("shared.bin"), &shared).unwrap();
        fs::write(s.join("own.bin"), prng(31 + i, 5 << 20)).unwrap();
        for k in 0..200 {
            fs::write(s.join(format!("small{k}")), format!("{i}-{k}")).unwrap();
        }
        srcs.push(s);
    }
    let children: Vec<_> = srcs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            env.cmd()
                .args([
                    "backup",
                    s.to_str().unwrap(),
                    "--service",
                    &format!("svc{i}"),
                    "--json",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 4);
    for (i, s) in srcs.iter().enumerate() {
        let t = env.path(&format!("t{i}"));
        env.ok(&[
            "restore",
            "latest",
            "--service",
            &format!("svc{i}"),
            "--target",
            t.to_str().unwrap(),
        ]);
        assert_same_tree(s, &restored(&t, s));
    }
}

#[test]
fn restore_include_and_overwrite_rules() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(src.join("a/b/keep.txt"), "keep").unwrap();
    fs::write(src.join("other.txt"), "other").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let t = env.path("t");
    let inc = format!("{}/a", src.display());
    env.ok(&[
        "restore",
        "latest",
        "--target",
        t.to_str().unwrap(),
        "--include",
        &inc,
    ]);
    let out = restored(&t, &src);
    assert_eq!(
        fs::read_to_string(out.join("a/b/keep.txt")).unwrap(),
        "keep"
    );
    assert!(!out.join("other.txt").exists());
    // Non-empty target refused without --overwrite.
    let o = env.run(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    fs::write(out.join("a/b/keep.txt"), "changed").unwrap();
    env.ok(&[
        "restore",
        "latest",
        "--target",
        t.to_str().unwrap(),
        "--overwrite",
    ]);
    assert_same_tree(&src, &out);
}

fn key_id(keys: &serde_json::Value, current: bool) -> String {
    let k = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == current);
    k.unwrap()["id"].as_str().unwrap().to_string()
}

#[test]
fn keys_can_be_added_changed_and_removed() {
    let env = Env::new();
    env.init(&[]);
    fs::write(env.path("pw2"), "second password").unwrap();
    let pw2 = env.path("pw2");
    let mut add = vec!["key", "add", "--new-password-file", pw2.to_str().unwrap()];
    add.extend_from_slice(&CHEAP_KDF);
    env.ok(&add);
    let keys = env.json(&["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    // The second password opens the repository.
    assert!(
        env.run_with_password("pw2", &["snapshots"])
            .status
            .success()
    );
    // The key in use cannot be removed; the other can.
    let current = key_id(&keys, true);
    assert_eq!(env.run(&["key", "remove", &current]).status.code(), Some(1));
    env.ok(&["key", "remove", &key_id(&keys, false)]);
    assert!(
        !env.run_with_password("pw2", &["snapshots"])
            .status
            .success()
    );
    // passwd replaces the key in use.
    fs::write(env.path("pw3"), "third").unwrap();
    let pw3 = env.path("pw3");
    let mut passwd = vec![
        "key",
        "passwd",
        "--new-password-file",
        pw3.to_str().unwrap(),
    ];
    passwd.extend_from_slice(&CHEAP_KDF);
    env.ok(&passwd);
    assert!(!env.run(&["snapshots"]).status.success());
    assert!(
        env.run_with_password("pw3", &["snapshots"])
            .status
            .success()
    );
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Unreadable sources are skipped with a warning naming them, the snapshot is
/// still written with everything else, and the exit code is 3.
#[test]
fn unreadable_file_is_skipped_with_exit_code_3() {
    let env = Env::new();
    // Run as an unprivileged user: root reads files whatever their mode.
    let unprivileged = |c: &mut std::process::Command| -> std::process::Command {
        let is_root = util::euid() == 0;
        let mut n = if is_root {
            let mut n = std::process::Command::new("setpriv");
            n.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(c.get_program());
            n
        } else {
            std::process::Command::new(c.get_program())
        };
        n.args(c.get_args());
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => n.env(k, v),
                None => n.env_remove(k),
            };
        }
        n
    };
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(env.path("pw"), fs::Permissions::from_mode(0o644)).unwrap();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(src.join("readable.txt"), "fine").unwrap();
    fs::write(src.join("secret.txt"), "hidden").unwrap();
    fs::set_permissions(src.join("readable.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(src.join("secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    let mut init = vec!["init"];
    init.extend_from_slice(&CHEAP_KDF);
    let o = unprivileged(env.cmd().args(init)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = unprivileged(env.cmd().args(["backup", src.to_str().unwrap()]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("secret.txt") && err.contains("Permission denied"),
        "{err}"
    );
    let o = unprivileged(env.cmd().args(["ls", "latest"]))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(listing.contains("readable.txt"), "{listing}");
    assert!(!listing.contains("secret.txt"), "{listing}");
}

#[test]
fn repository_of_a_newer_format_version_is_refused_by_name() {
    let env = Env::new();
    env.init(&[]);
    let cfg = env.repo().join("config");
    let mut b = fs::read(&cfg).unwrap();
    b[8] = 2; // format version 2
    fs::write(&cfg, b).unwrap();
    let o = env.run(&["snapshots"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("config needs a newer cairn") && err.contains("version 2"),
        "{err}"
    );
}

#[test]
fn ls_below_a_path_and_cat_decode_objects() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("a")).unwrap();
    fs::write(src.join("a/inner.txt"), "1").unwrap();
    fs::write(src.join("outer.txt"), "2").unwrap();
    std::os::unix::fs::symlink("a/inner.txt", src.join("ln")).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let below = env.ok(&["ls", "latest", &format!("{}/a", src.display())]);
    assert!(below.contains("a/inner.txt"), "{below}");
    assert!(!below.contains("outer.txt"), "{below}");
    let all = env.json(&["ls", "latest"]);
    let ln = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"].as_str().unwrap().ends_with("/ln"))
        .unwrap();
    assert_eq!(ln["type"], "symlink");
    assert_eq!(ln["target"], "a/inner.txt");
    let cfg = env.json(&["cat", "config"]);
    assert_eq!(cfg["chunk_avg"], 1 << 20);
    assert_eq!(cfg["zstd_level"], 3);
    let snap = env.json(&["cat", "snapshot", "latest"]);
    let tree = env.json(&["cat", "tree", snap["tree"].as_str().unwrap()]);
    assert_eq!(
        tree.as_array().unwrap().len(),
        1,
        "root holds the first path component"
    );
    assert_eq!(
        env.ok(&["dump", "latest", &format!("{}/outer.txt", src.display())]),
        "2"
    );
}

#[test]
fn forget_keeps_by_rule_respects_protection_and_dry_run() {
    let env = Env::new();
    env.init(&[]);
    for i in 0..4 {
        env.backup_stdin(format!("v{i}").as_bytes(), "f");
    }
    let snaps = env.json(&["snapshots"]);
    let ids: Vec<String> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    // Protect the oldest.
    env.ok(&["tag", &ids[0], "--protect"]);
    let dry = env.json(&["forget", "--keep-last", "2", "--dry-run"]);
    let rows = dry["groups"][0]["snapshots"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows.iter().filter(|r| r["keep"] == true).count(),
        3,
        "{dry}"
    );
    assert!(
        rows.iter()
            .any(|r| r["reasons"] == serde_json::json!(["protected"])),
        "{dry}"
    );
    assert_eq!(
        env.json(&["snapshots"]).as_array().unwrap().len(),
        4,
        "dry run removed something"
    );
    env.ok(&["forget", "--keep-last", "2"]);
    let left = env.json(&["snapshots"]);
    assert_eq!(left.as_array().unwrap().len(), 3);
    // Protection is a field of its own, not a tag among the user's (#21).
    assert!(
        left.as_array()
            .unwrap()
            .iter()
            .any(|s| s["protected"] == serde_json::json!(true))
    );
    assert!(left.as_array().unwrap().iter().all(|s| {
        !s["tags"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("cairn:protected"))
    }));
    // No rule: nothing removed, and it says so.
    let o = env.run(&["forget"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no keep rule"));
    // By id; a protected one is refused.
    let newest = left.as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.ok(&["forget", &newest]);
    let protected_id = env.json(&["snapshots"]).as_array().unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(env.run(&["forget", &protected_id]).status.code(), Some(1));
    // The remaining snapshots still restore.
    assert_eq!(env.ok(&["dump", "latest", "f"]), "v2");
}

#[test]
fn forget_and_two_phase_prune_shrink_to_a_fresh_backup_of_the_kept_data() {
    let env = Env::new();
    env.init(&[]);
    let versions: Vec<Vec<u8>> = (0..3).map(|i| prng(50 + i, 24 << 20)).collect();
    for v in &versions {
        env.backup_stdin(v, "db.dump");
    }
    let full = dir_size(&env.repo());
    env.ok(&["forget", "--keep-last", "1"]);
    // Phase 1 marks, deletes nothing.
    let p1 = env.json(&["prune"]);
    assert!(p1["packs_marked"].as_u64().unwrap() >= 2, "{p1}");
    assert_eq!(p1["packs_deleted"], 0);
    assert!(dir_size(&env.repo()) >= full);
    // Once the grace period has passed (here: 0s), phase 2 deletes.
    let p2 = env.json(&["prune", "--keep-delete", "0s"]);
    assert!(p2["packs_deleted"].as_u64().unwrap() >= 2, "{p2}");
    let pruned = dir_size(&env.repo());
    // A fresh repository holding only the kept data.
    let fresh = Env::new();
    fresh.init(&[]);
    fresh.backup_stdin(&versions[2], "db.dump");
    let fresh_size = dir_size(&fresh.repo());
    assert!(
        (pruned as f64) <= fresh_size as f64 * 1.05,
        "pruned repository {pruned} bytes vs fresh {fresh_size} bytes"
    );
    eprintln!("prune: {full} -> {pruned} bytes; fresh backup of the kept data: {fresh_size} bytes");
    assert_eq!(
        env.cmd()
            .args(["dump", "latest", "db.dump"])
            .output()
            .unwrap()
            .stdout,
        versions[2]
    );
}
