//! Shared by the integration tests: fast Argon2id settings, an in-memory
//! repository with small packs, deterministic data, a one-file backup.

use std::sync::Arc;

use cairn_format::config::Config;
use cairn_format::{KdfParams, SnapshotId};
use cairn_repo::{BackupOptions, IndexedRepository, Progress, Repository};
use object_store::ObjectStore;

/// Argon2id settings that keep tests fast.
pub const KDF: KdfParams = KdfParams {
    m_cost: 64,
    t_cost: 1,
    p_cost: 1,
};

/// A new in-memory repository (password "pw") with 1 MiB packs, so that a
/// few MiB of data make several packs.
pub fn setup() -> Arc<dyn ObjectStore> {
    let s: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let mut cfg = Config::new_default(0);
    cfg.pack_target = 1 << 20;
    Repository::init(s.clone(), b"pw", cfg, KDF).unwrap();
    s
}

/// Open and load the index.
pub fn open(s: &Arc<dyn ObjectStore>) -> IndexedRepository {
    Repository::open(s.clone(), b"pw")
        .unwrap()
        .load_index()
        .unwrap()
}

/// `len` pseudo-random bytes from `seed` (xorshift).
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Back up `d` as the one file `/f` of a new snapshot.
pub fn backup_bytes(r: &IndexedRepository, d: &[u8]) -> cairn_repo::Result<SnapshotId> {
    r.backup_stream(
        d,
        "f",
        &BackupOptions::default(),
        &Progress::default(),
        || Ok(()),
    )
    .map(|b| b.id)
}
