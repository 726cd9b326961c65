//! Index objects (`index/<id>`): which blobs live where. See `format-spec/README.md` §4.5.

use crate::codec::{Reader, Writer};
use crate::crypto::MasterKey;
use crate::envelope;
use crate::error::Result;
use crate::id::{BlobKind, ChunkId, IndexId, PackId};
use crate::pack::{PackEntry, check_lengths};

/// Magic of an index object.
pub const MAGIC: &[u8; 8] = b"CAIRNIDX";
/// Current index version.
pub const VERSION: u16 = 1;

/// The blobs of one pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexPack {
    /// The pack.
    pub id: PackId,
    /// The pack object's size in bytes.
    pub size: u64,
    /// Its blobs.
    pub blobs: Vec<PackEntry>,
}

/// A decoded index object.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IndexFile {
    /// Index objects this one replaces (written by prune and repair; empty for backups).
    pub supersedes: Vec<IndexId>,
    /// Packs described.
    pub packs: Vec<IndexPack>,
}

impl IndexFile {
    /// Encode and seal.
    pub fn encode(&self, key: &MasterKey) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.supersedes.len() as u32);
        for s in &self.supersedes {
            w.raw(&s.0);
        }
        w.u32(self.packs.len() as u32);
        for p in &self.packs {
            w.raw(&p.id.0);
            w.u64(p.size);
            w.u32(p.blobs.len() as u32);
            for b in &p.blobs {
                w.u8(b.kind.to_byte());
                w.raw(&b.id.0);
                w.u32(b.offset);
                w.u32(b.length);
                w.u32(b.raw_len);
            }
        }
        envelope::seal_object(key, MAGIC, VERSION, &w.buf)
    }

    /// Open and decode.
    pub fn decode(key: &MasterKey, bytes: &[u8]) -> Result<Self> {
        let body = envelope::open_object(key, "index", MAGIC, VERSION, bytes)?;
        let mut r = Reader::new(&body, "index");
        let n = r.count(32)?;
        let mut supersedes = Vec::with_capacity(n);
        for _ in 0..n {
            supersedes.push(IndexId(r.array()?));
        }
        let np = r.count(44)?;
        let mut packs = Vec::with_capacity(np);
        for _ in 0..np {
            let id = PackId(r.array()?);
            let size = r.u64()?;
            let nb = r.count(45)?;
            let mut blobs = Vec::with_capacity(nb);
            for _ in 0..nb {
                let kb = r.u8()?;
                let kind = BlobKind::from_byte(kb)
                    .ok_or_else(|| r.err(format!("unknown blob kind {kb}")))?;
                let e = PackEntry {
                    kind,
                    id: ChunkId(r.array()?),
                    offset: r.u32()?,
                    length: r.u32()?,
                    raw_len: r.u32()?,
                };
                check_lengths("index", e.length, e.raw_len)?;
                if e.offset as u64 + e.length as u64 > size {
                    return Err(r.err(format!("blob lies past the end of pack {}", id.short())));
                }
                blobs.push(e);
            }
            packs.push(IndexPack { id, size, blobs });
        }
        r.finish()?;
        Ok(IndexFile { supersedes, packs })
    }
}
