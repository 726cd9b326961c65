//! # cairn-format
//!
//! The bytes cairn stores, and nothing else: typed ids, key derivation and
//! sealing, and the encoders/decoders of every stored object. No I/O, no async.
//! The normative description is `format-spec/README.md`; each module names the
//! section it implements.
//!
//! Key types: [`MasterKey`] (the repository secret and its sub-keys),
//! [`config::Config`], [`keyfile::KeyFile`], [`pack::PackEntry`],
//! [`index::IndexFile`], [`snapshot::Snapshot`], [`tree::Tree`].
//!
//! Decoders never panic on malformed input and never allocate in proportion to a
//! length field that the remaining input cannot back.
//!
//! ```
//! use cairn_format::{MasterKey, config::Config};
//! let key = MasterKey::generate();
//! let cfg = Config::new_default(0);
//! let bytes = cfg.encode(&key);
//! assert_eq!(Config::decode(&key, &bytes).unwrap(), cfg);
//! // Another key cannot open it.
//! assert!(Config::decode(&MasterKey::generate(), &bytes).is_err());
//! ```
#![deny(missing_docs)]

pub mod codec;
pub mod config;
pub mod crypto;
pub mod deletion;
pub mod envelope;
pub mod error;
pub mod id;
pub mod index;
pub mod keyfile;
pub mod pack;
pub mod snapshot;
pub mod tree;

#[cfg(test)]
mod robustness;
#[cfg(test)]
mod vectors;

pub use crypto::{IdHasher, KdfParams, MasterKey, PackKey};
pub use error::{FormatError, Result};
pub use id::{BlobKind, ChunkId, IndexId, KeyId, PackId, SnapshotId};
