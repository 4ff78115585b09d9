//! Retry policies and backoff arithmetic for activities and workflow tasks.
//!
//! Pure integer-and-float arithmetic: the same inputs give the same delay on
//! every replica (IEEE 754 multiplication is deterministic; nothing is fused).

use serde::{Deserialize, Serialize};

use crate::model::Failure;

pub const DEFAULT_INITIAL_INTERVAL_MS: u64 = 1_000;
pub const DEFAULT_BACKOFF_COEFFICIENT: f64 = 2.0;
/// Without an explicit maximum, the delay is capped at this multiple of the initial interval.
pub const DEFAULT_MAXIMUM_INTERVAL_FACTOR: u64 = 100;
/// Failed workflow tasks are retried after 1 s, doubling, at most this long apart.
pub const WORKFLOW_TASK_RETRY_MAX_MS: u64 = 60_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct RetryPolicy {
    /// 0 means the default (1 s).
    pub initial_interval_ms: u64,
    /// 0 (or below 1) means the default (2.0).
    pub backoff_coefficient: f64,
    /// 0 means 100 x the initial interval.
    pub maximum_interval_ms: u64,
    /// Attempts including the first; 0 means unlimited.
    pub maximum_attempts: u32,
    pub non_retryable_error_types: Vec<String>,
}

impl RetryPolicy {
    fn initial_ms(&self) -> u64 {
        if self.initial_interval_ms == 0 { DEFAULT_INITIAL_INTERVAL_MS } else { self.initial_interval_ms }
    }

    fn coefficient(&self) -> f64 {
        if self.backoff_coefficient.is_finite() && self.backoff_coefficient >= 1.0 {
            self.backoff_coefficient
        } else {
            DEFAULT_BACKOFF_COEFFICIENT
        }
    }

    fn maximum_ms(&self) -> u64 {
        if self.maximum_interval_ms == 0 {
            self.initial_ms().saturating_mul(DEFAULT_MAXIMUM_INTERVAL_FACTOR)
        } else {
            self.maximum_interval_ms.max(self.initial_ms())
        }
    }

    /// Delay before attempt `failed_attempt + 1`: initial x coefficient^(failed_attempt - 1),
    /// capped at the maximum interval.
    pub fn delay_ms(&self, failed_attempt: u32) -> u64 {
        let exponent = failed_attempt.saturating_sub(1).min(1_000) as i32;
        let delay = self.initial_ms() as f64 * self.coefficient().powi(exponent);
        let maximum = self.maximum_ms();
        if !delay.is_finite() || delay >= maximum as f64 { maximum } else { delay as u64 }
    }

    /// Whether a failure of attempt `attempt` may be retried: not marked
    /// non-retryable, its type not listed, and attempts left.
    pub fn allows_retry(&self, attempt: u32, failure: &Failure) -> bool {
        !failure.non_retryable
            && !self.non_retryable_error_types.contains(&failure.error_type)
            && (self.maximum_attempts == 0 || attempt < self.maximum_attempts)
    }
}

/// Backoff of a failed workflow task: 1 s doubling, capped at one minute.
pub fn workflow_task_retry_delay_ms(failed_attempt: u32) -> u64 {
    let shift = failed_attempt.saturating_sub(1).min(16);
    (1_000u64 << shift).min(WORKFLOW_TASK_RETRY_MAX_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(error_type: &str, non_retryable: bool) -> Failure {
        Failure { message: "boom".into(), error_type: error_type.into(), non_retryable, details: Default::default() }
    }

    #[test]
    fn delays_grow_by_the_coefficient_up_to_the_maximum() {
        let policy = RetryPolicy {
            initial_interval_ms: 100,
            backoff_coefficient: 2.0,
            maximum_interval_ms: 500,
            ..Default::default()
        };
        let delays: Vec<u64> = (1..=5).map(|a| policy.delay_ms(a)).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
    }

    #[test]
    fn defaults_apply_to_zero_fields() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay_ms(1), 1_000);
        assert_eq!(policy.delay_ms(2), 2_000);
        assert_eq!(policy.delay_ms(100), 100_000, "capped at 100 x initial");
    }

    #[test]
    fn retry_decisions() {
        let policy = RetryPolicy {
            maximum_attempts: 3,
            non_retryable_error_types: vec!["CardDeclined".into()],
            ..Default::default()
        };
        assert!(policy.allows_retry(1, &failure("Io", false)));
        assert!(policy.allows_retry(2, &failure("Io", false)));
        assert!(!policy.allows_retry(3, &failure("Io", false)), "third attempt was the last");
        assert!(!policy.allows_retry(1, &failure("CardDeclined", false)));
        assert!(!policy.allows_retry(1, &failure("Io", true)));
        let unlimited = RetryPolicy::default();
        assert!(unlimited.allows_retry(10_000, &failure("Io", false)));
    }

    #[test]
    fn workflow_task_backoff() {
        assert_eq!(workflow_task_retry_delay_ms(1), 1_000);
        assert_eq!(workflow_task_retry_delay_ms(2), 2_000);
        assert_eq!(workflow_task_retry_delay_ms(30), 60_000);
    }
}
