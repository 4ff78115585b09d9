//! Retry policies and backoff arithmetic for activities and workflow tasks.
//!
//! Integer arithmetic only: replicas must compute the same delay to the millisecond, and
//! floating-point functions such as `powi` are not specified to give the same bits on every
//! platform and compiler. The backoff coefficient is stored in thousandths (2.0 is 2000); the
//! node converts the wire's `double` once, before it proposes the command.
//!
//! Every duration and coefficient of a policy is validated ([`RetryPolicy::check`]) with an
//! error naming the field.

use serde::{Deserialize, Serialize};

use crate::limits::{self, BACKOFF_COEFFICIENT_MILLI_MAX, DURATION_MS_MAX, NON_RETRYABLE_ERROR_TYPES_MAX, invalid};
use crate::model::{Failure, Rejection};

pub const DEFAULT_INITIAL_INTERVAL_MS: u64 = 1_000;
/// The default backoff coefficient, in thousandths (2.0).
pub const DEFAULT_BACKOFF_COEFFICIENT_MILLI: u32 = 2_000;
/// The smallest coefficient, in thousandths (1.0: a constant delay).
pub const BACKOFF_COEFFICIENT_MILLI_MIN: u32 = 1_000;
/// Without an explicit maximum, the delay is capped at this multiple of the initial interval.
pub const DEFAULT_MAXIMUM_INTERVAL_FACTOR: u64 = 100;
/// Failed workflow tasks are retried after 1 s, doubling, at most this long apart.
pub const WORKFLOW_TASK_RETRY_MAX_MS: u64 = 60_000;

/// Fixed-point scale of the growth factor in [`RetryPolicy::delay_ms`].
const FACTOR_SCALE: u128 = 1_000_000;
/// The growth factor stops growing here (10^12 x, more than any delay within ten years
/// needs from a 1 ms initial interval); keeps every product within `u128`.
const FACTOR_CAP: u128 = FACTOR_SCALE * 1_000_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RetryPolicy {
    /// 0 means the default (1 s).
    pub initial_interval_ms: u64,
    /// Thousandths: 2000 is 2.0; 0 means the default (2.0); else 1000 (1.0) to 100000 (100.0).
    pub backoff_coefficient_milli: u32,
    /// 0 means 100 x the initial interval.
    pub maximum_interval_ms: u64,
    /// Attempts including the first; 0 means unlimited.
    pub maximum_attempts: u32,
    pub non_retryable_error_types: Vec<String>,
}

impl RetryPolicy {
    /// Checks every field; the error names the field (`retry_policy.initial_interval_ms`).
    pub fn check(&self) -> Result<(), Rejection> {
        let duration = |field: &str, ms: u64| {
            if ms > DURATION_MS_MAX {
                Err(invalid(format!(
                    "retry_policy.{field} of {ms} ms is longer than the limit of ten years ({DURATION_MS_MAX} ms)"
                )))
            } else {
                Ok(())
            }
        };
        duration("initial_interval_ms", self.initial_interval_ms)?;
        duration("maximum_interval_ms", self.maximum_interval_ms)?;
        if self.maximum_interval_ms != 0 && self.maximum_interval_ms < self.initial_ms() {
            return Err(invalid(format!(
                "retry_policy.maximum_interval_ms ({} ms) is shorter than the initial interval ({} ms)",
                self.maximum_interval_ms,
                self.initial_ms()
            )));
        }
        let coefficient = self.backoff_coefficient_milli;
        if coefficient != 0 && !(BACKOFF_COEFFICIENT_MILLI_MIN..=BACKOFF_COEFFICIENT_MILLI_MAX).contains(&coefficient) {
            return Err(invalid(format!(
                "retry_policy.backoff_coefficient must be 0 (the default, 2.0) or between 1.0 and 100.0, got {}.{:03}",
                coefficient / 1000,
                coefficient % 1000
            )));
        }
        if self.non_retryable_error_types.len() > NON_RETRYABLE_ERROR_TYPES_MAX {
            return Err(invalid(format!(
                "retry_policy.non_retryable_error_types lists {} types; the limit is {NON_RETRYABLE_ERROR_TYPES_MAX}",
                self.non_retryable_error_types.len()
            )));
        }
        for error_type in &self.non_retryable_error_types {
            limits::check_name("retry_policy.non_retryable_error_types entry", error_type)?;
        }
        Ok(())
    }

    fn initial_ms(&self) -> u64 {
        if self.initial_interval_ms == 0 { DEFAULT_INITIAL_INTERVAL_MS } else { self.initial_interval_ms }
    }

    fn coefficient_milli(&self) -> u32 {
        if self.backoff_coefficient_milli == 0 {
            DEFAULT_BACKOFF_COEFFICIENT_MILLI
        } else {
            self.backoff_coefficient_milli.clamp(BACKOFF_COEFFICIENT_MILLI_MIN, BACKOFF_COEFFICIENT_MILLI_MAX)
        }
    }

    fn maximum_ms(&self) -> u64 {
        let maximum = if self.maximum_interval_ms == 0 {
            self.initial_ms().saturating_mul(DEFAULT_MAXIMUM_INTERVAL_FACTOR)
        } else {
            self.maximum_interval_ms.max(self.initial_ms())
        };
        maximum.min(DURATION_MS_MAX.max(self.initial_ms()))
    }

    /// Delay before attempt `failed_attempt + 1`: initial x coefficient^(failed_attempt - 1),
    /// capped at the maximum interval. Integer fixed-point arithmetic, rounded down.
    pub fn delay_ms(&self, failed_attempt: u32) -> u64 {
        let exponent = failed_attempt.saturating_sub(1);
        let factor = fixed_pow(u128::from(self.coefficient_milli()) * (FACTOR_SCALE / 1000), exponent);
        let delay = u128::from(self.initial_ms()) * factor / FACTOR_SCALE;
        let maximum = self.maximum_ms();
        u64::try_from(delay).map_or(maximum, |delay| delay.min(maximum))
    }

    /// Whether a failure of attempt `attempt` may be retried: not marked
    /// non-retryable, its type not listed, and attempts left.
    pub fn allows_retry(&self, attempt: u32, failure: &Failure) -> bool {
        !failure.non_retryable
            && !self.non_retryable_error_types.contains(&failure.error_type)
            && (self.maximum_attempts == 0 || attempt < self.maximum_attempts)
    }
}

/// `base^exponent` in fixed point with scale [`FACTOR_SCALE`], by squaring; every
/// intermediate is capped at [`FACTOR_CAP`] (so products stay below 10^36 < `u128::MAX`).
fn fixed_pow(base: u128, mut exponent: u32) -> u128 {
    let multiply = |a: u128, b: u128| (a * b / FACTOR_SCALE).min(FACTOR_CAP);
    let mut result = FACTOR_SCALE;
    let mut base = base.min(FACTOR_CAP);
    while exponent > 0 {
        if exponent & 1 == 1 {
            result = multiply(result, base);
        }
        exponent >>= 1;
        if exponent > 0 {
            base = multiply(base, base);
        }
    }
    result
}

/// Backoff of a failed workflow task: 1 s doubling, capped at one minute.
pub fn workflow_task_retry_delay_ms(failed_attempt: u32) -> u64 {
    let shift = failed_attempt.saturating_sub(1).min(16);
    (1_000u64 << shift).min(WORKFLOW_TASK_RETRY_MAX_MS)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn failure(error_type: &str, non_retryable: bool) -> Failure {
        Failure { message: "boom".into(), error_type: error_type.into(), non_retryable, details: Default::default() }
    }

    #[test]
    fn delays_grow_by_the_coefficient_up_to_the_maximum() {
        let policy = RetryPolicy {
            initial_interval_ms: 100,
            backoff_coefficient_milli: 2_000,
            maximum_interval_ms: 500,
            ..Default::default()
        };
        let delays: Vec<u64> = (1..=5).map(|a| policy.delay_ms(a)).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
        let policy = RetryPolicy { initial_interval_ms: 1_000, backoff_coefficient_milli: 1_500, ..Default::default() };
        let delays: Vec<u64> = (1..=5).map(|a| policy.delay_ms(a)).collect();
        assert_eq!(delays, vec![1_000, 1_500, 2_250, 3_375, 5_062]);
        let constant = RetryPolicy { initial_interval_ms: 250, backoff_coefficient_milli: 1_000, ..Default::default() };
        assert_eq!(constant.delay_ms(u32::MAX), 250);
    }

    #[test]
    fn defaults_apply_to_zero_fields() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay_ms(1), 1_000);
        assert_eq!(policy.delay_ms(2), 2_000);
        assert_eq!(policy.delay_ms(100), 100_000, "capped at 100 x initial");
        assert_eq!(policy.delay_ms(u32::MAX), 100_000);
    }

    #[test]
    fn every_field_is_checked_by_name() {
        let cases = [
            (RetryPolicy { initial_interval_ms: 1_000_000_000_000_000, ..Default::default() }, "initial_interval_ms"),
            (RetryPolicy { maximum_interval_ms: u64::MAX, ..Default::default() }, "maximum_interval_ms"),
            (
                RetryPolicy { initial_interval_ms: 5_000, maximum_interval_ms: 1_000, ..Default::default() },
                "maximum_interval_ms",
            ),
            (RetryPolicy { backoff_coefficient_milli: 999, ..Default::default() }, "backoff_coefficient"),
            (RetryPolicy { backoff_coefficient_milli: 100_001, ..Default::default() }, "backoff_coefficient"),
            (
                RetryPolicy { non_retryable_error_types: vec![String::new()], ..Default::default() },
                "non_retryable_error_types",
            ),
            (
                RetryPolicy { non_retryable_error_types: vec!["E".into(); 101], ..Default::default() },
                "non_retryable_error_types",
            ),
        ];
        for (policy, field) in cases {
            let error = policy.check().expect_err("invalid");
            assert!(error.message.contains(field), "{field}: {}", error.message);
        }
        let limit = RetryPolicy {
            initial_interval_ms: DURATION_MS_MAX,
            maximum_interval_ms: DURATION_MS_MAX,
            backoff_coefficient_milli: 100_000,
            ..Default::default()
        };
        assert!(limit.check().is_ok());
        assert_eq!(limit.delay_ms(u32::MAX), DURATION_MS_MAX);
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

    proptest! {
        /// Any valid policy gives delays that never shrink from one attempt to the next and
        /// stay within [initial, maximum] (and the arithmetic never overflows or panics).
        #[test]
        fn delays_are_monotonic_and_bounded(
            initial in 0u64..=DURATION_MS_MAX, coefficient in prop_oneof![Just(0u32), 1_000u32..=100_000],
            maximum in 0u64..=DURATION_MS_MAX, attempt in 1u32..=u32::MAX - 1,
        ) {
            let policy = RetryPolicy { initial_interval_ms: initial, backoff_coefficient_milli: coefficient, maximum_interval_ms: maximum, ..Default::default() };
            prop_assume!(policy.check().is_ok());
            let (now, next) = (policy.delay_ms(attempt), policy.delay_ms(attempt + 1));
            prop_assert!(next >= now);
            prop_assert!(now >= policy.initial_ms().min(policy.maximum_ms()));
            prop_assert!(next <= policy.maximum_ms());
        }
    }
}
