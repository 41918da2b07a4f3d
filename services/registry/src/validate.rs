//! Validation and normalisation of registrations and heartbeats, before anything is stored.
//!
//! Pure functions: no I/O, no clock. Each rule fails with a
//! [`ServiceError::invalid`] naming the offending field, and the first failing
//! rule wins, checked in schema order, so the same bad request always gets the
//! same error.
//!
//! # Field paths
//!
//! Field paths use the proto3 JSON names (lowerCamelCase: `maxConcurrency`,
//! `publicKey`, `capabilities[0].level`, `labels.region`), because clients send
//! JSON and the codec reports decoding errors the same way.
//!
//! # Normalisation
//!
//! - `id`, `name` and `version` are trimmed of surrounding whitespace; an
//!   `id` that is empty after trimming is "absent" and the registry assigns
//!   one. The reply carries the stored id, so the agent learns it.
//! - Capability names and label keys and values are kept verbatim (no
//!   trimming, no case folding): they are matched exactly, against
//!   `Task.capability` and against discovery selectors, and their character
//!   rules leave no whitespace to trim.
//! - A capability `level` of 0 means "not stated" and is stored as 1, as the
//!   schema says (proto3 cannot tell an absent double from 0.0, and a
//!   capability at proficiency 0 would be no capability at all). Any other
//!   level must be finite and within 0..=1.
//! - A `maxConcurrency` of 0 means "not stated" and is stored as 1, as the
//!   schema says.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use concord_bus::ServiceError;
use concord_bus::validate::{LabelLimits, check_labels, check_map_key, check_text, check_token};
use concord_wire::v1::{AgentHealth, AgentRecord, Capability, ErrorCode, Heartbeat, RegisterAgent};

/// Size limits applied by [`validate_registration`] and [`validate_heartbeat`].
///
/// Lengths count characters (Unicode scalar values), not bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest agent id; the id is one token of `<root>.agent.<id>.tasks`.
    pub max_id_chars: usize,
    /// Longest display name.
    pub max_name_chars: usize,
    /// Most capabilities per agent.
    pub max_capabilities: usize,
    /// Longest capability name.
    pub max_capability_name_chars: usize,
    /// Highest `maxConcurrency` an agent may declare, and the highest
    /// `inFlight` and `capacity` a heartbeat may report.
    pub max_concurrency: u32,
    /// Longest version string.
    pub max_version_chars: usize,
    /// Most labels per agent.
    pub max_labels: usize,
    /// Longest label key.
    pub max_label_key_chars: usize,
    /// Longest label value.
    pub max_label_value_chars: usize,
    /// Most performance figures per heartbeat.
    pub max_performance_entries: usize,
    /// Longest performance figure name.
    pub max_performance_key_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_id_chars: 64,
            max_name_chars: 128,
            max_capabilities: 64,
            max_capability_name_chars: 64,
            max_concurrency: 10_000,
            max_version_chars: 64,
            max_labels: 32,
            max_label_key_chars: 63,
            max_label_value_chars: 256,
            max_performance_entries: 64,
            max_performance_key_chars: 64,
        }
    }
}

pub use concord_identity::PUBLIC_KEY_LEN;

/// A registration that passed [`validate_registration`], normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRegistration {
    /// The agent's id, trimmed; `None` when the agent left it to the registry.
    pub id: Option<String>,
    /// Display name, trimmed, never empty.
    pub name: String,
    /// Capabilities in the order given, levels filled in (never 0).
    pub capabilities: Vec<Capability>,
    /// Most tasks at once, at least 1.
    pub max_concurrency: u32,
    /// Software version, trimmed; may be empty.
    pub version: String,
    /// Labels, verbatim.
    pub labels: BTreeMap<String, String>,
    /// Raw ed25519 public key, when one was given.
    pub public_key: Option<[u8; PUBLIC_KEY_LEN]>,
}

impl ValidRegistration {
    /// The public key as the wire carries it: standard base64, empty when none.
    pub fn public_key_base64(&self) -> String {
        self.public_key
            .map(|key| STANDARD.encode(key))
            .unwrap_or_default()
    }

    /// Copies the registered fields (name, capabilities, concurrency, version,
    /// labels, public key) onto `record`. The id and everything the registry
    /// owns (liveness, health, reputation, timestamps, revision) are left alone.
    pub fn write_to(&self, record: &mut AgentRecord) {
        record.name.clone_from(&self.name);
        record.capabilities.clone_from(&self.capabilities);
        record.max_concurrency = self.max_concurrency;
        record.version.clone_from(&self.version);
        record.labels.clone_from(&self.labels);
        record.public_key = self.public_key_base64();
    }
}

/// A heartbeat that passed [`validate_heartbeat`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidHeartbeat {
    /// Id of the reporting agent, trimmed.
    pub agent_id: String,
    /// Tasks running now.
    pub in_flight: u32,
    /// Tasks the agent can run at once now.
    pub capacity: u32,
    /// The agent's own view of its health (`Unspecified` when not reported).
    pub health: AgentHealth,
    /// Performance figures, all finite.
    pub performance: BTreeMap<String, f64>,
}

/// Checks a registration request and returns it normalised (see the module
/// docs), or the first rule it breaks, naming the field.
///
/// Agents should send `level: 1.0` for full proficiency; 0 (or leaving the
/// level out) is read as "not stated" and also stored as 1.
pub fn validate_registration(
    msg: &RegisterAgent,
    limits: &Limits,
) -> Result<ValidRegistration, ServiceError> {
    let id = msg.id.trim();
    let id = if id.is_empty() {
        None
    } else {
        check_token("id", id, limits.max_id_chars)?;
        Some(id.to_string())
    };

    let name = msg.name.trim();
    if name.is_empty() {
        return Err(ServiceError::invalid("name", "must not be empty"));
    }
    check_text("name", name, limits.max_name_chars)?;

    let capabilities = validate_capabilities(&msg.capabilities, limits)?;

    let max_concurrency = match msg.max_concurrency {
        0 => 1,
        n if n > limits.max_concurrency => {
            return Err(ServiceError::invalid(
                "maxConcurrency",
                format!("must be at most {}, got {n}", limits.max_concurrency),
            ));
        }
        n => n,
    };

    let version = msg.version.trim();
    check_text("version", version, limits.max_version_chars)?;

    validate_labels(&msg.labels, limits)?;

    let public_key = if msg.public_key.is_empty() {
        None
    } else {
        Some(decode_public_key(&msg.public_key)?)
    };

    Ok(ValidRegistration {
        id,
        name: name.to_string(),
        capabilities,
        max_concurrency,
        version: version.to_string(),
        labels: msg.labels.clone(),
        public_key,
    })
}

/// Refuses a re-registration that would change or drop the public key of an
/// agent registered with one (impersonation). `existing_public_key` is the
/// stored record's `public_key`. An agent registered without a key may add one.
///
/// Fails with `ALREADY_EXISTS` naming `publicKey`: the id is taken by an agent
/// this request cannot prove to be.
pub fn check_key_change(
    existing_public_key: &str,
    registration: &ValidRegistration,
) -> Result<(), ServiceError> {
    // Both sides passed the same canonical base64 check, so comparing the
    // strings compares the keys.
    if existing_public_key.is_empty() || existing_public_key == registration.public_key_base64() {
        return Ok(());
    }
    Err(ServiceError {
        code: ErrorCode::AlreadyExists,
        message: "publicKey: the agent id is registered with a different public key".to_string(),
        field: Some("publicKey".to_string()),
        details: None,
    })
}

/// Checks a heartbeat, or returns the first rule it breaks, naming the field.
///
/// `inFlight` may exceed `capacity` (capacity can drop while tasks run); both
/// are capped by [`Limits::max_concurrency`].
pub fn validate_heartbeat(
    msg: &Heartbeat,
    limits: &Limits,
) -> Result<ValidHeartbeat, ServiceError> {
    let agent_id = msg.agent_id.trim();
    if agent_id.is_empty() {
        return Err(ServiceError::invalid("agentId", "must not be empty"));
    }
    check_token("agentId", agent_id, limits.max_id_chars)?;

    for (field, value) in [("inFlight", msg.in_flight), ("capacity", msg.capacity)] {
        if value > limits.max_concurrency {
            return Err(ServiceError::invalid(
                field,
                format!("must be at most {}, got {value}", limits.max_concurrency),
            ));
        }
    }

    let health = AgentHealth::try_from(msg.health)
        .map_err(|_| ServiceError::invalid("health", format!("unknown value {}", msg.health)))?;

    if msg.performance.len() > limits.max_performance_entries {
        return Err(ServiceError::invalid(
            "performance",
            format!(
                "must have at most {} entries, got {}",
                limits.max_performance_entries,
                msg.performance.len()
            ),
        ));
    }
    for (key, value) in &msg.performance {
        check_map_key(
            "performance",
            key,
            limits.max_performance_key_chars,
            |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'),
            "ASCII letters, digits, '_', '.' and '-'",
        )?;
        if !value.is_finite() {
            return Err(ServiceError::invalid(
                format!("performance.{key}"),
                "must be a finite number",
            ));
        }
    }

    Ok(ValidHeartbeat {
        agent_id: agent_id.to_string(),
        in_flight: msg.in_flight,
        capacity: msg.capacity,
        health,
        performance: msg.performance.clone(),
    })
}

fn validate_capabilities(
    capabilities: &[Capability],
    limits: &Limits,
) -> Result<Vec<Capability>, ServiceError> {
    if capabilities.is_empty() {
        return Err(ServiceError::invalid("capabilities", "must not be empty"));
    }
    if capabilities.len() > limits.max_capabilities {
        return Err(ServiceError::invalid(
            "capabilities",
            format!(
                "must have at most {} entries, got {}",
                limits.max_capabilities,
                capabilities.len()
            ),
        ));
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut valid = Vec::with_capacity(capabilities.len());
    for (i, capability) in capabilities.iter().enumerate() {
        let name_field = format!("capabilities[{i}].name");
        if capability.name.is_empty() {
            return Err(ServiceError::invalid(name_field, "must not be empty"));
        }
        check_token(
            &name_field,
            &capability.name,
            limits.max_capability_name_chars,
        )?;
        if let Some(first) = seen.insert(&capability.name, i) {
            return Err(ServiceError::invalid(
                name_field,
                format!("duplicate of capabilities[{first}].name"),
            ));
        }
        let level = validate_level(&format!("capabilities[{i}].level"), capability.level)?;
        valid.push(Capability {
            name: capability.name.clone(),
            level,
        });
    }
    Ok(valid)
}

fn validate_level(field: &str, level: f64) -> Result<f64, ServiceError> {
    if !level.is_finite() {
        return Err(ServiceError::invalid(field, "must be a finite number"));
    }
    if !(0.0..=1.0).contains(&level) {
        return Err(ServiceError::invalid(
            field,
            format!("must be between 0 and 1, got {level}"),
        ));
    }
    // `== 0.0` also catches -0.0.
    Ok(if level == 0.0 { 1.0 } else { level })
}

fn validate_labels(labels: &BTreeMap<String, String>, limits: &Limits) -> Result<(), ServiceError> {
    check_labels(
        labels,
        &LabelLimits {
            max_labels: limits.max_labels,
            max_key_chars: limits.max_label_key_chars,
            max_value_chars: limits.max_label_value_chars,
        },
    )
}

fn decode_public_key(encoded: &str) -> Result<[u8; PUBLIC_KEY_LEN], ServiceError> {
    concord_identity::decode_public_key(encoded)
        .map(|key| key.to_bytes())
        .map_err(|error| ServiceError::invalid("publicKey", error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The public key of seed `[7; 32]` (shared/identity/tests/vectors.json).
    const KEY: [u8; 32] = [
        234, 74, 108, 99, 226, 156, 82, 10, 190, 245, 80, 123, 19, 46, 197, 249, 149, 71, 118, 174,
        190, 190, 123, 146, 66, 30, 234, 105, 20, 70, 210, 44,
    ];
    /// The public key of seed `[0xab; 32]`.
    const OTHER_KEY: [u8; 32] = [
        36, 138, 203, 219, 175, 158, 5, 1, 150, 222, 112, 75, 234, 45, 104, 119, 14, 81, 145, 80,
        209, 3, 181, 135, 218, 226, 217, 202, 213, 61, 217, 48,
    ];

    fn valid_msg() -> RegisterAgent {
        RegisterAgent {
            id: "agent-1".into(),
            name: "Echo agent".into(),
            capabilities: vec![
                Capability {
                    name: "echo".into(),
                    level: 0.5,
                },
                Capability {
                    name: "Summarize_v2".into(),
                    level: 1.0,
                },
            ],
            max_concurrency: 4,
            version: "1.2.3".into(),
            labels: BTreeMap::from([
                ("region".into(), "eu".into()),
                ("app.kubernetes.io/name".into(), "echo".into()),
            ]),
            public_key: STANDARD.encode(KEY),
        }
    }

    fn register(msg: &RegisterAgent) -> Result<ValidRegistration, ServiceError> {
        validate_registration(msg, &Limits::default())
    }

    /// Asserts that `msg` fails on `field` with a message containing `text`.
    fn rejects(msg: &RegisterAgent, field: &str, text: &str) {
        let error = register(msg).expect_err("should be rejected");
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{error}");
        assert_eq!(error.field.as_deref(), Some(field), "{error}");
        assert!(
            error.message.starts_with(&format!("{field}: ")),
            "{}",
            error.message
        );
        assert!(
            error.message.contains(text),
            "{:?} lacks {text:?}",
            error.message
        );
    }

    fn with(change: impl FnOnce(&mut RegisterAgent)) -> RegisterAgent {
        let mut msg = valid_msg();
        change(&mut msg);
        msg
    }

    fn caps(names: &[&str]) -> Vec<Capability> {
        names
            .iter()
            .map(|name| Capability {
                name: (*name).into(),
                level: 1.0,
            })
            .collect()
    }

    #[test]
    fn accepts_a_full_registration_unchanged() {
        let valid = register(&valid_msg()).unwrap();
        assert_eq!(valid.id.as_deref(), Some("agent-1"));
        assert_eq!(valid.name, "Echo agent");
        assert_eq!(valid.capabilities, valid_msg().capabilities);
        assert_eq!(valid.max_concurrency, 4);
        assert_eq!(valid.version, "1.2.3");
        assert_eq!(valid.labels, valid_msg().labels);
        assert_eq!(valid.public_key, Some(KEY));
        assert_eq!(valid.public_key_base64(), valid_msg().public_key);
    }

    #[test]
    fn accepts_a_minimal_registration() {
        let msg = RegisterAgent {
            name: "x".into(),
            capabilities: caps(&["echo"]),
            ..Default::default()
        };
        let valid = register(&msg).unwrap();
        assert_eq!(valid.id, None);
        assert_eq!(valid.max_concurrency, 1);
        assert_eq!(valid.version, "");
        assert!(valid.labels.is_empty());
        assert_eq!(valid.public_key, None);
        assert_eq!(valid.public_key_base64(), "");
    }

    #[test]
    fn trims_id_name_and_version() {
        let valid = register(&with(|m| {
            m.id = "  agent-1\t".into();
            m.name = " Echo agent \n".into();
            m.version = " 1.2.3 ".into();
        }))
        .unwrap();
        assert_eq!(valid.id.as_deref(), Some("agent-1"));
        assert_eq!(valid.name, "Echo agent");
        assert_eq!(valid.version, "1.2.3");
    }

    #[test]
    fn blank_id_means_assign_one() {
        for id in ["", "   ", "\t\n"] {
            let valid = register(&with(|m| m.id = id.into())).unwrap();
            assert_eq!(valid.id, None, "{id:?}");
        }
    }

    #[test]
    fn id_must_be_a_subject_token() {
        for bad in ["a.b", "a b", "a*", "a>", "agent/1", "ägent", "a\u{0}b"] {
            rejects(&with(|m| m.id = bad.into()), "id", "ASCII letters, digits");
        }
        let longest = "a".repeat(64);
        assert!(register(&with(|m| m.id = longest.clone())).is_ok());
        rejects(
            &with(|m| m.id = "a".repeat(65)),
            "id",
            "at most 64 characters, got 65",
        );
        for good in ["A-z_09", "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "_", "-"] {
            assert!(register(&with(|m| m.id = good.into())).is_ok(), "{good}");
        }
    }

    #[test]
    fn name_is_required_and_bounded() {
        rejects(
            &with(|m| m.name = String::new()),
            "name",
            "must not be empty",
        );
        rejects(
            &with(|m| m.name = "   ".into()),
            "name",
            "must not be empty",
        );
        assert!(register(&with(|m| m.name = "é".repeat(128))).is_ok());
        rejects(
            &with(|m| m.name = "é".repeat(129)),
            "name",
            "at most 128 characters, got 129",
        );
        rejects(
            &with(|m| m.name = "a\u{7}b".into()),
            "name",
            "control characters",
        );
    }

    #[test]
    fn capabilities_are_required_and_bounded() {
        rejects(
            &with(|m| m.capabilities.clear()),
            "capabilities",
            "must not be empty",
        );
        let names: Vec<String> = (0..65).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(register(&with(|m| m.capabilities = caps(&refs[..64]))).is_ok());
        rejects(
            &with(|m| m.capabilities = caps(&refs)),
            "capabilities",
            "at most 64 entries, got 65",
        );
    }

    #[test]
    fn capability_names_are_tokens() {
        rejects(
            &with(|m| m.capabilities[1].name = String::new()),
            "capabilities[1].name",
            "must not be empty",
        );
        for bad in [
            "sum.marize",
            " echo",
            "echo ",
            "a*",
            "a>",
            "ecno\n",
            "résumé",
        ] {
            rejects(
                &with(|m| m.capabilities[0].name = bad.into()),
                "capabilities[0].name",
                "ASCII letters, digits",
            );
        }
        assert!(register(&with(|m| m.capabilities[0].name = "c".repeat(64))).is_ok());
        rejects(
            &with(|m| m.capabilities[0].name = "c".repeat(65)),
            "capabilities[0].name",
            "at most 64 characters",
        );
    }

    #[test]
    fn capability_names_keep_their_case() {
        let valid = register(&with(|m| m.capabilities = caps(&["Echo", "echo"]))).unwrap();
        let names: Vec<&str> = valid.capabilities.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Echo", "echo"]);
    }

    #[test]
    fn duplicate_capabilities_name_the_later_entry() {
        rejects(
            &with(|m| m.capabilities = caps(&["a", "b", "a"])),
            "capabilities[2].name",
            "duplicate of capabilities[0].name",
        );
    }

    #[test]
    fn levels_must_be_finite_and_within_zero_and_one() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            rejects(
                &with(|m| m.capabilities[1].level = bad),
                "capabilities[1].level",
                "finite",
            );
        }
        for bad in [-0.001, 1.000_001, 3.0, -1.0, f64::MAX] {
            rejects(
                &with(|m| m.capabilities[0].level = bad),
                "capabilities[0].level",
                "between 0 and 1",
            );
        }
        for good in [f64::MIN_POSITIVE, 0.25, 1.0] {
            let valid = register(&with(|m| m.capabilities[0].level = good)).unwrap();
            assert_eq!(valid.capabilities[0].level, good);
        }
    }

    #[test]
    fn zero_level_means_not_stated_and_is_stored_as_one() {
        for zero in [0.0, -0.0] {
            let valid = register(&with(|m| m.capabilities[0].level = zero)).unwrap();
            assert_eq!(valid.capabilities[0].level, 1.0);
        }
    }

    #[test]
    fn max_concurrency_defaults_to_one_and_is_capped() {
        assert_eq!(
            register(&with(|m| m.max_concurrency = 0))
                .unwrap()
                .max_concurrency,
            1
        );
        assert_eq!(
            register(&with(|m| m.max_concurrency = 10_000))
                .unwrap()
                .max_concurrency,
            10_000
        );
        rejects(
            &with(|m| m.max_concurrency = 10_001),
            "maxConcurrency",
            "at most 10000, got 10001",
        );
        rejects(
            &with(|m| m.max_concurrency = u32::MAX),
            "maxConcurrency",
            "at most 10000",
        );
    }

    #[test]
    fn version_is_bounded_free_text() {
        assert!(register(&with(|m| m.version = "v".repeat(64))).is_ok());
        rejects(
            &with(|m| m.version = "v".repeat(65)),
            "version",
            "at most 64 characters",
        );
        rejects(
            &with(|m| m.version = "1.0\u{1b}[31m".into()),
            "version",
            "control",
        );
    }

    #[test]
    fn labels_are_bounded_in_number() {
        let labels = |n: usize| (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert!(register(&with(|m| m.labels = labels(32))).is_ok());
        rejects(
            &with(|m| m.labels = labels(33)),
            "labels",
            "at most 32 entries, got 33",
        );
    }

    #[test]
    fn label_keys_use_a_restricted_alphabet() {
        for good in ["region", "a/b.c-d_e", "0", "k".repeat(63).as_str()] {
            let msg = with(|m| m.labels = BTreeMap::from([(good.into(), "v".into())]));
            assert!(register(&msg).is_ok(), "{good}");
        }
        for (bad, text) in [
            ("", "must not be empty"),
            ("Region", "lowercase ASCII letters"),
            ("a b", "lowercase ASCII letters"),
            ("zone:1", "lowercase ASCII letters"),
            ("ключ", "lowercase ASCII letters"),
        ] {
            let msg = with(|m| m.labels = BTreeMap::from([(bad.into(), "v".into())]));
            rejects(&msg, "labels", text);
            rejects(&msg, "labels", &format!("key {bad:?}"));
        }
        let msg = with(|m| m.labels = BTreeMap::from([("k".repeat(64), "v".into())]));
        rejects(&msg, "labels", "at most 63 characters, got 64");
    }

    #[test]
    fn a_long_bad_label_key_is_quoted_shortened() {
        let key = "X".repeat(5000);
        let msg = with(|m| m.labels = BTreeMap::from([(key, "v".into())]));
        let error = register(&msg).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("labels"));
        assert!(error.message.len() < 200, "{}", error.message);
        assert!(
            error.message.contains("\"... must contain only"),
            "{}",
            error.message
        );
    }

    #[test]
    fn label_values_are_named_by_key() {
        let ok = with(|m| {
            m.labels.insert("region".into(), "ü".repeat(256));
        });
        assert!(register(&ok).is_ok());
        rejects(
            &with(|m| {
                m.labels.insert("region".into(), "v".repeat(257));
            }),
            "labels.region",
            "at most 256 characters, got 257",
        );
        rejects(
            &with(|m| {
                m.labels.insert("region".into(), "eu\n".into());
            }),
            "labels.region",
            "control",
        );
        // Empty values are allowed (a flag-like label).
        assert!(
            register(&with(|m| {
                m.labels.insert("canary".into(), String::new());
            }))
            .is_ok()
        );
    }

    #[test]
    fn public_key_must_be_32_bytes_of_standard_base64() {
        let message = "base64 of a 32-byte ed25519 key";
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode([0xfb_u8; 32]);
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(KEY);
        for bad in [
            STANDARD.encode([1_u8; 31]),
            STANDARD.encode([1_u8; 33]),
            STANDARD.encode([1_u8; 64]),
            "not base64!".to_string(),
            url_safe,
            unpadded,
            format!(" {}", STANDARD.encode(KEY)),
            "=".to_string(),
        ] {
            rejects(&with(|m| m.public_key = bad.clone()), "publicKey", message);
        }
        // 32 bytes that are not a point on the curve.
        rejects(
            &with(|m| m.public_key = STANDARD.encode([7_u8; 32])),
            "publicKey",
            "not a valid ed25519 public key",
        );
        let valid = register(&with(|m| m.public_key = STANDARD.encode(OTHER_KEY))).unwrap();
        assert_eq!(valid.public_key, Some(OTHER_KEY));
    }

    #[test]
    fn rules_are_checked_in_schema_order() {
        let msg = RegisterAgent {
            id: "bad id".into(),
            name: String::new(),
            capabilities: vec![],
            max_concurrency: u32::MAX,
            version: "v".repeat(100),
            labels: BTreeMap::from([("BAD".into(), String::new())]),
            public_key: "x".into(),
        };
        let mut msg = msg;
        for field in [
            "id",
            "name",
            "capabilities",
            "maxConcurrency",
            "version",
            "labels",
            "publicKey",
        ] {
            let error = register(&msg).unwrap_err();
            assert_eq!(error.field.as_deref(), Some(field));
            match field {
                "id" => msg.id.clear(),
                "name" => msg.name = "n".into(),
                "capabilities" => msg.capabilities = caps(&["echo"]),
                "maxConcurrency" => msg.max_concurrency = 1,
                "version" => msg.version.clear(),
                "labels" => msg.labels.clear(),
                _ => msg.public_key.clear(),
            }
        }
        assert!(register(&msg).is_ok());
    }

    #[test]
    fn limits_are_configurable() {
        let limits = Limits {
            max_capabilities: 1,
            ..Limits::default()
        };
        let error = validate_registration(&valid_msg(), &limits).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("capabilities"));
    }

    #[test]
    fn write_to_copies_registered_fields_only() {
        let valid = register(&valid_msg()).unwrap();
        let mut record = AgentRecord {
            id: "kept".into(),
            name: "old".into(),
            capabilities: caps(&["old"]),
            reputation: 0.7,
            revision: 9,
            liveness: 2,
            ..Default::default()
        };
        valid.write_to(&mut record);
        assert_eq!(record.id, "kept");
        assert_eq!(record.name, "Echo agent");
        assert_eq!(record.capabilities, valid.capabilities);
        assert_eq!(record.max_concurrency, 4);
        assert_eq!(record.version, "1.2.3");
        assert_eq!(record.labels, valid.labels);
        assert_eq!(record.public_key, STANDARD.encode(KEY));
        assert_eq!(
            (record.reputation, record.revision, record.liveness),
            (0.7, 9, 2)
        );
    }

    #[test]
    fn key_change_is_refused_but_adding_a_key_is_not() {
        let with_key = register(&valid_msg()).unwrap();
        let without_key = register(&with(|m| m.public_key.clear())).unwrap();
        let other_key = register(&with(|m| m.public_key = STANDARD.encode(OTHER_KEY))).unwrap();
        let stored = STANDARD.encode(KEY);

        assert!(check_key_change("", &without_key).is_ok());
        assert!(check_key_change("", &with_key).is_ok());
        assert!(check_key_change(&stored, &with_key).is_ok());
        for refused in [&other_key, &without_key] {
            let error = check_key_change(&stored, refused).unwrap_err();
            assert_eq!(error.code, ErrorCode::AlreadyExists);
            assert_eq!(error.field.as_deref(), Some("publicKey"));
            assert!(error.message.starts_with("publicKey: "));
            assert!(!error.is_bad_input());
        }
    }

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            agent_id: "agent-1".into(),
            in_flight: 2,
            capacity: 4,
            health: AgentHealth::Healthy as i32,
            performance: BTreeMap::from([("latency_ms.p50".into(), 12.5)]),
        }
    }

    fn beat(msg: &Heartbeat) -> Result<ValidHeartbeat, ServiceError> {
        validate_heartbeat(msg, &Limits::default())
    }

    fn beat_rejects(msg: &Heartbeat, field: &str, text: &str) {
        let error = beat(msg).expect_err("should be rejected");
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert_eq!(error.field.as_deref(), Some(field), "{error}");
        assert!(
            error.message.contains(text),
            "{:?} lacks {text:?}",
            error.message
        );
    }

    fn hb(change: impl FnOnce(&mut Heartbeat)) -> Heartbeat {
        let mut msg = heartbeat();
        change(&mut msg);
        msg
    }

    #[test]
    fn accepts_a_heartbeat() {
        let valid = beat(&hb(|h| h.agent_id = " agent-1 ".into())).unwrap();
        assert_eq!(valid.agent_id, "agent-1");
        assert_eq!((valid.in_flight, valid.capacity), (2, 4));
        assert_eq!(valid.health, AgentHealth::Healthy);
        assert_eq!(valid.performance, heartbeat().performance);
    }

    #[test]
    fn heartbeat_defaults_are_valid() {
        let valid = beat(&Heartbeat {
            agent_id: "a".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(valid.health, AgentHealth::Unspecified);
        assert_eq!((valid.in_flight, valid.capacity), (0, 0));
    }

    #[test]
    fn heartbeat_needs_a_valid_agent_id() {
        beat_rejects(&hb(|h| h.agent_id.clear()), "agentId", "must not be empty");
        beat_rejects(
            &hb(|h| h.agent_id = "  ".into()),
            "agentId",
            "must not be empty",
        );
        beat_rejects(
            &hb(|h| h.agent_id = "a.b".into()),
            "agentId",
            "ASCII letters",
        );
        beat_rejects(
            &hb(|h| h.agent_id = "a".repeat(65)),
            "agentId",
            "at most 64",
        );
    }

    #[test]
    fn heartbeat_load_is_bounded_but_may_exceed_capacity() {
        assert!(
            beat(&hb(|h| {
                h.in_flight = 5;
                h.capacity = 0;
            }))
            .is_ok()
        );
        assert!(beat(&hb(|h| h.in_flight = 10_000)).is_ok());
        beat_rejects(&hb(|h| h.in_flight = 10_001), "inFlight", "at most 10000");
        beat_rejects(&hb(|h| h.capacity = u32::MAX), "capacity", "at most 10000");
    }

    #[test]
    fn heartbeat_health_must_be_known() {
        for health in [
            AgentHealth::Unspecified,
            AgentHealth::Healthy,
            AgentHealth::Degraded,
            AgentHealth::Unhealthy,
        ] {
            assert_eq!(
                beat(&hb(|h| h.health = health as i32)).unwrap().health,
                health
            );
        }
        beat_rejects(&hb(|h| h.health = 4), "health", "unknown value 4");
        beat_rejects(&hb(|h| h.health = -1), "health", "unknown value -1");
    }

    #[test]
    fn heartbeat_performance_figures_are_checked() {
        for bad in [f64::NAN, f64::INFINITY] {
            beat_rejects(
                &hb(|h| {
                    h.performance.insert("cpu".into(), bad);
                }),
                "performance.cpu",
                "finite",
            );
        }
        for (key, text) in [
            ("", "must not be empty"),
            ("a b", "ASCII letters"),
            ("x/y", "ASCII letters"),
        ] {
            beat_rejects(
                &hb(|h| {
                    h.performance.insert(key.into(), 1.0);
                }),
                "performance",
                text,
            );
        }
        beat_rejects(
            &hb(|h| {
                h.performance.insert("p".repeat(65), 1.0);
            }),
            "performance",
            "at most 64 characters",
        );
        let many: BTreeMap<String, f64> = (0..65).map(|i| (format!("m{i}"), -1.5)).collect();
        beat_rejects(
            &hb(|h| h.performance = many.clone()),
            "performance",
            "at most 64 entries, got 65",
        );
        let mut allowed = many;
        allowed.pop_first();
        assert!(beat(&hb(|h| h.performance = allowed)).is_ok());
    }
}
