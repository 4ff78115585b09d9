//! Tests of `apply`: scenario tests through one `Harness`, and property tests
//! over random command sequences (no panics, valid histories, determinism).

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::apply::{Effect, Outcome, Write, apply};
use crate::command::{Command, CommandKind, StepOutcome, WorkflowCommand};
use crate::event::{EventKind, HistoryEvent, validate_history};
use crate::ids::{TaskToken, TokenTask, WorkflowKey};
use crate::model::{ActivityOptions, DueTimer, ErrorCode, Failure, Reply, RunStatus, TaskKind, TimerKind};
use crate::payload::Payload;
use crate::retry::RetryPolicy;
use crate::state::ShardState;

/// A shard state plus every history it produced, driven by commands.
#[derive(Default)]
struct Harness {
    state: ShardState,
    now_ms: u64,
    histories: BTreeMap<String, Vec<HistoryEvent>>,
    timers: Vec<DueTimer>,
    next_run: u32,
}

fn key(id: &str) -> WorkflowKey {
    WorkflowKey::new("default", id)
}

fn json(text: &str) -> Payload {
    Payload(text.as_bytes().to_vec())
}

impl Harness {
    fn run(&mut self, kind: CommandKind) -> Outcome {
        self.now_ms += 10;
        let outcome = apply(&mut self.state, &Command { now_ms: self.now_ms, kind });
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
        outcome
    }

    fn start(&mut self, id: &str, request_id: &str) -> Reply {
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
        .reply
    }

    /// The token a worker gets for the run's pending workflow task.
    fn workflow_token(&self, id: &str) -> TaskToken {
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

    fn activity_token(&self, id: &str, seq: u32) -> TaskToken {
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

    fn complete_task(&mut self, id: &str, commands: Vec<WorkflowCommand>) -> Reply {
        let token = self.workflow_token(id);
        self.next_run += 1;
        let new_run_id = format!("run-{}", self.next_run);
        self.run(CommandKind::CompleteWorkflowTask {
            token,
            commands,
            new_run_id,
            inline_next_task: true,
            steps_observed: false,
        })
        .reply
    }

    fn history(&self, id: &str) -> Vec<&'static str> {
        let run_id = &self.state.run(&key(id)).expect("workflow exists").run_id;
        self.histories[run_id].iter().map(|e| e.kind.type_name()).collect()
    }

    fn fire_due_timers(&mut self, up_to_ms: u64) {
        self.timers.sort();
        let due: Vec<DueTimer> = self.timers.iter().filter(|t| t.due_ms <= up_to_ms).cloned().collect();
        for timer in due {
            self.now_ms = self.now_ms.max(timer.due_ms);
            self.run(CommandKind::FireTimer { timer, attempt_dispatched: false });
        }
    }
}

fn step(seq: u32, name: &str, result: &str) -> WorkflowCommand {
    WorkflowCommand::RecordStep { seq, name: name.into(), outcome: StepOutcome::Completed(json(result)), attempts: 1 }
}

fn activity(seq: u32, policy: RetryPolicy) -> WorkflowCommand {
    WorkflowCommand::ScheduleActivity {
        seq,
        activity_type: "charge".into(),
        task_queue: String::new(),
        input: json("{}"),
        retry_policy: policy,
        options: ActivityOptions::default(),
    }
}

fn rejected(reply: &Reply) -> ErrorCode {
    match reply {
        Reply::Rejected(r) => r.code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn start_schedules_a_workflow_task_and_indexes_it() {
    let mut h = Harness::default();
    assert_eq!(h.start("order-1", "req-1"), Reply::Started { run_id: "run-1".into(), started: true });
    assert_eq!(h.history("order-1"), ["WorkflowStarted", "WorkflowTaskScheduled"]);
    let run = h.state.run(&key("order-1")).expect("started");
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.workflow_task.as_ref().map(|t| t.attempt), Some(1));
}

#[test]
fn workflow_id_reuse_and_request_id_dedup() {
    let mut h = Harness::default();
    h.start("order-1", "req-1");
    assert_eq!(h.start("order-1", "req-1"), Reply::Started { run_id: "run-1".into(), started: false });
    assert_eq!(rejected(&h.start("order-1", "req-2")), ErrorCode::AlreadyExists);
    h.complete_task("order-1", vec![WorkflowCommand::CompleteWorkflow { result: json("1") }]);
    assert_eq!(h.state.run(&key("order-1")).map(|r| r.status), Some(RunStatus::Completed));
    assert_eq!(
        h.start("order-1", "req-1"),
        Reply::Started { run_id: "run-1".into(), started: false },
        "same request id after close"
    );
    assert!(matches!(h.start("order-1", "req-3"), Reply::Started { started: true, .. }), "id reuse after close");
}

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
fn observed_step_records_schedule_no_task_but_what_follows_still_does() {
    let mut h = Harness::default();
    h.start("w", "");
    let token = h.workflow_token("w");
    let outcome = h.run(CommandKind::CompleteWorkflowTask {
        token,
        commands: vec![step(1, "reserve", r#""ok""#), activity(2, RetryPolicy::default())],
        new_run_id: "x".into(),
        inline_next_task: true,
        steps_observed: true,
    });
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
    h.run(CommandKind::Signal { key: key("w"), run_id: String::new(), name: "late".into(), input: json("2") });
    let complete = |token, commands| CommandKind::CompleteWorkflowTask {
        token,
        commands,
        new_run_id: "x".into(),
        inline_next_task: true,
        steps_observed: true,
    };
    let reply = h.run(complete(token, vec![timer(3)])).reply;
    assert!(matches!(reply, Reply::WorkflowTaskCompleted { next_task: None, .. }), "{reply:?}");
    // A result is something the code waits for: arriving while a task runs, it brings the
    // next task at once.
    h.fire_due_timers(h.now_ms + 10);
    let token = h.workflow_token("w");
    h.run(CommandKind::CompleteActivity { token: h.activity_token("w", 1), result: json(r#""ok""#) });
    let reply = h.run(complete(token, vec![])).reply;
    assert!(matches!(reply, Reply::WorkflowTaskCompleted { next_task: Some(_), .. }), "{reply:?}");
}

#[test]
fn stale_and_repeated_tokens_are_rejected() {
    let mut h = Harness::default();
    h.start("w", "");
    let token = h.workflow_token("w");
    let commands = vec![step(1, "a", "1")];
    let first = h.run(CommandKind::CompleteWorkflowTask {
        token: token.clone(),
        commands: commands.clone(),
        new_run_id: "x".into(),
        inline_next_task: false,
        steps_observed: false,
    });
    assert!(matches!(first.reply, Reply::WorkflowTaskCompleted { .. }));
    let again = h.run(CommandKind::CompleteWorkflowTask {
        token,
        commands,
        new_run_id: "x".into(),
        inline_next_task: false,
        steps_observed: false,
    });
    assert_eq!(rejected(&again.reply), ErrorCode::FailedPrecondition);
    assert!(again.writes.is_empty(), "a rejected command writes nothing");
    assert_eq!(h.history("w").iter().filter(|t| **t == "StepCompleted").count(), 1, "recorded exactly once");
}

#[test]
fn seqs_must_grow_and_closing_commands_come_last() {
    let mut h = Harness::default();
    h.start("w", "");
    h.complete_task("w", vec![step(1, "a", "1")]);
    assert_eq!(rejected(&h.complete_task("w", vec![step(1, "a", "1")])), ErrorCode::InvalidArgument);
    let reply = h.complete_task("w", vec![WorkflowCommand::CompleteWorkflow { result: json("1") }, step(2, "b", "1")]);
    assert_eq!(rejected(&reply), ErrorCode::InvalidArgument);
}

#[test]
fn activity_retries_by_policy_then_completes() {
    let mut h = Harness::default();
    h.start("w", "");
    let policy =
        RetryPolicy { initial_interval_ms: 1000, backoff_coefficient: 2.0, maximum_attempts: 3, ..Default::default() };
    h.complete_task("w", vec![activity(1, policy)]);
    let token = h.activity_token("w", 1);
    h.run(CommandKind::FailActivity { token: token.clone(), failure: Failure::new("Io", "card network down") });
    // The old attempt's token is stale now.
    assert_eq!(
        rejected(&h.run(CommandKind::CompleteActivity { token, result: json("1") }).reply),
        ErrorCode::FailedPrecondition
    );
    let run = h.state.run(&key("w")).expect("exists");
    assert_eq!(run.activities[&1].attempt, 2);
    assert!(!run.activities[&1].is_ready(), "backing off");
    let now = h.now_ms;
    h.fire_due_timers(now + 1000);
    let token = h.activity_token("w", 1);
    assert_eq!(token.attempt, 2);
    h.run(CommandKind::CompleteActivity { token, result: json(r#""ch_1""#) });
    let history = h.history("w");
    assert_eq!(history.iter().filter(|t| **t == "ActivityAttemptFailed").count(), 1);
    assert_eq!(history.iter().filter(|t| **t == "ActivityCompleted").count(), 1);
    assert_eq!(history.last(), Some(&"WorkflowTaskScheduled"));
}

#[test]
fn non_retryable_activity_failure_fails_at_once() {
    let mut h = Harness::default();
    h.start("w", "");
    let policy = RetryPolicy { non_retryable_error_types: vec!["CardDeclined".into()], ..Default::default() };
    h.complete_task("w", vec![activity(1, policy)]);
    let token = h.activity_token("w", 1);
    h.run(CommandKind::FailActivity { token, failure: Failure::new("CardDeclined", "declined") });
    assert!(h.history("w").contains(&"ActivityFailed"));
    assert!(h.state.run(&key("w")).expect("exists").activities.is_empty());
}

#[test]
fn heartbeat_details_survive_into_the_next_attempt() {
    let mut h = Harness::default();
    h.start("w", "");
    h.complete_task("w", vec![activity(1, RetryPolicy { initial_interval_ms: 10, ..Default::default() })]);
    let token = h.activity_token("w", 1);
    let reply = h.run(CommandKind::RecordHeartbeat { token: token.clone(), details: json("42") }).reply;
    assert_eq!(reply, Reply::Heartbeat { cancel_requested: false });
    h.run(CommandKind::ActivityAttemptTimedOut { token, timeout: crate::model::TimeoutKind::Heartbeat });
    let run = h.state.run(&key("w")).expect("exists");
    assert_eq!(run.activities[&1].heartbeat_details, json("42"));
    assert_eq!(run.activities[&1].attempt, 2);
}

#[test]
fn timers_fire_once_and_canceled_timers_do_not_fire() {
    let mut h = Harness::default();
    h.start("w", "");
    h.complete_task("w", vec![WorkflowCommand::StartTimer { seq: 1, duration_ms: 2000 }]);
    let now = h.now_ms;
    h.fire_due_timers(now + 2000);
    assert!(h.history("w").contains(&"TimerFired"));
    h.complete_task(
        "w",
        vec![WorkflowCommand::StartTimer { seq: 2, duration_ms: 5000 }, WorkflowCommand::CancelTimer { seq: 2 }],
    );
    let now = h.now_ms;
    h.fire_due_timers(now + 5000);
    let history = h.history("w");
    assert_eq!(history.iter().filter(|t| **t == "TimerFired").count(), 1);
    assert_eq!(history.iter().filter(|t| **t == "TimerCanceled").count(), 1);
    assert!(h.timers.is_empty(), "the canceled timer fired into a no-op and was deleted");
}

#[test]
fn signals_are_buffered_until_consumed() {
    let mut h = Harness::default();
    h.start("w", "");
    h.run(CommandKind::Signal { key: key("w"), run_id: String::new(), name: "approve".into(), input: json("true") });
    assert_eq!(h.state.run(&key("w")).expect("exists").buffered_signals.len(), 1);
    let reply =
        h.complete_task("w", vec![WorkflowCommand::WaitSignal { seq: 1, name: "approve".into(), timeout_ms: 0 }]);
    assert!(matches!(reply, Reply::WorkflowTaskCompleted { next_task: Some(_), .. }), "consumed at once: {reply:?}");
    assert!(h.history("w").contains(&"SignalConsumed"));
}

#[test]
fn signal_wait_times_out() {
    let mut h = Harness::default();
    h.start("w", "");
    h.complete_task("w", vec![WorkflowCommand::WaitSignal { seq: 1, name: "approve".into(), timeout_ms: 3_600_000 }]);
    let now = h.now_ms;
    h.fire_due_timers(now + 3_600_000);
    let history = h.history("w");
    assert_eq!(history[history.len() - 2], "SignalWaitTimedOut");
    // A late signal is buffered, not delivered to the timed-out wait.
    h.run(CommandKind::Signal { key: key("w"), run_id: String::new(), name: "approve".into(), input: json("true") });
    assert!(!h.history("w").contains(&"SignalConsumed"));
}

#[test]
fn cancel_resolves_waiting_operations_and_the_code_decides() {
    let mut h = Harness::default();
    h.start("w", "");
    h.complete_task(
        "w",
        vec![activity(1, RetryPolicy::default()), WorkflowCommand::StartTimer { seq: 2, duration_ms: 10_000 }],
    );
    h.run(CommandKind::RequestCancel { key: key("w"), run_id: String::new(), reason: "user".into() });
    let history = h.history("w");
    for expected in ["CancelRequested", "ActivityCanceled", "TimerCanceled", "WorkflowTaskScheduled"] {
        assert!(history.contains(&expected), "{expected} missing from {history:?}");
    }
    let failure = Failure::new(crate::model::CANCELED_ERROR_TYPE, "canceled");
    h.complete_task("w", vec![step(3, "release", "1"), WorkflowCommand::FailWorkflow { failure }]);
    assert_eq!(h.state.run(&key("w")).map(|r| r.status), Some(RunStatus::Canceled));
}

#[test]
fn terminate_closes_and_drops_pending_work() {
    let mut h = Harness::default();
    h.start("w", "");
    let outcome = h.run(CommandKind::Terminate { key: key("w"), run_id: String::new(), reason: "ops".into() });
    assert!(outcome.effects.iter().any(|e| matches!(e, Effect::RunClosed { .. })));
    assert!(outcome.writes.iter().any(|w| matches!(w, Write::DeleteReady(_))), "the ready workflow task is removed");
    assert_eq!(
        rejected(
            &h.run(CommandKind::Signal { key: key("w"), run_id: String::new(), name: "s".into(), input: json("1") })
                .reply
        ),
        ErrorCode::FailedPrecondition
    );
    assert_eq!(
        rejected(
            &h.run(CommandKind::Terminate { key: key("nope"), run_id: String::new(), reason: String::new() }).reply
        ),
        ErrorCode::NotFound
    );
}

#[test]
fn workflow_task_failure_backs_off_and_retries() {
    let mut h = Harness::default();
    h.start("w", "");
    let token = h.workflow_token("w");
    h.run(CommandKind::FailWorkflowTask { token, failure: Failure::new("NonDeterminism", "step 1 renamed") });
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
    h.run(CommandKind::WorkflowTaskTimedOut { token: token.clone() });
    assert_eq!(h.state.run(&key("w")).and_then(|r| r.workflow_task.as_ref()).map(|t| t.attempt), Some(2));
    assert_eq!(
        rejected(
            &h.run(CommandKind::CompleteWorkflowTask {
                token,
                commands: vec![],
                new_run_id: "x".into(),
                inline_next_task: false,
                steps_observed: false,
            })
            .reply
        ),
        ErrorCode::FailedPrecondition
    );
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
        EventKind::WorkflowFailed { failure } => assert_eq!(failure.error_type, crate::model::HISTORY_LIMIT_ERROR_TYPE),
        other => panic!("unexpected last event {other:?}"),
    }
}

#[test]
fn bad_input_is_rejected_not_panicking() {
    let mut h = Harness::default();
    let long = "x".repeat(256);
    for (id, tq) in [(long.as_str(), "q"), ("", "q"), ("ok", ""), ("ok", long.as_str())] {
        let reply = h
            .run(CommandKind::StartWorkflow {
                key: key(id),
                run_id: "r".into(),
                workflow_type: "t".into(),
                task_queue: tq.into(),
                input: Payload::default(),
                request_id: String::new(),
                workflow_task_timeout_ms: 0,
            })
            .reply;
        assert_eq!(rejected(&reply), ErrorCode::InvalidArgument);
    }
    let big = Payload(vec![b'1'; crate::limits::PAYLOAD_BYTES_MAX + 1]);
    h.start("w", "");
    assert_eq!(
        rejected(
            &h.run(CommandKind::Signal { key: key("w"), run_id: String::new(), name: "s".into(), input: big }).reply
        ),
        ErrorCode::InvalidArgument
    );
    assert!(h.state.executions.len() == 1);
}

#[test]
fn namespaces_are_unique() {
    let mut h = Harness::default();
    assert!(matches!(
        h.run(CommandKind::CreateNamespace { name: "payments".into(), description: String::new() }).reply,
        Reply::NamespaceCreated(_)
    ));
    assert_eq!(
        rejected(&h.run(CommandKind::CreateNamespace { name: "payments".into(), description: String::new() }).reply),
        ErrorCode::AlreadyExists
    );
}

// ---- property tests ----

/// An abstract action; tokens are taken from the current state (or made stale)
/// when it runs, so random sequences reach deep into the lifecycle.
#[derive(Clone, Debug)]
enum Action {
    Start { wf: u8, request: u8 },
    CompleteTask { wf: u8, ops: Vec<Op>, stale: bool },
    FailTask { wf: u8 },
    TimeoutTask { wf: u8 },
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
enum Op {
    Step,
    Activity,
    Timer(u32),
    CancelTimer,
    WaitSignal(u8, u32),
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
        2 => (0u8..2, 0u32..5_000).prop_map(|(n, t)| Op::WaitSignal(n, t)),
        1 => Just(Op::Complete),
        1 => any::<bool>().prop_map(Op::Fail),
        1 => Just(Op::ContinueAsNew),
    ]
}

fn action_strategy() -> impl Strategy<Value = Action> {
    let wf = 0u8..3;
    prop_oneof![
        2 => (wf.clone(), 0u8..3).prop_map(|(wf, request)| Action::Start { wf, request }),
        5 => (wf.clone(), proptest::collection::vec(op_strategy(), 0..4), proptest::bool::weighted(0.1))
            .prop_map(|(wf, ops, stale)| Action::CompleteTask { wf, ops, stale }),
        1 => wf.clone().prop_map(|wf| Action::FailTask { wf }),
        1 => wf.clone().prop_map(|wf| Action::TimeoutTask { wf }),
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
fn command_for(h: &Harness, action: &Action) -> Option<CommandKind> {
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
                        WorkflowCommand::WaitSignal { seq, name: signal_name(*n), timeout_ms: u64::from(*ms) }
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
        Action::Signal { wf, name } => {
            CommandKind::Signal { key: wf_key(*wf), run_id: String::new(), name: signal_name(*name), input: json("1") }
        }
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
fn drive(h: &mut Harness, actions: &[Action]) -> Vec<Command> {
    let mut applied = Vec::new();
    for action in actions {
        if let Action::Advance { ms } = action {
            let up_to = h.now_ms + u64::from(*ms);
            let before = h.now_ms;
            h.timers.sort();
            let due: Vec<DueTimer> = h.timers.iter().filter(|t| t.due_ms <= up_to).cloned().collect();
            for timer in due {
                h.now_ms = h.now_ms.max(timer.due_ms);
                let kind = CommandKind::FireTimer { timer, attempt_dispatched: false };
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random lifecycles never panic, keep every history valid (checked in
    /// `Harness::run` after each command) and keep run invariants.
    #[test]
    fn random_commands_keep_histories_valid(actions in proptest::collection::vec(action_strategy(), 1..80)) {
        let mut h = Harness::default();
        drive(&mut h, &actions);
    }

    /// Two replicas applying the same commands end in the same state with the
    /// same outcomes.
    #[test]
    fn replicas_applying_the_same_commands_agree(actions in proptest::collection::vec(action_strategy(), 1..60)) {
        let mut leader = Harness::default();
        let commands = drive(&mut leader, &actions);
        let mut a = ShardState::default();
        let mut b = ShardState::default();
        for command in &commands {
            let outcome_a = apply(&mut a, command);
            let outcome_b = apply(&mut b, command);
            prop_assert_eq!(outcome_a, outcome_b);
        }
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a, leader.state);
    }

    /// Commands with arbitrary tokens and names are refused or applied, never panic.
    #[test]
    fn arbitrary_tokens_never_panic(
        id in ".{0,300}", run in ".{0,40}", seq in any::<u32>(), attempt in any::<u32>(),
        scheduled in any::<u64>(), seen in any::<u64>(), workflow in any::<bool>(),
    ) {
        let mut h = Harness::default();
        h.start("w", "");
        let task = if workflow { TokenTask::Workflow { scheduled_event_id: scheduled, seen_event_id: seen } } else { TokenTask::Activity { seq } };
        let token = TaskToken { shard: 0, key: WorkflowKey::new("default", id.clone()), run_id: run, task, attempt, started_ms: 0 };
        h.run(CommandKind::CompleteWorkflowTask { token: token.clone(), commands: vec![step(seq, &id, "1")], new_run_id: "n".into(), inline_next_task: false, steps_observed: false });
        h.run(CommandKind::CompleteActivity { token: token.clone(), result: json("1") });
        h.run(CommandKind::FailActivity { token: token.clone(), failure: Failure::new("E", id.clone()) });
        h.run(CommandKind::RecordHeartbeat { token, details: json("1") });
        h.run(CommandKind::Signal { key: WorkflowKey::new("default", id.clone()), run_id: String::new(), name: id, input: json("1") });
    }
}

#[test]
fn timer_kinds_cover_every_reason() {
    // Keeps the TimerKind list in view when a new timer reason is added.
    let kinds = [
        TimerKind::User { seq: 1 },
        TimerKind::SignalTimeout { seq: 1 },
        TimerKind::ActivityRetry { seq: 1, attempt: 2 },
        TimerKind::ActivityScheduleToStart { seq: 1, attempt: 1 },
        TimerKind::ActivityScheduleToClose { seq: 1 },
        TimerKind::WorkflowTaskRetry { attempt: 2 },
    ];
    let mut h = Harness::default();
    h.start("w", "");
    for kind in kinds {
        let run_id = h.state.run(&key("w")).expect("exists").run_id.clone();
        let outcome = h.run(CommandKind::FireTimer {
            timer: DueTimer { due_ms: 1, key: key("w"), run_id, kind },
            attempt_dispatched: false,
        });
        assert_eq!(outcome.reply, Reply::Done, "an irrelevant timer is a no-op");
        assert_eq!(outcome.writes.len(), 1, "it only deletes itself");
    }
}
