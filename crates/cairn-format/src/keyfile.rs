//! Key files (`keys/<id>`): the master secret wrapped under a password.
//! See `format-spec/README.md` §4.3.

use crate::codec::{Reader, Writer};
use crate::crypto::{KdfParams, MasterKey, password_key, random32, unwrap_secret, wrap_secret};
use crate::envelope::check_prefix;
use crate::error::{FormatError, Result};

/// Magic of a key file.
pub const MAGIC: &[u8; 8] = b"CAIRNKEY";
/// Current key file version.
pub const VERSION: u16 = 1;
const KDF_ARGON2ID: u8 = 1;

/// A decoded (still locked) key file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFile {
    /// Argon2id parameters.
    pub kdf: KdfParams,
    /// Argon2id salt.
    pub salt: [u8; 32],
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Host the key was created on.
    pub hostname: String,
    /// User who created the key.
    pub username: String,
    /// Clear part, the associated data of the wrapped secret.
    aad: Vec<u8>,
    /// `nonce || ciphertext || tag` of the master secret.
    wrapped: Vec<u8>,
}

impl KeyFile {
    /// Wrap `master` under `password` and encode the key file.
    pub fn create(
        master: &MasterKey,
        password: &[u8],
        kdf: KdfParams,
        created: i64,
        hostname: &str,
        username: &str,
    ) -> Result<Vec<u8>> {
        let salt = random32();
        let kek = password_key(password, &salt, kdf)?;
        let mut w = Writer::new();
        w.raw(MAGIC);
        w.u16(VERSION);
        w.u8(KDF_ARGON2ID);
        w.u32(kdf.m_cost);
        w.u32(kdf.t_cost);
        w.u32(kdf.p_cost);
        w.raw(&salt);
        w.i64(created);
        w.bytes16(&hostname.as_bytes()[..hostname.len().min(1024)]);
        w.bytes16(&username.as_bytes()[..username.len().min(1024)]);
        let aad = w.buf.clone();
        wrap_secret(&kek, &aad, master.secret(), &mut w.buf);
        Ok(w.buf)
    }

    /// Decode without unlocking.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        check_prefix("key file", MAGIC, VERSION, bytes)?;
        let mut r = Reader::new(bytes, "key file");
        r.take(10)?;
        let kdf_kind = r.u8()?;
        if kdf_kind != KDF_ARGON2ID {
            return Err(r.err(format!("unknown key derivation function {kdf_kind}")));
        }
        let kdf = KdfParams {
            m_cost: r.u32()?,
            t_cost: r.u32()?,
            p_cost: r.u32()?,
        };
        kdf.validate()
            .map_err(|e| FormatError::malformed("key file", e.to_string()))?;
        let salt = r.array()?;
        let created = r.i64()?;
        let hostname = String::from_utf8_lossy(r.bytes16()?).into_owned();
        let username = String::from_utf8_lossy(r.bytes16()?).into_owned();
        let aad = bytes[..r.pos()].to_vec();
        let wrapped = r.take(r.remaining())?.to_vec();
        if wrapped.len() != 24 + 32 + 16 {
            return Err(FormatError::malformed(
                "key file",
                format!("wrapped secret is {} bytes, expected 72", wrapped.len()),
            ));
        }
        Ok(KeyFile {
            kdf,
            salt,
            created,
            hostname,
            username,
            aad,
            wrapped,
        })
    }

    /// Unlock with a password. A wrong password gives [`FormatError::WrongPassword`].
    pub fn unlock(&self, password: &[u8]) -> Result<MasterKey> {
        let kek = password_key(password, &self.salt, self.kdf)?;
        let secret = unwrap_secret(&kek, &self.aad, &self.wrapped)?;
        Ok(MasterKey::from_secret(secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn key_file_round_trip() {
        let m = MasterKey::generate();
        let kdf = KdfParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let bytes = KeyFile::create(&m, b"pw", kdf, 5, "h", "u").unwrap();
        let k = KeyFile::decode(&bytes).unwrap();
        assert_eq!(k.hostname, "h");
        assert_eq!(k.unlock(b"pw").unwrap().secret(), m.secret());
        assert_eq!(k.unlock(b"nope").unwrap_err(), FormatError::WrongPassword);
        for cut in 0..bytes.len() {
            let _ = KeyFile::decode(&bytes[..cut]).map(|k| k.unlock(b"pw"));
        }
    }
}
