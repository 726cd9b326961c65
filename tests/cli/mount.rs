//! `cairn mount`: content and metadata through FUSE, random reads, tar, the
//! mount's lifecycle (signals, stale mounts, busy mountpoints, daemon mode),
//! refresh, and staging a database straight from the mount.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::stack::{drop_pg, pg_content, psql, unique};
use crate::util::{Env, assert_same_tree, prng, walk};

/// Whether a cairn FUSE mount is at `path`.
fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = path.to_str().unwrap().replace(' ', "\\040");
    info.lines().any(|l| {
        let (left, right) = l.split_once(" - ").unwrap();
        left.split(' ').nth(4) == Some(want.as_str())
            && right.starts_with("fuse")
            && right.split(' ').nth(1) == Some("cairn")
    })
}

/// A `cairn mount` process; unmounts and reaps it when dropped.
pub(crate) struct Mounted {
    child: Option<Child>,
    path: PathBuf,
}

impl Mounted {
    pub(crate) fn start(env: &Env, mnt: &Path, extra: &[&str]) -> Mounted {
        let child = env
            .cmd()
            .arg("mount")
            .arg(mnt)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut m = Mounted {
            child: Some(child),
            path: mnt.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        // A stale mount from a killed process is listed too, but cannot be
        // stat'ed; wait for the live one.
        while !(is_mounted(mnt) && fs::read_dir(mnt).is_ok()) {
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                let o = m.child.take().unwrap().wait_with_output().unwrap();
                panic!(
                    "cairn mount exited with {st}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            assert!(Instant::now() < deadline, "mount did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Send SIGTERM and wait: the process must unmount and exit 0.
    pub(crate) fn stop(self) -> String {
        self.stop_with_stderr().0
    }

    /// [`Self::stop`], returning standard output and standard error.
    fn stop_with_stderr(mut self) -> (String, String) {
        let mut child = self.child.take().unwrap();
        let st = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "mount did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "mount exited with {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!is_mounted(&self.path), "still mounted after SIGTERM");
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn set_mtime(p: &Path, secs: u64, nanos: u32) {
    let f = fs::File::open(p).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
        .unwrap();
}

/// Files of every kind, one large random file and one sparse file.
fn build_source(src: &Path) {
    fs::create_dir_all(src.join("dir/sub")).unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(src.join("one"), b"x").unwrap();
    fs::write(src.join("random-40m"), prng(11, 40 << 20)).unwrap();
    let sparse = fs::File::create(src.join("sparse-64m")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    sparse.write_all_at(&prng(12, 3 << 20), 20 << 20).unwrap();
    sparse.write_all_at(b"tail", (64 << 20) - 4).unwrap();
    drop(sparse);
    std::os::unix::fs::symlink("one", src.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", src.join("link-dangling")).unwrap();
    fs::write(src.join(OsStr::from_bytes(b"not-utf8-\xff")), b"bytes name").unwrap();
    fs::write(src.join("Grüße-日本語.txt"), "unicode name").unwrap();
    fs::write(src.join("mode-751"), b"mode").unwrap();
    fs::set_permissions(src.join("mode-751"), fs::Permissions::from_mode(0o751)).unwrap();
    set_mtime(&src.join("one"), 1_000_000_000, 123_456_789);
    assert!(
        Command::new("mkfifo")
            .arg(src.join("fifo"))
            .status()
            .unwrap()
            .success()
    );
    for i in 0..2000 {
        let d = src.join("dir").join(format!("d{}", i % 20));
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join(format!("f{i:04}")),
            format!("small {i}\n").repeat(1 + i % 9),
        )
        .unwrap();
    }
    fs::write(src.join("dir/sub/deep"), prng(13, 300_000)).unwrap();
    set_mtime(&src.join("dir/sub"), 1_500_000_000, 7);
}

fn mounted_source(mnt: &Path, src: &Path) -> PathBuf {
    mnt.join("snapshots/latest")
        .join(src.strip_prefix("/").unwrap())
}

/// A small deterministic generator for offsets and sizes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn mounted_snapshot_matches_the_source_in_content_metadata_and_random_reads() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    build_source(&src);
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Mounted::start(&env, &mnt, &["--cache-size", "64MiB"]);

    // Top levels.
    let top: Vec<_> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top.len(), 3, "{top:?}");
    let snaps: Vec<_> = fs::read_dir(mnt.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    let name = snaps.iter().find(|n| *n != "latest").unwrap();
    assert_eq!(
        fs::read_link(mnt.join("snapshots/latest")).unwrap(),
        Path::new(name)
    );

    // Every entry: type, mode, owner, mtime to the nanosecond, size, content,
    // symlink targets (the fifo is compared by type and metadata).
    let root = mounted_source(&mnt, &src);
    assert_same_tree(&src, &root);
    assert!(walk(&root).len() > 2000);

    // 1,000 random ranges of 1 B – 8 MiB against the source.
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut buf = vec![0u8; 8 << 20];
    let mut want = vec![0u8; 8 << 20];
    for i in 0..1000 {
        let name = if i % 3 == 0 {
            "sparse-64m"
        } else {
            "random-40m"
        };
        let (a, b) = (
            fs::File::open(src.join(name)).unwrap(),
            fs::File::open(root.join(name)).unwrap(),
        );
        let len = a.metadata().unwrap().len();
        // Sizes spread evenly over the powers of two from 1 B to 8 MiB.
        let size = ((1u64 << (rng.next() % 24)) + rng.next() % (1 << (rng.next() % 24)))
            .clamp(1, 8 << 20) as usize;
        let off = rng.next() % len;
        let n_want = a.read_at(&mut want[..size], off).unwrap();
        let mut got = 0;
        while got < size {
            let n = b.read_at(&mut buf[got..size], off + got as u64).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        let mut full = n_want;
        while full < size {
            let n = a.read_at(&mut want[full..size], off + full as u64).unwrap();
            if n == 0 {
                break;
            }
            full += n;
        }
        assert_eq!(got, full, "range {i}: {name} at {off} size {size}: length");
        assert!(
            buf[..got] == want[..full],
            "range {i}: {name} at {off} size {size}: content differs"
        );
    }

    // Seeking past the end reads nothing; writing is refused.
    let f = fs::File::open(root.join("one")).unwrap();
    assert_eq!(f.read_at(&mut buf[..10], 5).unwrap(), 0);
    let e = fs::OpenOptions::new()
        .write(true)
        .open(root.join("one"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc_erofs()), "{e}");
    drop(f);
    let out = m.stop();
    assert!(out.contains("unmounted"), "{out}");
}

fn libc_erofs() -> i32 {
    30 // EROFS on Linux
}

/// `tar` over the mount and over the source: same bytes with a fixed member
/// order, and the same member list in readdir order.
#[test]
fn tar_over_the_mount_equals_tar_over_the_source() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    build_source(&src);
    fs::remove_file(src.join("fifo")).unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Mounted::start(&env, &mnt, &[]);
    let root = mounted_source(&mnt, &src);

    let tar = |dir: &Path, extra: &[&str]| -> Vec<u8> {
        let o = Command::new("tar")
            .current_dir(dir)
            .args(extra)
            .args(["-cf", "-", "."])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "tar in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    };
    let a = tar(&src, &["--sort=name"]);
    let b = tar(&root, &["--sort=name"]);
    assert!(a.len() > 40 << 20);
    assert!(
        a == b,
        "tar --sort=name streams differ ({} vs {} bytes)",
        a.len(),
        b.len()
    );

    // Unsorted (readdir order): same members with the same metadata.
    let list = |t: &[u8]| -> Vec<String> {
        let mut c = Command::new("tar")
            .args(["-tvf", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = c.stdin.take().unwrap();
        let t = t.to_vec();
        let w = std::thread::spawn(move || {
            use std::io::Write;
            stdin.write_all(&t).unwrap();
        });
        let mut s = String::new();
        c.stdout.as_mut().unwrap().read_to_string(&mut s).unwrap();
        w.join().unwrap();
        assert!(c.wait().unwrap().success());
        let mut v: Vec<String> = s.lines().map(String::from).collect();
        v.sort();
        v
    };
    let (la, lb) = (list(&tar(&src, &[])), list(&tar(&root, &[])));
    assert_eq!(la.len(), lb.len());
    assert_eq!(la, lb);
    m.stop();
}

#[test]
fn killed_mount_is_cleaned_up_and_a_busy_or_bad_mountpoint_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), "content").unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();

    // SIGKILL leaves a dead mount behind…
    let mut m = Mounted::start(&env, &mnt, &[]);
    let mut c = m.child.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    let e = fs::read_dir(&mnt).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(107), "{e}"); // ENOTCONN
    // …which the next mount detects and removes.
    let m2 = Mounted::start(&env, &mnt, &[]);
    assert_eq!(
        fs::read_to_string(mounted_source(&mnt, &src).join("f")).unwrap(),
        "content"
    );

    // A live mount is not mounted over.
    let o = env.cmd().arg("mount").arg(&mnt).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("already mounted") && err.contains("umount"),
        "{err}"
    );
    let pid = m2.pid();
    m2.stop();
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || !is_mounted(&mnt));
    drop(m);

    // The stale mount's note is printed on stderr.
    let mut m3 = Mounted::start(&env, &mnt, &[]);
    let mut c3 = m3.child.take().unwrap();
    c3.kill().unwrap();
    c3.wait().unwrap();
    let o = {
        let mut c = env
            .cmd()
            .arg("mount")
            .arg(&mnt)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(is_mounted(&mnt) && fs::read_dir(&mnt).is_ok()) {
            assert!(Instant::now() < deadline && c.try_wait().unwrap().is_none());
            std::thread::sleep(Duration::from_millis(20));
        }
        Command::new("kill")
            .args(["-INT", &c.id().to_string()])
            .status()
            .unwrap();
        c.wait_with_output().unwrap()
    };
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("removed a stale cairn mount"), "{err}");
    assert!(!is_mounted(&mnt));

    // Missing and non-empty mountpoints.
    let o = env
        .cmd()
        .arg("mount")
        .arg(env.path("nope"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("nope") && err.contains("does not exist"),
        "{err}"
    );
    let o = env.cmd().arg("mount").arg(&src).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is not empty"), "{err}");
}

#[test]
fn new_snapshots_appear_and_services_groups_and_daemon_mode_work() {
    let env = Env::new();
    env.init(&[]);
    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();
    env.backup_stdin(b"first dump\n", "dump.sql");
    let o = env
        .cmd()
        .args(["mount", "--daemon", "--log"])
        .arg(env.path("mount.log"))
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(is_mounted(&mnt), "daemon returned before mounting");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("mounted at"), "{stdout}");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            if is_mounted(&self.0) {
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
    }
    let _guard = Unmount(mnt.clone());
    assert_eq!(fs::read_dir(mnt.join("services")).unwrap().count(), 0);

    // A service snapshot made while mounted shows up on the next listing.
    let mut c = env
        .cmd()
        .args([
            "backup",
            "-q",
            "--stdin",
            "--stdin-name",
            "db.dump",
            "--service",
            "orders",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        c.stdin.take().unwrap().write_all(b"orders dump\n").unwrap();
    }
    assert!(c.wait().unwrap().success());
    let svcs: Vec<_> = fs::read_dir(mnt.join("services"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(svcs, vec![OsStr::new("orders").to_os_string()]);
    assert_eq!(
        fs::read_to_string(mnt.join("services/orders/latest/db.dump")).unwrap(),
        "orders dump\n"
    );
    assert_eq!(fs::read_dir(mnt.join("snapshots")).unwrap().count(), 3);

    // An outside umount ends the background process.
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    assert!(!is_mounted(&mnt));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = fs::read_to_string(env.path("mount.log")).unwrap_or_default();
        if log.contains("unmounted from outside") {
            break;
        }
        assert!(Instant::now() < deadline, "daemon did not exit: {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Staging straight from the mount: `pg_restore -j 2` reads the custom-format
/// dump of a stack backup from the mounted snapshot, with no copy first.
#[test]
fn postgres_stages_from_the_mount_with_parallel_pg_restore() {
    let env = Env::new();
    let db = unique();
    let staged = format!("{db}_staging");
    struct Guard(Vec<String>);
    impl Drop for Guard {
        fn drop(&mut self) {
            for d in &self.0 {
                drop_pg(d);
            }
        }
    }
    let _guard = Guard(vec![db.clone(), staged.clone()]);
    psql("postgres", &format!("CREATE DATABASE \"{db}\""));
    psql(
        &db,
        "create table customers (id int primary key, name text);
         insert into customers select g, 'customer ' || g from generate_series(1, 20000) g;
         create table orders (id int primary key, customer int references customers, total numeric);
         insert into orders select g, 1 + g % 20000, g * 1.5 from generate_series(1, 50000) g;
         create index on orders (customer);",
    );
    let catalog = env.path("cairn.toml");
    fs::write(
        &catalog,
        format!(
            "[service.pg]\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nuser = \"postgres\"\ndatabase = \"{db}\"\n"
        ),
    )
    .unwrap();
    env.init(&[]);
    env.ok(&["stack", "backup", "--catalog", catalog.to_str().unwrap()]);
    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Mounted::start(&env, &mnt, &["--service", "pg"]);
    let latest = mnt.join("services/pg/latest");
    let files: Vec<PathBuf> = walk(&latest).into_iter().filter(|p| p.is_file()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    psql("postgres", &format!("CREATE DATABASE \"{staged}\""));
    let o = Command::new("pg_restore")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-j",
            "2",
            "--no-owner",
            "-d",
            &staged,
        ])
        .arg(&files[0])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pg_restore from the mount: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(pg_content(&staged), pg_content(&db));
    assert!(pg_content(&db).contains("orders|50000"));
    m.stop();
}

/// A damaged chunk is never served: the read fails with EIO and the mount
/// names the file; undamaged files still read.
#[test]
fn damaged_chunk_fails_the_read_and_names_the_file() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("big"), prng(21, 8 << 20)).unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    fs::write(src.join("other"), prng(22, 100_000)).unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    // The largest pack holds the data of `big` alone.
    let mut packs: Vec<PathBuf> = walk(&env.repo().join("data"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    packs.sort_by_key(|p| fs::metadata(p).unwrap().len());
    let victim = packs.last().unwrap();
    let mut bytes = fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(victim, bytes).unwrap();

    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut m = Mounted::start(&env, &mnt, &[]);
    let root = mounted_source(&mnt, &src);
    let e = fs::read(root.join("big")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(5), "{e}"); // EIO
    assert_eq!(fs::read(root.join("other")).unwrap(), prng(22, 100_000));

    let mut c = m.child.take().unwrap();
    Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status()
        .unwrap();
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(c.wait().unwrap().success());
    assert!(
        err.contains("cannot read") && err.contains("src/big") && err.contains("data/"),
        "{err}"
    );
}

/// List a directory of the mount: its entries, or the error of opening or
/// reading it.
fn list_mounted(d: &Path) -> std::io::Result<Vec<fs::DirEntry>> {
    fs::read_dir(d)?.collect()
}

/// A planted tree bomb (2^40 paths from 41 tree blobs) mounted: a walk of it
/// ends within the entry limit, per snapshot, so the honest snapshot next to
/// it still lists and reads; the depth limit stops listings below it. Both
/// are named on the mount's standard error.
#[test]
fn a_mounted_tree_bomb_shows_no_more_than_the_entry_and_depth_limits_and_blocks_nothing_else() {
    const EIO: i32 = 5;
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    let bomb = crate::hostile::plant_tree_bomb(&env, &src);
    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();

    let m = Mounted::start(&env, &mnt, &["--max-tree-entries", "5000"]);
    let snaps = mnt.join("snapshots");
    let bomb_dir = snaps.join(fs::read_link(snaps.join("latest")).unwrap());
    let started = Instant::now();
    let (mut seen, mut refused) = (0u64, 0u64);
    let mut todo = vec![bomb_dir.clone()];
    while let Some(d) = todo.pop() {
        match list_mounted(&d) {
            Ok(entries) => {
                for e in entries {
                    seen += 1;
                    if e.file_type().unwrap().is_dir() {
                        todo.push(e.path());
                    }
                }
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(EIO), "{}: {e}", d.display());
                refused += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the walk of the bomb did not end: {seen} entries seen"
        );
    }
    assert!(
        seen <= 5000 && refused > 0,
        "{seen} seen, {refused} refused"
    );
    // The honest snapshot is not blocked by the bomb's budget.
    let honest = list_mounted(&snaps)
        .unwrap()
        .into_iter()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap() != "latest" && *p != bomb_dir)
        .unwrap();
    assert_eq!(
        fs::read(honest.join(src.strip_prefix("/").unwrap()).join("f")).unwrap(),
        prng(3, 50_000)
    );
    let (_, err) = m.stop_with_stderr();
    assert!(
        err.contains("more than 5000 entries (--max-tree-entries)")
            && err.contains(&format!(
                "snapshots/{}/",
                bomb_dir.file_name().unwrap().to_string_lossy()
            )),
        "{err}"
    );
    assert!(!bomb.is_empty());

    let m = Mounted::start(&env, &mnt, &["--max-tree-depth", "3"]);
    assert_eq!(list_mounted(&bomb_dir.join("a/a/a")).unwrap().len(), 2);
    let e = list_mounted(&bomb_dir.join("a/a/a/b")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(EIO), "{e}");
    let (_, err) = m.stop_with_stderr();
    assert!(
        err.contains("a/a/a/b: its tree is more than 3 directories deep (--max-tree-depth)"),
        "{err}"
    );
}
