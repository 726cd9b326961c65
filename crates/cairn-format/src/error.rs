//! Errors of the format layer.
//!
//! Rules: a decoder never panics on input bytes; every failure says which kind of
//! object was being decoded and what was wrong with it. The caller (the repository)
//! adds the object's name. No error here can be cured by retrying: the bytes are
//! what they are.

/// What went wrong while encoding, decoding, sealing or opening an object.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes do not follow the format (wrong magic, truncated, bad field).
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// The kind of object or field being decoded.
        what: &'static str,
        /// What exactly is wrong.
        detail: String,
    },
    /// The object was written by a newer (or unknown) format version.
    #[error("unsupported {what} version {version} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The kind of object.
        what: &'static str,
        /// Version found in the bytes.
        version: u16,
        /// Version this build understands.
        supported: u16,
    },
    /// Authentication failed: the bytes were altered or the key is wrong.
    #[error("authentication failed for {what}: the data was altered or the key is wrong")]
    AuthenticationFailed {
        /// The kind of object.
        what: &'static str,
    },
    /// A key file could not be opened with the given password.
    #[error("wrong password")]
    WrongPassword,
    /// A blob decrypted fine but its content does not hash to its id.
    #[error("{what} content does not match its id")]
    IdMismatch {
        /// The kind of blob.
        what: &'static str,
    },
    /// An invalid parameter was passed to an encoder (a bug or bad user setting).
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
}

impl FormatError {
    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        FormatError::Malformed {
            what,
            detail: detail.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;
