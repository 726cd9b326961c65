//! Where a repository lives: repository locations, backend options, and the
//! one [`Store`] every layer above uses, whatever the backend.
//!
//! Locations:
//! - a path (or `file://path`): a directory on local disk (the default);
//! - `s3://bucket/prefix`: Amazon S3 or any S3-compatible server (MinIO, Ceph
//!   RGW, Garage, …), configured by the standard `AWS_*` environment variables
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//!   `AWS_REGION`, `AWS_ENDPOINT_URL`, …) and `--option KEY=VALUE`
//!   (`endpoint=http://127.0.0.1:9000`, `region=…`, `allow_http=true`, …: any
//!   key `object_store` accepts for S3);
//! - `gs://bucket/prefix`: Google Cloud Storage (`GOOGLE_*` variables,
//!   `service_account=…`);
//! - `az://container/prefix`: Azure Blob Storage (`AZURE_*` variables,
//!   `account_name=…`, `access_key=…`);
//! - `memory:`: an in-process store (tests).
//!
//! Options that belong to cairn rather than to the backend: `connections=N`
//! (parallel transfers, default 2 on local disk and 8 on object storage),
//! `retries=N` (attempts after the first, default 4 in cairn plus the cloud
//! client's own per-request retries), `retry_timeout=SECS` (the cloud client's
//! budget per request, default 180).
//!
//! Every backend is wrapped in a [`RetryingStore`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};

use crate::error::{RepoError, Result};
use crate::retry::{RetryPolicy, RetryingStore};
use crate::store::Store;

/// Options for opening a location.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// `KEY=VALUE` pairs from `--option`.
    pub options: Vec<(String, String)>,
    /// Directory of the local cache (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
}

impl BackendOptions {
    /// Parse `KEY=VALUE` strings.
    pub fn parse_options(raw: &[String]) -> Result<Vec<(String, String)>> {
        raw.iter()
            .map(|o| {
                o.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| {
                        RepoError::InvalidInput(format!("--option {o:?}: expected KEY=VALUE"))
                    })
            })
            .collect()
    }
}

/// What kind of backend a location names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// A directory on local disk.
    Local,
    /// An in-process store.
    Memory,
    /// S3 or S3-compatible.
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Azure,
}

impl BackendKind {
    /// Whether the backend is reached over the network.
    pub fn is_remote(self) -> bool {
        matches!(
            self,
            BackendKind::S3 | BackendKind::Gcs | BackendKind::Azure
        )
    }
}

/// An opened location.
pub struct Backend {
    /// The store, wrapped for retries.
    pub store: Arc<dyn ObjectStore>,
    /// What it is.
    pub kind: BackendKind,
    /// Parallel transfers.
    pub connections: usize,
    /// Cache directory, if caching.
    pub cache_dir: Option<PathBuf>,
    /// The directory of a local repository (for read-ahead hints).
    pub local_root: Option<PathBuf>,
    /// Who enforces create-only writes.
    pub write_once: crate::store::WriteOnce,
}

impl Backend {
    /// The synchronous store over this backend.
    pub fn into_store(self) -> Store {
        let mut s = Store::new(self.store);
        s.connections = self.connections;
        s.cache_root = self.cache_dir;
        s.local_root = self.local_root;
        s.write_once = self.write_once;
        s
    }
}

fn split_url(location: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = location.split_once("://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    Some((scheme, bucket, prefix.trim_matches('/')))
}

/// Open a location (see the module docs). `create` creates a missing local
/// directory; on object storage the bucket must exist.
pub fn open(location: &str, create: bool, opts: &BackendOptions) -> Result<Backend> {
    let mut backend_opts = Vec::new();
    let mut connections = None;
    let mut policy = RetryPolicy::default();
    let mut retry_timeout = None;
    for (k, v) in &opts.options {
        let bad = || RepoError::InvalidInput(format!("--option {k}={v}: not a valid value"));
        match k.as_str() {
            "connections" => {
                connections = Some(v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(bad)?)
            }
            "retries" => {
                policy.retries = v.parse().map_err(|_| bad())?;
            }
            "retry_timeout" => {
                retry_timeout = Some(Duration::from_secs(v.parse().map_err(|_| bad())?));
            }
            _ => backend_opts.push((k.clone(), v.clone())),
        }
    }
    let mut local_root = None;
    let (kind, inner, emulate): (BackendKind, Arc<dyn ObjectStore>, bool) = match split_url(
        location,
    ) {
        None if location == "memory:" => (
            BackendKind::Memory,
            Arc::new(object_store::memory::InMemory::new()),
            false,
        ),
        None | Some(("file", _, _)) => {
            if let Some((k, _)) = backend_opts.first() {
                return Err(RepoError::InvalidInput(format!(
                    "--option {k}: only s3://, gs:// and az:// repositories take backend options"
                )));
            }
            let path = location.strip_prefix("file://").unwrap_or(location);
            local_root = Some(PathBuf::from(path));
            (
                BackendKind::Local,
                open_local(location, path, create)?,
                false,
            )
        }
        Some((scheme, bucket, prefix)) => {
            if bucket.is_empty() {
                return Err(RepoError::InvalidInput(format!(
                    "{location}: no bucket or container in the URL ({scheme}://BUCKET/PREFIX)"
                )));
            }
            let mut retry = RetryConfig::default();
            if let Some(t) = retry_timeout {
                retry.retry_timeout = t;
            }
            let bad_key = |k: &str, e: object_store::Error| {
                RepoError::InvalidInput(format!("--option {k}: {e}"))
            };
            let built: std::result::Result<Arc<dyn ObjectStore>, object_store::Error>;
            let mut emulate = false;
            let kind;
            match scheme {
                "s3" => {
                    kind = BackendKind::S3;
                    let mut b = AmazonS3Builder::from_env()
                        .with_bucket_name(bucket)
                        .with_retry(retry);
                    for (k, v) in &backend_opts {
                        let key: AmazonS3ConfigKey = k.parse().map_err(|e| bad_key(k, e))?;
                        if key == AmazonS3ConfigKey::ConditionalPut && v == "disabled" {
                            emulate = true;
                        }
                        b = b.with_config(key, v);
                    }
                    if emulate {
                        // cairn emulates create-only puts itself (RetryingStore).
                        b = b.with_conditional_put(S3ConditionalPut::Disabled);
                    }
                    built = b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>);
                }
                "gs" => {
                    kind = BackendKind::Gcs;
                    let mut b = GoogleCloudStorageBuilder::from_env()
                        .with_bucket_name(bucket)
                        .with_retry(retry);
                    for (k, v) in &backend_opts {
                        let key: GoogleConfigKey = k.parse().map_err(|e| bad_key(k, e))?;
                        b = b.with_config(key, v);
                    }
                    built = b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>);
                }
                "az" | "azure" => {
                    kind = BackendKind::Azure;
                    let mut b = MicrosoftAzureBuilder::from_env()
                        .with_container_name(bucket)
                        .with_retry(retry);
                    for (k, v) in &backend_opts {
                        let key: AzureConfigKey = k.parse().map_err(|e| bad_key(k, e))?;
                        b = b.with_config(key, v);
                    }
                    built = b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>);
                }
                other => {
                    return Err(RepoError::InvalidInput(format!(
                        "repository URL scheme {other}:// is not supported (use a path, s3://, gs:// or az://)"
                    )));
                }
            }
            let store = built.map_err(|e| {
                RepoError::InvalidInput(format!("cannot configure {location}: {e}"))
            })?;
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                store
            } else {
                Arc::new(PrefixStore::new(store, Path::from(prefix)))
            };
            (kind, store, emulate)
        }
    };
    // Local disk: 2. More packs in flight do not write faster to one disk,
    // and a restore's pool of max(connections, cores) threads each holds a
    // pack: with 4 the peak RSS of a 1.2 GB restore was 223 MB against
    // 132 MB with 2, for the same time (benches/results/peers-*.md).
    let connections = connections.unwrap_or(if kind.is_remote() { 8 } else { 2 });
    use crate::store::WriteOnce;
    Ok(Backend {
        store: Arc::new(RetryingStore::new(inner, policy, emulate)),
        write_once: match (emulate, kind.is_remote()) {
            (true, _) => WriteOnce::Emulated,
            (false, true) => WriteOnce::Server,
            (false, false) => WriteOnce::Local,
        },
        kind,
        connections,
        cache_dir: if kind.is_remote() {
            opts.cache_dir.clone()
        } else {
            // A local repository is its own cache.
            None
        },
        local_root,
    })
}

fn open_local(location: &str, path: &str, create: bool) -> Result<Arc<dyn ObjectStore>> {
    let p = std::path::Path::new(path);
    if create {
        std::fs::create_dir_all(p).map_err(|e| RepoError::io(p, e))?;
        // Private whatever the umask (format-spec §8): key files must not
        // be readable for offline guessing.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| RepoError::io(p, e))?;
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
    Ok(Arc::new(PrivateLocal {
        inner: fs,
        done: Default::default(),
        root: std::fs::canonicalize(p).map_err(|e| RepoError::io(p, e))?,
    }))
}

/// Whether a store refuses to overwrite on a create-only put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionalCreate {
    /// The second create of one name fails: write-once is enforced.
    Enforced,
    /// The server accepted both writes: it ignores the condition.
    Ignored,
}

/// Find out, with a throw-away object, whether the store enforces
/// create-only puts (`format-spec/README.md` §1.1). Errors name the request
/// that failed (e.g. a server that rejects conditional writes outright).
pub fn probe_conditional_create(store: &Store) -> Result<ConditionalCreate> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| RepoError::InvalidInput(e.to_string()))?;
    let name = format!("probe-{}", cairn_format::id::to_hex(&nonce));
    let s = store.inner.clone();
    let path = Path::from(name.as_str());
    let r = store.rt.block_on(async move {
        let create = || PutOptions::from(PutMode::Create);
        s.put_opts(&path, PutPayload::from_static(b"1"), create())
            .await?;
        let second = s
            .put_opts(&path, PutPayload::from_static(b"2"), create())
            .await;
        let _ = s.delete(&path).await;
        match second {
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(ConditionalCreate::Enforced),
            Ok(_) => Ok(ConditionalCreate::Ignored),
            Err(e) => Err(e),
        }
    });
    r.map_err(|e| match e {
        object_store::Error::NotImplemented { .. } => RepoError::InvalidInput(format!(
            "the store does not support create-only writes ({e}); for an S3 server without conditional writes pass --option conditional_put=disabled"
        )),
        e => RepoError::from_store(&name, e),
    })
}

/// Why the prune lease cannot keep two prunes apart on this store, if it
/// cannot (format-spec §1.1): create-only writes emulated by cairn, or a
/// server that accepted a second create of one name when probed just now.
pub fn create_only_unenforced(store: &Store) -> Result<Option<String>> {
    use crate::store::WriteOnce;
    Ok(match store.write_once {
        WriteOnce::Local => None,
        WriteOnce::Emulated => Some(
            "create-only writes are emulated with a HEAD before each write (conditional_put=disabled), so two prunes racing for the lease can both take it".to_string(),
        ),
        WriteOnce::Server => match probe_conditional_create(store)? {
            ConditionalCreate::Enforced => None,
            ConditionalCreate::Ignored => Some(
                "the store accepted a second create-only write of one name when probed just now, so two prunes racing for the lease can both take it".to_string(),
            ),
        },
    })
}

/// Why a location holds no repository, when the reason is that its bucket or
/// container does not exist (`None` otherwise).
pub fn missing_bucket(store: &Store) -> Option<String> {
    let s = store.inner.clone();
    let e = store
        .rt
        .block_on(async move { s.list_with_delimiter(None).await })
        .err()?;
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(inner) = src {
        msg.push_str(&inner.to_string());
        src = inner.source();
    }
    [
        "NoSuchBucket",
        "ContainerNotFound",
        "The specified bucket does not exist",
    ]
    .iter()
    .any(|m| msg.contains(m))
    .then(|| "its bucket (or container) does not exist".to_string())
}

/// A local repository private to its owner whatever the umask (format-spec
/// §8): every object written is made 0600, every directory it lands in 0700
/// (the repository's root is made 0700 at `init`). Everything else is the
/// plain local store's.
#[derive(Debug)]
struct PrivateLocal {
    inner: object_store::local::LocalFileSystem,
    /// Directories already made private (each is chmodded once).
    done: std::sync::Mutex<std::collections::HashSet<std::path::PathBuf>>,
    root: std::path::PathBuf,
}

impl std::fmt::Display for PrivateLocal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateLocal({})", self.inner)
    }
}

impl PrivateLocal {
    fn make_private(&self, location: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let Ok(file) = self.inner.path_to_filesystem(location) else {
            return;
        };
        // Failures (a file the user does not own) leave the mode as it was.
        let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
        let mut dir = file.parent();
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) {
                break;
            }
            if self.done.lock().expect("dirs").insert(d.to_path_buf()) {
                let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
            }
            dir = d.parent();
        }
    }
}

#[async_trait::async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for PrivateLocal {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.make_private(location);
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        // cairn writes every object with one put; multipart (unused) is
        // passed through.
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.make_private(to);
        Ok(())
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        self.make_private(to);
        Ok(())
    }
}

/// Open a store from a location with default options (see [`open`]):
/// a filesystem path (created if missing when `create` is set), an
/// `s3://`/`gs://`/`az://` URL, or `memory:` for an in-process store (tests).
pub fn open_location(location: &str, create: bool) -> Result<Arc<dyn ObjectStore>> {
    Ok(open(location, create, &Default::default())?.store)
}
