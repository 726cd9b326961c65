//! Writing a restore's content: which (file, offset) pairs each chunk goes
//! to, grouped by pack; each pack read once (whole, in windows, when most of
//! it is needed), every blob authenticated and written at its offsets, and
//! what fails reported as damage.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_format::tree::{Extent, NodeKind};
use cairn_format::{BlobKind, ChunkId};
use rayon::prelude::*;

use super::{Damage, Item, RestoreProgress};
use crate::error::{RepoError, Result};
use crate::fsat::Beneath;
use crate::index::BlobLocation;
use crate::indexed::IndexedRepository;

/// Bytes of a pack read at once when most of it is restored.
const RESTORE_WINDOW: u64 = 4 << 20;

/// Reports blobs (and so the files using them) as damaged.
type FailFn<'a> = dyn Fn(&[(ChunkId, BlobLocation)], &str, bool) + Sync + 'a;

/// Where each chunk goes: (item, offset) pairs.
pub(super) type ChunkTargets = HashMap<ChunkId, Vec<(u32, u64)>>;

/// Plan: which (file, offset) pairs each chunk goes to; counts the bytes
/// to write in `progress`.
pub(super) fn chunk_targets(items: &[Item], progress: &RestoreProgress) -> ChunkTargets {
    let mut targets: ChunkTargets = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if item.linked.load(Ordering::Relaxed) {
            continue; // its leader's content is its own
        }
        if let NodeKind::File { extents } = &item.node.kind {
            let mut off = 0u64;
            for e in extents {
                if let Extent::Chunk { id, .. } = e {
                    targets.entry(*id).or_default().push((i as u32, off));
                    progress.bytes_total.fetch_add(e.len(), Ordering::Relaxed);
                }
                off += e.len();
            }
        }
    }
    targets
}

/// The blobs to read, by pack (in pack order), each pack's by offset.
pub(super) type PackPlan = Vec<(u32, Vec<(ChunkId, BlobLocation)>)>;

impl IndexedRepository {
    /// The blobs of `chunks` by pack; a chunk in no index is damage to
    /// every file using it.
    pub(super) fn packs_of(
        &self,
        chunks: &ChunkTargets,
        target: &Path,
        items: &[Item],
        damaged: &Mutex<Vec<Damage>>,
    ) -> PackPlan {
        let mut by_pack: BTreeMap<u32, Vec<(ChunkId, BlobLocation)>> = BTreeMap::new();
        {
            let idx = self.index.read().expect("index lock");
            for id in chunks.keys() {
                match idx.get(BlobKind::Data, id) {
                    Some(loc) => by_pack.entry(loc.pack).or_default().push((*id, loc)),
                    None => {
                        let mut d = damaged.lock().expect("damage");
                        for (i, _) in &chunks[id] {
                            d.push(Damage {
                                path: target.join(&items[*i as usize].rel),
                                detail: format!("data blob {id} is not in any index (missing)"),
                                on_target: false,
                            });
                        }
                    }
                }
            }
        }
        by_pack
            .into_iter()
            .map(|(p, mut v)| {
                v.sort_by_key(|x| x.1.offset);
                (p, v)
            })
            .collect()
    }

    /// Read the packs in parallel on `pool` and write their blobs where
    /// they go; what fails is pushed to `damaged`. Returns the bytes written.
    pub(super) fn write_packs(
        &self,
        pool: &rayon::ThreadPool,
        packs: &PackPlan,
        to: &Targets<'_>,
        progress: &RestoreProgress,
        damaged: &Mutex<Vec<Damage>>,
    ) -> u64 {
        let written = AtomicU64::new(0);
        pool.install(|| {
            packs.par_iter().enumerate().for_each(|(i, (pack, blobs))| {
                // Read the next pack ahead when it will be read whole (rayon
                // gives each thread a run of consecutive packs).
                if let Some((next, next_blobs)) = packs.get(i + 1)
                    && self.reads_whole(*next, next_blobs)
                {
                    self.prefetch_pack(*next);
                }
                let fail = |blobs: &[(ChunkId, BlobLocation)], detail: &str, on_target: bool| {
                    let mut d = damaged.lock().expect("damage");
                    for (id, _) in blobs {
                        for (i, _) in &to.chunks[id] {
                            d.push(Damage {
                                path: to.target.join(&to.items[*i as usize].rel),
                                detail: detail.to_string(),
                                on_target,
                            });
                        }
                    }
                };
                if let Err(e) = self.restore_pack(*pack, blobs, to, &written, progress, &fail) {
                    let local = matches!(e, RepoError::Io { .. });
                    fail(blobs, &e.to_string(), local);
                }
            })
        });
        written.into_inner()
    }

    /// Whether a restore reads this pack whole (at least half of it is
    /// needed) rather than blob by blob.
    fn reads_whole(&self, pack: u32, blobs: &[(ChunkId, BlobLocation)]) -> bool {
        let size = self.index.read().expect("index lock").pack_sizes[pack as usize];
        let needed: u64 = blobs.iter().map(|b| b.1.length as u64).sum();
        needed * 2 >= size
    }

    fn restore_pack(
        &self,
        pack: u32,
        blobs: &[(ChunkId, BlobLocation)],
        to: &Targets<'_>,
        written: &AtomicU64,
        progress: &RestoreProgress,
        fail: &FailFn<'_>,
    ) -> Result<()> {
        let mut plain = Vec::new();
        let mut put = |id: &ChunkId, loc: &BlobLocation, key: &_, sealed: &[u8]| {
            if let Err(e) = self.open_sealed(BlobKind::Data, id, loc, key, sealed, &mut plain) {
                fail(&[(*id, *loc)], &e.to_string(), false);
                return;
            }
            for (i, off) in &to.chunks[id] {
                let item = &to.items[*i as usize];
                // Creation failed: that is reported already.
                let Some(made) = item.ident() else {
                    continue;
                };
                let r = crate::fsat::open_for_content(to.beneath, &item.rel, *made)
                    .and_then(|f| f.write_all_at(&plain, *off));
                if let Err(e) = r {
                    fail(
                        &[(*id, *loc)],
                        &format!("writing {}: {e}", to.target.join(&item.rel).display()),
                        true,
                    );
                    continue;
                }
                written.fetch_add(plain.len() as u64, Ordering::Relaxed);
                progress
                    .bytes_written
                    .fetch_add(plain.len() as u64, Ordering::Relaxed);
            }
        };
        if self.reads_whole(pack, blobs) {
            // Most of the pack: read it front to back in windows, checked
            // against its name at the end (memory: a window, not a pack).
            let mut reader = crate::indexed::PackReader::new(self, pack, RESTORE_WINDOW);
            let key = reader.key()?;
            for (id, loc) in blobs {
                match reader.blob(loc.offset, loc.length) {
                    Ok(sealed) => put(id, loc, &key, &sealed),
                    Err(e) => fail(&[(*id, *loc)], &e.to_string(), false),
                }
            }
            // Keep going on a mismatch: blobs were authenticated one by one,
            // but the files that use this pack are reported.
            if let Err(e) = reader.finish() {
                fail(blobs, &e.to_string(), false);
            }
        } else {
            let key = self.pack_key(pack, None)?;
            let ranges: Vec<_> = blobs
                .iter()
                .map(|(_, l)| l.offset as u64..l.offset as u64 + l.length as u64)
                .collect();
            let sealed_parts = self.repo.store.get_ranges(&self.pack_name(pack), &ranges)?;
            for ((id, loc), sealed) in blobs.iter().zip(&sealed_parts) {
                put(id, loc, &key, sealed);
            }
        }
        Ok(())
    }
}

/// Where the blobs of a pack go.
pub(super) struct Targets<'a> {
    pub(super) beneath: &'a Beneath,
    pub(super) target: &'a Path,
    pub(super) items: &'a [Item],
    pub(super) chunks: &'a ChunkTargets,
}
