//! `apply`: one committed command in, events, storage writes, effects and a reply out.
//!
//! Deterministic: the result depends only on the state and the command. A
//! handler validates everything before it changes anything, so a rejected
//! command leaves the state untouched and produces no writes. Apply never
//! panics on user input: every external value is checked and refused with a
//! [`Rejection`] instead.
//!
//! Effects (tasks that became ready, timers armed, runs closed) are values for
//! the shard leader to act on; followers drop them.

use crate::command::{Command, CommandKind, StepOutcome, WorkflowCommand};
use crate::event::{EventKind, HistoryEvent};
use crate::ids::{RunId, TaskToken, TokenTask, WorkflowKey};
use crate::limits::{self, invalid};
use crate::model::{
    CANCELED_ERROR_TYPE, DEFAULT_WORKFLOW_TASK_TIMEOUT_MS, DueTimer, ErrorCode, Failure, HISTORY_LIMIT_ERROR_TYPE,
    NamespaceRecord, ReadyTask, Rejection, Reply, RunStatus, RunSummary, TaskKind, TimeoutKind, TimerKind,
};
use crate::payload::Payload;
use crate::retry::workflow_task_retry_delay_ms;
use crate::state::{
    ActivityState, BufferedSignal, Execution, RunState, ShardState, SignalWait, TimerState, WorkflowTaskState,
};

/// A change to durable storage, in domain terms; `weft-storage` maps each to keys.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Store the execution's current state (read it from the state after apply).
    PutExecution {
        key: WorkflowKey,
    },
    AppendEvents {
        key: WorkflowKey,
        run_id: RunId,
        events: Vec<HistoryEvent>,
    },
    PutReady(ReadyTask),
    DeleteReady(ReadyTask),
    PutTimer(DueTimer),
    DeleteTimer(DueTimer),
    PutVisibility(RunSummary),
    PutNamespace(NamespaceRecord),
}

/// Something the shard leader does after the command is applied.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    TaskReady(ReadyTask),
    TimerArmed(DueTimer),
    RunClosed { key: WorkflowKey, run_id: RunId },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub reply: Reply,
    pub writes: Vec<Write>,
    pub effects: Vec<Effect>,
}

impl Outcome {
    fn new() -> Self {
        Outcome { reply: Reply::Done, writes: Vec::new(), effects: Vec::new() }
    }

    /// All events this outcome appends, in order.
    pub fn events(&self) -> impl Iterator<Item = &HistoryEvent> {
        self.writes.iter().flat_map(|w| match w {
            Write::AppendEvents { events, .. } => events.as_slice(),
            _ => &[],
        })
    }
}

/// Applies one committed command to the shard state.
pub fn apply(state: &mut ShardState, command: &Command) -> Outcome {
    let mut out = Outcome::new();
    let now = command.now_ms;
    let result = match &command.kind {
        CommandKind::CreateNamespace { name, description } => create_namespace(state, now, name, description, &mut out),
        CommandKind::StartWorkflow {
            key,
            run_id,
            workflow_type,
            task_queue,
            input,
            request_id,
            workflow_task_timeout_ms,
        } => start_workflow(
            state,
            now,
            StartRequest {
                key,
                run_id,
                workflow_type,
                task_queue,
                input,
                request_id,
                workflow_task_timeout_ms: *workflow_task_timeout_ms,
            },
            &mut out,
        ),
        CommandKind::CompleteWorkflowTask { token, commands, new_run_id, inline_next_task, steps_observed } => {
            let task = CompletedTask { inline_next_task: *inline_next_task, steps_observed: *steps_observed };
            complete_workflow_task(state, now, token, commands, new_run_id, task, &mut out)
        }
        CommandKind::FailWorkflowTask { token, failure } => fail_workflow_task(state, now, token, failure, &mut out),
        CommandKind::WorkflowTaskTimedOut { token } => workflow_task_timed_out(state, now, token, &mut out),
        CommandKind::CompleteActivity { token, result } => complete_activity(state, now, token, result, &mut out),
        CommandKind::FailActivity { token, failure } => {
            fail_activity_attempt(state, now, token, failure.clone(), None, &mut out)
        }
        CommandKind::ActivityAttemptTimedOut { token, timeout } => {
            let failure = Failure {
                message: format!("activity attempt {} timed out ({:?})", token.attempt, timeout),
                error_type: timeout.error_type().to_string(),
                non_retryable: false,
                details: Payload::default(),
            };
            fail_activity_attempt(state, now, token, failure, Some(*timeout), &mut out)
        }
        CommandKind::RecordHeartbeat { token, details } => record_heartbeat(state, token, details, &mut out),
        CommandKind::FireTimer { timer, attempt_dispatched } => {
            fire_timer(state, now, timer, *attempt_dispatched, &mut out)
        }
        CommandKind::Signal { key, run_id, name, input } => signal(state, now, key, run_id, name, input, &mut out),
        CommandKind::RequestCancel { key, run_id, reason } => request_cancel(state, now, key, run_id, reason, &mut out),
        CommandKind::Terminate { key, run_id, reason } => terminate(state, now, key, run_id, reason, &mut out),
    };
    match result {
        Ok(reply) => out.reply = reply,
        Err(rejection) => {
            debug_assert!(
                out.writes.iter().all(|w| matches!(w, Write::DeleteTimer(_))),
                "rejections write nothing but timer cleanup"
            );
            out.writes.retain(|w| matches!(w, Write::DeleteTimer(_)));
            out.effects.clear();
            out.reply = Reply::Rejected(rejection);
        }
    }
    out
}

type Handled = Result<Reply, Rejection>;

fn create_namespace(state: &mut ShardState, now: u64, name: &str, description: &str, out: &mut Outcome) -> Handled {
    limits::check_name("namespace", name)?;
    if description.len() > 4096 {
        return Err(invalid("namespace description is longer than 4096 bytes".into()));
    }
    if state.namespaces.contains_key(name) {
        return Err(Rejection::new(ErrorCode::AlreadyExists, format!("namespace {name:?} already exists")));
    }
    let record = NamespaceRecord { name: name.to_string(), description: description.to_string(), created_ms: now };
    state.namespaces.insert(name.to_string(), record.clone());
    out.writes.push(Write::PutNamespace(record.clone()));
    Ok(Reply::NamespaceCreated(record))
}

struct StartRequest<'a> {
    key: &'a WorkflowKey,
    run_id: &'a str,
    workflow_type: &'a str,
    task_queue: &'a str,
    input: &'a Payload,
    request_id: &'a str,
    workflow_task_timeout_ms: u64,
}

fn start_workflow(state: &mut ShardState, now: u64, request: StartRequest<'_>, out: &mut Outcome) -> Handled {
    let key = request.key;
    limits::check_name("namespace", &key.namespace)?;
    limits::check_name("workflow id", &key.workflow_id)?;
    limits::check_name("workflow type", request.workflow_type)?;
    limits::check_name("task queue", request.task_queue)?;
    limits::check_payload("workflow input", request.input.as_bytes())?;
    if request.request_id.len() > limits::NAME_BYTES_MAX {
        return Err(invalid("request id is longer than 255 bytes".into()));
    }
    limits::check_duration("workflow task timeout", request.workflow_task_timeout_ms)?;
    if let Some(execution) = state.executions.get(key) {
        let run = &execution.run;
        if !request.request_id.is_empty() && run.start_request_id == request.request_id {
            return Ok(Reply::Started { run_id: run.run_id.clone(), started: false });
        }
        if run.status.is_open() {
            return Err(Rejection::new(
                ErrorCode::AlreadyExists,
                format!("workflow {key} is already running (run {}); its id can be reused once it closes", run.run_id),
            ));
        }
    }
    let run = new_run(
        key,
        now,
        NewRun {
            run_id: request.run_id,
            workflow_type: request.workflow_type,
            task_queue: request.task_queue,
            input: request.input,
            request_id: request.request_id,
            continued_from: None,
            workflow_task_timeout_ms: request.workflow_task_timeout_ms,
        },
        out,
    );
    state.executions.insert(key.clone(), Execution { run });
    out.writes.push(Write::PutExecution { key: key.clone() });
    Ok(Reply::Started { run_id: request.run_id.to_string(), started: true })
}

struct NewRun<'a> {
    run_id: &'a str,
    workflow_type: &'a str,
    task_queue: &'a str,
    input: &'a Payload,
    request_id: &'a str,
    continued_from: Option<String>,
    workflow_task_timeout_ms: u64,
}

/// Creates a run with its `WorkflowStarted` event and first workflow task.
fn new_run(key: &WorkflowKey, now: u64, spec: NewRun<'_>, out: &mut Outcome) -> RunState {
    let timeout_ms = if spec.workflow_task_timeout_ms == 0 {
        DEFAULT_WORKFLOW_TASK_TIMEOUT_MS
    } else {
        spec.workflow_task_timeout_ms
    };
    let mut run = RunState {
        run_id: spec.run_id.to_string(),
        workflow_type: spec.workflow_type.to_string(),
        task_queue: spec.task_queue.to_string(),
        status: RunStatus::Running,
        start_request_id: spec.request_id.to_string(),
        start_ms: now,
        close_ms: 0,
        next_event_id: 1,
        history_bytes: 0,
        workflow_task_timeout_ms: timeout_ms,
        workflow_task: None,
        last_seq: 0,
        activities: Default::default(),
        timers: Default::default(),
        signal_waits: Default::default(),
        buffered_signals: Default::default(),
        cancel_requested: false,
        continued_as_run_id: String::new(),
        close_event_id: 0,
        last_event_ms: now,
        last_wake_event_id: 0,
    };
    record(
        key,
        &mut run,
        now,
        EventKind::WorkflowStarted {
            workflow_type: spec.workflow_type.to_string(),
            task_queue: spec.task_queue.to_string(),
            input: spec.input.clone(),
            request_id: spec.request_id.to_string(),
            continued_from_run_id: spec.continued_from,
            workflow_task_timeout_ms: timeout_ms,
        },
        out,
    );
    out.writes.push(Write::PutVisibility(run.summary(key)));
    schedule_workflow_task(key, &mut run, now, 1, out);
    run
}

/// Appends one event to the run's history.
fn record(key: &WorkflowKey, run: &mut RunState, now: u64, kind: EventKind, out: &mut Outcome) -> u64 {
    let event_id = run.next_event_id;
    run.next_event_id += 1;
    run.history_bytes += kind.size_bytes();
    let time_ms = now.max(run.last_event_ms);
    run.last_event_ms = time_ms;
    if kind.wakes_workflow() {
        run.last_wake_event_id = event_id;
    }
    let event = HistoryEvent { event_id, time_ms, kind };
    match out.writes.last_mut() {
        Some(Write::AppendEvents { key: k, run_id, events }) if k == key && *run_id == run.run_id => events.push(event),
        _ => out.writes.push(Write::AppendEvents { key: key.clone(), run_id: run.run_id.clone(), events: vec![event] }),
    }
    event_id
}

/// Whether `events` more events (and about `bytes` of payload) fit in the
/// history while leaving room for the event that closes the run.
fn history_has_room(run: &RunState, events: u64, bytes: u64) -> bool {
    run.history_length() + events < limits::HISTORY_EVENTS_MAX
        && run.history_bytes + bytes + 64 * events < limits::HISTORY_BYTES_MAX
}

/// Closes a run that reached the history limit, using the slot kept for it.
fn fail_for_history_limit(key: &WorkflowKey, run: &mut RunState, now: u64, out: &mut Outcome) {
    let failure = Failure::new(
        HISTORY_LIMIT_ERROR_TYPE,
        format!(
            "the run reached the history limit ({} events or {} bytes); long-running workflows must continue as new",
            limits::HISTORY_EVENTS_MAX,
            limits::HISTORY_BYTES_MAX
        ),
    );
    close_run(key, run, now, EventKind::WorkflowFailed { failure }, RunStatus::Failed, out);
}

fn workflow_ready_task(key: &WorkflowKey, run: &RunState, task: &WorkflowTaskState) -> ReadyTask {
    ReadyTask {
        kind: TaskKind::Workflow,
        task_queue: run.task_queue.clone(),
        key: key.clone(),
        run_id: run.run_id.clone(),
        seq: 0,
        scheduled_event_id: task.scheduled_event_id,
        attempt: task.attempt,
    }
}

fn activity_ready_task(key: &WorkflowKey, run_id: &str, seq: u32, activity: &ActivityState) -> ReadyTask {
    ReadyTask {
        kind: TaskKind::Activity,
        task_queue: activity.task_queue.clone(),
        key: key.clone(),
        run_id: run_id.to_string(),
        seq,
        scheduled_event_id: 0,
        attempt: activity.attempt,
    }
}

/// Schedules a workflow task unless one is pending or the run is closed.
fn schedule_workflow_task(
    key: &WorkflowKey,
    run: &mut RunState,
    now: u64,
    attempt: u32,
    out: &mut Outcome,
) -> Option<ReadyTask> {
    if !run.status.is_open() || run.workflow_task.is_some() {
        return None;
    }
    let scheduled_event_id = record(key, run, now, EventKind::WorkflowTaskScheduled { attempt }, out);
    let task = WorkflowTaskState { attempt, scheduled_event_id, backoff_until_ms: 0, last_failure: None };
    let ready = workflow_ready_task(key, run, &task);
    run.workflow_task = Some(task);
    out.writes.push(Write::PutReady(ready.clone()));
    out.effects.push(Effect::TaskReady(ready.clone()));
    Some(ready)
}

fn arm_timer(timer: DueTimer, out: &mut Outcome) {
    out.writes.push(Write::PutTimer(timer.clone()));
    out.effects.push(Effect::TimerArmed(timer));
}

/// Closes the run with `kind` and drops all its pending work.
fn close_run(key: &WorkflowKey, run: &mut RunState, now: u64, kind: EventKind, status: RunStatus, out: &mut Outcome) {
    debug_assert!(kind.is_close());
    if let Some(task) = run.workflow_task.take()
        && task.is_ready()
    {
        out.writes.push(Write::DeleteReady(workflow_ready_task(key, run, &task)));
    }
    let activities = std::mem::take(&mut run.activities);
    for (seq, activity) in &activities {
        if activity.is_ready() {
            out.writes.push(Write::DeleteReady(activity_ready_task(key, &run.run_id, *seq, activity)));
        }
    }
    // Timers are deleted lazily: each fires into a no-op that removes it.
    run.timers.clear();
    run.signal_waits.clear();
    run.buffered_signals.clear();
    let close_event_id = record(key, run, now, kind, out);
    run.status = status;
    run.close_ms = now;
    run.close_event_id = close_event_id;
    out.writes.push(Write::PutVisibility(run.summary(key)));
    out.effects.push(Effect::RunClosed { key: key.clone(), run_id: run.run_id.clone() });
}

fn not_found(key: &WorkflowKey) -> Rejection {
    Rejection::new(ErrorCode::NotFound, format!("workflow {key} not found"))
}

/// Finds the run a client command names: the current run, or the run id given.
fn client_run<'s>(state: &'s mut ShardState, key: &WorkflowKey, run_id: &str) -> Result<&'s mut RunState, Rejection> {
    limits::check_name("namespace", &key.namespace)?;
    limits::check_name("workflow id", &key.workflow_id)?;
    let execution = state.executions.get_mut(key).ok_or_else(|| not_found(key))?;
    let run = &mut execution.run;
    if !run_id.is_empty() && run.run_id != run_id {
        return Err(Rejection::new(
            ErrorCode::FailedPrecondition,
            format!("run {run_id} of workflow {key} is not its current run ({}); it is closed", run.run_id),
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

fn stale(token: &TaskToken, why: &str) -> Rejection {
    Rejection::new(
        ErrorCode::FailedPrecondition,
        format!("stale task token for workflow {} run {} (attempt {}): {why}", token.key, token.run_id, token.attempt),
    )
}

/// The run a task token names, if it is still that run's open current run.
fn token_run<'s>(state: &'s mut ShardState, token: &TaskToken) -> Result<&'s mut RunState, Rejection> {
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

/// The run of a workflow-task token that is still the run's current workflow task.
fn workflow_token_run<'s>(state: &'s mut ShardState, token: &TaskToken) -> Result<(&'s mut RunState, u64), Rejection> {
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

fn sanitize_failure(failure: &Failure) -> Result<Failure, Rejection> {
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

/// Checks a completion's commands against the run before anything changes.
fn check_workflow_commands(run: &RunState, commands: &[WorkflowCommand]) -> Result<(), Rejection> {
    if commands.len() > limits::COMMANDS_PER_TASK_MAX {
        return Err(invalid(format!(
            "a workflow task completion carries {} commands; the limit is {}",
            commands.len(),
            limits::COMMANDS_PER_TASK_MAX
        )));
    }
    let mut last_seq = run.last_seq;
    let mut new_operations = 0usize;
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
        match command {
            WorkflowCommand::RecordStep { name, outcome, .. } => {
                limits::check_name("step name", name)?;
                match outcome {
                    StepOutcome::Completed(result) => limits::check_payload("step result", result.as_bytes())?,
                    StepOutcome::Failed(failure) => {
                        sanitize_failure(failure)?;
                    }
                }
            }
            WorkflowCommand::ScheduleActivity { activity_type, task_queue, input, options, .. } => {
                limits::check_name("activity type", activity_type)?;
                if !task_queue.is_empty() {
                    limits::check_name("activity task queue", task_queue)?;
                }
                limits::check_payload("activity input", input.as_bytes())?;
                limits::check_duration("schedule-to-start timeout", options.schedule_to_start_timeout_ms)?;
                limits::check_duration("start-to-close timeout", options.start_to_close_timeout_ms)?;
                limits::check_duration("schedule-to-close timeout", options.schedule_to_close_timeout_ms)?;
                limits::check_duration("heartbeat timeout", options.heartbeat_timeout_ms)?;
                new_operations += 1;
            }
            WorkflowCommand::StartTimer { duration_ms, .. } => {
                limits::check_duration("timer", *duration_ms)?;
                new_operations += 1;
            }
            WorkflowCommand::CancelTimer { seq } => {
                if *seq > last_seq {
                    return Err(invalid(format!("command {index} cancels timer seq {seq}, which was never started")));
                }
            }
            WorkflowCommand::WaitSignal { name, timeout_ms, .. } => {
                limits::check_name("signal name", name)?;
                limits::check_duration("signal timeout", *timeout_ms)?;
                new_operations += 1;
            }
            WorkflowCommand::CompleteWorkflow { result } => {
                limits::check_payload("workflow result", result.as_bytes())?
            }
            WorkflowCommand::FailWorkflow { failure } => {
                sanitize_failure(failure)?;
            }
            WorkflowCommand::ContinueAsNew { input, workflow_type, task_queue } => {
                limits::check_payload("continue-as-new input", input.as_bytes())?;
                if !workflow_type.is_empty() {
                    limits::check_name("workflow type", workflow_type)?;
                }
                if !task_queue.is_empty() {
                    limits::check_name("task queue", task_queue)?;
                }
            }
        }
    }
    let pending = run.activities.len() + run.timers.len() + run.signal_waits.len() + new_operations;
    if pending > limits::PENDING_OPERATIONS_MAX {
        return Err(Rejection::new(
            ErrorCode::ResourceExhausted,
            format!("the run would have {pending} pending operations; the limit is {}", limits::PENDING_OPERATIONS_MAX),
        ));
    }
    Ok(())
}

fn command_events_estimate(commands: &[WorkflowCommand]) -> (u64, u64) {
    let mut events = 3; // started, completed, and a next scheduled task
    let mut bytes = 0u64;
    for command in commands {
        events += 2;
        bytes += match command {
            WorkflowCommand::RecordStep { outcome: StepOutcome::Completed(p), .. } => p.len() as u64,
            WorkflowCommand::ScheduleActivity { input, .. } => input.len() as u64,
            WorkflowCommand::CompleteWorkflow { result } => result.len() as u64,
            WorkflowCommand::ContinueAsNew { input, .. } => input.len() as u64,
            _ => 0,
        };
    }
    (events, bytes)
}

/// Takes the run's pending workflow task as a worker answers it (completion or failure): drops
/// it from the ready index and records `WorkflowTaskStarted` with what the worker saw (dispatch
/// does not commit; see ARCHITECTURE). The caller records how the task ended.
fn end_workflow_task(
    key: &WorkflowKey,
    run: &mut RunState,
    now: u64,
    seen_event_id: u64,
    out: &mut Outcome,
) -> WorkflowTaskState {
    let task = run.workflow_task.take().expect("workflow_token_run checked the task is pending");
    out.writes.push(Write::DeleteReady(workflow_ready_task(key, run, &task)));
    let kind = EventKind::WorkflowTaskStarted {
        scheduled_event_id: task.scheduled_event_id,
        attempt: task.attempt,
        seen_event_id,
    };
    record(key, run, now, kind, out);
    task
}

/// How the worker completed its workflow task (see `CommandKind::CompleteWorkflowTask`).
#[derive(Clone, Copy)]
struct CompletedTask {
    inline_next_task: bool,
    steps_observed: bool,
}

fn complete_workflow_task(
    state: &mut ShardState,
    now: u64,
    token: &TaskToken,
    commands: &[WorkflowCommand],
    new_run_id: &str,
    task: CompletedTask,
    out: &mut Outcome,
) -> Handled {
    let CompletedTask { inline_next_task, steps_observed } = task;
    let key = &token.key;
    let (run, seen_event_id) = workflow_token_run(state, token)?;
    check_workflow_commands(run, commands)?;
    let (events, bytes) = command_events_estimate(commands);
    if !history_has_room(run, events, bytes) {
        fail_for_history_limit(key, run, now, out);
        out.writes.push(Write::PutExecution { key: key.clone() });
        return Ok(Reply::WorkflowTaskCompleted { next_task: None, appended: Vec::new() });
    }
    // Events the code must see arrived while the task ran: it needs the next task at once.
    // (Informational ones, like a retried activity attempt, wait for the next real task.)
    let had_unseen_events = run.last_wake_event_id > seen_event_id;
    let task = end_workflow_task(key, run, now, seen_event_id, out);
    let scheduled_event_id = task.scheduled_event_id;
    record(key, run, now, EventKind::WorkflowTaskCompleted { scheduled_event_id }, out);

    let mut resolved_now = false;
    let mut continued: Option<RunState> = None;
    for command in commands {
        if let Some(seq) = command.new_seq() {
            run.last_seq = seq;
        }
        match command {
            WorkflowCommand::RecordStep { seq, name, outcome, attempts } => {
                let kind = match outcome {
                    StepOutcome::Completed(result) => EventKind::StepCompleted {
                        seq: *seq,
                        name: name.clone(),
                        result: result.clone(),
                        attempts: *attempts,
                    },
                    StepOutcome::Failed(failure) => EventKind::StepFailed {
                        seq: *seq,
                        name: name.clone(),
                        failure: sanitize_failure(failure)?,
                        attempts: *attempts,
                    },
                };
                record(key, run, now, kind, out);
                // The code needs a task to learn the result unless it already ran past the step.
                resolved_now |= !steps_observed;
            }
            WorkflowCommand::ScheduleActivity { seq, activity_type, task_queue, input, retry_policy, options } => {
                let task_queue = if task_queue.is_empty() { run.task_queue.clone() } else { task_queue.clone() };
                let mut options = options.clone();
                if options.start_to_close_timeout_ms == 0 && options.schedule_to_close_timeout_ms == 0 {
                    options.start_to_close_timeout_ms = crate::model::DEFAULT_ACTIVITY_START_TO_CLOSE_MS;
                }
                let scheduled_event_id = record(
                    key,
                    run,
                    now,
                    EventKind::ActivityScheduled {
                        seq: *seq,
                        activity_type: activity_type.clone(),
                        task_queue: task_queue.clone(),
                        input: input.clone(),
                        retry_policy: retry_policy.clone(),
                        options: options.clone(),
                    },
                    out,
                );
                let activity = ActivityState {
                    activity_type: activity_type.clone(),
                    task_queue,
                    input: input.clone(),
                    retry_policy: retry_policy.clone(),
                    options: options.clone(),
                    scheduled_event_id,
                    scheduled_ms: now,
                    attempt: 1,
                    backoff_until_ms: 0,
                    last_failure: None,
                    heartbeat_details: Payload::default(),
                };
                let ready = activity_ready_task(key, &run.run_id, *seq, &activity);
                out.writes.push(Write::PutReady(ready.clone()));
                out.effects.push(Effect::TaskReady(ready));
                if options.schedule_to_close_timeout_ms > 0 {
                    arm_timer(
                        DueTimer {
                            due_ms: now.saturating_add(options.schedule_to_close_timeout_ms),
                            key: key.clone(),
                            run_id: run.run_id.clone(),
                            kind: TimerKind::ActivityScheduleToClose { seq: *seq },
                        },
                        out,
                    );
                }
                if options.schedule_to_start_timeout_ms > 0 {
                    arm_timer(
                        DueTimer {
                            due_ms: now.saturating_add(options.schedule_to_start_timeout_ms),
                            key: key.clone(),
                            run_id: run.run_id.clone(),
                            kind: TimerKind::ActivityScheduleToStart { seq: *seq, attempt: 1 },
                        },
                        out,
                    );
                }
                run.activities.insert(*seq, activity);
            }
            WorkflowCommand::StartTimer { seq, duration_ms } => {
                let fire_ms = now.saturating_add(*duration_ms);
                record(key, run, now, EventKind::TimerStarted { seq: *seq, duration_ms: *duration_ms, fire_ms }, out);
                run.timers.insert(*seq, TimerState { fire_ms });
                arm_timer(
                    DueTimer {
                        due_ms: fire_ms,
                        key: key.clone(),
                        run_id: run.run_id.clone(),
                        kind: TimerKind::User { seq: *seq },
                    },
                    out,
                );
            }
            WorkflowCommand::CancelTimer { seq } => {
                if run.timers.remove(seq).is_some() {
                    record(key, run, now, EventKind::TimerCanceled { seq: *seq }, out);
                    resolved_now = true;
                }
            }
            WorkflowCommand::WaitSignal { seq, name, timeout_ms } => {
                record(
                    key,
                    run,
                    now,
                    EventKind::SignalWaitStarted { seq: *seq, name: name.clone(), timeout_ms: *timeout_ms },
                    out,
                );
                if let Some(position) = run.buffered_signals.iter().position(|s| s.name == *name) {
                    let signal = run.buffered_signals.remove(position).expect("position is in range");
                    record(
                        key,
                        run,
                        now,
                        EventKind::SignalConsumed { seq: *seq, name: name.clone(), payload: signal.payload },
                        out,
                    );
                    resolved_now = true;
                } else {
                    run.signal_waits.insert(*seq, SignalWait { name: name.clone(), timeout_ms: *timeout_ms });
                    if *timeout_ms > 0 {
                        arm_timer(
                            DueTimer {
                                due_ms: now.saturating_add(*timeout_ms),
                                key: key.clone(),
                                run_id: run.run_id.clone(),
                                kind: TimerKind::SignalTimeout { seq: *seq },
                            },
                            out,
                        );
                    }
                }
            }
            WorkflowCommand::CompleteWorkflow { result } => {
                close_run(
                    key,
                    run,
                    now,
                    EventKind::WorkflowCompleted { result: result.clone() },
                    RunStatus::Completed,
                    out,
                );
            }
            WorkflowCommand::FailWorkflow { failure } => {
                let failure = sanitize_failure(failure)?;
                if failure.error_type == CANCELED_ERROR_TYPE && run.cancel_requested {
                    close_run(key, run, now, EventKind::WorkflowCanceled { failure }, RunStatus::Canceled, out);
                } else {
                    close_run(key, run, now, EventKind::WorkflowFailed { failure }, RunStatus::Failed, out);
                }
            }
            WorkflowCommand::ContinueAsNew { input, workflow_type, task_queue } => {
                let workflow_type =
                    if workflow_type.is_empty() { run.workflow_type.clone() } else { workflow_type.clone() };
                let task_queue = if task_queue.is_empty() { run.task_queue.clone() } else { task_queue.clone() };
                close_run(
                    key,
                    run,
                    now,
                    EventKind::WorkflowContinuedAsNew { new_run_id: new_run_id.to_string(), input: input.clone() },
                    RunStatus::ContinuedAsNew,
                    out,
                );
                run.continued_as_run_id = new_run_id.to_string();
                let next = new_run(
                    key,
                    now,
                    NewRun {
                        run_id: new_run_id,
                        workflow_type: &workflow_type,
                        task_queue: &task_queue,
                        input,
                        request_id: "",
                        continued_from: Some(run.run_id.clone()),
                        workflow_task_timeout_ms: run.workflow_task_timeout_ms,
                    },
                    out,
                );
                continued = Some(next);
            }
        }
    }
    let next_task =
        if resolved_now || had_unseen_events { schedule_workflow_task(key, run, now, 1, out) } else { None };
    let mut appended = Vec::new();
    if inline_next_task && next_task.is_some() {
        // The completing worker gets it in the reply; no poller must get it too.
        out.effects.retain(|effect| !matches!(effect, Effect::TaskReady(t) if Some(t) == next_task.as_ref()));
        for write in &out.writes {
            if let Write::AppendEvents { key: written_key, run_id, events } = write
                && written_key == key
                && *run_id == token.run_id
            {
                appended.extend(events.iter().cloned());
            }
        }
    }
    if let Some(next) = continued {
        state.executions.insert(key.clone(), Execution { run: next });
    }
    out.writes.push(Write::PutExecution { key: key.clone() });
    Ok(Reply::WorkflowTaskCompleted { next_task, appended })
}

fn fail_workflow_task(
    state: &mut ShardState,
    now: u64,
    token: &TaskToken,
    failure: &Failure,
    out: &mut Outcome,
) -> Handled {
    let key = &token.key;
    let failure = sanitize_failure(failure)?;
    let (run, seen_event_id) = workflow_token_run(state, token)?;
    if !history_has_room(run, 3, failure.message.len() as u64) {
        fail_for_history_limit(key, run, now, out);
        out.writes.push(Write::PutExecution { key: key.clone() });
        return Ok(Reply::Done);
    }
    let task = end_workflow_task(key, run, now, seen_event_id, out);
    let scheduled_event_id = task.scheduled_event_id;
    record(
        key,
        run,
        now,
        EventKind::WorkflowTaskFailed { scheduled_event_id, attempt: task.attempt, failure: failure.clone() },
        out,
    );
    let attempt = task.attempt.saturating_add(1);
    let due_ms = now.saturating_add(workflow_task_retry_delay_ms(task.attempt));
    run.workflow_task = Some(WorkflowTaskState {
        attempt,
        scheduled_event_id: 0,
        backoff_until_ms: due_ms,
        last_failure: Some(failure),
    });
    arm_timer(
        DueTimer {
            due_ms,
            key: key.clone(),
            run_id: run.run_id.clone(),
            kind: TimerKind::WorkflowTaskRetry { attempt },
        },
        out,
    );
    out.writes.push(Write::PutExecution { key: key.clone() });
    Ok(Reply::Done)
}

fn workflow_task_timed_out(state: &mut ShardState, now: u64, token: &TaskToken, out: &mut Outcome) -> Handled {
    let key = &token.key;
    let (run, _) = workflow_token_run(state, token)?;
    if !history_has_room(run, 2, 0) {
        fail_for_history_limit(key, run, now, out);
        out.writes.push(Write::PutExecution { key: key.clone() });
        return Ok(Reply::Done);
    }
    let task = run.workflow_task.take().expect("workflow_token_run checked the task is pending");
    out.writes.push(Write::DeleteReady(workflow_ready_task(key, run, &task)));
    record(
        key,
        run,
        now,
        EventKind::WorkflowTaskTimedOut { scheduled_event_id: task.scheduled_event_id, attempt: task.attempt },
        out,
    );
    schedule_workflow_task(key, run, now, task.attempt.saturating_add(1), out);
    out.writes.push(Write::PutExecution { key: key.clone() });
    Ok(Reply::Done)
}

/// The run and seq of an activity token that names the activity's current attempt.
fn activity_token_run<'s>(state: &'s mut ShardState, token: &TaskToken) -> Result<(&'s mut RunState, u32), Rejection> {
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

fn complete_activity(
    state: &mut ShardState,
    now: u64,
    token: &TaskToken,
    result: &Payload,
    out: &mut Outcome,
) -> Handled {
    let key = &token.key;
    limits::check_payload("activity result", result.as_bytes())?;
    let (run, seq) = activity_token_run(state, token)?;
    if !history_has_room(run, 3, result.len() as u64) {
        fail_for_history_limit(key, run, now, out);
        out.writes.push(Write::PutExecution { key: key.clone() });
        return Ok(Reply::Done);
    }
    let activity = run.activities.remove(&seq).expect("activity_token_run found it");
    out.writes.push(Write::DeleteReady(activity_ready_task(key, &run.run_id, seq, &activity)));
    record(key, run, now, EventKind::ActivityStarted { seq, attempt: activity.attempt }, out);
    record(key, run, now, EventKind::ActivityCompleted { seq, attempt: activity.attempt, result: result.clone() }, out);
    schedule_workflow_task(key, run, now, 1, out);
    out.writes.push(Write::PutExecution { key: key.clone() });
    Ok(Reply::Done)
}

/// Ends an activity attempt that failed or timed out: retried while the policy
/// and the schedule-to-close deadline allow, else the activity fails.
fn fail_activity_attempt(
    state: &mut ShardState,
    now: u64,
    token: &TaskToken,
    failure: Failure,
    timeout: Option<TimeoutKind>,
    out: &mut Outcome,
) -> Handled {
    let key = &token.key;
    let failure = sanitize_failure(&failure)?;
    let (run, seq) = activity_token_run(state, token)?;
    if !history_has_room(run, 3, failure.message.len() as u64) {
        fail_for_history_limit(key, run, now, out);
        out.writes.push(Write::PutExecution { key: key.clone() });
        return Ok(Reply::Done);
    }
    let run_id = run.run_id.clone();
    let activity = run.activities.get_mut(&seq).expect("activity_token_run found it");
    let attempt = activity.attempt;
    out.writes.push(Write::DeleteReady(activity_ready_task(key, &run_id, seq, activity)));
    let next_attempt_ms = now.saturating_add(activity.retry_policy.delay_ms(attempt));
    let deadline_ms = match activity.options.schedule_to_close_timeout_ms {
        0 => u64::MAX,
        timeout_ms => activity.scheduled_ms.saturating_add(timeout_ms),
    };
    let retry = activity.retry_policy.allows_retry(attempt, &failure) && next_attempt_ms < deadline_ms;
    record(key, run, now, EventKind::ActivityStarted { seq, attempt }, out);
    if retry {
        record(
            key,
            run,
            now,
            EventKind::ActivityAttemptFailed { seq, attempt, failure: failure.clone(), next_attempt_ms },
            out,
        );
        let activity = run.activities.get_mut(&seq).expect("still pending");
        activity.attempt = attempt.saturating_add(1);
        activity.backoff_until_ms = next_attempt_ms;
        activity.last_failure = Some(failure);
        arm_timer(
            DueTimer {
                due_ms: next_attempt_ms,
                key: key.clone(),
                run_id,
                kind: TimerKind::ActivityRetry { seq, attempt: attempt.saturating_add(1) },
            },
            out,
        );
    } else {
        run.activities.remove(&seq);
        let kind = match timeout {
            Some(timeout) => EventKind::ActivityTimedOut { seq, attempt, timeout },
            None => EventKind::ActivityFailed { seq, attempt, failure },
        };
        record(key, run, now, kind, out);
        schedule_workflow_task(key, run, now, 1, out);
    }
    out.writes.push(Write::PutExecution { key: key.clone() });
    Ok(Reply::Done)
}

fn record_heartbeat(state: &mut ShardState, token: &TaskToken, details: &Payload, out: &mut Outcome) -> Handled {
    limits::check_payload("heartbeat details", details.as_bytes())?;
    if let Some(execution) = state.executions.get(&token.key) {
        let run = &execution.run;
        // The activity was resolved by a cancel request or the run ended: tell the
        // activity to stop rather than failing its heartbeat.
        if run.run_id == token.run_id && (run.cancel_requested || !run.status.is_open()) {
            return Ok(Reply::Heartbeat { cancel_requested: true });
        }
    }
    let (run, seq) = activity_token_run(state, token)?;
    let activity = run.activities.get_mut(&seq).expect("activity_token_run found it");
    activity.heartbeat_details = details.clone();
    out.writes.push(Write::PutExecution { key: token.key.clone() });
    Ok(Reply::Heartbeat { cancel_requested: false })
}

fn fire_timer(
    state: &mut ShardState,
    now: u64,
    timer: &DueTimer,
    attempt_dispatched: bool,
    out: &mut Outcome,
) -> Handled {
    out.writes.push(Write::DeleteTimer(timer.clone()));
    let key = &timer.key;
    let Some(execution) = state.executions.get_mut(key) else { return Ok(Reply::Done) };
    let run = &mut execution.run;
    if run.run_id != timer.run_id || !run.status.is_open() {
        return Ok(Reply::Done);
    }
    if !history_has_room(run, 3, 0) {
        fail_for_history_limit(key, run, now, out);
        out.writes.push(Write::PutExecution { key: key.clone() });
        return Ok(Reply::Done);
    }
    let changed = match timer.kind {
        TimerKind::User { seq } => match run.timers.get(&seq) {
            Some(t) if t.fire_ms == timer.due_ms => {
                run.timers.remove(&seq);
                record(key, run, now, EventKind::TimerFired { seq }, out);
                schedule_workflow_task(key, run, now, 1, out);
                true
            }
            _ => false,
        },
        TimerKind::SignalTimeout { seq } => match run.signal_waits.get(&seq) {
            Some(wait) if wait.timeout_ms > 0 => {
                let name = wait.name.clone();
                run.signal_waits.remove(&seq);
                record(key, run, now, EventKind::SignalWaitTimedOut { seq, name }, out);
                schedule_workflow_task(key, run, now, 1, out);
                true
            }
            _ => false,
        },
        TimerKind::ActivityRetry { seq, attempt } => match run.activities.get_mut(&seq) {
            Some(activity) if activity.attempt == attempt && activity.backoff_until_ms == timer.due_ms => {
                activity.backoff_until_ms = 0;
                let ready = activity_ready_task(key, &timer.run_id, seq, activity);
                let schedule_to_start_ms = activity.options.schedule_to_start_timeout_ms;
                out.writes.push(Write::PutReady(ready.clone()));
                out.effects.push(Effect::TaskReady(ready));
                if schedule_to_start_ms > 0 {
                    arm_timer(
                        DueTimer {
                            due_ms: now.saturating_add(schedule_to_start_ms),
                            key: key.clone(),
                            run_id: timer.run_id.clone(),
                            kind: TimerKind::ActivityScheduleToStart { seq, attempt },
                        },
                        out,
                    );
                }
                true
            }
            _ => false,
        },
        TimerKind::ActivityScheduleToStart { seq, attempt } => match run.activities.get(&seq) {
            Some(activity) if activity.attempt == attempt && activity.is_ready() && !attempt_dispatched => {
                let activity = run.activities.remove(&seq).expect("just found");
                out.writes.push(Write::DeleteReady(activity_ready_task(key, &timer.run_id, seq, &activity)));
                record(
                    key,
                    run,
                    now,
                    EventKind::ActivityTimedOut { seq, attempt, timeout: TimeoutKind::ScheduleToStart },
                    out,
                );
                schedule_workflow_task(key, run, now, 1, out);
                true
            }
            _ => false,
        },
        TimerKind::ActivityScheduleToClose { seq } => match run.activities.get(&seq) {
            Some(activity)
                if activity.scheduled_ms.saturating_add(activity.options.schedule_to_close_timeout_ms)
                    == timer.due_ms =>
            {
                let activity = run.activities.remove(&seq).expect("just found");
                if activity.is_ready() {
                    out.writes.push(Write::DeleteReady(activity_ready_task(key, &timer.run_id, seq, &activity)));
                }
                let attempt = activity.attempt;
                record(
                    key,
                    run,
                    now,
                    EventKind::ActivityTimedOut { seq, attempt, timeout: TimeoutKind::ScheduleToClose },
                    out,
                );
                schedule_workflow_task(key, run, now, 1, out);
                true
            }
            _ => false,
        },
        TimerKind::WorkflowTaskRetry { attempt } => match &run.workflow_task {
            Some(task) if !task.is_ready() && task.attempt == attempt && task.backoff_until_ms == timer.due_ms => {
                let last_failure = task.last_failure.clone();
                run.workflow_task = None;
                schedule_workflow_task(key, run, now, attempt, out);
                if let Some(task) = run.workflow_task.as_mut() {
                    task.last_failure = last_failure;
                }
                true
            }
            _ => false,
        },
    };
    if changed {
        out.writes.push(Write::PutExecution { key: key.clone() });
    }
    Ok(Reply::Done)
}

fn signal(
    state: &mut ShardState,
    now: u64,
    key: &WorkflowKey,
    run_id: &str,
    name: &str,
    input: &Payload,
    out: &mut Outcome,
) -> Handled {
    limits::check_name("signal name", name)?;
    limits::check_payload("signal input", input.as_bytes())?;
    let run = client_run(state, key, run_id)?;
    if !history_has_room(run, 4, input.len() as u64) {
        return Err(Rejection::new(
            ErrorCode::ResourceExhausted,
            format!("workflow {key} is at its history limit and takes no more signals"),
        ));
    }
    if run.buffered_signals.len() >= limits::BUFFERED_SIGNALS_MAX {
        return Err(Rejection::new(
            ErrorCode::ResourceExhausted,
            format!("workflow {key} has {} unconsumed signals, the limit", limits::BUFFERED_SIGNALS_MAX),
        ));
    }
    record(key, run, now, EventKind::SignalReceived { name: name.to_string(), payload: input.clone() }, out);
    let waiting = run.signal_waits.iter().find(|(_, wait)| wait.name == name).map(|(seq, _)| *seq);
    match waiting {
        Some(seq) => {
            run.signal_waits.remove(&seq);
            record(
                key,
                run,
                now,
                EventKind::SignalConsumed { seq, name: name.to_string(), payload: input.clone() },
                out,
            );
            schedule_workflow_task(key, run, now, 1, out);
        }
        None => run.buffered_signals.push_back(BufferedSignal { name: name.to_string(), payload: input.clone() }),
    }
    out.writes.push(Write::PutExecution { key: key.clone() });
    Ok(Reply::Done)
}

fn request_cancel(
    state: &mut ShardState,
    now: u64,
    key: &WorkflowKey,
    run_id: &str,
    reason: &str,
    out: &mut Outcome,
) -> Handled {
    check_reason(reason)?;
    let run = client_run(state, key, run_id)?;
    if run.cancel_requested {
        return Ok(Reply::Done);
    }
    let waiting = (run.activities.len() + run.timers.len() + run.signal_waits.len()) as u64;
    if !history_has_room(run, waiting + 2, 0) {
        fail_for_history_limit(key, run, now, out);
        out.writes.push(Write::PutExecution { key: key.clone() });
        return Ok(Reply::Done);
    }
    run.cancel_requested = true;
    record(key, run, now, EventKind::CancelRequested { reason: reason.to_string() }, out);
    let activities = std::mem::take(&mut run.activities);
    for (seq, activity) in activities {
        if activity.is_ready() {
            out.writes.push(Write::DeleteReady(activity_ready_task(key, &run.run_id, seq, &activity)));
        }
        record(key, run, now, EventKind::ActivityCanceled { seq }, out);
    }
    for seq in std::mem::take(&mut run.timers).into_keys() {
        record(key, run, now, EventKind::TimerCanceled { seq }, out);
    }
    for (seq, wait) in std::mem::take(&mut run.signal_waits) {
        record(key, run, now, EventKind::SignalWaitCanceled { seq, name: wait.name }, out);
    }
    schedule_workflow_task(key, run, now, 1, out);
    out.writes.push(Write::PutExecution { key: key.clone() });
    Ok(Reply::Done)
}

fn terminate(
    state: &mut ShardState,
    now: u64,
    key: &WorkflowKey,
    run_id: &str,
    reason: &str,
    out: &mut Outcome,
) -> Handled {
    check_reason(reason)?;
    let run = client_run(state, key, run_id)?;
    close_run(key, run, now, EventKind::WorkflowTerminated { reason: reason.to_string() }, RunStatus::Terminated, out);
    out.writes.push(Write::PutExecution { key: key.clone() });
    Ok(Reply::Done)
}

fn check_reason(reason: &str) -> Result<(), Rejection> {
    if reason.len() > limits::FAILURE_MESSAGE_BYTES_MAX {
        return Err(invalid(format!("reason is longer than {} bytes", limits::FAILURE_MESSAGE_BYTES_MAX)));
    }
    Ok(())
}
