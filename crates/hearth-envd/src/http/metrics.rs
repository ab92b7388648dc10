// SPDX-License-Identifier: Apache-2.0
//! `GET /metrics`: the sandbox's CPU, memory and disk usage (§2.5).
//!
//! - `cpu_used_pct`: busy share of all CPUs since the previous call (since boot on
//!   the first), from `/proc/stat`, rounded to two decimals; `cpu_count` is the
//!   CPUs envd may run on.
//! - Memory comes from `/proc/meminfo` (`used` = total − available, `cache` =
//!   `Cached`), unless envd's memory cgroup (v1 or v2) has a limit below the
//!   machine's memory: then `total` is that limit, `used` the cgroup's usage less
//!   its inactive file pages and `cache` its file pages, so a container reports its
//!   own size rather than the host's.
//! - Disk is `statfs("/")`: `total` = blocks × fragment size, `used` = (blocks −
//!   free) × fragment size.

use crate::state::Envd;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The `/metrics` body.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    /// Unix seconds.
    pub ts: i64,
    /// CPUs available to envd.
    pub cpu_count: u32,
    /// Busy CPU percent since the previous sample.
    pub cpu_used_pct: f64,
    /// Memory size in bytes.
    pub mem_total: u64,
    /// Memory in use in bytes.
    pub mem_used: u64,
    /// Page cache in bytes.
    pub mem_cache: u64,
    /// `mem_total` in MiB.
    pub mem_total_mib: u64,
    /// `mem_used` in MiB.
    pub mem_used_mib: u64,
    /// Bytes used on `/`.
    pub disk_used: u64,
    /// Size of `/` in bytes.
    pub disk_total: u64,
}

/// `(busy, total)` jiffies of the previous call.
static LAST_CPU: Mutex<Option<(u64, u64)>> = Mutex::new(None);

/// `GET /metrics`.
pub async fn metrics(State(_state): State<Arc<Envd>>) -> Response {
    match tokio::task::spawn_blocking(collect).await {
        Ok(m) => crate::http::files::json_ok(&m),
        Err(err) => {
            crate::error::EnvdError::Internal(format!("metrics task failed: {err}")).into_response()
        }
    }
}

/// Samples everything (blocking: reads procfs and sysfs).
pub fn collect() -> Metrics {
    let (mem_total, mem_used, mem_cache) = memory();
    let (disk_used, disk_total) = disk(Path::new("/"));
    Metrics {
        ts: time::OffsetDateTime::now_utc().unix_timestamp(),
        cpu_count: std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1),
        cpu_used_pct: cpu_percent(),
        mem_total,
        mem_used,
        mem_cache,
        mem_total_mib: mem_total >> 20,
        mem_used_mib: mem_used >> 20,
        disk_used,
        disk_total,
    }
}

/// `(busy, total)` jiffies from the aggregate `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

fn cpu_percent() -> f64 {
    let Some(now) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_proc_stat(&t))
    else {
        return 0.0;
    };
    let mut last = LAST_CPU.lock().unwrap_or_else(|p| p.into_inner());
    let (busy, total) = match *last {
        Some((b, t)) if now.1 > t => (now.0.saturating_sub(b), now.1 - t),
        _ => now,
    };
    *last = Some(now);
    if total == 0 {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let pct = busy as f64 * 100.0 / total as f64;
    (pct * 100.0).round() / 100.0
}

/// Parses `/proc/meminfo` (kB values) into bytes by key.
pub fn parse_meminfo(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let (key, rest) = l.split_once(':')?;
            let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some((key, kb * 1024))
        })
        .collect()
}

/// Parses a cgroup `memory.stat` (`key value` lines).
fn parse_flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect()
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A memory cgroup's limit, usage, inactive file and cache bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupMemory {
    /// Effective limit (the smallest along the hierarchy).
    pub limit: u64,
    /// Charged bytes.
    pub usage: u64,
    /// Reclaimable file pages.
    pub inactive_file: u64,
    /// Page cache.
    pub cache: u64,
}

/// Finds envd's memory cgroup directories (v2 first) from `/proc/self/cgroup`.
fn cgroup_dirs(proc_self_cgroup: &str, mount_root: &Path) -> Vec<(bool, PathBuf)> {
    let mut out = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            for base in [mount_root.to_path_buf(), mount_root.join("unified")] {
                out.push((true, base.join(rel)));
                out.push((true, base));
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            let base = mount_root.join("memory");
            out.push((false, base.join(rel)));
            // In a container without a cgroup namespace the path is the host's, but
            // the mount shows the container's own cgroup.
            out.push((false, base));
        }
    }
    out
}

fn cgroup_v1(dir: &Path) -> Option<CgroupMemory> {
    let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
    let stat_text = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
    let stat = parse_flat_keyed(&stat_text);
    let own = read_u64(&dir.join("memory.limit_in_bytes")).unwrap_or(u64::MAX);
    let limit = stat
        .get("hierarchical_memory_limit")
        .copied()
        .unwrap_or(u64::MAX)
        .min(own);
    let pick = |a: &str, b: &str| stat.get(a).or_else(|| stat.get(b)).copied().unwrap_or(0);
    Some(CgroupMemory {
        limit,
        usage,
        inactive_file: pick("total_inactive_file", "inactive_file"),
        cache: pick("total_cache", "cache"),
    })
}

fn cgroup_v2(dir: &Path, mount_root: &Path) -> Option<CgroupMemory> {
    let usage = read_u64(&dir.join("memory.current"))?;
    let stat_text = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
    let stat = parse_flat_keyed(&stat_text);
    let mut limit = u64::MAX;
    // memory.max is per level; the effective limit is the smallest up to the root.
    let mut level = Some(dir);
    while let Some(d) = level {
        if let Some(max) = read_u64(&d.join("memory.max")) {
            limit = limit.min(max);
        }
        if d == mount_root {
            break;
        }
        level = d.parent().filter(|p| p.starts_with(mount_root));
    }
    Some(CgroupMemory {
        limit,
        usage,
        inactive_file: stat.get("inactive_file").copied().unwrap_or(0),
        cache: stat.get("file").copied().unwrap_or(0),
    })
}

/// Envd's memory cgroup accounting, if it can be read.
pub fn cgroup_memory(proc_self_cgroup: &str, mount_root: &Path) -> Option<CgroupMemory> {
    cgroup_dirs(proc_self_cgroup, mount_root)
        .into_iter()
        .find_map(|(v2, dir)| {
            if v2 {
                cgroup_v2(&dir, mount_root)
            } else {
                cgroup_v1(&dir)
            }
        })
}

/// `(total, used, cache)` in bytes.
fn memory() -> (u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let info = parse_meminfo(&text);
    let total = info.get("MemTotal").copied().unwrap_or(0);
    let available = info
        .get("MemAvailable")
        .or_else(|| info.get("MemFree"))
        .copied()
        .unwrap_or(0);
    let host = (
        total,
        total.saturating_sub(available),
        info.get("Cached").copied().unwrap_or(0),
    );
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    match cgroup_memory(&own, Path::new("/sys/fs/cgroup")) {
        Some(cg) if cg.limit < total => (
            cg.limit,
            cg.usage.saturating_sub(cg.inactive_file).min(cg.limit),
            cg.cache,
        ),
        _ => host,
    }
}

/// `(used, total)` bytes of the filesystem holding `path`.
fn disk(path: &Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(st) => {
            let frsize = st.fragment_size();
            let total = st.blocks().saturating_mul(frsize);
            let free = st.blocks_free().saturating_mul(frsize);
            (total.saturating_sub(free), total)
        }
        Err(_) => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_and_total() {
        let text = "cpu  100 5 50 800 20 3 2 1 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_proc_stat(text), Some((161, 981)));
    }

    #[test]
    fn meminfo_values_are_bytes() {
        let m = parse_meminfo("MemTotal:       2048 kB\nMemAvailable:   1024 kB\n");
        assert_eq!(m["MemTotal"], 2048 * 1024);
        assert_eq!(m["MemAvailable"], 1024 * 1024);
    }

    #[test]
    fn cgroup_v1_limit_is_read_from_a_fake_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("memory/box");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.usage_in_bytes"), "300\n").unwrap();
        std::fs::write(dir.join("memory.limit_in_bytes"), "1000\n").unwrap();
        std::fs::write(
            dir.join("memory.stat"),
            "cache 70\ntotal_cache 80\ntotal_inactive_file 50\nhierarchical_memory_limit 900\n",
        )
        .unwrap();
        let cg = cgroup_memory("5:memory:/box\n", root.path()).unwrap();
        assert_eq!(
            cg,
            CgroupMemory {
                limit: 900,
                usage: 300,
                inactive_file: 50,
                cache: 80
            }
        );
    }

    #[test]
    fn cgroup_v2_limit_is_the_smallest_up_the_tree() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(root.path().join("a/memory.max"), "4096\n").unwrap();
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        std::fs::write(dir.join("memory.current"), "1000\n").unwrap();
        std::fs::write(dir.join("memory.stat"), "file 300\ninactive_file 200\n").unwrap();
        let cg = cgroup_memory("0::/a/b\n", root.path()).unwrap();
        assert_eq!(cg.limit, 4096);
        assert_eq!((cg.usage, cg.inactive_file, cg.cache), (1000, 200, 300));
    }

    #[test]
    fn collect_reports_plausible_numbers() {
        let m = collect();
        assert!(m.cpu_count >= 1);
        assert!(m.mem_total > 0 && m.mem_used <= m.mem_total);
        assert!(m.disk_total > 0 && m.disk_used <= m.disk_total);
        assert!((0.0..=100.0).contains(&m.cpu_used_pct));
        assert_eq!(m.mem_total_mib, m.mem_total >> 20);
    }
}
