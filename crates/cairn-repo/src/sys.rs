//! The few Unix calls std does not offer: setting a symlink's times, creating
//! FIFOs and device nodes, finding holes in sparse files, host and user names.
//!
//! `unsafe` is allowed here only, because these are FFI calls into libc. Each
//! call passes pointers to live, NUL-terminated buffers owned by the caller for
//! the duration of the call, and checks the return value.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Set access and modification times without following a final symlink.
pub fn set_times_nofollow(p: &Path, mtime: (i64, u32)) -> io::Result<()> {
    let c = cpath(p)?;
    let ts = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime.0 as libc::time_t,
            tv_nsec: mtime.1 as libc::c_long,
        },
    ];
    // SAFETY: `c` is a valid C string and `ts` a two-element array, as utimensat requires.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Create a FIFO, character or block device node.
pub fn mknod(p: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: `c` is a valid C string; mknod does not keep the pointer.
    let r = unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The data regions `[start, end)` of a file of `size` bytes, using
/// SEEK_DATA/SEEK_HOLE. Filesystems without hole support report one region.
pub fn data_regions(f: &std::fs::File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on an open descriptor we own; no memory is passed.
        let start = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if start < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no more data: the rest is a hole
            }
            if e.raw_os_error() == Some(libc::EINVAL) {
                return Ok(vec![(0, size)]); // SEEK_DATA unsupported
            }
            return Err(e);
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        if end < 0 {
            return Err(io::Error::last_os_error());
        }
        let (s, e) = (start as u64, (end as u64).min(size));
        if s >= size {
            break;
        }
        if e > s {
            out.push((s, e));
        }
        pos = e.max(s + 1);
    }
    // SAFETY: reset the offset for the reads that follow.
    unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
    Ok(out)
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its full length.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if r != 0 {
        return "unknown".into();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The current user's name, from the password database.
pub fn username() -> String {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
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
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Effective group id.
pub fn egid() -> u32 {
    // SAFETY: getegid cannot fail.
    unsafe { libc::getegid() }
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
    #[cfg(target_os = "linux")]
    // SAFETY: the descriptor belongs to `f`, alive for the call; no pointers.
    unsafe {
        libc::posix_fadvise(
            f.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, offset, len);
}
