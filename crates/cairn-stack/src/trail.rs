//! The audit trail and restore journals, both kept in the repository as
//! record objects (format-spec §4.9).
//!
//! **Audit** (`audit/<id>`): every stack backup, restore, rollback and drill
//! appends a record carrying the sequence number and id of the previous one.
//! Ids are the BLAKE3 of the stored bytes and records are sealed with the
//! repository key, so an edited record no longer matches its name (and fails
//! authentication), and a removed one leaves its successor pointing at
//! nothing. Removing the newest record leaves no successor to notice; each
//! host therefore keeps an anchor (the newest record it wrote or verified)
//! in its state directory, and `verify` checks the chain still reaches it.
//!
//! **Journal** (`journal/<restore id>/<id>`): a restore writes `begin`, then
//! per service `prepared` (its safety snapshot, taken before the target is
//! overwritten) and `passed` (loaded and verified), then `end`. It lives in
//! the repository, not on the restoring host, because the host running a
//! disaster restore is the one most likely to be lost with it: any host with
//! the catalog and the password can resume or roll back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cairn_repo::Repository;
use cairn_repo::layout::ObjectKind;
use cairn_repo::records::{AUDIT_MAGIC, JOURNAL_MAGIC};
use serde::{Deserialize, Serialize};

use crate::StackError;

/// What an audit record is about.
pub const KINDS: [&str; 4] = ["backup", "restore", "rollback", "drill"];

/// One audit record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain (0 = first).
    pub seq: u64,
    /// Id of the previous record (None for the first).
    pub prev: Option<String>,
    /// backup | restore | rollback | drill
    pub kind: String,
    /// Unix seconds.
    pub time: f64,
    /// Who ran it.
    pub user: String,
    /// Where.
    pub host: String,
    /// One line for listings.
    pub summary: String,
    /// The operation's report (snapshots, per-service stages and timings,
    /// every check and its result).
    pub details: serde_json::Value,
}

/// A record as found in the repository.
#[derive(Debug, Serialize)]
pub struct AuditEntry {
    /// Hex id (object name).
    pub id: String,
    /// The record, or why it cannot be read.
    #[serde(flatten)]
    pub record: Option<AuditRecord>,
    /// Set when the object is damaged.
    pub damaged: Option<String>,
}

/// The default state directory: `$CAIRN_STATE_DIR`, `$XDG_STATE_HOME/cairn`
/// or `~/.local/state/cairn`.
pub fn default_state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("CAIRN_STATE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return Some(PathBuf::from(d).join("cairn"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/cairn"))
}

fn repo_err(e: cairn_repo::RepoError) -> StackError {
    StackError::Repo(e)
}

/// Every audit record, ordered by sequence number then id.
pub fn load(repo: &Repository) -> Result<Vec<AuditEntry>, StackError> {
    let mut v: Vec<AuditEntry> = repo
        .list_records(ObjectKind::Audit.dir(), AUDIT_MAGIC)
        .map_err(repo_err)?
        .into_iter()
        .map(|r| match r.body {
            Ok(b) => match serde_json::from_slice::<AuditRecord>(&b) {
                Ok(rec) => AuditEntry {
                    id: r.id,
                    record: Some(rec),
                    damaged: None,
                },
                Err(e) => AuditEntry {
                    id: r.id,
                    record: None,
                    damaged: Some(format!("undecodable record: {e}")),
                },
            },
            Err(e) => AuditEntry {
                id: r.id,
                record: None,
                damaged: Some(e),
            },
        })
        .collect();
    v.sort_by(|a, b| {
        let s = |e: &AuditEntry| e.record.as_ref().map(|r| r.seq).unwrap_or(u64::MAX);
        s(a).cmp(&s(b)).then(a.id.cmp(&b.id))
    });
    Ok(v)
}

#[derive(Serialize, Deserialize)]
struct Anchor {
    seq: u64,
    id: String,
    time: f64,
}

fn anchor_path(dir: &Path, repo: &Repository) -> PathBuf {
    dir.join(format!(
        "audit-anchor-{}.json",
        &cairn_format::id::to_hex(&repo.config().repo_id)[..16]
    ))
}

fn read_anchor(dir: &Path, repo: &Repository) -> Option<Anchor> {
    serde_json::from_slice(&std::fs::read(anchor_path(dir, repo)).ok()?).ok()
}

fn write_anchor(dir: &Path, repo: &Repository, seq: u64, id: &str) {
    if read_anchor(dir, repo).is_some_and(|a| a.seq > seq) {
        return;
    }
    let _ = std::fs::create_dir_all(dir);
    let p = anchor_path(dir, repo);
    let tmp = p.with_extension("tmp");
    let a = Anchor {
        seq,
        id: id.to_string(),
        time: crate::time::now(),
    };
    if std::fs::write(&tmp, serde_json::to_vec(&a).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, &p);
    }
}

/// Append a record after the newest one; returns its (seq, id).
pub fn append(
    repo: &Repository,
    kind: &str,
    summary: String,
    details: serde_json::Value,
    state_dir: Option<&Path>,
) -> Result<(u64, String), StackError> {
    let entries = load(repo)?;
    let head = entries
        .iter()
        .filter_map(|e| e.record.as_ref().map(|r| (r.seq, &e.id)))
        .max_by_key(|(s, _)| *s);
    let (seq, prev) = match head {
        Some((s, id)) => (s + 1, Some(id.clone())),
        None => (0, None),
    };
    let (host, user) = cairn_repo::whoami();
    let rec = AuditRecord {
        seq,
        prev,
        kind: kind.to_string(),
        time: crate::time::now(),
        user,
        host,
        summary,
        details,
    };
    let body = serde_json::to_vec(&rec).map_err(|e| StackError::Invalid(e.to_string()))?;
    let id = repo
        .put_record(ObjectKind::Audit.dir(), AUDIT_MAGIC, &body)
        .map_err(repo_err)?;
    if let Some(d) = state_dir {
        write_anchor(d, repo, seq, &id);
    }
    Ok((seq, id))
}

/// Check the chain: every record intact and decodable, every `prev`
/// present with the preceding sequence number, no gaps, and the newest
/// record this host has seen still there. Returns the problems (empty =
/// intact), each naming the record.
pub fn verify(repo: &Repository, entries: &[AuditEntry], state_dir: Option<&Path>) -> Vec<String> {
    let mut problems = Vec::new();
    let by_id: BTreeMap<&str, &AuditRecord> = entries
        .iter()
        .filter_map(|e| e.record.as_ref().map(|r| (e.id.as_str(), r)))
        .collect();
    for e in entries {
        if let Some(d) = &e.damaged {
            problems.push(format!("audit record {} is damaged: {d}", e.id));
        }
    }
    let mut seqs: BTreeSet<u64> = BTreeSet::new();
    for (id, r) in &by_id {
        seqs.insert(r.seq);
        match &r.prev {
            None if r.seq != 0 => problems.push(format!(
                "audit record {id} (seq {}) has no previous record",
                r.seq
            )),
            None => {}
            Some(p) => match by_id.get(p.as_str()) {
                None => problems.push(format!(
                    "audit record {p} is missing (seq {}): record {id} (seq {}) refers to it",
                    r.seq.saturating_sub(1),
                    r.seq
                )),
                Some(pr) if pr.seq + 1 != r.seq => problems.push(format!(
                    "audit record {id} (seq {}) follows record {p} of seq {}",
                    r.seq, pr.seq
                )),
                Some(_) => {}
            },
        }
    }
    if let Some(&max) = seqs.iter().next_back() {
        for s in 0..max {
            if !seqs.contains(&s) && !problems.iter().any(|p| p.contains(&format!("(seq {s})"))) {
                problems.push(format!("audit record of seq {s} is missing"));
            }
        }
    }
    if let Some(d) = state_dir {
        if let Some(a) = read_anchor(d, repo)
            && !by_id.contains_key(a.id.as_str())
        {
            problems.push(format!(
                "audit record {} (seq {}) is missing or was changed: this host saw it at {}",
                a.id,
                a.seq,
                crate::time::rfc3339(a.time)
            ));
        }
        // An intact chain moves the anchor to its newest record.
        if problems.is_empty()
            && let Some((id, r)) = by_id.iter().max_by_key(|(_, r)| r.seq)
        {
            write_anchor(d, repo, r.seq, id);
        }
    }
    problems
}

/// The first record of a restore's journal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Begin {
    /// Restore id.
    pub restore_id: String,
    /// restore | rollback | drill
    pub kind: String,
    /// Group restored (hex).
    pub group: String,
    /// Environment.
    pub env: String,
    /// Services selected.
    pub services: Vec<String>,
    /// Services restarted, not restored (`--with-dependents`).
    #[serde(default)]
    pub restart: Vec<String>,
    /// Whether safety snapshots are taken.
    pub safety: bool,
    /// Group id of the safety snapshots (hex).
    pub safety_group: String,
    /// For a rollback: the restore it undoes.
    pub undoes: Option<String>,
    /// Unix seconds.
    pub time: f64,
    /// Who.
    pub user: String,
    /// Where.
    pub host: String,
}

/// A journal record.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JournalEvent {
    /// The restore started.
    Begin(Begin),
    /// A service's safety snapshot was taken (or none was needed) and its
    /// target is about to be overwritten.
    Prepared {
        /// Service.
        service: String,
        /// Safety snapshot (hex), if the target held data.
        safety_snapshot: Option<String>,
        /// Why there is none.
        note: Option<String>,
        /// Unix seconds.
        time: f64,
    },
    /// A service was loaded and verified.
    Passed {
        /// Service.
        service: String,
        /// Snapshot restored (hex).
        snapshot: String,
        /// Unix seconds.
        time: f64,
    },
    /// The restore ended.
    End {
        /// Whether every service passed.
        ok: bool,
        /// Unix seconds.
        time: f64,
    },
}

/// A restore's journal, folded.
#[derive(Clone, Debug)]
pub struct Journal {
    /// How it started.
    pub begin: Begin,
    /// Services prepared → their safety snapshot.
    pub prepared: BTreeMap<String, Option<String>>,
    /// Services passed → snapshot restored.
    pub passed: BTreeMap<String, String>,
    /// Set when it ended.
    pub ended: Option<bool>,
}

/// Append one journal record.
pub fn journal(repo: &Repository, restore_id: &str, ev: &JournalEvent) -> Result<(), StackError> {
    let body = serde_json::to_vec(ev).map_err(|e| StackError::Invalid(e.to_string()))?;
    repo.put_record(
        &format!("{}/{restore_id}", ObjectKind::Journal.dir()),
        JOURNAL_MAGIC,
        &body,
    )
    .map_err(repo_err)?;
    Ok(())
}

/// Read a restore's journal (id or unique prefix).
pub fn read_journal(repo: &Repository, spec: &str) -> Result<Journal, StackError> {
    let ids = repo
        .list_record_dirs(ObjectKind::Journal.dir())
        .map_err(repo_err)?;
    let spec = spec.to_ascii_lowercase();
    let m: Vec<&String> = ids.iter().filter(|i| i.starts_with(&spec)).collect();
    let rid = match m.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(StackError::Invalid(format!(
                "no restore {spec:?} in the repository's journals"
            )));
        }
        _ => {
            return Err(StackError::Invalid(format!(
                "{} restores match {spec:?}",
                m.len()
            )));
        }
    };
    let mut events: Vec<JournalEvent> = Vec::new();
    for r in repo
        .list_records(
            &format!("{}/{rid}", ObjectKind::Journal.dir()),
            JOURNAL_MAGIC,
        )
        .map_err(repo_err)?
    {
        let b = r.body.map_err(|e| {
            StackError::Invalid(format!("journal record {} is damaged: {e}", r.object))
        })?;
        events.push(serde_json::from_slice(&b).map_err(|e| {
            StackError::Invalid(format!("journal record {} is undecodable: {e}", r.object))
        })?);
    }
    let t = |e: &JournalEvent| match e {
        JournalEvent::Begin(b) => b.time,
        JournalEvent::Prepared { time, .. }
        | JournalEvent::Passed { time, .. }
        | JournalEvent::End { time, .. } => *time,
    };
    events.sort_by(|a, b| t(a).partial_cmp(&t(b)).unwrap_or(std::cmp::Ordering::Equal));
    let begin = events
        .iter()
        .find_map(|e| match e {
            JournalEvent::Begin(b) => Some(b.clone()),
            _ => None,
        })
        .ok_or_else(|| {
            StackError::Invalid(format!("restore {rid}: its journal has no begin record"))
        })?;
    let mut j = Journal {
        begin,
        prepared: BTreeMap::new(),
        passed: BTreeMap::new(),
        ended: None,
    };
    for e in events {
        match e {
            JournalEvent::Prepared {
                service,
                safety_snapshot,
                ..
            } => {
                j.prepared.insert(service, safety_snapshot);
            }
            JournalEvent::Passed {
                service, snapshot, ..
            } => {
                j.passed.insert(service, snapshot);
            }
            JournalEvent::End { ok, .. } => j.ended = Some(ok),
            JournalEvent::Begin(_) => {}
        }
    }
    Ok(j)
}
