//! `cairn version`: the release, the commit it was built from, and the
//! format versions this binary writes and reads (format-spec §12).

use anyhow::Result;
use serde_json::json;

use super::print_json;
use crate::GlobalArgs;

/// The commit this binary was built from (see build.rs).
pub const COMMIT: &str = env!("CAIRN_COMMIT");

/// `cairn --version`'s line: release, commit and repository format.
pub fn long_version() -> String {
    format!(
        "{} (commit {COMMIT}, repository format {})",
        env!("CARGO_PKG_VERSION"),
        cairn_format::config::VERSION
    )
}

pub fn version_cmd(g: &GlobalArgs) -> Result<i32> {
    use cairn_format::{config, deletion, index, keyfile, pack, snapshot, tree};
    let written = json!({
        "config": config::VERSION,
        "key_file": keyfile::VERSION,
        "pack": pack::VERSION,
        "index": index::VERSION,
        "snapshot": snapshot::VERSION,
        "tree": tree::VERSION,
        "deletion": deletion::VERSION,
    });
    if g.json {
        print_json(&json!({
            "version": env!("CARGO_PKG_VERSION"),
            "commit": COMMIT,
            "formats_written": written,
            "tree_versions_read": [tree::VERSION_1, tree::VERSION],
        }))?;
    } else {
        println!("cairn {}", env!("CARGO_PKG_VERSION"));
        println!("commit {COMMIT}");
        println!(
            "writes: config {}, key file {}, pack {}, index {}, snapshot {}, tree {}, deletion marker {}",
            config::VERSION,
            keyfile::VERSION,
            pack::VERSION,
            index::VERSION,
            snapshot::VERSION,
            tree::VERSION,
            deletion::VERSION
        );
        println!(
            "reads trees of versions {} and {}",
            tree::VERSION_1,
            tree::VERSION
        );
    }
    Ok(0)
}
