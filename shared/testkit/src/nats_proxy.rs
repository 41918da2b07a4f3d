//! A TCP proxy in front of a nats-server that can drop chosen publications
//! from its clients: the way to make the server miss one particular
//! protocol message (a JetStream pull request, say) while the client
//! believes it was sent, which no real fault reproduces on demand.
//!
//! Server-to-client bytes are copied as they are. Client-to-server bytes are
//! read as NATS protocol operations (`PUB`/`HPUB` with their payloads, every
//! other operation a line) and forwarded, except the publications a
//! [`NatsProxy::drop_publications`] rule matches. TLS is not supported.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Which publications to drop: those whose subject starts with `prefix`,
/// the next `remaining` of them.
#[derive(Debug, Default)]
struct DropRule {
    prefix: String,
    remaining: usize,
}

#[derive(Debug, Default)]
struct Shared {
    rule: Mutex<DropRule>,
    dropped: AtomicUsize,
}

impl Shared {
    /// Whether a publication on `subject` is to be dropped (and counts it).
    fn drops(&self, subject: &str) -> bool {
        let mut rule = self.rule.lock().expect("drop rule lock");
        if rule.remaining > 0 && subject.starts_with(&rule.prefix) {
            rule.remaining -= 1;
            self.dropped.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

/// A proxy listening on a free local port; stops when dropped.
pub struct NatsProxy {
    port: u16,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl NatsProxy {
    /// Starts proxying to the nats-server listening on `upstream_port`.
    pub async fn start(upstream_port: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the NATS proxy")?;
        let port = listener.local_addr()?.port();
        let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        if let Err(error) = relay(client, upstream, shared).await {
                            tracing::debug!(%error, "NATS proxy connection ended");
                        }
                    });
                }
            }
        });
        Ok(Self {
            port,
            shared,
            accept,
        })
    }

    /// `nats://127.0.0.1:<port>` of the proxy.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Drops the next `count` publications (from any client) whose subject
    /// starts with `prefix`; replaces an earlier rule.
    pub fn drop_publications(&self, prefix: &str, count: usize) {
        *self.shared.rule.lock().expect("drop rule lock") = DropRule {
            prefix: prefix.to_string(),
            remaining: count,
        };
    }

    /// Publications dropped so far.
    pub fn dropped(&self) -> usize {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for NatsProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Relays one client connection until either side closes.
async fn relay(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) -> anyhow::Result<()> {
    let server = TcpStream::connect(upstream)
        .await
        .context("the proxy cannot reach nats-server")?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut from_server, mut to_server) = server.into_split();
    let (from_client, mut to_client) = client.into_split();
    let downstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
    });
    let result =
        filter_client_operations(BufReader::new(from_client), &mut to_server, &shared).await;
    downstream.abort();
    result
}

/// Forwards the client's protocol operations, without the dropped ones.
async fn filter_client_operations(
    mut from_client: BufReader<tokio::net::tcp::OwnedReadHalf>,
    to_server: &mut tokio::net::tcp::OwnedWriteHalf,
    shared: &Shared,
) -> anyhow::Result<()> {
    let mut line = Vec::new();
    let mut payload = Vec::new();
    loop {
        line.clear();
        if from_client.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = std::str::from_utf8(&line).context("non-UTF-8 protocol line")?;
        let mut words = text.split_ascii_whitespace();
        let operation = words.next().unwrap_or_default().to_ascii_uppercase();
        if operation != "PUB" && operation != "HPUB" {
            to_server.write_all(&line).await?;
            continue;
        }
        let words: Vec<&str> = std::iter::once(operation.as_str()).chain(words).collect();
        let Some((subject, size)) = publication(&words) else {
            bail!("malformed publication line: {text:?}");
        };
        payload.resize(size + 2, 0);
        from_client.read_exact(&mut payload).await?;
        if shared.drops(subject) {
            continue;
        }
        to_server.write_all(&line).await?;
        to_server.write_all(&payload).await?;
    }
}

/// The subject and total payload size of a `PUB`/`HPUB` line split in words.
fn publication<'a>(words: &[&'a str]) -> Option<(&'a str, usize)> {
    let subject = *words.get(1)?;
    let size = words.last()?.parse().ok()?;
    // PUB subject [reply] size; HPUB subject [reply] header-size total-size.
    let expected = if words[0] == "PUB" { 3..=4 } else { 4..=5 };
    expected.contains(&words.len()).then_some((subject, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_lines_give_subject_and_total_size() {
        assert_eq!(publication(&["PUB", "a.b", "5"]), Some(("a.b", 5)));
        assert_eq!(
            publication(&["PUB", "a.b", "_INBOX.x", "12"]),
            Some(("a.b", 12))
        );
        assert_eq!(publication(&["HPUB", "a", "22", "30"]), Some(("a", 30)));
        assert_eq!(
            publication(&["HPUB", "a", "r", "22", "30"]),
            Some(("a", 30))
        );
        assert_eq!(publication(&["PUB", "a.b"]), None);
        assert_eq!(publication(&["PUB", "a", "b", "c", "x"]), None);
    }

    #[test]
    fn a_rule_drops_only_its_count_of_matching_subjects() {
        let shared = Shared::default();
        *shared.rule.lock().unwrap() = DropRule {
            prefix: "$JS.API.CONSUMER.MSG.NEXT.".into(),
            remaining: 1,
        };
        assert!(!shared.drops("orders.new"));
        assert!(shared.drops("$JS.API.CONSUMER.MSG.NEXT.S.c"));
        assert!(!shared.drops("$JS.API.CONSUMER.MSG.NEXT.S.c"));
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 1);
    }
}
