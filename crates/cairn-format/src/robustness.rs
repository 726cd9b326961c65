//! Decoders must reject — never panic on — every truncation and every single
//! bit flip of a valid object. (The fuzz targets in `fuzz/` go further.)

use crate::config::Config;
use crate::index::{IndexFile, IndexPack};
use crate::keyfile::KeyFile;
use crate::pack::{self, PackEntry};
use crate::snapshot::{Snapshot, Summary};
use crate::tree::{Extent, Node, NodeKind, Time, Tree, Xattr, XattrValue};
use crate::{BlobKind, ChunkId, IndexId, KdfParams, MasterKey, PackId, PackKey, SnapshotId};

fn sample_tree() -> Tree {
    let mut t = sample_tree_plain();
    t.nodes[1].device = 3;
    t.nodes[1].nlink = 2;
    t.nodes[1].xattrs = vec![
        Xattr {
            name: b"user.a".to_vec(),
            value: XattrValue::Inline(b"xy".to_vec()),
        },
        Xattr {
            name: b"user.b".to_vec(),
            value: XattrValue::Chunks(vec![(ChunkId([5; 32]), 70_000 / 2)]),
        },
    ];
    t
}

fn sample_tree_plain() -> Tree {
    let base = |name: &[u8], kind: NodeKind, size: u64| Node {
        name: name.to_vec(),
        kind,
        mode: 0o644,
        uid: 1,
        gid: 2,
        mtime: Time { sec: 3, nsec: 4 },
        ctime: Time { sec: 5, nsec: 6 },
        inode: 7,
        size,
        device: 0,
        nlink: 0,
        xattrs: vec![],
    };
    Tree {
        nodes: vec![
            base(
                b"a",
                NodeKind::Dir {
                    tree: ChunkId([1; 32]),
                },
                0,
            ),
            base(
                b"b",
                NodeKind::File {
                    extents: vec![
                        Extent::Chunk {
                            id: ChunkId([2; 32]),
                            len: 10,
                        },
                        Extent::Hole { len: 5 },
                    ],
                },
                15,
            ),
            base(
                b"c",
                NodeKind::Symlink {
                    target: b"a".to_vec(),
                },
                1,
            ),
            base(b"d", NodeKind::CharDevice { rdev: 9 }, 0),
        ],
    }
}

fn sample_snapshot() -> Snapshot {
    Snapshot {
        time_ns: 1,
        tree: ChunkId([3; 32]),
        parent: Some(SnapshotId([4; 32])),
        group: Some([5; 16]),
        service: "db".into(),
        hostname: "h".into(),
        username: "u".into(),
        paths: vec![b"/x\xff".to_vec()],
        tags: vec!["t".into()],
        summary: Summary {
            files_new: 1,
            ..Default::default()
        },
        fingerprints: vec![("table".into(), vec![1, 2])],
        extra: vec![("k".into(), "v".into())],
    }
}

/// Every truncation and every bit flip of `bytes` either decodes to something
/// (only possible where nothing authenticates it) or errors; none panics.
fn sweep(bytes: &[u8], decode: &dyn Fn(&[u8]) -> bool) {
    assert!(decode(bytes), "the pristine object must decode");
    for cut in 0..bytes.len() {
        let _ = decode(&bytes[..cut]);
    }
    let mut b = bytes.to_vec();
    for i in 0..b.len() {
        for bit in [0x01u8, 0x80] {
            b[i] ^= bit;
            let _ = decode(&b);
            b[i] ^= bit;
        }
    }
}

#[test]
fn sealed_objects_reject_every_truncation_and_flip() {
    let key = MasterKey::from_secret([1; 32]);
    let cfg = Config::new_default(0).encode(&key);
    let auth = |ok: bool, b: &[u8], orig: &[u8]| ok == (b == orig);
    sweep(&cfg, &|b| {
        let r = Config::decode(&key, b);
        assert!(auth(r.is_ok(), b, &cfg), "config accepted altered bytes");
        r.is_ok()
    });
    let snap = sample_snapshot().encode(&key);
    sweep(&snap, &|b| {
        let r = Snapshot::decode(&key, b);
        assert!(auth(r.is_ok(), b, &snap), "snapshot accepted altered bytes");
        r.is_ok()
    });
    let idx = IndexFile {
        supersedes: vec![IndexId([6; 32])],
        packs: vec![IndexPack {
            id: PackId([7; 32]),
            size: 1000,
            blobs: vec![PackEntry {
                kind: BlobKind::Data,
                id: ChunkId([8; 32]),
                offset: 100,
                length: 50,
                raw_len: 60,
            }],
        }],
    }
    .encode(&key);
    sweep(&idx, &|b| {
        let r = IndexFile::decode(&key, b);
        assert!(auth(r.is_ok(), b, &idx), "index accepted altered bytes");
        r.is_ok()
    });
    let kdf = KdfParams {
        m_cost: 8,
        t_cost: 1,
        p_cost: 1,
    };
    let kf = KeyFile::create(&key, b"pw", kdf, 0, "h", "u").unwrap();
    sweep(&kf, &|b| KeyFile::decode(b).is_ok());
}

#[test]
fn pack_header_rejects_every_truncation_and_flip() {
    let key = MasterKey::from_secret([1; 32]);
    let pk = PackKey::from_bytes([2; 32]);
    let entries = vec![
        PackEntry {
            kind: BlobKind::Data,
            id: ChunkId([3; 32]),
            offset: 0,
            length: 60,
            raw_len: 20,
        },
        PackEntry {
            kind: BlobKind::Tree,
            id: ChunkId([4; 32]),
            offset: 0,
            length: 45,
            raw_len: 5,
        },
    ];
    let mut bytes = pack::encode_header(&key, &pk, &entries);
    bytes.extend_from_slice(&[0u8; 105]);
    let orig = bytes.clone();
    sweep(&bytes, &|b| {
        let r = pack::decode_header(&key, b, b.len() as u64);
        if let Ok((_, e)) = &r {
            // Only the zero padding (not part of the header) may differ.
            let hl = pack::PREFIX_LEN + pack::header_len(b).unwrap();
            assert_eq!(&b[..hl], &orig[..hl], "pack header accepted altered bytes");
            assert_eq!(e.len(), 2);
        }
        r.is_ok()
    });
}

#[test]
fn tree_decoder_never_panics_and_round_trips() {
    let t = sample_tree();
    let bytes = t.encode().unwrap();
    assert_eq!(Tree::decode(&bytes).unwrap(), t);
    sweep(&bytes, &|b| Tree::decode(b).is_ok());
}

#[test]
fn absurd_counts_do_not_allocate() {
    // A tree claiming 4 billion entries in 16 bytes must fail fast.
    let mut b = Vec::new();
    b.extend_from_slice(crate::tree::MAGIC);
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(Tree::decode(&b).is_err());
}

#[test]
fn tree_modes_above_0o7777_are_masked_at_decode() {
    // A hostile writer sets file-type bits (S_IFCHR) in a FIFO's mode, so
    // that `mknod(S_IFIFO | mode)` would make a device: the reader drops them.
    let mut t = sample_tree();
    t.nodes[1].mode = 0o020000 | 0o4755; // S_IFCHR | rwsr-xr-x
    t.nodes[3].mode = 0xffff_ffff;
    let back = Tree::decode(&t.encode().unwrap()).unwrap();
    assert_eq!(back.nodes[1].mode, 0o4755);
    assert_eq!(back.nodes[3].mode, 0o7777);
}
