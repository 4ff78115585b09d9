//! A cluster of real `weft server` processes on 127.0.0.1 for one bench run (`--cluster N`):
//! free ports, a temporary directory (each node's data dir and log), `weft cluster init`, and
//! the waits on `cluster status` the runs need (every shard led, a restarted node caught up).
//!
//! Invariant: every process started here is stopped by its PID. [`LocalCluster::stop`] sends
//! SIGTERM and then SIGKILL to what is left; if the cluster is dropped without it (an error, a
//! panic, Ctrl-C dropping the run), `Drop` SIGKILLs every child still running. No other
//! process is ever signalled.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tonic::transport::Channel;
use weft_sdk::proto as pb;
use weft_sdk::proto::admin_service_client::AdminServiceClient;

/// How long a node may take to accept connections after it was started.
const NODE_PORT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the cluster may take to elect a leader for every shard after `cluster init`.
const LEADERS_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a node may take to exit after SIGTERM before it gets SIGKILL.
const TERM_TIMEOUT: Duration = Duration::from_secs(10);
/// One status call's deadline.
const STATUS_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// One node: its id (1-based), port, files and process (when running).
struct Node {
    id: u64,
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct LocalCluster {
    weft: PathBuf,
    /// Removed when the cluster drops, after its processes are gone.
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    peers: String,
    shards: u32,
}

impl LocalCluster {
    /// Starts `count` nodes of `weft`, forms them into a cluster of `shards` shards with
    /// `replicas` replicas each and waits until every shard has a leader.
    pub async fn start(weft: &Path, count: u32, shards: u32, replicas: u32) -> anyhow::Result<LocalCluster> {
        if !weft.is_file() {
            bail!("no weft binary at {} (give one with --weft-bin)", weft.display());
        }
        let dir = tempfile::Builder::new().prefix("weft-bench-cluster-").tempdir().context("create the temp dir")?;
        let ports = free_ports(count as usize)?;
        let peers = ports
            .iter()
            .enumerate()
            .map(|(index, port)| format!("{}=127.0.0.1:{port}", index + 1))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(index, port)| {
                let node_dir = dir.path().join(format!("n{}", index + 1));
                Node {
                    id: index as u64 + 1,
                    port: *port,
                    data_dir: node_dir.join("data"),
                    log: node_dir.join("weft.log"),
                    child: None,
                }
            })
            .collect();
        let mut cluster = LocalCluster { weft: weft.to_path_buf(), dir, nodes, peers, shards };
        for id in cluster.ids() {
            cluster.spawn(id)?;
        }
        for id in cluster.ids() {
            cluster.wait_port(id).await?;
        }
        cluster.init(shards, replicas).await?;
        cluster.wait_all_led(Instant::now() + LEADERS_TIMEOUT).await?;
        Ok(cluster)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|node| node.id).collect()
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    pub fn address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.node(id).port)
    }

    /// Every node's address, comma-separated: what `--server` would take.
    pub fn addresses(&self) -> String {
        self.addresses_except(0)
    }

    /// The addresses of every node but `id`.
    pub fn addresses_except(&self, id: u64) -> String {
        self.nodes.iter().filter(|node| node.id != id).map(|node| self.address(node.id)).collect::<Vec<_>>().join(",")
    }

    /// The running nodes' `(id, pid)`.
    pub fn pids(&self) -> Vec<(u64, u32)> {
        self.nodes.iter().filter_map(|node| Some((node.id, node.child.as_ref()?.id()?))).collect()
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let (weft, peers) = (self.weft.clone(), self.peers.clone());
        let address = self.address(id);
        let node = self.node_mut(id);
        std::fs::create_dir_all(&node.data_dir).with_context(|| format!("create {}", node.data_dir.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("open {}", node.log.display()))?;
        let child = Command::new(&weft)
            .arg("server")
            .args(["--node-id", &id.to_string(), "--listen", &address, "--peers", &peers])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--metrics-listen", "none"])
            .env("RUST_LOG", std::env::var("WEFT_BENCH_NODE_LOG").unwrap_or_else(|_| "warn".to_string()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicate the log file")?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} server (node {id})", weft.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until node `id` accepts TCP connections on its port.
    async fn wait_port(&mut self, id: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + NODE_PORT_TIMEOUT;
        let address = self.address(id);
        loop {
            let node = self.node_mut(id);
            if let Some(child) = node.child.as_mut()
                && let Some(status) = child.try_wait().context("check a node process")?
            {
                node.child = None;
                bail!("node {id} exited ({status}) before accepting connections; its log:\n{}", self.log_tail(id));
            }
            if tokio::net::TcpStream::connect(&address).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("node {id} did not accept connections on {address} in time; its log:\n{}", self.log_tail(id));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The last lines of node `id`'s log, for error messages.
    pub fn log_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(&self.node(id).log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn init(&self, shards: u32, replicas: u32) -> anyhow::Result<()> {
        let output = Command::new(&self.weft)
            .args(["--server", &self.address(1), "cluster", "init"])
            .args(["--shards", &shards.to_string(), "--replicas", &replicas.to_string()])
            .output()
            .await
            .context("run weft cluster init")?;
        if !output.status.success() {
            bail!(
                "weft cluster init failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// An admin client of node `id` alone (no retries on other nodes).
    pub fn admin(&self, id: u64) -> anyhow::Result<AdminServiceClient<Channel>> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.address(id)))?
            .connect_timeout(Duration::from_secs(2));
        Ok(AdminServiceClient::new(endpoint.connect_lazy()))
    }

    /// Waits until every node answers and every shard has a leader.
    async fn wait_all_led(&self, deadline: Instant) -> anyhow::Result<()> {
        let mut admin = self.admin(1)?;
        let mut last;
        loop {
            match status(&mut admin).await {
                Ok(status) => {
                    let unled = status.shards.iter().filter(|shard| shard.leader_node_id == 0).count();
                    let unreachable = status.nodes.iter().filter(|node| !node.reachable).count();
                    if status.shards.len() == self.shards as usize && unled == 0 && unreachable == 0 {
                        return Ok(());
                    }
                    last =
                        format!("{unled} of {} shards without a leader, {unreachable} nodes unreachable", self.shards);
                }
                Err(error) => last = format!("{error:#}"),
            }
            if Instant::now() >= deadline {
                bail!("the cluster did not elect every shard's leader in time: {last}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGKILLs node `id` and waits until the process is gone.
    pub async fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(mut child) = self.node_mut(id).child.take() {
            child.kill().await.with_context(|| format!("SIGKILL node {id}"))?;
        }
        Ok(())
    }

    /// Starts node `id` again on its port and data dir, and waits until it accepts connections.
    pub async fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id).await?;
        self.spawn(id)?;
        self.wait_port(id).await
    }

    /// Stops every node: SIGTERM, up to 10 s, then SIGKILL. Returns the nodes that needed SIGKILL
    /// or had already exited, for the report.
    pub async fn stop(mut self) -> Vec<String> {
        let mut notes = Vec::new();
        let mut running = Vec::new();
        for node in &mut self.nodes {
            let Some(mut child) = node.child.take() else { continue };
            match child.try_wait() {
                Ok(Some(status)) => notes.push(format!("node {} had exited before the end ({status})", node.id)),
                _ => {
                    if let Some(pid) = child.id() {
                        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
                    }
                    running.push((node.id, child));
                }
            }
        }
        for (id, mut child) in running {
            match tokio::time::timeout(TERM_TIMEOUT, child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => notes.push(format!("node {id} exited with {status} after SIGTERM")),
                Ok(Err(error)) => notes.push(format!("node {id}: {error}")),
                Err(_) => {
                    notes.push(format!("node {id} did not exit within {TERM_TIMEOUT:?} of SIGTERM: SIGKILL"));
                    let _ = child.kill().await;
                }
            }
        }
        notes
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let _ = &self.dir;
    }
}

/// One `cluster status` call with a deadline.
pub async fn status(admin: &mut AdminServiceClient<Channel>) -> anyhow::Result<pb::ClusterStatusResponse> {
    let mut request = tonic::Request::new(pb::ClusterStatusRequest {});
    request.set_timeout(STATUS_CALL_TIMEOUT);
    match tokio::time::timeout(STATUS_CALL_TIMEOUT, admin.cluster_status(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => bail!("cluster status: {}: {}", status.code(), status.message()),
        Err(_) => bail!("cluster status: no answer within {STATUS_CALL_TIMEOUT:?}"),
    }
}

/// `count` distinct ports free on 127.0.0.1 now (bound together, then released).
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("find free ports on 127.0.0.1")?;
    listeners.iter().map(|listener| Ok(listener.local_addr()?.port())).collect()
}

/// User + system CPU time of process `pid` so far (`/proc/PID/stat` fields 14 and 15).
pub fn process_cpu(pid: u32, ticks_per_second: u64) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after it follow its `)`.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `after_name` starts at field 3 (state): utime is field 14, stime field 15.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_micros(ticks * 1_000_000 / ticks_per_second.max(1)))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), 100 if that fails.
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}
