//! An agent's ed25519 key pair: made, loaded, kept in a file, used to sign.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::canonical::canonical;
use crate::verify::Signed;

/// Length in bytes of an ed25519 public key (and of a seed).
pub const PUBLIC_KEY_LEN: usize = 32;

/// A key that cannot be made, read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("must be standard base64 of a 32-byte ed25519 key")]
    Malformed,
    #[error("not a valid ed25519 public key (not a curve point)")]
    NotOnCurve,
    #[error("cannot read key file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("cannot write key file {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// Decodes a public key as the wire carries it (standard base64 of the 32
/// raw bytes) and checks it is a point on the curve.
pub fn decode_public_key(encoded: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = decode_32(encoded)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::NotOnCurve)
}

fn decode_32(encoded: &str) -> Result<[u8; PUBLIC_KEY_LEN], KeyError> {
    STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| <[u8; PUBLIC_KEY_LEN]>::try_from(bytes).ok())
        .ok_or(KeyError::Malformed)
}

/// An agent's private key. Its public half goes into the registration
/// (`publicKey`); every signed message is made with [`AgentKey::sign`].
#[derive(Clone)]
pub struct AgentKey {
    key: SigningKey,
}

impl std::fmt::Debug for AgentKey {
    // Never print the private half.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentKey")
            .field("public_key", &self.public_key_base64())
            .finish()
    }
}

impl AgentKey {
    /// The key whose 32-byte seed (RFC 8032's private key) is `seed`.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|error| KeyError::Random(error.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// The key whose seed is `encoded` (standard base64 of 32 bytes).
    pub fn from_seed_base64(encoded: &str) -> Result<Self, KeyError> {
        Ok(Self::from_seed(decode_32(encoded)?))
    }

    /// The seed, standard base64: what a key file holds.
    pub fn seed_base64(&self) -> String {
        STANDARD.encode(self.key.to_bytes())
    }

    /// Reads the key kept in `path` (the base64 seed on one line), or makes
    /// a new one and writes it there, readable by its owner only. An agent
    /// with a stable id keeps its key this way across restarts: the
    /// registry refuses a registration of a known id with another key.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_seed_base64(text.trim()).map_err(|error| KeyError::Read {
                path: path.display().to_string(),
                reason: error.to_string(),
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                write_private(path, &format!("{}\n", key.seed_base64())).map_err(|error| {
                    KeyError::Write {
                        path: path.display().to_string(),
                        reason: error.to_string(),
                    }
                })?;
                Ok(key)
            }
            Err(error) => Err(KeyError::Read {
                path: path.display().to_string(),
                reason: error.to_string(),
            }),
        }
    }

    /// The public key, standard base64 of its 32 bytes (the registration's
    /// `publicKey`).
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().to_bytes())
    }

    /// Signs `payload` for `purpose` as `signer` at `signed_at_ms`.
    pub fn sign(&self, purpose: &str, signer: &str, signed_at_ms: u64, payload: &[u8]) -> Signed {
        let text = canonical(purpose, signer, signed_at_ms, payload);
        let signature = self.key.sign(text.as_bytes());
        Signed {
            signer: signer.to_string(),
            signed_at_ms,
            signature: STANDARD.encode(signature.to_bytes()),
        }
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_made_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/agent.key");
        let made = AgentKey::load_or_create(&path).unwrap();
        let read = AgentKey::load_or_create(&path).unwrap();
        assert_eq!(made.public_key_base64(), read.public_key_base64());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_damaged_key_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        std::fs::write(&path, "not a key").unwrap();
        let error = AgentKey::load_or_create(&path).unwrap_err();
        assert!(error.to_string().contains("agent.key"), "{error}");
    }

    #[test]
    fn generated_keys_differ() {
        let a = AgentKey::generate().unwrap();
        let b = AgentKey::generate().unwrap();
        assert_ne!(a.public_key_base64(), b.public_key_base64());
    }

    #[test]
    fn public_keys_must_be_32_bytes_of_base64_on_the_curve() {
        let key = AgentKey::from_seed([1; 32]);
        assert!(decode_public_key(&key.public_key_base64()).is_ok());
        assert!(matches!(decode_public_key("abc"), Err(KeyError::Malformed)));
        assert!(matches!(
            decode_public_key(&STANDARD.encode([0u8; 31])),
            Err(KeyError::Malformed)
        ));
    }

    #[test]
    fn debug_never_shows_the_seed() {
        let key = AgentKey::from_seed([9; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.seed_base64()), "{shown}");
        assert!(shown.contains(&key.public_key_base64()));
    }
}
