//! Exponential back-off with jitter, the one rule every retry loop of the bridge follows:
//! the step doubles from `initial` up to `max`, and each pause is half the step plus a
//! random share of the other half, so that many clients (or replicas) do not retry in step.

use std::time::Duration;

use rand::Rng;

/// A back-off schedule; [`Backoff::delay`] for a given attempt, or
/// [`Backoff::next_delay`]/[`Backoff::reset`] for a loop that keeps its own count.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    /// From milliseconds, as settings give them.
    pub fn from_millis(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff::new(
            Duration::from_millis(initial_ms),
            Duration::from_millis(max_ms),
        )
    }

    /// The step after `failures` failures (0: the first pause), before jitter.
    pub fn step(&self, failures: u32) -> Duration {
        self.initial
            .saturating_mul(1u32 << failures.min(20))
            .min(self.max)
    }

    /// The pause after `failures` earlier failures: within the upper half of the step.
    pub fn delay(&self, failures: u32) -> Duration {
        let step = self.step(failures);
        let half = step / 2;
        let jitter = rand::rng().random_range(0..=(step - half).as_micros() as u64);
        half + Duration::from_micros(jitter)
    }

    /// The next pause of a loop, counting this failure.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        d
    }

    /// After a success: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_double_up_to_the_cap_and_pauses_stay_in_the_upper_half() {
        let b = Backoff::from_millis(100, 1000);
        assert_eq!(b.step(0), Duration::from_millis(100));
        assert_eq!(b.step(2), Duration::from_millis(400));
        assert_eq!(b.step(30), Duration::from_millis(1000));
        for _ in 0..200 {
            let d = b.delay(2);
            assert!(
                d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
                "{d:?}"
            );
        }
        let mut looped = Backoff::from_millis(10, 40);
        let pauses: Vec<Duration> = (0..4).map(|_| looped.next_delay()).collect();
        assert!(pauses[3] >= Duration::from_millis(20) && pauses[3] <= Duration::from_millis(40));
        looped.reset();
        assert!(looped.next_delay() <= Duration::from_millis(10));
    }
}
