//! Record objects (format-spec §4.9): small sealed documents the orchestrator
//! appends to the repository — the audit trail (`audit/`) and restore
//! journals (`journal/<restore id>/`). Like every object they are written
//! once and named by the BLAKE3 of their bytes.

use cairn_format::envelope;

use crate::repo::Repository;
use crate::{RepoError, Result};

/// Magic of audit records.
pub const AUDIT_MAGIC: &[u8; 8] = b"CAIRNAUD";
/// Magic of restore-journal records.
pub const JOURNAL_MAGIC: &[u8; 8] = b"CAIRNJRN";
/// Version of both record formats.
pub const RECORD_VERSION: u16 = 1;

/// A record read back: its object name, hex id, and body or what is wrong
/// with it (a damaged record is reported, not skipped).
#[derive(Debug)]
pub struct StoredRecord {
    /// Object name (`<dir>/<hex id>`).
    pub object: String,
    /// Hex id (the name's last component).
    pub id: String,
    /// The body (UTF-8 JSON), or why it could not be read.
    pub body: std::result::Result<Vec<u8>, String>,
}

impl Repository {
    /// Seal `body` and write it as `<dir>/<hex blake3 of the bytes>`; returns the hex id.
    pub fn put_record(&self, dir: &str, magic: &[u8; 8], body: &[u8]) -> Result<String> {
        let bytes = envelope::seal_object(&self.key, magic, RECORD_VERSION, body);
        let id = blake3::hash(&bytes).to_hex().to_string();
        self.store.put_new(&format!("{dir}/{id}"), bytes)?;
        Ok(id)
    }

    /// Every record under `dir` (not recursive), each checked against its
    /// name and opened.
    pub fn list_records(&self, dir: &str, magic: &[u8; 8]) -> Result<Vec<StoredRecord>> {
        let names: Vec<String> = self
            .store
            .list(dir)?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !n[dir.len() + 1..].contains('/'))
            .collect();
        let got = self.store.get_many(&names, self.store.connections);
        let mut out = Vec::with_capacity(names.len());
        for (name, bytes) in names.into_iter().zip(got) {
            let id = name.rsplit('/').next().unwrap_or_default().to_string();
            let body = match bytes {
                Err(RepoError::NotFound { .. }) => continue, // removed since the listing
                Err(e) => return Err(e),
                Ok(b) if blake3::hash(&b).to_hex().as_str() != id => {
                    Err("content does not hash to its name (altered or truncated)".to_string())
                }
                Ok(b) => envelope::open_object(&self.key, "record", magic, RECORD_VERSION, &b)
                    .map_err(|e| e.to_string()),
            };
            out.push(StoredRecord {
                object: name,
                id,
                body,
            });
        }
        Ok(out)
    }

    /// Names of the sub-directories of `dir` (e.g. the journals' restore ids).
    pub fn list_record_dirs(&self, dir: &str) -> Result<Vec<String>> {
        let mut v: Vec<String> = self
            .store
            .list(dir)?
            .into_iter()
            .filter_map(|(n, _)| {
                let rest = &n[dir.len() + 1..];
                rest.split_once('/').map(|(d, _)| d.to_string())
            })
            .collect();
        v.sort();
        v.dedup();
        Ok(v)
    }
}
