//! The project's service binaries run as separate processes, so a test can
//! SIGKILL them mid-flight, as a crash would.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

/// Log lines printed when a test panics while the process is alive.
const PANIC_LOG_LINES: usize = 50;

/// Polling interval while waiting for the process to exit.
const POLL: Duration = Duration::from_millis(10);

/// The workspace binary `name` (e.g. `concord-dispatcher`) from the target
/// profile directory the running test was built into: the test executable
/// lives in `target/<profile>/deps/`, the binary in `target/<profile>/`.
///
/// Nothing is built here: a test that needs a binary fails with the
/// `cargo build` command to run first. A stale binary is used as it is.
pub fn service_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()
        .context("cannot find the running test executable (to locate the service binaries)")?;
    let Some(dir) = exe.parent() else {
        bail!(
            "the test executable {} has no parent directory",
            exe.display()
        );
    };
    let profile_dir = match dir.file_name() {
        Some(deps) if deps == "deps" => dir.parent().unwrap_or(dir),
        _ => dir,
    };
    let binary = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if binary.is_file() {
        return Ok(binary);
    }
    let release = if profile_dir.file_name().is_some_and(|p| p == "release") {
        " --release"
    } else {
        ""
    };
    bail!(
        "service binary {name} not found at {}; build it first with \
         `cargo build{release} -p {} --bin {name}`",
        binary.display(),
        package_of(name)
    )
}

/// The Cargo package that builds binary `name`.
fn package_of(name: &str) -> &str {
    match name {
        "concord" => "concord-cli",
        other => other,
    }
}

/// A service binary running as a child process, its stdout and stderr captured
/// to a log file in a temporary directory.
///
/// Drop kills it (SIGKILL) and reaps it. If the test is panicking, the tail of
/// the log is printed to stderr and the directory is kept, its path printed.
#[derive(Debug)]
pub struct ServiceProcess {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    log_path: PathBuf,
    dir: Option<TempDir>,
}

impl ServiceProcess {
    /// Starts `binary` with `args` and, on top of the test's own environment,
    /// `envs`. Stdin is `/dev/null`; stdout and stderr go to
    /// [`ServiceProcess::log_path`]. Returns once the process is spawned, not
    /// when it is ready: wait for that in the test (e.g. its metrics port or a
    /// request that succeeds).
    pub fn spawn(
        binary: &Path,
        args: &[String],
        envs: &[(String, String)],
    ) -> anyhow::Result<ServiceProcess> {
        let name = binary.file_name().map_or_else(
            || binary.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("concord-{}-", name.trim_start_matches("concord-")))
            .tempdir()
            .with_context(|| format!("cannot create a temporary directory for {name}"))?;
        let log_path = dir.path().join(format!("{name}.log"));
        let log = open_log(&log_path)?;
        let log_err = log.try_clone().context("cannot duplicate the log handle")?;
        let child = Command::new(binary)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        Ok(ServiceProcess {
            name,
            child,
            status: None,
            log_path,
            dir: Some(dir),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.poll_exit()
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it. Returns
    /// its exit status (that of its earlier exit if it had already exited).
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.poll_exit() {
            return Ok(status);
        }
        // An error means it exited in the meantime; wait() reaps it either way.
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .with_context(|| format!("cannot reap {} (pid {})", self.name, self.pid()))?;
        self.status = Some(status);
        Ok(status)
    }

    /// Asks the process to stop with SIGTERM, waits up to `grace` for it to
    /// exit, then kills it with SIGKILL. Returns its exit status: a clean
    /// shutdown is `success()`, a kill after the grace period has no code.
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.poll_exit() {
            return Ok(status);
        }
        // Not reaped yet, so the pid cannot have been reused.
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .context("cannot run `kill -TERM`")?;
        if sent.success() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Some(status) = self.poll_exit() {
                    return Ok(status);
                }
                tokio::time::sleep(POLL).await;
            }
        }
        self.kill()
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `lines` lines of the log, e.g. for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            // An error here would mean the child is not ours to wait for:
            // treat it as still running; kill() reports it.
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.kill();
        if std::thread::panicking() {
            eprintln!(
                "{} (pid {}) log, last {PANIC_LOG_LINES} lines:\n{}",
                self.name,
                self.pid(),
                self.log_tail(PANIC_LOG_LINES)
            );
            if let Some(dir) = self.dir.take() {
                eprintln!("{} log kept at {}", self.name, dir.keep().display());
            }
        }
    }
}

pub(crate) fn open_log(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn the_cli_binary_comes_from_its_package() {
        assert_eq!(package_of("concord"), "concord-cli");
        assert_eq!(package_of("concord-dispatcher"), "concord-dispatcher");
    }
}
