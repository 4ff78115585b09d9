//! The cluster: how a node reaches its peers and how a cluster is formed.
//!
//! Owns: the connections to peer nodes ([`Peers`]: one lazily connecting gRPC channel per
//! address, shared by Raft traffic and forwarded requests), the Raft transport over them
//! ([`GrpcTransport`], `weft.v1.NodeService/Raft`), the node-to-node service ([`NodeApi`]), and
//! cluster formation ([`await_cluster_init`], [`join_peers`]): `weft cluster init` sent to any
//! node of a set started with `--peers` creates the cluster id, stores the cluster record on
//! every node, and each node then starts its shards, every one initialising each shard's group
//! with the same members.
//!
//! Invariants:
//! - A node stores its cluster record before it starts any shard, and never replaces it with
//!   another cluster's: a join or a Raft message of another cluster id, or addressed to another
//!   node id, is refused with a message naming both.
//! - Messages between nodes are bounded: [`NODE_MESSAGE_BYTES_MAX`] (Raft's append-entries are
//!   cut by bytes in `weft-raft`; snapshots travel in chunks).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use weft_proto::v1 as pb;
use weft_proto::v1::admin_service_server::AdminService;
use weft_proto::v1::node_service_client::NodeServiceClient;
use weft_proto::v1::node_service_server::NodeService;
use weft_raft::network::{RaftRpcKind, RaftTransport, TransportError, TransportFuture};
use weft_storage::{ClusterMeta, Db};

use crate::GRPC_MESSAGE_BYTES_MAX;
use crate::node::wall_clock_ms;

/// Largest message between nodes: a forwarded request (up to [`GRPC_MESSAGE_BYTES_MAX`]) with
/// room for its envelope, or a Raft message (cut at 16 MiB of entries plus one entry).
pub const NODE_MESSAGE_BYTES_MAX: usize = GRPC_MESSAGE_BYTES_MAX + 16 * 1024 * 1024;
/// How long connecting to a peer may take before it counts as unreachable.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// How long `weft cluster init` waits for each peer to store the cluster record.
pub const JOIN_TIMEOUT_MS: u64 = 5_000;
/// Replica counts a cluster may have.
pub const REPLICAS_ALLOWED: [u32; 3] = [1, 3, 5];

/// The connections of this node to the others, by address. Cheap to clone.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Peers {
    /// The channel to `addr` (`host:port`), connecting lazily; reconnects by itself.
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        if let Some(channel) = self.channels.lock().get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|error| Status::internal(format!("peer address {addr:?} is not a valid URI: {error}")))?
            .connect_timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        self.channels.lock().insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    pub fn node_client(&self, addr: &str) -> Result<NodeServiceClient<Channel>, Status> {
        Ok(NodeServiceClient::new(self.channel(addr)?)
            .max_decoding_message_size(NODE_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(NODE_MESSAGE_BYTES_MAX))
    }
}

/// Raft messages over `weft.v1.NodeService/Raft`.
pub struct GrpcTransport {
    cluster_id: String,
    node_id: u64,
    peers: Peers,
    /// Told the id of a peer a message could not reach (its connection failed: the node is
    /// down or cut off), at most once per [`PEER_DOWN_REPORT_MS`] per peer.
    peer_down: tokio::sync::mpsc::UnboundedSender<u64>,
    reported: Arc<Mutex<HashMap<u64, std::time::Instant>>>,
}

/// How often an unreachable peer is reported at most.
pub const PEER_DOWN_REPORT_MS: u64 = 1_000;

impl GrpcTransport {
    pub fn new(
        cluster_id: String,
        node_id: u64,
        peers: Peers,
        peer_down: tokio::sync::mpsc::UnboundedSender<u64>,
    ) -> GrpcTransport {
        GrpcTransport { cluster_id, node_id, peers, peer_down, reported: Arc::default() }
    }
}

/// Reports `target` as unreachable, unless it was reported less than a second ago.
fn report_down(
    reported: &Mutex<HashMap<u64, std::time::Instant>>,
    peer_down: &tokio::sync::mpsc::UnboundedSender<u64>,
    target: u64,
) {
    let mut reported = reported.lock();
    let now = std::time::Instant::now();
    let recent =
        reported.get(&target).is_some_and(|at| now.duration_since(*at) < Duration::from_millis(PEER_DOWN_REPORT_MS));
    if !recent {
        reported.insert(target, now);
        let _ = peer_down.send(target);
    }
}

impl RaftTransport for GrpcTransport {
    fn send(
        &self,
        target: u64,
        addr: &str,
        shard: u32,
        kind: RaftRpcKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> TransportFuture {
        let addr = addr.to_string();
        let client = self.peers.node_client(&addr);
        let message = pb::RaftMessage {
            cluster_id: self.cluster_id.clone(),
            from_node: self.node_id,
            to_node: target,
            shard,
            kind: kind as u32,
            body,
        };
        let (reported, peer_down) = (self.reported.clone(), self.peer_down.clone());
        Box::pin(async move {
            let mut client = client.map_err(|status| TransportError::Refused {
                target,
                addr: addr.clone(),
                detail: status.to_string(),
            })?;
            let mut request = Request::new(message);
            request.set_timeout(timeout);
            match tokio::time::timeout(timeout, client.raft(request)).await {
                Ok(Ok(reply)) => Ok(reply.into_inner().body),
                Ok(Err(status)) => Err(match status.code() {
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                        TransportError::Timeout { target, addr, timeout_ms: timeout.as_millis() as u64 }
                    }
                    tonic::Code::Unavailable | tonic::Code::Unknown => {
                        report_down(&reported, &peer_down, target);
                        TransportError::Unreachable { target, addr, detail: status.message().to_string() }
                    }
                    _ => TransportError::Refused { target, addr, detail: status.message().to_string() },
                }),
                Err(_) => Err(TransportError::Timeout { target, addr, timeout_ms: timeout.as_millis() as u64 }),
            }
        })
    }
}

/// Checks that a node-to-node message is for this cluster and this node.
fn check_addressed(meta: &ClusterMeta, cluster_id: &str, to_node: u64) -> Result<(), Status> {
    if cluster_id != meta.cluster_id {
        return Err(Status::failed_precondition(format!(
            "this node belongs to cluster {}, not to cluster {cluster_id}",
            meta.cluster_id
        )));
    }
    if to_node != meta.node_id {
        return Err(Status::failed_precondition(format!(
            "this is node {}, not node {to_node} (check the peers' addresses)",
            meta.node_id
        )));
    }
    Ok(())
}

/// `weft.v1.NodeService` of a node that is part of a cluster.
pub struct NodeApi {
    node: Arc<crate::node::Node>,
}

impl NodeApi {
    pub fn new(node: Arc<crate::node::Node>) -> NodeApi {
        NodeApi { node }
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn raft(&self, request: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessageReply>, Status> {
        let message = request.into_inner();
        check_addressed(&self.node.cluster, &message.cluster_id, message.to_node)?;
        if !self.node.raft.nodes().contains_key(&message.from_node) {
            // A node removed from the cluster (`weft cluster remove-node`) that was restarted:
            // its stale groups must not disturb the members' elections.
            return Err(Status::failed_precondition(format!(
                "node {} is not a member of cluster {} (it was removed, or is not added yet)",
                message.from_node, message.cluster_id
            )));
        }
        let kind = RaftRpcKind::from_u32(message.kind)
            .ok_or_else(|| Status::invalid_argument(format!("unknown raft message kind {}", message.kind)))?;
        let body = self
            .node
            .raft
            .handle_rpc(message.shard, kind, &message.body)
            .await
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        Ok(Response::new(pb::RaftMessageReply { body }))
    }

    async fn join_cluster(
        &self,
        request: Request<pb::JoinClusterRequest>,
    ) -> Result<Response<pb::JoinClusterResponse>, Status> {
        let request = request.into_inner();
        let meta = &self.node.cluster;
        if request.adding && request.cluster_id == meta.cluster_id {
            // `add-node` retried after this node joined: it keeps the id it has.
            return Ok(Response::new(pb::JoinClusterResponse { node_id: meta.node_id }));
        }
        if request.adding {
            return Err(Status::failed_precondition(format!(
                "the node at this address is node {} of cluster {}, not a node waiting to join cluster {}",
                meta.node_id, meta.cluster_id, request.cluster_id
            )));
        }
        check_addressed(meta, &request.cluster_id, request.node_id)?;
        Ok(Response::new(pb::JoinClusterResponse { node_id: meta.node_id }))
    }

    async fn change_shard_members(
        &self,
        request: Request<pb::ShardMembersRequest>,
    ) -> Result<Response<pb::ShardMembersResponse>, Status> {
        let request = request.into_inner();
        if request.cluster_id != self.node.cluster.cluster_id {
            return Err(Status::failed_precondition(format!(
                "this node belongs to cluster {}, not to cluster {}",
                self.node.cluster.cluster_id, request.cluster_id
            )));
        }
        let step = request.step.ok_or_else(|| Status::invalid_argument("a membership step names no step"))?;
        let step = crate::membership::Step::from_proto(step)?;
        Ok(Response::new(self.node.run_member_step(request.shard, &step).await?))
    }

    async fn leave_cluster(
        &self,
        request: Request<pb::LeaveClusterRequest>,
    ) -> Result<Response<pb::LeaveClusterResponse>, Status> {
        let request = request.into_inner();
        check_addressed(&self.node.cluster, &request.cluster_id, request.node_id)?;
        self.node.leave_cluster();
        Ok(Response::new(pb::LeaveClusterResponse {}))
    }

    async fn node_info(
        &self,
        _request: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        Ok(Response::new(self.node.node_info()))
    }
}

/// The cluster record a join request carries, as this node stores it.
fn meta_of_join(request: &pb::JoinClusterRequest) -> ClusterMeta {
    ClusterMeta {
        cluster_id: request.cluster_id.clone(),
        node_id: request.node_id,
        shard_count: request.shard_count,
        created_ms: request.created_time_ms,
        replicas: request.replicas,
        nodes: request.nodes.iter().map(|node| (node.node_id, node.address.clone())).collect(),
    }
}

fn join_request(meta: &ClusterMeta, node_id: u64) -> pb::JoinClusterRequest {
    pb::JoinClusterRequest {
        cluster_id: meta.cluster_id.clone(),
        node_id,
        shard_count: meta.shard_count,
        replicas: meta.replicas,
        nodes: meta
            .nodes
            .iter()
            .map(|(id, address)| pb::ClusterNode { node_id: *id, address: address.clone() })
            .collect(),
        created_time_ms: meta.created_ms,
        adding: false,
    }
}

/// The join `weft cluster add-node` sends to the new node `node_id` at `address`.
pub fn adding_request(
    meta: &ClusterMeta,
    nodes: &BTreeMap<u64, String>,
    node_id: u64,
    address: &str,
) -> pb::JoinClusterRequest {
    let mut nodes = nodes.clone();
    nodes.insert(node_id, address.to_string());
    let record = ClusterMeta { nodes, ..meta.clone() };
    pb::JoinClusterRequest { adding: true, ..join_request(&record, node_id) }
}

/// Sends the cluster record to every other node of `meta`; names every node that did not take
/// it.
pub async fn join_peers(peers: &Peers, meta: &ClusterMeta) -> Result<(), Status> {
    let mut failures = Vec::new();
    for (id, address) in &meta.nodes {
        if *id == meta.node_id {
            continue;
        }
        let mut request = Request::new(join_request(meta, *id));
        request.set_timeout(Duration::from_millis(JOIN_TIMEOUT_MS));
        let joined = match peers.node_client(address) {
            Ok(mut client) => client.join_cluster(request).await.map(|_| ()),
            Err(status) => Err(status),
        };
        if let Err(status) = joined {
            failures.push(format!("node {id} at {address}: {}", status.message()));
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    Err(Status::unavailable(format!(
        "cluster {} is created, but not every node took it ({}); run `weft cluster init` again with the same \
         flags once they are up",
        meta.cluster_id,
        failures.join("; ")
    )))
}

/// What `InitCluster` asks, checked: a new cluster record of the nodes this node was started
/// with, or the stored one if it has the same shape.
pub fn cluster_to_init(
    stored: Option<&ClusterMeta>,
    node_id: u64,
    peers: &BTreeMap<u64, String>,
    request: &pb::InitClusterRequest,
) -> Result<(ClusterMeta, bool), Status> {
    if !(1..=crate::SHARDS_MAX).contains(&request.shards) {
        return Err(Status::invalid_argument(format!(
            "--shards must be between 1 and {}, got {}",
            crate::SHARDS_MAX,
            request.shards
        )));
    }
    if !REPLICAS_ALLOWED.contains(&request.replicas) {
        return Err(Status::invalid_argument(format!(
            "--replicas must be 1, 3 or 5 (a majority of an even count tolerates no more failures), got {}",
            request.replicas
        )));
    }
    if let Some(meta) = stored {
        if meta.shard_count != request.shards || meta.replicas != request.replicas {
            return Err(Status::failed_precondition(format!(
                "cluster {} exists with {} shards and {} replicas; it cannot be initialised again as {} shards and \
                 {} replicas",
                meta.cluster_id, meta.shard_count, meta.replicas, request.shards, request.replicas
            )));
        }
        return Ok((meta.clone(), false));
    }
    if peers.len() as u32 != request.replicas {
        return Err(Status::invalid_argument(format!(
            "this node was started with {} node(s) in --peers ({}), but --replicas is {}: every shard has a replica \
             on every node of a new cluster, so the two must match (add nodes later with `weft cluster add-node`)",
            peers.len(),
            peers.keys().map(u64::to_string).collect::<Vec<_>>().join(", "),
            request.replicas
        )));
    }
    Ok((
        ClusterMeta {
            cluster_id: uuid::Uuid::new_v4().to_string(),
            node_id,
            shard_count: request.shards,
            created_ms: wall_clock_ms(),
            replicas: request.replicas,
            nodes: peers.clone(),
        },
        true,
    ))
}

pub fn init_response(meta: &ClusterMeta, created: bool) -> pb::InitClusterResponse {
    pb::InitClusterResponse {
        cluster_id: meta.cluster_id.clone(),
        created,
        shard_count: meta.shard_count,
        replicas: meta.replicas,
        nodes: meta
            .nodes
            .iter()
            .map(|(id, address)| pb::NodeStatus { node_id: *id, address: address.clone(), reachable: true })
            .collect(),
    }
}

/// A node of a cluster not formed yet: it serves only cluster formation, and answers
/// everything else UNAVAILABLE.
/// How a node without a cluster record becomes part of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Formation {
    /// `--peers`: `weft cluster init` creates a cluster of these nodes (or the node finds the
    /// cluster its peers formed, after its data dir was lost).
    Init { node_id: u64, peers: BTreeMap<u64, String> },
    /// `--join`: `weft cluster add-node` adds the node serving at `address` to a running
    /// cluster, and gives it its node id.
    Join { address: String },
}

struct Forming {
    db: Db,
    node_id: u64,
    peers: BTreeMap<u64, String>,
    /// `Some(own address)` for a node started with `--join`.
    join: Option<String>,
    connections: Peers,
    /// Fires once the cluster record is stored.
    formed: Mutex<Option<oneshot::Sender<(ClusterMeta, bool)>>>,
    /// Serialises formation requests.
    forming: tokio::sync::Mutex<()>,
}

impl Forming {
    /// The cluster record is stored; `rejoined`: found from the peers (this node lost its data).
    fn formed(&self, meta: ClusterMeta, rejoined: bool) {
        if let Some(formed) = self.formed.lock().take() {
            let _ = formed.send((meta, rejoined));
        }
    }

    fn store(&self, meta: &ClusterMeta) -> Result<(), Status> {
        self.db.put_cluster_meta(meta).map_err(|error| Status::internal(format!("store the cluster record: {error}")))
    }
}

fn not_formed() -> Status {
    Status::unavailable(
        "this node is not part of a cluster yet: run `weft cluster init --shards N --replicas R` against any node of \
         its --peers",
    )
}

/// Response header of a node started with `--join` that no cluster added yet.
pub const JOINING_HEADER: &str = "weft-joining";

fn not_joined(address: &str) -> Status {
    let mut status = Status::unavailable(format!(
        "this node was started with --join and is not part of a cluster yet: run `weft cluster add-node {address}` \
         against a node of the cluster"
    ));
    status.metadata_mut().insert(JOINING_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    status
}

impl Forming {
    fn not_formed(&self) -> Status {
        match &self.join {
            Some(address) => not_joined(address),
            None => not_formed(),
        }
    }

    /// A join sent by `weft cluster add-node` to a node started with `--join`.
    fn join_as_new_node(&self, address: &str, request: &pb::JoinClusterRequest) -> Result<ClusterMeta, Status> {
        let meta = meta_of_join(request);
        if !(1..=crate::SHARDS_MAX).contains(&meta.shard_count) || request.node_id == 0 {
            return Err(Status::invalid_argument("a cluster record with no shards or no node id"));
        }
        if let Some(stored) = self.db.get_cluster_meta().map_err(|e| Status::internal(e.to_string()))? {
            // A retried add-node (its answer was lost): the node keeps the id it took first.
            if stored.cluster_id == meta.cluster_id {
                return Ok(stored);
            }
            return Err(Status::failed_precondition(format!(
                "this node already belongs to cluster {}, not to cluster {}",
                stored.cluster_id, meta.cluster_id
            )));
        }
        match meta.nodes.get(&request.node_id) {
            Some(named) if named == address => {}
            named => {
                return Err(Status::failed_precondition(format!(
                    "the cluster names the new node {} at {}, but this node serves at {address}",
                    request.node_id,
                    named.map_or("no address", String::as_str)
                )));
            }
        }
        self.store(&meta)?;
        tracing::info!(cluster_id = %meta.cluster_id, node_id = meta.node_id, "joined a running cluster");
        Ok(meta)
    }
}

struct FormingNode(Arc<Forming>);
struct FormingAdmin(Arc<Forming>);

#[tonic::async_trait]
impl NodeService for FormingNode {
    async fn raft(&self, _request: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessageReply>, Status> {
        Err(self.0.not_formed())
    }

    async fn change_shard_members(
        &self,
        _request: Request<pb::ShardMembersRequest>,
    ) -> Result<Response<pb::ShardMembersResponse>, Status> {
        Err(self.0.not_formed())
    }

    async fn leave_cluster(
        &self,
        _request: Request<pb::LeaveClusterRequest>,
    ) -> Result<Response<pb::LeaveClusterResponse>, Status> {
        Err(self.0.not_formed())
    }

    async fn node_info(
        &self,
        _request: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        Ok(Response::new(pb::NodeInfoResponse {
            node_id: self.0.node_id,
            command_version_max: crate::versions::command_version_max(),
        }))
    }

    async fn join_cluster(
        &self,
        request: Request<pb::JoinClusterRequest>,
    ) -> Result<Response<pb::JoinClusterResponse>, Status> {
        let request = request.into_inner();
        let forming = &self.0;
        let _serial = forming.forming.lock().await;
        match (&forming.join, request.adding) {
            (Some(address), true) => {
                let meta = forming.join_as_new_node(address, &request)?;
                let node_id = meta.node_id;
                forming.formed(meta, true);
                return Ok(Response::new(pb::JoinClusterResponse { node_id }));
            }
            (Some(address), false) => return Err(not_joined(address)),
            (None, true) => {
                return Err(Status::failed_precondition(
                    "this node was started with --peers to form a new cluster with `weft cluster init`; to add it to \
                     a running cluster, start it with --join (and no --peers) instead",
                ));
            }
            (None, false) => {}
        }
        if request.node_id != forming.node_id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {} (check the peers' addresses)",
                forming.node_id, request.node_id
            )));
        }
        let meta = meta_of_join(&request);
        if !(1..=crate::SHARDS_MAX).contains(&meta.shard_count) || !meta.nodes.contains_key(&forming.node_id) {
            return Err(Status::invalid_argument("a cluster record without this node or with no shards"));
        }
        if let Some(stored) = forming.db.get_cluster_meta().map_err(|e| Status::internal(e.to_string()))? {
            if stored.cluster_id != meta.cluster_id {
                return Err(Status::failed_precondition(format!(
                    "node {} already belongs to cluster {}, not to cluster {}",
                    forming.node_id, stored.cluster_id, meta.cluster_id
                )));
            }
        } else {
            forming.store(&meta)?;
            tracing::info!(cluster_id = %meta.cluster_id, shards = meta.shard_count, "joined a new cluster");
        }
        let node_id = meta.node_id;
        forming.formed(meta, false);
        Ok(Response::new(pb::JoinClusterResponse { node_id }))
    }
}

#[tonic::async_trait]
impl AdminService for FormingAdmin {
    async fn add_node(&self, _request: Request<pb::AddNodeRequest>) -> Result<Response<pb::AddNodeResponse>, Status> {
        Err(self.0.not_formed())
    }

    async fn remove_node(
        &self,
        _request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        Err(self.0.not_formed())
    }

    async fn create_namespace(
        &self,
        _request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::CreateNamespaceResponse>, Status> {
        Err(self.0.not_formed())
    }

    async fn list_namespaces(
        &self,
        _request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        Err(self.0.not_formed())
    }

    async fn describe_namespace(
        &self,
        _request: Request<pb::DescribeNamespaceRequest>,
    ) -> Result<Response<pb::DescribeNamespaceResponse>, Status> {
        Err(self.0.not_formed())
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Err(self.0.not_formed())
    }

    async fn init_cluster(
        &self,
        request: Request<pb::InitClusterRequest>,
    ) -> Result<Response<pb::InitClusterResponse>, Status> {
        let request = request.into_inner();
        let forming = &self.0;
        if let Some(address) = &forming.join {
            return Err(Status::failed_precondition(format!(
                "this node was started with --join: it does not create a cluster, a running one adds it (`weft \
                 cluster add-node {address}`)"
            )));
        }
        let _serial = forming.forming.lock().await;
        let stored = forming.db.get_cluster_meta().map_err(|e| Status::internal(e.to_string()))?;
        let (meta, created) = cluster_to_init(stored.as_ref(), forming.node_id, &forming.peers, &request)?;
        if created {
            forming.store(&meta)?;
            tracing::info!(cluster_id = %meta.cluster_id, shards = meta.shard_count, replicas = meta.replicas, "created the cluster");
        }
        let joined = join_peers(&forming.connections, &meta).await;
        forming.formed(meta.clone(), false);
        joined?;
        Ok(Response::new(init_response(&meta, created)))
    }
}

/// How often a node without a cluster record asks its peers whether they form a cluster that
/// includes it.
pub const REJOIN_POLL_MS: u64 = 1_000;

/// Asks the peers, until one answers, for a cluster record that names this node at its address
/// (a cluster this node was part of before its data dir was lost); stores it and ends the
/// formation. The node then starts its shards without initialising them: their leaders
/// replicate the log (or a snapshot) to it.
async fn find_cluster_of_peers(forming: Arc<Forming>) {
    let own_address = forming.peers.get(&forming.node_id).cloned().unwrap_or_default();
    loop {
        for (id, address) in forming.peers.iter().filter(|(id, _)| **id != forming.node_id) {
            let Ok(channel) = forming.connections.channel(address) else { continue };
            let mut admin = weft_proto::v1::admin_service_client::AdminServiceClient::new(channel);
            let mut request = Request::new(pb::ClusterStatusRequest {});
            request.metadata_mut().insert("weft-local-status", tonic::metadata::MetadataValue::from_static("1"));
            request.set_timeout(Duration::from_millis(JOIN_TIMEOUT_MS));
            let Ok(status) = admin.cluster_status(request).await.map(|r| r.into_inner()) else { continue };
            let names_me = status.nodes.iter().any(|n| n.node_id == forming.node_id && n.address == own_address);
            if status.cluster_id.is_empty() || !names_me {
                continue;
            }
            let meta = ClusterMeta {
                cluster_id: status.cluster_id,
                node_id: forming.node_id,
                shard_count: status.shard_count,
                created_ms: 0,
                replicas: status.replicas,
                nodes: status.nodes.iter().map(|n| (n.node_id, n.address.clone())).collect(),
            };
            let _serial = forming.forming.lock().await;
            if forming.db.get_cluster_meta().ok().flatten().is_none() && forming.store(&meta).is_err() {
                return;
            }
            tracing::warn!(
                cluster_id = %meta.cluster_id,
                from = id,
                "this node has no data but its peers form a cluster that includes it: rejoining; its shards are \
                 rebuilt from their leaders (a wiped node forgets its Raft votes: wipe at most one node at a time)"
            );
            forming.formed(meta, true);
            return;
        }
        tokio::time::sleep(Duration::from_millis(REJOIN_POLL_MS)).await;
    }
}

/// Serves cluster formation on `listener` until this node has a cluster record (from
/// `weft cluster init` sent here, or a join sent by the node it was sent to, or found from its
/// peers); returns the record, and whether it was found from the peers (the node rejoins a
/// cluster it lost its data of), once the formation server has stopped and the port is free.
pub async fn await_cluster_init(
    db: Db,
    formation: Formation,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<(ClusterMeta, bool)> {
    let (formed_tx, formed_rx) = oneshot::channel();
    let (node_id, peers, join) = match formation {
        Formation::Init { node_id, peers } => (node_id, peers, None),
        Formation::Join { address } => (0, BTreeMap::new(), Some(address)),
    };
    let joining = join.is_some();
    let forming: Arc<Forming> = Arc::new(Forming {
        db,
        node_id,
        peers: peers.clone(),
        join,
        connections: Peers::default(),
        formed: Mutex::new(Some(formed_tx)),
        forming: tokio::sync::Mutex::new(()),
    });
    // A node whose data dir was wiped finds its cluster from its peers and rejoins it.
    let forming_for_rejoin = forming.clone();
    let rejoin = tokio::spawn(async move {
        if !joining {
            find_cluster_of_peers(forming_for_rejoin).await;
        }
    });
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let meta_slot: Arc<Mutex<Option<(ClusterMeta, bool)>>> = Arc::default();
    let slot = meta_slot.clone();
    let waiter = tokio::spawn(async move {
        if let Ok(meta) = formed_rx.await {
            *slot.lock() = Some(meta);
        }
        let _ = stop_tx.send(());
    });
    if joining {
        tracing::info!("waiting for `weft cluster add-node` to add this node to a cluster");
    } else {
        tracing::info!(node_id, peers = ?peers, "waiting for `weft cluster init` to form the cluster");
    }
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(weft_proto::v1::node_service_server::NodeServiceServer::new(FormingNode(forming.clone())))
        .add_service(weft_proto::v1::admin_service_server::AdminServiceServer::new(FormingAdmin(forming)))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        })
        .await?;
    let _ = waiter.await;
    rejoin.abort();
    let meta = meta_slot.lock().take();
    meta.ok_or_else(|| anyhow::anyhow!("the cluster formation server stopped before the cluster was formed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: u64) -> BTreeMap<u64, String> {
        (1..=n).map(|id| (id, format!("127.0.0.1:747{id}"))).collect()
    }

    #[test]
    fn init_checks_its_shape_and_is_idempotent() {
        let request = |shards, replicas| pb::InitClusterRequest { shards, replicas };
        let code = |result: Result<(ClusterMeta, bool), Status>| result.expect_err("refused").code();
        assert_eq!(code(cluster_to_init(None, 1, &peers(3), &request(0, 3))), tonic::Code::InvalidArgument);
        assert_eq!(code(cluster_to_init(None, 1, &peers(3), &request(16, 2))), tonic::Code::InvalidArgument);
        assert_eq!(code(cluster_to_init(None, 1, &peers(3), &request(16, 5))), tonic::Code::InvalidArgument);
        let (meta, created) = cluster_to_init(None, 1, &peers(3), &request(16, 3)).expect("a new cluster");
        assert!(created);
        assert_eq!((meta.shard_count, meta.replicas, meta.nodes.len(), meta.node_id), (16, 3, 3, 1));
        let (again, created) = cluster_to_init(Some(&meta), 1, &peers(3), &request(16, 3)).expect("same shape");
        assert!(!created);
        assert_eq!(again.cluster_id, meta.cluster_id);
        assert_eq!(code(cluster_to_init(Some(&meta), 1, &peers(3), &request(8, 3))), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn messages_of_another_cluster_or_node_are_refused() {
        let meta = ClusterMeta {
            cluster_id: "c".into(),
            node_id: 2,
            shard_count: 1,
            created_ms: 0,
            replicas: 3,
            nodes: peers(3),
        };
        assert!(check_addressed(&meta, "c", 2).is_ok());
        let other = check_addressed(&meta, "d", 2).expect_err("another cluster");
        assert!(other.message().contains("cluster c") && other.message().contains("cluster d"));
        let wrong = check_addressed(&meta, "c", 3).expect_err("another node");
        assert!(wrong.message().contains("node 2") && wrong.message().contains("node 3"));
    }
}
