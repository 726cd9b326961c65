//! Temp-dir + command helper for the CLI tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Argon2id settings that keep tests fast (the default costs 64 MiB x 3 passes).
pub const CHEAP_KDF: [&str; 7] = [
    "--kdf-memory-kib",
    "1024",
    "--kdf-iterations",
    "1",
    "--kdf-parallelism",
    "1",
    "--insecure-kdf",
];

/// The cairn binary under test. CAIRN_TEST_BIN runs the suite against
/// another build (a release binary, or an older one to see a new test fail
/// on it).
pub fn cairn_bin() -> std::ffi::OsString {
    std::env::var_os("CAIRN_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_cairn").into())
}

/// The effective uid of the tests: the owner of a file just created.
pub fn euid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::metadata(f.path()).unwrap().uid()
}

/// A scratch directory with a repository location and a password file.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cairn-test-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("pw"), "correct horse\n").unwrap();
        Env { dir }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    /// A `cairn` command with the repository and password set.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(cairn_bin());
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CAIRN_REPOSITORY", self.repo())
            .env("CAIRN_PASSWORD_FILE", self.path("pw"))
            .stdin(Stdio::null());
        c
    }

    /// Run a command to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Run and require exit code 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "cairn {args:?} failed: {}\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Run with --json and parse stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// `cairn init` with a cheap KDF (tests open the repository many times).
    pub fn init(&self, extra: &[&str]) {
        let mut a = vec!["init"];
        a.extend_from_slice(&CHEAP_KDF);
        a.extend_from_slice(extra);
        self.ok(&a);
    }

    /// Run with another password file.
    pub fn run_with_password(&self, password_file: &str, args: &[&str]) -> Output {
        self.cmd()
            .env("CAIRN_PASSWORD_FILE", self.path(password_file))
            .args(args)
            .output()
            .unwrap()
    }

    /// Feed `data` to `cairn backup --stdin` and return the JSON summary.
    pub fn backup_stdin(&self, data: &[u8], name: &str) -> serde_json::Value {
        use std::io::Write;
        let mut child = self
            .cmd()
            .args(["backup", "--stdin", "--stdin-name", name, "--json"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        let w = std::thread::spawn(move || {
            for piece in data.chunks(1 << 20) {
                stdin.write_all(piece).unwrap();
            }
        });
        let o = child.wait_with_output().unwrap();
        w.join().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

/// Total size of the files below `p`.
pub fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    for e in walk(p) {
        let md = std::fs::symlink_metadata(&e).unwrap();
        if md.is_file() {
            n += md.len();
        }
    }
    n
}

/// Every path below `p` (not `p` itself), sorted.
pub fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Deterministic, portable pseudo-random bytes (SplitMix64).
pub fn prng(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compare two trees: same entries, contents, modes, mtimes, symlink targets.
pub fn assert_same_tree(a: &Path, b: &Path) {
    use std::os::unix::fs::MetadataExt;
    let ea: Vec<_> = walk(a)
        .iter()
        .map(|p| p.strip_prefix(a).unwrap().to_path_buf())
        .collect();
    let eb: Vec<_> = walk(b)
        .iter()
        .map(|p| p.strip_prefix(b).unwrap().to_path_buf())
        .collect();
    assert_eq!(ea, eb, "entry lists differ");
    for rel in ea {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let (ma, mb) = (
            std::fs::symlink_metadata(&pa).unwrap(),
            std::fs::symlink_metadata(&pb).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{rel:?} type");
        assert_eq!(ma.mode(), mb.mode(), "{rel:?} mode");
        assert_eq!(ma.uid(), mb.uid(), "{rel:?} uid");
        assert_eq!(ma.gid(), mb.gid(), "{rel:?} gid");
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "{rel:?} mtime"
        );
        if ma.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&pa).unwrap(),
                std::fs::read_link(&pb).unwrap()
            );
        } else if ma.is_file() {
            assert_eq!(ma.len(), mb.len(), "{rel:?} size");
            assert!(files_equal(&pa, &pb), "{rel:?} content differs");
        }
    }
}

fn files_equal(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
    fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        n
    }
}

/// `promtool check metrics` (scripts/promtool.sh fetches it on first use)
/// must accept the textfile at `p`.
pub fn assert_promtool_accepts(p: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/promtool.sh");
    let o = Command::new(script)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(p).unwrap())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "promtool check metrics {}: {}{}\n{}",
        p.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(p).unwrap()
    );
}
