//! Each pipeline stage alone, and the whole pipeline on 1 and 2 threads, on
//! random and on compressible (SQL-dump-like) data. Throughput is printed in
//! MB/s by divan (`DIVAN_BYTES_FORMAT=decimal`).
//!
//! The ceiling of the pipeline on 2 threads is 2 / (Σ 1/stage throughput)
//! over chunk, id, compress and seal: what two cores could do if the stages
//! were perfectly spread. `benches/micro/run.sh` computes it.

use std::hint::black_box;
use std::sync::OnceLock;

use cairn_chunk::{BlobEncoder, ChunkerParams, Cut, process_window};
use cairn_format::pack::compress_blob;
use cairn_format::{BlobKind, ChunkId, MasterKey, PackKey};
use divan::Bencher;
use divan::counter::BytesCount;

fn main() {
    divan::main();
}

const LEN: usize = 64 << 20;
const CHUNK: usize = 1 << 20;

fn prng(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Lines like a `pg_dump` of an orders table: compresses about 4-5x with zstd 3.
fn sql(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 256);
    let mut x: u64 = 12345;
    let mut i = 0u64;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        i += 1;
        v.extend_from_slice(
            format!(
                "{i}\t{}\tcustomer {}\t{}.{:02}\t2026-{:02}-{:02} {:02}:{:02}:{:02}+00\t{}\n",
                x % 100_000,
                x % 5_000,
                x % 1000,
                x % 100,
                1 + x % 12,
                1 + x % 28,
                x % 24,
                x % 60,
                (x >> 8) % 60,
                ["pending", "paid", "shipped", "refunded"][(x % 4) as usize]
            )
            .as_bytes(),
        );
    }
    v.truncate(len);
    v
}

fn data(kind: &str) -> &'static [u8] {
    static RANDOM: OnceLock<Vec<u8>> = OnceLock::new();
    static SQL: OnceLock<Vec<u8>> = OnceLock::new();
    match kind {
        "random" => RANDOM.get_or_init(|| prng(7, LEN)),
        _ => SQL.get_or_init(|| sql(LEN)),
    }
}

fn params(key: &MasterKey) -> ChunkerParams {
    // The repository defaults (format-spec §7): 256 KiB / 1 MiB / 4 MiB.
    ChunkerParams {
        min: 256 << 10,
        avg: 1 << 20,
        max: 4 << 20,
        seed: key.chunker_seed(),
    }
}

fn key() -> &'static MasterKey {
    static K: OnceLock<MasterKey> = OnceLock::new();
    K.get_or_init(|| MasterKey::from_secret([7; 32]))
}

const KINDS: [&str; 2] = ["random", "sql"];

#[divan::bench(args = KINDS, sample_count = 10)]
fn stage_fastcdc(b: Bencher, kind: &str) {
    let d = data(kind);
    let p = params(key());
    let mut cuts: Vec<Cut> = Vec::new();
    b.counter(BytesCount::new(d.len())).bench_local(|| {
        p.cut(black_box(d), true, &mut cuts);
        cuts.len()
    });
}

#[divan::bench(args = KINDS, sample_count = 10)]
fn stage_blake3_keyed(b: Bencher, kind: &str) {
    let d = data(kind);
    let h = key().id_hasher();
    b.counter(BytesCount::new(d.len())).bench_local(|| {
        let mut last = ChunkId([0; 32]);
        for c in d.chunks(CHUNK) {
            last = h.id(black_box(c));
        }
        last
    });
}

#[divan::bench(args = KINDS, sample_count = 10)]
fn stage_zstd3(b: Bencher, kind: &str) {
    let d = data(kind);
    let mut z = zstd::bulk::Compressor::new(3).unwrap();
    let mut out = Vec::new();
    b.counter(BytesCount::new(d.len())).bench_local(|| {
        let mut n = 0;
        for c in d.chunks(CHUNK) {
            compress_blob(&mut z, black_box(c), &mut out);
            n += out.len();
        }
        n
    });
}

#[divan::bench(args = KINDS, sample_count = 10)]
fn stage_seal_xchacha20poly1305(b: Bencher, kind: &str) {
    let d = data(kind);
    let k = PackKey::generate();
    let id = ChunkId([1; 32]);
    let mut out = Vec::new();
    b.counter(BytesCount::new(d.len())).bench_local(|| {
        let mut n = 0;
        for c in d.chunks(CHUNK) {
            out.clear();
            k.seal_blob(BlobKind::Data, &id, black_box(c), &mut out);
            n += out.len();
        }
        n
    });
}

#[divan::bench(args = KINDS, sample_count = 10)]
fn stage_open_xchacha20poly1305(b: Bencher, kind: &str) {
    let d = data(kind);
    let k = PackKey::generate();
    let id = ChunkId([1; 32]);
    let sealed: Vec<Vec<u8>> = d
        .chunks(CHUNK)
        .map(|c| {
            let mut o = Vec::new();
            k.seal_blob(BlobKind::Data, &id, c, &mut o);
            o
        })
        .collect();
    let mut out = Vec::new();
    b.counter(BytesCount::new(d.len())).bench_local(|| {
        for s in &sealed {
            k.open_blob(BlobKind::Data, &id, black_box(s), &mut out).unwrap();
        }
        out.len()
    });
}

/// Chunk → id → compress → seal of the whole buffer, every chunk new:
/// `T` = 1 is one thread doing everything in turn; `T` = 2 is what `cairn
/// backup` does per stream on this machine — a 2-thread pool encoding one
/// window while the calling thread reads and cuts the next (two 8 MiB
/// windows, `cairn_chunk::run_overlapped`).
#[divan::bench(consts = [1, 2], args = KINDS, sample_count = 10)]
fn pipeline<const T: usize>(b: Bencher, kind: &str) {
    let d = data(kind);
    let k = key();
    let p = params(k);
    let enc = BlobEncoder {
        hasher: k.id_hasher(),
        key: PackKey::generate(),
        level: 3,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(T)
        .build()
        .unwrap();
    let sealed = std::sync::atomic::AtomicUsize::new(0);
    let encode = |window: &[u8], cuts: &[Cut]| {
        pool.install(|| {
            process_window(
                &enc,
                window,
                cuts,
                |_| true,
                |blob| {
                    sealed.fetch_add(blob.sealed.len(), std::sync::atomic::Ordering::Relaxed);
                    Ok::<(), std::io::Error>(())
                },
            )
            .map(|_| ())
        })
    };
    b.counter(BytesCount::new(d.len())).bench_local(|| {
        if T == 1 {
            cairn_chunk::StreamChunker::new(p).run(d, encode).unwrap();
        } else {
            cairn_chunk::run_overlapped(p, 8 << 20, d, encode).unwrap();
        }
        sealed.load(std::sync::atomic::Ordering::Relaxed)
    });
}
