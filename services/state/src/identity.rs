//! Proof of identity on lock and barrier requests. An owner or participant
//! that is an agent the directory lists with a public key must sign the
//! request with it (docs/PROTOCOL.md, "Signatures"): nobody can take,
//! renew or release a lock, or arrive at a barrier, as that agent. Other
//! names (operators, scripts, agents without keys) are taken as given.
//! A refusal is `PERMISSION_DENIED` naming the header, a dead letter (the
//! service scaffold keeps refused requests) and a counted fault.

use concord_bus::{Request, ServiceError};
use concord_directory::SharedDirectory;
use concord_identity::{Claim, SIGNATURE, SIGNED_AT, SIGNER, Verifier};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    /// The signing purpose (`state.lock`, `state.barrier`).
    purpose: &'static str,
    /// [`concord_identity::SignatureError::reason`].
    reason: &'static str,
}

/// Checks the signatures of agent claims against the directory.
pub struct Identity {
    verifier: Verifier,
    directory: SharedDirectory,
    faults: Family<FaultLabels, Counter>,
}

impl Identity {
    pub fn new(directory: SharedDirectory, registry: &concord_telemetry::MetricsRegistry) -> Self {
        Self {
            verifier: Verifier::default(),
            directory,
            faults: registry.add(
                "state_identity_faults",
                "Lock and barrier requests refused because the claimed agent's signature did not verify",
                Family::default(),
            ),
        }
    }

    /// The directory this service keeps (also watched for agents going away).
    pub fn directory(&self) -> &SharedDirectory {
        &self.directory
    }

    /// Checks that `request` is signed for `purpose` by `agent_id` when the
    /// directory holds a key for it.
    pub fn check(
        &self,
        request: &Request,
        purpose: &'static str,
        agent_id: &str,
        now_ms: u64,
    ) -> Result<(), ServiceError> {
        let public_key = {
            let directory = self.directory.read().expect("directory lock poisoned");
            match directory.get(agent_id) {
                Some(record) if !record.public_key.is_empty() => record.public_key.clone(),
                _ => return Ok(()),
            }
        };
        let claim = Claim::from_headers(
            request.header(SIGNER),
            request.header(SIGNED_AT),
            request.header(SIGNATURE),
        );
        self.verifier
            .verify_as(
                agent_id,
                &public_key,
                purpose,
                &request.payload,
                &claim,
                now_ms,
            )
            .map_err(|error| {
                self.faults
                    .get_or_create(&FaultLabels {
                        purpose,
                        reason: error.reason(),
                    })
                    .inc();
                ServiceError::permission_denied(error.field(), error.to_string())
            })
    }
}
