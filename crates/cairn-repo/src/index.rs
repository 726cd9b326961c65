//! The in-memory index: per kind, one sorted array of variable-width records
//! (the id without its first two bytes, then the pack position, offset and
//! lengths in as few bytes as the largest value needs), with a 16-bit prefix
//! table to narrow each search. See `format-spec/README.md` §6.

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

impl BlobLocation {
    fn fields(&self) -> [u32; 4] {
        [self.pack, self.offset, self.length, self.raw_len]
    }
}

/// A record while loading: the whole id and four little-endian u32 fields.
const LOAD: usize = 48;
/// Bytes of the id kept in a finished record (the first two are the bucket).
const SUFFIX: usize = 30;

/// Bytes needed to hold `v` (at least 1).
fn width(v: u32) -> usize {
    (4 - v.leading_zeros() as usize / 8).max(1)
}

fn read_le(b: &[u8]) -> u32 {
    let mut x = [0u8; 4];
    x[..b.len()].copy_from_slice(b);
    u32::from_le_bytes(x)
}

#[derive(Default)]
struct Table {
    /// Before [`Table::finish`]: records in arrival order.
    loading: Vec<[u8; LOAD]>,
    /// After: sorted records of `stride` bytes (30-byte id suffix, then the
    /// four fields in `widths` bytes each), in the same allocation.
    recs: Vec<u8>,
    /// 0 until finished.
    stride: usize,
    widths: [usize; 4],
    /// `starts[p]` is the first record whose id begins with the 16-bit prefix p.
    starts: Vec<u32>,
    /// Blobs added after the last sort (small: one backup session's worth).
    recent: HashMap<ChunkId, BlobLocation>,
}

impl Table {
    fn push(&mut self, id: &ChunkId, loc: BlobLocation) {
        assert_eq!(self.stride, 0, "index entries added after finish");
        let mut r = [0u8; LOAD];
        r[..32].copy_from_slice(&id.0);
        for (k, f) in loc.fields().iter().enumerate() {
            r[32 + 4 * k..36 + 4 * k].copy_from_slice(&f.to_le_bytes());
        }
        self.loading.push(r);
    }

    fn finish(&mut self, excluded: &std::collections::HashSet<u32>) {
        if self.stride != 0 {
            return;
        }
        let mut recs = std::mem::take(&mut self.loading);
        if !excluded.is_empty() {
            recs.retain(|r| !excluded.contains(&read_le(&r[32..36])));
        }
        // Ids are uniform: the first 8 bytes decide almost every comparison.
        let head = |r: &[u8; LOAD]| u64::from_be_bytes(r[..8].try_into().expect("8 bytes"));
        recs.sort_unstable_by(|a, b| head(a).cmp(&head(b)).then_with(|| a[8..32].cmp(&b[8..32])));
        // Drop duplicates (a blob indexed twice: concurrent backups).
        recs.dedup_by(|a, b| a[..32] == b[..32]);
        let kept = recs.len();
        let mut max = [0u32; 4];
        for r in &recs {
            for (f, m) in max.iter_mut().enumerate() {
                *m = (*m).max(read_le(&r[32 + 4 * f..36 + 4 * f]));
            }
        }
        self.widths = max.map(width);
        self.stride = SUFFIX + self.widths.iter().sum::<usize>();
        self.recs = recs.into_flattened();
        // Compact in place: record i moves from i × 48 to i × stride ≤ i × 48,
        // read whole before it is written.
        let mut starts = vec![0u32; 65537];
        let mut bucket = 0usize;
        for i in 0..kept {
            let r: [u8; LOAD] = self.recs[i * LOAD..(i + 1) * LOAD]
                .try_into()
                .expect("record");
            let p = (r[0] as usize) << 8 | r[1] as usize;
            while bucket < p {
                bucket += 1;
                starts[bucket] = i as u32;
            }
            let out = &mut self.recs[i * self.stride..(i + 1) * self.stride];
            out[..SUFFIX].copy_from_slice(&r[2..32]);
            let mut at = SUFFIX;
            for (f, &w) in self.widths.iter().enumerate() {
                out[at..at + w].copy_from_slice(&r[32 + 4 * f..32 + 4 * f + w]);
                at += w;
            }
        }
        while bucket < 65536 {
            bucket += 1;
            starts[bucket] = kept as u32;
        }
        self.starts = starts;
        self.recs.truncate(kept * self.stride);
        self.recs.shrink_to_fit();
    }

    fn len_sorted(&self) -> usize {
        self.recs.len().checked_div(self.stride).unwrap_or(0)
    }

    fn location(&self, i: usize) -> BlobLocation {
        let r = &self.recs[i * self.stride + SUFFIX..(i + 1) * self.stride];
        let mut f = [0u32; 4];
        let mut at = 0;
        for (k, &w) in self.widths.iter().enumerate() {
            f[k] = read_le(&r[at..at + w]);
            at += w;
        }
        BlobLocation {
            pack: f[0],
            offset: f[1],
            length: f[2],
            raw_len: f[3],
        }
    }

    fn suffix(&self, i: usize) -> &[u8] {
        &self.recs[i * self.stride..i * self.stride + SUFFIX]
    }

    fn get(&self, id: &ChunkId) -> Option<BlobLocation> {
        if self.stride != 0 {
            let p = (id.0[0] as usize) << 8 | id.0[1] as usize;
            let (mut lo, mut hi) = (self.starts[p] as usize, self.starts[p + 1] as usize);
            let key = &id.0[2..];
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match self.suffix(mid).cmp(key) {
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid,
                    std::cmp::Ordering::Equal => return Some(self.location(mid)),
                }
            }
        }
        self.recent.get(id).copied()
    }

    fn iter_sorted(&self) -> impl Iterator<Item = (ChunkId, BlobLocation)> + '_ {
        let mut bucket = 0usize;
        (0..self.len_sorted()).map(move |i| {
            while self.starts[bucket + 1] as usize <= i {
                bucket += 1;
            }
            let mut id = [0u8; 32];
            id[0] = (bucket >> 8) as u8;
            id[1] = bucket as u8;
            id[2..].copy_from_slice(self.suffix(i));
            (ChunkId(id), self.location(i))
        })
    }

    fn heap_bytes(&self) -> usize {
        self.recs.capacity() + self.starts.capacity() * 4
    }
}

/// All blobs of a repository, by kind.
#[derive(Default)]
pub struct Index {
    /// Packs, referenced by position.
    pub packs: Vec<PackId>,
    /// Pack sizes (same positions).
    pub pack_sizes: Vec<u64>,
    /// Pack positions by id: every pack while loading, then only packs added
    /// after [`Index::finish`] (the loaded map is dropped to save memory).
    pack_pos: HashMap<PackId, u32>,
    data: Table,
    tree: Table,
    /// Index objects loaded.
    pub index_ids: Vec<IndexId>,
    /// Index objects that were present but superseded by a loaded one (a
    /// prune's new index supersedes these too: format-spec §5.3).
    pub superseded_ids: Vec<IndexId>,
    /// Packs the index objects list but storage does not hold; their blobs
    /// are left out (format-spec §5.1 step 2).
    pub missing_packs: Vec<PackId>,
    /// Index objects skipped as unreadable by a reader's load
    /// ([`crate::Repository::load_index_readable`]), each error naming one.
    pub unreadable: Vec<String>,
    excluded: std::collections::HashSet<u32>,
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

    /// Reserve room for the data blobs of `bytes` of index objects (each
    /// entry takes at least 45 bytes there), so that loading never copies
    /// the table to grow it. Untouched reserved pages cost no memory.
    pub fn reserve_for_index_bytes(&mut self, bytes: u64) {
        let entries = (bytes / 45) as usize;
        self.data
            .loading
            .reserve(entries.saturating_sub(self.data.loading.len()));
    }

    /// Add the packs of an index object (before [`Index::finish`]).
    pub fn add_file(&mut self, id: IndexId, file: &IndexFile) {
        self.index_ids.push(id);
        for p in &file.packs {
            let slot = self.pack_slot(p);
            for b in &p.blobs {
                let loc = BlobLocation {
                    pack: slot,
                    offset: b.offset,
                    length: b.length,
                    raw_len: b.raw_len,
                };
                match b.kind {
                    BlobKind::Data => self.data.push(&b.id, loc),
                    BlobKind::Tree => self.tree.push(&b.id, loc),
                }
            }
        }
    }

    /// Leave out the blobs of every loaded pack not in `stored` (before
    /// [`Index::finish`]); they are listed in [`Index::missing_packs`].
    pub fn exclude_missing(&mut self, stored: &std::collections::HashSet<PackId>) {
        for (i, p) in self.packs.iter().enumerate() {
            if !stored.contains(p) {
                self.excluded.insert(i as u32);
                self.missing_packs.push(*p);
            }
        }
    }

    /// Leave out the blobs of every loaded pack not in `allowed` (before
    /// [`Index::finish`]) without calling them missing: marked packs.
    pub fn exclude_marked(&mut self, allowed: &std::collections::HashSet<PackId>) {
        for (i, p) in self.packs.iter().enumerate() {
            if !allowed.contains(p) {
                self.excluded.insert(i as u32);
            }
        }
    }

    /// Whether the pack at a position was left out as missing.
    pub fn is_excluded(&self, pack: u32) -> bool {
        self.excluded.contains(&pack)
    }

    /// Sort and build lookup tables after loading.
    pub fn finish(&mut self) {
        self.data.finish(&self.excluded);
        self.tree.finish(&self.excluded);
        self.pack_pos = HashMap::new();
        self.packs.shrink_to_fit();
        self.pack_sizes.shrink_to_fit();
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
        t.len_sorted() + t.recent.len()
    }

    /// True when no blob is indexed.
    pub fn is_empty(&self) -> bool {
        self.len(BlobKind::Data) == 0 && self.len(BlobKind::Tree) == 0
    }

    /// Iterate over every blob of a kind (after [`Index::finish`]).
    pub fn iter(&self, kind: BlobKind) -> impl Iterator<Item = (ChunkId, BlobLocation)> + '_ {
        let t = self.table(kind);
        t.iter_sorted()
            .chain(t.recent.iter().map(|(k, v)| (*k, *v)))
    }

    /// Bytes of memory held per indexed blob for the loaded tables: records,
    /// prefix tables and the pack table (for the 48 B/blob target; blobs
    /// added since loading are not counted).
    pub fn bytes_per_blob(&self) -> f64 {
        let n = self.data.len_sorted() + self.tree.len_sorted();
        if n == 0 {
            return 0.0;
        }
        let bytes = self.data.heap_bytes()
            + self.tree.heap_bytes()
            + self.packs.capacity() * std::mem::size_of::<PackId>()
            + self.pack_sizes.capacity() * 8;
        bytes as f64 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_format::pack::PackEntry;

    fn file(packs: &[(u8, Vec<PackEntry>)]) -> IndexFile {
        IndexFile {
            supersedes: vec![],
            packs: packs
                .iter()
                .map(|(p, blobs)| IndexPack {
                    id: PackId([*p; 32]),
                    size: 1 << 24,
                    blobs: blobs.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn lookup_finds_every_blob_and_nothing_else() {
        let mut idx = Index::default();
        let mut blobs = Vec::new();
        for i in 0..5000u32 {
            let mut id = *blake3::hash(&i.to_le_bytes()).as_bytes();
            if i < 300 {
                // Many ids in one bucket, and ids differing only at the end.
                id[0] = 7;
                id[1] = 9;
                id[2..31].fill(0);
                id[31] = i as u8;
                id[30] = (i >> 8) as u8;
            }
            blobs.push(PackEntry {
                kind: if i % 5 == 0 {
                    BlobKind::Tree
                } else {
                    BlobKind::Data
                },
                id: ChunkId(id),
                offset: i * 1000,
                length: 50 + i,
                raw_len: 60 + (i << 8),
            });
        }
        let (a, b) = blobs.split_at(2000);
        // A blob indexed twice (concurrent backups) is kept once.
        let mut b = b.to_vec();
        b.push(a[1]);
        idx.add_file(IndexId([0; 32]), &file(&[(1, a.to_vec()), (2, b)]));
        idx.finish();
        for (i, b) in blobs.iter().enumerate() {
            let loc = idx.get(b.kind, &b.id).expect("indexed");
            assert_eq!(loc.offset, b.offset);
            assert_eq!(loc.length, b.length);
            assert_eq!(loc.raw_len, b.raw_len);
            if i != 1 {
                assert_eq!(loc.pack, if i < 2000 { 0 } else { 1 });
            }
            let other = if b.kind == BlobKind::Data {
                BlobKind::Tree
            } else {
                BlobKind::Data
            };
            assert!(idx.get(other, &b.id).is_none());
        }
        assert!(idx.get(BlobKind::Data, &ChunkId([9; 32])).is_none());
        let mut near = blobs[1].id;
        near.0[31] ^= 1;
        assert!(idx.get(blobs[1].kind, &near).is_none() || blobs.iter().any(|b| b.id == near));
        assert_eq!(idx.len(BlobKind::Tree), 1000);
        assert_eq!(idx.len(BlobKind::Data), 4000);
        // Iteration gives back every blob, whole ids included, in id order.
        let mut want: Vec<_> = blobs
            .iter()
            .filter(|b| b.kind == BlobKind::Data)
            .map(|b| (b.id, b.offset))
            .collect();
        want.sort();
        let got: Vec<_> = idx
            .iter(BlobKind::Data)
            .map(|(id, l)| (id, l.offset))
            .collect();
        assert_eq!(got, want);
        // Widths follow the largest values: pack 1 B, offset 3, length 2,
        // raw_len 3 → 30 + 9 = 39 bytes per record.
        assert_eq!(idx.data.stride, 39);
        // Blobs of a pack written after loading are found too.
        let extra = PackEntry {
            kind: BlobKind::Data,
            id: ChunkId([0xee; 32]),
            offset: u32::MAX - 10,
            length: 5,
            raw_len: 1,
        };
        idx.add_recent(&file(&[(3, vec![extra])]).packs[0]);
        let loc = idx.get(BlobKind::Data, &extra.id).expect("recent");
        assert_eq!((loc.pack, loc.offset), (2, u32::MAX - 10));
        assert_eq!(idx.iter(BlobKind::Data).count(), 4001);
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let mut idx = Index::default();
        idx.finish();
        assert!(idx.is_empty());
        assert!(idx.get(BlobKind::Data, &ChunkId([0; 32])).is_none());
        assert_eq!(idx.iter(BlobKind::Tree).count(), 0);
        assert_eq!(idx.bytes_per_blob(), 0.0);
    }
}
