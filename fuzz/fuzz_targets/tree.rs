#![no_main]
//! Tree blobs (plaintext after a blob is opened).
use cairn_format::tree::Tree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Tree::decode(data) {
        // A decoded tree re-encodes to bytes that decode to the same tree.
        let again = Tree::decode(&t.encode().unwrap()).unwrap();
        assert_eq!(again, t);
    }
});
