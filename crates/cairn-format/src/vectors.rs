//! Checks `format-spec/test-vectors.txt`, the normative test vectors.
//! Regenerate (only with a format version bump!) with
//! `cargo test -p cairn-format print_test_vectors -- --ignored --nocapture`.

use std::collections::HashMap;

use crate::config::Config;
use crate::crypto::{self, context, seal_blob_with_nonce};
use crate::id::to_hex;
use crate::index::{IndexFile, IndexPack};
use crate::keyfile::KeyFile;
use crate::pack::{self, PackEntry};
use crate::snapshot::{Snapshot, Summary};
use crate::tree::{Extent, Node, NodeKind, Time, Tree, Xattr, XattrValue};
use crate::{BlobKind, ChunkId, IndexId, KdfParams, MasterKey, PackId, PackKey, SnapshotId};

const VECTORS: &str = include_str!("../../../format-spec/test-vectors.txt");

fn secret() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}
fn pack_key() -> PackKey {
    PackKey::from_bytes(std::array::from_fn(|i| 0x20 + i as u8))
}
fn nonce() -> [u8; 24] {
    std::array::from_fn(|i| 0x40 + i as u8)
}

/// The version-1 tree of `tree.v1.encoded` (written by the first format).
fn vector_tree_v1(key: &MasterKey) -> Tree {
    Tree {
        nodes: vec![
            Node {
                name: b"hello.txt".to_vec(),
                kind: NodeKind::File {
                    extents: vec![
                        Extent::Chunk {
                            id: key.chunk_id(b"hello cairn"),
                            len: 11,
                        },
                        Extent::Hole { len: 4096 },
                    ],
                },
                mode: 0o644,
                uid: 1000,
                gid: 1000,
                mtime: Time {
                    sec: 1_795_000_000,
                    nsec: 5,
                },
                ctime: Time {
                    sec: 1_795_000_001,
                    nsec: 6,
                },
                inode: 42,
                size: 11 + 4096,
                device: 0,
                nlink: 0,
                xattrs: vec![],
            },
            Node {
                name: b"link".to_vec(),
                kind: NodeKind::Symlink {
                    target: b"hello.txt".to_vec(),
                },
                mode: 0o777,
                uid: 0,
                gid: 0,
                mtime: Time { sec: 1, nsec: 0 },
                ctime: Time { sec: 2, nsec: 0 },
                inode: 43,
                size: 9,
                device: 0,
                nlink: 0,
                xattrs: vec![],
            },
        ],
    }
}

/// The current (version 2) tree: two hard links to one file with extended
/// attributes (one inline, one in a data blob, one ACL) and a symlink.
fn vector_tree(key: &MasterKey) -> Tree {
    let mut t = vector_tree_v1(key);
    let file = &mut t.nodes[0];
    file.device = 0x0803;
    file.nlink = 2;
    file.xattrs = vec![
        Xattr {
            name: b"system.posix_acl_access".to_vec(),
            // version 2; user:: rw-, user 65534 r--, group:: r--, mask r--, other r--
            value: XattrValue::Inline(vec![
                2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 2, 0, 4, 0, 0xfe, 0xff, 0, 0, 4, 0,
                4, 0, 0xff, 0xff, 0xff, 0xff, 0x10, 0, 4, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 4, 0,
                0xff, 0xff, 0xff, 0xff,
            ]),
        },
        Xattr {
            name: b"user.big".to_vec(),
            value: XattrValue::Chunks(vec![(key.chunk_id(b"hello cairn"), 11)]),
        },
        Xattr {
            name: b"user.comment".to_vec(),
            value: XattrValue::Inline(b"hello".to_vec()),
        },
    ];
    let mut twin = t.nodes[0].clone();
    twin.name = b"hello2.txt".to_vec();
    t.nodes.insert(1, twin);
    t
}

fn vector_snapshot(key: &MasterKey) -> Snapshot {
    Snapshot {
        time_ns: 1_795_000_000_123_456_789,
        tree: key.chunk_id(&vector_tree(key).encode().unwrap()),
        parent: None,
        group: Some([0xaa; 16]),
        service: "orders-db".into(),
        hostname: "db1".into(),
        username: "backup".into(),
        paths: vec![b"/orders.sql".to_vec()],
        tags: vec!["nightly".into()],
        summary: Summary {
            files_new: 1,
            bytes_read: 11,
            ..Default::default()
        },
        fingerprints: vec![],
        extra: vec![],
    }
}

fn vector_entries(key: &MasterKey) -> Vec<PackEntry> {
    vec![PackEntry {
        kind: BlobKind::Data,
        id: key.chunk_id(b"hello cairn"),
        offset: 0,
        length: 11 + 40,
        raw_len: 11,
    }]
}

fn generate() -> Vec<(String, String)> {
    let key = MasterKey::from_secret(secret());
    let mut v: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, val: String| v.push((k.to_string(), val));
    put("master_secret", to_hex(&secret()));
    put(
        "subkey.id_key",
        to_hex(&blake3::derive_key(context::ID_KEY, &secret())),
    );
    put(
        "subkey.metadata_key",
        to_hex(&blake3::derive_key(context::METADATA_KEY, &secret())),
    );
    put(
        "subkey.pack_wrap_key",
        to_hex(&blake3::derive_key(context::PACK_WRAP_KEY, &secret())),
    );
    put("chunker_seed", key.chunker_seed().to_string());
    put("chunk_id.empty", key.chunk_id(b"").to_hex());
    put(
        "chunk_id.hello_cairn",
        key.chunk_id(b"hello cairn").to_hex(),
    );
    let id = key.chunk_id(b"hello cairn");
    let sealed = seal_blob_with_nonce(&pack_key(), &nonce(), BlobKind::Data, &id, b"hello cairn");
    put("blob.pack_key", to_hex(pack_key().bytes()));
    put("blob.nonce", to_hex(&nonce()));
    put("blob.sealed_hello_cairn", to_hex(&sealed));
    let tree = vector_tree(&key).encode().unwrap();
    put("tree.encoded", to_hex(&tree));
    put("tree.id", key.chunk_id(&tree).to_hex());
    // Version 1 can no longer be written: its vector stays as it was.
    let file = parse();
    put("tree.v1.encoded", file["tree.v1.encoded"].clone());
    put("tree.v1.id", file["tree.v1.id"].clone());
    // Sealed with random nonces: checked by decoding.
    let mut cfg = Config::new_default(1_795_000_000);
    cfg.repo_id = [0x11; 32];
    put("object.config", to_hex(&cfg.encode(&key)));
    let snap = vector_snapshot(&key).encode(&key);
    put("object.snapshot", to_hex(&snap));
    put("object.snapshot.id", SnapshotId::of(&snap).to_hex());
    let mut pack_bytes = pack::encode_header(&key, &pack_key(), &vector_entries(&key));
    pack_bytes.extend_from_slice(&sealed);
    put("object.pack", to_hex(&pack_bytes));
    put("object.pack.id", PackId::of(&pack_bytes).to_hex());
    let mut entries = vector_entries(&key);
    entries[0].offset = (pack_bytes.len() - sealed.len()) as u32;
    let idx = IndexFile {
        supersedes: vec![],
        packs: vec![IndexPack {
            id: PackId::of(&pack_bytes),
            size: pack_bytes.len() as u64,
            blobs: entries,
        }],
    };
    put("object.index", to_hex(&idx.encode(&key)));
    let kdf = KdfParams {
        m_cost: 64,
        t_cost: 1,
        p_cost: 1,
    };
    let kf = KeyFile::create(&key, b"cairn", kdf, 1_795_000_000, "db1", "backup").unwrap();
    put("object.keyfile", to_hex(&kf));
    put("object.keyfile.password", to_hex(b"cairn"));
    v
}

#[test]
#[ignore]
fn print_test_vectors() {
    for (k, v) in generate() {
        println!("{k} = {v}");
    }
}

fn parse() -> HashMap<String, String> {
    VECTORS
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(" = "))
        .map(|l| {
            let (k, v) = l.split_once(" = ").unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn deterministic_vectors_match() {
    let file = parse();
    let deterministic = [
        "master_secret",
        "subkey.id_key",
        "subkey.metadata_key",
        "subkey.pack_wrap_key",
        "chunker_seed",
        "chunk_id.empty",
        "chunk_id.hello_cairn",
        "blob.pack_key",
        "blob.nonce",
        "blob.sealed_hello_cairn",
        "tree.encoded",
        "tree.id",
        "tree.v1.encoded",
        "tree.v1.id",
    ];
    let now: HashMap<String, String> = generate().into_iter().collect();
    for k in deterministic {
        assert_eq!(
            file.get(k),
            now.get(k),
            "test vector {k} differs from the code"
        );
    }
}

#[test]
fn tree_vectors_decode_in_both_versions() {
    let f = parse();
    let key = MasterKey::from_secret(secret());
    let v2 = hex(&f["tree.encoded"]);
    assert_eq!(&v2[8..10], &2u16.to_le_bytes());
    assert_eq!(Tree::decode(&v2).unwrap(), vector_tree(&key));
    let v1 = hex(&f["tree.v1.encoded"]);
    assert_eq!(&v1[8..10], &1u16.to_le_bytes());
    assert_eq!(key.chunk_id(&v1).to_hex(), f["tree.v1.id"]);
    assert_eq!(Tree::decode(&v1).unwrap(), vector_tree_v1(&key));
    let links: Vec<_> = vector_tree(&key)
        .nodes
        .iter()
        .filter_map(Node::link_key)
        .collect();
    assert_eq!(links, vec![(0x0803, 42), (0x0803, 42)]);
}

#[test]
fn sealed_vectors_decode() {
    let f = parse();
    let key = MasterKey::from_secret(secret());
    let cfg = Config::decode(&key, &hex(&f["object.config"])).unwrap();
    assert_eq!(cfg.repo_id, [0x11; 32]);
    assert_eq!(
        (cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max),
        (256 << 10, 1 << 20, 4 << 20)
    );
    let snap_bytes = hex(&f["object.snapshot"]);
    assert_eq!(
        SnapshotId::of(&snap_bytes).to_hex(),
        f["object.snapshot.id"]
    );
    assert_eq!(
        Snapshot::decode(&key, &snap_bytes).unwrap(),
        vector_snapshot(&key)
    );
    let pack_bytes = hex(&f["object.pack"]);
    assert_eq!(PackId::of(&pack_bytes).to_hex(), f["object.pack.id"]);
    let (pk, entries) = pack::decode_header(&key, &pack_bytes, pack_bytes.len() as u64).unwrap();
    assert_eq!(pk.bytes(), pack_key().bytes());
    let e = entries[0];
    let mut out = Vec::new();
    pack::open_blob(
        &pk,
        &key.id_hasher(),
        e.kind,
        &e.id,
        &pack_bytes[e.offset as usize..(e.offset + e.length) as usize],
        e.raw_len,
        &mut out,
    )
    .unwrap();
    assert_eq!(out, b"hello cairn");
    let idx = IndexFile::decode(&key, &hex(&f["object.index"])).unwrap();
    assert_eq!(idx.packs[0].id.to_hex(), f["object.pack.id"]);
    assert_eq!(idx.packs[0].blobs[0], e);
    let kf = KeyFile::decode(&hex(&f["object.keyfile"])).unwrap();
    let unlocked = kf.unlock(&hex(&f["object.keyfile.password"])).unwrap();
    assert_eq!(unlocked.secret(), &secret());
    let _ = (
        IndexId::default(),
        ChunkId::default(),
        crypto::SEAL_OVERHEAD,
    );
}
