//! Redis fingerprints: per database, every key's type, value and whether it expires.

use crate::StackError;
use crate::catalog::Service;
use crate::redis::{Conn, Reply};
use cairn_format::snapshot::Snapshot;
use std::collections::BTreeMap;

use super::*;

/// One Redis key as read atomically (MULTI/EXEC): TTL, DUMP payload and the
/// digest of its logical content.
pub struct RedisKey {
    /// Database.
    pub db: u32,
    /// Key.
    pub key: Vec<u8>,
    /// PTTL (-1 = no expiry).
    pub pttl: i64,
    /// DUMP payload.
    pub dump: Vec<u8>,
    /// BLAKE3 of (key, type, TTL present, value).
    pub digest: [u8; 32],
}

fn value_command(ty: &str, key: &[u8]) -> Vec<Vec<u8>> {
    let k = key.to_vec();
    match ty {
        "string" => vec![b"GET".to_vec(), k],
        "list" => vec![b"LRANGE".to_vec(), k, b"0".to_vec(), b"-1".to_vec()],
        "set" => vec![b"SMEMBERS".to_vec(), k],
        "zset" => vec![
            b"ZRANGE".to_vec(),
            k,
            b"0".to_vec(),
            b"-1".to_vec(),
            b"WITHSCORES".to_vec(),
        ],
        "hash" => vec![b"HGETALL".to_vec(), k],
        "stream" => vec![b"XRANGE".to_vec(), k, b"-".to_vec(), b"+".to_vec()],
        // Module types: their DUMP payload stands for the value.
        _ => vec![b"DUMP".to_vec(), k],
    }
}

fn put_reply(h: &mut blake3::Hasher, r: &Reply) {
    match r {
        Reply::Bulk(Some(b)) => {
            h.update(b"$");
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        }
        Reply::Bulk(None) | Reply::Array(None) => {
            h.update(b"_");
        }
        Reply::Int(i) => {
            h.update(b":");
            h.update(&i.to_le_bytes());
        }
        Reply::Status(s) | Reply::Error(s) => {
            h.update(b"+");
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        Reply::Array(Some(v)) => {
            h.update(b"*");
            h.update(&(v.len() as u64).to_le_bytes());
            for x in v {
                put_reply(h, x);
            }
        }
    }
}

fn key_digest(key: &[u8], ty: &str, ttl_present: bool, value: &Reply) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(&(ty.len() as u64).to_le_bytes());
    h.update(ty.as_bytes());
    h.update(&[u8::from(ttl_present)]);
    // Unordered types are hashed in a canonical order.
    let canon = match (ty, value) {
        ("set", Reply::Array(Some(v))) => {
            let mut v = v.clone();
            v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
            Reply::Array(Some(v))
        }
        ("hash", Reply::Array(Some(v))) => {
            let mut pairs: Vec<Vec<Reply>> = v.chunks(2).map(|c| c.to_vec()).collect();
            pairs.sort_by(|a, b| format!("{:?}", a[0]).cmp(&format!("{:?}", b[0])));
            Reply::Array(Some(pairs.concat()))
        }
        _ => value.clone(),
    };
    put_reply(&mut h, &canon);
    *h.finalize().as_bytes()
}

/// Read every key of the service (per database, in key order), each
/// atomically; `each` sees them one by one.
pub fn redis_keys(
    svc: &Service,
    conn: &mut Conn,
    mut each: impl FnMut(RedisKey) -> Result<(), StackError>,
) -> Result<(), StackError> {
    let io = |e: std::io::Error| err(svc, format!("redis: {e}"));
    for &db in &svc.databases {
        conn.call(&[b"SELECT", db.to_string().as_bytes()])
            .map_err(io)?;
        let keys = conn.scan(&svc.key_pattern).map_err(io)?;
        for batch in keys.chunks(256) {
            let mut pending: Vec<Vec<u8>> = batch.to_vec();
            let mut got: BTreeMap<Vec<u8>, RedisKey> = BTreeMap::new();
            for _attempt in 0..5 {
                if pending.is_empty() {
                    break;
                }
                let types = conn
                    .pipeline(
                        &pending
                            .iter()
                            .map(|k| vec![b"TYPE".to_vec(), k.clone()])
                            .collect::<Vec<_>>(),
                    )
                    .map_err(io)?;
                let mut cmds = Vec::new();
                for (k, t) in pending.iter().zip(&types) {
                    let ty = match t {
                        Reply::Status(s) => s.clone(),
                        _ => "none".into(),
                    };
                    cmds.push(vec![b"MULTI".to_vec()]);
                    cmds.push(vec![b"PTTL".to_vec(), k.clone()]);
                    cmds.push(vec![b"DUMP".to_vec(), k.clone()]);
                    cmds.push(vec![b"TYPE".to_vec(), k.clone()]);
                    cmds.push(value_command(&ty, k));
                    cmds.push(vec![b"EXEC".to_vec()]);
                }
                let replies = conn.pipeline(&cmds).map_err(io)?;
                let mut retry = Vec::new();
                for (k, rs) in pending.iter().zip(replies.chunks(6)) {
                    let Reply::Array(Some(v)) = &rs[5] else {
                        retry.push(k.clone());
                        continue;
                    };
                    let [pttl, dump, ty, value] = v.as_slice() else {
                        retry.push(k.clone());
                        continue;
                    };
                    let (Reply::Int(pttl), Reply::Status(ty)) = (pttl, ty) else {
                        retry.push(k.clone());
                        continue;
                    };
                    if *pttl == -2 || ty == "none" {
                        continue; // expired or deleted since SCAN
                    }
                    let Reply::Bulk(Some(dump)) = dump else {
                        continue;
                    };
                    if matches!(value, Reply::Error(_)) {
                        retry.push(k.clone()); // type changed since TYPE
                        continue;
                    }
                    got.insert(
                        k.clone(),
                        RedisKey {
                            db,
                            key: k.clone(),
                            pttl: *pttl,
                            dump: dump.clone(),
                            digest: key_digest(k, ty, *pttl >= 0, value),
                        },
                    );
                }
                pending = retry;
            }
            if let Some(k) = pending.first() {
                return Err(err(
                    svc,
                    format!(
                        "redis key {:?} kept changing type while being read",
                        String::from_utf8_lossy(k)
                    ),
                ));
            }
            for (_, k) in got {
                each(k)?;
            }
        }
    }
    Ok(())
}

/// Accumulates per-database Redis fingerprints from [`redis_keys`].
#[derive(Default)]
pub struct RedisFingerprint {
    dbs: BTreeMap<u32, (u64, blake3::Hasher)>,
}

impl RedisFingerprint {
    /// Add one key (keys arrive in order within a database).
    pub fn add(&mut self, k: &RedisKey) {
        let e = self.dbs.entry(k.db).or_default();
        e.0 += 1;
        e.1.update(&k.digest);
    }
    /// The parts, every selected database present (empty ones count 0).
    pub fn finish(mut self, databases: &[u32]) -> Fingerprint {
        for d in databases {
            self.dbs.entry(*d).or_default();
        }
        self.dbs
            .into_iter()
            .map(|(db, (n, h))| {
                (
                    format!("db{db}"),
                    Part {
                        count: n,
                        hash: *h.finalize().as_bytes(),
                    },
                )
            })
            .collect()
    }
}

/// How a snapshot's Redis databases map onto the service's (an environment
/// may restore database 0 into 1): by position when both list the same
/// number of databases, else unchanged.
pub fn redis_db_map(svc: &Service, snap: &Snapshot) -> BTreeMap<u32, u32> {
    let mut src: Vec<u32> = decode(snap)
        .keys()
        .filter_map(|k| k.strip_prefix("db")?.parse().ok())
        .collect();
    src.sort_unstable();
    if src.len() == svc.databases.len() {
        src.into_iter().zip(svc.databases.iter().copied()).collect()
    } else {
        BTreeMap::new()
    }
}

/// A snapshot's fingerprint with Redis database parts renamed by `map`.
pub fn remap(f: &Fingerprint, map: &BTreeMap<u32, u32>) -> Fingerprint {
    f.iter()
        .map(|(k, p)| {
            let k = match k.strip_prefix("db").and_then(|d| d.parse::<u32>().ok()) {
                Some(d) => format!("db{}", map.get(&d).copied().unwrap_or(d)),
                None => k.clone(),
            };
            (k, *p)
        })
        .collect()
}

/// Fingerprint a Redis service's keys now.
pub fn redis(svc: &Service, conn: &mut Conn) -> Result<Fingerprint, StackError> {
    let mut f = RedisFingerprint::default();
    redis_keys(svc, conn, |k| {
        f.add(&k);
        Ok(())
    })?;
    Ok(f.finish(&svc.databases))
}
