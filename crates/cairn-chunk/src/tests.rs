//! Golden tests: chunk boundaries and ids over seeded portable-PRNG input.
//! If one of these fails, deduplication against existing repositories breaks:
//! do not update the expected values without a format version bump.

use super::*;
use cairn_format::MasterKey;

/// SplitMix64: tiny, portable, the same on every platform.
pub(crate) fn prng_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn golden_key() -> MasterKey {
    MasterKey::from_secret([0x42; 32])
}

fn golden_params(key: &MasterKey) -> ChunkerParams {
    ChunkerParams {
        min: 256 * 1024,
        avg: 1024 * 1024,
        max: 4 * 1024 * 1024,
        seed: key.chunker_seed(),
    }
}

fn chunk_all(params: ChunkerParams, data: &[u8], window: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut base = 0;
    StreamChunker::with_window(params, window)
        .run(data, |w, cuts| {
            for c in cuts {
                out.push((base + c.offset, c.len));
            }
            base += w.len();
            Ok::<(), std::io::Error>(())
        })
        .unwrap();
    out
}

#[test]
fn golden_boundaries_and_ids() {
    let key = golden_key();
    let params = golden_params(&key);
    let data = prng_bytes(1, 12 * 1024 * 1024);
    let chunks = chunk_all(params, &data, 8 << 20);
    let got: Vec<(usize, usize, String)> = chunks
        .iter()
        .map(|&(o, l)| (o, l, key.chunk_id(&data[o..o + l]).short()))
        .collect();
    let expected = golden();
    assert_eq!(expected.len(), 9, "golden vectors missing from format-spec");
    assert_eq!(got, expected, "chunk boundaries or ids changed");
}

/// The golden boundaries live in the normative test vectors.
fn golden() -> Vec<(usize, usize, String)> {
    include_str!("../../../format-spec/test-vectors.txt")
        .lines()
        .filter(|l| l.starts_with("fastcdc.golden."))
        .map(|l| {
            let v: Vec<&str> = l.split(" = ").nth(1).unwrap().split(' ').collect();
            (
                v[0].parse().unwrap(),
                v[1].parse().unwrap(),
                v[2].to_string(),
            )
        })
        .collect()
}

#[test]
fn window_size_does_not_change_boundaries() {
    let key = golden_key();
    let params = golden_params(&key);
    let data = prng_bytes(7, 20 * 1024 * 1024 + 12345);
    let a = chunk_all(params, &data, 8 << 20);
    let b = chunk_all(params, &data, 9 << 20);
    let c = chunk_all(params, &data, 32 << 20);
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a.iter().map(|x| x.1).sum::<usize>(), data.len());
    assert!(a.iter().all(|x| x.1 <= 4 * 1024 * 1024));
}

#[test]
fn overlapped_chunking_gives_the_same_chunks_and_content() {
    let key = golden_key();
    let params = golden_params(&key);
    for len in [0, 1, 300_000, 20 * 1024 * 1024 + 12345] {
        let data = prng_bytes(9, len);
        let want = chunk_all(params, &data, 8 << 20);
        let mut got = Vec::new();
        let mut content = Vec::new();
        let mut base = 0;
        crate::run_overlapped(params, 8 << 20, &data[..], |w, cuts| {
            for c in cuts {
                got.push((base + c.offset, c.len));
            }
            content.extend_from_slice(w);
            base += w.len();
            Ok::<(), std::io::Error>(())
        })
        .unwrap();
        assert_eq!(got, want, "len {len}");
        assert_eq!(content, data, "len {len}");
    }
}

#[test]
fn overlapped_chunking_stops_on_the_first_error_of_either_side() {
    let key = golden_key();
    let params = golden_params(&key);
    let data = prng_bytes(3, 40 * 1024 * 1024);
    // The consumer fails on its second window.
    let mut calls = 0;
    let r = crate::run_overlapped(params, 8 << 20, &data[..], |_, _| {
        calls += 1;
        if calls == 2 {
            Err(std::io::Error::other("sink failed"))
        } else {
            Ok(())
        }
    });
    assert_eq!(r.unwrap_err().to_string(), "sink failed");
    assert_eq!(calls, 2);
    // The reader fails after 12 MiB.
    struct Failing<'a>(&'a [u8], usize);
    impl std::io::Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.1 >= 12 << 20 {
                return Err(std::io::Error::other("disk gone"));
            }
            let n = buf.len().min(1 << 20).min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }
    let r = crate::run_overlapped(params, 8 << 20, Failing(&data, 0), |_, _| {
        Ok::<(), std::io::Error>(())
    });
    assert_eq!(r.unwrap_err().to_string(), "disk gone");
}

#[test]
fn seed_changes_boundaries() {
    let data = prng_bytes(3, 8 * 1024 * 1024);
    let k1 = golden_key();
    let k2 = MasterKey::from_secret([0x43; 32]);
    let a = chunk_all(golden_params(&k1), &data, 8 << 20);
    let b = chunk_all(golden_params(&k2), &data, 8 << 20);
    assert_ne!(a, b, "the secret seed must influence the cut points");
}

#[test]
fn encode_then_open_round_trips() {
    let key = golden_key();
    let enc = BlobEncoder {
        hasher: key.id_hasher(),
        key: cairn_format::PackKey::generate(),
        level: 3,
    };
    for data in [vec![0u8; 100_000], prng_bytes(9, 100_000), Vec::new()] {
        let id = key.chunk_id(&data);
        let sealed = enc.encode(cairn_format::BlobKind::Data, id, &data, |b| {
            assert_eq!(b.raw_len as usize, data.len());
            b.sealed.to_vec()
        });
        let mut out = Vec::new();
        cairn_format::pack::open_blob(
            &enc.key,
            &enc.hasher,
            cairn_format::BlobKind::Data,
            &id,
            &sealed,
            data.len() as u32,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, data);
    }
}
