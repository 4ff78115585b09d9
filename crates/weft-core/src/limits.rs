//! Limits enforced on every input, with the messages users see.
//!
//! Defaults follow DESIGN.md: payloads 2 MiB, names 1 to 255 UTF-8 bytes,
//! 50,000 events or 50 MiB of history per run.

use crate::model::{ErrorCode, Rejection};

pub const PAYLOAD_BYTES_MAX: usize = 2 * 1024 * 1024;
pub const NAME_BYTES_MAX: usize = 255;
pub const HISTORY_EVENTS_MAX: u64 = 50_000;
pub const HISTORY_BYTES_MAX: u64 = 50 * 1024 * 1024;
/// Commands in one workflow task completion.
pub const COMMANDS_PER_TASK_MAX: usize = 1_000;
/// Signals buffered and not yet consumed by a run.
pub const BUFFERED_SIGNALS_MAX: usize = 10_000;
/// Activities, timers and signal waits open at once in one run.
pub const PENDING_OPERATIONS_MAX: usize = 10_000;
/// A timer or timeout may be at most ten years away.
pub const DURATION_MS_MAX: u64 = 10 * 365 * 24 * 3600 * 1000;
/// Failure messages are cut to this many bytes; cancel and terminate reasons are refused
/// beyond it.
pub const FAILURE_MESSAGE_BYTES_MAX: usize = 32 * 1024;
/// Client starts per workflow id whose request id is remembered: a retried start is answered
/// with its run while that run is among the last this many a client started under the id.
pub const START_REQUESTS_KEPT: usize = 64;
/// Signal request ids remembered per run chain (a run and the runs it continues): a retried
/// signal is recorded once while it is among the last this many signals recorded.
pub const SIGNAL_REQUEST_IDS_KEPT: usize = 1_000;
/// Entries of a retry policy's `non_retryable_error_types`.
pub const NON_RETRYABLE_ERROR_TYPES_MAX: usize = 100;
/// Largest backoff coefficient, in thousandths (100.0).
pub const BACKOFF_COEFFICIENT_MILLI_MAX: u32 = 100_000;

/// Checks a name (namespace, workflow id, type, task queue, signal, step,
/// activity): 1 to 255 UTF-8 bytes, no control characters.
pub fn check_name(what: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(invalid(format!("{what} must not be empty")));
    }
    if value.len() > NAME_BYTES_MAX {
        return Err(invalid(format!("{what} is {} bytes long; the limit is {NAME_BYTES_MAX} bytes", value.len())));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(format!("{what} {value:?} contains a control character")));
    }
    Ok(())
}

pub fn check_payload(what: &str, bytes: &[u8]) -> Result<(), Rejection> {
    if bytes.len() > PAYLOAD_BYTES_MAX {
        return Err(invalid(format!(
            "{what} is {} bytes; the payload limit is {PAYLOAD_BYTES_MAX} bytes (2 MiB)",
            bytes.len()
        )));
    }
    Ok(())
}

pub fn check_duration(what: &str, ms: u64) -> Result<(), Rejection> {
    if ms > DURATION_MS_MAX {
        return Err(invalid(format!("{what} of {ms} ms is longer than the limit of ten years")));
    }
    Ok(())
}

pub(crate) fn invalid(message: String) -> Rejection {
    Rejection { code: ErrorCode::InvalidArgument, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("workflow id", "order-1").is_ok());
        assert!(check_name("workflow id", &"x".repeat(255)).is_ok());
        let long = check_name("workflow id", &"x".repeat(256)).unwrap_err();
        assert_eq!(long.code, ErrorCode::InvalidArgument);
        assert!(long.message.contains("256 bytes"), "{}", long.message);
        assert!(check_name("workflow id", "").unwrap_err().message.contains("must not be empty"));
        assert!(check_name("task queue", "a\nb").is_err());
    }

    #[test]
    fn payloads_are_checked() {
        assert!(check_payload("input", &vec![b'x'; PAYLOAD_BYTES_MAX]).is_ok());
        let err = check_payload("input", &vec![b'x'; PAYLOAD_BYTES_MAX + 1]).unwrap_err();
        assert!(err.message.contains("2 MiB"), "{}", err.message);
    }
}

#[cfg(test)]
mod build_tests {
    /// The shipped build keeps assertions and overflow checks (per-package profile settings in
    /// the workspace manifest); this test runs in that same profile.
    #[test]
    fn assertions_and_overflow_checks_are_on_in_this_build() {
        let debug_assertions_on = std::hint::black_box(cfg!(debug_assertions));
        assert!(debug_assertions_on, "debug assertions are compiled out of weft-core");
        let overflowed = std::panic::catch_unwind(|| {
            let byte: u8 = std::hint::black_box(255);
            byte + 1
        });
        assert!(overflowed.is_err(), "overflow checks are off in weft-core");
    }
}
