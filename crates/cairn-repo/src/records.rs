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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cairn_format::KdfParams;
    use cairn_format::config::Config;
    use object_store::ObjectStoreExt;

    use super::*;

    #[test]
    fn records_are_named_by_their_hash_and_damage_is_reported() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let kdf = KdfParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let repo = Repository::init(store.clone(), b"pw", Config::new_default(0), kdf).unwrap();
        let a = repo.put_record("audit", AUDIT_MAGIC, b"{\"a\":1}").unwrap();
        let b = repo
            .put_record("journal/0123456789abcdef", JOURNAL_MAGIC, b"{}")
            .unwrap();
        assert_eq!(
            repo.list_record_dirs("journal").unwrap(),
            vec!["0123456789abcdef"]
        );
        let got = repo.list_records("audit", AUDIT_MAGIC).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, a);
        assert_eq!(got[0].body.as_deref().unwrap(), b"{\"a\":1}");
        let raw = repo.store.get(&format!("audit/{a}")).unwrap();
        assert_eq!(blake3::hash(&raw).to_hex().as_str(), a);
        assert_eq!(&raw[..8], b"CAIRNAUD");
        // A journal record is not an audit record.
        let j = repo
            .list_records("journal/0123456789abcdef", AUDIT_MAGIC)
            .unwrap();
        assert_eq!(j[0].id, b);
        assert!(j[0].body.is_err());
        // Edited in place: named, not skipped.
        let mut bad = raw.to_vec();
        let n = bad.len();
        bad[n - 1] ^= 1;
        let path = object_store::path::Path::from(format!("audit/{a}"));
        repo.store
            .rt
            .block_on(store.put(&path, bad.into()))
            .unwrap();
        let got = repo.list_records("audit", AUDIT_MAGIC).unwrap();
        assert!(
            got[0]
                .body
                .as_ref()
                .unwrap_err()
                .contains("does not hash to its name")
        );
    }
}
