//! Agent identity: ed25519 keys and the one signing scheme of Concord.
//!
//! Anything an agent claims (its registration, its heartbeats, later its
//! votes, bids and messages) is signed the same way: the agent signs a
//! short canonical text ([`canonical`]) naming what the message is for
//! (its *purpose*, e.g. `registry.heartbeat`), who signs, when, and the
//! SHA-256 of the exact payload bytes it sends. The signature travels in
//! three NATS headers ([`SIGNER`], [`SIGNED_AT`], [`SIGNATURE`]), so the
//! payload stays the ordinary JSON (or protobuf) message. A verifier
//! rebuilds the text from the bytes it received and checks the signature
//! against the key the registry holds for the signer.
//!
//! docs/PROTOCOL.md ("Signatures") defines the scheme for other languages;
//! `tests/vectors.json` holds test vectors that the Python example agent
//! reproduces.
//!
//! ```
//! use concord_identity::{AgentKey, Verifier, purpose};
//!
//! let key = AgentKey::from_seed([7; 32]);
//! let payload = br#"{"agentId":"agent-7","inFlight":0}"#;
//! let signed = key.sign(purpose::HEARTBEAT, "agent-7", 1_764_720_000_000, payload);
//!
//! let verifier = Verifier::default();
//! verifier
//!     .verify(&key.public_key_base64(), purpose::HEARTBEAT, payload, &signed.as_claim(), 1_764_720_001_000)
//!     .unwrap();
//! ```

mod canonical;
mod keys;
mod verify;

pub use canonical::{PREFIX, canonical, payload_digest};

/// Unix milliseconds now: the signing time of a message signed now, and the
/// clock a verifier compares it with.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
pub use keys::{AgentKey, KeyError, PUBLIC_KEY_LEN, decode_public_key};
pub use verify::{Claim, DEFAULT_MAX_SKEW_MS, SignatureError, Signed, Verifier};

/// Header naming the agent that signed the message.
pub const SIGNER: &str = "Concord-Signer";
/// Header with the signing time, Unix milliseconds in decimal.
pub const SIGNED_AT: &str = "Concord-Signed-At";
/// Header with the ed25519 signature, standard base64 (with padding) of 64 bytes.
pub const SIGNATURE: &str = "Concord-Signature";

/// The purposes defined so far: what a signature is for, so one signed
/// message can never be replayed as another kind.
pub mod purpose {
    /// `<root>.registry.register`: proves possession of the registered key.
    pub const REGISTER: &str = "registry.register";
    /// `<root>.registry.heartbeat`.
    pub const HEARTBEAT: &str = "registry.heartbeat";
    /// `<root>.registry.deregister`.
    pub const DEREGISTER: &str = "registry.deregister";
    /// `<root>.state.lock.acquire`, `.renew` and `.release` by an agent owner.
    pub const STATE_LOCK: &str = "state.lock";
    /// `<root>.state.barrier.arrive` by an agent participant.
    pub const STATE_BARRIER: &str = "state.barrier";
    /// `<root>.state.workflow.*` changes by an agent actor.
    pub const STATE_WORKFLOW: &str = "state.workflow";
}
