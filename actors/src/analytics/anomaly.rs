//! Anomaly detection on per-minute rates: a robust z-score of the minute just closed against
//! the minutes before it (median and median absolute deviation, so one earlier spike does not
//! hide the next).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Fewer earlier minutes than this and nothing is judged.
pub const MIN_HISTORY: usize = 10;

/// When a minute is an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// The robust z-score from which a minute is anomalous (3.5 is the usual cut-off).
    pub z: f64,
    /// And the least distance from the median, in events per minute, so quiet metrics do not
    /// raise an alarm over a handful of events.
    pub min_delta: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            z: 3.5,
            min_delta: 20.0,
        }
    }
}

/// A minute whose rate is far from the usual.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Anomaly {
    /// What was measured: `registrations`, `views` or `errors`.
    pub metric: String,
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// Its count.
    pub value: f64,
    /// The median of the minutes before it.
    pub baseline: f64,
    /// The robust z-score.
    pub z: f64,
    /// `spike` or `drop`.
    pub direction: String,
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The median of `history` and the robust z-score of `x` against it; `None` with fewer than
/// [`MIN_HISTORY`] minutes. The scale is 1.4826 × the median absolute deviation; when more
/// than half the minutes equal the median it is 1.2533 × the mean absolute deviation, and
/// when every minute is the same, one event.
pub fn robust_z(history: &[f64], x: f64) -> Option<(f64, f64)> {
    if history.len() < MIN_HISTORY {
        return None;
    }
    let mut sorted = history.to_vec();
    sorted.sort_by(f64::total_cmp);
    let med = median(&sorted);
    let mut deviations: Vec<f64> = sorted.iter().map(|v| (v - med).abs()).collect();
    deviations.sort_by(f64::total_cmp);
    let mad = 1.4826 * median(&deviations);
    let mean_ad = 1.2533 * deviations.iter().sum::<f64>() / deviations.len() as f64;
    let scale = if mad > 1e-9 {
        mad
    } else if mean_ad > 1e-9 {
        mean_ad
    } else {
        1.0
    };
    Some((med, (x - med) / scale))
}

/// Judges the minute starting at `minute` with `value` events of `metric`, against the
/// minutes before it.
pub fn judge(
    metric: &str,
    minute: DateTime<Utc>,
    value: f64,
    history: &[f64],
    thresholds: Thresholds,
) -> Option<Anomaly> {
    let (baseline, z) = robust_z(history, value)?;
    if z.abs() < thresholds.z || (value - baseline).abs() < thresholds.min_delta {
        return None;
    }
    Some(Anomaly {
        metric: metric.to_owned(),
        minute,
        value,
        baseline,
        z,
        direction: if z > 0.0 { "spike" } else { "drop" }.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(n: usize) -> Vec<f64> {
        (0..n).map(|i| 50.0 + ((i * 7) % 11) as f64 - 5.0).collect()
    }

    #[test]
    fn too_little_history_judges_nothing() {
        assert_eq!(robust_z(&[1.0; 9], 100.0), None);
        assert!(robust_z(&[1.0; 10], 100.0).is_some());
    }

    #[test]
    fn median_and_scale_are_robust_to_one_earlier_spike() {
        let mut history = noisy(30);
        let (_, z_clean) = robust_z(&history, 120.0).unwrap();
        history[3] = 5000.0;
        let (med, z_spiked) = robust_z(&history, 120.0).unwrap();
        assert!((45.0..=55.0).contains(&med), "median {med}");
        assert!(z_spiked > 3.5 && (z_spiked - z_clean).abs() < 2.0);
    }

    #[test]
    fn spikes_and_drops_are_named_and_ordinary_minutes_are_not() {
        let t = Thresholds::default();
        let history = noisy(30);
        let now = Utc::now();
        assert_eq!(judge("views", now, 53.0, &history, t), None);
        let spike = judge("views", now, 400.0, &history, t).unwrap();
        assert_eq!(spike.direction, "spike");
        assert_eq!(spike.baseline, 50.0);
        let drop = judge("views", now, 0.0, &history, t).unwrap();
        assert_eq!(drop.direction, "drop");
        assert!(drop.z < -3.5);
    }

    #[test]
    fn a_small_absolute_change_on_a_flat_metric_is_not_an_anomaly() {
        let t = Thresholds::default();
        let flat = vec![0.0; 30];
        assert_eq!(judge("errors", Utc::now(), 3.0, &flat, t), None);
        let a = judge("errors", Utc::now(), 25.0, &flat, t).unwrap();
        assert_eq!((a.baseline, a.z), (0.0, 25.0));
    }
}
