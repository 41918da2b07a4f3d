//! A real `nats-server -js` on a random loopback port with a temporary store, killed on drop.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use crate::process::{open_log, tail};
use crate::server::{ServerDir, StartError, start_again_on, start_on_a_free_port};

/// How long a start may take before we give up (JetStream recovery included).
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Polling interval while waiting for the server.
const POLL: Duration = Duration::from_millis(10);

/// A running `nats-server` with JetStream, for one test.
///
/// Listens on `127.0.0.1:<random port>`, stores JetStream data in a
/// temporary directory and writes its log there. [`NatsServer::restart`]
/// keeps both port and store, so streams survive. Drop kills the process,
/// reaps it and removes the directory (kept, with its path printed, if the
/// test is panicking, so the log can be read).
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    dir: ServerDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server and waits until it accepts clients and JetStream answers.
    pub async fn start() -> anyhow::Result<NatsServer> {
        let binary = nats_server_binary()?;
        let dir = ServerDir::create("concord-nats-", "nats-server.log", "nats-server")?;
        let mut server = NatsServer {
            binary,
            port: 0,
            dir,
            child: None,
        };
        start_on_a_free_port("nats-server", async |port| {
            server.port = port;
            server.spawn_and_wait().await
        })
        .await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// The server's log file (all starts, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.log_path()
    }

    /// The server's log so far, for assertions and failure messages.
    pub fn log(&self) -> String {
        self.dir.log()
    }

    /// Connects a client to this server.
    ///
    /// # Panics
    ///
    /// If the server does not accept the connection; use
    /// [`NatsServer::try_client`] to handle that.
    pub async fn client(&self) -> async_nats::Client {
        match self.try_client().await {
            Ok(client) => client,
            Err(err) => panic!("{err:#}"),
        }
    }

    /// Connects a client to this server.
    pub async fn try_client(&self) -> anyhow::Result<async_nats::Client> {
        async_nats::connect(self.url())
            .await
            .with_context(|| format!("cannot connect to the test nats-server at {}", self.url()))
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and
    /// store, waiting until JetStream answers. Clients reconnect by themselves.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.start_again().await
    }

    /// Kills the server with SIGKILL, as a crash would, and reaps it. No-op if
    /// it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it has already exited; wait() reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed server again on the same port and store. No-op if it is running.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        start_again_on(
            "nats-server",
            self.port,
            Duration::from_millis(50),
            async || self.spawn_and_wait().await,
        )
        .await
    }

    /// True while the server process is alive.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Spawns the process on `self.port` and waits until it is ready.
    async fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let log_path = self.log_path();
        let log_start = self.dir.log_len();
        let log = open_log(&log_path)?;
        let log_err = log.try_clone().context("cannot duplicate the log handle")?;
        let child = Command::new(&self.binary)
            .arg("-js")
            .args(["-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.store_dir())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("cannot run {}", self.binary.display()))?;
        self.child = Some(child);

        match self.wait_ready().await {
            Ok(()) => Ok(()),
            Err(err) => {
                self.kill();
                let this_start = self.dir.log_since(log_start);
                if this_start.contains("address already in use") {
                    Err(StartError::PortTaken)
                } else {
                    Err(StartError::Other(err.context(format!(
                        "nats-server did not become ready; its log ({}):\n{}",
                        log_path.display(),
                        tail(&this_start, 20)
                    ))))
                }
            }
        }
    }

    /// Waits for a TCP accept, then for JetStream to answer an account query.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            self.ensure_alive()?;
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("no TCP listener on {addr} after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        // Something listens; make sure it is our server and JetStream is up.
        let url = self.url();
        loop {
            self.ensure_alive()?;
            let attempt = async {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(1))
                    .connect(&url)
                    .await?;
                async_nats::jetstream::new(client).query_account().await?;
                Ok::<(), anyhow::Error>(())
            }
            .await;
            match attempt {
                Ok(()) => {
                    // Our process may have failed to bind while a foreign
                    // listener answered: check on it once more.
                    return self.ensure_alive();
                }
                Err(err) if Instant::now() > deadline => {
                    return Err(err.context(format!("JetStream not ready after {READY_TIMEOUT:?}")));
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    fn ensure_alive(&mut self) -> anyhow::Result<()> {
        let Some(child) = &mut self.child else {
            bail!("nats-server is not running");
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("nats-server exited: {status}"),
            Err(err) => Err(anyhow!(err).context("cannot check on nats-server")),
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        self.dir.keep_if_panicking("test nats-server", self.port);
    }
}

/// The binary to run: `CONCORD_NATS_SERVER_BIN`, else the project's
/// `.local/bin/nats-server`, else `nats-server` on `PATH`.
fn nats_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("CONCORD_NATS_SERVER_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "CONCORD_NATS_SERVER_BIN={} does not exist; run deploy/local/install.sh to install \
             the pinned nats-server, or point the variable at a nats-server binary",
            path.display()
        );
    }
    let local = workspace_root().join(".local/bin/nats-server");
    if local.is_file() {
        return Ok(local);
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    }) {
        return Ok(found);
    }
    bail!(
        "nats-server not found (looked at CONCORD_NATS_SERVER_BIN, {}, and PATH); run \
         deploy/local/install.sh to install the pinned version, or set CONCORD_NATS_SERVER_BIN",
        local.display()
    )
}

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}
