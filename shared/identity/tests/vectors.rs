//! The published test vectors (tests/vectors.json, also in docs/PROTOCOL.md):
//! this implementation must reproduce every one of them exactly. The Python
//! example agent checks the same file (tests/tests/python_agent.rs).

use concord_identity::{AgentKey, PREFIX, Verifier, canonical, payload_digest};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Vector {
    seed: String,
    public_key: String,
    purpose: String,
    signer: String,
    signed_at_ms: u64,
    payload: String,
    payload_sha256: String,
    canonical: String,
    signature: String,
}

#[derive(Deserialize)]
struct Vectors {
    scheme: String,
    vectors: Vec<Vector>,
}

fn vectors() -> Vectors {
    serde_json::from_str(include_str!("vectors.json")).unwrap()
}

#[test]
fn every_vector_is_reproduced_and_verifies() {
    let file = vectors();
    assert_eq!(file.scheme, PREFIX);
    assert!(file.vectors.len() >= 3);
    let verifier = Verifier::default();
    for v in &file.vectors {
        let key = AgentKey::from_seed_base64(&v.seed).unwrap();
        assert_eq!(key.public_key_base64(), v.public_key);
        let payload = v.payload.as_bytes();
        assert_eq!(payload_digest(payload), v.payload_sha256);
        assert_eq!(
            canonical(&v.purpose, &v.signer, v.signed_at_ms, payload),
            v.canonical
        );
        let signed = key.sign(&v.purpose, &v.signer, v.signed_at_ms, payload);
        assert_eq!(signed.signature, v.signature, "signature of {}", v.purpose);
        verifier
            .verify_as(
                &v.signer,
                &v.public_key,
                &v.purpose,
                payload,
                &signed.as_claim(),
                v.signed_at_ms,
            )
            .unwrap();
    }
}
