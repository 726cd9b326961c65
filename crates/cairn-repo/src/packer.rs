//! Groups sealed blobs into packs, uploads them with bounded concurrency, and
//! writes the index object once every pack it lists is durable.
//! Ordering (format-spec §5): packs → index → snapshot.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cairn_chunk::{BlobEncoder, EncodedBlob};
use cairn_format::index::{IndexFile, IndexPack};
use cairn_format::pack::{self, PackEntry};
use cairn_format::tree::Tree;
use cairn_format::{BlobKind, ChunkId, IndexId, PackId, PackKey};
use object_store::{PutMode, PutOptions, PutPayload};

use crate::error::{RepoError, Result};
use crate::indexed::IndexedRepository;
use crate::store;

#[derive(Default)]
struct OpenPack {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

type Upload = (IndexPack, tokio::task::JoinHandle<Result<()>>);

#[derive(Default)]
struct State {
    data: OpenPack,
    tree: OpenPack,
    inflight: VecDeque<Upload>,
    done: Vec<IndexPack>,
    /// `done[..indexed]` are listed in index objects already written.
    indexed: usize,
    index_bytes: u64,
    last_index: Option<IndexId>,
}

/// Uploaded packs between two index objects of one session: a backup cut off
/// by a crash or the network leaves at most this many unindexed packs behind;
/// everything before is indexed and reused by the next backup (format-spec §5).
const PACKS_PER_INDEX: usize = 16;

/// What a writer session added to the repository.
#[derive(Debug, Default, Clone)]
pub struct PackerStats {
    /// Data blobs written.
    pub data_blobs: u64,
    /// Tree blobs written.
    pub tree_blobs: u64,
    /// Bytes of pack and index objects written.
    pub bytes_added: u64,
    /// Packs written.
    pub packs: u64,
    /// The last index object written, if any (a long session writes one
    /// every few packs).
    pub index: Option<IndexId>,
    /// The packs written (for the prune protocol's re-listing).
    pub packs_written: Vec<IndexPack>,
}

/// One writer session: blobs in, packs and an index object out.
pub struct Packer<'r> {
    repo: &'r IndexedRepository,
    /// Encoder shared by the session's threads (one random data key).
    pub encoder: BlobEncoder,
    state: Mutex<State>,
    claimed: Mutex<HashSet<(BlobKind, ChunkId)>>,
    /// Blobs this session relies on without storing them (already indexed).
    reused: Mutex<HashSet<(BlobKind, ChunkId)>>,
    data_blobs: AtomicU64,
    tree_blobs: AtomicU64,
    bytes_added: AtomicU64,
    /// Count what would be stored, store nothing (a dry run).
    dry: bool,
}

impl<'r> Packer<'r> {
    /// A session that stores nothing: blobs are encoded and counted (their
    /// sealed bytes in `bytes_added`), no pack or index is written.
    pub fn dry(repo: &'r IndexedRepository) -> Self {
        let mut p = Packer::new(repo);
        p.dry = true;
        p
    }

    /// Start a session.
    pub fn new(repo: &'r IndexedRepository) -> Self {
        let encoder = BlobEncoder {
            hasher: repo.repo.key.id_hasher(),
            key: PackKey::generate(),
            level: repo.repo.config.zstd_level,
        };
        Packer {
            repo,
            encoder,
            state: Mutex::new(State::default()),
            claimed: Mutex::new(HashSet::new()),
            reused: Mutex::new(HashSet::new()),
            data_blobs: AtomicU64::new(0),
            tree_blobs: AtomicU64::new(0),
            bytes_added: AtomicU64::new(0),
            dry: false,
        }
    }

    /// True if the blob must be stored by this session: it is neither indexed
    /// nor already claimed. A `true` answer claims it.
    pub fn claim(&self, kind: BlobKind, id: &ChunkId) -> bool {
        if self
            .repo
            .index
            .read()
            .expect("index lock")
            .contains(kind, id)
        {
            self.reused.lock().expect("reused").insert((kind, *id));
            return false;
        }
        self.claimed.lock().expect("claim lock").insert((kind, *id))
    }

    /// Record blobs reused without a claim (unchanged files' chunks).
    pub fn note_reused(&self, kind: BlobKind, ids: impl Iterator<Item = ChunkId>) {
        let mut r = self.reused.lock().expect("reused");
        r.extend(ids.map(|id| (kind, id)));
    }

    /// The blobs this session relies on without having stored them.
    pub fn reused(&self) -> HashSet<(BlobKind, ChunkId)> {
        self.reused.lock().expect("reused").clone()
    }

    /// Append a sealed blob; uploads the pack when it reaches the target size.
    pub fn add(&self, blob: EncodedBlob<'_>) -> Result<()> {
        if self.dry {
            match blob.kind {
                BlobKind::Data => self.data_blobs.fetch_add(1, Ordering::Relaxed),
                BlobKind::Tree => self.tree_blobs.fetch_add(1, Ordering::Relaxed),
            };
            self.bytes_added
                .fetch_add(blob.sealed.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        let mut st = self.state.lock().expect("packer lock");
        let open = match blob.kind {
            BlobKind::Data => &mut st.data,
            BlobKind::Tree => &mut st.tree,
        };
        if open.buf.capacity() == 0 {
            open.buf
                .reserve(self.repo.repo.config.pack_target as usize + (1 << 20));
        }
        open.entries.push(PackEntry {
            kind: blob.kind,
            id: blob.id,
            offset: 0,
            length: blob.sealed.len() as u32,
            raw_len: blob.raw_len,
        });
        open.buf.extend_from_slice(blob.sealed);
        match blob.kind {
            BlobKind::Data => self.data_blobs.fetch_add(1, Ordering::Relaxed),
            BlobKind::Tree => self.tree_blobs.fetch_add(1, Ordering::Relaxed),
        };
        if open.buf.len() >= self.repo.repo.config.pack_target as usize {
            self.flush(&mut st, blob.kind)?;
        }
        Ok(())
    }

    /// Store a tree blob (deduplicated) and return its id.
    pub fn store_tree(&self, tree: &Tree) -> Result<ChunkId> {
        let bytes = tree.encode()?;
        let id = self.encoder.hasher.id(&bytes);
        if self.claim(BlobKind::Tree, &id) {
            self.encoder
                .encode(BlobKind::Tree, id, &bytes, |b| self.add(b))?;
        }
        Ok(id)
    }

    fn flush(&self, st: &mut State, kind: BlobKind) -> Result<()> {
        let open = std::mem::take(match kind {
            BlobKind::Data => &mut st.data,
            BlobKind::Tree => &mut st.tree,
        });
        if open.entries.is_empty() {
            return Ok(());
        }
        let repo = &self.repo.repo;
        let header = pack::encode_header(&repo.key, &self.encoder.key, &open.entries);
        let mut offset = header.len() as u32;
        let mut blobs = open.entries;
        for b in &mut blobs {
            b.offset = offset;
            offset += b.length;
        }
        let mut h = blake3::Hasher::new();
        h.update(&header);
        h.update(&open.buf);
        let id = PackId(*h.finalize().as_bytes());
        let size = (header.len() + open.buf.len()) as u64;
        let name = store::pack_path(&id);
        if kind == BlobKind::Tree
            && let Some(c) = &repo.store.cache
        {
            // The next backup walks these trees (as the parent): keep them.
            c.store(&name, &[header.as_slice(), &open.buf].concat());
            c.add_tree_packs([name.clone()]);
        }
        let payload = PutPayload::from_iter([Bytes::from(header), Bytes::from(open.buf)]);
        let s = repo.store.inner.clone();
        let handle = repo.store.rt.spawn(async move {
            let path = object_store::path::Path::from(name.as_str());
            match s
                .put_opts(&path, payload, PutOptions::from(PutMode::Create))
                .await
            {
                // A pack's bytes hold random nonces: an object of this name
                // can only exist already if a retried upload landed, which the
                // store's retry layer checks (crate::retry). Anything else is
                // a real conflict.
                Ok(_) => Ok(()),
                Err(e) => Err(RepoError::from_store(&name, e)),
            }
        });
        self.bytes_added.fetch_add(size, Ordering::Relaxed);
        st.inflight
            .push_back((IndexPack { id, size, blobs }, handle));
        // Packs uploaded at once: the store's connections; memory stays
        // about (connections + 2) × the pack size.
        while st.inflight.len() > repo.store.connections.max(1) {
            self.wait_one(st)?;
        }
        Ok(())
    }

    fn wait_one(&self, st: &mut State) -> Result<()> {
        if let Some((ip, h)) = st.inflight.pop_front() {
            let r = self
                .repo
                .repo
                .store
                .rt
                .block_on(h)
                .map_err(|e| RepoError::Store {
                    object: store::pack_path(&ip.id),
                    error: object_store::Error::JoinError { source: e },
                })?;
            r?;
            st.done.push(ip);
            if st.done.len() - st.indexed >= PACKS_PER_INDEX {
                self.write_index(st)?;
            }
        }
        Ok(())
    }

    /// Write an index object for the uploaded packs not yet indexed.
    fn write_index(&self, st: &mut State) -> Result<()> {
        if st.indexed == st.done.len() {
            return Ok(());
        }
        let file = IndexFile {
            supersedes: vec![],
            packs: st.done[st.indexed..].to_vec(),
        };
        let bytes = file.encode(&self.repo.repo.key);
        let id = IndexId::of(&bytes);
        let name = store::index_path(&id);
        self.repo.repo.store.put_new(&name, bytes.clone())?;
        // A session taken for dead may have had its packs deleted: its index
        // object must not stay (format-spec §5.1 step 3).
        if let Some(s) = self.repo.session()
            && let Err(e) = s.check_alive()
        {
            let _ = self.repo.repo.store.delete(&name);
            return Err(e);
        }
        st.index_bytes += bytes.len() as u64;
        st.indexed = st.done.len();
        st.last_index = Some(id);
        Ok(())
    }

    /// Upload what is left, wait for every pack, then write the index object
    /// and add the new packs to the in-memory index.
    pub fn finish(self) -> Result<PackerStats> {
        if self.dry {
            return Ok(PackerStats {
                data_blobs: self.data_blobs.load(Ordering::Relaxed),
                tree_blobs: self.tree_blobs.load(Ordering::Relaxed),
                bytes_added: self.bytes_added.load(Ordering::Relaxed),
                packs: 0,
                index: None,
                packs_written: Vec::new(),
            });
        }
        let mut st = std::mem::take(&mut *self.state.lock().expect("packer lock"));
        self.flush(&mut st, BlobKind::Data)?;
        self.flush(&mut st, BlobKind::Tree)?;
        while !st.inflight.is_empty() {
            self.wait_one(&mut st)?;
        }
        self.write_index(&mut st)?;
        let stats = PackerStats {
            data_blobs: self.data_blobs.load(Ordering::Relaxed),
            tree_blobs: self.tree_blobs.load(Ordering::Relaxed),
            bytes_added: self.bytes_added.load(Ordering::Relaxed) + st.index_bytes,
            packs: st.done.len() as u64,
            index: st.last_index,
            packs_written: st.done.clone(),
        };
        let mut idx = self.repo.index.write().expect("index lock");
        for p in &st.done {
            idx.add_recent(p);
        }
        Ok(stats)
    }
}
