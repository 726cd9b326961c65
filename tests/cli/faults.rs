//! Bad days seen from the command line: a full disk under the repository, and
//! a backup interrupted by Ctrl-C or killed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{CHEAP_KDF, Env, prng};

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "cannot mount a tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_disk_fails_the_backup_cleanly_and_the_repository_stays_whole() {
    let env = Env::new();
    let small = env.path("small");
    let _fs = Tmpfs::mount(&small, "24m");
    let repo = small.join("repo");
    let r = repo.to_str().unwrap();
    let mut init = vec!["init", "--repo", r];
    init.extend(CHEAP_KDF);
    env.ok(&init);
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("first"), prng(31, 4 << 20)).unwrap();
    env.ok(&["backup", "--repo", r, "-q", src.to_str().unwrap()]);

    fs::write(src.join("too-big"), prng(32, 48 << 20)).unwrap();
    let o = env.run(&["backup", "--repo", r, "-q", src.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    let snaps = env.json(&["snapshots", "--repo", r]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");

    // Nothing committed is damaged; the leftovers are only notes, and prune
    // reclaims them (with room to write its own index and marker).
    let o = env.run(&["check", "--repo", r, "--read-data"]);
    assert!(
        o.status.success(),
        "check after a full disk: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    fs::remove_file(src.join("too-big")).unwrap();
    let target = env.path("restored");
    env.ok(&[
        "restore",
        "--repo",
        r,
        "latest",
        "--target",
        target.to_str().unwrap(),
    ]);
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(fs::read(restored.join("first")).unwrap(), prng(31, 4 << 20));
    env.ok(&["prune", "--repo", r, "--keep-delete", "0s"]);
    env.ok(&["prune", "--repo", r, "--keep-delete", "0s"]);
    env.ok(&["check", "--repo", r, "--read-data"]);
    // With the space back, the next backup works.
    fs::write(src.join("second"), prng(33, 4 << 20)).unwrap();
    env.ok(&["backup", "--repo", r, "-q", src.to_str().unwrap()]);
    env.ok(&["check", "--repo", r, "--read-data"]);
}

/// Ctrl-C (SIGINT) and SIGKILL in the middle of a backup: no snapshot, a
/// repository that checks clean, and a next backup that finishes.
#[test]
fn interrupted_backup_leaves_no_snapshot_and_a_whole_repository() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("base"), prng(41, 2 << 20)).unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    for (i, signal) in ["-INT", "-KILL", "-TERM"].iter().enumerate() {
        fs::write(src.join(format!("big{i}")), prng(42 + i as u64, 200 << 20)).unwrap();
        let mut c = env
            .cmd()
            .args(["backup", "-q", src.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until it has written some packs, then interrupt.
        let data = env.repo().join("data");
        let before = crate::util::walk(&data).len();
        let deadline = Instant::now() + Duration::from_secs(60);
        while crate::util::walk(&data).len() < before + 3 {
            assert!(Instant::now() < deadline, "backup wrote nothing");
            assert!(
                c.try_wait().unwrap().is_none(),
                "backup finished before {signal}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Command::new("kill")
            .args([*signal, &c.id().to_string()])
            .status()
            .unwrap();
        let st = c.wait().unwrap();
        assert!(!st.success(), "{signal}: backup exited {st}");
        let snaps = env.json(&["snapshots"]);
        assert_eq!(snaps.as_array().unwrap().len(), 1 + i, "{signal}: {snaps}");
        env.ok(&["check", "--read-data"]);
        // The next backup finishes. (It does not reuse the interrupted one's
        // packs: they are in no index until prune reads their headers.)
        env.ok(&["backup", "-q", src.to_str().unwrap()]);
        env.ok(&["check", "--read-data"]);
    }
}

/// Files deleted while the backup runs: each one either is in the snapshot
/// with its full content or is skipped with a warning naming it (exit 3);
/// the snapshot is never torn and the repository checks clean.
#[test]
fn files_vanishing_during_a_backup_are_skipped_by_name() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    let content = |i: usize| format!("file {i}\n").repeat(1 + i % 50);
    let mut vanished_seen = false;
    for attempt in 0..10 {
        let _ = fs::remove_dir_all(&src);
        fs::create_dir(&src).unwrap();
        for i in 0..4000 {
            fs::write(src.join(format!("f{i:05}")), content(i)).unwrap();
        }
        let child = env
            .cmd()
            .args(["backup", "-q", "--json", src.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Delete from the end while the backup walks from the start.
        let deleter = {
            let src = src.clone();
            std::thread::spawn(move || {
                for i in (0..4000).rev() {
                    let _ = fs::remove_file(src.join(format!("f{i:05}")));
                }
            })
        };
        let o = child.wait_with_output().unwrap();
        deleter.join().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        match o.status.code() {
            Some(0) => {}
            Some(3) => {
                assert!(err.contains("(skipped)"), "exit 3 without naming: {err}");
                vanished_seen = true;
            }
            other => panic!("attempt {attempt}: backup exited {other:?}: {err}"),
        }
        // Whatever the snapshot holds is whole.
        let target = env.path(&format!("t{attempt}"));
        env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
        let r = target.join(src.strip_prefix("/").unwrap());
        for e in fs::read_dir(&r).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let i: usize = name[1..].parse().unwrap();
            assert_eq!(fs::read_to_string(e.path()).unwrap(), content(i), "{name}");
        }
        env.ok(&["check", "--read-data"]);
        if vanished_seen {
            break;
        }
    }
    assert!(
        vanished_seen,
        "in 10 attempts no file vanished between listing and reading"
    );
}

/// A file written to while the backup reads it is stored as read and named
/// ("file changed as it was read", like tar and borg), exit 3; the next
/// backup of the quiet file reads it again and is clean.
#[test]
fn a_file_changing_while_it_is_read_is_named_and_read_again_next_time() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    let f = src.join("busy.log");
    fs::write(&f, vec![1u8; 48 << 20]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (f, stop) = (f.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::{Seek, SeekFrom, Write};
            let mut h = fs::OpenOptions::new().write(true).open(&f).unwrap();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                h.seek(SeekFrom::Start((i * 4096) % (48 << 20))).unwrap();
                h.write_all(&i.to_le_bytes()).unwrap();
                i += 1;
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    let o = env.run(&["backup", "-q", src.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("busy.log: file changed as it was read"),
        "{err}"
    );
    let again = env.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(again["summary"]["files_changed"], 1, "{again}");
}

/// A restore that fails because of the target (a 4 MiB tmpfs for 12 MiB
/// of files) names the target's error ("No space left on device") and does
/// not call the repository damaged.
#[test]
fn restore_failing_on_a_full_target_blames_the_target_not_the_repository() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    for i in 0..4 {
        fs::write(src.join(format!("f{i}")), crate::util::prng(i, 3 << 20)).unwrap();
    }
    env.ok(&["backup", src.to_str().unwrap()]);
    let mnt = env.path("small");
    fs::create_dir(&mnt).unwrap();
    let m = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=4m",
            "tmpfs",
            mnt.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(m.success(), "mounting a small tmpfs (tests run as root)");
    let o = env.run(&[
        "restore",
        "latest",
        "--target",
        mnt.join("t").to_str().unwrap(),
    ]);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("the repository is not at fault"), "{err}");
    assert!(!err.contains("the repository is damaged"), "{err}");
    let check = env.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
}
