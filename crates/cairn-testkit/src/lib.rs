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

pub mod proxy;
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
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let (op, tear) = self.enter(OpKind::Put).await?;
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
        let (state, inner) = (self.state.clone(), self.inner.clone());
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            match state.enter(OpKind::List).await {
                Ok(_) => inner.list(prefix.as_ref()),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.enter(OpKind::List).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.enter(OpKind::Copy).await?;
        self.inner.copy_opts(from, to, options).await
    }
}
