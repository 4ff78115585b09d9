//! Conversions between `weft.v1` wire types and `weft-core` domain types.
//!
//! The only place the server translates protobuf; invalid wire values become
//! `INVALID_ARGUMENT` statuses with a message that names the field.

use tonic::Status;
use weft_core::command::StepOutcome;
use weft_core::{
    ActivityOptions, EventKind, Failure, HistoryEvent, Payload, RetryPolicy, RunStatus, RunSummary, WorkflowCommand,
};
use weft_proto::v1 as pb;

pub fn failure_from_proto(failure: Option<pb::Failure>) -> Failure {
    match failure {
        Some(f) => Failure {
            message: f.message,
            error_type: f.error_type,
            non_retryable: f.non_retryable,
            details: Payload(f.details),
        },
        None => Failure::new("Unknown", "no failure was given"),
    }
}

pub fn failure_to_proto(failure: &Failure) -> pb::Failure {
    pb::Failure {
        message: failure.message.clone(),
        error_type: failure.error_type.clone(),
        non_retryable: failure.non_retryable,
        details: failure.details.0.clone(),
    }
}

/// Largest backoff coefficient accepted on the wire.
pub const BACKOFF_COEFFICIENT_MAX: f64 = 100.0;

/// A retry policy from the wire. The coefficient becomes integer thousandths here, once, on
/// the node that proposes the command (so replicas never round floating point); the rest of
/// the policy is checked by the core, which names the field of any error.
pub fn retry_policy_from_proto(policy: Option<pb::RetryPolicy>) -> Result<RetryPolicy, Status> {
    let Some(p) = policy else { return Ok(RetryPolicy::default()) };
    let coefficient = p.backoff_coefficient;
    let valid =
        coefficient == 0.0 || (coefficient.is_finite() && (1.0..=BACKOFF_COEFFICIENT_MAX).contains(&coefficient));
    if !valid {
        return Err(Status::invalid_argument(format!(
            "retry_policy.backoff_coefficient must be 0 (the default, 2.0) or between 1.0 and {BACKOFF_COEFFICIENT_MAX}, got {coefficient}"
        )));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "checked to be within 0..=100 above")]
    let backoff_coefficient_milli = (coefficient * 1000.0).round() as u32;
    Ok(RetryPolicy {
        initial_interval_ms: p.initial_interval_ms,
        backoff_coefficient_milli,
        maximum_interval_ms: p.maximum_interval_ms,
        maximum_attempts: p.maximum_attempts,
        non_retryable_error_types: p.non_retryable_error_types,
    })
}

pub fn retry_policy_to_proto(policy: &RetryPolicy) -> pb::RetryPolicy {
    pb::RetryPolicy {
        initial_interval_ms: policy.initial_interval_ms,
        backoff_coefficient: f64::from(policy.backoff_coefficient_milli) / 1000.0,
        maximum_interval_ms: policy.maximum_interval_ms,
        maximum_attempts: policy.maximum_attempts,
        non_retryable_error_types: policy.non_retryable_error_types.clone(),
    }
}

pub fn status_to_proto(status: RunStatus) -> pb::WorkflowStatus {
    match status {
        RunStatus::Running => pb::WorkflowStatus::Running,
        RunStatus::Completed => pb::WorkflowStatus::Completed,
        RunStatus::Failed => pb::WorkflowStatus::Failed,
        RunStatus::Canceled => pb::WorkflowStatus::Canceled,
        RunStatus::Terminated => pb::WorkflowStatus::Terminated,
        RunStatus::ContinuedAsNew => pb::WorkflowStatus::ContinuedAsNew,
        RunStatus::TimedOut => pb::WorkflowStatus::TimedOut,
    }
}

pub fn status_from_proto(status: pb::WorkflowStatus) -> Option<RunStatus> {
    Some(match status {
        pb::WorkflowStatus::Unspecified => return None,
        pb::WorkflowStatus::Running => RunStatus::Running,
        pb::WorkflowStatus::Completed => RunStatus::Completed,
        pb::WorkflowStatus::Failed => RunStatus::Failed,
        pb::WorkflowStatus::Canceled => RunStatus::Canceled,
        pb::WorkflowStatus::Terminated => RunStatus::Terminated,
        pb::WorkflowStatus::ContinuedAsNew => RunStatus::ContinuedAsNew,
        pb::WorkflowStatus::TimedOut => RunStatus::TimedOut,
    })
}

pub fn summary_to_proto(summary: &RunSummary, shard: u32) -> pb::WorkflowInfo {
    pb::WorkflowInfo {
        namespace: summary.key.namespace.clone(),
        workflow_id: summary.key.workflow_id.clone(),
        run_id: summary.run_id.clone(),
        workflow_type: summary.workflow_type.clone(),
        task_queue: summary.task_queue.clone(),
        status: status_to_proto(summary.status) as i32,
        start_time_ms: summary.start_ms,
        close_time_ms: summary.close_ms,
        history_length: summary.history_length,
        shard_id: shard,
    }
}

fn event_type(kind: &EventKind) -> pb::EventType {
    use pb::EventType as T;
    match kind {
        EventKind::WorkflowStarted { .. } => T::WorkflowStarted,
        EventKind::WorkflowTaskScheduled { .. } => T::WorkflowTaskScheduled,
        EventKind::WorkflowTaskStarted { .. } => T::WorkflowTaskStarted,
        EventKind::WorkflowTaskCompleted { .. } => T::WorkflowTaskCompleted,
        EventKind::WorkflowTaskFailed { .. } => T::WorkflowTaskFailed,
        EventKind::WorkflowTaskTimedOut { .. } => T::WorkflowTaskTimedOut,
        EventKind::StepCompleted { .. } => T::StepCompleted,
        EventKind::StepFailed { .. } => T::StepFailed,
        EventKind::ActivityScheduled { .. } => T::ActivityScheduled,
        EventKind::ActivityStarted { .. } => T::ActivityStarted,
        EventKind::ActivityCompleted { .. } => T::ActivityCompleted,
        EventKind::ActivityAttemptFailed { .. } => T::ActivityAttemptFailed,
        EventKind::ActivityFailed { .. } => T::ActivityFailed,
        EventKind::ActivityTimedOut { .. } => T::ActivityTimedOut,
        EventKind::ActivityCanceled { .. } => T::ActivityCanceled,
        EventKind::TimerStarted { .. } => T::TimerStarted,
        EventKind::TimerFired { .. } => T::TimerFired,
        EventKind::TimerCanceled { .. } => T::TimerCanceled,
        EventKind::SignalReceived { .. } => T::SignalReceived,
        EventKind::SignalWaitStarted { .. } => T::SignalWaitStarted,
        EventKind::SignalConsumed { .. } => T::SignalConsumed,
        EventKind::SignalWaitTimedOut { .. } => T::SignalWaitTimedOut,
        EventKind::SignalWaitCanceled { .. } => T::SignalWaitCanceled,
        EventKind::CancelRequested { .. } => T::CancelRequested,
        EventKind::WorkflowCompleted { .. } => T::WorkflowCompleted,
        EventKind::WorkflowFailed { .. } => T::WorkflowFailed,
        EventKind::WorkflowCanceled { .. } => T::WorkflowCanceled,
        EventKind::WorkflowTerminated { .. } => T::WorkflowTerminated,
        EventKind::WorkflowContinuedAsNew { .. } => T::WorkflowContinuedAsNew,
    }
}

/// A history event on the wire: typed fields for replay, all attributes as JSON for people.
pub fn event_to_proto(event: &HistoryEvent) -> pb::HistoryEvent {
    let mut out = pb::HistoryEvent {
        event_id: event.event_id,
        time_ms: event.time_ms,
        event_type: event_type(&event.kind) as i32,
        seq: event.kind.seq().unwrap_or(0),
        details_json: details_json(&event.kind),
        ..Default::default()
    };
    match &event.kind {
        EventKind::WorkflowStarted { workflow_type, input, .. } => {
            out.name = workflow_type.clone();
            out.payload = input.0.clone();
        }
        EventKind::WorkflowTaskScheduled { attempt }
        | EventKind::WorkflowTaskStarted { attempt, .. }
        | EventKind::WorkflowTaskTimedOut { attempt, .. } => out.attempt = *attempt,
        EventKind::WorkflowTaskFailed { attempt, failure, .. } => {
            out.attempt = *attempt;
            out.failure = Some(failure_to_proto(failure));
        }
        EventKind::WorkflowTaskCompleted { .. } => {}
        EventKind::StepCompleted { name, result, attempts, .. } => {
            out.name = name.clone();
            out.payload = result.0.clone();
            out.attempt = *attempts;
        }
        EventKind::StepFailed { name, failure, attempts, .. } => {
            out.name = name.clone();
            out.failure = Some(failure_to_proto(failure));
            out.attempt = *attempts;
        }
        EventKind::ActivityScheduled { activity_type, input, .. } => {
            out.name = activity_type.clone();
            out.payload = input.0.clone();
        }
        EventKind::ActivityStarted { attempt, .. } => out.attempt = *attempt,
        EventKind::ActivityCompleted { attempt, result, .. } => {
            out.attempt = *attempt;
            out.payload = result.0.clone();
        }
        EventKind::ActivityAttemptFailed { attempt, failure, .. }
        | EventKind::ActivityFailed { attempt, failure, .. } => {
            out.attempt = *attempt;
            out.failure = Some(failure_to_proto(failure));
        }
        EventKind::ActivityTimedOut { attempt, timeout, .. } => {
            out.attempt = *attempt;
            out.failure = Some(pb::Failure {
                // The type says which timeout; the message must not repeat it (a failure is
                // shown as "message (type)").
                message: format!("the activity timed out (attempt {attempt})"),
                error_type: timeout.error_type().to_string(),
                non_retryable: true,
                details: Vec::new(),
            });
        }
        EventKind::ActivityCanceled { .. } => {
            out.failure = Some(pb::Failure {
                message: "the workflow was asked to cancel".into(),
                error_type: weft_proto::errors::CANCELED_ERROR_TYPE.into(),
                non_retryable: true,
                details: Vec::new(),
            })
        }
        EventKind::TimerStarted { .. } | EventKind::TimerFired { .. } | EventKind::TimerCanceled { .. } => {}
        EventKind::SignalReceived { name, payload } | EventKind::SignalConsumed { name, payload, .. } => {
            out.name = name.clone();
            out.payload = payload.0.clone();
        }
        EventKind::SignalWaitStarted { name, .. }
        | EventKind::SignalWaitTimedOut { name, .. }
        | EventKind::SignalWaitCanceled { name, .. } => out.name = name.clone(),
        EventKind::CancelRequested { reason } | EventKind::WorkflowTerminated { reason } => out.name = reason.clone(),
        EventKind::WorkflowCompleted { result } => out.payload = result.0.clone(),
        EventKind::WorkflowFailed { failure } | EventKind::WorkflowCanceled { failure } => {
            out.failure = Some(failure_to_proto(failure))
        }
        EventKind::WorkflowContinuedAsNew { new_run_id, input } => {
            out.name = new_run_id.clone();
            out.payload = input.0.clone();
        }
    }
    out
}

/// Every attribute of the event as JSON (payloads shown as the JSON they hold).
fn details_json(kind: &EventKind) -> String {
    // Externally tagged enum: {"StepCompleted": {...}}; show only the attributes.
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::Object(map)) => match map.into_iter().next() {
            Some((_, attributes)) => attributes.to_string(),
            None => "{}".into(),
        },
        Ok(other) => other.to_string(),
        Err(_) => "{}".into(),
    }
}

fn bad(index: usize, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("commands[{index}]: {message}"))
}

pub fn commands_from_proto(commands: Vec<pb::WorkflowCommand>) -> Result<Vec<WorkflowCommand>, Status> {
    use pb::workflow_command::Command as C;
    commands
        .into_iter()
        .enumerate()
        .map(|(index, command)| {
            let Some(command) = command.command else { return Err(bad(index, "empty command")) };
            Ok(match command {
                C::RecordStep(step) => WorkflowCommand::RecordStep {
                    seq: step.seq,
                    name: step.name,
                    outcome: match step.failure {
                        Some(failure) => StepOutcome::Failed(failure_from_proto(Some(failure))),
                        None => StepOutcome::Completed(Payload(step.result)),
                    },
                    attempts: step.attempts.max(1),
                },
                C::ScheduleActivity(activity) => WorkflowCommand::ScheduleActivity {
                    seq: activity.seq,
                    activity_type: activity.activity_type,
                    task_queue: activity.task_queue,
                    input: Payload(activity.input),
                    retry_policy: retry_policy_from_proto(activity.retry_policy)
                        .map_err(|s| bad(index, s.message()))?,
                    options: ActivityOptions {
                        schedule_to_start_timeout_ms: activity.schedule_to_start_timeout_ms,
                        start_to_close_timeout_ms: activity.start_to_close_timeout_ms,
                        schedule_to_close_timeout_ms: activity.schedule_to_close_timeout_ms,
                        heartbeat_timeout_ms: activity.heartbeat_timeout_ms,
                    },
                },
                C::StartTimer(timer) => WorkflowCommand::StartTimer { seq: timer.seq, duration_ms: timer.duration_ms },
                C::CancelTimer(timer) => WorkflowCommand::CancelTimer { seq: timer.seq },
                C::WaitSignal(wait) => {
                    WorkflowCommand::WaitSignal { seq: wait.seq, name: wait.signal_name, timeout_ms: wait.timeout_ms }
                }
                C::CompleteWorkflow(complete) => WorkflowCommand::CompleteWorkflow { result: Payload(complete.result) },
                C::FailWorkflow(fail) => WorkflowCommand::FailWorkflow { failure: failure_from_proto(fail.failure) },
                C::ContinueAsNew(next) => WorkflowCommand::ContinueAsNew {
                    input: Payload(next.input),
                    workflow_type: next.workflow_type,
                    task_queue: next.task_queue,
                },
            })
        })
        .collect()
}
