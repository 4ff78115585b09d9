//! Shared test support: in-process nodes, raw gRPC clients, and waiting for a condition with
//! a deadline (never a bare sleep). Spawned `weft` processes are the end-to-end tests'
//! business (`tests/` in the repository, package `weft-e2e`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;
use weft_proto::v1 as pb;
use weft_proto::v1::admin_service_client::AdminServiceClient;
use weft_proto::v1::worker_service_client::WorkerServiceClient;
use weft_proto::v1::workflow_service_client::WorkflowServiceClient;
use weft_sdk::Worker;
use weft_server::{NodeConfig, NodeHandle, start_node};

pub type Clients = (
    WorkflowServiceClient<tonic::transport::Channel>,
    WorkerServiceClient<tonic::transport::Channel>,
    AdminServiceClient<tonic::transport::Channel>,
);

pub fn endpoint(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A node running inside the test process.
pub struct TestNode {
    pub handle: Option<NodeHandle>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start() -> TestNode {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let handle = start_in(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
        TestNode { addr: handle.addr, handle: Some(handle), dir }
    }

    /// Shuts the node down cleanly and starts it again on the same data and port.
    pub async fn restart(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await.expect("clean shutdown");
        }
        let handle = start_in(self.dir.path(), self.addr).await;
        self.handle = Some(handle);
    }

    pub async fn clients(&self) -> Clients {
        clients(self.addr).await
    }

    pub async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await.expect("clean shutdown");
        }
    }
}

async fn start_in(dir: &Path, listen: SocketAddr) -> NodeHandle {
    let config = NodeConfig {
        data_dir: dir.to_path_buf(),
        listen,
        shards: 4,
        node_id: 1,
        metrics_listen: None,
        wal_prewrite_bytes: 1 << 20,
        dispatch: Default::default(),
        cluster: Default::default(),
        raft: Default::default(),
    };
    start_node(config).await.expect("start an in-process node")
}

pub async fn clients(addr: SocketAddr) -> Clients {
    let channel = tonic::transport::Endpoint::from_shared(endpoint(addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the node");
    (
        WorkflowServiceClient::new(channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
        WorkerServiceClient::new(channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
        AdminServiceClient::new(channel),
    )
}

/// Waits until `check` returns `Some`, trying again every 20 ms, failing after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < until, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port (bound and released; the kernel does not hand it out again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub fn json(value: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&value).expect("json")
}

/// A worker running on its own task until [`RunningWorker::stop`].
pub struct RunningWorker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    pub fn start(worker: Worker) -> RunningWorker {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            worker.run_until(shutdown).await.expect("worker runs");
        });
        RunningWorker { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("worker stops").expect("joined");
    }
}

/// A start of workflow type `order` with no request id.
pub fn start_request(workflow_id: &str, task_queue: &str, input: Vec<u8>) -> pb::StartWorkflowRequest {
    pb::StartWorkflowRequest {
        namespace: String::new(),
        workflow_id: workflow_id.into(),
        workflow_type: "order".into(),
        task_queue: task_queue.into(),
        input,
        request_id: String::new(),
        workflow_task_timeout_ms: 0,
    }
}

pub fn poll_request(task_queue: &str, wait_ms: u64) -> pb::PollWorkflowTaskRequest {
    pb::PollWorkflowTaskRequest {
        namespace: String::new(),
        task_queue: task_queue.into(),
        identity: "t".into(),
        wait_ms,
    }
}

/// Completes workflow task `task_token` with one command.
pub fn completion(
    task_token: Vec<u8>,
    command: pb::workflow_command::Command,
    return_next_task: bool,
) -> pb::CompleteWorkflowTaskRequest {
    pb::CompleteWorkflowTaskRequest {
        task_token,
        commands: vec![pb::WorkflowCommand { command: Some(command) }],
        return_next_task,
        identity: "t".into(),
        steps_observed: false,
    }
}
