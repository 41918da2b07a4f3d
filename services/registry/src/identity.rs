//! Proof of identity on the registry's requests. An agent that registered
//! with a public key must sign its registration, heartbeats and
//! deregistration with it (docs/PROTOCOL.md, "Signatures"): nobody else can
//! re-register, heartbeat or deregister as that agent. A refusal is
//! `PERMISSION_DENIED` naming the header to blame, a dead letter (the
//! service scaffold keeps refused requests), and a counted fault.

use std::time::Duration;

use chrono::{DateTime, Utc};
use concord_bus::{Request, ServiceError};
use concord_identity::{Claim, SIGNATURE, SIGNED_AT, SIGNER, SignatureError, Verifier};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FaultLabels {
    /// `register`, `heartbeat` or `deregister`.
    request: &'static str,
    /// [`SignatureError::reason`], or `key_required`.
    reason: &'static str,
}

/// Checks signatures on registry requests and counts the refusals.
pub struct Identity {
    verifier: Verifier,
    require_keys: bool,
    faults: Family<FaultLabels, Counter>,
}

impl Identity {
    pub fn new(max_skew: Duration, require_keys: bool) -> Self {
        Self {
            verifier: Verifier::new(u64::try_from(max_skew.as_millis()).unwrap_or(u64::MAX)),
            require_keys,
            faults: Family::default(),
        }
    }

    /// The fault counter, for registration under `registry_identity_faults`.
    pub(crate) fn faults(&self) -> Family<FaultLabels, Counter> {
        self.faults.clone()
    }

    /// Refuses a registration without a public key when this registry
    /// requires keys (`--require-signatures`).
    pub fn check_key_present(&self, has_key: bool) -> Result<(), ServiceError> {
        if has_key || !self.require_keys {
            return Ok(());
        }
        self.count("register", "key_required");
        Err(ServiceError::permission_denied(
            "publicKey",
            "publicKey: this registry requires every agent to register with an ed25519 public key and sign its requests",
        ))
    }

    /// Checks that `request` is signed for `purpose` by `agent_id` with
    /// `public_key` (standard base64; empty: the agent has no key, nothing
    /// to check). `request_name` labels the fault counter.
    pub fn check(
        &self,
        request: &Request,
        request_name: &'static str,
        purpose: &str,
        agent_id: &str,
        public_key: &str,
        now: DateTime<Utc>,
    ) -> Result<(), ServiceError> {
        if public_key.is_empty() {
            return Ok(());
        }
        let claim = Claim::from_headers(
            request.header(SIGNER),
            request.header(SIGNED_AT),
            request.header(SIGNATURE),
        );
        let now_ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
        self.verifier
            .verify_as(
                agent_id,
                public_key,
                purpose,
                &request.payload,
                &claim,
                now_ms,
            )
            .map_err(|error| {
                self.count(request_name, error.reason());
                refusal(&error)
            })
    }

    fn count(&self, request: &'static str, reason: &'static str) {
        self.faults
            .get_or_create(&FaultLabels { request, reason })
            .inc();
    }
}

/// The `PERMISSION_DENIED` reply for a refused signature.
fn refusal(error: &SignatureError) -> ServiceError {
    ServiceError::permission_denied(error.field(), error.to_string())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use concord_identity::{AgentKey, purpose};
    use concord_wire::v1::ErrorCode;

    use super::*;

    fn request(payload: &'static [u8], headers: &[(&'static str, String)]) -> Request {
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.as_str());
        }
        Request {
            subject: "concord.registry.heartbeat".into(),
            headers: Some(map),
            payload: Bytes::from_static(payload),
            reply: Some("_INBOX.test".into()),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_764_720_000_000).unwrap()
    }

    fn faults(identity: &Identity, request: &'static str, reason: &'static str) -> u64 {
        identity
            .faults
            .get_or_create(&FaultLabels { request, reason })
            .get()
    }

    #[test]
    fn an_agent_without_a_key_is_not_checked() {
        let identity = Identity::new(Duration::from_secs(300), false);
        let unsigned = request(b"{}", &[]);
        identity
            .check(&unsigned, "heartbeat", purpose::HEARTBEAT, "a-1", "", now())
            .unwrap();
    }

    #[test]
    fn a_signed_request_passes_and_an_unsigned_one_is_denied_naming_the_header() {
        let identity = Identity::new(Duration::from_secs(300), false);
        let key = AgentKey::from_seed([5; 32]);
        let public = key.public_key_base64();
        let signed = key.sign(purpose::HEARTBEAT, "a-1", 1_764_720_000_000, b"{}");
        let good = request(b"{}", &signed.headers());
        identity
            .check(
                &good,
                "heartbeat",
                purpose::HEARTBEAT,
                "a-1",
                &public,
                now(),
            )
            .unwrap();

        let unsigned = request(b"{}", &[]);
        let error = identity
            .check(
                &unsigned,
                "heartbeat",
                purpose::HEARTBEAT,
                "a-1",
                &public,
                now(),
            )
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::PermissionDenied);
        assert_eq!(error.field.as_deref(), Some(SIGNER));
        assert!(error.is_bad_input(), "refusals are dead-lettered");
        assert_eq!(faults(&identity, "heartbeat", "missing_signature"), 1);
    }

    #[test]
    fn a_signature_by_another_key_or_for_another_agent_is_denied() {
        let identity = Identity::new(Duration::from_secs(300), false);
        let owner = AgentKey::from_seed([5; 32]).public_key_base64();
        let thief = AgentKey::from_seed([6; 32]);
        let forged = thief.sign(purpose::DEREGISTER, "a-1", 1_764_720_000_000, b"{}");
        let error = identity
            .check(
                &request(b"{}", &forged.headers()),
                "deregister",
                purpose::DEREGISTER,
                "a-1",
                &owner,
                now(),
            )
            .unwrap_err();
        assert_eq!(error.field.as_deref(), Some(SIGNATURE));
        assert_eq!(faults(&identity, "deregister", "bad_signature"), 1);

        // Signed by its own key, but as itself about another agent.
        let own = thief.sign(purpose::DEREGISTER, "a-2", 1_764_720_000_000, b"{}");
        let error = identity
            .check(
                &request(b"{}", &own.headers()),
                "deregister",
                purpose::DEREGISTER,
                "a-1",
                &owner,
                now(),
            )
            .unwrap_err();
        assert_eq!(error.field.as_deref(), Some(SIGNER));
        assert_eq!(faults(&identity, "deregister", "wrong_signer"), 1);
    }

    #[test]
    fn an_old_signature_is_denied() {
        let identity = Identity::new(Duration::from_secs(300), false);
        let key = AgentKey::from_seed([5; 32]);
        let old = key.sign(
            purpose::HEARTBEAT,
            "a-1",
            1_764_720_000_000 - 301_000,
            b"{}",
        );
        let error = identity
            .check(
                &request(b"{}", &old.headers()),
                "heartbeat",
                purpose::HEARTBEAT,
                "a-1",
                &key.public_key_base64(),
                now(),
            )
            .unwrap_err();
        assert_eq!(error.field.as_deref(), Some(SIGNED_AT));
        assert_eq!(faults(&identity, "heartbeat", "stale_signature"), 1);
    }

    #[test]
    fn keys_can_be_required() {
        let optional = Identity::new(Duration::from_secs(300), false);
        assert!(optional.check_key_present(false).is_ok());
        let required = Identity::new(Duration::from_secs(300), true);
        assert!(required.check_key_present(true).is_ok());
        let error = required.check_key_present(false).unwrap_err();
        assert_eq!(error.code, ErrorCode::PermissionDenied);
        assert_eq!(error.field.as_deref(), Some("publicKey"));
        assert_eq!(faults(&required, "register", "key_required"), 1);
    }
}
