//! The standard `process_*` metrics of pgwarden itself (the names the Prometheus client
//! libraries use), read from `/proc/self` at each scrape: no query, no child.

use std::path::Path;

/// Linux reports CPU times in `USER_HZ`, which is 100 on every architecture it runs
/// containers on (the kernel scales its own tick to it for userspace).
const USER_HZ: f64 = 100.0;

/// What one read of `/proc/self` gives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub resident_bytes: f64,
    /// Virtual memory, in bytes.
    pub virtual_bytes: f64,
    /// Open file descriptors.
    pub open_fds: f64,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<f64>,
    /// Start time, in seconds since the epoch.
    pub start_time_seconds: Option<f64>,
    /// Threads.
    pub threads: f64,
}

/// Reads the stats of the calling process; `None` where `/proc` is not mounted.
pub fn read() -> Option<ProcessStats> {
    let proc = Path::new("/proc");
    let stat = std::fs::read_to_string(proc.join("self/stat")).ok()?;
    let status = std::fs::read_to_string(proc.join("self/status")).ok()?;
    let (utime, stime, start_ticks) = parse_stat(&stat)?;
    let boot = std::fs::read_to_string(proc.join("stat"))
        .ok()
        .and_then(|t| parse_btime(&t));
    let limits = std::fs::read_to_string(proc.join("self/limits")).ok();
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        resident_bytes: status_kb(&status, "VmRSS:").unwrap_or(0.0) * 1024.0,
        virtual_bytes: status_kb(&status, "VmSize:").unwrap_or(0.0) * 1024.0,
        open_fds: std::fs::read_dir(proc.join("self/fd"))
            .map(|d| d.count() as f64)
            .unwrap_or(0.0),
        max_fds: limits.as_deref().and_then(parse_max_fds),
        start_time_seconds: boot.map(|b| b as f64 + start_ticks as f64 / USER_HZ),
        threads: status_kb(&status, "Threads:").unwrap_or(0.0),
    })
}

/// `utime`, `stime` and `starttime` from `/proc/self/stat`. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(text: &str) -> Option<(u64, u64, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15, starttime 22.
    Some((
        f.get(11)?.parse().ok()?,
        f.get(12)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
    ))
}

/// The number after `key` in `/proc/self/status` (kB for memory lines).
fn status_kb(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Boot time from `/proc/stat`.
fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
fn parse_max_fds(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "4242 (pg (warden) x) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 75 0 0 20 0 9 0 123456 987654 3000 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((250, 75, 123456)));
        assert_eq!(parse_stat("garbage"), None);
        let status = "Name:\tpgwarden\nVmSize:\t  204800 kB\nVmRSS:\t    8192 kB\nThreads:\t5\n";
        assert_eq!(status_kb(status, "VmRSS:"), Some(8192.0));
        assert_eq!(status_kb(status, "VmSize:"), Some(204800.0));
        assert_eq!(status_kb(status, "Threads:"), Some(5.0));
        assert_eq!(
            parse_btime("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1048576              1048576              files     \n";
        assert_eq!(parse_max_fds(limits), Some(1_048_576.0));
    }

    #[test]
    fn reads_this_process() {
        let s = read().expect("/proc is mounted where the tests run");
        assert!(
            s.resident_bytes > 0.0 && s.open_fds > 0.0 && s.threads >= 1.0,
            "{s:?}"
        );
        assert!(s.start_time_seconds.unwrap_or(0.0) > 1.6e9, "{s:?}");
    }
}
