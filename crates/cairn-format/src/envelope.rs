//! The sealed-object envelope shared by config, index and snapshot objects.
//! See `format-spec/README.md` §4.1.
//!
//! ```text
//! magic[8] | version u16 | nonce[24] | ciphertext | tag[16]
//! plaintext = codec u8 (0 = raw, 1 = zstd frame) | body
//! associated data = magic | version
//! ```

use crate::crypto::MasterKey;
use crate::error::{FormatError, Result};

/// Length of the clear prefix (magic and version).
pub const PREFIX_LEN: usize = 10;

const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// The largest body a decoder will decompress (guards against zstd bombs).
pub const MAX_BODY: usize = 1 << 30;

/// Compress `body` when that helps, seal it, and return the whole object.
pub fn seal_object(key: &MasterKey, magic: &[u8; 8], version: u16, body: &[u8]) -> Vec<u8> {
    let mut prefix = [0u8; PREFIX_LEN];
    prefix[..8].copy_from_slice(magic);
    prefix[8..].copy_from_slice(&version.to_le_bytes());
    let mut plain = Vec::with_capacity(body.len() + 1);
    match zstd::bulk::compress(body, 3) {
        Ok(c) if c.len() < body.len() => {
            plain.push(CODEC_ZSTD);
            plain.extend_from_slice(&c);
        }
        _ => {
            plain.push(CODEC_RAW);
            plain.extend_from_slice(body);
        }
    }
    let mut out = Vec::with_capacity(plain.len() + PREFIX_LEN + 40);
    out.extend_from_slice(&prefix);
    key.seal_metadata(&prefix, &plain, &mut out);
    out
}

/// Check magic and version, open, decompress; returns the body.
pub fn open_object(
    key: &MasterKey,
    what: &'static str,
    magic: &[u8; 8],
    version: u16,
    bytes: &[u8],
) -> Result<Vec<u8>> {
    check_prefix(what, magic, version, bytes)?;
    let plain = key.open_metadata(what, &bytes[..PREFIX_LEN], &bytes[PREFIX_LEN..])?;
    let (&codec, body) = plain
        .split_first()
        .ok_or_else(|| FormatError::malformed(what, "empty plaintext"))?;
    match codec {
        CODEC_RAW => Ok(body.to_vec()),
        CODEC_ZSTD => decompress_bounded(what, body, MAX_BODY),
        c => Err(FormatError::malformed(what, format!("unknown codec {c}"))),
    }
}

/// Check an object's magic and version.
pub fn check_prefix(what: &'static str, magic: &[u8; 8], version: u16, bytes: &[u8]) -> Result<()> {
    if bytes.len() < PREFIX_LEN {
        return Err(FormatError::malformed(
            what,
            format!("truncated: {} bytes, shorter than its header", bytes.len()),
        ));
    }
    if &bytes[..8] != magic {
        return Err(FormatError::malformed(what, "wrong magic bytes"));
    }
    let v = u16::from_le_bytes([bytes[8], bytes[9]]);
    if v != version {
        return Err(FormatError::UnsupportedVersion {
            what,
            version: v,
            supported: version,
        });
    }
    Ok(())
}

/// Decompress a zstd frame, refusing output larger than `limit`.
pub fn decompress_bounded(what: &'static str, frame: &[u8], limit: usize) -> Result<Vec<u8>> {
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .map_err(|_| FormatError::malformed(what, "bad zstd frame header"))?;
    let cap = match size {
        Some(n) if (n as usize) <= limit => n as usize,
        Some(n) => {
            return Err(FormatError::malformed(
                what,
                format!("claims {n} bytes decompressed, over the limit {limit}"),
            ));
        }
        None => {
            return Err(FormatError::malformed(
                what,
                "zstd frame does not declare its content size",
            ));
        }
    };
    // One decompression context per thread: creating one per blob was 6 % of
    // `check --read-data`'s cycles (perf, ZSTD_createDCtx).
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| FormatError::malformed(what, format!("zstd: {e}")))?,
            );
        }
        slot.as_mut()
            .expect("just set")
            .decompress(frame, cap)
            .map_err(|e| FormatError::malformed(what, format!("zstd: {e}")))
    })
}
