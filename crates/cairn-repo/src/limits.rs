//! The timings and bounds an opened repository works within: the session
//! and lease protocol's times (format-spec §5) and what a snapshot's tree
//! may expand to (§10). The repository holds them; sessions and restores
//! read them.

use std::time::Duration;

/// Timing of the protocol. Defaults: a beat every 60 s, stale after 30 min
/// without one, a prune lease of 10 min. `CAIRN_PROTOCOL_TIMES=BEAT_MS,STALE_MS,LEASE_MS`
/// overrides them (for tests that cannot wait half an hour).
#[derive(Clone, Copy, Debug)]
pub struct ProtocolTimes {
    /// Interval between heartbeats of a session.
    pub beat: Duration,
    /// A session without a heartbeat for this long (store time) is stale.
    pub stale: Duration,
    /// A prune lease not renewed for this long (store time) has expired.
    pub lease_ttl: Duration,
}

impl Default for ProtocolTimes {
    fn default() -> Self {
        let mut t = ProtocolTimes {
            beat: Duration::from_secs(60),
            stale: Duration::from_secs(1800),
            lease_ttl: Duration::from_secs(600),
        };
        if let Ok(v) = std::env::var("CAIRN_PROTOCOL_TIMES") {
            let ms: Vec<u64> = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
            if let [b, s, l] = ms[..] {
                t.beat = Duration::from_millis(b.max(1));
                t.stale = Duration::from_millis(s.max(1));
                t.lease_ttl = Duration::from_millis(l.max(1));
            }
        }
        t
    }
}

/// Bounds on what a snapshot's tree may expand to (format-spec §10). Trees
/// are shared by id, so 41 tree blobs can describe 2^40 paths: before a
/// restore or a listing walks a snapshot, its expansion is computed over the
/// distinct trees only and refused when it passes a bound. The defaults are
/// far above real trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeLimits {
    /// Entries (files, directories, links, …) in the whole tree.
    pub entries: u64,
    /// Directory levels below the root.
    pub depth: u32,
    /// Sum of the entries' apparent sizes (sparse files count whole).
    pub bytes: u64,
}

impl Default for TreeLimits {
    fn default() -> Self {
        TreeLimits {
            entries: 1_000_000_000,
            depth: 1024,
            bytes: 1 << 50,
        }
    }
}
