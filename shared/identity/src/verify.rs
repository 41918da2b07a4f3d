//! Checking a signed message: headers present, fresh, signed by the key.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::canonical::canonical;
use crate::keys::decode_public_key;
use crate::{SIGNATURE, SIGNED_AT, SIGNER};

/// How far a signature's time may be from the verifier's clock, either way,
/// by default: 5 minutes (clock skew between hosts).
pub const DEFAULT_MAX_SKEW_MS: u64 = 5 * 60 * 1000;

/// A signature made by [`AgentKey::sign`](crate::AgentKey::sign): the three
/// header values to send with the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub signer: String,
    pub signed_at_ms: u64,
    /// Standard base64 of the 64-byte ed25519 signature.
    pub signature: String,
}

impl Signed {
    /// The headers as name/value pairs, in the order of the canonical text.
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            (SIGNER, self.signer.clone()),
            (SIGNED_AT, self.signed_at_ms.to_string()),
            (SIGNATURE, self.signature.clone()),
        ]
    }

    /// The same values as a verifier reads them from headers.
    pub fn as_claim(&self) -> Claim<'_> {
        Claim {
            signer: Some(&self.signer),
            signed_at: None,
            signed_at_ms: Some(self.signed_at_ms),
            signature: Some(&self.signature),
        }
    }
}

/// What a received message says about its signature: the three header
/// values, any of them possibly missing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Claim<'a> {
    pub signer: Option<&'a str>,
    signed_at: Option<&'a str>,
    signed_at_ms: Option<u64>,
    pub signature: Option<&'a str>,
}

impl<'a> Claim<'a> {
    /// From the header values (`None` where a header is absent).
    pub fn from_headers(
        signer: Option<&'a str>,
        signed_at: Option<&'a str>,
        signature: Option<&'a str>,
    ) -> Self {
        Self {
            signer,
            signed_at,
            signed_at_ms: None,
            signature,
        }
    }

    /// Whether the message carries no signature header at all.
    pub fn is_absent(&self) -> bool {
        self.signer.is_none()
            && self.signed_at.is_none()
            && self.signed_at_ms.is_none()
            && self.signature.is_none()
    }

    fn signed_at_ms(&self) -> Result<u64, SignatureError> {
        if let Some(ms) = self.signed_at_ms {
            return Ok(ms);
        }
        let text = self.signed_at.ok_or(SignatureError::Missing(SIGNED_AT))?;
        text.trim().parse().map_err(|_| SignatureError::Malformed {
            header: SIGNED_AT,
            reason: "must be Unix milliseconds in decimal",
        })
    }
}

/// Why a signature is not accepted. [`SignatureError::field`] names the
/// header (or field) to blame, for the `PERMISSION_DENIED` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "{0}: missing; this agent registered with a public key, so its messages must be signed"
    )]
    Missing(&'static str),
    #[error("{header}: {reason}")]
    Malformed {
        header: &'static str,
        reason: &'static str,
    },
    #[error("{SIGNER}: signed by {got}, but the message is about agent {expected}")]
    WrongSigner { expected: String, got: String },
    #[error(
        "{SIGNED_AT}: {signed_at_ms} is {off_by_ms} ms away from this service's clock (at most {max_skew_ms} ms allowed)"
    )]
    Stale {
        signed_at_ms: u64,
        off_by_ms: u64,
        max_skew_ms: u64,
    },
    #[error("{SIGNATURE}: does not verify with the agent's registered public key")]
    Invalid,
    #[error("publicKey: {0}")]
    BadKey(String),
}

impl SignatureError {
    /// The header or field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Missing(header) | Self::Malformed { header, .. } => header,
            Self::WrongSigner { .. } => SIGNER,
            Self::Stale { .. } => SIGNED_AT,
            Self::Invalid => SIGNATURE,
            Self::BadKey(_) => "publicKey",
        }
    }

    /// A short label for metrics (bounded set).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing_signature",
            Self::Malformed { .. } => "malformed_signature",
            Self::WrongSigner { .. } => "wrong_signer",
            Self::Stale { .. } => "stale_signature",
            Self::Invalid => "bad_signature",
            Self::BadKey(_) => "bad_public_key",
        }
    }
}

/// Most decoded public keys a [`Verifier`] keeps (it starts over past this).
const MAX_CACHED_KEYS: usize = 100_000;

/// Checks signatures, keeping each public key it has decoded (decoding a
/// point costs about as much as half a verification).
#[derive(Debug)]
pub struct Verifier {
    max_skew_ms: u64,
    keys: Mutex<HashMap<String, VerifyingKey>>,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SKEW_MS)
    }
}

impl Verifier {
    /// A verifier that accepts signing times within `max_skew_ms` of its clock.
    pub fn new(max_skew_ms: u64) -> Self {
        Self {
            max_skew_ms,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Checks that `claim` is a signature of `payload` for `purpose` by the
    /// holder of `public_key` (standard base64, as the registry stores it),
    /// made within the allowed skew of `now_ms`. The caller checks that the
    /// signer is the agent the message is about ([`Verifier::verify_as`]
    /// does both).
    pub fn verify(
        &self,
        public_key: &str,
        purpose: &str,
        payload: &[u8],
        claim: &Claim<'_>,
        now_ms: u64,
    ) -> Result<(), SignatureError> {
        let signer = claim.signer.ok_or(SignatureError::Missing(SIGNER))?;
        let signed_at_ms = claim.signed_at_ms()?;
        let encoded = claim.signature.ok_or(SignatureError::Missing(SIGNATURE))?;
        let signature = STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
            .map(|bytes| Signature::from_bytes(&bytes))
            .ok_or(SignatureError::Malformed {
                header: SIGNATURE,
                reason: "must be standard base64 of a 64-byte ed25519 signature",
            })?;
        let off_by_ms = now_ms.abs_diff(signed_at_ms);
        if off_by_ms > self.max_skew_ms {
            return Err(SignatureError::Stale {
                signed_at_ms,
                off_by_ms,
                max_skew_ms: self.max_skew_ms,
            });
        }
        let key = self.key(public_key)?;
        let text = canonical(purpose, signer, signed_at_ms, payload);
        key.verify_strict(text.as_bytes(), &signature)
            .map_err(|_| SignatureError::Invalid)
    }

    /// [`Verifier::verify`], and the signer must be `agent_id`.
    pub fn verify_as(
        &self,
        agent_id: &str,
        public_key: &str,
        purpose: &str,
        payload: &[u8],
        claim: &Claim<'_>,
        now_ms: u64,
    ) -> Result<(), SignatureError> {
        match claim.signer {
            Some(signer) if signer != agent_id => Err(SignatureError::WrongSigner {
                expected: agent_id.to_string(),
                got: signer.to_string(),
            }),
            _ => self.verify(public_key, purpose, payload, claim, now_ms),
        }
    }

    fn key(&self, public_key: &str) -> Result<VerifyingKey, SignatureError> {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(key) = keys.get(public_key) {
            return Ok(*key);
        }
        let key = decode_public_key(public_key)
            .map_err(|error| SignatureError::BadKey(error.to_string()))?;
        if keys.len() >= MAX_CACHED_KEYS {
            keys.clear();
        }
        keys.insert(public_key.to_string(), key);
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentKey, purpose};

    const NOW: u64 = 1_764_720_000_000;

    fn signed(payload: &[u8]) -> (AgentKey, Signed) {
        let key = AgentKey::from_seed([3; 32]);
        let signed = key.sign(purpose::HEARTBEAT, "agent-3", NOW, payload);
        (key, signed)
    }

    #[test]
    fn a_good_signature_verifies() {
        let (key, signed) = signed(b"{}");
        let verifier = Verifier::default();
        verifier
            .verify_as(
                "agent-3",
                &key.public_key_base64(),
                purpose::HEARTBEAT,
                b"{}",
                &signed.as_claim(),
                NOW,
            )
            .unwrap();
        // Also from header text, as a service reads it.
        let at = signed.signed_at_ms.to_string();
        let claim = Claim::from_headers(Some("agent-3"), Some(&at), Some(&signed.signature));
        verifier
            .verify(
                &key.public_key_base64(),
                purpose::HEARTBEAT,
                b"{}",
                &claim,
                NOW + 1,
            )
            .unwrap();
    }

    #[test]
    fn a_changed_payload_purpose_signer_or_time_fails() {
        let (key, signed) = signed(b"{\"inFlight\":1}");
        let public = key.public_key_base64();
        let verifier = Verifier::default();
        let claim = signed.as_claim();
        let verify = |purpose: &str, payload: &[u8], claim: &Claim<'_>| {
            verifier.verify(&public, purpose, payload, claim, NOW)
        };
        assert_eq!(
            verify(purpose::HEARTBEAT, b"{\"inFlight\":2}", &claim),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(purpose::DEREGISTER, b"{\"inFlight\":1}", &claim),
            Err(SignatureError::Invalid)
        );
        let other_signer = Claim {
            signer: Some("agent-4"),
            ..claim
        };
        assert_eq!(
            verify(purpose::HEARTBEAT, b"{\"inFlight\":1}", &other_signer),
            Err(SignatureError::Invalid)
        );
        let other_time = Claim {
            signed_at_ms: Some(NOW + 1),
            ..claim
        };
        assert_eq!(
            verify(purpose::HEARTBEAT, b"{\"inFlight\":1}", &other_time),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn another_key_fails() {
        let (_, signed) = signed(b"x");
        let other = AgentKey::from_seed([4; 32]).public_key_base64();
        let error = Verifier::default()
            .verify(&other, purpose::HEARTBEAT, b"x", &signed.as_claim(), NOW)
            .unwrap_err();
        assert_eq!(error, SignatureError::Invalid);
        assert_eq!(error.field(), SIGNATURE);
        assert_eq!(error.reason(), "bad_signature");
    }

    #[test]
    fn the_signer_must_be_the_agent_the_message_is_about() {
        let (key, signed) = signed(b"x");
        let error = Verifier::default()
            .verify_as(
                "agent-9",
                &key.public_key_base64(),
                purpose::HEARTBEAT,
                b"x",
                &signed.as_claim(),
                NOW,
            )
            .unwrap_err();
        assert!(matches!(error, SignatureError::WrongSigner { .. }));
        assert_eq!(error.field(), SIGNER);
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let (key, signed) = signed(b"x");
        let public = key.public_key_base64();
        let verifier = Verifier::default();
        let at = NOW.to_string();
        let cases = [
            (
                Claim::from_headers(None, Some(&at), Some(&signed.signature)),
                SIGNER,
                "missing_signature",
            ),
            (
                Claim::from_headers(Some("agent-3"), None, Some(&signed.signature)),
                SIGNED_AT,
                "missing_signature",
            ),
            (
                Claim::from_headers(Some("agent-3"), Some(&at), None),
                SIGNATURE,
                "missing_signature",
            ),
            (
                Claim::from_headers(Some("agent-3"), Some("yesterday"), Some(&signed.signature)),
                SIGNED_AT,
                "malformed_signature",
            ),
            (
                Claim::from_headers(Some("agent-3"), Some(&at), Some("AAAA")),
                SIGNATURE,
                "malformed_signature",
            ),
        ];
        for (claim, field, reason) in cases {
            let error = verifier
                .verify(&public, purpose::HEARTBEAT, b"x", &claim, NOW)
                .unwrap_err();
            assert_eq!((error.field(), error.reason()), (field, reason), "{error}");
            assert!(error.to_string().starts_with(field), "{error}");
        }
        assert!(Claim::default().is_absent());
        assert!(!signed.as_claim().is_absent());
    }

    #[test]
    fn signing_times_outside_the_skew_fail_either_way() {
        let (key, signed) = signed(b"x");
        let public = key.public_key_base64();
        let verifier = Verifier::new(1_000);
        let claim = signed.as_claim();
        assert!(
            verifier
                .verify(&public, purpose::HEARTBEAT, b"x", &claim, NOW + 1_000)
                .is_ok()
        );
        assert!(
            verifier
                .verify(&public, purpose::HEARTBEAT, b"x", &claim, NOW - 1_000)
                .is_ok()
        );
        for now in [NOW + 1_001, NOW - 1_001] {
            let error = verifier
                .verify(&public, purpose::HEARTBEAT, b"x", &claim, now)
                .unwrap_err();
            assert!(
                matches!(
                    error,
                    SignatureError::Stale {
                        off_by_ms: 1_001,
                        ..
                    }
                ),
                "{error}"
            );
            assert_eq!(error.field(), SIGNED_AT);
        }
    }

    #[test]
    fn a_stored_key_that_is_not_a_key_is_named() {
        let (_, signed) = signed(b"x");
        let error = Verifier::default()
            .verify(
                "bm90IGEga2V5",
                purpose::HEARTBEAT,
                b"x",
                &signed.as_claim(),
                NOW,
            )
            .unwrap_err();
        assert_eq!(error.field(), "publicKey");
    }
}
