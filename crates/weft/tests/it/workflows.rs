//! A node and SDK workers in this process: the workflow lifecycle end to end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_proto::v1 as pb;
use weft_sdk::{
    ActivityContext, ActivityError, ActivityOptions, Client, RetryPolicy, StartWorkflowOptions, Worker,
    WorkflowContext, WorkflowError, WorkflowResultError,
};

use crate::support::{RunningWorker, TestNode, endpoint, wait_for};

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Order {
    order_id: String,
    amount_cents: u64,
    fail_first_charge: bool,
}

async fn order(ctx: WorkflowContext, order: Order) -> Result<serde_json::Value, WorkflowError> {
    let id = order.order_id.clone();
    ctx.step("reserve", move || {
        let id = id.clone();
        async move { Ok::<_, anyhow::Error>(format!("reserved {id}")) }
    })
    .await?;
    let options = ActivityOptions {
        retry_policy: RetryPolicy {
            initial_interval: Duration::from_millis(50),
            maximum_attempts: 3,
            ..RetryPolicy::default()
        },
        start_to_close_timeout: Some(Duration::from_secs(10)),
        ..ActivityOptions::default()
    };
    let charge_id: String = ctx.activity("charge", &order, options).await?;
    let approved: Option<bool> = ctx.signal("approve", Some(Duration::from_secs(3600))).await?;
    if approved != Some(true) {
        return Err(WorkflowError::from(anyhow::anyhow!("order not approved")));
    }
    ctx.sleep(Duration::from_millis(200)).await?;
    ctx.step("ship", || async { Ok::<_, anyhow::Error>("shipped".to_string()) }).await?;
    Ok(serde_json::json!({"order_id": order.order_id, "status": "shipped", "charge_id": charge_id}))
}

async fn charge(ctx: ActivityContext, order: Order) -> Result<String, ActivityError> {
    if order.fail_first_charge && ctx.attempt() == 1 {
        return Err(ActivityError::new("CardNetworkDown", "the card network did not answer"));
    }
    Ok(format!("ch_{}", order.order_id))
}

fn order_worker(client: &Client) -> Worker {
    Worker::builder(client.clone(), "orders")
        .register_workflow("order", order)
        .register_activity("charge", charge)
        .build()
}

async fn history_types(client: &Client, workflow_id: &str) -> Vec<i32> {
    let history = client
        .raw()
        .workflow
        .clone()
        .get_workflow_history(pb::GetWorkflowHistoryRequest {
            namespace: client.namespace().to_string(),
            workflow_id: workflow_id.into(),
            max_events: 10_000,
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner();
    history.events.iter().map(|e| e.event_type).collect()
}

fn count(types: &[i32], event: pb::EventType) -> usize {
    types.iter().filter(|t| **t == event as i32).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_runs_steps_an_activity_with_retry_a_signal_and_a_timer() {
    let node = TestNode::start().await;
    let client = Client::connect(&endpoint(node.addr)).await.expect("connect");
    let worker = RunningWorker::start(order_worker(&client));

    let input = Order { order_id: "o-1".into(), amount_cents: 1999, fail_first_charge: true };
    let run = client.start_workflow("order", "order-1", "orders", &input).await.expect("start");
    assert!(run.started);
    // The code waits for the approval; the signal can come at any time.
    client.signal_workflow("order-1", "approve", &true).await.expect("signal");
    let result: serde_json::Value = client.workflow_result("order-1").await.expect("result");
    assert_eq!(result, serde_json::json!({"order_id": "o-1", "status": "shipped", "charge_id": "ch_o-1"}));

    let types = history_types(&client, "order-1").await;
    assert_eq!(count(&types, pb::EventType::StepCompleted), 2, "reserve and ship, once each");
    assert_eq!(count(&types, pb::EventType::ActivityAttemptFailed), 1, "the first charge failed");
    assert_eq!(count(&types, pb::EventType::ActivityCompleted), 1, "the retry succeeded, recorded once");
    assert_eq!(count(&types, pb::EventType::SignalConsumed), 1);
    assert_eq!(count(&types, pb::EventType::TimerFired), 1);
    assert_eq!(types.last(), Some(&(pb::EventType::WorkflowCompleted as i32)));
    // Every workflow task produced commands: no task was scheduled only to deliver a step
    // record the code had already run past.
    use pb::EventType as E;
    let from_commands = [
        E::StepCompleted,
        E::StepFailed,
        E::ActivityScheduled,
        E::TimerStarted,
        E::TimerCanceled,
        E::SignalWaitStarted,
        E::WorkflowCompleted,
        E::WorkflowFailed,
    ]
    .map(|e| e as i32);
    let empty_tasks =
        types.windows(2).filter(|w| w[0] == E::WorkflowTaskCompleted as i32 && !from_commands.contains(&w[1]));
    assert_eq!(empty_tasks.count(), 0, "{types:?}");

    let description = client.describe_workflow("order-1").await.expect("describe");
    assert_eq!(description.info.expect("info").status, pb::WorkflowStatus::Completed as i32);
    worker.stop().await;
    node.stop().await;
}

/// Three sequential steps take three workflow tasks: each record leaves with the next
/// step's task request, and the last one with the close. No task is completed empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_steps_take_one_task_each_and_the_last_record_closes_the_run() {
    async fn three(ctx: WorkflowContext, _: ()) -> Result<String, WorkflowError> {
        let mut last = String::new();
        for name in ["s1", "s2", "s3"] {
            last = ctx.step(name, move || async move { Ok::<_, anyhow::Error>(format!("{name}-done")) }).await?;
        }
        Ok(last)
    }
    let node = TestNode::start().await;
    let client = Client::connect(&endpoint(node.addr)).await.expect("connect");
    let worker =
        RunningWorker::start(Worker::builder(client.clone(), "steps").register_workflow("three", three).build());
    client.start_workflow("three", "three-1", "steps", &()).await.expect("start");
    let result: String = client.workflow_result("three-1").await.expect("result");
    assert_eq!(result, "s3-done");

    use pb::EventType as E;
    let expected: Vec<i32> = [
        E::WorkflowStarted,
        E::WorkflowTaskScheduled,
        E::WorkflowTaskStarted,
        E::WorkflowTaskCompleted,
        E::StepCompleted,
        E::WorkflowTaskScheduled,
        E::WorkflowTaskStarted,
        E::WorkflowTaskCompleted,
        E::StepCompleted,
        E::WorkflowTaskScheduled,
        E::WorkflowTaskStarted,
        E::WorkflowTaskCompleted,
        E::StepCompleted,
        E::WorkflowCompleted,
    ]
    .iter()
    .map(|e| *e as i32)
    .collect();
    assert_eq!(history_types(&client, "three-1").await, expected);
    worker.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_timeout_runs_the_compensation_and_fails() {
    async fn waits(ctx: WorkflowContext, _: ()) -> Result<(), WorkflowError> {
        let approved: Option<bool> = ctx.signal("approve", Some(Duration::from_millis(100))).await?;
        if approved.is_none() {
            ctx.step("release", || async { Ok::<_, anyhow::Error>(()) }).await?;
            return Err(WorkflowError::from(anyhow::anyhow!("order not approved in time")));
        }
        Ok(())
    }
    let node = TestNode::start().await;
    let client = Client::connect(&endpoint(node.addr)).await.expect("connect");
    let worker = RunningWorker::start(Worker::builder(client.clone(), "q").register_workflow("waits", waits).build());
    client.start_workflow("waits", "w-1", "q", &()).await.expect("start");
    match client.workflow_result::<()>("w-1").await {
        Err(WorkflowResultError::Failed(failure)) => assert!(failure.message.contains("not approved"), "{failure:?}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    let types = history_types(&client, "w-1").await;
    assert_eq!(count(&types, pb::EventType::SignalWaitTimedOut), 1);
    assert_eq!(count(&types, pb::EventType::StepCompleted), 1, "release ran once");
    worker.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_seen_by_the_code_which_cleans_up() {
    async fn cancellable(ctx: WorkflowContext, _: ()) -> Result<String, WorkflowError> {
        match ctx.sleep(Duration::from_secs(3600)).await {
            Err(WorkflowError::Canceled) => {
                assert!(ctx.is_cancel_requested());
                ctx.step("cleanup", || async { Ok::<_, anyhow::Error>(()) }).await?;
                Err(WorkflowError::Canceled)
            }
            other => other.map(|_| "slept".into()),
        }
    }
    let node = TestNode::start().await;
    let client = Client::connect(&endpoint(node.addr)).await.expect("connect");
    let worker = RunningWorker::start(Worker::builder(client.clone(), "q").register_workflow("c", cancellable).build());
    client.start_workflow("c", "c-1", "q", &()).await.expect("start");
    wait_for("the timer to start", Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            let d = client.describe_workflow("c-1").await.ok()?;
            (!d.pending_timers.is_empty()).then_some(())
        }
    })
    .await;
    client.cancel_workflow("c-1", "customer changed their mind").await.expect("cancel");
    assert!(matches!(client.workflow_result::<String>("c-1").await, Err(WorkflowResultError::Canceled)));
    let types = history_types(&client, "c-1").await;
    assert_eq!(count(&types, pb::EventType::CancelRequested), 1);
    assert_eq!(count(&types, pb::EventType::StepCompleted), 1, "cleanup ran");
    assert_eq!(types.last(), Some(&(pb::EventType::WorkflowCanceled as i32)));

    // Terminate needs no worker code.
    client.start_workflow("c", "c-2", "q", &()).await.expect("start");
    client.terminate_workflow("c-2", "ops").await.expect("terminate");
    assert!(matches!(client.workflow_result::<String>("c-2").await, Err(WorkflowResultError::Terminated(_))));
    worker.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_chains_runs_and_result_follows_them() {
    async fn counter(ctx: WorkflowContext, n: u32) -> Result<u32, WorkflowError> {
        let next: u32 = ctx.step("inc", move || async move { Ok::<_, anyhow::Error>(n + 1) }).await?;
        if next < 3 {
            return Err(ctx.continue_as_new(&next));
        }
        Ok(next)
    }
    let node = TestNode::start().await;
    let client = Client::connect(&endpoint(node.addr)).await.expect("connect");
    let worker =
        RunningWorker::start(Worker::builder(client.clone(), "q").register_workflow("counter", counter).build());
    let first = client.start_workflow("counter", "n", "q", &0u32).await.expect("start");
    let result: u32 = client.workflow_result("n").await.expect("result");
    assert_eq!(result, 3);
    let description = client.describe_workflow("n").await.expect("describe");
    assert_ne!(description.info.expect("info").run_id, first.run_id, "the current run is the last of the chain");
    // Execute (start and wait in one call) follows the chain as well.
    let options = StartWorkflowOptions {
        workflow_type: "counter".into(),
        workflow_id: "n-executed".into(),
        task_queue: "q".into(),
        ..StartWorkflowOptions::default()
    };
    let executed: u32 = client.execute_workflow(options, &1u32).await.expect("execute");
    assert_eq!(executed, 3);
    let history = client.workflow_history("n-executed", None).await.expect("history");
    assert_eq!(history.last().expect("events").event_type, pb::EventType::WorkflowCompleted as i32, "the last run");
    worker.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverging_replay_fails_the_task_and_leaves_the_history_alone() {
    async fn original(ctx: WorkflowContext, _: ()) -> Result<(), WorkflowError> {
        ctx.step("charge", || async { Ok::<_, anyhow::Error>(1) }).await?;
        let _: Option<bool> = ctx.signal("go", None).await?;
        Ok(())
    }
    async fn renamed(ctx: WorkflowContext, _: ()) -> Result<(), WorkflowError> {
        ctx.step("charge_card", || async { Ok::<_, anyhow::Error>(1) }).await?;
        let _: Option<bool> = ctx.signal("go", None).await?;
        Ok(())
    }
    let node = TestNode::start().await;
    let client = Client::connect(&endpoint(node.addr)).await.expect("connect");
    let first = RunningWorker::start(Worker::builder(client.clone(), "q").register_workflow("w", original).build());
    client.start_workflow("w", "nd", "q", &()).await.expect("start");
    wait_for("the signal wait", Duration::from_secs(10), || {
        let client = client.clone();
        async move { (!client.describe_workflow("nd").await.ok()?.awaited_signals.is_empty()).then_some(()) }
    })
    .await;
    first.stop().await;
    let before = history_types(&client, "nd").await;

    // New code with the step renamed replays the history and diverges.
    let second = RunningWorker::start(Worker::builder(client.clone(), "q").register_workflow("w", renamed).build());
    client.signal_workflow("nd", "go", &true).await.expect("signal");
    let failure = wait_for("the workflow task to fail", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            let task = client.describe_workflow("nd").await.ok()?.pending_workflow_task?;
            task.last_failure
        }
    })
    .await;
    assert_eq!(failure.error_type, "NonDeterminism");
    assert!(failure.message.contains("charge"), "the error names the step: {}", failure.message);
    let after = history_types(&client, "nd").await;
    assert_eq!(&after[..before.len()], &before[..], "the recorded history is unchanged");
    assert_eq!(count(&after, pb::EventType::StepCompleted), 1, "nothing was recorded for the renamed step");
    assert_eq!(count(&after, pb::EventType::WorkflowCompleted), 0);
    second.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_runs_and_fires_timers() {
    static STEPS: AtomicU32 = AtomicU32::new(0);
    async fn sleeper(ctx: WorkflowContext, _: ()) -> Result<u32, WorkflowError> {
        ctx.step("before", || async { Ok::<_, anyhow::Error>(STEPS.fetch_add(1, Ordering::SeqCst)) }).await?;
        ctx.sleep(Duration::from_millis(500)).await?;
        ctx.step("after", || async { Ok::<_, anyhow::Error>(7u32) }).await
    }
    let mut node = TestNode::start().await;
    let client = Client::connect(&endpoint(node.addr)).await.expect("connect");
    let worker = RunningWorker::start(Worker::builder(client.clone(), "q").register_workflow("s", sleeper).build());
    client.start_workflow("s", "s-1", "q", &()).await.expect("start");
    wait_for("the timer to start", Duration::from_secs(10), || {
        let client = client.clone();
        async move { (!client.describe_workflow("s-1").await.ok()?.pending_timers.is_empty()).then_some(()) }
    })
    .await;
    worker.stop().await;
    node.restart().await;
    let client = Client::connect(&endpoint(node.addr)).await.expect("reconnect");
    let worker = RunningWorker::start(Worker::builder(client.clone(), "q").register_workflow("s", sleeper).build());
    let result: u32 = tokio::time::timeout(Duration::from_secs(30), client.workflow_result("s-1"))
        .await
        .expect("completes")
        .expect("result");
    assert_eq!(result, 7);
    assert_eq!(STEPS.load(Ordering::SeqCst), 1, "the first step ran once: the replay used its recorded result");
    let listed = client
        .raw()
        .workflow
        .clone()
        .list_workflows(pb::ListWorkflowsRequest { page_size: 10, ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.workflows.len(), 1);
    assert_eq!(listed.workflows[0].status, pb::WorkflowStatus::Completed as i32);
    worker.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_newest_first_filtered_and_paged() {
    let node = TestNode::start().await;
    let client = Client::connect(&endpoint(node.addr)).await.expect("connect");
    for i in 0..7 {
        let workflow_type = if i % 2 == 0 { "even" } else { "odd" };
        client.start_workflow(workflow_type, &format!("l-{i}"), "nobody", &i).await.expect("start");
    }
    client.terminate_workflow("l-0", "done").await.expect("terminate");
    let mut raw = client.raw().workflow.clone();
    let mut seen = Vec::new();
    let mut token = Vec::new();
    loop {
        let page = raw
            .list_workflows(pb::ListWorkflowsRequest {
                page_size: 3,
                next_page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        seen.extend(page.workflows.iter().map(|w| (w.workflow_id.clone(), w.start_time_ms)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 7, "every run once: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0].1 >= w[1].1), "newest first: {seen:?}");
    let odd = raw
        .list_workflows(pb::ListWorkflowsRequest { workflow_type: "odd".into(), ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(odd.workflows.len(), 3);
    let terminated = raw
        .list_workflows(pb::ListWorkflowsRequest {
            status: pb::WorkflowStatus::Terminated as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(terminated.workflows.iter().map(|w| w.workflow_id.as_str()).collect::<Vec<_>>(), ["l-0"]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activities_heartbeat_and_time_out_by_heartbeat() {
    static ATTEMPTS: AtomicU32 = AtomicU32::new(0);
    async fn slow(ctx: ActivityContext, _: ()) -> Result<u32, ActivityError> {
        let attempt = ATTEMPTS.fetch_add(1, Ordering::SeqCst) + 1;
        let progress: u32 = ctx.heartbeat_details().unwrap_or(0);
        ctx.heartbeat(&(progress + 10)).await;
        if attempt == 1 {
            // Stop heartbeating: the heartbeat timeout ends this attempt.
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Ok(progress)
    }
    async fn uses_slow(ctx: WorkflowContext, _: ()) -> Result<u32, WorkflowError> {
        let options = ActivityOptions {
            heartbeat_timeout: Some(Duration::from_millis(500)),
            start_to_close_timeout: Some(Duration::from_secs(30)),
            retry_policy: RetryPolicy { initial_interval: Duration::from_millis(10), ..RetryPolicy::default() },
            ..ActivityOptions::default()
        };
        ctx.activity("slow", &(), options).await
    }
    let node = TestNode::start().await;
    let client = Client::connect(&endpoint(node.addr)).await.expect("connect");
    let worker = RunningWorker::start(
        Worker::builder(client.clone(), "q").register_workflow("h", uses_slow).register_activity("slow", slow).build(),
    );
    client.start_workflow("h", "h-1", "q", &()).await.expect("start");
    let progress: u32 = client.workflow_result("h-1").await.expect("result");
    assert_eq!(progress, 10, "the second attempt saw the first attempt's heartbeat details");
    let types = history_types(&client, "h-1").await;
    assert_eq!(count(&types, pb::EventType::ActivityAttemptFailed), 1, "the heartbeat timeout ended attempt 1");
    worker.stop().await;
    node.stop().await;
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Arc<Client>>();
}
