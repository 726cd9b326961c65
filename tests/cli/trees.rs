//! Faithful file trees: hard links, extended attributes, POSIX ACLs and file
//! capabilities round-trip through restore and mount; what a backup leaves
//! out; what a restore selects; forget rules that cannot remove everything
//! by accident; a version-1 repository still read.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::mount::Mounted;
use crate::util::{Env, assert_same_tree, prng};

/// Run one of getfattr/setfattr/getfacl/setfacl/getcap/setcap (installed by
/// scripts/fs-tools.sh on first use).
fn tool(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fs-tools.sh");
    let o = Command::new(script).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn restored(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").unwrap())
}

/// What getfattr (every namespace, hex values), getfacl and getcap say of
/// each entry, with the entry's own path taken out.
fn metadata_report(root: &Path, rels: &[&str], acls: bool) -> String {
    let mut out = String::new();
    for rel in rels {
        let p = root.join(rel);
        let ps = p.to_str().unwrap();
        let clean = |s: String| -> String {
            s.lines()
                .filter(|l| !l.starts_with("# file:") && !l.is_empty())
                .map(|l| l.replace(ps, "PATH"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        out += &format!("== {rel}\n");
        out += &clean(tool(&[
            "getfattr",
            "-h",
            "-d",
            "-m",
            "-",
            "-e",
            "hex",
            "--absolute-names",
            ps,
        ]));
        out += "\n";
        if !fs::symlink_metadata(&p).unwrap().file_type().is_symlink() {
            if acls {
                out += &clean(tool(&["getfacl", "-p", "-n", ps]));
                out += "\n";
            }
            out += &clean(tool(&["getcap", ps]));
            out += "\n";
        }
    }
    out
}

/// Which entries share an inode, and their link counts.
fn link_groups(root: &Path, rels: &[&str]) -> Vec<(Vec<String>, u64)> {
    let mut by_inode: BTreeMap<(u64, u64), (Vec<String>, u64)> = BTreeMap::new();
    for rel in rels {
        let md = fs::symlink_metadata(root.join(rel)).unwrap();
        let e = by_inode
            .entry((md.dev(), md.ino()))
            .or_insert((Vec::new(), md.nlink()));
        e.0.push(rel.to_string());
    }
    let mut v: Vec<_> = by_inode.into_values().collect();
    v.sort();
    v
}

/// Hard links across directories, xattrs in the user and trusted
/// namespaces (one too large to be kept in the tree), access and default
/// ACLs, a file capability, a symlink with its own xattr, a sparse file, a
/// FIFO and a device.
fn build_rich_tree(src: &Path) -> Vec<&'static str> {
    fs::create_dir_all(src.join("hl")).unwrap();
    fs::create_dir_all(src.join("other")).unwrap();
    fs::create_dir_all(src.join("acl-dir")).unwrap();
    fs::write(src.join("hl/a"), prng(41, 300_000)).unwrap();
    fs::hard_link(src.join("hl/a"), src.join("hl/b")).unwrap();
    fs::hard_link(src.join("hl/a"), src.join("other/c")).unwrap();
    fs::write(src.join("e1"), b"").unwrap();
    fs::hard_link(src.join("e1"), src.join("other/e2")).unwrap();
    fs::write(src.join("plain"), b"no attributes").unwrap();
    let a = src.join("hl/a");
    let a = a.to_str().unwrap();
    tool(&["setfattr", "-n", "user.note", "-v", "hello", a]);
    let big = format!("0x{}", "ab".repeat(2000));
    tool(&["setfattr", "-n", "trusted.big", "-v", &big, a]);
    tool(&["setfacl", "-m", "u:nobody:r", a]);
    tool(&["setcap", "cap_net_raw+ep", a]);
    let d = src.join("acl-dir");
    let d = d.to_str().unwrap();
    tool(&["setfacl", "-m", "u:nobody:rwx", d]);
    tool(&["setfacl", "-d", "-m", "u:nobody:rx", d]);
    tool(&["setfattr", "-n", "user.dir", "-v", "on a directory", d]);
    std::os::unix::fs::symlink("hl/a", src.join("sym")).unwrap();
    let s = src.join("sym");
    tool(&[
        "setfattr",
        "-h",
        "-n",
        "trusted.link",
        "-v",
        "on the link itself",
        s.to_str().unwrap(),
    ]);
    let sparse = fs::File::create(src.join("sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    sparse.write_all_at(&prng(42, 64 << 10), 4 << 20).unwrap();
    drop(sparse);
    for (args, what) in [
        (vec!["mkfifo".to_string()], "fifo"),
        (vec!["mknod".to_string(), "-m".into(), "600".into()], "null"),
    ] {
        let mut c = Command::new(&args[0]);
        c.args(&args[1..]).arg(src.join(what));
        if what == "null" {
            c.args(["c", "1", "3"]);
        }
        assert!(c.status().unwrap().success(), "{what}");
    }
    vec![
        "hl", "hl/a", "hl/b", "other", "other/c", "other/e2", "e1", "plain", "acl-dir", "sym",
        "sparse", "fifo", "null",
    ]
}

#[test]
fn hard_links_xattrs_acls_and_capabilities_round_trip_through_restore_and_mount() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    let rels = build_rich_tree(&src);
    env.ok(&["backup", src.to_str().unwrap()]);
    let out = env.path("out");
    let r = env.json(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(r["warnings"], serde_json::json!([]), "{r}");
    assert_eq!(r["hard_links"], 3, "{r}");
    let back = restored(&out, &src);
    assert_same_tree(&src, &back);
    assert_eq!(link_groups(&back, &rels), link_groups(&src, &rels));
    let want = metadata_report(&src, &rels, true);
    assert!(want.contains("trusted.big=0xabab") && want.contains("user:65534:r--"));
    assert!(want.contains("default:user:65534:r-x") && want.contains("cap_net_raw=ep"));
    assert!(want.contains("trusted.link="), "{want}");
    assert_eq!(metadata_report(&back, &rels, true), want);
    let (sb, rb) = (
        fs::metadata(src.join("sparse")).unwrap().blocks(),
        fs::metadata(back.join("sparse")).unwrap().blocks(),
    );
    assert!(
        rb <= sb + 16,
        "sparse file allocates {rb} blocks, source {sb}"
    );

    // Through the mount: the same getfattr, getfacl and getcap output, link
    // counts and inode sharing.
    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Mounted::start(&env, &mnt, &[]);
    let seen = mnt
        .join("snapshots/latest")
        .join(src.strip_prefix("/").unwrap());
    assert_eq!(
        metadata_report(&seen, &rels, true),
        metadata_report(&src, &rels, true)
    );
    assert_eq!(link_groups(&seen, &rels), link_groups(&src, &rels));
    assert_same_tree(&src, &seen);
    m.stop();
}

#[test]
fn a_tree_of_many_hard_links_restores_to_the_allocated_size_of_its_source() {
    // Like a Mesa driver directory: one large file under many names.
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("dri")).unwrap();
    fs::write(src.join("dri/libgallium.so"), prng(51, 24 << 20)).unwrap();
    for i in 0..13 {
        fs::hard_link(
            src.join("dri/libgallium.so"),
            src.join(format!("dri/driver{i}_dri.so")),
        )
        .unwrap();
    }
    fs::write(src.join("dri/other.so"), prng(52, 1 << 20)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let out = env.path("out");
    env.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    let du = |p: &Path| -> u64 {
        let o = Command::new("du")
            .arg("-s")
            .arg("-B1")
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (s, r) = (du(&src), du(&restored(&out, &src)));
    let ratio = r as f64 / s as f64;
    assert!(
        (0.95..=1.05).contains(&ratio),
        "restored tree allocates {r} bytes, its source {s} (ratio {ratio:.2})"
    );
    assert_eq!(
        fs::metadata(restored(&out, &src).join("dri/driver7_dri.so"))
            .unwrap()
            .nlink(),
        14
    );
}

#[test]
fn no_xattrs_no_acls_and_no_setuid_leave_out_what_they_name_and_say_so() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    let rels = build_rich_tree(&src);
    env.ok(&["backup", src.to_str().unwrap()]);
    let restore_with = |flag: &str| -> (PathBuf, serde_json::Value) {
        let out = env.path(&format!("out{flag}"));
        let r = env.json(&["restore", "latest", "--target", out.to_str().unwrap(), flag]);
        (restored(&out, &src), r)
    };
    let (back, _) = restore_with("--no-xattrs");
    let a = back.join("hl/a");
    let attrs = tool(&[
        "getfattr",
        "-d",
        "-m",
        "-",
        "--absolute-names",
        a.to_str().unwrap(),
    ]);
    assert!(attrs.contains("system.posix_acl_access"), "{attrs}");
    assert!(
        !attrs.contains("user.note") && !attrs.contains("trusted.big"),
        "{attrs}"
    );
    assert!(!attrs.contains("security.capability"), "{attrs}");

    let (back, _) = restore_with("--no-acls");
    let a = back.join("hl/a");
    let attrs = tool(&[
        "getfattr",
        "-d",
        "-m",
        "-",
        "--absolute-names",
        a.to_str().unwrap(),
    ]);
    assert!(!attrs.contains("posix_acl"), "{attrs}");
    assert!(
        attrs.contains("user.note") && attrs.contains("security.capability"),
        "{attrs}"
    );
    let d = back.join("acl-dir");
    assert!(!tool(&["getfacl", "-p", d.to_str().unwrap()]).contains("nobody"));

    let (back, r) = restore_with("--no-setuid");
    // Counted per entry: the capability is on one inode with three names.
    assert_eq!(r["withheld"]["capabilities"], 3, "{r}");
    assert_eq!(r["withheld"]["setuid"], 0, "{r}");
    assert_eq!(tool(&["getcap", back.join("hl/a").to_str().unwrap()]), "");
    assert_eq!(link_groups(&back, &rels), link_groups(&src, &rels));
}

#[test]
fn an_xattr_the_target_refuses_is_a_warning_naming_the_file_and_exit_3() {
    // tmpfs keeps no user.* attributes on... it does; a FAT-like target is
    // not at hand, so the restore runs as a user who may not set trusted.*.
    if crate::util::euid() != 0 {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    tool(&[
        "setfattr",
        "-n",
        "trusted.only-root",
        "-v",
        "1",
        src.join("f").to_str().unwrap(),
    ]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let out = env.path("out");
    let o = restore_as_nobody(&env, &out, "latest", &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    let f = restored(&out, &src).join("f");
    assert!(
        err.contains(&format!(
            "{}: cannot set extended attribute trusted.only-root",
            f.display()
        )),
        "{err}"
    );
    assert_eq!(fs::read(&f).unwrap(), b"x");
}

/// `cairn restore SNAPSHOT --target TARGET` run as `nobody` (setpriv), with
/// the repository and password made readable to it and `dir` (created) its
/// own.
fn restore_as_nobody(env: &Env, dir: &Path, snapshot: &str, target: &Path) -> std::process::Output {
    fs::create_dir(dir).unwrap();
    Command::new("chown")
        .arg("nobody")
        .arg(dir)
        .status()
        .unwrap();
    for p in [env.dir.path().to_path_buf(), env.repo()] {
        Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&p)
            .status()
            .unwrap();
    }
    Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(crate::util::cairn_bin())
        .args(["-r", env.repo().to_str().unwrap()])
        .args(["--password-file", env.path("pw").to_str().unwrap()])
        .args([
            "--no-cache",
            "restore",
            snapshot,
            "--target",
            target.to_str().unwrap(),
        ])
        .env_clear()
        .output()
        .unwrap()
}

/// Paths of the latest snapshot below `base`, relative to it.
fn listed(env: &Env, base: &Path) -> Vec<String> {
    let v = env.json(&["ls", "latest"]);
    let b = base.to_str().unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            e["path"]
                .as_str()
                .unwrap()
                .strip_prefix(b)
                .and_then(|r| r.strip_prefix('/'))
                .map(String::from)
        })
        .collect()
}

#[test]
fn every_exclude_option_leaves_out_what_it_names_and_nothing_else() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    for d in [
        "app/node_modules/x",
        "app/src",
        "Cache/tmp",
        "home/ann/.cache",
        "tagged",
        "flagged",
    ] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    for f in [
        "app/src/main.rs",
        "app/src/debug.LOG",
        "app/trace.log",
        "app/node_modules/x/index.js",
        "Cache/tmp/blob",
        "home/ann/.cache/c",
        "home/ann/notes",
        "tagged/data",
        "flagged/data",
    ] {
        fs::write(src.join(f), f.as_bytes()).unwrap();
    }
    fs::write(
        src.join("tagged/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n",
    )
    .unwrap();
    fs::write(src.join("flagged/.nobackup"), "skip me").unwrap();
    fs::write(src.join("big"), prng(61, 3 << 20)).unwrap();
    // Lines are trimmed as restic trims them; a byte-order mark is skipped.
    fs::write(
        env.path("excludes"),
        "\u{feff}# comment\n\n  *.log  \r\nnode_modules/\n   # indented comment\n",
    )
    .unwrap();
    fs::write(env.path("iexcludes"), "cache/\n").unwrap();
    let s = src.to_str().unwrap();
    let home = format!("{s}/home/*/.cache");
    let anchored = format!("{s}/app/src/**");
    let (exf, iexf) = (env.path("excludes"), env.path("iexcludes"));
    let (exf, iexf) = (exf.to_str().unwrap(), iexf.to_str().unwrap());
    let everything = [
        "Cache",
        "Cache/tmp",
        "Cache/tmp/blob",
        "app",
        "app/node_modules",
        "app/node_modules/x",
        "app/node_modules/x/index.js",
        "app/src",
        "app/src/debug.LOG",
        "app/src/main.rs",
        "app/trace.log",
        "big",
        "flagged",
        "flagged/.nobackup",
        "flagged/data",
        "home",
        "home/ann",
        "home/ann/.cache",
        "home/ann/.cache/c",
        "home/ann/notes",
        "tagged",
        "tagged/CACHEDIR.TAG",
        "tagged/data",
    ];
    // (options, entries left out, excluded count)
    let table: Vec<(Vec<&str>, Vec<&str>, u64)> = vec![
        (vec![], vec![], 0),
        (vec!["--exclude", "*.log"], vec!["app/trace.log"], 1),
        (
            vec!["--iexclude", "*.log"],
            vec!["app/trace.log", "app/src/debug.LOG"],
            2,
        ),
        (
            vec!["--exclude", "node_modules"],
            vec![
                "app/node_modules",
                "app/node_modules/x",
                "app/node_modules/x/index.js",
            ],
            1,
        ),
        (
            vec!["--exclude", &home],
            vec!["home/ann/.cache", "home/ann/.cache/c"],
            1,
        ),
        (
            vec!["--exclude", &anchored],
            vec!["app/src/debug.LOG", "app/src/main.rs"],
            2,
        ),
        (vec!["--exclude", "/app"], vec![], 0),
        (vec!["--exclude", "**/tmp/*"], vec!["Cache/tmp/blob"], 1),
        (
            vec!["--exclude-file", exf],
            vec![
                "app/trace.log",
                "app/node_modules",
                "app/node_modules/x",
                "app/node_modules/x/index.js",
            ],
            2,
        ),
        (
            vec!["--iexclude-file", iexf],
            vec!["Cache", "Cache/tmp", "Cache/tmp/blob"],
            1,
        ),
        (
            vec!["--exclude-caches"],
            vec!["tagged", "tagged/CACHEDIR.TAG", "tagged/data"],
            1,
        ),
        (
            vec!["--exclude-if-present", ".nobackup"],
            vec!["flagged", "flagged/.nobackup", "flagged/data"],
            1,
        ),
        (
            vec!["--exclude-if-present", ".nobackup:other header"],
            vec![],
            0,
        ),
        (vec!["--exclude-larger-than", "1M"], vec!["big"], 1),
        (vec!["--exclude-larger-than", "4M"], vec![], 0),
    ];
    for (opts, out, excluded) in table {
        let mut args = vec!["backup", s, "--force"];
        args.extend(&opts);
        let r = env.json(&args);
        assert_eq!(
            r["excluded"].as_u64().unwrap_or(0),
            excluded,
            "{opts:?}: {r}"
        );
        let want: Vec<String> = everything
            .iter()
            .filter(|e| !out.contains(e))
            .map(|e| e.to_string())
            .collect();
        assert_eq!(listed(&env, &src), want, "{opts:?}");
    }
    // A malformed or negated pattern is refused by name.
    let o = env.run(&["backup", s, "--exclude", "a[b"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"a[b\""));
    let o = env.run(&["backup", s, "--exclude", "!keep"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("negation"));
}

#[test]
fn one_file_system_keeps_the_mount_point_and_leaves_out_the_tmpfs_inside() {
    if crate::util::euid() != 0 {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("mnt")).unwrap();
    fs::write(src.join("kept"), b"on the same file system").unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(src.join("mnt"))
            .status()
            .unwrap()
            .success()
    );
    let _u = Unmount(src.join("mnt"));
    fs::write(src.join("mnt/inside-tmpfs"), b"another file system").unwrap();
    let s = src.to_str().unwrap();
    env.ok(&["backup", s]);
    assert_eq!(listed(&env, &src), ["kept", "mnt", "mnt/inside-tmpfs"]);
    let r = env.json(&["backup", s, "-x"]);
    assert_eq!(r["excluded"], 1, "{r}");
    assert_eq!(listed(&env, &src), ["kept", "mnt"]);
    let r = env.json(&["backup", s, "--one-file-system", "--force"]);
    assert_eq!(r["excluded"], 1, "{r}");
}

#[test]
fn files_from_in_its_three_forms_backs_up_exactly_the_listed_paths() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    for f in ["a", "b", "d/c", "d/e", " spaced "] {
        fs::write(src.join(f), f).unwrap();
    }
    let s = src.to_str().unwrap();
    fs::write(
        env.path("list"),
        format!("# what to keep\n{s}/a\n\n  {s}/d/c  \n"),
    )
    .unwrap();
    env.ok(&["backup", "--files-from", env.path("list").to_str().unwrap()]);
    assert_eq!(listed(&env, &src), ["a", "d", "d/c"]);
    fs::write(env.path("verbatim"), format!("{s}/ spaced \n{s}/b\n")).unwrap();
    env.ok(&[
        "backup",
        "--files-from-verbatim",
        env.path("verbatim").to_str().unwrap(),
    ]);
    assert_eq!(listed(&env, &src), [" spaced ", "b"]);
    fs::write(env.path("raw"), format!("{s}/d/e\0{s}/a\0")).unwrap();
    env.ok(&[
        "backup",
        "--files-from-raw",
        env.path("raw").to_str().unwrap(),
    ]);
    assert_eq!(listed(&env, &src), ["a", "d", "d/e"]);
    fs::write(env.path("none"), "# nothing\n").unwrap();
    let o = env.run(&["backup", "--files-from", env.path("none").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn a_procfs_file_that_reports_size_zero_is_stored_as_read() {
    let env = Env::new();
    env.init(&[]);
    // /proc/sys refuses large reads (ENOMEM); sysfs reports 4096 bytes for
    // a few: both are stored as read, without padding.
    let mut args = vec!["backup", "/proc/self/status", "/proc/sys/kernel/ostype"];
    let sysfs = "/sys/class/net/lo/address";
    let real = fs::read(sysfs).ok();
    if real.is_some() {
        args.push(sysfs);
    }
    env.ok(&args);
    assert_eq!(
        env.ok(&["dump", "latest", "/proc/sys/kernel/ostype"]),
        "Linux\n"
    );
    if let Some(real) = real {
        let o = env.run(&["dump", "latest", sysfs]);
        assert_eq!(o.stdout, real, "{sysfs} as stored");
    }
    let v = env.json(&["ls", "latest"]);
    let node = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/proc/self/status")
        .cloned()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(node["size"].as_u64().unwrap() > 100, "{node}");
    let o = env.run(&["dump", "latest", "/proc/self/status"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Name:"));
}

#[test]
fn restore_selection_matches_patterns_refuses_ones_matching_nothing_and_restores_subtrees() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("a/b/c")).unwrap();
    fs::create_dir_all(src.join("z")).unwrap();
    for f in [
        "a/b/one.conf",
        "a/b/c/two.CONF",
        "a/b/c/data",
        "a/top",
        "z/other.conf",
    ] {
        fs::write(src.join(f), f).unwrap();
    }
    env.ok(&["backup", src.to_str().unwrap()]);
    let s = src.to_str().unwrap();
    let files = |root: &Path| -> Vec<String> {
        crate::util::walk(root)
            .iter()
            .filter(|p| p.is_file())
            .map(|p| p.strip_prefix(root).unwrap().to_str().unwrap().to_string())
            .collect()
    };
    let run = |name: &str, args: &[&str]| -> (std::process::Output, PathBuf) {
        let out = env.path(name);
        let mut a = vec!["restore"];
        a.extend(args);
        a.extend(["--target", out.to_str().unwrap()]);
        (env.run(&a), out)
    };
    // A typo: exit 1, the pattern named, nothing written.
    let missing = format!("{s}/a/bb");
    let (o, out) = run("typo", &["latest", "--include", &missing]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("--include \"{missing}\" matches nothing")),
        "{err}"
    );
    assert!(!out.exists() || files(&out).is_empty());
    let (o, _) = run("typo2", &["latest", "--exclude", "*.cnf"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--exclude \"*.cnf\" matches nothing"));
    // Globs, case-insensitive ones, and excludes.
    let (o, out) = run("glob", &["latest", "--include", "*.conf"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rel = |f: &str| format!("{}/{f}", s.trim_start_matches('/'));
    assert_eq!(files(&out), [rel("a/b/one.conf"), rel("z/other.conf")]);
    let (_, out) = run(
        "iglob",
        &["latest", "--iinclude", "*.conf", "--exclude", "z"],
    );
    assert_eq!(files(&out), [rel("a/b/c/two.CONF"), rel("a/b/one.conf")]);
    let inc = format!("{s}/a/b");
    let (_, out) = run("dir", &["latest", "--include", &inc, "--exclude", "data"]);
    assert_eq!(files(&out), [rel("a/b/c/two.CONF"), rel("a/b/one.conf")]);
    // SNAPSHOT:SUBPATH puts the directory's content at the target.
    let sub = format!("latest:{s}/a/b");
    let (o, out) = run("sub", &[&sub]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(files(&out), ["c/data", "c/two.CONF", "one.conf"]);
    assert_eq!(fs::read(out.join("one.conf")).unwrap(), b"a/b/one.conf");
    let sub = format!("latest:{s}/a/top");
    let (_, out) = run("subfile", &[&sub]);
    assert_eq!(files(&out), ["top"]);
    let sub = format!("latest:{s}/nope");
    let (o, _) = run("subnope", &[&sub]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
}

#[test]
fn forget_keep_zero_is_refused_and_rules_that_would_empty_a_group_need_allow_empty() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    for _ in 0..3 {
        env.ok(&["backup", src.to_str().unwrap(), "--force"]);
    }
    let count = || env.json(&["snapshots"]).as_array().unwrap().len();
    for rule in [
        "--keep-last",
        "--keep-daily",
        "--keep-hourly",
        "--keep-weekly",
        "--keep-monthly",
        "--keep-yearly",
    ] {
        let o = env.run(&["forget", rule, "0"]);
        assert_eq!(o.status.code(), Some(1), "{rule}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("{rule} 0 keeps nothing")), "{err}");
        assert_eq!(count(), 3, "{rule} 0 removed snapshots");
    }
    // Only a tag rule can keep none of a group: refused without --allow-empty.
    let o = env.run(&["forget", "--keep-tag", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--allow-empty"));
    assert_eq!(count(), 3);
    env.ok(&["forget", "--keep-tag", "nope", "--dry-run"]);
    assert_eq!(count(), 3);
    env.ok(&["forget", "--keep-tag", "nope", "--allow-empty"]);
    assert_eq!(count(), 0);
}

#[test]
fn a_version_1_repository_written_by_the_first_format_still_lists_restores_and_checks() {
    let env = Env::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let o = Command::new("cp")
        .arg("-r")
        .arg(fixture.join("repo-v1"))
        .arg(env.repo())
        .status()
        .unwrap();
    assert!(o.success());
    fs::copy(fixture.join("repo-v1.password"), env.path("pw")).unwrap();
    let snaps = env.json(&["snapshots"]);
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 3, "{snaps:?}");
    let first = snaps
        .iter()
        .find(|s| s["tags"] == serde_json::json!(["first"]))
        .unwrap()["short_id"]
        .as_str()
        .unwrap()
        .to_string();
    let listing = env.ok(&["ls", &first]);
    for p in [
        "/tmp/fx/src/etc/link -> ../data/hello.txt",
        "/tmp/fx/src/data/fifo",
        "/tmp/fx/src/data/sparse",
    ] {
        assert!(listing.contains(p), "{p} not in\n{listing}");
    }
    let out = env.path("out");
    env.ok(&["restore", &first, "--target", out.to_str().unwrap()]);
    let base = out.join("tmp/fx/src");
    assert_eq!(
        fs::read(base.join("data/hello.txt")).unwrap(),
        b"hello from version 1\n"
    );
    assert_eq!(
        fs::read(base.join("etc/app/config.ini")).unwrap(),
        b"secret=1\n"
    );
    assert_eq!(
        fs::read_link(base.join("etc/link")).unwrap(),
        Path::new("../data/hello.txt")
    );
    let sparse = fs::read(base.join("data/sparse")).unwrap();
    assert_eq!(sparse.len(), (2 << 20) + 4);
    assert!(sparse[..2 << 20].iter().all(|&b| b == 0) && sparse.ends_with(b"tail"));
    let blob = fs::read(base.join("data/blob.bin")).unwrap();
    assert_eq!(blob.len(), 30_000);
    let o = Command::new("sha256sum")
        .arg(base.join("data/blob.bin"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .starts_with("9e9d246c6f2055c51937a541459f32e97a3b9048b1c6794529e0b7865cf77fcf")
    );
    assert_eq!(
        env.ok(&["dump", "latest", "/orders.sql", "--service", "orders-db"]),
        "dump of a database\n"
    );
    env.ok(&["check", "--read-data"]);
    // This binary writes version-2 trees into it, next to the version-1
    // ones, and both read back and check.
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"new").unwrap();
    fs::hard_link(src.join("f"), src.join("g")).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let out2 = env.path("out2");
    env.ok(&["restore", "latest", "--target", out2.to_str().unwrap()]);
    assert_eq!(
        fs::metadata(restored(&out2, &src).join("g"))
            .unwrap()
            .nlink(),
        2
    );
    let out3 = env.path("out3");
    env.ok(&["restore", &first, "--target", out3.to_str().unwrap()]);
    env.ok(&["check", "--read-data"]);
}

#[test]
fn the_catalog_files_kind_honours_exclude_and_one_file_system_and_names_bad_patterns() {
    let env = Env::new();
    env.init(&[]);
    let data = env.path("data");
    fs::create_dir_all(data.join("cache")).unwrap();
    fs::create_dir_all(data.join("keep")).unwrap();
    fs::write(data.join("keep/a.db"), b"db").unwrap();
    fs::write(data.join("keep/a.tmp"), b"tmp").unwrap();
    fs::write(data.join("cache/c"), b"cache").unwrap();
    let catalog = env.path("cairn.toml");
    fs::write(
        &catalog,
        format!(
            "[service.data]\nkind = \"files\"\npath = \"{}\"\nexclude = [\"*.tmp\", \"/{}/cache\"]\none_file_system = true\n",
            data.display(),
            data.strip_prefix("/").unwrap().display()
        ),
    )
    .unwrap();
    let cat = catalog.to_str().unwrap();
    env.ok(&["stack", "backup", "--catalog", cat]);
    assert_eq!(listed(&env, &data), ["keep", "keep/a.db"]);
    // A bad pattern, or the field on another kind, is named with its line.
    for (text, want) in [
        (
            format!(
                "[service.data]\nkind = \"files\"\npath = \"{}\"\nexclude = [\"a[\"]\n",
                data.display()
            ),
            ":4: service data: exclude: pattern \"a[\"",
        ),
        (
            "[service.r]\nkind = \"redis\"\nexclude = [\"x\"]\n".to_string(),
            ":3:",
        ),
        (
            "[service.d]\nkind = \"files\"\npath = \"/x\"\nretention = { keep_last = 0 }\n"
                .to_string(),
            "keep_last 0 keeps nothing",
        ),
    ] {
        fs::write(&catalog, &text).unwrap();
        let o = if want.contains("keep_last") {
            env.run(&["stack", "forget", "--catalog", cat])
        } else {
            env.run(&["stack", "plan", "--catalog", cat])
        };
        assert_eq!(o.status.code(), Some(1), "{text}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "expected {want:?} in {err}");
    }
}

#[test]
fn prune_and_check_count_the_blobs_of_large_extended_attributes_as_used() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    // An empty file: the attribute's blob is the only data it has.
    fs::write(src.join("f"), b"").unwrap();
    let value = format!("0x{}", "cd".repeat(3000));
    tool(&[
        "setfattr",
        "-n",
        "user.large",
        "-v",
        &value,
        src.join("f").to_str().unwrap(),
    ]);
    env.ok(&["backup", src.to_str().unwrap()]);
    fs::write(env.path("other"), prng(71, 100_000)).unwrap();
    env.ok(&["backup", env.path("other").to_str().unwrap()]);
    env.ok(&["forget", "--keep-last", "1", "--group-by", "paths"]);
    env.ok(&["prune", "--keep-delete", "0s"]);
    env.ok(&["prune", "--keep-delete", "0s"]);
    env.ok(&["check", "--read-data"]);
    let out = env.path("out");
    let snaps = env.json(&["snapshots"]);
    let first = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["paths"][0] == src.to_str().unwrap())
        .unwrap()["short_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = env.json(&["restore", &first, "--target", out.to_str().unwrap()]);
    assert_eq!(r["warnings"], serde_json::json!([]), "{r}");
    let f = restored(&out, &src).join("f");
    let got = tool(&[
        "getfattr",
        "-n",
        "user.large",
        "-e",
        "hex",
        "--absolute-names",
        f.to_str().unwrap(),
    ]);
    assert!(got.contains(&format!("user.large={value}")), "{got}");
}

#[test]
fn a_fifo_planted_as_a_cache_tag_does_not_stall_the_backup() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::create_dir_all(src.join("e")).unwrap();
    fs::write(src.join("d/f"), b"kept").unwrap();
    for tag in ["d/CACHEDIR.TAG", "e/.tag"] {
        assert!(
            Command::new("mkfifo")
                .arg(src.join(tag))
                .status()
                .unwrap()
                .success()
        );
    }
    let mut child = env
        .cmd()
        .args([
            "backup",
            src.to_str().unwrap(),
            "--exclude-caches",
            "--exclude-if-present",
            ".tag:HEADER",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("backup stalled on a FIFO named like a cache tag");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A FIFO is no tag: both directories are kept.
    assert_eq!(
        listed(&env, &src),
        ["d", "d/CACHEDIR.TAG", "d/f", "e", "e/.tag"]
    );
}

#[test]
fn a_directory_above_the_backed_up_path_reached_through_a_symlink_keeps_the_real_mode() {
    let env = Env::new();
    env.init(&[]);
    let real = env.path("real");
    fs::create_dir_all(real.join("ann")).unwrap();
    fs::write(real.join("ann/f"), b"s").unwrap();
    fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    let link = env.path("lnk");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    env.ok(&["backup", link.join("ann").to_str().unwrap()]);
    let v = env.json(&["ls", "latest"]);
    let node = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == link.to_str().unwrap())
        .cloned()
        .unwrap();
    assert_eq!(node["type"], "dir");
    assert_eq!(node["mode"], "750", "{node}");
}

#[test]
fn paths_given_but_excluded_are_named_and_excluding_them_all_writes_no_snapshot() {
    let env = Env::new();
    env.init(&[]);
    let (a, b) = (env.path("a"), env.path("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let o = env.run(&["backup", a.to_str().unwrap(), "--exclude", "*"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("leave out every path given"));
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0);
    let o = env.run(&[
        "backup",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--exclude",
        "/**/b",
    ]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "{}: given to back up, but the exclusions leave it out",
            b.display()
        )),
        "{err}"
    );
}

#[test]
fn a_listing_whose_reader_goes_away_ends_quietly() {
    let env = Env::new();
    env.init(&[]);
    for i in 0..30 {
        env.backup_stdin(format!("{i}").as_bytes(), "s");
    }
    for args in [
        vec!["snapshots"],
        vec!["forget", "--keep-last", "1", "--dry-run"],
    ] {
        let mut child = env
            .cmd()
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 30);
}

#[test]
fn an_unprivileged_restore_keeps_the_user_attributes_of_read_only_entries() {
    if crate::util::euid() != 0 {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("rodir")).unwrap();
    fs::write(src.join("rw"), b"q").unwrap();
    tool(&[
        "setfattr",
        "-n",
        "user.d",
        "-v",
        "1",
        src.join("rodir").to_str().unwrap(),
    ]);
    tool(&[
        "setfattr",
        "-n",
        "user.rw",
        "-v",
        "1",
        src.join("rw").to_str().unwrap(),
    ]);
    let chmod = |mode: &str, p: &Path| {
        assert!(
            Command::new("chmod")
                .arg(mode)
                .arg(p)
                .status()
                .unwrap()
                .success()
        );
    };
    chmod("555", &src.join("rodir"));
    chmod("444", &src.join("rw"));
    env.ok(&["backup", src.to_str().unwrap()]);
    let out = env.path("out");
    let sub = format!("latest:{}", src.display());
    let o = restore_as_nobody(&env, &out, &sub, &out.join("t"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (rel, name) in [("rw", "user.rw"), ("rodir", "user.d")] {
        let p = out.join("t").join(rel);
        let got = tool(&[
            "getfattr",
            "-n",
            name,
            "--absolute-names",
            p.to_str().unwrap(),
        ]);
        assert!(got.contains(&format!("{name}=\"1\"")), "{rel}: {got}");
    }
}

#[test]
fn an_unchanged_file_keeps_its_attributes_and_a_changed_attribute_is_seen_by_the_next_backup() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    let f = src.join("f");
    fs::write(&f, b"content").unwrap();
    let big = format!("0x{}", "ef".repeat(1500));
    tool(&[
        "setfattr",
        "-n",
        "user.big",
        "-v",
        &big,
        f.to_str().unwrap(),
    ]);
    tool(&[
        "setfattr",
        "-n",
        "user.small",
        "-v",
        "one",
        f.to_str().unwrap(),
    ]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let r = env.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(r["summary"]["files_unchanged"], 1, "{r}");
    let attrs = |name: &str| -> String {
        let out = env.path(name);
        env.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
        tool(&[
            "getfattr",
            "-d",
            "-m",
            "-",
            "-e",
            "hex",
            "--absolute-names",
            restored(&out, &src).join("f").to_str().unwrap(),
        ])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
    };
    let first = attrs("out1");
    assert!(
        first.contains(&format!("user.big={big}")) && first.contains("user.small=0x6f6e65"),
        "{first}"
    );
    tool(&[
        "setfattr",
        "-n",
        "user.small",
        "-v",
        "two",
        f.to_str().unwrap(),
    ]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let second = attrs("out2");
    assert!(
        second.contains("user.small=0x74776f") && second.contains(&format!("user.big={big}")),
        "{second}"
    );
}

#[test]
fn restore_overwrite_never_removes_what_is_mounted_in_the_target() {
    if crate::util::euid() != 0 {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    // In the snapshot, `lnk` is a symlink and `z/b` a file.
    let src = env.path("src");
    fs::create_dir_all(src.join("z")).unwrap();
    std::os::unix::fs::symlink("/nowhere", src.join("lnk")).unwrap();
    fs::write(src.join("z/b"), b"file").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    // On the target, both are mount points: a bind mount of a directory
    // outside the target, and a tmpfs.
    let outside = env.path("outside");
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(outside.join("sub/data"), b"not the restore's").unwrap();
    let t = env.path("t");
    fs::create_dir_all(t.join("lnk")).unwrap();
    fs::create_dir_all(t.join("z/b")).unwrap();
    struct Unmount(Vec<PathBuf>);
    impl Drop for Unmount {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
    }
    let mount = |args: &[&str], at: &Path| {
        assert!(
            Command::new("mount")
                .args(args)
                .arg(at)
                .status()
                .unwrap()
                .success()
        );
    };
    mount(&["--bind", outside.to_str().unwrap()], &t.join("lnk"));
    let _u1 = Unmount(vec![t.join("lnk")]);
    mount(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"], &t.join("z/b"));
    let _u2 = Unmount(vec![t.join("z/b")]);
    fs::write(t.join("z/b/on-tmpfs"), b"mounted data").unwrap();
    let sub = format!("latest:{}", src.display());
    let o = env.run(&[
        "restore",
        &sub,
        "--target",
        t.to_str().unwrap(),
        "--overwrite",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("lnk is a mount point") && err.contains("z/b is a mount point"),
        "{err}"
    );
    assert_eq!(
        fs::read(outside.join("sub/data")).unwrap(),
        b"not the restore's"
    );
    assert_eq!(fs::read(t.join("z/b/on-tmpfs")).unwrap(), b"mounted data");
}

#[test]
fn a_default_acl_on_the_target_gives_nobody_access_the_snapshot_did_not() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/secret"), b"group only").unwrap();
    let chmod = |mode: &str, p: &Path| {
        assert!(
            Command::new("chmod")
                .arg(mode)
                .arg(p)
                .status()
                .unwrap()
                .success()
        );
    };
    chmod("640", &src.join("sub/secret"));
    chmod("750", &src.join("sub"));
    env.ok(&["backup", src.to_str().unwrap()]);
    let t = env.path("t");
    fs::create_dir(&t).unwrap();
    tool(&["setfacl", "-d", "-m", "u:nobody:rwx", t.to_str().unwrap()]);
    tool(&["setfacl", "-m", "u:nobody:rwx", t.to_str().unwrap()]);
    let sub = format!("latest:{}", src.display());
    for extra in [None, Some("--no-acls")] {
        let out = t.join(extra.unwrap_or("plain"));
        fs::create_dir(&out).unwrap();
        let mut args = vec!["restore", sub.as_str(), "--target", out.to_str().unwrap()];
        args.extend(extra);
        env.ok(&args);
        for rel in ["sub", "sub/secret"] {
            let acl = tool(&["getfacl", "-p", "-n", out.join(rel).to_str().unwrap()]);
            assert!(
                !acl.contains("user:65534"),
                "{rel} ({extra:?}) inherited the target's ACL:\n{acl}"
            );
        }
    }
}

#[test]
fn no_owner_does_not_hand_another_users_setuid_program_to_the_restoring_user() {
    if crate::util::euid() != 0 {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::copy("/bin/true", src.join("suid")).unwrap();
    Command::new("chown")
        .args(["nobody:nogroup"])
        .arg(src.join("suid"))
        .status()
        .unwrap();
    Command::new("chmod")
        .arg("4755")
        .arg(src.join("suid"))
        .status()
        .unwrap();
    tool(&[
        "setcap",
        "cap_net_raw+ep",
        src.join("suid").to_str().unwrap(),
    ]);
    Command::new("chmod")
        .arg("4755")
        .arg(src.join("suid"))
        .status()
        .unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let out = env.path("out");
    let r = env.json(&[
        "restore",
        "latest",
        "--target",
        out.to_str().unwrap(),
        "--no-owner",
    ]);
    assert_eq!(r["withheld"]["setuid"], 1, "{r}");
    assert_eq!(r["withheld"]["capabilities"], 1, "{r}");
    let f = restored(&out, &src).join("suid");
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o7777), (0, 0o755));
    assert_eq!(tool(&["getcap", f.to_str().unwrap()]), "");
}

#[test]
fn include_and_exclude_are_both_counted_whichever_decides() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("m")).unwrap();
    fs::create_dir_all(src.join("z")).unwrap();
    fs::write(src.join("m/a"), b"a").unwrap();
    fs::write(src.join("z/b"), b"b").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let s = src.to_str().unwrap();
    // The exclude matches outside what the include selected: no typo.
    let (inc, exc) = (format!("{s}/m"), format!("{s}/z/b"));
    let out = env.path("o1");
    env.ok(&[
        "restore",
        "latest",
        "--include",
        &inc,
        "--exclude",
        &exc,
        "--target",
        out.to_str().unwrap(),
    ]);
    assert!(restored(&out, &src).join("m/a").exists());
    // One path both included and excluded: excluded, and nothing blamed.
    let out = env.path("o2");
    let a = format!("{s}/m/a");
    let o = env.run(&[
        "restore",
        "latest",
        "--include",
        &a,
        "--exclude",
        &a,
        "--target",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("matches nothing"), "{err}");
    assert!(!restored(&out, &src).join("m/a").exists());
}
