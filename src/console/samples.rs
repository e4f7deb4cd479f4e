//! The last hour of the bridge's own counters, for the console's charts: every
//! [`INTERVAL`] a sampler reads the [`Metrics`] counters and gauges (no store query, no
//! Prometheus) and keeps one point in a ring buffer of [`CAPACITY`] points.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::feed::deliver::{DeliveryLabels, DestinationLabels};
use crate::metrics::{Metrics, OutcomeLabels, StateLabels};

/// Time between two points.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Points kept: one hour.
pub const CAPACITY: usize = 720;

/// One point: rates over the interval before it, and queue depths at its time.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Results newly stored in the outbox, per second.
    pub results_in: f64,
    /// Results QUBS accepted, per second.
    pub results_out: f64,
    /// ORM^O01 messages the order feed delivered, per second (all destinations).
    pub feed_out: f64,
    /// Results waiting in the outbox.
    pub outbox_depth: i64,
    /// Messages waiting for feed destinations (all of them).
    pub feed_depth: i64,
}

/// The running totals a point is taken from.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    stored: u64,
    submitted: u64,
    delivered: u64,
}

/// The ring buffer and what it is read from.
pub struct Samples {
    metrics: Arc<Metrics>,
    destinations: Vec<String>,
    points: Mutex<VecDeque<Point>>,
    last: Mutex<Option<(std::time::Instant, Totals)>>,
}

impl Samples {
    pub fn new(metrics: Arc<Metrics>, destinations: Vec<String>) -> Samples {
        Samples {
            metrics,
            destinations,
            points: Mutex::new(VecDeque::with_capacity(CAPACITY)),
            last: Mutex::new(None),
        }
    }

    fn totals(&self) -> Totals {
        let m = &self.metrics;
        let delivered = self
            .destinations
            .iter()
            .map(|d| {
                m.feed
                    .deliveries
                    .get_or_create(&DeliveryLabels {
                        destination: d.clone(),
                        outcome: "delivered".into(),
                    })
                    .get()
            })
            .sum();
        Totals {
            stored: m.results_stored.get(),
            submitted: m
                .outbox_attempts
                .get_or_create(&OutcomeLabels {
                    outcome: "submitted".into(),
                })
                .get(),
            delivered,
        }
    }

    /// Takes one point now (the first call only sets the baseline for rates).
    pub fn sample(&self) {
        let now = std::time::Instant::now();
        let totals = self.totals();
        let previous = self.last.lock().expect("samples").replace((now, totals));
        let Some((then, before)) = previous else {
            return;
        };
        let secs = now.duration_since(then).as_secs_f64().max(0.001);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        let m = &self.metrics;
        let point = Point {
            at_ms: crate::store::now_ms(),
            results_in: rate(totals.stored, before.stored),
            results_out: rate(totals.submitted, before.submitted),
            feed_out: rate(totals.delivered, before.delivered),
            outbox_depth: m
                .outbox_results
                .get_or_create(&StateLabels {
                    state: "pending".into(),
                })
                .get(),
            feed_depth: self
                .destinations
                .iter()
                .map(|d| {
                    m.feed
                        .queue_depth
                        .get_or_create(&DestinationLabels {
                            destination: d.clone(),
                        })
                        .get()
                })
                .sum(),
        };
        let mut points = self.points.lock().expect("samples");
        if points.len() == CAPACITY {
            points.pop_front();
        }
        points.push_back(point);
    }

    /// The points kept, oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.points
            .lock()
            .expect("samples")
            .iter()
            .copied()
            .collect()
    }

    /// Samples every [`INTERVAL`] until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(),
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_counter_deltas_and_the_ring_keeps_an_hour() {
        let metrics = Arc::new(Metrics::new());
        let samples = Samples::new(metrics.clone(), vec!["ris".into()]);
        samples.sample();
        assert!(
            samples.points().is_empty(),
            "the first call is the baseline"
        );
        metrics.results_stored.inc_by(50);
        metrics
            .feed
            .queue_depth
            .get_or_create(&DestinationLabels {
                destination: "ris".into(),
            })
            .set(7);
        std::thread::sleep(Duration::from_millis(100));
        samples.sample();
        let p = samples.points()[0];
        assert!(p.results_in > 50.0 && p.results_in <= 500.0, "{p:?}");
        assert_eq!((p.results_out, p.feed_depth), (0.0, 7));
        for _ in 0..CAPACITY + 10 {
            samples.sample();
        }
        assert_eq!(samples.points().len(), CAPACITY);
    }
}
