//! Index scale: build a synthetic repository whose index holds N blob
//! entries (default 10 million), then measure in a fresh process what
//! opening it costs: time to open and load the index, resident memory per
//! entry, and the time to look a blob up.
//!
//! Usage: `cargo run --release --bin index_scale -- [ENTRIES] [DIR]`
//! (phase 1 writes the repository, then re-executes itself for phase 2 so
//! the measurement starts from a clean process).

use std::time::Instant;

use cairn_format::config::Config;
use cairn_format::index::{IndexFile, IndexPack};
use cairn_format::pack::PackEntry;
use cairn_format::{BlobKind, ChunkId, KdfParams, PackId};
use cairn_repo::Repository;

const BLOBS_PER_PACK: usize = 16; // 16 MiB packs of 1 MiB chunks (the defaults)
const PACKS_PER_INDEX: usize = 16 * 1024; // large index objects, like a prune writes

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    get("VmRSS:")
}

fn hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn id_for(i: u64) -> ChunkId {
    ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes())
}

fn build(dir: &str, entries: u64) {
    let store = cairn_repo::store::open_location(dir, true).unwrap();
    let kdf = KdfParams {
        m_cost: 64,
        t_cost: 1,
        p_cost: 1,
    };
    let repo = Repository::init(store, b"bench", Config::new_default(0), kdf).unwrap();
    let t = Instant::now();
    let packs = entries.div_ceil(BLOBS_PER_PACK as u64);
    let mut i = 0u64;
    let mut objects = 0;
    for first in (0..packs).step_by(PACKS_PER_INDEX) {
        let mut file = IndexFile::default();
        for p in first..(first + PACKS_PER_INDEX as u64).min(packs) {
            let mut blobs = Vec::with_capacity(BLOBS_PER_PACK);
            for b in 0..BLOBS_PER_PACK as u32 {
                if i >= entries {
                    break;
                }
                blobs.push(PackEntry {
                    kind: BlobKind::Data,
                    id: id_for(i),
                    offset: 200 + b * (1 << 20),
                    length: (1 << 20) + 40,
                    raw_len: 1 << 20,
                });
                i += 1;
            }
            file.packs.push(IndexPack {
                id: PackId(*blake3::hash(format!("pack {p}").as_bytes()).as_bytes()),
                size: 17 << 20,
                blobs,
            });
        }
        repo.save_index(&file).unwrap();
        objects += 1;
    }
    eprintln!(
        "built {entries} entries in {packs} packs, {objects} index objects, in {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

fn measure(dir: &str, entries: u64) {
    let before = rss_kib();
    let t = Instant::now();
    let store = cairn_repo::store::open_location(dir, false).unwrap();
    let repo = Repository::open(store, b"bench").unwrap();
    let opened = t.elapsed();
    let indexed = repo.load_index().unwrap();
    let loaded = t.elapsed();
    let after = rss_kib();
    let peak = hwm_kib();
    assert_eq!(
        indexed.index().len(BlobKind::Data) as u64,
        entries
    );
    // Lookups of present and absent ids.
    let n = 1_000_000u64;
    let t2 = Instant::now();
    let mut found = 0;
    for k in 0..n {
        let i = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) % entries;
        if indexed.locate(BlobKind::Data, &id_for(i)).is_ok() {
            found += 1;
        }
    }
    let hit = t2.elapsed();
    assert_eq!(found, n);
    let t3 = Instant::now();
    for k in 0..n {
        assert!(indexed.locate(BlobKind::Data, &id_for(entries + k)).is_err());
    }
    let miss = t3.elapsed();
    // id_for costs one BLAKE3 of 8 bytes; measure it to subtract.
    let t4 = Instant::now();
    let mut x = 0u8;
    for k in 0..n {
        x ^= id_for(k).0[0];
    }
    let hashing = t4.elapsed();
    std::hint::black_box(x);
    let per = |d: std::time::Duration| (d.saturating_sub(hashing)).as_nanos() as f64 / n as f64;
    println!("| entries | {entries} |");
    println!("| open (config + key) | {:.3} s |", opened.as_secs_f64());
    println!("| open + load index | {:.2} s |", loaded.as_secs_f64());
    println!(
        "| RSS after load − before | {} KiB = {:.1} bytes/entry |",
        after - before,
        (after - before) as f64 * 1024.0 / entries as f64
    );
    println!(
        "| peak RSS while loading | {} KiB = {:.1} bytes/entry |",
        peak,
        peak as f64 * 1024.0 / entries as f64
    );
    println!("| lookup, present id | {:.0} ns |", per(hit));
    println!("| lookup, absent id | {:.0} ns |", per(miss));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--measure") {
        // The allocator settings of every cairn command (index loading is
        // the same for all of them).
        cairn_repo::sys::tune_allocator(false);
        measure(&args[2], args[3].parse().unwrap());
        return;
    }
    let entries: u64 = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(10_000_000);
    let tmp;
    let dir = match args.get(2) {
        Some(d) => d.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("cairn-index-scale-{}", std::process::id()));
            tmp.display().to_string()
        }
    };
    build(&dir, entries);
    let st = std::process::Command::new(&args[0])
        .args(["--measure", &dir, &entries.to_string()])
        .status()
        .unwrap();
    if args.get(2).is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::process::exit(st.code().unwrap_or(1));
}
