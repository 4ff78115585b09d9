//! Replay engine tests: synthetic histories in, commands out. No network.
//!
//! Histories are built the way the server records them (`weft-core`'s
//! `apply`): a completion appends `WorkflowTaskStarted`,
//! `WorkflowTaskCompleted`, then one or two events per command, then the
//! next `WorkflowTaskScheduled` when something resolved at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use futures::future::{Either, select};
use serde_json::{Value, json};
use weft_proto::v1 as pb;
use weft_proto::v1::EventType as T;
use weft_proto::v1::workflow_command::Command;

use super::*;
use crate::workflow::{ActivityOptions, workflow_factory};
use crate::{CANCELED_ERROR_TYPE, RetryPolicy, WorkflowContext, WorkflowError};

/// Builds a history event by event, with ids 1, 2, 3, ... and times 1000 ms apart.
struct History {
    events: Vec<pb::HistoryEvent>,
}

impl History {
    /// `WorkflowStarted` with `input`, then the first `WorkflowTaskScheduled`.
    fn start(input: Value) -> Self {
        let mut history = History { events: Vec::new() };
        history.event(T::WorkflowStarted, 0, "sample", json_bytes(&input), None);
        history.event(T::WorkflowTaskScheduled, 0, "", Vec::new(), None);
        history
    }

    fn event(&mut self, event_type: T, seq: u32, name: &str, payload: Vec<u8>, failure: Option<Failure>) -> &mut Self {
        let event_id = self.events.len() as u64 + 1;
        self.events.push(pb::HistoryEvent {
            event_id,
            time_ms: 1_000_000 + event_id * 1_000,
            event_type: event_type as i32,
            seq,
            name: name.to_string(),
            payload,
            failure: failure.map(Into::into),
            attempt: 1,
            details_json: String::new(),
        });
        self
    }

    /// The completion of a workflow task: its started and completed events.
    fn completed(&mut self) -> &mut Self {
        self.event(T::WorkflowTaskStarted, 0, "", Vec::new(), None).event(
            T::WorkflowTaskCompleted,
            0,
            "",
            Vec::new(),
            None,
        )
    }

    fn scheduled(&mut self) -> &mut Self {
        self.event(T::WorkflowTaskScheduled, 0, "", Vec::new(), None)
    }

    fn since(&self, event_id: u64) -> Vec<pb::HistoryEvent> {
        self.events[event_id as usize - 1..].to_vec()
    }

    fn last_id(&self) -> u64 {
        self.events.len() as u64
    }
}

fn json_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("test values encode")
}

fn info() -> RunInfo {
    RunInfo {
        namespace: "default".into(),
        workflow_id: "order-1".into(),
        run_id: "run-1".into(),
        workflow_type: "sample".into(),
        task_queue: "orders".into(),
    }
}

fn machine(factory: &WorkflowFactory, history: Vec<pb::HistoryEvent>) -> RunMachine {
    RunMachine::new(info(), history, factory).expect("the history starts with WorkflowStarted")
}

fn cmd(command: Command) -> pb::WorkflowCommand {
    pb::WorkflowCommand { command: Some(command) }
}

fn record_step(seq: u32, name: &str, result: Value) -> pb::WorkflowCommand {
    cmd(Command::RecordStep(pb::RecordStep {
        seq,
        name: name.into(),
        result: json_bytes(&result),
        failure: None,
        attempts: 1,
    }))
}

fn complete(result: &Value) -> pb::WorkflowCommand {
    cmd(Command::CompleteWorkflow(pb::CompleteWorkflow { result: json_bytes(result) }))
}

/// The closing command's result as JSON.
fn completed_result(activation: &Activation) -> Value {
    match activation.commands.last().and_then(|c| c.command.as_ref()) {
        Some(Command::CompleteWorkflow(complete)) => serde_json::from_slice(&complete.result).expect("result is JSON"),
        other => panic!("expected CompleteWorkflow last, got {other:?}"),
    }
}

/// A workflow with one operation of each kind; counts how often its step body runs.
fn sample_workflow(step_runs: Arc<AtomicUsize>) -> WorkflowFactory {
    workflow_factory("sample", move |ctx: WorkflowContext, input: Value| {
        let step_runs = step_runs.clone();
        async move {
            let reserved: String = ctx
                .step("reserve", move || {
                    let step_runs = step_runs.clone();
                    async move {
                        step_runs.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, anyhow::Error>("r1".to_string())
                    }
                })
                .await?;
            let charge: String = ctx.activity("charge", &input, ActivityOptions::default()).await?;
            let approved: Option<bool> = ctx.signal("approve", Some(Duration::from_secs(3600))).await?;
            ctx.sleep(Duration::from_secs(2)).await?;
            let now_ms = ctx.now().duration_since(UNIX_EPOCH).expect("after the epoch").as_millis() as u64;
            Ok(json!({
                "reserved": reserved,
                "charge": charge,
                "approved": approved,
                "id": ctx.uuid().to_string(),
                "now_ms": now_ms,
            }))
        }
    })
}

/// Runs the sample workflow live, task by task, as a cached run; returns the
/// full history and the final result.
async fn run_sample_live() -> (History, Value) {
    let step_runs = Arc::new(AtomicUsize::new(0));
    let factory = sample_workflow(step_runs.clone());
    let mut history = History::start(json!({"order_id": "o-1"}));
    let mut run = machine(&factory, history.events.clone());

    // Task 1: the step runs; its record goes out with the next operation the code issues (the
    // activity), since no other step body runs before it.
    let activation = run.advance().await.expect("task 1");
    assert_eq!(activation.commands.len(), 2, "{:?}", activation.commands);
    assert_eq!(activation.commands[0], record_step(1, "reserve", json!("r1")));
    let Some(Command::ScheduleActivity(schedule)) = &activation.commands[1].command else {
        panic!("expected ScheduleActivity, got {:?}", activation.commands)
    };
    assert_eq!((schedule.seq, schedule.activity_type.as_str()), (2, "charge"));
    assert_eq!(schedule.input, json_bytes(&json!({"order_id": "o-1"})));
    assert!(!activation.finished);
    assert!(activation.steps_observed, "the code ran past the step: no task needed for its record");
    assert_eq!(step_runs.load(Ordering::SeqCst), 1);

    // Task 2: the activity completed; the code waits for the signal. (The step record alone
    // scheduled no task; its event arrives with this one.)
    let from = history.last_id() + 1;
    history.completed().event(T::StepCompleted, 1, "reserve", json_bytes(&json!("r1")), None);
    history.event(T::ActivityScheduled, 2, "charge", Vec::new(), None);
    history.event(T::ActivityStarted, 2, "", Vec::new(), None);
    history.event(T::ActivityCompleted, 2, "", json_bytes(&json!("ch_1")), None).scheduled();
    run.add_events(history.since(from)).expect("no gap");
    let activation = run.advance().await.expect("task 2");
    assert_eq!(
        activation.commands,
        vec![cmd(Command::WaitSignal(pb::WaitSignal {
            seq: 3,
            signal_name: "approve".into(),
            timeout_ms: Some(3_600_000)
        }))]
    );

    // Task 3: the signal was buffered and consumed at once; the code sleeps.
    let from = history.last_id() + 1;
    history.completed().event(T::SignalWaitStarted, 3, "approve", Vec::new(), None);
    history.event(T::SignalConsumed, 3, "approve", json_bytes(&json!(true)), None).scheduled();
    run.add_events(history.since(from)).expect("no gap");
    let activation = run.advance().await.expect("task 3");
    assert_eq!(activation.commands, vec![cmd(Command::StartTimer(pb::StartTimer { seq: 4, duration_ms: 2_000 }))]);

    // Task 4: the timer fired; the workflow returns.
    let from = history.last_id() + 1;
    history.completed().event(T::TimerStarted, 4, "", Vec::new(), None);
    history.event(T::TimerFired, 4, "", Vec::new(), None).scheduled();
    run.add_events(history.since(from)).expect("no gap");
    let activation = run.advance().await.expect("task 4");
    assert!(activation.finished);
    assert_eq!(activation.commands.len(), 1);
    let result = completed_result(&activation);
    assert_eq!(step_runs.load(Ordering::SeqCst), 1, "the step body runs once");
    (history, result)
}

#[tokio::test]
async fn live_run_issues_one_command_per_operation() {
    let (history, result) = run_sample_live().await;
    assert_eq!(result["reserved"], "r1");
    assert_eq!(result["charge"], "ch_1");
    assert_eq!(result["approved"], true);
    // ctx.now() is the time of the event that resolved the latest operation (TimerFired).
    let timer_fired = history.events.iter().find(|e| e.event_type() == T::TimerFired).expect("fired");
    assert_eq!(result["now_ms"], timer_fired.time_ms);
}

#[tokio::test]
async fn full_replay_issues_no_new_commands_and_returns_the_same_result() {
    let (history, live_result) = run_sample_live().await;
    let step_runs = Arc::new(AtomicUsize::new(0));
    let factory = sample_workflow(step_runs.clone());
    let mut replay = machine(&factory, history.events.clone());
    let activation = replay.advance().await.expect("replay");
    assert!(activation.finished);
    assert_eq!(activation.commands, vec![complete(&live_result)], "only the closing command, same result");
    assert_eq!(step_runs.load(Ordering::SeqCst), 0, "a replayed step does not run its body");
}

#[tokio::test]
async fn replay_of_a_prefix_issues_only_the_next_command() {
    let (history, _) = run_sample_live().await;
    let activity_completed =
        history.events.iter().position(|e| e.event_type() == T::ActivityCompleted).expect("completed");
    // Up to the WorkflowTaskScheduled after ActivityCompleted.
    let prefix = history.events[..activity_completed + 2].to_vec();
    let factory = sample_workflow(Arc::new(AtomicUsize::new(0)));
    let activation = machine(&factory, prefix).advance().await.expect("replay");
    assert_eq!(
        activation.commands,
        vec![cmd(Command::WaitSignal(pb::WaitSignal {
            seq: 3,
            signal_name: "approve".into(),
            timeout_ms: Some(3_600_000)
        }))]
    );
}

#[tokio::test]
async fn renamed_step_is_nondeterminism_naming_step_and_event() {
    let (history, _) = run_sample_live().await;
    let factory = workflow_factory("sample", |ctx: WorkflowContext, _input: Value| async move {
        let _: String = ctx.step("reserve_stock", || async { Ok::<_, anyhow::Error>("r1".to_string()) }).await?;
        Ok(json!(null))
    });
    let error = machine(&factory, history.events.clone()).advance().await.expect_err("diverged");
    let ActivationError::NonDeterminism(message) = &error else { panic!("expected NonDeterminism, got {error:?}") };
    for part in ["seq 1", "step \"reserve_stock\"", "StepCompleted \"reserve\"", "event 5"] {
        assert!(message.contains(part), "{message:?} should mention {part:?}");
    }
    assert_eq!(error.to_failure().error_type, NON_DETERMINISM_ERROR_TYPE);
}

#[tokio::test]
async fn nondeterminism_is_reported_even_if_the_code_swallows_the_error() {
    let (history, _) = run_sample_live().await;
    let factory = workflow_factory("sample", |ctx: WorkflowContext, _input: Value| async move {
        let _ = ctx.sleep(Duration::from_secs(1)).await; // seq 1 is a step in the history
        Ok(json!(null))
    });
    let error = machine(&factory, history.events.clone()).advance().await.expect_err("diverged");
    assert!(matches!(error, ActivationError::NonDeterminism(ref m) if m.contains("timer")), "{error:?}");
}

#[tokio::test]
async fn removed_operation_is_nondeterminism() {
    let (history, _) = run_sample_live().await;
    // The code now returns after the step; the history goes on with the activity.
    let factory = workflow_factory("sample", |ctx: WorkflowContext, _input: Value| async move {
        let _: String = ctx.step("reserve", || async { Ok::<_, anyhow::Error>("r1".to_string()) }).await?;
        Ok(json!(null))
    });
    let error = machine(&factory, history.events.clone()).advance().await.expect_err("diverged");
    let ActivationError::NonDeterminism(message) = &error else { panic!("expected NonDeterminism, got {error:?}") };
    assert!(message.contains("ActivityScheduled \"charge\"") && message.contains("seq 2"), "{message}");
}

#[tokio::test]
async fn canceled_timer_closes_the_run_as_canceled() {
    let factory = workflow_factory("sample", |ctx: WorkflowContext, _input: Value| async move {
        ctx.sleep(Duration::from_secs(3600)).await?;
        Ok(json!("woke"))
    });
    let mut history = History::start(json!(null));
    history.completed().event(T::TimerStarted, 1, "", Vec::new(), None);
    history.event(T::CancelRequested, 0, "stop", Vec::new(), None);
    history.event(T::TimerCanceled, 1, "", Vec::new(), None).scheduled();
    let activation = machine(&factory, history.events.clone()).advance().await.expect("replay");
    let Some(Command::FailWorkflow(fail)) = &activation.commands[0].command else {
        panic!("expected FailWorkflow, got {:?}", activation.commands)
    };
    assert_eq!(fail.failure.as_ref().map(|f| f.error_type.as_str()), Some(CANCELED_ERROR_TYPE));
}

#[tokio::test]
async fn code_sees_the_cancel_request_and_may_clean_up() {
    let factory = workflow_factory("sample", |ctx: WorkflowContext, _input: Value| async move {
        assert!(!ctx.is_cancel_requested());
        match ctx.signal::<String>("approve", None).await {
            Err(WorkflowError::Canceled) => {
                assert!(ctx.is_cancel_requested());
                let _: String = ctx.step("release", || async { Ok::<_, anyhow::Error>("released".into()) }).await?;
                Err(WorkflowError::Canceled)
            }
            other => Ok(json!(format!("{other:?}"))),
        }
    });
    let mut history = History::start(json!(null));
    history.completed().event(T::SignalWaitStarted, 1, "approve", Vec::new(), None);
    history.event(T::CancelRequested, 0, "stop", Vec::new(), None);
    history.event(T::SignalWaitCanceled, 1, "approve", Vec::new(), None).scheduled();
    let mut run = machine(&factory, history.events.clone());
    let activation = run.advance().await.expect("task");
    // The clean-up step's record and the close go out together: one workflow task.
    assert!(activation.finished);
    assert_eq!(activation.commands.len(), 2, "{:?}", activation.commands);
    assert_eq!(activation.commands[0], record_step(2, "release", json!("released")));
    let Some(Command::FailWorkflow(fail)) = &activation.commands[1].command else {
        panic!("{:?}", activation.commands)
    };
    assert_eq!(fail.failure.as_ref().map(|f| f.error_type.as_str()), Some(CANCELED_ERROR_TYPE));
}

/// Waits for signal "go" or one hour, whichever first, then runs step "after".
fn race_workflow() -> WorkflowFactory {
    workflow_factory("sample", |ctx: WorkflowContext, _input: Value| async move {
        let timer = Box::pin(ctx.sleep(Duration::from_secs(3600)));
        let signal = Box::pin(ctx.signal::<String>("go", None));
        let winner = match select(timer, signal).await {
            Either::Left((fired, _signal)) => {
                fired?;
                "timer".to_string()
            }
            Either::Right((signal, timer)) => {
                drop(timer); // cancels the timer
                signal?.unwrap_or_default()
            }
        };
        let _: String = ctx.step("after", || async { Ok::<_, anyhow::Error>("done".into()) }).await?;
        Ok(json!(winner))
    })
}

#[tokio::test]
async fn dropped_sleep_cancels_its_timer_once() {
    let factory = race_workflow();
    let mut history = History::start(json!(null));
    let mut run = machine(&factory, history.events.clone());
    let activation = run.advance().await.expect("task 1");
    assert_eq!(
        activation.commands,
        vec![
            cmd(Command::StartTimer(pb::StartTimer { seq: 1, duration_ms: 3_600_000 })),
            cmd(Command::WaitSignal(pb::WaitSignal { seq: 2, signal_name: "go".into(), timeout_ms: None })),
        ]
    );
    let from = history.last_id() + 1;
    history.completed().event(T::TimerStarted, 1, "", Vec::new(), None);
    history.event(T::SignalWaitStarted, 2, "go", Vec::new(), None).scheduled();
    history.event(T::SignalReceived, 0, "go", json_bytes(&json!("signal")), None);
    history.event(T::SignalConsumed, 2, "go", json_bytes(&json!("signal")), None);
    run.add_events(history.since(from)).expect("no gap");
    let activation = run.advance().await.expect("task 2");
    assert_eq!(
        activation.commands,
        vec![
            cmd(Command::CancelTimer(pb::CancelTimer { seq: 1 })),
            record_step(3, "after", json!("done")),
            complete(&json!("signal"))
        ]
    );
    history.completed().event(T::TimerCanceled, 1, "", Vec::new(), None);
    history.event(T::StepCompleted, 3, "after", json_bytes(&json!("done")), None);
    history.event(T::WorkflowCompleted, 0, "", json_bytes(&json!("signal")), None);

    // Replay from scratch: the signal branch wins again and no CancelTimer is sent twice.
    let activation = machine(&factory, history.events.clone()).advance().await.expect("replay");
    assert_eq!(activation.commands, vec![complete(&json!("signal"))]);
}

#[tokio::test]
async fn failing_step_retries_then_records_the_failure() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let factory = workflow_factory("sample", move |ctx: WorkflowContext, _input: Value| {
        let counter = counter.clone();
        async move {
            let policy = RetryPolicy::step_default().with_initial_interval(Duration::from_millis(1));
            let charged: Result<String, WorkflowError> = ctx
                .step_with("charge", policy, move || {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        anyhow::bail!("card declined")
                    }
                })
                .await;
            charged.map(|c| json!(c))
        }
    });
    let history = History::start(json!(null));
    let mut run = machine(&factory, history.events.clone());
    let activation = run.advance().await.expect("task 1");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let Some(Command::RecordStep(step)) = &activation.commands[0].command else { panic!("{:?}", activation.commands) };
    assert_eq!((step.seq, step.attempts), (1, 3));
    let failure = step.failure.clone().expect("a failure");
    assert_eq!(failure.message, "card declined");
    // The failure is recorded with the close it causes, in one workflow task.
    assert!(activation.finished);
    let Some(Command::FailWorkflow(fail)) = &activation.commands[1].command else {
        panic!("{:?}", activation.commands)
    };
    let message = &fail.failure.as_ref().expect("failure").message;
    assert!(message.contains("step \"charge\" failed: card declined"), "{message}");
}

#[tokio::test]
async fn non_retryable_step_error_stops_at_once() {
    let factory = workflow_factory("sample", |ctx: WorkflowContext, _input: Value| async move {
        let _: String =
            ctx.step("validate", || async { Err(crate::ActivityError::non_retryable("bad input").into()) }).await?;
        Ok(json!(null))
    });
    let activation = machine(&factory, History::start(json!(null)).events).advance().await.expect("task");
    let Some(Command::RecordStep(step)) = &activation.commands[0].command else { panic!("{:?}", activation.commands) };
    assert_eq!(step.attempts, 1);
    assert!(step.failure.as_ref().is_some_and(|f| f.non_retryable));
}

#[tokio::test]
async fn panicking_workflow_fails_the_task() {
    let factory = workflow_factory("sample", |_ctx: WorkflowContext, _input: Value| async move {
        if true {
            panic!("boom");
        }
        Ok(json!(null))
    });
    let error = machine(&factory, History::start(json!(null)).events).advance().await.expect_err("panicked");
    assert_eq!(error, ActivationError::Panic("boom".into()));
    assert_eq!(error.to_failure().error_type, PANIC_ERROR_TYPE);
}

#[tokio::test]
async fn continue_as_new_and_bad_input() {
    let factory = workflow_factory("sample", |ctx: WorkflowContext, count: u32| async move {
        if count < 3 {
            return Err(ctx.continue_as_new(&(count + 1)));
        }
        Ok(count)
    });
    let activation = machine(&factory, History::start(json!(1)).events).advance().await.expect("task");
    assert_eq!(
        activation.commands,
        vec![cmd(Command::ContinueAsNew(pb::ContinueAsNew {
            input: json_bytes(&json!(2)),
            workflow_type: String::new(),
            task_queue: String::new()
        }))]
    );
    let activation = machine(&factory, History::start(json!("x")).events).advance().await.expect("task");
    let Some(Command::FailWorkflow(fail)) = &activation.commands[0].command else {
        panic!("{:?}", activation.commands)
    };
    assert_eq!(fail.failure.as_ref().map(|f| f.error_type.as_str()), Some(crate::error::PAYLOAD_ERROR_TYPE));
}

#[tokio::test]
async fn random_and_uuid_replay_identically() {
    let factory = workflow_factory("sample", |ctx: WorkflowContext, _input: Value| async move {
        Ok(json!([ctx.random(), ctx.uuid().to_string()]))
    });
    let first = completed_result(&machine(&factory, History::start(json!(null)).events).advance().await.expect("run"));
    let second = completed_result(&machine(&factory, History::start(json!(null)).events).advance().await.expect("run"));
    assert_eq!(first, second);
}

#[tokio::test]
async fn gaps_and_prefixes_are_detected() {
    let (history, _) = run_sample_live().await;
    let factory = sample_workflow(Arc::new(AtomicUsize::new(0)));
    let mut run = machine(&factory, history.events[..5].to_vec());
    assert!(run.is_prefix_of(&history.events));
    assert!(!run.is_prefix_of(&history.events[..4]));
    let mut other = history.events.clone();
    other[2].name = "changed".into();
    assert!(!run.is_prefix_of(&other));
    let gap = run.add_events(history.since(7)).expect_err("event 6 is missing");
    assert!(matches!(gap, ActivationError::InvalidHistory(_)));
}

#[test]
fn activations_are_cut_before_each_completed_task() {
    let mut history = History::start(json!(null));
    history.completed().event(T::TimerStarted, 1, "", Vec::new(), None);
    history.event(T::TimerFired, 1, "", Vec::new(), None).scheduled();
    // A failed task is not a cut: its attempt saw what the next one sees.
    history.event(T::WorkflowTaskStarted, 0, "", Vec::new(), None);
    history.event(T::WorkflowTaskFailed, 0, "", Vec::new(), None).scheduled();
    history.completed();
    let cuts: Vec<u64> = split_activations(history.events.clone()).iter().map(|a| a[0].event_id).collect();
    assert_eq!(cuts, vec![1, 3, 11]);
}

#[test]
fn events_that_arrived_while_a_task_ran_belong_to_the_next_slice() {
    let mut history = History::start(json!(null));
    // Arrived after task 1 was handed out (it saw events 1 and 2), before it completed.
    history.event(T::SignalReceived, 0, "go", json_bytes(&json!(1)), None);
    history.event(T::WorkflowTaskStarted, 0, "", Vec::new(), None);
    history.events.last_mut().expect("just added").details_json =
        json!({"scheduled_event_id": 2, "attempt": 1, "seen_event_id": 2}).to_string();
    history.event(T::WorkflowTaskCompleted, 0, "", Vec::new(), None);
    history.event(T::SignalWaitStarted, 1, "go", Vec::new(), None);
    history.event(T::SignalConsumed, 1, "go", json_bytes(&json!(1)), None).scheduled();
    let slices: Vec<Vec<u64>> =
        split_activations(history.events.clone()).iter().map(|a| a.iter().map(|e| e.event_id).collect()).collect();
    assert_eq!(slices, vec![vec![1, 2], vec![3, 4, 5, 6, 7, 8]]);
    // Fed incrementally, as a cached run gets them with the next task: one slice.
    let slices = split_activations(history.since(3));
    assert_eq!(slices.len(), 1);
}

/// Three sequential steps, then `now()`; counts body runs per step.
fn three_steps(runs: Arc<[AtomicUsize; 3]>) -> WorkflowFactory {
    workflow_factory("sample", move |ctx: WorkflowContext, _input: Value| {
        let runs = runs.clone();
        async move {
            let mut results = Vec::new();
            for (i, name) in ["s1", "s2", "s3"].into_iter().enumerate() {
                let runs = runs.clone();
                let result: String = ctx
                    .step(name, move || {
                        let runs = runs.clone();
                        async move {
                            runs[i].fetch_add(1, Ordering::SeqCst);
                            Ok::<_, anyhow::Error>(format!("r{}", i + 1))
                        }
                    })
                    .await?;
                results.push(result);
            }
            let now_ms = ctx.now().duration_since(UNIX_EPOCH).expect("after the epoch").as_millis() as u64;
            Ok(json!({"results": results, "now_ms": now_ms}))
        }
    })
}

#[tokio::test]
async fn a_step_body_waits_for_earlier_records_and_the_last_record_goes_with_the_close() {
    let runs = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)]);
    let factory = three_steps(runs.clone());
    let mut history = History::start(json!(null));
    let mut run = machine(&factory, history.events.clone());
    let count = |i: usize| runs[i].load(Ordering::SeqCst);

    // Task 1: s1 runs; s2 is issued but its body waits until s1's record is durable.
    let activation = run.advance().await.expect("task 1");
    assert_eq!(activation.commands, vec![record_step(1, "s1", json!("r1"))]);
    assert!(!activation.steps_observed, "s2 waits for s1's record: the server must send a task");
    assert_eq!((count(0), count(1), count(2)), (1, 0, 0));

    // Task 2: s1 is recorded; s2 runs.
    let from = history.last_id() + 1;
    history.completed().event(T::StepCompleted, 1, "s1", json_bytes(&json!("r1")), None).scheduled();
    run.add_events(history.since(from)).expect("no gap");
    let activation = run.advance().await.expect("task 2");
    assert_eq!(activation.commands, vec![record_step(2, "s2", json!("r2"))]);
    assert_eq!((count(0), count(1), count(2)), (1, 1, 0));

    // Task 3: s3 runs and the workflow returns: its record and the close go out together.
    let from = history.last_id() + 1;
    history.completed().event(T::StepCompleted, 2, "s2", json_bytes(&json!("r2")), None).scheduled();
    run.add_events(history.since(from)).expect("no gap");
    let activation = run.advance().await.expect("task 3");
    assert!(activation.finished);
    assert_eq!(activation.commands.len(), 2, "{:?}", activation.commands);
    assert_eq!(activation.commands[0], record_step(3, "s3", json!("r3")));
    let live = completed_result(&activation);
    assert_eq!(live["results"], json!(["r1", "r2", "r3"]));
    // now() is the time of the last step event fed (s2's); s3's is not in the history yet.
    let s2 = history.events.iter().find(|e| e.event_type() == T::StepCompleted && e.seq == 2).expect("s2");
    assert_eq!(live["now_ms"], s2.time_ms);
    assert_eq!((count(0), count(1), count(2)), (1, 1, 1));
    history.completed().event(T::StepCompleted, 3, "s3", json_bytes(&json!("r3")), None);
    history.event(T::WorkflowCompleted, 0, "", serde_json::to_vec(&live).expect("json"), None);

    // A full replay returns the same result (now() included) without running a body.
    let replay_runs = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)]);
    let activation =
        machine(&three_steps(replay_runs.clone()), history.events.clone()).advance().await.expect("replay");
    assert_eq!(activation.commands, vec![complete(&live)]);
    assert!(replay_runs.iter().all(|r| r.load(Ordering::SeqCst) == 0));

    // A replay of the history up to task 2's schedule runs exactly s2's body, as live.
    let task2_scheduled =
        history.events.iter().position(|e| e.event_type() == T::StepCompleted && e.seq == 1).expect("s1 recorded") + 2;
    let prefix_runs = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)]);
    let activation = machine(&three_steps(prefix_runs.clone()), history.events[..task2_scheduled].to_vec())
        .advance()
        .await
        .expect("prefix replay");
    assert_eq!(activation.commands, vec![record_step(2, "s2", json!("r2"))]);
    let prefix_counts: Vec<usize> = prefix_runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    assert_eq!(prefix_counts, vec![0, 1, 0]);
}

#[tokio::test]
async fn steps_issued_together_run_together() {
    let factory = workflow_factory("sample", |ctx: WorkflowContext, _input: Value| async move {
        let a = ctx.step("a", || async { Ok::<_, anyhow::Error>("ra".to_string()) });
        let b = ctx.step("b", || async { Ok::<_, anyhow::Error>("rb".to_string()) });
        let (a, b) = futures::future::join(a, b).await;
        Ok(json!([a?, b?]))
    });
    let history = History::start(json!(null));
    let activation = machine(&factory, history.events.clone()).advance().await.expect("task 1");
    assert!(activation.finished);
    assert_eq!(
        activation.commands,
        vec![record_step(1, "a", json!("ra")), record_step(2, "b", json!("rb")), complete(&json!(["ra", "rb"]))]
    );
}
