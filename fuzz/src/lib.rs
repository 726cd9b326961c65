//! Helpers shared by the fuzz targets: fixed keys, and sealing fuzzer-chosen
//! plaintext so that the decoders behind authentication are reached (random
//! bytes alone never pass the AEAD tag).

use cairn_format::envelope::PREFIX_LEN;
use cairn_format::{MasterKey, PackKey};

/// The master key every target uses.
pub fn master() -> MasterKey {
    MasterKey::from_secret([7; 32])
}

/// A pack data key.
pub fn pack_key() -> PackKey {
    PackKey::from_bytes([9; 32])
}

/// An object with a valid prefix whose sealed plaintext is `plain` as given:
/// its first byte is the codec (0 raw, 1 zstd), the rest the body or frame.
pub fn sealed_object(magic: &[u8; 8], version: u16, plain: &[u8]) -> Vec<u8> {
    let mut prefix = [0u8; PREFIX_LEN];
    prefix[..8].copy_from_slice(magic);
    prefix[8..].copy_from_slice(&version.to_le_bytes());
    let mut out = prefix.to_vec();
    master().seal_metadata(&prefix, plain, &mut out);
    out
}

/// Split off a selector byte.
pub fn mode(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(m, rest)| (*m, rest))
}
