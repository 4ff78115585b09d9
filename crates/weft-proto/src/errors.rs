//! Stable error types: the `error_type` of every failure Weft itself produces, shared by the
//! server, the core and the SDK, and listed with what to do in `docs/errors.md`.
//!
//! Invariants: a value never changes once released (users match on them, and retry policies
//! list them in `non_retryable_error_types`); a new one is added here and to `docs/errors.md`
//! in the same commit. This module depends on nothing, so the pure core can use it without
//! protobuf (`weft-proto` with `default-features = false`).

/// A workflow closed as canceled, or an operation resolved because a cancel was requested.
pub const CANCELED_ERROR_TYPE: &str = "Canceled";
/// A run was terminated by an operator (the result's failure).
pub const TERMINATED_ERROR_TYPE: &str = "Terminated";
/// A run reached 50,000 events or 50 MiB of history and was failed.
pub const HISTORY_LIMIT_ERROR_TYPE: &str = "HistoryLimitExceeded";
/// An activity attempt was not started within its schedule-to-start timeout.
pub const SCHEDULE_TO_START_TIMEOUT_ERROR_TYPE: &str = "ScheduleToStartTimeout";
/// An activity attempt ran longer than its start-to-close timeout.
pub const START_TO_CLOSE_TIMEOUT_ERROR_TYPE: &str = "StartToCloseTimeout";
/// An activity did not finish within its schedule-to-close timeout, retries included.
pub const SCHEDULE_TO_CLOSE_TIMEOUT_ERROR_TYPE: &str = "ScheduleToCloseTimeout";
/// An activity attempt sent no heartbeat within its heartbeat timeout.
pub const HEARTBEAT_TIMEOUT_ERROR_TYPE: &str = "HeartbeatTimeout";
/// Workflow code no longer matches the run's history (a workflow task failure).
pub const NON_DETERMINISM_ERROR_TYPE: &str = "NonDeterminism";
/// Workflow or activity code panicked.
pub const PANIC_ERROR_TYPE: &str = "Panic";
/// A payload could not be encoded or decoded (as JSON, by the Rust SDK).
pub const PAYLOAD_ERROR_TYPE: &str = "PayloadError";
/// Failures made from a plain error of the code, with no type of their own.
pub const GENERIC_ERROR_TYPE: &str = "Error";
/// A worker was given a workflow type it has not registered.
pub const UNKNOWN_WORKFLOW_TYPE_ERROR_TYPE: &str = "UnknownWorkflowType";
/// A worker was given an activity type it has not registered.
pub const UNKNOWN_ACTIVITY_TYPE_ERROR_TYPE: &str = "UnknownActivityType";
/// A worker got a history it cannot replay (a gap, or no `WorkflowStarted`).
pub const INVALID_HISTORY_ERROR_TYPE: &str = "InvalidHistory";
/// A worker could not fetch the history it needed to replay a run.
pub const HISTORY_FETCH_FAILED_ERROR_TYPE: &str = "HistoryFetchFailed";
/// Workflow code asked to continue as a new run (how the SDK reports it when it shows the
/// request as an error; a run that continues as new is not failed).
pub const CONTINUE_AS_NEW_ERROR_TYPE: &str = "ContinueAsNew";
/// An activity timed out and its history event does not say which timeout.
pub const TIMEOUT_ERROR_TYPE: &str = "Timeout";
/// The server refused a workflow task's completion (a command over a limit, an invalid
/// duration); the message is the server's.
pub const COMPLETION_REJECTED_ERROR_TYPE: &str = "CompletionRejected";
/// The server refused an activity's result (over the payload limit); the message is the
/// server's. Not retried.
pub const RESULT_REJECTED_ERROR_TYPE: &str = "ResultRejected";
/// A step attempt ran longer than the worker's maximum step duration (default 5 minutes);
/// retried per the step's policy. Long work belongs in an activity.
pub const STEP_TIMEOUT_ERROR_TYPE: &str = "StepTimeout";
/// Workflow code ran longer than the worker's maximum step duration plus the workflow task
/// timeout without waiting on the server (a workflow task failure).
pub const WORKFLOW_TASK_TOO_LONG_ERROR_TYPE: &str = "WorkflowTaskTooLong";

/// Every error type above, for documentation checks.
pub const ALL: &[&str] = &[
    CANCELED_ERROR_TYPE,
    TERMINATED_ERROR_TYPE,
    HISTORY_LIMIT_ERROR_TYPE,
    SCHEDULE_TO_START_TIMEOUT_ERROR_TYPE,
    START_TO_CLOSE_TIMEOUT_ERROR_TYPE,
    SCHEDULE_TO_CLOSE_TIMEOUT_ERROR_TYPE,
    HEARTBEAT_TIMEOUT_ERROR_TYPE,
    NON_DETERMINISM_ERROR_TYPE,
    PANIC_ERROR_TYPE,
    PAYLOAD_ERROR_TYPE,
    GENERIC_ERROR_TYPE,
    UNKNOWN_WORKFLOW_TYPE_ERROR_TYPE,
    UNKNOWN_ACTIVITY_TYPE_ERROR_TYPE,
    INVALID_HISTORY_ERROR_TYPE,
    HISTORY_FETCH_FAILED_ERROR_TYPE,
    CONTINUE_AS_NEW_ERROR_TYPE,
    TIMEOUT_ERROR_TYPE,
    COMPLETION_REJECTED_ERROR_TYPE,
    RESULT_REJECTED_ERROR_TYPE,
    STEP_TIMEOUT_ERROR_TYPE,
    WORKFLOW_TASK_TOO_LONG_ERROR_TYPE,
];

#[cfg(test)]
mod tests {
    use super::ALL;

    #[test]
    fn every_error_type_is_documented_once_and_distinct() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/errors.md");
        let docs = std::fs::read_to_string(path).expect("docs/errors.md");
        for error_type in ALL {
            let row = format!("| `{error_type}` |");
            assert_eq!(docs.matches(&row).count(), 1, "docs/errors.md has one row for {error_type}");
        }
        let mut sorted = ALL.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ALL.len(), "error types are distinct");
    }
}
