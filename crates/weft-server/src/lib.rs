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
pub mod cluster;
pub mod convert;
pub mod dispatch;
pub mod fanout;
pub mod membership;
pub mod node;
pub mod query;
pub mod route;
pub mod service;
pub mod shard_store;
pub mod versions;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};
use weft_proto::v1::admin_service_server::AdminServiceServer;
use weft_proto::v1::node_service_server::NodeServiceServer;
use weft_proto::v1::worker_service_server::WorkerServiceServer;
use weft_proto::v1::workflow_service_server::WorkflowServiceServer;
use weft_raft::RaftHost;
use weft_storage::{ClusterMeta, Db};

use crate::applier::ShardSlots;
use crate::node::{DEFAULT_NAMESPACE, NAMESPACE_SHARD, Node, wall_clock_ms};

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
    /// Raft tuning (snapshot interval).
    pub raft: raft::RaftOptions,
}

/// The Raft tuning a node's configuration sets.
pub mod raft {
    pub use weft_raft::host::{RaftOptions, SNAPSHOT_LOGS_MAX, SNAPSHOT_LOGS_MIN, SNAPSHOT_LOGS_SINCE_LAST};
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
    /// `--join`: a node without a cluster record waits for `weft cluster add-node`, which gives
    /// it its node id; with a record, the stored node id is its id.
    pub join: bool,
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

/// A node stopped because a write to its disk failed (no space, an I/O error). `weft server`
/// exits with [`StorageFailed::EXIT_CODE`]; restarted once the disk works, the node recovers
/// from what it had fsynced and its peers.
#[derive(Debug, thiserror::Error)]
#[error("{0}; the node stopped: free space or fix the disk, then start it again (it recovers from its peers)")]
pub struct StorageFailed(pub String);

impl StorageFailed {
    /// The exit code of a node stopped on a storage failure (EX_TEMPFAIL: try again later).
    pub const EXIT_CODE: u8 = 75;
}

/// Runs a node until `shutdown` resolves.
pub async fn run_node(config: NodeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    if let Some(metrics_listen) = config.metrics_listen {
        install_metrics(metrics_listen)?;
    }
    let mut handle = start_node(config).await?;
    let removed = handle.node.removed();
    let storage_failed = handle.node.raft.storage_failed();
    tokio::select! {
        failure = storage_failed => {
            // The failed group stays stopped in this process: stop the node, so that a
            // supervisor restarts it (it recovers then, once the disk works again) instead of
            // it serving with a shard that can never catch up.
            tracing::error!(%failure, "a storage write failed; the node stops");
            handle.shutdown().await?;
            Err(StorageFailed(failure).into())
        }
        _ = shutdown => {
            tracing::info!("shutting down");
            handle.shutdown().await
        }
        _ = removed => {
            // Let the answer to `LeaveCluster` go out first.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
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

/// The cluster record of a data dir that has one, checked against how the node was started.
fn check_cluster(mut meta: ClusterMeta, config: &NodeConfig, advertise: &str) -> anyhow::Result<ClusterMeta> {
    anyhow::ensure!(
        // A node that joined took its id from the cluster, and is restarted with `--join` again.
        meta.node_id == config.node_id || config.cluster.join,
        "the data directory {} belongs to node {} of cluster {}, but this node was started with --node-id {}: \
         start it with --node-id {} or give it another --data-dir",
        config.data_dir.display(),
        meta.node_id,
        meta.cluster_id,
        config.node_id,
        meta.node_id
    );
    if meta.shard_count != config.shards {
        tracing::debug!(stored = meta.shard_count, asked = config.shards, "keeping the stored shard count");
    }
    if meta.nodes.len() <= 1 {
        // A one-node cluster: no peer knows this node's address, so it may move.
        meta.nodes = BTreeMap::from([(meta.node_id, advertise.to_string())]);
        return Ok(meta);
    }
    let recorded = meta.nodes.get(&meta.node_id).cloned().unwrap_or_default();
    anyhow::ensure!(
        recorded == advertise,
        "node {} of cluster {} is known to its peers at {recorded}, but it was started to serve at {advertise}: start \
         it with --listen or --advertise-addr {recorded}",
        meta.node_id,
        meta.cluster_id
    );
    for (id, address) in &config.cluster.peers {
        match meta.nodes.get(id) {
            Some(known) if known != address => tracing::warn!(
                node = id,
                flag = %address,
                recorded = %known,
                "--peers disagrees with the cluster record; using the record"
            ),
            None => tracing::warn!(node = id, "--peers names a node that is not in the cluster record; ignoring it"),
            _ => {}
        }
    }
    Ok(meta)
}

/// A one-node cluster of this node, created at its first start.
fn create_single_node_cluster(db: &Db, config: &NodeConfig, advertise: &str) -> anyhow::Result<ClusterMeta> {
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
        replicas: 1,
        nodes: BTreeMap::from([(config.node_id, advertise.to_string())]),
    };
    db.put_cluster_meta(&meta)?;
    tracing::info!(cluster_id = %meta.cluster_id, shards = meta.shard_count, "created a new one-node cluster");
    Ok(meta)
}

/// The nodes `--peers` names, with this node's own entry (its advertised address) added;
/// refuses an entry for this node at another address.
fn peers_with_self(config: &NodeConfig, advertise: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut peers = config.cluster.peers.clone();
    match peers.get(&config.node_id) {
        Some(address) if address != advertise => anyhow::bail!(
            "--peers names this node ({}) at {address}, but it serves at {advertise}: make --peers, --listen and \
             --advertise-addr agree",
            config.node_id
        ),
        Some(_) => {}
        None => {
            peers.insert(config.node_id, advertise.to_string());
        }
    }
    Ok(peers)
}

/// Binds the node's port without listening yet: the port is taken (and its number known, for
/// port 0) before the data dir is set up, but connections are refused until the node serves,
/// so a node that accepts a connection has its cluster record.
fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpSocket> {
    let context = || format!("listen on {addr} (is another process, perhaps another weft node, using that port?)");
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .with_context(context)?;
    socket.set_reuseaddr(true).with_context(context)?;
    socket.bind(addr).with_context(context)?;
    Ok(socket)
}

/// Connections a bound port queues before they are accepted.
const LISTEN_BACKLOG: u32 = 1024;

fn listen(socket: tokio::net::TcpSocket, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    socket.listen(LISTEN_BACKLOG).with_context(|| format!("listen on {addr}"))
}

/// Binds the port a formation server just released (retrying briefly while the kernel frees it).
async fn rebind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpSocket> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match bind(addr) {
            Ok(socket) => return Ok(socket),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(error) => return Err(error.context("listen again after forming the cluster")),
        }
    }
}

/// Opens (or creates) the node's data and starts serving. A node of a one-node cluster returns
/// once every shard has a leader; a node of a larger cluster returns once it serves (its shards
/// elect leaders as their peers answer). A node started with `--peers` and no cluster record
/// first waits for `weft cluster init`.
pub async fn start_node(config: NodeConfig) -> anyhow::Result<NodeHandle> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
    let db = Db::open(config.data_dir.join("db")).context("open the node's RocksDB")?;
    let mut socket = bind(config.listen)?;
    let addr = socket.local_addr()?;
    let advertise = config.cluster.advertise.clone().unwrap_or_else(|| addr.to_string());
    let peers = peers_with_self(&config, &advertise)?;
    let (cluster, rejoined) = match db.get_cluster_meta()? {
        Some(meta) => (check_cluster(meta, &config, &advertise)?, false),
        None if peers.len() == 1 && !config.cluster.join => {
            (create_single_node_cluster(&db, &config, &advertise)?, false)
        }
        None => {
            db.prewrite_wal(config.wal_prewrite_bytes).context("pre-write the WAL")?;
            let forming = listen(socket, addr)?;
            let formation = if config.cluster.join {
                cluster::Formation::Join { address: advertise.clone() }
            } else {
                cluster::Formation::Init { node_id: config.node_id, peers }
            };
            let formed = cluster::await_cluster_init(db.clone(), formation, forming).await?;
            socket = rebind(addr).await?;
            formed
        }
    };
    // A node that joined has the id the cluster gave it.
    let config = NodeConfig { node_id: cluster.node_id, ..config };
    // A node that joins starts with no shard membership: its shards' leaders add it.
    let replicated = cluster.nodes.len() > 1 || config.cluster.join;

    let (effects_tx, effects_rx) = mpsc::unbounded_channel();
    let shards = Arc::new(ShardSlots::new(cluster.shard_count, effects_tx));
    let peer_connections = cluster::Peers::default();
    let (peer_down_tx, peer_down_rx) = mpsc::unbounded_channel();
    let raft = if replicated {
        let transport = cluster::GrpcTransport::new(
            cluster.cluster_id.clone(),
            config.node_id,
            peer_connections.clone(),
            peer_down_tx,
        );
        let networks = weft_raft::network::TransportNetworks::new(Arc::new(transport));
        RaftHost::open_with_network(
            db.clone(),
            config.node_id,
            cluster.shard_count,
            shards.clone(),
            networks,
            // A node that rejoins after losing its data must not initialise its shards anew:
            // their leaders bring it up to date.
            if rejoined { BTreeMap::new() } else { cluster.nodes.clone() },
            config.raft,
        )
        .await
    } else {
        RaftHost::open_with_network(
            db.clone(),
            config.node_id,
            cluster.shard_count,
            shards.clone(),
            weft_raft::network::NoNetwork,
            BTreeMap::from([(config.node_id, advertise.clone())]),
            config.raft,
        )
        .await
    }
    .context("open the shards' Raft groups")?;
    if rejoined {
        // No shard knows its members before a leader reaches this node: the record's nodes
        // stand in for them meanwhile (forwarding, status).
        raft.seed_nodes(cluster.nodes.clone());
    }
    let node = Arc::new(Node::new(
        config.node_id,
        cluster.clone(),
        db.clone(),
        raft,
        shards,
        config.dispatch,
        peer_connections,
    ));

    node.check_command_version()?;
    let mut background = vec![
        tokio::spawn(node.clone().run_peer_down(peer_down_rx)),
        tokio::spawn(node.clone().run_version_activation()),
        tokio::spawn(node.clone().run_effects(effects_rx)),
        tokio::spawn(node.clone().run_alarms()),
        tokio::spawn(node.clone().run_dispatch_sweep()),
    ];
    for shard in 0..node.shard_count() {
        background.push(tokio::spawn(node.clone().follow_leadership(shard)));
    }
    if replicated {
        background.push(tokio::spawn(store_cluster_nodes(db, cluster.clone(), node.raft.nodes_watch())));
    }
    if replicated {
        // The peers may be down: serve now, and create the namespace once shard 0 has a leader.
        let creating = node.clone();
        background.push(tokio::spawn(async move {
            if let Err(error) = ensure_default_namespace(&creating, None).await {
                tracing::warn!(%error, "the default namespace is not created yet");
            }
        }));
    } else {
        wait_for_leaders(&node).await?;
        ensure_default_namespace(&node, Some(std::time::Duration::from_secs(30))).await?;
    }

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let client = WorkflowServiceServer::new(service::client::ClientService::new(node.clone()))
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let worker = WorkerServiceServer::new(service::worker::WorkerApi::new(node.clone()))
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let admin = AdminServiceServer::new(service::admin::AdminApi::new(node.clone()));
    let internal = NodeServiceServer::new(cluster::NodeApi::new(node.clone()))
        .max_decoding_message_size(cluster::NODE_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(cluster::NODE_MESSAGE_BYTES_MAX);
    // Set on each accepted stream: `Server::tcp_nodelay` covers only listeners tonic binds itself.
    // Without it a reply waits for the client's delayed ACK (Nagle): 40 ms a step.
    let listener = listen(socket, addr)?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(client)
            .add_service(worker)
            .add_service(admin)
            .add_service(internal)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            })
            .await
            .context("serve gRPC")
    });
    tracing::info!(%addr, node_id = node.node_id, shards = node.shard_count(), "weft node serving");
    Ok(NodeHandle { addr, node, stop: Some(stop_tx), served, background })
}

/// Keeps the stored cluster record's nodes those of the shards' memberships (a restart checks
/// its address against it, and a node that lost its data finds its cluster through it).
async fn store_cluster_nodes(
    db: Db,
    mut record: ClusterMeta,
    mut nodes: tokio::sync::watch::Receiver<Arc<BTreeMap<u64, String>>>,
) {
    loop {
        let current = (**nodes.borrow_and_update()).clone();
        if !current.is_empty() && current != record.nodes {
            record.nodes = current;
            match db.put_cluster_meta(&record) {
                Ok(()) => {
                    tracing::info!(nodes = ?record.nodes.keys().collect::<Vec<_>>(), "stored the cluster's nodes")
                }
                Err(error) => tracing::warn!(%error, "could not store the cluster's nodes"),
            }
        }
        if nodes.changed().await.is_err() {
            return;
        }
    }
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

/// Creates the `default` namespace on a new cluster (waits for shard 0's leader, for at most
/// `wait` when given).
async fn ensure_default_namespace(node: &Node, wait: Option<std::time::Duration>) -> anyhow::Result<()> {
    let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
    loop {
        if node.has_namespace_locally(DEFAULT_NAMESPACE) {
            return Ok(());
        }
        let command = weft_core::CommandKind::CreateNamespace {
            name: DEFAULT_NAMESPACE.into(),
            description: "The namespace used when none is named.".into(),
        };
        match node.propose(NAMESPACE_SHARD, command).await {
            Ok(_) => return Ok(()),
            Err(error) if error.rejection().is_some_and(|r| r.code == weft_core::ErrorCode::AlreadyExists) => {
                return Ok(());
            }
            Err(error) if deadline.is_none_or(|deadline| tokio::time::Instant::now() < deadline) => {
                if node.is_stopping() {
                    return Ok(());
                }
                tracing::debug!(%error, "waiting for shard 0 to elect a leader");
                let mut leading = node.raft.leader_watch(NAMESPACE_SHARD);
                let _ = tokio::time::timeout(std::time::Duration::from_millis(200), leading.changed()).await;
            }
            Err(error) => anyhow::bail!("could not create the default namespace: {error}"),
        }
    }
}
