//! Deletion markers (`deletions/<id>`): phase one of a two-phase prune.
//! See `format-spec/README.md` §4.8.

use crate::codec::{Reader, Writer};
use crate::crypto::MasterKey;
use crate::envelope;
use crate::error::Result;
use crate::id::{IndexId, PackId};

/// Magic of a deletion marker.
pub const MAGIC: &[u8; 8] = b"CAIRNDEL";
/// Current version.
pub const VERSION: u16 = 1;

/// Packs and index objects a prune intends to delete once the grace period
/// after `time_ns` has passed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Deletion {
    /// When the marker was written (nanoseconds since the epoch, UTC).
    pub time_ns: i64,
    /// Packs to delete (no longer listed by any live index).
    pub packs: Vec<PackId>,
    /// Index objects superseded by the prune's new index.
    pub indexes: Vec<IndexId>,
}

impl Deletion {
    /// Encode and seal.
    pub fn encode(&self, key: &MasterKey) -> Vec<u8> {
        let mut w = Writer::new();
        w.i64(self.time_ns);
        w.u32(self.packs.len() as u32);
        for p in &self.packs {
            w.raw(&p.0);
        }
        w.u32(self.indexes.len() as u32);
        for i in &self.indexes {
            w.raw(&i.0);
        }
        envelope::seal_object(key, MAGIC, VERSION, &w.buf)
    }

    /// Open and decode.
    pub fn decode(key: &MasterKey, bytes: &[u8]) -> Result<Self> {
        let body = envelope::open_object(key, "deletion marker", MAGIC, VERSION, bytes)?;
        let mut r = Reader::new(&body, "deletion marker");
        let time_ns = r.i64()?;
        let n = r.count(32)?;
        let mut packs = Vec::with_capacity(n);
        for _ in 0..n {
            packs.push(PackId(r.array()?));
        }
        let n = r.count(32)?;
        let mut indexes = Vec::with_capacity(n);
        for _ in 0..n {
            indexes.push(IndexId(r.array()?));
        }
        r.finish()?;
        Ok(Deletion {
            time_ns,
            packs,
            indexes,
        })
    }
}
