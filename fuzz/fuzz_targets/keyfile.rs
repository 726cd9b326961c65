#![no_main]
//! Key files (plain, the first thing read with a password).
use cairn_format::keyfile::KeyFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = KeyFile::decode(data);
});
