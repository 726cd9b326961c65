//! The prune protocol under everything at once (format-spec §5): writers
//! whose backups trickle for longer than the grace period, writers killed at
//! a random store operation (their sessions left behind), writers stalled
//! for longer than a session may go without a heartbeat, two prune loops
//! contending for the lease (some prunes killed half-way too), forget, and
//! the storage's clock jumping ahead. Afterwards every snapshot that was
//! reported saved and not forgotten restores byte-identical, no other
//! snapshot is visible, and `check --read-data` is clean.
//!
//! `CAIRN_TORTURE_SECS` (per round, default 3) and `CAIRN_TORTURE_ROUNDS`
//! (default 3) set the size; the closing note of the prune-safety work ran
//! 20 rounds of 180 s.

use cairn_testkit::repo::{KDF, data};

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_format::SnapshotId;
use cairn_format::config::Config;
use cairn_repo::check::ReadData;
use cairn_repo::{BackupOptions, IndexedRepository, Progress, PruneOptions, Repository};
use cairn_testkit::{ClockStore, FaultPlan, FaultyStore};
use object_store::ObjectStore;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Short protocol times so that staleness, expiry and grace all happen
/// many times a round.
fn open(s: &Arc<dyn ObjectStore>) -> cairn_repo::Result<Repository> {
    let mut r = Repository::open(s.clone(), b"pw")?;
    r.protocol_mut().beat = Duration::from_millis(20);
    r.protocol_mut().stale = Duration::from_millis(400);
    r.protocol_mut().lease_ttl = Duration::from_millis(400);
    Ok(r)
}

/// Yields its data a piece at a time, sleeping between pieces.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    pause: Duration,
}
impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.data.len() {
            return Ok(0);
        }
        std::thread::sleep(self.pause);
        let n = buf.len().min(64 << 10).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn restores(r: &IndexedRepository, id: &SnapshotId) -> cairn_repo::Result<Vec<u8>> {
    let snap = r.repo().load_snapshot(id)?;
    let node = r
        .find_node(&snap.tree, b"/f")?
        .ok_or_else(|| cairn_repo::RepoError::InvalidInput("no /f".into()))?;
    let mut out = Vec::new();
    r.dump_file(&node, &mut out)?;
    Ok(out)
}

#[derive(Default)]
struct Counts {
    committed: AtomicUsize,
    failed: AtomicUsize,
    killed: AtomicUsize,
    stalled: AtomicUsize,
    trickled: AtomicUsize,
    prunes: AtomicUsize,
    prunes_refused: AtomicUsize,
    prunes_killed: AtomicUsize,
    fenced: AtomicUsize,
    held: AtomicUsize,
    deleted: AtomicUsize,
}

/// What the threads of a round share.
#[derive(Clone)]
struct Shared {
    raw: Arc<dyn ObjectStore>,
    committed: Arc<Mutex<HashMap<SnapshotId, Vec<u8>>>>,
    // What every backup that did not report success tried to save: a prune
    // may complete the claimed commit of a backup killed or stalled between
    // its claim and its snapshot (format-spec §5.3 step 2).
    attempted: Arc<Mutex<std::collections::HashSet<[u8; 32]>>>,
    stop: Arc<AtomicBool>,
    n: Arc<Counts>,
}

/// A fresh repository in memory behind a clock that can jump ahead.
fn new_repo() -> (Arc<ClockStore>, Arc<dyn ObjectStore>) {
    let mem: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let clock = ClockStore::new(mem);
    let raw: Arc<dyn ObjectStore> = clock.clone();
    let mut cfg = Config::new_default(0);
    cfg.pack_target = 1 << 20;
    cfg.chunk_min = 16 << 10;
    cfg.chunk_avg = 64 << 10;
    cfg.chunk_max = 256 << 10;
    Repository::init(raw.clone(), b"pw", cfg, KDF).unwrap();
    (clock, raw)
}

fn round(seed: u64, run_for: Duration) {
    let (clock, raw) = new_repo();
    let s = Shared {
        raw,
        committed: Arc::default(),
        attempted: Arc::default(),
        stop: Arc::new(AtomicBool::new(false)),
        n: Arc::new(Counts::default()),
    };
    let mut threads = Vec::new();
    for w in 0..6u64 {
        let s = s.clone();
        threads.push(std::thread::spawn(move || writer(seed, w, &s)));
    }
    // Two prune loops at once (so prunes overlap and are refused), each
    // forgetting a few snapshots first; some prunes are killed half-way.
    for p in 0..2u64 {
        let s = s.clone();
        threads.push(std::thread::spawn(move || pruner(seed, p, &s)));
    }
    // The storage's clock jumps ahead now and then.
    {
        let (clock, stop) = (clock.clone(), s.stop.clone());
        threads.push(std::thread::spawn(move || clock_jumps(seed, &clock, &stop)));
    }
    std::thread::sleep(run_for);
    s.stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("a thread panicked");
    }

    verify(seed, "after the run", &s);
    // Dead leases and sessions expire by the storage's clock; then prunes
    // finish every marking.
    clock.advance(Duration::from_secs(2));
    for _ in 0..2 {
        open(&s.raw)
            .unwrap()
            .prune(&PruneOptions {
                keep_delete: Duration::ZERO,
                ..Default::default()
            })
            .unwrap();
    }
    verify(seed, "after the final prunes", &s);
    summary(seed, &s);
}

/// One writer: backups until told to stop, some killed, stalled or
/// trickling.
fn writer(seed: u64, w: u64, s: &Shared) {
    let mut rng = Rng((seed * 7919 + w) | 1);
    let mut unique = (seed << 32) | (w << 24);
    while !s.stop.load(Ordering::SeqCst) {
        let d = backup_data(&mut rng, &mut unique);
        backup_once(&mut rng, s, d);
    }
}

/// What one backup saves: 64 KiB pieces, some unique, some shared.
fn backup_data(rng: &mut Rng, unique: &mut u64) -> Vec<u8> {
    let mut d = Vec::new();
    for _ in 0..(1 + rng.next() % 8) {
        if rng.next().is_multiple_of(3) {
            *unique += 1;
            d.extend(data(*unique, 64 << 10));
        } else {
            d.extend(data(rng.next() % 30, 64 << 10));
        }
    }
    d
}

/// Back `d` up once, as the next draw of `rng` has it, and record whether
/// it was reported saved.
fn backup_once(rng: &mut Rng, s: &Shared, d: Vec<u8>) {
    let n = &s.n;
    let kind = rng.next() % 10;
    // 0: killed at a random store operation; 1: stalled past the
    // stale time before committing; 2–3: trickling for longer
    // than the grace period; else: plain.
    let store: Arc<dyn ObjectStore> = if kind == 0 {
        n.killed.fetch_add(1, Ordering::SeqCst);
        FaultyStore::new(
            s.raw.clone(),
            FaultPlan {
                stop_after: Some(5 + rng.next() % 40),
                ..Default::default()
            },
        )
    } else {
        s.raw.clone()
    };
    let stall = kind == 1;
    let pause = Duration::from_millis(if (2..4).contains(&kind) { 40 } else { 0 });
    if stall {
        n.stalled.fetch_add(1, Ordering::SeqCst);
    }
    if pause > Duration::ZERO {
        n.trickled.fetch_add(1, Ordering::SeqCst);
    }
    let res = open(&store)
        .and_then(|r| r.load_index_for_writing("backup"))
        .and_then(|r| {
            let reader = Trickle {
                data: d.clone(),
                pos: 0,
                pause,
            };
            r.backup_stream(
                reader,
                "f",
                &BackupOptions::default(),
                &Progress::default(),
                || {
                    if stall {
                        std::thread::sleep(Duration::from_millis(700));
                    }
                    Ok(())
                },
            )
        });
    match res {
        Ok(b) => {
            n.committed.fetch_add(1, Ordering::SeqCst);
            s.committed.lock().unwrap().insert(b.id, d);
        }
        Err(_) => {
            n.failed.fetch_add(1, Ordering::SeqCst);
            s.attempted
                .lock()
                .unwrap()
                .insert(*blake3::hash(&d).as_bytes());
        }
    }
}

/// One prune loop: forget a few snapshots, prune (killed half-way now and
/// then), pause, until told to stop.
fn pruner(seed: u64, p: u64, s: &Shared) {
    let mut rng = Rng((seed * 104_729 + p) | 1);
    while !s.stop.load(Ordering::SeqCst) {
        forget_some(&mut rng, s);
        prune_once(seed, &mut rng, s);
        std::thread::sleep(Duration::from_millis(rng.next() % 30));
    }
}

/// Forget about one in four saved snapshots, at most three.
fn forget_some(rng: &mut Rng, s: &Shared) {
    let victims: Vec<SnapshotId> = {
        let c = s.committed.lock().unwrap();
        c.keys()
            .filter(|_| rng.next().is_multiple_of(4))
            .take(3)
            .copied()
            .collect()
    };
    if let Ok(r) = open(&s.raw) {
        for v in &victims {
            s.committed.lock().unwrap().remove(v);
        }
        r.delete_snapshots(&victims).unwrap();
    }
}

/// One prune, killed at a random store operation one time in six; it may
/// be refused (another holds the lease), and fails only when killed.
fn prune_once(seed: u64, rng: &mut Rng, s: &Shared) {
    let n = &s.n;
    let killed = rng.next().is_multiple_of(6);
    let store: Arc<dyn ObjectStore> = if killed {
        n.prunes_killed.fetch_add(1, Ordering::SeqCst);
        FaultyStore::new(
            s.raw.clone(),
            FaultPlan {
                stop_after: Some(3 + rng.next() % 60),
                ..Default::default()
            },
        )
    } else {
        s.raw.clone()
    };
    let keep_delete = Duration::from_millis([0, 50, 150, 300][rng.next() as usize % 4]);
    match open(&store).and_then(|r| {
        r.prune(&PruneOptions {
            keep_delete,
            ..Default::default()
        })
    }) {
        Ok(rep) => {
            n.prunes.fetch_add(1, Ordering::SeqCst);
            n.fenced
                .fetch_add(rep.sessions_fenced.len(), Ordering::SeqCst);
            n.held.fetch_add(rep.markers_held.len(), Ordering::SeqCst);
            n.deleted.fetch_add(rep.packs_deleted, Ordering::SeqCst);
        }
        Err(cairn_repo::RepoError::Refused(_)) => {
            n.prunes_refused.fetch_add(1, Ordering::SeqCst);
        }
        Err(e) if killed => {
            let _ = e;
        }
        Err(e) => panic!("round {seed}: prune failed: {e}"),
    }
}

/// Move the storage's clock ahead now and then, until told to stop.
fn clock_jumps(seed: u64, clock: &ClockStore, stop: &AtomicBool) {
    let mut rng = Rng(seed | 3);
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        if rng.next().is_multiple_of(5) {
            clock.advance(Duration::from_millis(rng.next() % 300));
        }
    }
}

/// Every snapshot reported saved and not forgotten restores as saved, every
/// other visible one holds what a failed backup tried to save, and
/// `check --read-data` is clean.
fn verify(seed: u64, when: &str, s: &Shared) {
    let r = open(&s.raw).unwrap().load_index().unwrap();
    let committed = s.committed.lock().unwrap();
    let attempted = s.attempted.lock().unwrap();
    for (id, _) in r.repo().list_snapshots().unwrap() {
        if committed.contains_key(&id) {
            continue;
        }
        // Not reported saved: a completed commit of a failed backup,
        // whole and holding what that backup read.
        let got = restores(&r, &id).unwrap_or_else(|e| {
            panic!(
                "round {seed} {when}: unreported snapshot {} does not restore: {e}",
                id.short()
            )
        });
        assert!(
            attempted.contains(blake3::hash(&got).as_bytes()),
            "round {seed} {when}: snapshot {} is visible but no backup tried to save what it holds (or it was forgotten)",
            id.short()
        );
    }
    for (id, d) in committed.iter() {
        let got = restores(&r, id).unwrap_or_else(|e| {
            panic!(
                "round {seed} {when}: snapshot {} reported saved does not restore: {e}",
                id.short()
            )
        });
        assert!(
            got == *d,
            "round {seed} {when}: snapshot {} differs",
            id.short()
        );
    }
    let report = r.repo().as_ref().clone().check(ReadData::All).unwrap();
    assert!(
        report.ok(),
        "round {seed} {when}: check found {:?}",
        report.problems
    );
}

/// What the round did, and enough backups saved for it to mean something.
fn summary(seed: u64, s: &Shared) {
    let n = &s.n;
    let c = |a: &AtomicUsize| a.load(Ordering::SeqCst);
    eprintln!(
        "round {seed}: {} saved, {} failed ({} killed, {} stalled, {} trickling); {} prunes ({} refused, {} killed): {} sessions fenced, {} markers held, {} packs deleted; {} snapshots kept",
        c(&n.committed),
        c(&n.failed),
        c(&n.killed),
        c(&n.stalled),
        c(&n.trickled),
        c(&n.prunes),
        c(&n.prunes_refused),
        c(&n.prunes_killed),
        c(&n.fenced),
        c(&n.held),
        c(&n.deleted),
        s.committed.lock().unwrap().len()
    );
    assert!(c(&n.committed) >= 5, "round {seed}: too few backups saved");
}

#[test]
fn trickling_killed_and_stalled_backups_with_contending_prunes_lose_no_saved_snapshot() {
    let secs: u64 = std::env::var("CAIRN_TORTURE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let rounds: u64 = std::env::var("CAIRN_TORTURE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed0: u64 = std::env::var("CAIRN_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let started = Instant::now();
    for seed in seed0..seed0 + rounds {
        round(seed, Duration::from_secs(secs));
    }
    eprintln!(
        "{rounds} rounds of {secs}s in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
