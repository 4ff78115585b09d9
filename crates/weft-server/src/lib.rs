//! A Weft node: gRPC services, request routing to shards, task dispatch
//! (long-polls), the timer driver and the shard host.
//!
//! Depends on `weft-raft` (replication), `weft-storage` (RocksDB), `weft-core`
//! (the deterministic domain) and `weft-proto` (the wire). Must not be
//! depended on by any of them.
//!
//! Entry points: [`run_node`] (what `weft dev` and `weft server` run) and
//! [`start_node`] (the same, returning a handle: for tests and benchmarks).

pub mod alarms;
pub mod applier;
pub mod convert;
pub mod dispatch;
pub mod node;
pub mod query;
pub mod route;
pub mod service;
pub mod shard_store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};
use weft_proto::v1::admin_service_server::AdminServiceServer;
use weft_proto::v1::worker_service_server::WorkerServiceServer;
use weft_proto::v1::workflow_service_server::WorkflowServiceServer;
use weft_raft::RaftHost;
use weft_storage::{ClusterMeta, Db};

use crate::applier::ShardSlots;
use crate::node::{Node, wall_clock_ms};

/// Where `weft dev` and `weft server` listen for gRPC unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7470";
/// Where they serve Prometheus metrics (`/metrics`) unless told otherwise.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:7471";
pub const DEFAULT_SHARDS: u32 = 16;
/// MiB of WAL a new data directory writes ahead (`--wal-prewrite-mib`): about one memtable's
/// worth, so the WAL rolls (and later files are recycled) before the pre-written file runs out.
pub const DEFAULT_WAL_PREWRITE_MIB: u64 = 64;
/// Largest `--wal-prewrite-mib`.
pub const WAL_PREWRITE_MIB_MAX: u64 = 4096;
/// Largest gRPC message the node accepts or sends. Messages of history (a workflow task, a
/// history page) hold at most [`convert::HISTORY_MESSAGE_BYTES_MAX`] of events, or one larger
/// event; requests carrying several payloads (a completion's commands) may need more.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most shards a cluster may have.
pub const SHARDS_MAX: u32 = 4096;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Shard count used when the cluster is created; an existing data dir keeps its own.
    pub shards: u32,
    pub node_id: u64,
    pub metrics_listen: Option<SocketAddr>,
    /// WAL bytes written ahead when the data directory is created, so the first WAL file's
    /// fsyncs overwrite allocated blocks ([`Db::prewrite_wal`]); 0 skips it.
    pub wal_prewrite_bytes: u64,
    /// Dispatch state kept in memory ([`dispatch::DispatchLimits`]).
    pub dispatch: dispatch::DispatchLimits,
    /// Which cluster the node belongs to, and how it is formed.
    pub cluster: ClusterConfig,
}

/// How a node finds the other nodes of its cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `host:port` other nodes and clients reach this node at (`--advertise-addr`); the bound
    /// `listen` address when `None`.
    pub advertise: Option<String>,
    /// The nodes of the cluster `weft cluster init` creates (`--peers 1=HOST:PORT,2=...`), by
    /// node id. This node's own entry may be absent (its advertised address is used).
    /// Empty, or only this node: a data dir without a cluster becomes a one-node cluster at
    /// the first start (what `weft dev` does). With other nodes, the node serves only the
    /// cluster admin and internal services until `weft cluster init` creates the cluster.
    pub peers: std::collections::BTreeMap<u64, String>,
}

/// A running node.
pub struct NodeHandle {
    /// The address the gRPC server is bound to (resolves port 0).
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Effects, alarms and leadership followers: they hold the node until aborted.
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl NodeHandle {
    /// Stops serving, then shuts the Raft groups down.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.node.begin_stopping();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = (&mut self.served).await.context("join the gRPC server")?;
        for task in &self.background {
            task.abort();
        }
        for task in self.background.drain(..) {
            let _ = task.await;
        }
        self.node.raft.shutdown().await;
        // The last handle on the node (and its Db) goes with `self`, so the
        // data directory can be opened again once this returns.
        served
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.served).await.context("join the gRPC server")?
    }
}

/// Runs a node until `shutdown` resolves.
pub async fn run_node(config: NodeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    if let Some(metrics_listen) = config.metrics_listen {
        install_metrics(metrics_listen)?;
    }
    let mut handle = start_node(config).await?;
    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutting down");
            handle.shutdown().await
        }
        result = handle.wait() => result,
    }
}

/// Serves Prometheus metrics on `addr` (`GET /metrics`).
pub fn install_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("serve metrics on {addr}"))?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(())
}

fn open_cluster(db: &Db, config: &NodeConfig) -> anyhow::Result<ClusterMeta> {
    match db.get_cluster_meta()? {
        Some(meta) => {
            anyhow::ensure!(
                meta.node_id == config.node_id,
                "the data directory {} belongs to node {} of cluster {}, but this node was started with --node-id {}: \
                 start it with --node-id {} or give it another --data-dir",
                config.data_dir.display(),
                meta.node_id,
                meta.cluster_id,
                config.node_id,
                meta.node_id
            );
            if meta.shard_count != config.shards {
                tracing::warn!(
                    stored = meta.shard_count,
                    asked = config.shards,
                    "the data directory was created with a different shard count; keeping the stored one"
                );
            }
            Ok(meta)
        }
        None => {
            anyhow::ensure!(
                (1..=SHARDS_MAX).contains(&config.shards),
                "--shards must be between 1 and {SHARDS_MAX}, got {}",
                config.shards
            );
            // Before the cluster record: a crash in between just repeats the creation.
            db.prewrite_wal(config.wal_prewrite_bytes).context("pre-write the WAL")?;
            let meta = ClusterMeta {
                cluster_id: uuid::Uuid::new_v4().to_string(),
                node_id: config.node_id,
                shard_count: config.shards,
                created_ms: wall_clock_ms(),
            };
            db.put_cluster_meta(&meta)?;
            tracing::info!(cluster_id = %meta.cluster_id, shards = meta.shard_count, "created a new cluster");
            Ok(meta)
        }
    }
}

/// Opens (or creates) the node's data and starts serving; returns once the
/// gRPC port accepts connections and every shard has a leader.
pub async fn start_node(config: NodeConfig) -> anyhow::Result<NodeHandle> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
    let db = Db::open(config.data_dir.join("db")).context("open the node's RocksDB")?;
    let cluster = open_cluster(&db, &config)?;
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("listen on {}", config.listen))?;
    let addr = listener.local_addr()?;

    let (effects_tx, effects_rx) = mpsc::unbounded_channel();
    let shards = Arc::new(ShardSlots::new(cluster.shard_count, effects_tx));
    let raft = RaftHost::open(db.clone(), config.node_id, addr.to_string(), cluster.shard_count, shards.clone())
        .await
        .context("open the shards' Raft groups")?;
    let node = Arc::new(Node::new(config.node_id, cluster, addr.to_string(), db, raft, shards, config.dispatch));

    let mut background = vec![
        tokio::spawn(node.clone().run_effects(effects_rx)),
        tokio::spawn(node.clone().run_alarms()),
        tokio::spawn(node.clone().run_dispatch_sweep()),
    ];
    for shard in 0..node.shard_count() {
        background.push(tokio::spawn(node.clone().follow_leadership(shard)));
    }
    wait_for_leaders(&node).await?;
    ensure_default_namespace(&node).await?;

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let client = WorkflowServiceServer::new(service::client::ClientService::new(node.clone()))
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let worker = WorkerServiceServer::new(service::worker::WorkerApi::new(node.clone()))
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let admin = AdminServiceServer::new(service::admin::AdminApi::new(node.clone()));
    // Set on each accepted stream: `Server::tcp_nodelay` covers only listeners tonic binds itself.
    // Without it a reply waits for the client's delayed ACK (Nagle): 40 ms a step.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(client)
            .add_service(worker)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            })
            .await
            .context("serve gRPC")
    });
    tracing::info!(%addr, node_id = node.node_id, shards = node.shard_count(), "weft node serving");
    Ok(NodeHandle { addr, node, stop: Some(stop_tx), served, background })
}

/// How long a starting node waits for every shard to have a leader.
pub const LEADERS_WAIT_S: u64 = 30;

/// Waits until every shard of this node has a leader, so the node answers requests once it
/// serves (a one-node cluster elects itself in about one election timeout).
async fn wait_for_leaders(node: &Node) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(LEADERS_WAIT_S);
    for shard in 0..node.shard_count() {
        let mut leading = node.raft.leader_watch(shard);
        while node.raft.current_leader(shard).is_none() {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            anyhow::ensure!(!remaining.is_zero(), "shard {shard} elected no leader within {LEADERS_WAIT_S} s");
            let wait = std::time::Duration::from_millis(50).min(remaining);
            let _ = tokio::time::timeout(wait, leading.changed()).await;
        }
    }
    Ok(())
}

/// Creates the `default` namespace on a new cluster (waits for shard 0's leader).
async fn ensure_default_namespace(node: &Node) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if node.shards.with_state(0, |state| state.namespaces.contains_key("default")) {
            return Ok(());
        }
        let command = weft_core::CommandKind::CreateNamespace {
            name: "default".into(),
            description: "The namespace used when none is named.".into(),
        };
        match node.propose(0, command).await {
            Ok(_) => return Ok(()),
            Err(error) if error.rejection().is_some_and(|r| r.code == weft_core::ErrorCode::AlreadyExists) => {
                return Ok(());
            }
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%error, "waiting for shard 0 to elect a leader");
                let mut leading = node.raft.leader_watch(0);
                let _ = tokio::time::timeout(std::time::Duration::from_millis(200), leading.changed()).await;
            }
            Err(error) => anyhow::bail!("could not create the default namespace: {error}"),
        }
    }
}
