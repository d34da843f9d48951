//! Circuit breakers around remote dependencies. A dependency that fails `threshold` times in a
//! row is left alone (calls fail fast) for a pause that starts at `base`, doubles with each
//! failed trial up to `max`, and carries up to a quarter of random jitter so nodes do not come
//! back in step; then one call is let through as a trial, and its outcome closes the breaker
//! or opens it again. Also: retries with jittered exponential backoff for idempotent calls.

use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGaugeVec};

use crate::ClusterMetrics;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Calls pass; `failures` in a row so far.
    Closed { failures: u32 },
    /// Calls fail fast until `until`; `pause` is how long it was.
    Open { until: Instant, pause: Duration },
    /// One trial call is out since `since`; the others fail fast.
    Trial { since: Instant, pause: Duration },
}

/// One dependency's breaker.
pub struct Breaker {
    name: String,
    threshold: u32,
    base: Duration,
    max: Duration,
    phase: Mutex<Phase>,
    metrics: OnceLock<(IntGaugeVec, IntCounterVec)>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("phase", &*self.phase())
            .finish()
    }
}

impl Breaker {
    /// A closed breaker for `name`, opening after `threshold` failures in a row.
    pub fn new(name: impl Into<String>, threshold: u32, base: Duration, max: Duration) -> Self {
        Self {
            name: name.into(),
            threshold: threshold.max(1),
            base,
            max: max.max(base),
            phase: Mutex::new(Phase::Closed { failures: 0 }),
            metrics: OnceLock::new(),
        }
    }

    /// Reports its state in `convene_breaker_open{dependency}` and its trips in
    /// `convene_breaker_trips_total{dependency}`.
    pub fn with_metrics(self, metrics: &ClusterMetrics) -> Self {
        self.report_to(metrics);
        self
    }

    /// [`Self::with_metrics`] for a breaker made before the metrics (the first call counts).
    pub fn report_to(&self, metrics: &ClusterMetrics) {
        let (open, trips) = (&metrics.breaker_open, &metrics.breaker_trips);
        open.with_label_values(&[&self.name])
            .set(i64::from(self.is_open()));
        trips.with_label_values(&[&self.name]);
        let _ = self.metrics.set((open.clone(), trips.clone()));
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        // The phase is a plain value: a panic elsewhere cannot leave it half written.
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may go now; when the pause is over, the caller that asks first is the
    /// trial (a trial that never reports is given up after a pause).
    pub fn allow(&self) -> bool {
        let now = Instant::now();
        let mut phase = self.phase();
        let (ready, pause) = match *phase {
            Phase::Closed { .. } => return true,
            Phase::Open { until, pause } => (now >= until, pause),
            Phase::Trial { since, pause } => (now >= since + pause, pause),
        };
        if ready {
            *phase = Phase::Trial { since: now, pause };
        }
        ready
    }

    /// Whether calls fail fast now.
    pub fn is_open(&self) -> bool {
        !matches!(*self.phase(), Phase::Closed { .. })
    }

    /// The call went through.
    pub fn success(&self) {
        let mut phase = self.phase();
        if !matches!(*phase, Phase::Closed { .. }) {
            tracing::info!(dependency = %self.name, "answering again; circuit closed");
            if let Some((open, _)) = self.metrics.get() {
                open.with_label_values(&[&self.name]).set(0);
            }
        }
        *phase = Phase::Closed { failures: 0 };
    }

    /// The call failed because of the dependency (not because of what it was asked).
    pub fn failure(&self, why: &str) {
        let now = Instant::now();
        let mut phase = self.phase();
        let pause = match *phase {
            Phase::Closed { failures } if failures + 1 < self.threshold => {
                *phase = Phase::Closed {
                    failures: failures + 1,
                };
                return;
            }
            Phase::Closed { .. } => self.base,
            Phase::Trial { pause, .. } => (pause * 2).min(self.max),
            // Calls that were already out when it opened: the pause stands.
            Phase::Open { .. } => return,
        };
        if matches!(*phase, Phase::Closed { .. }) {
            tracing::warn!(
                dependency = self.name,
                reason = why,
                "failing; circuit open"
            );
            if let Some((open, trips)) = self.metrics.get() {
                open.with_label_values(&[&self.name]).set(1);
                trips.with_label_values(&[&self.name]).inc();
            }
        }
        *phase = Phase::Open {
            until: now + jittered(pause),
            pause,
        };
    }
}

/// `d` plus up to a quarter of it, at random.
pub fn jittered(d: Duration) -> Duration {
    let quarter = d.as_millis() as u64 / 4;
    d + Duration::from_millis(if quarter == 0 {
        0
    } else {
        rand::random::<u64>() % quarter
    })
}

/// Runs `op` up to `attempts` times while it fails with an error `transient` accepts, waiting
/// between attempts a random time up to `base`, then twice that, and so on ("full jitter").
pub async fn retry<T, E, F, Fut>(
    attempts: u32,
    base: Duration,
    transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut ceiling = base;
    let mut tried = 1;
    loop {
        match op().await {
            Err(e) if tried < attempts && transient(&e) => {
                let wait = rand::random::<u64>() % (ceiling.as_millis() as u64).max(1);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                ceiling *= 2;
                tried += 1;
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_opens_after_the_threshold_and_lets_one_trial_through_after_the_pause() {
        let b = Breaker::new("test", 3, Duration::from_millis(40), Duration::from_secs(1));
        b.failure("a");
        b.failure("b");
        assert!(b.allow() && !b.is_open(), "two failures do not open it");
        b.failure("c");
        assert!(b.is_open() && !b.allow(), "the third does");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow(), "after the pause, one trial");
        assert!(!b.allow(), "and only one");
        let failed = std::time::Instant::now();
        b.failure("trial failed");
        assert!(!b.allow(), "a failed trial opens it again, for longer");
        std::thread::sleep(Duration::from_millis(60));
        // A loaded machine may oversleep past the doubled pause (80 ms): the check holds only
        // while it has not.
        let allowed = b.allow();
        assert!(
            !allowed || failed.elapsed() >= Duration::from_millis(80),
            "the pause doubled"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(allowed || b.allow());
        b.success();
        assert!(
            !b.is_open() && b.allow() && b.allow(),
            "a good trial closes it"
        );
    }

    #[test]
    fn a_success_resets_the_count_of_failures() {
        let b = Breaker::new("test", 2, Duration::from_secs(10), Duration::from_secs(10));
        b.failure("a");
        b.success();
        b.failure("b");
        assert!(!b.is_open());
        b.failure("c");
        assert!(b.is_open());
    }

    #[tokio::test]
    async fn retries_stop_at_success_at_a_permanent_error_or_after_the_attempts() {
        let mut calls = 0;
        let r: Result<u32, &str> = retry(
            5,
            Duration::from_millis(2),
            |_| true,
            || {
                calls += 1;
                let n = calls;
                async move { if n < 3 { Err("flaky") } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(r, Ok(3));
        let mut calls = 0;
        let r: Result<u32, &str> = retry(
            5,
            Duration::from_millis(2),
            |e| *e != "bad",
            || {
                calls += 1;
                async { Err("bad") }
            },
        )
        .await;
        assert_eq!((r, calls), (Err("bad"), 1));
        let mut calls = 0;
        let r: Result<u32, &str> = retry(
            3,
            Duration::from_millis(2),
            |_| true,
            || {
                calls += 1;
                async { Err("down") }
            },
        )
        .await;
        assert_eq!((r, calls), (Err("down"), 3));
    }
}
