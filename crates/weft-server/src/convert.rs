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

/// Bytes of history events one message carries at most (a workflow task, a history page),
/// unless its first event alone is larger (at most one payload, 2 MiB, plus its names and
/// details): far under the 64 MiB message limit ([`crate::GRPC_MESSAGE_BYTES_MAX`]), and
/// small enough that a worker replaying 50 MiB of history reads it in a dozen calls.
pub const HISTORY_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Builds the events of one message from a run's history, in order, within an event count
/// and a byte budget measured on the wire. The first event offered is always taken, so a
/// reader always moves forward; the first event that does not fit is left for the next
/// message, and [`HistoryPager::next_event_id`] names it.
#[derive(Debug)]
pub struct HistoryPager {
    events: Vec<pb::HistoryEvent>,
    bytes: usize,
    events_max: usize,
    bytes_max: usize,
    next_event_id: Option<u64>,
}

impl HistoryPager {
    pub fn new(events_max: usize, bytes_max: usize) -> Self {
        HistoryPager { events: Vec::new(), bytes: 0, events_max: events_max.max(1), bytes_max, next_event_id: None }
    }

    /// Takes `event` if it fits; breaks once the page is full (`event` is then left out).
    pub fn offer(&mut self, event: HistoryEvent) -> std::ops::ControlFlow<()> {
        if self.next_event_id.is_some() {
            return std::ops::ControlFlow::Break(());
        }
        let event_id = event.event_id;
        let wire = event_into_proto(event);
        let bytes = weft_proto::repeated_field_bytes(&wire);
        let full = self.events.len() >= self.events_max || self.bytes + bytes > self.bytes_max;
        if full && !self.events.is_empty() {
            self.next_event_id = Some(event_id);
            return std::ops::ControlFlow::Break(());
        }
        self.bytes += bytes;
        self.events.push(wire);
        std::ops::ControlFlow::Continue(())
    }

    /// The first event offered and left out: the page was full before it. `None` while every
    /// event offered was taken.
    pub fn next_event_id(&self) -> Option<u64> {
        self.next_event_id
    }

    /// The id of the last event taken.
    pub fn last_event_id(&self) -> Option<u64> {
        self.events.last().map(|event| event.event_id)
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The wire size of the events taken, as fields of a repeated message field.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn into_events(self) -> Vec<pb::HistoryEvent> {
        self.events
    }
}

/// A history event on the wire: typed fields for replay, all attributes as JSON for people.
pub fn event_to_proto(event: &HistoryEvent) -> pb::HistoryEvent {
    event_into_proto(event.clone())
}

/// [`event_to_proto`] of an event the caller no longer needs: its payloads are copied once.
pub fn event_into_proto(mut event: HistoryEvent) -> pb::HistoryEvent {
    let details_json = details_json(&mut event.kind);
    let mut out = pb::HistoryEvent {
        event_id: event.event_id,
        time_ms: event.time_ms,
        event_type: event_type(&event.kind) as i32,
        seq: event.kind.seq().unwrap_or(0),
        details_json,
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

/// The attributes of the event as JSON, for people and tools, without the payload bytes: a
/// payload (an input, a result, a signal's payload, a failure's details) travels once, in the
/// event's typed `payload` or `failure.details`, and appears here as its size,
/// `{"size_bytes": N}` (null when empty). A history of 2 MiB results would otherwise carry
/// each result twice, and up to six times its size for bytes that JSON must escape.
///
/// The payload bytes are moved out of `kind` while it is rendered and moved back after, so
/// rendering copies no payload.
fn details_json(kind: &mut EventKind) -> String {
    let (payload, failure) = payload_attributes(kind);
    let payload = payload.map(|(name, payload)| (name, std::mem::take(payload)));
    let failure_details = failure.map(|failure| std::mem::take(&mut failure.details));
    // Externally tagged enum: {"StepCompleted": {...}}; show only the attributes.
    let rendered = match serde_json::to_value(&*kind) {
        Ok(serde_json::Value::Object(map)) => map.into_iter().next().map_or(serde_json::Value::Null, |(_, a)| a),
        Ok(other) => other,
        Err(_) => serde_json::json!({}),
    };
    let mut value = rendered;
    if let serde_json::Value::Object(map) = &mut value {
        if let Some((name, bytes)) = &payload {
            map.insert((*name).into(), payload_size_json(bytes.len()));
        }
        if let (Some(details), Some(serde_json::Value::Object(failure))) = (&failure_details, map.get_mut("failure")) {
            failure.insert("details".into(), payload_size_json(details.len()));
        }
    }
    let (payload_slot, failure_slot) = payload_attributes(kind);
    if let (Some((_, slot)), Some((_, bytes))) = (payload_slot, payload) {
        *slot = bytes;
    }
    if let (Some(failure), Some(details)) = (failure_slot, failure_details) {
        failure.details = details;
    }
    value.to_string()
}

/// How `details_json` shows a payload of `len` bytes.
fn payload_size_json(len: usize) -> serde_json::Value {
    if len == 0 { serde_json::Value::Null } else { serde_json::json!({ "size_bytes": len }) }
}

/// The event's payload attribute (its name and value) and its failure, the attributes whose
/// bytes the typed fields of the wire event carry.
fn payload_attributes(kind: &mut EventKind) -> (Option<(&'static str, &mut Payload)>, Option<&mut Failure>) {
    match kind {
        EventKind::WorkflowStarted { input, .. }
        | EventKind::ActivityScheduled { input, .. }
        | EventKind::WorkflowContinuedAsNew { input, .. } => (Some(("input", input)), None),
        EventKind::StepCompleted { result, .. }
        | EventKind::ActivityCompleted { result, .. }
        | EventKind::WorkflowCompleted { result } => (Some(("result", result)), None),
        EventKind::SignalReceived { payload, .. } | EventKind::SignalConsumed { payload, .. } => {
            (Some(("payload", payload)), None)
        }
        EventKind::WorkflowTaskFailed { failure, .. }
        | EventKind::StepFailed { failure, .. }
        | EventKind::ActivityAttemptFailed { failure, .. }
        | EventKind::ActivityFailed { failure, .. }
        | EventKind::WorkflowFailed { failure }
        | EventKind::WorkflowCanceled { failure } => (None, Some(failure)),
        EventKind::WorkflowTaskScheduled { .. }
        | EventKind::WorkflowTaskStarted { .. }
        | EventKind::WorkflowTaskCompleted { .. }
        | EventKind::WorkflowTaskTimedOut { .. }
        | EventKind::ActivityStarted { .. }
        | EventKind::ActivityTimedOut { .. }
        | EventKind::ActivityCanceled { .. }
        | EventKind::TimerStarted { .. }
        | EventKind::TimerFired { .. }
        | EventKind::TimerCanceled { .. }
        | EventKind::SignalWaitStarted { .. }
        | EventKind::SignalWaitTimedOut { .. }
        | EventKind::SignalWaitCanceled { .. }
        | EventKind::CancelRequested { .. }
        | EventKind::WorkflowTerminated { .. } => (None, None),
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

#[cfg(test)]
mod tests {
    use weft_proto::Message;

    use super::*;

    fn event(event_id: u64, kind: EventKind) -> HistoryEvent {
        HistoryEvent { event_id, time_ms: 1_000 + event_id, kind }
    }

    /// A JSON string payload of `len` bytes, quotes included.
    fn text_payload(letter: char, len: usize) -> Payload {
        Payload(format!("\"{}\"", std::iter::repeat_n(letter, len - 2).collect::<String>()).into_bytes())
    }

    fn failure(details: Payload) -> Failure {
        Failure { message: "it broke".into(), error_type: "Broken".into(), non_retryable: false, details }
    }

    /// Every kind of event that holds a payload, holding `payload`.
    fn payload_events(payload: &Payload) -> Vec<EventKind> {
        vec![
            EventKind::WorkflowStarted {
                workflow_type: "order".into(),
                task_queue: "orders".into(),
                input: payload.clone(),
                request_id: "r-1".into(),
                continued_from_run_id: None,
                workflow_task_timeout_ms: 5_000,
            },
            EventKind::StepCompleted { seq: 1, name: "reserve".into(), result: payload.clone(), attempts: 1 },
            EventKind::StepFailed { seq: 1, name: "reserve".into(), failure: failure(payload.clone()), attempts: 2 },
            EventKind::ActivityScheduled {
                seq: 2,
                activity_type: "charge".into(),
                task_queue: "orders".into(),
                input: payload.clone(),
                retry_policy: RetryPolicy::default(),
                options: ActivityOptions::default(),
            },
            EventKind::ActivityCompleted { seq: 2, attempt: 1, result: payload.clone() },
            EventKind::ActivityAttemptFailed {
                seq: 2,
                attempt: 1,
                failure: failure(payload.clone()),
                next_attempt_ms: 9,
            },
            EventKind::ActivityFailed { seq: 2, attempt: 3, failure: failure(payload.clone()) },
            EventKind::WorkflowTaskFailed { scheduled_event_id: 2, attempt: 1, failure: failure(payload.clone()) },
            EventKind::SignalReceived { name: "approve".into(), payload: payload.clone() },
            EventKind::SignalConsumed { seq: 3, name: "approve".into(), payload: payload.clone() },
            EventKind::WorkflowCompleted { result: payload.clone() },
            EventKind::WorkflowFailed { failure: failure(payload.clone()) },
            EventKind::WorkflowCanceled { failure: failure(payload.clone()) },
            EventKind::WorkflowContinuedAsNew { new_run_id: "run-2".into(), input: payload.clone() },
        ]
    }

    #[test]
    fn a_wire_event_carries_its_payload_once() {
        // A JSON text payload and bytes that are not JSON (each shown as a 3-byte U+FFFD,
        // escaped in JSON: the rendering that made details up to 6x the payload).
        for payload in [text_payload('x', 100_000), Payload(vec![0xff; 100_000])] {
            for kind in payload_events(&payload) {
                let name = kind.type_name();
                let wire = event_to_proto(&event(4, kind));
                let typed = wire.failure.as_ref().map_or(&wire.payload, |failure| &failure.details);
                assert_eq!(typed, &payload.0, "{name}: the typed field carries the payload");
                assert!(wire.details_json.len() < 1_000, "{name}: details_json is {} bytes", wire.details_json.len());
                assert!(
                    wire.encoded_len() < payload.len() + 1_000,
                    "{name}: the event is {} bytes on the wire for a payload of {}",
                    wire.encoded_len(),
                    payload.len()
                );
                let details: serde_json::Value = serde_json::from_str(&wire.details_json).expect("details are JSON");
                let shown = if wire.failure.is_some() {
                    details["failure"].get("details")
                } else {
                    ["input", "result", "payload"].iter().find_map(|field| details.get(*field))
                };
                assert_eq!(shown, Some(&serde_json::json!({ "size_bytes": payload.len() })), "{name}: {details}");
            }
        }
    }

    #[test]
    fn details_json_keeps_the_attributes_replay_reads() {
        let started = event_to_proto(&event(1, payload_events(&text_payload('x', 10))[0].clone()));
        let details: serde_json::Value = serde_json::from_str(&started.details_json).expect("JSON");
        assert_eq!(details["workflow_task_timeout_ms"], 5_000);
        assert_eq!(details["request_id"], "r-1");
        let task_started = event_to_proto(&event(
            3,
            EventKind::WorkflowTaskStarted { scheduled_event_id: 2, attempt: 1, seen_event_id: 2 },
        ));
        let details: serde_json::Value = serde_json::from_str(&task_started.details_json).expect("JSON");
        assert_eq!(details, serde_json::json!({"scheduled_event_id": 2, "attempt": 1, "seen_event_id": 2}));
        let empty = event_to_proto(&event(9, EventKind::WorkflowCompleted { result: Payload::default() }));
        assert_eq!(empty.details_json, r#"{"result":null}"#);
        let failed = event_to_proto(&event(9, EventKind::WorkflowFailed { failure: failure(Payload::default()) }));
        let details: serde_json::Value = serde_json::from_str(&failed.details_json).expect("JSON");
        assert_eq!(details["failure"]["message"], "it broke");
        assert_eq!(details["failure"]["details"], serde_json::Value::Null);
    }

    fn completed(event_id: u64, payload_bytes: usize) -> HistoryEvent {
        event(event_id, EventKind::ActivityCompleted { seq: 1, attempt: 1, result: text_payload('y', payload_bytes) })
    }

    #[test]
    fn a_page_is_cut_by_bytes_and_always_takes_one_event() {
        const MIB: usize = 1024 * 1024;
        let mut page = HistoryPager::new(1_000, 4 * MIB);
        let events: Vec<HistoryEvent> = (1..=6).map(|id| completed(id, MIB)).collect();
        let taken = events.iter().take_while(|event| page.offer((*event).clone()).is_continue()).count();
        assert_eq!(taken, 3, "three 1 MiB events fit in 4 MiB, four do not");
        assert_eq!(page.next_event_id(), Some(4));
        assert_eq!(page.last_event_id(), Some(3));
        assert!(page.offer(events[4].clone()).is_break(), "a full page takes nothing more");
        assert_eq!(page.next_event_id(), Some(4), "and still names the first event it left out");

        let mut page = HistoryPager::new(1_000, MIB);
        assert!(page.offer(completed(1, 2 * MIB)).is_continue(), "an event larger than the page is taken alone");
        assert!(page.offer(completed(2, 10)).is_break());
        assert_eq!((page.last_event_id(), page.next_event_id()), (Some(1), Some(2)));

        let mut page = HistoryPager::new(2, MIB);
        let taken =
            (1..=5).map(|id| completed(id, 10)).take_while(|event| page.offer(event.clone()).is_continue()).count();
        assert_eq!((taken, page.next_event_id()), (2, Some(3)), "the event count is a limit too");

        let mut page = HistoryPager::new(10, MIB);
        assert!((1..=4).all(|id| page.offer(completed(id, 10)).is_continue()));
        assert_eq!(page.next_event_id(), None, "everything offered fit");
    }

    #[test]
    fn pages_hold_every_event_once_in_order_within_their_bytes() {
        const BUDGET: usize = 300_000;
        // Sizes from tiny to larger than a page, in an order that cuts pages unevenly.
        let sizes = [10, 250_000, 40_000, 40_000, 400_000, 10, 10, 299_000, 120_000, 120_000, 120_000, 5];
        let events: Vec<HistoryEvent> =
            sizes.iter().enumerate().map(|(i, &len)| completed(i as u64 + 1, len)).collect();
        let mut from = 1;
        let mut seen = Vec::new();
        loop {
            let mut page = HistoryPager::new(1_000, BUDGET);
            for event in events.iter().skip(from as usize - 1) {
                if page.offer(event.clone()).is_break() {
                    break;
                }
            }
            let bytes = page.bytes();
            let next = page.next_event_id();
            let wire = page.into_events();
            let response = pb::GetWorkflowHistoryResponse { run_id: String::new(), events: wire, next_event_id: 0 };
            assert_eq!(bytes, response.encoded_len(), "the page measures its events as they are encoded");
            assert!(bytes <= BUDGET || response.events.len() == 1, "page from {from}: {bytes} bytes");
            seen.extend(response.events.iter().map(|e| e.event_id));
            match next {
                Some(next) => from = next,
                None => break,
            }
        }
        assert_eq!(seen, (1..=sizes.len() as u64).collect::<Vec<_>>());
    }
}
