//! Validation and normalisation of submitted tasks: a wire [`Task`] becomes a [`TaskSpec`] the dispatcher can route.
//!
//! Pure functions: no I/O, no clock (the current time is passed in). Each
//! rule fails with a [`ServiceError`] naming the offending field, and the
//! first failing rule wins, checked in schema order after the size check, so
//! the same bad task always gets the same error.
//!
//! # Field paths
//!
//! Field paths use the proto3 JSON names (lowerCamelCase: `timeoutMs`,
//! `maxAttempts`, `targets[1]`, `labels.region`), because clients send JSON
//! and the codec reports decoding errors the same way.
//!
//! # Rules and normalisation
//!
//! - Size: the encoded submission (JSON or protobuf bytes, as received) may
//!   be at most [`TaskLimits::max_encoded_bytes`]; larger ones fail with
//!   `PAYLOAD_TOO_LARGE` naming `payload`, the one unbounded field.
//! - `id` is trimmed; empty means "assign one", and the caller's generator
//!   supplies it. Ids are NATS subject tokens (`concord.tasks.result.<id>`):
//!   ASCII letters, digits, `-` and `_`.
//! - `capability` is required and matched exactly against the registry's
//!   capability names, so it follows their rules (a subject token of at most
//!   64 characters) and is not trimmed.
//! - `priority` is 0..=10; names are mapped to numbers by
//!   [`normalize_priority_names`] before the JSON is decoded.
//! - `strategy` must be a known value. `ROUTING_STRATEGY_UNSPECIFIED` is
//!   kept: the router applies its configured default when routing.
//! - `targets` are agent ids (subject tokens, at most 64 characters, no
//!   duplicates). DIRECT needs exactly one. With any other strategy, targets
//!   restrict the candidates to the named agents.
//! - `timeoutMs` and `maxAttempts` of 0 take the configured defaults; both
//!   have a configured maximum.
//! - `deadline`, when present, must be a valid timestamp after `now`.
//! - `correlationId` is free text without control characters, bounded.
//! - `labels` follow the registry's label rules (lowercase keys).
//! - `fanout` is for MULTICAST only: at least 1 without targets, at most the
//!   number of targets with them (0 with targets means all of them).

use std::collections::BTreeMap;

use concord_bus::ServiceError;
use concord_bus::validate::{LabelLimits, check_labels, check_text, check_token, is_token};
use concord_wire::pbjson_types::{Timestamp, Value};
use concord_wire::v1::{ErrorCode, RoutingStrategy, Task};

pub use concord_wire::priority::MAX as MAX_PRIORITY;

/// Longest agent id in `targets`; agent ids are registered with this limit.
const MAX_AGENT_ID_CHARS: usize = 64;
/// Longest capability name; capabilities are registered with this limit.
const MAX_CAPABILITY_CHARS: usize = 64;

/// Rewrites a priority name in a JSON task (`"priority": "high"`) as its
/// number; any other string fails naming `priority` (see
/// [`concord_wire::priority::normalize_names`]).
pub fn normalize_priority_names(json: &mut serde_json::Value) -> Result<(), ServiceError> {
    concord_wire::priority::normalize_names(json)
        .map_err(|message| ServiceError::invalid("priority", message))
}

/// Defaults and limits applied by [`validate_task`]; part of the
/// dispatcher's configuration.
///
/// Lengths count characters (Unicode scalar values), not bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLimits {
    /// Largest encoded submission in bytes. Default 256 KiB, well below NATS'
    /// default 1 MiB message limit, since the payload travels on inside
    /// assignments and events.
    pub max_encoded_bytes: usize,
    /// Longest task id. Default 128.
    pub max_id_chars: usize,
    /// Most entries in `targets`. Default 256.
    pub max_targets: usize,
    /// Highest MULTICAST `fanout`. Default 256.
    pub max_fanout: u32,
    /// `timeoutMs` used when the task gives 0. Default 30 s.
    pub default_timeout_ms: u64,
    /// Highest `timeoutMs`. Default 1 h.
    pub max_timeout_ms: u64,
    /// `maxAttempts` used when the task gives 0. Default 3.
    pub default_max_attempts: u32,
    /// Highest `maxAttempts`. Default 100.
    pub max_max_attempts: u32,
    /// Longest `correlationId`. Default 128.
    pub max_correlation_id_chars: usize,
    /// Most labels. Default 32.
    pub max_labels: usize,
    /// Longest label key. Default 63.
    pub max_label_key_chars: usize,
    /// Longest label value. Default 256.
    pub max_label_value_chars: usize,
}

impl Default for TaskLimits {
    fn default() -> Self {
        Self {
            max_encoded_bytes: 256 * 1024,
            max_id_chars: 128,
            max_targets: 256,
            max_fanout: 256,
            default_timeout_ms: 30_000,
            max_timeout_ms: 3_600_000,
            default_max_attempts: 3,
            max_max_attempts: 100,
            max_correlation_id_chars: 128,
            max_labels: 32,
            max_label_key_chars: 63,
            max_label_value_chars: 256,
        }
    }
}

/// Why a [`TaskLimits`] is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskLimitsError {
    /// A default is zero or above its maximum.
    #[error("{name} must be between 1 and {max}, got {value}")]
    DefaultOutOfRange {
        /// The offending setting.
        name: &'static str,
        /// Its value.
        value: u64,
        /// The maximum it must respect.
        max: u64,
    },
    /// A limit is zero, so every task would fail.
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
}

impl TaskLimits {
    /// Checks the configuration; call it at startup.
    pub fn validate(&self) -> Result<(), TaskLimitsError> {
        for (name, value) in [
            ("max_encoded_bytes", self.max_encoded_bytes),
            ("max_id_chars", self.max_id_chars),
            ("max_targets", self.max_targets),
            ("max_fanout", self.max_fanout as usize),
        ] {
            if value == 0 {
                return Err(TaskLimitsError::ZeroLimit(name));
            }
        }
        for (name, value, max) in [
            (
                "default_timeout_ms",
                self.default_timeout_ms,
                self.max_timeout_ms,
            ),
            (
                "default_max_attempts",
                u64::from(self.default_max_attempts),
                u64::from(self.max_max_attempts),
            ),
        ] {
            if value == 0 || value > max {
                return Err(TaskLimitsError::DefaultOutOfRange { name, value, max });
            }
        }
        Ok(())
    }
}

/// Facts about a submission that are not in the [`Task`] itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intake {
    /// Length of the submission as received (JSON or protobuf bytes).
    pub encoded_len: usize,
    /// Current time, Unix milliseconds; deadlines must be after it.
    pub now_unix_ms: i64,
    /// Arrival order, for FIFO among equal priorities (for example the
    /// JetStream stream sequence, which survives restarts).
    pub sequence: u64,
}

/// A task that passed [`validate_task`]: every field checked, defaults filled in.
///
/// The fields are public so the dispatcher can rebuild a spec from its own
/// store without validating again (a stored task whose deadline has since
/// passed is still a task, to be dead-lettered, not a validation error).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// Task id, given or generated.
    pub id: String,
    /// Whether the dispatcher generated `id`.
    pub id_generated: bool,
    /// Capability an agent must have.
    pub capability: String,
    /// Task input, unchanged.
    pub payload: Option<Value>,
    /// 0..=10, higher first.
    pub priority: u32,
    /// How to pick agents; `Unspecified` means the router's default.
    pub strategy: RoutingStrategy,
    /// Named agents (exactly one for DIRECT), in the order given, no duplicates.
    pub targets: Vec<String>,
    /// MULTICAST: how many agents get the task (0 with targets: all of
    /// them). Zero for every other strategy.
    pub fanout: u32,
    /// Lease of one attempt in milliseconds, at least 1.
    pub timeout_ms: u64,
    /// Most attempts, at least 1.
    pub max_attempts: u32,
    /// Absolute deadline, if any.
    pub deadline: Option<Timestamp>,
    /// Caller's correlation id, possibly empty.
    pub correlation_id: String,
    /// Labels, verbatim.
    pub labels: BTreeMap<String, String>,
    /// Arrival order, from [`Intake::sequence`].
    pub sequence: u64,
}

impl TaskSpec {
    /// Whether the deadline, if any, is not after `now_unix_ms`: the task
    /// must not be started again.
    pub fn deadline_passed(&self, now_unix_ms: i64) -> bool {
        self.deadline.is_some_and(|deadline| {
            timestamp_nanos(&deadline) <= i128::from(now_unix_ms) * 1_000_000
        })
    }

    /// The wire form with the defaults filled in, for storing and echoing:
    /// validating it again (before the deadline) gives the same spec.
    pub fn to_task(&self) -> Task {
        Task {
            id: self.id.clone(),
            capability: self.capability.clone(),
            payload: self.payload.clone(),
            priority: self.priority,
            strategy: self.strategy.into(),
            targets: self.targets.clone(),
            timeout_ms: self.timeout_ms,
            max_attempts: self.max_attempts,
            deadline: self.deadline,
            correlation_id: self.correlation_id.clone(),
            labels: self.labels.clone(),
            fanout: self.fanout,
        }
    }
}

/// Checks a submitted task and returns it normalised (see the module docs),
/// or the first rule it breaks, naming the field.
///
/// Takes the task by value so the payload is moved, not copied. `new_id` is
/// called only when the task has no id; it must return a valid id (a UUID
/// is one), for example derived from the `Nats-Msg-Id` so a redelivered
/// submission gets the same id.
pub fn validate_task(
    task: Task,
    intake: &Intake,
    limits: &TaskLimits,
    new_id: impl FnOnce() -> String,
) -> Result<TaskSpec, ServiceError> {
    if intake.encoded_len > limits.max_encoded_bytes {
        return Err(ServiceError {
            code: ErrorCode::PayloadTooLarge,
            message: format!(
                "payload: the task is {} bytes encoded, more than the limit of {}",
                intake.encoded_len, limits.max_encoded_bytes
            ),
            field: Some("payload".to_string()),
            details: None,
        });
    }

    let Task {
        id,
        capability,
        payload,
        priority,
        strategy,
        targets,
        timeout_ms,
        max_attempts,
        deadline,
        correlation_id,
        labels,
        fanout,
    } = task;

    let trimmed = id.trim();
    let (id, id_generated) = if trimmed.is_empty() {
        let id = new_id();
        debug_assert!(is_token(&id), "generated task id {id:?} is not a token");
        (id, true)
    } else {
        check_token("id", trimmed, limits.max_id_chars)?;
        let id = if trimmed.len() == id.len() {
            id
        } else {
            trimmed.to_string()
        };
        (id, false)
    };

    check_token("capability", &capability, MAX_CAPABILITY_CHARS)?;

    if priority > MAX_PRIORITY {
        return Err(ServiceError::invalid(
            "priority",
            format!("must be between 0 and {MAX_PRIORITY}, got {priority}"),
        ));
    }

    let strategy = RoutingStrategy::try_from(strategy)
        .map_err(|_| ServiceError::invalid("strategy", format!("unknown value {strategy}")))?;

    validate_targets(&targets, strategy, limits)?;

    let timeout_ms = match timeout_ms {
        0 => limits.default_timeout_ms,
        n if n > limits.max_timeout_ms => {
            return Err(ServiceError::invalid(
                "timeoutMs",
                format!("must be at most {}, got {n}", limits.max_timeout_ms),
            ));
        }
        n => n,
    };

    let max_attempts = match max_attempts {
        0 => limits.default_max_attempts,
        n if n > limits.max_max_attempts => {
            return Err(ServiceError::invalid(
                "maxAttempts",
                format!("must be at most {}, got {n}", limits.max_max_attempts),
            ));
        }
        n => n,
    };

    if let Some(deadline) = &deadline {
        validate_deadline(deadline, intake.now_unix_ms)?;
    }

    check_text(
        "correlationId",
        &correlation_id,
        limits.max_correlation_id_chars,
    )?;

    validate_labels(&labels, limits)?;

    validate_fanout(fanout, strategy, targets.len(), limits)?;

    Ok(TaskSpec {
        id,
        id_generated,
        capability,
        payload,
        priority,
        strategy,
        targets,
        fanout,
        timeout_ms,
        max_attempts,
        deadline,
        correlation_id,
        labels,
        sequence: intake.sequence,
    })
}

fn validate_targets(
    targets: &[String],
    strategy: RoutingStrategy,
    limits: &TaskLimits,
) -> Result<(), ServiceError> {
    if targets.len() > limits.max_targets {
        return Err(ServiceError::invalid(
            "targets",
            format!(
                "must have at most {} entries, got {}",
                limits.max_targets,
                targets.len()
            ),
        ));
    }
    if strategy == RoutingStrategy::Direct && targets.len() != 1 {
        return Err(ServiceError::invalid(
            "targets",
            format!(
                "DIRECT needs exactly one target agent id, got {}",
                targets.len()
            ),
        ));
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, target) in targets.iter().enumerate() {
        let field = format!("targets[{i}]");
        check_token(&field, target, MAX_AGENT_ID_CHARS)?;
        if let Some(first) = seen.insert(target, i) {
            return Err(ServiceError::invalid(
                field,
                format!("duplicate of targets[{first}]"),
            ));
        }
    }
    Ok(())
}

fn validate_fanout(
    fanout: u32,
    strategy: RoutingStrategy,
    targets: usize,
    limits: &TaskLimits,
) -> Result<(), ServiceError> {
    if strategy != RoutingStrategy::Multicast {
        if fanout != 0 {
            return Err(ServiceError::invalid(
                "fanout",
                format!(
                    "is only used with MULTICAST, not {}",
                    strategy.as_str_name()
                ),
            ));
        }
        return Ok(());
    }
    if targets == 0 && fanout == 0 {
        return Err(ServiceError::invalid(
            "fanout",
            "MULTICAST without targets needs a fanout of at least 1",
        ));
    }
    if fanout > limits.max_fanout {
        return Err(ServiceError::invalid(
            "fanout",
            format!("must be at most {}, got {fanout}", limits.max_fanout),
        ));
    }
    if targets > 0 && fanout as usize > targets {
        return Err(ServiceError::invalid(
            "fanout",
            format!("must be at most the number of targets ({targets}), got {fanout}"),
        ));
    }
    Ok(())
}

/// Earliest and latest seconds of a valid protobuf timestamp
/// (0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z).
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

fn validate_deadline(deadline: &Timestamp, now_unix_ms: i64) -> Result<(), ServiceError> {
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&deadline.seconds)
        || !(0..1_000_000_000).contains(&deadline.nanos)
    {
        return Err(ServiceError::invalid(
            "deadline",
            "must be a valid timestamp between years 1 and 9999",
        ));
    }
    if timestamp_nanos(deadline) <= i128::from(now_unix_ms) * 1_000_000 {
        return Err(ServiceError::invalid("deadline", "must be in the future"));
    }
    Ok(())
}

/// Nanoseconds since the Unix epoch; exact for any `Timestamp`.
fn timestamp_nanos(timestamp: &Timestamp) -> i128 {
    i128::from(timestamp.seconds) * 1_000_000_000 + i128::from(timestamp.nanos)
}

fn validate_labels(
    labels: &BTreeMap<String, String>,
    limits: &TaskLimits,
) -> Result<(), ServiceError> {
    check_labels(
        labels,
        &LabelLimits {
            max_labels: limits.max_labels,
            max_key_chars: limits.max_label_key_chars,
            max_value_chars: limits.max_label_value_chars,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_wire::priority::{CRITICAL as PRIORITY_CRITICAL, from_name as priority_from_name};

    /// 2023-11-14T22:13:20.123Z.
    const NOW_MS: i64 = 1_700_000_000_123;

    fn intake() -> Intake {
        Intake {
            encoded_len: 100,
            now_unix_ms: NOW_MS,
            sequence: 7,
        }
    }

    fn minimal() -> Task {
        Task {
            capability: "summarize".into(),
            ..Default::default()
        }
    }

    fn with(change: impl FnOnce(&mut Task)) -> Task {
        let mut task = minimal();
        change(&mut task);
        task
    }

    fn validate(task: Task) -> Result<TaskSpec, ServiceError> {
        validate_task(task, &intake(), &TaskLimits::default(), || {
            "generated-1".to_string()
        })
    }

    fn rejects(task: Task, field: &str, text: &str) {
        let error = validate(task).expect_err("should be rejected");
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{error}");
        assert_eq!(error.field.as_deref(), Some(field), "{error}");
        assert!(
            error.message.starts_with(&format!("{field}: ")),
            "{:?}",
            error.message
        );
        assert!(
            error.message.contains(text),
            "{:?} lacks {text:?}",
            error.message
        );
    }

    fn strategy(task: &mut Task, strategy: RoutingStrategy) {
        task.strategy = strategy as i32;
    }

    fn timestamp(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }

    #[test]
    fn accepts_a_minimal_task_and_fills_in_defaults() {
        let spec = validate(minimal()).unwrap();
        assert_eq!(
            spec,
            TaskSpec {
                id: "generated-1".into(),
                id_generated: true,
                capability: "summarize".into(),
                payload: None,
                priority: 0,
                strategy: RoutingStrategy::Unspecified,
                targets: vec![],
                fanout: 0,
                timeout_ms: 30_000,
                max_attempts: 3,
                deadline: None,
                correlation_id: String::new(),
                labels: BTreeMap::new(),
                sequence: 7,
            }
        );
    }

    #[test]
    fn accepts_a_full_task_unchanged() {
        let payload: Value =
            serde_json::from_value(serde_json::json!({"text": "hi", "n": [1, 2]})).unwrap();
        let task = Task {
            id: "task-1".into(),
            capability: "summarize".into(),
            payload: Some(payload.clone()),
            priority: 8,
            strategy: RoutingStrategy::Multicast as i32,
            targets: vec!["a-1".into(), "b_2".into(), "C3".into()],
            timeout_ms: 5_000,
            max_attempts: 7,
            deadline: Some(timestamp(1_800_000_000, 5)),
            correlation_id: "run 42 · ü".into(),
            labels: BTreeMap::from([("team/x".into(), "search".into())]),
            fanout: 2,
        };
        let spec = validate(task.clone()).unwrap();
        assert!(!spec.id_generated);
        assert_eq!(spec.payload, Some(payload));
        assert_eq!(spec.strategy, RoutingStrategy::Multicast);
        assert_eq!(spec.to_task(), task);
    }

    #[test]
    fn id_is_trimmed_and_generated_only_when_absent() {
        let spec = validate_task(
            with(|t| t.id = "  task-1\t".into()),
            &intake(),
            &TaskLimits::default(),
            || panic!("generator called"),
        )
        .unwrap();
        assert_eq!(spec.id, "task-1");
        assert!(!spec.id_generated);

        for blank in ["", "   ", "\n"] {
            let spec = validate(with(|t| t.id = blank.into())).unwrap();
            assert_eq!(spec.id, "generated-1");
            assert!(spec.id_generated);
        }
    }

    #[test]
    fn id_must_be_a_subject_token() {
        assert!(validate(with(|t| t.id = "x".repeat(128))).is_ok());
        rejects(
            with(|t| t.id = "x".repeat(129)),
            "id",
            "at most 128 characters, got 129",
        );
        for bad in ["a.b", "a b", "a*", "a>", "tâche"] {
            rejects(with(|t| t.id = bad.into()), "id", "ASCII letters");
        }
    }

    #[test]
    fn capability_is_a_required_token_matched_verbatim() {
        assert!(validate(with(|t| t.capability = "c".repeat(64))).is_ok());
        assert_eq!(
            validate(with(|t| t.capability = "Sum_Ma-rize9".into()))
                .unwrap()
                .capability,
            "Sum_Ma-rize9"
        );
        rejects(
            with(|t| t.capability.clear()),
            "capability",
            "must not be empty",
        );
        for bad in [" summarize", "sum marize", "a.b", "résumé"] {
            rejects(
                with(|t| t.capability = bad.into()),
                "capability",
                "ASCII letters",
            );
        }
        rejects(
            with(|t| t.capability = "c".repeat(65)),
            "capability",
            "at most 64 characters, got 65",
        );
    }

    #[test]
    fn priority_is_bounded() {
        for priority in 0..=10 {
            assert_eq!(
                validate(with(|t| t.priority = priority)).unwrap().priority,
                priority
            );
        }
        for bad in [11, 100, u32::MAX] {
            rejects(
                with(|t| t.priority = bad),
                "priority",
                &format!("between 0 and 10, got {bad}"),
            );
        }
    }

    #[test]
    fn every_known_strategy_is_accepted() {
        use RoutingStrategy::*;
        for known in [
            Unspecified,
            RoundRobin,
            Capability,
            LeastLoaded,
            Priority,
            Weighted,
            Direct,
            Broadcast,
            Multicast,
        ] {
            let task = with(|t| {
                strategy(t, known);
                match known {
                    Direct => t.targets = vec!["agent-1".into()],
                    Multicast => t.fanout = 2,
                    _ => {}
                }
            });
            assert_eq!(validate(task).unwrap().strategy, known);
        }
    }

    #[test]
    fn unknown_strategies_are_refused() {
        for bad in [9, 42, -1, i32::MAX, i32::MIN] {
            rejects(
                with(|t| t.strategy = bad),
                "strategy",
                &format!("unknown value {bad}"),
            );
        }
    }

    #[test]
    fn direct_needs_exactly_one_target() {
        let direct = |targets: &[&str]| {
            with(|t| {
                strategy(t, RoutingStrategy::Direct);
                t.targets = targets.iter().map(|s| s.to_string()).collect();
            })
        };
        assert_eq!(
            validate(direct(&["agent-1"])).unwrap().targets,
            vec!["agent-1".to_string()]
        );
        rejects(direct(&[]), "targets", "exactly one target agent id, got 0");
        rejects(
            direct(&["a", "b"]),
            "targets",
            "exactly one target agent id, got 2",
        );
    }

    #[test]
    fn targets_are_checked_one_by_one() {
        let targets = |list: Vec<String>| with(|t| t.targets = list);
        rejects(
            targets(vec!["a".into(), String::new()]),
            "targets[1]",
            "must not be empty",
        );
        rejects(
            targets(vec!["a".into(), "b".into(), "c.d".into()]),
            "targets[2]",
            "ASCII letters",
        );
        rejects(targets(vec![" a".into()]), "targets[0]", "ASCII letters");
        rejects(
            targets(vec!["a".repeat(65)]),
            "targets[0]",
            "at most 64 characters, got 65",
        );
        rejects(
            targets(vec!["a".into(), "b".into(), "a".into()]),
            "targets[2]",
            "duplicate of targets[0]",
        );
        assert!(validate(targets(vec!["a".repeat(64)])).is_ok());
    }

    #[test]
    fn targets_are_bounded_in_number_and_allowed_with_any_strategy() {
        let many = |n: usize| (0..n).map(|i| format!("agent-{i}")).collect::<Vec<_>>();
        assert!(validate(with(|t| t.targets = many(256))).is_ok());
        rejects(
            with(|t| t.targets = many(257)),
            "targets",
            "at most 256 entries, got 257",
        );
        for other in [
            RoutingStrategy::Unspecified,
            RoutingStrategy::RoundRobin,
            RoutingStrategy::Weighted,
            RoutingStrategy::Broadcast,
        ] {
            let spec = validate(with(|t| {
                strategy(t, other);
                t.targets = many(3);
            }))
            .unwrap();
            assert_eq!(spec.targets, many(3));
        }
    }

    #[test]
    fn fanout_rules_for_multicast() {
        let multicast = |targets: usize, fanout: u32| {
            with(|t| {
                strategy(t, RoutingStrategy::Multicast);
                t.targets = (0..targets).map(|i| format!("a{i}")).collect();
                t.fanout = fanout;
            })
        };
        for (targets, fanout) in [(0, 1), (0, 256), (3, 0), (3, 1), (3, 3)] {
            let spec = validate(multicast(targets, fanout)).unwrap();
            assert_eq!(spec.fanout, fanout);
        }
        rejects(multicast(0, 0), "fanout", "needs a fanout of at least 1");
        rejects(multicast(0, 257), "fanout", "at most 256, got 257");
        rejects(
            multicast(3, 4),
            "fanout",
            "at most the number of targets (3), got 4",
        );
    }

    #[test]
    fn fanout_is_refused_outside_multicast() {
        rejects(
            with(|t| {
                strategy(t, RoutingStrategy::Broadcast);
                t.fanout = 2;
            }),
            "fanout",
            "only used with MULTICAST, not BROADCAST",
        );
        rejects(
            with(|t| t.fanout = 1),
            "fanout",
            "not ROUTING_STRATEGY_UNSPECIFIED",
        );
    }

    #[test]
    fn timeout_defaults_and_is_capped() {
        assert_eq!(validate(minimal()).unwrap().timeout_ms, 30_000);
        assert_eq!(validate(with(|t| t.timeout_ms = 1)).unwrap().timeout_ms, 1);
        assert_eq!(
            validate(with(|t| t.timeout_ms = 3_600_000))
                .unwrap()
                .timeout_ms,
            3_600_000
        );
        rejects(
            with(|t| t.timeout_ms = 3_600_001),
            "timeoutMs",
            "at most 3600000, got 3600001",
        );
        let limits = TaskLimits {
            default_timeout_ms: 1_234,
            ..TaskLimits::default()
        };
        let spec = validate_task(minimal(), &intake(), &limits, || "g".into()).unwrap();
        assert_eq!(spec.timeout_ms, 1_234);
    }

    #[test]
    fn max_attempts_defaults_and_is_capped() {
        assert_eq!(validate(minimal()).unwrap().max_attempts, 3);
        for n in [1, 50, 100] {
            assert_eq!(
                validate(with(|t| t.max_attempts = n)).unwrap().max_attempts,
                n
            );
        }
        rejects(
            with(|t| t.max_attempts = 101),
            "maxAttempts",
            "at most 100, got 101",
        );
        rejects(
            with(|t| t.max_attempts = u32::MAX),
            "maxAttempts",
            "at most 100",
        );
    }

    #[test]
    fn deadline_must_be_in_the_future() {
        let at = |seconds, nanos| with(|t| t.deadline = Some(timestamp(seconds, nanos)));
        // NOW_MS is 1_700_000_000 s + 123 ms.
        assert!(validate(at(1_700_000_000, 123_000_001)).is_ok());
        assert!(validate(at(1_700_000_001, 0)).is_ok());
        assert!(validate(at(253_402_300_799, 999_999_999)).is_ok());
        for (seconds, nanos) in [
            (1_700_000_000, 123_000_000),
            (1_700_000_000, 0),
            (0, 0),
            (-62_135_596_800, 0),
        ] {
            rejects(at(seconds, nanos), "deadline", "must be in the future");
        }
        for (seconds, nanos) in [
            (1_800_000_000, -1),
            (1_800_000_000, 1_000_000_000),
            (253_402_300_800, 0),
            (-62_135_596_801, 0),
            (i64::MAX, 0),
            (i64::MIN, 0),
        ] {
            rejects(at(seconds, nanos), "deadline", "valid timestamp");
        }
    }

    #[test]
    fn deadline_passed_compares_exactly() {
        let spec = |deadline| TaskSpec {
            deadline,
            ..validate(minimal()).unwrap()
        };
        assert!(!spec(None).deadline_passed(i64::MAX));
        let at = spec(Some(timestamp(1_700_000_000, 123_000_001)));
        assert!(!at.deadline_passed(NOW_MS));
        assert!(at.deadline_passed(NOW_MS + 1));
        let exact = spec(Some(timestamp(1_700_000_000, 123_000_000)));
        assert!(exact.deadline_passed(NOW_MS));
        assert!(!exact.deadline_passed(NOW_MS - 1));
        assert!(spec(Some(timestamp(i64::MIN, 0))).deadline_passed(i64::MIN));
    }

    #[test]
    fn correlation_id_is_bounded_free_text() {
        assert!(validate(with(|t| t.correlation_id = "ü".repeat(128))).is_ok());
        rejects(
            with(|t| t.correlation_id = "c".repeat(129)),
            "correlationId",
            "at most 128 characters, got 129",
        );
        rejects(
            with(|t| t.correlation_id = "run\u{0}1".into()),
            "correlationId",
            "control",
        );
    }

    #[test]
    fn labels_follow_the_registry_rules() {
        let labels = |n: usize| (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert!(validate(with(|t| t.labels = labels(32))).is_ok());
        rejects(
            with(|t| t.labels = labels(33)),
            "labels",
            "at most 32 entries, got 33",
        );
        for (key, text) in [
            ("", "must not be empty"),
            ("Region", "lowercase ASCII letters"),
            ("a b", "lowercase ASCII letters"),
        ] {
            rejects(
                with(|t| t.labels = BTreeMap::from([(key.into(), "v".into())])),
                "labels",
                text,
            );
        }
        rejects(
            with(|t| t.labels = BTreeMap::from([("k".repeat(64), "v".into())])),
            "labels",
            "at most 63 characters, got 64",
        );
        let long_key = "X".repeat(1_000);
        let error = validate(with(|t| {
            t.labels = BTreeMap::from([(long_key, "v".into())]);
        }))
        .unwrap_err();
        assert!(error.message.len() < 250, "{}", error.message);
        rejects(
            with(|t| t.labels = BTreeMap::from([("region".into(), "v".repeat(257))])),
            "labels.region",
            "at most 256 characters, got 257",
        );
        rejects(
            with(|t| t.labels = BTreeMap::from([("region".into(), "eu\n".into())])),
            "labels.region",
            "control",
        );
        assert!(
            validate(with(
                |t| t.labels = BTreeMap::from([("flag".into(), String::new())])
            ))
            .is_ok()
        );
    }

    #[test]
    fn oversized_submissions_are_payload_too_large() {
        let limits = TaskLimits::default();
        let at = |encoded_len| Intake {
            encoded_len,
            ..intake()
        };
        assert!(validate_task(minimal(), &at(256 * 1024), &limits, || "g".into()).is_ok());
        // Checked first: the size is known before anything is looked at.
        let error = validate_task(
            with(|t| t.capability.clear()),
            &at(256 * 1024 + 1),
            &limits,
            || "g".into(),
        )
        .unwrap_err();
        assert_eq!(error.code, ErrorCode::PayloadTooLarge);
        assert_eq!(error.status(), 413);
        assert!(error.is_bad_input());
        assert_eq!(error.field.as_deref(), Some("payload"));
        assert_eq!(
            error.message,
            "payload: the task is 262145 bytes encoded, more than the limit of 262144"
        );
    }

    #[test]
    fn rules_are_checked_in_schema_order() {
        let mut task = Task {
            id: "bad id".into(),
            capability: String::new(),
            payload: None,
            priority: 11,
            strategy: 99,
            targets: vec!["x.y".into()],
            timeout_ms: u64::MAX,
            max_attempts: u32::MAX,
            deadline: Some(timestamp(0, 0)),
            correlation_id: "\u{7}".into(),
            labels: BTreeMap::from([("BAD".into(), String::new())]),
            fanout: 3,
        };
        for field in [
            "id",
            "capability",
            "priority",
            "strategy",
            "targets[0]",
            "timeoutMs",
            "maxAttempts",
            "deadline",
            "correlationId",
            "labels",
            "fanout",
        ] {
            let error = validate(task.clone()).unwrap_err();
            assert_eq!(error.field.as_deref(), Some(field), "{error}");
            match field {
                "id" => task.id.clear(),
                "capability" => task.capability = "echo".into(),
                "priority" => task.priority = 10,
                "strategy" => task.strategy = RoutingStrategy::Weighted as i32,
                "targets[0]" => task.targets.clear(),
                "timeoutMs" => task.timeout_ms = 0,
                "maxAttempts" => task.max_attempts = 0,
                "deadline" => task.deadline = None,
                "correlationId" => task.correlation_id.clear(),
                "labels" => task.labels.clear(),
                _ => task.fanout = 0,
            }
        }
        assert!(validate(task).is_ok());
    }

    #[test]
    fn to_task_is_stable_under_revalidation() {
        let spec = validate(with(|t| {
            t.priority = 3;
            t.targets = vec!["a".into()];
            t.labels = BTreeMap::from([("k".into(), "v".into())]);
        }))
        .unwrap();
        let again = validate_task(spec.to_task(), &intake(), &TaskLimits::default(), || {
            panic!("the id is kept")
        })
        .unwrap();
        assert_eq!(
            again,
            TaskSpec {
                id_generated: false,
                ..spec.clone()
            }
        );
        let task = spec.to_task();
        assert_eq!((task.timeout_ms, task.max_attempts), (30_000, 3));
        assert_eq!(task.id, "generated-1");
    }

    #[test]
    fn limits_are_configurable_and_checked() {
        assert_eq!(TaskLimits::default().validate(), Ok(()));
        let limits = TaskLimits {
            max_targets: 1,
            ..TaskLimits::default()
        };
        let error = validate_task(
            with(|t| t.targets = vec!["a".into(), "b".into()]),
            &intake(),
            &limits,
            || "g".into(),
        )
        .unwrap_err();
        assert_eq!(error.field.as_deref(), Some("targets"));

        let ok = TaskLimits::default();
        for (bad, text) in [
            (
                TaskLimits {
                    default_timeout_ms: 0,
                    ..ok.clone()
                },
                "default_timeout_ms must be between 1 and 3600000, got 0",
            ),
            (
                TaskLimits {
                    default_timeout_ms: 3_600_001,
                    ..ok.clone()
                },
                "default_timeout_ms",
            ),
            (
                TaskLimits {
                    default_max_attempts: 101,
                    ..ok.clone()
                },
                "default_max_attempts must be between 1 and 100, got 101",
            ),
            (
                TaskLimits {
                    max_encoded_bytes: 0,
                    ..ok.clone()
                },
                "max_encoded_bytes must be at least 1",
            ),
            (
                TaskLimits {
                    max_fanout: 0,
                    ..ok.clone()
                },
                "max_fanout",
            ),
        ] {
            let error = bad.validate().unwrap_err();
            assert!(error.to_string().contains(text), "{error}");
        }
    }

    #[test]
    fn priority_names() {
        for (name, expected) in [
            ("LOW", Some(2)),
            ("low", Some(2)),
            ("Normal", Some(5)),
            ("HIGH", Some(8)),
            ("cRiTiCaL", Some(10)),
            ("URGENT", None),
            ("", None),
            (" high", None),
            ("5", None),
        ] {
            assert_eq!(priority_from_name(name), expected, "{name:?}");
        }
    }

    #[test]
    fn normalize_priority_names_rewrites_names_only() {
        use serde_json::json;
        for (input, expected) in [
            (json!({"priority": "low"}), json!({"priority": 2})),
            (json!({"priority": "NORMAL"}), json!({"priority": 5})),
            (json!({"priority": "High"}), json!({"priority": 8})),
            (
                json!({"priority": "CRITICAL", "capability": "x"}),
                json!({"priority": 10, "capability": "x"}),
            ),
            (json!({"priority": 7}), json!({"priority": 7})),
            (json!({"priority": 70}), json!({"priority": 70})),
            (json!({"priority": "7"}), json!({"priority": "7"})),
            (json!({"priority": null}), json!({"priority": null})),
            (json!({"priority": true}), json!({"priority": true})),
            (json!({"capability": "x"}), json!({"capability": "x"})),
            (json!(["priority"]), json!(["priority"])),
            (json!("HIGH"), json!("HIGH")),
            (
                json!({"labels": {"priority": "HIGH"}}),
                json!({"labels": {"priority": "HIGH"}}),
            ),
        ] {
            let mut value = input.clone();
            normalize_priority_names(&mut value).unwrap();
            assert_eq!(value, expected, "{input}");
        }
    }

    #[test]
    fn normalize_priority_names_refuses_unknown_names() {
        for (bad, shown) in [
            ("urgent", "\"urgent\""),
            ("", "\"\""),
            (" high", "\" high\""),
            ("-1", "\"-1\""),
            ("5.0", "\"5.0\""),
        ] {
            let mut value = serde_json::json!({ "priority": bad });
            let error = normalize_priority_names(&mut value).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidArgument);
            assert_eq!(error.field.as_deref(), Some("priority"));
            assert!(error.message.contains("LOW, NORMAL, HIGH, CRITICAL"));
            assert!(
                error.message.ends_with(&format!("got {shown}")),
                "{}",
                error.message
            );
        }
        let mut long = serde_json::json!({ "priority": "x".repeat(1_000) });
        let error = normalize_priority_names(&mut long).unwrap_err();
        assert!(error.message.ends_with("x\"..."), "{}", error.message);
        assert!(error.message.len() < 200);
    }

    #[test]
    fn a_named_priority_decodes_and_validates() {
        let mut json = serde_json::json!({
            "capability": "summarize",
            "priority": "critical",
            "strategy": "LEAST_LOADED",
            "maxAttempts": 5,
        });
        normalize_priority_names(&mut json).unwrap();
        let task: Task = serde_json::from_value(json).unwrap();
        let spec = validate(task).unwrap();
        assert_eq!(spec.priority, PRIORITY_CRITICAL);
        assert_eq!(spec.strategy, RoutingStrategy::LeastLoaded);
        assert_eq!(spec.max_attempts, 5);
    }
}
