//! What the test kit's own servers ([`NatsServer`](crate::NatsServer), [`PostgresServer`](crate::PostgresServer)) share: a scratch directory with the log, kept when the test panics, and the retries when a port is taken.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tempfile::TempDir;

/// Fresh ports tried when the chosen one is taken before the server binds it.
const PORT_ATTEMPTS: usize = 5;

/// How long a start on the old port waits for a slow release of it.
const REBIND_TIMEOUT: Duration = Duration::from_secs(15);

/// Why one start of a server failed: the port is taken, which is worth
/// another try, or anything else, which is not.
pub(crate) enum StartError {
    PortTaken,
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(err: anyhow::Error) -> Self {
        StartError::Other(err)
    }
}

/// Runs `start(port)` on a port that was free a moment ago, and on a fresh
/// one each time someone else took it between our probe and the server's bind.
pub(crate) async fn start_on_a_free_port(
    server: &str,
    mut start: impl AsyncFnMut(u16) -> Result<(), StartError>,
) -> anyhow::Result<()> {
    let mut last_error = None;
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port()?;
        match start(port).await {
            Ok(()) => return Ok(()),
            Err(StartError::PortTaken) => last_error = Some(anyhow!("port {port} was taken")),
            Err(StartError::Other(err)) => return Err(err),
        }
    }
    Err(last_error
        .unwrap_or_else(|| anyhow!("no attempt made"))
        .context(format!(
            "{server} could not bind a port after {PORT_ATTEMPTS} attempts"
        )))
}

/// Runs `start()` again on `port`, which the server's old process has
/// released or is about to: a slow release is waited out (retrying every
/// `pause`), a foreign process holding the port is not worth surviving.
pub(crate) async fn start_again_on(
    server: &str,
    port: u16,
    pause: Duration,
    mut start: impl AsyncFnMut() -> Result<(), StartError>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + REBIND_TIMEOUT;
    loop {
        match start().await {
            Ok(()) => return Ok(()),
            Err(StartError::PortTaken) if Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
            }
            Err(StartError::PortTaken) => {
                bail!("{server} cannot bind port {port} again: it is in use")
            }
            Err(StartError::Other(err)) => return Err(err),
        }
    }
}

/// A port that was free a moment ago: bind port 0, read it, release it.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("cannot bind 127.0.0.1:0 to find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A server's temporary directory, holding its data and its log file (all
/// starts, appended). Removed on drop unless
/// [`ServerDir::keep_if_panicking`] kept it.
#[derive(Debug)]
pub(crate) struct ServerDir {
    dir: Option<TempDir>,
    log_name: &'static str,
}

impl ServerDir {
    /// A new directory named `<prefix><random>`, its log file to be `log_name` in it.
    pub(crate) fn create(
        prefix: &str,
        log_name: &'static str,
        server: &str,
    ) -> anyhow::Result<ServerDir> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .with_context(|| format!("cannot create a temporary directory for {server}"))?;
        Ok(ServerDir {
            dir: Some(dir),
            log_name,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map(TempDir::path)
            .expect("the temporary directory lives as long as the server")
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.path().join(self.log_name)
    }

    /// The log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The log's length in bytes, to read what one start wrote with [`ServerDir::log_since`].
    pub(crate) fn log_len(&self) -> u64 {
        std::fs::metadata(self.log_path()).map_or(0, |m| m.len())
    }

    /// The log from byte `start` on (all of it if `start` is not a character boundary in it).
    pub(crate) fn log_since(&self, start: u64) -> String {
        let log = self.log();
        match log.get(start as usize..) {
            Some(since) => since.to_owned(),
            None => log,
        }
    }

    /// If the test is panicking, keeps the directory so the log can be read,
    /// and prints `<server> (port <port>) data and log kept at <path>`.
    pub(crate) fn keep_if_panicking(&mut self, server: &str, port: u16) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let path = dir.keep();
            eprintln!(
                "{server} (port {port}) data and log kept at {}",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_is_retried_on_a_fresh_one() {
        let mut ports = Vec::new();
        start_on_a_free_port("the server", async |port| {
            ports.push(port);
            if ports.len() < 3 {
                Err(StartError::PortTaken)
            } else {
                Ok(())
            }
        })
        .await
        .expect("the third attempt starts");
        assert_eq!(ports.len(), 3);

        let err = start_on_a_free_port("the server", async |_| Err(StartError::PortTaken))
            .await
            .expect_err("every port is taken");
        assert!(
            format!("{err:#}").starts_with("the server could not bind a port after 5 attempts"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn other_start_errors_are_not_retried() {
        let mut attempts = 0;
        let err = start_on_a_free_port("the server", async |_| {
            attempts += 1;
            Err(StartError::Other(anyhow!("broken")))
        })
        .await
        .expect_err("broken");
        assert_eq!((attempts, err.to_string().as_str()), (1, "broken"));

        let mut attempts = 0;
        let err = start_again_on("the server", 1, Duration::ZERO, async || {
            attempts += 1;
            Err(StartError::Other(anyhow!("broken")))
        })
        .await
        .expect_err("broken");
        assert_eq!((attempts, err.to_string().as_str()), (1, "broken"));
    }

    #[test]
    fn log_since_reads_one_start() {
        let dir = ServerDir::create("concord-test-", "server.log", "the test").unwrap();
        assert_eq!((dir.log_len(), dir.log()), (0, String::new()));
        std::fs::write(dir.log_path(), "first start\nsecond start\n").unwrap();
        assert_eq!(dir.log_since(12), "second start\n");
        assert_eq!(dir.log_since(100), "first start\nsecond start\n");
    }

    /// Stands for a server: keeps its directory on drop if the thread panics.
    struct Server(ServerDir);

    impl Drop for Server {
        fn drop(&mut self) {
            self.0.keep_if_panicking("test server", 1);
        }
    }

    #[test]
    fn the_directory_is_kept_only_when_the_test_panics() {
        let server = Server(ServerDir::create("concord-test-", "server.log", "the test").unwrap());
        let removed = server.0.path().to_owned();
        drop(server);
        assert!(!removed.exists());

        let server = Server(ServerDir::create("concord-test-", "server.log", "the test").unwrap());
        let kept = server.0.path().to_owned();
        let panicked = std::thread::spawn(move || {
            let _server = server;
            panic!("the test fails");
        })
        .join();
        assert!(panicked.is_err());
        assert!(kept.is_dir());
        std::fs::remove_dir_all(&kept).unwrap();
    }
}
