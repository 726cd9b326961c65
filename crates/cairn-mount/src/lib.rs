//! A read-only FUSE view of a cairn repository, for staging and for
//! recovering single files without a full restore.
//!
//! The mount shows
//! - `snapshots/<time>/…` — every snapshot, named by its UTC time
//!   (`2026-11-23T10:11:12Z`, with `-<short id>` appended when two share a
//!   second), and `snapshots/latest`;
//! - `services/<service>/<time>/…` with `services/<service>/latest`;
//! - `groups/<group id>/<service>/…` for stack group snapshots, and
//!   `groups/latest`.
//!
//! Files are read chunk by chunk at any offset ([`fs::CairnFs`]): each read
//! finds its chunks from the extent offsets in the tree, takes them from a
//! bounded cache of verified plaintext ([`cache::ChunkCache`]) or reads and
//! authenticates them, and a sequential reader gets the next chunks fetched
//! ahead on background threads.
//!
//! ```no_run
//! # fn demo(repo: cairn_repo::IndexedRepository) -> Result<(), cairn_mount::MountError> {
//! let opts = cairn_mount::MountOptions::default();
//! cairn_mount::mount(repo, std::path::Path::new("/mnt/cairn"), &opts, |m| {
//!     eprintln!("mounted at {}", m.display())
//! })?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod cache;
pub mod fs;
pub mod mountpoint;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use cairn_repo::{IndexedRepository, RepoError};
use fuser::{Config, MountOption, SessionACL};

pub use fs::{CairnFs, Filter, FsOptions};

/// What can stop a mount.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// The kernel side is missing or not accessible; a retry will not help
    /// until the system is changed.
    #[error("FUSE is not available: {0}")]
    FuseUnavailable(String),
    /// The mountpoint cannot be used.
    #[error("mountpoint {}: {detail}", path.display())]
    Mountpoint {
        /// The mountpoint.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Reading the repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The kernel refused the mount or the session failed.
    #[error("mounting at {}: {detail}", path.display())]
    Session {
        /// The mountpoint.
        path: PathBuf,
        /// The error.
        detail: String,
    },
}

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Which snapshots to show.
    pub filter: Filter,
    /// Bytes of chunk plaintext kept in memory.
    pub cache_bytes: usize,
    /// Threads answering kernel requests.
    pub threads: usize,
    /// Threads fetching chunks ahead of sequential readers.
    pub prefetch_threads: usize,
    /// Chunks fetched ahead of a sequential reader.
    pub readahead_chunks: usize,
    /// Re-list snapshots this often (they are also re-listed whenever a
    /// top-level directory is read, and at most once a second when a name
    /// missing there is looked up).
    pub refresh: Option<Duration>,
    /// Let other users see the mount (their access is then checked against
    /// the stored modes).
    pub allow_other: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            filter: Filter::default(),
            cache_bytes: 256 << 20,
            threads: 8,
            prefetch_threads: 4,
            readahead_chunks: 4,
            refresh: None,
            allow_other: false,
        }
    }
}

/// Why a mount ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// A signal (SIGINT, SIGTERM or SIGHUP) asked for it; we unmounted.
    Signal(i32),
    /// Someone else unmounted it (`umount`).
    Unmounted,
}

/// Mount `repo` read-only at `mountpoint` and serve it until a signal or an
/// outside `umount`. `ready` is called once the mount is in place.
pub fn mount(
    repo: IndexedRepository,
    mountpoint: &Path,
    opts: &MountOptions,
    ready: impl FnOnce(&Path),
) -> Result<Ended, MountError> {
    let path = mountpoint::absolute(mountpoint)?;
    if let Some(note) = mountpoint::prepare(&path)? {
        eprintln!("cairn mount: {note}");
    }
    let repo = Arc::new(repo);
    let cache = cache::ChunkCache::new(repo.clone(), opts.cache_bytes, opts.prefetch_threads);
    let fs = Arc::new(CairnFs::new(
        repo,
        cache,
        FsOptions {
            filter: opts.filter.clone(),
            readahead_chunks: opts.readahead_chunks,
        },
    )?);

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::FSName("cairn".into()),
        MountOption::Subtype("cairn".into()),
    ];
    if opts.allow_other {
        config.mount_options.push(MountOption::DefaultPermissions);
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;

    // Signals are taken before mounting so that one arriving while the mount
    // comes up still unmounts cleanly.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| MountError::Session {
        path: path.clone(),
        detail: format!("installing signal handlers: {e}"),
    })?;
    let sig_handle = signals.handle();
    let (tx, rx) = channel::<i32>();
    let sig_thread = std::thread::spawn(move || {
        if let Some(s) = signals.forever().next() {
            let _ = tx.send(s);
        }
    });

    let session = fuser::Session::new(fs::FsHandle(fs.clone()), &path, &config).map_err(|e| {
        MountError::Session {
            path: path.clone(),
            detail: e.to_string(),
        }
    })?;
    let bg = session.spawn().map_err(|e| MountError::Session {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    mountpoint::tune_readahead(&path, 1024);
    ready(&path);

    let refresher = opts.refresh.map(|every| {
        let fs = Arc::downgrade(&fs);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(every);
                let Some(fs) = fs.upgrade() else { return };
                if let Err(e) = fs.refresh(Duration::ZERO) {
                    eprintln!("cairn mount: cannot refresh the snapshot list: {e}");
                }
            }
        })
    });
    drop(refresher);

    let ended = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(sig) => break Ended::Signal(sig),
            Err(RecvTimeoutError::Disconnected) => break Ended::Signal(0),
            Err(RecvTimeoutError::Timeout) => {
                if bg.guard.is_finished() {
                    break Ended::Unmounted;
                }
            }
        }
    };
    sig_handle.close();
    let _ = sig_thread.join();
    match ended {
        Ended::Unmounted => {
            let _ = bg.join();
        }
        Ended::Signal(_) => {
            // A busy mount (a shell inside it) cannot be unmounted at once;
            // detach it so the mountpoint is usable and the kernel finishes
            // when the last user leaves.
            if let Err(detail) = mountpoint::unmount(&path) {
                return Err(MountError::Session {
                    path: path.clone(),
                    detail: format!("unmounting: {detail}"),
                });
            }
            let _ = bg.join();
        }
    }
    Ok(ended)
}
