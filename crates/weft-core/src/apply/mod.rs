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
//!
//! Layout: this module dispatches each [`CommandKind`] to the file of its family, and
//! [`context`] holds what every transition shares (recording events, scheduling the
//! workflow task, arming timers, closing the run). One file per command or event family,
//! each holding its checks, size estimate and transition side by side, with its tests:
//!
//! | file | commands and timers |
//! | --- | --- |
//! | [`namespace`] | `CreateNamespace` |
//! | [`node_ids`] | `AllocateNodeId`, `RetireNodeId`, `ActivateCommandVersion` |
//! | [`start`] | `StartWorkflow` |
//! | [`workflow_task`] | `CompleteWorkflowTask` (dispatching each workflow command), `FailWorkflowTask`, `WorkflowTaskTimedOut`, `RecordWorkflowTaskHeartbeat`, the workflow-task retry timer |
//! | [`step`] | `RecordStep` |
//! | [`activity`] | `ScheduleActivity`, `CompleteActivity`, `FailActivity`, `ActivityAttemptTimedOut`, `RecordHeartbeat`, the activity retry and timeout timers |
//! | [`timer`] | `StartTimer`, `CancelTimer`, the user timer |
//! | [`signal`] | `Signal`, `WaitSignal`, the signal-wait timeout |
//! | [`close`] | `CompleteWorkflow`, `FailWorkflow`, `ContinueAsNew`, `Terminate` |
//! | [`cancel`] | `RequestCancel` |
//! | [`fire_timer`] | `FireTimer`: routes a due timer to its family |

mod activity;
mod cancel;
mod close;
mod context;
mod fire_timer;
mod namespace;
mod node_ids;
mod signal;
mod start;
mod step;
mod timer;
mod workflow_task;

#[cfg(test)]
mod properties;

use crate::command::{Command, CommandKind};
use crate::event::HistoryEvent;
use crate::ids::{RunId, WorkflowKey};
use crate::model::{DueTimer, NamespaceRecord, ReadyTask, Rejection, Reply, RunSummary};
use crate::state::ShardState;

pub(crate) use context::{Handled, RunCtx};

/// A change to durable storage, in domain terms; the node's record layout maps each to keys.
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
    /// Store the shard's clock floor ([`ShardState::clock_floor_ms`]).
    PutClockFloor {
        now_ms: u64,
    },
    /// Store the highest node id given out or retired ([`ShardState::node_id_max`]).
    PutNodeIdMax {
        node_id: u64,
    },
    /// Store the activated command version ([`ShardState::command_version`]).
    PutCommandVersion {
        version: u32,
    },
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
    // Time never goes backwards within a shard, whatever the stamps of racing proposers or a
    // leader whose clock stepped back.
    let now = command.now_ms.max(state.clock_floor_ms);
    if now != state.clock_floor_ms {
        state.clock_floor_ms = now;
        out.writes.push(Write::PutClockFloor { now_ms: now });
    }
    let result = match &command.kind {
        CommandKind::CreateNamespace { name, description } => {
            namespace::create(state, now, name, description, &mut out)
        }
        CommandKind::StartWorkflow {
            key,
            run_id,
            workflow_type,
            task_queue,
            input,
            request_id,
            workflow_task_timeout_ms,
        } => {
            let request = start::StartCommand {
                key,
                run_id,
                workflow_type,
                task_queue,
                input,
                request_id,
                workflow_task_timeout_ms: *workflow_task_timeout_ms,
            };
            start::start_workflow(state, now, request, &mut out)
        }
        CommandKind::CompleteWorkflowTask { token, commands, new_run_id, inline_next_task, steps_observed } => {
            let completion = workflow_task::Completion {
                token,
                commands,
                new_run_id,
                inline_next_task: *inline_next_task,
                steps_observed: *steps_observed,
            };
            workflow_task::complete(state, now, completion, &mut out)
        }
        CommandKind::FailWorkflowTask { token, failure } => workflow_task::fail(state, now, token, failure, &mut out),
        CommandKind::WorkflowTaskTimedOut { token } => workflow_task::timed_out(state, now, token, &mut out),
        CommandKind::CompleteActivity { token, result } => activity::complete(state, now, token, result, &mut out),
        CommandKind::FailActivity { token, failure } => activity::fail(state, now, token, failure, &mut out),
        CommandKind::ActivityAttemptTimedOut { token, timeout } => {
            activity::attempt_timed_out(state, now, token, *timeout, &mut out)
        }
        CommandKind::RecordHeartbeat { token, details } => activity::record_heartbeat(state, token, details, &mut out),
        CommandKind::ActivityAttemptStarted { token } => activity::attempt_started(state, now, token, &mut out),
        CommandKind::FireTimer { timer } => fire_timer::fire(state, now, timer, &mut out),
        CommandKind::Signal { key, run_id, name, input, request_id } => {
            let request = signal::SignalRequest { key, run_id, name, input, request_id };
            signal::signal(state, now, request, &mut out)
        }
        CommandKind::RequestCancel { key, run_id, reason } => {
            cancel::request(state, now, key, run_id, reason, &mut out)
        }
        CommandKind::Terminate { key, run_id, reason } => close::terminate(state, now, key, run_id, reason, &mut out),
        CommandKind::RecordWorkflowTaskHeartbeat { token } => workflow_task::heartbeat(state, token),
        CommandKind::AllocateNodeId { above } => node_ids::allocate(state, *above, &mut out),
        CommandKind::RetireNodeId { node_id } => node_ids::retire(state, *node_id, &mut out),
        CommandKind::ActivateCommandVersion { version } => node_ids::activate_version(state, *version, &mut out),
    };
    check_postconditions(state, command, &out, result.is_ok());
    match result {
        Ok(reply) => out.reply = reply,
        Err(rejection) => {
            let keeps = |w: &Write| matches!(w, Write::DeleteTimer(_) | Write::PutClockFloor { .. });
            assert!(out.writes.iter().all(keeps), "a rejected command wrote more than timer cleanup: {:?}", out.writes);
            out.writes.retain(keeps);
            out.effects.clear();
            out.reply = Reply::Rejected(rejection);
        }
    }
    out
}

/// The workflow a command is about, if it names one.
fn command_key(kind: &CommandKind) -> Option<&WorkflowKey> {
    match kind {
        CommandKind::CreateNamespace { .. }
        | CommandKind::AllocateNodeId { .. }
        | CommandKind::RetireNodeId { .. }
        | CommandKind::ActivateCommandVersion { .. } => None,
        CommandKind::StartWorkflow { key, .. }
        | CommandKind::Signal { key, .. }
        | CommandKind::RequestCancel { key, .. }
        | CommandKind::Terminate { key, .. } => Some(key),
        CommandKind::CompleteWorkflowTask { token, .. }
        | CommandKind::FailWorkflowTask { token, .. }
        | CommandKind::WorkflowTaskTimedOut { token }
        | CommandKind::RecordWorkflowTaskHeartbeat { token }
        | CommandKind::CompleteActivity { token, .. }
        | CommandKind::FailActivity { token, .. }
        | CommandKind::ActivityAttemptTimedOut { token, .. }
        | CommandKind::RecordHeartbeat { token, .. }
        | CommandKind::ActivityAttemptStarted { token } => Some(&token.key),
        CommandKind::FireTimer { timer } => Some(&timer.key),
    }
}

/// Asserts (in every build: a violation is a bug that must stop the replica before it writes)
/// what every transition guarantees: the touched execution keeps its invariants, appended
/// events continue its history with consecutive ids, and a refusal appended nothing.
fn check_postconditions(state: &ShardState, command: &Command, out: &Outcome, applied: bool) {
    assert!(state.clock_floor_ms >= command.now_ms, "the clock floor went below a command's time");
    let Some(key) = command_key(&command.kind) else { return };
    if let Some(execution) = state.executions.get(key)
        && let Err(violation) = execution.validate()
    {
        panic!("{} left workflow {key} invalid: {violation}", command.kind.name());
    }
    for write in &out.writes {
        if let Write::AppendEvents { key: written, run_id, events } = write {
            assert!(applied, "a refused {} appended events", command.kind.name());
            assert!(written == key, "{} appended to workflow {written}, not {key}", command.kind.name());
            assert!(
                events.windows(2).all(|pair| pair[1].event_id == pair[0].event_id + 1),
                "{} appended non-consecutive events to run {run_id}",
                command.kind.name()
            );
        }
    }
}

/// Shorthand for a refusal of a command with `InvalidArgument`.
pub(crate) fn invalid(message: String) -> Rejection {
    crate::limits::invalid(message)
}
