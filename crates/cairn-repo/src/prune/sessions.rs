//! Step 2 of a prune (format-spec §5.3): what the other writer sessions
//! mean for it. Every commit claim is a root; a stale session is fenced
//! and removed; a running one holds back the markers it has not seen.

use std::collections::HashMap;

use cairn_format::SnapshotId;
use cairn_format::deletion::Deletion;
use cairn_format::snapshot::Snapshot;

use super::{PruneOptions, PruneReport};
use crate::error::{RepoError, Result};
use crate::indexed::IndexedRepository;
use crate::session::{End, Lease, Session, SessionView};
use crate::store;

/// What the other sessions add to a prune's listing.
#[derive(Default)]
pub(super) struct Sessions {
    /// Snapshots claimed by sessions (written or not yet).
    pub roots: Vec<(SnapshotId, Snapshot)>,
    /// Marker name → a running session that has not seen it.
    pub held_by: HashMap<String, String>,
    /// When the earliest running session started (store time).
    pub live_start: Option<i64>,
    /// Sessions taken as running.
    pub live: usize,
}

/// A session listed again, and the commit claims it made meanwhile.
type SessionClaims = (Option<SessionView>, Vec<(SnapshotId, Snapshot)>);

impl IndexedRepository {
    /// Every session but `own`, at store time `now`: collect its claims,
    /// fence or remove it when stale, and note which `markers` it holds.
    pub(super) fn settle_sessions(
        &self,
        lease: &Lease,
        own: &Session,
        now: i64,
        markers: &[(String, Deletion)],
        r: &mut PruneReport,
        opts: &PruneOptions,
    ) -> Result<Sessions> {
        let mut s = Sessions::default();
        for v in crate::session::list_sessions(&self.repo)? {
            if v.sid == own.sid {
                continue;
            }
            if !self.settle_session(lease, &v, now, r, opts, &mut s.roots)? {
                continue;
            }
            s.live += 1;
            if let Some(t) = v.start_ns {
                s.live_start = Some(s.live_start.map_or(t, |x: i64| x.min(t)));
            }
            let seen = v.markers.clone().unwrap_or_default();
            for (name, _) in markers {
                if !seen.contains(name) {
                    s.held_by
                        .entry(name.clone())
                        .or_insert_with(|| v.who.clone());
                }
            }
        }
        Ok(s)
    }

    /// One other session `v`: its commit claims go into `roots`; a stale
    /// one is fenced or removed. Returns whether it counts as running.
    fn settle_session(
        &self,
        lease: &Lease,
        v: &SessionView,
        now: i64,
        r: &mut PruneReport,
        opts: &PruneOptions,
        roots: &mut Vec<(SnapshotId, Snapshot)>,
    ) -> Result<bool> {
        // Every commit claim is a root, as long as it exists: only its
        // session removes it (format-spec §5.3 step 2, checked by the
        // model in format-spec/model: completing or removing claims let
        // a paused session's snapshot lose its data).
        let mut unwritten = false;
        for (name, e) in &v.ends {
            match e {
                End::Commit(bytes) => {
                    let id = SnapshotId::of(bytes);
                    let snap = Snapshot::decode(&self.repo.key, bytes)
                        .map_err(|x| RepoError::from_format(name, x))?;
                    if self.repo.store.head(&store::snapshot_path(&id))?.is_none() {
                        unwritten = true;
                    }
                    roots.push((id, snap));
                }
                End::Unreadable(why) => r
                    .warnings
                    .push(format!("{name} cannot be read ({why}); left as it is")),
                End::Fence => {}
            }
        }
        let quiet_for = || {
            crate::session::human(std::time::Duration::from_nanos(
                (now - v.last_alive_ns).max(0) as u64,
            ))
        };
        let stale = now - v.last_alive_ns > v.stale.as_nanos() as i64;
        let foreign = v.ends.iter().any(|(_, e)| matches!(e, End::Unreadable(_)))
            || v.start_ns.is_some() && v.markers.is_none();
        if foreign {
            // Never removed; held as if running (it may be).
            r.warnings.push(format!(
                "session {} has objects this cairn cannot read; it is treated as running and left in place",
                v.sid
            ));
        } else if unwritten && stale {
            // Claimed a commit and went quiet before writing it: its
            // claim stays a root (its data is kept) until the session
            // writes the snapshot and removes the claim itself.
            r.warnings.push(format!(
                "{} claimed a snapshot and has not written it (no heartbeat for {}); its data is kept until it does (if that process is gone for good, remove sessions/{}/ by hand)",
                v.who,
                quiet_for(),
                v.sid
            ));
            return Ok(false);
        } else if v.fenced() || v.markers.is_none() && stale {
            if !opts.dry_run {
                lease.check()?;
                crate::session::remove_session(&self.repo, v)?;
            }
            return Ok(false);
        } else if stale && !unwritten {
            if opts.dry_run {
                r.sessions_fenced.push(v.who.clone());
                return Ok(false);
            }
            lease.check()?;
            if crate::session::fence(&self.repo, v)?.is_some() {
                r.sessions_fenced
                    .push(format!("{} (no heartbeat for {})", v.who, quiet_for()));
                // A claim may have landed just before the fence: then
                // the session stays (its claim a root) until it ends.
                let (again, claims) = self.claims_since(v)?;
                if let Some(again) = again
                    && claims.is_empty()
                {
                    crate::session::remove_session(&self.repo, &again)?;
                }
                roots.extend(claims);
                return Ok(false);
            }
            // It claimed while we tried: alive after all, and its claim
            // is a root (format-spec §5.3 step 2).
            roots.extend(self.claims_since(v)?.1);
        }
        Ok(true)
    }

    /// List session `v` again: its view now (if it still has objects) and
    /// the commit claims it made since `v` was listed, as roots.
    fn claims_since(&self, v: &SessionView) -> Result<SessionClaims> {
        let Some(again) = crate::session::list_sessions(&self.repo)?
            .into_iter()
            .find(|x| x.sid == v.sid)
        else {
            return Ok((None, Vec::new()));
        };
        let mut claims = Vec::new();
        for (name, e) in &again.ends {
            if let End::Commit(bytes) = e
                && !v.ends.iter().any(|(n, _)| n == name)
            {
                let snap = Snapshot::decode(&self.repo.key, bytes)
                    .map_err(|x| RepoError::from_format(name, x))?;
                claims.push((SnapshotId::of(bytes), snap));
            }
        }
        Ok((Some(again), claims))
    }
}
