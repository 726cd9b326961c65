//! The repository config object (`config`). See `format-spec/README.md` §4.2.

use crate::codec::{Reader, Writer};
use crate::crypto::MasterKey;
use crate::envelope;
use crate::error::{FormatError, Result};

/// Magic of the config object.
pub const MAGIC: &[u8; 8] = b"CAIRNCFG";
/// Current config version.
pub const VERSION: u16 = 1;

/// Chunker limits allowed by the FastCDC 2020 implementation.
pub const CHUNK_MIN_RANGE: (u32, u32) = (64, 1 << 20);
/// Average chunk size range.
pub const CHUNK_AVG_RANGE: (u32, u32) = (256, 4 << 20);
/// Maximum chunk size range.
pub const CHUNK_MAX_RANGE: (u32, u32) = (1024, 16 << 20);

/// Settings fixed at `init` for the lifetime of a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Random repository id.
    pub repo_id: [u8; 32],
    /// FastCDC minimum chunk size.
    pub chunk_min: u32,
    /// FastCDC average chunk size.
    pub chunk_avg: u32,
    /// FastCDC maximum chunk size.
    pub chunk_max: u32,
    /// zstd level for blobs.
    pub zstd_level: i32,
    /// Target pack size in bytes.
    pub pack_target: u32,
    /// Creation time, Unix seconds.
    pub created: i64,
}

impl Config {
    /// A config with the documented defaults and a random id.
    pub fn new_default(created: i64) -> Self {
        Config {
            repo_id: crate::crypto::random32(),
            chunk_min: 256 * 1024,
            chunk_avg: 1024 * 1024,
            chunk_max: 4 * 1024 * 1024,
            zstd_level: 3,
            pack_target: 16 * 1024 * 1024,
            created,
        }
    }

    /// Reject settings the chunker or packer cannot honour.
    pub fn validate(&self) -> Result<()> {
        let in_range = |v: u32, (lo, hi): (u32, u32)| v >= lo && v <= hi;
        let bad = |m: String| Err(FormatError::InvalidParameter(m));
        if !in_range(self.chunk_min, CHUNK_MIN_RANGE)
            || !in_range(self.chunk_avg, CHUNK_AVG_RANGE)
            || !in_range(self.chunk_max, CHUNK_MAX_RANGE)
        {
            return bad(format!(
                "chunk sizes {}/{}/{} out of range (min {:?}, avg {:?}, max {:?})",
                self.chunk_min,
                self.chunk_avg,
                self.chunk_max,
                CHUNK_MIN_RANGE,
                CHUNK_AVG_RANGE,
                CHUNK_MAX_RANGE
            ));
        }
        if !(self.chunk_min < self.chunk_avg && self.chunk_avg < self.chunk_max) {
            return bad("chunk sizes must satisfy min < avg < max".into());
        }
        if [self.chunk_min, self.chunk_avg, self.chunk_max]
            .iter()
            .any(|v| !v.is_multiple_of(2))
        {
            return bad("chunk sizes must be even".into());
        }
        if !(-7..=22).contains(&self.zstd_level) {
            return bad(format!("zstd level {} out of -7..=22", self.zstd_level));
        }
        if !(1 << 20..=1 << 30).contains(&self.pack_target) {
            return bad(format!(
                "pack size {} out of 1 MiB..=1 GiB",
                self.pack_target
            ));
        }
        Ok(())
    }

    fn body(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(&self.repo_id);
        w.u32(self.chunk_min);
        w.u32(self.chunk_avg);
        w.u32(self.chunk_max);
        w.i32(self.zstd_level);
        w.u32(self.pack_target);
        w.i64(self.created);
        w.buf
    }

    /// Encode and seal.
    pub fn encode(&self, key: &MasterKey) -> Vec<u8> {
        envelope::seal_object(key, MAGIC, VERSION, &self.body())
    }

    /// Open and decode.
    pub fn decode(key: &MasterKey, bytes: &[u8]) -> Result<Self> {
        let body = envelope::open_object(key, "config", MAGIC, VERSION, bytes)?;
        let mut r = Reader::new(&body, "config");
        let c = Config {
            repo_id: r.array()?,
            chunk_min: r.u32()?,
            chunk_avg: r.u32()?,
            chunk_max: r.u32()?,
            zstd_level: r.i32()?,
            pack_target: r.u32()?,
            created: r.i64()?,
        };
        r.finish()?;
        c.validate()
            .map_err(|e| FormatError::malformed("config", e.to_string()))?;
        Ok(c)
    }
}
