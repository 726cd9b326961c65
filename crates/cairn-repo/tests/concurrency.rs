//! Concurrency torture: eight writers backing up overlapping data while one
//! process forgets old snapshots and prunes, for a bounded time; then every
//! snapshot that was reported committed and not forgotten must restore
//! byte-identical, nothing unknown may be visible, and `check --read-data`
//! must be clean. Twenty rounds with different seeds and grace periods.

use cairn_testkit::repo::{data, setup};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_format::SnapshotId;
use cairn_repo::check::ReadData;
use cairn_repo::{BackupOptions, IndexedRepository, Progress, PruneOptions, Repository};
use object_store::ObjectStore;

fn try_open(s: &Arc<dyn ObjectStore>) -> cairn_repo::Result<IndexedRepository> {
    Repository::open(s.clone(), b"pw")?.load_index()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 64 KiB blocks: a shared pool all writers draw from (so their data
/// overlaps and deduplicates), and unique ones.
fn block(id: u64) -> Vec<u8> {
    data(id, 64 << 10)
}

fn restores(r: &IndexedRepository, id: &SnapshotId) -> cairn_repo::Result<Vec<u8>> {
    let snap = r.repo().load_snapshot(id)?;
    let node = r.find_node(&snap.tree, b"/f")?.expect("file in snapshot");
    let mut out = Vec::new();
    r.dump_file(&node, &mut out)?;
    Ok(out)
}

fn round(seed: u64, keep_delete: Duration, run_for: Duration) {
    let raw = setup();
    let committed: Arc<Mutex<HashMap<SnapshotId, Vec<u8>>>> = Arc::default();
    let forgotten: Arc<Mutex<Vec<SnapshotId>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for w in 0..8u64 {
        let (raw, committed, stop, failures) = (
            raw.clone(),
            committed.clone(),
            stop.clone(),
            failures.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng((seed * 1000 + w) | 1);
            let mut unique = (seed << 32) | (w << 24);
            while !stop.load(Ordering::SeqCst) {
                let mut data = Vec::new();
                for _ in 0..(2 + rng.next() % 10) {
                    if rng.next().is_multiple_of(3) {
                        unique += 1;
                        data.extend(block(unique));
                    } else {
                        data.extend(block(rng.next() % 40));
                    }
                }
                let res = try_open(&raw).and_then(|r| {
                    r.backup_stream(
                        &data[..],
                        "f",
                        &BackupOptions::default(),
                        &Progress::default(),
                        || Ok(()),
                    )
                });
                match res {
                    Ok(b) => {
                        committed.lock().unwrap().insert(b.id, data);
                    }
                    // A backup outlasting a prune's grace period may fail;
                    // it must do so without a snapshot (checked below).
                    Err(_) => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    {
        let (raw, committed, forgotten, stop) = (
            raw.clone(),
            committed.clone(),
            forgotten.clone(),
            stop.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng(seed | 1);
            while !stop.load(Ordering::SeqCst) {
                let repo = Repository::open(raw.clone(), b"pw").unwrap();
                // Forget a few of the committed snapshots.
                let victims: Vec<SnapshotId> = {
                    let c = committed.lock().unwrap();
                    c.keys()
                        .filter(|_| rng.next().is_multiple_of(3))
                        .take(4)
                        .copied()
                        .collect()
                };
                for v in &victims {
                    committed.lock().unwrap().remove(v);
                    forgotten.lock().unwrap().push(*v);
                }
                repo.delete_snapshots(&victims).unwrap();
                repo.prune(&PruneOptions {
                    keep_delete,
                    ..Default::default()
                })
                .unwrap();
                std::thread::sleep(Duration::from_millis(rng.next() % 50));
            }
        }));
    }
    std::thread::sleep(run_for);
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("a thread panicked");
    }

    let r = try_open(&raw).unwrap();
    let committed = committed.lock().unwrap();
    let forgotten = forgotten.lock().unwrap();
    assert!(
        committed.len() >= 8,
        "round {seed}: only {} snapshots",
        committed.len()
    );
    let listed = r.repo().list_snapshots().unwrap();
    for (id, _) in &listed {
        assert!(
            committed.contains_key(id),
            "round {seed}: snapshot {} is visible but was never reported committed (or was forgotten)",
            id.short()
        );
    }
    for (id, data) in committed.iter() {
        let got = restores(&r, id).unwrap_or_else(|e| {
            panic!(
                "round {seed}: committed snapshot {} does not restore: {e}",
                id.short()
            )
        });
        assert!(
            got == *data,
            "round {seed}: snapshot {} differs",
            id.short()
        );
    }
    let report = r.repo().as_ref().clone().check(ReadData::All).unwrap();
    assert!(
        report.ok(),
        "round {seed}: check found {:?}",
        report.problems
    );
    // A final prune after everything settled removes what was forgotten.
    for _ in 0..2 {
        Repository::open(raw.clone(), b"pw")
            .unwrap()
            .prune(&PruneOptions {
                keep_delete: Duration::ZERO,
                ..Default::default()
            })
            .unwrap();
    }
    let r = try_open(&raw).unwrap();
    for (id, data) in committed.iter() {
        assert!(restores(&r, id).unwrap() == *data);
    }
    assert!(r.repo().as_ref().clone().check(ReadData::All).unwrap().ok());
    eprintln!(
        "round {seed}: {} committed, {} forgotten, {} failed backups",
        committed.len(),
        forgotten.len(),
        failures.load(Ordering::SeqCst)
    );
}

#[test]
fn eight_writers_with_forget_and_prune_lose_no_committed_snapshot_in_twenty_rounds() {
    let started = Instant::now();
    for seed in 1..=20u64 {
        // Grace periods longer than a backup here takes (the protocol's
        // assumption, format-spec §5.1), short enough that phase 2 runs
        // several times during the round while writers are busy.
        let keep_delete = Duration::from_millis([100, 250, 500][seed as usize % 3]);
        round(seed, keep_delete, Duration::from_millis(1500));
    }
    eprintln!("20 rounds in {:.1}s", started.elapsed().as_secs_f64());
}
