#![no_main]
//! Service catalogs (TOML written by operators).
use cairn_stack::catalog::Catalog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    for env in [None, Some("staging")] {
        let _ = Catalog::parse(std::path::Path::new("fuzz.toml"), src, env);
    }
});
