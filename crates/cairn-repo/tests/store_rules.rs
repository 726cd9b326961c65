//! Storage rules every backend must honour, run against the in-memory store
//! and the local filesystem: write-once objects, packs → index → snapshot
//! ordering, and a backup/restore round trip through the library API.

use cairn_testkit::repo::KDF;

use std::sync::Arc;

use cairn_format::PackId;
use cairn_format::config::Config;
use cairn_repo::store::{self, Store};
use cairn_repo::{BackupOptions, Progress, RepoError, Repository};
use object_store::ObjectStore;

fn stores() -> Vec<(
    &'static str,
    Arc<dyn ObjectStore>,
    Option<tempfile::TempDir>,
)> {
    let dir = tempfile::tempdir().unwrap();
    let local = cairn_repo::backend::open_location(dir.path().to_str().unwrap(), true).unwrap();
    vec![
        (
            "memory",
            Arc::new(object_store::memory::InMemory::new()),
            None,
        ),
        ("local", local, Some(dir)),
    ]
}

#[test]
fn writing_an_existing_object_fails() {
    for (name, s, _dir) in stores() {
        let st = Store::new(s);
        st.put_new("snapshots/abc", b"one".to_vec()).unwrap();
        let e = st.put_new("snapshots/abc", b"two".to_vec()).unwrap_err();
        assert!(matches!(e, RepoError::AlreadyExists { .. }), "{name}: {e}");
        assert!(e.to_string().contains("snapshots/abc"), "{name}: {e}");
        assert_eq!(
            &st.get("snapshots/abc").unwrap()[..],
            b"one",
            "{name}: overwritten"
        );
    }
}

#[test]
fn init_twice_is_refused_and_keeps_the_first_repository() {
    for (name, s, _dir) in stores() {
        Repository::init(s.clone(), b"pw", Config::new_default(0), KDF).unwrap();
        let e = Repository::init(s.clone(), b"other", Config::new_default(0), KDF).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{name}: {e}");
        Repository::open(s.clone(), b"pw").unwrap();
        assert!(matches!(
            Repository::open(s, b"other").unwrap_err(),
            RepoError::WrongPassword
        ));
    }
}

#[test]
fn snapshot_is_written_after_its_packs_and_index() {
    for (name, s, _dir) in stores() {
        Repository::init(s.clone(), b"pw", Config::new_default(0), KDF).unwrap();
        let repo = Repository::open(s.clone(), b"pw")
            .unwrap()
            .load_index()
            .unwrap();
        let data = vec![7u8; 3 << 20];
        let r = repo
            .backup_stream(
                &data[..],
                "f",
                &BackupOptions::default(),
                &Progress::default(),
                || {
                    // Before the snapshot is written, its packs and index exist.
                    let st = Store::new(s.clone());
                    assert!(!st.list("data").unwrap().is_empty(), "{name}: no pack yet");
                    assert!(
                        !st.list("index").unwrap().is_empty(),
                        "{name}: no index yet"
                    );
                    assert!(
                        st.list("snapshots").unwrap().is_empty(),
                        "{name}: snapshot too early"
                    );
                    Ok(())
                },
            )
            .unwrap();
        // Every pack's name is the BLAKE3 of its bytes.
        let st = Store::new(s.clone());
        for (obj, _) in st.list("data").unwrap() {
            let b = st.get(&obj).unwrap();
            let id = PackId::of(&b);
            assert!(obj.ends_with(&id.to_hex()), "{name}: {obj}");
        }
        // Reopen and read back.
        let repo = Repository::open(s, b"pw").unwrap().load_index().unwrap();
        let snap = repo.repo().load_snapshot(&r.id).unwrap();
        let node = repo.find_node(&snap.tree, b"/f").unwrap().unwrap();
        let mut out = Vec::new();
        repo.dump_file(&node, &mut out).unwrap();
        assert!(out == data, "{name}: content differs");
    }
}

#[test]
fn a_failed_before_commit_leaves_no_snapshot() {
    let s: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    Repository::init(s.clone(), b"pw", Config::new_default(0), KDF).unwrap();
    let repo = Repository::open(s, b"pw").unwrap().load_index().unwrap();
    let e = repo
        .backup_stream(
            &b"partial"[..],
            "f",
            &BackupOptions::default(),
            &Progress::default(),
            || Err(RepoError::InvalidInput("dump failed".into())),
        )
        .unwrap_err();
    assert!(e.to_string().contains("dump failed"));
    assert!(repo.repo().list_snapshots().unwrap().is_empty());
}

#[test]
fn a_snapshot_with_a_changed_byte_is_named() {
    let s: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    Repository::init(s.clone(), b"pw", Config::new_default(0), KDF).unwrap();
    let repo = Repository::open(s.clone(), b"pw")
        .unwrap()
        .load_index()
        .unwrap();
    let r = repo
        .backup_stream(
            &b"x"[..],
            "f",
            &BackupOptions::default(),
            &Progress::default(),
            || Ok(()),
        )
        .unwrap();
    let st = Store::new(s.clone());
    let name = store::snapshot_path(&r.id);
    let mut b = st.get(&name).unwrap().to_vec();
    b[40] ^= 1;
    st.delete(&name).unwrap();
    st.put_new(&name, b).unwrap();
    let e = repo.repo().list_snapshots().unwrap_err();
    assert!(matches!(e, RepoError::Corrupted { .. }));
    assert!(e.to_string().contains(&name), "{e}");
}
