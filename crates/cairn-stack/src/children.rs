//! Child processes and temporary files of a stack command, so that an
//! interrupted run leaves neither behind.
//!
//! - Every datastore tool and backup/restore command runs in a process group
//!   of its own, with a parent-death signal (SIGKILL when cairn dies, even
//!   by SIGKILL): `pg_restore -j` no longer goes on writing after cairn is
//!   killed.
//! - [`install_signal_handlers`]: on SIGINT, SIGTERM or SIGHUP every such
//!   group is killed, every registered temporary file removed, and cairn
//!   exits with 128 + the signal.
//! - [`TempDump`]: the PostgreSQL restore's temporary dump (the whole
//!   database in plaintext) is created 0600 in a directory of cairn's own
//!   (`temp_dir` in the catalog, default `<state dir>/tmp`, 0700), removed on
//!   every path, and [`remove_stale`] removes what a killed run left
//!   (`stack restore --resume` does it, naming each file).
//!
//! `start` commands are not put in a group of their own: the services they
//! launch must outlive cairn.
//!
//! The parent-death signal is not inherited by what a tool forks (the
//! workers of `pg_restore -j`), so tools that fork workers also get a
//! [`Watchdog`]: a small `sh` outside their group, holding the read end of
//! a pipe whose write end only cairn holds. When cairn dies, even by
//! SIGKILL, the pipe closes and the watchdog kills the tool's whole group.

use std::collections::BTreeSet;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Temporary files to remove if a signal ends the run.
static TEMPS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// The prefix of every temporary dump's name.
pub const TEMP_PREFIX: &str = "cairn-pg-";

/// Run `c` in a process group of its own that is killed with cairn.
pub fn contain(c: &mut Command) -> &mut Command {
    c.process_group(0);
    cairn_repo::sys::die_with_parent(c);
    c
}

/// Kill the process groups of cairn's contained children (each is the
/// leader of its group) and remove the registered temporary files.
pub fn kill_children_and_remove_temps() {
    let me = std::process::id();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ...: comm may hold spaces and parens.
            let Some(rest) = stat.rsplit_once(')').map(|x| x.1) else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (Some(ppid), Some(pgrp)) = (
                f.get(1).and_then(|x| x.parse::<u32>().ok()),
                f.get(2).and_then(|x| x.parse::<u32>().ok()),
            ) else {
                continue;
            };
            if ppid == me && pgrp == pid {
                cairn_repo::sys::kill_group(pid);
            }
        }
    }
    for p in std::mem::take(&mut *TEMPS.lock().unwrap_or_else(|e| e.into_inner())) {
        let _ = std::fs::remove_file(&p);
    }
}

/// On SIGINT, SIGTERM or SIGHUP: kill the children's groups, remove the
/// temporary files, say so, exit 128 + signal. Call once, early.
pub fn install_signal_handlers() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("cairn-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                kill_children_and_remove_temps();
                eprintln!(
                    "cairn: stopped by signal {sig}; its datastore tools were killed and its temporary dumps removed (an interrupted restore resumes with --resume)"
                );
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}

/// The directory temporary dumps go to: `configured` (used as it is: its
/// mode is the operator's), else cairn's own `<state dir>/tmp`, else
/// `<system temp>/cairn-<uid>`; cairn's own directories are created 0700 and
/// kept so (one that is not a directory of ours is refused).
pub fn temp_dir(configured: Option<&Path>) -> std::io::Result<PathBuf> {
    if let Some(d) = configured {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)?;
        return Ok(d.to_path_buf());
    }
    let uid = cairn_repo::sys::euid();
    let d = crate::trail::default_state_dir()
        .map(|s| s.join("tmp"))
        .unwrap_or_else(|| std::env::temp_dir().join(format!("cairn-{uid}")));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)?;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::symlink_metadata(&d)?;
    if !m.is_dir() || m.uid() != uid {
        return Err(std::io::Error::other(format!(
            "{} is not a directory of this user's: refusing to keep a plaintext dump there",
            d.display()
        )));
    }
    if m.mode() & 0o077 != 0 {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(d)
}

/// A temporary dump: created 0600 (O_EXCL, no symlink followed), removed
/// when dropped and on a signal.
pub struct TempDump {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl TempDump {
    /// Create one in `dir`.
    pub fn create(dir: &Path) -> std::io::Result<TempDump> {
        let mut rnd = [0u8; 8];
        cairn_format::crypto::random_bytes(&mut rnd);
        let path = dir.join(format!(
            "{TEMP_PREFIX}{}-{}.dump",
            std::process::id(),
            cairn_format::id::to_hex(&rnd)
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(cairn_repo::sys::O_NOFOLLOW)
            .open(&path)?;
        TEMPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.clone());
        Ok(TempDump {
            path,
            file: Some(file),
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for writing the dump.
    pub fn file(&mut self) -> &mut std::fs::File {
        self.file.as_mut().expect("open until dropped")
    }
}

impl Drop for TempDump {
    fn drop(&mut self) {
        self.file.take();
        let _ = std::fs::remove_file(&self.path);
        // What SQLite keeps next to a database file it opened.
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut p = self.path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
        TEMPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.path);
    }
}

/// Remove what killed runs left in the temporary directories of these
/// services (see [`remove_stale`]); returns the paths removed.
pub fn sweep_stale<'a>(
    services: impl Iterator<Item = &'a crate::catalog::Service>,
) -> Vec<PathBuf> {
    let dirs: std::collections::BTreeSet<PathBuf> = services
        .flat_map(|s| s.kind.datastore().temp_dirs(s))
        .collect();
    dirs.iter().flat_map(|d| remove_stale(d)).collect()
}

/// Remove temporary dumps that killed runs left in `dir` (a dump whose
/// creating process is gone); returns their paths.
pub fn remove_stale(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        let Some(rest) = n.strip_prefix(TEMP_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists() {
            continue; // another run, still alive
        }
        if std::fs::remove_file(e.path()).is_ok() {
            out.push(e.path());
        }
    }
    out
}

/// Kills a tool's process group when cairn dies (see the module text). Drop
/// it after the tool was waited for: the watchdog is killed first, so it
/// never signals a group id that was reused.
pub struct Watchdog {
    sh: Option<std::process::Child>,
}

impl Watchdog {
    /// Guard the group led by `pgid` (a child spawned with [`contain`]).
    pub fn guard(pgid: u32) -> std::io::Result<Watchdog> {
        // `read` returns when the pipe's write end (cairn's) closes.
        let sh = Command::new("sh")
            .args([
                "-c",
                "read _ ; kill -s KILL -- \"-$1\" 2>/dev/null",
                "cairn-watchdog",
            ])
            .arg(pgid.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()?;
        Ok(Watchdog { sh: Some(sh) })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(mut sh) = self.sh.take() {
            let _ = sh.kill();
            let _ = sh.wait();
        }
    }
}
