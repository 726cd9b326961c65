//! Errors of the repository layer.
//!
//! Rules:
//! - every error that concerns a stored object names it (`object` is its path in
//!   the repository, e.g. `data/ab/ab12…`), and every error about a source or
//!   target file names the path;
//! - [`RepoError::is_retryable`] says whether trying again can help (network and
//!   store hiccups) or not (corruption, wrong password, bad input);
//! - nothing here is ever turned into a panic.

use std::path::PathBuf;

use cairn_format::FormatError;

/// What went wrong in the repository layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// An object that should exist does not.
    #[error("object {object} not found in the repository")]
    NotFound {
        /// Object path.
        object: String,
    },
    /// Write-once violated: the object already exists.
    #[error("object {object} already exists (objects are never overwritten)")]
    AlreadyExists {
        /// Object path.
        object: String,
    },
    /// An object is damaged (hash mismatch, failed authentication, bad encoding).
    #[error("object {object} is corrupted: {detail}")]
    Corrupted {
        /// Object path.
        object: String,
        /// What is wrong.
        detail: String,
    },
    /// No key file opens with the password given.
    #[error("wrong password: no key in the repository opens with it")]
    WrongPassword,
    /// There is no repository at the location.
    #[error("no cairn repository at {location} (run `cairn init` first)")]
    NoRepository {
        /// Where we looked.
        location: String,
    },
    /// An object was written by a newer cairn (or is not a cairn object).
    #[error("object {object} needs a newer cairn: {detail}")]
    UnsupportedVersion {
        /// Object path.
        object: String,
        /// Which version was found.
        detail: String,
    },
    /// The object store failed. Its message ends with the store's error,
    /// which is also its `source()`: a printed chain skips a cause its
    /// error's message already ends with (`cairn` does) and goes on to the
    /// causes below it (the connection refused under an S3 error).
    #[error("storage error on {object}: {error}")]
    Store {
        /// Object path.
        object: String,
        /// The store's error.
        #[source]
        error: object_store::Error,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another process's claim stands in the way (a prune lease held, a
    /// session fenced); the message says who and what to do.
    #[error("{0}")]
    Refused(String),
    /// The caller asked for something invalid.
    #[error("{0}")]
    InvalidInput(String),
    /// A format-level error not tied to an object (e.g. bad parameters).
    #[error(transparent)]
    Format(#[from] FormatError),
}

impl RepoError {
    /// Whether retrying the operation can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            RepoError::Store { error, .. } => matches!(
                error,
                object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
            ),
            RepoError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }

    /// Map a format error about `object` to the right repository error.
    pub fn from_format(object: &str, e: FormatError) -> Self {
        match e {
            FormatError::WrongPassword => RepoError::WrongPassword,
            FormatError::InvalidParameter(m) => RepoError::InvalidInput(m),
            e @ FormatError::UnsupportedVersion { .. } => RepoError::UnsupportedVersion {
                object: object.to_string(),
                detail: e.to_string(),
            },
            other => RepoError::Corrupted {
                object: object.to_string(),
                detail: other.to_string(),
            },
        }
    }

    /// Map an object store error about `object`.
    pub fn from_store(object: &str, e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => RepoError::NotFound {
                object: object.to_string(),
            },
            object_store::Error::AlreadyExists { .. } => RepoError::AlreadyExists {
                object: object.to_string(),
            },
            error => RepoError::Store {
                object: object.to_string(),
                error,
            },
        }
    }

    /// An I/O error on a local path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RepoError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = RepoError> = std::result::Result<T, E>;

/// A read error from a stream whose path the caller fills in.
impl From<std::io::Error> for RepoError {
    fn from(source: std::io::Error) -> Self {
        RepoError::Io {
            path: PathBuf::from("<stream>"),
            source,
        }
    }
}
