//! Prune against concurrent backups, driven step by step through the phase
//! boundaries of both (format-spec §5.1), on the in-memory store.

use cairn_testkit::repo::{data, open, setup};

use std::sync::Arc;
use std::time::Duration;

use cairn_format::{BlobKind, SnapshotId};
use cairn_repo::store::Store;
use cairn_repo::{BackupOptions, IndexedRepository, Progress, PruneOptions, Repository};
use object_store::ObjectStore;

fn backup(r: &IndexedRepository, d: &[u8]) -> SnapshotId {
    cairn_testkit::repo::backup_bytes(r, d).unwrap()
}

fn assert_restores(s: &Arc<dyn ObjectStore>, id: &SnapshotId, expected: &[u8]) {
    let r = open(s);
    let snap = r.repo().load_snapshot(id).unwrap();
    let node = r.find_node(&snap.tree, b"/f").unwrap().unwrap();
    let mut out = Vec::new();
    r.dump_file(&node, &mut out).unwrap();
    assert!(out == expected, "snapshot {} does not restore", id.short());
}

fn phase2() -> PruneOptions {
    PruneOptions {
        keep_delete: Duration::ZERO,
        ..Default::default()
    }
}

fn pack_count(s: &Arc<dyn ObjectStore>) -> usize {
    Store::new(s.clone()).list("data").unwrap().len()
}

/// A backup that loaded its index before a prune marked the packs it then
/// reuses: it re-lists them after committing, so phase 2 keeps them.
#[test]
fn backup_reusing_blobs_that_prune_marks_meanwhile_stays_restorable() {
    let s = setup();
    let d = data(1, 3 << 20);
    let a = backup(&open(&s), &d);
    open(&s).repo().delete_snapshots(&[a]).unwrap(); // forget A: its blobs are unused
    // Backup B's session starts: its index still lists A's packs.
    let writer = Repository::open(s.clone(), b"pw")
        .unwrap()
        .load_index_for_writing("backup")
        .unwrap();
    let r = open(&s).prune(&PruneOptions::default()).unwrap(); // phase 1 marks them
    assert!(r.packs_marked >= 1, "{r:?}");
    let b = backup(&writer, &d); // B reuses every blob from marked packs
    // Restorable at once, during the grace period: B re-listed the marked packs.
    assert_restores(&s, &b, &d);
    let data_packs_before = pack_count(&s);
    let r = open(&s).prune(&phase2()).unwrap(); // phase 2
    // Only A's own tree pack (B wrote a new tree) may go; B's data stays.
    assert!(
        r.packs_deleted <= 1 && r.bytes_deleted < 4096,
        "phase 2 deleted data a committed snapshot needs: {r:?}"
    );
    assert!(pack_count(&s) >= data_packs_before - 1);
    assert_restores(&s, &b, &d);
    drop(writer); // B's session ends
    // Once nothing needs them any more, everything goes away.
    open(&s).repo().delete_snapshots(&[b]).unwrap();
    open(&s).prune(&PruneOptions::default()).unwrap();
    open(&s).prune(&phase2()).unwrap();
    assert_eq!(pack_count(&s), 0);
}

/// A snapshot that appears after phase 1 without the backup's re-check (for
/// example written by a crashed backup's last step): phase 2 recomputes what
/// is used and recovers the pack instead of deleting it.
#[test]
fn phase_two_recovers_marked_packs_that_a_new_snapshot_needs() {
    let s = setup();
    let d = data(2, 2 << 20);
    let a = backup(&open(&s), &d);
    let snap = open(&s).repo().load_snapshot(&a).unwrap();
    open(&s).repo().delete_snapshots(&[a]).unwrap();
    open(&s).prune(&PruneOptions::default()).unwrap(); // marks A's packs
    let again = open(&s).repo().save_snapshot(&snap).unwrap(); // same content, new object
    let r = open(&s).prune(&phase2()).unwrap();
    assert!(r.packs_recovered >= 1, "{r:?}");
    assert_eq!(r.packs_deleted, 0, "{r:?}");
    assert_restores(&s, &again, &d);
}

/// Packs no index lists (a backup that died before writing its index) are
/// marked, and deleted by the next prune after the grace period.
#[test]
fn leftover_packs_of_a_failed_backup_are_removed_in_two_phases() {
    let s = setup();
    let keep = data(3, 1 << 20);
    let k = backup(&open(&s), &keep);
    let r = open(&s);
    let _ = r.backup_stream(
        &data(4, 2 << 20)[..],
        "f",
        &BackupOptions::default(),
        &Progress::default(),
        || Err(cairn_repo::RepoError::InvalidInput("dump failed".into())),
    );
    // The failed backup's process is done: its session ends (while it
    // lasts, prune holds what the session may rely on).
    drop(r);
    let before = pack_count(&s);
    let p1 = open(&s).prune(&PruneOptions::default()).unwrap();
    assert!(p1.packs_marked >= 1, "{p1:?}");
    assert_eq!(pack_count(&s), before, "phase 1 must not delete");
    let p2 = open(&s).prune(&phase2()).unwrap();
    assert_eq!(p2.packs_deleted, p1.packs_marked, "{p2:?}");
    assert_restores(&s, &k, &keep);
}

/// Repacking: a pack with a small used part is rewritten; the used blobs
/// survive, the rest is reclaimed.
#[test]
fn mostly_unused_packs_are_repacked() {
    let s = setup();
    // One stream of 3 MiB where the second snapshot keeps only the first MiB
    // (identical prefix chunks), so the pack holding both halves is partly used.
    let full = data(5, 3 << 20);
    let a = backup(&open(&s), &full);
    let prefix = full[..1 << 20].to_vec();
    let b = backup(&open(&s), &prefix);
    open(&s).repo().delete_snapshots(&[a]).unwrap();
    let r = open(&s).prune(&PruneOptions::default()).unwrap();
    open(&s).prune(&phase2()).unwrap();
    assert_restores(&s, &b, &prefix);
    assert!(r.packs_marked >= 1, "{r:?}");
}

/// A pack being repacked is read window by window; damage where prune copies
/// nothing from (an unused blob) is caught by the pack's hash, damage inside a
/// copied blob by that blob's check. Either way the prune fails naming the
/// pack and writes no index: every index object and pack is still there.
#[test]
fn repacking_a_damaged_pack_fails_naming_it_and_writes_no_index() {
    for damage_used in [false, true] {
        // Small chunks, so that a 1 MiB pack holds dozens of blobs and spans
        // several 256 KiB read windows. Chunk boundaries follow each
        // repository's secret gear seed, so a pack holding used and unused
        // blobs is not certain in one repository: up to ten are made.
        let (s, b, prefix, r, pack, blobs) = (0..10)
            .find_map(|_| {
                let s: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
                let mut cfg = cairn_format::config::Config::new_default(0);
                (cfg.pack_target, cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max) =
                    (1 << 20, 8 << 10, 32 << 10, 128 << 10);
                Repository::init(s.clone(), b"pw", cfg, cairn_testkit::repo::KDF).unwrap();
                let full = data(5, 3 << 20);
                let a = backup(&open(&s), &full);
                let prefix = full[..1 << 20].to_vec();
                let b = backup(&open(&s), &prefix);
                open(&s).repo().delete_snapshots(&[a]).unwrap();
                let r = open(&s);
                let snaps = r.repo().list_snapshots().unwrap();
                assert_eq!(snaps.len(), 1);
                let used = r.used_blobs(&snaps).unwrap();
                // A pack holding used and unused data blobs: the one prune repacks.
                let mut by_pack: std::collections::BTreeMap<u32, Vec<_>> = Default::default();
                for (id, loc) in r.index().iter(BlobKind::Data) {
                    by_pack
                        .entry(loc.pack)
                        .or_default()
                        .push((used.contains(&(BlobKind::Data, id)), loc));
                }
                let (pack, blobs) = by_pack
                    .into_iter()
                    .find(|(_, v)| v.iter().any(|b| b.0) && v.iter().any(|b| !b.0))?;
                Some((s, b, prefix, r, pack, blobs))
            })
            .expect("a partly used pack in one of ten repositories");
        let target = blobs.iter().find(|b| b.0 == damage_used).unwrap().1;
        let name = r.pack_name(pack);
        let store = Store::new(s.clone());
        let mut bytes = store.get(&name).unwrap().to_vec();
        bytes[(target.offset + target.length / 2) as usize] ^= 0x20;
        let path = object_store::path::Path::from(name.as_str());
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(object_store::ObjectStoreExt::put(&*s, &path, bytes.into()))
            .unwrap();
        let before = (store.list("index").unwrap(), store.list("data").unwrap());
        drop(r);

        // Every partly used pack is repacked (chunk boundaries depend on the
        // repository's secret gear seed, so which packs are mostly unused
        // varies from run to run).
        let every_partly_used = PruneOptions {
            max_unused: 0.0,
            ..Default::default()
        };
        let err = open(&s).prune(&every_partly_used).unwrap_err().to_string();
        assert!(err.contains(&name), "damage_used={damage_used}: {err}");
        if damage_used {
            assert!(err.contains("at offset"), "{err}");
        } else {
            assert!(err.contains("do not hash to its name"), "{err}");
        }
        let after = (store.list("index").unwrap(), store.list("data").unwrap());
        assert_eq!(after.0, before.0, "no index written or removed");
        assert!(
            before.1.iter().all(|p| after.1.contains(p)),
            "no pack removed"
        );
        if !damage_used {
            assert_restores(&s, &b, &prefix);
        }
    }
}

/// The critical boundary of a backup: its packs and index are written, its
/// snapshot is not. A prune's phase 1 there sees the new packs as unused and
/// marks them; the backup re-lists them when it commits.
#[test]
fn prune_between_a_backups_index_and_its_snapshot() {
    let s = setup();
    let d = data(6, 2 << 20);
    let writer = open(&s);
    let r = writer
        .backup_stream(
            &d[..],
            "f",
            &BackupOptions::default(),
            &Progress::default(),
            || {
                let p = open(&s).prune(&PruneOptions::default()).unwrap();
                assert!(
                    p.packs_marked >= 1,
                    "phase 1 should mark the uncommitted backup's packs: {p:?}"
                );
                Ok(())
            },
        )
        .unwrap();
    assert_restores(&s, &r.id, &d); // at once, during the grace period
    let p2 = open(&s).prune(&phase2()).unwrap();
    assert_eq!(p2.packs_deleted, 0, "{p2:?}");
    assert_restores(&s, &r.id, &d);
}

/// A backup that outlasts the grace period: both phases run between its index
/// and its snapshot. Protocol 1 failed it ("run the backup again"); protocol
/// 2 holds the markers while the backup's session runs, so it is saved and
/// restores, during and after the deletions (format-spec §5.3).
#[test]
fn backup_outlasting_the_grace_period_is_saved_and_restores() {
    let s = setup();
    let old = data(7, 1 << 20);
    let a = backup(&open(&s), &old); // gives the writer an index to load
    let writer = open(&s);
    let new = data(8, 2 << 20);
    let b = writer
        .backup_stream(
            &new[..],
            "f",
            &BackupOptions::default(),
            &Progress::default(),
            || {
                open(&s).prune(&PruneOptions::default()).unwrap();
                let p2 = open(&s).prune(&phase2()).unwrap();
                assert!(!p2.markers_held.is_empty(), "{p2:?}");
                assert_eq!(p2.packs_deleted, 0, "{p2:?}");
                Ok(())
            },
        )
        .unwrap();
    drop(writer);
    assert_restores(&s, &b.id, &new);
    open(&s).prune(&phase2()).unwrap();
    open(&s).prune(&phase2()).unwrap();
    assert_restores(&s, &b.id, &new);
    assert_restores(&s, &a, &old);
    assert_eq!(open(&s).repo().list_snapshots().unwrap().len(), 2);
}

/// Run phase 1 of a prune that pauses before its first write under `prefix`;
/// during the pause a backup that loaded its index before the prune reuses
/// the blobs the prune is about to mark. That backup must be restorable when
/// the prune returns and after phase 2.
fn prune_paused_at(prefix: &str) {
    let s = setup();
    let d = data(9, 2 << 20);
    let a = backup(&open(&s), &d);
    open(&s).repo().delete_snapshots(&[a]).unwrap(); // A's blobs are unused now
    let writer = open(&s); // loaded before the prune: still sees A's packs
    let committed: Arc<std::sync::Mutex<Option<SnapshotId>>> = Arc::default();
    let (c2, d2) = (committed.clone(), d.clone());
    // A barrier inside prune's own phases: the hook runs before the
    // prune's first write under `prefix`.
    let paused = cairn_testkit::ClockStore::new(s.clone());
    paused.on_put(prefix, move || {
        let id = backup(&writer, &d2); // reuses every blob of A
        *c2.lock().unwrap() = Some(id);
    });
    let pruner = Repository::open(paused, b"pw")
        .unwrap()
        .load_index()
        .unwrap();
    let r = pruner.prune(&PruneOptions::default()).unwrap();
    let b = committed
        .lock()
        .unwrap()
        .expect("the backup ran during the pause");
    assert!(r.packs_marked >= 1, "{r:?}");
    assert_restores(&s, &b, &d); // during the grace period
    open(&s).prune(&phase2()).unwrap();
    assert_restores(&s, &b, &d); // and after the deletions
}

#[test]
fn backup_between_prune_deciding_and_writing_its_index() {
    prune_paused_at("index/");
}

#[test]
fn backup_between_prune_writing_its_index_and_its_marker() {
    prune_paused_at("deletions/");
}
