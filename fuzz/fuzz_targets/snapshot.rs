#![no_main]
//! snapshot objects: raw bytes, and fuzzer-chosen plaintext behind a valid seal.
use cairn_format::snapshot::{MAGIC, VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((m, rest)) = cairn_fuzz::mode(data) else { return };
    let key = cairn_fuzz::master();
    if m & 1 == 0 {
        let _ = cairn_format::snapshot::Snapshot::decode(&key, rest);
    } else if let Ok(v) = cairn_format::snapshot::Snapshot::decode(&key, &cairn_fuzz::sealed_object(MAGIC, VERSION, rest)) {
        // Whatever decodes must encode and decode to itself.
        assert_eq!(cairn_format::snapshot::Snapshot::decode(&key, &v.encode(&key)).unwrap(), v);
    }
});
