//! Three `weft server` processes on 127.0.0.1 free ports, formed with `weft cluster init`, and
//! the faults the cluster tests inflict on them: SIGKILL, SIGSTOP/SIGCONT, restart on the same
//! data dir, and a wiped data dir. Each node's stderr goes to `n<ID>.log` in the cluster's
//! temp dir (printed by [`ServerCluster::logs`] when a test wants them).
//!
//! `WEFT_E2E_NODE_LOG` sets the nodes' `RUST_LOG` (default `info`; `info,openraft=debug` shows
//! every Raft message).
//!
//! Invariants: a node is signalled by its own pid only; a dropped cluster SIGKILLs (and reaps)
//! every node it started, paused or not. Status is read over gRPC with a timeout, so a paused
//! node never hangs a wait.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use weft_proto::v1 as pb;

use crate::{clients_on, endpoint, free_port, wait_every, weft_command};

/// How long one status call may take before the node counts as not answering.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// `--snapshot-logs` of every node: a snapshot (and a log purge) every 20 entries of a shard,
/// so a node that was down or wiped is brought back by a snapshot, not only from the log.
pub const SNAPSHOT_LOGS: u64 = 20;

/// One `weft server` process; SIGKILLed when dropped.
struct Server(Child);

impl Server {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct ServerCluster {
    dir: tempfile::TempDir,
    pub addrs: BTreeMap<u64, SocketAddr>,
    servers: BTreeMap<u64, Server>,
    paused: BTreeSet<u64>,
    /// Nodes started with `--join` (their id is the one `add-node` gave them).
    joined: BTreeSet<u64>,
    /// Nodes removed with `weft cluster remove-node`.
    removed: BTreeSet<u64>,
    /// Extra environment of a node's process, set before it starts.
    envs: BTreeMap<u64, Vec<(String, String)>>,
}

impl ServerCluster {
    /// Starts nodes 1, 2 and 3 and forms them with `weft --server <node 1> cluster init
    /// --shards <shards> --replicas 3`; returns once every shard has a leader.
    pub async fn form(shards: u32) -> ServerCluster {
        ServerCluster::form_with_env(shards, &[]).await
    }

    /// [`ServerCluster::form`], each node's process started with `env` added to its
    /// environment.
    pub async fn form_with_env(shards: u32, env: &[(&str, &str)]) -> ServerCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let addrs: BTreeMap<u64, SocketAddr> =
            (1..=3).map(|id| (id, format!("127.0.0.1:{}", free_port()).parse().expect("addr"))).collect();
        let mut cluster = ServerCluster {
            dir,
            addrs,
            servers: BTreeMap::new(),
            paused: BTreeSet::new(),
            joined: BTreeSet::new(),
            removed: BTreeSet::new(),
            envs: BTreeMap::new(),
        };
        for id in 1..=3 {
            cluster.set_env(id, env);
            cluster.start(id);
        }
        let server = cluster.addrs[&1].to_string();
        let shards = shards.to_string();
        let init =
            wait_every("`weft cluster init` to succeed", Duration::from_secs(60), Duration::from_millis(200), || {
                let output = weft_command()
                    .args(["--server", &server, "--output", "json", "cluster", "init", "--shards", &shards])
                    .args(["--replicas", "3"])
                    .output()
                    .expect("run weft cluster init");
                async move { output.status.success().then_some(output.stdout) }
            })
            .await;
        let init: serde_json::Value = serde_json::from_slice(&init).expect("cluster init prints JSON");
        assert_eq!(init["shard_count"], serde_json::json!(shards.parse::<u32>().expect("shards")), "{init}");
        assert_eq!(init["nodes"].as_array().map(Vec::len), Some(3), "three nodes formed: {init}");
        cluster.wait_for_leaders().await;
        cluster
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("n{id}"))
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("n{id}.log"))
    }

    /// Starts node `id` (again) on its data dir and port, with the same peers (or `--join`, for
    /// a node that joined).
    pub fn start(&mut self, id: u64) {
        assert!(!self.servers.contains_key(&id), "node {id} already runs");
        let founders: Vec<String> = self
            .addrs
            .iter()
            .filter(|(id, _)| !self.joined.contains(id))
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(id)).expect("open the node log");
        let mut command = weft_command();
        command.args(["server", "--listen", &self.addrs[&id].to_string()]);
        if self.joined.contains(&id) {
            command.arg("--join");
        } else {
            command.args(["--node-id", &id.to_string(), "--peers", &founders.join(",")]);
        }
        for (key, value) in self.envs.get(&id).into_iter().flatten() {
            command.env(key, value);
        }
        let child = command
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(["--metrics-listen", "off", "--wal-prewrite-mib", "0"])
            .args(["--snapshot-logs", &SNAPSHOT_LOGS.to_string()])
            .env("RUST_LOG", std::env::var("WEFT_E2E_NODE_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn weft server");
        self.servers.insert(id, Server(child));
    }

    /// Starts a new node with `--join` on a free port, to be added as node `id` (the id the
    /// cluster will give it: one above every id it ever had); `weft cluster add-node` adds it.
    pub fn start_joining(&mut self, id: u64) -> SocketAddr {
        assert!(!self.addrs.contains_key(&id), "node {id} exists");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        self.addrs.insert(id, addr);
        self.joined.insert(id);
        self.start(id);
        addr
    }

    /// `weft --server <node via> --output json ARGS...`: its JSON output, or its stderr.
    pub fn weft_json(&self, via: u64, args: &[&str]) -> Result<serde_json::Value, String> {
        let output = weft_command()
            .args(["--server", &self.addrs[&via].to_string(), "--output", "json"])
            .args(args)
            .output()
            .expect("run weft");
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        serde_json::from_slice(&output.stdout).map_err(|e| format!("not JSON ({e}): {output:?}"))
    }

    /// Node `id` was removed from the cluster: it is no longer expected to hold replicas.
    pub fn forget(&mut self, id: u64) {
        self.removed.insert(id);
        self.paused.remove(&id);
    }

    /// Whether node `id`'s process has exited (it stops by itself once removed).
    pub fn exited(&mut self, id: u64) -> bool {
        match self.servers.get_mut(&id) {
            Some(server) => server.0.try_wait().expect("wait on the node").is_some(),
            None => true,
        }
    }

    /// The extra environment node `id` starts with from now on (replacing what it had).
    pub fn set_env(&mut self, id: u64, env: &[(&str, &str)]) {
        self.envs.insert(id, env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    }

    /// Waits until node `via` reports the cluster's command version as `version`.
    pub async fn wait_command_version(&self, via: u64, version: u32, within: Duration) {
        let what = format!("command version {version}");
        wait_every(&what, within, Duration::from_millis(100), || async move {
            let status = self.status_via(via).await?;
            (status.command_version == version).then_some(())
        })
        .await
    }

    /// Waits until node `id`'s process exits; its exit status.
    pub async fn wait_exit(&mut self, id: u64, within: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let server = self.servers.get_mut(&id).expect("the node was started");
            if let Some(status) = server.0.try_wait().expect("wait on the node") {
                self.servers.remove(&id);
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "node {id} did not exit within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL node `id`: no shutdown code runs.
    pub fn kill(&mut self, id: u64) {
        drop(self.servers.remove(&id).expect("the node runs"));
        self.paused.remove(&id);
    }

    /// SIGKILL node `id` and delete its data dir.
    pub fn wipe(&mut self, id: u64) {
        self.kill(id);
        std::fs::remove_dir_all(self.data_dir(id)).expect("delete the data dir");
    }

    /// SIGSTOP node `id`: it holds its sockets but answers nothing.
    pub fn pause(&mut self, id: u64) {
        self.signal(id, "-STOP");
        self.paused.insert(id);
    }

    /// SIGCONT node `id`.
    pub fn resume(&mut self, id: u64) {
        self.signal(id, "-CONT");
        self.paused.remove(&id);
    }

    fn signal(&self, id: u64, signal: &str) {
        let pid = self.servers.get(&id).expect("the node runs").pid().to_string();
        let status = std::process::Command::new("kill").args([signal, &pid]).status().expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Nodes that run, are not paused and were not removed.
    pub fn live(&self) -> Vec<u64> {
        self.servers.keys().copied().filter(|id| !self.paused.contains(id) && !self.removed.contains(id)).collect()
    }

    /// `http://a,http://b,...` for the SDK: the nodes in `order`.
    pub fn servers(&self, order: &[u64]) -> String {
        order.iter().map(|id| endpoint(self.addrs[id])).collect::<Vec<_>>().join(",")
    }

    /// Raw clients to node `id`.
    pub async fn clients(&self, id: u64) -> crate::Clients {
        crate::clients(self.addrs[&id]).await
    }

    /// `ClusterStatus` as node `id` answers it, or `None` if it does not within 2 s.
    pub async fn status_via(&self, id: u64) -> Option<pb::ClusterStatusResponse> {
        let endpoint = tonic::transport::Endpoint::from_shared(endpoint(self.addrs[&id])).ok()?;
        let call = async move {
            let channel = endpoint.connect().await.ok()?;
            let mut admin = clients_on(channel).2;
            admin.cluster_status(pb::ClusterStatusRequest {}).await.ok().map(|r| r.into_inner())
        };
        tokio::time::timeout(STATUS_TIMEOUT, call).await.ok().flatten()
    }

    /// `ClusterStatus` from the first live node, waiting until one answers.
    pub async fn status(&self) -> pb::ClusterStatusResponse {
        let via = *self.live().first().expect("a live node");
        wait_every("a cluster status", Duration::from_secs(30), Duration::from_millis(50), || self.status_via(via))
            .await
    }

    /// Waits until every shard has a leader among the live nodes (as the first live node sees it).
    pub async fn wait_for_leaders(&self) -> pb::ClusterStatusResponse {
        let live = self.live();
        wait_every("every shard to have a live leader", Duration::from_secs(30), Duration::from_millis(50), || {
            let live = live.clone();
            async move {
                let status = self.status_via(live[0]).await?;
                status.shards.iter().all(|s| live.contains(&s.leader_node_id)).then_some(status)
            }
        })
        .await
    }

    /// Waits until every shard has its three replicas at lag 0 with equal applied indexes and
    /// equal state checksums at that index, as node `via` reports it; the status that showed
    /// it. Panics at once if two replicas' checksums at one index differ.
    pub async fn wait_caught_up(&self, via: u64, within: Duration) -> pb::ClusterStatusResponse {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = None;
        loop {
            if let Some(status) = self.status_via(via).await {
                assert_no_divergence(&status);
                if caught_up(&status) {
                    return status;
                }
                last = Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {within:?} waiting for every replica to catch up; node {via}'s last status: {last:#?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every replica of every shard (one on every node) has applied what its
    /// leader had committed when the wait began, as node `via` reports it: caught up while
    /// writes go on (the stricter [`ServerCluster::wait_caught_up`] needs the shards idle, for
    /// the replicas' checksums to meet at one index).
    pub async fn wait_caught_up_under_load(&self, via: u64, within: Duration) -> pb::ClusterStatusResponse {
        let first = self.wait_for_leaders().await;
        let targets: BTreeMap<u32, u64> = first.shards.iter().map(|s| (s.shard_id, s.committed_index)).collect();
        let deadline = tokio::time::Instant::now() + within;
        let mut last = None;
        loop {
            if let Some(status) = self.status_via(via).await {
                assert_no_divergence(&status);
                let nodes = status.nodes.len();
                let done = status.shards.iter().all(|s| {
                    s.replicas.len() == nodes
                        && s.replicas.iter().all(|r| r.applied_index >= targets.get(&s.shard_id).copied().unwrap_or(0))
                });
                if done {
                    return status;
                }
                last = Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out after {within:?} waiting for the replicas to catch up to {targets:?}: {last:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The live node leading the most shards.
    pub async fn busiest_leader(&self) -> u64 {
        let status = self.wait_for_leaders().await;
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for shard in &status.shards {
            *counts.entry(shard.leader_node_id).or_default() += 1;
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(id, _)| id).expect("leaders")
    }

    /// Node `id`'s log.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Every node's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for id in self.addrs.keys() {
            let log = std::fs::read_to_string(self.log_path(*id)).unwrap_or_default();
            all.push_str(&format!("----- node {id} -----\n{log}\n"));
        }
        all
    }
}

/// Every shard has three voters and a replica on every node of the cluster (the others are
/// learners), none lagging, all at the same applied index, whose state checksums at that index
/// all agree.
pub fn caught_up(status: &pb::ClusterStatusResponse) -> bool {
    let nodes = status.nodes.len().max(3);
    !status.shards.is_empty()
        && status.shards.iter().all(|s| {
            s.leader_node_id != 0
                && s.voters.len() == 3
                && s.replicas.len() == nodes
                && s.replicas.iter().all(|r| r.lag == 0 && r.applied_index == s.replicas[0].applied_index)
                && s.checksums_agree == Some(true)
                && s.checksums_compared as usize == nodes
        })
}

/// Panics if any shard's replicas hold different states at one applied index.
pub fn assert_no_divergence(status: &pb::ClusterStatusResponse) {
    for shard in &status.shards {
        assert_ne!(shard.checksums_agree, Some(false), "the replicas of shard {} diverged: {shard:?}", shard.shard_id);
    }
}
