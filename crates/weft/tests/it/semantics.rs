//! What the review and outside testing found, each pinned by a test that failed before its fix:
//! idempotent retries of starts and signals, answers that say the right thing, cancels and
//! signals that are never lost, timeouts decided from durable state, and state a restart must
//! not forget.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tonic::Code;
use weft_proto::v1 as pb;
use weft_proto::v1::worker_service_client::WorkerServiceClient;
use weft_sdk::{
    ActivityContext, ActivityError, ActivityOptions, Client, RetryPolicy, StartWorkflowOptions, Worker,
    WorkflowContext, WorkflowError, WorkflowResultError,
};

use crate::support::{RunningWorker, TestNode, completion, endpoint, json, poll_request, start_request, wait_for};

type Workers = WorkerServiceClient<tonic::transport::Channel>;

/// The next workflow task of `queue` (fails the test after 10 s without one).
async fn next_task(worker: &mut Workers, queue: &str) -> pb::WorkflowTask {
    let response = worker.poll_workflow_task(poll_request(queue, 10_000)).await.expect("poll").into_inner();
    response.task.expect("a workflow task within 10 s")
}

fn command(command: pb::workflow_command::Command) -> pb::WorkflowCommand {
    pb::WorkflowCommand { command: Some(command) }
}

fn history_types(events: &[pb::HistoryEvent]) -> Vec<pb::EventType> {
    events.iter().map(|e| e.event_type()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_start_finds_its_run_across_continue_as_new() {
    let node = TestNode::start().await;
    let (mut client, mut worker, _) = node.clients().await;
    let start = || pb::StartWorkflowRequest {
        request_id: "req-1".into(),
        ..start_request("chain", "q", json(serde_json::json!(1)))
    };
    let first = client.start_workflow(start()).await.expect("start").into_inner();
    assert!(first.started);
    let task = next_task(&mut worker, "q").await;
    let next = pb::ContinueAsNew { input: json(serde_json::json!(2)), ..Default::default() };
    worker
        .complete_workflow_task(completion(task.task_token, pb::workflow_command::Command::ContinueAsNew(next), false))
        .await
        .expect("continue as new");

    // The start's reply was lost; the client retries while the continued run is open.
    let retried = client.start_workflow(start()).await.expect("a retried start is answered, not refused").into_inner();
    assert_eq!((retried.run_id.as_str(), retried.started), (first.run_id.as_str(), false));

    // And after the chain closed: the retry must not start the workflow a second time.
    let task = next_task(&mut worker, "q").await;
    let close = pb::CompleteWorkflow { result: json(serde_json::json!("done")) };
    worker
        .complete_workflow_task(completion(
            task.task_token,
            pb::workflow_command::Command::CompleteWorkflow(close),
            false,
        ))
        .await
        .expect("complete");
    let retried = client.start_workflow(start()).await.expect("retried start").into_inner();
    assert_eq!((retried.run_id.as_str(), retried.started), (first.run_id.as_str(), false));
    let another = pb::StartWorkflowRequest { request_id: "req-2".into(), ..start() };
    assert!(client.start_workflow(another).await.expect("a new request id reuses the id").into_inner().started);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_signal_is_recorded_once() {
    let node = TestNode::start().await;
    let (mut client, _, _) = node.clients().await;
    client.start_workflow(start_request("sig", "q", json(serde_json::json!(1)))).await.expect("start");
    let signal = |request_id: &str| pb::SignalWorkflowRequest {
        namespace: String::new(),
        workflow_id: "sig".into(),
        run_id: String::new(),
        signal_name: "approve".into(),
        input: json(serde_json::json!(true)),
        request_id: request_id.into(),
    };
    client.signal_workflow(signal("s-1")).await.expect("signal");
    client.signal_workflow(signal("s-1")).await.expect("a retried signal succeeds");
    client.signal_workflow(signal("s-2")).await.expect("another signal");
    let history = client
        .get_workflow_history(pb::GetWorkflowHistoryRequest { workflow_id: "sig".into(), ..Default::default() })
        .await
        .expect("history")
        .into_inner();
    let received = history_types(&history.events).iter().filter(|t| **t == pb::EventType::SignalReceived).count();
    assert_eq!(received, 2, "s-1 once and s-2 once");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_name_the_right_run_and_status() {
    let node = TestNode::start().await;
    let (mut client, mut worker, _) = node.clients().await;
    let first = client.start_workflow(start_request("ans", "q", json(serde_json::json!(1)))).await.expect("start");
    let first_run = first.into_inner().run_id;

    // A result asked of an open run says it is running.
    let open = client
        .get_workflow_result(pb::GetWorkflowResultRequest { workflow_id: "ans".into(), ..Default::default() })
        .await
        .expect("result")
        .into_inner();
    assert!(!open.closed);
    assert_eq!(open.status(), pb::WorkflowStatus::Running);

    // A signal naming a run that never existed: NOT_FOUND.
    let ghost = pb::SignalWorkflowRequest {
        workflow_id: "ans".into(),
        run_id: "00000000-0000-0000-0000-000000000000".into(),
        signal_name: "s".into(),
        ..Default::default()
    };
    let status = client.signal_workflow(ghost).await.expect_err("no such run");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Describe of a run that continued as new names the run it continued as.
    let task = next_task(&mut worker, "q").await;
    let next = pb::ContinueAsNew { input: json(serde_json::json!(2)), ..Default::default() };
    worker
        .complete_workflow_task(completion(task.task_token, pb::workflow_command::Command::ContinueAsNew(next), false))
        .await
        .expect("continue as new");
    let current = client
        .describe_workflow(pb::DescribeWorkflowRequest { workflow_id: "ans".into(), ..Default::default() })
        .await
        .expect("describe")
        .into_inner();
    let second_run = current.info.expect("info").run_id;
    assert_ne!(second_run, first_run);
    let old = client
        .describe_workflow(pb::DescribeWorkflowRequest {
            workflow_id: "ans".into(),
            run_id: first_run.clone(),
            ..Default::default()
        })
        .await
        .expect("describe the old run")
        .into_inner();
    assert_eq!(old.info.expect("info").status(), pb::WorkflowStatus::ContinuedAsNew);
    assert_eq!(old.continued_as_run_id, second_run);
    // A signal naming the old, closed run still says it is closed.
    let stale = pb::SignalWorkflowRequest {
        workflow_id: "ans".into(),
        run_id: first_run,
        signal_name: "s".into(),
        ..Default::default()
    };
    assert_eq!(client.signal_workflow(stale).await.expect_err("closed run").code(), Code::FailedPrecondition);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_waits_for_unknown_workflows_leave_nothing_behind() {
    let node = TestNode::start().await;
    let (mut client, _, _) = node.clients().await;
    for i in 0..50 {
        let request =
            pb::GetWorkflowResultRequest { workflow_id: format!("nobody-{i}"), wait_ms: 1, ..Default::default() };
        let status = client.get_workflow_result(request).await.expect_err("unknown workflow");
        assert_eq!(status.code(), Code::NotFound);
    }
    let node_handle = node.handle.as_ref().expect("running").node.clone();
    assert_eq!(node_handle.result_waiters(), 0, "every close watcher of a finished wait is gone");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_past_its_client_deadline_ends_deadline_exceeded() {
    let node = TestNode::start().await;
    let (mut client, mut worker, _) = node.clients().await;
    for _ in 0..5 {
        let mut poll = tonic::Request::new(poll_request("nobody-polls-this", 30_000));
        poll.set_timeout(Duration::from_millis(300));
        let status = worker.poll_workflow_task(poll).await.expect_err("deadline");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        let mut wait = tonic::Request::new(pb::GetWorkflowResultRequest {
            workflow_id: "never-started".into(),
            wait_ms: 30_000,
            ..Default::default()
        });
        wait.set_timeout(Duration::from_millis(300));
        // Not found at once: the deadline does not matter.
        assert_eq!(client.get_workflow_result(wait).await.expect_err("unknown").code(), Code::NotFound);
    }
    client.start_workflow(start_request("slow", "q", json(serde_json::json!(1)))).await.expect("start");
    for _ in 0..5 {
        let mut wait = tonic::Request::new(pb::GetWorkflowResultRequest {
            workflow_id: "slow".into(),
            wait_ms: 30_000,
            ..Default::default()
        });
        wait.set_timeout(Duration::from_millis(300));
        let status = client.get_workflow_result(wait).await.expect_err("deadline");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policies_are_validated_field_by_field() {
    let node = TestNode::start().await;
    let (mut client, mut worker, _) = node.clients().await;
    client.start_workflow(start_request("retry", "q", json(serde_json::json!(1)))).await.expect("start");
    let task = next_task(&mut worker, "q").await;
    let schedule = |policy: pb::RetryPolicy| pb::ScheduleActivity {
        seq: 1,
        activity_type: "charge".into(),
        input: json(serde_json::json!({})),
        retry_policy: Some(policy),
        ..Default::default()
    };
    let cases = [
        (pb::RetryPolicy { initial_interval_ms: 1_000_000_000_000_000, ..Default::default() }, "initial_interval_ms"),
        (pb::RetryPolicy { maximum_interval_ms: u64::MAX, ..Default::default() }, "maximum_interval_ms"),
        (
            pb::RetryPolicy { initial_interval_ms: 5_000, maximum_interval_ms: 1_000, ..Default::default() },
            "maximum_interval_ms",
        ),
        (pb::RetryPolicy { backoff_coefficient: 0.5, ..Default::default() }, "backoff_coefficient"),
        (pb::RetryPolicy { backoff_coefficient: f64::NAN, ..Default::default() }, "backoff_coefficient"),
        (pb::RetryPolicy { backoff_coefficient: 1e9, ..Default::default() }, "backoff_coefficient"),
        (
            pb::RetryPolicy { non_retryable_error_types: vec![String::new()], ..Default::default() },
            "non_retryable_error_types",
        ),
    ];
    for (policy, field) in cases {
        let request = completion(
            task.task_token.clone(),
            pb::workflow_command::Command::ScheduleActivity(schedule(policy.clone())),
            false,
        );
        let status = worker.complete_workflow_task(request).await.expect_err("invalid retry policy");
        assert_eq!(status.code(), Code::InvalidArgument, "{policy:?}: {status:?}");
        assert!(status.message().contains(field), "{policy:?}: the message names {field}: {}", status.message());
    }
    let fine = pb::RetryPolicy {
        initial_interval_ms: 100,
        backoff_coefficient: 1.5,
        maximum_interval_ms: 10_000,
        maximum_attempts: 5,
        ..Default::default()
    };
    let request = pb::CompleteWorkflowTaskRequest {
        commands: vec![command(pb::workflow_command::Command::ScheduleActivity(schedule(fine)))],
        ..completion(
            task.task_token,
            pb::workflow_command::Command::StartTimer(pb::StartTimer { seq: 2, duration_ms: 1 }),
            false,
        )
    };
    worker.complete_workflow_task(request).await.expect("a valid policy is accepted");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_time_floor_and_started_activity_attempts() {
    let mut node = TestNode::start().await;
    let (mut client, mut worker, _) = node.clients().await;
    client.start_workflow(start_request("s2s", "q", json(serde_json::json!(1)))).await.expect("start");
    let task = next_task(&mut worker, "q").await;
    let schedule = pb::ScheduleActivity {
        seq: 1,
        activity_type: "charge".into(),
        input: json(serde_json::json!({})),
        schedule_to_start_timeout_ms: 1_500,
        start_to_close_timeout_ms: 120_000,
        retry_policy: Some(pb::RetryPolicy { maximum_attempts: 1, ..Default::default() }),
        ..Default::default()
    };
    worker
        .complete_workflow_task(completion(
            task.task_token,
            pb::workflow_command::Command::ScheduleActivity(schedule),
            false,
        ))
        .await
        .expect("schedule");
    let polled = worker
        .poll_activity_task(pb::PollActivityTaskRequest {
            task_queue: "q".into(),
            wait_ms: 10_000,
            ..Default::default()
        })
        .await
        .expect("poll activity")
        .into_inner()
        .task
        .expect("the attempt is handed out");
    let running = node.handle.as_ref().expect("running").node.clone();
    let shard = running.shard_of(&weft_core_key("s2s"));
    let floor_before = running.shards.applied_now_ms(shard);
    assert!(floor_before > 0);
    drop(running);

    // The worker runs the attempt while the node restarts.
    node.restart().await;
    let restarted = node.handle.as_ref().expect("running").node.clone();
    assert!(
        restarted.shards.applied_now_ms(shard) >= floor_before,
        "the time floor survives a restart: {} < {floor_before}",
        restarted.shards.applied_now_ms(shard)
    );
    // Wait until the schedule-to-start deadline has passed and its timer has fired.
    wait_for("the schedule-to-start timer to fire", Duration::from_secs(20), || {
        let restarted = restarted.clone();
        async move { restarted.durable_timers(shard).expect("read timers").is_empty().then_some(()) }
    })
    .await;
    let (mut client, mut worker, _) = node.clients().await;
    worker
        .complete_activity_task(pb::CompleteActivityTaskRequest {
            task_token: polled.task_token,
            result: json(serde_json::json!("ch_1")),
            identity: "t".into(),
        })
        .await
        .expect("the started attempt's result is accepted: it was not timed out as never started");
    let history = client
        .get_workflow_history(pb::GetWorkflowHistoryRequest { workflow_id: "s2s".into(), ..Default::default() })
        .await
        .expect("history")
        .into_inner();
    let types = history_types(&history.events);
    assert!(types.contains(&pb::EventType::ActivityCompleted), "{types:?}");
    assert!(!types.contains(&pb::EventType::ActivityTimedOut), "{types:?}");
    node.stop().await;
}

fn weft_core_key(workflow_id: &str) -> weft_core::WorkflowKey {
    weft_core::WorkflowKey::new("default", workflow_id)
}

async fn sdk_client(node: &TestNode) -> Client {
    Client::connect(&endpoint(node.addr)).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sticks_whenever_it_arrives() {
    // The step body waits until the test has asked for the cancel: the request arrives while
    // the code runs, and the code then sleeps.
    static CANCEL_SENT: AtomicBool = AtomicBool::new(false);
    static STEP_RUNNING: AtomicBool = AtomicBool::new(false);
    async fn sleeper(ctx: WorkflowContext, _: ()) -> Result<String, WorkflowError> {
        ctx.step("gate", || async {
            STEP_RUNNING.store(true, Ordering::SeqCst);
            while !CANCEL_SENT.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, anyhow::Error>(())
        })
        .await?;
        match ctx.sleep(Duration::from_secs(3600)).await {
            Err(WorkflowError::Canceled) if ctx.is_cancel_requested() => Err(WorkflowError::Canceled),
            Err(WorkflowError::Canceled) => Ok("canceled, but is_cancel_requested() said no".into()),
            other => other.map(|()| "slept".into()),
        }
    }
    async fn first_thing_sleeps(ctx: WorkflowContext, _: ()) -> Result<String, WorkflowError> {
        let canceled_before = ctx.is_cancel_requested();
        match ctx.sleep(Duration::from_secs(3600)).await {
            Err(WorkflowError::Canceled) if canceled_before && ctx.is_cancel_requested() => {
                Err(WorkflowError::Canceled)
            }
            Err(WorkflowError::Canceled) => {
                Ok(format!("canceled; is_cancel_requested() before the sleep: {canceled_before}"))
            }
            other => other.map(|()| "slept".into()),
        }
    }
    let node = TestNode::start().await;
    let client = sdk_client(&node).await;

    // Canceled before its first task: no worker runs yet.
    client.start_workflow("first", "early", "cancel-q", &()).await.expect("start");
    client.cancel_workflow("early", "before the first task").await.expect("cancel");
    let worker = RunningWorker::start(
        Worker::builder(client.clone(), "cancel-q")
            .register_workflow("gated", sleeper)
            .register_workflow("first", first_thing_sleeps)
            .build(),
    );
    let result = tokio::time::timeout(Duration::from_secs(30), client.workflow_result::<String>("early")).await;
    assert!(matches!(result, Ok(Err(WorkflowResultError::Canceled))), "{result:?}");

    // Canceled while a step body runs.
    client.start_workflow("gated", "late", "cancel-q", &()).await.expect("start");
    wait_for("the step body to run", Duration::from_secs(10), || async {
        STEP_RUNNING.load(Ordering::SeqCst).then_some(())
    })
    .await;
    client.cancel_workflow("late", "while the step runs").await.expect("cancel");
    CANCEL_SENT.store(true, Ordering::SeqCst);
    let result = tokio::time::timeout(Duration::from_secs(30), client.workflow_result::<String>("late")).await;
    assert!(matches!(result, Ok(Err(WorkflowResultError::Canceled))), "{result:?}");
    worker.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_sent_during_the_last_task_reaches_the_continued_run() {
    static SIGNAL_SENT: AtomicBool = AtomicBool::new(false);
    static STEP_RUNNING: AtomicBool = AtomicBool::new(false);
    async fn counter(ctx: WorkflowContext, generation: u32) -> Result<Option<String>, WorkflowError> {
        if generation == 0 {
            ctx.step("gate", || async {
                STEP_RUNNING.store(true, Ordering::SeqCst);
                while !SIGNAL_SENT.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok::<_, anyhow::Error>(())
            })
            .await?;
            return Err(ctx.continue_as_new(&1u32));
        }
        ctx.signal::<String>("note", Some(Duration::from_secs(20))).await
    }
    let node = TestNode::start().await;
    let client = sdk_client(&node).await;
    let worker =
        RunningWorker::start(Worker::builder(client.clone(), "can-q").register_workflow("counter", counter).build());
    client.start_workflow("counter", "carry", "can-q", &0u32).await.expect("start");
    wait_for("the step body to run", Duration::from_secs(10), || async {
        STEP_RUNNING.load(Ordering::SeqCst).then_some(())
    })
    .await;
    client.signal_workflow("carry", "note", &"kept").await.expect("signal");
    SIGNAL_SENT.store(true, Ordering::SeqCst);
    let result = tokio::time::timeout(Duration::from_secs(40), client.workflow_result::<Option<String>>("carry"))
        .await
        .expect("the chain ends")
        .expect("completed");
    assert_eq!(result.as_deref(), Some("kept"), "the signal is carried to the new run");
    worker.stop().await;
    node.stop().await;
}

/// The failure of the first `WorkflowTaskFailed` event of `workflow_id`'s history, if any.
async fn workflow_task_failure(client: &Client, workflow_id: &str) -> Option<pb::Failure> {
    let history = client.workflow_history(workflow_id, None).await.expect("history");
    history.into_iter().find(|e| e.event_type() == pb::EventType::WorkflowTaskFailed).and_then(|e| e.failure)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_completion_or_result_fails_visibly() {
    async fn sleeps_for_ever(ctx: WorkflowContext, _: ()) -> Result<(), WorkflowError> {
        ctx.sleep(Duration::MAX).await
    }
    async fn takes_a_huge_result(ctx: WorkflowContext, _: ()) -> Result<usize, WorkflowError> {
        let result: String = ctx.activity("huge", &(), ActivityOptions::default()).await?;
        Ok(result.len())
    }
    async fn huge(_: ActivityContext, _: ()) -> Result<String, ActivityError> {
        Ok("x".repeat(weft_core::limits::PAYLOAD_BYTES_MAX + 1))
    }
    let node = TestNode::start().await;
    let client = sdk_client(&node).await;
    let worker = RunningWorker::start(
        Worker::builder(client.clone(), "refused-q")
            .register_workflow("sleeps", sleeps_for_ever)
            .register_workflow("huge-result", takes_a_huge_result)
            .register_activity("huge", huge)
            .build(),
    );

    // A completion the server refuses becomes a failed workflow task with the server's message,
    // in the history and in `describe` (not a task timing out again and again).
    client.start_workflow("sleeps", "sleep-max", "refused-q", &()).await.expect("start");
    let failure = wait_for("the refused completion to fail the task", Duration::from_secs(20), || {
        workflow_task_failure(&client, "sleep-max")
    })
    .await;
    assert_eq!(failure.error_type, weft_proto::errors::COMPLETION_REJECTED_ERROR_TYPE, "{failure:?}");
    assert!(failure.message.contains("timer"), "the server's message names the timer: {}", failure.message);
    let described = client.describe_workflow("sleep-max").await.expect("describe");
    let last = described.pending_workflow_task.and_then(|task| task.last_failure).expect("describe shows it");
    assert_eq!(last.error_type, weft_proto::errors::COMPLETION_REJECTED_ERROR_TYPE);

    // An activity result over the payload limit ends the activity at once, not retried.
    client.start_workflow("huge-result", "huge-1", "refused-q", &()).await.expect("start");
    let result = tokio::time::timeout(Duration::from_secs(30), client.workflow_result::<usize>("huge-1"))
        .await
        .expect("the run ends instead of retrying the activity for ever");
    let Err(WorkflowResultError::Failed(failure)) = result else { panic!("the run fails: {result:?}") };
    assert_eq!(failure.error_type, weft_proto::errors::RESULT_REJECTED_ERROR_TYPE, "{failure:?}");
    assert!(failure.message.contains("payload") || failure.message.contains("limit"), "{}", failure.message);
    worker.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_activity_names_its_timeout_once() {
    async fn waits_on_slow(ctx: WorkflowContext, _: ()) -> Result<(), WorkflowError> {
        let options = ActivityOptions {
            start_to_close_timeout: Some(Duration::from_millis(300)),
            retry_policy: RetryPolicy::default().with_maximum_attempts(1),
            ..ActivityOptions::default()
        };
        ctx.activity::<_, ()>("slow", &(), options).await
    }
    async fn slow(_: ActivityContext, _: ()) -> Result<(), ActivityError> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    }
    let node = TestNode::start().await;
    let client = sdk_client(&node).await;
    let worker = RunningWorker::start(
        Worker::builder(client.clone(), "slow-q")
            .register_workflow("waits", waits_on_slow)
            .register_activity("slow", slow)
            .build(),
    );
    client.start_workflow("waits", "slow-1", "slow-q", &()).await.expect("start");
    let result = tokio::time::timeout(Duration::from_secs(30), client.workflow_result::<()>("slow-1"))
        .await
        .expect("the run ends");
    let error = result.expect_err("the activity timed out");
    let shown = error.to_string();
    assert_eq!(shown.matches(weft_proto::errors::START_TO_CLOSE_TIMEOUT_ERROR_TYPE).count(), 1, "{shown}");
    worker.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_wait_with_a_zero_timeout_returns_at_once() {
    async fn polls_for_a_signal(ctx: WorkflowContext, _: ()) -> Result<Option<u32>, WorkflowError> {
        ctx.signal::<u32>("nothing-sent", Some(Duration::ZERO)).await
    }
    let node = TestNode::start().await;
    let client = sdk_client(&node).await;
    let worker = RunningWorker::start(
        Worker::builder(client.clone(), "zero-q").register_workflow("poll", polls_for_a_signal).build(),
    );
    client.start_workflow("poll", "zero-1", "zero-q", &()).await.expect("start");
    let result = tokio::time::timeout(Duration::from_secs(20), client.workflow_result::<Option<u32>>("zero-1"))
        .await
        .expect("a zero timeout does not wait for ever");
    assert_eq!(result.expect("completed"), None);
    worker.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_longer_than_the_workflow_task_timeout_runs_once() {
    static BODY_RUNS: AtomicUsize = AtomicUsize::new(0);
    async fn long_step(ctx: WorkflowContext, _: ()) -> Result<usize, WorkflowError> {
        ctx.step("slow", || async {
            BODY_RUNS.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, anyhow::Error>(())
        })
        .await?;
        Ok(BODY_RUNS.load(Ordering::SeqCst))
    }
    let node = TestNode::start().await;
    let client = sdk_client(&node).await;
    let worker =
        RunningWorker::start(Worker::builder(client.clone(), "long-q").register_workflow("long", long_step).build());
    let options = StartWorkflowOptions {
        workflow_type: "long".into(),
        workflow_id: "long-1".into(),
        task_queue: "long-q".into(),
        workflow_task_timeout: Some(Duration::from_secs(2)),
        ..StartWorkflowOptions::default()
    };
    client.start_workflow_with(options, &()).await.expect("start");
    let result = tokio::time::timeout(Duration::from_secs(30), client.workflow_result::<usize>("long-1"))
        .await
        .expect("the run completes");
    assert_eq!(result.expect("completed"), 1, "the step body ran once");
    assert_eq!(BODY_RUNS.load(Ordering::SeqCst), 1, "and never again");
    let history = client.workflow_history("long-1", None).await.expect("history");
    assert!(
        !history.iter().any(|e| e.event_type() == pb::EventType::WorkflowTaskTimedOut),
        "the heartbeating task did not time out: {:?}",
        history_types(&history)
    );
    worker.stop().await;
    node.stop().await;
}
