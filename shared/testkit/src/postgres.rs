//! A private, throwaway PostgreSQL 15 cluster on a random loopback port, for
//! tests that restart or kill Postgres.
//!
//! [`TestDatabase`](crate::TestDatabase) shares one server between all tests;
//! stopping that server would break every other test. [`PostgresServer`] runs
//! `initdb` into a temporary directory instead and owns the whole cluster.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use sqlx::PgPool;

use crate::process::tail;
use crate::server::{ServerDir, StartError, start_again_on, start_on_a_free_port};

/// The database created in every cluster and migrated with the project's migrations.
const DATABASE: &str = "concord";

/// The cluster's superuser (trust authentication, no password).
const SUPERUSER: &str = "postgres";

/// The system user that owns the cluster when the tests run as root.
const SYSTEM_USER: &str = "postgres";

/// Where PostgreSQL 15 lives on Debian and Ubuntu.
const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// `pg_ctl -t`: how long a start, stop or restart (recovery included) may take.
const PG_CTL_TIMEOUT_SECS: u32 = 60;

/// How long [`PostgresServer::kill`] waits for the killed processes to go.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the postmaster's children get to notice its death by themselves
/// before they are killed too.
const ORPHAN_GRACE: Duration = Duration::from_secs(3);

/// Connections in a pool from [`PostgresServer::connect`].
const POOL_SIZE: u32 = 8;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Server log lines quoted in error messages.
const LOG_LINES: usize = 20;

const POLL: Duration = Duration::from_millis(20);

/// A private PostgreSQL 15 cluster for one test, with a migrated database.
///
/// [`PostgresServer::start`] runs `initdb` (trust authentication) into a
/// temporary directory, starts the server with `pg_ctl` on
/// `127.0.0.1:<random port>` (unix socket inside the directory, `fsync` left
/// on so crashes are realistic), creates the database `concord` and applies
/// the project's migrations. When the test runs as root, `initdb` and
/// `pg_ctl` run as the `postgres` system user (they refuse to run as root),
/// as `deploy/local/up.sh` does.
///
/// [`PostgresServer::restart`], [`PostgresServer::stop`],
/// [`PostgresServer::start_again`] and [`PostgresServer::kill`] keep the port
/// and the data. Drop stops the server (`pg_ctl stop -m immediate`) and
/// removes the directory (kept, with its path printed, if the test is
/// panicking, so the log can be read).
///
/// Binaries: `CONCORD_PG_BIN_DIR`, else `/usr/lib/postgresql/15/bin`, else
/// `pg_ctl` and `initdb` on `PATH` if they are version 15.
#[derive(Debug)]
pub struct PostgresServer {
    bin_dir: PathBuf,
    /// Run `initdb` and `pg_ctl` as [`SYSTEM_USER`] through `runuser`.
    as_system_user: bool,
    port: u16,
    dir: ServerDir,
}

impl PostgresServer {
    /// Creates the cluster, starts it, creates the database and migrates it.
    pub async fn start() -> anyhow::Result<PostgresServer> {
        let bin_dir = pg_bin_dir()?;
        let as_system_user = running_as_root()?;
        let dir = ServerDir::create("concord-pg-", "postgres.log", "the test Postgres")?;
        if as_system_user {
            let (uid, gid) = system_user_ids()?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).with_context(|| {
                format!(
                    "cannot hand {} to the {SYSTEM_USER} user",
                    dir.path().display()
                )
            })?;
        }
        let mut server = PostgresServer {
            bin_dir,
            as_system_user,
            port: 0,
            dir,
        };
        server.initdb().await?;
        start_on_a_free_port("the test Postgres", async |port| {
            server.port = port;
            server.pg_ctl_start().await
        })
        .await?;

        server.create_database().await?;
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:<port>/concord`: the migrated database,
    /// for sqlx or a service under test.
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// The TCP port (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory (inside the temporary directory).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log file (all starts, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.log_path()
    }

    /// The server's log so far, for assertions and failure messages.
    pub fn log(&self) -> String {
        self.dir.log()
    }

    /// Connects a new small pool to the migrated database.
    ///
    /// A pool made before a restart or kill heals by itself (sqlx checks a
    /// connection before handing it out), but a fresh one shows what a
    /// restarted service would see.
    pub async fn connect(&self) -> anyhow::Result<PgPool> {
        concord_store::connect_with_timeout(&self.url(), POOL_SIZE, CONNECT_TIMEOUT)
            .await
            .with_context(|| {
                format!(
                    "cannot connect to the test Postgres on port {}; its log ({}):\n{}",
                    self.port,
                    self.log_path().display(),
                    tail(&self.log(), LOG_LINES)
                )
            })
    }

    /// Restarts the server (`pg_ctl restart -m fast`): clients are
    /// disconnected, a shutdown checkpoint is written, the server comes back
    /// on the same port with the same data. Starts it if it is not running.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if !self.is_running() {
            return self.start_again().await;
        }
        let log_start = self.dir.log_len();
        let mut args = vec![OsString::from("restart"), "-m".into(), "fast".into()];
        args.extend(self.start_args());
        let output = self.run("pg_ctl", args).await?;
        if !output.status.success() {
            bail!(self.failure("pg_ctl restart", &output, log_start));
        }
        Ok(())
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`). No-op if it is not running.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let log_start = self.dir.log_len();
        let output = self.run("pg_ctl", self.stop_args("fast")).await?;
        if !output.status.success() {
            bail!(self.failure("pg_ctl stop", &output, log_start));
        }
        Ok(())
    }

    /// Starts a stopped or killed server again on the same port and data; after
    /// a kill, Postgres replays its WAL first. No-op if it is running.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        start_again_on(
            "the test Postgres",
            self.port,
            Duration::from_millis(100),
            async || self.pg_ctl_start().await,
        )
        .await
    }

    /// Kills the postmaster with SIGKILL, as a crash would, and waits until it
    /// and its children (which notice their parent's death and exit; any that
    /// linger are killed too) are gone. Bring it back with
    /// [`PostgresServer::start_again`]: Postgres then recovers from its WAL,
    /// so every transaction committed before the kill is there. No-op if the
    /// server is not running.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let Some(postmaster) = self.postmaster_pid() else {
            return Ok(());
        };
        if !is_alive(postmaster) {
            return Ok(());
        }
        let children = children_of(postmaster);
        send_signal("KILL", postmaster).await?;

        let deadline = Instant::now() + ORPHAN_GRACE;
        while children.iter().any(|&pid| is_alive(pid)) && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        for &pid in &children {
            if is_alive(pid) {
                // Best effort: it may exit between the check and the signal.
                let _ = send_signal("KILL", pid).await;
            }
        }

        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            let survivors: Vec<u32> = std::iter::once(postmaster)
                .chain(children.iter().copied())
                .filter(|&pid| is_alive(pid))
                .collect();
            if survivors.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "processes {survivors:?} of the test Postgres (postmaster {postmaster}) \
                     survived SIGKILL for {EXIT_TIMEOUT:?}"
                );
            }
            tokio::time::sleep(POLL).await;
        }

        // The dead postmaster may stay an unreaped zombie (it is not our
        // child), which Postgres would take for a live owner of its lock
        // files. Nothing uses them any more: remove them, as Postgres would.
        let _ = std::fs::remove_file(self.data_dir().join("postmaster.pid"));
        let _ = std::fs::remove_file(
            self.socket_dir()
                .join(format!(".s.PGSQL.{}.lock", self.port)),
        );
        Ok(())
    }

    /// True while the postmaster is alive (a zombie counts as dead).
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some_and(is_alive)
    }

    fn url_for(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The postmaster's pid from `postmaster.pid`, if the file is there.
    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    async fn initdb(&self) -> anyhow::Result<()> {
        let args: Vec<OsString> = vec![
            "-D".into(),
            self.data_dir().into(),
            "-U".into(),
            SUPERUSER.into(),
            "--auth=trust".into(),
            "--encoding=UTF8".into(),
            "--no-locale".into(),
            "--no-sync".into(),
            "--no-instructions".into(),
        ];
        let output = self.run("initdb", args).await?;
        if !output.status.success() {
            let mut message = format!(
                "initdb into {} failed ({}):\n{}",
                self.data_dir().display(),
                output.status,
                tail(&output_text(&output), LOG_LINES)
            );
            if self.as_system_user {
                message.push_str(&format!(
                    "\n(initdb runs as the {SYSTEM_USER} user, which must be able to reach {}; \
                     point TMPDIR at a directory it can reach)",
                    self.dir.path().display()
                ));
            }
            bail!(message);
        }
        std::fs::create_dir(self.socket_dir())
            .with_context(|| format!("cannot create {}", self.socket_dir().display()))?;
        if self.as_system_user {
            let (uid, gid) = system_user_ids()?;
            std::os::unix::fs::chown(self.socket_dir(), Some(uid), Some(gid)).with_context(
                || {
                    format!(
                        "cannot hand {} to {SYSTEM_USER}",
                        self.socket_dir().display()
                    )
                },
            )?;
        }
        Ok(())
    }

    /// `pg_ctl start -w` on `self.port`.
    async fn pg_ctl_start(&self) -> Result<(), StartError> {
        let log_start = self.dir.log_len();
        let mut args = vec![OsString::from("start")];
        args.extend(self.start_args());
        let output = self.run("pg_ctl", args).await?;
        if output.status.success() {
            return Ok(());
        }
        if self
            .dir
            .log_since(log_start)
            .contains("Address already in use")
        {
            return Err(StartError::PortTaken);
        }
        Err(StartError::Other(anyhow!(self.failure(
            "pg_ctl start",
            &output,
            log_start
        ))))
    }

    /// `-D data -w -t 60 -l log -o <server options>` for start and restart.
    fn start_args(&self) -> Vec<OsString> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            self.port,
            shell_quote(&self.socket_dir().to_string_lossy())
        );
        vec![
            "-D".into(),
            self.data_dir().into(),
            "-w".into(),
            "-t".into(),
            PG_CTL_TIMEOUT_SECS.to_string().into(),
            "-l".into(),
            self.log_path().into(),
            "-o".into(),
            options.into(),
        ]
    }

    fn stop_args(&self, mode: &str) -> Vec<OsString> {
        vec![
            "stop".into(),
            "-D".into(),
            self.data_dir().into(),
            "-m".into(),
            mode.into(),
            "-w".into(),
            "-t".into(),
            PG_CTL_TIMEOUT_SECS.to_string().into(),
        ]
    }

    /// Creates [`DATABASE`] and applies the migrations to it.
    async fn create_database(&self) -> anyhow::Result<()> {
        let admin =
            concord_store::connect_with_timeout(&self.url_for("postgres"), 1, CONNECT_TIMEOUT)
                .await
                .with_context(|| {
                    format!(
                        "cannot connect to the new test Postgres on port {}",
                        self.port
                    )
                })?;
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {DATABASE}")))
            .execute(&admin)
            .await
            .with_context(|| format!("cannot create database {DATABASE} in the test Postgres"))?;
        admin.close().await;

        let pool = self.connect().await?;
        concord_store::migrate_shared(&pool)
            .await
            .context("cannot migrate the test Postgres")?;
        pool.close().await;
        Ok(())
    }

    /// Runs one of the cluster's tools (as the owning user) and collects its output.
    async fn run(&self, tool: &str, args: Vec<OsString>) -> anyhow::Result<Output> {
        let mut command = tokio::process::Command::from(self.command(tool, args));
        command
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.bin_dir.join(tool).display()))
    }

    fn command(&self, tool: &str, args: Vec<OsString>) -> std::process::Command {
        let program = self.bin_dir.join(tool);
        let mut command = if self.as_system_user {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", SYSTEM_USER, "--"]).arg(program);
            command
        } else {
            std::process::Command::new(program)
        };
        // The system user may not be able to enter our working directory.
        command
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// "`what` failed" with the tool's output and the tail of this start's server log.
    fn failure(&self, what: &str, output: &Output, log_start: u64) -> String {
        let since = self.dir.log_since(log_start);
        format!(
            "{what} failed for the test Postgres on port {} ({}): {}\nits log ({}):\n{}",
            self.port,
            output.status,
            output_text(output).trim(),
            self.log_path().display(),
            tail(&since, LOG_LINES)
        )
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.is_running() {
            // Best effort: the directory goes either way.
            let _ = self.command("pg_ctl", self.stop_args("immediate")).output();
        }
        self.dir.keep_if_panicking("test Postgres", self.port);
    }
}

/// The directory with PostgreSQL 15's `initdb` and `pg_ctl`, found as
/// `deploy/local/env.sh` (`concord_pg_bindir`) finds it.
fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let from_env = std::env::var_os("CONCORD_PG_BIN_DIR").filter(|dir| !dir.is_empty());
    for dir in from_env
        .iter()
        .map(PathBuf::from)
        .chain([PathBuf::from(DEFAULT_BIN_DIR)])
    {
        if has_tools(&dir) {
            return Ok(dir);
        }
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).find(|dir| has_tools(dir)));
    if let Some(dir) = on_path {
        let version = std::process::Command::new(dir.join("pg_ctl"))
            .arg("--version")
            .output();
        if version.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(" 15.")) {
            return Ok(dir.canonicalize().unwrap_or(dir));
        }
    }
    bail!(
        "PostgreSQL 15 not found (looked at CONCORD_PG_BIN_DIR{}, {DEFAULT_BIN_DIR}, and PATH); \
         run deploy/local/install.sh, or set CONCORD_PG_BIN_DIR to the directory with initdb and pg_ctl",
        from_env.map_or(String::new(), |dir| format!("={}", dir.to_string_lossy()))
    )
}

/// True when this process runs as root (`id -u` is 0).
fn running_as_root() -> anyhow::Result<bool> {
    static ROOT: OnceLock<bool> = OnceLock::new();
    if let Some(root) = ROOT.get() {
        return Ok(*root);
    }
    let output = std::process::Command::new("id")
        .arg("-u")
        .output()
        .context("cannot run `id -u` to find out whether the tests run as root")?;
    let root = String::from_utf8_lossy(&output.stdout).trim() == "0";
    Ok(*ROOT.get_or_init(|| root))
}

/// Uid and gid of [`SYSTEM_USER`].
fn system_user_ids() -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let output = std::process::Command::new("id")
            .args([flag, SYSTEM_USER])
            .output()
            .context("cannot run `id`")?;
        if !output.status.success() {
            bail!(
                "the tests run as root, but there is no `{SYSTEM_USER}` user to run PostgreSQL as \
                 (initdb and pg_ctl refuse to run as root): {}; run deploy/local/install.sh",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .with_context(|| format!("unexpected output of `id {flag} {SYSTEM_USER}`"))
    };
    Ok((id("-u")?, id("-g")?))
}

/// Sends `SIGname` to `pid` with `kill(1)`.
async fn send_signal(name: &str, pid: u32) -> anyhow::Result<()> {
    let output = tokio::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run `kill`")?;
    if !output.status.success() {
        bail!("kill -{name} {pid} failed: {}", output_text(&output).trim());
    }
    Ok(())
}

/// True if `pid` exists and is not a zombie.
fn is_alive(pid: u32) -> bool {
    match proc_stat(pid) {
        Some((state, _)) => !matches!(state, 'Z' | 'X' | 'x'),
        None => false,
    }
}

/// Pids of the processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(_, ppid)| ppid == parent))
        .collect()
}

/// State and parent pid of `pid` from `/proc/<pid>/stat`, `None` if it is gone.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `text` quoted for `sh` (pg_ctl hands `-o` to a shell).
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn reads_our_own_stat() {
        let (state, ppid) = proc_stat(std::process::id()).expect("/proc/self/stat");
        assert!(matches!(state, 'R' | 'S'), "state {state}");
        assert!(ppid > 0);
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(u32::MAX));
    }
}
