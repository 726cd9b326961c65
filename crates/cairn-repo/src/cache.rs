//! The local cache of a remote repository: index objects, snapshots, audit
//! records and the packs that hold trees, so that listing snapshots, starting
//! a backup (which reads the index and the parent's trees), browsing and
//! reading the audit trail do not download them again.
//!
//! Objects are cached exactly as stored (still encrypted), under
//! `<cache dir>/<repository key>/<object path>`, where the repository key is
//! the first 16 bytes of the BLAKE3 of the repository's config object
//! (immutable, unique per repository). Every cached object is named by the
//! BLAKE3 of its bytes (format-spec §1), and is verified against its name
//! each time it is used: a damaged cache file is deleted and the object
//! fetched again. Objects that a listing shows are gone (forgotten
//! snapshots, pruned packs and index objects) are removed from the cache.
//!
//! Cache failures (a full or read-only disk) never fail an operation: the
//! object is then simply fetched from the repository.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use bytes::Bytes;

use crate::layout::ObjectKind;

/// Default cache directory: `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("cairn"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("cairn"))
}

/// The cache of one repository.
#[derive(Debug)]
pub struct ObjectCache {
    dir: PathBuf,
    tree_packs: RwLock<HashSet<String>>,
}

fn name_hash(name: &str) -> Option<[u8; 32]> {
    let hex = name.rsplit('/').next()?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Create `dir` and its missing parents as 0700 (the umask can only take
/// bits away, so no umask makes them readable by others).
fn private_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

impl ObjectCache {
    /// The cache of the repository whose config object is `config`, under
    /// `root`; `None` if the directory cannot be created.
    pub fn open(root: &Path, config: &[u8]) -> Option<ObjectCache> {
        let key = cairn_format::id::to_hex(&blake3::hash(config).as_bytes()[..16]);
        let dir = root.join(key);
        private_dirs(&dir).ok()?;
        // Mark the directory so backup tools skip it (like restic's cache).
        let tag = root.join("CACHEDIR.TAG");
        if !tag.exists() {
            let _ = fs::write(
                &tag,
                "Signature: 8a477f597d28d172789f06886806bc55\n# cairn cache; see https://bford.info/cachedir/\n",
            );
        }
        Some(ObjectCache {
            dir,
            tree_packs: RwLock::new(HashSet::new()),
        })
    }

    /// Whether an object of this name is kept in the cache.
    pub fn caches(&self, name: &str) -> bool {
        [ObjectKind::Index, ObjectKind::Snapshot, ObjectKind::Audit]
            .iter()
            .any(|k| k.leaf(name).is_some())
            && name_hash(name).is_some()
            || self.is_tree_pack(name)
    }

    /// Whether `name` is a pack known to hold trees.
    pub fn is_tree_pack(&self, name: &str) -> bool {
        self.tree_packs.read().expect("tree packs").contains(name)
    }

    /// Remember packs that hold trees (from the index).
    pub fn add_tree_packs(&self, names: impl IntoIterator<Item = String>) {
        self.tree_packs.write().expect("tree packs").extend(names);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A cached object, verified against its name.
    pub fn load(&self, name: &str) -> Option<Bytes> {
        let want = name_hash(name)?;
        let p = self.path(name);
        let b = fs::read(&p).ok()?;
        if blake3::hash(&b).as_bytes() != &want {
            let _ = fs::remove_file(&p);
            return None;
        }
        Some(Bytes::from(b))
    }

    /// Keep an object (only if it matches its name).
    pub fn store(&self, name: &str, bytes: &[u8]) {
        let Some(want) = name_hash(name) else { return };
        if blake3::hash(bytes).as_bytes() != &want {
            return;
        }
        let p = self.path(name);
        let Some(parent) = p.parent() else { return };
        if private_dirs(parent).is_err() {
            return;
        }
        // Write aside and rename, so a reader never sees half a file.
        let tmp = parent.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            name.rsplit('/').next().unwrap_or("x")
        ));
        // Private whatever the umask (format-spec §8).
        let _ = fs::remove_file(&tmp);
        let ok = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(bytes))
            .and_then(|_| fs::rename(&tmp, &p));
        if ok.is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    /// After a complete listing of `prefix`, drop cached objects under it
    /// that the repository no longer has.
    pub fn retain(&self, prefix: &str, present: &HashSet<&str>) {
        let root = self.dir.join(prefix);
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p);
                    continue;
                }
                let Ok(rel) = p.strip_prefix(&self.dir) else {
                    continue;
                };
                let rel = rel.to_string_lossy();
                if !present.contains(rel.as_ref()) {
                    let _ = fs::remove_file(&p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_objects_are_verified_against_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let c = ObjectCache::open(dir.path(), b"config").unwrap();
        let body = b"snapshot bytes";
        let name = format!("snapshots/{}", blake3::hash(body).to_hex());
        assert!(c.caches(&name));
        assert!(c.load(&name).is_none());
        c.store(&name, body);
        assert_eq!(c.load(&name).unwrap().as_ref(), body);
        // A wrong body is never stored; a damaged file is dropped.
        c.store(&format!("snapshots/{}", "0".repeat(64)), body);
        assert!(c.load(&format!("snapshots/{}", "0".repeat(64))).is_none());
        fs::write(c.path(&name), b"damaged").unwrap();
        assert!(c.load(&name).is_none());
        assert!(!c.path(&name).exists());
        // retain drops what the repository no longer lists.
        c.store(&name, body);
        c.retain("snapshots", &HashSet::new());
        assert!(c.load(&name).is_none());
        // Data packs are cached only when known to hold trees.
        let pack = format!("data/ab/{}", "ab".repeat(32));
        assert!(!c.caches(&pack));
        c.add_tree_packs([pack.clone()]);
        assert!(c.caches(&pack));
    }
}
