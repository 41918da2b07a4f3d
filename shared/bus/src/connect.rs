//! Connecting to NATS with the options a production service needs.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};

use crate::Subjects;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Server URL(s), comma separated.
    pub url: String,
    /// Client name shown by the server (`connz`), e.g. `concord-registry`.
    pub client_name: String,
    /// Credentials file (JWT + seed).
    pub creds: Option<PathBuf>,
    /// Extra CA certificates (PEM).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS (PEM).
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Refuse plaintext connections.
    pub require_tls: bool,
    /// How long the first connection may take.
    pub connect_timeout: Duration,
    /// Root of every Concord subject.
    pub subject_root: String,
    /// The server does not deliver this connection's own messages back to
    /// its subscriptions (`no_echo`).
    pub no_echo: bool,
}

impl BusConfig {
    /// A plain loopback-style config: `url`, a client name and the default root.
    pub fn new(url: impl Into<String>, client_name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            client_name: client_name.into(),
            creds: None,
            tls_ca: None,
            tls_client: None,
            require_tls: false,
            connect_timeout: Duration::from_secs(5),
            subject_root: Subjects::DEFAULT_ROOT.to_string(),
            no_echo: false,
        }
    }

    /// The config described by the shared command-line arguments.
    pub fn from_args(args: &concord_config::NatsArgs, client_name: impl Into<String>) -> Self {
        Self {
            url: args.nats_url.clone(),
            client_name: client_name.into(),
            creds: args.creds.clone(),
            tls_ca: args.tls_ca.clone(),
            tls_client: args.tls_cert.clone().zip(args.tls_key.clone()),
            require_tls: args.require_tls,
            connect_timeout: Duration::from_secs(args.connect_timeout_secs),
            subject_root: args.subject_root.clone(),
            no_echo: false,
        }
    }

    /// The same config with another subject root.
    pub fn with_subject_root(mut self, root: impl Into<String>) -> Self {
        self.subject_root = root.into();
        self
    }
}

/// The first connection failed; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid subject root {root:?}: {reason}; check --subject-root / CONCORD_SUBJECT_ROOT")]
    SubjectRoot { root: String, reason: &'static str },
    #[error(
        "cannot read NATS credentials file {path}: {source}; check --nats-creds / CONCORD_NATS_CREDS"
    )]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot connect to NATS at {url}: {reason}; check --nats-url / CONCORD_NATS_URL and that nats-server is running"
    )]
    Unreachable { url: String, reason: String },
}

/// A connected NATS client plus the subject tree it should use.
#[derive(Debug, Clone)]
pub struct Bus {
    pub client: Client,
    pub subjects: Subjects,
    config: std::sync::Arc<BusConfig>,
    closed: tokio::sync::watch::Receiver<bool>,
    changes: tokio::sync::watch::Receiver<u64>,
}

/// How long [`Bus::request`] keeps retrying "no responders" before it
/// reports the service unavailable.
pub const NO_RESPONDERS_GRACE: Duration = Duration::from_millis(250);

impl Bus {
    /// A second connection with the same server, credentials, TLS and
    /// subject root, named `<client name>-<purpose>`. With `echo` false the
    /// server does not hand this connection its own messages: a service that
    /// publishes on subjects it also subscribes to (a replica's events,
    /// which other replicas follow) then receives only the others'.
    pub async fn sibling(&self, purpose: &str, echo: bool) -> Result<Bus, ConnectError> {
        let mut config = BusConfig::clone(&self.config);
        config.client_name = format!("{}-{purpose}", config.client_name);
        config.no_echo = !echo;
        connect(&config).await
    }

    /// Counts the connection's disconnects and reconnects: a receiver sees
    /// a change after each, so a consumer of core messages (at most once)
    /// knows when it may have missed some.
    pub fn connection_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Drains the connection (every subscription is unsubscribed after the
    /// messages already received are handled, pending publishes are flushed)
    /// and waits until it is closed, so the server no longer routes anything
    /// to this process when this returns.
    pub async fn close(&self, timeout: Duration) {
        if let Err(error) = self.client.drain().await {
            tracing::warn!(%error, "NATS drain failed");
            return;
        }
        let mut closed = self.closed.clone();
        if tokio::time::timeout(timeout, closed.wait_for(|closed| *closed))
            .await
            .is_err()
        {
            tracing::warn!("NATS connection did not close within {timeout:?}");
        }
    }

    /// JetStream context on this connection.
    pub fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client.clone())
    }
}

/// Connects once (failing fast with a one-line error), then reconnects forever.
pub async fn connect(config: &BusConfig) -> Result<Bus, ConnectError> {
    let subjects =
        Subjects::new(&config.subject_root).map_err(|reason| ConnectError::SubjectRoot {
            root: config.subject_root.clone(),
            reason,
        })?;
    let mut options = match &config.creds {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| ConnectError::Credentials {
                path: path.clone(),
                source,
            })?,
        None => ConnectOptions::new(),
    };
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &config.tls_client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.no_echo {
        options = options.no_echo();
    }
    let name = config.client_name.clone();
    let (closed_tx, closed) = tokio::sync::watch::channel(false);
    let (changes_tx, changes) = tokio::sync::watch::channel(0u64);
    options = options
        .name(&config.client_name)
        .require_tls(config.require_tls)
        .connection_timeout(config.connect_timeout)
        // Bursts of requests (a vote round, a batch of assignments) should not
        // fail while a reconnect is under way: queue them in the client.
        .client_capacity(65_536)
        .subscription_capacity(65_536)
        .event_callback(move |event| {
            let name = name.clone();
            if matches!(event, Event::Closed) {
                let _ = closed_tx.send(true);
            }
            if matches!(event, Event::Connected | Event::Disconnected) {
                changes_tx.send_modify(|n| *n += 1);
            }
            async move {
                match event {
                    Event::Connected => tracing::info!(client = %name, "connected to NATS"),
                    Event::Disconnected => {
                        tracing::warn!(client = %name, "disconnected from NATS; reconnecting")
                    }
                    Event::SlowConsumer(sid) => {
                        tracing::warn!(client = %name, sid, "slow consumer: messages dropped")
                    }
                    other => tracing::info!(client = %name, event = %other, "NATS event"),
                }
            }
        });
    let connect = options.connect(config.url.as_str());
    // Guard the whole handshake, not just the TCP connect: a wrong port that
    // accepts TCP but never speaks NATS must not hang a service forever.
    let client = tokio::time::timeout(config.connect_timeout + Duration::from_secs(1), connect)
        .await
        .map_err(|_| ConnectError::Unreachable {
            url: config.url.clone(),
            reason: format!("no answer within {:?}", config.connect_timeout),
        })?
        .map_err(|error| ConnectError::Unreachable {
            url: config.url.clone(),
            reason: error.to_string(),
        })?;
    Ok(Bus {
        client,
        subjects,
        config: std::sync::Arc::new(config.clone()),
        closed,
        changes,
    })
}

impl Bus {
    /// Sends `request` to a service endpoint and decodes its reply (JSON on the
    /// wire), turning error replies, timeouts and absent services into
    /// [`ServiceError`](crate::ServiceError)s. "No responders" is retried for
    /// a moment ([`NO_RESPONDERS_GRACE`]) before it becomes `UNAVAILABLE`.
    pub async fn request<Req, Resp>(
        &self,
        subject: String,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, crate::ServiceError>
    where
        Req: concord_wire::codec::WireMessage,
        Resp: concord_wire::codec::WireMessage,
    {
        self.request_with(subject, request, timeout, |_| Vec::new())
            .await
    }

    /// [`Bus::request`] with extra headers made from the encoded payload
    /// (an agent's signature over the exact bytes sent, for example). A
    /// retried send carries the same headers.
    pub async fn request_with<Req, Resp, F>(
        &self,
        subject: String,
        request: &Req,
        timeout: Duration,
        extra_headers: F,
    ) -> Result<Resp, crate::ServiceError>
    where
        Req: concord_wire::codec::WireMessage,
        Resp: concord_wire::codec::WireMessage,
        F: FnOnce(&[u8]) -> Vec<(&'static str, String)>,
    {
        use concord_wire::codec::{self, ContentType};
        use concord_wire::v1::ErrorCode;

        use async_nats::client::RequestErrorKind;

        let payload: bytes::Bytes = codec::encode(ContentType::Json, request)
            .map_err(|error| crate::ServiceError::invalid(error.field.clone(), error.message))?
            .into();
        let extra = extra_headers(&payload);
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let mut pause = Duration::from_millis(5);
        let message = loop {
            let mut headers = crate::headers::outgoing(ContentType::Json.as_str());
            for (name, value) in &extra {
                headers.insert(*name, value.as_str());
            }
            let send = self
                .client
                .request_with_headers(subject.clone(), headers, payload.clone());
            match tokio::time::timeout_at(deadline, send).await {
                Err(_) => {
                    return Err(crate::ServiceError::new(
                        ErrorCode::Timeout,
                        format!("no reply on {subject} within {timeout:?}"),
                    ));
                }
                Ok(Ok(message)) => break message,
                // Nobody listens: right after a service (re)subscribed the
                // server can still answer this for a moment, so try again
                // briefly; a service that is really absent stays UNAVAILABLE.
                Ok(Err(error))
                    if error.kind() == RequestErrorKind::NoResponders
                        && started.elapsed() + pause < NO_RESPONDERS_GRACE
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Ok(Err(error)) => {
                    let code = match error.kind() {
                        RequestErrorKind::TimedOut => ErrorCode::Timeout,
                        _ => ErrorCode::Unavailable,
                    };
                    return Err(crate::ServiceError::new(
                        code,
                        format!("request on {subject} failed: {error}"),
                    ));
                }
            }
        };
        crate::service::read_reply(&message)
    }
}
