//! Crash tests: real `weft dev` processes and a separate worker process, killed
//! with SIGKILL at arbitrary moments (between steps, in the middle of writes),
//! restarted, and checked: every workflow completes, every step and activity
//! result is recorded exactly once, and timers that came due while the node
//! was down fire right after it starts.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use weft_e2e::{Clients, WeftProcess, endpoint, free_port, json, wait_for};
use weft_proto::v1 as pb;
use weft_sdk::{Client, Worker};

use weft_e2e::workload::{check_exactly_once, crashy, double};

const WORKER_ADDR_ENV: &str = "WEFT_IT_WORKER_ADDR";

/// Not a test of its own: the worker process the crash tests spawn (and kill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the crash tests as a separate worker process"]
async fn worker_process() {
    let Ok(addr) = std::env::var(WORKER_ADDR_ENV) else { return };
    let client = loop {
        match Client::connect(&addr).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let worker = Worker::builder(client, "crashy")
        .register_workflow("crashy", crashy)
        .register_activity("double", double)
        .build();
    worker.run_until(std::future::pending()).await.expect("worker runs until killed");
}

struct WorkerProcess(Child);

impl WorkerProcess {
    fn spawn(addr: std::net::SocketAddr) -> WorkerProcess {
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["crash::worker_process", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env(WORKER_ADDR_ENV, endpoint(addr))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the worker process");
        WorkerProcess(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A small deterministic generator for kill moments; the seed is printed so a failure can be rerun.
struct Moments(u64);

impl Moments {
    fn next_ms(&mut self, max: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % max
    }
}

async fn start(clients: &mut Clients, id: &str, n: u64) {
    let request = pb::StartWorkflowRequest {
        namespace: String::new(),
        workflow_id: id.into(),
        workflow_type: "crashy".into(),
        task_queue: "crashy".into(),
        input: json(serde_json::json!(n)),
        request_id: format!("start-{id}"),
        workflow_task_timeout_ms: 2_000,
    };
    clients.0.start_workflow(request).await.expect("start");
}

async fn history(clients: &mut Clients, id: &str) -> Vec<pb::HistoryEvent> {
    let request = pb::GetWorkflowHistoryRequest { workflow_id: id.into(), max_events: 10_000, ..Default::default() };
    clients.0.get_workflow_history(request).await.expect("history").into_inner().events
}

/// A spawned node on a fresh data dir with a spawned worker process.
struct Setup {
    _dir: tempfile::TempDir,
    data_dir: std::path::PathBuf,
    port: u16,
    node: WeftProcess,
    clients: Clients,
    worker: WorkerProcess,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("node");
    let port = free_port();
    let node = WeftProcess::spawn(&data_dir, port);
    let clients = node.wait_ready().await;
    let worker = WorkerProcess::spawn(node.addr);
    Setup { _dir: dir, data_dir, port, node, clients, worker }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_anywhere_loses_nothing_and_records_exactly_once() {
    // WEFT_CRASH_SEED=<seed> replays the kill moments of a failed run.
    let seed = std::env::var("WEFT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::UNIX_EPOCH.elapsed().map_or(7, |d| d.as_nanos() as u64) | 1);
    eprintln!("crash test seed {seed} (rerun with WEFT_CRASH_SEED={seed})");
    let mut moments = Moments(seed);
    let Setup { _dir, data_dir, port, mut node, mut clients, mut worker } = setup().await;

    const WORKFLOWS: u64 = 24;
    for n in 0..WORKFLOWS {
        start(&mut clients, &format!("crashy-{n}"), n).await;
    }
    for round in 0..4 {
        // Let work proceed for a random moment, then kill at once, wherever it is.
        tokio::time::sleep(Duration::from_millis(50 + moments.next_ms(700))).await;
        let kill_worker = moments.next_ms(2) == 0;
        eprintln!("round {round}: SIGKILL node{}", if kill_worker { " and worker" } else { "" });
        node.kill();
        if kill_worker {
            worker.kill();
        }
        node = WeftProcess::spawn(&data_dir, port);
        clients = node.wait_ready().await;
        if kill_worker {
            worker = WorkerProcess::spawn(node.addr);
        }
        // A repeated start with the same request id returns the existing run.
        let again = pb::StartWorkflowRequest {
            workflow_id: "crashy-0".into(),
            workflow_type: "crashy".into(),
            task_queue: "crashy".into(),
            request_id: "start-crashy-0".into(),
            ..Default::default()
        };
        assert!(!clients.0.start_workflow(again).await.expect("idempotent start").into_inner().started);
    }
    for n in 0..WORKFLOWS {
        let id = format!("crashy-{n}");
        let result = wait_for(&format!("{id} to complete"), Duration::from_secs(120), || {
            let mut clients = clients.clone();
            let id = id.clone();
            async move {
                let request = pb::GetWorkflowResultRequest {
                    workflow_id: id,
                    wait_ms: 1_000,
                    follow_runs: true,
                    ..Default::default()
                };
                let response = clients.0.get_workflow_result(request).await.ok()?.into_inner();
                response.closed.then_some(response)
            }
        })
        .await;
        assert_eq!(result.status, pb::WorkflowStatus::Completed as i32, "{id}: {result:?}");
        check_exactly_once(&id, n, &history(&mut clients, &id).await);
    }
    worker.kill();
    node.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_due_while_the_node_was_down_fires_after_restart() {
    let Setup { _dir, data_dir, port, mut node, mut clients, mut worker } = setup().await;
    start(&mut clients, "sleepy", 1).await;
    let fire_ms = wait_for("the timer to start", Duration::from_secs(30), || {
        let mut clients = clients.clone();
        async move {
            let request = pb::DescribeWorkflowRequest { workflow_id: "sleepy".into(), ..Default::default() };
            let description = clients.0.describe_workflow(request).await.ok()?.into_inner();
            description.pending_timers.first().map(|t| t.fire_time_ms)
        }
    })
    .await;
    node.kill();
    // Stay down until the timer is overdue.
    let now_ms = std::time::SystemTime::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_millis() as u64);
    tokio::time::sleep(Duration::from_millis(fire_ms.saturating_sub(now_ms) + 200)).await;
    let node = WeftProcess::spawn(&data_dir, port);
    let mut clients = node.wait_ready().await;
    let restarted_ms = std::time::SystemTime::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_millis() as u64);
    let events = wait_for("the overdue timer to fire", Duration::from_secs(30), || {
        let mut clients = clients.clone();
        async move {
            let events = history(&mut clients, "sleepy").await;
            events.iter().any(|e| e.event_type == pb::EventType::TimerFired as i32).then_some(events)
        }
    })
    .await;
    let fired = events.iter().find(|e| e.event_type == pb::EventType::TimerFired as i32).expect("fired");
    assert!(fired.time_ms >= fire_ms, "never early");
    assert!(fired.time_ms >= restarted_ms.saturating_sub(5_000), "fired after the restart");
    let request = pb::GetWorkflowResultRequest { workflow_id: "sleepy".into(), wait_ms: 30_000, ..Default::default() };
    let result = clients.0.get_workflow_result(request).await.expect("result").into_inner();
    assert_eq!(result.status, pb::WorkflowStatus::Completed as i32);
    check_exactly_once("sleepy", 1, &history(&mut clients, "sleepy").await);
    worker.kill();
    drop(node);
}
