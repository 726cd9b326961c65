//! A bounded cache of verified chunk plaintexts, shared by every reader of the
//! mount, with one fetch per chunk however many readers want it at once, and a
//! small pool of threads that fetch the chunks a sequential reader will want
//! next.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};

use cairn_format::{BlobKind, ChunkId};
use cairn_repo::IndexedRepository;

/// A chunk's plaintext, authenticated against its id.
pub type ChunkData = Arc<Vec<u8>>;

type FetchResult = Result<ChunkData, String>;

/// One fetch in progress; later readers of the same chunk wait on it instead
/// of reading the pack again.
struct Inflight {
    done: Mutex<Option<FetchResult>>,
    cv: Condvar,
}

#[derive(Default)]
struct Lru {
    map: HashMap<ChunkId, (ChunkData, u64)>,
    order: BTreeMap<u64, ChunkId>,
    tick: u64,
    bytes: usize,
}

impl Lru {
    fn get(&mut self, id: &ChunkId) -> Option<ChunkData> {
        let (data, tick) = self.map.get_mut(id)?;
        self.order.remove(tick);
        self.tick += 1;
        *tick = self.tick;
        self.order.insert(self.tick, *id);
        Some(data.clone())
    }

    fn insert(&mut self, id: ChunkId, data: ChunkData, cap: usize) {
        if self.map.contains_key(&id) {
            return;
        }
        self.tick += 1;
        self.bytes += data.len();
        self.order.insert(self.tick, id);
        self.map.insert(id, (data, self.tick));
        while self.bytes > cap && self.order.len() > 1 {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some((d, _)) = self.map.remove(&old) {
                self.bytes -= d.len();
            }
        }
    }
}

/// Shared chunk cache with fetch deduplication.
pub struct ChunkCache {
    repo: Arc<IndexedRepository>,
    lru: Mutex<Lru>,
    inflight: Mutex<HashMap<ChunkId, Arc<Inflight>>>,
    capacity: usize,
    prefetch: Mutex<Option<SyncSender<ChunkId>>>,
}

impl ChunkCache {
    /// A cache holding at most `capacity` bytes of plaintext, with `prefetchers`
    /// background threads for read-ahead.
    pub fn new(repo: Arc<IndexedRepository>, capacity: usize, prefetchers: usize) -> Arc<Self> {
        let cache = Arc::new(ChunkCache {
            repo,
            lru: Mutex::new(Lru::default()),
            inflight: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            prefetch: Mutex::new(None),
        });
        if prefetchers > 0 {
            // A short queue: read-ahead that cannot start soon is useless.
            let (tx, rx) = sync_channel::<ChunkId>(prefetchers * 4);
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..prefetchers {
                let rx: Arc<Mutex<Receiver<ChunkId>>> = rx.clone();
                let weak = Arc::downgrade(&cache);
                std::thread::Builder::new()
                    .name(format!("cairn-prefetch-{i}"))
                    .spawn(move || {
                        loop {
                            let next = rx.lock().expect("prefetch queue").recv();
                            let Ok(id) = next else { return };
                            let Some(cache) = weak.upgrade() else { return };
                            cache.warm(&id);
                        }
                    })
                    .expect("spawn prefetch thread");
            }
            *cache.prefetch.lock().expect("prefetch") = Some(tx);
        }
        cache
    }

    /// The plaintext of a data chunk: from the cache, from a fetch already
    /// running, or read and verified now.
    pub fn get(&self, id: &ChunkId) -> FetchResult {
        if let Some(d) = self.lru.lock().expect("chunk cache").get(id) {
            return Ok(d);
        }
        let (slot, mine) = {
            let mut inf = self.inflight.lock().expect("inflight");
            // Checked again under the in-flight lock: a fetch may have
            // finished between the two locks.
            if let Some(d) = self.lru.lock().expect("chunk cache").get(id) {
                return Ok(d);
            }
            match inf.get(id) {
                Some(s) => (s.clone(), false),
                None => {
                    let s = Arc::new(Inflight {
                        done: Mutex::new(None),
                        cv: Condvar::new(),
                    });
                    inf.insert(*id, s.clone());
                    (s, true)
                }
            }
        };
        if mine {
            return self.fetch_into(id, &slot);
        }
        let mut done = slot.done.lock().expect("inflight slot");
        while done.is_none() {
            done = slot.cv.wait(done).expect("inflight slot");
        }
        done.clone().expect("checked")
    }

    /// Queue chunks for background fetching (dropped when the queue is full).
    pub fn prefetch(&self, ids: impl IntoIterator<Item = ChunkId>) {
        let guard = self.prefetch.lock().expect("prefetch");
        let Some(tx) = guard.as_ref() else { return };
        for id in ids {
            if self.is_cached_or_running(&id) {
                continue;
            }
            match tx.try_send(id) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    fn is_cached_or_running(&self, id: &ChunkId) -> bool {
        self.lru.lock().expect("chunk cache").map.contains_key(id)
            || self.inflight.lock().expect("inflight").contains_key(id)
    }

    /// Fetch a chunk in the background unless someone has it or is on it.
    fn warm(&self, id: &ChunkId) {
        let slot = {
            let mut inf = self.inflight.lock().expect("inflight");
            if inf.contains_key(id) || self.lru.lock().expect("chunk cache").map.contains_key(id) {
                return;
            }
            let s = Arc::new(Inflight {
                done: Mutex::new(None),
                cv: Condvar::new(),
            });
            inf.insert(*id, s.clone());
            s
        };
        // An error here is reported again to the reader that needs the chunk.
        let _ = self.fetch_into(id, &slot);
    }

    /// Read and verify a chunk, publish it to waiters and the cache. Only the
    /// thread that registered `slot` calls this, so it always runs: a waiter
    /// never waits on a fetch that has not started.
    fn fetch_into(&self, id: &ChunkId, slot: &Inflight) -> FetchResult {
        let r = self
            .repo
            .read_blob(BlobKind::Data, id)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        if let Ok(d) = &r {
            self.lru
                .lock()
                .expect("chunk cache")
                .insert(*id, d.clone(), self.capacity);
        }
        *slot.done.lock().expect("inflight slot") = Some(r.clone());
        slot.cv.notify_all();
        self.inflight.lock().expect("inflight").remove(id);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn lru_evicts_least_recently_used_down_to_capacity() {
        let mut l = Lru::default();
        l.insert(id(1), Arc::new(vec![0; 10]), 25);
        l.insert(id(2), Arc::new(vec![0; 10]), 25);
        assert!(l.get(&id(1)).is_some()); // 2 is now the oldest
        l.insert(id(3), Arc::new(vec![0; 10]), 25);
        assert!(l.map.contains_key(&id(1)));
        assert!(!l.map.contains_key(&id(2)));
        assert!(l.map.contains_key(&id(3)));
        assert_eq!(l.bytes, 20);
    }

    #[test]
    fn lru_keeps_one_entry_larger_than_capacity() {
        let mut l = Lru::default();
        l.insert(id(1), Arc::new(vec![0; 100]), 10);
        assert_eq!(l.map.len(), 1);
        l.insert(id(2), Arc::new(vec![0; 100]), 10);
        assert_eq!(l.map.len(), 1);
        assert!(l.map.contains_key(&id(2)));
    }
}
