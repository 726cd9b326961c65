#![no_main]
//! The chunk pipeline: cut (FastCDC), id, compress, seal, open, verify,
//! reassemble — the input must come back exactly, and a flipped byte in any
//! sealed blob must be refused. Also: fuzzer-chosen stored bytes behind a
//! valid seal with a fuzzer-chosen plaintext length (zstd frames, bombs).
use cairn_chunk::{BlobEncoder, ChunkerParams, Cut};
use cairn_format::{BlobKind, pack};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((m, rest)) = cairn_fuzz::mode(data) else { return };
    let master = cairn_fuzz::master();
    let hasher = master.id_hasher();
    let key = cairn_fuzz::pack_key();
    if m & 1 == 1 {
        if rest.len() < 4 {
            return;
        }
        let raw_len = u32::from_le_bytes(rest[..4].try_into().unwrap()) % (1 << 20);
        let stored = &rest[4..];
        let id = hasher.id(stored);
        let mut sealed = Vec::new();
        key.seal_blob(BlobKind::Data, &id, stored, &mut sealed);
        let mut out = Vec::new();
        let _ = pack::open_blob(&key, &hasher, BlobKind::Data, &id, &sealed, raw_len, &mut out);
        return;
    }
    let params = ChunkerParams { min: 64, avg: 256, max: 1024, seed: master.chunker_seed() };
    let mut cuts: Vec<Cut> = Vec::new();
    params.cut(rest, true, &mut cuts);
    let enc = BlobEncoder { hasher: hasher.clone(), key: key.clone(), level: 3 };
    let mut back = Vec::with_capacity(rest.len());
    for c in &cuts {
        assert!(c.len as u32 <= params.max);
        let plain = &rest[c.offset..c.offset + c.len];
        let id = hasher.id(plain);
        let (sealed, raw_len) = enc.encode(BlobKind::Data, id, plain, |b| (b.sealed.to_vec(), b.raw_len));
        let mut out = Vec::new();
        pack::open_blob(&key, &hasher, BlobKind::Data, &id, &sealed, raw_len, &mut out).unwrap();
        assert_eq!(out, plain);
        let mut bad = sealed.clone();
        let at = (c.offset * 31 + 7) % bad.len();
        bad[at] ^= 1;
        assert!(pack::open_blob(&key, &hasher, BlobKind::Data, &id, &bad, raw_len, &mut out).is_err());
        back.extend_from_slice(plain);
    }
    assert_eq!(back, rest);
});
