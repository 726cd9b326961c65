//! The in-memory index: 48 bytes per blob, sorted for binary search, with a
//! 16-bit prefix table to narrow each search. See `format-spec/README.md` §6.

use std::collections::HashMap;

use cairn_format::index::{IndexFile, IndexPack};
use cairn_format::{BlobKind, ChunkId, IndexId, PackId};

/// Where a blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    /// Position of the pack in [`Index::packs`].
    pub pack: u32,
    /// Offset inside the pack.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_len: u32,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Entry {
    id: [u8; 32],
    loc: BlobLocation,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 48);

#[derive(Default)]
struct Table {
    sorted: Vec<Entry>,
    /// `starts[p]` is the first entry whose id begins with the 16-bit prefix p.
    starts: Vec<u32>,
    /// Blobs added after the last sort (small: one backup session's worth).
    recent: HashMap<ChunkId, BlobLocation>,
}

impl Table {
    fn finish(&mut self) {
        self.sorted.sort_unstable_by_key(|a| a.id);
        self.sorted.dedup_by(|a, b| a.id == b.id);
        self.sorted.shrink_to_fit();
        self.starts = vec![0; 65537];
        let mut i = 0usize;
        for p in 0..65536usize {
            self.starts[p] = i as u32;
            while i < self.sorted.len()
                && ((self.sorted[i].id[0] as usize) << 8 | self.sorted[i].id[1] as usize) == p
            {
                i += 1;
            }
        }
        self.starts[65536] = self.sorted.len() as u32;
    }

    fn get(&self, id: &ChunkId) -> Option<BlobLocation> {
        if !self.starts.is_empty() {
            let p = (id.0[0] as usize) << 8 | id.0[1] as usize;
            let (lo, hi) = (self.starts[p] as usize, self.starts[p + 1] as usize);
            if let Ok(i) = self.sorted[lo..hi].binary_search_by(|e| e.id.cmp(&id.0)) {
                return Some(self.sorted[lo + i].loc);
            }
        }
        self.recent.get(id).copied()
    }
}

/// All blobs of a repository, by kind.
#[derive(Default)]
pub struct Index {
    /// Packs, referenced by position.
    pub packs: Vec<PackId>,
    /// Pack sizes (same positions).
    pub pack_sizes: Vec<u64>,
    pack_pos: HashMap<PackId, u32>,
    data: Table,
    tree: Table,
    /// Index objects loaded.
    pub index_ids: Vec<IndexId>,
    /// Index objects that were present but superseded by a loaded one (a
    /// prune's new index supersedes these too: format-spec §5.1).
    pub superseded_ids: Vec<IndexId>,
}

impl Index {
    fn table(&self, kind: BlobKind) -> &Table {
        match kind {
            BlobKind::Data => &self.data,
            BlobKind::Tree => &self.tree,
        }
    }

    fn pack_slot(&mut self, p: &IndexPack) -> u32 {
        if let Some(&i) = self.pack_pos.get(&p.id) {
            return i;
        }
        let i = self.packs.len() as u32;
        self.packs.push(p.id);
        self.pack_sizes.push(p.size);
        self.pack_pos.insert(p.id, i);
        i
    }

    /// Add the packs of an index object (before [`Index::finish`]).
    pub fn add_file(&mut self, id: IndexId, file: &IndexFile) {
        self.index_ids.push(id);
        for p in &file.packs {
            let slot = self.pack_slot(p);
            for b in &p.blobs {
                let e = Entry {
                    id: b.id.0,
                    loc: BlobLocation {
                        pack: slot,
                        offset: b.offset,
                        length: b.length,
                        raw_len: b.raw_len,
                    },
                };
                match b.kind {
                    BlobKind::Data => self.data.sorted.push(e),
                    BlobKind::Tree => self.tree.sorted.push(e),
                }
            }
        }
    }

    /// Sort and build lookup tables after loading.
    pub fn finish(&mut self) {
        self.data.finish();
        self.tree.finish();
    }

    /// Add a pack written in this session (after loading).
    pub fn add_recent(&mut self, p: &IndexPack) {
        let slot = self.pack_slot(p);
        for b in &p.blobs {
            let loc = BlobLocation {
                pack: slot,
                offset: b.offset,
                length: b.length,
                raw_len: b.raw_len,
            };
            match b.kind {
                BlobKind::Data => self.data.recent.insert(b.id, loc),
                BlobKind::Tree => self.tree.recent.insert(b.id, loc),
            };
        }
    }

    /// Where a blob is, if indexed.
    pub fn get(&self, kind: BlobKind, id: &ChunkId) -> Option<BlobLocation> {
        self.table(kind).get(id)
    }

    /// Whether a blob is indexed.
    pub fn contains(&self, kind: BlobKind, id: &ChunkId) -> bool {
        self.get(kind, id).is_some()
    }

    /// Number of distinct blobs of a kind.
    pub fn len(&self, kind: BlobKind) -> usize {
        let t = self.table(kind);
        t.sorted.len() + t.recent.len()
    }

    /// True when no blob is indexed.
    pub fn is_empty(&self) -> bool {
        self.len(BlobKind::Data) == 0 && self.len(BlobKind::Tree) == 0
    }

    /// Iterate over every blob of a kind.
    pub fn iter(&self, kind: BlobKind) -> impl Iterator<Item = (ChunkId, BlobLocation)> + '_ {
        let t = self.table(kind);
        t.sorted
            .iter()
            .map(|e| (ChunkId(e.id), e.loc))
            .chain(t.recent.iter().map(|(k, v)| (*k, *v)))
    }

    /// Bytes of memory held per indexed blob (for the 48 B/blob target).
    pub fn bytes_per_blob(&self) -> f64 {
        let n = self.data.sorted.capacity() + self.tree.sorted.capacity();
        if n == 0 {
            return 0.0;
        }
        (n * std::mem::size_of::<Entry>()) as f64 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_format::pack::PackEntry;

    #[test]
    fn lookup_finds_every_blob_and_nothing_else() {
        let mut idx = Index::default();
        let mut blobs = Vec::new();
        for i in 0..5000u32 {
            let id = ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes());
            blobs.push(PackEntry {
                kind: if i % 5 == 0 {
                    BlobKind::Tree
                } else {
                    BlobKind::Data
                },
                id,
                offset: i,
                length: 50,
                raw_len: 60,
            });
        }
        let file = IndexFile {
            supersedes: vec![],
            packs: vec![IndexPack {
                id: PackId([1; 32]),
                size: 1 << 20,
                blobs: blobs.clone(),
            }],
        };
        idx.add_file(IndexId([0; 32]), &file);
        idx.finish();
        for b in &blobs {
            let loc = idx.get(b.kind, &b.id).expect("indexed");
            assert_eq!(loc.offset, b.offset);
            let other = if b.kind == BlobKind::Data {
                BlobKind::Tree
            } else {
                BlobKind::Data
            };
            assert!(idx.get(other, &b.id).is_none());
        }
        assert!(idx.get(BlobKind::Data, &ChunkId([9; 32])).is_none());
        assert_eq!(idx.len(BlobKind::Tree), 1000);
        assert_eq!(idx.bytes_per_blob(), 48.0);
    }
}
