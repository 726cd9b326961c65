//! The few Unix calls std does not offer: finding holes in sparse files, host
//! and user names, user ids, read-ahead hints, allocator tuning. Through
//! `rustix` where it has a safe call (fsat.rs does the descriptor-relative
//! restore calls the same way).
//!
//! `unsafe` is allowed here only, for what rustix does not wrap: the password
//! database (`getpwuid_r`) and glibc's allocator controls. Each call passes
//! pointers to live buffers owned by the caller for the duration of the call,
//! and checks the return value.
#![allow(unsafe_code)]

use std::io;

/// The data regions `[start, end)` of a file of `size` bytes, using
/// SEEK_DATA/SEEK_HOLE. Filesystems without hole support report one region.
pub fn data_regions(f: &std::fs::File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{SeekFrom, seek};
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        let start = match seek(f, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break, // no more data: the rest is a hole
            Err(rustix::io::Errno::INVAL) => return Ok(vec![(0, size)]), // SEEK_DATA unsupported
            Err(e) => return Err(e.into()),
        };
        let end = seek(f, SeekFrom::Hole(start))?;
        let (s, e) = (start, end.min(size));
        if s >= size {
            break;
        }
        if e > s {
            out.push((s, e));
        }
        pos = e.max(s + 1);
    }
    // Reset the offset for the reads that follow.
    seek(f, SeekFrom::Start(0))?;
    Ok(out)
}

/// This machine's host name.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The current user's name, from the password database.
pub fn username() -> String {
    let uid = rustix::process::getuid().as_raw();
    // SAFETY: passwd is plain old data; getpwuid_r fills it.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers refer to live, correctly sized buffers.
    let r = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pw,
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
            &mut result,
        )
    };
    if r != 0 || result.is_null() {
        return uid.to_string();
    }
    // SAFETY: on success pw_name points into `buf`, NUL-terminated.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    name.to_string_lossy().into_owned()
}

/// Effective user id.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Effective group id.
pub fn egid() -> u32 {
    rustix::process::getegid().as_raw()
}

/// Give the allocator's free pages back to the kernel (glibc keeps freed
/// memory in its heaps, fragmented, and in the arenas of threads that have
/// finished; after loading an index that is tens of MB of dead decode
/// buffers). Elsewhere a no-op.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only returns whole free pages
    // of glibc's heaps to the kernel and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Allocator settings (glibc), chosen by measurement (benches/results/peers-*.md):
/// one malloc arena instead of one per thread (freed buffers of the worker
/// threads were kept in their own arenas: peak RSS of a 1.2 GB backup 230 →
/// 130 MB, restore 128 → 89 MB, no slower), and for the commands that read a
/// stream through large buffers (backup, dump, stack) or write packs (forget
/// and prune) buffers of 1 MiB and more mapped on their own and returned on
/// free (backup 130 → 94 MB; a prune repacking 23 packs 104 → 74 MB, at the
/// cost of 0.3 s of page faults).
/// `check` and `restore` keep the default threshold: mapping every pack and
/// chunk buffer anew cost `check` 20 % and `restore` 1.3 s of system time on
/// 2.5 GB (benches/results/peers-2026-11-24-final-a.md).
///
/// Call it at the start of `main`, before any other thread exists.
pub fn tune_allocator(streaming: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc malloc parameters; the caller runs
    // it before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        if streaming {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = streaming;
}

/// Ask the kernel to start reading a whole file into the page cache now,
/// asynchronously (`posix_fadvise(WILLNEED)`), so that reads of many small
/// files overlap on the device instead of waiting one at a time. Advisory:
/// failures are ignored.
pub fn prefetch(f: &std::fs::File) {
    prefetch_range(f, 0, 0);
}

/// Like [`prefetch`], for `len` bytes from `offset` (0 = to the end).
pub fn prefetch_range(f: &std::fs::File, offset: u64, len: u64) {
    let _ = rustix::fs::fadvise(
        f,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::WillNeed,
    );
}

/// Make the child `c` will spawn receive SIGKILL when the thread that
/// spawned it dies — with cairn, even when cairn is killed by SIGKILL (the
/// parent-death signal survives exec). Only for children that end before
/// that thread does: the tools it waits for.
pub fn die_with_parent(c: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec; it only
    // makes the prctl system call, which is async-signal-safe, allocates
    // nothing and takes no lock.
    unsafe {
        c.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(io::Error::from)
        });
    }
}

/// SIGKILL a process group (its leader's pid); errors are ignored (it may
/// be gone already).
pub fn kill_group(pgid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pgid as i32) {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
}

/// `O_NOFOLLOW`, for `OpenOptionsExt::custom_flags`.
pub const O_NOFOLLOW: i32 = libc::O_NOFOLLOW;

/// The extended attributes of `path` itself (a symlink's own, not its
/// target's), as (name, value) pairs in name order. A filesystem without
/// extended attributes has none; an attribute removed between listing and
/// reading is left out.
pub fn read_xattrs(path: &std::path::Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use std::os::unix::ffi::OsStrExt;
    let mut small = [0u8; 512];
    let names: Vec<u8> = match rustix::fs::llistxattr(path, &mut small[..]) {
        Ok(0) => return Ok(Vec::new()),
        Ok(n) => small[..n].to_vec(),
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(rustix::io::Errno::RANGE) => loop {
            let want = rustix::fs::llistxattr_query(path)?;
            let mut big = vec![0u8; want.max(1)];
            match rustix::fs::llistxattr(path, &mut big[..]) {
                Ok(n) => {
                    big.truncate(n);
                    break big;
                }
                Err(rustix::io::Errno::RANGE) => continue,
                Err(e) => return Err(e.into()),
            }
        },
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let os = std::ffi::OsStr::from_bytes(name);
        let value = loop {
            let want = match rustix::fs::lgetxattr_query(path, os) {
                Ok(n) => n,
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            };
            let mut v = vec![0u8; want];
            match rustix::fs::lgetxattr(path, os, &mut v[..]) {
                Ok(n) => {
                    v.truncate(n);
                    break Some(v);
                }
                Err(rustix::io::Errno::RANGE) => continue,
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(v) = value {
            out.push((name.to_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}

/// Set an extended attribute through a descriptor. `real` says whether the
/// descriptor is a real one (files, directories) or `O_PATH` (symlinks,
/// FIFOs, devices), for which the attribute is set through its
/// `/proc/self/fd` link: that names this inode itself (a symlink's own
/// attributes), not a path that could be swapped.
pub fn set_xattr(
    fd: std::os::fd::BorrowedFd<'_>,
    real: bool,
    name: &[u8],
    value: &[u8],
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::OsStr::from_bytes(name);
    let flags = rustix::fs::XattrFlags::empty();
    if real {
        rustix::fs::fsetxattr(fd, name, value, flags)?;
    } else {
        let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        rustix::fs::setxattr(link.as_str(), name, value, flags)?;
    }
    Ok(())
}

/// Let a closed standard output end the process quietly, as for other Unix
/// tools (`cairn snapshots | head -1`): Rust ignores SIGPIPE, and a write to
/// a closed pipe would then panic in `println!`.
#[allow(unsafe_code)]
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to its default, before any
    // thread is started, has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Point standard output at `/dev/null` (`-q` of the commands whose
/// output is a report, not the answer asked for): what they would print
/// goes nowhere, errors and warnings still reach standard error.
pub fn silence_stdout() -> io::Result<()> {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    rustix::stdio::dup2_stdout(&null)?;
    Ok(())
}

/// The names of the extended attributes of an open entry (see
/// [`set_xattr`] for `real`). A file system without them has none.
pub fn xattr_names_fd(fd: std::os::fd::BorrowedFd<'_>, real: bool) -> io::Result<Vec<Vec<u8>>> {
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let query = || -> rustix::io::Result<usize> {
        if real {
            rustix::fs::flistxattr_query(fd)
        } else {
            rustix::fs::listxattr_query(link.as_str())
        }
    };
    loop {
        let want = match query() {
            Ok(0) | Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Ok(n) => n,
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; want];
        let got = if real {
            rustix::fs::flistxattr(fd, &mut buf[..])
        } else {
            rustix::fs::listxattr(link.as_str(), &mut buf[..])
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf
                    .split(|&b| b == 0)
                    .filter(|n| !n.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect());
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Remove an extended attribute of an open entry (see [`set_xattr`]); one
/// that is not there is no error.
pub fn remove_xattr_fd(fd: std::os::fd::BorrowedFd<'_>, real: bool, name: &[u8]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::OsStr::from_bytes(name);
    let r = if real {
        rustix::fs::fremovexattr(fd, name)
    } else {
        let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        rustix::fs::removexattr(link.as_str(), name)
    };
    match r {
        Ok(()) | Err(rustix::io::Errno::NODATA) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether `path` is on a kernel pseudo filesystem (procfs, sysfs, cgroup,
/// debugfs, tracefs, securityfs), whose files' times say nothing about
/// their content.
pub fn is_pseudo_fs(path: &std::path::Path) -> bool {
    const MAGICS: [u64; 7] = [
        0x9fa0,      // procfs
        0x6265_6572, // sysfs
        0x0027_e0eb, // cgroup
        0x6367_7270, // cgroup2
        0x6462_6720, // debugfs
        0x7472_6163, // tracefs
        0x7363_6673, // securityfs
    ];
    rustix::fs::statfs(path).is_ok_and(|s| MAGICS.contains(&(s.f_type as u64)))
}
