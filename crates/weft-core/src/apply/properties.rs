//! Property tests of `apply` over random command sequences: no panics, valid histories and
//! run invariants after every command, determinism across replicas.

use proptest::prelude::*;

use crate::apply::apply;
use crate::apply::harness::{Harness, activity, json, key, step};
use crate::command::{Command, CommandKind, WorkflowCommand};
use crate::ids::{TaskToken, TokenTask, WorkflowKey};
use crate::model::{DueTimer, Failure};
use crate::retry::RetryPolicy;
use crate::state::ShardState;

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
        h.run(CommandKind::Signal { key: WorkflowKey::new("default", id.clone()), run_id: String::new(), name: id.clone(), input: json("1"), request_id: id });
    }
}
