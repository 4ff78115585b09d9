//! `weft.v1.AdminService`: namespaces and cluster status.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weft_core::{CommandKind, NamespaceRecord, Reply};
use weft_proto::v1 as pb;
use weft_proto::v1::admin_service_server::AdminService;

use super::observe;
use crate::node::Node;

/// Namespaces live on shard 0.
const NAMESPACE_SHARD: u32 = 0;

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
            let request = request.into_inner();
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
        _request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        observe("ListNamespaces", async {
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
            let name = request.into_inner().name;
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
            let local = self.local_status();
            if local_only || self.node.cluster.nodes.len() <= 1 {
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
            let meta = &self.node.cluster;
            let (meta, created) =
                crate::cluster::cluster_to_init(Some(meta), self.node.node_id, &meta.nodes, &request)?;
            // Nodes that missed the record while the cluster formed get it again.
            crate::cluster::join_peers(&self.node.peers, &meta).await?;
            Ok(crate::cluster::init_response(&meta, created))
        })
        .await
    }
}

/// Request header of a status call one node makes to another: answer with this node's view only.
const LOCAL_STATUS_HEADER: &str = "weft-local-status";
/// How long a status call waits for each other node.
const PEER_STATUS_TIMEOUT_MS: u64 = 2_000;

impl AdminApi {
    /// This node's view: its shards' Raft state, itself as the one replica it knows.
    fn local_status(&self) -> pb::ClusterStatusResponse {
        let node = &self.node;
        let shards = (0..node.shard_count())
            .map(|shard| {
                let status = node.raft.status(shard);
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
                    }],
                }
            })
            .collect();
        pb::ClusterStatusResponse {
            cluster_id: node.cluster.cluster_id.clone(),
            shard_count: node.shard_count(),
            nodes: node
                .cluster
                .nodes
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
        }
    }

    /// Every node's view merged: each shard's leader and term as its leader reports them, each
    /// replica's applied index as that replica reports it, and which nodes answered.
    async fn cluster_wide_status(&self, local: pb::ClusterStatusResponse) -> pb::ClusterStatusResponse {
        let mut views = vec![local.clone()];
        let mut reachable = std::collections::BTreeSet::from([self.node.node_id]);
        let calls = self.node.cluster.nodes.iter().filter(|(id, _)| **id != self.node.node_id).map(|(id, address)| {
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
                    })
                    .collect();
                *shard = pb::ShardStatus { replicas, ..best };
            }
        }
        merged
    }
}
