//! What a benchmark run needs around the code under test: NATS connections,
//! a database of its own, unique names, and service binaries run as separate
//! processes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::{Client, ConnectOptions};
use concord_testkit::with_database;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// Timeout of every request the benchmarks send.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A small random generator (SplitMix64): the benchmarks need reproducible,
/// cheap randomness, not a cryptographic one.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Seeded from the clock and the pid.
    pub fn from_entropy() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Eight lowercase hex digits, for unique names.
    pub fn tag(&mut self) -> String {
        format!("{:08x}", self.next_u64() as u32)
    }
}

/// A NATS connection for load: large client buffers, no reconnect noise.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Client> {
    ConnectOptions::new()
        .name(name)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .client_capacity(65_536)
        .subscription_capacity(65_536)
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| {
            format!(
                "cannot connect to NATS at {url}; is it running (`make up`)? check CONCORD_NATS_URL"
            )
        })
}

/// The TCP port of a `nats://host:port` URL (the first one of a list).
pub fn url_port(url: &str) -> Option<u16> {
    let first = url.split(',').next()?;
    let authority = first.split("://").nth(1).unwrap_or(first);
    let authority = authority.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    host_port.rsplit_once(':')?.1.parse().ok()
}

/// A database created for one run, dropped by [`ScratchDatabase::drop_now`].
pub struct ScratchDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl ScratchDatabase {
    /// Creates `name` (a trusted identifier) on the server of `admin_url`.
    pub async fn create(admin_url: &str, name: &str) -> anyhow::Result<Self> {
        let mut admin = admin_connection(admin_url).await?;
        sqlx::query(AssertSqlSafe(format!("create database {name}")))
            .execute(&mut admin)
            .await
            .with_context(|| {
                format!("cannot create database {name}; the role of CONCORD_DATABASE_URL must be allowed to create databases")
            })?;
        admin.close().await.ok();
        Ok(Self {
            name: name.to_owned(),
            url: with_database(admin_url, name)?,
            admin_url: admin_url.to_owned(),
        })
    }

    pub async fn drop_now(&self) -> anyhow::Result<()> {
        let mut admin = admin_connection(&self.admin_url).await?;
        sqlx::query(AssertSqlSafe(format!(
            "drop database if exists {} with (force)",
            self.name
        )))
        .execute(&mut admin)
        .await
        .with_context(|| format!("cannot drop database {}", self.name))?;
        admin.close().await.ok();
        Ok(())
    }
}

/// One connection to `url`, failing fast with a hint.
/// The Postgres server's postmaster pid, found through a backend of ours
/// (the server runs on this machine); `None` when it cannot be seen.
pub async fn postmaster(url: &str) -> Option<u32> {
    let mut admin = admin_connection(url).await.ok()?;
    let backend: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut admin)
        .await
        .ok()?;
    // While the backend still runs.
    let postmaster = crate::procfs::parent(backend as u32);
    let _ = sqlx::Connection::close(admin).await;
    postmaster
}

pub async fn admin_connection(url: &str) -> anyhow::Result<PgConnection> {
    tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(url))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from Postgres within 5 s"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| {
            format!(
                "cannot connect to Postgres at {}; is it running (`make up`)? check CONCORD_DATABASE_URL",
                redact(url)
            )
        })
}

/// `url` without its password.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Where the service binaries are: `$CONCORD_BIN_DIR`, else this workspace's
/// `target/release`.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("CONCORD_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release"))
}

/// The workspace this binary was built from.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("."))
}

/// Builds `package` in release mode so the benchmark never measures a stale
/// binary (a no-op when it is up to date).
pub fn build_release(package: &str) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("bench: cargo build --release -p {package}");
    let status = std::process::Command::new(&cargo)
        .args(["build", "--release", "-p", package])
        .current_dir(workspace_root())
        .stdout(Stdio::null())
        .status()
        .with_context(|| {
            format!("cannot run {cargo:?}; build {package} yourself and pass --no-build")
        })?;
    if !status.success() {
        bail!("cargo build --release -p {package} failed ({status})");
    }
    Ok(())
}

/// A service binary running as a child process, its output in a log file.
pub struct ServiceProcess {
    pub name: String,
    pub child: tokio::process::Child,
    pub pid: u32,
    pub log: PathBuf,
}

impl ServiceProcess {
    /// Starts `bin_dir/name` with `env` on top of this process's environment,
    /// less the variables in `remove`.
    pub fn spawn(
        name: &str,
        env: &[(&str, String)],
        remove: &[&str],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let binary = bin_dir().join(name);
        if !binary.is_file() {
            bail!(
                "{} not found; build it with `cargo build --release -p {name}` (or set CONCORD_BIN_DIR)",
                binary.display()
            );
        }
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create log file {}", log.display()))?;
        let mut command = tokio::process::Command::new(&binary);
        for variable in remove {
            command.env_remove(variable);
        }
        command
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("child has no pid")?;
        Ok(Self {
            name: name.to_owned(),
            child,
            pid,
            log,
        })
    }

    /// Fails with the end of its log when the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(20)
            );
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    eprintln!(
                        "bench: {} exited with {status} after SIGTERM (log {})",
                        self.name,
                        self.log.display()
                    );
                }
            }
            Err(_) => {
                eprintln!(
                    "bench: {} did not stop within {grace:?}; killing it",
                    self.name
                );
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_benchmark_has_defaults() {
        let dispatcher: crate::dispatcher::DispatcherArgs = defaults();
        assert_eq!(dispatcher.phases.rates, [1000, 5000, 10000]);
        assert!(!dispatcher.servers.nats_url.is_empty());
        let baseline: crate::baseline::BaselineArgs = defaults();
        assert_eq!(baseline.phases.seconds, 10);
        let registry: crate::registry::RegistryArgs = defaults();
        assert!(!registry.no_build);
        let state: crate::state::StateArgs = defaults();
        assert_eq!((state.keys, state.contended_writers), (10_000, 8));
    }

    #[test]
    fn ports_and_redaction() {
        assert_eq!(url_port("nats://127.0.0.1:4222"), Some(4222));
        assert_eq!(url_port("nats://u:p@h:4333,nats://h2:1"), Some(4333));
        assert_eq!(url_port("nats://h"), None);
        assert_eq!(
            redact("postgres://concord:secret@h:1/db"),
            "postgres://concord:***@h:1/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn rng_is_deterministic_and_bounded() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
            assert!(a.below(20) < 20);
            b.below(20);
        }
        assert_eq!(a.tag().len(), 8);
    }
}

/// The phases of a load benchmark (the baseline and the dispatcher take these flags).
#[derive(Debug, Clone, clap::Args)]
pub struct PhaseArgs {
    /// Length of each fixed-rate measurement window, seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Fixed rates to offer, tasks per second, one phase each (the
    /// dispatcher: configuration `a`).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    pub rates: Vec<u32>,
    /// Length of each saturation window, seconds (0: no saturation phase).
    #[arg(long, default_value_t = 15)]
    pub saturation_seconds: u64,
    /// Tasks outstanding (published, result not yet received) during
    /// saturation.
    #[arg(long, default_value_t = 2000)]
    pub saturation_in_flight: usize,
    /// Warm-up before each window, seconds.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
}

/// The servers a benchmark runs against (every benchmark takes these flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Servers {
    /// NATS server.
    #[arg(
        long,
        env = "CONCORD_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Any database on the Postgres server to use; its role must be allowed
    /// to create databases (the run creates and drops its own).
    #[arg(
        long,
        env = "CONCORD_DATABASE_URL",
        default_value = "postgres://concord:concord@127.0.0.1:5433/concord"
    )]
    pub database_url: String,
}

/// A benchmark's options with every default (and `CONCORD_*` variables).
pub fn defaults<T: clap::Args>() -> T {
    use clap::Parser;
    #[derive(Parser)]
    struct Defaults;
    let command = T::augment_args(<Defaults as clap::CommandFactory>::command());
    let matches = command.get_matches_from(["concord-bench"]);
    T::from_arg_matches(&matches).expect("the defaults parse")
}
