//! Snapshot objects (`snapshots/<id>`). See `format-spec/README.md` §4.6.

use crate::codec::{Reader, Writer, put_str};
use crate::crypto::MasterKey;
use crate::envelope;
use crate::error::Result;
use crate::id::{ChunkId, SnapshotId};

/// Magic of a snapshot object.
pub const MAGIC: &[u8; 8] = b"CAIRNSNP";
/// Current snapshot version.
pub const VERSION: u16 = 1;

/// Counters recorded by the backup that wrote a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Files not in the parent snapshot.
    pub files_new: u64,
    /// Files in the parent whose metadata changed (read again).
    pub files_changed: u64,
    /// Files in the parent with unchanged metadata (not read).
    pub files_unchanged: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of file content read from the source.
    pub bytes_read: u64,
    /// Logical size of all files in the snapshot.
    pub bytes_total: u64,
    /// New data blobs written.
    pub data_blobs_added: u64,
    /// New tree blobs written.
    pub tree_blobs_added: u64,
    /// Stored bytes of new blobs (after dedup, compression and sealing).
    pub bytes_added: u64,
    /// Sources that could not be read and were skipped.
    pub errors: u64,
    /// Wall time of the backup, nanoseconds.
    pub duration_ns: u64,
}

/// A snapshot: a root tree plus who, what, when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Creation time, nanoseconds since the Unix epoch (UTC).
    pub time_ns: i64,
    /// Root tree blob.
    pub tree: ChunkId,
    /// Snapshot used for change detection, if any.
    pub parent: Option<SnapshotId>,
    /// Group id shared by the snapshots of one stack backup.
    pub group: Option<[u8; 16]>,
    /// Service name ("" when none was given).
    pub service: String,
    /// Host name.
    pub hostname: String,
    /// User name.
    pub username: String,
    /// Backed-up paths (absolute; byte strings, not necessarily UTF-8).
    pub paths: Vec<Vec<u8>>,
    /// Tags.
    pub tags: Vec<String>,
    /// Counters.
    pub summary: Summary,
    /// Logical fingerprints recorded by datastore adapters (name → value).
    pub fingerprints: Vec<(String, Vec<u8>)>,
    /// Free-form extensions (name → value), kept by tools that do not know them.
    pub extra: Vec<(String, String)>,
}

impl Snapshot {
    /// Encode and seal.
    pub fn encode(&self, key: &MasterKey) -> Vec<u8> {
        let mut w = Writer::new();
        w.i64(self.time_ns);
        w.raw(&self.tree.0);
        match &self.parent {
            Some(p) => {
                w.u8(1);
                w.raw(&p.0);
            }
            None => w.u8(0),
        }
        match &self.group {
            Some(g) => {
                w.u8(1);
                w.raw(g);
            }
            None => w.u8(0),
        }
        put_str(&mut w, &self.service);
        put_str(&mut w, &self.hostname);
        put_str(&mut w, &self.username);
        w.u32(self.paths.len() as u32);
        for p in &self.paths {
            w.bytes32(p);
        }
        w.u32(self.tags.len() as u32);
        for t in &self.tags {
            put_str(&mut w, t);
        }
        let s = &self.summary;
        for v in [
            s.files_new,
            s.files_changed,
            s.files_unchanged,
            s.dirs,
            s.bytes_read,
            s.bytes_total,
            s.data_blobs_added,
            s.tree_blobs_added,
            s.bytes_added,
            s.errors,
            s.duration_ns,
        ] {
            w.u64(v);
        }
        w.u32(self.fingerprints.len() as u32);
        for (k, v) in &self.fingerprints {
            put_str(&mut w, k);
            w.bytes32(v);
        }
        w.u32(self.extra.len() as u32);
        for (k, v) in &self.extra {
            put_str(&mut w, k);
            put_str(&mut w, v);
        }
        envelope::seal_object(key, MAGIC, VERSION, &w.buf)
    }

    /// Open and decode.
    pub fn decode(key: &MasterKey, bytes: &[u8]) -> Result<Self> {
        let body = envelope::open_object(key, "snapshot", MAGIC, VERSION, bytes)?;
        let mut r = Reader::new(&body, "snapshot");
        let time_ns = r.i64()?;
        let tree = ChunkId(r.array()?);
        let parent = match r.u8()? {
            0 => None,
            1 => Some(SnapshotId(r.array()?)),
            x => return Err(r.err(format!("bad parent flag {x}"))),
        };
        let group = match r.u8()? {
            0 => None,
            1 => Some(r.array()?),
            x => return Err(r.err(format!("bad group flag {x}"))),
        };
        let service = r.string()?;
        let hostname = r.string()?;
        let username = r.string()?;
        let n = r.count(4)?;
        let mut paths = Vec::with_capacity(n);
        for _ in 0..n {
            paths.push(r.bytes32()?.to_vec());
        }
        let n = r.count(4)?;
        let mut tags = Vec::with_capacity(n);
        for _ in 0..n {
            tags.push(r.string()?);
        }
        let mut v = [0u64; 11];
        for x in v.iter_mut() {
            *x = r.u64()?;
        }
        let summary = Summary {
            files_new: v[0],
            files_changed: v[1],
            files_unchanged: v[2],
            dirs: v[3],
            bytes_read: v[4],
            bytes_total: v[5],
            data_blobs_added: v[6],
            tree_blobs_added: v[7],
            bytes_added: v[8],
            errors: v[9],
            duration_ns: v[10],
        };
        let n = r.count(8)?;
        let mut fingerprints = Vec::with_capacity(n);
        for _ in 0..n {
            fingerprints.push((r.string()?, r.bytes32()?.to_vec()));
        }
        let n = r.count(8)?;
        let mut extra = Vec::with_capacity(n);
        for _ in 0..n {
            extra.push((r.string()?, r.string()?));
        }
        r.finish()?;
        Ok(Snapshot {
            time_ns,
            tree,
            parent,
            group,
            service,
            hostname,
            username,
            paths,
            tags,
            summary,
            fingerprints,
            extra,
        })
    }
}
