// SPDX-License-Identifier: Apache-2.0
//! Usage samples for `GET /sandboxes/{id}/metrics`.

use hearth_runtime::Stats;
use time::OffsetDateTime;

/// One usage sample, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was taken.
    pub at: OffsetDateTime,
    /// CPUs.
    pub cpu_count: u32,
    /// CPU use since the previous sample, percent of all CPUs.
    pub cpu_used_pct: f64,
    /// Memory in use, bytes.
    pub mem_used: u64,
    /// Memory limit, bytes.
    pub mem_total: u64,
    /// Page cache, bytes.
    pub mem_cache: u64,
    /// Disk in use, bytes.
    pub disk_used: u64,
    /// Disk limit, bytes.
    pub disk_total: u64,
    /// Cumulative CPU time, for the next sample's percentage.
    pub(crate) cpu_time_ns: u64,
}

impl Sample {
    /// Builds a sample from runtime stats and the previous sample.
    pub fn from_stats(stats: &Stats, at: OffsetDateTime, prev: Option<&Sample>) -> Self {
        let cpu_used_pct = match prev {
            Some(p) if at > p.at && stats.cpu_count > 0 => {
                let wall_ns = (at - p.at).whole_nanoseconds() as f64;
                let used = stats.cpu_time_ns.saturating_sub(p.cpu_time_ns) as f64;
                (used / (wall_ns * f64::from(stats.cpu_count)) * 100.0).clamp(0.0, 100.0)
            }
            _ => 0.0,
        };
        Self {
            at,
            cpu_count: stats.cpu_count,
            cpu_used_pct,
            mem_used: stats.mem_used,
            mem_total: stats.mem_total,
            mem_cache: stats.mem_cache,
            disk_used: stats.disk_used,
            disk_total: stats.disk_total,
            cpu_time_ns: stats.cpu_time_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_relative_to_all_cpus() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let s0 = Sample::from_stats(
            &Stats {
                cpu_count: 2,
                ..Default::default()
            },
            t0,
            None,
        );
        assert_eq!(s0.cpu_used_pct, 0.0);
        let stats = Stats {
            cpu_count: 2,
            cpu_time_ns: 1_000_000_000,
            ..Default::default()
        };
        let s1 = Sample::from_stats(&stats, t0 + time::Duration::seconds(1), Some(&s0));
        assert!((s1.cpu_used_pct - 50.0).abs() < 1e-9);
    }
}
