//! Keys, key derivation and sealing. See `format-spec/README.md` §3 (cryptography).
//!
//! One random 32-byte master secret per repository. Every sub-key is derived from it
//! with BLAKE3 `derive_key` and a fixed context string, so a key file only ever has to
//! wrap those 32 bytes. All sealing is XChaCha20-Poly1305 with a fresh random 192-bit
//! nonce: many writers never have to coordinate nonces.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use crate::error::{FormatError, Result};
use crate::id::{BlobKind, ChunkId};

/// Length of an XChaCha20 nonce.
pub const NONCE_LEN: usize = 24;
/// Length of a Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed blob adds to its (possibly compressed) plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Context strings for the sub-keys (BLAKE3 `derive_key`). Never change them:
/// they decide every chunk id and every ciphertext of existing repositories.
pub mod context {
    /// Key of the keyed BLAKE3 that names chunks and trees.
    pub const ID_KEY: &str = "cairn 2026-11-23 chunk id key v1";
    /// Key that seals config, index and snapshot objects.
    pub const METADATA_KEY: &str = "cairn 2026-11-23 metadata sealing key v1";
    /// Key that wraps each pack's random data key.
    pub const PACK_WRAP_KEY: &str = "cairn 2026-11-23 pack data key wrapping v1";
    /// Source of the secret FastCDC gear seed.
    pub const CHUNKER_SEED: &str = "cairn 2026-11-23 fastcdc gear seed v1";
}

/// Fill `buf` with bytes from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) {
    // A machine without a working CSPRNG cannot run a backup tool safely.
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// A random 32-byte array.
pub fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    random_bytes(&mut b);
    b
}

/// The repository master secret and every key derived from it.
#[derive(Clone)]
pub struct MasterKey {
    secret: [u8; 32],
    id_key: [u8; 32],
    metadata: XChaCha20Poly1305,
    pack_wrap: XChaCha20Poly1305,
    chunker_seed: u64,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Derive every sub-key from a master secret.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let id_key = blake3::derive_key(context::ID_KEY, &secret);
        let metadata = blake3::derive_key(context::METADATA_KEY, &secret);
        let pack_wrap = blake3::derive_key(context::PACK_WRAP_KEY, &secret);
        let seed = blake3::derive_key(context::CHUNKER_SEED, &secret);
        MasterKey {
            secret,
            id_key,
            metadata: XChaCha20Poly1305::new(metadata),
            pack_wrap: XChaCha20Poly1305::new(pack_wrap),
            chunker_seed: u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")),
        }
    }
    /// A fresh random master key.
    pub fn generate() -> Self {
        Self::from_secret(random32())
    }
    /// The 32-byte secret (only for wrapping it into a key file).
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
    /// The secret seed of the FastCDC gear table.
    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }
    /// A hasher that computes chunk ids.
    pub fn id_hasher(&self) -> IdHasher {
        IdHasher { key: self.id_key }
    }
    /// The id of a blob's plaintext.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }
    /// Seal metadata (config, index, snapshot body) with `aad` bound in.
    pub fn seal_metadata(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        seal_with(&self.metadata, aad, plaintext, out);
    }
    /// Open metadata sealed by [`MasterKey::seal_metadata`].
    pub fn open_metadata(&self, what: &'static str, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        open_with(&self.metadata, what, aad, sealed)
    }
    /// Wrap a pack data key (`aad` is the pack's fixed prefix).
    pub fn wrap_pack_key(&self, aad: &[u8], data_key: &[u8; 32], out: &mut Vec<u8>) {
        seal_with(&self.pack_wrap, aad, data_key, out);
    }
    /// Unwrap a pack data key.
    pub fn unwrap_pack_key(&self, aad: &[u8], wrapped: &[u8]) -> Result<PackKey> {
        let k = open_with(&self.pack_wrap, "pack key slot", aad, wrapped)?;
        let k: [u8; 32] = k
            .try_into()
            .map_err(|_| FormatError::malformed("pack key slot", "data key is not 32 bytes"))?;
        Ok(PackKey::from_bytes(k))
    }
}

/// Computes keyed BLAKE3 chunk ids. Cheap to copy into worker threads.
#[derive(Clone, Copy)]
pub struct IdHasher {
    key: [u8; 32],
}

impl IdHasher {
    /// The id of a blob's plaintext.
    pub fn id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.key, plaintext).as_bytes())
    }
}

/// The random per-pack key that seals a pack's blobs and header.
#[derive(Clone)]
pub struct PackKey {
    bytes: [u8; 32],
    cipher: XChaCha20Poly1305,
}

impl PackKey {
    /// A fresh random pack key.
    pub fn generate() -> Self {
        Self::from_bytes(random32())
    }
    /// A pack key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PackKey {
            bytes,
            cipher: XChaCha20Poly1305::new(bytes),
        }
    }
    /// The raw key (to be wrapped into the pack's key slot).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
    /// Seal a blob: appends `nonce || ciphertext || tag` to `out`.
    /// The associated data is the blob's kind byte followed by its id.
    pub fn seal_blob(&self, kind: BlobKind, id: &ChunkId, plaintext: &[u8], out: &mut Vec<u8>) {
        seal_with(&self.cipher, &blob_aad(kind, id), plaintext, out);
    }
    /// Open a sealed blob into `out` (cleared first).
    pub fn open_blob(
        &self,
        kind: BlobKind,
        id: &ChunkId,
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        open_into(&self.cipher, kind.name(), &blob_aad(kind, id), sealed, out)
    }
    /// Seal a pack header.
    pub fn seal_header(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        seal_with(&self.cipher, aad, plaintext, out);
    }
    /// Open a pack header.
    pub fn open_header(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        open_with(&self.cipher, "pack header", aad, sealed)
    }
}

fn blob_aad(kind: BlobKind, id: &ChunkId) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[0] = kind.to_byte();
    aad[1..].copy_from_slice(&id.0);
    aad
}

/// Seal with a random nonce: appends `nonce || ciphertext || tag` to `out`.
fn seal_with(cipher: &XChaCha20Poly1305, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut nonce);
    seal_with_nonce(cipher, &nonce, aad, plaintext, out);
}

fn seal_with_nonce(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let (key, n) = cipher.subkey(nonce);
    let tag = key
        .seal_in_place_separate_tag(n, Aad::from(aad), &mut out[start..])
        .expect("ChaCha20-Poly1305 accepts messages up to 256 GiB");
    out.extend_from_slice(tag.as_ref());
}

fn open_with(
    cipher: &XChaCha20Poly1305,
    what: &'static str,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    open_into(cipher, what, aad, sealed, &mut out)?;
    Ok(out)
}

fn open_into(
    cipher: &XChaCha20Poly1305,
    what: &'static str,
    aad: &[u8],
    sealed: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(FormatError::malformed(
            what,
            format!(
                "sealed data is {} bytes, shorter than nonce and tag",
                sealed.len()
            ),
        ));
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce: &[u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
    out.clear();
    out.extend_from_slice(ct);
    out.extend_from_slice(tag);
    let (key, n) = cipher.subkey(nonce);
    let opened = key
        .open_in_place(n, Aad::from(aad), out.as_mut_slice())
        .map(|p| p.len());
    match opened {
        Ok(len) => {
            out.truncate(len);
            Ok(())
        }
        Err(_) => {
            out.clear();
            Err(FormatError::AuthenticationFailed { what })
        }
    }
}

/// XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha): HChaCha20 of the key and
/// the nonce's first 16 bytes gives a subkey for ChaCha20-Poly1305 (RFC 8439,
/// ring's assembly implementation) with the nonce `0u32 || nonce[16..24]`.
#[derive(Clone)]
struct XChaCha20Poly1305 {
    key: [u8; 32],
}

impl XChaCha20Poly1305 {
    fn new(key: [u8; 32]) -> Self {
        XChaCha20Poly1305 { key }
    }

    fn subkey(&self, nonce: &[u8; NONCE_LEN]) -> (LessSafeKey, Nonce) {
        let sub = hchacha20(&self.key, nonce[..16].try_into().expect("16 bytes"));
        let key = LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &sub).expect("a 32-byte ChaCha20 key"),
        );
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&nonce[16..]);
        (key, Nonce::assume_unique_for_key(n))
    }
}

/// HChaCha20: the ChaCha20 state of ("expand 32-byte k", key, input) after
/// 20 rounds, without the final addition; words 0–3 and 12–15.
fn hchacha20(key: &[u8; 32], input: &[u8; 16]) -> [u8; 32] {
    let word = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    let mut s = [0u32; 16];
    s[..4].copy_from_slice(&[0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574]);
    for i in 0..8 {
        s[4 + i] = word(&key[4 * i..4 * i + 4]);
    }
    for i in 0..4 {
        s[12 + i] = word(&input[4 * i..4 * i + 4]);
    }
    fn qr(s: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
        s[a] = s[a].wrapping_add(s[b]);
        s[d] = (s[d] ^ s[a]).rotate_left(16);
        s[c] = s[c].wrapping_add(s[d]);
        s[b] = (s[b] ^ s[c]).rotate_left(12);
        s[a] = s[a].wrapping_add(s[b]);
        s[d] = (s[d] ^ s[a]).rotate_left(8);
        s[c] = s[c].wrapping_add(s[d]);
        s[b] = (s[b] ^ s[c]).rotate_left(7);
    }
    for _ in 0..10 {
        qr(&mut s, 0, 4, 8, 12);
        qr(&mut s, 1, 5, 9, 13);
        qr(&mut s, 2, 6, 10, 14);
        qr(&mut s, 3, 7, 11, 15);
        qr(&mut s, 0, 5, 10, 15);
        qr(&mut s, 1, 6, 11, 12);
        qr(&mut s, 2, 7, 8, 13);
        qr(&mut s, 3, 4, 9, 14);
    }
    let mut out = [0u8; 32];
    for (i, w) in s[..4].iter().chain(&s[12..]).enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Argon2id cost parameters of a key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// RFC 9106's second recommended option (64 MiB, 3 passes, 4 lanes).
    fn default() -> Self {
        KdfParams {
            m_cost: 64 * 1024,
            t_cost: 3,
            p_cost: 4,
        }
    }
}

impl KdfParams {
    /// Reject parameters that are too weak to protect a key or too large to run.
    pub fn validate(&self) -> Result<()> {
        let ok = (8..=4 * 1024 * 1024).contains(&self.m_cost)
            && (1..=64).contains(&self.t_cost)
            && (1..=64).contains(&self.p_cost)
            && self.m_cost >= 8 * self.p_cost;
        if ok {
            Ok(())
        } else {
            Err(FormatError::InvalidParameter(format!(
                "argon2id parameters out of range: {self:?}"
            )))
        }
    }
}

/// Derive the key-encrypting key of a key file from a password.
pub fn password_key(password: &[u8], salt: &[u8; 32], params: KdfParams) -> Result<[u8; 32]> {
    params.validate()?;
    let p = argon2::Params::new(params.m_cost, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| FormatError::InvalidParameter(format!("argon2id: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = [0u8; 32];
    a.hash_password_into(password, salt, &mut out)
        .map_err(|e| FormatError::InvalidParameter(format!("argon2id: {e}")))?;
    Ok(out)
}

/// Seal the master secret under a password-derived key (used by key files).
pub(crate) fn wrap_secret(kek: &[u8; 32], aad: &[u8], secret: &[u8; 32], out: &mut Vec<u8>) {
    let c = XChaCha20Poly1305::new(*kek);
    seal_with(&c, aad, secret, out);
}

/// Open the master secret of a key file; a failed tag means a wrong password.
pub(crate) fn unwrap_secret(kek: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<[u8; 32]> {
    let c = XChaCha20Poly1305::new(*kek);
    let v = open_with(&c, "key file", aad, sealed).map_err(|e| match e {
        FormatError::AuthenticationFailed { .. } => FormatError::WrongPassword,
        other => other,
    })?;
    v.try_into()
        .map_err(|_| FormatError::malformed("key file", "wrapped secret is not 32 bytes"))
}

/// Deterministic sealing for test vectors only: the nonce is given.
#[doc(hidden)]
pub fn seal_blob_with_nonce(
    key: &PackKey,
    nonce: &[u8; NONCE_LEN],
    kind: BlobKind,
    id: &ChunkId,
    plaintext: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    seal_with_nonce(&key.cipher, nonce, &blob_aad(kind, id), plaintext, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// draft-irtf-cfrg-xchacha-03 §2.2.1.
    #[test]
    fn hchacha20_matches_the_draft_vector() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let input: [u8; 16] = [
            0, 0, 0, 0x09, 0, 0, 0, 0x4a, 0, 0, 0, 0, 0x31, 0x41, 0x59, 0x27,
        ];
        let want = "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc";
        let got: String = hchacha20(&key, &input)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, want);
    }

    /// Sealing is byte-for-byte RustCrypto's XChaCha20-Poly1305 (the format's
    /// AEAD), in both directions, for lengths around the block sizes.
    #[test]
    fn xchacha20poly1305_equals_the_reference_implementation() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        for (i, len) in [0usize, 1, 15, 16, 63, 64, 65, 255, 256, 1000, 4097, 70_000]
            .into_iter()
            .enumerate()
        {
            let key = random32();
            let mut nonce = [0u8; NONCE_LEN];
            random_bytes(&mut nonce);
            let plain: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
            let aad = [i as u8; 33];
            let mut ours = Vec::new();
            seal_with_nonce(
                &XChaCha20Poly1305::new(key),
                &nonce,
                &aad,
                &plain,
                &mut ours,
            );
            let reference = chacha20poly1305::XChaCha20Poly1305::new(&key.into())
                .encrypt(
                    &nonce.into(),
                    Payload {
                        msg: &plain,
                        aad: &aad,
                    },
                )
                .unwrap();
            assert_eq!(ours[NONCE_LEN..], reference[..], "length {len}");
            let mut back = Vec::new();
            open_into(&XChaCha20Poly1305::new(key), "blob", &aad, &ours, &mut back).unwrap();
            assert_eq!(back, plain);
            let mut bad = ours.clone();
            let at = NONCE_LEN.min(bad.len() - 1);
            bad[at] ^= 1;
            assert!(
                open_into(&XChaCha20Poly1305::new(key), "blob", &aad, &bad, &mut back).is_err()
            );
        }
    }

    #[test]
    fn blob_round_trip_and_binding() {
        let k = PackKey::generate();
        let id = ChunkId([7; 32]);
        let mut sealed = Vec::new();
        k.seal_blob(BlobKind::Data, &id, b"hello", &mut sealed);
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        let mut out = Vec::new();
        k.open_blob(BlobKind::Data, &id, &sealed, &mut out).unwrap();
        assert_eq!(out, b"hello");
        // Same bytes presented as another id or kind must fail.
        assert!(k.open_blob(BlobKind::Tree, &id, &sealed, &mut out).is_err());
        assert!(
            k.open_blob(BlobKind::Data, &ChunkId([8; 32]), &sealed, &mut out)
                .is_err()
        );
        sealed[30] ^= 1;
        assert!(k.open_blob(BlobKind::Data, &id, &sealed, &mut out).is_err());
        assert!(
            k.open_blob(BlobKind::Data, &id, &sealed[..10], &mut out)
                .is_err()
        );
    }

    #[test]
    fn wrong_password_is_reported_as_such() {
        let p = KdfParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let salt = [1u8; 32];
        let kek = password_key(b"right", &salt, p).unwrap();
        let mut sealed = Vec::new();
        wrap_secret(&kek, b"aad", &[9; 32], &mut sealed);
        assert_eq!(unwrap_secret(&kek, b"aad", &sealed).unwrap(), [9; 32]);
        let bad = password_key(b"wrong", &salt, p).unwrap();
        assert_eq!(
            unwrap_secret(&bad, b"aad", &sealed),
            Err(FormatError::WrongPassword)
        );
    }
}
