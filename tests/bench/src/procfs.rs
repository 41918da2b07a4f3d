//! CPU and memory of processes and of the whole machine, from Linux `/proc`.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use serde::Serialize;

/// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`).
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|&t| t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The fields of `/proc/<pid>/stat` after the command name, so that index 0
/// is field 3 (`state`) of proc(5).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU time of `pid` so far, in clock ticks.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    // utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Parent pid of `pid`.
pub fn parent(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_bytes: u64,
    /// `VmHWM`: the highest resident size since the process started.
    pub peak_rss_bytes: u64,
}

pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some(Memory {
        rss_bytes: field("VmRSS:")?,
        peak_rss_bytes: field("VmHWM:")?,
    })
}

/// Every pid on the machine.
fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// A Postgres server: the postmaster and its children (backends, the
/// checkpointer, the WAL writer, ...).
pub fn postgres_family(postmaster: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&pid| parent(pid) == Some(postmaster))
        .collect();
    pids.push(postmaster);
    pids
}

/// The process listening on TCP `port` (any address), found through the
/// socket inode in `/proc/net/tcp{,6}` and the open files of every process.
pub fn listener(port: u16) -> Option<u32> {
    let port_hex = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is column 1, st column 3 (0A = LISTEN), inode column 9.
            if cols.len() > 9 && cols[1].ends_with(&port_hex) && cols[3] == "0A" {
                inodes.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    all_pids().into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == &**i))
                })
            })
            .unwrap_or(false)
    })
}

/// CPU time of a set of processes at one instant.
#[derive(Debug, Clone)]
pub struct GroupSample {
    at: Instant,
    ticks: HashMap<u32, u64>,
}

impl GroupSample {
    pub fn take(pids: &[u32]) -> Self {
        Self {
            at: Instant::now(),
            ticks: pids
                .iter()
                .filter_map(|&pid| Some((pid, process_ticks(pid)?)))
                .collect(),
        }
    }

    /// Average cores used between `self` and the later `end`. Processes that
    /// exited in between are not counted; ones that appeared count in full.
    pub fn cores_until(&self, end: &GroupSample) -> f64 {
        let ticks: u64 = end
            .ticks
            .iter()
            .map(|(pid, &t)| t.saturating_sub(self.ticks.get(pid).copied().unwrap_or(0)))
            .sum();
        let seconds = end.at.duration_since(self.at).as_secs_f64();
        if seconds <= 0.0 {
            return 0.0;
        }
        ticks as f64 / clock_ticks() / seconds
    }
}

/// User + system CPU time of the children `pid` has reaped, in clock ticks
/// (`cutime` + `cstime`).
pub fn reaped_children_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(cutime + cstime)
}

/// What a Postgres process does, from its title (`postgres: autovacuum
/// worker`, `postgres: concord dbname 127.0.0.1(5555) idle`, ...): the
/// backends of `database`, other backends, autovacuum, or the server's own
/// background processes.
pub fn postgres_role(pid: u32, database: &str) -> &'static str {
    let title = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default();
    role_from_title(&title, database)
}

fn role_from_title(title: &str, database: &str) -> &'static str {
    let Some(rest) = title.strip_prefix("postgres: ") else {
        return "server";
    };
    if rest.starts_with("autovacuum") {
        return "autovacuum";
    }
    let mut words = rest.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(_user), Some(db), Some(_client)) if db == database => "bench database backends",
        (Some(_), Some(_), Some(client)) if client.contains('(') || client == "[local]" => {
            "other backends"
        }
        _ => "server",
    }
}

/// CPU of a Postgres server by role, including the children the postmaster
/// reaped during the window (short-lived autovacuum workers, closed
/// backends), which a sum over live processes would miss.
#[derive(Debug, Clone)]
pub struct PostgresSample {
    processes: GroupSample,
    roles: HashMap<u32, &'static str>,
    reaped: u64,
}

impl PostgresSample {
    pub fn take(postmaster: u32, database: &str) -> Self {
        let pids = postgres_family(postmaster);
        let roles = pids
            .iter()
            .map(|&pid| (pid, postgres_role(pid, database)))
            .collect();
        Self {
            processes: GroupSample::take(&pids),
            roles,
            reaped: reaped_children_ticks(postmaster).unwrap_or(0),
        }
    }

    /// Average cores over the window, in total and by role (`exited`: the
    /// processes that ended within it).
    pub fn cores_until(
        &self,
        end: &PostgresSample,
    ) -> (f64, std::collections::BTreeMap<String, f64>) {
        let seconds = end
            .processes
            .at
            .duration_since(self.processes.at)
            .as_secs_f64();
        let mut roles = std::collections::BTreeMap::<String, f64>::new();
        if seconds <= 0.0 {
            return (0.0, roles);
        }
        let per_second = |ticks: u64| ticks as f64 / clock_ticks() / seconds;
        for (pid, &t) in &end.processes.ticks {
            let before = self.processes.ticks.get(pid).copied().unwrap_or(0);
            let role = end.roles.get(pid).copied().unwrap_or("server");
            *roles.entry(role.to_owned()).or_default() += per_second(t.saturating_sub(before));
        }
        // Children that exited: their time moved into the postmaster's
        // cutime/cstime, and their last live ticks (if sampled at the start)
        // must not count twice.
        let gone: u64 = self
            .processes
            .ticks
            .iter()
            .filter(|(pid, _)| !end.processes.ticks.contains_key(pid))
            .map(|(_, &t)| t)
            .sum();
        let exited = per_second(end.reaped.saturating_sub(self.reaped).saturating_sub(gone));
        if exited > 0.0 {
            roles.insert("exited during the window".to_owned(), exited);
        }
        (roles.values().sum(), roles)
    }
}

/// Busy and total time of all CPUs (`/proc/stat`, first line).
#[derive(Debug, Clone, Copy)]
pub struct MachineSample {
    busy: u64,
    total: u64,
}

impl MachineSample {
    pub fn take() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?;
        let values: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest is in user).
        let total: u64 = values.iter().take(8).sum();
        let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
        Some(Self {
            busy: total - idle,
            total,
        })
    }

    /// Cores busy on average between `self` and `end`, out of `cpus`.
    pub fn cores_until(&self, end: &MachineSample, cpus: usize) -> f64 {
        let total = end.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        end.busy.saturating_sub(self.busy) as f64 / total as f64 * cpus as f64
    }
}

/// What the machine is: cores, CPU model, memory.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub memory_bytes: u64,
    pub kernel: String,
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            model,
            memory_bytes,
            kernel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(process_ticks(pid).is_some());
        let memory = memory(pid).expect("status readable");
        assert!(memory.rss_bytes > 0 && memory.peak_rss_bytes >= memory.rss_bytes);
        assert!(parent(pid).is_some());
    }

    #[test]
    fn postgres_roles_from_process_titles() {
        let db = "concord_bench_1";
        for (title, role) in [
            ("postgres: autovacuum worker concord_bench_1", "autovacuum"),
            ("postgres: autovacuum launcher ", "autovacuum"),
            (
                "postgres: concord concord_bench_1 127.0.0.1(4242) idle",
                "bench database backends",
            ),
            (
                "postgres: concord concord 127.0.0.1(4243) UPDATE",
                "other backends",
            ),
            ("postgres: walwriter ", "server"),
            ("postgres: checkpointer ", "server"),
            ("/usr/lib/postgresql/15/bin/postgres -D data", "server"),
        ] {
            assert_eq!(role_from_title(title, db), role, "{title}");
        }
    }

    #[test]
    fn finds_a_listener() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        assert_eq!(listener(port), Some(std::process::id()));
    }

    #[test]
    fn machine_cpu_is_bounded() {
        let start = MachineSample::take().expect("/proc/stat");
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let end = MachineSample::take().expect("/proc/stat");
        let cores = start.cores_until(&end, 2);
        assert!((0.0..=2.0).contains(&cores), "{cores}");
    }
}
