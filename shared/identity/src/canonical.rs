//! The canonical text an agent signs.

use sha2::{Digest, Sha256};

/// First line of every canonical text (the scheme's version).
pub const PREFIX: &str = "concord-signature-v1";

/// SHA-256 of `payload`, lowercase hex.
pub fn payload_digest(payload: &[u8]) -> String {
    let digest = Sha256::digest(payload);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The text signed for a message: five lines, each ended by a line feed
/// (0x0A), in UTF-8:
///
/// ```text
/// concord-signature-v1
/// <purpose>
/// <signer agent id>
/// <signed at, Unix milliseconds, decimal>
/// <SHA-256 of the payload bytes, lowercase hex>
/// ```
///
/// Purposes and agent ids never contain a line feed (ids are letters,
/// digits, `-` and `_`), so the text cannot be read two ways.
pub fn canonical(purpose: &str, signer: &str, signed_at_ms: u64, payload: &[u8]) -> String {
    format!(
        "{PREFIX}\n{purpose}\n{signer}\n{signed_at_ms}\n{}\n",
        payload_digest(payload)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_the_empty_payload_is_sha256_of_nothing() {
        assert_eq!(
            payload_digest(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_text_has_five_terminated_lines() {
        let text = canonical("registry.heartbeat", "agent-7", 42, b"");
        assert_eq!(
            text,
            "concord-signature-v1\nregistry.heartbeat\nagent-7\n42\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
        );
    }

    #[test]
    fn every_part_changes_the_text() {
        let base = canonical("p", "a", 1, b"x");
        assert_ne!(base, canonical("q", "a", 1, b"x"));
        assert_ne!(base, canonical("p", "b", 1, b"x"));
        assert_ne!(base, canonical("p", "a", 2, b"x"));
        assert_ne!(base, canonical("p", "a", 1, b"y"));
    }
}
