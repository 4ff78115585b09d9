//! Clients and workers given a list of nodes ride through a node that is not there or dies:
//! a dead address in the list is skipped, and a node SIGKILLed mid-workflow and restarted on
//! the same port and data dir costs a retried start, a retried signal and a result wait
//! nothing but time (the start takes effect once, the signal is recorded once).

use std::time::Duration;

use weft_e2e::{RunningWorker, WeftProcess, endpoint, free_port, wait_for};
use weft_proto::v1 as pb;
use weft_sdk::{
    ActivityContext, ActivityError, ActivityOptions, Client, ClientOptions, SignalOptions, StartWorkflowOptions,
    Worker, WorkflowContext, WorkflowError,
};

const TASK_QUEUE: &str = "failover";

/// Step, wait for signal `go`, activity, step: the kill lands while it waits for the signal.
async fn ride(ctx: WorkflowContext, n: u64) -> Result<u64, WorkflowError> {
    let a: u64 = ctx.step("a", move || async move { Ok::<_, anyhow::Error>(n + 1) }).await?;
    let go: Option<u64> = ctx.signal("go", None).await?;
    let options =
        ActivityOptions { start_to_close_timeout: Some(Duration::from_secs(5)), ..ActivityOptions::default() };
    let b: u64 = ctx.activity("double", &(a + go.unwrap_or_default()), options).await?;
    ctx.step("b", move || async move { Ok::<_, anyhow::Error>(b + 1) }).await
}

async fn double(_ctx: ActivityContext, n: u64) -> Result<u64, ActivityError> {
    Ok(n * 2)
}

fn ride_worker(client: &Client) -> Worker {
    Worker::builder(client.clone(), TASK_QUEUE)
        .register_workflow("ride", ride)
        .register_activity("double", double)
        .build()
}

fn start_options(workflow_id: &str, request_id: &str) -> StartWorkflowOptions {
    StartWorkflowOptions {
        workflow_type: "ride".into(),
        workflow_id: workflow_id.into(),
        task_queue: TASK_QUEUE.into(),
        request_id: Some(request_id.into()),
        // A task the kill interrupts comes back within 2 s, not the default 10.
        workflow_task_timeout: Some(Duration::from_secs(2)),
    }
}

async fn history_types(client: &Client, workflow_id: &str) -> Vec<pb::EventType> {
    let history = client.workflow_history(workflow_id, None).await.expect("history");
    history.iter().map(|event| event.event_type()).collect()
}

fn count(types: &[pb::EventType], wanted: pb::EventType) -> usize {
    types.iter().filter(|t| **t == wanted).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_address_is_skipped_by_starts_results_and_workers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = WeftProcess::spawn(&dir.path().join("node"), free_port());
    node.wait_ready().await;
    // Nobody listens on the first address.
    let servers = format!("127.0.0.1:{}, {}", free_port(), endpoint(node.addr));
    let client = Client::connect(&servers).await.expect("connect past the dead address");
    assert_eq!(client.addresses().len(), 2);
    let worker = RunningWorker::start(ride_worker(&Client::connect(&servers).await.expect("worker connects")));

    let run = client.start_workflow_with(start_options("dead-first", "dead-first-1"), &1u64).await.expect("start");
    assert!(run.started);
    client.signal_workflow("dead-first", "go", &3u64).await.expect("signal");
    let result: u64 = client.workflow_result("dead-first").await.expect("result");
    assert_eq!(result, ((1 + 1 + 3) * 2) + 1);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_workflow_and_restarted_is_ridden_through() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("node");
    let port = free_port();
    let mut node = WeftProcess::spawn(&data_dir, port);
    node.wait_ready().await;
    let servers = endpoint(node.addr);
    // The default 30 s retry deadline covers a restart of `weft dev`.
    let client = Client::connect_with(&servers, ClientOptions::default()).await.expect("connect");
    let worker = RunningWorker::start(ride_worker(&Client::connect(&servers).await.expect("worker connects")));

    let first = client.start_workflow_with(start_options("ride-1", "start-1"), &1u64).await.expect("start");
    assert!(first.started);
    // Mid-workflow: step `a` is recorded and the run waits for the signal.
    wait_for("step a to be recorded", Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            let types = history_types(&client, "ride-1").await;
            (count(&types, pb::EventType::StepCompleted) == 1).then_some(())
        }
    })
    .await;
    // A result wait in flight when the node dies.
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.workflow_result::<u64>("ride-1").await }
    });

    node.kill();
    // While the node is down: a start repeated with the same request id (as a client whose
    // reply was lost does) and a signal, both retried until the node is back.
    let restart = tokio::spawn({
        let client = client.clone();
        async move { client.start_workflow_with(start_options("ride-1", "start-1"), &1u64).await }
    });
    let signal = tokio::spawn({
        let client = client.clone();
        async move {
            let options = SignalOptions { request_id: Some("go-1".into()), ..SignalOptions::default() };
            client.signal_workflow_with("ride-1", "go", &3u64, options).await
        }
    });
    let node = WeftProcess::spawn(&data_dir, port);
    node.wait_ready().await;

    let again = restart.await.expect("joined").expect("the repeated start rides through the restart");
    assert_eq!(again.run_id, first.run_id, "the repeated start returns the first run");
    assert!(!again.started, "and starts nothing");
    signal.await.expect("joined").expect("the signal rides through the restart");
    let result = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the result comes within a minute")
        .expect("joined")
        .expect("the result wait rides through the restart");
    assert_eq!(result, ((1 + 1 + 3) * 2) + 1);

    let types = history_types(&client, "ride-1").await;
    assert_eq!(count(&types, pb::EventType::WorkflowStarted), 1, "{types:?}");
    assert_eq!(count(&types, pb::EventType::SignalReceived), 1, "the signal is recorded once: {types:?}");
    assert_eq!(count(&types, pb::EventType::StepCompleted), 2, "{types:?}");
    assert_eq!(count(&types, pb::EventType::ActivityCompleted), 1, "{types:?}");
    let runs = client.list_workflows(Default::default()).await.expect("list");
    let ours: Vec<_> = runs.workflows.iter().filter(|info| info.workflow_id == "ride-1").collect();
    assert_eq!(ours.len(), 1, "one run: {ours:?}");
    worker.stop().await;
    drop(node);
}
