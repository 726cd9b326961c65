//! Id → dedup → compress → seal, in parallel over the chunks of a window.

use std::cell::RefCell;

use cairn_format::pack::compress_blob;
use cairn_format::{BlobKind, ChunkId, IdHasher, PackKey};
use rayon::prelude::*;

use crate::Cut;

/// Turns blob plaintexts into sealed blobs for one writer session.
#[derive(Clone)]
pub struct BlobEncoder {
    /// Computes chunk ids.
    pub hasher: IdHasher,
    /// Seals blobs; one random key per writer session, wrapped into every pack it writes.
    pub key: PackKey,
    /// zstd level.
    pub level: i32,
}

/// A sealed blob ready to be appended to a pack.
pub struct EncodedBlob<'a> {
    /// Data or tree.
    pub kind: BlobKind,
    /// Its id.
    pub id: ChunkId,
    /// Plaintext length.
    pub raw_len: u32,
    /// `nonce || ciphertext || tag`.
    pub sealed: &'a [u8],
}

struct Scratch {
    level: i32,
    compressor: zstd::bulk::Compressor<'static>,
    compressed: Vec<u8>,
    sealed: Vec<u8>,
}

thread_local! {
    // Buffers reused across chunks: a fresh allocation per chunk costs up to 3x
    // on this kind of VM (first-touch page faults).
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

impl BlobEncoder {
    /// Compress (when it shrinks) and seal `plain` with the given id, then hand
    /// the sealed blob to `sink`. Runs on the calling thread with reused buffers.
    pub fn encode<R>(
        &self,
        kind: BlobKind,
        id: ChunkId,
        plain: &[u8],
        sink: impl FnOnce(EncodedBlob<'_>) -> R,
    ) -> R {
        SCRATCH.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|s| s.level != self.level) {
                *slot = Some(Scratch {
                    level: self.level,
                    compressor: zstd::bulk::Compressor::new(self.level)
                        .expect("zstd level validated by the config"),
                    compressed: Vec::new(),
                    sealed: Vec::new(),
                });
            }
            let s = slot.as_mut().expect("just set");
            let use_compressed = compress_blob(&mut s.compressor, plain, &mut s.compressed);
            let stored: &[u8] = if use_compressed { &s.compressed } else { plain };
            s.sealed.clear();
            self.key.seal_blob(kind, &id, stored, &mut s.sealed);
            sink(EncodedBlob {
                kind,
                id,
                raw_len: plain.len() as u32,
                sealed: &s.sealed,
            })
        })
    }
}

/// Process one window of data chunks: compute ids in parallel, ask `claim` (in
/// stream order) whether each id still needs storing — `claim` must remember the
/// ids it says yes to so each blob is stored once — then compress and seal the
/// new ones in parallel and pass them to `sink`. Returns the ids in order.
pub fn process_window<E: Send>(
    encoder: &BlobEncoder,
    window: &[u8],
    cuts: &[Cut],
    mut claim: impl FnMut(&ChunkId) -> bool,
    sink: impl Fn(EncodedBlob<'_>) -> Result<(), E> + Sync,
) -> Result<Vec<ChunkId>, E> {
    let hasher = encoder.hasher;
    let ids: Vec<ChunkId> = cuts
        .par_iter()
        .map(|c| hasher.id(&window[c.offset..c.offset + c.len]))
        .collect();
    let new: Vec<usize> = (0..cuts.len()).filter(|&i| claim(&ids[i])).collect();
    new.par_iter().try_for_each(|&i| {
        let c = cuts[i];
        encoder.encode(
            BlobKind::Data,
            ids[i],
            &window[c.offset..c.offset + c.len],
            &sink,
        )
    })?;
    Ok(ids)
}
