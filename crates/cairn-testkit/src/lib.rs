//! Test support for cairn: [`FaultyStore`], an `ObjectStore` wrapper that
//! injects the faults a backup tool meets on its worst day — a store that dies
//! after N operations (a crash, as seen from storage), one failing operation,
//! transient errors at a rate, failures of one kind of operation, torn writes,
//! latency, and concurrent writes completing out of order.
//!
//! Every operation the wrapped store is asked for is numbered from 0 in the
//! order it starts; a fault plan says what happens to which. The counters tell
//! a test how many operations a run took, so it can then stop a second run at
//! every one of them.
//!
//! ```
//! use std::sync::Arc;
//! use cairn_testkit::{FaultPlan, FaultyStore};
//! use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path};
//!
//! let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
//! let store = FaultyStore::new(inner, FaultPlan { stop_after: Some(1), ..Default::default() });
//! let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
//! rt.block_on(async {
//!     store.put(&Path::from("a"), PutPayload::from_static(b"x")).await.unwrap();
//!     // The store is "dead" from operation 1 on.
//!     assert!(store.put(&Path::from("b"), PutPayload::from_static(b"y")).await.is_err());
//! });
//! assert_eq!(store.ops(), 2);
//! ```
#![deny(missing_docs)]

pub mod azure;
pub mod gcs;
pub mod proxy;
pub mod repo;
pub mod s3;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// The kinds of operation a plan can single out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `put_opts` and multipart uploads.
    Put,
    /// `get_opts` (whole objects, ranges and `head`).
    Get,
    /// One path of a delete.
    Delete,
    /// A listing.
    List,
    /// A copy.
    Copy,
}

/// What to inject. Operation numbers count from 0 over all kinds.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    /// Operation `n` and every later one fail: the process writing is gone,
    /// as far as storage can tell (nothing more reaches it).
    pub stop_after: Option<u64>,
    /// Exactly these operations fail (a one-off error each).
    pub fail_ops: Vec<u64>,
    /// Every operation of these kinds fails.
    pub fail_kinds: Vec<OpKind>,
    /// Transient failures: this many per thousand operations of any kind,
    /// chosen by a generator seeded with `seed`.
    pub transient_per_mille: u32,
    /// Seed of the transient-failure generator (and of the reordering delays).
    pub seed: u64,
    /// Operation `n`, when it is a put, stores only the first half of its
    /// bytes and then fails (a write torn by a dropped connection on a store
    /// that is not atomic).
    pub tear_put: Option<u64>,
    /// Every operation waits this long first.
    pub latency: Option<Duration>,
    /// Each put waits a pseudo-random time up to this long, so concurrent
    /// puts complete in another order than they started.
    pub reorder_puts: Option<Duration>,
    /// Create-only puts overwrite, as on a server that ignores
    /// `If-None-Match` (format-spec §1.1).
    pub ignore_create_only: bool,
}

/// An `ObjectStore` that injects the faults of a [`FaultPlan`].
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    state: Arc<State>,
}

/// The plan and counters, shared with the streams a listing or delete returns.
struct State {
    plan: Mutex<FaultPlan>,
    ops: AtomicU64,
    injected: AtomicU64,
    rng: Mutex<u64>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

/// The error every injected fault returns.
#[derive(Debug)]
pub struct InjectedFault {
    /// Operation number.
    pub op: u64,
    /// Why.
    pub what: &'static str,
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected fault at operation {}: {}", self.op, self.what)
    }
}

impl std::error::Error for InjectedFault {}

impl FaultyStore {
    /// A listing that counts as one operation (and fails when the plan
    /// says), then streams what `list` gives from the inner store.
    fn listing(
        &self,
        list: impl FnOnce(&Arc<dyn ObjectStore>) -> BoxStream<'static, Result<ObjectMeta>>
        + Send
        + 'static,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let (state, inner) = (self.state.clone(), self.inner.clone());
        futures::stream::once(async move {
            match state.enter(OpKind::List).await {
                Ok(_) => list(&inner),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    /// Wrap `inner` with a plan.
    pub fn new(inner: Arc<dyn ObjectStore>, plan: FaultPlan) -> Arc<FaultyStore> {
        let seed = plan.seed | 1;
        Arc::new(FaultyStore {
            inner,
            state: Arc::new(State {
                plan: Mutex::new(plan),
                ops: AtomicU64::new(0),
                injected: AtomicU64::new(0),
                rng: Mutex::new(seed),
            }),
        })
    }

    /// A wrapper that only counts.
    pub fn counting(inner: Arc<dyn ObjectStore>) -> Arc<FaultyStore> {
        Self::new(inner, FaultPlan::default())
    }

    /// Operations started so far.
    pub fn ops(&self) -> u64 {
        self.state.ops.load(Ordering::SeqCst)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::SeqCst)
    }

    /// Replace the plan (operation numbers keep counting).
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.state.rng.lock().expect("rng") = plan.seed | 1;
        *self.state.plan.lock().expect("plan") = plan;
    }

    async fn enter(&self, kind: OpKind) -> Result<(u64, bool)> {
        self.state.enter(kind).await
    }

    fn fault(&self, op: u64, what: &'static str) -> object_store::Error {
        self.state.fault(op, what)
    }
}

impl State {
    fn next_random(&self) -> u64 {
        let mut x = self.rng.lock().expect("rng");
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    fn fault(&self, op: u64, what: &'static str) -> object_store::Error {
        self.injected.fetch_add(1, Ordering::SeqCst);
        object_store::Error::Generic {
            store: "FaultyStore",
            source: Box::new(InjectedFault { op, what }),
        }
    }

    /// Number the operation, wait as planned, and decide whether it fails.
    /// Returns the operation number and, for puts, whether to tear it.
    async fn enter(&self, kind: OpKind) -> Result<(u64, bool)> {
        let op = self.ops.fetch_add(1, Ordering::SeqCst);
        let (latency, reorder, fail, tear) = {
            let p = self.plan.lock().expect("plan");
            let fail = if p.stop_after.is_some_and(|n| op >= n) {
                Some("the store stopped")
            } else if p.fail_ops.contains(&op) {
                Some("planned failure")
            } else if p.fail_kinds.contains(&kind) {
                Some("this kind of operation fails")
            } else {
                None
            };
            (
                p.latency,
                if kind == OpKind::Put {
                    p.reorder_puts
                } else {
                    None
                },
                fail,
                p.tear_put == Some(op) && kind == OpKind::Put,
            )
        };
        let transient = {
            let per_mille = self.plan.lock().expect("plan").transient_per_mille;
            per_mille > 0 && self.next_random() % 1000 < per_mille as u64
        };
        if let Some(d) = latency {
            tokio::time::sleep(d).await;
        }
        if let Some(max) = reorder {
            let nanos = max.as_nanos().max(1) as u64;
            tokio::time::sleep(Duration::from_nanos(self.next_random() % nanos)).await;
        }
        if let Some(what) = fail {
            return Err(self.fault(op, what));
        }
        if transient {
            return Err(self.fault(op, "transient error (like an HTTP 503)"));
        }
        Ok((op, tear))
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let (op, tear) = self.enter(OpKind::Put).await?;
        let mut opts = opts;
        if self.state.plan.lock().expect("plan").ignore_create_only {
            opts.mode = object_store::PutMode::Overwrite;
        }
        if tear {
            let bytes: Vec<u8> = payload.iter().flat_map(|b| b.iter().copied()).collect();
            let half = PutPayload::from(bytes[..bytes.len() / 2].to_vec());
            self.inner.put_opts(location, half, opts).await?;
            return Err(self.fault(op, "connection dropped after part of a write"));
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.enter(OpKind::Put).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.enter(OpKind::Get).await?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        // One path at a time, each its own operation, so a plan can fail or
        // stop in the middle of a batch.
        let (state, inner) = (self.state.clone(), self.inner.clone());
        locations
            .then(move |p| {
                let (state, inner) = (state.clone(), inner.clone());
                async move {
                    let p = p?;
                    state.enter(OpKind::Delete).await?;
                    inner.delete(&p).await?;
                    Ok(p)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let prefix = prefix.cloned();
        self.listing(move |inner| inner.list(prefix.as_ref()))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.enter(OpKind::List).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.enter(OpKind::Copy).await?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.enter(OpKind::Get).await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let (prefix, offset) = (prefix.cloned(), offset.clone());
        self.listing(move |inner| inner.list_with_offset(prefix.as_ref(), &offset))
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::RenameOptions,
    ) -> Result<()> {
        self.enter(OpKind::Copy).await?;
        self.inner.rename_opts(from, to, options).await
    }
}

/// A put hook of a [`ClockStore`].
type Hook = Box<dyn FnOnce() + Send>;

/// An `ObjectStore` whose clock a test controls: every object gets the
/// store time "real time + offset" when it is written, and listings and
/// HEADs report that time as its `last_modified` — so a test can let a
/// 24-hour grace period pass, or put the storage's clock days away from the
/// host's, in no time. It can also run a hook (on a plain thread, before the
/// write proceeds) at the first write under a prefix, and slow deletes down,
/// to hold a process between two steps of its protocol.
pub struct ClockStore {
    inner: Arc<dyn ObjectStore>,
    offset_ns: std::sync::atomic::AtomicI64,
    times: Mutex<std::collections::HashMap<Path, chrono::DateTime<chrono::Utc>>>,
    hooks: Mutex<Vec<(String, Hook)>>,
    delete_delay: Mutex<Option<Duration>>,
}

impl fmt::Debug for ClockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClockStore({})", self.inner)
    }
}

impl fmt::Display for ClockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClockStore({})", self.inner)
    }
}

impl ClockStore {
    /// Wrap a store; its clock starts at real time.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<ClockStore> {
        Arc::new(ClockStore {
            inner,
            offset_ns: std::sync::atomic::AtomicI64::new(0),
            times: Mutex::new(Default::default()),
            hooks: Mutex::new(Vec::new()),
            delete_delay: Mutex::new(None),
        })
    }

    /// Move the store's clock forward.
    pub fn advance(&self, d: Duration) {
        self.offset_ns
            .fetch_add(d.as_nanos() as i64, Ordering::SeqCst);
    }

    /// The store's present time.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + chrono::TimeDelta::nanoseconds(self.offset_ns.load(Ordering::SeqCst))
    }

    /// Run `hook` before the first write whose path starts with `prefix`.
    pub fn on_put(&self, prefix: &str, hook: impl FnOnce() + Send + 'static) {
        self.hooks
            .lock()
            .expect("hooks")
            .push((prefix.to_string(), Box::new(hook)));
    }

    /// Every delete waits this long first (`None`: no delay).
    pub fn slow_deletes(&self, d: Option<Duration>) {
        *self.delete_delay.lock().expect("delay") = d;
    }

    fn stamp(&self, mut m: ObjectMeta) -> ObjectMeta {
        if let Some(t) = self.times.lock().expect("times").get(&m.location) {
            m.last_modified = *t;
        }
        m
    }

    /// A listing of the inner store with the store times of this clock.
    fn restamp(
        &self,
        listing: BoxStream<'static, Result<ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let times = self.times.lock().expect("times").clone();
        listing
            .map(move |m| {
                m.map(|mut m| {
                    if let Some(t) = times.get(&m.location) {
                        m.last_modified = *t;
                    }
                    m
                })
            })
            .boxed()
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for ClockStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let hook = {
            let mut hooks = self.hooks.lock().expect("hooks");
            hooks
                .iter()
                .position(|(p, _)| location.as_ref().starts_with(p.as_str()))
                .map(|i| hooks.remove(i).1)
        };
        if let Some(h) = hook {
            // On a plain thread: the hook may open a runtime of its own.
            std::thread::spawn(h).join().expect("hook panicked");
        }
        let t = self.now();
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.times
            .lock()
            .expect("times")
            .insert(location.clone(), t);
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let t = self.now();
        self.times
            .lock()
            .expect("times")
            .insert(location.clone(), t);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let mut r = self.inner.get_opts(location, options).await?;
        r.meta = self.stamp(r.meta);
        Ok(r)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let delay = *self.delete_delay.lock().expect("delay");
        let inner = self.inner.clone();
        locations
            .then(move |p| {
                let inner = inner.clone();
                async move {
                    let p = p?;
                    if let Some(d) = delay {
                        tokio::time::sleep(d).await;
                    }
                    inner.delete(&p).await?;
                    Ok(p)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.restamp(self.inner.list(prefix))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut r = self.inner.list_with_delimiter(prefix).await?;
        r.objects = r.objects.into_iter().map(|m| self.stamp(m)).collect();
        Ok(r)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let t = self.now();
        self.inner.copy_opts(from, to, options).await?;
        self.times.lock().expect("times").insert(to.clone(), t);
        Ok(())
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.restamp(self.inner.list_with_offset(prefix, offset))
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::RenameOptions,
    ) -> Result<()> {
        let t = self.now();
        self.inner.rename_opts(from, to, options).await?;
        let mut times = self.times.lock().expect("times");
        times.remove(from);
        times.insert(to.clone(), t);
        Ok(())
    }
}
