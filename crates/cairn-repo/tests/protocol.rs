//! The five ways protocol 1 lost data behind a "snapshot saved", each
//! reproduced step by step (format-spec §5): a store whose clock the test
//! controls ([`ClockStore`]), hooks that hold a process between two of its
//! steps, and slowed deletes. Each test ends with every reported snapshot
//! restoring byte-identical (or no snapshot), `check --read-data` clean and
//! the next prune accepting the repository.

use cairn_testkit::repo::{KDF, backup_bytes as backup, data};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_format::SnapshotId;
use cairn_format::config::Config;
use cairn_repo::check::ReadData;
use cairn_repo::{
    BackupOptions, IndexedRepository, Progress, PruneOptions, PruneReport, RepoError, Repository,
};
use cairn_testkit::ClockStore;
use object_store::ObjectStore;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn setup_clock() -> (Arc<ClockStore>, Arc<dyn ObjectStore>) {
    let mem: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let clock = ClockStore::new(mem);
    let s: Arc<dyn ObjectStore> = clock.clone();
    let mut cfg = Config::new_default(0);
    cfg.pack_target = 1 << 20;
    Repository::init(s.clone(), b"pw", cfg, KDF).unwrap();
    (clock, s)
}

fn repo(s: &Arc<dyn ObjectStore>) -> Repository {
    Repository::open(s.clone(), b"pw").unwrap()
}

/// A writer whose heartbeat runs every 20 ms (so a test that moves the
/// store's clock can let it beat after the move).
fn writer(s: &Arc<dyn ObjectStore>) -> IndexedRepository {
    let mut r = repo(s);
    r.protocol_mut().beat = Duration::from_millis(20);
    r.load_index_for_writing("backup").unwrap()
}

fn prune(s: &Arc<dyn ObjectStore>, keep_delete: Duration) -> PruneReport {
    repo(s)
        .prune(&PruneOptions {
            keep_delete,
            ..Default::default()
        })
        .unwrap()
}

fn restores(s: &Arc<dyn ObjectStore>, id: &SnapshotId) -> cairn_repo::Result<Vec<u8>> {
    let r = repo(s).load_index()?;
    let snap = r.repo().load_snapshot(id)?;
    let node = r
        .find_node(&snap.tree, b"/f")?
        .ok_or_else(|| RepoError::InvalidInput("no /f".into()))?;
    let mut out = Vec::new();
    r.dump_file(&node, &mut out)?;
    Ok(out)
}

/// `check --read-data` is clean, the next prune accepts the repository,
/// and every snapshot listed is one of `allowed` and restores to its data.
fn assert_sound(s: &Arc<dyn ObjectStore>, allowed: &[(SnapshotId, &[u8])], when: &str) {
    let report = repo(s).check(ReadData::All).unwrap();
    assert!(report.ok(), "{when}: check found {:?}", report.problems);
    for (id, _) in repo(s).list_snapshots().unwrap() {
        let d = allowed
            .iter()
            .find(|(a, _)| *a == id)
            .unwrap_or_else(|| panic!("{when}: unexpected snapshot {}", id.short()));
        let got = restores(s, &id)
            .unwrap_or_else(|e| panic!("{when}: snapshot {} does not restore: {e}", id.short()));
        assert!(got == d.1, "{when}: snapshot {} differs", id.short());
    }
    repo(s)
        .prune(&PruneOptions::default())
        .unwrap_or_else(|e| panic!("{when}: the next prune refused: {e}"));
}

/// Case 1: a backup outlasting the grace period on a non-empty repository.
/// Its packs were indexed but no snapshot used them yet when both phases of
/// a prune ran: protocol 1 failed the backup after writing an index object
/// that listed deleted packs, and the re-run "saved" a broken snapshot.
#[test]
fn case1_backup_outlasting_the_grace_period_is_saved_whole_and_so_is_its_rerun() {
    let (_, s) = setup_clock();
    let old = data(1, 1 << 20);
    let a = backup(&repo(&s).load_index().unwrap(), &old).unwrap();
    let new = data(2, 3 << 20);
    let s2 = s.clone();
    let r = repo(&s).load_index().unwrap();
    let first = r.backup_stream(
        &new[..],
        "f",
        &BackupOptions::default(),
        &Progress::default(),
        move || {
            // Both phases with a grace period this backup outlasts.
            prune(&s2, Duration::from_millis(100));
            std::thread::sleep(Duration::from_millis(150));
            prune(&s2, Duration::from_millis(100));
            Ok(())
        },
    );
    drop(r);
    let first = first.expect("the running backup's data is protected while it runs");
    assert_eq!(restores(&s, &first.id).unwrap(), new);
    // "Run the backup again": deduplicates, and is whole too.
    let again = backup(&repo(&s).load_index().unwrap(), &new).unwrap();
    assert_sound(&s, &[(a, &old), (first.id, &new), (again, &new)], "case 1");
}

/// Case 2: the first backup into an empty repository, with the default
/// grace period: a prune marks its uploaded but not yet indexed packs, the
/// store's clock passes a day (a host whose clock is two days ahead did the
/// same to protocol 1), and a second prune runs while the backup still
/// writes. The backup keeps beating, so its packs are held.
#[test]
fn case2_first_backup_into_an_empty_repository_keeps_its_packs_with_the_default_grace() {
    let (clock, s) = setup_clock();
    let w = writer(&s);
    let d = data(3, 6 << 20);
    // The second pack upload: the first is stored, not yet indexed.
    clock.on_put("data/", || {});
    let (s2, c2) = (s.clone(), clock.clone());
    let reports: Arc<Mutex<Vec<PruneReport>>> = Arc::default();
    let r2 = reports.clone();
    clock.on_put("data/", move || {
        r2.lock().unwrap().push(prune(&s2, DAY));
        c2.advance(2 * DAY);
        std::thread::sleep(Duration::from_millis(150)); // the backup beats
        r2.lock().unwrap().push(prune(&s2, DAY));
    });
    let id = backup(&w, &d).expect("saved");
    drop(w);
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 2, "the prunes ran during the backup");
    assert_eq!(reports[1].packs_deleted, 0, "{:?}", reports[1]);
    assert_eq!(restores(&s, &id).unwrap(), d);
    assert_sound(&s, &[(id, &d)], "case 2");
    // Once the backup is over, the garbage a prune may have marked goes
    // and the snapshot stays whole.
    prune(&s, DAY);
    clock.advance(2 * DAY);
    prune(&s, DAY);
    assert_sound(&s, &[(id, &d)], "case 2, after the backup");
}

/// Case 2 with a backup that stops beating (stopped process, suspended
/// host): the prune fences it, and the backup fails without a snapshot
/// instead of saving one whose packs are gone.
#[test]
fn case2_a_backup_that_stopped_beating_is_fenced_and_saves_nothing() {
    let (clock, s) = setup_clock();
    let mut r = repo(&s);
    r.protocol_mut().beat = Duration::from_secs(3600); // it will not beat again
    let w = r.load_index_for_writing("backup").unwrap();
    let d = data(4, 6 << 20);
    clock.on_put("data/", || {});
    let (s2, c2) = (s.clone(), clock.clone());
    let reports: Arc<Mutex<Vec<PruneReport>>> = Arc::default();
    let r2 = reports.clone();
    clock.on_put("data/", move || {
        r2.lock().unwrap().push(prune(&s2, DAY));
        c2.advance(2 * DAY);
        r2.lock().unwrap().push(prune(&s2, DAY));
        c2.advance(2 * DAY);
        r2.lock().unwrap().push(prune(&s2, DAY));
    });
    let e = backup(&w, &d).unwrap_err();
    drop(w);
    assert!(e.to_string().contains("taken for dead by a prune"), "{e}");
    let reports = reports.lock().unwrap();
    assert!(
        !reports[1].sessions_fenced.is_empty(),
        "the second prune fenced the stalled backup: {:?}",
        reports[1]
    );
    assert!(repo(&s).list_snapshots().unwrap().is_empty());
    assert_sound(&s, &[], "case 2, fenced");
}

/// Case 3: a backup whose reused blobs sit in packs that a phase 2 is
/// deleting commits while the deletions run (deletes slowed to widen the
/// window, as a phase 2 deleting many packs on S3 does anyway).
#[test]
fn case3_backup_committing_while_phase_two_deletes_stays_restorable() {
    let (clock, s) = setup_clock();
    let d = data(5, 4 << 20);
    let a = backup(&repo(&s).load_index().unwrap(), &d).unwrap();
    repo(&s).delete_snapshots(&[a]).unwrap(); // A's packs are unused now
    let w = writer(&s); // loads the index that still lists them
    prune(&s, Duration::ZERO); // phase 1 marks them
    clock.slow_deletes(Some(Duration::from_millis(30)));
    let s2 = s.clone();
    let pruner = std::thread::spawn(move || prune(&s2, Duration::ZERO));
    let (s3, packs_before) = (s.clone(), {
        cairn_repo::store::Store::new(s.clone())
            .list("data")
            .unwrap()
            .len()
    });
    let b = w
        .backup_stream(
            &d[..],
            "f",
            &BackupOptions::default(),
            &Progress::default(),
            move || {
                // Commit once phase 2 has started deleting (or has finished
                // without deleting anything).
                let st = cairn_repo::store::Store::new(s3.clone());
                for _ in 0..400 {
                    if st.list("data").unwrap().len() < packs_before {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            },
        )
        .map(|b| b.id);
    drop(w);
    let report = pruner.join().unwrap();
    clock.slow_deletes(None);
    match b {
        Ok(b) => {
            assert_eq!(
                restores(&s, &b).unwrap(),
                d,
                "a snapshot reported saved does not restore ({report:?})"
            );
            assert_sound(&s, &[(b, &d)], "case 3");
        }
        Err(e) => panic!("the backup should have been protected by its session: {e}"),
    }
}

/// Case 5: two prunes at once. The second is refused, naming the holder;
/// a lease whose holder died is taken over once it expired by store time,
/// or at once with `force_takeover`.
#[test]
fn case5_a_second_prune_is_refused_naming_the_holder_and_a_dead_holders_lease_expires() {
    let (clock, s) = setup_clock();
    let d = data(6, 2 << 20);
    let a = backup(&repo(&s).load_index().unwrap(), &d).unwrap();
    // Hold the first prune while it writes its new index.
    let second: Arc<Mutex<Option<cairn_repo::Result<PruneReport>>>> = Arc::default();
    let (s2, out) = (s.clone(), second.clone());
    clock.on_put("index/", move || {
        *out.lock().unwrap() = Some(repo(&s2).prune(&PruneOptions::default()));
    });
    repo(&s).prune(&PruneOptions::default()).unwrap();
    let e = second.lock().unwrap().take().unwrap().unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("another prune is running"), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    assert!(msg.contains("leases/prune/"), "{msg}");
    // A prune that dies keeps its lease: the next one is refused until it
    // expires by the store's clock.
    let mut r = repo(&s);
    r.protocol_mut().lease_ttl = Duration::from_secs(600);
    let crashed = r.clone();
    let clk = cairn_repo::session::StoreClock {
        store_ns: clock.now().timestamp_nanos_opt().unwrap(),
        skew_ns: 0,
        uncertainty: Duration::ZERO,
    };
    cairn_repo::session::Lease::acquire(&crashed, &clk, false)
        .unwrap()
        .abandon(); // the process "dies" holding it
    let e = repo(&s).prune(&PruneOptions::default()).unwrap_err();
    assert!(e.to_string().contains("another prune is running"), "{e}");
    clock.advance(Duration::from_secs(601));
    repo(&s)
        .prune(&PruneOptions::default())
        .expect("an expired lease is taken over");
    // And an operator can take over at once.
    cairn_repo::session::Lease::acquire(&repo(&s), &clk, true)
        .unwrap()
        .abandon();
    assert!(repo(&s).prune(&PruneOptions::default()).is_err());
    repo(&s)
        .prune(&PruneOptions {
            force_takeover: true,
            ..Default::default()
        })
        .unwrap();
    assert_sound(&s, &[(a, &d)], "case 5");
}

/// The damage protocol 1's case 1 left behind: an index that lists a pack
/// storage does not hold. A backup does not deduplicate against it (it
/// stores the data again and is whole), prune refuses while a snapshot needs
/// the missing pack and drops it from the index once none does, and
/// `repair index` rebuilds an index without it.
#[test]
fn an_index_listing_missing_packs_is_survived_and_repaired() {
    let (_, s) = setup_clock();
    let st = cairn_repo::store::Store::new(s.clone());
    let d = data(7, 3 << 20);
    let a = backup(&repo(&s).load_index().unwrap(), &d).unwrap();
    let (victim, _) = st
        .list("data")
        .unwrap()
        .into_iter()
        .max_by_key(|x| x.1)
        .unwrap();
    st.delete(&victim).unwrap();
    // Snapshot A needs blobs only the missing pack held: prune refuses,
    // naming it.
    let e = repo(&s).prune(&PruneOptions::default()).unwrap_err();
    assert!(e.to_string().contains(&victim), "{e}");
    // A backup of the same data: warned, not deduplicated, whole.
    let w = repo(&s).load_index_for_writing("backup").unwrap();
    let missing = w.index().missing_packs.clone();
    assert_eq!(missing.len(), 1, "{missing:?}");
    let b = backup(&w, &d).unwrap();
    drop(w);
    assert_eq!(restores(&s, &b).unwrap(), d);
    // A's blobs exist again (in B's packs): A restores, and prune drops the
    // missing pack from the index.
    assert_eq!(restores(&s, &a).unwrap(), d);
    let r = prune(&s, Duration::ZERO);
    assert_eq!(r.missing_packs_dropped.len(), 1, "{r:?}");
    repo(&s).repair_index(false).unwrap();
    assert_sound(&s, &[(a, &d), (b, &d)], "missing pack");
}

/// On a store that does not keep create-only writes create-only (a server
/// ignoring `If-None-Match`, or cairn's HEAD-before-write emulation), the
/// lease cannot keep two prunes apart: prune refuses, naming why and
/// `--single-pruner`, before it marks or deletes anything; a dry run still
/// reports (without probing), and with `single_pruner` the prune runs and
/// says what it relied on.
#[test]
fn prune_refuses_on_a_store_that_ignores_create_only_writes_unless_told_it_is_alone() {
    use cairn_repo::store::{Store, WriteOnce};
    use cairn_testkit::{FaultPlan, FaultyStore};
    let mem: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let lax: Arc<dyn ObjectStore> = FaultyStore::new(
        mem,
        FaultPlan {
            ignore_create_only: true,
            ..Default::default()
        },
    );
    let store = |w: WriteOnce| {
        let mut s = Store::new(lax.clone());
        s.write_once = w;
        s
    };
    let mut cfg = Config::new_default(0);
    cfg.pack_target = 1 << 20;
    Repository::init_store(store(WriteOnce::Server), b"pw", cfg, KDF).unwrap();
    let open = |w| Repository::open_store(store(w), b"pw").unwrap();
    let d = data(8, 3 << 20);
    let a = backup(&open(WriteOnce::Server).load_index().unwrap(), &d).unwrap();
    let b = backup(
        &open(WriteOnce::Server).load_index().unwrap(),
        &data(9, 3 << 20),
    )
    .unwrap();
    open(WriteOnce::Server).delete_snapshots(&[b]).unwrap();
    let now = PruneOptions {
        keep_delete: Duration::ZERO,
        ..Default::default()
    };
    let listing = |w| {
        let mut names: Vec<String> = store(w)
            .list("")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !n.starts_with("sessions/"))
            .collect();
        names.sort();
        names
    };
    for (w, why) in [
        (WriteOnce::Server, "accepted a second create-only write"),
        (WriteOnce::Emulated, "emulated with a HEAD"),
    ] {
        let before = listing(w);
        let e = open(w).prune(&now).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(why), "{msg}");
        assert!(msg.contains("--single-pruner"), "{msg}");
        assert_eq!(
            listing(w),
            before,
            "{w:?}: the refused prune changed nothing"
        );
        // A dry run takes no lease worth racing for: it runs, and where
        // the emulation is known it says a real prune would be refused.
        let dry = open(w)
            .prune(&PruneOptions {
                dry_run: true,
                ..now.clone()
            })
            .unwrap();
        if w == WriteOnce::Emulated {
            assert!(
                dry.warnings
                    .iter()
                    .any(|x| x.contains(why) && x.contains("a real prune is refused")),
                "{dry:?}"
            );
        }
    }
    let done = open(WriteOnce::Server)
        .prune(&PruneOptions {
            single_pruner: true,
            ..now.clone()
        })
        .unwrap();
    assert!(done.packs_marked > 0, "{done:?}");
    assert!(
        done.warnings
            .iter()
            .any(|x| x.contains("relied on no other prune running")),
        "{:?}",
        done.warnings
    );
    assert_sound(&lax, &[(a, &d)], "after the single pruner");
}
