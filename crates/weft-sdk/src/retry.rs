//! [`RetryPolicy`]: how failed activities (on the server) and steps (in the
//! worker) are retried.

use std::time::Duration;

use weft_proto::v1 as pb;

/// How a failed activity or step is retried.
///
/// For activities the server applies the policy; `RetryPolicy::default()`
/// sends zeros, which mean the server's defaults (1 s initial interval,
/// coefficient 2, maximum 100 x initial, unlimited attempts). Steps retry
/// inside the worker with [`RetryPolicy::step_default`] unless told otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub initial_interval: Duration,
    /// Multiplier applied to the delay after each retry.
    pub backoff_coefficient: f64,
    /// Upper bound of the delay; `None` means 100 x `initial_interval`.
    pub maximum_interval: Option<Duration>,
    /// Total attempts including the first; 0 means unlimited.
    pub maximum_attempts: u32,
    /// Failure error types that are never retried.
    pub non_retryable_error_types: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_interval: Duration::from_secs(1),
            backoff_coefficient: 2.0,
            maximum_interval: None,
            maximum_attempts: 0,
            non_retryable_error_types: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// The policy of `ctx.step`: 3 attempts, 100 ms then 200 ms apart.
    pub fn step_default() -> Self {
        RetryPolicy { initial_interval: Duration::from_millis(100), maximum_attempts: 3, ..RetryPolicy::default() }
    }

    /// A policy that never retries.
    pub fn no_retry() -> Self {
        RetryPolicy { maximum_attempts: 1, ..RetryPolicy::default() }
    }

    pub fn with_maximum_attempts(mut self, attempts: u32) -> Self {
        self.maximum_attempts = attempts;
        self
    }

    pub fn with_initial_interval(mut self, interval: Duration) -> Self {
        self.initial_interval = interval;
        self
    }

    pub fn with_backoff_coefficient(mut self, coefficient: f64) -> Self {
        self.backoff_coefficient = coefficient;
        self
    }

    pub fn with_maximum_interval(mut self, interval: Duration) -> Self {
        self.maximum_interval = Some(interval);
        self
    }

    pub fn with_non_retryable_error_types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.non_retryable_error_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// The delay before attempt `next_attempt` (2, 3, ...), as the server computes it.
    pub fn delay_before(&self, next_attempt: u32) -> Duration {
        let coefficient = if self.backoff_coefficient >= 1.0 { self.backoff_coefficient } else { 2.0 };
        let retries_before = next_attempt.saturating_sub(2).min(64) as i32;
        let initial = self.initial_interval.as_secs_f64();
        let maximum = self.maximum_interval.map(|d| d.as_secs_f64()).unwrap_or(initial * 100.0);
        let delay = (initial * coefficient.powi(retries_before)).min(maximum);
        Duration::try_from_secs_f64(delay).unwrap_or(Duration::MAX)
    }

    /// Whether a failure may be retried after `attempts` attempts.
    pub fn allows_retry(&self, attempts: u32, failure: &crate::Failure) -> bool {
        if failure.non_retryable || self.non_retryable_error_types.contains(&failure.error_type) {
            return false;
        }
        self.maximum_attempts == 0 || attempts < self.maximum_attempts
    }
}

impl From<&RetryPolicy> for pb::RetryPolicy {
    fn from(policy: &RetryPolicy) -> Self {
        pb::RetryPolicy {
            initial_interval_ms: duration_ms(policy.initial_interval),
            backoff_coefficient: policy.backoff_coefficient,
            maximum_interval_ms: policy.maximum_interval.map(duration_ms).unwrap_or(0),
            maximum_attempts: policy.maximum_attempts,
            non_retryable_error_types: policy.non_retryable_error_types.clone(),
        }
    }
}

impl From<RetryPolicy> for pb::RetryPolicy {
    fn from(policy: RetryPolicy) -> Self {
        pb::RetryPolicy::from(&policy)
    }
}

impl From<pb::RetryPolicy> for RetryPolicy {
    fn from(policy: pb::RetryPolicy) -> Self {
        let defaults = RetryPolicy::default();
        RetryPolicy {
            initial_interval: if policy.initial_interval_ms == 0 {
                defaults.initial_interval
            } else {
                Duration::from_millis(policy.initial_interval_ms)
            },
            backoff_coefficient: if policy.backoff_coefficient == 0.0 {
                defaults.backoff_coefficient
            } else {
                policy.backoff_coefficient
            },
            maximum_interval: (policy.maximum_interval_ms > 0)
                .then(|| Duration::from_millis(policy.maximum_interval_ms)),
            maximum_attempts: policy.maximum_attempts,
            non_retryable_error_types: policy.non_retryable_error_types,
        }
    }
}

/// A duration in whole milliseconds, rounded up so a non-zero duration never becomes 0 ("no limit").
pub(crate) fn duration_ms(duration: Duration) -> u64 {
    let ms = duration.as_millis();
    let rounded_up = if duration.as_nanos().is_multiple_of(1_000_000) { ms } else { ms + 1 };
    u64::try_from(rounded_up).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        let policy = RetryPolicy::step_default();
        assert_eq!(policy.delay_before(2), Duration::from_millis(100));
        assert_eq!(policy.delay_before(3), Duration::from_millis(200));
        let capped = policy.clone().with_maximum_interval(Duration::from_millis(150));
        assert_eq!(capped.delay_before(3), Duration::from_millis(150));
    }

    #[test]
    fn retries_stop_at_the_limit_and_for_listed_types() {
        let policy = RetryPolicy::step_default().with_non_retryable_error_types(["Fatal"]);
        let failure = crate::Failure::new("Error", "boom");
        assert!(policy.allows_retry(2, &failure));
        assert!(!policy.allows_retry(3, &failure));
        assert!(!policy.allows_retry(1, &crate::Failure::new("Fatal", "boom")));
    }

    #[test]
    fn converts_to_proto_and_back() {
        let policy = RetryPolicy::default().with_maximum_attempts(3).with_maximum_interval(Duration::from_secs(5));
        let wire = pb::RetryPolicy::from(&policy);
        assert_eq!(wire.initial_interval_ms, 1000);
        assert_eq!(wire.maximum_interval_ms, 5000);
        assert_eq!(RetryPolicy::from(wire), policy);
        assert_eq!(duration_ms(Duration::from_micros(1)), 1);
    }
}
