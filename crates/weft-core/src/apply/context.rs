//! What every transition shares: the run being changed with its outcome ([`RunCtx`]), and
//! finding the run a command names (client commands by workflow id and run id, worker
//! commands by task token).
//!
//! Invariants kept here for every family:
//! - Events get consecutive ids and never-decreasing times ([`RunCtx::record`]).
//! - A run has at most one pending workflow task, and none once closed
//!   ([`RunCtx::schedule_workflow_task`]).
//! - Closing a run drops all its pending work and its ready tasks; its durable timers are
//!   deleted lazily, each firing into a no-op ([`RunCtx::close`]).
//! - Every transition that may append events first checks there is room for them and for
//!   the event that closes the run ([`RunCtx::has_room`]).

use crate::event::{EventKind, HistoryEvent};
use crate::ids::{TaskToken, TokenTask, WorkflowKey};
use crate::limits;
use crate::model::{
    DueTimer, ErrorCode, Failure, HISTORY_LIMIT_ERROR_TYPE, ReadyTask, Rejection, Reply, RunStatus, TaskKind, TimerKind,
};
use crate::state::{ActivityState, RunState, ShardState, WorkflowTaskState};

use super::{Effect, Outcome, Write, invalid};

/// What a handler returns: the reply, or a refusal that changed nothing.
pub(crate) type Handled = Result<Reply, Rejection>;

/// One run being changed by one command, with the outcome collecting its writes and effects.
pub(crate) struct RunCtx<'a> {
    pub key: &'a WorkflowKey,
    pub run: &'a mut RunState,
    pub now: u64,
    pub out: &'a mut Outcome,
}

impl<'a> RunCtx<'a> {
    pub fn new(key: &'a WorkflowKey, run: &'a mut RunState, now: u64, out: &'a mut Outcome) -> Self {
        RunCtx { key, run, now, out }
    }

    /// Appends one event to the run's history; returns its id.
    pub fn record(&mut self, kind: EventKind) -> u64 {
        let run = &mut *self.run;
        let event_id = run.next_event_id;
        run.next_event_id += 1;
        run.history_bytes += kind.size_bytes();
        let time_ms = self.now.max(run.last_event_ms);
        run.last_event_ms = time_ms;
        if kind.wakes_workflow() {
            run.last_wake_event_id = event_id;
        }
        let event = HistoryEvent { event_id, time_ms, kind };
        match self.out.writes.last_mut() {
            Some(Write::AppendEvents { key, run_id, events }) if key == self.key && *run_id == run.run_id => {
                events.push(event)
            }
            _ => self.out.writes.push(Write::AppendEvents {
                key: self.key.clone(),
                run_id: run.run_id.clone(),
                events: vec![event],
            }),
        }
        event_id
    }

    /// Whether `events` more events (and about `bytes` of payload) fit in the history while
    /// leaving room for the event that closes the run.
    pub fn has_room(&self, events: u64, bytes: u64) -> bool {
        self.run.history_length() + events < limits::HISTORY_EVENTS_MAX
            && self.run.history_bytes + bytes + 64 * events < limits::HISTORY_BYTES_MAX
    }

    /// Closes a run that reached the history limit, using the slot kept for it, and stores it.
    pub fn fail_for_history_limit(&mut self) -> Handled {
        let failure = Failure::new(
            HISTORY_LIMIT_ERROR_TYPE,
            format!(
                "the run reached the history limit ({} events or {} bytes); long-running workflows must continue as new",
                limits::HISTORY_EVENTS_MAX,
                limits::HISTORY_BYTES_MAX
            ),
        );
        self.close(EventKind::WorkflowFailed { failure }, RunStatus::Failed);
        self.put_execution();
        Ok(Reply::Done)
    }

    /// Stores the execution's state with the outcome.
    pub fn put_execution(&mut self) {
        self.out.writes.push(Write::PutExecution { key: self.key.clone() });
    }

    /// The ready-index entry of the run's workflow task.
    pub fn workflow_ready_task(&self, task: &WorkflowTaskState) -> ReadyTask {
        ReadyTask {
            kind: TaskKind::Workflow,
            task_queue: self.run.task_queue.clone(),
            key: self.key.clone(),
            run_id: self.run.run_id.clone(),
            seq: 0,
            scheduled_event_id: task.scheduled_event_id,
            attempt: task.attempt,
        }
    }

    /// The ready-index entry of an activity's current attempt.
    pub fn activity_ready_task(&self, seq: u32, activity: &ActivityState) -> ReadyTask {
        ReadyTask {
            kind: TaskKind::Activity,
            task_queue: activity.task_queue.clone(),
            key: self.key.clone(),
            run_id: self.run.run_id.clone(),
            seq,
            scheduled_event_id: 0,
            attempt: activity.attempt,
        }
    }

    /// Indexes a task as ready and tells the leader to offer it to workers.
    pub fn put_ready(&mut self, ready: ReadyTask) {
        self.out.writes.push(Write::PutReady(ready.clone()));
        self.out.effects.push(Effect::TaskReady(ready));
    }

    pub fn delete_ready(&mut self, ready: ReadyTask) {
        self.out.writes.push(Write::DeleteReady(ready));
    }

    /// Schedules a workflow task unless one is pending or the run is closed.
    pub fn schedule_workflow_task(&mut self, attempt: u32) -> Option<ReadyTask> {
        if !self.run.status.is_open() || self.run.workflow_task.is_some() {
            return None;
        }
        let scheduled_event_id = self.record(EventKind::WorkflowTaskScheduled { attempt });
        let task = WorkflowTaskState { attempt, scheduled_event_id, backoff_until_ms: 0, last_failure: None };
        let ready = self.workflow_ready_task(&task);
        self.run.workflow_task = Some(task);
        self.put_ready(ready.clone());
        Some(ready)
    }

    /// A durable timer of this run.
    pub fn timer(&self, due_ms: u64, kind: TimerKind) -> DueTimer {
        DueTimer { due_ms, key: self.key.clone(), run_id: self.run.run_id.clone(), kind }
    }

    /// Arms a durable timer `delay_ms` from now.
    pub fn arm_timer_in(&mut self, delay_ms: u64, kind: TimerKind) {
        let timer = self.timer(self.now.saturating_add(delay_ms), kind);
        self.arm_timer(timer);
    }

    pub fn arm_timer(&mut self, timer: DueTimer) {
        self.out.writes.push(Write::PutTimer(timer.clone()));
        self.out.effects.push(Effect::TimerArmed(timer));
    }

    /// Closes the run with `kind` and drops all its pending work.
    pub fn close(&mut self, kind: EventKind, status: RunStatus) {
        assert!(kind.is_close(), "a run closes with a closing event, not {}", kind.type_name());
        assert!(self.run.status.is_open(), "run {} closed twice", self.run.run_id);
        if let Some(task) = self.run.workflow_task.take()
            && task.is_ready()
        {
            let ready = self.workflow_ready_task(&task);
            self.delete_ready(ready);
        }
        let activities = std::mem::take(&mut self.run.activities);
        for (seq, activity) in &activities {
            if activity.is_ready() {
                let ready = self.activity_ready_task(*seq, activity);
                self.delete_ready(ready);
            }
        }
        // Timers are deleted lazily: each fires into a no-op that removes it.
        self.run.timers.clear();
        self.run.signal_waits.clear();
        self.run.buffered_signals.clear();
        self.run.signals_delivered_unseen.clear();
        let close_event_id = self.record(kind);
        self.run.status = status;
        self.run.close_ms = self.now;
        self.run.close_event_id = close_event_id;
        self.out.writes.push(Write::PutVisibility(self.run.summary(self.key)));
        self.out.effects.push(Effect::RunClosed { key: self.key.clone(), run_id: self.run.run_id.clone() });
    }
}

pub(crate) fn not_found(key: &WorkflowKey) -> Rejection {
    Rejection::new(ErrorCode::NotFound, format!("workflow {key} not found"))
}

/// Finds the run a client command names: the current run, or the run id given, if open.
pub(crate) fn client_run<'s>(
    state: &'s mut ShardState,
    key: &WorkflowKey,
    run_id: &str,
) -> Result<&'s mut RunState, Rejection> {
    limits::check_name("namespace", &key.namespace)?;
    limits::check_name("workflow id", &key.workflow_id)?;
    let execution = state.executions.get_mut(key).ok_or_else(|| not_found(key))?;
    let run = &mut execution.run;
    if !run_id.is_empty() && run.run_id != run_id {
        return Err(Rejection::new(
            ErrorCode::NotCurrentRun,
            format!("run {run_id} of workflow {key} is not its current run ({})", run.run_id),
        ));
    }
    if !run.status.is_open() {
        return Err(Rejection::new(
            ErrorCode::FailedPrecondition,
            format!("workflow {key} run {} is already closed ({:?})", run.run_id, run.status),
        ));
    }
    Ok(run)
}

pub(crate) fn stale(token: &TaskToken, why: &str) -> Rejection {
    Rejection::new(
        ErrorCode::FailedPrecondition,
        format!("stale task token for workflow {} run {} (attempt {}): {why}", token.key, token.run_id, token.attempt),
    )
}

/// The run a task token names, if it is still that run's open current run.
pub(crate) fn token_run<'s>(state: &'s mut ShardState, token: &TaskToken) -> Result<&'s mut RunState, Rejection> {
    let execution = state.executions.get_mut(&token.key).ok_or_else(|| not_found(&token.key))?;
    let run = &mut execution.run;
    if run.run_id != token.run_id {
        return Err(stale(token, "the run is no longer the workflow's current run"));
    }
    if !run.status.is_open() {
        return Err(stale(token, "the run is closed"));
    }
    Ok(run)
}

/// The run of a workflow-task token that is still the run's current workflow task, and the
/// last event the worker was shown.
pub(crate) fn workflow_token_run<'s>(
    state: &'s mut ShardState,
    token: &TaskToken,
) -> Result<(&'s mut RunState, u64), Rejection> {
    let TokenTask::Workflow { scheduled_event_id, seen_event_id } = token.task else {
        return Err(invalid("the task token is an activity token, not a workflow task token".into()));
    };
    let run = token_run(state, token)?;
    match &run.workflow_task {
        Some(task)
            if task.is_ready() && task.scheduled_event_id == scheduled_event_id && task.attempt == token.attempt =>
        {
            Ok((run, seen_event_id))
        }
        _ => Err(stale(token, "the workflow task was already completed, failed or timed out")),
    }
}

/// The run and seq of an activity token that names the activity's current attempt.
pub(crate) fn activity_token_run<'s>(
    state: &'s mut ShardState,
    token: &TaskToken,
) -> Result<(&'s mut RunState, u32), Rejection> {
    let TokenTask::Activity { seq } = token.task else {
        return Err(invalid("the task token is a workflow task token, not an activity token".into()));
    };
    let run = token_run(state, token)?;
    match run.activities.get(&seq) {
        Some(activity) if activity.attempt == token.attempt && activity.is_ready() => Ok((run, seq)),
        Some(_) => Err(stale(token, "the activity attempt already ended")),
        None => Err(stale(token, "the activity is no longer pending")),
    }
}

/// A failure from outside, within limits: its message cut to the limit, its details and type
/// checked.
pub(crate) fn sanitize_failure(failure: &Failure) -> Result<Failure, Rejection> {
    limits::check_payload("failure details", failure.details.as_bytes())?;
    let mut clean = failure.clone();
    if clean.message.len() > limits::FAILURE_MESSAGE_BYTES_MAX {
        let mut end = limits::FAILURE_MESSAGE_BYTES_MAX;
        while !clean.message.is_char_boundary(end) {
            end -= 1;
        }
        clean.message.truncate(end);
    }
    if clean.error_type.len() > limits::NAME_BYTES_MAX {
        return Err(invalid("failure error type is longer than 255 bytes".into()));
    }
    Ok(clean)
}

/// A cancel or terminate reason within its limit.
pub(crate) fn check_reason(reason: &str) -> Result<(), Rejection> {
    if reason.len() > limits::FAILURE_MESSAGE_BYTES_MAX {
        return Err(invalid(format!("reason is longer than {} bytes", limits::FAILURE_MESSAGE_BYTES_MAX)));
    }
    Ok(())
}
