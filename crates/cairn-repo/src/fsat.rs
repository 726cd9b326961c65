//! Handle-based file system access for restore (format-spec §8, "restoring
//! into hostile places").
//!
//! A restore may run as root into a tree that other users can write to (a
//! service's data directory, a target restored `--overwrite`). Working on path
//! strings lets such a user swap a directory or file for a symlink between two
//! calls and have root write or chmod through it. Here every path is resolved
//! beneath the target's directory descriptor without following any symlink
//! (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`; on kernels without
//! it, `openat` with `O_NOFOLLOW` one component at a time), entries are
//! created relative to their parent's descriptor, and every later open is
//! checked against the (device, inode) recorded when the entry was created,
//! so that a hard link or a renamed-in file is refused as well. Content and
//! metadata are set through the descriptor (`pwrite`, `fchown`, `fchmod`,
//! `futimens`), never by path.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};

/// Set once `openat2` returned ENOSYS (old kernel, some sandboxes).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Identity of an entry, recorded at creation: (device, inode, owner).
/// The owner matters: a file system hands a freed inode number to the next
/// file created, so another user can delete an entry and make one of their
/// own with the same number — but not one owned by the restoring user,
/// which every entry this restore creates is until its metadata is set.
pub type Ident = (u64, u64, u32);

fn ident(st: &rustix::fs::Stat) -> Ident {
    (st.st_dev, st.st_ino, st.st_uid)
}

/// The identity of an entry just created by this process: it must be ours
/// (another user's entry renamed in between creating and looking is not).
fn created(st: &rustix::fs::Stat, rel: &Path) -> io::Result<Ident> {
    if st.st_uid != crate::sys::euid() {
        return Err(replaced(rel));
    }
    Ok(ident(st))
}

/// The restore target, opened once; everything is resolved beneath it.
pub struct Beneath {
    root: OwnedFd,
}

/// What an open entry turned out to be.
pub struct Opened {
    /// The descriptor.
    pub fd: OwnedFd,
    /// Its stat, taken through the descriptor.
    pub stat: rustix::fs::Stat,
}

/// An open that ran into a symlink, another mount or a non-directory where
/// a directory was: the entry was swapped.
fn swapped_or(e: io::Error, rel: &Path) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EXDEV) | Some(libc::ENOTDIR) => replaced(rel),
        _ => e,
    }
}

/// Stat the directory `name` in `parent`, never through a symlink.
fn stat_dir_at(parent: &OwnedFd, name: &OsStr, rel: &Path) -> io::Result<rustix::fs::Stat> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| swapped_or(e.into(), rel))?;
    Ok(rustix::fs::fstat(&fd)?)
}

fn replaced(rel: &Path) -> io::Error {
    io::Error::other(format!(
        "{} was replaced by another file while restoring (not written through)",
        rel.display()
    ))
}

impl Beneath {
    /// Open the target directory (the operator's own path: symlinks in it are
    /// followed, as they chose it).
    pub fn open(target: &Path) -> io::Result<Self> {
        let root = rustix::fs::open(
            target,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Beneath { root })
    }

    /// The target directory's own descriptor.
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The target directory's identity.
    pub fn root_ident(&self) -> io::Result<Ident> {
        Ok(ident(&rustix::fs::fstat(&self.root)?))
    }

    /// The parent directory of `rel`, required to be the directory
    /// recorded as `expect` (created by this restore, or the target): a
    /// directory someone renamed away and replaced by one of their own is
    /// not created into.
    fn parent_checked<'a>(
        &self,
        rel: &'a Path,
        expect: Option<Ident>,
    ) -> io::Result<(OwnedFd, &'a OsStr)> {
        let (fd, name) = self.parent(rel)?;
        if let Some(want) = expect
            && ident(&rustix::fs::fstat(&fd)?) != want
        {
            return Err(replaced(rel.parent().unwrap_or(Path::new("."))));
        }
        Ok((fd, name))
    }

    /// Open `rel` (relative, no `..`) beneath the target without following
    /// any symlink, the last component included (with `O_PATH` a final
    /// symlink is opened itself).
    pub fn open_at(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let mut flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // openat2 refuses flags that do not apply to O_PATH. Non-blocking:
        // a FIFO swapped in for a file must not hang the open.
        if !flags.contains(OFlags::PATH) {
            flags |= OFlags::NOCTTY | OFlags::NONBLOCK;
        }
        let rel_s: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            // EAGAIN: a concurrent rename or mount made the kernel unsure
            // the walk stayed beneath; try again a few times.
            for _ in 0..8 {
                match rustix::fs::openat2(
                    self.root.as_fd(),
                    rel_s,
                    flags,
                    Mode::empty(),
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
                ) {
                    Err(rustix::io::Errno::AGAIN) => continue,
                    Err(rustix::io::Errno::NOSYS) => {
                        NO_OPENAT2.store(true, Ordering::Relaxed);
                        break;
                    }
                    r => return r.map_err(io::Error::from),
                }
            }
            if !NO_OPENAT2.load(Ordering::Relaxed) {
                return Err(io::Error::from(rustix::io::Errno::AGAIN));
            }
        }
        // Fallback: one component at a time, never following a symlink.
        let mut comps: Vec<&OsStr> = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => comps.push(n),
                Component::CurDir => {}
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{} is not a plain relative path", rel.display()),
                    ));
                }
            }
        }
        let Some((last, dirs)) = comps.split_last() else {
            return Ok(rustix::fs::openat(
                self.root.as_fd(),
                ".",
                flags,
                Mode::empty(),
            )?);
        };
        let mut cur: Option<OwnedFd> = None;
        for d in dirs {
            let at = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            let next = rustix::fs::openat(
                at,
                *d,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            cur = Some(next);
        }
        let at = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
        Ok(rustix::fs::openat(at, *last, flags, Mode::empty())?)
    }

    /// Open `rel` and require it to be the entry recorded as `expect`.
    pub fn open_checked(&self, rel: &Path, flags: OFlags, expect: Ident) -> io::Result<Opened> {
        let fd = self.open_at(rel, flags).map_err(|e| swapped_or(e, rel))?;
        let stat = rustix::fs::fstat(&fd)?;
        if ident(&stat) != expect {
            return Err(replaced(rel));
        }
        Ok(Opened { fd, stat })
    }

    /// The parent directory of `rel` (opened beneath the target) and the
    /// last component's name.
    pub fn parent<'a>(&self, rel: &'a Path) -> io::Result<(OwnedFd, &'a OsStr)> {
        let name = rel.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no file name", rel.display()),
            )
        })?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fd = self
            .open_at(parent, OFlags::PATH | OFlags::DIRECTORY)
            .map_err(|e| swapped_or(e, parent))?;
        Ok((fd, name))
    }
}

/// What to create.
pub enum Create<'a> {
    /// A directory (kept when one is already there and `overwrite`).
    Dir,
    /// A regular file of this size (holes stay holes).
    File(u64),
    /// A symlink to this target.
    Symlink(&'a [u8]),
    /// A FIFO.
    Fifo,
    /// A character device.
    CharDevice(u64),
    /// A block device.
    BlockDevice(u64),
}

/// Create `rel` beneath the target, private to the restoring user until its
/// metadata is set (directories 0700, others 0600). With `overwrite`, what is
/// in the way is unlinked (a directory with everything in it, through
/// descriptors) and recreated, never written through; a directory where a
/// directory is wanted is kept. The parent must be the directory recorded
/// as `parent_is` (when given). Returns the new entry's identity.
pub fn create(
    b: &Beneath,
    rel: &Path,
    parent_is: Option<Ident>,
    what: &Create<'_>,
    overwrite: bool,
) -> io::Result<Ident> {
    let (parent, name) = b.parent_checked(rel, parent_is)?;
    if overwrite && let Some(kept) = clear(&parent, name, rel, matches!(what, Create::Dir))? {
        return Ok(kept);
    }
    let private = Mode::from_raw_mode(0o600);
    let st = match what {
        Create::Dir => {
            rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700))?;
            stat_dir_at(&parent, name, rel)?
        }
        Create::File(size) => {
            let fd = rustix::fs::openat(
                &parent,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                private,
            )?;
            rustix::fs::ftruncate(&fd, *size)?;
            rustix::fs::fstat(&fd)?
        }
        Create::Symlink(target) => {
            rustix::fs::symlinkat(OsStr::from_bytes(target), &parent, name)?;
            rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)?
        }
        Create::Fifo | Create::CharDevice(_) | Create::BlockDevice(_) => {
            let (ft, dev) = match what {
                Create::Fifo => (FileType::Fifo, 0),
                Create::CharDevice(d) => (FileType::CharacterDevice, *d),
                Create::BlockDevice(d) => (FileType::BlockDevice, *d),
                _ => unreachable!("matched above"),
            };
            rustix::fs::mknodat(&parent, name, ft, private, dev)?;
            rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)?
        }
    };
    created(&st, rel)
}

/// Whether `name` in `dir` is the root of another mount (a file system or
/// a bind mount, even of the same file system): by the kernel's mount-root
/// attribute or mount id where it has them (Linux 5.8), else by device.
fn is_mount_point(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    use rustix::fs::{StatxAttributes, StatxFlags};
    let flags = AtFlags::NO_AUTOMOUNT | AtFlags::SYMLINK_NOFOLLOW;
    let child = rustix::fs::statx(
        dir,
        name,
        flags,
        StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
    )?;
    if child
        .stx_attributes_mask
        .contains(StatxAttributes::MOUNT_ROOT)
        && child.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
    {
        return Ok(true);
    }
    let here = rustix::fs::statx(
        dir,
        "",
        AtFlags::EMPTY_PATH,
        StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
    )?;
    let mnt = StatxFlags::MNT_ID.bits();
    if child.stx_mask & mnt != 0 && here.stx_mask & mnt != 0 {
        return Ok(child.stx_mnt_id != here.stx_mnt_id);
    }
    Ok((child.stx_dev_major, child.stx_dev_minor) != (here.stx_dev_major, here.stx_dev_minor))
}

fn mount_point(rel: &Path) -> io::Error {
    io::Error::other(format!(
        "{} is a mount point (another file system, or a bind mount, is mounted there): not removed, and nothing below it touched",
        rel.display()
    ))
}

/// Unlink what is at `name` in `parent` (a directory with everything in
/// it), except a directory when `keep_dir`: its identity is returned.
/// Nothing on another mount is removed: a mount point in the way is an
/// error naming it.
fn clear(parent: &OwnedFd, name: &OsStr, rel: &Path, keep_dir: bool) -> io::Result<Option<Ident>> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => {
            let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
            if is_dir && keep_dir {
                return Ok(Some(ident(&stat_dir_at(parent, name, rel)?)));
            }
            if is_mount_point(parent.as_fd(), name)? {
                return Err(mount_point(rel));
            }
            if is_dir {
                remove_tree_at(parent.as_fd(), name)?;
            } else {
                rustix::fs::unlinkat(parent, name, AtFlags::empty())?;
            }
            Ok(None)
        }
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Make `rel` a hard link to `leader`, an entry this restore created as
/// `expect`, both beneath the target. With `overwrite`, what is in the way
/// is unlinked first. The new name is checked to be the leader's inode: if
/// the leader's name was swapped meanwhile, the new link is removed again
/// and an error returned (nothing of someone else's is linked in).
pub fn link(
    b: &Beneath,
    leader: &Path,
    expect: Ident,
    rel: &Path,
    parent_is: Option<Ident>,
    overwrite: bool,
) -> io::Result<()> {
    let (lparent, lname) = b.parent(leader)?;
    let (parent, name) = b.parent_checked(rel, parent_is)?;
    if overwrite {
        clear(&parent, name, rel, false)?;
    }
    rustix::fs::linkat(&lparent, lname, &parent, name, AtFlags::empty())?;
    let st = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if ident(&st) != expect {
        let _ = rustix::fs::unlinkat(&parent, name, AtFlags::empty());
        return Err(replaced(leader));
    }
    Ok(())
}

/// Remove everything in the directory `dir` (kept itself), through
/// descriptors, never following a symlink and never crossing into another
/// mount: a mount point inside is an error naming it.
pub fn empty_directory(dir: &Path) -> io::Result<()> {
    let b = Beneath::open(dir)?;
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(b.root_fd())? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    for n in names {
        let rel = dir.join(&n);
        if is_mount_point(b.root_fd(), &n)? {
            return Err(mount_point(&rel));
        }
        let st = rustix::fs::statat(b.root_fd(), &n, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            remove_tree_at(b.root_fd(), &n)?;
        } else {
            rustix::fs::unlinkat(b.root_fd(), &n, AtFlags::empty())?;
        }
    }
    Ok(())
}

/// Remove `name` in `dir` and everything below it, through descriptors
/// (a symlink inside is removed, never followed).
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut entries = Vec::new();
    for e in rustix::fs::Dir::read_from(&fd)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        entries.push((OsStr::from_bytes(n).to_os_string(), e.file_type()));
    }
    for (n, ft) in entries {
        let is_dir = match ft {
            FileType::Directory => true,
            FileType::Unknown => rustix::fs::statat(&fd, &n, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory),
            _ => false,
        };
        if is_mount_point(fd.as_fd(), &n)? {
            return Err(mount_point(Path::new(&n)));
        }
        if is_dir {
            remove_tree_at(fd.as_fd(), &n)?;
        } else {
            rustix::fs::unlinkat(&fd, &n, AtFlags::empty())?;
        }
    }
    drop(fd);
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// Metadata to set on a restored entry.
pub struct Meta {
    /// What the entry must be (anything else was swapped in).
    pub kind: FileType,
    /// Owner to set (`None`: leave it to the restoring user).
    pub owner: Option<(u32, u32)>,
    /// Permission bits to set (`None` for symlinks, which have none).
    pub mode: Option<u32>,
    /// Modification time (seconds, nanoseconds); access time is left alone.
    pub mtime: (i64, u32),
    /// Extended attributes (ACLs included) to set, after the owner (a
    /// change of owner clears file capabilities) and before the mode (a
    /// read-only entry still takes its owner's attributes).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Remove every attribute not in `xattrs` first: what a kept directory
    /// (`--overwrite`) had, and ACLs inherited from a default ACL of the
    /// target, which would give others access the snapshot did not.
    pub exact_xattrs: bool,
}

/// Set owner, extended attributes, mode and mtime of `rel` through a
/// descriptor opened beneath the target and checked against `expect`.
/// Errors carry which step failed ("open", "owner", "mode", "mtime", or
/// "extended attribute NAME").
pub fn set_meta(b: &Beneath, rel: &Path, expect: Ident, m: &Meta) -> Vec<(String, io::Error)> {
    let mut errs = Vec::new();
    // One descriptor for all three, opened (and checked) while the entry is
    // still the restoring user's. Files and directories are opened for
    // reading (fchmod needs a real descriptor); anything else with O_PATH,
    // which opens no device or FIFO (no side effects, no blocking) and, for
    // a final symlink, the link itself.
    let kind = match b.open_checked(rel, OFlags::PATH, expect) {
        Ok(o) => FileType::from_raw_mode(o.stat.st_mode),
        Err(e) => {
            errs.push(("open".into(), e));
            return errs;
        }
    };
    if kind != m.kind {
        errs.push(("open".into(), replaced(rel)));
        return errs;
    }
    let flags = match kind {
        FileType::RegularFile => OFlags::RDONLY,
        FileType::Directory => OFlags::RDONLY | OFlags::DIRECTORY,
        _ => OFlags::PATH,
    };
    let o = match b.open_checked(rel, flags, expect) {
        Ok(o) => o,
        Err(e) => {
            errs.push(("open".into(), e));
            return errs;
        }
    };
    let ft = FileType::from_raw_mode(o.stat.st_mode);
    let real_fd = !flags.contains(OFlags::PATH);
    if let Some((uid, gid)) = m.owner {
        let (u, g) = (
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        );
        // With AT_EMPTY_PATH chownat acts on the descriptor's own inode
        // (for a symlink, the link itself).
        let r = if real_fd {
            rustix::fs::fchown(&o.fd, u, g)
        } else {
            rustix::fs::chownat(&o.fd, "", u, g, AtFlags::EMPTY_PATH)
        };
        if let Err(e) = r {
            errs.push(("owner".into(), e.into()));
        }
    }
    // Before the mode: a file restored read-only (0444, a 0555
    // directory) still takes the attributes of its owner; chmod after an
    // access ACL sets the ACL's mask to the mode's group bits, which the
    // snapshot recorded equal.
    if m.exact_xattrs {
        match crate::sys::xattr_names_fd(o.fd.as_fd(), real_fd) {
            Ok(names) => {
                for n in names
                    .iter()
                    .filter(|n| !m.xattrs.iter().any(|(k, _)| k == *n))
                {
                    if let Err(e) = crate::sys::remove_xattr_fd(o.fd.as_fd(), real_fd, n) {
                        errs.push((
                            format!(
                                "extended attribute {} (found on the target, not in the snapshot; not removed)",
                                String::from_utf8_lossy(n)
                            ),
                            e,
                        ));
                    }
                }
            }
            Err(e) => errs.push(("extended attributes (listing them)".into(), e)),
        }
    }
    for (name, value) in &m.xattrs {
        if let Err(e) = crate::sys::set_xattr(o.fd.as_fd(), real_fd, name, value) {
            errs.push((
                format!("extended attribute {}", String::from_utf8_lossy(name)),
                e,
            ));
        }
    }
    if let Some(mode) = m.mode
        && ft != FileType::Symlink
    {
        let r = if real_fd {
            rustix::fs::fchmod(&o.fd, Mode::from_raw_mode(mode)).map_err(Into::into)
        } else {
            // An O_PATH descriptor cannot fchmod; its /proc/self/fd link
            // names this inode itself, not a path that could be swapped.
            let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&o.fd));
            rustix::fs::chmod(link.as_str(), Mode::from_raw_mode(mode)).map_err(Into::into)
        };
        if let Err(e) = r {
            errs.push(("mode".into(), e));
        }
    }
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: m.mtime.0,
            tv_nsec: m.mtime.1 as _,
        },
    };
    let r = if real_fd {
        rustix::fs::futimens(&o.fd, &times)
    } else {
        rustix::fs::utimensat(&o.fd, "", &times, AtFlags::EMPTY_PATH)
    };
    if let Err(e) = r {
        errs.push(("mtime".into(), e.into()));
    }
    errs
}

/// Open a regular file created by this restore for writing its content.
pub fn open_for_content(b: &Beneath, rel: &Path, expect: Ident) -> io::Result<std::fs::File> {
    let o = b.open_checked(rel, OFlags::WRONLY, expect)?;
    Ok(std::fs::File::from(o.fd))
}

/// Rename `rel` to `rel` + `suffix` in its directory if it is still the
/// regular file recorded as `expect`.
pub fn rename_suffix(b: &Beneath, rel: &Path, expect: Ident, suffix: &str) -> io::Result<()> {
    let (parent, name) = b.parent(rel)?;
    let st = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
    // After its metadata the owner is the snapshot's: device and inode.
    if (st.st_dev, st.st_ino) != (expect.0, expect.1) {
        return Err(replaced(rel));
    }
    let mut to = name.to_os_string();
    to.push(suffix);
    // Never over an entry of that name (restored, or planted).
    rustix::fs::renameat_with(
        &parent,
        name,
        &parent,
        &to,
        rustix::fs::RenameFlags::NOREPLACE,
    )?;
    Ok(())
}
