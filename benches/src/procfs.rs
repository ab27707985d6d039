//! CPU time and memory of processes: our own (`getrusage`), children run to
//! completion (`wait4`), and other processes such as the ClickHouse front
//! (`/proc/<pid>/stat`, `/proc/<pid>/status`). Linux only.

use std::io;
use std::path::Path;
use std::process::Child;

/// User + system CPU seconds of this process so far (all threads).
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

fn timeval(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Peak resident set size of this process so far, in bytes.
pub fn self_peak_rss() -> u64 {
    // SAFETY: as above.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024
}

/// How a child process that ran to completion fared.
#[derive(Debug, Clone, Copy)]
pub struct ChildUsage {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// User + system CPU seconds over its whole life.
    pub cpu_seconds: f64,
    /// Its peak resident set size, in bytes.
    pub peak_rss: u64,
}

/// Waits for `child` with `wait4`, which reports the child's own resource
/// usage (not mixed with other children's). Read its pipes before calling.
pub fn wait_with_usage(child: Child) -> io::Result<ChildUsage> {
    let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
    let mut status = 0;
    // SAFETY: wait4 writes into the two out-parameters we own; the child is
    // ours and not yet reaped (std's `Child` does not reap on drop).
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        loop {
            let r = libc::wait4(pid, &mut status, 0, &mut usage);
            if r == pid {
                break;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        usage
    };
    drop(child);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ok(ChildUsage {
        code,
        cpu_seconds: timeval(usage.ru_utime) + timeval(usage.ru_stime),
        peak_rss: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
    })
}

/// User + system CPU seconds of process `pid` (all its threads), from
/// `/proc/<pid>/stat`.
pub fn process_cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces: fields are counted after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let ticks = |i: usize| -> io::Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v as f64)
            .ok_or_else(|| io::Error::other("malformed /proc stat"))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// Peak resident set size (`VmHWM`) of process `pid`, in bytes.
pub fn process_peak_rss(pid: u32) -> io::Result<u64> {
    status_field(pid, "VmHWM:")
}

/// Current resident set size (`VmRSS`) of process `pid`, in bytes.
pub fn process_rss(pid: u32) -> io::Result<u64> {
    status_field(pid, "VmRSS:")
}

fn status_field(pid: u32, name: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other(format!("no {name} in /proc/{pid}/status")))
}

/// Resets `pid`'s peak RSS to its current RSS (`/proc/<pid>/clear_refs`, 5),
/// so [`process_peak_rss`] then reports the peak of what follows.
pub fn reset_peak_rss(pid: u32) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

/// The pid of a child of `parent` whose command line contains `needle`.
pub fn find_child(parent: u32, needle: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        if ppid != parent {
            return None;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline).contains(needle).then_some(pid)
    })
}

/// Number and total size of the `*.parquet` files under `dir`.
pub fn parquet_files(dir: &Path) -> (usize, u64) {
    let mut count = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                count += 1;
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    (count, bytes)
}

/// The 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(process_cpu_seconds(me).unwrap() >= 0.0);
        assert!(process_rss(me).unwrap() > 0);
        assert!(process_peak_rss(me).unwrap() >= process_rss(me).unwrap() / 2);
        assert!(self_peak_rss() > 0);
        assert!(self_cpu_seconds() >= 0.0);
        assert!(load_average().is_some());
    }

    #[test]
    fn child_usage_is_reported() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let usage = wait_with_usage(child).unwrap();
        assert_eq!(usage.code, Some(3));
        assert!(usage.peak_rss > 0);
    }
}
