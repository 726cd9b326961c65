//! One storage conformance suite, run against the in-memory store, local
//! disk, a real S3 server (moto), a real Azure Blob Storage server (Azurite)
//! and a GCS emulator (gcp-storage-emulator behind scripts/gcs-shim.py),
//! each started and stopped here: init, backup of a tree, an
//! incremental backup, restore byte-identical, write-once, forget, two
//! prunes, `check --read-data`, the prune protocol's store time, lease,
//! fencing and grace period with real waits, and the local cache. Then S3, Azure and GCS under
//! network faults (a proxy that answers 503, drops requests, loses answers to
//! writes that landed, cuts responses, and goes away for good): 50 (S3) and
//! 20 (Azure, GCS) backup attempts either commit a snapshot that restores
//! byte-identical or fail with an error naming the object and leave no
//! visible snapshot; the repository passes `check --read-data` every ten.

use cairn_testkit::repo::{KDF, data};

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_format::config::Config;
use cairn_repo::backend::{self, BackendOptions, ConditionalCreate};
use cairn_repo::check::ReadData;
use cairn_repo::session::{Lease, ProtocolTimes, Session};
use cairn_repo::store::Store;
use cairn_repo::{
    BackupOptions, BackupResult, IndexedRepository, Progress, PruneOptions, RepoError, Repository,
    RestoreOptions, RestoreProgress,
};
use cairn_testkit::azure::AzuriteServer;
use cairn_testkit::gcs::GcsServer;
use cairn_testkit::proxy::{FaultProxy, ProxyPlan};
use cairn_testkit::s3::S3Server;

/// A tree of files: small ones, a few MiB of random data, a compressible one.
fn make_tree(dir: &Path, seed: u64) {
    fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    for i in 0..40u64 {
        fs::write(
            dir.join(format!("sub/small-{i}")),
            data(seed * 100 + i, 100 + i as usize * 37),
        )
        .unwrap();
    }
    fs::write(dir.join("big"), data(seed, 5 << 20)).unwrap();
    fs::write(
        dir.join("sub/deeper/text"),
        "INSERT INTO t VALUES (1);\n".repeat(40_000),
    )
    .unwrap();
    fs::write(dir.join("empty"), b"").unwrap();
}

fn read_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn restore_and_compare(r: &IndexedRepository, id: &cairn_format::SnapshotId, src: &Path) {
    let snap = r.repo().load_snapshot(id).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("out");
    let report = r
        .restore(
            &snap.tree,
            &RestoreOptions {
                target: target.clone(),
                overwrite: false,
                ..Default::default()
            },
            &RestoreProgress::default(),
        )
        .unwrap();
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert!(
        read_tree(src) == read_tree(&restored),
        "restored tree differs from {src:?}"
    );
}

fn config() -> Config {
    let mut cfg = Config::new_default(0);
    cfg.pack_target = 1 << 20;
    cfg
}

fn open_store(location: &str, options: Vec<(String, String)>, cache: Option<PathBuf>) -> Store {
    backend::open(
        location,
        true,
        &BackendOptions {
            options,
            cache_dir: cache,
        },
    )
    .unwrap()
    .into_store()
}

/// Open with the test password.
fn repo(s: Store) -> Repository {
    Repository::open_store(s, b"pw").unwrap()
}

/// Open and load the index.
fn indexed(s: Store) -> IndexedRepository {
    repo(s).load_index().unwrap()
}

/// Back up one directory with default options, and end the writer session
/// (as the process of `cairn backup` does when it exits).
fn backup(r: &IndexedRepository, src: &Path) -> cairn_repo::Result<BackupResult> {
    let b = r.backup_paths(
        &[src.to_path_buf()],
        &BackupOptions::default(),
        &Progress::default(),
    );
    r.end_session();
    b
}

/// `check --read-data` finds nothing.
fn assert_checks_clean(s: Store, when: &str) {
    let report = repo(s).check(ReadData::All).unwrap();
    assert!(report.ok(), "{when}: {:?}", report.problems);
}

/// The server's options, but through `proxy`, one connection per request
/// (so the proxy's faults hit single requests), plus `extra`.
fn via_proxy(
    server: &[(String, String)],
    proxy: &FaultProxy,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut opts = server.to_vec();
    opts[0].1 = proxy.endpoint();
    opts.push(("pool_max_idle_per_host".into(), "0".into()));
    opts.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    opts
}

/// The suite. `reopen` gives a fresh store over the same location.
fn suite(reopen: &dyn Fn() -> Store) {
    let store = reopen();
    assert_eq!(
        backend::probe_conditional_create(&store).unwrap(),
        ConditionalCreate::Enforced
    );
    Repository::init_store(store, b"pw", config(), KDF).unwrap();
    // A second init on the same location is refused.
    assert!(Repository::init_store(reopen(), b"pw", config(), KDF).is_err());
    assert!(matches!(
        Repository::open_store(reopen(), b"wrong"),
        Err(RepoError::WrongPassword)
    ));

    let src = tempfile::tempdir().unwrap();
    let src = src.path().join("tree");
    make_tree(&src, 1);
    let r = indexed(reopen());
    let first = backup(&r, &src).unwrap();
    // Several packs (how many depends on the order parallel chunks arrive in).
    assert!(first.stats.packs >= 3, "{:?}", first.stats.packs);
    restore_and_compare(&r, &first.id, &src);

    // Write-once: an existing object is never replaced.
    let (pack, _) = r
        .repo()
        .store()
        .list("data")
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    assert!(matches!(
        r.repo().store().put_new(&pack, b"other".to_vec()),
        Err(RepoError::AlreadyExists { .. })
    ));

    // Incremental: one file changed; unchanged content is not stored again.
    fs::write(src.join("sub/small-3"), b"changed").unwrap();
    let r = indexed(reopen());
    let second = backup(&r, &src).unwrap();
    assert!(
        second.stats.bytes_added < 64 << 10,
        "{}",
        second.stats.bytes_added
    );
    restore_and_compare(&r, &second.id, &src);

    // Forget the first, prune twice (mark, then delete), check everything.
    repo(reopen()).delete_snapshots(&[first.id]).unwrap();
    let opts = PruneOptions {
        keep_delete: Duration::ZERO,
        ..Default::default()
    };
    repo(reopen()).prune(&opts).unwrap();
    repo(reopen()).prune(&opts).unwrap();
    assert_checks_clean(reopen(), "at the end");
    let r = indexed(reopen());
    assert_eq!(r.repo().list_snapshots().unwrap().len(), 1);
    restore_and_compare(&r, &second.id, &src);
    protocol_suite(reopen, &src, &second.id);
}

/// A repository whose protocol runs in seconds: no beat of its own (a
/// writer that stops beating), stale after 2 s, a lease of 10 s (long
/// enough that a prune right after a holder died still finds it held, even
/// on a slow emulator).
fn quick(s: Store) -> Repository {
    let mut r = repo(s);
    *r.protocol_mut() = ProtocolTimes {
        beat: Duration::from_secs(3600),
        stale: Duration::from_secs(2),
        lease_ttl: QUICK_LEASE,
    };
    r
}

const QUICK_LEASE: Duration = Duration::from_secs(10);

/// Wait out a protocol time by the store's clock, plus its precision
/// (GCS's `Last-Modified` has whole seconds).
fn wait_out(d: Duration) {
    std::thread::sleep(d + Duration::from_millis(1500));
}

/// The prune protocol's store-time and lease behaviour on this backend
/// (format-spec §5), with real waits: the store's clock read from a write,
/// four prunes racing for the lease (one wins, create-only), a dead
/// holder's lease taken over once expired by store time, a backup that
/// stopped beating fenced and failing without a snapshot, and deletion
/// markers held until their grace period passed by store time.
fn protocol_suite(reopen: &dyn Fn() -> Store, src: &Path, kept: &cairn_format::SnapshotId) {
    // The store's clock.
    let r = quick(reopen());
    let session = Session::announce(&r, "conformance").unwrap();
    let c1 = session.store_now().unwrap();
    assert!(
        c1.skew_ns.unsigned_abs() < 5_000_000_000,
        "the store's clock is this host's: {c1:?}"
    );
    std::thread::sleep(Duration::from_millis(1200));
    let c2 = session.store_now().unwrap();
    assert!(
        c2.store_ns > c1.store_ns,
        "store time moves on: {c1:?} {c2:?}"
    );
    session.end();

    // Four prunes race for the lease: exactly one takes it.
    let barrier = std::sync::Barrier::new(4);
    let outcomes: Vec<cairn_repo::Result<Lease>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let r = quick(reopen());
                let barrier = &barrier;
                sc.spawn(move || {
                    barrier.wait();
                    Lease::acquire(&r, &c2, false)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (won, lost): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|o| o.is_ok());
    let lost: Vec<String> = lost
        .into_iter()
        .map(|e| e.err().unwrap().to_string())
        .collect();
    assert_eq!(won.len(), 1, "one lease holder: {lost:?}");
    for msg in lost {
        assert!(msg.contains("another prune"), "{msg}");
    }
    // Its holder dies; the next prune is refused until the lease expired by
    // store time, then takes it over.
    won.into_iter().next().unwrap().unwrap().abandon();
    let e = quick(reopen()).prune(&PruneOptions::default()).unwrap_err();
    assert!(e.to_string().contains("another prune is running"), "{e}");
    wait_out(QUICK_LEASE);
    quick(reopen())
        .prune(&PruneOptions::default())
        .expect("an expired lease is taken over");

    // A backup that stopped beating is fenced by a prune once stale, and
    // fails without a snapshot.
    let w = quick(reopen()).load_index_for_writing("backup").unwrap();
    wait_out(Duration::from_secs(2));
    let fenced = quick(reopen()).prune(&PruneOptions::default()).unwrap();
    assert!(!fenced.sessions_fenced.is_empty(), "{fenced:?}");
    let e = backup(&w, src).unwrap_err();
    assert!(e.to_string().contains("taken for dead by a prune"), "{e}");
    drop(w);
    // What that prune marked (the fenced backup's uploads) is deleted now,
    // so that the next part starts without pending markers.
    let now = PruneOptions {
        keep_delete: Duration::ZERO,
        ..Default::default()
    };
    quick(reopen()).prune(&now).unwrap();
    quick(reopen()).prune(&now).unwrap();

    // Markers are due by store time: a new snapshot, forgotten, has its
    // packs marked, kept while the grace period runs, deleted after.
    let extra = tempfile::tempdir().unwrap();
    fs::write(extra.path().join("new"), data(77, 3 << 20)).unwrap();
    let gone = backup(&indexed(reopen()), extra.path()).unwrap();
    repo(reopen()).delete_snapshots(&[gone.id]).unwrap();
    // Long enough that the next prune is early even on a slow emulator
    // under a loaded machine.
    let grace = PruneOptions {
        keep_delete: Duration::from_secs(20),
        ..Default::default()
    };
    let marked = quick(reopen()).prune(&grace).unwrap();
    assert!(marked.packs_marked > 0, "{marked:?}");
    assert_eq!(marked.packs_deleted, 0, "{marked:?}");
    let early = quick(reopen()).prune(&grace).unwrap();
    assert!(early.markers_pending > 0, "{early:?}");
    assert_eq!(early.packs_deleted, 0, "{early:?}");
    wait_out(Duration::from_secs(20));
    let due = quick(reopen()).prune(&grace).unwrap();
    assert!(due.packs_deleted > 0, "{due:?}");
    assert_checks_clean(reopen(), "after the protocol suite");
    let r = indexed(reopen());
    assert_eq!(r.repo().list_snapshots().unwrap().len(), 1);
    restore_and_compare(&r, kept, src);
}

#[test]
fn conformance_in_memory() {
    let mem = backend::open("memory:", true, &Default::default())
        .unwrap()
        .store;
    suite(&|| Store::new(mem.clone()));
}

#[test]
fn conformance_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("repo").to_str().unwrap().to_string();
    suite(&|| open_store(&loc, vec![], None));
}

#[test]
fn conformance_s3() {
    let s3 = S3Server::start().unwrap();
    s3.create_bucket("conformance").unwrap();
    suite(&|| open_store("s3://conformance/some/prefix", s3.options(), None));
    // The prefix kept the repository in its place.
    let whole = open_store("s3://conformance", s3.options(), None);
    assert!(whole.exists("some/prefix/config").unwrap());
    assert!(!whole.exists("config").unwrap());
}

#[test]
fn s3_cache_serves_index_snapshots_and_trees_and_is_verified() {
    let s3 = S3Server::start().unwrap();
    s3.create_bucket("cache").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let loc = "s3://cache/repo";
    let direct = || open_store(loc, s3.options(), None);
    Repository::init_store(direct(), b"pw", config(), KDF).unwrap();
    let src = tempfile::tempdir().unwrap();
    let src = src.path().join("tree");
    make_tree(&src, 2);
    // Through a proxy that counts connections (no faults): one per request.
    let proxy = FaultProxy::start(s3.port, ProxyPlan::default());
    let opts = via_proxy(&s3.options(), &proxy, &[]);
    let cached = || open_store(loc, opts.clone(), Some(cache.path().to_path_buf()));
    let r = indexed(cached());
    let b = backup(&r, &src).unwrap();
    drop(r);
    // Warm: listing snapshots, loading the index and walking the trees.
    let walk = |r: &IndexedRepository| {
        let snaps = r.repo().list_snapshots().unwrap();
        assert_eq!(snaps.len(), 1);
        assert!(
            r.find_node(
                &snaps[0].1.tree,
                format!("{}/sub/deeper/text", src.display()).as_bytes()
            )
            .unwrap()
            .is_some()
        );
    };
    let r = indexed(cached());
    walk(&r);
    drop(r);
    let before = proxy.connections();
    let r = indexed(cached());
    walk(&r);
    let warm = proxy.connections() - before;
    drop(r);
    // Uncached, the same work downloads the index, the snapshot and the tree packs.
    let before = proxy.connections();
    let r = indexed(open_store(loc, opts.clone(), None));
    walk(&r);
    let cold = proxy.connections() - before;
    // Warm: config, the key listing and key, the snapshot and index
    // listings, and the listing of data/ that keeps the cache from serving
    // packs the repository no longer holds (checked below).
    assert!(warm <= 6, "warm open+list+walk made {warm} requests");
    assert!(cold >= warm + 3, "cold {cold} vs warm {warm}");
    // A damaged cache file is detected, dropped and fetched again.
    let snap_name = format!("snapshots/{}", b.id.to_hex());
    let cached_file = fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path()
        .join(&snap_name);
    fs::write(&cached_file, b"tampered").unwrap();
    let r = repo(cached());
    assert_eq!(r.load_snapshot(&b.id).unwrap().tree, b.snapshot.tree);
    assert_ne!(fs::read(&cached_file).unwrap(), b"tampered");
    // A forgotten snapshot leaves the cache at the next listing.
    r.delete_snapshots(&[b.id]).unwrap();
    assert!(r.list_snapshots().unwrap().is_empty());
    assert!(!cached_file.exists());
    // A tree pack gone from the repository is not served from a warm cache:
    // reading the tree fails, naming the pack.
    let b = backup(&indexed(cached()), &src).unwrap();
    let r = indexed(cached());
    walk(&r);
    drop(r);
    let d = direct();
    let tree_pack = d
        .list("data")
        .unwrap()
        .into_iter()
        .map(|x| x.0)
        .find(|n| {
            fs::read_dir(cache.path())
                .unwrap()
                .flatten()
                .any(|e| e.path().join(n).exists())
        })
        .expect("a tree pack in the cache");
    d.delete(&tree_pack).unwrap();
    let r = indexed(cached());
    let e = r
        .find_node(
            &b.snapshot.tree,
            format!("{}/sub/deeper/text", src.display()).as_bytes(),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("not in any index") || e.to_string().contains(&tree_pack),
        "{e}"
    );
}

/// `attempts` backups of a growing tree through `proxy` (options `opts`),
/// faults injected into each and every fifth cut off for good: each either
/// commits a snapshot that restores byte-identical or fails naming an
/// object and leaving the snapshots as they were; `check --read-data` is
/// clean every ten attempts. Returns (committed, failed).
fn backups_under_network_faults(
    loc: &str,
    direct: &dyn Fn() -> Store,
    proxy: &FaultProxy,
    opts: Vec<(String, String)>,
    attempts: u64,
) -> (usize, usize) {
    Repository::init_store(direct(), b"pw", config(), KDF).unwrap();
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("tree");
    make_tree(&src, 3);
    let (mut committed, mut failed) = (Vec::new(), 0);
    for attempt in 0..attempts {
        // New content each time, so that every attempt uploads.
        fs::write(
            src.join(format!("new-{attempt}")),
            data(1000 + attempt, 1_500_000),
        )
        .unwrap();
        let gone = attempt % 5 == 4;
        proxy.set_plan(ProxyPlan {
            unavailable_per_mille: 40,
            drop_request_per_mille: 20,
            lose_response_per_mille: 30,
            cut_response_per_mille: 20,
            latency: Duration::from_millis(attempt % 3),
            stop_after: gone.then(|| proxy.connections() + 5 + attempt),
            seed: attempt,
        });
        let before = repo(direct()).list_snapshot_ids().unwrap();
        let r = Repository::open_store(open_store(loc, opts.clone(), None), b"pw")
            .and_then(|r| r.load_index_for_writing("backup"))
            .and_then(|r| backup(&r, &src));
        proxy.set_plan(ProxyPlan::default());
        let after = repo(direct()).list_snapshot_ids().unwrap();
        match r {
            Ok(b) => {
                assert_eq!(after.len(), before.len() + 1, "attempt {attempt}");
                let r = indexed(direct());
                restore_and_compare(&r, &b.id, &src);
                committed.push(b.id);
            }
            Err(e) => {
                failed += 1;
                assert!(
                    gone,
                    "attempt {attempt} failed without the network going away: {e}"
                );
                let msg = e.to_string();
                assert!(
                    msg.contains("config")
                        || msg.contains("keys")
                        || msg.contains("data/")
                        || msg.contains("index")
                        || msg.contains("snapshots")
                        || msg.contains("sessions/")
                        || msg.contains("deletions"),
                    "attempt {attempt}: the error does not name an object: {msg}"
                );
                assert_eq!(
                    after, before,
                    "attempt {attempt}: a failed backup changed the snapshots"
                );
            }
        }
        if attempt % 10 == 9 || attempt + 1 == attempts {
            assert_checks_clean(direct(), &format!("after attempt {attempt}"));
        }
    }
    eprintln!(
        "{loc}: {attempts} attempts: {} committed, {failed} failed cleanly, 0 broken; {} faults injected over {} connections",
        committed.len(),
        proxy.faults(),
        proxy.connections()
    );
    assert!(
        committed.len() as u64 >= attempts * 3 / 5,
        "only {} attempts committed",
        committed.len()
    );
    assert!(failed >= 1, "no attempt met the network going away");
    // Every committed snapshot still restores.
    let r = indexed(direct());
    for id in committed.iter().rev().take(3) {
        let snap = r.repo().load_snapshot(id).unwrap();
        assert!(r.find_node(&snap.tree, b"/").is_ok());
    }
    (committed.len(), failed)
}

#[test]
fn s3_backups_under_network_faults_commit_whole_or_nothing() {
    let s3 = S3Server::start().unwrap();
    s3.create_bucket("faults").unwrap();
    let loc = "s3://faults/repo";
    let proxy = FaultProxy::start(s3.port, ProxyPlan::default());
    // Keep the cloud client's own patience short so that the network "gone
    // for good" attempts end quickly.
    let opts = via_proxy(&s3.options(), &proxy, &[("retry_timeout", "4")]);
    backups_under_network_faults(
        loc,
        &|| open_store(loc, s3.options(), None),
        &proxy,
        opts,
        50,
    );
}

#[test]
fn azure_backups_under_network_faults_commit_whole_or_nothing() {
    let az = AzuriteServer::start().unwrap();
    az.create_container("faults").unwrap();
    let loc = "az://faults/repo";
    let proxy = FaultProxy::start(az.port, ProxyPlan::default());
    let mut opts = via_proxy(&az.options(), &proxy, &[("retry_timeout", "4")]);
    opts[0].1 = format!("{}/{}", proxy.endpoint(), cairn_testkit::azure::ACCOUNT);
    backups_under_network_faults(
        loc,
        &|| open_store(loc, az.options(), None),
        &proxy,
        opts,
        20,
    );
}

#[test]
fn gcs_backups_under_network_faults_commit_whole_or_nothing() {
    let gcs = GcsServer::start().unwrap();
    gcs.create_bucket("faults").unwrap();
    let loc = "gs://faults/repo";
    let proxy = FaultProxy::start(gcs.port, ProxyPlan::default());
    let opts = via_proxy(&gcs.options(), &proxy, &[("retry_timeout", "4")]);
    backups_under_network_faults(
        loc,
        &|| open_store(loc, gcs.options(), None),
        &proxy,
        opts,
        20,
    );
}

#[test]
fn conformance_gcs() {
    let gcs = GcsServer::start().unwrap();
    gcs.create_bucket("conformance").unwrap();
    suite(&|| open_store("gs://conformance/some/prefix", gcs.options(), None));
    let whole = open_store("gs://conformance", gcs.options(), None);
    assert!(whole.exists("some/prefix/config").unwrap());
    assert!(!whole.exists("config").unwrap());
}

#[test]
fn conformance_azure() {
    let az = AzuriteServer::start().unwrap();
    az.create_container("conformance").unwrap();
    suite(&|| open_store("az://conformance/some/prefix", az.options(), None));
    let whole = open_store("az://conformance", az.options(), None);
    assert!(whole.exists("some/prefix/config").unwrap());
    assert!(!whole.exists("config").unwrap());
}

/// An interrupted backup's uploads are indexed (every 16 packs) and the next
/// backup reuses them instead of uploading them again.
#[test]
fn s3_backup_cut_off_by_the_network_is_reused_by_the_next() {
    let s3 = S3Server::start().unwrap();
    s3.create_bucket("resume").unwrap();
    let loc = "s3://resume/repo";
    let direct = || open_store(loc, s3.options(), None);
    Repository::init_store(direct(), b"pw", config(), KDF).unwrap();
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("big");
    fs::create_dir_all(&src).unwrap();
    for i in 0..12 {
        fs::write(src.join(format!("f{i}")), data(50 + i, 6 << 20)).unwrap();
    }
    let proxy = FaultProxy::start(s3.port, ProxyPlan::default());
    let opts = via_proxy(&s3.options(), &proxy, &[("retry_timeout", "3")]);
    // The network goes away after 40 requests: about 34 of the ~50 packs are
    // uploaded, 32 of them indexed (an index object every 16 packs).
    proxy.set_plan(ProxyPlan {
        stop_after: Some(proxy.connections() + 40),
        ..Default::default()
    });
    let cut = Repository::open_store(open_store(loc, opts.clone(), None), b"pw")
        .and_then(|r| r.load_index_for_writing("backup"))
        .and_then(|r| backup(&r, &src));
    assert!(cut.is_err(), "the backup should have been cut off");
    assert!(repo(direct()).list_snapshot_ids().unwrap().is_empty());
    let r = indexed(direct());
    let b = backup(&r, &src).unwrap();
    let total = 72u64 << 20;
    eprintln!(
        "after the cut: {} of {} bytes uploaded again",
        b.stats.bytes_added, total
    );
    assert!(
        b.stats.bytes_added < total * 3 / 4,
        "the next backup uploaded {} of {total} bytes again",
        b.stats.bytes_added
    );
    restore_and_compare(&r, &b.id, &src);
    assert_checks_clean(direct(), "at the end");
}
