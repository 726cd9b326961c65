//! Typed 32-byte identifiers. See `format-spec/README.md` §2 (names and ids).

use std::fmt;

/// Lowercase hex of a byte string.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parse lowercase or uppercase hex into exactly `N` bytes.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The id as lowercase hex (64 characters).
            pub fn to_hex(&self) -> String {
                to_hex(&self.0)
            }
            /// Parse 64 hex characters.
            pub fn from_hex(s: &str) -> Option<Self> {
                from_hex::<32>(s).map($name)
            }
            /// The first 8 hex characters, for display.
            pub fn short(&self) -> String {
                to_hex(&self.0[..4])
            }
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

typed_id!(
    /// Keyed BLAKE3 of a blob's plaintext (data chunk or tree).
    ChunkId
);
typed_id!(
    /// Unkeyed BLAKE3 of a pack object's bytes; also its object name.
    PackId
);
typed_id!(
    /// Unkeyed BLAKE3 of an index object's bytes; also its object name.
    IndexId
);
typed_id!(
    /// Unkeyed BLAKE3 of a snapshot object's bytes; also its object name.
    SnapshotId
);
typed_id!(
    /// Unkeyed BLAKE3 of a key file's bytes; also its object name.
    KeyId
);

impl PackId {
    /// The id of a pack object with these bytes.
    pub fn of(bytes: &[u8]) -> Self {
        PackId(*blake3::hash(bytes).as_bytes())
    }
}
impl IndexId {
    /// The id of an index object with these bytes.
    pub fn of(bytes: &[u8]) -> Self {
        IndexId(*blake3::hash(bytes).as_bytes())
    }
}
impl SnapshotId {
    /// The id of a snapshot object with these bytes.
    pub fn of(bytes: &[u8]) -> Self {
        SnapshotId(*blake3::hash(bytes).as_bytes())
    }
}
impl KeyId {
    /// The id of a key file with these bytes.
    pub fn of(bytes: &[u8]) -> Self {
        KeyId(*blake3::hash(bytes).as_bytes())
    }
}

/// The two kinds of blob. Data and tree blobs live in separate packs and
/// separate index tables; the kind is part of every blob's associated data.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum BlobKind {
    /// A chunk of file or stream content.
    Data,
    /// An encoded directory (see [`crate::tree`]).
    Tree,
}

impl BlobKind {
    /// The byte stored on disk.
    pub fn to_byte(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
        }
    }
    /// Parse the stored byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            _ => None,
        }
    }
    /// Lowercase name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            BlobKind::Data => "data blob",
            BlobKind::Tree => "tree blob",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn hex_round_trip() {
        let id = ChunkId([0xab; 32]);
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ChunkId::from_hex("zz"), None);
        assert_eq!(id.short(), "abababab");
    }
}
