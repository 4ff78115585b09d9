//! The test harness of `apply`: a shard state plus every history it produced, driven by
//! commands, with the run and history invariants checked after every command.

use std::collections::BTreeMap;

use crate::apply::{Outcome, Write, apply};
use crate::command::{Command, CommandKind, StepOutcome, WorkflowCommand};
use crate::event::{HistoryEvent, validate_history};
use crate::ids::{TaskToken, TokenTask, WorkflowKey};
use crate::model::{ActivityOptions, DueTimer, ErrorCode, Reply};
use crate::payload::Payload;
use crate::retry::RetryPolicy;
use crate::state::ShardState;

/// A shard state plus every history it produced, driven by commands.
#[derive(Default)]
pub(crate) struct Harness {
    pub state: ShardState,
    pub now_ms: u64,
    pub histories: BTreeMap<String, Vec<HistoryEvent>>,
    pub timers: Vec<DueTimer>,
    pub next_run: u32,
}

pub(crate) fn key(id: &str) -> WorkflowKey {
    WorkflowKey::new("default", id)
}

pub(crate) fn json(text: &str) -> Payload {
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

pub(crate) fn step(seq: u32, name: &str, result: &str) -> WorkflowCommand {
    WorkflowCommand::RecordStep { seq, name: name.into(), outcome: StepOutcome::Completed(json(result)), attempts: 1 }
}

pub(crate) fn activity(seq: u32, policy: RetryPolicy) -> WorkflowCommand {
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
pub(crate) fn domain_writes(outcome: &Outcome) -> Vec<&Write> {
    outcome.writes.iter().filter(|w| !matches!(w, Write::PutClockFloor { .. })).collect()
}

pub(crate) fn rejected(reply: &Reply) -> ErrorCode {
    match reply {
        Reply::Rejected(r) => r.code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}
