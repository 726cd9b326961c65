//! Where each kind of object lives (format-spec §1): the one place that
//! knows directory names, how a name is built from an id and read back, and
//! which kinds are hash-named and cached. Code elsewhere names objects
//! through [`ObjectKind`], never by spelling a directory.

use cairn_format::{IndexId, KeyId, PackId, SnapshotId};

use crate::error::RepoError;

/// A kind of repository object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `config`: the repository's parameters (not hash-named).
    Config,
    /// `keys/<hex>`: key files.
    Key,
    /// `data/<2 hex>/<hex>`: packs.
    Pack,
    /// `index/<hex>`: index objects.
    Index,
    /// `snapshots/<hex>`: snapshots.
    Snapshot,
    /// `deletions/<hex>`: prune's deletion markers (§4.8).
    Deletion,
    /// `audit/<hex>`: the hash-chained audit trail (§4.9).
    Audit,
    /// `journal/<restore id>/<hex>`: restore journals (§4.9).
    Journal,
    /// `sessions/<session id>/…`: writer sessions (§4.10; names are not hashes).
    Session,
    /// `leases/prune/<generation>`: the prune lease (§4.10; not hashes).
    Lease,
}

impl ObjectKind {
    /// Every kind, in the order of format-spec §1.
    pub const ALL: [ObjectKind; 10] = [
        ObjectKind::Config,
        ObjectKind::Key,
        ObjectKind::Pack,
        ObjectKind::Index,
        ObjectKind::Snapshot,
        ObjectKind::Deletion,
        ObjectKind::Audit,
        ObjectKind::Journal,
        ObjectKind::Session,
        ObjectKind::Lease,
    ];

    /// Its directory, which is also the prefix its listing takes (`config`
    /// is an object of its own at the top).
    pub const fn dir(self) -> &'static str {
        match self {
            ObjectKind::Config => "config",
            ObjectKind::Key => "keys",
            ObjectKind::Pack => "data",
            ObjectKind::Index => "index",
            ObjectKind::Snapshot => "snapshots",
            ObjectKind::Deletion => "deletions",
            ObjectKind::Audit => "audit",
            ObjectKind::Journal => "journal",
            ObjectKind::Session => "sessions",
            ObjectKind::Lease => "leases/prune",
        }
    }

    /// Whether its objects are named by the unkeyed BLAKE3 of their bytes
    /// (so anyone can check them, §1).
    pub const fn hash_named(self) -> bool {
        !matches!(
            self,
            ObjectKind::Config | ObjectKind::Session | ObjectKind::Lease
        )
    }

    /// Whether a remote repository's objects of this kind are kept in the
    /// local cache (§1.1; packs only when they hold tree blobs).
    pub const fn cached(self) -> bool {
        matches!(
            self,
            ObjectKind::Index | ObjectKind::Snapshot | ObjectKind::Pack | ObjectKind::Audit
        )
    }

    /// The kind whose directory `prefix` is.
    pub fn of_dir(prefix: &str) -> Option<ObjectKind> {
        Self::ALL.into_iter().find(|k| k.dir() == prefix)
    }

    /// The name of the object with this hex id (packs fan out by their
    /// first two hex characters).
    pub fn path(self, hex: &str) -> String {
        match self {
            ObjectKind::Config => ObjectKind::Config.dir().to_string(),
            ObjectKind::Pack => format!("{}/{}/{hex}", self.dir(), &hex[..2.min(hex.len())]),
            _ => format!("{}/{hex}", self.dir()),
        }
    }

    /// The last part of a name of this kind (the hex id of hash-named
    /// kinds), or None when `name` is not in its directory. Packs and the
    /// kinds with subdirectories take the last part of the name (a pack is
    /// then read from the name its id gives, `data/<2 hex>/<hex>`).
    pub fn leaf(self, name: &str) -> Option<&str> {
        let rest = name.strip_prefix(self.dir())?.strip_prefix('/')?;
        match self {
            ObjectKind::Pack | ObjectKind::Journal | ObjectKind::Session => rest.rsplit('/').next(),
            _ => (!rest.contains('/')).then_some(rest),
        }
    }

    /// The typed id an object name carries.
    pub fn id<T: ObjectId>(self, name: &str) -> Option<T> {
        T::from_hex(self.leaf(name)?)
    }

    /// The error for an object whose bytes do not hash to its name.
    pub fn not_its_hash(name: &str, len: usize) -> RepoError {
        RepoError::Corrupted {
            object: name.to_string(),
            detail: format!(
                "content ({len} bytes) does not hash to its name (altered or truncated)"
            ),
        }
    }
}

/// A typed id that names an object of one kind.
pub trait ObjectId: Sized {
    /// Its kind.
    const KIND: ObjectKind;
    /// Parse 64 hex characters.
    fn from_hex(s: &str) -> Option<Self>;
    /// 64 hex characters.
    fn hex(&self) -> String;
    /// Its object name.
    fn object_name(&self) -> String {
        Self::KIND.path(&self.hex())
    }
}

macro_rules! object_id {
    ($t:ty, $k:expr) => {
        impl ObjectId for $t {
            const KIND: ObjectKind = $k;
            fn from_hex(s: &str) -> Option<Self> {
                <$t>::from_hex(s)
            }
            fn hex(&self) -> String {
                self.to_hex()
            }
        }
    };
}

object_id!(PackId, ObjectKind::Pack);
object_id!(IndexId, ObjectKind::Index);
object_id!(SnapshotId, ObjectKind::Snapshot);
object_id!(KeyId, ObjectKind::Key);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_built_and_read_back_per_kind() {
        let hex = "ab".repeat(32);
        let p = PackId::from_hex(&hex).unwrap();
        assert_eq!(p.object_name(), format!("data/ab/{hex}"));
        assert_eq!(ObjectKind::Pack.id::<PackId>(&p.object_name()), Some(p));
        let s = SnapshotId::from_hex(&hex).unwrap();
        assert_eq!(s.object_name(), format!("snapshots/{hex}"));
        assert_eq!(
            ObjectKind::Snapshot.id::<SnapshotId>(&s.object_name()),
            Some(s)
        );
        assert_eq!(
            ObjectKind::Snapshot.id::<SnapshotId>(&format!("index/{hex}")),
            None
        );
        assert_eq!(ObjectKind::Snapshot.leaf("snapshots/x/y"), None);
        assert_eq!(
            ObjectKind::Journal.leaf(&format!("journal/r1/{hex}")),
            Some(hex.as_str())
        );
        assert_eq!(ObjectKind::of_dir("deletions"), Some(ObjectKind::Deletion));
        assert!(ObjectKind::Audit.cached() && !ObjectKind::Key.cached());
        assert!(!ObjectKind::Lease.hash_named() && ObjectKind::Deletion.hash_named());
    }
}
