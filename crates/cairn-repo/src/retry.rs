//! [`RetryingStore`]: an `ObjectStore` wrapper that retries what the network
//! breaks, and only that.
//!
//! The cloud clients of `object_store` already retry, per HTTP request, server
//! errors (5xx, 429, 408) and connections that could not be made. They do not
//! retry what they cannot prove harmless: a PUT whose connection dropped after
//! the request was sent (it may have landed), or a response body cut off
//! half-way. cairn can: every object it writes is write-once, and all but the
//! config are named by the hash of their bytes, so re-sending is harmless and
//! an "already exists" answer to a re-sent write is checked against the bytes
//! that were meant to be written (equal: an earlier attempt — ours or the
//! cloud client's own re-send — landed; different: a real conflict, reported).
//!
//! Not retried: not found, already exists (on a first attempt), precondition
//! failed, permission denied, unauthenticated, not supported, bad paths and
//! configuration, and any HTTP 4xx (a bad request will not get better).
//!
//! With `CAIRN_LOG_RETRIES` set, every retry is reported on stderr.
//!
//! A backend without conditional create (`conditional_put=disabled` on S3)
//! gets create-only puts emulated by a HEAD before the PUT; what that does and
//! does not guarantee is in `format-spec/README.md` §1.1.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, Error, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, Result,
};

/// How often and how patiently to retry.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: u32,
    /// Wait before the first retry; doubled each time.
    pub first_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 4,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let d = self
            .first_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_backoff);
        // Spread retries of parallel requests a little (±25 %).
        let jitter = (nanos_now() % 500) as f64 / 1000.0 + 0.75;
        d.mul_f64(jitter)
    }
}

/// Run `op` (given the attempt number) until it succeeds, fails for good, or
/// the policy's retries are spent; the one retry loop of this module.
async fn with_retries<T, Fut>(
    policy: RetryPolicy,
    what: &str,
    location: &str,
    mut op: impl FnMut(u32) -> Fut,
) -> Result<T>
where
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match op(attempt).await {
            Err(e) if attempt < policy.retries && is_retryable(&e) => {
                let d = policy.backoff(attempt);
                if std::env::var_os("CAIRN_LOG_RETRIES").is_some() {
                    eprintln!(
                        "cairn: {what} {location} failed ({e}); retry {} of {} in {:.1}s",
                        attempt + 1,
                        policy.retries,
                        d.as_secs_f32()
                    );
                }
                tokio::time::sleep(d).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

fn nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

/// Whether the cloud client's message says it used all its retries.
fn client_budget_spent(msg: &str) -> bool {
    let Some(i) = msg.find(" retries, max_retries: ") else {
        return false;
    };
    let done = msg[..i]
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse::<u64>().ok());
    let max = msg[i + " retries, max_retries: ".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse::<u64>().ok());
    match (done, max) {
        (Some(d), Some(m)) => d >= m,
        _ => true,
    }
}

/// Whether trying again can help with this store error.
pub fn is_retryable(e: &Error) -> bool {
    match e {
        Error::Generic { source, .. } => {
            // object_store reports HTTP statuses in the message of its
            // request errors; a client error (4xx) is final.
            let mut msg = source.to_string();
            let mut s = source.source();
            while let Some(inner) = s {
                msg.push_str(&inner.to_string());
                s = inner.source();
            }
            // Errors the cloud client retried until its budget ran out
            // ("after N retries, max_retries: N") are not retried again; one
            // it gave up on early (a request body cut off after 2 of 10
            // retries) is.
            !msg.contains("status code: 4")
                && !msg.contains("status code: 501")
                && !client_budget_spent(&msg)
        }
        Error::JoinError { .. } => true,
        _ => false,
    }
}

/// An `ObjectStore` that retries transient failures (see the module docs).
pub struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
    emulate_create: bool,
}

impl fmt::Debug for RetryingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

impl fmt::Display for RetryingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

impl RetryingStore {
    /// Wrap `inner`. With `emulate_create`, create-only puts become a HEAD
    /// followed by a plain PUT (for servers without conditional writes).
    pub fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy, emulate_create: bool) -> Self {
        RetryingStore {
            inner,
            policy,
            emulate_create,
        }
    }

    async fn put_once(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if self.emulate_create && opts.mode == PutMode::Create {
            match self.inner.head(location).await {
                Ok(_) => {
                    return Err(Error::AlreadyExists {
                        path: location.to_string(),
                        source: "the object exists (checked before writing: this store has no conditional create)".into(),
                    });
                }
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            let mut o = opts;
            o.mode = PutMode::Overwrite;
            return self.inner.put_opts(location, payload, o).await;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    /// A listing (after `offset`, if given) that fails half-way is started
    /// again from the top; the caller sees it only once it is complete.
    fn listing(
        &self,
        prefix: Option<&Path>,
        offset: Option<&Path>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let policy = self.policy;
        let (prefix, offset) = (prefix.cloned(), offset.cloned());
        futures::stream::once(async move {
            let what = prefix.as_ref().map_or("", |p| p.as_ref());
            let r: Result<Vec<ObjectMeta>> = with_retries(policy, "listing", what, |_| {
                match &offset {
                    Some(o) => inner.list_with_offset(prefix.as_ref(), o),
                    None => inner.list(prefix.as_ref()),
                }
                .try_collect()
            })
            .await;
            match r {
                Ok(v) => futures::stream::iter(v.into_iter().map(Ok)).boxed(),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    /// After an ambiguous failure, a create that finds the object already
    /// there succeeded if the object holds exactly our bytes.
    async fn landed_earlier(&self, location: &Path, payload: &PutPayload) -> Result<bool> {
        let stored = self.inner.get(location).await?.bytes().await?;
        let ours: Vec<u8> = payload.iter().flat_map(|b| b.iter().copied()).collect();
        Ok(stored.as_ref() == ours.as_slice())
    }

    async fn get_whole(&self, location: &Path, options: &GetOptions) -> Result<GetResult> {
        let r = self.inner.get_opts(location, options.clone()).await?;
        match r.payload {
            GetResultPayload::Stream(s) => {
                // Read the body here, so a connection cut half-way is retried
                // like any other failure of the request.
                let chunks: Vec<Bytes> = s.try_collect().await?;
                let body = if chunks.len() == 1 {
                    chunks.into_iter().next().expect("one chunk")
                } else {
                    Bytes::from(chunks.concat())
                };
                Ok(GetResult {
                    payload: GetResultPayload::Stream(
                        futures::stream::once(async move { Ok(body) }).boxed(),
                    ),
                    meta: r.meta,
                    range: r.range,
                    attributes: r.attributes,
                    extensions: r.extensions,
                })
            }
            file => Ok(GetResult { payload: file, ..r }),
        }
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for RetryingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        with_retries(self.policy, "writing", location.as_ref(), |_| async {
            match self.put_once(location, payload.clone(), opts.clone()).await {
                // Also on a first attempt: the cloud client may have re-sent
                // the request itself after losing the first answer.
                Err(Error::AlreadyExists { .. })
                    if self.landed_earlier(location, &payload).await? =>
                {
                    Ok(PutResult {
                        e_tag: None,
                        version: None,
                        extensions: Default::default(),
                    })
                }
                r => r,
            }
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // cairn writes every object with one put; multipart is passed through.
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        with_retries(self.policy, "reading", location.as_ref(), |_| {
            self.get_whole(location, &options)
        })
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let inner = self.inner.clone();
        let policy = self.policy;
        locations
            .then(move |p| {
                let inner = inner.clone();
                async move {
                    let p = p?;
                    with_retries(policy, "deleting", p.as_ref(), |attempt| {
                        let (inner, p) = (&inner, &p);
                        async move {
                            match inner.delete(p).await {
                                // A retried delete that finds nothing: the first one landed.
                                Err(Error::NotFound { .. }) if attempt > 0 => Ok(()),
                                r => r,
                            }
                        }
                    })
                    .await?;
                    Ok(p)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.listing(prefix, None)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let what = prefix.map_or("", |p| p.as_ref());
        with_retries(self.policy, "listing", what, |_| {
            self.inner.list_with_delimiter(prefix)
        })
        .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<Bytes>> {
        with_retries(self.policy, "reading", location.as_ref(), |_| {
            self.inner.get_ranges(location, ranges)
        })
        .await
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.listing(prefix, Some(offset))
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::RenameOptions,
    ) -> Result<()> {
        // cairn never renames objects (they are written once); passed through.
        self.inner.rename_opts(from, to, options).await
    }
}
