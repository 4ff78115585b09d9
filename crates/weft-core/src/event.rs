//! History events: the append-only record of a run.
//!
//! Invariants (checked by `validate_history` in tests): event ids are 1, 2, 3,
//! ... without gaps; the first event is `WorkflowStarted`; every completion
//! matches an open schedule; nothing follows the closing event.

use serde::{Deserialize, Serialize};

use crate::model::{ActivityOptions, Failure, TimeoutKind};
use crate::payload::Payload;
use crate::retry::RetryPolicy;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub event_id: u64,
    pub time_ms: u64,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    WorkflowStarted {
        workflow_type: String,
        task_queue: String,
        input: Payload,
        request_id: String,
        /// The run this one continues, for continue-as-new.
        continued_from_run_id: Option<String>,
        workflow_task_timeout_ms: u64,
    },
    WorkflowTaskScheduled {
        attempt: u32,
    },
    WorkflowTaskStarted {
        scheduled_event_id: u64,
        attempt: u32,
        /// The last event the worker was handed with the task: what the code saw. Events after
        /// it and before this one arrived while the task ran; a replay feeds them with the next
        /// task, as the live worker got them.
        seen_event_id: u64,
    },
    WorkflowTaskCompleted {
        scheduled_event_id: u64,
    },
    WorkflowTaskFailed {
        scheduled_event_id: u64,
        attempt: u32,
        failure: Failure,
    },
    WorkflowTaskTimedOut {
        scheduled_event_id: u64,
        attempt: u32,
    },
    StepCompleted {
        seq: u32,
        name: String,
        result: Payload,
        attempts: u32,
    },
    StepFailed {
        seq: u32,
        name: String,
        failure: Failure,
        attempts: u32,
    },
    ActivityScheduled {
        seq: u32,
        activity_type: String,
        task_queue: String,
        input: Payload,
        retry_policy: RetryPolicy,
        options: ActivityOptions,
    },
    ActivityStarted {
        seq: u32,
        attempt: u32,
    },
    ActivityCompleted {
        seq: u32,
        attempt: u32,
        result: Payload,
    },
    ActivityAttemptFailed {
        seq: u32,
        attempt: u32,
        failure: Failure,
        next_attempt_ms: u64,
    },
    ActivityFailed {
        seq: u32,
        attempt: u32,
        failure: Failure,
    },
    ActivityTimedOut {
        seq: u32,
        attempt: u32,
        timeout: TimeoutKind,
    },
    ActivityCanceled {
        seq: u32,
    },
    TimerStarted {
        seq: u32,
        duration_ms: u64,
        fire_ms: u64,
    },
    TimerFired {
        seq: u32,
    },
    TimerCanceled {
        seq: u32,
    },
    SignalReceived {
        name: String,
        payload: Payload,
    },
    SignalWaitStarted {
        seq: u32,
        name: String,
        timeout_ms: u64,
    },
    SignalConsumed {
        seq: u32,
        name: String,
        payload: Payload,
    },
    SignalWaitTimedOut {
        seq: u32,
        name: String,
    },
    SignalWaitCanceled {
        seq: u32,
        name: String,
    },
    CancelRequested {
        reason: String,
    },
    WorkflowCompleted {
        result: Payload,
    },
    WorkflowFailed {
        failure: Failure,
    },
    WorkflowCanceled {
        failure: Failure,
    },
    WorkflowTerminated {
        reason: String,
    },
    WorkflowContinuedAsNew {
        new_run_id: String,
        input: Payload,
    },
}

impl EventKind {
    /// Whether the workflow code must be run to see this event: it resolves an operation the
    /// code waits on, or asks the code to cancel. Informational events (an activity attempt
    /// started or failed and will be retried, a signal buffered until a wait consumes it) and
    /// the records of the code's own commands do not.
    pub fn wakes_workflow(&self) -> bool {
        matches!(
            self,
            EventKind::ActivityCompleted { .. }
                | EventKind::ActivityFailed { .. }
                | EventKind::ActivityTimedOut { .. }
                | EventKind::ActivityCanceled { .. }
                | EventKind::TimerFired { .. }
                | EventKind::TimerCanceled { .. }
                | EventKind::SignalConsumed { .. }
                | EventKind::SignalWaitTimedOut { .. }
                | EventKind::SignalWaitCanceled { .. }
                | EventKind::CancelRequested { .. }
        )
    }

    /// The event's type name, as shown to people (`StepCompleted`).
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::WorkflowStarted { .. } => "WorkflowStarted",
            EventKind::WorkflowTaskScheduled { .. } => "WorkflowTaskScheduled",
            EventKind::WorkflowTaskStarted { .. } => "WorkflowTaskStarted",
            EventKind::WorkflowTaskCompleted { .. } => "WorkflowTaskCompleted",
            EventKind::WorkflowTaskFailed { .. } => "WorkflowTaskFailed",
            EventKind::WorkflowTaskTimedOut { .. } => "WorkflowTaskTimedOut",
            EventKind::StepCompleted { .. } => "StepCompleted",
            EventKind::StepFailed { .. } => "StepFailed",
            EventKind::ActivityScheduled { .. } => "ActivityScheduled",
            EventKind::ActivityStarted { .. } => "ActivityStarted",
            EventKind::ActivityCompleted { .. } => "ActivityCompleted",
            EventKind::ActivityAttemptFailed { .. } => "ActivityAttemptFailed",
            EventKind::ActivityFailed { .. } => "ActivityFailed",
            EventKind::ActivityTimedOut { .. } => "ActivityTimedOut",
            EventKind::ActivityCanceled { .. } => "ActivityCanceled",
            EventKind::TimerStarted { .. } => "TimerStarted",
            EventKind::TimerFired { .. } => "TimerFired",
            EventKind::TimerCanceled { .. } => "TimerCanceled",
            EventKind::SignalReceived { .. } => "SignalReceived",
            EventKind::SignalWaitStarted { .. } => "SignalWaitStarted",
            EventKind::SignalConsumed { .. } => "SignalConsumed",
            EventKind::SignalWaitTimedOut { .. } => "SignalWaitTimedOut",
            EventKind::SignalWaitCanceled { .. } => "SignalWaitCanceled",
            EventKind::CancelRequested { .. } => "CancelRequested",
            EventKind::WorkflowCompleted { .. } => "WorkflowCompleted",
            EventKind::WorkflowFailed { .. } => "WorkflowFailed",
            EventKind::WorkflowCanceled { .. } => "WorkflowCanceled",
            EventKind::WorkflowTerminated { .. } => "WorkflowTerminated",
            EventKind::WorkflowContinuedAsNew { .. } => "WorkflowContinuedAsNew",
        }
    }

    /// The workflow-code operation this event belongs to.
    pub fn seq(&self) -> Option<u32> {
        match self {
            EventKind::StepCompleted { seq, .. }
            | EventKind::StepFailed { seq, .. }
            | EventKind::ActivityScheduled { seq, .. }
            | EventKind::ActivityStarted { seq, .. }
            | EventKind::ActivityCompleted { seq, .. }
            | EventKind::ActivityAttemptFailed { seq, .. }
            | EventKind::ActivityFailed { seq, .. }
            | EventKind::ActivityTimedOut { seq, .. }
            | EventKind::ActivityCanceled { seq }
            | EventKind::TimerStarted { seq, .. }
            | EventKind::TimerFired { seq }
            | EventKind::TimerCanceled { seq }
            | EventKind::SignalWaitStarted { seq, .. }
            | EventKind::SignalConsumed { seq, .. }
            | EventKind::SignalWaitTimedOut { seq, .. }
            | EventKind::SignalWaitCanceled { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    pub fn is_close(&self) -> bool {
        matches!(
            self,
            EventKind::WorkflowCompleted { .. }
                | EventKind::WorkflowFailed { .. }
                | EventKind::WorkflowCanceled { .. }
                | EventKind::WorkflowTerminated { .. }
                | EventKind::WorkflowContinuedAsNew { .. }
        )
    }

    /// Approximate encoded size, for the history byte limit.
    pub fn size_bytes(&self) -> u64 {
        let payloads = match self {
            EventKind::WorkflowStarted { input, .. }
            | EventKind::ActivityScheduled { input, .. }
            | EventKind::WorkflowContinuedAsNew { input, .. } => input.len(),
            EventKind::StepCompleted { result, .. }
            | EventKind::ActivityCompleted { result, .. }
            | EventKind::WorkflowCompleted { result } => result.len(),
            EventKind::SignalReceived { payload, .. } | EventKind::SignalConsumed { payload, .. } => payload.len(),
            EventKind::StepFailed { failure, .. }
            | EventKind::ActivityAttemptFailed { failure, .. }
            | EventKind::ActivityFailed { failure, .. }
            | EventKind::WorkflowTaskFailed { failure, .. }
            | EventKind::WorkflowFailed { failure }
            | EventKind::WorkflowCanceled { failure } => failure.message.len() + failure.details.len(),
            _ => 0,
        };
        64 + payloads as u64
    }
}

/// Checks the history invariants; returns a description of the first violation.
pub fn validate_history(events: &[HistoryEvent]) -> Result<(), String> {
    use std::collections::BTreeSet;
    let mut open_activities = BTreeSet::new();
    let mut open_timers = BTreeSet::new();
    let mut open_waits = BTreeSet::new();
    let mut closed = false;
    for (index, event) in events.iter().enumerate() {
        let expected_id = index as u64 + 1;
        if event.event_id != expected_id {
            return Err(format!("event {} has id {}, expected {expected_id}", index, event.event_id));
        }
        if closed {
            return Err(format!("event {} ({}) follows the closing event", event.event_id, event.kind.type_name()));
        }
        if index == 0 && !matches!(event.kind, EventKind::WorkflowStarted { .. }) {
            return Err("the first event is not WorkflowStarted".into());
        }
        if index > 0 && events[index - 1].time_ms > event.time_ms {
            return Err(format!("event {} is older than the event before it", event.event_id));
        }
        // Whether the event fits the open schedules: a new seq, or the resolution of an open one.
        let matched = match &event.kind {
            EventKind::ActivityScheduled { seq, .. } => open_activities.insert(*seq),
            EventKind::ActivityCompleted { seq, .. }
            | EventKind::ActivityFailed { seq, .. }
            | EventKind::ActivityTimedOut { seq, .. }
            | EventKind::ActivityCanceled { seq } => open_activities.remove(seq),
            EventKind::ActivityStarted { seq, .. } | EventKind::ActivityAttemptFailed { seq, .. } => {
                open_activities.contains(seq)
            }
            EventKind::TimerStarted { seq, .. } => open_timers.insert(*seq),
            EventKind::TimerFired { seq } | EventKind::TimerCanceled { seq } => open_timers.remove(seq),
            EventKind::SignalWaitStarted { seq, .. } => open_waits.insert(*seq),
            EventKind::SignalConsumed { seq, .. }
            | EventKind::SignalWaitTimedOut { seq, .. }
            | EventKind::SignalWaitCanceled { seq, .. } => open_waits.remove(seq),
            kind => {
                closed = kind.is_close();
                true
            }
        };
        if !matched {
            return Err(format!(
                "event {} {} seq {} does not match the open schedules (a resolution without a schedule, or a seq scheduled twice)",
                event.event_id,
                event.kind.type_name(),
                event.kind.seq().unwrap_or(0)
            ));
        }
    }
    Ok(())
}
