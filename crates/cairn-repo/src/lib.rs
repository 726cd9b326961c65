//! # cairn-repo
//!
//! The repository: the only layer that talks to storage (`Arc<dyn
//! object_store::ObjectStore>`). It creates and opens repositories, manages
//! key files, writes packs, index objects and snapshots in the order the format
//! requires (packs → index → snapshot), and backs up and restores file trees
//! and streams.
//!
//! Key types and states:
//! - [`Repository`]: opened with a password — config and key known, can list
//!   snapshots and manage keys;
//! - [`IndexedRepository`]: after [`Repository::load_index`] — can read blobs,
//!   back up (deduplicating against the index) and restore;
//! - [`Packer`]: one writer session; many may run at once, in one process or
//!   many, without locks.
//!
//! ```
//! use std::sync::Arc;
//! use cairn_repo::{Repository, BackupOptions, Progress, RestoreOptions, RestoreProgress};
//! use cairn_format::{config::Config, KdfParams};
//!
//! let store = Arc::new(object_store::memory::InMemory::new());
//! let kdf = KdfParams { m_cost: 64, t_cost: 1, p_cost: 1 };
//! Repository::init(store.clone(), b"pw", Config::new_default(0), kdf).unwrap();
//! let repo = Repository::open(store, b"pw").unwrap().load_index().unwrap();
//! let r = repo
//!     .backup_stream(&b"hello"[..], "greeting.txt", &BackupOptions::default(), &Progress::default(), || Ok(()))
//!     .unwrap();
//! let node = repo.find_node(&r.snapshot.tree, b"/greeting.txt").unwrap().unwrap();
//! let mut out = Vec::new();
//! repo.dump_file(&node, &mut out).unwrap();
//! assert_eq!(out, b"hello");
//! ```
//!
//! ## Where things are
//!
//! | module | owns |
//! |---|---|
//! | [`layout`] | every object kind's directory, name and parsing (format-spec §1) |
//! | [`store`] | the synchronous layer over `object_store`: create-only puts, listings, verified reads |
//! | [`backend`] | opening a location (disk, S3, GCS, Azure), options, the create-only probe |
//! | [`retry`] | retrying what the network breaks, and only that |
//! | [`cache`] | the local cache of a remote repository |
//! | `repo` | [`Repository`]: init, open, key files, snapshots, deletion markers |
//! | `indexed` | [`IndexedRepository`]: the loaded index, blob reads, writer sessions |
//! | [`index`] | the in-memory index (format-spec §6) |
//! | `packer` | [`Packer`]: packs and index objects of one writer |
//! | `backup` | the tree walk and stream backups |
//! | `restore`, `fsat` | restores, every path resolved beneath the target's descriptor |
//! | [`select`] | include/exclude patterns |
//! | [`session`] | the prune protocol's sessions, claims, lease and store time (§5) |
//! | `prune` | forget's second half: mark, then delete (§5.3) |
//! | [`check`], [`repair`] | verification and repair |
//! | [`diff`] | what differs between two snapshot trees |
//! | [`rewrite`] | copies of snapshots without some entries |
//! | [`forget`] | retention policies |
//! | [`records`] | audit and journal records |
//! | [`duration`] | the one duration grammar of the CLI and catalog; durations and dates printed |
//! | [`limits`] | the protocol's timings and the bounds on a snapshot's tree |
//! | [`sys`] | the few system calls rustix has no safe form of |
#![deny(missing_docs)]

pub mod backend;
mod backup;
pub mod cache;
pub mod check;
pub mod diff;
pub mod duration;
pub mod error;
pub mod forget;
mod fsat;
pub mod index;
mod indexed;
pub mod layout;
pub mod limits;
mod packer;
mod prune;
pub mod records;
pub mod repair;
mod repo;
mod restore;
pub mod retry;
pub mod rewrite;
pub mod select;
pub mod session;
pub mod store;
pub mod sys;

pub use backup::{
    BackupOptions, BackupResult, COPIED_FROM, CopyMemo, ParentChoice, Progress, clean_absolute,
};
pub use error::{RepoError, Result};
pub use fsat::empty_directory;

/// What a long operation is doing now, for progress displays.
pub type Stage = std::sync::Arc<std::sync::Mutex<String>>;

pub(crate) fn set_stage(stage: &Option<Stage>, msg: impl Into<String>) {
    if let Some(s) = stage {
        *s.lock().expect("stage") = msg.into();
    }
}
pub use indexed::IndexedRepository;
pub use packer::{Packer, PackerStats};
pub use prune::{PruneOptions, PruneReport};
pub use repo::{KeyChoice, KeyInfo, Repository, now_ns, whoami};
pub use restore::{
    Damage, Entry, RestoreOptions, RestoreProgress, RestoreReport, Withheld,
    normalize_snapshot_path,
};
