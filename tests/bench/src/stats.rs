//! Latency summaries from recorded samples (nanoseconds), by exact sort:
//! a run records at most a few hundred thousand samples per series.

use serde::Serialize;

/// Percentiles of one series of latencies, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// Summarises `samples` (nanoseconds; sorted in place).
    pub fn of(samples: &mut [u64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let ms = |ns: u64| ns as f64 / 1e6;
        let total: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Self {
            count: samples.len(),
            mean_ms: total as f64 / samples.len() as f64 / 1e6,
            p50_ms: ms(percentile(samples, 0.50)),
            p90_ms: ms(percentile(samples, 0.90)),
            p99_ms: ms(percentile(samples, 0.99)),
            p999_ms: ms(percentile(samples, 0.999)),
            max_ms: ms(*samples.last().expect("not empty")),
        }
    }
}

/// Nearest-rank percentile of sorted, non-empty `sorted`: the smallest
/// sample with at least `q` of all samples at or below it.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u64> = (1..=1000).rev().map(|i| i * 1_000).collect();
        let summary = Summary::of(&mut samples);
        assert_eq!(summary.count, 1000);
        assert_eq!(summary.p50_ms, 0.5);
        assert_eq!(summary.p90_ms, 0.9);
        assert_eq!(summary.p99_ms, 0.99);
        assert_eq!(summary.p999_ms, 0.999);
        assert_eq!(summary.max_ms, 1.0);
        assert!((summary.mean_ms - 0.5005).abs() < 1e-9);
    }

    #[test]
    fn small_and_empty_series() {
        assert_eq!(Summary::of(&mut []).count, 0);
        let summary = Summary::of(&mut [7_000_000]);
        assert_eq!(summary.p50_ms, 7.0);
        assert_eq!(summary.p999_ms, 7.0);
    }
}
