//! The workflow task: `CompleteWorkflowTask` (which carries the code's commands and dispatches
//! each to its family), `FailWorkflowTask`, `WorkflowTaskTimedOut`, `RecordWorkflowTaskHeartbeat`
//! and the retry timer of a failed task.
//!
//! Invariants:
//! - A completion is checked whole before anything changes: every command's limits, growing
//!   seqs, a closing command only last, the pending-operation limit, and room in the history.
//! - Dispatch does not commit: `WorkflowTaskStarted` is recorded with the task's end
//!   (completion or failure), carrying the last event the worker was shown.
//! - A completion schedules the next task at once when the code must see something: an event
//!   that wakes it arrived while the task ran, or a command of this completion resolved an
//!   operation at once.
//! - A heartbeat changes nothing: it is accepted exactly while a completion of the same token
//!   would be, and its reply gives the leader the timeout to re-arm the attempt's deadline with
//!   (task deadlines are leader-local, see `weft-server`'s alarms).

use crate::command::WorkflowCommand;
use crate::event::EventKind;
use crate::ids::TaskToken;
use crate::limits;
use crate::model::{ErrorCode, Failure, Rejection, Reply, TimerKind};
use crate::retry::workflow_task_retry_delay_ms;
use crate::state::{RunState, ShardState, WorkflowTaskState};

use super::context::{sanitize_failure, workflow_token_run};
use super::{Effect, Handled, Outcome, RunCtx, Write, activity, close, invalid, signal, step, timer};

/// What checking one workflow command found: operations it opens and payload bytes it records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Checked {
    pub operations: usize,
    pub bytes: u64,
}

/// A `CompleteWorkflowTask` command's fields.
pub(super) struct Completion<'a> {
    pub token: &'a TaskToken,
    pub commands: &'a [WorkflowCommand],
    /// Fresh run id for a continue-as-new among the commands.
    pub new_run_id: &'a str,
    pub inline_next_task: bool,
    pub steps_observed: bool,
}

/// What applying the commands of one completion decided.
pub(super) struct Applied {
    /// A command resolved an operation at once: the code needs the next task.
    pub resolved_now: bool,
    /// The run continued as new: the new run.
    pub continued: Option<RunState>,
}

/// Checks one command against the run, as it stands before the completion.
fn check_command(index: usize, command: &WorkflowCommand, last_seq: u32) -> Result<Checked, Rejection> {
    match command {
        WorkflowCommand::RecordStep { name, outcome, .. } => step::check(name, outcome),
        WorkflowCommand::ScheduleActivity { activity_type, task_queue, input, retry_policy, options, .. } => {
            activity::check_schedule(activity_type, task_queue, input, retry_policy, options)
        }
        WorkflowCommand::StartTimer { duration_ms, .. } => timer::check_start(*duration_ms),
        WorkflowCommand::CancelTimer { seq } => timer::check_cancel(index, *seq, last_seq),
        WorkflowCommand::WaitSignal { name, timeout_ms, .. } => signal::check_wait(name, *timeout_ms),
        WorkflowCommand::CompleteWorkflow { result } => close::check_complete(result),
        WorkflowCommand::FailWorkflow { failure } => close::check_fail(failure),
        WorkflowCommand::ContinueAsNew { input, workflow_type, task_queue } => {
            close::check_continue(input, workflow_type, task_queue)
        }
    }
}

/// Applies one checked command.
fn apply_command(cx: &mut RunCtx<'_>, completion: &Completion<'_>, command: &WorkflowCommand, applied: &mut Applied) {
    if let Some(seq) = command.new_seq() {
        cx.run.last_seq = seq;
    }
    match command {
        WorkflowCommand::RecordStep { seq, name, outcome, attempts } => {
            step::record(cx, *seq, name, outcome, *attempts);
            // The code needs a task to learn the result unless it already ran past the step.
            applied.resolved_now |= !completion.steps_observed;
        }
        WorkflowCommand::ScheduleActivity { seq, activity_type, task_queue, input, retry_policy, options } => {
            applied.resolved_now |=
                activity::schedule(cx, *seq, activity_type, task_queue, input, retry_policy, options)
        }
        WorkflowCommand::StartTimer { seq, duration_ms } => {
            applied.resolved_now |= timer::start(cx, *seq, *duration_ms)
        }
        WorkflowCommand::CancelTimer { seq } => applied.resolved_now |= timer::cancel(cx, *seq),
        WorkflowCommand::WaitSignal { seq, name, timeout_ms } => {
            applied.resolved_now |= signal::wait(cx, *seq, name, *timeout_ms)
        }
        WorkflowCommand::CompleteWorkflow { result } => close::complete(cx, result),
        WorkflowCommand::FailWorkflow { failure } => close::fail(cx, failure),
        WorkflowCommand::ContinueAsNew { input, workflow_type, task_queue } => {
            applied.continued =
                Some(close::continue_as_new(cx, completion.new_run_id, input, workflow_type, task_queue))
        }
    }
}

/// Checks a completion's commands against the run before anything changes; returns the
/// payload bytes they record.
fn check_commands(run: &RunState, commands: &[WorkflowCommand]) -> Result<u64, Rejection> {
    if commands.len() > limits::COMMANDS_PER_TASK_MAX {
        return Err(invalid(format!(
            "a workflow task completion carries {} commands; the limit is {}",
            commands.len(),
            limits::COMMANDS_PER_TASK_MAX
        )));
    }
    let mut last_seq = run.last_seq;
    let mut total = Checked::default();
    for (index, command) in commands.iter().enumerate() {
        if let Some(seq) = command.new_seq() {
            if seq <= last_seq {
                return Err(invalid(format!(
                    "command {index} uses seq {seq}, but seqs must grow and the last one was {last_seq}"
                )));
            }
            last_seq = seq;
        }
        if command.closes_run() && index + 1 != commands.len() {
            return Err(invalid(format!("command {index} closes the run but is not the last command")));
        }
        let checked = check_command(index, command, last_seq)?;
        total.operations += checked.operations;
        total.bytes = total.bytes.saturating_add(checked.bytes);
    }
    let pending = run.activities.len() + run.timers.len() + run.signal_waits.len() + total.operations;
    if pending > limits::PENDING_OPERATIONS_MAX {
        return Err(Rejection::new(
            ErrorCode::ResourceExhausted,
            format!("the run would have {pending} pending operations; the limit is {}", limits::PENDING_OPERATIONS_MAX),
        ));
    }
    Ok(total.bytes)
}

/// Events a completion may append: started, completed and a next scheduled task, plus two per
/// command (a command records at most its own event and one resolving it at once).
fn events_estimate(commands: &[WorkflowCommand]) -> u64 {
    3 + 2 * commands.len() as u64
}

/// Takes the run's pending workflow task as a worker answers it (completion or failure): drops
/// it from the ready index and records `WorkflowTaskStarted` with what the worker saw (dispatch
/// does not commit; see ARCHITECTURE). The caller records how the task ended.
fn end_task(cx: &mut RunCtx<'_>, seen_event_id: u64) -> WorkflowTaskState {
    let task = cx.run.workflow_task.take().expect("workflow_token_run checked the task is pending");
    let ready = cx.workflow_ready_task(&task);
    cx.delete_ready(ready);
    cx.record(EventKind::WorkflowTaskStarted {
        scheduled_event_id: task.scheduled_event_id,
        attempt: task.attempt,
        seen_event_id,
    });
    task
}

pub(super) fn complete(state: &mut ShardState, now: u64, completion: Completion<'_>, out: &mut Outcome) -> Handled {
    let token = completion.token;
    let key = &token.key;
    let (run, seen_event_id) = workflow_token_run(state, token)?;
    let bytes = check_commands(run, completion.commands)?;
    let mut cx = RunCtx::new(key, run, now, out);
    if !cx.has_room(events_estimate(completion.commands), bytes) {
        cx.fail_for_history_limit()?;
        return Ok(Reply::WorkflowTaskCompleted { next_task: None, appended: Vec::new() });
    }
    // Events the code must see arrived while the task ran: it needs the next task at once.
    // (Informational ones, like a retried activity attempt, wait for the next real task.)
    let had_unseen_events = cx.run.last_wake_event_id > seen_event_id;
    // The code has now seen every signal delivered up to what this task was shown.
    cx.run.signals_delivered_unseen.retain(|signal| signal.event_id > seen_event_id);
    let task = end_task(&mut cx, seen_event_id);
    cx.record(EventKind::WorkflowTaskCompleted { scheduled_event_id: task.scheduled_event_id });

    let mut applied = Applied { resolved_now: false, continued: None };
    for command in completion.commands {
        apply_command(&mut cx, &completion, command, &mut applied);
    }
    let next_task = if applied.resolved_now || had_unseen_events { cx.schedule_workflow_task(1) } else { None };
    let mut appended = Vec::new();
    if completion.inline_next_task && next_task.is_some() {
        // The completing worker gets it in the reply; no poller must get it too.
        cx.out.effects.retain(|effect| !matches!(effect, Effect::TaskReady(t) if Some(t) == next_task.as_ref()));
        for write in &cx.out.writes {
            if let Write::AppendEvents { key: written_key, run_id, events } = write
                && written_key == key
                && *run_id == token.run_id
            {
                appended.extend(events.iter().cloned());
            }
        }
    }
    cx.put_execution();
    if let Some(next) = applied.continued
        && let Some(execution) = state.executions.get_mut(key)
    {
        execution.run = next;
    }
    Ok(Reply::WorkflowTaskCompleted { next_task, appended })
}

pub(super) fn fail(
    state: &mut ShardState,
    now: u64,
    token: &TaskToken,
    failure: &Failure,
    out: &mut Outcome,
) -> Handled {
    let failure = sanitize_failure(failure)?;
    let (run, seen_event_id) = workflow_token_run(state, token)?;
    let mut cx = RunCtx::new(&token.key, run, now, out);
    if !cx.has_room(3, failure.message.len() as u64) {
        return cx.fail_for_history_limit();
    }
    let task = end_task(&mut cx, seen_event_id);
    cx.record(EventKind::WorkflowTaskFailed {
        scheduled_event_id: task.scheduled_event_id,
        attempt: task.attempt,
        failure: failure.clone(),
    });
    let attempt = task.attempt.saturating_add(1);
    let due_ms = now.saturating_add(workflow_task_retry_delay_ms(task.attempt));
    cx.run.workflow_task = Some(WorkflowTaskState {
        attempt,
        scheduled_event_id: 0,
        backoff_until_ms: due_ms,
        last_failure: Some(failure),
    });
    let timer = cx.timer(due_ms, TimerKind::WorkflowTaskRetry { attempt });
    cx.arm_timer(timer);
    cx.put_execution();
    Ok(Reply::Done)
}

pub(super) fn timed_out(state: &mut ShardState, now: u64, token: &TaskToken, out: &mut Outcome) -> Handled {
    let (run, _) = workflow_token_run(state, token)?;
    let mut cx = RunCtx::new(&token.key, run, now, out);
    if !cx.has_room(2, 0) {
        return cx.fail_for_history_limit();
    }
    let task = cx.run.workflow_task.take().expect("workflow_token_run checked the task is pending");
    let ready = cx.workflow_ready_task(&task);
    cx.delete_ready(ready);
    cx.record(EventKind::WorkflowTaskTimedOut { scheduled_event_id: task.scheduled_event_id, attempt: task.attempt });
    cx.schedule_workflow_task(task.attempt.saturating_add(1));
    cx.put_execution();
    Ok(Reply::Done)
}

/// A worker says the task's code still runs (a long step body): accepted while the token names
/// the run's pending task, as its completion would be; nothing changes.
pub(super) fn heartbeat(state: &mut ShardState, token: &TaskToken) -> Handled {
    let (run, _) = workflow_token_run(state, token)?;
    Ok(Reply::WorkflowTaskHeartbeat { timeout_ms: run.workflow_task_timeout_ms })
}

/// The backoff after a failed task is over: the retry becomes a ready task. Returns whether
/// the run changed (false: the timer is stale).
pub(super) fn fire_retry(cx: &mut RunCtx<'_>, attempt: u32, due_ms: u64) -> bool {
    match &cx.run.workflow_task {
        Some(task) if !task.is_ready() && task.attempt == attempt && task.backoff_until_ms == due_ms => {
            let last_failure = task.last_failure.clone();
            cx.run.workflow_task = None;
            cx.schedule_workflow_task(attempt);
            if let Some(task) = cx.run.workflow_task.as_mut() {
                task.last_failure = last_failure;
            }
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::apply::{Effect, Write};
    use crate::command::{CommandKind, WorkflowCommand};
    use crate::event::EventKind;
    use crate::model::{ErrorCode, Failure, Reply, RunStatus, TaskKind};
    use crate::retry::RetryPolicy;
    use crate::testing::{Harness, activity, domain_writes, json, key, rejected, step};

    #[test]
    fn steps_complete_one_task_and_schedule_the_next() {
        let mut h = Harness::default();
        h.start("w", "");
        let reply = h.complete_task("w", vec![step(1, "reserve", r#""ok""#)]);
        let Reply::WorkflowTaskCompleted { next_task: Some(next), appended } = reply else {
            panic!("next task expected: {reply:?}")
        };
        assert_eq!(next.kind, TaskKind::Workflow);
        // The inline task's history comes with the reply: exactly what this completion appended.
        let run_id = h.state.run(&key("w")).expect("run").run_id.clone();
        assert_eq!(appended, h.histories[&run_id][2..].to_vec());
        assert_eq!(
            appended.iter().map(|e| e.kind.type_name()).collect::<Vec<_>>(),
            ["WorkflowTaskStarted", "WorkflowTaskCompleted", "StepCompleted", "WorkflowTaskScheduled"]
        );
        h.complete_task("w", vec![step(2, "ship", "1"), WorkflowCommand::CompleteWorkflow { result: json("2") }]);
        assert_eq!(
            h.history("w"),
            [
                "WorkflowStarted",
                "WorkflowTaskScheduled",
                "WorkflowTaskStarted",
                "WorkflowTaskCompleted",
                "StepCompleted",
                "WorkflowTaskScheduled",
                "WorkflowTaskStarted",
                "WorkflowTaskCompleted",
                "StepCompleted",
                "WorkflowCompleted"
            ]
        );
    }

    #[test]
    fn an_inline_next_task_is_not_offered_to_pollers() {
        let mut h = Harness::default();
        h.start("w", "");
        let token = h.workflow_token("w");
        let outcome = h.run(h.completion(token, vec![step(1, "a", "1")], true, false));
        let Reply::WorkflowTaskCompleted { next_task: Some(next), .. } = &outcome.reply else {
            panic!("{:?}", outcome.reply)
        };
        assert!(outcome.writes.contains(&Write::PutReady(next.clone())), "indexed durably");
        assert!(!outcome.effects.iter().any(|e| matches!(e, Effect::TaskReady(_))), "but not offered");
    }

    #[test]
    fn observed_step_records_schedule_no_task_but_what_follows_still_does() {
        let mut h = Harness::default();
        h.start("w", "");
        let token = h.workflow_token("w");
        let outcome = h.run(h.completion(
            token,
            vec![step(1, "reserve", r#""ok""#), activity(2, RetryPolicy::default())],
            true,
            true,
        ));
        // The code ran past the step and waits for the activity: no task until the activity ends.
        assert!(matches!(outcome.reply, Reply::WorkflowTaskCompleted { next_task: None, .. }), "{:?}", outcome.reply);
        assert_eq!(
            h.history("w"),
            [
                "WorkflowStarted",
                "WorkflowTaskScheduled",
                "WorkflowTaskStarted",
                "WorkflowTaskCompleted",
                "StepCompleted",
                "ActivityScheduled"
            ]
        );
        let activity_token = h.activity_token("w", 2);
        h.run(CommandKind::CompleteActivity { token: activity_token, result: json(r#""ch""#) });
        assert_eq!(h.history("w").last(), Some(&"WorkflowTaskScheduled"));
    }

    #[test]
    fn only_events_the_code_must_see_bring_the_next_task_at_once() {
        let mut h = Harness::default();
        h.start("w", "");
        let policy = RetryPolicy { initial_interval_ms: 1, ..RetryPolicy::default() };
        let timer = |seq| WorkflowCommand::StartTimer { seq, duration_ms: 10 };
        h.complete_task("w", vec![activity(1, policy), timer(2)]);
        h.fire_due_timers(h.now_ms + 10);
        // While the task the timer brought runs, the activity's first attempt fails (it will be
        // retried) and a signal nobody waits for is buffered: the code needs neither yet.
        let token = h.workflow_token("w");
        h.run(CommandKind::FailActivity { token: h.activity_token("w", 1), failure: Failure::new("E", "try again") });
        h.signal("w", "late", "2");
        let reply = h.run(h.completion(token, vec![timer(3)], true, true)).reply;
        assert!(matches!(reply, Reply::WorkflowTaskCompleted { next_task: None, .. }), "{reply:?}");
        // A result is something the code waits for: arriving while a task runs, it brings the
        // next task at once.
        h.fire_due_timers(h.now_ms + 10);
        let token = h.workflow_token("w");
        h.run(CommandKind::CompleteActivity { token: h.activity_token("w", 1), result: json(r#""ok""#) });
        let reply = h.run(h.completion(token, vec![], true, true)).reply;
        assert!(matches!(reply, Reply::WorkflowTaskCompleted { next_task: Some(_), .. }), "{reply:?}");
    }

    #[test]
    fn stale_and_repeated_tokens_are_rejected() {
        let mut h = Harness::default();
        h.start("w", "");
        let token = h.workflow_token("w");
        let commands = vec![step(1, "a", "1")];
        let first = h.run(h.completion(token.clone(), commands.clone(), false, false));
        assert!(matches!(first.reply, Reply::WorkflowTaskCompleted { .. }));
        let again = h.run(h.completion(token, commands, false, false));
        assert_eq!(rejected(&again.reply), ErrorCode::FailedPrecondition);
        assert!(domain_writes(&again).is_empty() && again.effects.is_empty(), "a rejected command writes nothing");
        assert_eq!(h.history("w").iter().filter(|t| **t == "StepCompleted").count(), 1, "recorded exactly once");
    }

    #[test]
    fn seqs_must_grow_and_closing_commands_come_last() {
        let mut h = Harness::default();
        h.start("w", "");
        h.complete_task("w", vec![step(1, "a", "1")]);
        assert_eq!(rejected(&h.complete_task("w", vec![step(1, "a", "1")])), ErrorCode::InvalidArgument);
        let reply =
            h.complete_task("w", vec![WorkflowCommand::CompleteWorkflow { result: json("1") }, step(2, "b", "1")]);
        assert_eq!(rejected(&reply), ErrorCode::InvalidArgument);
        let too_many: Vec<_> =
            (1..=1001).map(|seq| WorkflowCommand::StartTimer { seq: seq + 1, duration_ms: 1 }).collect();
        assert_eq!(rejected(&h.complete_task("w", too_many)), ErrorCode::InvalidArgument);
    }

    #[test]
    fn workflow_task_failure_backs_off_and_retries() {
        let mut h = Harness::default();
        h.start("w", "");
        let token = h.workflow_token("w");
        let outcome =
            h.run(CommandKind::FailWorkflowTask { token, failure: Failure::new("NonDeterminism", "step 1 renamed") });
        assert!(
            matches!(outcome.effects.as_slice(), [Effect::TimerArmed(t)] if t.due_ms == h.now_ms + 1_000),
            "{:?}",
            outcome.effects
        );
        let run = h.state.run(&key("w")).expect("exists");
        assert_eq!(run.workflow_task.as_ref().map(|t| (t.attempt, t.is_ready())), Some((2, false)));
        let now = h.now_ms;
        h.fire_due_timers(now + 1_000);
        let run = h.state.run(&key("w")).expect("exists");
        let task = run.workflow_task.as_ref().expect("rescheduled");
        assert_eq!((task.attempt, task.is_ready()), (2, true));
        assert!(task.last_failure.is_some(), "describe shows why the last attempt failed");
    }

    #[test]
    fn workflow_task_timeout_reschedules() {
        let mut h = Harness::default();
        h.start("w", "");
        let token = h.workflow_token("w");
        let outcome = h.run(CommandKind::WorkflowTaskTimedOut { token: token.clone() });
        assert!(outcome.effects.iter().any(|e| matches!(e, Effect::TaskReady(t) if t.attempt == 2)));
        assert_eq!(h.state.run(&key("w")).and_then(|r| r.workflow_task.as_ref()).map(|t| t.attempt), Some(2));
        assert_eq!(rejected(&h.run(h.completion(token, vec![], false, false)).reply), ErrorCode::FailedPrecondition);
    }

    #[test]
    fn a_heartbeat_is_accepted_while_the_task_runs_and_changes_nothing() {
        let mut h = Harness::default();
        h.start("w", "");
        let token = h.workflow_token("w");
        let before = h.state.run(&key("w")).expect("run").clone();
        let outcome = h.run(CommandKind::RecordWorkflowTaskHeartbeat { token: token.clone() });
        let timeout_ms = crate::model::DEFAULT_WORKFLOW_TASK_TIMEOUT_MS;
        assert_eq!(outcome.reply, Reply::WorkflowTaskHeartbeat { timeout_ms });
        assert!(domain_writes(&outcome).is_empty() && outcome.effects.is_empty(), "it writes nothing");
        assert_eq!(h.state.run(&key("w")).expect("run"), &before, "and changes nothing");
        // Once the task completed (or timed out), its heartbeat is refused like its completion.
        h.run(h.completion(token.clone(), vec![step(1, "a", "1")], false, false));
        let late = h.run(CommandKind::RecordWorkflowTaskHeartbeat { token });
        assert_eq!(rejected(&late.reply), ErrorCode::FailedPrecondition);
        let activity_token = {
            h.complete_task("w", vec![activity(2, RetryPolicy::default())]);
            h.activity_token("w", 2)
        };
        let wrong = h.run(CommandKind::RecordWorkflowTaskHeartbeat { token: activity_token });
        assert_eq!(rejected(&wrong.reply), ErrorCode::InvalidArgument);
    }

    #[test]
    fn history_limit_fails_the_run() {
        let mut h = Harness::default();
        h.start("w", "");
        let mut seq = 0;
        loop {
            seq += 1;
            let reply = h.complete_task("w", vec![step(seq, "s", "1")]);
            if h.state.run(&key("w")).map(|r| r.status) != Some(RunStatus::Running) {
                break;
            }
            assert!(matches!(reply, Reply::WorkflowTaskCompleted { next_task: Some(_), .. }));
        }
        let history = &h.histories[&h.state.run(&key("w")).expect("exists").run_id];
        assert!(history.len() as u64 <= crate::limits::HISTORY_EVENTS_MAX);
        match &history.last().expect("not empty").kind {
            EventKind::WorkflowFailed { failure } => {
                assert_eq!(failure.error_type, crate::model::HISTORY_LIMIT_ERROR_TYPE)
            }
            other => panic!("unexpected last event {other:?}"),
        }
    }
}
