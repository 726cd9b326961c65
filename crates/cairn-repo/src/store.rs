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

use crate::cache::ObjectCache;
use crate::error::{RepoError, Result};
use crate::layout::{ObjectId, ObjectKind};

fn slice(name: &str, whole: &Bytes, r: &Range<u64>) -> Result<Bytes> {
    if r.start > r.end || r.end > whole.len() as u64 {
        return Err(RepoError::Corrupted {
            object: name.to_string(),
            detail: format!("range {r:?} is outside its {} bytes", whole.len()),
        });
    }
    Ok(whole.slice(r.start as usize..r.end as usize))
}

/// An object's store time in ns since the epoch.
pub fn store_ns(m: &object_store::ObjectMeta) -> i64 {
    m.last_modified.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// Name of the config object.
pub const CONFIG: &str = "config";

/// Object path of a pack.
pub fn pack_path(id: &PackId) -> String {
    id.object_name()
}
/// Object path of an index object.
pub fn index_path(id: &IndexId) -> String {
    id.object_name()
}
/// Object path of a snapshot.
pub fn snapshot_path(id: &SnapshotId) -> String {
    id.object_name()
}
/// Object path of a key file.
pub fn key_path(id: &KeyId) -> String {
    id.object_name()
}

/// Synchronous access to the store through a tokio runtime.
#[derive(Clone)]
pub struct Store {
    /// The object store.
    pub inner: Arc<dyn ObjectStore>,
    /// Runtime that drives its futures.
    pub rt: Arc<tokio::runtime::Runtime>,
    /// Parallel transfers (uploads in flight per writer, downloads at once).
    pub connections: usize,
    /// Where the cache of this repository goes, once its config is known.
    pub cache_root: Option<std::path::PathBuf>,
    /// The cache in use (see [`crate::cache`]).
    pub cache: Option<Arc<ObjectCache>>,
    /// The directory of a local repository: objects there can be read ahead.
    pub local_root: Option<std::path::PathBuf>,
    /// Who keeps create-only writes create-only (format-spec §1.1).
    pub write_once: WriteOnce,
}

/// Who enforces create-only writes on a store (format-spec §1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOnce {
    /// The store itself, and it is local (memory, local disk): trusted.
    Local,
    /// A server that says it does (S3 `If-None-Match`, GCS generation
    /// preconditions, Azure `If-None-Match: *`): probed before a prune.
    Server,
    /// cairn, with a HEAD before each write (`conditional_put=disabled`):
    /// two writers racing on one name can both succeed.
    Emulated,
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
            .enable_io()
            .thread_name("cairn-io")
            .build()
            .expect("tokio runtime");
        Store {
            inner,
            rt: Arc::new(rt),
            connections: 4,
            cache_root: None,
            cache: None,
            local_root: None,
            write_once: WriteOnce::Local,
        }
    }

    /// Start using the cache (if a cache root is set), keyed by the
    /// repository's config object.
    pub fn enable_cache(&mut self, config: &[u8]) {
        if let Some(root) = &self.cache_root {
            self.cache = ObjectCache::open(root, config).map(Arc::new);
        }
    }

    fn cached(&self, name: &str) -> Option<(&ObjectCache, Option<Bytes>)> {
        let c = self.cache.as_deref()?;
        c.caches(name).then(|| (c, c.load(name)))
    }

    /// Write a new object; fails with `AlreadyExists` if it exists.
    pub fn put_new(&self, name: &str, data: impl Into<PutPayload>) -> Result<()> {
        let s = self.inner.clone();
        let path = Path::from(name);
        let payload: PutPayload = data.into();
        // What this process writes and will read again (its index objects and
        // snapshots) goes into the cache too.
        let keep = self.cache.as_ref().filter(|c| c.caches(name)).map(|c| {
            (
                c.clone(),
                payload
                    .iter()
                    .flat_map(|b| b.iter().copied())
                    .collect::<Vec<u8>>(),
            )
        });
        let r = self
            .rt
            .block_on(async move {
                s.put_opts(&path, payload, PutOptions::from(PutMode::Create))
                    .await
            })
            .map(|_| ())
            .map_err(|e| RepoError::from_store(name, e));
        if let (Ok(()), Some((c, bytes))) = (&r, keep) {
            c.store(name, &bytes);
        }
        r
    }

    /// Read a whole object.
    pub fn get(&self, name: &str) -> Result<Bytes> {
        match self.cached(name) {
            Some((_, Some(b))) => Ok(b),
            Some((c, None)) => {
                let b = self.get_uncached(name)?;
                c.store(name, &b);
                Ok(b)
            }
            None => self.get_uncached(name),
        }
    }

    fn get_uncached(&self, name: &str) -> Result<Bytes> {
        let s = self.inner.clone();
        let path = Path::from(name);
        self.rt
            .block_on(async move { s.get(&path).await?.bytes().await })
            .map_err(|e| RepoError::from_store(name, e))
    }

    /// Read a byte range of an object.
    pub fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        if let Some(c) = &self.cache
            && c.is_tree_pack(name)
        {
            return slice(name, &self.get(name)?, &range);
        }
        let s = self.inner.clone();
        let path = Path::from(name);
        self.rt
            .block_on(async move { s.get_range(&path, range).await })
            .map_err(|e| RepoError::from_store(name, e))
    }

    /// Ask for an object to be read ahead, while other work goes on, when
    /// the repository is on local disk (a cold page cache otherwise leaves
    /// the reading threads waiting on the device); elsewhere nothing.
    pub fn prefetch(&self, name: &str) {
        if let Some(root) = &self.local_root
            && let Ok(f) = std::fs::File::open(root.join(name))
        {
            crate::sys::prefetch(&f);
        }
    }

    /// Read several ranges of one object (coalesced by the store).
    pub fn get_ranges(&self, name: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if let Some(c) = &self.cache
            && c.is_tree_pack(name)
        {
            let whole = self.get(name)?;
            return ranges.iter().map(|r| slice(name, &whole, r)).collect();
        }
        let s = self.inner.clone();
        let path = Path::from(name);
        self.rt
            .block_on(async move { s.get_ranges(&path, ranges).await })
            .map_err(|e| RepoError::from_store(name, e))
    }

    /// Whether an object exists.
    pub fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.head(name)?.is_some())
    }

    /// Whether each object exists, asked `concurrency` at a time; results in
    /// input order.
    pub fn exists_many(&self, names: &[String], concurrency: usize) -> Vec<Result<bool>> {
        let s = self.inner.clone();
        let names = names.to_vec();
        self.rt.block_on(async move {
            futures::stream::iter(names.into_iter().map(|n| {
                let s = s.clone();
                async move {
                    match s.head(&Path::from(n.as_str())).await {
                        Ok(_) => Ok(true),
                        Err(object_store::Error::NotFound { .. }) => Ok(false),
                        Err(e) => Err(RepoError::from_store(&n, e)),
                    }
                }
            }))
            .buffered(concurrency.max(1))
            .collect()
            .await
        })
    }

    /// Size and store time (`last_modified`, ns since the epoch) of an
    /// object, `None` if it does not exist. Never through the cache.
    pub fn head(&self, name: &str) -> Result<Option<(u64, i64)>> {
        let s = self.inner.clone();
        let path = Path::from(name);
        match self.rt.block_on(async move { s.head(&path).await }) {
            Ok(m) => Ok(Some((m.size, store_ns(&m)))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(RepoError::from_store(name, e)),
        }
    }

    /// Like [`Self::list`], with each object's store time (ns since the epoch).
    pub fn list_timed(&self, prefix: &str) -> Result<Vec<(String, u64, i64)>> {
        let s = self.inner.clone();
        let p = Path::from(prefix);
        self.rt
            .block_on(async move {
                let mut out = Vec::new();
                let mut st = s.list(Some(&p));
                while let Some(m) = st.next().await {
                    let m = m?;
                    out.push((m.location.to_string(), m.size, store_ns(&m)));
                }
                Ok::<_, object_store::Error>(out)
            })
            .map_err(|e| RepoError::from_store(&format!("{prefix}/"), e))
    }

    /// Delete an object (only key removal and, later, prune do this).
    pub fn delete(&self, name: &str) -> Result<()> {
        let s = self.inner.clone();
        let path = Path::from(name);
        self.rt
            .block_on(async move { s.delete(&path).await })
            .map_err(|e| RepoError::from_store(name, e))
    }

    /// Every object of a kind: (name, size).
    pub fn list_kind(&self, kind: ObjectKind) -> Result<Vec<(String, u64)>> {
        self.list(kind.dir())
    }

    /// Every object of a kind with its store time: (name, size, ns).
    pub fn list_kind_timed(&self, kind: ObjectKind) -> Result<Vec<(String, u64, i64)>> {
        self.list_timed(kind.dir())
    }

    /// List object names (full paths) and sizes under a prefix.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let listed: Vec<(String, u64)> = self
            .list_timed(prefix)?
            .into_iter()
            .map(|(n, size, _)| (n, size))
            .collect();
        if let Some(c) = &self.cache
            && ObjectKind::of_dir(prefix).is_some_and(|k| k.cached())
        {
            let present = listed.iter().map(|(n, _)| n.as_str()).collect();
            c.retain(prefix, &present);
        }
        Ok(listed)
    }

    /// Read many whole objects concurrently; results in input order.
    pub fn get_many(&self, names: &[String], concurrency: usize) -> Vec<Result<Bytes>> {
        let mut out: Vec<Option<Result<Bytes>>> = names
            .iter()
            .map(|n| self.cached(n).and_then(|(_, b)| b).map(Ok))
            .collect();
        let missing: Vec<String> = names
            .iter()
            .zip(&out)
            .filter(|(_, o)| o.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        let mut fetched = self.get_many_uncached(&missing, concurrency).into_iter();
        for (n, o) in names.iter().zip(out.iter_mut()) {
            if o.is_none() {
                let r = fetched.next().expect("one result per name");
                if let (Ok(b), Some(c)) = (&r, &self.cache)
                    && c.caches(n)
                {
                    c.store(n, b);
                }
                *o = Some(r);
            }
        }
        out.into_iter().map(|o| o.expect("filled")).collect()
    }

    fn get_many_uncached(&self, names: &[String], concurrency: usize) -> Vec<Result<Bytes>> {
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
