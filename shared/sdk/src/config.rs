//! [`AgentConfig`]: who the agent is, where NATS is, and its limits.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use concord_bus::BusConfig;
use concord_identity::AgentKey;
use concord_telemetry::MetricsRegistry;

use crate::AgentError;

/// Longest agent id the SDK accepts (the registry's limit).
pub const MAX_AGENT_ID_CHARS: usize = 64;

/// Everything [`run`](crate::run) needs besides the agent itself.
///
/// ```
/// use std::time::Duration;
/// use concord_sdk::AgentConfig;
/// use concord_sdk::bus::BusConfig;
///
/// let config = AgentConfig::new("summarizer", BusConfig::new("nats://127.0.0.1:4222", "summarizer"))
///     .with_id("summarizer-1")
///     .with_max_concurrency(4)
///     .with_label("region", "eu")
///     .with_shutdown_grace(Duration::from_secs(30));
/// assert_eq!(config.agent_id().unwrap(), "summarizer-1");
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct AgentConfig {
    /// NATS connection and subject root.
    pub nats: BusConfig,
    /// Agent id: letters, digits, `-`, `_`, at most 64. `None`: a random
    /// `agent-<uuid>` chosen once per process (see [`AgentConfig::agent_id`]).
    pub id: Option<String>,
    /// Display name for operators.
    pub name: String,
    /// Agent software version, free form.
    pub version: String,
    /// Labels for discovery selectors (`region: eu`, ...).
    pub labels: BTreeMap<String, String>,
    /// Most tasks run at once (at least 1); more assignments wait in the
    /// subscription until a slot frees up.
    pub max_concurrency: u32,
    /// Time between heartbeats; shortened to the registry's expectation if
    /// its acknowledgements ask for more frequent ones.
    pub heartbeat_interval: Duration,
    /// On shutdown, how long running tasks may take to finish before they
    /// are cancelled and handed back.
    pub shutdown_grace: Duration,
    /// The agent's ed25519 key: its public half is registered, and the
    /// registration, every heartbeat and the deregistration are signed
    /// with it, so nobody else can act as this agent. `None`: see
    /// [`AgentConfig::agent_key`].
    pub key: Option<AgentKey>,
    /// Timeout of each request to the registry.
    pub request_timeout: Duration,
    /// Where to register the agent's metrics (`concord_agent_*`); none when `None`.
    pub metrics: Option<MetricsRegistry>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("nats", &self.nats)
            .field("id", &self.id)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("labels", &self.labels)
            .field("max_concurrency", &self.max_concurrency)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("key", &self.key)
            .field("request_timeout", &self.request_timeout)
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

impl AgentConfig {
    /// Defaults: random id, no labels, 16 tasks at once, a heartbeat every
    /// second, 10 s shutdown grace, 2 s registry timeout, no metrics.
    pub fn new(name: impl Into<String>, nats: BusConfig) -> Self {
        Self {
            nats,
            id: None,
            name: name.into(),
            version: String::new(),
            labels: BTreeMap::new(),
            max_concurrency: 16,
            heartbeat_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            key: None,
            request_timeout: Duration::from_secs(2),
            metrics: None,
        }
    }

    /// Sets the agent id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the software version.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Adds a label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Sets the most tasks run at once.
    pub fn with_max_concurrency(mut self, max: u32) -> Self {
        self.max_concurrency = max;
        self
    }

    /// Sets the time between heartbeats.
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Sets how long running tasks may finish on shutdown.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Sets the agent's key (for a stable id, load it with
    /// [`AgentKey::load_or_create`] so restarts keep it: the registry refuses
    /// a known id registered again with another key).
    pub fn with_key(mut self, key: AgentKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets the timeout of registry requests.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Registers the agent's metrics in `registry`.
    pub fn with_metrics(mut self, registry: MetricsRegistry) -> Self {
        self.metrics = Some(registry);
        self
    }

    /// The id the agent registers under: the configured one, else
    /// `agent-<uuid>` generated once per process, so every `run` in the
    /// process (and every re-registration) uses the same id.
    ///
    /// ```
    /// use concord_sdk::AgentConfig;
    /// use concord_sdk::bus::BusConfig;
    ///
    /// let config = AgentConfig::new("a", BusConfig::new("nats://127.0.0.1:4222", "a"));
    /// let id = config.agent_id().unwrap();
    /// assert!(id.starts_with("agent-"));
    /// assert_eq!(config.agent_id().unwrap(), id);
    /// assert!(config.with_id("no.dots").agent_id().is_err());
    /// ```
    pub fn agent_id(&self) -> Result<String, AgentError> {
        let id = match &self.id {
            Some(id) => id.clone(),
            None => process_agent_id().to_string(),
        };
        if !is_agent_id(&id) {
            return Err(AgentError::InvalidConfig {
                field: "id",
                reason: format!(
                    "{id:?} must be 1 to {MAX_AGENT_ID_CHARS} ASCII letters, digits, '-' or '_' \
                     (it is a token of the subject <root>.agent.<id>.tasks)"
                ),
            });
        }
        Ok(id)
    }

    /// The key the agent signs with: the configured one; else, for an id
    /// generated by the process, a key generated once per process (the id
    /// and its key live and die together); else `None`: a configured id
    /// without a key registers unsigned, and anyone could act as it.
    pub fn agent_key(&self) -> Result<Option<AgentKey>, AgentError> {
        if let Some(key) = &self.key {
            return Ok(Some(key.clone()));
        }
        if self.id.is_some() {
            return Ok(None);
        }
        process_agent_key()
            .cloned()
            .map(Some)
            .ok_or_else(|| AgentError::InvalidConfig {
                field: "key",
                reason: "no randomness from the operating system to make a key".into(),
            })
    }

    /// Checks the limits that the registry would otherwise refuse later.
    pub(crate) fn validate(&self) -> Result<(), AgentError> {
        if self.max_concurrency == 0 {
            return Err(AgentError::InvalidConfig {
                field: "max_concurrency",
                reason: "must be at least 1".into(),
            });
        }
        if self.heartbeat_interval.is_zero() {
            return Err(AgentError::InvalidConfig {
                field: "heartbeat_interval",
                reason: "must be more than zero".into(),
            });
        }
        if self.request_timeout.is_zero() {
            return Err(AgentError::InvalidConfig {
                field: "request_timeout",
                reason: "must be more than zero".into(),
            });
        }
        Ok(())
    }
}

fn process_agent_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("agent-{}", uuid::Uuid::new_v4().simple()))
}

fn process_agent_key() -> Option<&'static AgentKey> {
    static KEY: OnceLock<Option<AgentKey>> = OnceLock::new();
    KEY.get_or_init(|| AgentKey::generate().ok()).as_ref()
}

/// Letters, digits, `-` and `_`, 1 to 64 of them: one subject token.
pub(crate) fn is_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_AGENT_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AgentConfig {
        AgentConfig::new("a", BusConfig::new("nats://127.0.0.1:1", "a"))
    }

    #[test]
    fn generated_ids_are_valid_and_stable() {
        let id = config().agent_id().unwrap();
        assert!(is_agent_id(&id), "{id}");
        assert_eq!(id.len(), "agent-".len() + 32);
        assert_eq!(config().agent_id().unwrap(), id);
    }

    #[test]
    fn configured_ids_are_checked() {
        assert_eq!(config().with_id("a-1_B").agent_id().unwrap(), "a-1_B");
        for bad in ["", "a.b", "a b", "a*", "é", &"x".repeat(65)] {
            let error = config().with_id(bad).agent_id().unwrap_err();
            assert!(
                matches!(error, AgentError::InvalidConfig { field: "id", .. }),
                "{bad:?}"
            );
        }
        assert!(config().with_id("x".repeat(64)).agent_id().is_ok());
    }

    #[test]
    fn a_generated_id_gets_a_key_for_the_process_and_a_configured_one_none() {
        let key = config()
            .agent_key()
            .unwrap()
            .expect("a key for a generated id");
        let again = config().agent_key().unwrap().unwrap();
        assert_eq!(key.public_key_base64(), again.public_key_base64());
        assert!(config().with_id("a-1").agent_key().unwrap().is_none());
        let own = AgentKey::from_seed([1; 32]);
        let configured = config().with_id("a-1").with_key(own.clone());
        assert_eq!(
            configured.agent_key().unwrap().unwrap().public_key_base64(),
            own.public_key_base64()
        );
    }

    #[test]
    fn zero_limits_are_refused() {
        assert!(config().validate().is_ok());
        assert!(config().with_max_concurrency(0).validate().is_err());
        assert!(
            config()
                .with_heartbeat_interval(Duration::ZERO)
                .validate()
                .is_err()
        );
    }
}
