//! Defaults that follow the container's limits (cgroup v2, with a v1 fallback).
//!
//! Without a limit the pod shares its node with others, so pgwarden keeps PostgreSQL's
//! own defaults rather than sizing for the whole node.

use std::path::Path;

const MIB: u64 = 1024 * 1024;

/// The limits the container runs under; `None` means unlimited or unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in cores (quota / period).
    pub cpus: Option<f64>,
}

/// Reads the limits of the current cgroup.
pub fn detect() -> Resources {
    detect_in(Path::new("/sys/fs/cgroup"))
}

/// Reads the limits from a cgroup mount at `root` (a parameter so tests can fake one).
pub fn detect_in(root: &Path) -> Resources {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
    // A limit this high is the kernel's way of saying "none" on cgroup v1.
    let plausible = |b: u64| (b < (1 << 60)).then_some(b);
    let memory_bytes = match read("memory.max") {
        Some(v2) => v2.trim().parse().ok().and_then(plausible),
        None => read("memory/memory.limit_in_bytes")
            .and_then(|v| v.trim().parse().ok())
            .and_then(plausible),
    };
    let cpus = match read("cpu.max") {
        Some(v2) => {
            let mut parts = v2.split_whitespace();
            match (
                parts.next().and_then(|q| q.parse::<f64>().ok()),
                parts.next().and_then(|p| p.parse::<f64>().ok()),
            ) {
                (Some(q), Some(p)) if p > 0.0 => Some(q / p),
                _ => None,
            }
        }
        None => {
            let quota = read("cpu/cpu.cfs_quota_us").and_then(|v| v.trim().parse::<f64>().ok());
            let period = read("cpu/cpu.cfs_period_us").and_then(|v| v.trim().parse::<f64>().ok());
            match (quota, period) {
                (Some(q), Some(p)) if q > 0.0 && p > 0.0 => Some(q / p),
                _ => None,
            }
        }
    };
    Resources { memory_bytes, cpus }
}

/// Parameters sized from `r`, as `(name, value)`. The user fragment overrides each.
///
/// `max_worker_processes` and `max_connections` are left alone on purpose: a hot standby
/// refuses to start when they are lower than on its primary, and pods of one cluster can
/// have different limits.
pub fn tune(r: &Resources) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(bytes) = r.memory_bytes {
        let mb = bytes / MIB;
        out.push(("shared_buffers", format!("{}MB", (mb / 4).max(32))));
        out.push((
            "effective_cache_size",
            format!("{}MB", (mb * 3 / 4).max(64)),
        ));
        out.push((
            "maintenance_work_mem",
            format!("{}MB", (mb / 16).clamp(16, 2048)),
        ));
        out.push((
            "work_mem",
            format!("{}MB", (mb * 3 / 4 / 300).clamp(4, 256)),
        ));
    }
    if let Some(cpus) = r.cpus {
        let n = (cpus.ceil() as u64).clamp(1, 8);
        out.push(("max_parallel_workers", n.to_string()));
        out.push((
            "max_parallel_workers_per_gather",
            (n / 2).min(4).to_string(),
        ));
        out.push((
            "max_parallel_maintenance_workers",
            (n / 2).min(4).to_string(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn reads_cgroup_v2_limits() {
        let d = fake(&[
            ("memory.max", "4294967296\n"),
            ("cpu.max", "200000 100000\n"),
        ]);
        assert_eq!(
            detect_in(d.path()),
            Resources {
                memory_bytes: Some(4 << 30),
                cpus: Some(2.0)
            }
        );
        let d = fake(&[("memory.max", "max\n"), ("cpu.max", "max 100000\n")]);
        assert_eq!(detect_in(d.path()), Resources::default());
    }

    #[test]
    fn reads_cgroup_v1_limits() {
        let d = fake(&[
            ("memory/memory.limit_in_bytes", "1073741824\n"),
            ("cpu/cpu.cfs_quota_us", "50000\n"),
            ("cpu/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(
            detect_in(d.path()),
            Resources {
                memory_bytes: Some(1 << 30),
                cpus: Some(0.5)
            }
        );
        let d = fake(&[
            ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("cpu/cpu.cfs_quota_us", "-1\n"),
        ]);
        assert_eq!(detect_in(d.path()), Resources::default());
    }

    #[test]
    fn sizes_memory_at_a_quarter_and_keeps_defaults_when_unlimited() {
        let t = tune(&Resources {
            memory_bytes: Some(4 << 30),
            cpus: Some(2.0),
        });
        let get = |n: &str| t.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("shared_buffers"), Some("1024MB"));
        assert_eq!(get("effective_cache_size"), Some("3072MB"));
        assert_eq!(get("maintenance_work_mem"), Some("256MB"));
        assert_eq!(get("max_parallel_workers"), Some("2"));
        assert_eq!(get("max_parallel_workers_per_gather"), Some("1"));
        assert!(tune(&Resources::default()).is_empty());
    }
}
