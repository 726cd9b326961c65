//! Opening, creating and keying a repository; snapshots.

use std::sync::Arc;

use cairn_format::config::Config;
use cairn_format::keyfile::KeyFile;
use cairn_format::snapshot::Snapshot;
use cairn_format::{KdfParams, KeyId, MasterKey, SnapshotId};
use object_store::ObjectStore;

use crate::error::{RepoError, Result};
use crate::layout::ObjectKind;
use crate::store::{self, Store};

/// An opened repository: its key and config are known, its index is not
/// loaded yet (see [`crate::IndexedRepository`]).
#[derive(Debug, Clone)]
pub struct Repository {
    /// Storage access.
    pub(crate) store: Store,
    /// The unlocked master key: only this crate uses it; others go through
    /// [`Repository::read_index_object`] and [`Repository::chunk_hasher`].
    pub(crate) key: MasterKey,
    /// Repository settings.
    pub(crate) config: Config,
    /// The key file that was used to open it.
    pub(crate) key_id: KeyId,
    /// Timing of the session and lease protocol (format-spec §5).
    pub(crate) protocol: crate::limits::ProtocolTimes,
    /// Bounds on what a snapshot's tree may expand to (format-spec §10).
    pub(crate) tree_limits: crate::limits::TreeLimits,
    /// What opening found worth saying (key files skipped).
    pub(crate) warnings: Vec<String>,
}

/// The readable snapshots (oldest first) and the errors naming each
/// unreadable snapshot object.
pub type Readable = (Vec<(SnapshotId, Snapshot)>, Vec<RepoError>);

/// Which key file to try first, and whether to try expensive ones.
#[derive(Clone, Debug, Default)]
pub struct KeyChoice {
    /// Key id (or prefix) tried before the others.
    pub hint: Option<String>,
    /// Try key files above the KDF ceiling too.
    pub allow_expensive_kdf: bool,
}

/// Argon2id memory above which a key file is skipped unless allowed (KiB).
pub const KDF_CEILING_KIB: u32 = 1 << 20;
/// Argon2id passes above which a key file is skipped unless allowed.
pub const KDF_CEILING_PASSES: u32 = 16;
/// Argon2id lanes above which a key file is skipped unless allowed.
pub const KDF_CEILING_LANES: u32 = 16;
/// The largest a key file can be.
pub const MAX_KEY_OBJECT: u64 = 64 << 10;

/// The largest a snapshot object can be (format-spec §10): its paths, tags,
/// fingerprints and extensions are small; anything larger is not read.
pub const MAX_SNAPSHOT_OBJECT: u64 = 64 << 20;

/// A key file as listed by `cairn key list`.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// Its id.
    pub id: KeyId,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Host it was created on.
    pub hostname: String,
    /// User who created it.
    pub username: String,
}

/// Who is running this process (recorded in key files and snapshots).
pub fn whoami() -> (String, String) {
    let host = crate::sys::hostname();
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| crate::sys::username());
    (host, user)
}

/// Current time in nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Read an object and check that its bytes hash to its name.
pub fn get_verified(store: &Store, name: &str, id: &[u8; 32]) -> Result<bytes::Bytes> {
    let b = store.get(name)?;
    if blake3::hash(&b).as_bytes() != id {
        return Err(RepoError::Corrupted {
            object: name.to_string(),
            detail: "content does not hash to its name (altered or truncated)".into(),
        });
    }
    Ok(b)
}

impl Repository {
    /// Storage access.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Repository settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The key file that was used to open it.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// Timing of the session and lease protocol (format-spec §5).
    pub fn protocol(&self) -> &crate::limits::ProtocolTimes {
        &self.protocol
    }

    /// The protocol's timing, to change (tests and operators shorten or
    /// lengthen it; format-spec §5).
    pub fn protocol_mut(&mut self) -> &mut crate::limits::ProtocolTimes {
        &mut self.protocol
    }

    /// Bounds on what a snapshot's tree may expand to (format-spec §10).
    pub fn tree_limits(&self) -> &crate::limits::TreeLimits {
        &self.tree_limits
    }

    /// Those bounds, to change.
    pub fn tree_limits_mut(&mut self) -> &mut crate::limits::TreeLimits {
        &mut self.tree_limits
    }

    /// What opening found worth saying (key files skipped).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Read and decrypt one index object by id (e.g. for `cairn cat index`).
    pub fn read_index_object(
        &self,
        id: &cairn_format::IndexId,
    ) -> Result<cairn_format::index::IndexFile> {
        let name = crate::store::index_path(id);
        let b = self.store.get(&name)?;
        cairn_format::index::IndexFile::decode(&self.key, &b)
            .map_err(|e| RepoError::from_format(&name, e))
    }

    /// The keyed hasher that gives chunk ids (to compare a file's content
    /// with a snapshot's without storing it).
    pub fn chunk_hasher(&self) -> cairn_format::crypto::IdHasher {
        self.key.id_hasher()
    }

    /// Create a repository. Writes the first key file, then the config (the
    /// config's presence is what makes a location a repository).
    pub fn init(
        store: Arc<dyn ObjectStore>,
        password: &[u8],
        config: Config,
        kdf: KdfParams,
    ) -> Result<Self> {
        Self::init_store(Store::new(store), password, config, kdf)
    }

    /// [`Repository::init`] over a configured [`Store`] (connections, cache).
    pub fn init_store(
        mut store: Store,
        password: &[u8],
        config: Config,
        kdf: KdfParams,
    ) -> Result<Self> {
        config.validate()?;
        if store.exists(store::CONFIG)? {
            return Err(RepoError::InvalidInput(
                "a repository already exists at this location".into(),
            ));
        }
        let key = MasterKey::generate();
        let key_id = write_key(&store, &key, password, kdf)?;
        let cfg_bytes = config.encode(&key);
        store.put_new(store::CONFIG, cfg_bytes.clone())?;
        store.enable_cache(&cfg_bytes);
        Ok(Repository {
            store,
            key,
            config,
            key_id,
            protocol: Default::default(),
            tree_limits: Default::default(),
            warnings: Vec::new(),
        })
    }

    /// Open with a password: tries every key file.
    pub fn open(store: Arc<dyn ObjectStore>, password: &[u8]) -> Result<Self> {
        Self::open_store(Store::new(store), password)
    }

    /// [`Repository::open`] over a configured [`Store`] (connections, cache).
    pub fn open_store(store: Store, password: &[u8]) -> Result<Self> {
        Self::open_store_with(store, password, &KeyChoice::default())
    }

    /// [`Repository::open_store`] trying the hinted key file first and
    /// skipping key files whose Argon2id settings pass [`KDF_CEILING_KIB`] /
    /// [`KDF_CEILING_PASSES`] / [`KDF_CEILING_LANES`] unless allowed (a
    /// planted key file would otherwise cost every open seconds and GBs;
    /// format-spec §8). Skipped key files are named in [`Self::warnings`].
    pub fn open_store_with(mut store: Store, password: &[u8], choice: &KeyChoice) -> Result<Self> {
        let cfg_bytes = match store.get(store::CONFIG) {
            Ok(b) => b,
            Err(RepoError::NotFound { .. }) => {
                return Err(RepoError::NoRepository {
                    location: store.inner.to_string(),
                });
            }
            Err(e) => return Err(e),
        };
        store.enable_cache(&cfg_bytes);
        let mut damaged = Vec::new();
        let mut warnings = Vec::new();
        let mut keys: Vec<(String, KeyId)> = Vec::new();
        for (name, size) in store.list_kind(ObjectKind::Key)? {
            let Some(id) = ObjectKind::Key.id::<KeyId>(&name) else {
                continue;
            };
            if size > MAX_KEY_OBJECT {
                damaged.push(format!(
                    "object {name}: {size} bytes, more than any key file can be; not read"
                ));
                continue;
            }
            keys.push((name, id));
        }
        // In name order (listings need not be sorted), the hinted key first
        // (the one this host used last).
        keys.sort();
        if let Some(h) = &choice.hint {
            let h = h.to_ascii_lowercase();
            keys.sort_by_key(|(_, id)| !id.to_hex().starts_with(&h));
        }
        for (name, id) in keys {
            let kf = get_verified(&store, &name, &id.0)
                .and_then(|b| KeyFile::decode(&b).map_err(|e| RepoError::from_format(&name, e)));
            let kf = match kf {
                Ok(k) => k,
                Err(e) => {
                    damaged.push(e.to_string());
                    continue;
                }
            };
            let k = kf.kdf;
            // The hint is the operator's own (or this host's last key).
            let hinted = choice
                .hint
                .as_ref()
                .is_some_and(|h| id.to_hex().starts_with(&h.to_ascii_lowercase()));
            if !choice.allow_expensive_kdf
                && !hinted
                && (k.m_cost > KDF_CEILING_KIB
                    || k.t_cost > KDF_CEILING_PASSES
                    || k.p_cost > KDF_CEILING_LANES)
            {
                warnings.push(format!(
                    "key file {name} skipped: its Argon2id settings (m = {} KiB, t = {}, p = {}) are above the ceiling (m = {KDF_CEILING_KIB} KiB, t = {KDF_CEILING_PASSES}, p = {KDF_CEILING_LANES}); a planted key file would cost every open that much (--allow-expensive-kdf tries it)",
                    k.m_cost, k.t_cost, k.p_cost
                ));
                continue;
            }
            match kf.unlock(password) {
                Ok(key) => {
                    let config = Config::decode(&key, &cfg_bytes)
                        .map_err(|e| RepoError::from_format(store::CONFIG, e))?;
                    return Ok(Repository {
                        store,
                        key,
                        config,
                        key_id: id,
                        protocol: Default::default(),
                        tree_limits: Default::default(),
                        warnings,
                    });
                }
                Err(cairn_format::FormatError::WrongPassword) => {}
                Err(e) => damaged.push(RepoError::from_format(&name, e).to_string()),
            }
        }
        damaged.extend(warnings);
        if damaged.is_empty() {
            Err(RepoError::WrongPassword)
        } else {
            Err(RepoError::InvalidInput(format!(
                "wrong password, or the matching key file is damaged: {}",
                damaged.join("; ")
            )))
        }
    }

    /// List key files.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for (name, _) in self.store.list_kind(ObjectKind::Key)? {
            let Some(id) = ObjectKind::Key.id::<KeyId>(&name) else {
                continue;
            };
            let b = get_verified(&self.store, &name, &id.0)?;
            let kf = KeyFile::decode(&b).map_err(|e| RepoError::from_format(&name, e))?;
            out.push(KeyInfo {
                id,
                created: kf.created,
                hostname: kf.hostname,
                username: kf.username,
            });
        }
        out.sort_by_key(|k| k.created);
        Ok(out)
    }

    /// Add a key file for another password.
    pub fn add_key(&self, password: &[u8], kdf: KdfParams) -> Result<KeyId> {
        write_key(&self.store, &self.key, password, kdf)
    }

    /// Remove a key file. The key in use and the last key cannot be removed.
    pub fn remove_key(&self, id: &KeyId) -> Result<()> {
        if *id == self.key_id {
            return Err(RepoError::InvalidInput(
                "refusing to remove the key this command was opened with".into(),
            ));
        }
        let keys = self.list_keys()?;
        if !keys.iter().any(|k| k.id == *id) {
            return Err(RepoError::NotFound {
                object: store::key_path(id),
            });
        }
        if keys.len() < 2 {
            return Err(RepoError::InvalidInput(
                "refusing to remove the last key".into(),
            ));
        }
        self.store.delete(&store::key_path(id))
    }

    /// Every snapshot, oldest first. A damaged snapshot object is an error
    /// naming it (prune and repair must not act without every snapshot).
    pub fn list_snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>> {
        let (out, mut bad) = self.list_snapshots_readable()?;
        match bad.is_empty() {
            true => Ok(out),
            false => Err(bad.swap_remove(0)),
        }
    }

    /// Every readable snapshot, oldest first, and what made the others
    /// unreadable (each error names its object): one damaged, foreign or
    /// planted snapshot object does not block the commands that do not
    /// need it. Objects larger than any snapshot can be (format-spec §10)
    /// are refused from the listing's size, unread.
    pub fn list_snapshots_readable(&self) -> Result<Readable> {
        let mut bad = Vec::new();
        let mut names: Vec<(String, SnapshotId)> = Vec::new();
        for (n, size) in self.store.list_kind(ObjectKind::Snapshot)? {
            let Some(id) = ObjectKind::Snapshot.id::<SnapshotId>(&n) else {
                continue;
            };
            if size > MAX_SNAPSHOT_OBJECT {
                bad.push(RepoError::Corrupted {
                    object: n,
                    detail: format!(
                        "{size} bytes, more than any snapshot object can be ({MAX_SNAPSHOT_OBJECT}); not read (planted?)"
                    ),
                });
                continue;
            }
            names.push((n, id));
        }
        let just_names: Vec<String> = names.iter().map(|x| x.0.clone()).collect();
        let mut out = Vec::with_capacity(names.len());
        for ((name, id), bytes) in names.iter().zip(self.store.get_many(&just_names, 16)) {
            let bytes = match bytes {
                Ok(b) => b,
                // Forgotten between the listing and the read.
                Err(RepoError::NotFound { .. }) => continue,
                Err(e @ RepoError::Corrupted { .. }) => {
                    bad.push(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match self.decode_snapshot(name, id, bytes) {
                Ok(s) => out.push((*id, s)),
                Err(e) => bad.push(e),
            }
        }
        out.sort_by_key(|(id, s)| (s.time_ns, *id));
        Ok((out, bad))
    }

    /// When the storage received each snapshot object (its `last_modified`,
    /// ns since the epoch): one listing.
    pub fn snapshot_store_times(&self) -> Result<std::collections::HashMap<SnapshotId, i64>> {
        Ok(self
            .store
            .list_kind_timed(ObjectKind::Snapshot)?
            .into_iter()
            .filter_map(|(n, _, t)| Some((ObjectKind::Snapshot.id::<SnapshotId>(&n)?, t)))
            .collect())
    }

    /// The ids of the snapshots in storage (one listing, nothing read).
    pub fn list_snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        Ok(self
            .store
            .list_kind(ObjectKind::Snapshot)?
            .into_iter()
            .filter_map(|(n, _)| ObjectKind::Snapshot.id::<SnapshotId>(&n))
            .collect())
    }

    fn decode_snapshot(&self, name: &str, id: &SnapshotId, b: bytes::Bytes) -> Result<Snapshot> {
        if blake3::hash(&b).as_bytes() != &id.0 {
            return Err(RepoError::Corrupted {
                object: name.to_string(),
                detail: "content does not hash to its name (altered or truncated)".into(),
            });
        }
        Snapshot::decode(&self.key, &b).map_err(|e| RepoError::from_format(name, e))
    }

    /// Load one snapshot.
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let name = store::snapshot_path(id);
        if let Some((size, _)) = self.store.head(&name)?
            && size > MAX_SNAPSHOT_OBJECT
        {
            return Err(RepoError::Corrupted {
                object: name,
                detail: format!(
                    "{size} bytes, more than any snapshot object can be ({MAX_SNAPSHOT_OBJECT}); not read (planted?)"
                ),
            });
        }
        let b = self.store.get(&name)?;
        self.decode_snapshot(&name, id, b)
    }

    /// Resolve `latest`, a full id or a unique id prefix; `filter` narrows
    /// `latest` (and must also hold for ids).
    pub fn resolve_snapshot(
        &self,
        spec: &str,
        filter: &dyn Fn(&Snapshot) -> bool,
    ) -> Result<(SnapshotId, Snapshot)> {
        // An empty id would be a prefix of every id: a script whose
        // variable came out empty must not act on some snapshot.
        if spec.trim().is_empty() {
            return Err(RepoError::InvalidInput(
                "an empty snapshot id names no snapshot (give an id, a prefix or `latest`)".into(),
            ));
        }
        let (all, bad) = self.list_snapshots_readable()?;
        // An unreadable object whose id the spec names is the answer.
        if spec != "latest" {
            let spec = spec.to_ascii_lowercase();
            if let Some(e) = bad.into_iter().find(|e| match e {
                RepoError::Corrupted { object, .. } => ObjectKind::Snapshot
                    .leaf(object)
                    .is_some_and(|h| h.starts_with(&spec)),
                _ => false,
            }) && !all.iter().any(|(id, _)| id.to_hex().starts_with(&spec))
            {
                return Err(e);
            }
        }
        let found: Vec<_> = if spec == "latest" {
            all.into_iter()
                .rfind(|(_, s)| filter(s))
                .into_iter()
                .collect()
        } else {
            let spec = spec.to_ascii_lowercase();
            all.into_iter()
                .filter(|(id, s)| id.to_hex().starts_with(&spec) && filter(s))
                .collect()
        };
        match found.len() {
            1 => Ok(found.into_iter().next().expect("one")),
            0 => Err(RepoError::InvalidInput(format!(
                "no snapshot matches {spec:?}"
            ))),
            n => Err(RepoError::InvalidInput(format!(
                "{n} snapshots match {spec:?}; give more characters of the id"
            ))),
        }
    }

    /// Every deletion marker (object name and content), oldest first.
    pub fn list_deletions(&self) -> Result<Vec<(String, cairn_format::deletion::Deletion)>> {
        let mut out = Vec::new();
        for (name, _) in self.store.list_kind(ObjectKind::Deletion)? {
            let Some(id) = ObjectKind::Deletion
                .leaf(&name)
                .and_then(cairn_format::IndexId::from_hex)
            else {
                continue;
            };
            let b = match get_verified(&self.store, &name, &id.0) {
                Ok(b) => b,
                // Completed (removed) by a prune between the listing and the read.
                Err(RepoError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let d = cairn_format::deletion::Deletion::decode(&self.key, &b)
                .map_err(|e| RepoError::from_format(&name, e))?;
            out.push((name, d));
        }
        out.sort_by_key(|(_, d)| d.time_ns);
        Ok(out)
    }

    /// Every pack some deletion marker names (awaiting deletion by prune).
    pub fn marked_packs(&self) -> Result<std::collections::HashSet<cairn_format::PackId>> {
        Ok(self
            .list_deletions()?
            .into_iter()
            .flat_map(|(_, d)| d.packs)
            .collect())
    }

    /// Remove snapshot objects (what `forget` does; their data stays until prune).
    pub fn delete_snapshots(&self, ids: &[SnapshotId]) -> Result<()> {
        for id in ids {
            self.store.delete(&store::snapshot_path(id))?;
        }
        Ok(())
    }

    /// Rewrite a snapshot with other tags: the new snapshot is written first
    /// (recording the original's id), then the original is removed.
    pub fn retag(&self, id: &SnapshotId, add: &[String], remove: &[String]) -> Result<SnapshotId> {
        let mut s = self.load_snapshot(id)?;
        let before = s.tags.clone();
        s.tags.retain(|t| !remove.contains(t));
        for t in add {
            if !s.tags.contains(t) {
                s.tags.push(t.clone());
            }
        }
        if s.tags == before {
            return Ok(*id);
        }
        if !s.extra.iter().any(|(k, _)| k == "original") {
            s.extra.push(("original".into(), id.to_hex()));
        }
        let new = self.save_snapshot(&s)?;
        self.store.delete(&store::snapshot_path(id))?;
        Ok(new)
    }

    /// Write an index object (create-only; its name is its hash). Call only
    /// after the packs it lists are durable.
    pub fn save_index(
        &self,
        file: &cairn_format::index::IndexFile,
    ) -> Result<cairn_format::IndexId> {
        let bytes = file.encode(&self.key);
        let id = cairn_format::IndexId::of(&bytes);
        self.store.put_new(&store::index_path(&id), bytes)?;
        Ok(id)
    }

    /// Write a snapshot object. Call only after its packs and index are durable.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<SnapshotId> {
        let bytes = snap.encode(&self.key);
        let id = SnapshotId::of(&bytes);
        self.store.put_new(&store::snapshot_path(&id), bytes)?;
        Ok(id)
    }
}

fn write_key(store: &Store, key: &MasterKey, password: &[u8], kdf: KdfParams) -> Result<KeyId> {
    let (host, user) = whoami();
    let bytes = KeyFile::create(key, password, kdf, now_ns() / 1_000_000_000, &host, &user)?;
    let id = KeyId::of(&bytes);
    store.put_new(&store::key_path(&id), bytes)?;
    Ok(id)
}
