#![no_main]
//! Pack headers: raw bytes, and a fuzzer-chosen header plaintext sealed under
//! a valid prefix, against a fuzzer-chosen pack length.
use cairn_format::pack::{self, PREFIX_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (m, rest) = (data[0], &data[1..]);
    let pack_len = u64::from_le_bytes(rest[..8].try_into().unwrap());
    let body = &rest[8..];
    let master = cairn_fuzz::master();
    if m & 1 == 0 {
        let _ = pack::header_len(body);
        let _ = pack::decode_header(&master, body, pack_len);
        return;
    }
    let key = cairn_fuzz::pack_key();
    // A valid prefix (magic, version, wrapped key, header length) from an
    // empty header, then the length patched for the fuzzer's header.
    let mut prefix = pack::encode_header(&master, &key, &[])[..PREFIX_LEN].to_vec();
    let mut sealed = Vec::new();
    key.seal_header(&prefix, body, &mut sealed);
    let n = PREFIX_LEN - 4;
    prefix[n..].copy_from_slice(&(sealed.len() as u32).to_le_bytes());
    sealed.clear();
    key.seal_header(&prefix, body, &mut sealed);
    let mut start = prefix;
    start.extend_from_slice(&sealed);
    let _ = pack::decode_header(&master, &start, pack_len);
});
