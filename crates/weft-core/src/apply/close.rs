//! Closing a run: the code's `CompleteWorkflow`, `FailWorkflow` and `ContinueAsNew`, and the
//! client's `Terminate`.
//!
//! Invariants: a closing command is the last of its completion; a closed run has no pending
//! work and ends with its closing event; a failure of type `Canceled` closes the run as
//! canceled only if a cancel was requested; continue-as-new closes the run and starts the
//! next one of the same workflow id in the same command.

use crate::event::EventKind;
use crate::ids::WorkflowKey;
use crate::limits;
use crate::model::{CANCELED_ERROR_TYPE, Failure, Rejection, Reply, RunStatus};
use crate::payload::Payload;
use crate::state::{RunState, ShardState};

use super::context::{check_reason, client_run, sanitize_failure};
use super::start::{NewRun, new_run};
use super::workflow_task::Checked;
use super::{Handled, Outcome, RunCtx, signal};

pub(super) fn check_complete(result: &Payload) -> Result<Checked, Rejection> {
    limits::check_payload("workflow result", result.as_bytes())?;
    Ok(Checked { operations: 0, bytes: result.len() as u64 })
}

pub(super) fn check_fail(failure: &Failure) -> Result<Checked, Rejection> {
    sanitize_failure(failure)?;
    Ok(Checked::default())
}

pub(super) fn check_continue(input: &Payload, workflow_type: &str, task_queue: &str) -> Result<Checked, Rejection> {
    limits::check_payload("continue-as-new input", input.as_bytes())?;
    if !workflow_type.is_empty() {
        limits::check_name("workflow type", workflow_type)?;
    }
    if !task_queue.is_empty() {
        limits::check_name("task queue", task_queue)?;
    }
    Ok(Checked { operations: 0, bytes: input.len() as u64 })
}

pub(super) fn complete(cx: &mut RunCtx<'_>, result: &Payload) {
    cx.close(EventKind::WorkflowCompleted { result: result.clone() }, RunStatus::Completed);
}

pub(super) fn fail(cx: &mut RunCtx<'_>, failure: &Failure) {
    let failure = sanitize_failure(failure).expect("check_fail accepted this failure");
    if failure.error_type == CANCELED_ERROR_TYPE && cx.run.cancel_requested {
        cx.close(EventKind::WorkflowCanceled { failure }, RunStatus::Canceled);
    } else {
        cx.close(EventKind::WorkflowFailed { failure }, RunStatus::Failed);
    }
}

/// Closes the run as continued and returns the new run (the caller makes it current). What
/// travels to the new run: the signals the code has not seen, and the signal request ids.
pub(super) fn continue_as_new(
    cx: &mut RunCtx<'_>,
    new_run_id: &str,
    input: &Payload,
    workflow_type: &str,
    task_queue: &str,
) -> RunState {
    let workflow_type = if workflow_type.is_empty() { cx.run.workflow_type.clone() } else { workflow_type.to_string() };
    let task_queue = if task_queue.is_empty() { cx.run.task_queue.clone() } else { task_queue.to_string() };
    let buffered = std::mem::take(&mut cx.run.buffered_signals);
    let delivered = std::mem::take(&mut cx.run.signals_delivered_unseen);
    let signal_request_ids = std::mem::take(&mut cx.run.signal_request_ids);
    // Before the close, so the closed run's summary names the run it continued as.
    cx.run.continued_as_run_id = new_run_id.to_string();
    cx.close(
        EventKind::WorkflowContinuedAsNew { new_run_id: new_run_id.to_string(), input: input.clone() },
        RunStatus::ContinuedAsNew,
    );
    let mut next = new_run(
        cx.key,
        cx.now,
        NewRun {
            run_id: new_run_id,
            workflow_type: &workflow_type,
            task_queue: &task_queue,
            input,
            request_id: "",
            continued_from: Some(cx.run.run_id.clone()),
            workflow_task_timeout_ms: cx.run.workflow_task_timeout_ms,
        },
        cx.out,
    );
    next.signal_request_ids = signal_request_ids;
    let mut next_cx = RunCtx::new(cx.key, &mut next, cx.now, cx.out);
    signal::carry_unseen(&mut next_cx, delivered, buffered);
    next
}

pub(super) fn terminate(
    state: &mut ShardState,
    now: u64,
    key: &WorkflowKey,
    run_id: &str,
    reason: &str,
    out: &mut Outcome,
) -> Handled {
    check_reason(reason)?;
    let run = client_run(state, key, run_id)?;
    let mut cx = RunCtx::new(key, run, now, out);
    cx.close(EventKind::WorkflowTerminated { reason: reason.to_string() }, RunStatus::Terminated);
    cx.put_execution();
    Ok(Reply::Done)
}

#[cfg(test)]
mod tests {
    use crate::apply::{Effect, Write};
    use crate::command::{CommandKind, WorkflowCommand};
    use crate::model::{ErrorCode, Failure, RunStatus};
    use crate::testing::{Harness, json, key, rejected};

    #[test]
    fn completing_closes_the_run_and_tells_the_result_waiters() {
        let mut h = Harness::default();
        h.start("w", "");
        let token = h.workflow_token("w");
        let outcome =
            h.run(h.completion(token, vec![WorkflowCommand::CompleteWorkflow { result: json("7") }], true, false));
        assert!(outcome.effects.iter().any(|e| matches!(e, Effect::RunClosed { .. })));
        assert!(
            outcome.writes.iter().any(|w| matches!(w, Write::PutVisibility(s) if s.status == RunStatus::Completed))
        );
        let run = h.state.run(&key("w")).expect("run");
        assert_eq!((run.status, run.close_event_id), (RunStatus::Completed, run.history_length()));
    }

    #[test]
    fn a_canceled_failure_without_a_cancel_request_is_a_failure() {
        let mut h = Harness::default();
        h.start("w", "");
        let failure = Failure::new(crate::model::CANCELED_ERROR_TYPE, "pretend");
        h.complete_task("w", vec![WorkflowCommand::FailWorkflow { failure }]);
        assert_eq!(h.state.run(&key("w")).map(|r| r.status), Some(RunStatus::Failed));
    }

    #[test]
    fn continue_as_new_starts_a_fresh_run() {
        let mut h = Harness::default();
        h.start("w", "");
        let old_run = h.state.run(&key("w")).expect("exists").run_id.clone();
        h.complete_task(
            "w",
            vec![WorkflowCommand::ContinueAsNew {
                input: json("2"),
                workflow_type: String::new(),
                task_queue: String::new(),
            }],
        );
        let run = h.state.run(&key("w")).expect("exists");
        assert_ne!(run.run_id, old_run);
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(h.histories[&old_run].last().map(|e| e.kind.type_name()), Some("WorkflowContinuedAsNew"));
        assert_eq!(h.history("w"), ["WorkflowStarted", "WorkflowTaskScheduled"]);
    }

    #[test]
    fn terminate_closes_and_drops_pending_work() {
        let mut h = Harness::default();
        h.start("w", "");
        let outcome = h.run(CommandKind::Terminate { key: key("w"), run_id: String::new(), reason: "ops".into() });
        assert!(outcome.effects.iter().any(|e| matches!(e, Effect::RunClosed { .. })));
        assert!(
            outcome.writes.iter().any(|w| matches!(w, Write::DeleteReady(_))),
            "the ready workflow task is removed"
        );
        assert_eq!(rejected(&h.signal("w", "s", "1").reply), ErrorCode::FailedPrecondition);
        assert_eq!(
            rejected(
                &h.run(CommandKind::Terminate { key: key("nope"), run_id: String::new(), reason: String::new() }).reply
            ),
            ErrorCode::NotFound
        );
    }
}
