//! The end-to-end harness: real `weft` processes started from the workspace's own build, raw
//! gRPC clients, SDK workers on their own task, and waiting for a condition with a deadline
//! (never a bare sleep). [`cluster`] adds three `weft server` processes formed into a cluster.
//!
//! Invariants: every process a test starts is SIGKILLed and reaped when its handle drops (a
//! failed assertion leaves nothing running); processes are signalled by their own pid only.
//!
//! The binary: `WEFT_BIN` when set, else `weft` in the directory above the test binary's
//! (`target/release/deps/e2e-…` → `target/release/weft`). `cargo nextest run --workspace` and
//! `cargo test --workspace` build every binary of the workspace before running any test, so
//! it is there and current.

pub mod cluster;
pub mod workload;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::watch;
use weft_proto::v1 as pb;
use weft_proto::v1::admin_service_client::AdminServiceClient;
use weft_proto::v1::worker_service_client::WorkerServiceClient;
use weft_proto::v1::workflow_service_client::WorkflowServiceClient;
use weft_sdk::Worker;

pub type Clients = (
    WorkflowServiceClient<tonic::transport::Channel>,
    WorkerServiceClient<tonic::transport::Channel>,
    AdminServiceClient<tonic::transport::Channel>,
);

/// The `weft` binary the tests run (see the module doc).
pub fn weft_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("WEFT_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/e2e-<hash> → target/<profile>/weft
    let profile_dir = exe.parent().and_then(Path::parent).expect("the test binary is in target/<profile>/deps");
    let weft = profile_dir.join(format!("weft{}", std::env::consts::EXE_SUFFIX));
    assert!(
        weft.is_file(),
        "{} is missing: build it with `cargo build --release --workspace` (cargo nextest run --workspace \
         does), or set WEFT_BIN",
        weft.display()
    );
    weft
}

/// A `Command` for the `weft` binary.
pub fn weft_command() -> Command {
    Command::new(weft_bin())
}

pub fn endpoint(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

pub async fn clients(addr: SocketAddr) -> Clients {
    let channel = tonic::transport::Endpoint::from_shared(endpoint(addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the node");
    clients_on(channel)
}

/// The three service clients over one channel, with the node's 64 MiB message limit.
pub fn clients_on(channel: tonic::transport::Channel) -> Clients {
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
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_every(what, deadline, Duration::from_millis(20), check).await
}

/// [`wait_for`] trying every `every`.
pub async fn wait_every<T, F, Fut>(what: &str, deadline: Duration, every: Duration, mut check: F) -> T
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
        tokio::time::sleep(every).await;
    }
}

/// A free loopback port (bound and released; the kernel does not hand it out again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A `weft dev` process. Killed with SIGKILL when dropped.
pub struct WeftProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl WeftProcess {
    pub fn spawn(data_dir: &Path, port: u16) -> WeftProcess {
        Self::spawn_with(data_dir, port, &[])
    }

    /// A `weft dev` process with extra flags.
    pub fn spawn_with(data_dir: &Path, port: u16, flags: &[&str]) -> WeftProcess {
        Self::spawn_env(data_dir, port, flags, &[])
    }

    /// A `weft dev` process with extra flags and environment variables.
    pub fn spawn_env(data_dir: &Path, port: u16, flags: &[&str], envs: &[(&str, &str)]) -> WeftProcess {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .expect("open the node log");
        let child = weft_command()
            .args(["dev", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &addr.to_string(), "--shards", "4", "--metrics-listen", "127.0.0.1:0"])
            // Small, but the crash tests then run on a recycled WAL as production does.
            .args(["--wal-prewrite-mib", "4"])
            .args(flags)
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the weft binary");
        WeftProcess { child: Some(child), addr, data_dir: data_dir.to_path_buf() }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the node");
            child.wait().expect("reap the node");
        }
    }

    /// Waits for the process to end by itself, with a deadline; its exit status.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("the process was not killed");
        let status = wait_for("the node process to exit", within, || {
            let polled = child.try_wait().expect("poll the node process");
            async move { polled }
        })
        .await;
        self.child = None;
        status
    }

    /// What the process wrote on stderr (its log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    pub async fn wait_ready(&self) -> Clients {
        let addr = self.addr;
        wait_for("the node to serve", Duration::from_secs(60), || async move {
            let channel = tonic::transport::Endpoint::from_shared(endpoint(addr)).ok()?.connect().await.ok()?;
            let mut admin = AdminServiceClient::new(channel);
            let status = admin.cluster_status(pb::ClusterStatusRequest {}).await.ok()?.into_inner();
            status.shards.iter().all(|s| s.leader_node_id != 0).then_some(())
        })
        .await;
        clients(addr).await
    }
}

impl Drop for WeftProcess {
    fn drop(&mut self) {
        self.kill();
    }
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
