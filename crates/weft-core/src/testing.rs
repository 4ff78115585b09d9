//! Test support for the pure core, for this crate's tests and (feature `testing`) other
//! crates': the [`Harness`] (a shard state plus every history it produced, driven by
//! commands, with the run and history invariants checked after every command) and a proptest
//! generator of random lifecycles ([`action_strategy`], [`drive`]).
//!
//! Not part of the engine: compiled only for tests (`cfg(test)` or the `testing` feature).

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::apply::{Outcome, Write, apply};
use crate::command::{Command, CommandKind, StepOutcome, WorkflowCommand};
use crate::event::{HistoryEvent, validate_history};
use crate::ids::{TaskToken, TokenTask, WorkflowKey};
use crate::model::{ActivityOptions, DueTimer, ErrorCode, Failure, Reply};
use crate::payload::Payload;
use crate::retry::RetryPolicy;
use crate::state::ShardState;

/// A shard state plus every history it produced, driven by commands.
#[derive(Default)]
pub struct Harness {
    pub state: ShardState,
    pub now_ms: u64,
    pub histories: BTreeMap<String, Vec<HistoryEvent>>,
    pub timers: Vec<DueTimer>,
    pub next_run: u32,
}

pub fn key(id: &str) -> WorkflowKey {
    WorkflowKey::new("default", id)
}

pub fn json(text: &str) -> Payload {
    Payload(text.as_bytes().to_vec())
}

impl Harness {
    /// Applies `kind` 10 ms after the previous command and checks every invariant.
    pub fn run(&mut self, kind: CommandKind) -> Outcome {
        self.now_ms += 10;
        let outcome = apply(&mut self.state, &Command { now_ms: self.now_ms, kind });
        self.observe(&outcome);
        outcome
    }

    /// Records what an outcome wrote and checks the invariants of every run and history.
    pub fn observe(&mut self, outcome: &Outcome) {
        for write in &outcome.writes {
            match write {
                Write::AppendEvents { run_id, events, .. } => {
                    self.histories.entry(run_id.clone()).or_default().extend(events.iter().cloned())
                }
                Write::PutTimer(timer) => self.timers.push(timer.clone()),
                Write::DeleteTimer(timer) => self.timers.retain(|t| t != timer),
                _ => {}
            }
        }
        for execution in self.state.executions.values() {
            execution.run.validate().expect("run invariants hold after every apply");
        }
        for (run_id, history) in &self.histories {
            validate_history(history).unwrap_or_else(|e| panic!("history of {run_id} is invalid: {e}"));
        }
    }

    pub fn start_outcome(&mut self, id: &str, request_id: &str) -> Outcome {
        self.next_run += 1;
        self.run(CommandKind::StartWorkflow {
            key: key(id),
            run_id: format!("run-{}", self.next_run),
            workflow_type: "order".into(),
            task_queue: "orders".into(),
            input: json(r#"{"amount_cents":100}"#),
            request_id: request_id.into(),
            workflow_task_timeout_ms: 0,
        })
    }

    pub fn start(&mut self, id: &str, request_id: &str) -> Reply {
        self.start_outcome(id, request_id).reply
    }

    pub fn signal(&mut self, id: &str, name: &str, payload: &str) -> Outcome {
        self.run(CommandKind::Signal {
            key: key(id),
            run_id: String::new(),
            name: name.into(),
            input: json(payload),
            request_id: String::new(),
        })
    }

    /// The token a worker gets for the run's pending workflow task (it saw the whole history).
    pub fn workflow_token(&self, id: &str) -> TaskToken {
        let run = self.state.run(&key(id)).expect("workflow exists");
        let task = run.workflow_task.as_ref().expect("a workflow task is pending");
        TaskToken {
            shard: 0,
            key: key(id),
            run_id: run.run_id.clone(),
            task: TokenTask::Workflow {
                scheduled_event_id: task.scheduled_event_id,
                seen_event_id: run.history_length(),
            },
            attempt: task.attempt,
            started_ms: self.now_ms,
        }
    }

    pub fn activity_token(&self, id: &str, seq: u32) -> TaskToken {
        let run = self.state.run(&key(id)).expect("workflow exists");
        TaskToken {
            shard: 0,
            key: key(id),
            run_id: run.run_id.clone(),
            task: TokenTask::Activity { seq },
            attempt: run.activities[&seq].attempt,
            started_ms: self.now_ms,
        }
    }

    /// A completion of `token` with `commands`; a continue-as-new gets the next run id.
    pub fn completion(
        &self,
        token: TaskToken,
        commands: Vec<WorkflowCommand>,
        inline_next_task: bool,
        steps_observed: bool,
    ) -> CommandKind {
        CommandKind::CompleteWorkflowTask {
            token,
            commands,
            new_run_id: format!("run-{}", self.next_run + 1),
            inline_next_task,
            steps_observed,
        }
    }

    pub fn complete_task(&mut self, id: &str, commands: Vec<WorkflowCommand>) -> Reply {
        let token = self.workflow_token(id);
        let completion = self.completion(token, commands, true, false);
        self.next_run += 1;
        self.run(completion).reply
    }

    /// The event types of the workflow's current run.
    pub fn history(&self, id: &str) -> Vec<&'static str> {
        let run_id = &self.state.run(&key(id)).expect("workflow exists").run_id;
        self.histories.get(run_id).map_or_else(Vec::new, |h| h.iter().map(|e| e.kind.type_name()).collect())
    }

    /// Fires every durable timer due by `up_to_ms`, in due order.
    pub fn fire_due_timers(&mut self, up_to_ms: u64) {
        self.timers.sort();
        let due: Vec<DueTimer> = self.timers.iter().filter(|t| t.due_ms <= up_to_ms).cloned().collect();
        for timer in due {
            self.now_ms = self.now_ms.max(timer.due_ms);
            self.run(CommandKind::FireTimer { timer });
        }
    }
}

pub fn step(seq: u32, name: &str, result: &str) -> WorkflowCommand {
    WorkflowCommand::RecordStep { seq, name: name.into(), outcome: StepOutcome::Completed(json(result)), attempts: 1 }
}

pub fn activity(seq: u32, policy: RetryPolicy) -> WorkflowCommand {
    WorkflowCommand::ScheduleActivity {
        seq,
        activity_type: "charge".into(),
        task_queue: String::new(),
        input: json("{}"),
        retry_policy: policy,
        options: ActivityOptions::default(),
    }
}

/// The writes of an outcome other than the clock floor every command may move.
pub fn domain_writes(outcome: &Outcome) -> Vec<&Write> {
    outcome.writes.iter().filter(|w| !matches!(w, Write::PutClockFloor { .. })).collect()
}

pub fn rejected(reply: &Reply) -> ErrorCode {
    match reply {
        Reply::Rejected(r) => r.code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

// ---- random lifecycles ----

/// An abstract action; tokens are taken from the current state (or made stale)
/// when it runs, so random sequences reach deep into the lifecycle.
#[derive(Clone, Debug)]
pub enum Action {
    Start { wf: u8, request: u8 },
    CompleteTask { wf: u8, ops: Vec<Op>, stale: bool },
    FailTask { wf: u8 },
    TimeoutTask { wf: u8 },
    HeartbeatTask { wf: u8 },
    CompleteActivity { wf: u8, pick: u8 },
    FailActivity { wf: u8, pick: u8, non_retryable: bool },
    TimeoutActivity { wf: u8, pick: u8 },
    Heartbeat { wf: u8, pick: u8 },
    Signal { wf: u8, name: u8 },
    Cancel { wf: u8 },
    Terminate { wf: u8 },
    Advance { ms: u32 },
}

#[derive(Clone, Debug)]
pub enum Op {
    Step,
    Activity,
    Timer(u32),
    CancelTimer,
    /// A signal's name index and timeout: `None` waits for ever, `Some(0)` does not wait.
    WaitSignal(u8, Option<u32>),
    Complete,
    Fail(bool),
    ContinueAsNew,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Step),
        2 => Just(Op::Activity),
        2 => (0u32..5_000).prop_map(Op::Timer),
        1 => Just(Op::CancelTimer),
        2 => (0u8..2, proptest::option::of(prop_oneof![Just(0u32), 1u32..5_000])).prop_map(|(n, t)| Op::WaitSignal(n, t)),
        1 => Just(Op::Complete),
        1 => any::<bool>().prop_map(Op::Fail),
        1 => Just(Op::ContinueAsNew),
    ]
}

pub fn action_strategy() -> impl Strategy<Value = Action> {
    let wf = 0u8..3;
    prop_oneof![
        2 => (wf.clone(), 0u8..3).prop_map(|(wf, request)| Action::Start { wf, request }),
        5 => (wf.clone(), proptest::collection::vec(op_strategy(), 0..4), proptest::bool::weighted(0.1))
            .prop_map(|(wf, ops, stale)| Action::CompleteTask { wf, ops, stale }),
        1 => wf.clone().prop_map(|wf| Action::FailTask { wf }),
        1 => wf.clone().prop_map(|wf| Action::TimeoutTask { wf }),
        1 => wf.clone().prop_map(|wf| Action::HeartbeatTask { wf }),
        2 => (wf.clone(), any::<u8>()).prop_map(|(wf, pick)| Action::CompleteActivity { wf, pick }),
        2 => (wf.clone(), any::<u8>(), any::<bool>()).prop_map(|(wf, pick, non_retryable)| Action::FailActivity { wf, pick, non_retryable }),
        1 => (wf.clone(), any::<u8>()).prop_map(|(wf, pick)| Action::TimeoutActivity { wf, pick }),
        1 => (wf.clone(), any::<u8>()).prop_map(|(wf, pick)| Action::Heartbeat { wf, pick }),
        2 => (wf.clone(), 0u8..2).prop_map(|(wf, name)| Action::Signal { wf, name }),
        1 => wf.clone().prop_map(|wf| Action::Cancel { wf }),
        1 => wf.prop_map(|wf| Action::Terminate { wf }),
        2 => (0u32..10_000).prop_map(|ms| Action::Advance { ms }),
    ]
}

fn signal_name(n: u8) -> String {
    format!("sig-{n}")
}

/// Turns an action into a command against the current state (None: nothing to do).
pub fn command_for(h: &Harness, action: &Action) -> Option<CommandKind> {
    let wf_key = |wf: u8| key(&format!("wf-{wf}"));
    let token_for = |wf: u8| -> Option<TaskToken> {
        let run = h.state.run(&wf_key(wf))?;
        let task = run.workflow_task.as_ref()?;
        Some(TaskToken {
            shard: 0,
            key: wf_key(wf),
            run_id: run.run_id.clone(),
            task: TokenTask::Workflow {
                scheduled_event_id: task.scheduled_event_id,
                seen_event_id: run.history_length(),
            },
            attempt: task.attempt,
            started_ms: h.now_ms,
        })
    };
    let activity_token = |wf: u8, pick: u8| -> Option<TaskToken> {
        let run = h.state.run(&wf_key(wf))?;
        if run.activities.is_empty() {
            return None;
        }
        let (seq, activity) = run.activities.iter().nth(pick as usize % run.activities.len())?;
        Some(TaskToken {
            shard: 0,
            key: wf_key(wf),
            run_id: run.run_id.clone(),
            task: TokenTask::Activity { seq: *seq },
            attempt: activity.attempt,
            started_ms: h.now_ms,
        })
    };
    Some(match action {
        Action::Start { wf, request } => CommandKind::StartWorkflow {
            key: wf_key(*wf),
            run_id: format!("run-{}", h.next_run),
            workflow_type: "t".into(),
            task_queue: "q".into(),
            input: json("1"),
            request_id: format!("req-{request}"),
            workflow_task_timeout_ms: 0,
        },
        Action::CompleteTask { wf, ops, stale } => {
            let mut token = token_for(*wf)?;
            if *stale {
                token.attempt += 1;
            }
            let run = h.state.run(&wf_key(*wf))?;
            let mut seq = run.last_seq;
            let mut commands = Vec::new();
            for op in ops {
                seq += 1;
                let command = match op {
                    Op::Step => step(seq, "s", "1"),
                    Op::Activity => activity(
                        seq,
                        RetryPolicy { maximum_attempts: 2, initial_interval_ms: 100, ..Default::default() },
                    ),
                    Op::Timer(ms) => WorkflowCommand::StartTimer { seq, duration_ms: u64::from(*ms) },
                    Op::CancelTimer => WorkflowCommand::CancelTimer { seq: seq.saturating_sub(1).max(1) },
                    Op::WaitSignal(n, ms) => {
                        WorkflowCommand::WaitSignal { seq, name: signal_name(*n), timeout_ms: ms.map(u64::from) }
                    }
                    Op::Complete => WorkflowCommand::CompleteWorkflow { result: json("1") },
                    Op::Fail(canceled) => WorkflowCommand::FailWorkflow {
                        failure: Failure::new(if *canceled { crate::model::CANCELED_ERROR_TYPE } else { "E" }, "x"),
                    },
                    Op::ContinueAsNew => WorkflowCommand::ContinueAsNew {
                        input: json("1"),
                        workflow_type: String::new(),
                        task_queue: String::new(),
                    },
                };
                let closes = command.closes_run();
                commands.push(command);
                if closes {
                    break;
                }
            }
            CommandKind::CompleteWorkflowTask {
                token,
                commands,
                new_run_id: format!("run-{}", h.next_run),
                inline_next_task: false,
                // Both ways: a worker that ran past its steps and one that waits for them.
                steps_observed: h.next_run.is_multiple_of(2),
            }
        }
        Action::FailTask { wf } => {
            CommandKind::FailWorkflowTask { token: token_for(*wf)?, failure: Failure::new("E", "x") }
        }
        Action::TimeoutTask { wf } => CommandKind::WorkflowTaskTimedOut { token: token_for(*wf)? },
        Action::HeartbeatTask { wf } => CommandKind::RecordWorkflowTaskHeartbeat { token: token_for(*wf)? },
        Action::CompleteActivity { wf, pick } => {
            CommandKind::CompleteActivity { token: activity_token(*wf, *pick)?, result: json("1") }
        }
        Action::FailActivity { wf, pick, non_retryable } => {
            let mut failure = Failure::new("E", "x");
            failure.non_retryable = *non_retryable;
            CommandKind::FailActivity { token: activity_token(*wf, *pick)?, failure }
        }
        Action::TimeoutActivity { wf, pick } => CommandKind::ActivityAttemptTimedOut {
            token: activity_token(*wf, *pick)?,
            timeout: crate::model::TimeoutKind::StartToClose,
        },
        Action::Heartbeat { wf, pick } => {
            CommandKind::RecordHeartbeat { token: activity_token(*wf, *pick)?, details: json("7") }
        }
        Action::Signal { wf, name } => CommandKind::Signal {
            key: wf_key(*wf),
            run_id: String::new(),
            name: signal_name(*name),
            input: json("1"),
            request_id: if *name == 0 { format!("sig-{}", h.next_run % 3) } else { String::new() },
        },
        Action::Cancel { wf } => {
            CommandKind::RequestCancel { key: wf_key(*wf), run_id: String::new(), reason: "r".into() }
        }
        Action::Terminate { wf } => {
            CommandKind::Terminate { key: wf_key(*wf), run_id: String::new(), reason: "r".into() }
        }
        Action::Advance { .. } => return None,
    })
}

/// Runs actions; returns every command applied, in order.
pub fn drive(h: &mut Harness, actions: &[Action]) -> Vec<Command> {
    let mut applied = Vec::new();
    for action in actions {
        if let Action::Advance { ms } = action {
            let up_to = h.now_ms + u64::from(*ms);
            let before = h.now_ms;
            h.timers.sort();
            let due: Vec<DueTimer> = h.timers.iter().filter(|t| t.due_ms <= up_to).cloned().collect();
            for timer in due {
                h.now_ms = h.now_ms.max(timer.due_ms);
                let kind = CommandKind::FireTimer { timer };
                applied.push(Command { now_ms: h.now_ms + 10, kind: kind.clone() });
                h.run(kind);
            }
            h.now_ms = h.now_ms.max(before + u64::from(*ms));
            continue;
        }
        if let Some(kind) = command_for(h, action) {
            h.next_run += 1;
            applied.push(Command { now_ms: h.now_ms + 10, kind: kind.clone() });
            h.run(kind);
        }
    }
    applied
}
