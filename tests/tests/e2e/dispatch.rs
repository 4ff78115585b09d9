//! Task queues hold a bounded window in memory; what it leaves out waits in the durable ready
//! index and is read back as the window drains. Every ready task reaches a worker.

use std::collections::BTreeSet;
use std::time::Duration;

use weft_e2e::{WeftProcess, completion, free_port, json, poll_request, start_request};
use weft_proto::v1 as pb;

/// Ready tasks per queue the node holds in memory in this test (`weft dev --queue-window`).
const WINDOW: usize = 4;
/// Workflows started before any worker polls: several windows' worth, over every shard.
const WORKFLOWS: usize = 6 * WINDOW + 1;
/// How long the test waits for every task.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ready_task_past_the_memory_window_reaches_a_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let window = WINDOW.to_string();
    let node = WeftProcess::spawn_with(&dir.path().join("node"), free_port(), &["--queue-window", &window]);
    let (mut client, mut worker, _) = node.wait_ready().await;
    let ids: BTreeSet<String> = (0..WORKFLOWS).map(|n| format!("wide-{n:02}")).collect();
    for id in &ids {
        client.start_workflow(start_request(id, "wide", json(serde_json::json!(1)))).await.expect("start");
    }

    // Each workflow task schedules an activity, so activity tasks pile up past the window too.
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
    while seen.len() < WORKFLOWS {
        assert!(tokio::time::Instant::now() < deadline, "workflow tasks handed out: {} of {WORKFLOWS}", seen.len());
        let Some(task) = worker.poll_workflow_task(poll_request("wide", 200)).await.expect("poll").into_inner().task
        else {
            continue;
        };
        let schedule = pb::ScheduleActivity {
            seq: 1,
            activity_type: "charge".into(),
            task_queue: "wide-charges".into(),
            input: json(serde_json::json!({})),
            start_to_close_timeout_ms: 120_000,
            ..Default::default()
        };
        let command = pb::workflow_command::Command::ScheduleActivity(schedule);
        worker.complete_workflow_task(completion(task.task_token, command, false)).await.expect("complete");
        assert!(seen.insert(task.workflow_id.clone()), "{} handed out twice", task.workflow_id);
    }
    assert_eq!(seen, ids);

    let poll =
        |wait_ms| pb::PollActivityTaskRequest { task_queue: "wide-charges".into(), wait_ms, ..Default::default() };
    let mut charged = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
    while charged.len() < WORKFLOWS {
        assert!(tokio::time::Instant::now() < deadline, "activity tasks handed out: {} of {WORKFLOWS}", charged.len());
        if let Some(task) = worker.poll_activity_task(poll(200)).await.expect("poll").into_inner().task {
            assert!(charged.insert(task.workflow_id.clone()), "{} handed out twice", task.workflow_id);
        }
    }
    assert_eq!(charged, ids);
    // Nothing is handed out twice while the attempts run.
    assert!(worker.poll_activity_task(poll(300)).await.expect("poll").into_inner().task.is_none());
}
