//! Writer sessions, their commit claims, and the prune lease: the protocol
//! of `format-spec/README.md` §5 that keeps a prune from deleting what a
//! backup relies on, whatever the clocks of the hosts say and however long
//! the backup runs.
//!
//! - [`Session`]: announced in `sessions/<sid>/start` before the index is
//!   loaded, kept alive by heartbeats, and committing each snapshot through a
//!   create-only claim `sessions/<sid>/end-<k>` that a prune's fence of a
//!   stale session would take instead (§5.1, §5.3 step 2).
//! - [`Lease`]: `leases/prune/<generation>`, one prune at a time, expiry judged by
//!   store time (§5.2).
//! - Store time: `T(o)` is the `last_modified` the store reports for an
//!   object; every age is judged by it, never by this host's clock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cairn_format::envelope;
use serde_json::{Value, json};

use crate::error::{RepoError, Result};
use crate::layout::ObjectKind;
use crate::repo::{Repository, now_ns, whoami};
use crate::store::Store;

/// Magic of session start and heartbeat records (§4.10).
pub const SESSION_MAGIC: &[u8; 8] = b"CAIRNSES";
/// Magic of commit claims and fences (§4.10).
pub const END_MAGIC: &[u8; 8] = b"CAIRNEND";
/// Magic of prune lease records (§4.10).
pub const LEASE_MAGIC: &[u8; 8] = b"CAIRNLSE";
const VERSION: u16 = 1;

/// Skew between this host and the store above which cairn warns.
pub const SKEW_WARNING: Duration = Duration::from_secs(60);

pub use crate::limits::ProtocolTimes;

fn random_hex(n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| RepoError::InvalidInput(format!("random: {e}")))?;
    Ok(cairn_format::id::to_hex(&b))
}

fn seal(repo: &Repository, magic: &[u8; 8], v: &Value) -> Vec<u8> {
    envelope::seal_object(&repo.key, magic, VERSION, v.to_string().as_bytes())
}

fn open_record(repo: &Repository, name: &str, magic: &[u8; 8], b: &[u8]) -> Result<Value> {
    let body = envelope::open_object(&repo.key, "record", magic, VERSION, b)
        .map_err(|e| RepoError::from_format(name, e))?;
    serde_json::from_slice(&body).map_err(|e| RepoError::Corrupted {
        object: name.to_string(),
        detail: format!("not a JSON record: {e}"),
    })
}

/// Write a new object and read back its store time, measuring this host's
/// skew against the store on the way.
pub(crate) fn put_timed(store: &Store, name: &str, bytes: Vec<u8>) -> Result<StoreClock> {
    let before = now_ns();
    let t0 = Instant::now();
    store.put_new(name, bytes)?;
    let t = store.head(name)?.ok_or_else(|| RepoError::NotFound {
        object: name.to_string(),
    })?;
    let rtt = t0.elapsed();
    let mid = before + rtt.as_nanos() as i64 / 2;
    Ok(StoreClock {
        store_ns: t.1,
        skew_ns: t.1 - mid,
        uncertainty: rtt / 2,
    })
}

/// A reading of the store's clock.
#[derive(Clone, Copy, Debug)]
pub struct StoreClock {
    /// Store time (ns since the epoch).
    pub store_ns: i64,
    /// Store time minus this host's time (positive: the host is behind).
    pub skew_ns: i64,
    /// Half the round trip of the write that measured it.
    pub uncertainty: Duration,
}

impl StoreClock {
    /// A warning when this host's clock is off by more than [`SKEW_WARNING`].
    pub fn skew_warning(&self) -> Option<String> {
        let s = self.skew_ns.unsigned_abs();
        (s > SKEW_WARNING.as_nanos() as u64).then(|| {
            format!(
                "this host's clock is {} {} the storage's clock; cairn judges every age by the storage's clock, but times this host records (snapshot times) are off by as much",
                human(Duration::from_nanos(s)),
                if self.skew_ns > 0 { "behind" } else { "ahead of" }
            )
        })
    }
}

pub use crate::duration::human;

fn ns_to_rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let (y, m, d) = crate::duration::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn from_hex_vec(h: &str) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) {
        return None;
    }
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// Shared between a session and its heartbeat thread.
struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    /// Set when the session finds it was fenced (its `start` is gone or an
    /// `end` it did not write appeared).
    fenced: AtomicBool,
    /// Claims made (`end-0` … `end-<n-1>`).
    claims: Mutex<u64>,
    beats: AtomicU64,
}

/// A writer session (§5.1): announced before its index is loaded, alive
/// while it beats, ended (its objects removed) when dropped.
pub struct Session {
    repo: Repository,
    /// Random id (32 hex characters).
    pub sid: String,
    /// Deletion markers listed before the announcement.
    pub markers_seen: Vec<String>,
    /// The store's clock when the session started.
    pub clock: StoreClock,
    /// Protocol timing in force.
    pub times: ProtocolTimes,
    shared: Arc<Shared>,
    beat_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    ended: AtomicBool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({})", self.sid)
    }
}

fn start_name(sid: &str) -> String {
    format!("{}/{sid}/start", ObjectKind::Session.dir())
}

impl Session {
    /// Announce a session (§5.1 step 1): list the deletion markers, then
    /// create `sessions/<sid>/start` holding their names. Load the index only
    /// after this returns.
    pub fn announce(repo: &Repository, command: &str) -> Result<Arc<Session>> {
        let times = repo.protocol;
        let markers: Vec<String> = repo
            .store
            .list_kind(ObjectKind::Deletion)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let sid = random_hex(16)?;
        let (host, user) = whoami();
        let rec = json!({
            "host": host,
            "pid": std::process::id(),
            "user": user,
            "command": command,
            "time": now_ns(),
            "beat_secs": times.beat.as_secs_f64(),
            "stale_secs": times.stale.as_secs_f64(),
            "markers": markers,
        });
        let clock = match put_timed(
            &repo.store,
            &start_name(&sid),
            seal(repo, SESSION_MAGIC, &rec),
        ) {
            // Removed between the write and its HEAD: a prune took the
            // session for dead before it could beat (the store's clock
            // jumped, or this host stalled right after writing).
            Err(RepoError::NotFound { object }) => {
                return Err(RepoError::Refused(format!(
                    "{object} was removed by a prune right after it was written (it took this session for dead); nothing was written, run the command again"
                )));
            }
            r => r?,
        };
        let shared = Arc::new(Shared {
            stop: Mutex::new(false),
            wake: Condvar::new(),
            fenced: AtomicBool::new(false),
            claims: Mutex::new(0),
            beats: AtomicU64::new(0),
        });
        let s = Arc::new(Session {
            repo: repo.clone(),
            sid,
            markers_seen: markers,
            clock,
            times,
            shared,
            beat_thread: Mutex::new(None),
            ended: AtomicBool::new(false),
        });
        let (repo2, sid2, shared2) = (repo.clone(), s.sid.clone(), s.shared.clone());
        let handle = std::thread::Builder::new()
            .name("cairn-beat".into())
            .spawn(move || beat_loop(repo2, sid2, shared2, times.beat))
            .map_err(|e| RepoError::InvalidInput(format!("heartbeat thread: {e}")))?;
        *s.beat_thread.lock().expect("beat") = Some(handle);
        Ok(s)
    }

    /// Whether the session has seen that it was fenced.
    pub fn is_fenced(&self) -> bool {
        self.shared.fenced.load(Ordering::SeqCst)
    }

    fn fenced_error(&self, what: &str) -> RepoError {
        RepoError::Refused(format!(
            "this backup session ({}) was taken for dead by a prune (no heartbeat for longer than {} by the storage's clock: was the process stopped or the host suspended?) and {what}; no snapshot was written, run the backup again",
            &self.sid[..8],
            human(self.times.stale)
        ))
    }

    /// Fail if the session's `start` is gone (a prune fenced it and removed
    /// it): §5.1 step 3, after each index object.
    pub fn check_alive(&self) -> Result<()> {
        if self.is_fenced() || self.repo.store.head(&start_name(&self.sid))?.is_none() {
            self.shared.fenced.store(true, Ordering::SeqCst);
            return Err(self.fenced_error("its packs may have been deleted"));
        }
        Ok(())
    }

    /// Claim the commit of a snapshot (§5.1 step 6): create `end-<k>` with
    /// the snapshot's bytes, then check `start` still exists. On success the
    /// caller writes the snapshot object.
    pub fn claim(&self, snapshot_bytes: &[u8]) -> Result<()> {
        let mut k = self.shared.claims.lock().expect("claims");
        if self.is_fenced() {
            return Err(self.fenced_error("the commit was refused"));
        }
        let name = format!("{}/{}/end-{}", ObjectKind::Session.dir(), self.sid, *k);
        let rec = json!({"kind": "commit", "snapshot": cairn_format::id::to_hex(snapshot_bytes)});
        match self
            .repo
            .store
            .put_new(&name, seal(&self.repo, END_MAGIC, &rec))
        {
            Ok(()) => {}
            Err(RepoError::AlreadyExists { .. }) => {
                self.shared.fenced.store(true, Ordering::SeqCst);
                return Err(self.fenced_error("fenced it before the commit"));
            }
            Err(e) => return Err(e),
        }
        *k += 1;
        if self.repo.store.head(&start_name(&self.sid))?.is_none() {
            self.shared.fenced.store(true, Ordering::SeqCst);
            let _ = self.repo.store.delete(&name);
            return Err(self.fenced_error("removed it before the commit"));
        }
        Ok(())
    }

    /// End the session: stop beating, remove beats, `start`, then the claims
    /// (§5.1 step 9). Also done on drop.
    pub fn end(&self) {
        if self.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        *self.shared.stop.lock().expect("stop") = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.beat_thread.lock().expect("beat").take() {
            let _ = h.join();
        }
        // Only the newest beat is left (each beat removes the one before);
        // leftovers of a failed removal are taken for a dead session's and
        // removed by a prune.
        let beats = self.shared.beats.load(Ordering::SeqCst);
        let claims = *self.shared.claims.lock().expect("claims");
        let mut names = Vec::new();
        if beats > 0 {
            names.push(format!(
                "{}/{}/beat-{beats}",
                ObjectKind::Session.dir(),
                self.sid
            ));
        }
        names.push(start_name(&self.sid));
        names.extend(
            (0..claims).map(|k| format!("{}/{}/end-{k}", ObjectKind::Session.dir(), self.sid)),
        );
        for n in &names {
            let _ = self.repo.store.delete(n);
        }
    }

    /// The store's present time, read by writing the next heartbeat now.
    pub fn store_now(&self) -> Result<StoreClock> {
        beat_once(&self.repo, &self.sid, &self.shared)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.end();
    }
}

fn beat_once(repo: &Repository, sid: &str, shared: &Shared) -> Result<StoreClock> {
    let n = shared.beats.fetch_add(1, Ordering::SeqCst) + 1;
    let name = format!("{}/{sid}/beat-{n}", ObjectKind::Session.dir());
    let clock = match put_timed(
        &repo.store,
        &name,
        seal(repo, SESSION_MAGIC, &json!({"beat": n})),
    ) {
        Err(RepoError::NotFound { object }) => {
            shared.fenced.store(true, Ordering::SeqCst);
            return Err(RepoError::Refused(format!(
                "{object} was removed by a prune right after it was written: it took this session for dead; run the command again"
            )));
        }
        r => r?,
    };
    if n > 1 {
        let _ = repo.store.delete(&format!(
            "{}/{sid}/beat-{}",
            ObjectKind::Session.dir(),
            n - 1
        ));
    }
    if repo.store.head(&start_name(sid))?.is_none() {
        shared.fenced.store(true, Ordering::SeqCst);
    }
    Ok(clock)
}

fn beat_loop(repo: Repository, sid: String, shared: Arc<Shared>, every: Duration) {
    loop {
        {
            let stop = shared.stop.lock().expect("stop");
            let (stop, _) = shared
                .wake
                .wait_timeout_while(stop, every, |s| !*s)
                .expect("stop");
            if *stop {
                return;
            }
        }
        // A failed beat is retried at the next interval: only a session that
        // misses beats for `stale` is at risk of being fenced, and then it
        // fails cleanly at its commit.
        let _ = beat_once(&repo, &sid, &shared);
    }
}

/// What a prune found of one other session (§5.3 step 2).
#[derive(Clone, Debug)]
pub struct SessionView {
    /// Its id.
    pub sid: String,
    /// Host, pid, command and start, for messages.
    pub who: String,
    /// Markers it listed before loading its index (`None`: no readable start).
    pub markers: Option<Vec<String>>,
    /// Store time of its newest object.
    pub last_alive_ns: i64,
    /// Store time of its `start`.
    pub start_ns: Option<i64>,
    /// After this much store time without a beat it is stale.
    pub stale: Duration,
    /// Its claims: name and record (commit with snapshot bytes, or fence).
    pub ends: Vec<(String, End)>,
    /// Every object it has (for removal).
    pub objects: Vec<String>,
}

/// A claim object's content.
#[derive(Clone, Debug)]
pub enum End {
    /// The session committed (or is committing) this snapshot object.
    Commit(Vec<u8>),
    /// A prune fenced the session.
    Fence,
    /// Unreadable: treated as foreign, never removed.
    Unreadable(String),
}

impl SessionView {
    /// Whether a prune fenced it.
    pub fn fenced(&self) -> bool {
        self.ends.iter().any(|(_, e)| matches!(e, End::Fence))
    }
}

/// Every session in the repository (one listing of `sessions/`).
pub fn list_sessions(repo: &Repository) -> Result<Vec<SessionView>> {
    let mut by_sid: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for (name, _, t) in repo.store.list_kind_timed(ObjectKind::Session)? {
        let Some(rest) = name
            .strip_prefix(ObjectKind::Session.dir())
            .and_then(|r| r.strip_prefix('/'))
        else {
            continue;
        };
        let Some((sid, _)) = rest.split_once('/') else {
            continue;
        };
        by_sid.entry(sid.to_string()).or_default().push((name, t));
    }
    let mut out = Vec::new();
    for (sid, objs) in by_sid {
        let mut v = SessionView {
            sid: sid.clone(),
            who: format!("session {}", &sid[..sid.len().min(8)]),
            markers: None,
            last_alive_ns: objs.iter().map(|o| o.1).max().unwrap_or(0),
            start_ns: None,
            stale: repo.protocol.stale,
            ends: Vec::new(),
            objects: objs.iter().map(|o| o.0.clone()).collect(),
        };
        for (name, t) in &objs {
            let leaf = name.rsplit('/').next().unwrap_or_default();
            let bytes = match repo.store.get(name) {
                Ok(b) => b,
                Err(RepoError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            if leaf == "start" {
                v.start_ns = Some(*t);
                if let Ok(r) = open_record(repo, name, SESSION_MAGIC, &bytes) {
                    v.markers = Some(
                        r["markers"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|x| x.as_str().map(String::from))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    );
                    if let Some(s) = r["stale_secs"].as_f64().filter(|s| *s > 0.0) {
                        v.stale = Duration::from_secs_f64(s);
                    }
                    v.who = format!(
                        "{} on {} (pid {}, started {} by the storage's clock)",
                        r["command"].as_str().unwrap_or("a session"),
                        r["host"].as_str().unwrap_or("?"),
                        r["pid"],
                        ns_to_rfc3339(*t)
                    );
                }
            } else if leaf.starts_with("end") {
                let e = match open_record(repo, name, END_MAGIC, &bytes) {
                    Ok(r) if r["kind"] == "fence" => End::Fence,
                    Ok(r) if r["kind"] == "commit" => {
                        match r["snapshot"].as_str().and_then(from_hex_vec) {
                            Some(b) => End::Commit(b),
                            None => End::Unreadable("commit record without snapshot".into()),
                        }
                    }
                    Ok(_) => End::Unreadable("unknown claim kind".into()),
                    Err(e) => End::Unreadable(e.to_string()),
                };
                v.ends.push((name.clone(), e));
            }
        }
        v.ends.sort_by_key(|(n, _)| {
            n.rsplit_once("end-")
                .and_then(|(_, k)| k.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        });
        out.push(v);
    }
    Ok(out)
}

/// Fence a stale session (§5.3 step 2): create its next claim name with a
/// fence record. Returns the commit records it had claimed (roots), or
/// `None` if the session claimed again while we tried (it is alive after all).
pub fn fence(repo: &Repository, v: &SessionView) -> Result<Option<()>> {
    let (host, _) = whoami();
    let rec = json!({"kind": "fence", "host": host, "pid": std::process::id(), "time": now_ns()});
    let next = v
        .ends
        .iter()
        .filter_map(|(n, _)| {
            n.rsplit_once("end-")
                .and_then(|(_, k)| k.parse::<u64>().ok())
        })
        .max()
        .map_or(0, |k| k + 1);
    match repo.store.put_new(
        &format!("{}/{}/end-{next}", ObjectKind::Session.dir(), v.sid),
        seal(repo, END_MAGIC, &rec),
    ) {
        Ok(()) => Ok(Some(())),
        Err(RepoError::AlreadyExists { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Remove a dead session's objects: beats and `start` first, claims last.
/// Only for sessions whose every commit claim has its snapshot written (a
/// claim is otherwise left to its session, format-spec §5.3 step 2).
pub fn remove_session(repo: &Repository, v: &SessionView) -> Result<()> {
    remove_objects(repo, v)
}

fn remove_objects(repo: &Repository, v: &SessionView) -> Result<()> {
    let (ends, rest): (Vec<&String>, Vec<&String>) = v
        .objects
        .iter()
        .partition(|n| n.rsplit('/').next().is_some_and(|l| l.starts_with("end")));
    let (starts, beats): (Vec<&String>, Vec<&String>) =
        rest.into_iter().partition(|n| n.ends_with("/start"));
    for n in beats.into_iter().chain(starts).chain(ends) {
        match repo.store.delete(n) {
            Ok(()) | Err(RepoError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The prune lease (§5.2), renewed in the background while held.
pub struct Lease {
    repo: Repository,
    token: String,
    ttl: Duration,
    state: Arc<LeaseState>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct LeaseState {
    generation: Mutex<u64>,
    /// When the last renewal succeeded (this host's monotonic clock).
    renewed: Mutex<Instant>,
    /// Store time of the newest lease object written.
    store_ns: Mutex<i64>,
    lost: Mutex<Option<String>>,
    stop: Mutex<bool>,
    wake: Condvar,
}

fn lease_name(generation: u64) -> String {
    format!("{}/{generation:020}", ObjectKind::Lease.dir())
}

/// Someone else's lease, for messages.
fn describe_lease(repo: &Repository, name: &str, t: i64) -> String {
    match repo
        .store
        .get(name)
        .and_then(|b| open_record(repo, name, LEASE_MAGIC, &b))
    {
        Ok(r) => format!(
            "held by {} (pid {}, user {}) since {} by the storage's clock",
            r["host"].as_str().unwrap_or("?"),
            r["pid"],
            r["user"].as_str().unwrap_or("?"),
            ns_to_rfc3339(t)
        ),
        Err(e) => format!("{name} (unreadable: {e})"),
    }
}

impl Lease {
    /// Take the prune lease, or refuse naming its holder. `force` takes over
    /// a lease that has not expired (the operator knows its holder is gone).
    pub fn acquire(repo: &Repository, now: &StoreClock, force: bool) -> Result<Lease> {
        let times = repo.protocol;
        let leases = repo.store.list_kind_timed(ObjectKind::Lease)?;
        let newest = leases
            .iter()
            .filter_map(|(n, _, t)| {
                let g = ObjectKind::Lease.leaf(n)?.parse::<u64>().ok()?;
                Some((g, n.clone(), *t))
            })
            .max_by_key(|x| x.0);
        if let Some((_, name, t)) = &newest {
            let ttl = repo
                .store
                .get(name)
                .and_then(|b| open_record(repo, name, LEASE_MAGIC, &b))
                .ok()
                .and_then(|r| r["ttl_secs"].as_f64())
                .map(Duration::from_secs_f64)
                .unwrap_or(times.lease_ttl);
            let age = now.store_ns - t;
            if age < ttl.as_nanos() as i64 && !force {
                return Err(RepoError::Refused(format!(
                    "another prune is running: the prune lease {name} is {}; it expires {} after its last renewal (run one prune at a time; if that prune is certainly gone, `cairn prune --force-takeover`)",
                    describe_lease(repo, name, *t),
                    human(ttl)
                )));
            }
        }
        let generation = newest.as_ref().map_or(1, |x| x.0 + 1);
        let token = random_hex(16)?;
        let (host, user) = whoami();
        let rec = json!({
            "host": host, "pid": std::process::id(), "user": user,
            "started": now_ns(), "token": token, "ttl_secs": times.lease_ttl.as_secs_f64(),
        });
        let clock = match put_timed(
            &repo.store,
            &lease_name(generation),
            seal(repo, LEASE_MAGIC, &rec),
        ) {
            Ok(c) => c,
            Err(RepoError::AlreadyExists { .. }) => {
                let name = lease_name(generation);
                let t = repo.store.head(&name)?.map_or(0, |x| x.1);
                return Err(RepoError::Refused(format!(
                    "another prune took the prune lease at the same moment: {}",
                    describe_lease(repo, &name, t)
                )));
            }
            Err(RepoError::NotFound { .. }) => {
                return Err(RepoError::Refused(
                    "another prune took the prune lease over right after this one took it (its clock saw it expired); nothing was changed".into(),
                ));
            }
            Err(e) => return Err(e),
        };
        if let Some(newer) = newer_lease(repo, generation)? {
            let _ = repo.store.delete(&lease_name(generation));
            return Err(RepoError::Refused(format!(
                "another prune took the prune lease at the same moment: {newer}"
            )));
        }
        let state = Arc::new(LeaseState {
            generation: Mutex::new(generation),
            renewed: Mutex::new(Instant::now()),
            store_ns: Mutex::new(clock.store_ns),
            lost: Mutex::new(None),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let lease = Lease {
            repo: repo.clone(),
            token,
            ttl: times.lease_ttl,
            state,
            thread: Mutex::new(None),
        };
        // Older generations (a dead holder's) go.
        for (g, name, _) in leases
            .iter()
            .filter_map(|(n, _, t)| Some((ObjectKind::Lease.leaf(n)?.parse::<u64>().ok()?, n, t)))
        {
            if g < generation {
                let _ = repo.store.delete(name);
            }
        }
        let (repo2, state2, token2, ttl) = (
            repo.clone(),
            lease.state.clone(),
            lease.token.clone(),
            lease.ttl,
        );
        let h = std::thread::Builder::new()
            .name("cairn-lease".into())
            .spawn(move || {
                loop {
                    {
                        let stop = state2.stop.lock().expect("stop");
                        let (stop, _) = state2
                            .wake
                            .wait_timeout_while(stop, ttl / 10, |s| !*s)
                            .expect("stop");
                        if *stop {
                            return;
                        }
                    }
                    let _ = renew(&repo2, &state2, &token2, ttl);
                }
            })
            .map_err(|e| RepoError::InvalidInput(format!("lease thread: {e}")))?;
        *lease.thread.lock().expect("thread") = Some(h);
        Ok(lease)
    }

    /// Renew now and return the store's present time (§5.3 step 1).
    pub fn renew_now(&self) -> Result<i64> {
        renew(&self.repo, &self.state, &self.token, self.ttl)?;
        self.check()?;
        Ok(*self.state.store_ns.lock().expect("store time"))
    }

    /// Before a step that writes or deletes: the lease is still ours and was
    /// renewed less than half its lifetime ago (§5.2).
    pub fn check(&self) -> Result<()> {
        if let Some(why) = self.state.lost.lock().expect("lost").clone() {
            return Err(RepoError::Refused(format!(
                "this prune lost the prune lease ({why}); it stopped before its next step, nothing is lost"
            )));
        }
        let since = self.state.renewed.lock().expect("renewed").elapsed();
        if since > self.ttl / 2 {
            renew(&self.repo, &self.state, &self.token, self.ttl)?;
            if let Some(why) = self.state.lost.lock().expect("lost").clone() {
                return Err(RepoError::Refused(format!(
                    "this prune lost the prune lease ({why}); it stopped before its next step, nothing is lost"
                )));
            }
        }
        Ok(())
    }

    /// Stop renewing without giving the lease up, as a process that dies
    /// does (tests of expiry and takeover).
    pub fn abandon(self) {
        *self.state.lost.lock().expect("lost") = Some("abandoned".into());
        self.release();
    }

    /// Give the lease up (also on drop).
    pub fn release(&self) {
        *self.state.stop.lock().expect("stop") = true;
        self.state.wake.notify_all();
        if let Some(h) = self.thread.lock().expect("thread").take() {
            let _ = h.join();
        }
        if self.state.lost.lock().expect("lost").is_none() {
            let g = *self.state.generation.lock().expect("generation");
            let _ = self.repo.store.delete(&lease_name(g));
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

fn renew(repo: &Repository, st: &LeaseState, token: &str, ttl: Duration) -> Result<()> {
    let mut generation = st.generation.lock().expect("generation");
    if st.lost.lock().expect("lost").is_some() {
        return Ok(());
    }
    let next = *generation + 1;
    let (host, user) = whoami();
    let rec = json!({
        "host": host, "pid": std::process::id(), "user": user,
        "started": now_ns(), "token": token, "ttl_secs": ttl.as_secs_f64(),
    });
    match put_timed(
        &repo.store,
        &lease_name(next),
        seal(repo, LEASE_MAGIC, &rec),
    ) {
        Ok(c) => {
            // A taker may have moved past our next generation and removed
            // it: whoever holds the highest generation holds the lease.
            if let Some(newer) = newer_lease(repo, next)? {
                let _ = repo.store.delete(&lease_name(next));
                *st.lost.lock().expect("lost") = Some(format!("taken over: {newer}"));
                return Ok(());
            }
            let prev = *st.store_ns.lock().expect("store time");
            if c.store_ns + 2_000_000_000 < prev {
                *st.lost.lock().expect("lost") = Some(format!(
                    "the storage's clock went back by {} between two renewals",
                    human(Duration::from_nanos((prev - c.store_ns) as u64))
                ));
            }
            *st.store_ns.lock().expect("store time") = c.store_ns;
            *st.renewed.lock().expect("renewed") = Instant::now();
            let _ = repo.store.delete(&lease_name(*generation));
            *generation = next;
            Ok(())
        }
        Err(RepoError::AlreadyExists { .. }) => {
            let name = lease_name(next);
            let t = repo.store.head(&name)?.map_or(0, |x| x.1);
            *st.lost.lock().expect("lost") =
                Some(format!("taken over: {}", describe_lease(repo, &name, t)));
            Ok(())
        }
        Err(RepoError::NotFound { .. }) => {
            *st.lost.lock().expect("lost") =
                Some("taken over: its renewal was removed by the prune that took it".into());
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The holder of a lease generation above `generation`, if any.
fn newer_lease(repo: &Repository, generation: u64) -> Result<Option<String>> {
    let newest = repo
        .store
        .list_kind_timed(ObjectKind::Lease)?
        .into_iter()
        .filter_map(|(n, _, t)| Some((ObjectKind::Lease.leaf(&n)?.parse::<u64>().ok()?, n, t)))
        .max_by_key(|x| x.0);
    Ok(newest
        .filter(|x| x.0 > generation)
        .map(|(_, n, t)| describe_lease(repo, &n, t)))
}
