//! `weft.v1.AdminService`: namespaces and cluster status.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weft_core::{CommandKind, NamespaceRecord, Reply};
use weft_proto::v1 as pb;
use weft_proto::v1::admin_service_server::AdminService;

use super::forward::{self, Hop};
use super::observe;
use crate::node::{NAMESPACE_SHARD, Node};

pub struct AdminApi {
    node: Arc<Node>,
}

impl AdminApi {
    pub fn new(node: Arc<Node>) -> Self {
        AdminApi { node }
    }
}

fn namespace_to_proto(record: &NamespaceRecord) -> pb::Namespace {
    pb::Namespace {
        name: record.name.clone(),
        description: record.description.clone(),
        created_time_ms: record.created_ms,
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_namespace(
        &self,
        request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::CreateNamespaceResponse>, Status> {
        observe("CreateNamespace", async {
            let hop = Hop::of(&request);
            let request = request.into_inner();
            if let Some(leader) = self.node.forward_target(NAMESPACE_SHARD, hop).await? {
                let forwarded = forward::request(request, self.node.node_id, None);
                return leader.answer(NAMESPACE_SHARD, leader.admin().create_namespace(forwarded).await);
            }
            let command = CommandKind::CreateNamespace { name: request.name, description: request.description };
            match self.node.propose(NAMESPACE_SHARD, command).await? {
                Reply::NamespaceCreated(record) => {
                    Ok(pb::CreateNamespaceResponse { namespace: Some(namespace_to_proto(&record)) })
                }
                other => Err(Status::internal(format!("unexpected reply to create namespace: {other:?}"))),
            }
        })
        .await
    }

    async fn list_namespaces(
        &self,
        request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        observe("ListNamespaces", async {
            let hop = Hop::of(&request);
            if let Some(leader) = self.node.forward_target(NAMESPACE_SHARD, hop).await? {
                let forwarded = forward::request(request.into_inner(), self.node.node_id, None);
                return leader.answer(NAMESPACE_SHARD, leader.admin().list_namespaces(forwarded).await);
            }
            self.node.linearizable(NAMESPACE_SHARD).await?;
            let namespaces = self
                .node
                .shards
                .with_state(NAMESPACE_SHARD, |state| state.namespaces.values().map(namespace_to_proto).collect());
            Ok(pb::ListNamespacesResponse { namespaces })
        })
        .await
    }

    async fn describe_namespace(
        &self,
        request: Request<pb::DescribeNamespaceRequest>,
    ) -> Result<Response<pb::DescribeNamespaceResponse>, Status> {
        observe("DescribeNamespace", async {
            let hop = Hop::of(&request);
            let request = request.into_inner();
            if let Some(leader) = self.node.forward_target(NAMESPACE_SHARD, hop).await? {
                let forwarded = forward::request(request, self.node.node_id, None);
                return leader.answer(NAMESPACE_SHARD, leader.admin().describe_namespace(forwarded).await);
            }
            let name = request.name;
            self.node.linearizable(NAMESPACE_SHARD).await?;
            let record = self
                .node
                .shards
                .with_state(NAMESPACE_SHARD, |state| state.namespaces.get(&name).cloned())
                .ok_or_else(|| Status::not_found(format!("namespace {name:?} not found")))?;
            let open_workflows = (0..self.node.shard_count())
                .map(|shard| {
                    self.node.shards.with_state(shard, |state| {
                        state
                            .executions
                            .iter()
                            .filter(|(key, e)| key.namespace == name && e.run.status.is_open())
                            .count() as u64
                    })
                })
                .sum();
            Ok(pb::DescribeNamespaceResponse { namespace: Some(namespace_to_proto(&record)), open_workflows })
        })
        .await
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let local_only = request.metadata().contains_key(LOCAL_STATUS_HEADER);
        observe("ClusterStatus", async {
            let local = self.local_status().await;
            if local_only || !self.node.raft.is_replicated() {
                return Ok(local);
            }
            Ok(self.cluster_wide_status(local).await)
        })
        .await
    }

    async fn init_cluster(
        &self,
        request: Request<pb::InitClusterRequest>,
    ) -> Result<Response<pb::InitClusterResponse>, Status> {
        observe("InitCluster", async {
            let request = request.into_inner();
            let meta = self.node.cluster_record();
            let (meta, created) =
                crate::cluster::cluster_to_init(Some(&meta), self.node.node_id, &meta.nodes, &request)?;
            // Nodes that missed the record while the cluster formed get it again.
            crate::cluster::join_peers(&self.node.peers, &meta).await?;
            Ok(crate::cluster::init_response(&meta, created))
        })
        .await
    }

    async fn add_node(&self, request: Request<pb::AddNodeRequest>) -> Result<Response<pb::AddNodeResponse>, Status> {
        observe("AddNode", async { self.node.add_node(request.get_ref().address.trim()).await }).await
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        observe("RemoveNode", async {
            let hop = Hop::of(&request);
            let node_id = request.get_ref().node_id;
            if node_id == self.node.node_id && hop == Hop::Client {
                // This node leaves: another node runs the removal, which outlives this one.
                return self.remove_elsewhere(node_id).await;
            }
            self.node.remove_node(node_id).await
        })
        .await
    }
}

/// Request header of a status call one node makes to another: answer with this node's view only.
const LOCAL_STATUS_HEADER: &str = "weft-local-status";
/// How long a status call waits for each other node.
const PEER_STATUS_TIMEOUT_MS: u64 = 2_000;

impl AdminApi {
    /// Sends `remove-node` of this node to another member, the first that answers.
    async fn remove_elsewhere(&self, node_id: u64) -> Result<pb::RemoveNodeResponse, Status> {
        let nodes = self.node.raft.nodes();
        let mut failures = Vec::new();
        for (id, address) in nodes.iter().filter(|(id, _)| **id != node_id) {
            let channel = self.node.peers.channel(address)?;
            let mut client = weft_proto::v1::admin_service_client::AdminServiceClient::new(channel);
            let forwarded = forward::request(pb::RemoveNodeRequest { node_id }, self.node.node_id, None);
            match client.remove_node(forwarded).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => {
                    failures.push(format!("node {id} at {address}: {}", status.message()));
                }
                Err(status) => return Err(status),
            }
        }
        Err(Status::unavailable(format!(
            "node {node_id} leaves, so another node must remove it, and none answered ({})",
            failures.join("; ")
        )))
    }

    /// This node's view: its shards' Raft state, itself as the one replica it knows, with its
    /// checksum of each shard's state.
    async fn local_status(&self) -> pb::ClusterStatusResponse {
        let node = &self.node;
        let mut checksums = node.raft.state_checksums().await.into_iter();
        let shards = (0..node.shard_count())
            .map(|shard| {
                let checksum = match checksums.next() {
                    Some(Ok(sum)) => Some(pb::StateChecksum {
                        applied_index: sum.applied.map_or(0, |id| id.index),
                        crc32: sum.crc32,
                        records: sum.records,
                        bytes: sum.bytes,
                    }),
                    Some(Err(error)) => {
                        tracing::warn!(shard, %error, "cannot checksum the shard's state");
                        None
                    }
                    None => None,
                };
                let status = node.raft.status(shard);
                let members = node.raft.members(shard);
                pb::ShardStatus {
                    shard_id: shard,
                    leader_node_id: status.leader.unwrap_or(0),
                    term: status.term,
                    committed_index: status.committed,
                    applied_index: status.applied,
                    last_log_index: status.last_log,
                    snapshot_index: status.snapshot,
                    open_workflows: node.shards.with_state(shard, |state| state.open_runs() as u64),
                    replicas: vec![pb::ReplicaStatus {
                        node_id: node.node_id,
                        applied_index: status.applied,
                        lag: status.last_log.saturating_sub(status.applied),
                        checksum,
                        voter: members.voters.contains(&node.node_id),
                    }],
                    learners: members.learners().collect(),
                    voters: members.voters.into_iter().collect(),
                    ..Default::default()
                }
            })
            .collect::<Vec<_>>();
        let mut shards = shards;
        for shard in &mut shards {
            compare_checksums(shard);
        }
        pb::ClusterStatusResponse {
            cluster_id: node.cluster.cluster_id.clone(),
            shard_count: node.shard_count(),
            nodes: node
                .raft
                .nodes()
                .iter()
                .map(|(id, address)| pb::NodeStatus {
                    node_id: *id,
                    address: address.clone(),
                    reachable: *id == node.node_id,
                })
                .collect(),
            shards,
            this_node_id: node.node_id,
            replicas: node.cluster.replicas,
            command_version: node.active_command_version(),
            command_version_max: crate::versions::command_version_max(),
        }
    }

    /// Every node's view merged: each shard's leader and term as its leader reports them, each
    /// replica's applied index as that replica reports it, and which nodes answered.
    async fn cluster_wide_status(&self, local: pb::ClusterStatusResponse) -> pb::ClusterStatusResponse {
        let mut views = vec![local.clone()];
        let mut reachable = std::collections::BTreeSet::from([self.node.node_id]);
        let nodes = self.node.raft.nodes();
        let calls = nodes.iter().filter(|(id, _)| **id != self.node.node_id).map(|(id, address)| {
            let peers = self.node.peers.clone();
            let (id, address) = (*id, address.clone());
            async move {
                let channel = peers.channel(&address).ok()?;
                let mut client = weft_proto::v1::admin_service_client::AdminServiceClient::new(channel);
                let mut request = Request::new(pb::ClusterStatusRequest {});
                request.metadata_mut().insert(LOCAL_STATUS_HEADER, tonic::metadata::MetadataValue::from_static("1"));
                request.set_timeout(std::time::Duration::from_millis(PEER_STATUS_TIMEOUT_MS));
                let answer = tokio::time::timeout(
                    std::time::Duration::from_millis(PEER_STATUS_TIMEOUT_MS),
                    client.cluster_status(request),
                )
                .await;
                match answer {
                    Ok(Ok(response)) => Some((id, response.into_inner())),
                    _ => None,
                }
            }
        });
        for (id, view) in futures::future::join_all(calls).await.into_iter().flatten() {
            reachable.insert(id);
            views.push(view);
        }
        let mut merged = local;
        for node in &mut merged.nodes {
            node.reachable = reachable.contains(&node.node_id);
        }
        for shard in &mut merged.shards {
            let of_shard =
                |view: &pb::ClusterStatusResponse| view.shards.iter().find(|s| s.shard_id == shard.shard_id).cloned();
            let reports: Vec<(u64, pb::ShardStatus)> =
                views.iter().filter_map(|view| of_shard(view).map(|s| (view.this_node_id, s))).collect();
            // The leader's own report, else the report of the highest term.
            let best = reports
                .iter()
                .find(|(from, s)| s.leader_node_id == *from)
                .or_else(|| reports.iter().max_by_key(|(_, s)| s.term))
                .map(|(_, s)| s.clone());
            if let Some(best) = best {
                let replicas = reports
                    .iter()
                    .map(|(from, s)| pb::ReplicaStatus {
                        node_id: *from,
                        applied_index: s.applied_index,
                        lag: best.last_log_index.saturating_sub(s.applied_index),
                        checksum: s.replicas.iter().find(|r| r.node_id == *from).and_then(|r| r.checksum),
                        voter: best.voters.contains(from),
                    })
                    .collect();
                *shard = pb::ShardStatus { replicas, ..best };
                compare_checksums(shard);
            }
        }
        merged
    }
}

/// Sets `checksums_agree`, `checksum_index` and `checksums_compared` from the replicas'
/// checksums: replicas at one applied index hold the same state, so any two that differ there
/// mean the replicas diverged; the index compared is the highest that two or more share.
fn compare_checksums(shard: &mut pb::ShardStatus) {
    let mut by_index: std::collections::BTreeMap<u64, Vec<u32>> = std::collections::BTreeMap::new();
    for checksum in shard.replicas.iter().filter_map(|r| r.checksum) {
        by_index.entry(checksum.applied_index).or_default().push(checksum.crc32);
    }
    let shared: Vec<(&u64, &Vec<u32>)> = by_index.iter().filter(|(_, crcs)| crcs.len() >= 2).collect();
    let diverged = shared.iter().any(|(_, crcs)| crcs.iter().any(|crc| *crc != crcs[0]));
    (shard.checksums_agree, shard.checksum_index, shard.checksums_compared) = match shared.last() {
        None => (None, 0, 0),
        Some((index, crcs)) => (Some(!diverged), **index, crcs.len() as u32),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(node_id: u64, applied_index: u64, crc32: u32) -> pb::ReplicaStatus {
        pb::ReplicaStatus {
            node_id,
            applied_index,
            lag: 0,
            checksum: Some(pb::StateChecksum { applied_index, crc32, records: 1, bytes: 1 }),
            voter: true,
        }
    }

    fn compared(replicas: Vec<pb::ReplicaStatus>) -> (Option<bool>, u64, u32) {
        let mut shard = pb::ShardStatus { replicas, ..Default::default() };
        compare_checksums(&mut shard);
        (shard.checksums_agree, shard.checksum_index, shard.checksums_compared)
    }

    #[test]
    fn checksums_are_compared_at_a_shared_index() {
        assert_eq!(compared(vec![replica(1, 9, 7), replica(2, 9, 7), replica(3, 9, 7)]), (Some(true), 9, 3));
        assert_eq!(compared(vec![replica(1, 9, 7), replica(2, 9, 8), replica(3, 9, 7)]), (Some(false), 9, 3));
        // A lagging replica is left out; the two at the same index are compared.
        assert_eq!(compared(vec![replica(1, 9, 7), replica(2, 9, 7), replica(3, 4, 1)]), (Some(true), 9, 2));
        // No two replicas at one index: nothing to compare.
        assert_eq!(compared(vec![replica(1, 9, 7), replica(2, 8, 7)]), (None, 0, 0));
        assert_eq!(compared(vec![replica(1, 9, 7)]), (None, 0, 0));
        // A divergence at a lower shared index is not hidden by agreement at a higher one.
        let four = vec![replica(1, 9, 7), replica(2, 9, 7), replica(3, 5, 1), replica(4, 5, 2)];
        assert_eq!(compared(four), (Some(false), 9, 2));
        // A replica without a checksum is left out.
        let mut unknown = replica(3, 9, 7);
        unknown.checksum = None;
        assert_eq!(compared(vec![replica(1, 9, 7), replica(2, 9, 7), unknown]), (Some(true), 9, 2));
    }
}
