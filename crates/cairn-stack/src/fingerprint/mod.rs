//! Logical fingerprints: what a service holds, independent of its physical
//! layout, so a restore can be proven equal to the backup (format-spec §11).
//!
//! | kind | part name | count | hash |
//! |---|---|---|---|
//! | postgres | `table:<schema>.<table>` | rows | BLAKE3 of the `COPY … TO STDOUT` text of the rows in primary-key order (no key: ordered by the row's text) |
//! | mariadb | `table:<table>` | rows | BLAKE3 of the batch-mode rows in primary-key order (no key: ordered by every column) |
//! | sqlite | `table:<table>` | rows | BLAKE3 of the rows in `.mode quote` ordered by every column, read from the online backup's copy (`kinds/sqlite.rs`) |
//! | redis | `db<n>` | keys | BLAKE3 over the keys in byte order, each `key, type, TTL present, value` |
//! | files | (the snapshot's tree) | | compared entry by entry with the restored directory |
//!
//! PostgreSQL fingerprints are taken inside the exported snapshot `pg_dump`
//! runs in, so they describe exactly the dumped state even while the database
//! is being written. MariaDB cannot share a snapshot between sessions, so
//! the backup holds a brief global read lock (`FLUSH TABLES WITH READ LOCK`,
//! the RELOAD privilege) while the fingerprint sessions and `mariadb-dump`
//! start their consistent-snapshot transactions, and releases it as soon as
//! the dump's output shows it has begun (its first table section); every
//! snapshot then sees the same committed state, even under writes. Writers
//! wait for that window only (milliseconds; `mariadb-dump
//! --single-transaction --master-data` holds the same lock for the same
//! reason).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};

use cairn_format::snapshot::Snapshot;
use cairn_repo::IndexedRepository;
use serde::Serialize;

use crate::StackError;
use crate::catalog::Service;

/// One measured part of a service (a table, a Redis database).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// Rows or keys.
    pub count: u64,
    /// BLAKE3 over the part's content (all zero when only a count is known).
    pub hash: [u8; 32],
}

impl Serialize for Part {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Part", 2)?;
        st.serialize_field("count", &self.count)?;
        st.serialize_field("hash", &cairn_format::id::to_hex(&self.hash))?;
        st.end()
    }
}

/// Parts by name.
pub type Fingerprint = BTreeMap<String, Part>;

const PREFIX: &str = "fp:";

/// Encode as snapshot fingerprint entries (`fp:<part>` → count u64 LE ‖ hash).
pub fn encode(f: &Fingerprint) -> Vec<(String, Vec<u8>)> {
    f.iter()
        .map(|(k, p)| {
            let mut v = p.count.to_le_bytes().to_vec();
            v.extend_from_slice(&p.hash);
            (format!("{PREFIX}{k}"), v)
        })
        .collect()
}

/// Decode what a snapshot recorded (older `count:` entries give counts only).
pub fn decode(s: &Snapshot) -> Fingerprint {
    let mut f = Fingerprint::new();
    for (k, v) in &s.fingerprints {
        if let Some(name) = k.strip_prefix(PREFIX)
            && v.len() == 40
        {
            let count = u64::from_le_bytes(v[..8].try_into().expect("8"));
            let hash: [u8; 32] = v[8..].try_into().expect("32");
            f.insert(name.to_string(), Part { count, hash });
        } else if let Some(name) = k.strip_prefix("count:")
            && let Ok(b) = <[u8; 8]>::try_from(v.as_slice())
        {
            let name = if name.starts_with("db") || name == "files" || name == "bytes" {
                name.to_string()
            } else {
                format!("table:{name}")
            };
            f.insert(
                name,
                Part {
                    count: u64::from_le_bytes(b),
                    hash: [0; 32],
                },
            );
        }
    }
    f
}

/// The differences between a recorded and a recomputed fingerprint, one line
/// per part, naming it.
pub fn compare(expected: &Fingerprint, actual: &Fingerprint) -> Vec<String> {
    let mut out = Vec::new();
    for (k, e) in expected {
        match actual.get(k) {
            None => out.push(format!("{k}: missing after the restore")),
            Some(a) if a.count != e.count => out.push(format!(
                "{k}: {} rows/keys expected, {} found",
                e.count, a.count
            )),
            Some(a) if e.hash != [0; 32] && a.hash != e.hash => out.push(format!(
                "{k}: content differs ({} rows/keys in both; hash {} expected, {} found)",
                e.count,
                &cairn_format::id::to_hex(&e.hash)[..16],
                &cairn_format::id::to_hex(&a.hash)[..16]
            )),
            Some(_) => {}
        }
    }
    for k in actual.keys() {
        if !expected.contains_key(k) {
            out.push(format!("{k}: present after the restore, not in the backup"));
        }
    }
    out
}

fn err(svc: &Service, detail: impl Into<String>) -> StackError {
    StackError::Service {
        service: svc.name.clone(),
        detail: detail.into(),
    }
}

/// Hash a child's stdout line by line: (lines, BLAKE3).
pub(crate) fn hash_output(
    svc: &Service,
    mut c: Command,
    input: &str,
    what: &str,
) -> Result<Part, StackError> {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(svc, format!("{what}: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(input.as_bytes())
        .map_err(|e| err(svc, format!("{what}: {e}")))?;
    drop(stdin);
    let mut out = child.stdout.take().expect("piped");
    let mut h = blake3::Hasher::new();
    let mut count = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = out
            .read(&mut buf)
            .map_err(|e| err(svc, format!("{what}: {e}")))?;
        if n == 0 {
            break;
        }
        count += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        h.update(&buf[..n]);
    }
    let o = child
        .wait_with_output()
        .map_err(|e| err(svc, format!("{what}: {e}")))?;
    if !o.status.success() {
        return Err(err(
            svc,
            format!(
                "{what} failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ));
    }
    Ok(Part {
        count,
        hash: *h.finalize().as_bytes(),
    })
}

mod mariadb;
mod postgres;
mod redis;
mod tree;
pub use mariadb::*;
pub use postgres::*;
pub use redis::*;
pub use tree::*;

/// Minimal CSV (PostgreSQL's `FORMAT csv` output) reader.
fn parse_csv(s: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
        } else {
            match c {
                '"' => quoted = true,
                ',' => row.push(std::mem::take(&mut field)),
                '\n' => {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                c => field.push(c),
            }
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// Fingerprint a database service now (postgres, mariadb, redis); `None`
/// for kinds verified otherwise (files) or not at all (command).
pub fn live(svc: &Service) -> Result<Option<Fingerprint>, StackError> {
    svc.kind.datastore().live_fingerprint(svc)
}

/// Verify by fingerprint: the one recorded at backup time (database numbers
/// remapped for Redis environments) against the service's live one.
pub fn verify_fingerprint(
    svc: &Service,
    _repo: &IndexedRepository,
    snap: &Snapshot,
    method: &str,
) -> Result<FingerprintReport, StackError> {
    let mut f = FingerprintReport {
        expected: decode(snap),
        method: method.into(),
        ..Default::default()
    };
    let map = redis_db_map(svc, snap);
    f.expected = remap(&f.expected, &map);
    f.actual = svc
        .kind
        .datastore()
        .live_fingerprint(svc)?
        .unwrap_or_default();
    f.differences = compare(&f.expected, &f.actual);
    f.verified = Some(f.differences.is_empty());
    Ok(f)
}

/// The restored state compared with the backed-up state.
#[derive(Debug, Serialize, Clone, Default)]
pub struct FingerprintReport {
    /// tables | keys | tree | none
    pub method: String,
    /// Recorded at backup time.
    pub expected: Fingerprint,
    /// Recomputed from the live service after the restore.
    pub actual: Fingerprint,
    /// The snapshot tree of a files service (hex).
    pub tree: Option<String>,
    /// What differs, naming the table, key or path.
    pub differences: Vec<String>,
    /// Whether it matched (None: nothing to compare, command services).
    pub verified: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_format::ChunkId;

    fn snapshot(fingerprints: Vec<(String, Vec<u8>)>) -> Snapshot {
        Snapshot {
            time_ns: 0,
            tree: ChunkId([0; 32]),
            parent: None,
            group: None,
            service: "s".into(),
            hostname: "h".into(),
            username: "u".into(),
            paths: vec![],
            tags: vec![],
            summary: Default::default(),
            fingerprints,
            extra: vec![],
        }
    }

    /// format-spec §11: snapshots written before `fp:` parts recorded
    /// `count:<name>` (row or key counts only); they are still read, as
    /// counts without a hash, tables under `table:`.
    #[test]
    fn old_count_fingerprints_are_read_as_counts_and_new_parts_round_trip() {
        let n = |v: u64| v.to_le_bytes().to_vec();
        let old = snapshot(vec![
            ("count:orders".into(), n(641)),
            ("count:db0".into(), n(12)),
            ("count:files".into(), n(3)),
            ("count:broken".into(), vec![1, 2, 3]),
        ]);
        let f = decode(&old);
        assert_eq!(f.len(), 3, "{f:?}");
        assert_eq!(
            f["table:orders"],
            Part {
                count: 641,
                hash: [0; 32]
            }
        );
        assert_eq!(f["db0"].count, 12);
        assert_eq!(f["files"].count, 3);
        // A count-only part compares by count: equal counts pass.
        let live: Fingerprint = [(
            "table:orders".to_string(),
            Part {
                count: 641,
                hash: [7; 32],
            },
        )]
        .into_iter()
        .collect();
        assert!(
            compare(
                &decode(&snapshot(vec![("count:orders".into(), n(641))])),
                &live
            )
            .is_empty()
        );
        assert_eq!(
            compare(
                &decode(&snapshot(vec![("count:orders".into(), n(640))])),
                &live
            )
            .len(),
            1
        );
        // New parts round-trip through encode/decode.
        let now: Fingerprint = [(
            "table:a.b".to_string(),
            Part {
                count: 5,
                hash: [9; 32],
            },
        )]
        .into_iter()
        .collect();
        assert_eq!(decode(&snapshot(encode(&now))), now);
    }
}
