// SPDX-License-Identifier: Apache-2.0
//! `hearth bench`: the speed targets, measured with a baseline in the same run.
//!
//! Every benchmark prints a table and can write JSON (`--json FILE`) so results can be
//! compared across runs; `BENCHMARKS.md` records them with the machine and date.

pub mod envd;
pub mod pause;
pub mod serve;

use serde::Serialize;
use std::time::Duration;

/// Latency summary of a series of samples.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Fastest, milliseconds.
    pub min_ms: f64,
    /// Mean, milliseconds.
    pub mean_ms: f64,
}

impl Summary {
    /// Summarises `samples` (need not be sorted).
    pub fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        let pick = |q: f64| -> f64 {
            if ms.is_empty() {
                return f64::NAN;
            }
            let idx = ((ms.len() as f64 - 1.0) * q).round() as usize;
            ms[idx.min(ms.len() - 1)]
        };
        Self {
            n: ms.len(),
            p50_ms: pick(0.5),
            p99_ms: pick(0.99),
            min_ms: ms.first().copied().unwrap_or(f64::NAN),
            mean_ms: if ms.is_empty() {
                f64::NAN
            } else {
                ms.iter().sum::<f64>() / ms.len() as f64
            },
        }
    }
}

/// One line of a results table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// Latency summary, when the row is a latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Summary>,
    /// A single value (throughput, memory…), when the row is not a latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Unit of `value`.
    pub unit: String,
    /// The target, as text.
    pub target: String,
    /// Whether the target was met (`None` for baselines).
    pub met: Option<bool>,
}

impl Row {
    /// A latency row; `target_p50_ms` None for baselines.
    pub fn latency(name: &str, s: Summary, target_p50_ms: Option<f64>) -> Self {
        Self {
            name: name.to_owned(),
            met: target_p50_ms.map(|t| s.p50_ms <= t),
            target: target_p50_ms
                .map(|t| format!("p50 ≤ {t} ms"))
                .unwrap_or_else(|| "baseline".into()),
            latency: Some(s),
            value: None,
            unit: "ms".into(),
        }
    }

    /// A latency row with neither a target nor a baseline role.
    pub fn measured(name: &str, s: Summary) -> Self {
        Self {
            target: "-".into(),
            ..Self::latency(name, s, None)
        }
    }

    /// A value row with a target predicate.
    pub fn value(name: &str, value: f64, unit: &str, target: &str, met: Option<bool>) -> Self {
        Self {
            name: name.to_owned(),
            latency: None,
            value: Some(value),
            unit: unit.to_owned(),
            target: target.to_owned(),
            met,
        }
    }
}

/// Prints rows as an aligned table.
pub fn print_table(title: &str, rows: &[Row]) {
    println!("\n{title}");
    println!(
        "{:<44} {:>10} {:>10} {:>10}  {:<18} met",
        "benchmark", "p50", "p99", "value", "target"
    );
    for r in rows {
        let (p50, p99) = match &r.latency {
            Some(s) => (format!("{:.3}", s.p50_ms), format!("{:.3}", s.p99_ms)),
            None => ("-".into(), "-".into()),
        };
        let value = r
            .value
            .map(|v| format!("{v:.1} {}", r.unit))
            .unwrap_or_else(|| "-".into());
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        println!(
            "{:<44} {:>10} {:>10} {:>10}  {:<18} {}",
            r.name, p50, p99, value, r.target, met
        );
    }
}

/// Describes the machine for the record.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    serde_json::json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": mem_kb / 1024 / 1024,
        "kernel": kernel,
        "date": time::OffsetDateTime::now_utc().date().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_series() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&samples);
        assert_eq!(s.n, 100);
        assert!((s.p50_ms - 50.0).abs() <= 1.0);
        assert!((s.p99_ms - 99.0).abs() <= 1.0);
        assert_eq!(s.min_ms, 1.0);
    }
}
