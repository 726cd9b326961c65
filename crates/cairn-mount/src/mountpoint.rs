//! Checks on the mountpoint before mounting: FUSE present, the directory
//! usable, and no earlier mount in the way — a stale one left by a killed
//! process is cleaned up, a live one is an error saying how to remove it.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::MountError;

/// A mount listed in /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Filesystem type (`fuse.cairn` for ours).
    pub fstype: String,
    /// Source (`cairn` for ours).
    pub source: String,
    /// Device number as `major:minor` (names the mount's entry in /sys/class/bdi).
    pub dev: String,
}

impl MountEntry {
    /// Whether this is a cairn mount (the pure-Rust mount path records the
    /// type as plain `fuse`, libfuse as `fuse.cairn`; the source is `cairn`).
    pub fn is_cairn(&self) -> bool {
        self.source == "cairn" && (self.fstype == "fuse" || self.fstype.starts_with("fuse."))
    }

    fn describe(&self) -> String {
        if self.is_cairn() {
            "cairn".to_string()
        } else {
            format!("{} from {}", self.fstype, self.source)
        }
    }
}

/// Undo mountinfo's octal escapes (`\040` for a space, …).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of this process's namespace.
pub fn mounts() -> Vec<MountEntry> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            // id parent major:minor root mountpoint options [optional…] - fstype source super
            let (left, right) = l.split_once(" - ")?;
            let mut l = left.split(' ');
            let dev = l.nth(2)?;
            let mountpoint = l.nth(1)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next().unwrap_or("");
            Some(MountEntry {
                mountpoint: PathBuf::from(unescape(mountpoint)),
                fstype: fstype.to_string(),
                source: unescape(source),
                dev: dev.to_string(),
            })
        })
        .collect()
}

/// The absolute path of `p` without resolving its last component (which may
/// be a dead mount that cannot be resolved).
pub fn absolute(p: &Path) -> Result<PathBuf, MountError> {
    let abs = std::path::absolute(p).map_err(|e| MountError::Mountpoint {
        path: p.to_path_buf(),
        detail: e.to_string(),
    })?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = parent.canonicalize().map_err(|e| MountError::Mountpoint {
                path: p.to_path_buf(),
                detail: format!("its parent directory: {e}"),
            })?;
            Ok(parent.join(name))
        }
        _ => Ok(abs),
    }
}

/// Whether something is mounted at `path` (absolute, see [`absolute`]).
pub fn mounted_at(path: &Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| m.mountpoint == path)
}

fn lazy_unmount(path: &Path) -> Result<(), String> {
    let mut errors = Vec::new();
    for (prog, args) in [
        ("umount", &["-l"][..]),
        ("fusermount3", &["-u", "-z"][..]),
        ("fusermount", &["-u", "-z"][..]),
    ] {
        match Command::new(prog).args(args).arg(path).output() {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => errors.push(format!(
                "{prog}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => errors.push(format!("{prog}: {e}")),
        }
    }
    Err(errors.join("; "))
}

/// Make sure a mount at `path` can start; returns a note when a stale mount
/// was cleaned up.
pub fn prepare(path: &Path) -> Result<Option<String>, MountError> {
    prepare_with_device(path, Path::new("/dev/fuse"))
}

fn prepare_with_device(path: &Path, device: &Path) -> Result<Option<String>, MountError> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(MountError::FuseUnavailable(format!(
                "{} does not exist: load the fuse kernel module (`modprobe fuse`), or give the container the device (`--device /dev/fuse`)",
                device.display()
            )));
        }
        Err(e) => {
            return Err(MountError::FuseUnavailable(format!(
                "cannot open {}: {e} (mounting needs access to it: run as root, or add the user to the group that owns it)",
                device.display()
            )));
        }
    }
    let mut note = None;
    if let Some(m) = mounted_at(path) {
        // Reading the directory asks the serving process (a stat may be
        // answered from the kernel's attribute cache).
        match std::fs::read_dir(path) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                // The process serving this mount is gone (killed): the kernel
                // answers "transport endpoint is not connected" until it is
                // detached.
                lazy_unmount(path).map_err(|detail| MountError::Mountpoint {
                    path: path.to_path_buf(),
                    detail: format!(
                        "a stale {} mount is left here by a process that died, and removing it failed ({detail}); run `umount -l {}` as root",
                        m.describe(),
                        path.display()
                    ),
                })?;
                note = Some(format!(
                    "removed a stale {} mount at {} left by a process that died",
                    m.describe(),
                    path.display()
                ));
            }
            _ => {
                return Err(MountError::Mountpoint {
                    path: path.to_path_buf(),
                    detail: format!(
                        "is already mounted ({}); unmount it first with `umount {}`",
                        m.describe(),
                        path.display()
                    ),
                });
            }
        }
    }
    let meta = std::fs::metadata(path).map_err(|e| MountError::Mountpoint {
        path: path.to_path_buf(),
        detail: if e.kind() == ErrorKind::NotFound {
            "does not exist (create the directory first)".into()
        } else {
            e.to_string()
        },
    })?;
    if !meta.is_dir() {
        return Err(MountError::Mountpoint {
            path: path.to_path_buf(),
            detail: "is not a directory".into(),
        });
    }
    let nonempty = std::fs::read_dir(path)
        .map_err(|e| MountError::Mountpoint {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?
        .next()
        .is_some();
    if nonempty {
        return Err(MountError::Mountpoint {
            path: path.to_path_buf(),
            detail: "is not empty (mounting would hide its files); use an empty directory".into(),
        });
    }
    Ok(note)
}

/// Raise the kernel's read-ahead for the mount at `path` to `kib`. The FUSE
/// default (128 KiB) turns a sequential read into many small requests; a
/// larger window lets the kernel ask for up to 1 MiB at a time and keeps
/// several requests in flight. Needs root; without it the default stays.
pub fn tune_readahead(path: &Path, kib: u32) -> bool {
    let Some(m) = mounted_at(path) else {
        return false;
    };
    std::fs::write(
        format!("/sys/class/bdi/{}/read_ahead_kb", m.dev),
        kib.to_string(),
    )
    .is_ok()
}

/// Unmount `path` now, or lazily when it is busy.
pub fn unmount(path: &Path) -> Result<(), String> {
    match Command::new("umount").arg(path).output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => lazy_unmount(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape(r"/tmp/x\134y"), r"/tmp/x\y");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/tail\04"), r"/tail\04");
    }

    #[test]
    fn missing_fuse_device_is_a_clear_error() {
        let dir = std::env::temp_dir();
        let e = prepare_with_device(&dir, Path::new("/nonexistent/fuse")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("FUSE is not available"), "{msg}");
        assert!(msg.contains("modprobe fuse"), "{msg}");
    }

    #[test]
    fn this_process_sees_its_root_mount() {
        let root = mounts()
            .into_iter()
            .find(|m| m.mountpoint == Path::new("/"));
        let root = root.expect("a root mount");
        assert!(root.dev.contains(':'), "{root:?}");
    }
}
