//! A POSIX tar (pax) writer for `cairn dump` of a directory: ustar headers,
//! with a pax extended header where ustar cannot say it (long names and link
//! targets, sizes from 8 GiB, ids from 2^21, mtimes with nanoseconds
//! before 1970 or past 2242, extended attributes as `SCHILY.xattr.*`, which
//! GNU tar and bsdtar restore with `--xattrs`). Hard links within the dump
//! are written as links to the first path of their inode.

use std::collections::HashMap;
use std::io::Write;

use cairn_format::tree::{Node, NodeKind};
use cairn_repo::IndexedRepository;

use anyhow::{Result, bail};

const BLOCK: usize = 512;

/// Counts what goes through, so that a file's content can be checked
/// against the size its header announced.
struct Counting<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub struct TarWriter<'a> {
    out: &'a mut dyn Write,
    /// (device, inode) → first path written, for hard links.
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl<'a> TarWriter<'a> {
    pub fn new(out: &'a mut dyn Write) -> Self {
        TarWriter {
            out,
            links: HashMap::new(),
        }
    }

    /// One entry at `path` (relative, no leading `/`), its content read from
    /// the repository.
    pub fn entry(&mut self, repo: &IndexedRepository, path: &[u8], n: &Node) -> Result<()> {
        let mut path = path.to_vec();
        let (flag, size, link): (u8, u64, Vec<u8>) = match &n.kind {
            NodeKind::File { .. } => match n.link_key() {
                Some(k) if self.links.contains_key(&k) => (b'1', 0, self.links[&k].clone()),
                Some(k) => {
                    self.links.insert(k, path.clone());
                    (b'0', n.size, Vec::new())
                }
                None => (b'0', n.size, Vec::new()),
            },
            NodeKind::Dir { .. } => {
                path.push(b'/');
                (b'5', 0, Vec::new())
            }
            NodeKind::Symlink { target } => (b'2', 0, target.clone()),
            NodeKind::Fifo => (b'6', 0, Vec::new()),
            NodeKind::CharDevice { .. } => (b'3', 0, Vec::new()),
            NodeKind::BlockDevice { .. } => (b'4', 0, Vec::new()),
            // tar has no sockets (GNU tar skips them too).
            NodeKind::Socket => return Ok(()),
        };
        let rdev = match n.kind {
            NodeKind::CharDevice { rdev } | NodeKind::BlockDevice { rdev } => rdev,
            _ => 0,
        };
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut rec = |k: &str, v: Vec<u8>| pax.push((k.as_bytes().to_vec(), v));
        if path.len() > 100 {
            rec("path", path.clone());
        }
        if link.len() > 100 {
            rec("linkpath", link.clone());
        }
        if size > 0o777_7777_7777 {
            rec("size", size.to_string().into_bytes());
        }
        if u64::from(n.uid) > 0o777_7777 {
            rec("uid", n.uid.to_string().into_bytes());
        }
        if u64::from(n.gid) > 0o777_7777 {
            rec("gid", n.gid.to_string().into_bytes());
        }
        if n.mtime.sec < 0 || n.mtime.sec > 0o777_7777_7777 || n.mtime.nsec != 0 {
            rec("mtime", pax_time(n.mtime.sec, n.mtime.nsec).into_bytes());
        }
        // Names as their bytes, UTF-8 or not, as GNU tar writes them.
        for x in &n.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(&x.name);
            pax.push((key, repo.xattr_value(&x.value)?));
        }
        if !pax.is_empty() {
            let body = pax_records(&pax);
            let mut name = b"PaxHeaders/".to_vec();
            name.extend_from_slice(&path[..path.len().min(80)]);
            let h = header(&name, b'x', 0o644, 0, 0, body.len() as u64, 0, b"", 0);
            self.out.write_all(&h)?;
            self.out.write_all(&body)?;
            self.pad(body.len() as u64)?;
        }
        let h = header(
            &path,
            flag,
            n.mode,
            n.uid,
            n.gid,
            size,
            n.mtime.sec,
            &link,
            rdev,
        );
        self.out.write_all(&h)?;
        if flag == b'0' {
            let mut c = Counting {
                inner: &mut *self.out,
                n: 0,
            };
            repo.dump_file(n, &mut c)?;
            if c.n != size {
                bail!(
                    "{}: the snapshot's content is {} bytes where its entry says {size} (the tree is damaged: run `cairn check`)",
                    String::from_utf8_lossy(&path),
                    c.n
                );
            }
            self.pad(size)?;
        }
        Ok(())
    }

    /// The end of the archive: two zero blocks.
    pub fn finish(self) -> Result<()> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(())
    }

    fn pad(&mut self, len: u64) -> Result<()> {
        let r = (len % BLOCK as u64) as usize;
        if r != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - r])?;
        }
        Ok(())
    }
}

fn pax_time(sec: i64, nsec: u32) -> String {
    if nsec == 0 {
        return sec.to_string();
    }
    // A negative time with a fraction: -1.25 is sec -2, nsec 750000000.
    let (s, f) = if sec < 0 {
        (sec + 1, 1_000_000_000 - nsec)
    } else {
        (sec, nsec)
    };
    let sign = if sec < 0 && s == 0 { "-" } else { "" };
    format!("{sign}{s}.{f:09}")
}

/// pax records `LEN KEY=VALUE\n`, LEN counting the whole record itself.
fn pax_records(kv: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in kv {
        let rest = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} ").as_bytes());
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// Octal, right-aligned, NUL-terminated in a field of `w` bytes; a value
/// that does not fit is written as 0 (a pax record carries it).
fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    let s = format!("{v:0w$o}");
    if s.len() <= w {
        field[..w].copy_from_slice(s.as_bytes());
    } else {
        field[..w].copy_from_slice(format!("{:0w$o}", 0).as_bytes());
    }
    field[w] = 0;
}

#[allow(clippy::too_many_arguments)]
fn header(
    name: &[u8],
    flag: u8,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    link: &[u8],
    rdev: u64,
) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], u64::from(uid));
    octal(&mut h[116..124], u64::from(gid));
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], u64::try_from(mtime).unwrap_or(0));
    h[156] = flag;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if flag == b'3' || flag == b'4' {
        let (major, minor) = (dev_major(rdev), dev_minor(rdev));
        octal(&mut h[329..337], major);
        octal(&mut h[337..345], minor);
    }
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// Linux's encoding of device numbers (glibc's gnu_dev_major/minor).
fn dev_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)
}

fn dev_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)
}

#[cfg(test)]
mod tests {
    use super::{pax_records, pax_time};

    #[test]
    fn pax_records_count_their_own_length() {
        let r = pax_records(&[(b"path".to_vec(), vec![b'a'; 95])]);
        let text = String::from_utf8(r.clone()).unwrap();
        let len: usize = text.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(len, r.len(), "{text}");
        // Around a power of ten, where the length's own digits grow.
        for n in 0..120 {
            let r = pax_records(&[(b"k".to_vec(), vec![b'x'; n])]);
            let len: usize = String::from_utf8_lossy(&r)
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, r.len(), "value of {n} bytes");
        }
    }

    #[test]
    fn pax_times_before_the_epoch_keep_their_fraction() {
        assert_eq!(pax_time(5, 0), "5");
        assert_eq!(pax_time(5, 250_000_000), "5.250000000");
        assert_eq!(pax_time(-2, 750_000_000), "-1.250000000");
        assert_eq!(pax_time(-1, 500_000_000), "-0.500000000");
    }
}
