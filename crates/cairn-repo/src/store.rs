//! Object naming and the thin synchronous layer over `Arc<dyn ObjectStore>`.
//! See `format-spec/README.md` §1 (repository layout).
//!
//! Every write is `PutMode::Create`: an existing object is never replaced.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use cairn_format::{IndexId, KeyId, PackId, SnapshotId};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{RepoError, Result};

/// Name of the config object.
pub const CONFIG: &str = "config";

/// Object path of a pack.
pub fn pack_path(id: &PackId) -> String {
    let h = id.to_hex();
    format!("data/{}/{}", &h[..2], h)
}
/// Object path of an index object.
pub fn index_path(id: &IndexId) -> String {
    format!("index/{}", id.to_hex())
}
/// Object path of a snapshot.
pub fn snapshot_path(id: &SnapshotId) -> String {
    format!("snapshots/{}", id.to_hex())
}
/// Object path of a key file.
pub fn key_path(id: &KeyId) -> String {
    format!("keys/{}", id.to_hex())
}

/// Open a store from a location: a filesystem path (created if missing when
/// `create` is set), or `memory:` for an in-process store (tests).
pub fn open_location(location: &str, create: bool) -> Result<Arc<dyn ObjectStore>> {
    if location == "memory:" {
        return Ok(Arc::new(object_store::memory::InMemory::new()));
    }
    if let Some((scheme, _)) = location.split_once("://")
        && scheme != "file"
    {
        return Err(RepoError::InvalidInput(format!(
            "repository URL scheme {scheme}:// is not supported by this build (local paths only)"
        )));
    }
    let path = location.strip_prefix("file://").unwrap_or(location);
    let p = std::path::Path::new(path);
    if create {
        std::fs::create_dir_all(p).map_err(|e| RepoError::io(p, e))?;
    } else if !p.is_dir() {
        return Err(RepoError::NoRepository {
            location: location.to_string(),
        });
    }
    let fs = object_store::local::LocalFileSystem::new_with_prefix(p)
        .map_err(|e| RepoError::from_store(location, e))?
        // Packs, index and snapshots must be durable before the objects that
        // reference them are written (format-spec §5).
        .with_fsync(true);
    Ok(Arc::new(fs))
}

/// Synchronous access to the store through a tokio runtime.
#[derive(Clone)]
pub struct Store {
    /// The object store.
    pub inner: Arc<dyn ObjectStore>,
    /// Runtime that drives its futures.
    pub rt: Arc<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.inner)
    }
}

impl Store {
    /// Wrap a store with a fresh runtime.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(16)
            .enable_time()
            .thread_name("cairn-io")
            .build()
            .expect("tokio runtime");
        Store {
            inner,
            rt: Arc::new(rt),
        }
    }

    /// Write a new object; fails with `AlreadyExists` if it exists.
    pub fn put_new(&self, name: &str, data: impl Into<PutPayload>) -> Result<()> {
        let s = self.inner.clone();
        let path = Path::from(name);
        let payload = data.into();
        self.rt
            .block_on(async move {
                s.put_opts(&path, payload, PutOptions::from(PutMode::Create))
                    .await
            })
            .map(|_| ())
            .map_err(|e| RepoError::from_store(name, e))
    }

    /// Read a whole object.
    pub fn get(&self, name: &str) -> Result<Bytes> {
        let s = self.inner.clone();
        let path = Path::from(name);
        self.rt
            .block_on(async move { s.get(&path).await?.bytes().await })
            .map_err(|e| RepoError::from_store(name, e))
    }

    /// Read a byte range of an object.
    pub fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        let s = self.inner.clone();
        let path = Path::from(name);
        self.rt
            .block_on(async move { s.get_range(&path, range).await })
            .map_err(|e| RepoError::from_store(name, e))
    }

    /// Read several ranges of one object (coalesced by the store).
    pub fn get_ranges(&self, name: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let s = self.inner.clone();
        let path = Path::from(name);
        self.rt
            .block_on(async move { s.get_ranges(&path, ranges).await })
            .map_err(|e| RepoError::from_store(name, e))
    }

    /// Whether an object exists.
    pub fn exists(&self, name: &str) -> Result<bool> {
        let s = self.inner.clone();
        let path = Path::from(name);
        match self.rt.block_on(async move { s.head(&path).await }) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(RepoError::from_store(name, e)),
        }
    }

    /// Delete an object (only key removal and, later, prune do this).
    pub fn delete(&self, name: &str) -> Result<()> {
        let s = self.inner.clone();
        let path = Path::from(name);
        self.rt
            .block_on(async move { s.delete(&path).await })
            .map_err(|e| RepoError::from_store(name, e))
    }

    /// List object names (full paths) and sizes under a prefix.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let s = self.inner.clone();
        let p = Path::from(prefix);
        self.rt
            .block_on(async move {
                let mut out = Vec::new();
                let mut st = s.list(Some(&p));
                while let Some(m) = st.next().await {
                    let m = m?;
                    out.push((m.location.to_string(), m.size));
                }
                Ok::<_, object_store::Error>(out)
            })
            .map_err(|e| RepoError::from_store(prefix, e))
    }

    /// Read many whole objects concurrently; results in input order.
    pub fn get_many(&self, names: &[String], concurrency: usize) -> Vec<Result<Bytes>> {
        let s = self.inner.clone();
        let names = names.to_vec();
        self.rt.block_on(async move {
            futures::stream::iter(names.into_iter().map(|n| {
                let s = s.clone();
                async move {
                    let path = Path::from(n.as_str());
                    let r = async { s.get(&path).await?.bytes().await }.await;
                    r.map_err(|e| RepoError::from_store(&n, e))
                }
            }))
            .buffered(concurrency.max(1))
            .collect()
            .await
        })
    }
}
