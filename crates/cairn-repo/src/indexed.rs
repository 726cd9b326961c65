//! A repository with its index loaded: the state in which blobs can be read,
//! backups deduplicated and snapshots restored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use cairn_format::index::IndexFile;
use cairn_format::tree::Tree;
use cairn_format::{BlobKind, ChunkId, IndexId, PackId, PackKey, pack};

use crate::error::{RepoError, Result};
use crate::index::{BlobLocation, Index};
use crate::layout::ObjectKind;
use crate::repo::Repository;
use crate::session::Session;
use crate::store;

/// A repository whose index is in memory.
pub struct IndexedRepository {
    /// The opened repository.
    pub(crate) repo: Arc<Repository>,
    /// Where every blob is.
    pub(crate) index: RwLock<Index>,
    pack_keys: Mutex<HashMap<u32, PackKey>>,
    /// Whole tree packs, verified against their names (most recent last).
    tree_packs: Mutex<std::collections::VecDeque<(u32, bytes::Bytes)>>,
    /// The writer session the index was loaded under (format-spec §5.1),
    /// if this repository writes.
    session: Mutex<Option<Arc<Session>>>,
}

/// Tree packs kept in memory (each at most the pack size, 16 MiB by default).
const TREE_PACK_CACHE: usize = 4;

impl Repository {
    /// Load every index object. A damaged index object is an error naming it.
    pub fn load_index(self) -> Result<IndexedRepository> {
        let index = self.read_index()?;
        Ok(IndexedRepository::new_internal(
            Arc::new(self),
            RwLock::new(index),
        ))
    }

    /// [`Self::load_index`] for commands that only read (restore, ls, dump,
    /// mount): an index object that cannot be read — damaged, foreign,
    /// planted — is skipped and named in [`Index::unreadable`] instead of
    /// failing every restore; what only it lists is then missing (and named
    /// by the restore). Prune, repair and check keep the strict load.
    pub fn load_index_readable(self) -> Result<IndexedRepository> {
        let index = self.read_index_lenient()?;
        Ok(IndexedRepository::new_internal(
            Arc::new(self),
            RwLock::new(index),
        ))
    }

    fn read_index_lenient(&self) -> Result<Index> {
        self.read_index_with(false, true)
    }

    /// Announce a writer session, then load the index, leaving out packs the
    /// index lists but storage does not hold (format-spec §5.1 steps 1–2):
    /// what backups use. An unreadable index object is skipped and named in
    /// [`Index::unreadable`], as for readers: a writer that does not know a
    /// blob stores it again (a duplicate, never a loss), so one damaged or
    /// planted object does not stop every backup; prune refuses until
    /// `repair index`.
    pub fn load_index_for_writing(self, command: &str) -> Result<IndexedRepository> {
        let session = Session::announce(&self, command)?;
        let index = self.read_index_checked()?;
        let r = IndexedRepository::new_internal(Arc::new(self), RwLock::new(index));
        *r.session.lock().expect("session") = Some(session);
        Ok(r)
    }

    /// [`Self::read_index`] for a writer session, after its `start` exists:
    /// the deletion markers are listed again and every pack they name is
    /// left out too, so the session never deduplicates against a marked pack
    /// (format-spec §5.1 step 2; the model in `format-spec/model` found that
    /// reusing one through a stale or fenced writer's index object loses
    /// data). Markers written later are relevant to the session, so held.
    /// Unreadable index objects are skipped, as in [`Self::load_index_for_writing`].
    pub fn read_index_checked(&self) -> Result<Index> {
        self.read_index_with(true, true)
    }

    /// Read every live (not superseded) index object into an in-memory index,
    /// then list `data/` once: packs the index lists but storage does not
    /// hold are left out (and named in [`Index::missing_packs`]), so nothing
    /// deduplicates against them and no reader picks their copy of a blob
    /// stored elsewhere too; through a local cache the listing also drops
    /// cached packs that are gone, so a warm cache never answers for them.
    ///
    /// Each index object is decoded and added at once, so memory holds the
    /// index and one decoded object, not every decoded object; the table is
    /// reserved up front from the objects' sizes so it is never copied to
    /// grow, and compacted once sorted (`index.rs`). An object
    /// found superseded by another (only after a prune, until its phase 2)
    /// makes the load start over, skipping what is superseded.
    pub fn read_index(&self) -> Result<Index> {
        self.read_index_with(false, false)
    }

    fn read_index_with(&self, for_writing: bool, lenient: bool) -> Result<Index> {
        let mut skip: std::collections::HashSet<IndexId> = std::collections::HashSet::new();
        loop {
            let (mut index, superseded, tree_packs) = self.read_index_skipping(&skip, lenient)?;
            if index.index_ids.iter().any(|i| superseded.contains(i)) {
                skip.extend(superseded);
                continue;
            }
            let mut stored: std::collections::HashSet<PackId> = self
                .store
                .list_kind(ObjectKind::Pack)?
                .into_iter()
                .filter_map(|(n, _)| ObjectKind::Pack.id::<PackId>(&n))
                .collect();
            index.exclude_missing(&stored);
            if for_writing {
                for p in self.marked_packs()? {
                    stored.remove(&p);
                }
                index.exclude_marked(&stored);
            }
            index.finish();
            crate::sys::release_free_memory();
            if let Some(c) = &self.store.cache {
                c.add_tree_packs(tree_packs);
            }
            return Ok(index);
        }
    }

    /// One pass of [`Self::read_index`]: the index of every listed object not
    /// in `skip`, the ids named in any object's `supersedes`, and the packs
    /// holding trees.
    fn read_index_skipping(
        &self,
        skip: &std::collections::HashSet<IndexId>,
        lenient: bool,
    ) -> Result<(Index, std::collections::HashSet<IndexId>, Vec<String>)> {
        // An index object vanishes only after the index superseding it was
        // written (prune phase 2, repair). So: read what is listed, skipping
        // what vanished, then list again and read what is new; once a round
        // loses nothing, every superseder of a vanished object has been read.
        let mut index = Index::default();
        let mut superseded: std::collections::HashSet<IndexId> = std::collections::HashSet::new();
        let mut tree_packs = Vec::new();
        let mut seen: std::collections::HashSet<IndexId> = std::collections::HashSet::new();
        loop {
            let listed = self.store.list_kind(ObjectKind::Index)?;
            if seen.is_empty() {
                index.reserve_for_index_bytes(listed.iter().map(|(_, size)| *size).sum());
            }
            let names: Vec<(String, IndexId)> = listed
                .into_iter()
                .filter_map(|(n, _)| {
                    let id = ObjectKind::Index.id::<IndexId>(&n)?;
                    Some((n, id))
                })
                .filter(|(_, id)| !seen.contains(id))
                .collect();
            let just: Vec<String> = names.iter().map(|n| n.0.clone()).collect();
            let mut vanished = false;
            // Fetched `connections` at a time so raw bytes never pile up
            // either (a prune's index objects hold up to millions of entries).
            let n = self.store.connections.max(2);
            for (batch, names) in just.chunks(n).zip(names.chunks(n)) {
                for ((name, id), bytes) in names.iter().zip(self.store.get_many(batch, n)) {
                    seen.insert(*id);
                    let bytes = match bytes {
                        Ok(b) => b,
                        Err(RepoError::NotFound { .. }) => {
                            vanished = true;
                            continue;
                        }
                        Err(e @ RepoError::Corrupted { .. }) if lenient => {
                            index.unreadable.push(e.to_string());
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let decoded = if blake3::hash(&bytes).as_bytes() != &id.0 {
                        Err(RepoError::Corrupted {
                            object: name.clone(),
                            detail: format!(
                                "content ({} bytes) does not hash to its name (altered or truncated)",
                                bytes.len()
                            ),
                        })
                    } else {
                        IndexFile::decode(&self.key, &bytes)
                            .map_err(|e| RepoError::from_format(name, e))
                    };
                    let file = match decoded {
                        Ok(f) => f,
                        Err(e) if lenient => {
                            index.unreadable.push(e.to_string());
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    drop(bytes);
                    // An index object named in another's `supersedes` is
                    // ignored (format-spec §5.1).
                    superseded.extend(file.supersedes.iter().copied());
                    if skip.contains(id) {
                        index.superseded_ids.push(*id);
                        continue;
                    }
                    tree_packs.extend(
                        file.packs
                            .iter()
                            .filter(|p| p.blobs.iter().any(|b| b.kind == BlobKind::Tree))
                            .map(|p| store::pack_path(&p.id)),
                    );
                    index.add_file(*id, &file);
                }
            }
            if !vanished {
                break;
            }
        }
        Ok((index, superseded, tree_packs))
    }
}

impl IndexedRepository {
    /// The opened repository.
    pub fn repo(&self) -> &Arc<Repository> {
        &self.repo
    }

    /// The index, read-locked.
    pub fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().expect("index lock")
    }

    /// Ask for the pack at an index position to be read ahead (local
    /// repositories; see [`store::Store::prefetch`]).
    pub(crate) fn prefetch_pack(&self, pack: u32) {
        self.repo.store.prefetch(&self.pack_name(pack));
    }

    pub(crate) fn new_internal(repo: Arc<Repository>, index: RwLock<Index>) -> Self {
        IndexedRepository {
            repo,
            index,
            pack_keys: Mutex::new(HashMap::new()),
            tree_packs: Mutex::new(std::collections::VecDeque::new()),
            session: Mutex::new(None),
        }
    }

    /// Attach a writer session announced before this repository's index is
    /// (re)loaded.
    pub(crate) fn set_session(&self, s: Arc<Session>) {
        *self.session.lock().expect("session") = Some(s);
    }

    /// The writer session, if there is one.
    pub fn session(&self) -> Option<Arc<Session>> {
        self.session.lock().expect("session").clone()
    }

    /// The writer session; a repository loaded for reading announces one now
    /// and loads its index again, so that the index follows the
    /// announcement (format-spec §5.1).
    pub fn writer_session(&self, command: &str) -> Result<Arc<Session>> {
        let mut g = self.session.lock().expect("session");
        if let Some(s) = g.as_ref() {
            return Ok(s.clone());
        }
        let s = Session::announce(&self.repo, command)?;
        self.replace_index(self.repo.read_index_checked()?);
        *g = Some(s.clone());
        Ok(s)
    }

    /// End the writer session (its objects are removed; also on drop).
    pub fn end_session(&self) {
        if let Some(s) = self.session.lock().expect("session").take() {
            s.end();
        }
    }

    /// Swap in a freshly read index; caches keyed by pack position are dropped.
    pub fn replace_index(&self, index: Index) {
        *self.index.write().expect("index lock") = index;
        self.pack_keys.lock().expect("key cache").clear();
        self.tree_packs.lock().expect("tree cache").clear();
    }

    /// Object path of the pack at an index position.
    pub fn pack_name(&self, pack: u32) -> String {
        store::pack_path(&self.index.read().expect("index lock").packs[pack as usize])
    }

    /// Where a blob is.
    pub fn locate(&self, kind: BlobKind, id: &ChunkId) -> Result<BlobLocation> {
        self.index
            .read()
            .expect("index lock")
            .get(kind, id)
            .ok_or_else(|| RepoError::NotFound {
                object: format!("{} {} (not in any index)", kind.name(), id),
            })
    }

    /// The data key of a pack (read from its prefix once, then cached).
    pub fn pack_key(&self, pack: u32, prefix: Option<&[u8]>) -> Result<PackKey> {
        if let Some(k) = self.pack_keys.lock().expect("key cache").get(&pack) {
            return Ok(k.clone());
        }
        let name = self.pack_name(pack);
        let owned;
        let prefix = match prefix {
            Some(p) => p,
            None => {
                owned = self
                    .repo
                    .store
                    .get_range(&name, 0..pack::PREFIX_LEN as u64)?;
                &owned[..]
            }
        };
        let key = pack::unwrap_key(&self.repo.key, prefix)
            .map_err(|e| RepoError::from_format(&name, e))?;
        self.pack_keys
            .lock()
            .expect("key cache")
            .insert(pack, key.clone());
        Ok(key)
    }

    /// Decrypt, decompress and verify a sealed blob that was read from `pack`.
    pub fn open_sealed(
        &self,
        kind: BlobKind,
        id: &ChunkId,
        loc: &BlobLocation,
        key: &PackKey,
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        pack::open_blob(
            key,
            &self.repo.key.id_hasher(),
            kind,
            id,
            sealed,
            loc.raw_len,
            out,
        )
        .map_err(|e| RepoError::Corrupted {
            object: self.pack_name(loc.pack),
            detail: format!(
                "{} {} at offset {}: {e}",
                kind.name(),
                id.short(),
                loc.offset
            ),
        })
    }

    /// Read one blob's plaintext, verified against its id.
    pub fn read_blob(&self, kind: BlobKind, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self.locate(kind, id)?;
        let name = self.pack_name(loc.pack);
        let key = self.pack_key(loc.pack, None)?;
        let sealed = self.repo.store.get_range(
            &name,
            loc.offset as u64..loc.offset as u64 + loc.length as u64,
        )?;
        if sealed.len() != loc.length as usize {
            return Err(RepoError::Corrupted {
                object: name,
                detail: "pack is shorter than the index says".into(),
            });
        }
        let mut out = Vec::new();
        self.open_sealed(kind, id, &loc, &key, &sealed, &mut out)?;
        Ok(out)
    }

    /// A whole pack, checked against its name (BLAKE3 of its bytes).
    pub fn read_pack_verified(&self, pack: u32) -> Result<bytes::Bytes> {
        let name = self.pack_name(pack);
        let (pid, size) = {
            let idx = self.index.read().expect("index lock");
            (idx.packs[pack as usize], idx.pack_sizes[pack as usize])
        };
        let b = self.repo.store.get(&name)?;
        if b.len() as u64 != size || blake3::hash(&b).as_bytes() != &pid.0 {
            return Err(RepoError::Corrupted {
                object: name,
                detail: format!(
                    "its {} bytes do not hash to its name (index says {size} bytes)",
                    b.len()
                ),
            });
        }
        Ok(b)
    }

    /// Read a tree blob. Tree packs are read whole and verified, so that any
    /// damage to them — header included — is noticed on first use.
    fn read_tree_blob(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self.locate(BlobKind::Tree, id)?;
        let cached = {
            let c = self.tree_packs.lock().expect("tree cache");
            c.iter()
                .find(|(p, _)| *p == loc.pack)
                .map(|(_, b)| b.clone())
        };
        let pack = match cached {
            Some(b) => b,
            None => {
                let b = self.read_pack_verified(loc.pack)?;
                let mut c = self.tree_packs.lock().expect("tree cache");
                if c.len() >= TREE_PACK_CACHE {
                    c.pop_front();
                }
                c.push_back((loc.pack, b.clone()));
                b
            }
        };
        let key = self.pack_key(loc.pack, Some(&pack[..pack::PREFIX_LEN.min(pack.len())]))?;
        let (s, e) = (
            loc.offset as usize,
            loc.offset as usize + loc.length as usize,
        );
        let mut out = Vec::new();
        self.open_sealed(BlobKind::Tree, id, &loc, &key, &pack[s..e], &mut out)?;
        Ok(out)
    }

    /// Read the header of a pack that may not be in the index: its blobs with offsets.
    pub fn read_pack_header(&self, pack: &PackId, size: u64) -> Result<Vec<pack::PackEntry>> {
        let name = store::pack_path(pack);
        let prefix = self
            .repo
            .store
            .get_range(&name, 0..pack::PREFIX_LEN as u64)?;
        let hl = pack::header_len(&prefix).map_err(|e| RepoError::from_format(&name, e))?;
        let end = (pack::PREFIX_LEN + hl) as u64;
        if end > size {
            return Err(RepoError::Corrupted {
                object: name,
                detail: "header runs past the end of the pack".into(),
            });
        }
        let start = self.repo.store.get_range(&name, 0..end)?;
        let (_, entries) = pack::decode_header(&self.repo.key, &start, size)
            .map_err(|e| RepoError::from_format(&name, e))?;
        Ok(entries)
    }

    /// [`Self::load_tree`], and whether the tree is of version 2 or later
    /// (records hard links and extended attributes).
    pub fn load_tree_versioned(&self, id: &ChunkId) -> Result<(Tree, bool)> {
        let b = self.read_tree_blob(id)?;
        let v2 = b
            .get(8..10)
            .is_some_and(|v| v != cairn_format::tree::VERSION_1.to_le_bytes());
        let t = Tree::decode(&b).map_err(|e| RepoError::Corrupted {
            object: format!("tree blob {id}"),
            detail: e.to_string(),
        })?;
        Ok((t, v2))
    }

    /// Read and decode a tree blob.
    pub fn load_tree(&self, id: &ChunkId) -> Result<Tree> {
        let b = self.read_tree_blob(id)?;
        Tree::decode(&b).map_err(|e| RepoError::Corrupted {
            object: format!("tree blob {id}"),
            detail: e.to_string(),
        })
    }
}

/// Reads one pack front to back in windows, handing out the sealed bytes of
/// requested blobs (in offset order) and hashing every byte, so the pack is
/// checked against its name at the end while memory holds a window, not the
/// pack. A blob inside the current window is a slice of it (no copy); one
/// spanning two windows is copied together.
pub(crate) struct PackReader<'a> {
    repo: &'a IndexedRepository,
    pack: u32,
    name: String,
    id: PackId,
    size: u64,
    window: u64,
    pos: u64,
    cur: bytes::Bytes,
    cur_start: u64,
    hasher: blake3::Hasher,
}

impl<'a> PackReader<'a> {
    /// A reader of the pack at index position `pack`, `window` bytes at a time.
    pub(crate) fn new(repo: &'a IndexedRepository, pack: u32, window: u64) -> Self {
        let (id, size) = {
            let idx = repo.index.read().expect("index lock");
            (idx.packs[pack as usize], idx.pack_sizes[pack as usize])
        };
        PackReader {
            repo,
            pack,
            name: store::pack_path(&id),
            id,
            size,
            window: window.max(1),
            pos: 0,
            cur: bytes::Bytes::new(),
            cur_start: 0,
            hasher: blake3::Hasher::new(),
        }
    }

    /// The pack's object name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The pack's size, as the index says.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The pack's data key, from its prefix (the first read).
    pub(crate) fn key(&mut self) -> Result<PackKey> {
        let prefix = self.read(0, pack::PREFIX_LEN as u64)?;
        self.repo.pack_key(self.pack, Some(&prefix))
    }

    /// The sealed bytes of the blob at `offset`, `length` bytes long.
    pub(crate) fn blob(&mut self, offset: u32, length: u32) -> Result<bytes::Bytes> {
        self.read(offset as u64, offset as u64 + length as u64)
    }

    fn corrupted(&self, detail: String) -> RepoError {
        RepoError::Corrupted {
            object: self.name.clone(),
            detail,
        }
    }

    /// Read the next window (at least up to `min_end`), making it current.
    fn advance(&mut self, min_end: u64) -> Result<()> {
        let to = (self.pos + self.window).max(min_end).min(self.size);
        let w = self.repo.repo.store.get_range(&self.name, self.pos..to)?;
        if (w.len() as u64) < to - self.pos {
            return Err(self.corrupted(format!(
                "shorter than the {} bytes the index says (ends at {})",
                self.size,
                self.pos + w.len() as u64
            )));
        }
        self.hasher.update(&w);
        self.cur_start = self.pos;
        self.pos = to;
        self.cur = w;
        Ok(())
    }

    /// The bytes `start..end` of the pack; calls must come in offset order.
    pub(crate) fn read(&mut self, start: u64, end: u64) -> Result<bytes::Bytes> {
        if end > self.size || start < self.cur_start || start > end {
            return Err(self.corrupted(format!(
                "bytes {start}..{end} lie past its end ({} bytes) or overlap what was read",
                self.size
            )));
        }
        while self.cur_start + self.cur.len() as u64 <= start && self.pos < self.size {
            self.advance(end)?;
        }
        let cur_end = self.cur_start + self.cur.len() as u64;
        if end <= cur_end {
            let s = (start - self.cur_start) as usize;
            return Ok(self.cur.slice(s..s + (end - start) as usize));
        }
        let mut v = Vec::with_capacity((end - start) as usize);
        v.extend_from_slice(&self.cur[(start - self.cur_start) as usize..]);
        while self.cur_start + (self.cur.len() as u64) < end {
            self.advance(end)?;
            let take = (end.min(self.cur_start + self.cur.len() as u64) - self.cur_start) as usize;
            v.extend_from_slice(&self.cur[..take]);
        }
        Ok(bytes::Bytes::from(v))
    }

    /// Read the rest of the pack and check it against its name.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.cur = bytes::Bytes::new();
        while self.pos < self.size {
            self.advance(0)?;
        }
        if self.hasher.finalize().as_bytes() != &self.id.0 {
            return Err(self.corrupted(format!("its {} bytes do not hash to its name", self.size)));
        }
        Ok(())
    }
}
