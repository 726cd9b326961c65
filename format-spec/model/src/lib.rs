//! Exhaustive model of cairn's lock-free prune protocol, checked with
//! [stateright]: `format-spec/README.md` §4.10 (session, claim and lease
//! records) and §5 (write ordering and the prune protocol, §5.1–§5.6).
//!
//! The model is a store (packs, index objects, snapshots, deletion markers,
//! session objects, prune lease generations) and actors whose every step is
//! one atomic store operation (or one listing together with the decision the
//! real code takes from it): two writer sessions (§5.1), two prune processes
//! (§5.2, §5.3), `forget`, and the store's clock. Any interleaving is
//! explored.
//!
//! * **Crashes and stalls.** An actor may simply never be scheduled again
//!   (a crash) or be scheduled much later while store time advances (a
//!   stall, the paused-process case): both are plain interleavings. A prune
//!   may also *abandon* its run ([`Action::PruneCrash`]), leaving its lease
//!   and everything it wrote behind; a later run (a new process) may then
//!   start from the same actor.
//! * **Store time.** With [`Timing::Free`] every age judgement (due marker,
//!   stale session, expired lease) is a free choice of the listing that
//!   makes it, which covers every clock. With [`Timing::Clock`] only ages
//!   matter (§5: an age is store time minus an object's `T`): every timed
//!   object carries its age, a [`Action::Tick`] ages them all by one, and an
//!   age is clamped where no comparison can tell larger ages apart, so time
//!   is unbounded and the state space finite. The mutation
//!   [`Mutations::store_time_from_host_clock`] judges ages by per-actor host
//!   clocks instead (offsets in [`Config::offsets`]).
//! * **Packs are blobs.** A pack is atomic: a snapshot needs whole packs, no
//!   two packs hold the same blob, and prune does not repack (§5.3 step 8's
//!   "mostly unused" packs are not modelled). Trees are not modelled either:
//!   a root's walk (step 5) is its set of needed packs.
//!
//! The invariant ([`invariant_holds`]): every snapshot object in the store
//! (written by a session, which reports it saved, or completed by a prune)
//! and not forgotten has every pack it needs present, in every reachable
//! state.
//!
//! Each protocol step can be removed or reordered through [`Mutations`];
//! [`Fixes`] holds the amendments that close the holes the model finds in §5
//! as written (see this crate's README). The tests check the holes, that the
//! amended protocol holds within stated bounds, and which removals break it.

use std::fmt;

use stateright::{Model, Property};

/// Writer sessions (backups).
pub const NS: usize = 2;
/// Prune actors (processes contending for the lease).
pub const NPR: usize = 2;
/// Packs: `A` and `B` exist initially, writer `i` uploads pack `2 + i`.
pub const NP: usize = 2 + NS;
/// Most prune runs a configuration may allow (sizes the object slots).
pub const MAX_RUNS: usize = 4;
/// Most lease generations a configuration may allow.
pub const MAX_GEN: usize = 8;
/// Snapshot slots: writer `i` writes slot `i`; slot [`SNAP_INIT`] exists
/// initially.
pub const NSNAP: usize = NS + 1;
/// The snapshot that exists in the initial store (needs pack `A`).
pub const SNAP_INIT: usize = NS;
/// Index object slots (see [`idx_writer`] and friends).
pub const NI: usize = 1 + 2 * NS + 2 * MAX_RUNS;
/// The index object of the initial store (lists `A` and `B`).
pub const IDX_INIT: usize = 0;

/// Pack `A` (initially indexed, needed by the initial snapshot).
pub const PACK_A: usize = 0;
/// Pack `B` (initially indexed, needed by nothing).
pub const PACK_B: usize = 1;

/// The pack writer session `i` uploads (§5.1 step 3).
pub const fn own_pack(i: usize) -> usize {
    2 + i
}
/// The index object writer session `i` writes after its upload (§5.1 step 3).
pub const fn idx_writer(i: usize) -> usize {
    1 + i
}
/// The index object writer session `i` writes to re-list marked packs it
/// relies on (§5.1 step 8, §5.4).
pub const fn idx_relist(i: usize) -> usize {
    1 + NS + i
}
/// The new index object of prune run `k` (§5.3 step 9).
pub const fn idx_prune(k: usize) -> usize {
    1 + 2 * NS + k
}
/// The index object of prune run `k` re-listing marked packs that late
/// snapshots need (§5.3 step 10).
pub const fn idx_late(k: usize) -> usize {
    1 + 2 * NS + MAX_RUNS + k
}

fn bit(i: usize) -> u8 {
    1 << i
}
fn bit16(i: usize) -> u16 {
    1 << i
}
fn bits(mask: u16) -> impl Iterator<Item = usize> {
    (0..16).filter(move |i| mask & (1 << i) != 0)
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Protocol steps that can be removed or reordered, one at a time, to see
/// whether the checker then finds a counterexample. All `false` is the
/// protocol as specified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mutations {
    /// §5.2: prunes take no lease (they neither list, create, renew nor
    /// confirm it): two prunes may run at once.
    pub no_lease: bool,
    /// §5.1 step 1: the session writes no `start`, so prune does not see it
    /// until it claims (and the session has no `start` to re-check).
    pub no_session_announce: bool,
    /// §5.1 steps 1–2 reordered: the session loads the index first, then
    /// lists the markers (`K`) and writes `start`.
    pub announce_after_index_load: bool,
    /// §5.3 step 2/7: due markers are never held for live relevant sessions.
    pub no_hold: bool,
    /// §5.3 step 2: a stale session is treated as dead (its objects are
    /// removed, it is no root) without the fence/claim race.
    pub no_fence: bool,
    /// §5.1 step 6: the session writes its snapshot without claiming `end`.
    pub no_claim: bool,
    /// §5.1 step 6: the session does not check that `start` still exists
    /// after its claim.
    pub no_start_recheck: bool,
    /// §5.1 step 5: no commit check.
    pub no_commit_check: bool,
    /// §5.3 steps 6–7: phase 2 does not keep (recover) packs that roots need.
    pub no_recover: bool,
    /// §5.3 step 2: commit records are not roots.
    pub no_commit_records_as_roots: bool,
    /// §5.3 steps 2–3 reordered: snapshots are listed before sessions.
    pub snapshots_listed_before_sessions: bool,
    /// §5.3 steps 3–4 reordered: the index is read (and `data/` listed)
    /// before the snapshots are listed.
    pub index_read_before_snapshots: bool,
    /// §5.3 step 8: unindexed packs newer than a live session's start are
    /// marked too.
    pub orphans_of_live_sessions_marked: bool,
    /// §5: every age (grace, stale, lease expiry) is judged by the reader's
    /// host clock against the writer's host clock, with the per-actor
    /// offsets of [`Config::offsets`], instead of by store time.
    pub store_time_from_host_clock: bool,
    /// §5.1 step 8 (§5.4): the session does not re-list marked packs it
    /// relies on.
    pub no_session_relist: bool,
    /// §5.3 step 10: prune does not re-list marked packs that late
    /// snapshots need.
    pub no_late_snapshots: bool,
}

/// Proposed changes to the protocol (not mutations: candidate fixes for the
/// holes the model finds in §5 as written; see the README).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fixes {
    /// §5.3 step 7 amended: a pack is deleted only if no marker listed in
    /// step 1 that is not completed in this run (held, or not yet due)
    /// names it.
    pub keep_packs_of_pending_markers: bool,
    /// §5.1 step 2 amended: when loading the index (after `start` exists),
    /// the session lists `deletions/` again and drops from its in-memory
    /// index every pack a marker names, so it never deduplicates against a
    /// marked pack (markers written later are relevant to it and held).
    pub drop_marked_packs_at_load: bool,
    /// §5.3 step 2 amended: a dead session's commit claim is completed only
    /// if the session's `start` was listed with it (a claim without `start`
    /// is either a session ending after its snapshot, or a late claim by a
    /// fenced and removed session, which it withdraws).
    pub complete_only_with_start: bool,
    /// §5.3 step 2 as before the completion rule: a session with a commit
    /// claim is committing, its claim a root; prune neither fences nor
    /// removes it (nor completes its commit); only the session removes its
    /// claim (step 9, or withdrawing a late claim).
    pub keep_commit_claims: bool,
}

/// How ages (§5: a marker's grace period, a stale session, an expired
/// lease) are judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// Every such judgement is a free choice of the listing that makes it:
    /// any present marker may be found due, any announced session without
    /// `end` stale, any lease expired. This covers every clock, skew,
    /// threshold and pause (an over-approximation of [`Timing::Clock`]), so
    /// a protocol that holds here holds whatever the clocks do.
    Free,
    /// Store time: every timed object has an age, [`Action::Tick`] advances
    /// the store's clock, sessions heartbeat ([`Action::Beat`]) and prunes
    /// renew their lease ([`Action::Renew`]); thresholds are
    /// [`Config::grace`], [`Config::stale`] and [`Config::ttl`].
    Clock,
}

/// Bounds and switches of one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How ages are judged.
    pub timing: Timing,
    /// Total prune runs (successful lease acquisitions, or starts with
    /// [`Mutations::no_lease`]), over both prune actors.
    pub prune_runs: u8,
    /// Highest lease generation that may be created (bounds renewals).
    pub max_gen: u8,
    /// `--keep-delete`: a marker is due when its age is at least this.
    pub grace: u8,
    /// `stale_secs`: a session is stale when its newest object's age is more
    /// than this.
    pub stale: u8,
    /// `ttl_secs`: a lease is expired when its age is more than this.
    pub ttl: u8,
    /// Writer sessions that run (the others never start).
    pub writers: u8,
    /// Prune actors that run (the others never start).
    pub prunes: u8,
    /// Snapshot slots that `forget` may delete (bit [`SNAP_INIT`] is the
    /// initial snapshot, bit `i` writer `i`'s).
    pub forgettable: u8,
    /// Most packs a writer reuses from its loaded index.
    pub max_reuse: u8,
    /// Whether a prune may abandon its run (crash) and a later run start.
    pub prune_crash: bool,
    /// Host clock offsets, writers `0..NS` then prunes (only with
    /// [`Mutations::store_time_from_host_clock`]).
    pub offsets: [i8; NS + NPR],
    /// Removed or reordered steps.
    pub mutations: Mutations,
    /// Proposed fixes.
    pub fixes: Fixes,
    /// Also check `sometimes` properties showing the model is not vacuous.
    pub sanity: bool,
}

impl Config {
    /// The protocol as specified, with the default bounds.
    pub fn spec() -> Self {
        Config {
            timing: Timing::Free,
            prune_runs: 3,
            max_gen: 4,
            grace: 1,
            stale: 0,
            ttl: 0,
            writers: NS as u8,
            prunes: NPR as u8,
            forgettable: (1 << NSNAP) - 1,
            max_reuse: 3,
            prune_crash: true,
            offsets: [0; NS + NPR],
            mutations: Mutations::default(),
            fixes: Fixes::default(),
            sanity: false,
        }
    }

    /// The same configuration with one change.
    pub fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }

    /// The model of this configuration.
    pub fn model(self) -> ProtocolModel {
        ProtocolModel::new(self)
    }
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

/// An index object (§4.5): the packs it lists and the index objects it
/// supersedes.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub struct IndexObj {
    /// Listed packs.
    pub packs: u8,
    /// Superseded index object slots.
    pub supersedes: u16,
}

/// A deletion marker (§4.8). Its contents stay in the slot after deletion
/// (a prune that listed it keeps what it read); [`Store::markers`] says
/// whether it exists.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub struct Marker {
    /// Packs to delete once due.
    pub packs: u8,
    /// Index object slots superseded by the new index written before it.
    pub indexes: u16,
    /// Store age (clamped).
    pub age: u8,
    /// Actor that wrote it (for host clocks).
    pub writer: u8,
}

/// Contents of a claim `sessions/<sid>/end-<k>` (§4.10).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    /// A commit claim holding the snapshot (here: the packs it needs).
    Commit(u8),
    /// A prune's fence.
    Fence,
}

/// The objects of one writer session under `sessions/<sid>/` (§4.10). A
/// session of the model commits one snapshot: its claim is `end-0`; a
/// prune's fence takes the next claim name, `end-0` before the claim or
/// `end-1` after it.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub struct SessionObjs {
    /// `start` exists (beats exist only with it in the model).
    pub start: bool,
    /// The markers listed before the index was loaded (`K`, in `start`).
    pub k: u8,
    /// Age of the newest of `start` and beats (clamped).
    pub age: u8,
    /// Claims `end-0` and `end-1`.
    pub ends: [Option<End>; 2],
}

impl SessionObjs {
    /// Whether any object of the session exists (it is listed).
    pub fn listed(&self) -> bool {
        self.start || self.ends.iter().any(Option::is_some)
    }

    /// Whether a prune fenced it.
    pub fn fenced(&self) -> bool {
        self.ends.contains(&Some(End::Fence))
    }

    /// The packs its commit claim needs (0 without one).
    pub fn claimed(&self) -> u8 {
        self.ends
            .iter()
            .map(|e| match e {
                Some(End::Commit(n)) => *n,
                _ => 0,
            })
            .fold(0, |a, n| a | n)
    }

    /// Its next claim name (`end-<k>`, one past its last claim).
    pub fn next_claim(&self) -> usize {
        if self.ends[0].is_some() { 1 } else { 0 }
    }
}

/// One lease generation `leases/prune/<gen>` (§5.2).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct LeaseObj {
    /// The prune run (process) that created it.
    pub holder: u8,
    /// The prune actor that created it (for host clocks).
    pub writer: u8,
    /// Store age (clamped).
    pub age: u8,
}

/// The object store.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Store {
    /// Packs present.
    pub packs: u8,
    /// For each present pack, the writer sessions whose `start` was written
    /// before the pack: the pack is "not older than" their start (§5.3
    /// step 8), compared by order rather than by clock.
    pub after_start: [u8; NP],
    /// Index objects present.
    pub indexes: u16,
    /// Index object contents (zero when absent).
    pub index: [IndexObj; NI],
    /// Deletion markers present (slot = prune run).
    pub markers: u8,
    /// Marker contents.
    pub marker: [Marker; MAX_RUNS],
    /// Snapshots present.
    pub snaps: u8,
    /// Packs each present snapshot needs.
    pub snap_needs: [u8; NSNAP],
    /// Session objects of each writer.
    pub sessions: [SessionObjs; NS],
    /// Lease generations `1..=MAX_GEN` (index `gen - 1`).
    pub lease: [Option<LeaseObj>; MAX_GEN],
}

impl Store {
    /// Index objects that no present index object supersedes (§5.3: index
    /// loading skips every object named in another's `supersedes`).
    pub fn live_indexes(&self) -> u16 {
        let superseded = bits(self.indexes).fold(0u16, |a, i| a | self.index[i].supersedes);
        self.indexes & !superseded
    }

    /// Packs the live index lists.
    pub fn live_packs(&self) -> u8 {
        bits(self.live_indexes()).fold(0u8, |a, i| a | self.index[i].packs)
    }

    /// The highest lease generation present, if any.
    pub fn newest_lease(&self) -> Option<(usize, LeaseObj)> {
        (0..MAX_GEN)
            .rev()
            .find_map(|i| self.lease[i].map(|l| (i + 1, l)))
    }

    fn delete_packs(&mut self, packs: u8) {
        self.packs &= !packs;
        for p in 0..NP {
            if packs & bit(p) != 0 {
                self.after_start[p] = 0;
            }
        }
    }

    fn delete_indexes(&mut self, slots: u16) {
        self.indexes &= !slots;
        for i in bits(slots) {
            self.index[i] = IndexObj::default();
        }
    }

    fn put_index(&mut self, slot: usize, obj: IndexObj) {
        self.indexes |= bit16(slot);
        self.index[slot] = obj;
    }
}

/// A writer session's program counter (§5.1).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WPc {
    /// Step 1: list `deletions/` (`K`).
    ListMarkers,
    /// Step 1: create `start` holding `K`.
    Announce,
    /// Step 2: load the index, drop listed packs storage does not hold, and
    /// choose the packs to reuse.
    Load,
    /// Step 3: upload the session's pack.
    Upload,
    /// Step 3: write an index object listing it.
    WriteIndex,
    /// Step 3: check that `start` still exists (else delete that index
    /// object and fail).
    PostIndexCheck,
    /// Step 5: every needed pack exists (else fail).
    CommitCheck,
    /// Step 6: create `end` with a commit record (fail if it exists).
    Claim,
    /// Step 6: check that `start` still exists (else delete `end`, fail).
    StartRecheck,
    /// Step 7: write the snapshot; the session reports it saved.
    WriteSnapshot,
    /// Step 8 (§5.4): list the markers.
    RelistList,
    /// Step 8 (§5.4): write an index object re-listing marked packs it needs.
    RelistWrite,
    /// Step 9: delete beats and `start`.
    Cleanup,
    /// Step 9: delete its claim `end-0`.
    CleanupEnd,
    /// Finished after saving.
    Done,
    /// Failed without a snapshot.
    Failed,
}

/// A writer session.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Writer {
    /// Next step.
    pub pc: WPc,
    /// Markers listed in step 1.
    pub k: u8,
    /// Packs it loaded (step 2) that it may reuse; which ones it reuses is
    /// chosen at the first step that depends on it (the commit check, else
    /// the claim, else the snapshot): until then nothing can observe the
    /// choice, so choosing late is exact and keeps fewer states.
    pub loaded: u8,
    /// Packs its snapshot needs (its own and the reused ones).
    pub needs: u8,
    /// Packs to re-list in step 8.
    pub relist: u8,
}

/// A prune actor's program counter (§5.2, §5.3).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum PPc {
    /// No run in progress; the next step lists `leases/prune/` (§5.2).
    Idle,
    /// §5.2: create lease generation `seen_gen + 1`.
    LeaseCreate,
    /// §5.3 step 1: list `deletions/`, decide which are due.
    Markers,
    /// §5.3 step 2: list `sessions/` and classify every session.
    Sessions,
    /// §5.3 step 2: fence stale session `j` (create its next claim name).
    Fence(u8),
    /// §5.3 step 2: complete the commit dead session `j` claimed (write its
    /// snapshot object if it does not exist).
    Complete(u8),
    /// §5.3 step 2: delete `start` and beats of dead session `j`.
    DelStart(u8),
    /// §5.3 step 2: delete the claims of dead session `j`.
    DelEnd(u8),
    /// §5.3 step 3: list `snapshots/`.
    Snapshots,
    /// §5.3 step 4: read the index.
    IndexRead,
    /// §5.3 step 4: list `data/` (steps 5, 6 and 8 are computed from what
    /// was read when the last listing is done).
    DataList,
    /// §5.3 step 7: phase 2 deletes.
    Phase2,
    /// §5.3 step 9: write the new index object.
    WriteIndex,
    /// §5.3 step 9: write the deletion marker.
    WriteMarker,
    /// §5.3 step 9: remove completed markers and the index objects they
    /// superseded.
    RemoveCompleted,
    /// §5.3 step 10: list the snapshots again.
    LateList,
    /// §5.3 step 10: write an index object re-listing marked packs that
    /// late snapshots need.
    LateWrite,
    /// §5.2: delete the run's lease generations.
    Release,
}

impl PPc {
    fn destructive(self) -> bool {
        matches!(
            self,
            PPc::Fence(_)
                | PPc::Complete(_)
                | PPc::DelStart(_)
                | PPc::DelEnd(_)
                | PPc::Phase2
                | PPc::WriteIndex
                | PPc::WriteMarker
                | PPc::RemoveCompleted
                | PPc::LateWrite
        )
    }
}

/// A prune actor: the process of its current run and what it has read.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Prune {
    /// Next step.
    pub pc: PPc,
    /// Current run (slot of its index objects and marker; lease holder).
    pub run: u8,
    /// The lease was confirmed since the last destructive step (§5.2).
    pub confirmed: bool,
    /// Its newest lease generation.
    pub my_gen: u8,
    /// The newest lease generation seen when listing (§5.2).
    pub seen_gen: u8,
    /// Markers listed in step 1.
    pub seen: u8,
    /// Of those, the due ones (with [`Timing::Free`] chosen when phase 2
    /// is decided: nothing observes it before).
    pub due: u8,
    /// Listed markers to which a session found live in step 2 is relevant
    /// (not in its `K`); the due ones among them are held.
    pub relevant: u8,
    /// Sessions found live in step 2.
    pub live_sess: u8,
    /// Packs needed by roots (commit records and listed snapshots).
    pub roots: u8,
    /// Sessions to fence.
    pub to_fence: u8,
    /// Sessions to remove (fenced, or dead).
    pub to_remove: u8,
    /// For each session, the packs its listed commit claim needs (for
    /// completing it on removal).
    pub claimed: [u8; NS],
    /// For each session to fence, the markers it is relevant to should the
    /// fence fail (it claimed first: alive after all).
    pub rel_if_alive: [u8; NS],
    /// Sessions to fence that have `start` (their start protects packs
    /// should the fence fail).
    pub start_if_alive: u8,
    /// Snapshots listed in step 3.
    pub snaps_seen: u8,
    /// Index objects read in step 4 (live and superseded).
    pub idx_read: u16,
    /// Packs of the live index read in step 4.
    pub live: u8,
    /// Packs listed in `data/` (step 4), then less those deleted.
    pub stored: u8,
    /// Listed packs protected by a live session's start (step 8).
    pub protected: u8,
    /// Packs to delete in step 7.
    pub dels: u8,
    /// Markers completed in this run.
    pub completed: u8,
    /// Packs marked in step 8.
    pub marked: u8,
    /// Packs of the new index (step 9).
    pub new_packs: u8,
    /// Packs to re-list in step 10.
    pub relist: u8,
}

impl Prune {
    fn idle() -> Self {
        Prune {
            pc: PPc::Idle,
            run: 0,
            confirmed: false,
            my_gen: 0,
            seen_gen: 0,
            seen: 0,
            due: 0,
            relevant: 0,
            live_sess: 0,
            roots: 0,
            to_fence: 0,
            to_remove: 0,
            claimed: [0; NS],
            rel_if_alive: [0; NS],
            start_if_alive: 0,
            snaps_seen: 0,
            idx_read: 0,
            live: 0,
            stored: 0,
            protected: 0,
            dels: 0,
            completed: 0,
            marked: 0,
            new_packs: 0,
            relist: 0,
        }
    }

    fn running(&self) -> bool {
        !matches!(self.pc, PPc::Idle | PPc::LeaseCreate)
    }
}

/// The whole system.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    /// The object store.
    pub store: Store,
    /// Writer sessions.
    pub writers: [Writer; NS],
    /// Prune actors.
    pub prunes: [Prune; NPR],
    /// Prune runs started so far.
    pub runs: u8,
}

/// One atomic step.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Action {
    /// Store time advances by one unit.
    Tick,
    /// `forget` deletes a snapshot.
    Forget(u8),
    /// §5.1 step 4: writer `i` heartbeats.
    Beat(u8),
    /// Writer `i` takes its next step (§5.1); at the step where it chooses
    /// the packs it reuses, the second field is that choice.
    Writer(u8, u8),

    /// Prune actor `a` takes its next step (§5.2, §5.3); with
    /// [`Timing::Free`] the second field is the choice its listing makes
    /// (the due markers in step 1, the stale sessions in step 2).
    Prune(u8, u8),
    /// §5.2: prune `a` confirms that the newest lease generation is its own,
    /// before a destructive step.
    Confirm(u8),
    /// §5.2: prune `a` renews its lease.
    Renew(u8),
    /// Prune `a`'s process dies; its lease and objects stay.
    PruneCrash(u8),
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// The model of one [`Config`].
#[derive(Clone, Debug)]
pub struct ProtocolModel {
    /// Its configuration.
    pub cfg: Config,
    w_order: Vec<WPc>,
    /// The writer step at which the reused packs are chosen.
    w_choose: WPc,
    p_order: Vec<PPc>,
    /// Whether prunes take the lease: not with [`Mutations::no_lease`], nor
    /// with a single prune actor (one process may always take its own
    /// lease over, so the lease steps change nothing).
    uses_lease: bool,
    /// Whether the prune actors are interchangeable (free timing, both
    /// active): states are then kept with the actors sorted, an exact
    /// symmetry reduction (stateright's BFS has none of its own).
    prune_symmetry: bool,
    marker_cap: u8,
    session_cap: u8,
    lease_cap: u8,
}

impl ProtocolModel {
    /// The model of `cfg`.
    pub fn new(cfg: Config) -> Self {
        assert!(cfg.prune_runs as usize <= MAX_RUNS);
        assert!(cfg.max_gen as usize <= MAX_GEN);
        let m = &cfg.mutations;
        let mut w_order = Vec::new();
        let announce = [WPc::ListMarkers, WPc::Announce];
        if m.no_session_announce {
            w_order.push(WPc::Load);
        } else if m.announce_after_index_load {
            w_order.push(WPc::Load);
            w_order.extend(announce);
        } else {
            w_order.extend(announce);
            w_order.push(WPc::Load);
        }
        w_order.extend([WPc::Upload, WPc::WriteIndex]);
        if !m.no_session_announce {
            w_order.push(WPc::PostIndexCheck);
        }
        if !m.no_commit_check {
            w_order.push(WPc::CommitCheck);
        }
        if !m.no_claim {
            w_order.push(WPc::Claim);
        }
        if !m.no_start_recheck && !m.no_session_announce {
            w_order.push(WPc::StartRecheck);
        }
        w_order.push(WPc::WriteSnapshot);
        if !m.no_session_relist {
            w_order.extend([WPc::RelistList, WPc::RelistWrite]);
        }
        w_order.push(WPc::Cleanup);
        if !m.no_claim {
            w_order.push(WPc::CleanupEnd);
        }
        w_order.push(WPc::Done);

        let mut p_order = vec![PPc::Markers];
        if m.snapshots_listed_before_sessions {
            p_order.extend([PPc::Snapshots, PPc::Sessions, PPc::IndexRead, PPc::DataList]);
        } else if m.index_read_before_snapshots {
            p_order.extend([PPc::Sessions, PPc::IndexRead, PPc::DataList, PPc::Snapshots]);
        } else {
            p_order.extend([PPc::Sessions, PPc::Snapshots, PPc::IndexRead, PPc::DataList]);
        }

        let spread = if m.store_time_from_host_clock {
            let hi = *cfg.offsets.iter().max().unwrap_or(&0) as i16;
            let lo = *cfg.offsets.iter().min().unwrap_or(&0) as i16;
            (hi - lo) as u8
        } else {
            0
        };
        let w_choose = *w_order
            .iter()
            .find(|p| matches!(p, WPc::CommitCheck | WPc::Claim | WPc::WriteSnapshot))
            .expect("a snapshot is written");
        ProtocolModel {
            w_choose,
            uses_lease: !m.no_lease && cfg.prunes >= 2,
            prune_symmetry: cfg.timing == Timing::Free && cfg.prunes as usize == NPR,
            marker_cap: cfg.grace + spread,
            session_cap: cfg.stale + 1 + spread,
            lease_cap: cfg.ttl + 1 + spread,
            w_order,
            p_order,
            cfg,
        }
    }

    /// The initial store: packs `A` and `B` indexed by one index object, one
    /// snapshot needing `A`; no marker, session or lease.
    pub fn initial_state(&self) -> State {
        let mut index = [IndexObj::default(); NI];
        index[IDX_INIT] = IndexObj {
            packs: bit(PACK_A) | bit(PACK_B),
            supersedes: 0,
        };
        let mut snap_needs = [0; NSNAP];
        snap_needs[SNAP_INIT] = bit(PACK_A);
        let first = if self.cfg.mutations.no_session_announce
            || self.cfg.mutations.announce_after_index_load
        {
            WPc::Load
        } else {
            WPc::ListMarkers
        };
        let mut writers = [Writer {
            pc: first,
            k: 0,
            loaded: 0,
            needs: 0,
            relist: 0,
        }; NS];
        for w in writers.iter_mut().skip(self.cfg.writers as usize) {
            w.pc = WPc::Done;
        }
        State {
            store: Store {
                packs: bit(PACK_A) | bit(PACK_B),
                after_start: [0; NP],
                indexes: bit16(IDX_INIT),
                index,
                markers: 0,
                marker: [Marker::default(); MAX_RUNS],
                snaps: bit(SNAP_INIT),
                snap_needs,
                sessions: [SessionObjs::default(); NS],
                lease: [None; MAX_GEN],
            },
            writers,
            prunes: [Prune::idle(); NPR],
            runs: 0,
        }
    }

    /// The age `reader` perceives for an object of `age` written by
    /// `writer` (actor ids: writers `0..NS`, prunes `NS..`).
    fn perceived(&self, age: u8, reader: usize, writer: usize) -> i16 {
        if self.cfg.mutations.store_time_from_host_clock {
            age as i16 + self.cfg.offsets[reader] as i16 - self.cfg.offsets[writer] as i16
        } else {
            age as i16
        }
    }

    fn lease_expired(&self, l: &LeaseObj, reader: usize) -> bool {
        self.perceived(l.age, reader, l.writer as usize) > self.cfg.ttl as i16
    }

    fn next_wpc(&self, pc: WPc) -> WPc {
        let i = self
            .w_order
            .iter()
            .position(|&p| p == pc)
            .expect("pc in order");
        self.w_order[i + 1]
    }

    /// Whether a writer is in a step where it heartbeats: after its
    /// announce, until its cleanup has deleted its beats.
    fn beating(&self, w: &Writer) -> bool {
        let started = self.w_order.iter().position(|&p| p == WPc::Announce);
        let pos = self.w_order.iter().position(|&p| p == w.pc);
        match (started, pos) {
            (Some(s), Some(p)) => p > s && !matches!(w.pc, WPc::CleanupEnd | WPc::Done),
            _ => false,
        }
    }

    fn lease_ok(&self, s: &State, p: &Prune) -> bool {
        matches!(s.store.newest_lease(), Some((_, l)) if l.holder == p.run)
    }

    // --- writer steps (§5.1) ------------------------------------------

    fn writer_step(&self, s: &mut State, i: usize, reuse: u8) {
        let st = &mut s.store;
        let w = &mut s.writers[i];
        let own = bit(own_pack(i));
        let next = self.next_wpc(w.pc);
        if w.pc == self.w_choose {
            debug_assert_eq!(reuse & !w.loaded, 0);
            w.needs = own | reuse;
            w.loaded = 0;
        }
        match w.pc {
            // §5.1 step 1: list deletions/ (names K).
            WPc::ListMarkers => {
                w.k = st.markers;
                w.pc = next;
            }
            // §5.1 step 1: create sessions/<sid>/start holding K.
            WPc::Announce => {
                st.sessions[i].start = true;
                st.sessions[i].k = w.k;
                st.sessions[i].age = 0;
                w.pc = next;
            }
            // §5.1 step 2: load the index (its live objects at this step),
            // list data/, drop listed packs storage does not hold; the
            // snapshot will need its own pack and the reused ones.
            WPc::Load => {
                w.loaded = st.live_packs() & st.packs & !own;
                if self.cfg.fixes.drop_marked_packs_at_load {
                    w.loaded &= !(0..MAX_RUNS)
                        .filter(|&m| st.markers & bit(m) != 0)
                        .fold(0u8, |a, m| a | st.marker[m].packs);
                }
                w.pc = next;
            }
            // §5.1 step 3: upload the pack.
            WPc::Upload => {
                st.packs |= own;
                // Its T is not older than the start of every session whose
                // `start` exists now (§5.3 step 8 compares them).
                st.after_start[own_pack(i)] = (0..NS)
                    .filter(|&j| st.sessions[j].start)
                    .fold(0u8, |acc, j| acc | bit(j));
                w.pc = next;
            }
            // §5.1 step 3: write an index object listing the uploaded pack.
            WPc::WriteIndex => {
                st.put_index(
                    idx_writer(i),
                    IndexObj {
                        packs: own,
                        supersedes: 0,
                    },
                );
                w.pc = next;
            }
            // §5.1 step 3: check that start still exists; if not, delete
            // that index object and fail.
            WPc::PostIndexCheck => {
                if st.sessions[i].start {
                    w.pc = next;
                } else {
                    st.delete_indexes(bit16(idx_writer(i)));
                    w.pc = WPc::Failed;
                }
            }
            // §5.1 step 5: every needed pack must exist; a session that
            // fails before step 6 deletes start and its beats.
            WPc::CommitCheck => {
                if w.needs & !st.packs == 0 {
                    w.pc = next;
                } else {
                    st.sessions[i].start = false;
                    st.sessions[i].k = 0;
                    st.sessions[i].age = 0;
                    w.pc = WPc::Failed;
                }
            }
            // §5.1 step 6: create end-0 holding a commit record; if that
            // name exists (a fence) fail without a snapshot.
            WPc::Claim => {
                if st.sessions[i].ends[0].is_none() {
                    st.sessions[i].ends[0] = Some(End::Commit(w.needs));
                    // Its newest object: the session's liveness age.
                    st.sessions[i].age = 0;
                    w.pc = next;
                } else {
                    w.pc = WPc::Failed;
                }
            }
            // §5.1 step 6: check that start still exists; if not, delete its
            // claim and fail.
            WPc::StartRecheck => {
                if st.sessions[i].start {
                    w.pc = next;
                } else {
                    if !self.cfg.mutations.no_claim {
                        st.sessions[i].ends[0] = None;
                    }
                    w.pc = WPc::Failed;
                }
            }
            // §5.1 step 7: write the snapshot (if a prune completed the
            // claimed commit meanwhile it exists: success); the session
            // reports it saved.
            WPc::WriteSnapshot => {
                st.snaps |= bit(i);
                st.snap_needs[i] = w.needs;
                w.pc = next;
            }
            // §5.1 step 8 (§5.4): list the markers; the marked packs it
            // relies on (reused or its own) are to be re-listed.
            WPc::RelistList => {
                let marked = (0..MAX_RUNS)
                    .filter(|&m| st.markers & bit(m) != 0)
                    .fold(0u8, |a, m| a | st.marker[m].packs);
                w.relist = w.needs & marked;
                w.pc = if w.relist == 0 {
                    self.next_wpc(next)
                } else {
                    next
                };
            }
            // §5.1 step 8 (§5.4): write an index object listing them.
            WPc::RelistWrite => {
                st.put_index(
                    idx_relist(i),
                    IndexObj {
                        packs: w.relist,
                        supersedes: 0,
                    },
                );
                w.relist = 0;
                w.pc = next;
            }
            // §5.1 step 9: delete beats, then start.
            WPc::Cleanup => {
                st.sessions[i].start = false;
                st.sessions[i].k = 0;
                st.sessions[i].age = 0;
                w.pc = next;
            }
            // §5.1 step 9: then its claim (a prune's fence `end-1` stays).
            WPc::CleanupEnd => {
                st.sessions[i].ends[0] = None;
                w.pc = next;
            }
            WPc::Done | WPc::Failed => unreachable!("no step"),
        }
        // Forget what is no longer needed (so equal futures merge).
        let w = &mut s.writers[i];
        if w.pc != WPc::Announce {
            w.k = 0;
        }
        if matches!(
            w.pc,
            WPc::RelistWrite | WPc::Cleanup | WPc::CleanupEnd | WPc::Done | WPc::Failed
        ) {
            w.needs = 0;
        }
        if w.pc != WPc::RelistWrite {
            w.relist = 0;
        }
        if w.pc == WPc::Failed {
            w.loaded = 0;
        }
    }

    // --- prune steps (§5.2, §5.3) -------------------------------------

    /// The step after the listing `pc` in this configuration's order; after
    /// the last listing, steps 5, 6 and 8 are computed.
    fn after_listing(&self, s: &mut State, a: usize, pc: PPc) {
        let i = self
            .p_order
            .iter()
            .position(|&p| p == pc)
            .expect("listing in order");
        if let Some(&next) = self.p_order.get(i + 1) {
            s.prunes[a].pc = next;
        } else {
            self.compute(s, a);
        }
    }

    /// After step 2's listing or a session's removal: the next session to
    /// fence or remove, else the next listing.
    fn next_session(&self, s: &mut State, a: usize) {
        let p = &mut s.prunes[a];
        for j in 0..NS {
            if p.to_fence & bit(j) != 0 {
                p.pc = PPc::Fence(j as u8);
                return;
            }
            if p.to_remove & bit(j) != 0 {
                p.pc = if p.claimed[j] != 0 {
                    PPc::Complete(j as u8)
                } else {
                    PPc::DelStart(j as u8)
                };
                return;
            }
        }
        p.claimed = [0; NS];
        self.after_listing(s, a, PPc::Sessions);
    }

    /// §5.3 steps 5, 6 and 8, computed from what the run has read.
    fn compute(&self, s: &mut State, a: usize) {
        let m = &self.cfg.mutations;
        let st = &s.store;
        let p = &mut s.prunes[a];
        let used = p.roots;
        // Step 5: a root whose walk needs a pack storage does not hold:
        // prune fails (nothing more is written or deleted).
        if used & !p.stored != 0 {
            self.abandon(s, a);
            return;
        }
        // Step 6: stored packs outside the live index holding used blobs.
        let recovered = if m.no_recover {
            0
        } else {
            p.stored & !p.live & used
        };
        // Step 7: due markers that are not held are completed; their packs
        // that are neither live nor recovered go.
        let completed = p.due & !(p.due & p.relevant);
        let mut dels = 0u8;
        let mut pending_packs = 0u8;
        for mk in 0..MAX_RUNS {
            if completed & bit(mk) != 0 {
                dels |= st.marker[mk].packs;
            } else if p.seen & bit(mk) != 0 {
                pending_packs |= st.marker[mk].packs;
            }
        }
        dels &= p.stored & !p.live & !recovered;
        if self.cfg.fixes.keep_packs_of_pending_markers {
            dels &= !pending_packs;
        }
        let stored = p.stored & !dels;
        // Step 8: live packs with no used blob, and stored packs in no index
        // and no marker, except those not older than the earliest start of
        // a live session.
        let in_markers = (0..MAX_RUNS)
            .filter(|&mk| p.seen & bit(mk) != 0)
            .fold(0u8, |acc, mk| acc | st.marker[mk].packs);
        let protected = if m.orphans_of_live_sessions_marked {
            0
        } else {
            p.protected
        };
        let marked =
            (p.live & stored & !used) | (stored & !p.live & !recovered & !in_markers & !protected);
        // Step 9: every remaining pack (listed packs storage does not hold
        // are dropped) and the recovered ones.
        let new_packs = (p.live & stored & !marked) | recovered;
        *p = Prune {
            pc: PPc::Phase2,
            run: p.run,
            confirmed: p.confirmed,
            my_gen: p.my_gen,
            snaps_seen: p.snaps_seen,
            idx_read: p.idx_read,
            dels,
            completed,
            marked,
            new_packs,
            ..Prune::idle()
        };
        self.skip_noops(s, a);
    }

    /// Destructive steps that would change nothing are skipped (with their
    /// lease confirmation): leaving them out removes no behaviour, as a
    /// prune may stop at any step anyway.
    fn skip_noops(&self, s: &mut State, a: usize) {
        loop {
            let p = &mut s.prunes[a];
            let skip = match p.pc {
                PPc::Phase2 => p.dels == 0,
                PPc::WriteMarker => p.marked == 0 && p.idx_read == 0,
                PPc::RemoveCompleted => p.completed == 0,
                PPc::LateList => self.cfg.mutations.no_late_snapshots,
                PPc::LateWrite => p.relist == 0,
                PPc::Release => !self.uses_lease,
                _ => false,
            };
            if !skip {
                return;
            }
            p.pc = match p.pc {
                PPc::Phase2 => PPc::WriteIndex,
                PPc::WriteMarker => PPc::RemoveCompleted,
                PPc::RemoveCompleted => PPc::LateList,
                PPc::LateList => PPc::LateWrite,
                PPc::LateWrite => PPc::Release,
                PPc::Release => {
                    s.prunes[a] = Prune::idle();
                    return;
                }
                _ => unreachable!(),
            };
        }
    }

    fn abandon(&self, s: &mut State, a: usize) {
        s.prunes[a] = Prune::idle();
    }

    /// The actor id recorded as an object's writer (only host clocks read
    /// it; with free timing it is left out so that actors stay symmetric).
    fn writer_id(&self, a: usize) -> u8 {
        if self.cfg.timing == Timing::Free {
            0
        } else {
            (NS + a) as u8
        }
    }

    fn start_run(&self, s: &mut State, a: usize, my_gen: u8) {
        let run = s.runs;
        s.runs += 1;
        s.prunes[a] = Prune {
            pc: PPc::Markers,
            run,
            my_gen,
            ..Prune::idle()
        };
    }

    fn prune_step(&self, s: &mut State, a: usize, choice: u8) {
        let free = self.cfg.timing == Timing::Free;
        if free && Some(&s.prunes[a].pc) == self.p_order.last() {
            // The due markers, chosen where phase 2 is decided.
            s.prunes[a].due = choice & s.prunes[a].seen;
        }
        let m = &self.cfg.mutations;
        let reader = NS + a;
        let pc = s.prunes[a].pc;
        if pc.destructive() && self.uses_lease {
            debug_assert!(s.prunes[a].confirmed);
            s.prunes[a].confirmed = false;
        }
        match pc {
            // §5.2: list leases/prune/; refuse if the newest is not expired.
            PPc::Idle => {
                if !self.uses_lease {
                    // Starting a run touches no object: it is done together
                    // with the run's first listing (exact: a purely local
                    // step commutes with every other actor's step).
                    self.start_run(s, a, 0);
                    self.prune_step(s, a, choice);
                    return;
                }
                match s.store.newest_lease() {
                    Some((_, l)) if !free && !self.lease_expired(&l, reader) => {}
                    newest => {
                        s.prunes[a].pc = PPc::LeaseCreate;
                        s.prunes[a].seen_gen = newest.map_or(0, |(g, _)| g as u8);
                    }
                }
            }
            // §5.2: create gen + 1, create-only: if it exists, refuse.
            PPc::LeaseCreate => {
                let g = s.prunes[a].seen_gen as usize + 1;
                if g > self.cfg.max_gen as usize || s.store.lease[g - 1].is_some() {
                    s.prunes[a] = Prune::idle();
                } else {
                    s.store.lease[g - 1] = Some(LeaseObj {
                        holder: s.runs,
                        writer: self.writer_id(a),
                        age: 0,
                    });
                    self.start_run(s, a, g as u8);
                }
            }
            // §5.3 step 1: list deletions/; a marker is due when its age is
            // at least the grace period.
            PPc::Markers => {
                let st = &s.store;
                let p = &mut s.prunes[a];
                p.seen = st.markers;
                p.due = if free {
                    0
                } else {
                    (0..MAX_RUNS)
                        .filter(|&mk| st.markers & bit(mk) != 0)
                        .filter(|&mk| {
                            let mr = &st.marker[mk];
                            self.perceived(mr.age, reader, mr.writer as usize)
                                >= self.cfg.grace as i16
                        })
                        .fold(0u8, |acc, mk| acc | bit(mk))
                };
                self.after_listing(s, a, PPc::Markers);
            }
            // §5.3 step 2: list sessions/ and classify each session.
            PPc::Sessions => {
                let st = &s.store;
                let p = &mut s.prunes[a];
                for j in 0..NS {
                    let so = &st.sessions[j];
                    if !so.listed() {
                        continue;
                    }
                    // A commit claim: committing, its snapshot is a root.
                    if !m.no_commit_records_as_roots {
                        p.roots |= so.claimed();
                    }
                    p.claimed[j] = if self.cfg.fixes.complete_only_with_start && !so.start {
                        0
                    } else {
                        so.claimed()
                    };
                    let stale = if free {
                        choice & bit(j) != 0
                    } else {
                        self.perceived(so.age, reader, j) > self.cfg.stale as i16
                    };
                    // Without `start` nothing says which markers it saw.
                    let rel = if so.start { p.seen & !so.k } else { p.seen };
                    if self.cfg.fixes.keep_commit_claims && so.claimed() != 0 && !so.fenced() {
                        // Committing: a root (above), left to the session;
                        // live for holds while it beats.
                        p.claimed[j] = 0;
                        if !stale {
                            if so.start {
                                p.live_sess |= bit(j);
                            }
                            if !m.no_hold {
                                p.relevant |= rel;
                            }
                        }
                    } else if so.fenced() || (!so.start && stale) || (stale && m.no_fence) {
                        // Dead: complete its claimed commits, remove it.
                        p.to_remove |= bit(j);
                    } else if stale {
                        p.to_fence |= bit(j);
                        p.rel_if_alive[j] = rel;
                        if so.start {
                            p.start_if_alive |= bit(j);
                        }
                    } else {
                        // Live: relevant to every marker not in its K.
                        if so.start {
                            p.live_sess |= bit(j);
                        }
                        if !m.no_hold {
                            p.relevant |= rel;
                        }
                    }
                }
                self.next_session(s, a);
            }
            // §5.3 step 2: fence a stale session by creating its next claim
            // name (one past the claims listed); if that name exists, read
            // it: a commit (it claimed first) is a root and the session is
            // alive after all, a fence (another prune's) means dead.
            PPc::Fence(j) => {
                let j = j as usize;
                let p = &mut s.prunes[a];
                let next = if p.claimed[j] != 0 { 1 } else { 0 };
                p.to_fence &= !bit(j);
                match s.store.sessions[j].ends[next] {
                    None => {
                        s.store.sessions[j].ends[next] = Some(End::Fence);
                        p.to_remove |= bit(j);
                    }
                    Some(End::Fence) => p.to_remove |= bit(j),
                    Some(End::Commit(needs)) => {
                        if !m.no_commit_records_as_roots {
                            p.roots |= needs;
                        }
                        if !m.no_hold {
                            p.relevant |= p.rel_if_alive[j];
                        }
                        p.live_sess |= p.start_if_alive & bit(j);
                        p.claimed[j] = 0;
                    }
                }
                p.rel_if_alive[j] = 0;
                p.start_if_alive &= !bit(j);
                self.next_session(s, a);
            }
            // §5.3 step 2: a dead session's commit claim whose snapshot does
            // not exist yet is completed: prune writes the snapshot.
            PPc::Complete(j) => {
                let j = j as usize;
                let needs = s.prunes[a].claimed[j];
                if s.store.snaps & bit(j) == 0 {
                    s.store.snaps |= bit(j);
                    s.store.snap_needs[j] = needs;
                }
                s.prunes[a].claimed[j] = 0;
                s.prunes[a].pc = PPc::DelStart(j as u8);
            }
            // §5.3 step 2: delete start and beats.
            PPc::DelStart(j) => {
                let so = &mut s.store.sessions[j as usize];
                so.start = false;
                so.k = 0;
                so.age = 0;
                s.prunes[a].pc = PPc::DelEnd(j);
            }
            // §5.3 step 2: delete its claims, last.
            PPc::DelEnd(j) => {
                s.store.sessions[j as usize].ends = [None; 2];
                s.prunes[a].to_remove &= !bit(j as usize);
                self.next_session(s, a);
            }
            // §5.3 step 3: list snapshots/; roots = snapshots ∪ commit
            // records.
            PPc::Snapshots => {
                let st = &s.store;
                let p = &mut s.prunes[a];
                p.snaps_seen = st.snaps;
                for sn in 0..NSNAP {
                    if st.snaps & bit(sn) != 0 {
                        p.roots |= st.snap_needs[sn];
                    }
                }
                self.after_listing(s, a, PPc::Snapshots);
            }
            // §5.3 step 4: read the index (every object, live and
            // superseded).
            PPc::IndexRead => {
                let st = &s.store;
                let p = &mut s.prunes[a];
                p.idx_read = st.indexes;
                p.live = st.live_packs();
                self.after_listing(s, a, PPc::IndexRead);
            }
            // §5.3 step 4: list data/ (with each pack's T, compared with the
            // starts of the sessions found live in step 2).
            PPc::DataList => {
                let st = &s.store;
                let p = &mut s.prunes[a];
                p.stored = st.packs;
                p.protected = (0..NP)
                    .filter(|&pk| st.packs & bit(pk) != 0)
                    .filter(|&pk| st.after_start[pk] & p.live_sess != 0)
                    .fold(0u8, |acc, pk| acc | bit(pk));
                self.after_listing(s, a, PPc::DataList);
            }
            // §5.3 step 7: phase 2 deletes.
            PPc::Phase2 => {
                let dels = s.prunes[a].dels;
                s.store.delete_packs(dels);
                s.prunes[a].dels = 0;
                s.prunes[a].pc = PPc::WriteIndex;
                self.skip_noops(s, a);
            }
            // §5.3 step 9: the new index object, superseding every index
            // object read.
            PPc::WriteIndex => {
                let p = &mut s.prunes[a];
                s.store.put_index(
                    idx_prune(p.run as usize),
                    IndexObj {
                        packs: p.new_packs,
                        supersedes: p.idx_read,
                    },
                );
                p.new_packs = 0;
                p.pc = PPc::WriteMarker;
                self.skip_noops(s, a);
            }
            // §5.3 step 9: the deletion marker naming the marked packs and
            // the superseded index objects.
            PPc::WriteMarker => {
                let p = &mut s.prunes[a];
                let mk = p.run as usize;
                s.store.markers |= bit(mk);
                s.store.marker[mk] = Marker {
                    packs: p.marked,
                    indexes: p.idx_read,
                    age: 0,
                    writer: self.writer_id(a),
                };
                p.idx_read = 0;
                p.pc = PPc::RemoveCompleted;
                self.skip_noops(s, a);
            }
            // §5.3 step 9: the completed markers and the index objects they
            // superseded are removed; held markers stay.
            PPc::RemoveCompleted => {
                let completed = s.prunes[a].completed;
                for mk in 0..MAX_RUNS {
                    if completed & bit(mk) != 0 {
                        let idx = s.store.marker[mk].indexes;
                        s.store.delete_indexes(idx);
                        s.store.markers &= !bit(mk);
                        s.store.marker[mk].age = 0;
                    }
                }
                s.prunes[a].completed = 0;
                s.prunes[a].pc = PPc::LateList;
                self.skip_noops(s, a);
            }
            // §5.3 step 10: list the snapshots once more; marked packs that
            // a snapshot committed meanwhile needs are to be re-listed.
            PPc::LateList => {
                let st = &s.store;
                let p = &mut s.prunes[a];
                let new = st.snaps & !p.snaps_seen;
                let needed = (0..NSNAP)
                    .filter(|&sn| new & bit(sn) != 0)
                    .fold(0u8, |acc, sn| acc | st.snap_needs[sn]);
                p.relist = p.marked & needed;
                p.marked = 0;
                p.snaps_seen = 0;
                p.pc = PPc::LateWrite;
                self.skip_noops(s, a);
            }
            // §5.3 step 10: the re-listing index object.
            PPc::LateWrite => {
                let p = &mut s.prunes[a];
                s.store.put_index(
                    idx_late(p.run as usize),
                    IndexObj {
                        packs: p.relist,
                        supersedes: 0,
                    },
                );
                p.relist = 0;
                p.pc = PPc::Release;
                self.skip_noops(s, a);
            }
            // §5.2: at its end a prune deletes its lease objects.
            PPc::Release => {
                let run = s.prunes[a].run;
                for l in s.store.lease.iter_mut() {
                    if matches!(l, Some(o) if o.holder == run) {
                        *l = None;
                    }
                }
                s.prunes[a] = Prune::idle();
            }
        }
    }
}

impl Model for ProtocolModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial_state()]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let free = self.cfg.timing == Timing::Free;
        if !free {
            actions.push(Action::Tick);
        }
        // Only prune's snapshot listings (§5.3 steps 3 and 10) read
        // snapshots/, so forget is offered only right before one: a forget
        // at any other time can be moved there without changing what any
        // actor sees, and a forgotten snapshot is no longer checked.
        if s.prunes
            .iter()
            .any(|p| matches!(p.pc, PPc::Snapshots | PPc::LateList))
        {
            for sn in 0..NSNAP {
                if s.store.snaps & self.cfg.forgettable & bit(sn) != 0 {
                    actions.push(Action::Forget(sn as u8));
                }
            }
        }
        for (i, w) in s.writers.iter().enumerate() {
            match w.pc {
                WPc::Done | WPc::Failed => {}
                pc if pc == self.w_choose => {
                    // Every subset of the loaded packs (up to max_reuse) may
                    // be reused.
                    let loaded = w.loaded;
                    let mut sub = loaded;
                    loop {
                        if sub.count_ones() <= self.cfg.max_reuse as u32 {
                            actions.push(Action::Writer(i as u8, sub));
                        }
                        if sub == 0 {
                            break;
                        }
                        sub = (sub - 1) & loaded;
                    }
                }
                _ => actions.push(Action::Writer(i as u8, 0)),
            }
            if !free && self.beating(w) && s.store.sessions[i].start && s.store.sessions[i].age > 0
            {
                actions.push(Action::Beat(i as u8));
            }
        }
        for (a, p) in s.prunes.iter().enumerate() {
            let a8 = a as u8;
            match p.pc {
                PPc::Idle => {
                    if s.runs < self.cfg.prune_runs && a < self.cfg.prunes as usize {
                        actions.push(Action::Prune(a8, 0));
                    }
                }
                pc if pc.destructive() && self.uses_lease && !p.confirmed => {
                    actions.push(Action::Confirm(a8));
                }
                pc if free && Some(&pc) == self.p_order.last() => {
                    let present = p.seen;
                    let mut sub = present;
                    loop {
                        actions.push(Action::Prune(a8, sub));
                        if sub == 0 {
                            break;
                        }
                        sub = (sub - 1) & present;
                    }
                }
                PPc::Sessions if free => {
                    let open = (0..NS)
                        .filter(|&j| s.store.sessions[j].listed() && !s.store.sessions[j].fenced())
                        .fold(0u8, |acc, j| acc | bit(j));
                    let mut sub = open;
                    loop {
                        actions.push(Action::Prune(a8, sub));
                        if sub == 0 {
                            break;
                        }
                        sub = (sub - 1) & open;
                    }
                }
                _ => actions.push(Action::Prune(a8, 0)),
            }
            if !free && p.running() && self.uses_lease && p.my_gen < self.cfg.max_gen {
                actions.push(Action::Renew(a8));
            }
            if p.pc != PPc::Idle && self.cfg.prune_crash {
                actions.push(Action::PruneCrash(a8));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            // Store time advances: every timed object ages (clamped).
            Action::Tick => {
                for mk in 0..MAX_RUNS {
                    if s.store.markers & bit(mk) != 0 {
                        let age = &mut s.store.marker[mk].age;
                        *age = (*age + 1).min(self.marker_cap);
                    }
                }
                for so in s.store.sessions.iter_mut() {
                    if so.listed() {
                        so.age = (so.age + 1).min(self.session_cap);
                    }
                }
                for l in s.store.lease.iter_mut().flatten() {
                    l.age = (l.age + 1).min(self.lease_cap);
                }
            }
            // forget: delete one snapshot.
            Action::Forget(sn) => {
                s.store.snaps &= !bit(sn as usize);
                s.store.snap_needs[sn as usize] = 0;
            }
            // §5.1 step 4: create beat-<n>, delete beat-<n-1>.
            Action::Beat(i) => s.store.sessions[i as usize].age = 0,
            Action::Writer(i, reuse) => self.writer_step(&mut s, i as usize, reuse),
            Action::Prune(a, choice) => self.prune_step(&mut s, a as usize, choice),
            // §5.2: before a step that writes or deletes, the holder checks
            // that the newest lease generation is its own (else it stops).
            Action::Confirm(a) => {
                let a = a as usize;
                if self.lease_ok(&s, &s.prunes[a]) {
                    s.prunes[a].confirmed = true;
                } else {
                    self.abandon(&mut s, a);
                }
            }
            // §5.2: renew by creating the next gen and deleting the older
            // own ones; a renewal that finds the next gen taken means the
            // lease was lost (the prune stops).
            Action::Renew(a) => {
                let a = a as usize;
                let p = s.prunes[a];
                let g = p.my_gen as usize + 1;
                if s.store.lease[g - 1].is_some() {
                    self.abandon(&mut s, a);
                } else {
                    s.store.lease[g - 1] = Some(LeaseObj {
                        holder: p.run,
                        writer: self.writer_id(a),
                        age: 0,
                    });
                    for l in s.store.lease[..g - 1].iter_mut() {
                        if matches!(l, Some(o) if o.holder == p.run) {
                            *l = None;
                        }
                    }
                    s.prunes[a].my_gen = g as u8;
                }
            }
            Action::PruneCrash(a) => self.abandon(&mut s, a as usize),
        }
        if self.prune_symmetry {
            s.prunes.sort();
        }
        if s == *last { None } else { Some(s) }
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut props = vec![Property::always(INVARIANT, |_, s| invariant_holds(s))];
        if self.cfg.sanity {
            props.push(Property::sometimes("both sessions save", |_, s: &State| {
                s.store.snaps & ((1 << NS) - 1) == (1 << NS) - 1
            }));
            props.push(Property::sometimes(
                "phase 2 deletes a pack",
                |_, s: &State| {
                    s.store.packs & (bit(PACK_A) | bit(PACK_B)) != bit(PACK_A) | bit(PACK_B)
                },
            ));
            props.push(Property::sometimes(
                "a session saves while a pack it reused is marked",
                |_, s: &State| {
                    (0..NS).any(|i| {
                        let marked = (0..MAX_RUNS)
                            .filter(|&m| s.store.markers & bit(m) != 0)
                            .fold(0u8, |a, m| a | s.store.marker[m].packs);
                        s.store.snaps & bit(i) != 0
                            && s.store.snap_needs[i] & !bit(own_pack(i)) & marked != 0
                    })
                },
            ));
            props.push(Property::sometimes("a fence wins", |_, s: &State| {
                (0..NS).any(|i| s.writers[i].pc == WPc::Failed && s.store.sessions[i].fenced())
            }));
            props.push(Property::sometimes(
                "a lease is taken over",
                |_, s: &State| {
                    let mut holders = s.store.lease.iter().flatten().map(|l| l.holder);
                    let first = holders.next();
                    holders.any(|h| Some(h) != first)
                },
            ));
            props.push(Property::sometimes(
                "three prune runs complete",
                |_, s: &State| s.runs == 3 && s.prunes.iter().all(|p| p.pc == PPc::Idle),
            ));
        }
        props
    }
}

/// Name of the safety property.
pub const INVARIANT: &str = "every saved snapshot has every pack it needs";

/// Every snapshot that a session reported as saved and that was not
/// forgotten has every pack it needs present (snapshot objects are written
/// only at §5.1 step 7, when the session reports it saved, and deleted only
/// by forget).
pub fn invariant_holds(s: &State) -> bool {
    (0..NSNAP)
        .all(|sn| s.store.snaps & bit(sn) == 0 || s.store.snap_needs[sn] & !s.store.packs == 0)
}

// ---------------------------------------------------------------------------
// Traces
// ---------------------------------------------------------------------------

fn pack_names(mask: u8) -> String {
    let names: Vec<&str> = (0..NP)
        .filter(|&p| mask & bit(p) != 0)
        .map(|p| ["A", "B", "C", "D"][p])
        .collect();
    format!("{{{}}}", names.join(","))
}

/// Human name of an index object slot.
pub fn index_name(slot: usize) -> String {
    if slot == IDX_INIT {
        "I0".into()
    } else if slot < 1 + NS {
        format!("Iw{}", slot - 1)
    } else if slot < 1 + 2 * NS {
        format!("Ir{}", slot - 1 - NS)
    } else if slot < 1 + 2 * NS + MAX_RUNS {
        format!("Ip{}", slot - 1 - 2 * NS)
    } else {
        format!("Il{}", slot - 1 - 2 * NS - MAX_RUNS)
    }
}

fn index_names(mask: u16) -> String {
    let names: Vec<String> = bits(mask).map(index_name).collect();
    format!("{{{}}}", names.join(","))
}

fn session_names(mask: u8) -> String {
    let names: Vec<String> = (0..NS)
        .filter(|&j| mask & bit(j) != 0)
        .map(|j| format!("session {j}"))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn listed_sessions(st: &Store) -> u8 {
    (0..NS)
        .filter(|&j| st.sessions[j].listed())
        .fold(0, |a, j| a | bit(j))
}

fn marker_names(mask: u8) -> String {
    let names: Vec<String> = (0..MAX_RUNS)
        .filter(|&m| mask & bit(m) != 0)
        .map(|m| format!("M{m}"))
        .collect();
    format!("{{{}}}", names.join(","))
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "packs {}", pack_names(self.packs))?;
        write!(f, "; index")?;
        for i in bits(self.indexes) {
            let o = &self.index[i];
            write!(f, " {}={}", index_name(i), pack_names(o.packs))?;
            if o.supersedes != 0 {
                write!(f, ">{}", index_names(o.supersedes))?;
            }
        }
        write!(f, " (live {})", pack_names(self.live_packs()))?;
        write!(f, "; markers")?;
        for m in 0..MAX_RUNS {
            if self.markers & bit(m) != 0 {
                let mk = &self.marker[m];
                write!(f, " M{m}={} age {}", pack_names(mk.packs), mk.age)?;
            }
        }
        write!(f, "; snaps")?;
        for sn in 0..NSNAP {
            if self.snaps & bit(sn) != 0 {
                let name = if sn == SNAP_INIT {
                    "init".to_string()
                } else {
                    format!("s{sn}")
                };
                write!(f, " {name}={}", pack_names(self.snap_needs[sn]))?;
            }
        }
        for (i, so) in self.sessions.iter().enumerate() {
            if so.listed() {
                write!(f, "; session {i}:")?;
                if so.start {
                    write!(f, " start K={} age {}", marker_names(so.k), so.age)?;
                }
                for (k, e) in so.ends.iter().enumerate() {
                    match e {
                        Some(End::Commit(n)) => write!(f, " end-{k}=commit{}", pack_names(*n))?,
                        Some(End::Fence) => write!(f, " end-{k}=fence")?,
                        None => {}
                    }
                }
            }
        }
        write!(f, "; lease")?;
        for (g, l) in self.lease.iter().enumerate() {
            if let Some(l) = l {
                write!(f, " g{}=run{} age {}", g + 1, l.holder, l.age)?;
            }
        }
        Ok(())
    }
}

impl ProtocolModel {
    /// A one-line description of `action` taken in `s`.
    pub fn describe(&self, s: &State, action: &Action) -> String {
        match *action {
            Action::Tick => "store time +1".into(),
            Action::Forget(sn) => format!("forget snapshot {}", sn),
            Action::Beat(i) => format!("writer {i}: heartbeat (§5.1 step 4)"),
            Action::Writer(i, reuse) => {
                let w = &s.writers[i as usize];
                let chosen = if w.pc == self.w_choose {
                    format!(" [reuses {}]", pack_names(reuse))
                } else {
                    String::new()
                };
                let what = match w.pc {
                    WPc::Load => "load index, drop missing packs (§5.1 step 2)",
                    WPc::ListMarkers => "list deletions/ -> K (§5.1 step 1)",
                    WPc::Announce => "create start (§5.1 step 1)",
                    WPc::Upload => "upload own pack (§5.1 step 3)",
                    WPc::WriteIndex => "write index object (§5.1 step 3)",
                    WPc::PostIndexCheck => "check start exists (§5.1 step 3)",
                    WPc::CommitCheck => "commit check: needed packs exist (§5.1 step 5)",
                    WPc::Claim => "claim end-0 = commit (§5.1 step 6)",
                    WPc::StartRecheck => "check start exists after claim (§5.1 step 6)",
                    WPc::WriteSnapshot => "write snapshot, REPORT SAVED (§5.1 step 7)",
                    WPc::RelistList => "list markers to re-list (§5.1 step 8)",
                    WPc::RelistWrite => "write re-listing index object (§5.1 step 8)",
                    WPc::Cleanup => "delete beats and start (§5.1 step 9)",
                    WPc::CleanupEnd => "delete its claim end-0 (§5.1 step 9)",
                    WPc::Done | WPc::Failed => "?",
                };
                format!("writer {i}: {what}{chosen}")
            }
            Action::Prune(a, choice) => {
                let p = &s.prunes[a as usize];
                let what = match p.pc {
                    PPc::Idle if self.uses_lease => "list leases (§5.2)".to_string(),
                    PPc::Idle => "start a run; list markers (§5.3 step 1)".to_string(),
                    PPc::LeaseCreate => format!("create lease gen {} (§5.2)", p.seen_gen + 1),
                    PPc::Markers => "list markers (§5.3 step 1)".into(),
                    PPc::Sessions if self.cfg.timing == Timing::Free => {
                        format!(
                            "list sessions; judged stale: {} (§5.3 step 2)",
                            session_names(choice & listed_sessions(&s.store))
                        )
                    }
                    PPc::Sessions => "list sessions, classify (§5.3 step 2)".into(),
                    PPc::Fence(j) => format!("fence session {j} (§5.3 step 2)"),
                    PPc::Complete(j) => format!(
                        "complete session {j}'s claimed commit: write its snapshot if absent (§5.3 step 2)"
                    ),
                    PPc::DelStart(j) => format!("delete start of session {j} (§5.3 step 2)"),
                    PPc::DelEnd(j) => format!("delete the claims of session {j} (§5.3 step 2)"),
                    PPc::Snapshots => "list snapshots (§5.3 step 3)".into(),
                    PPc::IndexRead => "read index (§5.3 step 4)".into(),
                    PPc::DataList => "list data/ (§5.3 step 4; steps 5, 6, 8 computed)".into(),
                    PPc::Phase2 => format!("phase 2: delete {} (§5.3 step 7)", pack_names(p.dels)),
                    PPc::WriteIndex => format!(
                        "write index Ip{} = {} superseding {} (§5.3 step 9)",
                        p.run,
                        pack_names(p.new_packs),
                        index_names(p.idx_read)
                    ),
                    PPc::WriteMarker => format!(
                        "write marker M{} = {} (§5.3 step 9)",
                        p.run,
                        pack_names(p.marked)
                    ),
                    PPc::RemoveCompleted => format!(
                        "remove completed markers {} (§5.3 step 9)",
                        marker_names(p.completed)
                    ),
                    PPc::LateList => "list snapshots again (§5.3 step 10)".into(),
                    PPc::LateWrite => format!(
                        "write late index Il{} = {} (§5.3 step 10)",
                        p.run,
                        pack_names(p.relist)
                    ),
                    PPc::Release => "delete own lease objects (§5.2)".into(),
                };
                let what = if self.cfg.timing == Timing::Free && Some(&p.pc) == self.p_order.last()
                {
                    format!("{what}; judged due: {}", marker_names(choice & p.seen))
                } else {
                    what
                };
                match p.pc {
                    PPc::Idle if !self.uses_lease => format!("prune {a} (run {}): {what}", s.runs),
                    PPc::Idle | PPc::LeaseCreate => format!("prune {a}: {what}"),
                    _ => format!("prune {a} (run {}): {what}", p.run),
                }
            }
            Action::Confirm(a) => format!("prune {a}: confirm lease (§5.2)"),
            Action::Renew(a) => format!("prune {a}: renew lease (§5.2)"),
            Action::PruneCrash(a) => format!("prune {a}: crash"),
        }
    }

    /// The steps of a path, numbered, with what each prune decided and the
    /// store after each step.
    pub fn trace(&self, path: &[(State, Option<Action>)]) -> String {
        let mut out = String::new();
        let mut n = 0;
        for (i, (state, action)) in path.iter().enumerate() {
            let (Some(a), Some((next, _))) = (action, path.get(i + 1)) else {
                continue;
            };
            n += 1;
            out.push_str(&format!("{n:3}. {}\n", self.describe(state, a)));
            if let Action::Prune(p, _) = a {
                let (before, after) = (&state.prunes[*p as usize], &next.prunes[*p as usize]);
                if before.pc == PPc::Sessions {
                    out.push_str(&format!(
                        "       live: {} (relevant to {}); roots need {}\n",
                        session_names(after.live_sess),
                        marker_names(after.relevant),
                        pack_names(after.roots)
                    ));
                }
                if Some(&before.pc) == self.p_order.last() && after.pc != PPc::Idle {
                    out.push_str(&format!(
                        "       decided: delete {}, mark {}, new index {}, completed {}\n",
                        pack_names(after.dels),
                        pack_names(after.marked),
                        pack_names(after.new_packs),
                        marker_names(after.completed)
                    ));
                }
            }
            out.push_str(&format!("       store: {}\n", next.store));
        }
        out
    }
}
