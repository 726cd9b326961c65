//! Restoring as root into places other users can write to, and from
//! snapshots that may be hostile.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::{Env, cairn_bin, euid, prng};

/// The unprivileged user the attacks run as.
const NOBODY: u32 = 65534;

fn chown_tree(p: &Path, uid: u32) {
    let s = Command::new("chown")
        .args(["-R", "-h", &format!("{uid}:{uid}")])
        .arg(p)
        .status()
        .unwrap();
    assert!(s.success());
}

/// Swaps every file and directory it can below ARGV[1] for a symlink to a
/// root-owned file (ARGV[2]) or directory (ARGV[3]) — atomically, as
/// `mv -T` does — until ARGV[4] exists; prints how many swaps landed.
const SWAPPER: &str = r#"
import os, sys, random
root, victim, vdir, stop = sys.argv[1:5]
n = 0
rnd = random.Random(7)
while not os.path.exists(stop):
    for dp, dns, fns in os.walk(root):
        for f in fns:
            if f.endswith('.swap'):
                continue
            p = os.path.join(dp, f)
            try:
                os.symlink(victim, p + '.swap')
                os.rename(p + '.swap', p)
                n += 1
            except OSError:
                try:
                    os.unlink(p + '.swap')
                except OSError:
                    pass
        for d in dns:
            if d.endswith('.moved') or rnd.random() > 0.2:
                continue
            p = os.path.join(dp, d)
            try:
                os.rename(p, p + '.moved')
            except OSError:
                continue
            try:
                os.symlink(vdir, p)
                n += 1
            except OSError:
                pass
        if os.path.exists(stop):
            break
print(n)
"#;

#[test]
fn restore_as_root_never_writes_through_files_or_dirs_another_user_swaps_for_symlinks() {
    if euid() != 0 {
        eprintln!("skipped: the attack needs a root restore and an unprivileged attacker");
        return;
    }
    let env = Env::new();
    // The attacker must reach the target: the scratch dir is traversable.
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    env.init(&[]);
    let src = env.path("src");
    for d in 0..6 {
        let dir = src.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..150 {
            fs::write(dir.join(format!("f{f}")), prng(d * 1000 + f, 6000)).unwrap();
        }
    }
    env.ok(&["backup", src.to_str().unwrap()]);

    // Root's private things outside the target.
    let vroot = env.path("victim");
    fs::create_dir(&vroot).unwrap();
    fs::set_permissions(&vroot, fs::Permissions::from_mode(0o755)).unwrap();
    let victim = vroot.join("secret");
    fs::write(&victim, b"root's secret\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    let vdir = vroot.join("private");
    fs::create_dir(&vdir).unwrap();
    fs::set_permissions(&vdir, fs::Permissions::from_mode(0o700)).unwrap();

    let target = env.path("target");
    let target_s = target.to_str().unwrap().to_string();
    let (mut swaps, mut rounds, mut failed) = (0u64, 0u32, 0u32);
    while (swaps < 200 || rounds < 3) && rounds < 40 {
        rounds += 1;
        // The tree as its owner left it: everything theirs.
        if target.exists() {
            fs::remove_dir_all(&target).unwrap();
        }
        env.ok(&["restore", "latest", "--target", &target_s]);
        chown_tree(&target, NOBODY);
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
        let stop = env.path("stop");
        let _ = fs::remove_file(&stop);
        let attacker = as_nobody(
            SWAPPER,
            &[
                &target_s,
                victim.to_str().unwrap(),
                vdir.to_str().unwrap(),
                stop.to_str().unwrap(),
            ],
        );
        let o = env.run(&["restore", "latest", "--target", &target_s, "--overwrite"]);
        fs::write(&stop, b"").unwrap();
        let a = attacker.wait_with_output().unwrap();
        assert!(
            a.status.success(),
            "attacker: {}",
            String::from_utf8_lossy(&a.stderr)
        );
        swaps += String::from_utf8_lossy(&a.stdout)
            .trim()
            .parse::<u64>()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() {
            failed += 1;
            assert!(
                err.contains(&target_s),
                "a restore that fails must name the path: {err}"
            );
        }
        assert_eq!(
            fs::read(&victim).unwrap(),
            b"root's secret\n",
            "round {rounds}: restore wrote through a swapped-in symlink\n{err}"
        );
        let md = fs::metadata(&victim).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid()),
            (0o600, 0),
            "round {rounds}: restore changed the victim's mode or owner\n{err}"
        );
        let md = fs::metadata(&vdir).unwrap();
        assert_eq!((md.mode() & 0o7777, md.uid()), (0o700, 0));
        assert_eq!(
            fs::read_dir(&vdir).unwrap().count(),
            0,
            "round {rounds}: restore created entries through a swapped-in directory symlink"
        );
    }
    assert!(swaps >= 200, "only {swaps} swaps landed in {rounds} rounds");
    eprintln!(
        "{swaps} swaps in {rounds} rounds ({failed} restores failed naming a path), 0 escapes"
    );
}

#[test]
fn planted_privileges_are_withheld_and_counted() {
    if euid() != 0 {
        eprintln!("skipped: creating device nodes and owners needs root");
        return;
    }
    use std::os::unix::fs::{FileTypeExt, chown};
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    let mk = |args: &[&str]| {
        let s = Command::new("mknod").args(args).status().unwrap();
        assert!(s.success());
    };
    fs::write(src.join("dash"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("dash"), fs::Permissions::from_mode(0o6755)).unwrap();
    mk(&[
        "-m",
        "666",
        src.join("zero").to_str().unwrap(),
        "c",
        "1",
        "5",
    ]);
    mk(&[
        "-m",
        "666",
        src.join("loop").to_str().unwrap(),
        "b",
        "7",
        "200",
    ]);
    mk(&["-m", "600", src.join("fifo").to_str().unwrap(), "p"]);
    fs::write(src.join("plain"), b"data").unwrap();
    chown(src.join("plain"), Some(4321), Some(4321)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);

    // Trusted: everything comes back as it was.
    let all = env.path("all");
    env.ok(&["restore", "latest", "--target", all.to_str().unwrap()]);
    let r = all.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        fs::metadata(r.join("dash")).unwrap().mode() & 0o7777,
        0o6755
    );
    assert!(
        fs::symlink_metadata(r.join("zero"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert_eq!(fs::metadata(r.join("plain")).unwrap().uid(), 4321);

    // Untrusted: held back and counted.
    let safe = env.path("safe");
    let j = env.json(&[
        "restore",
        "latest",
        "--target",
        safe.to_str().unwrap(),
        "--no-owner",
        "--no-special",
        "--no-setuid",
    ]);
    assert_eq!(j["withheld"]["special"], 3, "{j}");
    assert_eq!(j["withheld"]["setuid"], 1, "{j}");
    assert_eq!(j["withheld"]["owner"], 1, "{j}");
    let r = safe.join(src.strip_prefix("/").unwrap());
    let dash = fs::metadata(r.join("dash")).unwrap();
    assert_eq!(dash.mode() & 0o7777, 0o755);
    for n in ["zero", "loop", "fifo"] {
        assert!(fs::symlink_metadata(r.join(n)).is_err(), "{n} was created");
    }
    assert_eq!(fs::metadata(r.join("plain")).unwrap().uid(), 0);
    let text = env.ok(&[
        "restore",
        "latest",
        "--target",
        env.path("safe2").to_str().unwrap(),
        "--no-special",
        "--no-setuid",
    ]);
    assert!(
        text.contains("withheld: 3 device nodes/FIFOs not created, 1 setuid/setgid bits cleared"),
        "{text}"
    );
}

#[test]
fn stack_files_restores_withhold_devices_and_setuid_unless_the_catalog_allows_them() {
    if euid() != 0 {
        eprintln!("skipped: creating device nodes needs root");
        return;
    }
    use std::os::unix::fs::FileTypeExt;
    let env = Env::new();
    env.init(&[]);
    let data = env.path("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(data.join("tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    let s = Command::new("mknod")
        .args([
            "-m",
            "666",
            data.join("zero").to_str().unwrap(),
            "c",
            "1",
            "5",
        ])
        .status()
        .unwrap();
    assert!(s.success());
    let catalog = |allow: bool| {
        let p = env.path(if allow { "allow.toml" } else { "cairn.toml" });
        let extra = if allow {
            "allow_special = true\nallow_setuid = true\n"
        } else {
            ""
        };
        fs::write(
            &p,
            format!(
                "[service.data]\nkind = \"files\"\npath = \"{}\"\n{extra}",
                data.display()
            ),
        )
        .unwrap();
        p.to_str().unwrap().to_string()
    };
    let (plain, allow) = (catalog(false), catalog(true));
    env.ok(&["stack", "backup", "--catalog", &plain]);
    let o = env.run(&[
        "stack",
        "restore",
        "--catalog",
        &plain,
        "--no-safety-snapshot",
    ]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("withheld: 1 device nodes/FIFOs not created, 1 setuid/setgid bits cleared"),
        "{out}"
    );
    assert_eq!(
        fs::metadata(data.join("tool")).unwrap().mode() & 0o7777,
        0o755
    );
    assert!(fs::symlink_metadata(data.join("zero")).is_err());

    let o = env.run(&[
        "stack",
        "restore",
        "--catalog",
        &allow,
        "--no-safety-snapshot",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        fs::metadata(data.join("tool")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert!(
        fs::symlink_metadata(data.join("zero"))
            .unwrap()
            .file_type()
            .is_char_device()
    );

    // The fields belong to files services only.
    let bad = env.path("bad.toml");
    fs::write(
        &bad,
        "[service.app]\nkind = \"command\"\nbackup = \"echo\"\nrestore = \"cat\"\nallow_setuid = true\n",
    )
    .unwrap();
    let o = env.run(&["stack", "plan", "--catalog", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("allow_setuid is not a field of this kind (it belongs to kind files)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_new_local_repository_is_private_whatever_the_umask() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), prng(1, 100_000)).unwrap();
    // Through a shell with umask 000: what cairn creates would be 0666/0777.
    let sh = |args: &str| {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("umask 000; exec \"$CAIRN\" {args}"))
            .env("CAIRN", cairn_bin())
            .env("CAIRN_REPOSITORY", env.repo())
            .env("CAIRN_PASSWORD_FILE", env.path("pw"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    sh("init --kdf-memory-kib 1024 --kdf-iterations 1 --kdf-parallelism 1 --insecure-kdf");
    sh(&format!("backup {}", src.display()));
    sh("forget --keep-last 1");
    let mut seen = (0, 0);
    let mut stack = vec![env.repo()];
    while let Some(d) = stack.pop() {
        let md = fs::metadata(&d).unwrap();
        assert_eq!(
            md.mode() & 0o777,
            0o700,
            "{} is {:o}",
            d.display(),
            md.mode() & 0o777
        );
        seen.0 += 1;
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else {
                assert_eq!(
                    md.mode() & 0o777,
                    0o600,
                    "{} is {:o}",
                    e.path().display(),
                    md.mode() & 0o777
                );
                seen.1 += 1;
            }
        }
    }
    assert!(seen.0 >= 5 && seen.1 >= 4, "{seen:?}");
}

#[test]
fn init_refuses_a_weak_key_derivation_without_insecure_kdf() {
    let env = Env::new();
    let o = env.run(&[
        "init",
        "--kdf-memory-kib",
        "8",
        "--kdf-iterations",
        "1",
        "--kdf-parallelism",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refusing a weak key derivation (Argon2id m = 8 KiB, t = 1)")
            && err.contains("--insecure-kdf"),
        "{err}"
    );
    assert!(!env.repo().join("config").exists());
    // At the floor it is accepted; below it only with the flag.
    env.ok(&[
        "init",
        "--kdf-memory-kib",
        "19456",
        "--kdf-iterations",
        "2",
        "--kdf-parallelism",
        "1",
    ]);
    let o = env.run(&[
        "key",
        "add",
        "--new-password-file",
        env.path("pw").to_str().unwrap(),
        "--kdf-iterations",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing a weak key derivation"));
}

/// Open the test's local repository through the library, as a hostile
/// writer holding the password would.
fn library_repo(env: &Env) -> cairn_repo::IndexedRepository {
    let b = cairn_repo::backend::open(env.repo().to_str().unwrap(), false, &Default::default())
        .unwrap();
    cairn_repo::Repository::open_store(b.into_store(), b"correct horse")
        .unwrap()
        .load_index()
        .unwrap()
}

/// Run cairn under `/usr/bin/time`: (output, seconds, peak RSS in KiB).
fn measured(env: &Env, args: &[&str]) -> (std::process::Output, f64, u64) {
    let stats = env.path("time.out");
    let t0 = std::time::Instant::now();
    // Killed after 20 s, so that an unbounded walk fails the test instead
    // of hanging it.
    let bin = cairn_bin();
    let o = Command::new("timeout")
        .args(["-s", "KILL", "20", "/usr/bin/time", "-f", "%M", "-o"])
        .arg(&stats)
        .arg(bin)
        .args(args)
        .env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_PASSWORD_FILE", env.path("pw"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let rss = fs::read_to_string(&stats)
        .ok()
        .and_then(|t| t.lines().last()?.trim().parse().ok())
        .unwrap_or(u64::MAX);
    (o, secs, rss)
}

/// Plant a tree bomb through the crates' API next to one honest snapshot of
/// `src` (a file `f` of 50,000 bytes): 41 tree blobs, each directory holding
/// its child twice, 2^40 paths. Returns the bomb's snapshot id.
pub(crate) fn plant_tree_bomb(env: &Env, src: &Path) -> String {
    use cairn_format::tree::{Node, NodeKind, Time, Tree};
    fs::create_dir(src).unwrap();
    fs::write(src.join("f"), prng(3, 50_000)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    // 41 tree blobs, each directory holding its child twice: 2^40 paths.
    let repo = library_repo(env);
    let packer = cairn_repo::Packer::new(&repo);
    let node = |name: &[u8], kind: NodeKind| Node {
        name: name.to_vec(),
        kind,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: Time { sec: 0, nsec: 0 },
        ctime: Time { sec: 0, nsec: 0 },
        inode: 0,
        size: 0,
        device: 0,
        nlink: 0,
        xattrs: vec![],
    };
    let mut t = packer
        .store_tree(&Tree {
            nodes: vec![node(b"leaf", NodeKind::File { extents: vec![] })],
        })
        .unwrap();
    for _ in 0..40 {
        t = packer
            .store_tree(&Tree {
                nodes: vec![
                    node(b"a", NodeKind::Dir { tree: t }),
                    node(b"b", NodeKind::Dir { tree: t }),
                ],
            })
            .unwrap();
    }
    packer.finish().unwrap();
    let mut snap = repo
        .repo()
        .list_snapshots()
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
        .1;
    snap.tree = t;
    snap.time_ns += 1_000_000_000;
    let bomb = repo.repo().save_snapshot(&snap).unwrap().to_hex();
    drop(repo);
    bomb
}

#[test]
fn a_planted_tree_bomb_is_refused_in_bounded_time_and_memory_and_blocks_nothing_else() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    let bomb = plant_tree_bomb(&env, &src);
    let short = &bomb[..8];

    let target = env.path("t");
    for args in [
        vec!["restore", short, "--target", target.to_str().unwrap()],
        vec!["ls", short],
    ] {
        let (o, secs, rss) = measured(&env, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!("snapshot {short}"))
                && err.contains("its tree holds more than 1000000000 entries"),
            "{args:?}: {err}"
        );
        assert!(
            secs < 10.0 && rss < 256 * 1024,
            "{args:?}: {secs:.1} s, {rss} KiB"
        );
    }
    let (o, secs, rss) = measured(&env, &["check", "--read-data"]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("its tree holds more than"), "{out}");
    assert!(
        secs < 10.0 && rss < 256 * 1024,
        "check: {secs:.1} s, {rss} KiB"
    );
    // The honest snapshot is not blocked.
    let ok = env.path("ok");
    let first = env.json(&["snapshots"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first, bomb);
    env.ok(&["restore", &first[..8], "--target", ok.to_str().unwrap()]);
    assert_eq!(
        fs::read(ok.join(src.strip_prefix("/").unwrap()).join("f")).unwrap(),
        prng(3, 50_000)
    );
    // A bound can be lowered (or raised) for one command.
    let o = env.run(&[
        "--max-tree-entries",
        "1",
        "restore",
        &first[..8],
        "--target",
        env.path("ok2").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn planted_and_junk_snapshot_objects_are_named_unread_and_block_nothing_else() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), prng(4, 10_000)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    fs::write(src.join("f"), prng(5, 10_000)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let snaps = env.path("repo/snapshots");
    // 2 GiB named like a snapshot (sparse: cheap to plant, costly to read).
    let huge = snaps.join("f".repeat(64));
    fs::File::create(&huge).unwrap().set_len(2 << 30).unwrap();
    // A foreign object whose name is its hash: it passes the hash check
    // and fails to decode.
    let junk = b"not a snapshot, but named like one".to_vec();
    let junk_name = cairn_format::SnapshotId::of(&junk).to_hex();
    fs::write(snaps.join(&junk_name), &junk).unwrap();

    let (o, secs, rss) = measured(&env, &["snapshots"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("snapshots/{}", "f".repeat(64))) && err.contains("not read"),
        "{err}"
    );
    assert!(err.contains(&format!("snapshots/{junk_name}")), "{err}");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2);
    assert!(
        secs < 10.0 && rss < 256 * 1024,
        "snapshots: {secs:.1} s, {rss} KiB"
    );
    // Restores, by id and latest, and forget go on.
    env.ok(&[
        "restore",
        "latest",
        "--target",
        env.path("t1").to_str().unwrap(),
    ]);
    let id = env.json(&["snapshots"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.ok(&[
        "restore",
        &id[..8],
        "--target",
        env.path("t2").to_str().unwrap(),
    ]);
    let o = env.run(&[
        "restore",
        &junk_name[..8],
        "--target",
        env.path("t3").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("snapshots/{junk_name}")));
    env.ok(&["forget", "--keep-last", "1"]);
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);
    // check fails naming both.
    let o = env.run(&["check"]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(&junk_name), "{out}");
    // prune refuses while they are there; repair snapshots removes them.
    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(1));
    let out = env.ok(&["repair", "snapshots"]);
    assert!(
        out.contains(&format!("removed snapshots/{junk_name}: unreadable"))
            && out.contains(&format!("removed snapshots/{}: unreadable", "f".repeat(64))),
        "{out}"
    );
    env.ok(&["prune"]);
    env.ok(&["check", "--read-data"]);
}

#[test]
fn a_planted_expensive_key_file_is_skipped_with_a_warning_and_costs_nothing() {
    let env = Env::new();
    env.init(&[]);
    let keys = env.path("repo/keys");
    let real = fs::read_dir(&keys)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    let mut planted = fs::read(keys.join(&real)).unwrap();
    // Argon2id m = 4 GiB, p = 64 (offsets of format-spec §4.3), under a
    // name listed before the real key file (so every open would try it).
    planted[11..15].copy_from_slice(&(4u32 << 20).to_le_bytes());
    planted[19..23].copy_from_slice(&64u32.to_le_bytes());
    let mut name;
    let mut salt = 0u8;
    loop {
        planted[23] = salt;
        name = cairn_format::KeyId::of(&planted).to_hex();
        if name < real {
            break;
        }
        salt += 1;
    }
    fs::write(keys.join(&name), &planted).unwrap();
    let (o, secs, rss) = measured(&env, &["snapshots"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("key file keys/{name} skipped"))
            && err.contains("m = 4194304 KiB")
            && err.contains("--allow-expensive-kdf"),
        "{err}"
    );
    assert!(
        secs < 10.0 && rss < 256 * 1024,
        "open: {secs:.1} s, {rss} KiB"
    );
    // With a wrong password the skipped file is named too.
    fs::write(env.path("wrong"), "wrong\n").unwrap();
    let o = env.run_with_password("wrong", &["snapshots"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("keys/{name} skipped")));
    // The real key named as the hint is tried first.
    let o = env.run(&["--key-hint", &real[..8], "snapshots"]);
    assert!(o.status.success());
    assert!(!String::from_utf8_lossy(&o.stderr).contains("skipped"));
}

/// Waits for ARGV[1] to appear and be written, deletes it and creates files
/// of its own until the file system hands it the same inode number, then
/// renames that one into place (content: "EVIL").
const INODE_REUSER: &str = r#"
import os, sys, time
p = sys.argv[1]
d = os.path.dirname(p)
t0 = time.time()
while True:
    try:
        st = os.lstat(p); break
    except FileNotFoundError:
        if time.time() - t0 > 60: sys.exit("timeout")
ino, m0 = st.st_ino, st.st_mtime_ns
t1 = time.time()
while time.time() - t1 < 5:
    if os.lstat(p).st_mtime_ns != m0: break
os.unlink(p)
for tries in range(5000):
    tmp = f"{d}/.evil{tries}"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o755)
    os.write(fd, b"EVIL\n"); os.close(fd)
    if os.lstat(tmp).st_ino == ino:
        os.rename(tmp, p); print("reused"); sys.exit(0)
    os.unlink(tmp)
print("no reuse")
"#;

/// Replaces ARGV[1], once it appears, by a FIFO.
const FIFO_PLANTER: &str = r#"
import os, sys, time
p = sys.argv[1]
t0 = time.time()
while True:
    try: os.lstat(p); break
    except FileNotFoundError:
        if time.time() - t0 > 60: sys.exit("timeout")
os.unlink(p); os.mkfifo(p, 0o666)
print("planted")
"#;

/// Renames its own files (from ARGV[2]) over every entry created in ARGV[1]
/// the moment inotify reports it, for ARGV[3] seconds.
const ADOPTER: &str = r#"
import os, sys, ctypes, struct, time
libc = ctypes.CDLL(None, use_errno=True)
d, pool = sys.argv[1], sys.argv[2]
fd = libc.inotify_init()
libc.inotify_add_watch(fd, d.encode(), 0x100)  # IN_CREATE
files = sorted(os.listdir(pool)); k = 0
t0 = time.time()
os.set_blocking(fd, False)
while time.time() - t0 < float(sys.argv[3]) and k < len(files):
    try:
        buf = os.read(fd, 65536)
    except BlockingIOError:
        time.sleep(0.0005); continue
    i = 0
    while i < len(buf) and k < len(files):
        w, mask, cookie, ln = struct.unpack_from('iIII', buf, i)
        name = buf[i + 16:i + 16 + ln].rstrip(b'\0'); i += 16 + ln
        try:
            os.rename(os.path.join(pool, files[k]).encode(), os.path.join(d.encode(), name)); k += 1
        except OSError:
            pass
print(k)
"#;

fn as_nobody(script: &str, args: &[&str]) -> std::process::Child {
    Command::new("setpriv")
        .args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn restore_as_root_refuses_reused_inodes_fifos_and_entries_renamed_in_right_after_creation() {
    if euid() != 0 {
        eprintln!("skipped: the attack needs a root restore and an unprivileged attacker");
        return;
    }
    let env = Env::new();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    env.init(&[]);
    // A setuid root binary and enough after it for the attacker's window.
    let src = env.path("src");
    fs::create_dir_all(src.join("z")).unwrap();
    fs::write(src.join("a_suid"), b"GOOD-ROOT-BINARY\n").unwrap();
    fs::set_permissions(src.join("a_suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    for i in 0..3000 {
        fs::write(src.join("z").join(format!("f{i}")), prng(i, 300)).unwrap();
    }
    let links = env.path("links");
    fs::create_dir(&links).unwrap();
    for i in 0..2000 {
        std::os::unix::fs::symlink("/nonexistent", links.join(format!("l{i:04}"))).unwrap();
    }
    env.ok(&["backup", src.to_str().unwrap(), links.to_str().unwrap()]);
    let target = env.path("t");
    let target_s = target.to_str().unwrap().to_string();
    let inside = |p: &Path| target.join(p.strip_prefix("/").unwrap());
    let fresh = || {
        let _ = fs::remove_dir_all(&target);
        fs::create_dir_all(inside(&src)).unwrap();
        fs::create_dir_all(inside(&links)).unwrap();
        chown_tree(&target, NOBODY);
        for p in [&target, &inside(&src), &inside(&links)] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }
    };
    let restore = || {
        Command::new("timeout")
            .args(["-s", "KILL", "60"])
            .arg(cairn_bin())
            .args(["restore", "latest", "--target", &target_s, "--overwrite"])
            .env("CAIRN_REPOSITORY", env.repo())
            .env("CAIRN_PASSWORD_FILE", env.path("pw"))
            .output()
            .unwrap()
    };
    let suid = inside(&src).join("a_suid");

    // 1. Inode reuse: the attacker's file must never become root's setuid binary.
    for round in 0..5 {
        fresh();
        let a = as_nobody(INODE_REUSER, &[suid.to_str().unwrap()]);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let o = restore();
        let a = a.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        if let Ok(md) = fs::symlink_metadata(&suid)
            && fs::read(&suid).unwrap_or_default() == b"EVIL\n"
        {
            assert!(
                md.uid() != 0 && md.mode() & 0o6000 == 0,
                "round {round}: the attacker's file became root's, mode {:o} ({}): {err}",
                md.mode(),
                String::from_utf8_lossy(&a.stdout)
            );
        }
        assert!(o.status.success() || err.contains(&target_s), "{err}");
    }

    // 2. A FIFO in place of a file: the restore ends, naming it.
    fresh();
    let a = as_nobody(FIFO_PLANTER, &[suid.to_str().unwrap()]);
    let o = restore();
    a.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the restore hung or passed: {err}"
    );
    assert!(err.contains("a_suid"), "{err}");

    // 3. Entries renamed in right after creation are not adopted.
    fresh();
    let pool = env.path("pool");
    let _ = fs::remove_dir_all(&pool);
    fs::create_dir(&pool).unwrap();
    for i in 0..2000 {
        fs::write(pool.join(format!("p{i:04}")), b"attacker").unwrap();
    }
    chown_tree(&pool, NOBODY);
    let a = as_nobody(
        ADOPTER,
        &[
            inside(&links).to_str().unwrap(),
            pool.to_str().unwrap(),
            "20",
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = restore();
    let a = a.wait_with_output().unwrap();
    let adopted: Vec<_> = fs::read_dir(inside(&links))
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let md = fs::symlink_metadata(&p).ok()?;
            (md.is_file() && md.uid() == 0).then_some(p)
        })
        .collect();
    assert!(
        adopted.is_empty(),
        "{} of the attacker's files became root's ({} renamed in): {:?}\n{}",
        adopted.len(),
        String::from_utf8_lossy(&a.stdout).trim(),
        &adopted[..adopted.len().min(3)],
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_foreign_index_object_is_named_and_does_not_stop_restores_or_backups() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), prng(6, 20_000)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let junk = b"an index object from somewhere else".to_vec();
    let name = cairn_format::IndexId::of(&junk).to_hex();
    fs::write(env.path("repo/index").join(&name), &junk).unwrap();
    let t = env.path("t");
    let o = env.run(&["restore", "latest", "--target", t.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "skipped an unreadable index object: object index/{name}"
        )),
        "{err}"
    );
    assert_eq!(
        fs::read(t.join(src.strip_prefix("/").unwrap()).join("f")).unwrap(),
        prng(6, 20_000)
    );
    // Nor backups: what only the skipped object lists is stored again (a
    // duplicate, never a loss), and the new snapshot restores.
    fs::write(src.join("g"), prng(7, 30_000)).unwrap();
    let o = env.run(&["backup", src.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "skipped an unreadable index object: object index/{name}"
        )),
        "{err}"
    );
    let t2 = env.path("t2");
    env.ok(&["restore", "latest", "--target", t2.to_str().unwrap()]);
    assert_eq!(
        fs::read(t2.join(src.strip_prefix("/").unwrap()).join("g")).unwrap(),
        prng(7, 30_000)
    );
    let o = env.run(&["check"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&name));
    // Prune needs every index object: it refuses until the index is repaired.
    let o = env.run(&["prune"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "prune ran over an unreadable index"
    );
    env.ok(&["repair", "index"]);
    env.ok(&["prune"]);
    env.ok(&["check", "--read-data"]);
}

/// In ARGV[1]: when restore creates `a`, notes its inode and deletes it;
/// when restore creates a `b*` that gets the same inode number, renames it
/// to `a`; when `a` has been written, moves it to that `b*` name so the
/// `b*` content lands in it, then moves it back (so that `a`'s metadata,
/// setuid root, would go onto `b*`'s content).
const TOGGLER: &str = r#"
import os, sys, ctypes, struct, time, select
libc = ctypes.CDLL(None, use_errno=True)
d = sys.argv[1]
fd = libc.inotify_init()
libc.inotify_add_watch(fd, d.encode(), 0x100 | 0x8 | 0x2)
N = None; state = 0; bi = None
t0 = time.time()
def P(n): return os.path.join(d, n)
while time.time() - t0 < 8 and state < 4:
    r, _, _ = select.select([fd], [], [], 1)
    if not r: continue
    buf = os.read(fd, 65536); i = 0
    while i < len(buf):
        w, mask, cookie, ln = struct.unpack_from('iIII', buf, i)
        name = buf[i + 16:i + 16 + ln].rstrip(b'\0').decode(); i += 16 + ln
        try:
            if state == 0 and mask & 0x100 and name == 'a':
                N = os.lstat(P('a')).st_ino; os.unlink(P('a')); state = 1
            elif state == 1 and mask & 0x100 and name.startswith('b'):
                if os.lstat(P(name)).st_ino == N:
                    os.rename(P(name), P('a')); bi = name; state = 2
            elif state == 2 and mask & 0x8 and name == 'a':
                os.rename(P('a'), P(bi)); state = 3
            elif state == 3 and mask & 0x8 and name == bi:
                os.rename(P(bi), P('a')); state = 4
        except OSError:
            pass
print(state)
"#;

#[test]
fn restore_as_root_never_gives_one_entrys_metadata_to_another_entrys_content() {
    if euid() != 0 {
        eprintln!("skipped: the attack needs a root restore and an unprivileged attacker");
        return;
    }
    let env = Env::new();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    env.init(&[]);
    // A setuid root `a`, and 300 files of the attacker's (a home directory).
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), prng(9, 3000)).unwrap();
    fs::set_permissions(src.join("a"), fs::Permissions::from_mode(0o4755)).unwrap();
    let evil = [b"EVIL".as_slice(), &[b'E'; 8000]].concat();
    for i in 0..300 {
        let p = src.join(format!("b{i:03}"));
        fs::write(&p, &evil).unwrap();
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("t");
    let dir = target.join(src.strip_prefix("/").unwrap());
    let mut reached = 0;
    for round in 0..5 {
        let _ = fs::remove_dir_all(&target);
        fs::create_dir_all(&dir).unwrap();
        chown_tree(&dir, NOBODY);
        let mut p = dir.clone();
        while p != target {
            p.pop();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let a = as_nobody(TOGGLER, &[dir.to_str().unwrap()]);
        std::thread::sleep(std::time::Duration::from_millis(500));
        let o = env.run(&[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--overwrite",
        ]);
        let a = a.wait_with_output().unwrap();
        let state = String::from_utf8_lossy(&a.stdout).trim().to_string();
        if state == "4" {
            reached += 1;
        }
        let err = String::from_utf8_lossy(&o.stderr);
        let Ok(md) = fs::symlink_metadata(dir.join("a")) else {
            assert!(
                !o.status.success(),
                "`a` missing after a restore that passed"
            );
            continue;
        };
        let content = fs::read(dir.join("a")).unwrap_or_default();
        assert!(
            !(content.starts_with(b"EVIL") && md.mode() & 0o6000 != 0),
            "round {round} (attacker reached step {state}): `a` is setuid ({:o}, uid {}) with the attacker's content\n{err}",
            md.mode(),
            md.uid()
        );
        if !o.status.success() {
            assert!(err.contains(&target.display().to_string()), "{err}");
        }
    }
    eprintln!("the attacker completed the swap dance in {reached} of 5 rounds");
}
