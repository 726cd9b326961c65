//! Pack objects (`data/<xx>/<id>`): sealed blobs behind a sealed header.
//! See `format-spec/README.md` §4.4.
//!
//! ```text
//! magic "CAIRNPAK" | version u16 | slot kind u8 | key slot[72] | header_len u32
//! | sealed header[header_len] | blob 0 | blob 1 | ...
//! ```
//! The key slot wraps the pack's random data key; the data key seals the header
//! and every blob. A later format can add slot kinds (e.g. wrapped for a
//! repository public key) without touching how blobs are sealed.

use crate::codec::{Reader, Writer};
use crate::crypto::{MasterKey, PackKey, SEAL_OVERHEAD};
use crate::envelope::{check_prefix, decompress_bounded};
use crate::error::{FormatError, Result};
use crate::id::{BlobKind, ChunkId};

/// Magic of a pack.
pub const MAGIC: &[u8; 8] = b"CAIRNPAK";
/// Current pack version.
pub const VERSION: u16 = 1;
/// Key slot kind: data key sealed with the master key's pack-wrapping sub-key.
pub const SLOT_MASTER_WRAPPED: u8 = 1;
/// Length of a key slot.
pub const SLOT_LEN: usize = 24 + 32 + 16;
/// Length of the fixed prefix in front of the sealed header.
pub const PREFIX_LEN: usize = 8 + 2 + 1 + SLOT_LEN + 4;
/// Bytes per header entry.
pub const ENTRY_LEN: usize = 1 + 32 + 4 + 4;
/// Largest blob plaintext accepted (max chunk size is 16 MiB; trees may be larger).
pub const MAX_BLOB_RAW: u32 = 256 << 20;

/// One blob as listed in a pack header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    /// Data or tree.
    pub kind: BlobKind,
    /// Keyed BLAKE3 of the plaintext.
    pub id: ChunkId,
    /// Offset of the sealed blob from the start of the pack.
    pub offset: u32,
    /// Length of the sealed blob (nonce, ciphertext, tag).
    pub length: u32,
    /// Length of the plaintext (before compression).
    pub raw_len: u32,
}

/// Encode the prefix and sealed header of a pack whose blobs (in `entries`
/// order, back to back) follow it. Entry offsets are ignored and implied.
pub fn encode_header(master: &MasterKey, key: &PackKey, entries: &[PackEntry]) -> Vec<u8> {
    let mut plain = Writer::new();
    plain.u32(entries.len() as u32);
    for e in entries {
        plain.u8(e.kind.to_byte());
        plain.raw(&e.id.0);
        plain.u32(e.length);
        plain.u32(e.raw_len);
    }
    let mut out = Vec::with_capacity(PREFIX_LEN + plain.buf.len() + SEAL_OVERHEAD);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(SLOT_MASTER_WRAPPED);
    let slot_aad = out.clone();
    master.wrap_pack_key(&slot_aad, key.bytes(), &mut out);
    debug_assert_eq!(out.len(), PREFIX_LEN - 4);
    let header_len = (plain.buf.len() + SEAL_OVERHEAD) as u32;
    out.extend_from_slice(&header_len.to_le_bytes());
    let aad = out.clone();
    key.seal_header(&aad, &plain.buf, &mut out);
    out
}

/// Read the header length from the first [`PREFIX_LEN`] bytes of a pack.
pub fn header_len(prefix: &[u8]) -> Result<usize> {
    check_prefix("pack", MAGIC, VERSION, prefix)?;
    if prefix.len() < PREFIX_LEN {
        return Err(FormatError::malformed(
            "pack",
            "truncated before its header",
        ));
    }
    let n = u32::from_le_bytes(prefix[PREFIX_LEN - 4..PREFIX_LEN].try_into().expect("4"));
    Ok(n as usize)
}

/// Unwrap the data key from the first [`PREFIX_LEN`] bytes of a pack.
pub fn unwrap_key(master: &MasterKey, prefix: &[u8]) -> Result<PackKey> {
    header_len(prefix)?;
    if prefix[10] != SLOT_MASTER_WRAPPED {
        return Err(FormatError::malformed(
            "pack",
            format!("unknown key slot kind {}", prefix[10]),
        ));
    }
    master.unwrap_pack_key(&prefix[..11], &prefix[11..11 + SLOT_LEN])
}

/// Decode the header from the start of a pack (at least `PREFIX_LEN +
/// header_len` bytes). `pack_len` is the whole pack's size, used to check that
/// every blob lies inside it. Returns the data key and the entries with offsets.
pub fn decode_header(
    master: &MasterKey,
    start: &[u8],
    pack_len: u64,
) -> Result<(PackKey, Vec<PackEntry>)> {
    let hlen = header_len(start)?;
    let key = unwrap_key(master, start)?;
    if start.len() < PREFIX_LEN + hlen {
        return Err(FormatError::malformed(
            "pack",
            format!("truncated inside its {hlen}-byte header"),
        ));
    }
    let plain = key.open_header(&start[..PREFIX_LEN], &start[PREFIX_LEN..PREFIX_LEN + hlen])?;
    let mut r = Reader::new(&plain, "pack header");
    let n = r.count(ENTRY_LEN)?;
    let mut entries = Vec::with_capacity(n);
    let mut offset = (PREFIX_LEN + hlen) as u64;
    for _ in 0..n {
        let kb = r.u8()?;
        let kind =
            BlobKind::from_byte(kb).ok_or_else(|| r.err(format!("unknown blob kind {kb}")))?;
        let id = ChunkId(r.array()?);
        let length = r.u32()?;
        let raw_len = r.u32()?;
        check_lengths("pack header", length, raw_len)?;
        if offset + length as u64 > pack_len || offset > u32::MAX as u64 {
            return Err(r.err("blob extends past the end of the pack"));
        }
        entries.push(PackEntry {
            kind,
            id,
            offset: offset as u32,
            length,
            raw_len,
        });
        offset += length as u64;
    }
    r.finish()?;
    Ok((key, entries))
}

/// Check a blob's stored and plaintext lengths against the compression rule.
pub fn check_lengths(what: &'static str, length: u32, raw_len: u32) -> Result<()> {
    let stored = (length as usize).checked_sub(SEAL_OVERHEAD);
    match stored {
        None => Err(FormatError::malformed(
            what,
            "blob shorter than nonce and tag",
        )),
        Some(s) if s > raw_len as usize => Err(FormatError::malformed(
            what,
            "blob stored larger than its plaintext",
        )),
        Some(_) if raw_len > MAX_BLOB_RAW => {
            Err(FormatError::malformed(what, "blob plaintext length absurd"))
        }
        Some(_) => Ok(()),
    }
}

/// Prepare a blob's plaintext for storage: zstd at `level` if that shrinks it,
/// otherwise the raw bytes. `scratch` is reused between calls.
/// Returns `true` when `scratch` holds the compressed form.
pub fn compress_blob(
    compressor: &mut zstd::bulk::Compressor<'static>,
    plain: &[u8],
    scratch: &mut Vec<u8>,
) -> bool {
    scratch.clear();
    scratch.reserve(zstd::zstd_safe::compress_bound(plain.len()));
    match compressor.compress_to_buffer(plain, scratch) {
        Ok(n) => n < plain.len(),
        Err(_) => false,
    }
}

/// The plaintext of a blob's stored form: `None` when it was stored
/// uncompressed (the stored bytes are the plaintext), else the decompressed
/// bytes, checked against `raw_len`.
fn decompressed(kind: BlobKind, stored: &[u8], raw_len: u32) -> Result<Option<Vec<u8>>> {
    if stored.len() == raw_len as usize {
        return Ok(None);
    }
    let plain = decompress_bounded(kind.name(), stored, raw_len as usize)?;
    if plain.len() != raw_len as usize {
        return Err(FormatError::malformed(
            kind.name(),
            "decompressed length differs from the index",
        ));
    }
    Ok(Some(plain))
}

/// Like [`open_blob`], but leave the blob's stored form (compressed or not,
/// as sealed) in `stored`, after checking that it opens and decompresses to
/// plaintext hashing to `id`: what a repack re-seals without recompressing.
pub fn open_blob_stored(
    key: &PackKey,
    hasher: &crate::crypto::IdHasher,
    kind: BlobKind,
    id: &ChunkId,
    sealed: &[u8],
    raw_len: u32,
    stored: &mut Vec<u8>,
) -> Result<()> {
    check_lengths(kind.name(), sealed.len() as u32, raw_len)?;
    key.open_blob(kind, id, sealed, stored)?;
    let plain = decompressed(kind, stored, raw_len)?;
    if hasher.id(plain.as_deref().unwrap_or(stored)) != *id {
        return Err(FormatError::IdMismatch { what: kind.name() });
    }
    Ok(())
}

/// Open a sealed blob, decompress it if its lengths say so, and check that its
/// plaintext hashes to `id`. `out` receives the plaintext.
pub fn open_blob(
    key: &PackKey,
    hasher: &crate::crypto::IdHasher,
    kind: BlobKind,
    id: &ChunkId,
    sealed: &[u8],
    raw_len: u32,
    out: &mut Vec<u8>,
) -> Result<()> {
    check_lengths(kind.name(), sealed.len() as u32, raw_len)?;
    let mut stored = Vec::new();
    key.open_blob(kind, id, sealed, &mut stored)?;
    *out = decompressed(kind, &stored, raw_len)?.unwrap_or(stored);
    if hasher.id(out) != *id {
        return Err(FormatError::IdMismatch { what: kind.name() });
    }
    Ok(())
}
