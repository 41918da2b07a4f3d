//! `concord lock`: resource locks through the state service's subjects
//! (`<root>.state.lock.*`, docs/PROTOCOL.md "State: locks").

use std::process::ExitCode;
use std::time::Duration;

use concord_bus::{Bus, ServiceError};
use concord_wire::v1::{
    AcquireLock, GetLock, ListLocks, ListLocksReply, LockGrant, LockMode, LockReleased, LockState,
    ReleaseLock, RenewLock,
};

use crate::state::request as call;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Subcommand)]
pub enum LockCommand {
    /// Take a lock and print the grant (its `token` fences writes:
    /// `concord state put --fence RESOURCE:TOKEN`). With --hold, keep it,
    /// renewing the lease, until Ctrl-C or SIGTERM, then release it; with a
    /// command after `--`, hold it while the command runs.
    Acquire(AcquireArgs),
    /// Release a grant.
    Release {
        resource: String,
        #[arg(long)]
        owner: String,
        /// The grant's fencing token.
        #[arg(long)]
        token: u64,
    },
    /// Show one resource's holders and waiters.
    Show { resource: String },
    /// List the locks held or waited for under a prefix.
    List {
        /// Resource prefix (`printers/`); empty for all.
        #[arg(default_value = "")]
        prefix: String,
        /// Most locks to show (all pages are read up to this many).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// One JSON lock per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct AcquireArgs {
    resource: String,
    /// Who holds it: an operator name, or an agent id without a registered
    /// key (an agent with a key signs its own requests).
    #[arg(long)]
    owner: String,
    /// Shared (many holders, no exclusive one) instead of exclusive.
    #[arg(long)]
    shared: bool,
    /// The lease, in milliseconds; it ends unless renewed in time.
    #[arg(long, default_value_t = 30_000)]
    ttl_ms: u64,
    /// How long to wait in line, in milliseconds; 0 fails at once with
    /// CONFLICT when the lock is taken.
    #[arg(long, default_value_t = 0)]
    wait_ms: u64,
    /// Keep the lock, renewing its lease at a third of the TTL, until
    /// Ctrl-C or SIGTERM; then release it.
    #[arg(long)]
    hold: bool,
    /// Print the grant on one line.
    #[arg(long)]
    json: bool,
    /// A command to run while holding the lock (implies --hold; it gets
    /// CONCORD_LOCK_RESOURCE and CONCORD_LOCK_TOKEN); concord exits with
    /// its status.
    #[arg(last = true)]
    command: Vec<String>,
}

fn failed(error: ServiceError) -> anyhow::Error {
    crate::state::refused("lock", error)
}

pub async fn run(bus: &Bus, command: LockCommand) -> anyhow::Result<ExitCode> {
    match command {
        LockCommand::Acquire(args) => acquire(bus, args).await,
        LockCommand::Release {
            resource,
            owner,
            token,
        } => {
            let message = ReleaseLock {
                resource,
                owner,
                token,
            };
            let released: LockReleased = call(bus, "lock.release", &message, TIMEOUT)
                .await
                .map_err(failed)?;
            println!("{}", crate::json::pretty(&released)?);
            Ok(ExitCode::SUCCESS)
        }
        LockCommand::Show { resource } => {
            let state: LockState = call(bus, "lock.get", &GetLock { resource }, TIMEOUT)
                .await
                .map_err(failed)?;
            println!("{}", crate::json::pretty(&state)?);
            Ok(ExitCode::SUCCESS)
        }
        LockCommand::List {
            prefix,
            limit,
            json,
        } => list(bus, prefix, limit, json).await,
    }
}

async fn acquire(bus: &Bus, args: AcquireArgs) -> anyhow::Result<ExitCode> {
    let mode = if args.shared {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    };
    let message = AcquireLock {
        resource: args.resource.clone(),
        owner: args.owner.clone(),
        mode: mode as i32,
        ttl_ms: args.ttl_ms,
        wait_ms: args.wait_ms,
    };
    // The answer may come only when the wait ends.
    let timeout = TIMEOUT + Duration::from_millis(args.wait_ms);
    let grant: LockGrant = call(bus, "lock.acquire", &message, timeout)
        .await
        .map_err(failed)?;
    if args.json || args.hold || !args.command.is_empty() {
        println!("{}", crate::json::compact(&grant)?);
    } else {
        println!("{}", crate::json::pretty(&grant)?);
    }
    if !args.hold && args.command.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let code = hold(bus, &grant, &args.command).await;
    let release = ReleaseLock {
        resource: grant.resource.clone(),
        owner: grant.owner.clone(),
        token: grant.token,
    };
    match call::<_, LockReleased>(bus, "lock.release", &release, TIMEOUT).await {
        Ok(_) => eprintln!("released {} (token {})", grant.resource, grant.token),
        Err(error) => eprintln!("concord: could not release {}: {error}", grant.resource),
    }
    code
}

/// Renews `grant` until a signal (or `command`, when given, exits); the
/// exit code is the command's, or failure when the lease could not be kept.
async fn hold(bus: &Bus, grant: &LockGrant, command: &[String]) -> anyhow::Result<ExitCode> {
    let mut child = match command.split_first() {
        Some((program, args)) => Some(
            tokio::process::Command::new(program)
                .args(args)
                .env("CONCORD_LOCK_RESOURCE", &grant.resource)
                .env("CONCORD_LOCK_TOKEN", grant.token.to_string())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?,
        ),
        None => None,
    };
    let every = Duration::from_millis(grant.ttl_ms.max(300) / 3);
    let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let renew = RenewLock {
        resource: grant.resource.clone(),
        owner: grant.owner.clone(),
        token: grant.token,
        ttl_ms: 0,
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = terminate.recv() => return Ok(ExitCode::SUCCESS),
            status = async { child.as_mut().expect("guarded").wait().await }, if child.is_some() => {
                let status = status?;
                return Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8));
            }
            _ = renewals.tick() => {
                if let Err(error) = call::<_, LockGrant>(bus, "lock.renew", &renew, every).await {
                    // A transient miss is retried at the next tick while the
                    // lease still runs; a refusal means the lock is gone.
                    if error.is_bad_input() || error.code == concord_wire::v1::ErrorCode::Conflict {
                        eprintln!("concord: lost {}: {error}", grant.resource);
                        return Ok(ExitCode::FAILURE);
                    }
                    eprintln!("concord: renewing {} failed, retrying: {error}", grant.resource);
                }
            }
        }
    }
}

fn mode_text(mode: i32) -> &'static str {
    match LockMode::try_from(mode) {
        Ok(LockMode::Shared) => "SHARED",
        _ => "EXCLUSIVE",
    }
}

async fn list(bus: &Bus, prefix: String, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let mut locks = Vec::new();
    let mut after = String::new();
    while locks.len() < limit {
        let message = ListLocks {
            prefix: prefix.clone(),
            limit: (limit - locks.len()).min(1000) as u32,
            after,
        };
        let reply: ListLocksReply = call(bus, "lock.list", &message, TIMEOUT)
            .await
            .map_err(failed)?;
        locks.extend(reply.locks);
        if reply.next.is_empty() {
            break;
        }
        after = reply.next;
    }
    if json {
        for lock in &locks {
            println!("{}", crate::json::compact(lock)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<40} {:>8}  {:<10} {:<30} WAITING",
        "RESOURCE", "TOKEN", "MODE", "HOLDERS"
    );
    for lock in &locks {
        let holders: Vec<&str> = lock.holders.iter().map(|h| h.owner.as_str()).collect();
        let mode = lock.holders.first().map_or("-", |h| mode_text(h.mode));
        println!(
            "{:<40} {:>8}  {:<10} {:<30} {}",
            lock.resource,
            lock.last_token,
            mode,
            holders.join(","),
            lock.waiters.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
